"""The manifest: one model of what an archive holds, shared by every container form.

The manifest is JSON so that it can be read without our code; ``formats/manifest.md`` and
``formats/manifest.schema.json`` specify it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from . import FORMAT_VERSION, __version__
from .errors import BadInput, UnsafeArchive

MANIFEST_NAME = "manifest.json"
CHECKSUMS_NAME = "manifest-sha256.txt"
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, origin: str = "manifest") -> "Manifest":
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInput(f"{origin}: not a valid manifest ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise BadInput(f"{origin}: not a factor-archive manifest")
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise BadInput(
                f"{origin}: format version {raw.get('format_version')} is newer than this tool "
                f"understands ({FORMAT_VERSION}); upgrade factor-archive")
        try:
            members = [
                Member(**{**m, "files": [FileEntry(**f) for f in m.get("files", [])]})
                for m in raw["members"]
            ]
            missing = [Missing(**m) for m in raw.get("missing", [])]
            manifest = cls(
                container=raw["container"], run=raw["run"], options=raw["options"],
                members=members, missing=missing, created=raw.get("created", ""),
                tool_version=raw.get("tool_version", ""), format_version=raw["format_version"],
            )
        except (KeyError, TypeError) as exc:
            raise BadInput(f"{origin}: malformed manifest ({exc})") from None
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
