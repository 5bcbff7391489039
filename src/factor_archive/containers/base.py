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
import io
import os
import queue
import re
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from ..errors import BadInput, DiskFull, FactorArchiveError
from ..manifest import FileEntry, Manifest, Member, tree_digest

BLOCK = 4 << 20
Progress = Callable[[int], None]


def _no_progress(_n: int) -> None:
    pass


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


# Reusable block buffers. Reading into the same few buffers instead of a new bytes object per block
# saves allocating, faulting in and zeroing fresh memory for every block (kernel time that showed up
# as a large part of an archive's CPU; see benchmarks/README.md). A copy holds at most _RING of them;
# the pool keeps a few between copies.
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


def _reusable_io(src, dst) -> bool:
    """Plain files (and standard io streams) never keep a reference to the block they were given.

    Other writers opt in with a true ``keeps_no_reference`` attribute (the tar writer's sink).
    """
    return (isinstance(src, (io.RawIOBase, io.BufferedIOBase))
            and (dst is None or type(dst) in (io.FileIO, io.BufferedWriter, io.BufferedRandom)
                 or getattr(dst, "keeps_no_reference", False)))


class _RingHasher:
    """Hashes filled buffers on a second thread and hands each buffer back once hashed."""

    def __init__(self, digest) -> None:
        self.digest = digest
        self.full: queue.SimpleQueue = queue.SimpleQueue()
        self.back: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self.full.get()
            if item is None:
                return
            buf, n = item
            with memoryview(buf) as view:
                self.digest.update(view[:n])
            self.back.put(buf)

    def finish(self) -> None:
        self.full.put(None)
        self._thread.join()


def _write_all(dst, view: memoryview) -> None:
    while view:
        n = dst.write(view)
        if n is None:  # a non-blocking raw file that would block; plain files never do
            continue
        view = view[n:]


