#!/usr/bin/env python
"""Where a restore's time goes: ``unarchivefactor -q ARCHIVE OUT`` with its phases timed.

Prints (to standard error) when each phase started and how long it took, seconds after this
script started: opening the archive, extracting the members (``extract``, tables decoded by the
casacore workers), rewriting the paths in state files and mapfiles (``_rewrite_paths``), the
final flush (``sync_filesystem``), the parset, and the whole run (``wall``).

    PYTHONPATH=src .venv/bin/python benchmarks/restore_phases.py /tmp/p/run.zarr /tmp/out && sync

Extra arguments go to ``unarchivefactor`` (e.g. ``-s``). The functions are wrapped at run time;
nothing of src/ is changed.
"""

from __future__ import annotations

import functools
import sys
import time

START = time.perf_counter()


def timed(owner, name: str, label: str | None = None) -> None:
    """Replace ``owner.name`` by a wrapper that reports its start and duration."""
    real = getattr(owner, name)

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            print(f"{label or name}: start {t - START:.2f} s, took {time.perf_counter() - t:.3f} s",
                  file=sys.stderr)

    setattr(owner, name, wrapper)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    import factor_archive.restore.unarchive as unarchive
    from factor_archive.cli import unarchivefactor_main

    real_open = unarchive.open_reader

    def open_reader(*args, **kwargs):
        reader = real_open(*args, **kwargs)
        timed(reader, "extract", f"{type(reader).__name__}.extract")  # this reader's only
        return reader

    unarchive.open_reader = open_reader
    for name in ("open_reader", "_rewrite_paths", "sync_filesystem", "_write_parset"):
        timed(unarchive, name)
    try:
        return unarchivefactor_main(["-q", *argv])
    finally:
        print(f"wall: {time.perf_counter() - START:.3f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
