"""Restoring: every member back where Factor expects it, paths rewritten, a resumable parset last.

While a restore runs, the output holds a marker file; the resumable parset is written only after
everything else succeeded, so an interrupted restore never looks like a run ready to resume.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from ..containers.base import write_atomic
from ..containers.detect import open_reader
from ..errors import BadInput, FactorArchiveError
from ..manifest import Manifest, Member, safe_relpath
from ..progress import Reporter
from ..run.mapfile import MapfileError, rewrite_mapfile
from ..run.parset import rewrite_parset
from ..run.state import UnsafePickleError, rewrite_strings
from .rewrite import make_path_mapper, py2_bytes_mapper

MARKER = ".factor-archive-restore-incomplete"
SCRATCH = ".factor-archive-restore"


def _parset_member(manifest: Manifest) -> Member | None:
    for m in manifest.members:
        if m.category == "misc" and m.source == manifest.run.get("parset"):
            return m
    return None


def relocations(manifest: Manifest, new_wd: Path) -> dict[str, str]:
    """Old absolute path -> new absolute path of every restored member (and of the link it came from)."""
    moves = {}
    for m in manifest.members:
        if m.restore_path is None or not m.source:
            continue  # generated members (calibrated data) have no old place
        new = str(new_wd / m.restore_path)
        moves[m.source] = new
        if m.symlink_target:
            target = m.symlink_target
            if not os.path.isabs(target):
                target = os.path.normpath(os.path.join(os.path.dirname(m.source), target))
            moves[target] = new
    return moves


def _prepare_output(output: Path, clobber: bool) -> None:
    if output.exists() and not output.is_dir():
        raise BadInput(f"{output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not clobber:
        raise BadInput(f"{output}: directory is not empty; use -c to overwrite files in it")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"{output}: cannot create ({exc.strerror})") from None


def unarchive(archive: str, output: str, *, symlink: bool = False, clobber: bool = False,
              quiet: bool = False, store: str | None = None, log: Callable[[str], None] = print) -> Manifest:
    reader = open_reader(archive)
    try:
        manifest = reader.manifest
        if not manifest.options.get("resumable"):
            raise BadInput(f"{archive}: a basic archive (made without -r) holds no chunks or state and "
                           f"cannot be resumed; list it with 'factor-archive ls' instead")
        new_wd = Path(os.path.abspath(output))
        _prepare_output(new_wd, clobber)
        (new_wd / MARKER).write_text("restore in progress or interrupted\n")
        scratch = new_wd / SCRATCH
        scratch.mkdir(exist_ok=True)
        parset_member = _parset_member(manifest)

        linked: dict[str, Path] = {}
        if symlink:
            linked = _link_chunks(reader, manifest, new_wd, store)

        def dest_for(member: Member) -> Path | None:
            if member is parset_member:
                return scratch / "parset"
            if member.restore_path is None or member.path in linked:
                return None
            return new_wd / safe_relpath(member.restore_path, archive)

        todo = [m for m in manifest.members if dest_for(m) is not None]
        reporter = Reporter(sum(m.size for m in todo), "restoring", quiet=quiet)
        try:
            for m in todo:
                dest_for(m).parent.mkdir(parents=True, exist_ok=True)
            reader.extract(todo, dest_for, reporter)
        finally:
            reporter.close()

        _rewrite_paths(manifest, new_wd)
        if parset_member is not None:
            _write_parset(manifest, scratch / "parset", new_wd)
        shutil.rmtree(scratch, ignore_errors=True)
        (new_wd / MARKER).unlink()
        return manifest
    finally:
        reader.close()


def _link_chunks(reader, manifest: Manifest, new_wd: Path, store: str | None) -> dict[str, Path]:
    """-s: chunk tables become symlinks to copies that already exist as plain files."""
    linked = {}
    materialise = getattr(reader, "materialise", None)
    for m in manifest.members:
        if m.category != "chunks" or m.kind != "table" or m.restore_path is None:
            continue
        target = reader.local_path(m)
        if target is None and materialise is not None:
            target = materialise(m, store)
        if target is None:
            continue  # this form cannot link: the chunk is copied instead
        dest = new_wd / safe_relpath(m.restore_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            else:
                dest.unlink()
        os.symlink(target, dest)
        linked[m.path] = target
    return linked


def _rewrite_paths(manifest: Manifest, new_wd: Path) -> None:
    run = manifest.run
    roots = [run.get("working_dir", ""), run.get("working_dir_abs", "")]
    mapper = py2_bytes_mapper(make_path_mapper(roots, str(new_wd), relocations(manifest, new_wd)))
    for m in manifest.members:
        if m.rewrite is None or m.restore_path is None:
            continue
        path = new_wd / m.restore_path
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        try:
            if m.rewrite == "state":
                new, changed = rewrite_strings(data, mapper)
            else:
                text, changed = rewrite_mapfile(data.decode("utf-8", errors="surrogateescape"), mapper)
                new = text.encode("utf-8", errors="surrogateescape")
        except (UnsafePickleError, MapfileError) as exc:
            raise BadInput(f"{m.path}: cannot rewrite paths ({exc})") from None
        if changed:
            st = os.stat(path)
            write_atomic(path, new)
            os.chmod(path, st.st_mode & 0o7777)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _write_parset(manifest: Manifest, original: Path, new_wd: Path) -> None:
    text = original.read_bytes().decode("utf-8", errors="surrogateescape")
    changes = {("global", "dir_working"): str(new_wd), ("global", "dir_ms"): str(new_wd / "chunks")}
    dfile = manifest.run.get("directions_file")
    if dfile:
        moved = relocations(manifest, new_wd).get(dfile)
        if moved:
            changes[("directions", "directions_file")] = moved
    name = manifest.run.get("parset_name") or "factor.parset"
    safe_relpath(name, "manifest")
    if "/" in name:
        raise BadInput(f"manifest: refusing parset name {name!r}")
    try:
        write_atomic(new_wd / name, rewrite_parset(text, changes).encode("utf-8", errors="surrogateescape"))
    except OSError as exc:
        raise FactorArchiveError(f"{new_wd / name}: {exc.strerror}") from None
