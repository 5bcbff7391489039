"""The copy engine: copy a stream and hash what was copied, the hashing on a second core.

One entry point, :func:`copy_stream`. Between two plain files the kernel copies
(``copy_file_range``, as ``cp`` does) and the written range is read back from the page cache and
hashed on a second thread, so the checksum is of exactly what the destination holds. Otherwise
blocks are read into a small ring of reused buffers, written, and hashed on a second thread
(hashlib releases the GIL). See benchmarks/README.md for why both.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import queue
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

BLOCK = 4 << 20
Progress = Callable[[int], None]


def no_progress(_n: int) -> None:
    """A progress callback that ignores its argument."""


class ReusedBufferSink:
    """Base of writable objects whose ``write`` never keeps a reference to the block it is given,
    so the engine may hand it a view of a buffer it reuses (e.g. the tar writer's output)."""

    def write(self, data: Any) -> int:  # pragma: no cover - overridden
        raise NotImplementedError


# Reusable block buffers: reading into the same few buffers instead of a new bytes object per block
# saves allocating, faulting in and zeroing fresh memory for every block (kernel time that showed up
# as a large part of an archive's CPU; see benchmarks/README.md). A copy holds at most _RING of them.
_RING = 4
_POOL_KEEP = 8
_pool: list[bytearray] = []
_pool_lock = threading.Lock()


def _take_buffer() -> bytearray:
    with _pool_lock:
        if _pool:
            return _pool.pop()
    return bytearray(BLOCK)


def _give_buffers(buffers: list[bytearray]) -> None:
    with _pool_lock:
        _pool.extend(buffers[:max(0, _POOL_KEEP - len(_pool))])


# Hashing threads are kept when their file is done and given the next one: a tar of a run starts
# one per file copied (about a thousand), and starting a thread cost about 0.4 ms each on a busy
# machine (py-spy, benchmarks/README.md). Daemon threads, as before: an interrupted archive must
# never wait at exit for a hasher that will not be fed again.
_SPARE_KEEP = 8
_spare: list[queue.SimpleQueue[Callable[[], None]]] = []
_spare_lock = threading.Lock()


def on_spare_thread(task: Callable[[], None]) -> threading.Event:
    """Run ``task`` on an idle kept thread (or a new one); the event is set when it returns."""
    done = threading.Event()

    def run() -> None:
        try:
            task()
        finally:
            done.set()

    with _spare_lock:
        inbox = _spare.pop() if _spare else None
    if inbox is None:
        inbox = queue.SimpleQueue()
        threading.Thread(target=_serve, args=(inbox,), daemon=True, name="factor-archive-hash").start()
    inbox.put(run)
    return done


def _serve(inbox: queue.SimpleQueue[Callable[[], None]]) -> None:
    while True:
        inbox.get()()
        with _spare_lock:
            if len(_spare) >= _SPARE_KEEP:
                return
            _spare.append(inbox)


class HashThread:
    """Hashes buffers, in the order given, on a second thread.

    ``put(buf, n)`` queues the first ``n`` bytes of ``buf``; with ``hand_back`` each buffer is
    returned through :meth:`hashed` once hashed, so the caller can reuse it. ``queue_size`` bounds
    how many buffers wait (0: unbounded). :meth:`finish` waits and returns the hex digest.
    """

    def __init__(self, *, queue_size: int = 0, hand_back: bool = False) -> None:
        self.digest = hashlib.sha256()
        self._full: queue.Queue[tuple[Any, int] | None] = queue.Queue(maxsize=queue_size)
        self._back: queue.SimpleQueue[Any] | None = queue.SimpleQueue() if hand_back else None
        self._done = on_spare_thread(self._run)

    def _run(self) -> None:
        while True:
            item = self._full.get()
            if item is None:
                return
            buf, n = item
            with memoryview(buf) as view:
                self.digest.update(view[:n])
            self._full.task_done()
            if self._back is not None:
                self._back.put(buf)

    def put(self, buf: Any, n: int | None = None) -> None:
        self._full.put((buf, len(buf) if n is None else n))

    def wait(self) -> None:
        """Until every buffer given so far is hashed."""
        self._full.join()

    def hashed(self) -> Any:
        """The next buffer that has been hashed (waits for it)."""
        assert self._back is not None
        return self._back.get()

    def finish(self) -> str:
        self._full.put(None)
        self._done.wait()
        return self.digest.hexdigest()


def _write_all(dst: Any, view: memoryview) -> None:
    """Only a raw file may take part of a block; buffered files and other sinks take it all."""
    if not isinstance(dst, io.RawIOBase):
        dst.write(view)
        return
    while view:
        n = dst.write(view)
        if n is None:  # a non-blocking raw file that would block; plain files never do
            continue
        view = view[n:]


def _may_reuse(dst: Any) -> bool:
    """Whether ``dst.write`` is known to keep no reference to the block it is given."""
    return dst is None or type(dst) in (io.FileIO, io.BufferedWriter, io.BufferedRandom) \
        or isinstance(dst, ReusedBufferSink)


def _read_into(src: Any, view: memoryview) -> int:
    readinto = getattr(src, "readinto", None)
    if readinto is not None:
        return readinto(view) or 0
    block = src.read(len(view))
    view[:len(block)] = block
    return len(block)


def _copy_through_buffers(src: Any, dst: Any, progress: Progress,
                          limit: int | None) -> tuple[str, int]:
    """Read into a ring of reused buffers, write each, hash each on a second thread.

    The bytes hashed are the very buffer that was written. The thread starts with the second block,
    so a small file costs no thread. A destination not known to drop its blocks gets a copy.
    """
    reuse = _may_reuse(dst)
    owned: list[bytearray] = []
    hasher: HashThread | None = None
    pending: tuple[bytearray, int] | None = None   # first block, hashed once we know more follow
    total = 0
    digest = hashlib.sha256()
    try:
        try:
            os.posix_fadvise(src.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass
        while limit is None or total < limit:
            if hasher is not None and len(owned) >= _RING:
                buf = hasher.hashed()
            else:
                buf = _take_buffer()
                owned.append(buf)
            want = BLOCK if limit is None else min(BLOCK, limit - total)
            with memoryview(buf) as view:
                n = _read_into(src, view[:want])
                if n and dst is not None:
                    _write_all(dst, view[:n] if reuse else memoryview(bytes(view[:n])))
            if not n:
                break
            if pending is not None:
                hasher = HashThread(hand_back=True)
                hasher.put(*pending)
                pending = None
            if hasher is not None:
                hasher.put(buf, n)
            else:
                pending = (buf, n)
            total += n
            progress(n)
    finally:
        if hasher is not None:
            sha = hasher.finish()
        else:
            if pending is not None:
                with memoryview(pending[0]) as view:
                    digest.update(view[:pending[1]])
            sha = digest.hexdigest()
        _give_buffers(owned)
    return sha, total


# ---------------------------------------------------------------------------------------------
# In the kernel, between plain files

_RANGE = 2 * BLOCK
_NO_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.EPERM,
             errno.ETXTBSY, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _kernel_copy_possible(src: Any, dst: Any) -> bool:
    """Both plain regular files and the destination readable. The copy goes by explicit offsets
    from ``src.tell()``, so a buffered source's read-ahead does not matter: a tar reader has just
    read the member's header through its buffer (without this, 947 of a run's 1015 members were
    copied through Python buffers)."""
    if not hasattr(os, "copy_file_range") or dst is None:
        return False
    if type(src) not in (io.FileIO, io.BufferedReader) or type(dst) not in (io.FileIO, io.BufferedRandom):
        return False
    try:
        if not dst.readable():
            return False
        fin, fout = src.fileno(), dst.fileno()
        return stat.S_ISREG(os.fstat(fin).st_mode) and stat.S_ISREG(os.fstat(fout).st_mode)
    except (OSError, ValueError):
        return False


def _read_back(fd: int, offset: int, size: int, buf: bytearray, digest: Any) -> None:
    with memoryview(buf) as view:
        while size:
            n = os.preadv(fd, [view[:min(size, len(buf))]], offset)
            if n <= 0:
                raise OSError(errno.EIO, "copied data could not be read back")
            digest.update(view[:n])
            offset += n
            size -= n


class _ReadBackHasher:
    """Reads ranges back from ``fd`` and hashes them, on a second thread, in order."""

    def __init__(self, fd: int, digest: Any) -> None:
        self.fd, self.digest = fd, digest
        self.error: BaseException | None = None
        self.ranges: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._done = on_spare_thread(self._run)

    def _run(self) -> None:
        buf = _take_buffer()
        try:
            while True:
                item = self.ranges.get()
                if item is None:
                    return
                if self.error is None:
                    try:
                        _read_back(self.fd, item[0], item[1], buf, self.digest)
                    except BaseException as exc:  # reported by finish()
                        self.error = exc
        finally:
            _give_buffers([buf])

    def finish(self) -> None:
        self.ranges.put(None)
        self._done.wait()
        if self.error is not None:
            raise self.error


def _copy_in_kernel(src: Any, dst: Any, progress: Progress,
                    limit: int | None) -> tuple[Callable[[], str], int] | None:
    """copy_file_range; None (nothing done) where the kernel cannot do it. The checksum is
    computed from the page cache on a second thread and may still be running on return."""
    dst.flush()
    fin, fout = src.fileno(), dst.fileno()
    in_at, out_at = src.tell(), dst.tell()
    digest = hashlib.sha256()
    hasher: _ReadBackHasher | None = None
    first: tuple[int, int] | None = None   # hashed here if it turns out to be the only range
    total = 0
    try:
        os.posix_fadvise(fin, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass
    try:
        while limit is None or total < limit:
            want = _RANGE if limit is None else min(_RANGE, limit - total)
            try:
                n = os.copy_file_range(fin, fout, want, in_at + total, out_at + total)
            except OSError as exc:
                if total == 0 and exc.errno in _NO_RANGE:
                    return None
                raise
            if n == 0:
                if total == 0:
                    return None  # empty, or a file that only read() knows the size of (procfs)
                break
            if first is None and hasher is None:
                first = (out_at, n)
            else:
                if hasher is None:
                    hasher = _ReadBackHasher(fout, digest)
                    hasher.ranges.put(first)
                    first = None
                hasher.ranges.put((out_at + total, n))
            total += n
            progress(n)
        if first is not None:               # one range: a small file, hashed here
            buf = _take_buffer()
            try:
                _read_back(fout, first[0], first[1], buf, digest)
            finally:
                _give_buffers([buf])
    except BaseException:
        if hasher is not None:  # stop the thread, keep the first error
            try:
                hasher.finish()
            except BaseException:
                pass
        raise
    src.seek(in_at + total)
    dst.seek(out_at + total)
    if hasher is None:
        sha = digest.hexdigest()
        return (lambda: sha), total
    return _Later(hasher, digest), total


class _Later:
    """The checksum of a kernel copy, once its read-back thread has hashed every range."""

    def __init__(self, hasher: _ReadBackHasher, digest: Any) -> None:
        self._hasher: _ReadBackHasher | None = hasher
        self._digest = digest

    def __call__(self) -> str:
        if self._hasher is not None:
            hasher, self._hasher = self._hasher, None
            hasher.finish()
        return str(self._digest.hexdigest())


def copy_stream_later(src: BinaryIO, dst: Any | None, progress: Progress = no_progress,
                      limit: int | None = None) -> tuple[Callable[[], str], int]:
    """:func:`copy_stream` whose checksum may still be computing when it returns: call the
    returned function for it (it waits, and raises a read-back error). A writer can copy the
    next file while the last one is hashed; the output must not change meanwhile."""
    if _kernel_copy_possible(src, dst):
        done = _copy_in_kernel(src, dst, progress, limit)
        if done is not None:
            return done
    sha, total = _copy_through_buffers(src, dst, progress, limit)
    return (lambda: sha), total


def copy_stream(src: BinaryIO, dst: Any | None, progress: Progress = no_progress,
                limit: int | None = None) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` (or only hash when dst is None), at most ``limit`` bytes;
    return (sha256 hex digest, bytes copied)."""
    finish, total = copy_stream_later(src, dst, progress, limit)
    return finish(), total


def hash_file(path: Path, progress: Progress = no_progress) -> tuple[str, int]:
    """(sha256, size) of a file's bytes."""
    with open(path, "rb") as f:
        return copy_stream(f, None, progress)
