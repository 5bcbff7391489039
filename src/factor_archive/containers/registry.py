"""The table of container forms: one entry per back end, and the functions that choose among them.

Adding a back end is its own module or package, one :class:`Backend` entry in :data:`BACKENDS`,
and one subclass of the contract tests (docs/architecture.md, "Adding a back end").
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput
from ..manifest import MANIFEST_NAME
from .base import ArchiveReader, ArchiveWriter
from .locations import Location, parse_location

HEAD_SIZE = 512                       # bytes of a file the content sniffers see


@dataclass(frozen=True)
class Backend:
    """One container form: how to open it, how to recognise it, which names default to it."""

    name: str
    writer: Callable[[Location, bool], ArchiveWriter]             # (location, clobber)
    reader: Callable[[Location, Path | None], ArchiveReader]      # (location, staging)
    sniff_dir: Callable[[Path], bool] = lambda _path: False       # a directory holding this form?
    sniff_file: Callable[[Path, bytes], bool] = lambda _path, _head: False  # a file starting so?
    suffixes: tuple[str, ...] = ()    # output names that choose this form
    url_schemes: tuple[str, ...] = () # object-store URLs this form reads and writes
    # Object-store URLs this form reads and writes only when their name says so (one of
    # ``suffixes``, e.g. s3://bucket/run.tar), or a prefix this form recognises (sniff_url).
    url_suffix_schemes: tuple[str, ...] = ()
    sniff_url: Callable[[Location], bool] = lambda _loc: False
    stdio: bool = False               # streams through standard input and output ("-")


# -- the back ends (imported only when used: zarr is slow to import) ------------------------------

def _dir_writer(loc: Location, clobber: bool) -> ArchiveWriter:
    from .directory import DirectoryWriter
    return DirectoryWriter(loc.local_path(), clobber=clobber)


def _dir_reader(loc: Location, staging: Path | None) -> ArchiveReader:
    from .directory import DirectoryReader
    return DirectoryReader(loc.local_path(), staging=staging)


def _object_blobs(url: str) -> Any:
    from ..io.objectstore import S3Blobs
    return S3Blobs(url)


def _tar_writer(loc: Location, clobber: bool) -> ArchiveWriter:
    from .tar import TarWriter
    if loc.kind == "url":       # one object, uploaded in parts as it is written
        parent, name = loc.parent_and_name()
        return TarWriter(name, clobber=clobber, blobs=_object_blobs(parent))
    return TarWriter(loc.text, clobber=clobber)


def _tar_reader(loc: Location, staging: Path | None) -> ArchiveReader:
    from .tar import TarReader
    from .tar.volume_reader import VolumeSetReader, open_tar_blob, open_volume_set
    from .tar.volumes import is_volume

    if loc.kind == "stdio":
        return TarReader(loc.text, staging=staging)
    if loc.kind == "url":       # read by ranged GETs: the index, the manifest, the members asked for
        if loc.has_suffix(".tar"):
            parent, name = loc.parent_and_name()
            return open_tar_blob(_object_blobs(parent), name, staging)
        return VolumeSetReader(_object_blobs(loc.text), None)    # the prefix holding a set
    path = loc.local_path()
    if path.is_dir():
        return open_volume_set(path)
    try:
        with open(path, "rb") as f:
            volume = is_volume(f)
    except OSError:
        volume = False      # the tar reader says what is wrong with it
    return open_volume_set(path) if volume else TarReader(loc.text, staging=staging)


def _holds_volumes(path: Path) -> bool:
    from .tar.volume_reader import holds_volumes
    return holds_volumes(path)


def _url_holds_tar(loc: Location) -> bool:
    """An object named *.tar, or a prefix holding the volumes of a set (one listing)."""
    if loc.has_suffix(".tar"):
        return True
    from .tar.volume_reader import blobs_hold_volumes
    return blobs_hold_volumes(_object_blobs(loc.text))


def _is_tar(_path: Path, head: bytes) -> bool:
    from .tar import is_tar_header
    return is_tar_header(head)


def _zarr_writer(loc: Location, clobber: bool) -> ArchiveWriter:
    from .zarr import ZarrWriter
    return ZarrWriter(loc, clobber=clobber)


def _zarr_reader(loc: Location, staging: Path | None) -> ArchiveReader:
    from .zarr import ZarrReader
    return ZarrReader(loc, staging=staging)


def _is_zarr_zip(path: Path, head: bytes) -> bool:
    """A zip whose root holds zarr.json (a zip of anything else is not a zarr store)."""
    if head[:4] != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(name in ("zarr.json", "/zarr.json") for name in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return True     # damaged: the zarr reader says what is wrong with it


BACKENDS: tuple[Backend, ...] = (
    Backend("dir", _dir_writer, _dir_reader,
            sniff_dir=lambda path: (path / MANIFEST_NAME).is_file()),
    Backend("tar", _tar_writer, _tar_reader, sniff_dir=_holds_volumes, sniff_file=_is_tar,
            suffixes=(".tar",), stdio=True, url_suffix_schemes=("s3", "s3a"), sniff_url=_url_holds_tar),
    Backend("zarr", _zarr_writer, _zarr_reader,
            sniff_dir=lambda path: (path / "zarr.json").is_file(), sniff_file=_is_zarr_zip,
            suffixes=(".zarr", ".zarr.zip"), url_schemes=("s3", "s3a", "gs", "gcs", "memory", "file")),
)
DEFAULT_FORM = "dir"                  # a plain output name


def names() -> tuple[str, ...]:
    return tuple(b.name for b in BACKENDS)


def backend(name: str) -> Backend:
    for b in BACKENDS:
        if b.name == name:
            return b
    raise BadInput(f"unknown archive format {name!r} ({', '.join(names()[:-1])} or {names()[-1]})")


def form_for_output(location: str | Location) -> str:
    """The form an output gets when none is asked for: from ``-``, a URL's scheme or the name."""
    loc = location if isinstance(location, Location) else parse_location(location)
    for b in BACKENDS:
        if loc.kind == "url" and loc.scheme in b.url_suffix_schemes \
                and any(loc.has_suffix(s) for s in b.suffixes):
            return b.name
    for b in BACKENDS:
        if (loc.kind == "stdio" and b.stdio) or (loc.kind == "url" and loc.scheme in b.url_schemes) \
                or (loc.kind == "path" and any(loc.has_suffix(s) for s in b.suffixes)):
            return b.name
    return DEFAULT_FORM


