"""Which container form an archive is, from its content rather than its name."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import BadInput
from ..manifest import MANIFEST_NAME


def detect_form(location: str) -> str:
    if location == "-":
        return "tar"
    if "://" in location:
        return "zarr"
    path = Path(location)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise BadInput(f"{path}: archive not found") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read archive ({exc.strerror})") from None
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return "tar"  # a pipe or a tape: only the tar form streams, and sniffing would eat bytes
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return "dir"
        if (path / "zarr.json").is_file():
            return "zarr"
        raise BadInput(f"{path}: not an archive (no {MANIFEST_NAME} or zarr.json); an interrupted archive?")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise BadInput(f"{path}: archive not found") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read archive ({exc.strerror})") from None
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head[:4] == b"PK\x03\x04":
        return "zarr"
    raise BadInput(f"{path}: not a factor-archive archive (neither a directory, a tar nor a zarr zip)")


def open_reader(location: str, *, staging: os.PathLike | None = None):
    """A reader for the archive at ``location``; ``staging`` is scratch space on the output's disk
    for forms that must spool (a tar read from a pipe)."""
    form = detect_form(location)
    if form == "dir":
        from .directory import DirectoryReader
        return DirectoryReader(location)
    if form == "tar":
        from .tar import TarReader
        return TarReader(location, staging=staging)
    from .zarr_store import ZarrReader
    return ZarrReader(location)


def open_writer(form: str, location: str, *, clobber: bool):
    if form == "dir":
        from .directory import DirectoryWriter
        return DirectoryWriter(location, clobber=clobber)
    if form == "tar":
        from .tar import TarWriter
        return TarWriter(location, clobber=clobber)
    if form == "zarr":
        from .zarr_store import ZarrWriter
        return ZarrWriter(location, clobber=clobber)
    raise BadInput(f"unknown archive format {form!r} (dir, tar or zarr)")
