"""Reading the indexed tar: by seeking when it can, otherwise in one sequential pass."""

from __future__ import annotations

import hashlib
import os
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ...errors import BadInput, DamagedArchive, FactorArchiveError, UnsafeArchive
from ...io.copy import Progress, copy_stream, copy_stream_later, no_progress
from ...io.durable import WRITEBACK_MIN, start_writeback
from ...io.failures import io_error
from ...io.install import Undo, discard, install, partial_name, set_meta, set_table_meta
from ...manifest import (
    MANIFEST_NAME,
    Manifest,
    Member,
    tree_digest,
)
from ..base import ArchiveReader, Capabilities, DestFor
from .format import (
    BLOCKSIZE,
    INDEX_NAME,
    MAX_MANIFEST,
    MAX_OCTAL,
    TRAILER_SIZE,
    ZERO_BLOCK,
    _describe,
    parse_header,
    parse_index,
    ustar_names,
)
from .stream import OnePass, _Scanner

# How many copied files of a table may still be hashing while the next is copied: the copy runs in
# the kernel on this thread, the read-back hashing on others, so both cores stay busy.
_CHECKS_BEHIND = 2


class _PendingCheck:
    """A member file copied, its checksum perhaps still computing; the file is open until then."""

    def __init__(self, archive: str, out: BinaryIO, dst: Path, finish: Callable[[], str], n: int,
                 size: int, sha: str, what: str) -> None:
        self.archive, self.out, self.dst, self.finish = archive, out, dst, finish
        self.n, self.size, self.sha, self.what = n, size, sha, what

    def check(self) -> None:
        try:
            try:
                got = self.finish()
            except OSError as exc:
                raise io_error(self.dst, exc) from None
            if self.n >= WRITEBACK_MIN:  # the restore is synced at its end: let the disk start now
                self.out.flush()
                start_writeback(self.out.fileno())
        finally:
            self.out.close()
        if self.n != self.size:
            raise DamagedArchive(f"{self.archive}: archive truncated in member {self.what}")
        if got != self.sha:
            raise DamagedArchive(f"{self.archive}: member {self.what} is damaged (sha256 mismatch)")

    def abandon(self) -> None:
        """After an error elsewhere: wait for the hashing thread (it reads the open file), close."""
        try:
            self.finish()
        except BaseException:
            pass
        finally:
            self.out.close()