def _copy_buffered(src, dst, progress: Progress, limit: int | None) -> tuple[str, int]:
    """copy_stream for plain files: read into a ring of reused buffers; hash each on a second thread.

    The bytes hashed are the very buffer that was written. The thread starts with the second block,
    so a small file costs no thread.
    """
    digest = hashlib.sha256()
    owned: list[bytearray] = []
    hasher: _RingHasher | None = None
    pending: tuple[bytearray, int] | None = None   # first block, hashed once we know more follow
    total = 0
    try:
        try:
            os.posix_fadvise(src.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass
        while limit is None or total < limit:
            if hasher is not None and len(owned) >= _RING:
                buf = hasher.back.get()
            else:
                buf = _take_buffer()
                owned.append(buf)
            want = BLOCK if limit is None else min(BLOCK, limit - total)
            with memoryview(buf) as view:
                n = src.readinto(view[:want]) or 0
                if n and dst is not None:
                    _write_all(dst, view[:n])
            if not n:
                break
            if pending is not None:
                hasher = _RingHasher(digest)
                hasher.full.put(pending)
                pending = None
            if hasher is not None:
                hasher.full.put((buf, n))
            else:
                pending = (buf, n)
            total += n
            progress(n)
    finally:
        if hasher is not None:
            hasher.finish()
        if pending is not None:
            with memoryview(pending[0]) as view:
                digest.update(view[:pending[1]])
        _give_buffers(owned)
    return digest.hexdigest(), total


# In-kernel copy for plain file to plain file, as cp does (copy_file_range), then the written bytes
# are read back from the destination (the page cache, normally) and hashed on a second thread: the
# checksum is of exactly what the archive holds, and the copy itself costs one memory copy instead
# of two (read into Python, write out of it). See benchmarks/README.md.
_RANGE = 2 * BLOCK
_NO_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.EPERM,
             errno.ETXTBSY, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _range_ok(src, dst) -> bool:
    """Both plain regular files, the destination readable, and no read-ahead pending in ``src``."""
    if not hasattr(os, "copy_file_range") or dst is None:
        return False
    if type(src) not in (io.FileIO, io.BufferedReader) or type(dst) not in (io.FileIO, io.BufferedRandom):
        return False
    try:
        if not dst.readable():
            return False
        fin, fout = src.fileno(), dst.fileno()
        if not (stat.S_ISREG(os.fstat(fin).st_mode) and stat.S_ISREG(os.fstat(fout).st_mode)):
            return False
        return src.tell() == os.lseek(fin, 0, os.SEEK_CUR)
    except (OSError, ValueError):
        return False


def _read_back(fd: int, offset: int, size: int, buf: bytearray, digest) -> None:
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

    def __init__(self, fd: int, digest) -> None:
        self.fd, self.digest = fd, digest
        self.error: BaseException | None = None
        self.ranges: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

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
        self._thread.join()
        if self.error is not None:
            raise self.error


def _copy_range(src, dst, progress: Progress, limit: int | None) -> tuple[str, int] | None:
    """copy_stream by copy_file_range; None (nothing done) where the kernel cannot do it."""
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
        if hasher is not None:
            hasher, h = None, hasher
            h.finish()
        elif first is not None:
            buf = _take_buffer()
            try:
                _read_back(fout, first[0], first[1], buf, digest)
            finally:
                _give_buffers([buf])
    finally:
        if hasher is not None:  # an error: stop the thread, keep the first error
            try:
                hasher.finish()
            except BaseException:
                pass
    src.seek(in_at + total)
    dst.seek(out_at + total)
    return digest.hexdigest(), total


def copy_stream(src: BinaryIO, dst: BinaryIO | None, progress: Progress = _no_progress,
                limit: int | None = None) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` (or only hash when dst is None); return (sha256, bytes)."""
    if _reusable_io(src, dst):
        if _range_ok(src, dst):
            done = _copy_range(src, dst, progress, limit)
            if done is not None:
                return done
        return _copy_buffered(src, dst, progress, limit)
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
_SYNC_FILE_RANGE_WRITE = 2


def _load_libc():
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
    _load_libc()
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
    """One-line error for an OS failure; a full disk or an I/O error names the file system too."""
    if exc.errno in FULL_ERRNOS:
        return disk_full(path, exc.errno)
    if exc.errno == errno.EIO:
        return FactorArchiveError(f"{path}: input/output error (file system {filesystem_of(path)})")
    return FactorArchiveError(f"{path}: {exc.strerror or exc}")


# ---------------------------------------------------------------------------------------------
# Full disks: which file system, and which of our outputs

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("no space left on device", "disk quota exceeded")
_ABSOLUTE_PATH = re.compile(r"(/[^\s:'\"]+)")


def filesystem_of(path: Path | str) -> str:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    try:
        dev = os.stat(p).st_dev
    except OSError:
        return str(p)
    while p != p.parent:
        try:
            if os.stat(p.parent).st_dev != dev:
                break
        except OSError:
            break
        p = p.parent
    return str(p)


def disk_full(path: Path | str, err: int = errno.ENOSPC, *, during: str = "") -> DiskFull:
    """The one-line error for a full file system (or quota) while writing ``path``."""
    fs = filesystem_of(path)
    if err == errno.EDQUOT:
        what = f"disk quota exceeded{during} (file system {fs})"
    else:
        what = f"no space left on device{during} (file system {fs} is full)"
    return DiskFull(f"{path}: {what}", str(path))


def is_disk_full(exc: BaseException) -> bool:
    """True for a full file system or quota, however it reached us (OSError, our error, the text
    of a casacore error from this process or from the casacore worker)."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return True
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return False
    text = str(exc).lower()
    return any(t in text for t in _FULL_TEXTS)


def written_path(exc: BaseException, roots: list[Path]) -> Path | None:
    """The file named by ``exc`` that lies below one of ``roots`` (where we write), if any.

    A full disk is always one we write to; an error that names another file (a source in the
    run) would send the user to the wrong disk.
    """
    names = []
    if isinstance(exc, DiskFull) and exc.path:
        names.append(exc.path)
    if isinstance(exc, OSError) and exc.filename:
        names.append(os.fsdecode(exc.filename))
    names += _ABSOLUTE_PATH.findall(str(exc))
    for name in names:
        p = Path(os.path.abspath(name))
        for root in roots:
            if p == root or root in p.parents:
                return _without_partial(p)
    return None


_PARTIAL = re.compile(r"^\.(.+)\.partial(-\d+)?$")


def _without_partial(path: Path) -> Path:
    """``dir/.x.ms.partial/table.f0`` -> ``dir/x.ms``: the member as the user knows it."""
    parts = path.parts
    for i, part in enumerate(parts):
        m = _PARTIAL.match(part)
        if m:
            return Path(*parts[:i], m.group(1))
    return path


# ---------------------------------------------------------------------------------------------
# Leftovers of killed runs

def _process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs any more (a zombie counts as gone)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False                # someone else's process: alive, and not ours anyway
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def remove_stale_partials(final: Path, kinds: tuple[str, ...] = ("partial", "staging", "old")) -> list[str]:
    """Remove ``.<name>.<kind>-<pid>`` beside ``final`` left by runs that were killed.

    Only names made for this very output, owned by this user, whose process has exited, are
    removed; a run still going (or another user's) is left alone. Returns one notice per removal,
    for the user to see.
    """
    notices = []
    parent = final.parent
    prefix = f".{final.name}."
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return notices
    for name in sorted(names):
        kind, dash, pid = name[len(prefix):].rpartition("-")
        if not dash or kind not in kinds or not pid.isdigit() or not _process_gone(int(pid)):
            continue
        path = parent / name
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            if path.is_dir() and not path.is_symlink():
                for sub in [path, *path.rglob("*")]:     # read-only directories would stop rmtree
                    if sub.is_dir() and not sub.is_symlink():
                        os.chmod(sub, 0o700)
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        notices.append(f"removed {path}, left by an interrupted run (process {pid} has exited)")
    return notices
