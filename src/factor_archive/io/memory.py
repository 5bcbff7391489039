"""How this process's C library hands out memory, set once by the commands that move big buffers."""

from __future__ import annotations


def one_malloc_arena() -> None:
    """Let every thread of this process allocate from one malloc arena.

    The zarr form reads or encodes shards of tens of MB in one thread and frees them in others,
    and glibc gives each thread an arena of its own: memory freed there stays resident, unused by
    the other threads. On the real-shape run of benchmarks/README.md one arena took the
    restoring process from 400-440 to 290-300 MiB and the archiving one from 414 to 302 MiB, at
    the same CPU. A no-op where the C library is not glibc.
    """
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
