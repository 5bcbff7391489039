"""Where a zarr store lives: a local directory, a zip file or an object-store prefix, and how
to open, fill and clean each (the write-behind store for object stores is here too)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ...errors import BadInput, FactorArchiveError
from ...io.objectstore import s3_concurrency, s3_storage_options
from ..locations import Location, parse_location

if TYPE_CHECKING:
    import asyncio  # imported where used: 50 ms a restore does not need

# ---------------------------------------------------------------------------------------------
# Locations: a directory, a zip file or a URL

class _Location:
    """Which kind of zarr store a location is (a directory, a zip file or an object-store URL)
    and how to open it."""

    def __init__(self, location: str | os.PathLike[str] | Location):
        loc = location if isinstance(location, Location) else parse_location(location)
        self.text = loc.text
        self._path: Path | None = None
        self._url: str | None = None
        self.options: dict[str, Any] = {}
        if loc.kind == "url":
            self.kind = "url"
            self._url = loc.url
            self.options = s3_storage_options() if loc.scheme in ("s3", "s3a") else {}
            return
        if loc.kind != "path":
            raise BadInput(f"{loc.text}: the zarr form needs a path or a URL")
        self._path = loc.local_path()
        if self._path.is_dir():
            self.kind = "dir"
        elif self._path.exists() or loc.has_suffix(".zip"):   # a zarr output named *.zip: a zip store
            self.kind = "zip"
        else:
            self.kind = "dir"

    @property
    def path(self) -> Path:
        """The local path of a directory or zip store."""
        assert self._path is not None, f"{self.text}: not a local store"
        return self._path

    @property
    def url(self) -> str:
        """The URL of an object store."""
        assert self._url is not None, f"{self.text}: not an object store"
        return self._url

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
    if fs is None or creator is None:
        return
    try:
        _sync(creator.__aexit__(None, None, None))
    except Exception:
        pass
    fs._s3 = fs._s3creator = None


def _url_error(loc: _Location, exc: BaseException) -> FactorArchiveError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, PermissionError):
        return FactorArchiveError(f"{loc.text}: access denied ({text}); check AWS_ACCESS_KEY_ID / "
                                  f"AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, FileNotFoundError):
        return BadInput(f"{loc.text}: not found ({text}); does the bucket exist?")
    return FactorArchiveError(f"{loc.text}: {text}")


# ---------------------------------------------------------------------------------------------
# Object stores: writing a fresh prefix without waiting for each request

UPLOAD_TASKS = 32                  # objects in flight at once (unless --s3-concurrency says)
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


def _zip_store(path: Path, mode: Literal["r", "w", "a"]) -> Any:
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
            self._inflight: dict[str, asyncio.Task[None]] = {}   # key -> its upload
            self._bytes = 0
            self._tasks = s3_concurrency(UPLOAD_TASKS)   # --s3-concurrency caps it
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
                await cond.wait_for(lambda: (len(self._inflight) < self._tasks and (
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


