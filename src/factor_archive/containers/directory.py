"""The plain directory form: the archive is a directory tree laid out like the member paths.

An interrupted archive can be completed by running the same command again: a journal records each
member once its data is written, and a member is kept on the rerun when the file on disk still has
the checksum the journal recorded. The manifest is written last, so a directory without it is
never mistaken for a complete archive.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from ..errors import BadInput, DamagedArchive, FactorArchiveError, UnsafeArchive
from ..io.copy import Progress, copy_stream, hash_file
from ..io.durable import WRITEBACK_MIN, fsync_dir, start_writeback, sync_filesystem, write_atomic
from ..io.failures import io_error
from ..io.install import discard, install, partial_name, remove, set_meta, set_table_meta
from ..io.tree import source_mtime as _mtime
from ..io.tree import source_size as _source_size
from ..io.tree import stat_entry, walk_table
from ..manifest import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    TAG_MANIFEST_NAME,
    FileEntry,
    Manifest,
    Member,
    check_checksums_file,
    checksums_text,
    safe_relpath,
    tag_manifest_text,
    tag_problems,
    tree_digest,
)
from .base import ArchiveReader, ArchiveWriter, Capabilities, DestFor, extract_at_once, file_member, table_member

JOURNAL_NAME = ".factor-archive-journal.jsonl"
STAGING_NAME = ".factor-archive-staging"


def copy_file(src: Path, dst: Path, progress: Progress, *, writeback: bool = False) -> tuple[str, int]:
    """Copy with hashing; mode and mtime follow the source, like ``cp -a``.

    ``writeback``: start writing a copy of 1 MiB or more to disk at once (the archive is synced
    before its manifest anyway), so the disk works while the next files are copied.
    """
    st = stat_entry(src)
    try:
        # w+b: readable too, so copy_stream can copy in the kernel and hash what it wrote
        with open(src, "rb") as fin, open(dst, "w+b") as fout:
            sha, size = copy_stream(fin, fout, progress)
            if writeback and size >= WRITEBACK_MIN:
                fout.flush()
                start_writeback(fout.fileno())
        os.chmod(dst, st.st_mode & 0o7777)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError as exc:
        raise io_error(exc.filename or dst, exc) from None
    return sha, size


def copy_table(src_root: Path, dst_root: Path, progress: Progress, *,
               writeback: bool = False) -> tuple[list[FileEntry], list[str]]:
    files, dirs = walk_table(src_root)
    try:
        dst_root.mkdir(parents=True, exist_ok=True)
        for d in dirs:
            (dst_root / d).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise io_error(dst_root, exc) from None
    entries = []
    for rel, src in files:
        sha, size = copy_file(src, dst_root / rel, progress, writeback=writeback)
        st = os.stat(src)
        entries.append(FileEntry(path=rel, size=size, mode=st.st_mode & 0o7777, mtime=st.st_mtime, sha256=sha))
    for d in reversed(dirs):
        _copy_dir_times(src_root / d, dst_root / d)
    _copy_dir_times(src_root, dst_root)
    return entries, dirs


def _copy_dir_times(src: Path, dst: Path) -> None:
    st = os.stat(src)
    os.chmod(dst, st.st_mode & 0o7777)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


class DirectoryWriter(ArchiveWriter):
    form = "dir"
    # Members are independent files: two can be copied at once; a journal lets a rerun continue.
    capabilities = Capabilities(parallel_members=True, resumable_writes=True)

    def __init__(self, root: str | os.PathLike, *, clobber: bool = False):
        self.root = Path(os.path.abspath(root))
        self.clobber = clobber
        self.journal: dict[str, dict] = {}
        if self.root.exists() and not self.root.is_dir():
            raise BadInput(f"{self.root}: exists and is not a directory")
        manifest = self.root / MANIFEST_NAME
        if manifest.exists():
            if not clobber:
                raise BadInput(f"{self.root}: already holds a complete archive; use -c to overwrite it")
            manifest.unlink()  # from now on it no longer looks complete
            (self.root / CHECKSUMS_NAME).unlink(missing_ok=True)
            (self.root / TAG_MANIFEST_NAME).unlink(missing_ok=True)
        elif self.root.is_dir() and any(self.root.iterdir()) and not (self.root / JOURNAL_NAME).exists() \
                and not clobber:
            raise BadInput(f"{self.root}: directory is not empty and holds no archive; use -c or another name")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise io_error(self.root, exc) from None
        # A journal here means an earlier run of ours was interrupted: the directory was empty
        # (or ours) when it began, so whatever lies at a member's path is that run's work.
        self.continuing = (self.root / JOURNAL_NAME).exists()
        self._load_journal()
        self.notices = [f"{self.root}: continuing an interrupted archive ({len(self.journal)} members "
                        "already written are kept where intact)"] if self.continuing else []
        try:
            self._journal_file = open(self.root / JOURNAL_NAME, "a", encoding="utf-8")  # noqa: SIM115 - kept open until close()/abort()
            if self._journal_file.tell() and not _ends_in_newline(self.root / JOURNAL_NAME):
                self._journal_file.write("\n")  # after a torn last line (a full disk): a line of its own
        except OSError as exc:
            raise io_error(self.root / JOURNAL_NAME, exc) from None

    def _load_journal(self) -> None:
        path = self.root / JOURNAL_NAME
        if not path.exists():
            return
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                self.journal[entry["member"]["path"]] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from an interrupted run

    def staging_dir(self) -> Path:
        path = self.root / STAGING_NAME
        path.mkdir(exist_ok=True)
        return path

    def _reusable(self, member: Member, source: Path, dest: Path) -> Member | None:
        """The member from the journal if the earlier run's copy is intact and the source unchanged."""
        entry = self.journal.get(member.path)
        if entry is None or not dest.exists():
            return None
        if entry.get("source_size") != _source_size(source) or entry.get("source_mtime") != _mtime(source):
            return None
        return self._intact(entry, dest)

    def already_written(self, member: Member) -> Member | None:
        """For generated members (calibrated data): the earlier run's copy, if intact."""
        entry = self.journal.get(member.path)
        dest = self.root / safe_relpath(member.path)
        return self._intact(entry, dest) if entry is not None and dest.exists() else None

    @staticmethod
    def _intact(entry: dict, dest: Path) -> Member | None:
        done = Member(**{**entry["member"], "files": [FileEntry(**f) for f in entry["member"]["files"]]})
        if done.kind == "table":
            for f in done.files:
                if not (dest / f.path).is_file() or hash_file(dest / f.path)[0] != f.sha256:
                    return None
        elif hash_file(dest)[0] != done.sha256:
            return None
        return done

    def write(self, member: Member, source: Path, progress: Progress, *, staged: bool = False) -> Member:
        dest = self.root / safe_relpath(member.path)
        kept = self._reusable(member, source, dest)
        if kept is not None:
            progress(kept.size)
            return kept
        if dest.exists() or dest.is_symlink():
            if not self.clobber and not self.continuing:
                raise BadInput(f"{dest}: exists; use -c to overwrite")
            remove(dest)        # (continuing: killed after its rename, before its journal line)
        partial = partial_name(dest)
        remove(partial)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise io_error(dest.parent, exc) from None
        source_size, source_mtime = _source_size(source), _mtime(source)
        if member.kind == "table":
            st_root = stat_entry(source)
            if staged:              # built for this archive: moved in, not copied
                os.rename(source, partial)
                files, dirs = walk_table(partial)
                entries = []
                for rel, path in files:
                    sha, size = hash_file(path, progress)
                    st = os.stat(path)
                    entries.append(FileEntry(path=rel, size=size, mode=st.st_mode & 0o7777,
                                             mtime=st.st_mtime, sha256=sha))
            else:
                entries, dirs = copy_table(source, partial, progress, writeback=True)
            member = table_member(member, entries, dirs, mode=stat.S_IMODE(st_root.st_mode),
                                  mtime=st_root.st_mtime)
        else:
            sha, size = copy_file(source, partial, progress, writeback=True)
            member = file_member(member, stat_entry(source), sha, size)
            if staged:
                discard(source)
        # Journalled before it takes its name: a member in place is always in the journal, so a
        # rerun after a failure here (a full disk) keeps or replaces it instead of refusing it.
        try:
            self._journal_file.write(json.dumps({
                "member": _member_dict(member), "source_size": source_size, "source_mtime": source_mtime,
            }) + "\n")
            self._journal_file.flush()
        except OSError as exc:
            raise io_error(self.root / JOURNAL_NAME, exc) from None
        os.rename(partial, dest)
        return member

    def close(self, manifest: Manifest) -> None:
        manifest.container = self.form
        manifest.tag_manifest = TAG_MANIFEST_NAME
        shutil.rmtree(self.root / STAGING_NAME, ignore_errors=True)
        sums = checksums_text(manifest).encode("utf-8")
        document = manifest.to_json().encode("utf-8")
        tags = tag_manifest_text({MANIFEST_NAME: document, CHECKSUMS_NAME: sums}).encode("utf-8")
        try:
            sync_filesystem(self.root)  # the data is durable before the manifest says it is there
            write_atomic(self.root / CHECKSUMS_NAME, sums)
            write_atomic(self.root / TAG_MANIFEST_NAME, tags)
            write_atomic(self.root / MANIFEST_NAME, document)   # last: now the archive is complete
        except OSError as exc:
            raise io_error(self.root / MANIFEST_NAME, exc) from None
        self._journal_file.close()
        (self.root / JOURNAL_NAME).unlink(missing_ok=True)
        fsync_dir(self.root)

    def abort(self) -> None:
        # Keep what was written and the journal: a rerun completes the archive.
        try:
            self._journal_file.close()
        except OSError:
            pass
        shutil.rmtree(self.root / STAGING_NAME, ignore_errors=True)


