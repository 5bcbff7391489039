"""The indexed tar form: one POSIX pax tar that ``tar xf`` turns into the directory-form tree.

The manifest records where each file's data starts, and a fixed-size index at the very end
points at the manifest, so a reader with a seekable file reads only what it extracts. Writing
never seeks, so an archive can go straight to a pipe or a tape. ``formats/tar.md`` specifies
the byte layout; this module is the only code that depends on it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import BadInput, DamagedArchive, FactorArchiveError, UnsafeArchive
from ..io.copy import Progress, ReusedBufferSink, copy_stream, no_progress
from ..io.durable import fsync_dir
from ..io.failures import io_error
from ..io.install import Undo, discard, install, partial_name, set_meta, set_table_meta
from ..io.leftovers import remove_stale_partials
from ..io.tree import walk_table
from ..manifest import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    TAG_MANIFEST_NAME,
    FileEntry,
    Manifest,
    Member,
    check_checksums_file,
    check_member_paths,
    checksums_text,
    safe_relpath,
    tag_manifest_text,
    tag_problems,
    tree_digest,
)
from .base import fill_file_member, finish_table_member

BLOCKSIZE = 512
ZERO_BLOCK = b"\0" * BLOCKSIZE
MAX_OCTAL = 8 ** 11 - 1            # largest size or mtime an 11-digit ustar field holds
PAX_HEADER_NAME = "././@PaxHeader"
INDEX_NAME = ".factor-archive-index"
INDEX_MAGIC = "factor-archive-index 1"
INDEX_CHECKSUM = "index-sha256"    # last line of the index: sha256 of the lines above it
METADATA_NAMES = (MANIFEST_NAME, CHECKSUMS_NAME, TAG_MANIFEST_NAME)   # in archive order
MEMBER_MAGIC = "factor-archive-member "
TRAILER_SIZE = 4 * BLOCKSIZE       # index header + index record + two zero blocks
MAX_MANIFEST = 1 << 30
MAX_PAX = 16 << 20
# Member fields known before the data is read: announced in the stream so that a one-pass
# reader can place a member before it has seen the manifest.
ANNOUNCED = ("path", "source", "category", "kind", "direction", "restore_path",
             "symlink_target", "rewrite", "extra")

_TYPE_NAMES = {b"1": "hard link", b"2": "symbolic link", b"3": "character device",
               b"4": "block device", b"6": "FIFO", b"L": "GNU long name", b"K": "GNU long link",
               b"S": "GNU sparse file", b"D": "GNU dump directory", b"M": "multi-volume"}


def looks_like_tar(head: bytes) -> bool:
    """True for a POSIX (or GNU) tar: the ustar magic of the first header."""
    return len(head) >= 263 and head[257:262] == b"ustar"


# ---------------------------------------------------------------------------------------------
# Encoding

def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def ustar_name(path: str) -> tuple[bytes, bytes]:
    """(name, prefix) fields for ``path``; the pax ``path`` record is authoritative anyway."""
    raw = path.encode("utf-8")
    if len(raw) <= 100:
        return raw, b""
    body = raw.rstrip(b"/")
    cut = body.rfind(b"/", 0, 156)
    while cut > 0:
        if len(raw) - cut - 1 <= 100:
            return raw[cut + 1:], raw[:cut]
        cut = body.rfind(b"/", 0, cut)
    return b"@LongName/" + hashlib.sha256(raw).hexdigest()[:32].encode(), b""


def ustar_header(path: str, typeflag: bytes, size: int, mode: int, mtime: int) -> bytes:
    name, prefix = ustar_name(path)
    block = b"".join([
        name.ljust(100, b"\0"),
        _octal(mode & 0o7777, 8), _octal(0, 8), _octal(0, 8),
        _octal(size if size <= MAX_OCTAL else 0, 12),
        _octal(min(max(mtime, 0), MAX_OCTAL), 12),
        b" " * 8,
        typeflag,
        b"\0" * 100,
        b"ustar\x0000",
        b"\0" * 64,                 # uname, gname: empty
        _octal(0, 8), _octal(0, 8),
        prefix.ljust(155, b"\0"),
        b"\0" * 12,
    ])
    assert len(block) == BLOCKSIZE
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def format_mtime(mtime_ns: int) -> str:
    sign = "-" if mtime_ns < 0 else ""
    sec, frac = divmod(abs(mtime_ns), 10 ** 9)
    return f"{sign}{sec}.{frac:09d}".rstrip("0").rstrip(".")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCKSIZE)


def entry_headers(path: str, typeflag: bytes, size: int, mode: int, mtime_ns: int,
                  comment: str | None = None) -> bytes:
    """A pax extended header then the ustar header: every entry has both, so layout is uniform."""
    records = [pax_record("path", path), pax_record("mtime", format_mtime(mtime_ns))]
    if size > MAX_OCTAL:
        records.append(pax_record("size", str(size)))
    if comment is not None:
        records.append(pax_record("comment", comment))
    data = b"".join(records)
    mtime = mtime_ns // 10 ** 9
    return (ustar_header(PAX_HEADER_NAME, b"x", len(data), 0o644, mtime) + data
            + _padding(len(data)) + ustar_header(path, typeflag, size, mode, mtime))


def index_entry(entries: dict[str, tuple[int, int, str]], mtime: int) -> bytes:
    """The fixed-size index: a plain ustar file (no pax header) of exactly one block.

    ``entries`` maps each metadata file to (offset, size, sha256). The last line is the
    checksum of the lines above it, so a flipped bit anywhere in the index is noticed.
    A regular file rather than a pax global header because Python's tarfile rejects a global
    header directly before the end-of-archive blocks.
    """
    body = f"{INDEX_MAGIC}\n" + "".join(f"{name} {offset} {size} {sha}\n"
                                         for name, (offset, size, sha) in entries.items())
    body += f"{INDEX_CHECKSUM} {hashlib.sha256(body.encode('ascii')).hexdigest()}\n"
    data = body.encode("ascii")
    data += b" " * (BLOCKSIZE - len(data) - 1) + b"\n"
    assert len(data) == BLOCKSIZE
    return ustar_header(INDEX_NAME, b"0", BLOCKSIZE, 0o644, mtime) + data


# ---------------------------------------------------------------------------------------------
# Decoding

@dataclass
class _Header:
    typeflag: bytes
    name: bytes                    # prefix/name joined
    name_field: bytes
    prefix_field: bytes
    size: int
    mode: int
    mtime: int


def _num(field_: bytes) -> int:
    if field_[:1] == b"\x80":                # GNU base-256 (we never write it)
        return int.from_bytes(field_[1:], "big")
    if field_[:1] and field_[0] & 0x80:
        raise ValueError("negative number")
    text = field_.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def parse_header(block: bytes) -> _Header | None:
    """None for a zero block; ValueError for anything that is not a valid tar header."""
    if block == ZERO_BLOCK:
        return None
    if len(block) != BLOCKSIZE:
        raise ValueError("short header")
    stored = _num(block[148:156])
    if stored != sum(block[:148]) + 256 + sum(block[156:]):
        raise ValueError("header checksum mismatch")
    name_field = block[0:100].split(b"\0", 1)[0]
    prefix_field = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
    name = prefix_field + b"/" + name_field if prefix_field else name_field
    return _Header(block[156:157], name, name_field, prefix_field, _num(block[124:136]),
                   _num(block[100:108]), _num(block[136:148]))


def parse_pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            raise ValueError("bad pax record")
        length = int(data[pos:space])
        record = data[space + 1:pos + length]
        if length <= space - pos or pos + length > len(data) or not record.endswith(b"\n") \
                or b"=" not in record:
            raise ValueError("bad pax record")
        key, value = record[:-1].split(b"=", 1)
        records[key.decode("utf-8")] = value.decode("utf-8")
        pos += length
    return records


def parse_index(data: bytes) -> dict[str, tuple[int, int, str]] | None:
    """The index's entries, or None if ``data`` is not an intact factor-archive index.

    An index with an ``index-sha256`` line must match it; after the lines, only the padding
    the writer puts there (spaces, a final newline) is allowed. Indexes written before the
    checksum line existed have none and are accepted as they are.
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(data) != BLOCKSIZE or not text.endswith("\n"):
        return None
    body, _sep, padding = text[:-1].rpartition("\n")
    if padding.strip(" ") or not body:
        return None
    lines = body.split("\n")
    if lines[0] != INDEX_MAGIC:
        return None
    index = {}
    for at, line in enumerate(lines[1:], start=1):
        parts = line.split(" ")
        if parts[0] == INDEX_CHECKSUM:
            covered = "".join(f"{previous}\n" for previous in lines[:at]).encode("ascii")
            if len(parts) != 2 or at != len(lines) - 1 \
                    or hashlib.sha256(covered).hexdigest() != parts[1]:
                return None
        elif len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit() and len(parts[3]) == 64:
            index[parts[0]] = (int(parts[1]), int(parts[2]), parts[3])
        # anything else: a line a later version added
    if MANIFEST_NAME not in index:
        return None
    return index


