"""The zarr form: one zarr v3 store (a directory, a zip file or an object-store prefix).

Casacore tables become zarr groups of columns (``ms.table_codec``), so a Measurement Set can be
read with plain zarr or xarray; every other file is a compressed 1-D ``uint8`` array; the manifest
is the array ``manifest.json`` at the root, written last. ``formats/zarr.md`` specifies the
layout; this module is the only code that depends on it.

A local directory or zip store is written under a hidden temporary name beside the output and
renamed into place when complete, so an interrupted or failed archive never takes the output's
name (and an archive being overwritten with ``-c`` stays intact until the new one is complete).
An object store has no rename: there the manifest, written last, is what makes the store complete,
and a failed archive removes what it wrote.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from ..errors import BadInput, DamagedArchive, FactorArchiveError
from ..io.copy import HashThread, Progress, no_progress
from ..io.durable import fsync_dir, fsync_path, sync_filesystem
from ..io.failures import io_error
from ..io.install import discard, install, partial_name, remove, set_meta, set_table_meta, swap_into_place
from ..io.leftovers import remove_stale_partials
from ..io.tree import stat_entry, walk_table
from ..manifest import FileEntry, Manifest, Member, safe_relpath, tree_digest
from .base import finish_table_member

LAYOUT = "factor-archive/zarr"
LAYOUT_VERSION = 1
ATTR = "factor_archive"            # attribute key on the root and on every member node
MEMBERS = "members"                # group holding one node per member
MANIFEST_NODE = "manifest.json"    # uint8 array at the root: the manifest JSON, written last
RAW_GROUP = "raw"                  # sub-group of a raw-stored table holding its files
FILE_CHUNK = 1 << 20               # inner chunk of a file array (bytes)
FILE_SHARD = 32 << 20              # shard (one stored object) of a file array (bytes)
FILE_LEVEL = 3                     # zstd level of file arrays
TABLE_CHECKSUM = "casacore-table-content-v1"
STORE_SUFFIX = ".store"            # -s: chunk tables materialised beside the archive


# ---------------------------------------------------------------------------------------------
# Node names

def node_component(name: str) -> str:
    """One path component as a zarr node name.

    Every ``%`` becomes ``%25``; then a name zarr reserves is escaped as well: ``zarr.json``
    (it would clash with the parent's metadata document) becomes ``zarr%2Ejson`` and a leading
    ``__`` becomes ``%5F_``. ``urllib.parse.unquote`` is the exact inverse.
    """
    out = name.replace("%", "%25")
    if out == "zarr.json":
        out = "zarr%2Ejson"
    if out.startswith("__"):
        out = "%5F" + out[1:]
    return out


def node_path(archive_path: str) -> str:
    """The zarr path of the member stored at ``archive_path``: ``members/<archive path>``."""
    return "/".join([MEMBERS] + [node_component(c) for c in archive_path.split("/")])


def archive_path_of(node: str) -> str:
    """Inverse of node_path."""
    parts = node.split("/")
    if parts[0] != MEMBERS or len(parts) < 2:
        raise ValueError(f"{node!r} is not a member node")
    return "/".join(unquote(p) for p in parts[1:])


def _compressors(level: int = FILE_LEVEL):
    from zarr import codecs as zc

    return [zc.ZstdCodec(level=level), zc.Crc32cCodec()]


def _file_layout(size: int) -> tuple[int, int]:
    """(inner chunk, shard) lengths of a file array of ``size`` bytes."""
    chunk = max(1, min(FILE_CHUNK, size))
    shard = max(chunk, min(FILE_SHARD, -(-size // chunk) * chunk))
    return chunk, shard


# ---------------------------------------------------------------------------------------------
# Locations: a directory, a zip file or a URL

def s3_storage_options() -> dict:
    """fsspec/s3fs options from the environment.

    Credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
    ``AWS_PROFILE``, ``~/.aws/...``) are found by botocore itself. The endpoint is
    ``FACTOR_ARCHIVE_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``
    (passed explicitly, so it works whatever botocore version is installed).
    """
    endpoint = (os.environ.get("FACTOR_ARCHIVE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))
    # Retries: botocore's "standard" mode (3 attempts, jittered backoff), inside s3fs's own 5,
    # rides out a blip of a few seconds; a server that is gone is reported within about 10 s
    # (botocore's default "legacy" mode took minutes).
    options: dict = {"config_kwargs": {"max_pool_connections": 32, "connect_timeout": 10,
                                       "retries": {"mode": "standard", "max_attempts": 3}},
                     "skip_instance_cache": True}
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


class _Location:
    """Where a store lives and how to open it."""

    def __init__(self, location: str):
        self.text = str(location)
        if "://" in self.text:
            self.kind = "url"
            self.url = self.text.rstrip("/")
            self.path = None
            scheme = self.url.split("://", 1)[0].lower()
            if not self.url.split("://", 1)[1].strip("/"):
                raise BadInput(f"{self.text}: an object-store URL needs a bucket (s3://bucket/prefix)")
            self.options = s3_storage_options() if scheme in ("s3", "s3a") else {}
            return
        self.path = Path(os.path.abspath(self.text))
        self.url = None
        if self.path.is_dir():
            self.kind = "dir"
        elif self.path.exists() or self.text.lower().endswith(".zip"):
            self.kind = "zip"
        else:
            self.kind = "dir"

    def open_url_store(self, *, read_only: bool):
        from zarr.storage import FsspecStore

        _sync(_quiet_lost_connections())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return FsspecStore.from_url(self.url, storage_options=dict(self.options),
                                            read_only=read_only)
        except (ImportError, ValueError, OSError) as exc:
            raise BadInput(f"{self.text}: cannot open object store ({exc})") from None


def _sync(coro):
    from zarr.core.sync import sync

    return sync(coro)


async def _quiet_lost_connections() -> None:
    """When an object store goes away, aiohttp's own tasks fail too, and asyncio would print
    their tracebacks ("Task exception was never retrieved") after our one line: the failure is
    reported once, by us. Other errors reach asyncio's handler as before."""
    import asyncio

    loop = asyncio.get_running_loop()
    if loop.get_exception_handler() is not None:
        return                      # ours already (or someone else's: theirs stays)

    def handler(loop, context) -> None:
        exc = context.get("exception")
        if exc is not None and _is_transport(exc):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _store_exists(store, key: str) -> bool:
    return _sync(store.exists(key))


