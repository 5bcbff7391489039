"""A set of tar volumes: their names, the small index every volume carries, and finding a set.

Each volume is a complete indexed tar. Its last entries are ``factor-archive-volume.json`` (the
volume's own index: which set, which volume, the entries it holds with their checksums) and, in
the last volume only, the set's manifest; the fixed-size index at the very end points at them.
``formats/tar.md`` ("Volumes") specifies it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from ...errors import BadInput, DamagedArchive
from ...io.blobs import BlobStore
from ...manifest import FileEntry, Member
from .format import BLOCKSIZE, INDEX_NAME, TRAILER_SIZE, ZERO_BLOCK, parse_header, parse_index

READ_CHUNK = 1 << 20                 # bytes read at a time when an entry is checked

VOLUME_INDEX_NAME = "factor-archive-volume.json"
VOLUME_FORMAT = "factor-archive-volume"
VOLUME_FORMAT_VERSION = 1
MIN_VOLUME_SIZE = 64 * 1024
MAX_VOLUME_INDEX = 1 << 30
_NUMBERED = re.compile(r"^(?P<stem>.+)\.(?P<number>\d{3,})\.tar$")
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

# --group-by category: which plan categories share volumes (plan.py, manifest.CATEGORIES)
CATEGORY_GROUPS = {
    "calibrated_data": "calibrated-data",
    "chunks": "chunks-and-state", "state": "chunks-and-state",
    "pipeline_state": "chunks-and-state",
    "instrument_tables": "solutions-and-sky-models", "sky_models": "solutions-and-sky-models",
    "images": "images-and-plots", "plots": "images-and-plots",
    "misc": "misc",
}
GROUP_ORDER = ("calibrated-data", "chunks-and-state", "solutions-and-sky-models",
               "images-and-plots", "misc")


def category_group(category: str) -> str:
    return CATEGORY_GROUPS.get(category, "misc")


def parse_size(text: str) -> int:
    """``4G`` -> 4 * 1024**3: a number with an optional K, M, G or T (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise BadInput(f"--volume-size {text!r}: not a size (a number with K, M, G or T, e.g. 4G)")
    size = int(float(match.group(1)) * _SUFFIXES[match.group(2).upper()])
    if size < MIN_VOLUME_SIZE:
        raise BadInput(f"--volume-size {text!r}: too small (at least 64K)")
    return size


def volume_name(base: str, number: int) -> str:
    """``NAME.tar`` for the first volume, then ``NAME.001.tar``, ``NAME.002.tar``, ..."""
    if number == 0:
        return base
    stem = base[:-4] if base.endswith(".tar") else base
    return f"{stem}.{number:03d}.tar"


def first_volume_name(given: str, index: VolumeIndex) -> str:
    """The set's first volume, named after the volume given (volumes may have been renamed
    together, ``run.tar`` -> ``tape7.tar``), else as the set was written."""
    if index.volume == 0:
        return given
    match = _NUMBERED.match(given)
    if match is not None and int(match.group("number")) == index.volume:
        return match.group("stem") + ".tar"
    return index.name


def base_candidates(names: list[str]) -> list[str]:
    """The first-volume names a directory listing suggests (a lone ``NAME.001.tar`` counts)."""
    bases = set()
    for name in names:
        match = _NUMBERED.match(name)
        if match is not None:
            bases.add(match.group("stem") + ".tar")
        elif name.endswith(".tar"):
            bases.add(name)
    return sorted(bases)


@dataclass
class Entry:
    """One tar entry holding data: a whole file, or one part of a file cut across volumes."""

    name: str            # the tar entry's path (a part: FILE.part000, ...)
    file: str            # the archive path of the file (a member, or member/relative path)
    member: str
    volume: int
    offset: int          # where its data starts inside its volume
    size: int
    sha256: str          # of this entry's bytes
    part: int | None = None


@dataclass
class VolumeRecord:
    name: str
    size: int
    index_sha256: str    # sha256 of the volume's own index blob: identifies the very volume


@dataclass
class VolumeIndex:
    """What ``factor-archive-volume.json`` holds."""

    set: str
    name: str                           # the first volume's name: the set's name
    volume: int
    last: bool
    volume_size: int
    group_by: str | None
    group: str | None
    entries: list[Entry] = field(default_factory=list)    # this volume's; the last: the set's
    members: list[Member] = field(default_factory=list)   # members completed in this volume
    sources: dict[str, list[list[Any]]] = field(default_factory=dict)  # member -> [rel, size, mtime_ns]
    volumes: list[VolumeRecord] = field(default_factory=list)  # the last: every earlier volume

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data = {"format": VOLUME_FORMAT, "format_version": VOLUME_FORMAT_VERSION, **data}
        return (json.dumps(data, indent=None, ensure_ascii=False, separators=(",", ":"))
                + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, origin: str) -> VolumeIndex:
        try:
            raw = json.loads(data)
            if raw.get("format") != VOLUME_FORMAT:
                raise ValueError("not a volume index")
            if raw.get("format_version", 0) > VOLUME_FORMAT_VERSION:
                raise BadInput(f"{origin}: volume format version {raw['format_version']} is newer "
                               "than this tool understands; upgrade factor-archive")
            for e in raw["entries"]:
                _check_entry(e)
            return cls(
                set=str(raw["set"]), name=str(raw["name"]), volume=int(raw["volume"]),
                last=bool(raw["last"]), volume_size=int(raw["volume_size"]),
                group_by=raw.get("group_by"), group=raw.get("group"),
                entries=[Entry(**e) for e in raw["entries"]],
                members=[Member(**{**m, "files": [FileEntry(**f) for f in m.get("files", [])]})
                         for m in raw["members"]],
                sources={str(k): list(v) for k, v in raw.get("sources", {}).items()},
                volumes=[VolumeRecord(**v) for v in raw.get("volumes", [])],
            )
        except BadInput:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            raise DamagedArchive(f"{origin}: damaged volume index ({VOLUME_INDEX_NAME})") from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(e: Any) -> None:
    """An entry's fields have their types (a hostile index must not reach arithmetic or seeks)."""
    if not isinstance(e, dict) or set(e) != {f.name for f in dataclasses.fields(Entry)} \
            or not all(isinstance(e[k], str) for k in ("name", "file", "member", "sha256")) \
            or not all(_is_count(e[k]) for k in ("volume", "offset", "size")) \
            or not (e["part"] is None or _is_count(e["part"])) or e["offset"] % BLOCKSIZE:
        raise ValueError("bad entry")


def read_tail_index(f: BinaryIO, origin: str, required: str) -> dict[str, tuple[int, int, str]] | None:
    """The fixed-size index at the end of a tar listing ``required``, or None."""
    size = f.seek(0, 2)
    if size < TRAILER_SIZE or size % BLOCKSIZE:
        return None
    f.seek(size - TRAILER_SIZE)
    tail = f.read(TRAILER_SIZE)
    try:
        header = parse_header(tail[:BLOCKSIZE])
    except ValueError:
        return None
    if header is None or header.typeflag != b"0" or header.size != BLOCKSIZE \
            or header.name != INDEX_NAME.encode() or tail[2 * BLOCKSIZE:] != ZERO_BLOCK * 2:
        return None
    index = parse_index(tail[BLOCKSIZE:2 * BLOCKSIZE], required)
    if index is not None:
        for offset, length, _sha in index.values():
            if offset % BLOCKSIZE or offset + length > size - TRAILER_SIZE:
                raise DamagedArchive(f"{origin}: the index points outside the archive")
    return index


def read_volume_index(f: BinaryIO, origin: str) -> tuple[VolumeIndex, str] | None:
    """A volume's own index and its sha256, or None when ``f`` is not a volume of a set."""
    index = read_tail_index(f, origin, VOLUME_INDEX_NAME)
    if index is None:
        return None
    offset, size, sha = index[VOLUME_INDEX_NAME]
    if size > MAX_VOLUME_INDEX:
        raise DamagedArchive(f"{origin}: damaged volume index (too large)")
    f.seek(offset)
    data = f.read(size)
    if hashlib.sha256(data).hexdigest() != sha:
        raise DamagedArchive(f"{origin}: the volume index is damaged (sha256 mismatch)")
    return VolumeIndex.from_bytes(data, origin), sha


def volume_index_of(blobs: BlobStore, name: str) -> tuple[VolumeIndex, str] | None:
    """:func:`read_volume_index` of a blob; None when it is missing or not a volume."""
    where = f"{blobs.location.rstrip('/')}/{name}"
    try:
        with blobs.open(name) as f:
            return read_volume_index(f, where)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInput(f"{where}: cannot read ({exc.strerror or exc})") from None


def is_volume(f: BinaryIO) -> bool:
    """True for a tar that is one volume of a set (its index lists a volume index)."""
    try:
        at = f.tell()
        found = read_tail_index(f, "", VOLUME_INDEX_NAME) is not None
        f.seek(at)
        return found
    except (OSError, ValueError, DamagedArchive):
        return False


def entry_intact(f: BinaryIO, entry: Entry, also: Any = None,
                 progress: Callable[[int], None] | None = None) -> bool:
    """Whether the entry's bytes in its volume (``f``) hash to its recorded sha256 (False when
    the volume ends first); ``also`` (a hash) and ``progress`` see the same bytes."""
    f.seek(entry.offset)
    digest = hashlib.sha256()
    left = entry.size
    while left:
        data = f.read(min(READ_CHUNK, left))
        if not data:
            return False
        digest.update(data)
        if also is not None:
            also.update(data)
        if progress is not None:
            progress(len(data))
        left -= len(data)
    return digest.hexdigest() == entry.sha256

