"""Writing the zarr form: every member a node below ``members/``, the manifest last.

A local directory or zip store is written under a hidden temporary name beside the output and
renamed into place when complete, so an interrupted or failed archive never takes the output's
name. An object store has no rename: there the manifest, written last, is what makes the store
complete. Each member stored gets a resume record (``resume``): a rerun of a killed archive (on
local disk: the partial store of a process that has exited; on an object store: the prefix
without a manifest) keeps every member whose record checks out and writes only the rest. A
failure the writer sees removes a local partial store (the disk may be full), but keeps what an
object store holds so that the rerun continues there.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import stat
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BadInput, FactorArchiveError
from ...io.copy import HashThread, Progress, no_progress
from ...io.durable import fsync_dir, fsync_path, sync_filesystem
from ...io.failures import io_error
from ...io.install import remove, swap_into_place
from ...io.leftovers import _process_gone, remove_stale_partials
from ...io.tree import source_mtime, source_size, stat_entry, walk_table
from ...manifest import FileEntry, Manifest, Member, safe_relpath
from ...ms.casacore_table.codec_choice import remember_choices, remembered_choices
from ..base import ArchiveWriter, Capabilities, file_member, table_member
from ..locations import Location
from .layout import (
    ATTR,
    LAYOUT,
    LAYOUT_VERSION,
    MANIFEST_NODE,
    MEMBERS,
    RAW_GROUP,
    TABLE_CHECKSUM,
    _compressors,
    _file_extra,
    _file_layout,
    _write_bytes_array,
    node_component,
    node_path,
)
from .resume import (
    RESUME_DIR,
    ResumeRecord,
    below,
    file_matches,
    parse_record,
    record_bytes,
    record_key,
    recording_store,
)
from .stores import (
    ABORT_CLEANUP_SECONDS,
    _close_url_store,
    _fresh_store_class,
    _is_transport,
    _Location,
    _remove_objects,
    _remove_objects_async,
    _sync,
    _url_error,
    _wait_for_zarr,
    _zip_store,
)

# ---------------------------------------------------------------------------------------------
# Writer

class ZarrWriter(ArchiveWriter):
    form = "zarr"
    # Tables go through the casacore codec. Into a local directory two members are written at
    # once (parallel_members, set per writer): the tables' reading, hashing and compressing then
    # keep both cores busy where one table alone left gaps (planning, the tail of its last
    # column, the small files); the tables still plan in the run's order (PlanningTurns), so the
    # objects are those one member at a time writes. A zip is one stream written in order, and
    # an object store's writes go through its own queue: there members go one after another.
    # resumable_writes (a rerun after abort() keeps what was stored) holds on an object store,
    # and for a local store this writer continues (one a killed run left); a fresh local store
    # is removed by abort(), so it is set per writer.
    capabilities = Capabilities(table_workers=True)

    def __init__(self, location: str | os.PathLike[str] | Location, *, clobber: bool = False):
        import zarr

        self.loc = _Location(location)
        self.clobber = clobber
        self._staging: Path | None = None
        self._groups: dict[str, object] = {}
        self._groups_lock = threading.Lock()
        self._closed = False
        self.notices: list[str] = []     # for the user: leftovers of killed runs removed
        self.continuing = False          # a killed run's store is being completed
        self.records: dict[str, ResumeRecord] = {}   # member path -> its record from that run
        self._existing: dict[str, tuple[int, str | None]] = {}   # key -> (size, ETag) found there
        self._recorded = False           # this run wrote a record (an object store keeps it)
        self._continued_from: Path | None = None   # the killed run's partial store, renamed
        pid = os.getpid()
        if self.loc.kind == "url":
            self.base_store = self.loc.open_url_store(read_only=False)
            try:
                self._prepare_url()
            except BaseException:
                _close_url_store(self.base_store)
                raise
            self.store = _fresh_store_class()(self.base_store)
            self.store._known.update({key: None for key in self._existing})
            self.tmp = None
        else:
            final = self.loc.path
            if final.exists() or final.is_symlink():
                if not clobber:
                    raise BadInput(f"{final}: already exists; use -c to overwrite it")
                if self.loc.kind == "dir" and (not final.is_dir() or final.is_symlink() or (
                        any(final.iterdir()) and not (final / "zarr.json").is_file())):
                    raise BadInput(f"{final}: exists and is not a zarr store; refusing to overwrite it")
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise io_error(final.parent, exc) from None
            self.tmp = final.with_name(f".{final.name}.partial-{pid}")
            killed = _killed_partial(final) if self.loc.kind == "dir" and not clobber else None
            if killed is not None:
                try:
                    os.rename(killed, self.tmp)
                except OSError as exc:
                    raise io_error(killed, exc) from None
                self.continuing = True
            self.notices = remove_stale_partials(final)
            if killed is not None:
                self._existing = _local_keys(self.tmp)
                self._continued_from = killed
        if self.loc.kind == "url" or self.continuing:
            self.capabilities = dataclasses.replace(self.capabilities, resumable_writes=True)
        if self.loc.kind == "dir":
            self.capabilities = dataclasses.replace(self.capabilities, parallel_members=True)
        try:
            if self.tmp is not None:
                if not self.continuing:
                    remove(self.tmp)
                if self.loc.kind == "dir":
                    from zarr.storage import LocalStore
                    self.store = LocalStore(self.tmp)
                else:
                    self.store = _zip_store(self.tmp, "w")
            self.recorder = recording_store(self.store)   # notes each member's objects
            if self.continuing:
                self._continue()
            else:
                self.root = zarr.create_group(self.recorder, attributes={ATTR: {
                    "layout": LAYOUT, "layout_version": LAYOUT_VERSION, "members": MEMBERS,
                    "manifest": MANIFEST_NODE}})
                self._groups[MEMBERS] = self.root.create_group(MEMBERS)
        except Exception as exc:
            self.abort()
            raise self._failure(exc, self.tmp or self.loc.text) from None
        except BaseException:  # interrupted (Ctrl-C) before the caller holds the writer to abort
            self.abort()
            raise


    # -- object stores --------------------------------------------------------------------------
    def _prepare_url(self) -> None:
        fs, path = self.base_store.fs, self.base_store.path
        try:
            found = _sync(fs._find(path, detail=True))
        except FileNotFoundError:
            found = {}
        except Exception as exc:
            raise self._failure(exc, self.loc.text) from None
        if not found:
            return
        existing = {name[len(path):].lstrip("/"): (int(info.get("size") or 0), info.get("ETag"))
                    for name, info in found.items() if name.startswith(path)}
        if not self.clobber and _ours_unfinished(existing, self._read_url_key):
            self._existing = existing          # a killed (or failed) run of ours: continue it
            self.continuing = True
            return
        if not self.clobber:
            raise BadInput(f"{self.loc.text}: already holds data; use -c to overwrite it")
        try:
            # The old manifest goes first: from then on the old store no longer looks complete.
            _remove_objects(fs, f"{path}/{MANIFEST_NODE}")
            _remove_objects(fs, path)
        except Exception as exc:
            raise self._failure(exc, self.loc.text) from None

    def _read_url_key(self, key: str) -> bytes:
        fs, path = self.base_store.fs, self.base_store.path
        return _sync(fs._cat_file(f"{path}/{key}"))

    # -- continuing a killed run ------------------------------------------------------------------
    def _continue(self) -> None:
        """Open the killed run's store, read its resume records, and remove what no record
        covers below ``members/`` (a member cut off half-way) and any manifest it began."""
        import zarr

        for key in [k for k in self._existing if k.startswith(RESUME_DIR + "/")]:
            record = parse_record(self._read_key(key))
            if record is not None and record_key(record.member.path) == key \
                    and record.member.kind != "link" and _safe_path(record.member.path):
                self.records[record.member.path] = record
        keep = {k for r in self.records.values() for k in r.objects}
        for record in self.records.values():
            parts = node_path(record.member.path).split("/")
            keep |= {"/".join(parts[:i]) + "/zarr.json" for i in range(1, len(parts))}
        stale = [k for k in self._existing if k not in keep and (
            k.startswith(MEMBERS + "/") or k.startswith(MANIFEST_NODE + "/"))]
        self._delete_keys(stale)
        self.root = zarr.open_group(self.recorder, mode="r+")
        self._groups[MEMBERS] = self._child_group(self.root, MEMBERS)
        left = self._continued_from
        where = f" left in {left}" if left is not None else ""
        self.notices.append(f"{self.loc.text}: continuing an interrupted archive{where} "
                            f"({len(self.records)} members already stored are kept where intact)")

    def _read_key(self, key: str) -> bytes:
        if self.loc.kind == "url":
            return self._read_url_key(key)
        assert self.tmp is not None
        return (self.tmp / key).read_bytes()

    def _delete_keys(self, keys: list[str]) -> None:
        if not keys:
            return
        if self.loc.kind == "url":
            fs, path = self.base_store.fs, self.base_store.path
            _sync(fs._rm([f"{path}/{k}" for k in keys]))
            for k in keys:
                self.store._known.pop(k, None)
        else:
            assert self.tmp is not None
            for k in keys:
                (self.tmp / k).unlink(missing_ok=True)
        with self._groups_lock:  # another member's _kept may be reading it
            for k in keys:
                self._existing.pop(k, None)

    def _kept(self, member: Member, source: dict | None) -> Member | None:
        """The member as the killed run stored it, if its record checks out (see ``resume``);
        otherwise whatever that run left of it is removed."""
        record = self.records.pop(member.path, None)
        node = node_path(member.path)
        with self._groups_lock:  # two members at once: another may be removing its keys
            present = {k: v for k, v in self._existing.items() if below(k, node)}
        if record is not None and record.member.kind == member.kind and record.source == source \
                and set(present) == set(record.objects) and all(
                    self._intact(k, present[k], record.objects[k]) for k in record.objects):
            # The codec choices the run had made by then: the tables after it take them, as
            # they would have in an uninterrupted run (the first table of a kind decides).
            remember_choices(record.codec_choices)
            return dataclasses.replace(
                member, size=record.member.size, sha256=record.member.sha256, mode=record.member.mode,
                mtime=record.member.mtime, files=record.member.files, dirs=record.member.dirs,
                extra=record.member.extra)
        self._delete_keys(([record_key(member.path)] if record is not None else []) + list(present))
        return None

    def _intact(self, key: str, found: tuple[int, str | None], want) -> bool:
        size, etag = found
        if size != want.size:
            return False
        if self.loc.kind == "url":
            etag = (etag or "").strip('"')
            return "-" in etag or etag == want.digest   # a multipart object's ETag is no MD5
        assert self.tmp is not None
        with open(self.tmp / key, "rb") as f:
            return file_matches(f, want.digest)

    def _store_record(self, member: Member, source: dict | None) -> None:
        """Once the member's objects are stored (uploads acknowledged), its resume record."""
        from zarr.core.buffer import default_buffer_prototype

        node = node_path(member.path)
        if self.loc.kind == "url":
            _sync(self.store.flush())
        objects = self.recorder.take(node)
        data = record_bytes(member, source, objects, remembered_choices() if member.kind == "table" else None)
        if self.loc.kind == "dir":  # written here: no round trip through zarr's event loop
            from ...ms.casacore_table import zarr_internals

            zarr_internals.store_set(self.store, record_key(member.path), data)
        else:
            _sync(self.store.set(record_key(member.path), default_buffer_prototype().buffer.from_bytes(data)))
        if self.loc.kind == "url":
            _sync(self.store.flush())
        self._recorded = True

    def _failure(self, exc: BaseException, path) -> BaseException:
        """The one-line error for a failure while writing, or ``exc`` itself if it is not one
        we know (a bug should show where it is)."""
        if isinstance(exc, FactorArchiveError):
            return exc
        if self.loc.kind == "url" and _is_transport(exc) and getattr(exc, "filename", None) is None:
            error = _url_error(self.loc, exc)
            if self._recorded or self.continuing:      # abort() keeps them (see the module)
                error = type(error)(f"{error}; the members uploaded so far are kept: run the same "
                                    f"command again to complete the archive")
            return error
        if isinstance(exc, OSError):
            return io_error(exc.filename or path, exc)
        return exc

    # -- protocol -------------------------------------------------------------------------------
    def staging_dir(self) -> Path:
        with self._groups_lock:  # two members at once: made once
            return self._staging_dir()

    def _staging_dir(self) -> Path:
        if self._staging is None:
            if self.loc.kind == "url":
                self._staging = Path(tempfile.mkdtemp(prefix="factor-archive-staging-"))
            else:
                self._staging = self.loc.path.with_name(f".{self.loc.path.name}.staging-{os.getpid()}")
                remove(self._staging)
                self._staging.mkdir(parents=True)
        return self._staging

    def write(self, member: Member, source: Path, progress: Progress = no_progress, *,
              staged: bool = False) -> Member:
        safe_relpath(member.path)
        node = node_path(member.path)
        parent_path, name = node.rsplit("/", 1)
        try:
            if member.kind == "link":
                return dataclasses.replace(member, size=0, sha256=hashlib.sha256(b"").hexdigest())
            origin = None if staged else {"size": source_size(Path(source)),
                                          "mtime": source_mtime(Path(source))}
            if self.continuing:
                kept = self._kept(member, origin)
                if kept is not None:
                    progress(kept.size)
                    return kept
            parent = self._group(parent_path)
            if member.kind == "table":
                member = self._write_table(member, Path(source), parent, name, node, progress)
            else:
                st = stat_entry(source)
                sha, size = self._write_file(Path(source), parent, name, member.path, st, progress)
                member = file_member(member, st, sha, size,
                                     extra={**member.extra, "zarr": _file_extra(node, size)})
            self._store_record(member, origin)
        except Exception as exc:
            raise self._failure(exc, source) from None
        if staged:
            remove(Path(source))  # generated data (calibrated chunks): stored, so free the disk now
        return member

    def already_written(self, member: Member) -> Member | None:
        """A generated member (calibrated data) the killed run stored, if its record checks out."""
        if not self.continuing or member.kind == "link":
            return None
        try:
            return self._kept(member, None)
        except Exception as exc:
            raise self._failure(exc, self.loc.text) from None

    def close(self, manifest: Manifest) -> None:
        manifest.container = self.form
        data = manifest.to_json().encode("utf-8")
        try:
            listed = {m.path for m in manifest.members}
            for path in [p for p in self.records if p not in listed]:
                # stored by the killed run, not part of this archive: removed
                self._kept(dataclasses.replace(self.records[path].member, kind=""), None)
            if self.tmp is not None:
                remove(self.tmp / RESUME_DIR)   # a local store takes its name without them
            if self.loc.kind == "url":
                _sync(self.store.flush())       # every object is stored before the manifest
            # (A local store only takes its name once everything, manifest included, is synced.)
            _write_bytes_array(self.root, MANIFEST_NODE, data, {ATTR: {
                "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}})
            tmp = self.tmp                      # a local store is written under a temporary name
            if self.loc.kind == "zip" and tmp is not None:
                self.store.close()
                fsync_path(tmp)
                os.replace(tmp, self.loc.path)
                fsync_dir(self.loc.path.parent)
            elif self.loc.kind == "dir" and tmp is not None:
                self.store.close()
                sync_filesystem(tmp)            # data and manifest durable before the rename
                swap_into_place(tmp, self.loc.path)
            else:
                _sync(self.store.flush())
                self._remove_records()          # complete: the records have done their work
        except Exception as exc:
            raise self._failure(exc, self.loc.text) from None
        self._closed = True
        self._cleanup()

    def _remove_records(self) -> None:
        """Best effort: records left behind a manifest are ignored by every reader."""
        fs, path = self.base_store.fs, self.base_store.path
        try:
            _remove_objects(fs, f"{path}/{RESUME_DIR}")
        except Exception:
            pass

    def abort(self) -> None:
        """Remove everything written: nothing is left that looks like an archive."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.loc.kind == "url":
                import asyncio

                fs, path = self.base_store.fs, self.base_store.path
                try:
                    _sync(self.store.cancel())
                    if not (self._recorded or self.continuing):
                        # Nothing worth keeping. Best effort, and bounded: the store may be what
                        # failed. Without a manifest what stays behind is no archive.
                        _sync(asyncio.wait_for(_remove_objects_async(fs, path), ABORT_CLEANUP_SECONDS))
                    # Otherwise the members stored (with their records) stay for the rerun.
                except Exception:
                    pass
            else:
                _wait_for_zarr()                # an interrupted write goes on in zarr's loop
                try:
                    self.store.close()
                except Exception:
                    pass
                for _attempt in range(3):       # zarr's loop may still finish a write meanwhile
                    try:
                        remove(self.tmp)
                        break
                    except OSError:
                        time.sleep(0.2)
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.loc.kind == "url":
            _close_url_store(self.base_store)
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    # -- members written by other processes (a cluster's workers) ------------------------------
    @property
    def target(self) -> tuple[str, dict[str, Any]]:
        """Where other processes write members: the partial store directory, or the object
        store's URL and its fsspec options (``s3_storage_options``: never credentials)."""
        if self.loc.kind == "url":
            return self.loc.url, dict(self.loc.options)
        if self.loc.kind == "zip":
            raise BadInput(f"{self.loc.text}: a zip store cannot be written by several processes; "
                           f"write a directory (.zarr) or an object store (s3://) instead")
        assert self.tmp is not None
        return str(self.tmp), {}

    def group_for(self, member_path: str):
        """Create (once) the group the member's node sits in, so that another process can write
        the node itself below it (:func:`attached_writer`)."""
        return self._group(node_path(member_path).rsplit("/", 1)[0])

    def publish_groups(self) -> None:
        """Make the groups created so far visible to other processes: an object store's
        write-behind queue is flushed (a local directory needs nothing)."""
        if self.loc.kind == "url":
            _sync(self.store.flush())

    # -- members --------------------------------------------------------------------------------
    def _group(self, path: str):
        """The group at ``path`` (below the root), created once with its parents."""
        with self._groups_lock:
            return self._group_locked(path)

    def _group_locked(self, path: str):
        group = self._groups.get(path)
        if group is not None:
            return group
        parent_path, name = path.rsplit("/", 1)
        group = self._child_group(self._group_locked(parent_path), name)
        self._groups[path] = group
        return group

    def _child_group(self, parent, name: str):
        """``parent``'s group ``name``, created unless a killed run (being continued) made it."""
        from zarr.errors import ContainsGroupError

        if not self.continuing:
            return parent.create_group(name)
        try:
            return parent.create_group(name)
        except ContainsGroupError:
            return parent[name]

    def _write_file(self, source: Path, parent, name: str, apath: str, st: os.stat_result,
                    progress: Progress) -> tuple[str, int]:
        """Stream ``source`` into a new uint8 array, shard by shard; return (sha256, size)."""
        size = st.st_size
        chunk, shard = _file_layout(size)
        attrs = {ATTR: {"path": apath, "kind": "file", "size": size}}
        direct = _direct_file(parent, name, size, chunk, shard, attrs)
        arr = _create_file_array(parent, name, size, chunk, shard, attrs) if direct is None else None
        # A file of one small shard is hashed here: handing a few kB to the hash thread and
        # waiting for it back costs more than hashing them (~460 such files in a real run).
        hasher: Any = _InlineHash() if size <= _INLINE_HASH_MAX else HashThread()
        pos = 0
        try:
            with open(source, "rb") as f:
                while pos < size:
                    want = min(shard, size - pos)
                    block = _read_exact(f, want)
                    if len(block) < want:
                        raise BadInput(f"{source}: shrank while being archived")
                    hasher.put(block)       # hashed while zarr compresses it
                    try:
                        if direct is not None:
                            direct.write(pos, np.frombuffer(block, dtype=np.uint8))
                        else:
                            assert arr is not None
                            arr[pos:pos + want] = np.frombuffer(block, dtype=np.uint8)
                    finally:
                        hasher.wait()       # one shard in memory at a time
                    pos += want
                    progress(want)
                if f.read(1):
                    raise BadInput(f"{source}: grew while being archived")
        finally:
            sha = hasher.finish()
        return sha, size

    def _write_table(self, member: Member, source: Path, parent, name: str, node: str,
                     progress: Progress) -> Member:
        from ...ms.casacore_table import RawTableRequired, encode_table

        files, dirs = walk_table(source)
        st = stat_entry(source)
        group = parent.create_group(name, attributes={ATTR: {"path": member.path, "kind": "table"}})
        try:
            info = encode_table(source, group, progress=progress)
        except RawTableRequired as exc:
            member = self._write_raw_table(member, source, group, node, files, dirs, exc.reason,
                                           progress)
            return dataclasses.replace(member, mode=stat.S_IMODE(st.st_mode), mtime=st.st_mtime)
        return dataclasses.replace(
            member, files=[], dirs=[], size=sum(os.stat(p).st_size for _rel, p in files),
            sha256=info["content_sha256"], mode=stat.S_IMODE(st.st_mode), mtime=st.st_mtime,
            extra={**member.extra, "zarr": {
                "node": node, "stored": "columns", "checksum": TABLE_CHECKSUM, **info}})

    def _write_raw_table(self, member: Member, source: Path, group, node: str,
                         files: list[tuple[str, Path]], dirs: list[str], reason: str,
                         progress: Progress) -> Member:
        """Keep the table's files byte for byte, each a uint8 array below ``<node>/raw``."""
        raw_name = RAW_GROUP
        existing = set(group.keys())
        n = 1
        while raw_name in existing:  # an encode that failed half-way in a zip cannot be deleted
            n += 1
            raw_name = f"{RAW_GROUP}{n}"
        raw = group.create_group(raw_name, attributes={ATTR: {"raw_files_of": member.path}})
        groups = {"": raw}

        def group_for(rel_dir: str):
            if rel_dir not in groups:
                up, _sep, leaf = rel_dir.rpartition("/")
                groups[rel_dir] = group_for(up).create_group(node_component(leaf))
            return groups[rel_dir]

        for d in dirs:
            group_for(d)
        entries = []
        for rel, path in files:
            up, _sep, leaf = rel.rpartition("/")
            st = stat_entry(path)
            sha, size = self._write_file(path, group_for(up), node_component(leaf),
                                         f"{member.path}/{rel}", st, progress)
            entries.append(FileEntry(path=rel, size=size, mode=stat.S_IMODE(st.st_mode),
                                     mtime=st.st_mtime, sha256=sha))
        return table_member(member, entries, dirs, extra={**member.extra, "zarr": {
            "node": node, "stored": "raw-files", "raw_group": raw_name, "checksum": "tree-digest",
            "raw_reason": reason}})


def _safe_path(path: str) -> bool:
    try:
        safe_relpath(path)
        return True
    except BadInput:
        return False


def _killed_partial(final: Path) -> Path | None:
    """The partial store ``.<name>.partial-<pid>`` of a run of ours that was killed (its process
    has exited) and that stored at least one member (it holds resume records): the newest."""
    prefix = f".{final.name}.partial-"
    try:
        names = [n for n in os.listdir(final.parent) if n.startswith(prefix)]
    except OSError:
        return None
    found = []
    for name in names:
        pid = name[len(prefix):]
        path = final.parent / name
        if not pid.isdigit() or not _process_gone(int(pid)):
            continue
        try:
            if (os.lstat(path).st_uid == os.getuid() and path.is_dir() and not path.is_symlink()
                    and (path / "zarr.json").is_file() and (path / RESUME_DIR).is_dir()):
                found.append((os.stat(path / RESUME_DIR).st_mtime, path))
        except OSError:
            continue
    return max(found)[1] if found else None


def _local_keys(root: Path) -> dict[str, tuple[int, str | None]]:
    """Every object of a local store: key -> (size, None)."""
    keys: dict[str, tuple[int, str | None]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            keys[os.path.relpath(full, root).replace(os.sep, "/")] = (os.path.getsize(full), None)
    return keys


def _ours_unfinished(existing: dict[str, tuple[int, str | None]], read) -> bool:
    """Whether a prefix holds an archive of ours that a run began and never completed: our root
    group, no stored manifest."""
    if "zarr.json" not in existing or any(k.startswith(f"{MANIFEST_NODE}/c/") for k in existing):
        return False
    try:
        import json

        return json.loads(read("zarr.json")).get("attributes", {}).get(ATTR, {}).get("layout") == LAYOUT
    except Exception:
        return False


_INLINE_HASH_MAX = 1 << 20  # files up to this size are hashed in the writing thread


class _InlineHash:
    """HashThread's calls, hashing at once in the calling thread."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def put(self, buf: Any) -> None:
        self.digest.update(buf)

    def wait(self) -> None:
        pass

    def finish(self) -> str:
        return self.digest.hexdigest()


def _read_exact(f, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        block = f.read(n - got)
        if not block:
            break
        parts.append(block)
        got += len(block)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _create_file_array(parent, name: str, size: int, chunk: int, shard: int, attrs: dict):
    """The uint8 array of a file member, created through zarr."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Duplicate name")
        return parent.create_array(
            name, shape=(size,), dtype="uint8", chunks=(chunk,), shards=(shard,),
            compressors=_compressors(), fill_value=0, dimension_names=("byte",),
            attributes=attrs, config={"write_empty_chunks": True})


_FILE_DOC: dict = {}  # the document zarr writes for a file array, made once in memory


def _direct_file(parent, name: str, size: int, chunk: int, shard: int, attrs: dict):
    """In a local directory, a file array's zarr.json and shards written by us (the bytes zarr
    writes, without its existence check and event-loop round trips per object: ~460 small
    files in a real run); None elsewhere (it is then written through zarr)."""
    import json

    from ...ms.casacore_table import zarr_internals
    from ...ms.casacore_table.shards import BytesShards

    if not zarr_internals.is_local_directory(parent.store):
        return None
    if not _FILE_DOC:
        import zarr

        t = _create_file_array(zarr.open_group(zarr.storage.MemoryStore(), mode="w"), "t", 1, 1, 1, {})
        _FILE_DOC.update(zarr_internals.array_document(t))
    doc = json.loads(json.dumps(_FILE_DOC))
    doc["shape"] = [size]
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [shard]
    doc["codecs"][0]["configuration"]["chunk_shape"] = [chunk]
    doc["attributes"] = attrs
    path = f"{parent.path}/{name}" if parent.path else name
    zarr_internals.store_set(parent.store, f"{path}/zarr.json", _file_doc_bytes(doc))
    return BytesShards(parent.store, path, doc)


_FILE_DOC_PLAIN: list[bool] = []  # [whether zarr's bytes for a file document are its plain JSON]


def _file_doc_bytes(doc: dict) -> bytes:
    """The ``zarr.json`` of a file array: zarr stores a document as ``json.dumps(indent=2)`` of
    its dictionary, so a file's document (zarr's own, with the file's shape, chunks and
    attributes put in) is serialised here without zarr's validation, ~1 ms a file. The first
    file of a process is checked against zarr's serialisation; if they ever differ (another
    zarr version), zarr serialises every file."""
    import json

    from ...ms.casacore_table import zarr_internals

    plain = json.dumps(doc, allow_nan=True, indent=2).encode()
    if not _FILE_DOC_PLAIN:
        _FILE_DOC_PLAIN.append(plain == zarr_internals.node_bytes(doc))
    return plain if _FILE_DOC_PLAIN[0] else zarr_internals.node_bytes(doc)


# ---------------------------------------------------------------------------------------------
# Writing members into a store another process owns (a cluster's workers)

def open_object_store(url: str, storage_options: Mapping[str, Any]) -> Any:
    """The object store at ``url`` for writing, with the environment's S3 options (credentials
    from botocore's environment) updated by ``storage_options``; close with
    :func:`close_object_store`."""
    loc = _Location(url)
    loc.options = {**loc.options, **storage_options}
    return loc.open_url_store(read_only=False)


def close_object_store(store: Any) -> None:
    """Close an object store from :func:`open_object_store` (its HTTP session)."""
    _close_url_store(store)


@contextmanager
def attached_writer(location: str, member_path: str, *, object_store: Any = None) -> Iterator[ZarrWriter]:
    """A writer for one member of the store at ``location`` (``ZarrWriter.target`` of the
    process that owns it, which made the member's group with ``group_for``).

    The member's node is removed first, so a retried attempt starts from nothing; on leaving,
    what was written is durable (flushed, or synced to disk). The writer never removes the store:
    its owner does, if the archive fails. ``object_store``: for a URL, the store from
    :func:`open_object_store` (kept open by the caller: opening one costs a session).
    """
    import zarr

    writer = ZarrWriter.__new__(ZarrWriter)
    writer.loc = _Location(location)
    writer.clobber = False
    writer._staging = None
    writer._groups = {}
    writer._groups_lock = threading.Lock()
    writer._closed = True                # abort() must never remove the shared store
    writer.notices = []
    writer.tmp = None
    writer.continuing = False            # (the owner removes what a killed run left: below)
    writer.records = {}
    writer._existing = {}
    writer._recorded = False
    node = node_path(member_path)
    parent = node.rsplit("/", 1)[0]
    is_url = writer.loc.kind == "url"
    try:
        try:
            if is_url:
                if object_store is None:
                    raise ValueError("attached_writer: an object store URL needs object_store")
                writer.base_store = object_store
                writer.store = _fresh_store_class()(object_store)
                # The write-behind store answers reads from what it wrote; the owner wrote the
                # root and the parent groups: those are read from the object store.
                parts = parent.split("/")
                writer.store._known.update({f"{'/'.join(parts[:i])}/zarr.json".lstrip("/"): None
                                            for i in range(len(parts) + 1)})
                _remove_objects(object_store.fs, f"{object_store.path}/{node}")
            else:
                from zarr.storage import LocalStore

                root = writer.loc.path
                if not (root / "zarr.json").is_file():
                    raise BadInput(f"{root}: the store being written is not there (is the file "
                                   f"system shared with the client, at the same path?)")
                writer.store = LocalStore(root)
                remove(root / node)
            writer.recorder = recording_store(writer.store)   # the member gets its resume record
            writer._groups[parent] = zarr.open_group(writer.recorder, path=parent, mode="r+")
        except Exception as exc:
            raise writer._failure(exc, location) from None
        yield writer
        try:
            if is_url:
                _sync(writer.store.flush())      # every object stored before the task succeeds
            else:
                sync_filesystem(writer.loc.path)  # durable before the owner writes the manifest
        except Exception as exc:
            raise writer._failure(exc, location) from None
    except BaseException:
        if is_url and getattr(writer, "store", None) is not None:
            try:
                _sync(writer.store.cancel())
            except Exception:
                pass
        raise