def _is_transport(exc: BaseException) -> bool:
    """An error of the connection to an object store (not of the data it holds)."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    return type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec")


def _close_url_store(store) -> None:
    """Close the s3fs client session: zarr's asynchronous filesystem never does, and aiohttp
    then complains ("Unclosed client session") after our last line of output."""
    fs = getattr(store, "fs", None)
    creator = getattr(fs, "_s3creator", None)
    if creator is None:
        return
    try:
        _sync(creator.__aexit__(None, None, None))
    except Exception:
        pass
    fs._s3 = fs._s3creator = None


def _url_error(loc: _Location, exc: Exception) -> FactorArchiveError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, PermissionError):
        return FactorArchiveError(f"{loc.text}: access denied ({text}); check AWS_ACCESS_KEY_ID / "
                                  f"AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, FileNotFoundError):
        return BadInput(f"{loc.text}: not found ({text}); does the bucket exist?")
    return FactorArchiveError(f"{loc.text}: {text}")


# ---------------------------------------------------------------------------------------------
# Object stores: writing a fresh prefix without waiting for each request

UPLOAD_TASKS = 32                  # objects in flight at once
ABORT_CLEANUP_SECONDS = 20         # a failed archive gives up removing its objects after this
UPLOAD_BYTES = 128 << 20           # bytes in flight at once (one larger object may still go alone)


def _under(key: str, prefix: str) -> bool:
    """Whether ``key`` is listed under ``prefix``: a bare node path lists that node only.

    zarr 3.1 asks ``list_prefix("<array path>")`` (no trailing ``/``) when counting stored shards,
    and a store matching plain string prefixes then also returns the keys of a sibling whose name
    starts the same (``DATA`` and ``DATA_DESC_ID``), which zarr cannot relativise.
    """
    if prefix == "" or prefix.endswith("/"):
        return key.startswith(prefix)
    return key == prefix or key.startswith(prefix + "/")


def _zip_store(path: Path, mode: str):
    """A ZipStore whose listing treats a bare node path as that node (see _under)."""
    from zarr.storage import WrapperStore, ZipStore

    class NodeListingZipStore(WrapperStore):
        async def _listing(self, prefix: str):
            async for key in self._store.list_prefix(prefix):
                if _under(key, prefix):
                    yield key

        def list_prefix(self, prefix):
            return self._listing(prefix)

    return NodeListingZipStore(ZipStore(path, mode=mode))


def _fresh_store_class():
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
    from zarr.storage import WrapperStore

    class FreshPrefixStore(WrapperStore):
        """Write-behind wrapper for a store known to start empty (an object-store prefix).

        ``set`` queues the upload and returns; up to UPLOAD_TASKS objects and UPLOAD_BYTES bytes
        are in flight. Because the prefix was empty when writing began, every read is answered
        from what this writer put there: metadata documents (``zarr.json``, a few KiB each) from
        memory, data objects from memory while their upload runs and from the store after it,
        and a key never written does not exist. zarr's node creation checks (several reads per
        array) therefore cost no round trip. ``flush`` waits for every upload
        and raises the first failure; a failure also surfaces at the next ``set``.
        """

        def __init__(self, store):
            super().__init__(store)
            self._known: dict[str, bytes | None] = {}   # key -> bytes kept, or None (ask the store)
            self._inflight: dict[str, object] = {}      # key -> (task, buffer)
            self._bytes = 0
            self._error: BaseException | None = None
            self._cond = None

        def _condition(self):
            import asyncio

            if self._cond is None:
                self._cond = asyncio.Condition()
            return self._cond

        def _raise(self) -> None:
            if self._error is not None:
                raise self._error

        async def set(self, key, value) -> None:
            import asyncio

            self._raise()
            data = value.to_bytes()
            cond = self._condition()
            async with cond:
                await cond.wait_for(lambda: (len(self._inflight) < UPLOAD_TASKS and (
                    self._bytes + len(data) <= UPLOAD_BYTES or not self._inflight))
                    and key not in self._inflight)
                self._bytes += len(data)
                self._known[key] = data
                task = asyncio.ensure_future(self._upload(key, value, len(data)))
                self._inflight[key] = task

        async def _upload(self, key, value, size) -> None:
            try:
                await self._store.set(key, value)
            except BaseException as exc:
                if self._error is None:
                    self._error = exc
            finally:
                cond = self._condition()
                async with cond:
                    self._bytes -= size
                    self._inflight.pop(key, None)
                    if key in self._known and not key.endswith("zarr.json"):
                        self._known[key] = None     # data: read back from the store if ever asked
                    cond.notify_all()

        async def flush(self) -> None:
            cond = self._condition()
            async with cond:
                await cond.wait_for(lambda: not self._inflight)
            self._raise()

        async def cancel(self) -> None:
            """Stop every upload still running (the archive failed; what was sent is removed)."""
            import asyncio

            tasks = list(self._inflight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        async def set_if_not_exists(self, key, value) -> None:
            if key not in self._known:
                await self.set(key, value)

        async def _set_many(self, values) -> None:
            for key, value in values:
                await self.set(key, value)

        async def exists(self, key) -> bool:
            return key in self._known

        async def get(self, key, prototype, byte_range=None):
            if key not in self._known:
                return None
            data = self._known[key]
            if data is None:
                return await self._store.get(key, prototype, byte_range)
            if byte_range is None:
                part = data
            elif isinstance(byte_range, RangeByteRequest):
                part = data[byte_range.start:byte_range.end]
            elif isinstance(byte_range, OffsetByteRequest):
                part = data[byte_range.offset:]
            elif isinstance(byte_range, SuffixByteRequest):
                part = data[-byte_range.suffix:] if byte_range.suffix else b""
            else:
                raise TypeError(byte_range)
            return prototype.buffer.from_bytes(part)

        async def get_partial_values(self, prototype, key_ranges):
            return [await self.get(k, prototype, r) for k, r in key_ranges]

        async def delete(self, key) -> None:
            cond = self._condition()
            async with cond:
                await cond.wait_for(lambda: key not in self._inflight)
            if self._known.pop(key, 0) != 0:
                await self._store.delete(key)

        async def _listing(self, prefix: str):
            for key in sorted(self._known):
                if _under(key, prefix):
                    yield key

        def list(self):
            return self._listing("")

        def list_prefix(self, prefix):
            return self._listing(prefix)

        async def _dir(self, prefix: str):
            prefix = prefix.rstrip("/")
            start = f"{prefix}/" if prefix else ""
            seen = set()
            for key in sorted(self._known):
                if key.startswith(start):
                    head = key[len(start):].split("/", 1)[0]
                    if head not in seen:
                        seen.add(head)
                        yield head

        def list_dir(self, prefix):
            return self._dir(prefix)

        async def is_empty(self, prefix: str) -> bool:
            return not any(k.startswith(prefix) for k in self._known)

    return FreshPrefixStore


# ---------------------------------------------------------------------------------------------
# Writer

class ZarrWriter:
    form = "zarr"
    # Members are written one after another: zarr compresses on its own thread pool, and
    # encoding two tables at once was measured no faster (the Python side holds the GIL).
    parallel = False

    def __init__(self, location: str | os.PathLike, *, clobber: bool = False):
        import zarr

        self.loc = _Location(str(location))
        self.clobber = clobber
        self._staging: Path | None = None
        self._groups: dict[str, object] = {}
        self._groups_lock = threading.Lock()
        self._closed = False
        self.notices: list[str] = []     # for the user: leftovers of killed runs removed
        pid = os.getpid()
        if self.loc.kind == "url":
            self.base_store = self.loc.open_url_store(read_only=False)
            try:
                self._prepare_url()
            except BaseException:
                _close_url_store(self.base_store)
                raise
            self.store = _fresh_store_class()(self.base_store)
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
            self.notices = remove_stale_partials(final)
            self.tmp = final.with_name(f".{final.name}.partial-{pid}")
        try:
            if self.tmp is not None:
                remove(self.tmp)
                if self.loc.kind == "dir":
                    from zarr.storage import LocalStore
                    self.store = LocalStore(self.tmp)
                else:
                    self.store = _zip_store(self.tmp, "w")
            self.root = zarr.create_group(self.store, attributes={ATTR: {
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
            holds = bool(_sync(fs._ls(path)))
        except FileNotFoundError:
            holds = False
        except Exception as exc:
            raise self._failure(exc, self.loc.text) from None
        if not holds:
            return
        if not self.clobber:
            raise BadInput(f"{self.loc.text}: already holds data; use -c to overwrite it")
        try:
            # The old manifest goes first: from then on the old store no longer looks complete.
            _remove_objects(fs, f"{path}/{MANIFEST_NODE}")
            _remove_objects(fs, path)
        except Exception as exc:
            raise self._failure(exc, self.loc.text) from None

    def _failure(self, exc: BaseException, path) -> BaseException:
        """The one-line error for a failure while writing, or ``exc`` itself if it is not one
        we know (a bug should show where it is)."""
        if isinstance(exc, FactorArchiveError):
            return exc
        if self.loc.kind == "url" and _is_transport(exc) and getattr(exc, "filename", None) is None:
            return _url_error(self.loc, exc)
        if isinstance(exc, OSError):
            return io_error(exc.filename or path, exc)
        return exc

    # -- protocol -------------------------------------------------------------------------------
    def staging_dir(self) -> Path:
        if self._staging is None:
            if self.loc.kind == "url":
                self._staging = Path(tempfile.mkdtemp(prefix="factor-archive-staging-"))
            else:
                self._staging = self.loc.path.with_name(f".{self.loc.path.name}.staging-{os.getpid()}")
                remove(self._staging)
                self._staging.mkdir(parents=True)
        return self._staging

    def write(self, member: Member, source: Path, progress: Progress = no_progress) -> Member:
        safe_relpath(member.path)
        node = node_path(member.path)
        parent_path, name = node.rsplit("/", 1)
        try:
            if member.kind == "link":
                member.size, member.sha256 = 0, hashlib.sha256(b"").hexdigest()
                return member
            parent = self._group(parent_path)
            if member.kind == "table":
                self._write_table(member, Path(source), parent, name, node, progress)
            else:
                st = stat_entry(source)
                sha, size = self._write_file(Path(source), parent, name, member.path, st, progress)
                member.size, member.sha256 = size, sha
                member.mode, member.mtime = stat.S_IMODE(st.st_mode), st.st_mtime
                member.extra = {**member.extra, "zarr": _file_extra(node, size)}
        except Exception as exc:
            raise self._failure(exc, source) from None
        if self._staging is not None and Path(source).parent == self._staging:
            remove(Path(source))  # generated data (calibrated chunks): stored, so free the disk now
        return member

    def close(self, manifest: Manifest) -> None:
        manifest.container = self.form
        data = manifest.to_json().encode("utf-8")
        try:
            if self.loc.kind == "url":
                _sync(self.store.flush())       # every object is stored before the manifest
            # (A local store only takes its name once everything, manifest included, is synced.)
            _write_bytes_array(self.root, MANIFEST_NODE, data, {ATTR: {
                "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}})
            if self.loc.kind == "zip":
                self.store.close()
                fsync_path(self.tmp)
                os.replace(self.tmp, self.loc.path)
                fsync_dir(self.loc.path.parent)
            elif self.loc.kind == "dir":
                self.store.close()
                sync_filesystem(self.tmp)       # data and manifest durable before the rename
                swap_into_place(self.tmp, self.loc.path)
            else:
                _sync(self.store.flush())
        except Exception as exc:
            raise self._failure(exc, self.loc.text) from None
        self._closed = True
        self._cleanup()

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
                    # Best effort, and bounded: the store may be what failed. Without a manifest
                    # what stays behind is no archive, and a rerun with -c replaces it.
                    _sync(asyncio.wait_for(_remove_objects_async(fs, path), ABORT_CLEANUP_SECONDS))
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
        group = self._group_locked(parent_path).create_group(name)
        self._groups[path] = group
        return group

    def _write_file(self, source: Path, parent, name: str, apath: str, st: os.stat_result,
                    progress: Progress) -> tuple[str, int]:
        """Stream ``source`` into a new uint8 array, shard by shard; return (sha256, size)."""
        size = st.st_size
        chunk, shard = _file_layout(size)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Duplicate name")
            arr = parent.create_array(
                name, shape=(size,), dtype="uint8", chunks=(chunk,), shards=(shard,),
                compressors=_compressors(), fill_value=0, dimension_names=("byte",),
                attributes={ATTR: {"path": apath, "kind": "file", "size": size}},
                config={"write_empty_chunks": True})
        hasher = HashThread()
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
                     progress: Progress) -> None:
        from ..ms.table_codec import RawTableRequired, encode_table

        files, dirs = walk_table(source)
        st = stat_entry(source)
        group = parent.create_group(name, attributes={ATTR: {"path": member.path, "kind": "table"}})
        try:
            info = encode_table(source, group, progress=progress)
        except RawTableRequired as exc:
            self._write_raw_table(member, source, group, node, files, dirs, exc.reason, progress)
            member.mode, member.mtime = stat.S_IMODE(st.st_mode), st.st_mtime
            return
        member.files, member.dirs = [], []
        member.size = sum(os.stat(p).st_size for _rel, p in files)
        member.sha256 = info["content_sha256"]
        member.mode, member.mtime = stat.S_IMODE(st.st_mode), st.st_mtime
        member.extra = {**member.extra, "zarr": {
            "node": node, "stored": "columns", "checksum": TABLE_CHECKSUM, **info}}

    def _write_raw_table(self, member: Member, source: Path, group, node: str,
                         files: list[tuple[str, Path]], dirs: list[str], reason: str,
                         progress: Progress) -> None:
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
        finish_table_member(member, entries, dirs)
        member.extra = {**member.extra, "zarr": {
            "node": node, "stored": "raw-files", "raw_group": raw_name, "checksum": "tree-digest",
            "raw_reason": reason}}


def _wait_for_zarr(timeout: float = 30.0) -> None:
    """Wait until zarr's event loop has finished what it was doing.

    zarr runs every store operation as a task on its own thread; a caller interrupted (Ctrl-C)
    while waiting for one stops waiting, but the task goes on writing. Removing the partial store
    before it ends would leave the files it writes afterwards behind.
    """
    import asyncio

    from zarr.core import sync

    loop = sync.loop[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return

    async def others() -> None:
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    try:
        asyncio.run_coroutine_threadsafe(others(), loop).result(timeout + 5)
    except Exception:
        pass


def _remove_objects(fs, path: str) -> None:
    """Delete every object below ``path`` (never the bucket itself, even for a bucket root)."""
    _sync(_remove_objects_async(fs, path))


async def _remove_objects_async(fs, path: str) -> None:
    try:
        keys = await fs._find(path)
    except FileNotFoundError:
        return
    if keys:
        await fs._rm(keys)
    fs.invalidate_cache()


def _file_extra(node: str, size: int) -> dict:
    chunk, shard = _file_layout(size)
    return {"node": node, "stored": "file", "checksum": "sha256", "chunk": chunk, "shard": shard,
            "codecs": f"zstd-{FILE_LEVEL}+crc32c"}


def _write_bytes_array(group, name: str, data: bytes, attrs: dict) -> None:
    arr = group.create_array(name, shape=(len(data),), dtype="uint8", chunks=(max(1, len(data)),),
                             compressors=_compressors(), fill_value=0, dimension_names=("byte",),
                             attributes=attrs, config={"write_empty_chunks": True})
    if data:
        arr[:] = np.frombuffer(data, dtype=np.uint8)


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


# ---------------------------------------------------------------------------------------------
# Reader

class ZarrReader:
    form = "zarr"

    def __init__(self, location: str | os.PathLike, **_kwargs):
        import zarr

        self.loc = _Location(str(location))
        self.origin = self.loc.text
        try:
            if self.loc.kind == "url":
                self.store = self.loc.open_url_store(read_only=True)
            elif self.loc.kind == "dir":
                from zarr.storage import LocalStore
                if not (self.loc.path / "zarr.json").is_file():
                    raise BadInput(f"{self.loc.path}: not a zarr store (no zarr.json)")
                self.store = LocalStore(self.loc.path, read_only=True)
            else:
                if not self.loc.path.is_file():
                    raise BadInput(f"{self.loc.path}: archive not found")
                self.store = _zip_store(self.loc.path, "r")
            if self.loc.kind == "url" and not _store_exists(self.store, "zarr.json"):
                raise BadInput(f"{self.origin}: no zarr store there (no zarr.json)")
            try:
                self.root = zarr.open_group(self.store, mode="r")
            except FileNotFoundError:
                raise BadInput(f"{self.origin}: not a zarr store (no zarr.json)") from None
            except (ValueError, KeyError, TypeError) as exc:
                raise DamagedArchive(f"{self.origin}: not a readable zarr v3 store "
                                     f"({_what_failed(exc)})") from None
            attrs = self.root.attrs.get(ATTR)
            if not isinstance(attrs, dict) or attrs.get("layout") != LAYOUT:
                raise BadInput(f"{self.origin}: a zarr store, but not a factor-archive archive")
            if attrs.get("layout_version", 0) > LAYOUT_VERSION:
                raise BadInput(f"{self.origin}: zarr layout version {attrs.get('layout_version')} is "
                               f"newer than this tool understands ({LAYOUT_VERSION}); upgrade factor-archive")
            self.manifest = Manifest.from_json(self._manifest_bytes(), f"{self.origin}/{MANIFEST_NODE}")
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
        if not _store_exists(self.store, f"{MANIFEST_NODE}/zarr.json"):
            raise BadInput(incomplete)
        try:
            arr = self.root[MANIFEST_NODE]
            meta = arr.attrs.get(ATTR) or {}
            if arr.shape[0] and arr.nchunks_initialized != arr.nchunks:
                raise BadInput(incomplete)
            data = arr[:].tobytes()
        except BadInput:
            raise
        except Exception as exc:
            raise DamagedArchive(f"{self.origin}: manifest unreadable ({_what_failed(exc)}); damaged, or "
                                 "an interrupted archive?") from None
        if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(data).hexdigest() \
                or meta.get("size") != len(data):
            raise DamagedArchive(f"{self.origin}: manifest does not match its checksum (damaged archive)")
        return data

    # -- nodes ----------------------------------------------------------------------------------
    def _node(self, member: Member):
        try:
            return self.root[node_path(member.path)]
        except KeyError:
            raise DamagedArchive(f"{self.origin}: {member.path}: member missing from the archive") from None
        except Exception as exc:
            raise DamagedArchive(f"{self.origin}: {member.path}: metadata damaged "
                                 f"({_what_failed(exc)})") from None

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
        return raw["/".join(node_component(c) for c in rel.split("/"))]

    # -- protocol -------------------------------------------------------------------------------
    def local_path(self, member: Member) -> Path | None:
        return None

    def extract(self, members: list[Member], dest_for: Callable[[Member], Path | None],
                progress: Progress = no_progress) -> None:
        for member in members:
            dest = dest_for(member)
            if dest is None:
                continue
            stored = self._stored(member)
            if stored == "link":
                continue
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if stored == "file":
                    self._extract_file(member, dest, progress)
                elif stored == "columns":
                    self._extract_table(member, dest, progress)
                else:
                    self._extract_raw_table(member, dest, progress)
            except OSError as exc:
                if self.loc.kind == "url" and exc.filename is None:
                    raise _url_error(self.loc, exc) from None
                raise io_error(exc.filename or dest, exc) from None
            except FactorArchiveError:
                self._check_reachable()
                raise
            except Exception as exc:
                self._check_reachable()
                raise _read_failure(self.loc, exc, member.path) from None

    def _extract_file(self, member: Member, dest: Path, progress: Progress) -> None:
        arr = self._node(member)
        partial = partial_name(dest)
        remove(partial)
        try:
            with open(partial, "wb") as f:
                sha = _copy_array(arr, f, member.path, progress, member.size)
            if sha != member.sha256:
                raise FactorArchiveError(f"{self.origin}: {member.path}: checksum mismatch (archive damaged)")
            set_meta(partial, member.mode, member.mtime)
            install(partial, dest)
        except BaseException:
            discard(partial)
            raise

    def _extract_table(self, member: Member, dest: Path, progress: Progress) -> None:
        from ..ms.table_codec import decode_table

        group = self._node(member)
        content = group.attrs.get("casacore_content") or {}
        if not isinstance(content, dict) or content.get("content_sha256") != member.sha256:
            raise FactorArchiveError(f"{self.origin}: {member.path}: table checksum in the store differs "
                                     f"from the manifest (archive damaged)")
        # A private directory keeps the table's own name, so errors name it as it is known.
        work = partial_name(dest)
        remove(work)
        work.mkdir()
        try:
            try:
                decode_table(group, work / dest.name, progress=progress)
            except FactorArchiveError as exc:
                raise FactorArchiveError(self._name_in_archive(member, str(exc))) from None
            set_meta(work / dest.name, member.mode, member.mtime)
            install(work / dest.name, dest)
        finally:
            discard(work)

    def _name_in_archive(self, member: Member, message: str) -> str:
        base = posixpath.basename(member.path)
        if message.startswith(base):
            message = posixpath.dirname(member.path) + ("/" if "/" in member.path else "") + message
        else:
            message = f"{member.path}: {message}"
        return f"{self.origin}: {message}"

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
                if sha != entry.sha256:
                    raise FactorArchiveError(f"{self.origin}: {member.path}/{entry.path}: checksum "
                                             f"mismatch (archive damaged)")
            set_table_meta(partial, [(e.path, e.mode, e.mtime) for e in member.files], member.dirs,
                           member.mode, member.mtime)
            install(partial, dest)
        except BaseException:
            discard(partial)
            raise

    def materialise(self, member: Member, store_dir: str | os.PathLike | None = None,
                    progress: Progress = no_progress) -> Path:
        """-s: the table decoded once into ``<store>/<sha[:2]>/<sha>/<name>``; later calls reuse it.

        ``store`` defaults to ``<archive>.store`` beside a local archive (the layout
        ``restore.unarchive.ChunkLinks`` uses too); a ``.complete`` file marks a finished entry.
        """
        if store_dir:
            base = Path(os.path.abspath(store_dir))
        elif self.loc.kind == "url":
            raise BadInput(f"{self.origin}: -s with an object store needs --store DIR for the chunks")
        else:
            base = Path(str(self.loc.path) + STORE_SUFFIX)
        sha = member.sha256
        if not sha or any(c not in "0123456789abcdef" for c in sha):
            raise BadInput(f"manifest: member {member.path!r} has a bad checksum")
        final_dir = base / sha[:2] / sha
        name = posixpath.basename(safe_relpath(member.path, self.origin))
        final = final_dir / name
        if (final_dir / ".complete").is_file() and final.is_dir():
            return final
        tmp_dir = final_dir.with_name(f".partial-{sha}")
        remove(tmp_dir)
        tmp_dir.mkdir(parents=True)
        try:
            self.extract([member], lambda _m: tmp_dir / name, progress)
            (tmp_dir / ".complete").write_text("")
            if (final_dir / ".complete").is_file() and final.is_dir():
                remove(tmp_dir)              # another restore finished it first
            else:
                remove(final_dir)
                os.rename(tmp_dir, final_dir)
        except BaseException:
            remove(tmp_dir)
            raise
        return final

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
                    problems.append(f"{member.path}: stored data is damaged ({_what_failed(exc)})")
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
        try:
            node = self.root[node_path(member.path)]
        except KeyError:
            return [f"{member.path}: missing"]
        if stored == "file":
            return _verify_file(node, member.path, member.sha256, progress, member.size)
        problems: list[str] = []
        if stored == "columns":
            content = node.attrs.get("casacore_content") or {}
            if not isinstance(content, dict) or content.get("content_sha256") != member.sha256:
                problems.append(f"{member.path}: table checksum in the store differs from the manifest")
            from ..ms.table_codec import verify_table  # every shard, column sha256s, content

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
    return DamagedArchive(f"{loc.text}: {what}: stored data is damaged ({_what_failed(exc)})")


def _what_failed(exc: BaseException) -> str:
    """The first line of an unexpected library error, with its kind (``BadZipFile: ...``)."""
    text = str(exc).strip()
    line = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _copy_array(arr, f, what: str, progress: Progress, size: int) -> str:
    """Write a file array's bytes to ``f`` shard by shard; return their sha256.

    The array must be the 1-D uint8 array of ``size`` bytes the manifest describes: its metadata
    is checked before anything is read, so a damaged shape cannot make us read for ever.
    """
    from zarr import Array

    if not isinstance(arr, Array) or arr.shape != (size,) or arr.dtype != np.uint8:
        shape = getattr(arr, "shape", None)
        raise DamagedArchive(f"{what}: stored array does not match the manifest (shape {shape}, "
                             f"{size} bytes expected; metadata damaged)")
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
        data = memoryview(np.ascontiguousarray(block, dtype=np.uint8)).cast("B")
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


def _describe_array(table: str, rel: str) -> tuple[str, str, str]:
    """(table name, column, unit) of an array at ``rel`` below a table group (table_codec layout)."""
    parts = rel.split("/")
    while len(parts) > 2 and parts[0] == "subtables":
        table = f"{table}/{parts[1]}"
        parts = parts[2:]
    if len(parts) == 3 and parts[0] == "ragged":
        return table, parts[1], "values" if parts[2] == "values" else "rows"
    return table, "/".join(parts), "rows"
