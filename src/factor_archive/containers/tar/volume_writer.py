"""Writing a set of tar volumes of a chosen size, each a complete tar, resumable by volume.

Members go whole into one volume; a new volume starts when the next member would not fit (or,
with ``--group-by category``, when the category group changes). Only a member larger than a
volume is spread: a table file by file, and a file larger than a volume cut into parts
``FILE.part000``, ``FILE.part001``, ... that ``cat`` joins. Everything goes through a
``BlobStore``, so the same code writes to a local directory or an object store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ...errors import BadInput, FactorArchiveError
from ...io.blobs import BlobStore
from ...io.copy import Progress, no_progress
from ...io.failures import io_error
from ...io.install import discard
from ...io.leftovers import remove_stale_partials
from ...io.tree import walk_table
from ...manifest import TAG_MANIFEST_NAME, FileEntry, Manifest, Member, safe_relpath
from ..base import ArchiveWriter, Capabilities, file_member, table_member
from .format import BLOCKSIZE, _created_ns, _padding, announcement, entry_headers
from .local_blobs import LocalBlobs
from .volumes import (
    VOLUME_INDEX_NAME,
    Entry,
    VolumeIndex,
    VolumeRecord,
    category_group,
    entry_intact,
    volume_index_of,
    volume_name,
)
from .writer import TarWriter, metadata_blobs

CHUNK = 1 << 20


@dataclass(frozen=True)
class VolumeOptions:
    """``--volume-size`` and ``--group-by``."""

    size: int
    group_by: str | None = None        # None or "category"


def source_stats(member: Member, source: Path | None) -> list[list]:
    """[relative path, size, mtime_ns] of every file a member was read from ("" for a file)."""
    if source is None or not member.source or member.kind == "link":
        return []
    try:
        if member.kind == "file":
            st = os.stat(source)
            return [["", st.st_size, st.st_mtime_ns]]
        files, _dirs = walk_table(Path(source))
        return [[rel, (st := os.stat(full)).st_size, st.st_mtime_ns] for rel, full in files]
    except (OSError, BadInput):
        return [["?", -1, -1]]


class VolumeWriter(ArchiveWriter):
    """Writes ``NAME.tar``, ``NAME.001.tar``, ... into a ``BlobStore``."""

    form = "tar"
    capabilities = Capabilities(resumable_writes=True)

    def __init__(self, blobs: BlobStore, name: str, options: VolumeOptions, *,
                 clobber: bool = False, staging_parent: Path | None = None) -> None:
        self.blobs = blobs
        self.name = name
        self.options = options
        self._where = f"{blobs.location.rstrip('/')}/{name}"
        self._staging_parent = staging_parent
        self._staging: Path | None = None
        self.notices: list[str] = []
        if staging_parent is not None:
            self.notices += _remove_leftovers(staging_parent, name)
        self._done: list[VolumeRecord] = []       # volumes committed (kept or written now)
        self._entries: list[Entry] = []           # of every volume in _done
        self._tar: TarWriter | None = None        # the volume being written
        self._index: VolumeIndex | None = None
        self._paths: set[str] = set()
        self._reuse: list[Member] = []            # an interrupted run's members, in order
        self._finished = False
        self.set_id = uuid.uuid4().hex
        self._start(clobber)

    # -- starting: a fresh set, or continuing an interrupted one ---------------------------------

    def _start(self, clobber: bool) -> None:
        if self.blobs.size(self.name) is None:
            return
        found = volume_index_of(self.blobs, self.name)
        complete = found is not None and self._is_complete(found[0])
        if not clobber and (found is None or complete):
            raise BadInput(f"{self._where}: already exists (use --clobber to replace it)")
        if clobber or found is None or complete:
            self._remove_volumes_from(0)
            return
        kept = self._intact_prefix()
        self._remove_volumes_from(len(kept))
        if kept:
            self.set_id = kept[0][0].set
            for index, sha in kept:
                self._done.append(VolumeRecord(volume_name(self.name, index.volume),
                                               self.blobs.size(volume_name(self.name, index.volume))
                                               or 0, sha))
                self._entries += index.entries
                self._reuse += index.members
            self.notices.append(f"{self._where}: continuing an interrupted volume archive "
                                f"({len(kept)} volume(s) kept, {len(self._reuse)} members)")

    def _is_complete(self, first: VolumeIndex) -> bool:
        number = 0
        while True:
            found = volume_index_of(self.blobs, volume_name(self.name, number))
            if found is None or found[0].set != first.set:
                return False
            if found[0].last:
                return True
            number += 1

    def _intact_prefix(self) -> list[tuple[VolumeIndex, str]]:
        """The interrupted run's volumes that are kept: the first ones, in order, that are
        complete tars of this set written with these options, whose entries hash to their
        recorded checksums, whose members' sources are unchanged, and that end on a member
        boundary (no member continues into a volume that is not kept)."""
        kept: list[tuple[VolumeIndex, str]] = []
        number = 0
        while True:
            name = volume_name(self.name, number)
            try:
                found = volume_index_of(self.blobs, name)
            except FactorArchiveError:
                break
            if found is None:
                break
            index, _sha = found
            if index.volume != number or index.last or index.volume_size != self.options.size \
                    or index.group_by != self.options.group_by or index.name != self.name \
                    or (kept and index.set != kept[0][0].set) \
                    or not self._entries_intact(name, index) or not self._sources_unchanged(index):
                break
            kept.append(found)
            number += 1
        while kept:             # drop volumes whose last member is not complete in them
            done = {m.path for index, _sha in kept for m in index.members}
            if all(e.member in done for e in kept[-1][0].entries):
                break
            kept.pop()
        return kept

    def _entries_intact(self, name: str, index: VolumeIndex) -> bool:
        try:
            with self.blobs.open(name) as f:
                if not all(entry_intact(f, entry) for entry in index.entries):
                    return False
        except OSError:
            return False
        return True

    @staticmethod
    def _sources_unchanged(index: VolumeIndex) -> bool:
        for member in index.members:
            recorded = index.sources.get(member.path, [])
            if recorded and source_stats(member, Path(member.source)) != recorded:
                return False
        return True

    def _remove_volumes_from(self, number: int) -> None:
        while self.blobs.size(volume_name(self.name, number)) is not None:
            self.blobs.remove(volume_name(self.name, number))
            number += 1

    # -- ArchiveWriter -----------------------------------------------------------------------------

    def already_written(self, member: Member) -> Member | None:
        return self._take_reused(member)

    def write(self, member: Member, source: Path, progress: Progress = no_progress, *,
              staged: bool = False) -> Member:
        if self._finished:
            raise FactorArchiveError("internal error: write() after close() or abort()")
        kept = self._take_reused(member)
        if kept is not None:
            progress(kept.size)
            if staged:
                discard(Path(source))
            return kept
        path = safe_relpath(member.path, "archive member")
        if path in self._paths:
            raise BadInput(f"{member.path}: archive path clashes with another member")
        source = Path(source)
        stats = source_stats(member, source)
        group = category_group(member.category) if self.options.group_by else None
        need = self._estimate(member, source)
        if self._tar is None or (self._index is not None and self._index.group != group) \
                or (self._used() > 0 and self._used() + need > self.options.size):
            self._next_volume(group)
        if member.kind == "link" or self._used() + need <= self.options.size:
            stored = self._whole(member, source, progress)
        elif member.kind == "file":
            stored = self._spread_file(member, source, progress)
        else:
            stored = self._spread_table(member, source, progress)
        self._paths.add(path)
        assert self._index is not None
        self._index.members.append(stored)
        if stats:
            self._index.sources[stored.path] = stats
        if staged:
            discard(source)
        return stored

    def staging_dir(self) -> Path:
        if self._staging is None:
            if self._staging_parent is None:
                import tempfile

                self._staging = Path(tempfile.mkdtemp(prefix=".volumes.staging-"))
            else:
                self._staging = self._staging_parent / f".{self.name}.staging-{os.getpid()}"
                discard(self._staging)
                try:
                    self._staging.mkdir()
                except OSError as exc:
                    raise io_error(self._staging, exc) from None
        return self._staging

    def close(self, manifest: Manifest) -> None:
        if self._finished:
            raise FactorArchiveError("internal error: close() after close() or abort()")
        if self._reuse:
            raise FactorArchiveError(f"{self._where}: the interrupted archive holds members this run "
                                     f"did not write ({self._reuse[0].path!r}); add -c to start over")
        if self._tar is None:
            self._next_volume(None)
        assert self._tar is not None and self._index is not None
        manifest.container = "tar"
        manifest.tag_manifest = TAG_MANIFEST_NAME
        manifest.options["volume_set"] = {"set": self.set_id, "volumes": self._index.volume + 1,
                                          "volume_size": self.options.size,
                                          "group_by": self.options.group_by}
        self._index.last = True
        self._index.entries = self._entries + self._index.entries
        self._index.volumes = list(self._done)
        blobs = {VOLUME_INDEX_NAME: self._index.to_bytes(), **metadata_blobs(manifest)}
        self._tar.finish(blobs, _created_ns(manifest))
        self._finished = True
        self._remove_volumes_from(self._index.volume + 1)   # a longer earlier set's leftovers
        self._remove_staging()

    def abort(self) -> None:
        """The volumes already committed stay (none is marked last, so no reader takes them for
        a set): a rerun keeps those that are intact."""
        self._finished = True
        if self._tar is not None:
            self._tar.abort()
        self._remove_staging()

    # -- volumes --------------------------------------------------------------------------------

    def _take_reused(self, member: Member) -> Member | None:
        """The next member the interrupted run kept, if this is it (its sources were checked
        when the volumes were kept); any other member means the plan changed."""
        if not self._reuse:
            return None
        kept = self._reuse[0]
        if kept.path != member.path or kept.kind != member.kind \
                or kept.category != member.category or kept.restore_path != member.restore_path:
            raise FactorArchiveError(f"{self._where}: the run's members differ from the interrupted "
                                     f"archive's (expected {kept.path!r}, got {member.path!r}); "
                                     "add -c to start over")
        self._reuse.pop(0)
        self._paths.add(kept.path)
        return kept

    def _used(self) -> int:
        return 0 if self._tar is None else self._tar.size

    def _next_volume(self, group: str | None) -> None:
        """Close the volume being written (if any) and start the next."""
        if self._tar is not None:
            assert self._index is not None
            data = self._index.to_bytes()
            self._tar.finish({VOLUME_INDEX_NAME: data}, time.time_ns())
            name = volume_name(self.name, self._index.volume)
            self._done.append(VolumeRecord(name, self._tar.size,
                                           hashlib.sha256(data).hexdigest()))
            self._entries += self._index.entries
        number = len(self._done)
        self._tar = TarWriter(volume_name(self.name, number), clobber=True, blobs=self.blobs)
        self.notices += self._tar.notices
        self._index = VolumeIndex(self.set_id, self.name, number, False, self.options.size,
                                  self.options.group_by, group)

    def _estimate(self, member: Member, source: Path) -> int:
        """Bytes the member takes in a tar, headers included (exactly, for unchanged sources)."""
        if member.kind == "link":
            return 0
        try:
            st = os.stat(source)
            if member.kind == "file":
                return _entry_size(member.path, st, announcement(member))
            files, dirs = walk_table(source)
            return (_entry_size(member.path + "/", st, announcement(member), directory=True)
                    + sum(_entry_size(f"{member.path}/{d}/", os.stat(source / d), directory=True)
                          for d in dirs)
                    + sum(_entry_size(f"{member.path}/{rel}", os.stat(full)) for rel, full in files))
        except OSError as exc:
            raise io_error(source, exc) from None

    def _add_entry(self, name: str, file: str, member: str, offset: int, size: int, sha: str,
                   part: int | None = None) -> None:
        assert self._index is not None
        self._index.entries.append(Entry(name, file, member, self._index.volume, offset, size,
                                         sha, part))

    def _whole(self, member: Member, source: Path, progress: Progress) -> Member:
        assert self._tar is not None
        stored = self._tar.write(member, source, progress)
        if stored.kind == "file":
            self._add_entry(stored.path, stored.path, stored.path, stored.offset or 0,
                            stored.size, stored.sha256)
        for e in stored.files:
            path = f"{stored.path}/{e.path}"
            self._add_entry(path, path, stored.path, e.offset or 0, e.size, e.sha256)
        return dataclasses.replace(stored, offset=None,
                                   files=[dataclasses.replace(e, offset=None) for e in stored.files])

    def _spread_file(self, member: Member, source: Path, progress: Progress) -> Member:
        st, sha = self._write_in_parts(member.path, source, member.path, progress, announcement(member))
        return file_member(member, st, sha, st.st_size, offset=None)

    def _spread_table(self, member: Member, root: Path, progress: Progress) -> Member:
        assert self._tar is not None
        st_root, files, dirs = self._tar._table_head(member, root)
        entries = []
        for rel, full in files:
            path = f"{member.path}/{rel}"
            need = _entry_size(path, os.stat(full))
            if self._used() + need > self.options.size and need <= self.options.size:
                self._next_volume(self._index.group if self._index else None)
            if self._used() + need <= self.options.size:
                st, lazy, offset = self._tar._write_file(path, full, progress, None)
                digest = self._tar._checksum(lazy)
                self._add_entry(path, path, member.path, offset, st.st_size, digest)
            else:
                st, digest = self._write_in_parts(path, full, member.path, progress)
            entries.append(FileEntry(rel, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime,
                                     digest))
        return table_member(member, entries, dirs, mode=stat.S_IMODE(st_root.st_mode),
                            mtime=st_root.st_mtime, offset=None)

    def _write_in_parts(self, path: str, source: Path, member: str, progress: Progress,
                        comment: str | None = None) -> tuple[os.stat_result, str]:
        """A file larger than a volume: parts ``path.part000``, ... filling each volume; the
        first part carries ``comment`` (the member's announcement, for a file member)."""
        try:
            f = open(source, "rb")  # noqa: SIM115 - opened apart from its with, so an OSError names the file
        except OSError as exc:
            raise io_error(source, exc) from None
        whole = hashlib.sha256()
        with f:
            st = os.fstat(f.fileno())
            left, part = st.st_size, 0
            while left > 0 or part == 0:
                name = f"{path}.part{part:03d}"
                said = comment if part == 0 else None
                headers = len(entry_headers(name, b"0", self.options.size,
                                            stat.S_IMODE(st.st_mode), st.st_mtime_ns, said))
                room = (self.options.size - self._used() - headers) // BLOCKSIZE * BLOCKSIZE
                if room < BLOCKSIZE:
                    self._next_volume(self._index.group if self._index else None)
                    continue
                assert self._tar is not None
                size = min(left, room)
                sink = self._tar._sink
                sink.write(entry_headers(name, b"0", size, stat.S_IMODE(st.st_mode),
                                         st.st_mtime_ns, said))
                offset = sink.pos
                piece = hashlib.sha256()
                todo = size
                while todo:
                    try:
                        data = f.read(min(CHUNK, todo))
                    except OSError as exc:
                        raise io_error(source, exc) from None
                    if not data:
                        raise FactorArchiveError(f"{source}: file shrank while being archived")
                    sink.write(data)
                    piece.update(data)
                    whole.update(data)
                    progress(len(data))
                    todo -= len(data)
                sink.write(_padding(size))
                self._add_entry(name, path, member, offset, size,
                                piece.hexdigest(), part)
                left -= size
                part += 1
        return st, whole.hexdigest()

    def _remove_staging(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def _entry_size(path: str, st: os.stat_result, comment: str | None = None, *,
                directory: bool = False) -> int:
    """Headers and padded data of one tar entry as TarWriter writes it."""
    size = 0 if directory else st.st_size
    headers = entry_headers(path, b"5" if directory else b"0", size, stat.S_IMODE(st.st_mode),
                            st.st_mtime_ns, comment)
    return len(headers) + size + (-size % BLOCKSIZE)


def _remove_leftovers(directory: Path, name: str) -> list[str]:
    """What killed runs left beside the set: ``.NAME.staging-PID`` and the partial of any
    volume, also of volumes beyond those a rerun will write."""
    stem = name[:-4] if name.endswith(".tar") else name
    pattern = re.compile(rf"^\.({re.escape(name)}|{re.escape(stem)}\.\d{{3,}}\.tar)"
                         r"\.(partial|staging)-\d+$")
    try:
        finals = sorted({m.group(1) for n in os.listdir(directory)
                         if (m := pattern.match(n)) is not None})
    except OSError:
        return []
    return [line for final in finals for line in remove_stale_partials(directory / final)]


def open_volume_writer(path: str, options: VolumeOptions, *, clobber: bool) -> VolumeWriter:
    """A volume set at a local path: ``path`` names the first volume."""
    first = Path(path)
    if first.is_dir():
        raise BadInput(f"{path}: is a directory")
    if not first.parent.is_dir():
        raise BadInput(f"{first.parent}: no such directory")
    return VolumeWriter(LocalBlobs(first.parent, clobber=True), first.name, options,
                        clobber=clobber, staging_parent=first.parent)
