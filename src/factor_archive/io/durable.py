"""Making written data durable: fsync, syncfs, early write-back and atomic small files."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any

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


def sync_filesystem(path: Path) -> None:
    """Flush the file system holding ``path`` (syncfs), like ``sync`` after ``cp``."""
    libc = _load_libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
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


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write and rename, so a reader sees the old file or the whole new one; fsync'd unless the
    caller makes a whole tree durable at once afterwards (``durable=False``, then
    :func:`sync_filesystem`): a restore rewrites hundreds of mapfiles, and two fsyncs each cost
    more than one syncfs at the end."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
