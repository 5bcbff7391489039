"""The manifest: one model of what an archive holds, shared by every container form.

The manifest is JSON so that it can be read without our code; ``formats/manifest.md`` and
``formats/manifest.schema.json`` specify it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import FORMAT_VERSION, __version__
from .errors import BadInput, DamagedArchive, UnsafeArchive

MANIFEST_NAME = "manifest.json"
CHECKSUMS_NAME = "manifest-sha256.txt"
TAG_MANIFEST_NAME = "tagmanifest-sha256.txt"   # BagIt's tag manifest: sha256 of the two above
FORMAT_NAME = "factor-archive"

CATEGORIES = (
    "misc", "images", "plots", "chunks", "state", "sky_models",
    "instrument_tables", "pipeline_state", "calibrated_data",
)
KINDS = ("file", "table", "link")


@dataclass
class FileEntry:
    """One regular file inside a table member (path relative to the table root)."""

    path: str
    size: int
    mode: int
    mtime: float
    sha256: str
    offset: int | None = None  # byte offset of the data inside a tar container


@dataclass
class Member:
    """One archived item: a file, a casacore table (a directory) or a symbolic link."""

    path: str                      # archive path, POSIX, relative to the archive root
    source: str                    # absolute path it was read from on the archiving machine
    category: str
    kind: str
    size: int
    mode: int
    mtime: float
    sha256: str                    # file: content; table: tree digest (see tree_digest)
    direction: str | None = None
    restore_path: str | None = None  # relative to the restored working directory; None = not restored
    symlink_target: str | None = None  # the source was a symlink to this path (data stored anyway)
    rewrite: str | None = None     # "state" or "mapfile": paths inside are rewritten on restore
    files: list[FileEntry] = field(default_factory=list)  # tables only
    dirs: list[str] = field(default_factory=list)         # tables only: every sub-directory
    offset: int | None = None      # tar: byte offset of a file member's data
    extra: dict[str, Any] = field(default_factory=dict)  # form-specific details (zarr codecs, ...)


@dataclass
class Missing:
    """Something the run references that could not be archived."""

    source: str
    category: str
    reason: str
    direction: str | None = None


@dataclass
class Manifest:
    container: str
    run: dict[str, Any]
    options: dict[str, Any]
    members: list[Member] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    created: str = ""
    tool_version: str = __version__
    format_version: int = FORMAT_VERSION
    format: str = FORMAT_NAME
    # dir and tar forms: the name of the tag manifest that protects this document. Its presence
    # here means a missing tag manifest is damage (archives made before it existed have none).
    tag_manifest: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, origin: str = "manifest") -> Manifest:
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise BadInput(f"{origin}: not a valid manifest ({_first_line(exc)})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise BadInput(f"{origin}: not a factor-archive manifest")
        if not _is_int(raw.get("format_version")):
            raise BadInput(f"{origin}: malformed manifest (format_version)")
        if raw["format_version"] > FORMAT_VERSION:
            raise BadInput(
                f"{origin}: format version {raw.get('format_version')} is newer than this tool "
                f"understands ({FORMAT_VERSION}); upgrade factor-archive")
        try:
            _check_types(raw)
            members = [
                Member(**{**m, "files": [FileEntry(**f) for f in m.get("files", [])]})
                for m in raw["members"]
            ]
            missing = [Missing(**m) for m in raw.get("missing", [])]
            manifest = cls(
                container=raw["container"], run=raw["run"], options=raw["options"],
                members=members, missing=missing, created=raw.get("created", ""),
                tool_version=raw.get("tool_version", ""), format_version=raw["format_version"],
                tag_manifest=raw.get("tag_manifest"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"{origin}: malformed manifest ({_first_line(exc)})") from None
        if manifest.tag_manifest not in (None, TAG_MANIFEST_NAME):
            raise BadInput(f"{origin}: malformed manifest (unknown tag_manifest "
                           f"{manifest.tag_manifest!r})")
        for member in manifest.members:
            check_member_paths(member, origin)
        return manifest

    def member(self, path: str) -> Member:
        for m in self.members:
            if m.path == path:
                return m
        raise KeyError(path)


def safe_relpath(path: str, origin: str = "archive") -> str:
    """Refuse names that could escape the directory they are joined to."""
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        raise UnsafeArchive(f"{origin}: refusing member name {path!r}")
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm == ".." or norm.startswith("../") or norm == "." \
            or any(part == ".." for part in path.split("/")):
        raise UnsafeArchive(f"{origin}: refusing member name {path!r} (absolute or '..')")
    return norm


def check_member_paths(member: Member, origin: str) -> None:
    safe_relpath(member.path, origin)
    if member.restore_path is not None:
        safe_relpath(member.restore_path, origin)
    if member.category not in CATEGORIES or member.kind not in KINDS:
        raise BadInput(f"{origin}: member {member.path!r} has unknown category or kind")
    for entry in member.files:
        safe_relpath(entry.path, origin)
    for d in member.dirs:
        safe_relpath(d, origin)


def tree_digest(files: Iterable[FileEntry]) -> str:
    """Digest of a table: sha256 of the ``sha256sum``-style lines of its files, sorted by path."""
    lines = "".join(f"{f.sha256}  {f.path}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def member_file_paths(member: Member) -> list[tuple[str, str]]:
    """(archive path, sha256) of every regular file a member consists of."""
    if member.kind == "table":
        return [(f"{member.path}/{f.path}", f.sha256) for f in member.files]
    if member.kind == "file":
        return [(member.path, member.sha256)]
    return []


def checksums_text(manifest: Manifest) -> str:
    """The ``manifest-sha256.txt`` body: ``sha256sum -c`` accepts it from the archive root."""
    lines = []
    for member in manifest.members:
        for path, sha in member_file_paths(member):
            lines.append(f"{sha}  {path}\n")
    return "".join(lines)


# ---------------------------------------------------------------------------------------------
# Types: a manifest is input. Every value restore or verify touches has the type the schema
# says, so a damaged or hostile manifest is one error line, never a crash further on.

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _check_entry(entry: Any, where: str, required: tuple[str, ...]) -> None:
    _expect(isinstance(entry, dict), f"{where} is not an object")
    for key in required:
        _expect(key in entry, f"{where} lacks {key!r}")
    for key in ("path", "source", "category", "kind"):
        if key in entry:
            _expect(isinstance(entry[key], str), f"{where}: {key} is not a string")
    for key in ("size", "mode"):
        if key in entry:
            _expect(_is_int(entry[key]) and entry[key] >= 0, f"{where}: {key} is not a count")
    if "mtime" in entry:
        _expect(_is_number(entry["mtime"]), f"{where}: mtime is not a number")
    if "sha256" in entry:
        _expect(isinstance(entry["sha256"], str)  # "": a link member, which has no bytes
                and (entry["sha256"] == "" or bool(_SHA256.fullmatch(entry["sha256"]))),
                f"{where}: sha256 is not 64 hex digits")
    if "offset" in entry:
        _expect(entry["offset"] is None or (_is_int(entry["offset"]) and entry["offset"] >= 0),
                f"{where}: offset is not a count")
    for key in ("direction", "restore_path", "symlink_target", "rewrite"):
        if key in entry:
            _expect(entry[key] is None or isinstance(entry[key], str),
                    f"{where}: {key} is neither a string nor null")


def _check_types(raw: dict) -> None:
    """Raise ValueError naming the first value whose type differs from the schema's."""
    _expect(isinstance(raw.get("run"), dict), "run is not an object")
    _expect(isinstance(raw.get("options"), dict), "options is not an object")
    _expect(isinstance(raw.get("container"), str), "container is not a string")
    _expect(isinstance(raw.get("created", ""), str), "created is not a string")
    _expect(isinstance(raw.get("tool_version", ""), str), "tool_version is not a string")
    _expect(raw.get("tag_manifest") is None or isinstance(raw["tag_manifest"], str),
            "tag_manifest is neither a string nor null")
    members = raw.get("members")
    if not isinstance(members, list):
        raise ValueError("members is not a list")
    member_keys = ("path", "source", "category", "kind", "size", "mode", "mtime", "sha256")
    for i, m in enumerate(members):
        where = f"members[{i}]"
        _check_entry(m, where, member_keys)
        _expect(m.get("rewrite") in (None, "state", "mapfile"), f"{where}: unknown rewrite")
        _expect(isinstance(m.get("extra", {}), dict), f"{where}: extra is not an object")
        _expect(isinstance(m.get("dirs", []), list)
                and all(isinstance(d, str) for d in m.get("dirs", [])),
                f"{where}: dirs is not a list of strings")
        files = m.get("files", [])
        _expect(isinstance(files, list), f"{where}: files is not a list")
        for j, f in enumerate(files):
            _check_entry(f, f"{where}.files[{j}]", ("path", "size", "mode", "mtime", "sha256"))
    missing = raw.get("missing", [])
    _expect(isinstance(missing, list), "missing is not a list")
    for i, m in enumerate(missing):
        _expect(isinstance(m, dict) and all(isinstance(m.get(k), str)
                                            for k in ("source", "category", "reason")),
                f"missing[{i}] is malformed")


