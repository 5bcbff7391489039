"""The one interface every container form implements, and the byte-moving helpers they share.

A writer turns planned items into stored members and returns their manifest entries; it writes the
manifest last, after the data is durable. A reader gives back members (verifying checksums as it
goes) in whatever order suits its medium, so a tape-like stream can be restored in one pass.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import queue
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Protocol

from ..errors import BadInput, FactorArchiveError
from ..manifest import FileEntry, Manifest, Member, tree_digest

BLOCK = 4 << 20
Progress = Callable[[int], None]


def _no_progress(_n: int) -> None:
    pass


@dataclass
class StoredItem:
    """What a writer needs to store one planned item (see plan.PlanItem)."""

    path: str                 # archive path
    source: Path              # where to read it now (may be a staging copy)
    kind: str                 # "file" or "table"


class ArchiveWriter(Protocol):
    form: str

    def write(self, member: Member, source: Path, progress: Progress) -> Member:
        """Store ``source`` (file or table directory) as ``member``; fill in sizes and checksums."""

    def staging_dir(self) -> Path:
        """A scratch directory for generated members (calibrated data), on the output's disk if possible."""

    def close(self, manifest: Manifest) -> None:
        """Make everything durable, then write the manifest last."""

    def abort(self) -> None:
        """Leave nothing that looks like a complete archive."""


class ArchiveReader(Protocol):
    form: str
    manifest: Manifest

    def extract(self, members: list[Member], dest_for: Callable[[Member], Path | None],
                progress: Progress) -> None:
        """Write each member at dest_for(member), verifying its checksums while copying."""

    def local_path(self, member: Member) -> Path | None:
        """A path where the member already exists as plain files (for -s), or None."""

    def verify(self, progress: Progress) -> list[str]:
        """Recompute every checksum; one line per member that differs or is missing."""

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Byte moving: hash while copying, on a second core.

class _Hasher:
    """Hashes blocks on a second thread; hashlib releases the GIL, so hashing overlaps I/O."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            block = self._queue.get()
            if block is None:
                return
            self.digest.update(block)

    def update(self, block: bytes) -> None:
        self._queue.put(block)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self.digest.hexdigest()


def copy_stream(src: BinaryIO, dst: BinaryIO | None, progress: Progress = _no_progress,
                limit: int | None = None) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` (or only hash when dst is None); return (sha256, bytes)."""
    hasher = _Hasher() if (limit is None or limit > BLOCK) else None
    digest = hashlib.sha256() if hasher is None else None
    total = 0
    try:
        while limit is None or total < limit:
            want = BLOCK if limit is None else min(BLOCK, limit - total)
            block = src.read(want)
            if not block:
                break
            if hasher is not None:
                hasher.update(block)
            else:
                digest.update(block)
            if dst is not None:
                dst.write(block)
            total += len(block)
            progress(len(block))
    finally:
        sha = hasher.hexdigest() if hasher is not None else digest.hexdigest()
    return sha, total


def hash_file(path: Path, progress: Progress = _no_progress) -> tuple[str, int]:
    with open(path, "rb") as f:
        return copy_stream(f, None, progress)


def walk_table(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Files and sub-directories of a table directory, sorted, relative to ``root``.

    The root may be a symlink (a chunk linked to an input MS): we follow it. Links inside the
    table are followed too, so the archive always holds data, never a dangling reference.
    """
    files: list[tuple[str, Path]] = []
    dirs: list[str] = []
    def unreadable(exc: OSError) -> None:
        raise BadInput(f"{exc.filename}: cannot read ({exc.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir != ".":
            dirs.append(rel_dir.replace(os.sep, "/"))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            files.append((rel, full))
    return files, dirs


def stat_entry(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None


def finish_table_member(member: Member, entries: list[FileEntry], dirs: list[str]) -> Member:
    member.files = entries
    member.dirs = dirs
    member.size = sum(e.size for e in entries)
    member.sha256 = tree_digest(entries)
    return member


def fill_file_member(member: Member, st: os.stat_result, sha: str, size: int) -> Member:
    member.size = size
    member.sha256 = sha
    member.mode = stat.S_IMODE(st.st_mode)
    member.mtime = st.st_mtime
    return member


# ---------------------------------------------------------------------------------------------
# Durability

_libc = None


def sync_filesystem(path: Path) -> None:
    """Flush the file system holding ``path`` (syncfs), like ``sync`` after ``cp``."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if getattr(_libc, "syncfs", None) is None or _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync and rename, so a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def io_error(path: Path | str, exc: OSError) -> FactorArchiveError:
    """One-line error for an OS failure; a full disk says so plainly."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FactorArchiveError(f"{path}: no space left on device")
    return FactorArchiveError(f"{path}: {exc.strerror or exc}")


def iter_member_files(member: Member) -> Iterator[tuple[str, FileEntry | None]]:
    """(path relative to the member root, entry) for tables; ("", None) for a file member."""
    if member.kind == "table":
        for entry in member.files:
            yield entry.path, entry
    else:
        yield "", None
