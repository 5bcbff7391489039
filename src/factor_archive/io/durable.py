"""Making written data durable: fsync, syncfs, early write-back and atomic small files."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import threading
from pathlib import Path
from typing import Any

from .install import discard

_libc: Any = None
_SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_MIN = 1 << 20  # smaller files are left to the final sync, which batches them


def _load_libc() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = getattr(_libc, "sync_file_range", None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return _libc


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to disk without waiting (sync_file_range); best effort.

    Called for each file once written, so the disk works while later files are copied and hashed,
    and the final syncfs has little left to do. Durability still comes from that syncfs.
    """
    fn = getattr(_load_libc(), "sync_file_range", None)
    if fn is not None:
        fn(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def start_writeback_if_big(f: Any) -> None:
    """:func:`start_writeback` of an open file just written, when it holds WRITEBACK_MIN bytes
    or more (flushed first): smaller files are left to the final sync, which batches them."""
    f.flush()
    if os.fstat(f.fileno()).st_size >= WRITEBACK_MIN:
        start_writeback(f.fileno())


class TreeWriteback:
    """Starts write-back of the big files of finished trees (restored tables, written by a
    casacore worker process), on a thread of its own, so the thread that goes on to the next
    table never waits for the disk's queue (benchmarks/README.md, i10-tail: about 0.07 s of such
    calls a restore). :meth:`start` opens the files at once, so the tree may be renamed
    afterwards. :meth:`close` lets the thread finish the files handed to it without waiting for
    it: what the restore does next (rewriting paths) overlaps the disk's work, and
    :func:`sync_filesystem` waits for the thread before its flush."""

    def __init__(self) -> None:
        self._fds: list[list[int]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self, root: Path) -> None:
        """Hand the files of ``root`` of WRITEBACK_MIN bytes or more to the thread; best effort."""
        fds = []
        try:
            for path in _files_at_least(root, WRITEBACK_MIN):
                fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except BaseException as exc:
            for fd in fds:
                os.close(fd)
            if isinstance(exc, OSError):
                return      # the final sync writes them all the same
            raise
        if not fds:
            return
        with self._cond:
            self._fds.append(fds)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._fds and not self._closing:
                    self._cond.wait()
                if not self._fds:
                    return
                fds = self._fds.pop(0)
            for fd in fds:
                try:
                    start_writeback(fd)
                finally:
                    os.close(fd)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            with _FINISHING_LOCK:
                _FINISHING.append(thread)

    def __enter__(self) -> TreeWriteback:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


def _files_at_least(root: Path, size: int) -> list[str]:
    """The regular files below ``root`` (symlinks not followed) of ``size`` bytes or more."""
    found = []
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size >= size:
                    found.append(entry.path)
    return found


_FINISHING: list[threading.Thread] = []  # TreeWriteback threads closed, still starting write-backs
_FINISHING_LOCK = threading.Lock()


def finish_writebacks() -> None:
    """Wait for every closed TreeWriteback's thread: all the write-backs it was given started."""
    with _FINISHING_LOCK:
        threads, _FINISHING[:] = list(_FINISHING), []
    for thread in threads:
        thread.join()


def sync_filesystem(path: Path) -> None:
    """Flush the file system holding ``path`` (syncfs), like ``sync`` after ``cp``, once the
    write-backs handed to TreeWriteback threads have started (finish_writebacks).

    An error the file system reports for its write-back (EIO, ENOSPC: ``syncfs`` returns those
    since Linux 5.8) is raised as an OSError naming ``path``: what was written may not be on disk.
    A restore's workers skip casacore's own fsyncs because this flush reports what they would
    have. Where there is no syncfs (or the kernel has none), ``sync``, which reports nothing."""
    finish_writebacks()
    syncfs = getattr(_load_libc(), "syncfs", None)
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs is None:
            os.sync()
            return
        if syncfs(fd) == 0:
            return
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, 0):
            os.sync()
            return
        raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """fsync a file or directory by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the names in a directory durable (after a rename or a new file)."""
    fsync_path(path)


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync and rename, so a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def replace_in_marked_tree(path: Path, data: bytes) -> None:
    """Replace the content of the file ``path`` by ``data``, keeping its mode and times, in a
    tree that a marker file says is incomplete (a restore in progress); not synced: the caller
    syncs the whole tree once (two fsyncs per file cost more than one syncfs).

    A file only this name links to (every file a restore writes) is written over where it is:
    no new file. On ext4 making a file costs far more than writing a few kB (409 mapfiles: 0.19 s
    with a new file each, 0.006 s written over, benchmarks/README.md, seventh session). A kill
    half-way leaves a damaged file in a tree still marked incomplete, which the next run
    restores again. A file with other names (hard links), or one that cannot be opened for
    writing, gets a new file instead, complete under a temporary name before the old name is
    removed and the new one renamed (not renamed over the old one: ext4 starts writing back at
    once a file renamed over another, auto_da_alloc).
    """
    st = os.stat(path)
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except PermissionError:
            pass
        else:
            try:
                _write_all(fd, data)
                if len(data) < st.st_size:
                    os.ftruncate(fd, len(data))
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
            return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()   # before the times are set
            os.chmod(f.fileno(), st.st_mode & 0o7777)
            os.utime(f.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
        os.unlink(path)
        os.rename(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
