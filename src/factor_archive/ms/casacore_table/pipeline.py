"""The tuning (:class:`PipelineSettings`) and the threads of one encode, decode or verify
(:class:`_Work`): a compression pool, a hashing thread, a store thread and reused row-block buffers.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class PipelineSettings:
    """The tuning of one encode, decode or verify (sizes in bytes). None of it changes the
    format's meaning: any layout written with any settings is read by every reader."""

    chunk_bytes: int = 2 << 20  # an inner chunk (the unit of compression)
    shard_bytes: int = 64 << 20  # a shard (one stored object)
    block_bytes: int = 16 << 20  # rows read / decoded at once (whole inner chunks), at most a shard
    threads: int = 0  # compression threads; 0: one per core (2 to 8)
    buffers: int = 4  # row-block buffers in use at once
    ahead: int = 3  # row blocks being decoded ahead of the one being written
    shards_in_flight: int = 1  # assembled shards waiting to be stored, per array
    speed_min_bytes: int = 8 << 20  # columns this big choose their codec by speed as well as size
    worth: float = 20e6  # ... where saving this many stored bytes is worth one second of CPU
    sample_bytes: int = 256 << 10  # codec trial sample of a smaller column
    numcodecs_margin: float = 0.9  # a numcodecs pipeline must be 10 % smaller than the best spec one
    numcodecs_min_sample: int = 64 << 10  # ... and is not considered for smaller samples
    worker_min_bytes: int | None = 64 << 20  # tables this big use a casacore worker process
    worker_queue_bytes: int = 64 << 20  # commands (with the values sent along) queued for it at most
    by_value_bytes: int = 8 << 20  # columns this small are sent to the worker, not put from a buffer

    def pool_threads(self) -> int:
        return self.threads or max(2, min(8, os.cpu_count() or 2))


DEFAULT_SETTINGS = PipelineSettings()


class _Work:
    """The threads of one encode, decode or verify.

    ``pool`` compresses and decompresses inner chunks (and runs the codec trials), ``hasher``
    (one thread, so each column's blocks are hashed in order) feeds the sha256 streams, ``io``
    (one thread) stores assembled shards in order and fetches shards ahead. hashlib, blosc and
    zstd release the GIL, so they overlap casacore, which holds it. Row blocks live in at most
    settings.buffers reused buffers, each back in the pool once every task reading it is done.
    """

    def __init__(self, settings: PipelineSettings = DEFAULT_SETTINGS, shm: np.ndarray | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.settings = settings
        self.pool = ThreadPoolExecutor(settings.pool_threads(), thread_name_prefix="table-codec")
        self.hasher = ThreadPoolExecutor(1, thread_name_prefix="table-codec-hash")
        self.io = ThreadPoolExecutor(1, thread_name_prefix="table-codec-io")
        self._cond = threading.Condition()
        self._free: list[np.ndarray] = []
        self._count = 0
        self._stores: list = []
        self._slot = 0
        if shm is not None:  # the buffers are slots of memory shared with a casacore worker
            self._slot = len(shm) // settings.buffers
            self._free = [shm[i * self._slot:(i + 1) * self._slot] for i in range(settings.buffers)]
            self._count = settings.buffers

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(cancel=exc_type is not None)

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 buffer of at least ``nbytes``; waits while settings.buffers are in use."""
        nbytes = max(1, int(nbytes))
        if self._slot and nbytes > self._slot:
            import numpy as np

            return np.empty(nbytes, np.uint8)  # bigger than a shared slot: a private one
        with self._cond:
            while True:
                for i, b in enumerate(self._free):
                    if b.nbytes >= nbytes:
                        return self._free.pop(i)
                if self._count < self.settings.buffers:
                    self._count += 1
                    break
                if self._free:  # all free ones too small: drop one, allocate below
                    self._free.pop()
                    self._count -= 1
                    continue
                self._cond.wait()
        try:
            import numpy as np

            return np.empty(nbytes, np.uint8)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify_all()
            raise

    def give(self, buf: np.ndarray, after=()) -> None:
        """Return ``buf`` to the pool once the futures ``after`` are done."""
        after = [f for f in after if f is not None]
        left = [len(after)]

        if self._slot and buf.nbytes != self._slot:
            return  # a private buffer (see take): just dropped

        def done(_f=None):
            with self._cond:
                left[0] -= 1
                if left[0] <= 0:
                    self._free.append(buf)
                    self._cond.notify_all()

        if not after:
            done()
        for f in after:
            f.add_done_callback(done)

    def store(self, fn, *args):
        fut = self.io.submit(fn, *args)
        # Stored ones are forgotten (failures kept for drain): the list stays short.
        self._stores = [f for f in self._stores if not f.done() or f.exception() is not None]
        self._stores.append(fut)
        return fut

    def drain(self) -> None:
        """Wait until everything handed to ``store`` is stored; raise the first failure."""
        stores, self._stores = self._stores, []
        first = first_failure(stores)
        if first is not None:
            raise first

    def close(self, cancel: bool = False) -> None:
        execs = (self.pool, self.io, self.hasher)
        if cancel:
            for ex in execs:
                ex.shutdown(wait=False, cancel_futures=True)
        for ex in execs:
            ex.shutdown(wait=True)
        self._free.clear()


def _buffer_view(buf: np.ndarray, dtype: np.dtype, shape: tuple) -> np.ndarray:
    n = math.prod(shape) * dtype.itemsize
    return buf[:n].view(dtype).reshape(shape)


def _block_rows(chunk_rows: int, shard_rows: int, row_bytes: int, block_bytes: int) -> int:
    """Rows read or decoded at once: whole inner chunks, about ``block_bytes``, within a shard."""
    k = max(1, block_bytes // max(1, chunk_rows * row_bytes))
    return max(1, min(shard_rows, chunk_rows * k))


def first_failure(futures: Iterable[Future[Any]],
                  kind: type[BaseException] = BaseException) -> BaseException | None:
    """Wait for every future and return the first failure of ``kind`` (others are raised at
    once): a caller moves on only when no thread still fills or stores its buffers."""
    first = None
    for f in futures:
        try:
            f.result()
        except kind as e:
            first = first or e
    return first