class TarReader(OnePass, ArchiveReader):
    """Reads an indexed tar: by seeking when it can, otherwise in one sequential pass."""

    form = "tar"

    def __init__(self, source: str | os.PathLike | BinaryIO, *,
                 staging: Path | None = None, owns: bool = False, name: str | None = None) -> None:
        """``source``: a path, ``"-"``, or an open file (``owns``: closed with the reader;
        ``name``: what messages call it, e.g. the blob's URL)."""
        self._own = False
        if isinstance(source, (str, os.PathLike)):
            if str(source) == "-":
                if sys.stdin.isatty():
                    raise BadInput("archive '-': standard input is a terminal, not a tar stream")
                self._f: BinaryIO = sys.stdin.buffer
                self.name = "<stdin>"
            else:
                self.name = str(source)
                if os.path.isdir(source):
                    raise BadInput(f"{source}: is a directory, not a tar archive")
                try:
                    self._f = open(source, "rb")  # noqa: SIM115 - the reader owns it until close()
                except OSError as exc:
                    raise BadInput(f"{source}: cannot open ({exc.strerror})") from None
                self._own = True
        else:
            self._f = source
            self._own = owns
            if name is None:
                name = getattr(source, "name", None)
            self.name = name if isinstance(name, str) else "<stream>"
        self._staging_parent = staging
        self._spool: Path | None = None
        self._consumed = False
        self._manifest: Manifest | None = None
        self._base = 0
        self._seekable = self._can_seek()
        self.capabilities = Capabilities(seekable=self._seekable, streams=True)  # a pipe cannot seek
        if self._seekable:
            try:
                self._open_index()
            except BaseException:
                self.close()
                raise

    # -- ArchiveReader -------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        """For a stream this reads everything into a staging directory first: a caller that
        can decide from member fields alone should call ``extract(None, ...)`` instead."""
        if self._manifest is None:
            self._spool_all()
        assert self._manifest is not None
        return self._manifest

    def extract(self, members: list[Member] | None, dest_for: DestFor,
                progress: Progress = no_progress) -> None:
        """Extract ``members`` (None: every member) to dest_for(member); None skips a member.

        On a stream that has not been read yet, dest_for receives the member as announced in
        the stream (all fields but sizes and checksums) and the manifest is checked at the end.
        """
        if self._seekable:
            for member in self.manifest.members if members is None else members:
                dest = dest_for(member)
                if dest is None or member.kind not in ("file", "table"):
                    continue
                if member.kind == "file":
                    self._extract_file(member, Path(dest), progress)
                else:
                    self._extract_table(member, Path(dest), progress)
        elif self._spool is not None:
            self._extract_spooled(members, dest_for, progress)
        elif self._consumed:
            raise FactorArchiveError(f"{self.name}: the stream has already been read")
        else:
            wanted = None if members is None else {m.path for m in members}
            self._one_pass(dest_for, wanted, progress, strict=True)

    def local_path(self, member: Member) -> Path | None:
        return None

    def verify(self, progress: Progress = no_progress) -> list[str]:
        if not self._seekable:
            if self._consumed:
                return []           # spooled: every check already passed
            return self._one_pass(lambda m: None, None, progress, strict=False)
        problems = []
        for member in self.manifest.members:
            if member.kind == "file":
                files = [(member.path, member.offset, member.size, member.sha256,
                          repr(member.path))]
            elif member.kind == "table":
                files = [(f"{member.path}/{e.path}", e.offset, e.size, e.sha256,
                          f"{member.path!r} (file {e.path!r})") for e in member.files]
                if tree_digest(member.files) != member.sha256:
                    problems.append(f"{self.name}: manifest entry of {member.path!r} is "
                                    "inconsistent (tree digest)")
            else:
                continue
            for path, offset, size, sha, label in files:
                try:
                    offset = self._check_header(path, offset, size, label)
                    self._f.seek(self._base + offset)
                    got, n = copy_stream(self._f, None, progress, limit=size)
                except FactorArchiveError as exc:
                    problems.append(str(exc))
                    continue
                except OSError as exc:
                    problems.append(str(io_error(self.name, exc)))
                    continue
                if got != sha or n != size:
                    problems.append(f"{self.name}: member {label} is damaged (sha256 mismatch)")
        # Then the structure: every entry safe and listed, seeking over the data.
        self._f.seek(self._base)
        for line in self._one_pass(lambda m: None, None, no_progress, strict=False,
                                   scanner=_Scanner(self._f, self.name, self._base),
                                   hash_data=False):
            if line not in problems:
                problems.append(line)
        return problems

    def close(self) -> None:
        if self._spool is not None:
            discard(self._spool)
            self._spool = None
        if self._own:
            self._f.close()

    def __enter__(self) -> TarReader:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # -- seekable ------------------------------------------------------------------------------

    def _can_seek(self) -> bool:
        try:
            if not self._f.seekable():
                return False
            self._base = self._f.tell()
            return True
        except (OSError, ValueError, AttributeError):
            return False

    def _read_at(self, offset: int, n: int) -> bytes:
        try:
            self._f.seek(self._base + offset)
            data = self._f.read(n)
        except OSError as exc:
            raise io_error(self.name, exc) from None
        return data

    def _open_index(self) -> None:
        try:
            self._size = self._f.seek(0, os.SEEK_END) - self._base
        except OSError as exc:
            raise io_error(self.name, exc) from None
        index = None
        if self._size >= TRAILER_SIZE and self._size % BLOCKSIZE == 0:
            tail = self._read_at(self._size - TRAILER_SIZE, TRAILER_SIZE)
            try:
                header = parse_header(tail[:BLOCKSIZE])
            except ValueError:
                header = None
            if header is not None and header.typeflag == b"0" and header.size == BLOCKSIZE \
                    and header.name == INDEX_NAME.encode() \
                    and tail[2 * BLOCKSIZE:] == ZERO_BLOCK * 2:
                index = parse_index(tail[BLOCKSIZE:2 * BLOCKSIZE])
        if index is None:
            raise self._diagnose()
        offset, size, sha = index[MANIFEST_NAME]
        if offset % BLOCKSIZE or offset < BLOCKSIZE or size > MAX_MANIFEST \
                or offset + size > self._size - TRAILER_SIZE:
            raise DamagedArchive(f"{self.name}: the index points outside the archive")
        self._check_header(MANIFEST_NAME, offset, size, "the manifest")
        data = self._read_at(offset, size)
        if hashlib.sha256(data).hexdigest() != sha:
            raise DamagedArchive(f"{self.name}: the manifest is damaged (sha256 mismatch)")
        self._manifest = Manifest.from_json(data, f"{self.name}: {MANIFEST_NAME}")
        self._check_tag_listed(self._manifest, index)
        self._data_end = offset - BLOCKSIZE
        self._consumed = True

    def _diagnose(self) -> BadInput:
        """Why there is no index: walk the headers (seeking over data) to name where it ends."""
        self._f.seek(self._base)
        scanner = _Scanner(self._f, self.name, self._base)
        try:
            while True:
                entry = scanner.next()
                if entry is None:
                    return BadInput(f"{self.name}: no factor-archive index at the end (not written "
                                    "by factor-archive, or damaged)")
                scanner.skip_data(entry)
                if entry.name == INDEX_NAME:
                    return DamagedArchive(f"{self.name}: damaged or misplaced factor-archive index")
        except BadInput as exc:
            return DamagedArchive(str(exc) + " (the index is missing)")

    def _check_header(self, path: str, offset: Any, size: Any, what: str) -> int:
        """The manifest's offset must point just after the ustar header of that very file;
        returns it."""
        if not isinstance(offset, int) or not isinstance(size, int) or offset % BLOCKSIZE \
                or offset < BLOCKSIZE or size < 0 \
                or offset + size > getattr(self, "_data_end", self._size):
            raise DamagedArchive(f"{self.name}: {what}: manifest offset points outside the archive")
        try:
            header = parse_header(self._read_at(offset - BLOCKSIZE, BLOCKSIZE))
        except ValueError:
            raise DamagedArchive(f"{self.name}: {what}: damaged tar header") from None
        if header is not None and header.typeflag not in (b"0", b"\0", b"x", b"g", b"5"):
            raise UnsafeArchive(f"{self.name}: {what}: manifest points at a "
                                f"{_describe(header.typeflag)} entry")
        if header is None or header.typeflag not in (b"0", b"\0") \
                or header.name not in ustar_names(path) \
                or header.size != (size if size <= MAX_OCTAL else 0):
            raise DamagedArchive(f"{self.name}: {what}: manifest offset does not point at its data")
        return offset

    def _copy_checked(self, path: str, offset: int | None, size: int, sha: str, dst: Path,
                      progress: Progress, what: str) -> None:
        self._start_copy(path, offset, size, sha, dst, progress, what).check()

    def _start_copy(self, path: str, offset: int | None, size: int, sha: str, dst: Path,
                    progress: Progress, what: str) -> _PendingCheck:
        """Copy a member's data to ``dst``; its checksum may still be computing on return (the
        file stays open for it until :meth:`_PendingCheck.check`)."""
        offset = self._check_header(path, offset, size, what)
        try:
            out = open(dst, "w+b")  # noqa: SIM115 - open until its check, so an OSError names the file
        except OSError as exc:
            raise io_error(dst, exc) from None
        try:
            self._f.seek(self._base + offset)
            try:
                finish, n = copy_stream_later(self._f, out, progress, limit=size)
            except OSError as exc:
                raise io_error(dst, exc) from None
        except BaseException:
            out.close()
            raise
        return _PendingCheck(self.name, out, dst, finish, n, size, sha, what)

    def _extract_file(self, member: Member, dest: Path, progress: Progress) -> None:
        cleanup = Undo()
        try:
            cleanup.makedirs(dest.parent)
            tmp = cleanup.fresh(partial_name(dest))
            self._copy_checked(member.path, member.offset, member.size, member.sha256, tmp,
                               progress, repr(member.path))
            set_meta(tmp, member.mode, member.mtime)
            install(tmp, dest)
        except BaseException as exc:
            cleanup.undo()
            if isinstance(exc, OSError):
                raise io_error(dest, exc) from None
            raise

    def _extract_table(self, member: Member, dest: Path, progress: Progress) -> None:
        if tree_digest(member.files) != member.sha256:
            raise DamagedArchive(f"{self.name}: manifest entry of {member.path!r} is inconsistent "
                                 "(tree digest)")
        cleanup = Undo()
        try:
            cleanup.makedirs(dest.parent)
            root = cleanup.fresh(partial_name(dest))
            os.mkdir(root, 0o700)
            for d in member.dirs:
                (root / d).mkdir(parents=True, exist_ok=True)
            # A file's checksum is read back and computed on another thread while the next
            # files are copied; each is checked before the table is installed.
            lagging: deque[_PendingCheck] = deque()
            try:
                for entry in member.files:
                    target = root / entry.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    lagging.append(self._start_copy(
                        f"{member.path}/{entry.path}", entry.offset, entry.size, entry.sha256,
                        target, progress, f"{member.path!r} (file {entry.path!r})"))
                    while len(lagging) > _CHECKS_BEHIND:
                        lagging.popleft().check()
                while lagging:
                    lagging.popleft().check()
            finally:
                for pending in lagging:
                    pending.abandon()
            set_table_meta(root, [(e.path, e.mode, e.mtime) for e in member.files], member.dirs,
                           member.mode, member.mtime)
            install(root, dest)
        except BaseException as exc:
            cleanup.undo()
            if isinstance(exc, OSError):
                raise io_error(dest, exc) from None
            raise

    # -- one pass (streams, and verify) --------------------------------------------------------
