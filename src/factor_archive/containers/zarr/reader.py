"""Reading the zarr form: the manifest first, then each member, every checksum verified."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ... import signals
from ...errors import BadInput, DamagedArchive, FactorArchiveError
from ...io.copy import Progress, no_progress
from ...io.durable import TreeWriteback, start_writeback_if_big
from ...io.failures import io_error
from ...io.install import discard, install, partial_name, remove, set_meta, set_table_meta
from ...manifest import Manifest, Member, safe_relpath, tree_digest
from ...ms.casacore_table import local_store
from ...ms.casacore_table.pipeline import DEFAULT_SETTINGS, PipelineSettings
from ..base import ArchiveReader, Capabilities, DestFor, extract_at_once
from ..locations import Location
from .decoders import TABLES_AT_ONCE_SETTINGS, start_decoders, tables_at_once
from .layout import (
    ATTR,
    LAYOUT,
    LAYOUT_VERSION,
    MANIFEST_NODE,
    RAW_GROUP,
    node_component,
    node_path,
)
from .stores import (
    _close_url_store,
    _is_transport,
    _Location,
    _store_exists,
    _url_error,
    _zip_store,
)
from .table_members import decode_member, member_node, name_in_archive, stored_damage, what_failed

# ---------------------------------------------------------------------------------------------
# Reader


class ZarrReader(ArchiveReader):
    form = "zarr"
    capabilities = Capabilities(table_workers=True)   # tables go through the casacore codec

    def __init__(self, location: str | os.PathLike[str] | Location, *, staging: Path | None = None):
        """``staging`` is not needed: members are read from the store in any order."""
        self.loc = _Location(location)
        self.origin = self.loc.text
        self.root: Any
        try:
            if self.loc.kind == "url":
                self.store = self.loc.open_url_store(read_only=True)
            elif self.loc.kind == "dir":
                if not (self.loc.path / "zarr.json").is_file():
                    raise BadInput(f"{self.loc.path}: not a zarr store (no zarr.json)")
            else:
                if not self.loc.path.is_file():
                    raise BadInput(f"{self.loc.path}: archive not found")
                self.store = _zip_store(self.loc.path, "r")
            if self.loc.kind == "url" and not _store_exists(self.store, "zarr.json"):
                raise BadInput(f"{self.origin}: no zarr store there (no zarr.json)")
            try:
                if self.loc.kind == "dir":  # read without zarr (see local_store), as its workers do
                    self.root = local_store.open_group(self.loc.path)
                    self.store = self.root.store
                else:
                    import zarr

                    self.root = zarr.open_group(self.store, mode="r")
            except FileNotFoundError:
                raise BadInput(f"{self.origin}: not a zarr store (no zarr.json)") from None
            except (ValueError, KeyError, TypeError) as exc:
                raise DamagedArchive(f"{self.origin}: not a readable zarr v3 store "
                                     f"({what_failed(exc)})") from None
            attrs = self.root.attrs.get(ATTR)
            if not isinstance(attrs, dict) or attrs.get("layout") != LAYOUT:
                raise BadInput(f"{self.origin}: a zarr store, but not a factor-archive archive")
            if attrs.get("layout_version", 0) > LAYOUT_VERSION:
                raise BadInput(f"{self.origin}: zarr layout version {attrs.get('layout_version')} is "
                               f"newer than this tool understands ({LAYOUT_VERSION}); upgrade factor-archive")
            self._manifest = Manifest.from_json(self._manifest_bytes(), f"{self.origin}/{MANIFEST_NODE}")
        except FactorArchiveError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            if self.loc.kind == "url":
                raise _url_error(self.loc, exc) from None
            raise BadInput(f"{self.origin}: cannot read ({exc.strerror or exc})") from None
        except Exception as exc:
            self.close()
            raise _read_failure(self.loc, exc, "the archive") from None
        except BaseException:
            self.close()
            raise
        if self.manifest.container != "zarr":
            self.close()
            raise BadInput(f"{self.origin}: manifest says container {self.manifest.container!r}, not zarr")

    def _manifest_bytes(self) -> bytes:
        incomplete = f"{self.origin}: not a complete archive (no {MANIFEST_NODE}); an interrupted archive?"
        if isinstance(self.root, local_store.LocalGroup):
            here = self._local_manifest(incomplete)
            if here is not None:
                return here
        elif not _store_exists(self.store, f"{MANIFEST_NODE}/zarr.json"):
            raise BadInput(incomplete)
        import zarr

        try:
            arr = self.root[MANIFEST_NODE]
            if not isinstance(arr, zarr.Array):
                raise DamagedArchive(f"{self.origin}: {MANIFEST_NODE} is not an array (damaged archive)")
            meta = arr.attrs.get(ATTR) or {}
            if arr.shape[0] and arr.nchunks_initialized != arr.nchunks:
                raise BadInput(incomplete)
            data = np.asarray(arr[:]).tobytes()
        except (BadInput, DamagedArchive):
            raise
        except Exception as exc:
            raise DamagedArchive(f"{self.origin}: manifest unreadable ({what_failed(exc)}); damaged, or "
                                 "an interrupted archive?") from None
        return self._checked_manifest(data, meta)

    def _checked_manifest(self, data: bytes, meta) -> bytes:
        if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(data).hexdigest() \
                or meta.get("size") != len(data):
            raise DamagedArchive(f"{self.origin}: manifest does not match its checksum (damaged archive)")
        return data

    def _local_manifest(self, incomplete: str) -> bytes | None:
        """The manifest of a local store read from its files, when it is laid out as the writer
        lays it out (one chunk: bytes, zstd, crc32c); None for any other layout (read through
        zarr, which names what is wrong)."""
        from ...ms.casacore_table.codecs import _BadChunk, _ChunkCodec
        from ...ms.casacore_table.zarr_internals import chunk_key

        try:
            doc = local_store.read_document(self.root.store, MANIFEST_NODE)
        except ValueError as exc:
            raise DamagedArchive(f"{self.origin}: manifest unreadable ({exc}); damaged, or an "
                                 "interrupted archive?") from None
        if doc is None:
            raise BadInput(incomplete)
        if doc["node_type"] != "array":
            raise DamagedArchive(f"{self.origin}: {MANIFEST_NODE} is not an array (damaged archive)")
        try:
            (n,) = doc["shape"]
            (chunk,) = doc["chunk_grid"]["configuration"]["chunk_shape"]
            ser, comp, crc = doc["codecs"]
            simple = (type(n) is int and n > 0 and chunk == n and doc["data_type"] == "uint8"
                      and doc["chunk_grid"]["name"] == "regular" and not doc.get("storage_transformers")
                      and ser["name"] == "bytes" and comp["name"] == "zstd" and crc == {"name": "crc32c"})
            key = chunk_key(doc, (0,)) if simple else ""
            meta = (doc.get("attributes") or {}).get(ATTR) or {}
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if not simple:
            return None
        try:
            with open(os.path.join(self.loc.path, MANIFEST_NODE, *key.split("/")), "rb") as f:
                stored = np.frombuffer(f.read(), np.uint8)
        except (FileNotFoundError, NotADirectoryError):
            raise BadInput(incomplete) from None
        data = np.empty(n, np.uint8)
        try:
            _ChunkCodec(np.dtype(np.uint8), (n,), None, ("zstd", 0)).decode(stored, data)
        except _BadChunk as exc:
            raise DamagedArchive(f"{self.origin}: manifest unreadable ({exc}); damaged, or an "
                                 "interrupted archive?") from None
        return self._checked_manifest(data.tobytes(), meta)

    # -- nodes ----------------------------------------------------------------------------------
    def _node(self, member: Member):
        return member_node(self.root, self.origin, member)

    @staticmethod
    def _stored(member: Member) -> str:
        if member.kind == "link":
            return "link"
        if member.kind == "file":
            return "file"
        stored = (member.extra.get("zarr") or {}).get("stored")
        if stored not in ("columns", "raw-files"):
            raise BadInput(f"manifest: table member {member.path!r} does not say how it is stored")
        return stored

    def _raw_group(self, member: Member, group):
        name = (member.extra.get("zarr") or {}).get("raw_group", RAW_GROUP)
        if not isinstance(name, str) or "/" in name or not name or name.startswith("_"):
            raise BadInput(f"manifest: member {member.path!r} has a bad raw_group")
        try:
            return group[name]
        except KeyError:
            raise FactorArchiveError(f"{self.origin}: {member.path}: raw table files missing") from None

    @staticmethod
    def _raw_file(raw, rel: str):
        """A raw table file's array: read from its document like a file member's (see
        _file_array), else through zarr."""
        from ...ms.casacore_table.shards import _stored_array

        node = "/".join(node_component(c) for c in rel.split("/"))
        known = _stored_array(raw, node)
        return known if known is not None else raw[node]

    # -- protocol -------------------------------------------------------------------------------
    def local_path(self, member: Member) -> Path | None:
        return None

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def extract(self, members: list[Member] | None, dest_for: DestFor,
                progress: Progress = no_progress) -> None:
        jobs = []
        for member in self.manifest.members if members is None else members:
            dest = dest_for(member)
            if dest is None:
                continue
            stored = self._stored(member)
            if stored != "link":
                jobs.append((member, dest, stored))

        def stop() -> bool:  # a member running when another fails still ends (see extract_at_once)
            return signals.received() is not None

        tables = sum(stored == "columns" for _m, _d, stored in jobs)
        if tables and self._decoders():  # a no-op when unarchive started them already
            start_decoders(self.loc.path.absolute(), tables)
        # A restore is synced at its end: each restored table's big files start to go to disk
        # once the table is complete, so the disk works while the next tables are decoded.
        with TreeWriteback() as writeback:
            if tables < 2:
                for member, dest, stored in jobs:
                    self._extract_one(member, dest, stored, progress, DEFAULT_SETTINGS, writeback, stop)
                return
            with _Installer() as installer:
                self._extract_at_once(jobs, progress, writeback, stop, installer)

    def _extract_at_once(self, jobs: list, progress: Progress, writeback: TreeWriteback,
                         stop: Callable[[], bool], installer: _Installer) -> None:
        # A table per core at once (two here), in order, as the writer stores them, each
        # decoded by a casacore worker process of its own (see _extract_table); the files in
        # order on a thread of their own here, from the last round of tables on: before, they
        # slowed the first tables (three busy processes on two cores) and the last table ran
        # alone (benchmarks/README.md, sixth session). After a failure no further
        # member is started; the first failure in member order is raised once the running
        # ones are done.
        # A decoded table is put in place by the installer's thread, so that its worker gets the
        # next table at once (see _Installer).
        extract_at_once(jobs, lambda member, dest, stored: self._extract_one(
            member, dest, stored, progress, TABLES_AT_ONCE_SETTINGS, writeback, stop, installer),
            workers=tables_at_once(), name="zarr-extract",
            beside=lambda member, dest, stored: stored != "columns", beside_last=True)

    def _extract_one(self, member: Member, dest: Path, stored: str, progress: Progress,
                     settings: PipelineSettings, writeback: TreeWriteback,
                     stop: Callable[[], bool] = lambda: False, installer: _Installer | None = None) -> None:
        if installer is not None:
            installer.check()  # a table that failed to go in place stops the restore here
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if stored == "file":
                self._extract_file(member, dest, progress)
            elif stored == "columns":
                self._extract_table(member, dest, progress, settings, writeback, stop, installer)
            else:
                self._extract_raw_table(member, dest, progress)
        except Exception as exc:
            raise self._failure(exc, member, dest) from None

    def _failure(self, exc: Exception, member: Member, dest: Path) -> Exception:
        """What a member's extraction raises for ``exc``: one line naming the member or file."""
        if isinstance(exc, OSError):
            if self.loc.kind == "url" and exc.filename is None:
                return _url_error(self.loc, exc)
            return io_error(exc.filename or dest, exc)
        self._check_reachable()
        if isinstance(exc, FactorArchiveError):
            return exc
        return _read_failure(self.loc, exc, member.path)

    def _file_array(self, member: Member):
        """A file member's array: read from its document when it is laid out as the table codec
        lays out arrays (no zarr Array to open, see shards._stored_array), else through zarr."""
        from ...ms.casacore_table.shards import _stored_array

        known = _stored_array(self.root, node_path(member.path))
        return known if known is not None else self._node(member)

    def _extract_file(self, member: Member, dest: Path, progress: Progress) -> None:
        arr = self._file_array(member)
        partial = partial_name(dest)
        remove(partial)
        try:
            with open(partial, "wb") as f:
                sha = _copy_array(arr, f, member.path, progress, member.size)
                start_writeback_if_big(f)  # the restore is synced at its end: the disk starts now
            if sha != member.sha256:
                raise FactorArchiveError(f"{self.origin}: {member.path}: checksum mismatch (archive damaged)")
            set_meta(partial, member.mode, member.mtime)
            install(partial, dest)
        except BaseException:
            discard(partial)
            raise

    def _extract_table(self, member: Member, dest: Path, progress: Progress,
                       settings: PipelineSettings = DEFAULT_SETTINGS,
                       writeback: TreeWriteback | None = None,
                       stop: Callable[[], bool] = lambda: False, installer: _Installer | None = None) -> None:
        from ...ms.casacore_table import run_in_worker
        from ...ms.casacore_table.worker_client import _WorkerError

        # A private directory keeps the table's own name, so errors name it as it is known.
        work = partial_name(dest)
        out = work / dest.name
        remove(work)
        work.mkdir()
        try:
            if self._decoders():
                # The whole table (reading, decompressing, hashing, casacore writes, checks) in a
                # worker process: one process feeding two tables' workers was the bound (its GIL).
                # Without a worker, here as below.
                try:
                    run_in_worker("decode_stored_table", str(self.loc.path.absolute()), str(out), member,
                                  settings, stop=stop, progress=progress,
                                  here=lambda: self._decode_member(member, out, progress, settings))
                except _WorkerError as exc:  # the worker died (or was stopped): its errors name the member
                    raise FactorArchiveError(self._name_in_archive(member, str(exc))) from None
            else:
                self._decode_member(member, out, progress, settings)
        except BaseException:
            discard(work)
            raise

        def put_in_place() -> None:
            try:
                set_meta(out, member.mode, member.mtime)
                install(out, dest)
            finally:
                discard(work)
            if writeback is not None:  # complete, closed by its worker, checked and in place
                writeback.start(dest)

        if installer is None:
            put_in_place()
        else:
            installer.submit(lambda: self._named(member, dest, put_in_place))

    def _named(self, member: Member, dest: Path, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            raise self._failure(exc, member, dest) from None

    def _decoders(self) -> bool:
        """Whether tables are decoded by worker processes (a local store, inside a worker
        session, where workers can run), each opening the store itself."""
        from ...ms.casacore_table.worker_client import in_session, workers_possible

        return self.loc.kind == "dir" and in_session() and workers_possible()

    def _decode_member(self, member: Member, out: Path, progress: Progress, settings: PipelineSettings) -> None:
        """The member's table decoded at ``out``, its checksums checked."""
        decode_member(self.root, self.origin, member, out, progress, settings)

    def _name_in_archive(self, member: Member, message: str) -> str:
        return name_in_archive(self.origin, member, message)

    def _extract_raw_table(self, member: Member, dest: Path, progress: Progress) -> None:
        raw = self._raw_group(member, self._node(member))
        partial = partial_name(dest)
        remove(partial)
        try:
            partial.mkdir()
            for d in member.dirs:
                (partial / safe_relpath(d, self.origin)).mkdir(parents=True, exist_ok=True)
            for entry in member.files:
                target = partial / safe_relpath(entry.path, self.origin)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    arr = self._raw_file(raw, entry.path)
                except KeyError:
                    raise FactorArchiveError(f"{self.origin}: {member.path}/{entry.path}: missing "
                                             f"from the archive") from None
                with open(target, "wb") as f:
                    sha = _copy_array(arr, f, f"{member.path}/{entry.path}", progress, entry.size)
                    start_writeback_if_big(f)
                if sha != entry.sha256:
                    raise FactorArchiveError(f"{self.origin}: {member.path}/{entry.path}: checksum "
                                             f"mismatch (archive damaged)")
            set_table_meta(partial, [(e.path, e.mode, e.mtime) for e in member.files], member.dirs,
                           member.mode, member.mtime)
            install(partial, dest)
        except BaseException:
            discard(partial)
            raise

    def verify(self, progress: Progress = no_progress) -> list[str]:
        problems: list[str] = []
        for member in self.manifest.members:
            try:
                found = self._verify_member(member, progress)
                if found:
                    self._check_reachable()
                problems += found
            except FactorArchiveError as exc:
                self._check_reachable()
                problems.append(str(exc))
            except Exception as exc:
                if self.loc.kind == "url" and _is_transport(exc):
                    raise _url_error(self.loc, exc) from None   # the store went away: stop
                if isinstance(exc, OSError):
                    problems.append(f"{member.path}: cannot read ({exc.strerror or exc})")
                else:
                    problems.append(f"{member.path}: stored data is damaged ({what_failed(exc)})")
        return problems

    def _check_reachable(self) -> None:
        """A read failed: from an object store that cannot be reached any more, report that,
        not damage (table decoding sees only that a read failed)."""
        if self.loc.kind != "url":
            return
        try:
            _store_exists(self.store, "zarr.json")
        except Exception as exc:
            raise _url_error(self.loc, exc) from None

    def _verify_member(self, member: Member, progress: Progress) -> list[str]:
        stored = self._stored(member)
        if stored == "link":
            return []
        if stored == "file":
            from ...ms.casacore_table.shards import _stored_array

            known = _stored_array(self.root, node_path(member.path))
            if known is not None:
                return _verify_file(known, member.path, member.sha256, progress, member.size)
        try:
            node = self.root[node_path(member.path)]
        except KeyError:
            return [f"{member.path}: missing"]
        if stored == "file":
            return _verify_file(node, member.path, member.sha256, progress, member.size)
        problems: list[str] = []
        if stored == "columns":
            if not local_store.is_group(node):
                return [f"{member.path}: stored data is damaged (an array where a table group belongs)"]
            content = node.attrs.get("casacore_content") or {}
            if not isinstance(content, dict) or content.get("content_sha256") != member.sha256:
                problems.append(f"{member.path}: table checksum in the store differs from the manifest")
            from ...ms.casacore_table import verify_table  # every shard, column sha256s, content

            return problems + verify_table(node, name=member.path, progress=progress)
        try:
            raw = self._raw_group(member, node)
        except (BadInput, FactorArchiveError):
            return [f"{member.path}: raw table files missing"]
        for entry in member.files:
            try:
                arr = self._raw_file(raw, entry.path)
            except KeyError:
                problems.append(f"{member.path}/{entry.path}: missing")
                continue
            problems += _verify_file(arr, f"{member.path}/{entry.path}", entry.sha256, progress, entry.size)
        if tree_digest(member.files) != member.sha256:
            problems.append(f"{member.path}: table digest differs from its file list")
        return problems

    def close(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            try:
                store.close()
            except Exception:
                pass
            if self.loc.kind == "url":
                _close_url_store(store)


# ---------------------------------------------------------------------------------------------
# Reading arrays shard by shard

def _shard_len(arr) -> int:
    return (arr.shards or arr.chunks)[0]


def missing_shards(arr, limit: int | None = None) -> list[tuple[int, int]]:
    """Index ranges (first, last along axis 0) of shards absent from the store, at most
    ``limit`` of them.

    Every shard is written when archiving (``write_empty_chunks``), so an absent one is damage;
    zarr itself would silently return fill values for it.
    """
    if arr.shape[0] == 0 or arr.nchunks_initialized == arr.nchunks:
        return []
    step = _shard_len(arr)
    nd = len(arr.shape)
    out = []
    for i in range(-(-arr.shape[0] // step)):
        key = arr.metadata.encode_chunk_key((i,) + (0,) * (nd - 1))
        if not _store_exists(arr.store, f"{arr.path}/{key}" if arr.path else key):
            out.append((i * step, min(arr.shape[0], (i + 1) * step) - 1))
            if limit is not None and len(out) >= limit:
                break
    return out


def _blocks(arr) -> Iterator[tuple[int, int]]:
    step = _shard_len(arr)
    for start in range(0, arr.shape[0], step):
        yield start, min(arr.shape[0], start + step)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_failure(loc: _Location, exc: BaseException, what: str) -> FactorArchiveError:
    """One line for an unexpected error while reading: the object store went away, or the bytes
    zarr (or the zip module) read are damaged."""
    if isinstance(exc, FactorArchiveError):
        return exc
    if loc.kind == "url" and _is_transport(exc):
        return _url_error(loc, exc)
    return stored_damage(loc.text, what, exc)


class _Installer:
    """Puts decoded tables in place (mode, mtime, rename, the work directory removed) on a
    thread of its own, in order, while the worker that decoded one goes on to the next.

    Those are metadata writes, and on an ext4 file system without a journal (this project's
    benchmark machine) each one waited 0.1-0.25 s whenever the write-back of a finished table
    was under way: the worker sat idle for that long before it got its next table. A failure
    is raised before the next member starts (check) and on leaving the block, once every table
    handed over is in place."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="zarr-install")
        self._futures: list = []

    def submit(self, fn: Callable[[], None]) -> None:
        self._futures.append(self._pool.submit(fn))

    def check(self) -> None:
        for future in self._futures:
            failure = future.exception() if future.done() else None
            if failure is not None:
                raise failure

    def __enter__(self) -> _Installer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._pool.shutdown(wait=True)
        if exc_type is None:
            for future in self._futures:
                future.result()


def _copy_array(arr, f, what: str, progress: Progress, size: int) -> str:
    """Write a file array's bytes to ``f`` shard by shard; return their sha256.

    The array must be the 1-D uint8 array of ``size`` bytes the manifest describes: its metadata
    is checked before anything is read, so a damaged shape cannot make us read for ever.
    """
    from ...ms.casacore_table.shards import _StoredArray

    if not _is_array(arr) or arr.shape != (size,) or arr.dtype != np.uint8:
        shape = getattr(arr, "shape", None)
        raise DamagedArchive(f"{what}: stored array does not match the manifest (shape {shape}, "
                             f"{size} bytes expected; metadata damaged)")
    if isinstance(arr, _StoredArray):
        return _copy_stored(arr, f, what, progress)
    gone = missing_shards(arr, limit=1)
    if gone:
        a, b = gone[0]
        raise FactorArchiveError(f"{what}: bytes {a}-{b}: stored data is missing (archive damaged)")
    digest = hashlib.sha256()
    for start, stop in _blocks(arr):
        try:
            block = arr[start:stop]
        except Exception as exc:
            raise FactorArchiveError(f"{what}: bytes {start}-{stop - 1}: stored data is damaged "
                                     f"({_first_line(exc)})") from None
        data = np.ascontiguousarray(block, dtype=np.uint8).data
        digest.update(data)
        f.write(data)
        progress(len(data))
    return digest.hexdigest()


def _is_array(arr) -> bool:
    """A _StoredArray, or a zarr Array (zarr is imported by then)."""
    from ...ms.casacore_table.shards import _StoredArray

    if isinstance(arr, _StoredArray):
        return True
    from zarr import Array

    return isinstance(arr, Array)


def _copy_stored(arr, f, what: str, progress: Progress) -> str:
    """_copy_array for an array read from its files: shard by shard, in this thread."""
    from ...ms.casacore_table.shards import _ArrayIn, _Damage

    kind, chunk, shard = arr.layout
    reader = _ArrayIn(arr, kind, chunk, shard, None, doc=arr.doc)
    digest = hashlib.sha256()
    for start in range(0, arr.shape[0], shard):
        try:
            block = reader.read(start, min(arr.shape[0], start + shard), here=True)
        except _Damage as e:
            why = "(archive damaged)" if e.kind == "missing" else f"({e.detail or 'archive damaged'})"
            raise FactorArchiveError(f"{what}: bytes {e.first}-{e.last}: stored data is {e.kind} {why}") from None
        data = block.data
        digest.update(data)
        f.write(data)
        progress(len(data))
    return digest.hexdigest()


def _verify_file(arr, what: str, sha256: str, progress: Progress, size: int) -> list[str]:
    try:
        got = _copy_array(arr, _Null(), what, progress, size)
    except FactorArchiveError as exc:
        return [str(exc)]
    return [] if got == sha256 else [f"{what}: checksum differs"]


class _Null:
    def write(self, _data) -> None:
        pass