def detect(location: str | Location) -> str:
    """Which form an existing archive is, from its content rather than its name."""
    loc = location if isinstance(location, Location) else parse_location(location)
    if loc.kind == "stdio":
        return _streaming().name
    if loc.kind == "url":
        for b in BACKENDS:
            if loc.scheme in b.url_suffix_schemes and b.sniff_url(loc):
                return b.name
        for b in BACKENDS:
            if loc.scheme in b.url_schemes:
                return b.name
        raise BadInput(f"{loc.text}: no archive form reads {loc.scheme}:// URLs")
    path = loc.local_path()
    shown = Path(loc.text)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise BadInput(f"{shown}: archive not found") from None
    except OSError as exc:
        raise BadInput(f"{shown}: cannot read archive ({exc.strerror})") from None
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return _streaming().name  # a pipe or a tape: sniffing would eat bytes
    if stat.S_ISDIR(mode):
        for b in BACKENDS:
            if b.sniff_dir(path):
                return b.name
        raise BadInput(f"{shown}: not an archive (no {MANIFEST_NAME} or zarr.json); an interrupted archive?")
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_SIZE)
    except OSError as exc:
        raise BadInput(f"{shown}: cannot read archive ({exc.strerror})") from None
    for b in BACKENDS:
        if b.sniff_file(path, head):
            return b.name
    raise BadInput(f"{shown}: not a factor-archive archive (neither a directory, a tar nor a zarr zip)")


def _streaming() -> Backend:
    return next(b for b in BACKENDS if b.stdio)


def open_reader(location: str | Location, *, staging: Path | None = None) -> ArchiveReader:
    """A reader for the archive at ``location``; ``staging`` is scratch space on the output's disk
    for forms that must spool (a tar read from a pipe)."""
    loc = location if isinstance(location, Location) else parse_location(location)
    return backend(detect(loc)).reader(loc, staging)


def open_writer(form: str, location: str | Location, *, clobber: bool,
                volumes: Any = None) -> ArchiveWriter:
    """A writer of ``form`` at ``location``; ``volumes`` (tar form: a ``VolumeOptions``) writes
    a set of volumes instead of one file."""
    b = backend(form)
    loc = location if isinstance(location, Location) else parse_location(location)
    if volumes is not None:
        if b.name != "tar":
            raise BadInput(f"--volume-size: only the tar form is written in volumes, not {form}")
        if loc.kind == "stdio" or (loc.kind == "url" and loc.scheme not in b.url_suffix_schemes):
            raise BadInput(f"{loc.text}: tar volumes are written to a local directory or an "
                           "s3:// URL (not to standard output)")
        from .tar.volume_writer import VolumeWriter, open_volume_writer
        if loc.kind == "url":   # each volume one object beside the first
            parent, name = loc.parent_and_name()
            return VolumeWriter(_object_blobs(parent), name, volumes, clobber=clobber)
        return open_volume_writer(str(loc.local_path()), volumes, clobber=clobber)
    if loc.kind == "stdio" and not b.stdio:
        raise BadInput(f"-: the {form} form cannot be written to standard output "
                       f"(use --format {_streaming().name})")
    if loc.kind == "url" and loc.scheme not in b.url_schemes + b.url_suffix_schemes:
        raise BadInput(f"{loc.text}: the {form} form cannot be written to a {loc.scheme}:// URL")
    return b.writer(loc, clobber)