def _read_metadata(path: Path) -> bytes | None:
    """A metadata file's bytes, None if absent; unreadable is one error line."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedArchive(f"{path}: cannot read ({exc.strerror or exc})") from None


def _ends_in_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _member_dict(member: Member) -> dict:
    from dataclasses import asdict
    return asdict(member)


class DirectoryReader(ArchiveReader):
    form = "dir"
    capabilities = Capabilities(parallel_members=True, local_paths=True)

    def __init__(self, root: str | os.PathLike, *, staging: Path | None = None):
        """``staging`` is not needed: every member is read in place."""
        self.root = Path(os.path.abspath(root))
        path = self.root / MANIFEST_NAME
        text = _read_metadata(path)
        if text is None:
            raise BadInput(f"{self.root}: not a complete archive (no {MANIFEST_NAME})")
        self._checksums = _read_metadata(self.root / CHECKSUMS_NAME)
        tags = _read_metadata(self.root / TAG_MANIFEST_NAME)
        # The manifest is trusted only once its checksum is: the tag manifest holds it.
        self.metadata_problems: list[str] = []
        if tags is not None:
            found = tag_problems(str(self.root), tags, {MANIFEST_NAME: text, CHECKSUMS_NAME: self._checksums})
            if MANIFEST_NAME in found:
                raise DamagedArchive(found[MANIFEST_NAME])
            self.metadata_problems = list(found.values())
        self._manifest = Manifest.from_json(text, str(path))
        if tags is None and self.manifest.tag_manifest:
            raise DamagedArchive(f"{self.root / TAG_MANIFEST_NAME}: missing (the manifest cannot be "
                                 "checked; archive damaged)")
        # An archive from before tag manifests: manifest-sha256.txt, derived from the manifest,
        # is the only witness; if they disagree, one of them is damaged.
        if tags is None and self._checksums is not None \
                and check_checksums_file(str(self.root), self.manifest, self._checksums):
            raise DamagedArchive(f"{path}: disagrees with {CHECKSUMS_NAME}; one of them is damaged")

    def _src(self, member: Member) -> Path:
        """Where a member's data lies. We never write symbolic links into an archive, so one
        there was put by someone else and could point anywhere: refuse it."""
        rel = safe_relpath(member.path, str(self.root))
        src = self.root
        for part in rel.split("/"):
            src = src / part
            if src.is_symlink():
                raise UnsafeArchive(f"{src}: a symbolic link inside the archive; refusing to follow it")
        if member.kind == "table" and src.is_dir():
            for dirpath, dirnames, filenames in os.walk(src):
                for name in dirnames + filenames:
                    if os.path.islink(os.path.join(dirpath, name)):
                        raise UnsafeArchive(f"{os.path.join(dirpath, name)}: a symbolic link inside "
                                            "the archive; refusing to follow it")
        return src

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def local_path(self, member: Member) -> Path | None:
        return self._src(member)

    def extract(self, members: list[Member] | None, dest_for: DestFor, progress: Progress) -> None:
        chosen = self.manifest.members if members is None else members
        jobs = [(m, d) for m, d in ((m, dest_for(m)) for m in chosen)
                if d is not None and m.kind in ("file", "table")]
        if len(jobs) < 2:
            for member, dest in jobs:
                self._extract_one(member, dest, progress)
            return
        # Members are independent files: copy two at once, like the writer does. After a failure
        # no further member is started, and the failure is raised.
        extract_at_once(jobs, lambda member, dest: self._extract_one(member, dest, progress),
                        workers=2, name="dir-extract")

    def _extract_one(self, member: Member, dest: Path, progress: Progress) -> None:
        partial = partial_name(dest)
        try:
            self._extract_partial(member, dest, partial, progress)
        except BaseException:
            discard(partial)  # a full disk gets its space back; the restore marker stays
            raise

    def _extract_partial(self, member: Member, dest: Path, partial: Path, progress: Progress) -> None:
        src = self._src(member)
        remove(partial)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if member.kind == "table":
            if not src.is_dir():
                raise FactorArchiveError(f"{src}: member missing from the archive")
            entries, _dirs = copy_table(src, partial, progress, writeback=True)
            got = {e.path: e.sha256 for e in entries}
            for f in member.files:
                if got.get(f.path) != f.sha256:
                    raise FactorArchiveError(f"{src / f.path}: checksum mismatch or missing "
                                             f"(archive damaged)")
            extra = set(got) - {f.path for f in member.files}
            if extra:
                raise BadInput(f"{src}: holds files the manifest does not list: {sorted(extra)[0]}")
            set_table_meta(partial, [(f.path, f.mode, f.mtime) for f in member.files], member.dirs,
                           member.mode, member.mtime)
        else:
            if not src.is_file():
                raise FactorArchiveError(f"{src}: member missing from the archive")
            sha, _ = copy_file(src, partial, progress, writeback=True)
            if sha != member.sha256:
                raise FactorArchiveError(f"{src}: checksum mismatch (archive damaged)")
            set_meta(partial, member.mode, member.mtime)
        install(partial, dest)

    def verify(self, progress: Progress) -> list[str]:
        problems = list(self.metadata_problems)
        if not any(CHECKSUMS_NAME in line for line in problems):
            problems += check_checksums_file(str(self.root), self.manifest, self._checksums)
        for member in self.manifest.members:
            try:
                src = self._src(member)
            except UnsafeArchive as exc:
                problems.append(str(exc))
                continue
            if member.kind == "table":
                for f in member.files:
                    p = src / f.path
                    if not p.is_file():
                        problems.append(f"{member.path}/{f.path}: missing")
                    elif hash_file(p, progress)[0] != f.sha256:
                        problems.append(f"{member.path}/{f.path}: checksum differs")
                if tree_digest(member.files) != member.sha256:
                    problems.append(f"{member.path}: table digest differs from its file list")
            elif member.kind == "file":
                if not src.is_file():
                    problems.append(f"{member.path}: missing")
                elif hash_file(src, progress)[0] != member.sha256:
                    problems.append(f"{member.path}: checksum differs")
        return problems

    def close(self) -> None:
        pass
