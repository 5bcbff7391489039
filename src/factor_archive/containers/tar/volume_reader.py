"""Reading a set of tar volumes given its first volume, any volume, or the directory holding it.

The set's manifest and the place of every entry come from the last volume's end; data is then
read volume by volume in order, each volume opened once, never going back (as a tape is read).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, BinaryIO

from ...errors import BadInput, DamagedArchive
from ...io.blobs import BlobStore
from ...io.copy import Progress, no_progress
from ...io.failures import io_error
from ...io.install import Undo, install, partial_name, set_meta, set_table_meta
from ...manifest import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    TAG_MANIFEST_NAME,
    Manifest,
    Member,
    check_checksums_file,
    tag_problems,
    tree_digest,
)
from ..base import ArchiveReader, Capabilities, DestFor
from .local_blobs import LocalBlobs
from .reader import TarReader
from .volumes import (
    VOLUME_INDEX_NAME,
    Entry,
    VolumeIndex,
    VolumeRecord,
    base_candidates,
    entry_intact,
    first_volume_name,
    is_volume,
    read_tail_index,
    volume_index_of,
    volume_name,
)

CHUNK = 1 << 20


class VolumeSetReader(ArchiveReader):
    form = "tar"
    capabilities = Capabilities(seekable=True)

    def __init__(self, blobs: BlobStore, given: str | None) -> None:
        """``given``: the name of any volume of the set, or None for the only set in ``blobs``."""
        self.blobs = blobs
        self._loc = blobs.location.rstrip("/")
        self.opened: list[str] = []              # volumes whose data was read, in order (tests)
        base, given_set = self._find_base(given)
        self.name = f"{self._loc}/{base}"
        self.base = base
        self.last, self.records = self._find_last(base)
        if given is not None and given_set != self.last.set:
            raise BadInput(f"{self._where(given)}: foreign volume (of set {str(given_set)[:12]}, "
                           f"while {self.last.name} ends set {self.last.set[:12]})")
        for number in range(len(self.records) - 1):     # every volume there, and of this set
            self._check_volume(number)
        with self._open(self.last.name) as f:
            self._manifest = TarReader(f).manifest
        self._check_manifest_name()

    # -- finding the set ------------------------------------------------------------------------

    def _where(self, name: str) -> str:
        return f"{self._loc}/{name}"

    def _find_base(self, given: str | None) -> tuple[str, str | None]:
        if given is not None:
            found = volume_index_of(self.blobs, given)
            if found is None:
                raise BadInput(f"{self._where(given)}: not a volume of a factor-archive set")
            return first_volume_name(given, found[0]), found[0].set
        bases = base_candidates(self.blobs.names())
        if not bases:
            raise BadInput(f"{self._loc}: no tar volumes here")
        if len(bases) > 1:
            raise BadInput(f"{self._loc}: holds several archives ({', '.join(bases)}); name one")
        return bases[0], None

    def _find_last(self, base: str) -> tuple[VolumeIndex, list[VolumeRecord]]:
        """The last volume's index (the set's), after checking that every volume is there."""
        number = 0
        while self.blobs.size(volume_name(base, number)) is not None:
            number += 1
        if number == 0:
            raise BadInput(f"{self._where(base)}: missing volume 0 (the first) of the set")
        found = volume_index_of(self.blobs, volume_name(base, number - 1))
        if found is None:
            raise BadInput(f"{self._where(volume_name(base, number - 1))}: not a volume of a "
                           "factor-archive set")
        last, sha = found
        if last.volume != number - 1:
            raise BadInput(f"{self._where(volume_name(base, number - 1))}: volume {last.volume} "
                           f"found where volume {number - 1} belongs")
        if not last.last:
            raise BadInput(f"{self._where(volume_name(base, number))}: missing volume {number} of "
                           f"the set (the set continues after {volume_name(base, number - 1)})")
        last.name = volume_name(base, number - 1)
        records = [VolumeRecord(volume_name(base, i), r.size, r.index_sha256)   # as named here
                   for i, r in enumerate(last.volumes)] + [VolumeRecord(last.name, 0, sha)]
        if len(records) != number:
            raise DamagedArchive(f"{self._where(last.name)}: the set's index lists "
                                 f"{len(records)} volumes, {number} are there")
        if any(e.volume >= number for e in last.entries):
            raise DamagedArchive(f"{self._where(last.name)}: damaged volume index (an entry in a "
                                 "volume that does not exist)")
        return last, records

    def _check_manifest_name(self) -> None:
        vs = self._manifest.options.get("volume_set") or {}
        if vs.get("set") != self.last.set:
            raise DamagedArchive(f"{self._where(self.last.name)}: the manifest belongs to another "
                                 "volume set")

    def _open(self, name: str) -> BinaryIO:
        try:
            return self.blobs.open(name)
        except FileNotFoundError:
            raise BadInput(f"{self._where(name)}: missing volume of the set") from None
        except OSError as exc:
            raise io_error(self._where(name), exc) from None

    def _check_volume(self, number: int, f: BinaryIO | None = None) -> None:
        """The volume is the very one the set's index names: the checksum its end-of-archive
        index gives for its own volume index (which holds the set id and the number) is the one
        the last volume recorded. Only the volume's last 2 KiB are read."""
        record = self.records[number]
        where = self._where(record.name)
        if f is None:
            if self.blobs.size(record.name) is None:
                raise BadInput(f"{where}: missing volume {number} of the set")
            with self._open(record.name) as opened:
                index = read_tail_index(opened, where, VOLUME_INDEX_NAME)
        else:
            index = read_tail_index(f, where, VOLUME_INDEX_NAME)
        if index is None:
            raise BadInput(f"{where}: not a volume of a factor-archive set (expected volume "
                           f"{number} of the set {self.last.name} ends)")
        if index[VOLUME_INDEX_NAME][2] != record.index_sha256:
            raise BadInput(f"{where}: foreign volume (not the volume {number} of set "
                           f"{self.last.set[:12]} that {self.last.name} ends)")

    def _open_volume(self, number: int) -> BinaryIO:
        """Open a volume for its data, checking it again: it is read once, from here on."""
        record = self.records[number]
        f = self._open(record.name)
        self.opened.append(record.name)
        try:
            self._check_volume(number, f)
        except BaseException:
            f.close()
            raise
        return f

    # -- ArchiveReader -------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def _entries_by_file(self) -> dict[str, list[Entry]]:
        pieces: dict[str, list[Entry]] = defaultdict(list)
        for entry in self.last.entries:
            pieces[entry.file].append(entry)
        for parts in pieces.values():
            parts.sort(key=lambda e: (e.volume, e.offset))
        return pieces

    def _files_of(self, member: Member) -> list[tuple[str, str, int, str]]:
        """(archive file path, path below the destination, size, sha256) of a member."""
        if member.kind == "file":
            return [(member.path, "", member.size, member.sha256)]
        if member.kind == "table":
            return [(f"{member.path}/{e.path}", e.path, e.size, e.sha256) for e in member.files]
        return []

    def extract(self, members: list[Member] | None, dest_for: DestFor,
                progress: Progress = no_progress) -> None:
        pieces = self._entries_by_file()
        cleanup = Undo()
        todo: dict[str, tuple[Member, Path, Path, set[str]]] = {}  # member -> dest, tmp, files left
        targets: dict[str, tuple[str, Path, str, Any]] = {}      # file -> member, path, sha, hash
        try:
            for member in self.manifest.members if members is None else members:
                dest = dest_for(member)
                if dest is None or member.kind not in ("file", "table"):
                    continue
                if member.kind == "table" and tree_digest(member.files) != member.sha256:
                    raise DamagedArchive(f"{self.name}: manifest entry of {member.path!r} is "
                                         "inconsistent (tree digest)")
                dest = Path(dest)
                cleanup.makedirs(dest.parent)
                tmp = cleanup.fresh(partial_name(dest))
                if member.kind == "table":
                    os.mkdir(tmp, 0o700)
                    for d in member.dirs:
                        (tmp / d).mkdir(parents=True, exist_ok=True)
                files = self._files_of(member)
                todo[member.path] = (member, dest, tmp, {f for f, *_ in files})
                for file, rel, _size, sha in files:
                    if file not in pieces:
                        raise DamagedArchive(f"{self.name}: member {file!r} is missing from "
                                             "the volumes")
                    target = tmp / rel if rel else tmp
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(b"")
                    targets[file] = (member.path, target, sha, hashlib.sha256())
            by_volume: dict[int, list[Entry]] = defaultdict(list)
            for file in targets:
                for entry in pieces[file]:
                    by_volume[entry.volume].append(entry)
            for number in sorted(by_volume):
                with self._open_volume(number) as f:
                    for entry in sorted(by_volume[number], key=lambda e: e.offset):
                        member_path, target, sha, digest = targets[entry.file]
                        self._copy_piece(f, entry, target, digest, progress)
                        if entry is pieces[entry.file][-1]:
                            self._file_done(entry.file, digest.hexdigest(), sha)
                            member, dest, tmp, left = todo[member_path]
                            left.discard(entry.file)
                            if not left:
                                self._install(member, tmp, dest)
            for member, dest, tmp, left in todo.values():
                if not member.files and member.kind == "table" and not left:
                    self._install(member, tmp, dest)
        except BaseException as exc:
            cleanup.undo()
            if isinstance(exc, OSError):
                raise io_error(self.name, exc) from None
            raise

    def _copy_piece(self, f: BinaryIO, entry: Entry, target: Path, digest: Any,
                    progress: Progress) -> None:
        piece = hashlib.sha256()
        f.seek(entry.offset)
        with open(target, "ab") as out:
            left = entry.size
            while left:
                data = f.read(min(CHUNK, left))
                if not data:
                    raise DamagedArchive(f"{self._where(self.records[entry.volume].name)}: "
                                         f"truncated in {entry.name!r}")
                out.write(data)
                piece.update(data)
                digest.update(data)
                progress(len(data))
                left -= len(data)
        if piece.hexdigest() != entry.sha256:
            raise DamagedArchive(f"{self._where(self.records[entry.volume].name)}: entry "
                                 f"{entry.name!r} is damaged (sha256 mismatch)")

    def _file_done(self, file: str, got: str, want: str) -> None:
        if got != want:
            raise DamagedArchive(f"{self.name}: member file {file!r} is damaged (sha256 mismatch)")

    @staticmethod
    def _install(member: Member, tmp: Path, dest: Path) -> None:
        if member.kind == "table":
            set_table_meta(tmp, [(e.path, e.mode, e.mtime) for e in member.files], member.dirs,
                           member.mode, member.mtime)
        else:
            set_meta(tmp, member.mode, member.mtime)
        install(tmp, dest)

    def verify(self, progress: Progress = no_progress) -> list[str]:
        problems: list[str] = []
        pieces = self._entries_by_file()
        expected: dict[str, str] = {}
        for member in self.manifest.members:
            for file, _rel, _size, sha in self._files_of(member):
                expected[file] = sha
                if file not in pieces:
                    problems.append(f"{self.name}: member file {file!r} is missing from the volumes")
            if member.kind == "table" and tree_digest(member.files) != member.sha256:
                problems.append(f"{self.name}: manifest entry of {member.path!r} is inconsistent "
                                "(tree digest)")
        digests = {file: hashlib.sha256() for file in pieces}
        damaged: set[str] = set()
        for number, record in enumerate(self.records):
            try:
                f = self._open_volume(number)
            except BadInput as exc:
                problems.append(str(exc))
                damaged |= {e.file for e in self.last.entries if e.volume == number}
                continue
            with f:
                if number == len(self.records) - 1:
                    problems += self._metadata_problems(f, record.name)
                for entry in sorted((e for e in self.last.entries if e.volume == number),
                                    key=lambda e: e.offset):
                    if not entry_intact(f, entry, digests[entry.file], progress):
                        problems.append(f"{self._where(record.name)}: entry {entry.name!r} is "
                                        "damaged (sha256 mismatch)")
                        damaged.add(entry.file)
        for file, digest in digests.items():
            if file not in expected:
                problems.append(f"{self.name}: entry {file!r} is not listed in the manifest")
            elif file not in damaged and digest.hexdigest() != expected[file]:
                problems.append(f"{self.name}: member file {file!r} is damaged (sha256 mismatch)")
        return problems

    def _metadata_problems(self, f: BinaryIO, name: str) -> list[str]:
        """The last volume's manifest-sha256.txt and tag manifest agree with the manifest."""
        where = self._where(name)
        index = read_tail_index(f, where, MANIFEST_NAME) or {}
        files: dict[str, bytes | None] = {}
        for blob in (MANIFEST_NAME, CHECKSUMS_NAME, TAG_MANIFEST_NAME):
            files[blob] = None
            if blob in index:
                offset, size, sha = index[blob]
                f.seek(offset)
                data = f.read(size)
                if hashlib.sha256(data).hexdigest() != sha:
                    return [f"{where}: {blob} does not match the index (damaged)"]
                files[blob] = data
        problems: list[str] = []
        tag = files[TAG_MANIFEST_NAME]
        if tag is not None:
            try:
                problems += tag_problems(where, tag,
                                         {k: files[k] for k in (MANIFEST_NAME, CHECKSUMS_NAME)}
                                         ).values()
            except DamagedArchive as exc:
                problems.append(str(exc))
        elif self._manifest.tag_manifest:
            problems.append(f"{where}: the index does not list {TAG_MANIFEST_NAME} (damaged)")
        if not any(CHECKSUMS_NAME in line for line in problems):
            problems += check_checksums_file(where, self._manifest, files[CHECKSUMS_NAME])
        return problems

    def close(self) -> None:
        pass

    def __enter__(self) -> VolumeSetReader:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def volume_listing(path: str | os.PathLike) -> list[str]:
    """``ls --volume``: one volume's own index, read from that volume alone."""
    p = Path(path)
    found = volume_index_of(LocalBlobs(p.parent), p.name)
    if found is None:
        raise BadInput(f"{path}: not a volume of a factor-archive set")
    index = found[0]
    own = [e for e in index.entries if e.volume == index.volume]
    lines = [f"# volume {index.volume} of set {index.set} ({index.name}){', the last' if index.last else ''}; "
             f"group: {index.group or '-'}; {len(own)} entries, "
             f"{len(index.members)} members end here"]
    for e in own:
        part = "" if e.part is None else f"  (part {e.part} of {e.file})"
        lines.append(f"{e.size:>14}  {e.name}{part}")
    return lines


