"""Writing the indexed tar: never seeking, so it can go straight to a pipe or a tape."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ...errors import BadInput, FactorArchiveError
from ...io.blobs import BlobStore, BlobWriter
from ...io.copy import Progress, ReusedBufferSink, copy_stream_later, no_progress
from ...io.durable import start_writeback
from ...io.failures import io_error, is_disk_full
from ...io.install import discard
from ...io.leftovers import remove_stale_partials
from ...io.tree import walk_table
from ...manifest import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    TAG_MANIFEST_NAME,
    FileEntry,
    Manifest,
    Member,
    checksums_text,
    safe_relpath,
    tag_manifest_text,
)
from ..base import ArchiveWriter, Capabilities, file_member, table_member
from .format import (
    INDEX_NAME,
    METADATA_NAMES,
    ZERO_BLOCK,
    _created_ns,
    _padding,
    announcement,
    entry_headers,
    index_entry,
)
from .local_blobs import LocalBlobs

WRITEBACK_EVERY = 64 << 20


class _Sink(ReusedBufferSink):
    """The output, counting bytes: offsets come from counting, never from tell() or seek().

    write() hands each block straight on, so copy_stream may reuse its buffers."""

    def __init__(self, f: BinaryIO | BlobWriter, name: str, *, regular_file: bool = False) -> None:
        self.f = f
        self.name = name
        self.pos = 0
        # A regular file opened for reading too: member data is copied into it by the kernel
        # (copy_file_range) and hashed from the page cache on a second core, as the directory
        # form copies; a pipe gets every block through write().
        self.regular_file = regular_file

    def write(self, data: bytes) -> int:
        try:
            self.f.write(data)
        except OSError as exc:
            raise io_error(self.name, exc) from None
        self.pos += len(data)
        return len(data)


class TarWriter(ArchiveWriter):
    """Writes an indexed tar to a path (atomically) or to standard output (``"-"``)."""

    form = "tar"
    capabilities = Capabilities(streams=True)

    def __init__(self, path: str, *, clobber: bool = False, blobs: BlobStore | None = None) -> None:
        """``path``: a local file, ``"-"``, or (with ``blobs``) the blob's name in that store."""
        self._stream = str(path) == "-" and blobs is None
        self._clobber = clobber
        self._staging: Path | None = None
        self._paths: set[str] = set()
        self._parents: set[str] = set()       # every ancestor of a stored path
        self._done = False
        self.notices: list[str] = []           # for the user: leftovers of killed runs removed
        self.path: Path | None = None           # a local output (staging goes beside it)
        self._blob: BlobWriter | None = None
        self._written_back = 0                  # bytes of the output whose write-back was started
        if self._stream:
            if sys.stdout.isatty():
                raise BadInput("refusing to write a tar archive to a terminal; redirect or pipe "
                               "standard output")
            self._stdout: BinaryIO = sys.stdout.buffer
            self._sink = _Sink(self._stdout, "<stdout>")
            return
        if blobs is None:
            self.path = Path(path)
            if self.path.is_dir():
                raise BadInput(f"{path}: is a directory")
            if not self.path.parent.is_dir():
                raise BadInput(f"{self.path.parent}: no such directory")
            if not clobber and os.path.lexists(self.path):
                raise BadInput(f"{path}: already exists (use --clobber to replace it)")
            self.notices = remove_stale_partials(self.path)
            blobs = LocalBlobs(self.path.parent, clobber=clobber)
            name = self.path.name
        else:
            name = str(path)
            if not clobber and blobs.size(name) is not None:
                raise BadInput(f"{blobs.location}/{name}: already exists (use --clobber to replace it)")
        self._blob = blobs.create(name)
        self.notices += getattr(blobs, "notices", [])
        try:
            out = self._blob.file
            self._sink = _Sink(out if out is not None else self._blob, self._blob.name,
                               regular_file=out is not None)
        except BaseException:  # interrupted (Ctrl-C) before the caller holds the writer to abort
            self._blob.abort()
            raise

    @property
    def size(self) -> int:
        """Bytes written so far (a volume set decides by it when the next volume starts)."""
        return self._sink.pos

    # -- ArchiveWriter -------------------------------------------------------------------------

    def write(self, member: Member, source: Path, progress: Progress = no_progress, *,
              staged: bool = False) -> Member:
        return self.begin_write(member, source, progress, staged=staged)()

    def begin_write(self, member: Member, source: Path, progress: Progress = no_progress, *,
                    staged: bool = False) -> Callable[[], Member]:
        """The member's headers and data now; its files' checksums (read back from the output
        on other threads) are waited for by the returned callable, so that the next member is
        copied meanwhile: waiting at the end of each table left a core idle (about 15 % of a
        run's archive, benchmarks/README.md, sixth session)."""
        if self._done:
            raise FactorArchiveError("internal error: write() after close() or abort()")
        path = safe_relpath(member.path, "archive member")
        ancestors = {path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1)}
        if path != member.path or path in (*METADATA_NAMES, INDEX_NAME) \
                or path in self._paths or path in self._parents or ancestors & self._paths:
            raise BadInput(f"{member.path}: archive path clashes with another member or is "
                           "not in normal form")
        source = Path(source)
        finish: Callable[[], Member]
        if member.kind == "file":
            st, sha, offset = self._write_file(path, source, progress, announcement(member))
            finish = functools.partial(self._file_done, member, st, sha, offset)
        elif member.kind == "table":
            finish = self._write_table(member, source, progress)
        elif member.kind == "link":
            # The manifest carries symlink_target; there are no bytes to store.
            link = dataclasses.replace(member, size=0, offset=None)
            finish = lambda: link  # noqa: E731
        else:
            raise BadInput(f"{member.path}: unknown member kind {member.kind!r}")
        self._paths.add(path)
        self._parents |= ancestors
        if staged:
            discard(source)         # generated (calibrated data): scratch peaks at one member
        return finish

    def _file_done(self, member: Member, st: os.stat_result, sha: Callable[[], str], offset: int) -> Member:
        return file_member(member, st, self._checksum(sha), st.st_size, offset=offset)

    def staging_dir(self) -> Path:
        if self._staging is None:
            where = Path(tempfile.gettempdir()) if self.path is None else self.path.parent
            try:
                if self.path is None:
                    self._staging = Path(tempfile.mkdtemp(prefix=".stdout.staging-", dir=where))
                else:   # named after this process, so a rerun after kill -9 can remove it
                    self._staging = where / f".{self.path.name}.staging-{os.getpid()}"
                    discard(self._staging)
                    self._staging.mkdir()  # known before it exists: abort() removes it whenever it comes
            except OSError as exc:
                raise io_error(where, exc) from None
        return self._staging

    def close(self, manifest: Manifest) -> None:
        if self._done:
            raise FactorArchiveError("internal error: close() after close() or abort()")
        manifest.container = "tar"
        manifest.tag_manifest = TAG_MANIFEST_NAME
        self.finish(metadata_blobs(manifest), _created_ns(manifest))

    def finish(self, blobs: dict[str, bytes], mtime_ns: int) -> None:
        """Write ``blobs`` (name -> bytes) as the last entries, the index pointing at them and
        the end-of-archive blocks, then commit: the archive appears complete only now."""
        if self._done:
            raise FactorArchiveError("internal error: close() after close() or abort()")
        entries = {name: self._write_blob(name, data, mtime_ns) for name, data in blobs.items()}
        self._sink.write(index_entry(entries, mtime_ns // 10 ** 9))
        self._sink.write(ZERO_BLOCK * 2)
        try:
            if self._blob is None:
                self._stdout.flush()
                self._fsync_stdout()
            else:
                self._blob.commit()
        except OSError as exc:
            raise io_error(self._sink.name, exc) from None
        self._done = True
        self._remove_staging()

    def abort(self) -> None:
        self._done = True
        if self._blob is not None:
            self._blob.abort()
        # A stream gets no index and no end-of-archive blocks: readers see it as truncated.
        self._remove_staging()

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None and not self._done:
            self.abort()

    # -- internals -----------------------------------------------------------------------------

    def _write_file(self, apath: str, source: Path, progress: Progress,
                    comment: str | None) -> tuple[os.stat_result, Callable[[], str], int]:
        """Headers and data of one file; its checksum may still be computing (call it)."""
        try:
            if not stat.S_ISREG(os.stat(source).st_mode):   # never open a FIFO or a device
                raise BadInput(f"{source}: not a regular file")
            f = open(source, "rb")  # noqa: SIM115 - opened apart from its with, so an OSError names the file
        except OSError as exc:
            raise io_error(source, exc) from None
        with f:
            st = os.fstat(f.fileno())
            self._sink.write(entry_headers(apath, b"0", st.st_size, stat.S_IMODE(st.st_mode),
                                           st.st_mtime_ns, comment))
            offset = self._sink.pos
            dst = self._sink.f if self._sink.regular_file else self._sink
            try:
                sha, size = copy_stream_later(f, dst, progress, limit=st.st_size)
            except OSError as exc:      # a full disk is the output's; anything else the source's
                raise io_error(self._sink.name if is_disk_full(exc) else source, exc) from None
            if dst is not self._sink:
                self._sink.pos += size
                self._start_writeback()
        if size != st.st_size:
            raise FactorArchiveError(f"{source}: file shrank while being archived")
        self._sink.write(_padding(size))
        return st, sha, offset

    def _start_writeback(self) -> None:
        """Every WRITEBACK_EVERY bytes, let the disk start on what is written (sync_file_range):
        writing back overlaps the copying, and the fsync at close has little left to do (measured
        in benchmarks/README.md, "tar writer: early write-back")."""
        out = self._blob.file if self._blob is not None else None
        if out is not None and self._sink.pos - self._written_back >= WRITEBACK_EVERY:
            start_writeback(out.fileno())
            self._written_back = self._sink.pos

    def _write_dir(self, apath: str, st: os.stat_result, comment: str | None = None) -> None:
        self._sink.write(entry_headers(apath + "/", b"5", 0, stat.S_IMODE(st.st_mode),
                                       st.st_mtime_ns, comment))

    def _table_head(self, member: Member, root: Path) -> tuple[os.stat_result, list[tuple[str, Path]],
                                                                list[str]]:
        """A table's directory entries, the root's announcing the member; returns the root's
        stat and the table's files and sub-directories (the files are the caller's to write)."""
        try:
            st_root = os.stat(root)
        except OSError as exc:
            raise io_error(root, exc) from None
        if not stat.S_ISDIR(st_root.st_mode):
            raise BadInput(f"{root}: not a directory (expected a table)")
        files, dirs = walk_table(root)
        self._write_dir(member.path, st_root, announcement(member))
        for d in dirs:
            try:
                st = os.stat(root / d)
            except OSError as exc:
                raise io_error(root / d, exc) from None
            self._write_dir(f"{member.path}/{d}", st)
        return st_root, files, dirs

    def _write_table(self, member: Member, root: Path, progress: Progress) -> Callable[[], Member]:
        """The table's entries now; the callable returned waits for its checksums."""
        st_root, files, dirs = self._table_head(member, root)
        # A file is hashed (from the page cache, on a second core) while the next is copied.
        written: list[tuple[str, Path, os.stat_result, Callable[[], str], int]] = []
        try:
            for rel, full in files:
                st, sha, offset = self._write_file(f"{member.path}/{rel}", full, progress, None)
                written.append((rel, full, st, sha, offset))
        except BaseException:
            for _rel, _full, _st, sha, _offset in written:
                self._checksum(sha, quiet=True)      # let the hashing threads end
            raise

        def finish() -> Member:
            sums = [self._checksum(sha) for _rel, _full, _st, sha, _offset in written]
            entries = [FileEntry(rel, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime, digest, offset)
                       for (rel, _full, st, _sha, offset), digest in zip(written, sums)]
            return table_member(member, entries, dirs, mode=stat.S_IMODE(st_root.st_mode),
                                mtime=st_root.st_mtime, offset=None)
        return finish

    def _checksum(self, sha: Callable[[], str], *, quiet: bool = False) -> str:
        """Wait for a file's checksum; a read-back failure is the output's (quiet: after another
        failure, only let the hashing finish)."""
        try:
            return sha()
        except OSError as exc:
            if quiet:
                return ""
            raise io_error(self._sink.name, exc) from None
        except BaseException:
            if quiet:
                return ""
            raise

    def _write_blob(self, apath: str, data: bytes, mtime_ns: int) -> tuple[int, int, str]:
        self._sink.write(entry_headers(apath, b"0", len(data), 0o644, mtime_ns))
        offset = self._sink.pos
        self._sink.write(data)
        self._sink.write(_padding(len(data)))
        return offset, len(data), hashlib.sha256(data).hexdigest()

    def _fsync_stdout(self) -> None:
        try:
            os.fsync(self._stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass        # a pipe or a terminal: nothing to make durable here

    def _remove_staging(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def metadata_blobs(manifest: Manifest) -> dict[str, bytes]:
    """The manifest, its checksum file and the tag manifest, in archive order."""
    blobs = {MANIFEST_NAME: manifest.to_json().encode("utf-8"),
             CHECKSUMS_NAME: checksums_text(manifest).encode("utf-8")}
    blobs[TAG_MANIFEST_NAME] = tag_manifest_text(blobs).encode("utf-8")
    return {name: blobs[name] for name in METADATA_NAMES}