# ---------------------------------------------------------------------------------------------
# The tag manifest (BagIt): checksums of the metadata files themselves

def tag_manifest_text(files: dict[str, bytes]) -> str:
    """The ``tagmanifest-sha256.txt`` body for these metadata files, sorted by name."""
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                   for name, data in sorted(files.items()))


def parse_tag_manifest(data: bytes, origin: str) -> dict[str, str]:
    """name -> sha256; any line that is not ``<64 hex>  <name>`` means the file is damaged."""
    sums: dict[str, str] = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DamagedArchive(f"{origin}: damaged (not UTF-8)") from None
    if not text.endswith("\n"):
        raise DamagedArchive(f"{origin}: damaged (truncated)")
    for line in text[:-1].split("\n"):
        sha, sep, name = line.partition("  ")
        if not sep or not _SHA256.fullmatch(sha) or not name or name in sums:
            raise DamagedArchive(f"{origin}: damaged line {line[:80]!r}")
        sums[name] = sha
    return sums


def tag_problems(origin: str, tag_bytes: bytes, files: dict[str, bytes | None]) -> dict[str, str]:
    """What is wrong with each metadata file according to the tag manifest: name -> one line.

    ``files`` maps ``manifest.json`` and ``manifest-sha256.txt`` to their bytes (None: absent).
    A reader must not use the manifest when it appears in the result.
    """
    where = f"{origin}/{TAG_MANIFEST_NAME}"
    sums = parse_tag_manifest(tag_bytes, where)
    problems = {}
    for name, data in files.items():
        if name not in sums:
            problems[name] = f"{where}: does not list {name} (damaged)"
        elif data is None:
            problems[name] = f"{origin}/{name}: missing"
        elif hashlib.sha256(data).hexdigest() != sums[name]:
            problems[name] = f"{origin}/{name}: damaged (sha256 differs from {TAG_MANIFEST_NAME})"
    return problems


def check_checksums_file(origin: str, manifest: Manifest, checksums_bytes: bytes | None) -> list[str]:
    """``manifest-sha256.txt`` must say exactly what the manifest says (it is derived from it)."""
    if checksums_bytes is None:
        return [f"{origin}/{CHECKSUMS_NAME}: missing"]
    if checksums_bytes != checksums_text(manifest).encode("utf-8"):
        return [f"{origin}/{CHECKSUMS_NAME}: differs from the manifest (damaged)"]
    return []