def _describe(typeflag: bytes) -> str:
    return _TYPE_NAMES.get(typeflag, f"type {typeflag!r}")


# ---------------------------------------------------------------------------------------------
# Writing

class _Sink(ReusedBufferSink):
    """The output, counting bytes: offsets come from counting, never from tell() or seek().

    write() hands each block straight on, so copy_stream may reuse its buffers."""

    def __init__(self, f: BinaryIO, name: str) -> None:
        self.f = f
        self.name = name
        self.pos = 0

    def write(self, data: bytes) -> int:
        try:
            self.f.write(data)
        except OSError as exc:
            raise io_error(self.name, exc) from None
        self.pos += len(data)
        return len(data)


def announcement(member: Member) -> str:
    """The `comment` that lets a one-pass reader place a member before seeing the manifest."""
    fields = {key: getattr(member, key) for key in ANNOUNCED}
    return MEMBER_MAGIC + json.dumps(fields, sort_keys=True, ensure_ascii=False,
                                     separators=(",", ":"))


def _created_ns(manifest: Manifest) -> int:
    try:
        created = datetime.fromisoformat(manifest.created.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return 0
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return max(0, int(created.timestamp())) * 10 ** 9


class TarWriter:
    """Writes an indexed tar to a path (atomically) or to standard output (``"-"``)."""

    form = "tar"

    def __init__(self, path: str, *, clobber: bool = False) -> None:
        self._stream = str(path) == "-"
        self._clobber = clobber
        self._staging: Path | None = None
        self._paths: set[str] = set()
        self._parents: set[str] = set()       # every ancestor of a stored path
        self._done = False
        self.notices: list[str] = []           # for the user: leftovers of killed runs removed
        if self._stream:
            self.path: Path | None = None
            self._partial: Path | None = None
            if sys.stdout.isatty():
                raise BadInput("refusing to write a tar archive to a terminal; redirect or pipe "
                               "standard output")
            self._sink = _Sink(sys.stdout.buffer, "<stdout>")
            return
        self.path = Path(path)
        if self.path.is_dir():
            raise BadInput(f"{path}: is a directory")
        if not self.path.parent.is_dir():
            raise BadInput(f"{self.path.parent}: no such directory")
        if not clobber and os.path.lexists(self.path):
            raise BadInput(f"{path}: already exists (use --clobber to replace it)")
        self.notices = remove_stale_partials(self.path)
        self._partial = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        try:
            f = open(self._partial, "wb")
        except OSError as exc:
            raise io_error(self._partial, exc) from None
        try:
            self._sink = _Sink(f, str(self.path))
        except BaseException:  # interrupted (Ctrl-C) before the caller holds the writer to abort
            f.close()
            os.unlink(self._partial)
            raise

    # -- ArchiveWriter -------------------------------------------------------------------------

    def write(self, member: Member, source: Path, progress: Progress = no_progress) -> Member:
        if self._done:
            raise FactorArchiveError("internal error: write() after close() or abort()")
        path = safe_relpath(member.path, "archive member")
        ancestors = {path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1)}
        if path != member.path or path in (*METADATA_NAMES, INDEX_NAME) \
                or path in self._paths or path in self._parents or ancestors & self._paths:
            raise BadInput(f"{member.path}: archive path clashes with another member or is "
                           "not in normal form")
        source = Path(source)
        if member.kind == "file":
            st, sha, offset = self._write_file(path, source, progress, announcement(member))
            fill_file_member(member, st, sha, st.st_size)
            member.offset = offset
        elif member.kind == "table":
            self._write_table(member, source, progress)
        elif member.kind == "link":
            # The manifest carries symlink_target; there are no bytes to store.
            member.size, member.offset = 0, None
        else:
            raise BadInput(f"{member.path}: unknown member kind {member.kind!r}")
        self._paths.add(path)
        self._parents |= ancestors
        if self._staging is not None and self._staging in source.parents:
            discard(source)         # generated (calibrated data): scratch peaks at one member
        return member

    def staging_dir(self) -> Path:
        if self._staging is None:
            where = Path(tempfile.gettempdir()) if self._stream else self.path.parent
            try:
                if self._stream:
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
        mtime_ns = _created_ns(manifest)
        blobs = {MANIFEST_NAME: manifest.to_json().encode("utf-8"),
                 CHECKSUMS_NAME: checksums_text(manifest).encode("utf-8")}
        blobs[TAG_MANIFEST_NAME] = tag_manifest_text(blobs).encode("utf-8")
        entries = {name: self._write_blob(name, blobs[name], mtime_ns) for name in METADATA_NAMES}
        self._sink.write(index_entry(entries, mtime_ns // 10 ** 9))
        self._sink.write(ZERO_BLOCK * 2)
        out = self._sink.f
        try:
            out.flush()
            if self._stream:
                self._fsync_stdout()
            else:
                os.fsync(out.fileno())
                out.close()
                self._publish()
        except OSError as exc:
            raise io_error(self._sink.name, exc) from None
        self._done = True
        self._remove_staging()

    def abort(self) -> None:
        self._done = True
        if not self._stream:
            try:
                self._sink.f.close()
            except OSError:
                pass
            if self._partial is not None:
                try:
                    os.unlink(self._partial)
                except FileNotFoundError:
                    pass
        # A stream gets no index and no end-of-archive blocks: readers see it as truncated.
        self._remove_staging()

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None and not self._done:
            self.abort()

    # -- internals -----------------------------------------------------------------------------

    def _write_file(self, apath: str, source: Path, progress: Progress,
                    comment: str | None) -> tuple[os.stat_result, str, int]:
        try:
            if not stat.S_ISREG(os.stat(source).st_mode):   # never open a FIFO or a device
                raise BadInput(f"{source}: not a regular file")
            f = open(source, "rb")
        except OSError as exc:
            raise io_error(source, exc) from None
        with f:
            st = os.fstat(f.fileno())
            self._sink.write(entry_headers(apath, b"0", st.st_size, stat.S_IMODE(st.st_mode),
                                           st.st_mtime_ns, comment))
            offset = self._sink.pos
            try:
                sha, size = copy_stream(f, self._sink, progress, limit=st.st_size)
            except OSError as exc:
                raise io_error(source, exc) from None
        if size != st.st_size:
            raise FactorArchiveError(f"{source}: file shrank while being archived")
        self._sink.write(_padding(size))
        return st, sha, offset

    def _write_dir(self, apath: str, st: os.stat_result, comment: str | None = None) -> None:
        self._sink.write(entry_headers(apath + "/", b"5", 0, stat.S_IMODE(st.st_mode),
                                       st.st_mtime_ns, comment))

    def _write_table(self, member: Member, root: Path, progress: Progress) -> None:
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
        entries = []
        for rel, full in files:
            st, sha, offset = self._write_file(f"{member.path}/{rel}", full, progress, None)
            entries.append(FileEntry(rel, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime,
                                     sha, offset))
        finish_table_member(member, entries, dirs)
        member.mode = stat.S_IMODE(st_root.st_mode)
        member.mtime = st_root.st_mtime
        member.offset = None

    def _write_blob(self, apath: str, data: bytes, mtime_ns: int) -> tuple[int, int, str]:
        self._sink.write(entry_headers(apath, b"0", len(data), 0o644, mtime_ns))
        offset = self._sink.pos
        self._sink.write(data)
        self._sink.write(_padding(len(data)))
        return offset, len(data), hashlib.sha256(data).hexdigest()

    def _fsync_stdout(self) -> None:
        try:
            os.fsync(self._sink.f.fileno())
        except (OSError, ValueError, AttributeError):
            pass        # a pipe or a terminal: nothing to make durable here

    def _publish(self) -> None:
        assert self.path is not None and self._partial is not None
        if self._clobber:
            os.replace(self._partial, self.path)
        else:
            try:                                    # fails instead of replacing a newcomer
                os.link(self._partial, self.path)
            except FileExistsError:
                os.unlink(self._partial)
                raise BadInput(f"{self.path}: appeared while archiving; not replaced") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                if os.path.lexists(self.path):
                    os.unlink(self._partial)
                    raise BadInput(f"{self.path}: appeared while archiving; not replaced") \
                        from None
                os.rename(self._partial, self.path)
            else:
                os.unlink(self._partial)
        fsync_dir(self.path.parent)

    def _remove_staging(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


# ---------------------------------------------------------------------------------------------
# Reading

class _Truncated(Exception):
    pass


@dataclass
class _Entry:
    typeflag: bytes
    name: str                  # as stored (pax path), trailing "/" removed
    size: int
    data_offset: int
    comment: str | None
    index: dict[str, tuple[int, int, str]] | None = None


class _Scanner:
    """Walks tar headers in order; pax 'x' records are folded into the entry they describe."""

    def __init__(self, f: BinaryIO, origin: str, seek_base: int | None) -> None:
        self.f = f
        self.origin = origin
        self.base = seek_base          # None: a stream, data is skipped by reading
        self.pos = 0
        self.last = "the first entry"

    def read_exact(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            try:
                block = self.f.read(n - got)
            except OSError as exc:
                raise io_error(self.origin, exc) from None
            if not block:
                break
            chunks.append(block)
            got += len(block)
        data = b"".join(chunks)
        self.pos += len(data)
        if len(data) < n:
            raise _Truncated
        return data

    def _header(self) -> _Header | None:
        at = self.pos
        try:
            block = self.read_exact(BLOCKSIZE)
        except _Truncated:
            raise DamagedArchive(f"{self.origin}: archive truncated after {self.last}") from None
        try:
            return parse_header(block)
        except ValueError:
            raise DamagedArchive(f"{self.origin}: damaged tar header at byte {at} "
                                 f"(after {self.last})") from None

    def _small_data(self, size: int, what: str) -> bytes:
        if size > MAX_PAX:
            raise BadInput(f"{self.origin}: oversized {what} after {self.last}")
        try:
            data = self.read_exact(size)
            self.read_exact(-size % BLOCKSIZE)
        except _Truncated:
            raise DamagedArchive(f"{self.origin}: archive truncated in {what} after "
                                 f"{self.last}") from None
        return data

    def next(self) -> _Entry | None:
        """The next entry, or None at the end-of-archive blocks."""
        pax: dict[str, str] = {}
        while True:
            header = self._header()
            if header is None:
                return None
            if header.typeflag == b"x":
                try:
                    pax.update(parse_pax(self._small_data(header.size, "pax header")))
                except (ValueError, UnicodeDecodeError):
                    raise DamagedArchive(f"{self.origin}: damaged pax header after "
                                         f"{self.last}") from None
                continue
            if header.typeflag == b"g":
                raise BadInput(f"{self.origin}: unexpected pax global header after "
                               f"{self.last}")
            if any(key.startswith("GNU.sparse") for key in pax):
                raise BadInput(f"{self.origin}: sparse entries are not supported "
                               f"(after {self.last})")
            try:
                name = pax["path"] if "path" in pax else header.name.decode("utf-8")
                size = int(pax["size"]) if "size" in pax else header.size
            except (ValueError, UnicodeDecodeError):
                raise DamagedArchive(f"{self.origin}: undecodable entry after {self.last}") from None
            if size < 0:
                raise BadInput(f"{self.origin}: bad size in entry {name!r}")
            self.last = repr(name)
            return _Entry(header.typeflag, name.rstrip("/") if name != "/" else name, size,
                          self.pos, pax.get("comment"))

    def copy_data(self, entry: _Entry, dst: BinaryIO | None, progress: Progress,
                  dst_name: str = "") -> str:
        try:
            sha, n = copy_stream(self.f, dst, progress, limit=entry.size)
        except OSError as exc:
            raise io_error(dst_name or self.origin, exc) from None
        self.pos += n
        if n < entry.size:
            raise DamagedArchive(f"{self.origin}: archive truncated in {entry.name!r}")
        try:
            self.read_exact(-entry.size % BLOCKSIZE)
        except _Truncated:
            raise DamagedArchive(f"{self.origin}: archive truncated in {entry.name!r}") from None
        return sha

    def skip_data(self, entry: _Entry) -> None:
        if self.base is None or entry.size == 0:
            self.copy_data(entry, None, no_progress)
            return
        skip = entry.size + (-entry.size % BLOCKSIZE)
        end = self.f.seek(0, os.SEEK_END)
        if self.base + self.pos + skip > end:
            raise DamagedArchive(f"{self.origin}: archive truncated in {entry.name!r}")
        self.pos += skip
        self.f.seek(self.base + self.pos)


@dataclass
class _Placed:
    """A member seen in a one-pass read: where its bytes went and what they hashed to."""

    announced: dict[str, Any]
    dest: Path | None
    tmp: Path | None
    files: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)


class TarReader:
    """Reads an indexed tar: by seeking when it can, otherwise in one sequential pass."""

    form = "tar"

    def __init__(self, source: str | os.PathLike | BinaryIO, *,
                 staging: str | os.PathLike | None = None) -> None:
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
                    self._f = open(source, "rb")
                except OSError as exc:
                    raise BadInput(f"{source}: cannot open ({exc.strerror})") from None
                self._own = True
        else:
            self._f = source
            name = getattr(source, "name", None)
            self.name = name if isinstance(name, str) else "<stream>"
        self._staging_parent = staging
        self._spool: Path | None = None
        self._consumed = False
        self._manifest: Manifest | None = None
        self._base = 0
        self._seekable = self._can_seek()
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

    @property
    def seekable(self) -> bool:
        return self._seekable

    def extract(self, members: list[Member] | None, dest_for: Callable[[Member], Path | None],
                progress: Progress = no_progress) -> None:
        """Extract ``members`` (None: every member) to dest_for(member); None skips a member.

        On a stream that has not been read yet, dest_for receives the member as announced in
        the stream (all fields but sizes and checksums) and the manifest is checked at the end.
        """
        if self._seekable:
            for member in self._manifest.members if members is None else members:
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
        for member in self._manifest.members:
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
                    self._check_header(path, offset, size, label)
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

    def _check_tag_listed(self, manifest: Manifest, index: dict[str, tuple[int, int, str]]) -> None:
        if manifest.tag_manifest and manifest.tag_manifest not in index:
            raise DamagedArchive(f"{self.name}: the index does not list {manifest.tag_manifest} "
                                 "(damaged)")

    def _metadata_problems(self, manifest: Manifest, blobs: dict[str, tuple[int, bytes]]) -> list[str]:
        """verify: the tag manifest and manifest-sha256.txt agree with the manifest."""
        files = {name: blobs[name][1] if name in blobs else None
                 for name in (MANIFEST_NAME, CHECKSUMS_NAME)}
        problems: list[str] = []
        if TAG_MANIFEST_NAME in blobs:
            try:
                problems += tag_problems(self.name, blobs[TAG_MANIFEST_NAME][1], files).values()
            except DamagedArchive as exc:
                problems.append(str(exc))
        if not any(CHECKSUMS_NAME in line for line in problems):
            problems += check_checksums_file(self.name, manifest, files[CHECKSUMS_NAME])
        return problems

    def _check_header(self, path: str, offset: Any, size: Any, what: str) -> None:
        """The manifest's offset must point just after the ustar header of that very file."""
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
        name, prefix = ustar_name(path)
        if header is None or header.typeflag not in (b"0", b"\0") or header.name_field != name \
                or header.prefix_field != prefix \
                or header.size != (size if size <= MAX_OCTAL else 0):
            raise DamagedArchive(f"{self.name}: {what}: manifest offset does not point at its data")

    def _copy_checked(self, path: str, offset: int, size: int, sha: str, dst: Path,
                      progress: Progress, what: str) -> None:
        self._check_header(path, offset, size, what)
        try:
            out = open(dst, "wb")
        except OSError as exc:
            raise io_error(dst, exc) from None
        with out:
            self._f.seek(self._base + offset)
            try:
                got, n = copy_stream(self._f, out, progress, limit=size)
            except OSError as exc:
                raise io_error(dst, exc) from None
        if n != size:
            raise DamagedArchive(f"{self.name}: archive truncated in member {what}")
        if got != sha:
            raise DamagedArchive(f"{self.name}: member {what} is damaged (sha256 mismatch)")

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
            for entry in member.files:
                target = root / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                self._copy_checked(f"{member.path}/{entry.path}", entry.offset, entry.size,
                                   entry.sha256, target, progress,
                                   f"{member.path!r} (file {entry.path!r})")
            set_table_meta(root, [(e.path, e.mode, e.mtime) for e in member.files], member.dirs,
                           member.mode, member.mtime)
            install(root, dest)
        except BaseException as exc:
            cleanup.undo()
            if isinstance(exc, OSError):
                raise io_error(dest, exc) from None
            raise

    # -- one pass (streams, and verify) --------------------------------------------------------

    def _one_pass(self, dest_for: Callable[[Member], Path | None], wanted: set[str] | None,
                  progress: Progress, *, strict: bool, scanner: _Scanner | None = None,
                  hash_data: bool = True) -> list[str]:
        """Read the archive once, placing selected members under temp names; check against the
        manifest at the end, then rename all (strict) or report problems (verify)."""
        if scanner is None:
            if self._consumed:
                raise FactorArchiveError(f"{self.name}: the stream has already been read")
            self._consumed = True
            scanner = _Scanner(self._f, self.name, None)
        cleanup = Undo()
        placed: dict[str, _Placed] = {}
        problems: list[str] = []
        self._hash_data = hash_data
        self._count_skipped = not strict        # verify counts every byte, extract its own
        try:
            blobs, index = self._scan(scanner, dest_for, wanted, progress, placed, cleanup)
            manifest = self._check_pass(blobs, index)
            problems = self._compare(manifest, placed, dest_for if strict else None, wanted)
            if not strict:
                problems = self._metadata_problems(manifest, blobs) + problems
            if strict and problems:
                more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
                raise DamagedArchive(problems[0] + more)
            if strict:
                self._finish(manifest, placed)
            self._manifest = self._manifest or manifest
        except FactorArchiveError as exc:
            cleanup.undo()
            if strict:
                raise
            return [str(exc)]
        except BaseException:
            cleanup.undo()
            raise
        return problems

    def _scan(self, scanner: _Scanner, dest_for: Callable[[Member], Path | None],
              wanted: set[str] | None, progress: Progress, placed: dict[str, _Placed],
              cleanup: Undo) -> tuple[dict[str, tuple[int, bytes]], _Entry | None]:
        origin = self.name
        blobs: dict[str, tuple[int, bytes]] = {}
        index: _Entry | None = None
        current: tuple[str, _Placed] | None = None
        while True:
            entry = scanner.next()
            if entry is None:
                break
            if index is not None:
                raise BadInput(f"{origin}: entry {entry.name!r} after the index")
            if entry.name == INDEX_NAME and entry.typeflag in (b"0", b"\0"):
                entry.index = parse_index(self._read_blob(scanner, entry))
                if entry.index is None:
                    raise DamagedArchive(f"{origin}: damaged factor-archive index")
                index = entry
                continue
            if entry.typeflag not in (b"0", b"\0", b"5", b"7"):
                raise UnsafeArchive(f"{origin}: refusing {_describe(entry.typeflag)} entry "
                                    f"{entry.name!r}")
            name = safe_relpath(entry.name, origin)
            if name != entry.name:
                raise UnsafeArchive(f"{origin}: refusing entry name {entry.name!r} "
                                    "(not in normal form)")
            is_dir = entry.typeflag == b"5"
            if entry.comment is not None and entry.comment.startswith(MEMBER_MAGIC):
                current = self._announce(entry, name, is_dir, dest_for, wanted, placed,
                                         cleanup, scanner, progress)
                continue
            if name in METADATA_NAMES and not is_dir:
                if entry.size > MAX_MANIFEST:
                    raise BadInput(f"{origin}: oversized {name}")
                at = entry.data_offset
                blobs[name] = (at, self._read_blob(scanner, entry))
                current = None
                continue
            if current is not None and name.startswith(current[0] + "/"):
                sub = name[len(current[0]) + 1:]
                item = current[1]
                if is_dir:
                    item.dirs.append(sub)
                    if item.tmp is not None:
                        (item.tmp / sub).mkdir(parents=True, exist_ok=True)
                    scanner.skip_data(entry)
                    continue
                if sub in item.files:
                    raise BadInput(f"{origin}: duplicate entry {name!r}")
                item.files[sub] = (entry.data_offset, entry.size,
                                   self._take(scanner, entry, item.tmp and item.tmp / sub,
                                              progress))
                continue
            raise UnsafeArchive(f"{origin}: entry {name!r} is not part of any archived member")
        self._drain(scanner)
        return blobs, index

    @staticmethod
    def _read_blob(scanner: _Scanner, entry: _Entry) -> bytes:
        chunks: list[bytes] = []

        class _Collect:
            def write(self, data: bytes) -> None:
                chunks.append(bytes(data))

        scanner.copy_data(entry, _Collect(), no_progress)
        return b"".join(chunks)

    def _take(self, scanner: _Scanner, entry: _Entry, target: Path | None,
              progress: Progress) -> str | None:
        if target is None:
            if not self._hash_data:
                scanner.skip_data(entry)
                return None
            return scanner.copy_data(entry, None,
                                     progress if self._count_skipped else no_progress)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            out = open(target, "wb")
        except OSError as exc:
            raise io_error(target, exc) from None
        with out:
            return scanner.copy_data(entry, out, progress, str(target))

    def _announce(self, entry: _Entry, name: str, is_dir: bool,
                  dest_for: Callable[[Member], Path | None], wanted: set[str] | None,
                  placed: dict[str, _Placed], cleanup: Undo, scanner: _Scanner,
                  progress: Progress) -> tuple[str, _Placed] | None:
        origin = self.name
        try:
            fields = json.loads(entry.comment[len(MEMBER_MAGIC):])
            provisional = Member(**{k: fields.get(k) for k in ANNOUNCED if k != "extra"},
                                 extra=fields.get("extra") or {}, size=0, mode=0, mtime=0.0,
                                 sha256="")
        except (ValueError, TypeError, AttributeError):
            raise DamagedArchive(f"{origin}: damaged member announcement at {name!r}") from None
        check_member_paths(provisional, origin)
        if provisional.path != name or provisional.kind != ("table" if is_dir else "file"):
            raise UnsafeArchive(f"{origin}: member announcement does not match entry {name!r}")
        if name in placed:
            raise BadInput(f"{origin}: member {name!r} appears twice")
        dest = None
        if wanted is None or name in wanted:
            dest = dest_for(provisional)
        tmp = None
        if dest is not None:
            dest = Path(dest)
            cleanup.makedirs(dest.parent)
            tmp = cleanup.fresh(partial_name(dest))
            if is_dir:
                os.mkdir(tmp, 0o700)
        item = _Placed({k: getattr(provisional, k) for k in ANNOUNCED}, dest, tmp)
        placed[name] = item
        if is_dir:
            scanner.skip_data(entry)
            return name, item
        item.files[""] = (entry.data_offset, entry.size, self._take(scanner, entry, tmp,
                                                                    progress))
        return None

    def _drain(self, scanner: _Scanner) -> None:
        """After the end blocks; a stream is read to its end so the writer sees no broken pipe."""
        if scanner.base is not None:
            return
        try:
            while self._f.read(1 << 20):
                pass
        except OSError:
            pass

    def _check_pass(self, blobs: dict[str, tuple[int, bytes]], index: _Entry | None) -> Manifest:
        origin = self.name
        if index is None or MANIFEST_NAME not in blobs:
            raise DamagedArchive(f"{origin}: archive truncated or incomplete: no "
                                 f"{'index' if MANIFEST_NAME in blobs else 'manifest'} found")
        for name, (offset, size, sha) in index.index.items():
            at, data = blobs.get(name, (None, b""))
            if at != offset or len(data) != size or hashlib.sha256(data).hexdigest() != sha:
                raise DamagedArchive(f"{origin}: {name} does not match the index (damaged)")
        manifest = Manifest.from_json(blobs[MANIFEST_NAME][1], f"{origin}: {MANIFEST_NAME}")
        self._check_tag_listed(manifest, index.index)
        return manifest

    def _compare(self, manifest: Manifest, placed: dict[str, _Placed],
                 dest_for: Callable[[Member], Path | None] | None,
                 wanted: set[str] | None) -> list[str]:
        origin = self.name
        problems: list[str] = []
        by_path = {m.path: m for m in manifest.members}
        for path, item in placed.items():
            member = by_path.get(path)
            if member is None:
                problems.append(f"{origin}: entry {path!r} is not listed in the manifest")
                continue
            if {k: getattr(member, k) for k in ANNOUNCED} != item.announced:
                problems.append(f"{origin}: member {path!r} differs from its manifest entry")
                continue
            if dest_for is not None and item.dest is None:
                continue            # not extracting it: its damage is not this restore's problem
            if member.kind == "file":
                expect = {"": (member.offset, member.size, member.sha256)}
            else:
                expect = {e.path: (e.offset, e.size, e.sha256) for e in member.files}
                if set(member.dirs) != set(item.dirs) or tree_digest(member.files) != \
                        member.sha256:
                    problems.append(f"{origin}: member {path!r} differs from its manifest entry")
                    continue
            for sub in sorted(set(expect) | set(item.files)):
                label = repr(path) if not sub else f"{path!r} (file {sub!r})"
                got, want = item.files.get(sub), expect.get(sub)
                if want is None:
                    problems.append(f"{origin}: {label} is not listed in the manifest")
                elif got is None:
                    problems.append(f"{origin}: member {label} is missing from the archive")
                elif got[:2] != want[:2]:
                    problems.append(f"{origin}: manifest offset of member {label} does not "
                                    "point at its data")
                elif got[2] is not None and got[2] != want[2]:
                    problems.append(f"{origin}: member {label} is damaged (sha256 mismatch)")
        for member in manifest.members:
            if member.kind in ("file", "table") and member.path not in placed:
                if dest_for is None or ((wanted is None or member.path in wanted)
                                        and dest_for(member) is not None):
                    problems.append(f"{origin}: member {member.path!r} is missing from the "
                                    "archive")
        return problems

    def _finish(self, manifest: Manifest, placed: dict[str, _Placed]) -> None:
        by_path = {m.path: m for m in manifest.members}
        for path, item in placed.items():
            if item.tmp is None:
                continue
            member = by_path[path]
            try:
                if member.kind == "table":
                    set_table_meta(item.tmp, [(e.path, e.mode, e.mtime) for e in member.files],
                                   member.dirs, member.mode, member.mtime)
                    install(item.tmp, item.dest)
                else:
                    set_meta(item.tmp, member.mode, member.mtime)
                    install(item.tmp, item.dest)
            except OSError as exc:
                raise io_error(item.dest, exc) from None

    # -- streams read before the caller chose members ------------------------------------------

    def _spool_all(self) -> None:
        try:
            self._spool = Path(tempfile.mkdtemp(prefix=".factor-archive-spool-",
                                                dir=self._staging_parent))
        except OSError as exc:
            raise io_error(self._staging_parent or tempfile.gettempdir(), exc) from None
        spool = self._spool
        try:
            self._one_pass(lambda m: spool / m.path, None, no_progress, strict=True)
        except BaseException:
            discard(spool)
            self._spool = None
            raise

    def _extract_spooled(self, members: list[Member] | None,
                         dest_for: Callable[[Member], Path | None], progress: Progress) -> None:
        assert self._spool is not None and self._manifest is not None
        for member in self._manifest.members if members is None else members:
            dest = dest_for(member)
            src = self._spool / member.path
            if dest is None or member.kind not in ("file", "table") or not src.exists():
                continue
            dest = Path(dest)
            tmp = partial_name(dest)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(src, tmp)            # same file system: the usual case
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    if member.kind == "table":
                        shutil.copytree(src, tmp, copy_function=shutil.copy2)
                    else:
                        shutil.copy2(src, tmp)
                    discard(src)
                install(tmp, dest)
            except OSError as exc:
                discard(tmp)
                raise io_error(dest, exc) from None
            progress(member.size)

