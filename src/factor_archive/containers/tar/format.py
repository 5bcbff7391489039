"""The indexed tar's bytes: ustar and pax headers, the member announcement and the index.

``formats/tar.md`` specifies the layout; this module is the only code that depends on it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from datetime import datetime, timezone

from ...manifest import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    TAG_MANIFEST_NAME,
    Manifest,
    Member,
)

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


def is_tar_header(head: bytes) -> bool:
    """True for the first block of a POSIX (or GNU) tar: the ustar magic."""
    return len(head) >= 262 and head[257:262] == b"ustar"


# ---------------------------------------------------------------------------------------------
# Encoding: headers are built by tarfile.TarInfo

def format_mtime(mtime_ns: int) -> str:
    """A pax ``mtime`` value: seconds with up to nine decimals, exact."""
    sign = "-" if mtime_ns < 0 else ""
    sec, frac = divmod(abs(mtime_ns), 10 ** 9)
    return f"{sign}{sec}.{frac:09d}".rstrip("0").rstrip(".")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCKSIZE)


def _tarinfo(path: str, typeflag: bytes, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = typeflag
    info.size = size
    info.mode = mode & 0o7777
    info.mtime = min(max(mtime, 0), MAX_OCTAL)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def ustar_header(path: str, typeflag: bytes, size: int, mode: int, mtime: int) -> bytes:
    """One ustar header block without a pax header (the index's)."""
    return _tarinfo(path, typeflag, size, mode, mtime).tobuf(tarfile.USTAR_FORMAT, "utf-8",
                                                             "surrogateescape")


def entry_headers(path: str, typeflag: bytes, size: int, mode: int, mtime_ns: int,
                  comment: str | None = None) -> bytes:
    """A pax extended header then the ustar header: every entry has both, so layout is uniform.

    The pax records are ``path`` and ``mtime`` always, ``size`` when the octal field cannot hold
    it, and ``comment`` (a member announcement) when given, in that order."""
    info = _tarinfo(path, typeflag, size, mode, mtime_ns // 10 ** 9)
    records = {"path": path, "mtime": format_mtime(mtime_ns)}
    if size > MAX_OCTAL:
        records["size"] = str(size)
    if comment is not None:
        records["comment"] = comment
    info.pax_headers = records
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def ustar_names(path: str) -> tuple[bytes, ...]:
    """The names (prefix and name joined) a ustar header written for ``path`` may carry: what
    tarfile writes (the path in ASCII, other characters as ``?``, cut to 100 bytes; the pax
    ``path`` record is authoritative) or what factor-archive wrote before it used tarfile (the
    UTF-8 path split into prefix and name, or ``@LongName/`` and a hash when it could not be)."""
    raw = path.encode("utf-8")
    return (path.encode("ascii", "replace")[:100], raw,
            b"@LongName/" + hashlib.sha256(raw).hexdigest()[:32].encode())


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
# Decoding: header blocks and pax records are read by tarfile; their structure is checked here

@dataclass
class Header:
    typeflag: bytes
    name: bytes                    # prefix/name joined
    size: int
    mode: int
    mtime: int


def parse_header(block: bytes) -> Header | None:
    """None for a zero block; ValueError for anything that is not a valid tar header."""
    if block == ZERO_BLOCK:
        return None
    if len(block) != BLOCKSIZE:
        raise ValueError("short header")
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise ValueError(str(exc)) from None
    return Header(info.type, info.name.encode("utf-8", "surrogateescape"), info.size, info.mode,
                  int(info.mtime))


def _pax_keys(data: bytes) -> list[str]:
    """The keywords of pax records, checking that the records fill ``data`` exactly (up to NUL
    padding): tarfile stops quietly at the first malformed record, damage must not."""
    keys = []
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            raise ValueError("bad pax record")
        end = pos + int(data[pos:space])
        record = data[space + 1:end]
        if end <= space or end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError("bad pax record")
        keys.append(record.split(b"=", 1)[0].decode("utf-8"))
        pos = end
    if data[pos:].strip(b"\0"):
        raise ValueError("bad pax record")
    return keys


def parse_pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header, decoded by tarfile; ValueError if malformed.

    GNU sparse records are returned with empty values, undecoded: sparse entries are refused."""
    keys = _pax_keys(data)
    if any(k.startswith("GNU.sparse") for k in keys):
        return {k: "" for k in keys}
    follower = _tarinfo("entry", tarfile.REGTYPE, 0, 0o644, 0)
    stream = io.BytesIO(ustar_header(PAX_HEADER_NAME, tarfile.XHDTYPE, len(data), 0o644, 0)
                        + data + _padding(len(data)) + follower.tobuf(tarfile.USTAR_FORMAT)
                        + ZERO_BLOCK * 2)
    try:
        with tarfile.open(fileobj=stream, mode="r:") as archive:
            entry = archive.next()
    except (tarfile.TarError, ValueError, UnicodeError) as exc:
        raise ValueError(f"bad pax record ({exc})") from None
    if entry is None:
        raise ValueError("bad pax record")
    return {str(k): str(v) for k, v in entry.pax_headers.items()}


def parse_index(data: bytes, required: str = MANIFEST_NAME) -> dict[str, tuple[int, int, str]] | None:
    """The index's entries, or None if ``data`` is not an intact factor-archive index listing
    ``required`` (the manifest; a volume's own index for a volume of a set).

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
    if required not in index:
        return None
    return index


def _describe(typeflag: bytes) -> str:
    return _TYPE_NAMES.get(typeflag, f"type {typeflag!r}")



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