def open_tar_blob(blobs: BlobStore, name: str, staging: Path | None = None) -> ArchiveReader:
    """A reader for the tar ``name`` in ``blobs``: one volume of a set (the set is read), or a
    single indexed tar (read by ranged reads of the blob)."""
    where = f"{blobs.location.rstrip('/')}/{name}"
    try:
        f = blobs.open(name)
    except FileNotFoundError:
        raise BadInput(f"{where}: archive not found") from None
    except OSError as exc:
        raise io_error(where, exc) from None
    if is_volume(f):
        f.close()
        return VolumeSetReader(blobs, name)
    return TarReader(f, staging=staging, owns=True, name=where)


def open_volume_set(path: str | os.PathLike) -> VolumeSetReader:
    """A local volume set from any of its volumes, or from the directory holding it."""
    p = Path(path)
    if p.is_dir():
        return VolumeSetReader(LocalBlobs(p), None)
    return VolumeSetReader(LocalBlobs(p.parent), p.name)


def holds_volumes(directory: Path) -> bool:
    """A directory holding the volumes of a set (and no manifest of the directory form)."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".tar"))
    except OSError:
        return False
    return _holds_volumes(LocalBlobs(directory), names)


def blobs_hold_volumes(blobs: BlobStore) -> bool:
    """A blob store (an object-store prefix) holding the volumes of a set."""
    return _holds_volumes(blobs, [n for n in blobs.names() if n.endswith(".tar")])


def _holds_volumes(blobs: BlobStore, names: list[str]) -> bool:
    for base in base_candidates(names):
        try:
            if volume_index_of(blobs, base) is not None:
                return True
        except BadInput:
            return True         # the reader says what is wrong with it
    return False

