"""Restoring: every member back where Factor expects it, paths rewritten, a resumable parset last.

While a restore runs, the output holds a marker file; the resumable parset is written only after
everything else succeeded, so an interrupted restore never looks like a run ready to resume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from .. import signals
from ..containers.base import table_worker_session
from ..containers.registry import open_reader
from ..containers.zarr.decoders import decoding_ahead
from ..errors import BadInput, FactorArchiveError
from ..io.durable import fsync_dir, replace_in_marked_tree, sync_filesystem, write_atomic
from ..io.failures import disk_full, is_disk_full, written_path
from ..io.memory import one_malloc_arena
from ..manifest import Manifest, Member, safe_relpath
from ..progress import Reporter
from ..run.mapfile import MapfileError, rewrite_mapfile
from ..run.parset import rewrite_parset
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


def _check_resumable(manifest: Manifest, archive: str) -> None:
    if not manifest.options.get("resumable"):
        raise BadInput(f"{archive}: a basic archive (made without -r) holds no chunks or state and "
                       f"cannot be resumed; list it with 'factor-archive ls' instead")


def _prepare_output(output: Path, clobber: bool) -> str | None:
    """Check (and make) the output directory; a notice when it continues an interrupted restore.

    An output holding the marker of an interrupted restore is that restore's, so running the
    same command again overwrites what it left, as the interruption message promises.
    """
    if output.exists() and not output.is_dir():
        raise BadInput(f"{output}: exists and is not a directory")
    notice = None
    if output.is_dir() and any(output.iterdir()) and not clobber:
        if not (output / MARKER).is_file():
            raise BadInput(f"{output}: directory is not empty; use -c to overwrite files in it")
        notice = f"{output}: continuing an interrupted restore (what it left is replaced)"
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"{output}: cannot create ({exc.strerror})") from None
    return notice


def unarchive(archive: str, output: str, *, symlink: bool = False, clobber: bool = False,
              quiet: bool = False, store: str | None = None, cluster: str | None = None) -> Manifest:
    """Restore ``archive`` into ``output``. ``cluster`` (``local:N`` or a Dask scheduler's
    address, zarr archives only): the tables are decoded by the cluster's workers into
    ``output``, which they must see at the same path (docs/cluster.md)."""
    one_malloc_arena()
    if cluster is None:
        return _unarchive(archive, output, symlink, clobber, quiet, store, None)
    from ..cluster import open_cluster
    from ..containers.registry import detect

    form = detect(archive)
    if form != "zarr":
        raise BadInput(f"{archive}: --cluster restores zarr archives; this is a {form} archive, "
                       f"read by one process")
    with open_cluster(cluster) as client:
        return _unarchive(archive, output, symlink, clobber, quiet, store, client)


def _unarchive(archive: str, output: str, symlink: bool, clobber: bool, quiet: bool,
               store: str | None, client) -> Manifest:
    # A zarr store on local disk: its tables are decoded by worker processes, started first.
    with decoding_ahead(archive) if client is None else contextlib.nullcontext():
        return _unarchive_from(open_reader(archive, staging=Path(os.path.abspath(output)) / SCRATCH),
                               archive, output, symlink, clobber, quiet, store, client)


def _unarchive_from(reader, archive: str, output: str, symlink: bool, clobber: bool, quiet: bool,
                    store: str | None, client) -> Manifest:
    new_wd = Path(os.path.abspath(output))
    scratch = new_wd / SCRATCH
    links = None
    try:
        if reader.capabilities.seekable:
            _check_resumable(reader.manifest, archive)  # before anything is written
        notice = _prepare_output(new_wd, clobber)
        if notice and not quiet:
            print(notice, file=sys.stderr)
        # The marker first: whatever a kill leaves in the output from now on, a rerun recognises.
        (new_wd / MARKER).write_text("restore in progress or interrupted\n")
        scratch.mkdir(exist_ok=True)
        manifest = reader.manifest  # a tar on a pipe is read (spooled to scratch) here
        _check_resumable(manifest, archive)
        parset_member = _parset_member(manifest)
        links = None
        if symlink:
            from .chunk_store import ChunkLinks

            links = ChunkLinks(reader, archive, store)
        if links is not None:
            links.plan(manifest)

        def dest_for(member: Member) -> Path | None:
            if member is parset_member:
                return scratch / "parset"
            if links is not None and member.path in links.targets:
                return links.pending.get(member.path)
            if member.restore_path is None:
                return None
            return new_wd / safe_relpath(member.restore_path, archive)

        places = {m.path: dest_for(m) for m in manifest.members}
        todo = [m for m in manifest.members if places[m.path] is not None]
        for place in places.values():
            if place is not None:
                place.parent.mkdir(parents=True, exist_ok=True)
        reporter = Reporter(sum(m.size for m in todo), "restoring", quiet=quiet)
        try:
            with table_worker_session(reader.capabilities.table_workers and client is None):
                if client is not None:               # the tables decoded on the cluster's workers
                    from ..cluster.runs import restore_tables

                    todo = restore_tables(client, archive, todo, dest_for, reporter)
                reader.extract(todo, dest_for, reporter)  # zarr tables: decoded in worker processes
        finally:
            reporter.close()
        if links is not None:
            links.finish(manifest, new_wd)

        _rewrite_paths(manifest, new_wd)
        # Everything restored reaches the disk before the marker goes: a restore without its
        # marker is complete even after a power cut (and `sync` afterwards has nothing to do).
        # The parset comes after (fsync'd itself): a restore interrupted before has none.
        for root in {new_wd, *([Path(os.path.abspath(store))] if store else [])}:
            if root.exists():
                sync_filesystem(root)
        if parset_member is not None:
            _write_parset(manifest, scratch / "parset", new_wd)
        signals.hold()  # the restore is complete once the marker goes: a signal now is reported after
        (new_wd / MARKER).unlink()
        fsync_dir(new_wd)
        return manifest
    except BaseException as exc:
        if is_disk_full(exc) and signals.received() is None:
            roots = [new_wd] + ([Path(os.path.abspath(store))] if store else [])
            if links is not None and links.pending:
                roots.append(links.store_dir())
            full = disk_full(written_path(exc, roots) or new_wd)
            raise type(full)(f"{full}; the restore is incomplete ({MARKER} marks it): free space, "
                             f"then run the same command with -c to complete it", full.path) from None
        raise
    finally:
        reader.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _rewrite_paths(manifest: Manifest, new_wd: Path) -> None:
    # Imported here: the state pickles' reader imports numpy, which the restore's workers, started
    # first thing, should not wait for.
    from ..run.state import UnsafePickleError, rewrite_strings

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
            replace_in_marked_tree(path, new)   # made durable with the whole restore


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
