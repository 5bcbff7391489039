"""The one module through which the cluster engine reaches the table codec and the zarr
container: what it needs from them is imported or wrapped here."""

from __future__ import annotations

import atexit
import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from ..containers.zarr import ZarrReader, ZarrWriter
from ..containers.zarr import attached_writer as _attached_writer
from ..containers.zarr.writer import close_object_store, open_object_store
from ..manifest import Member
from ..ms.casacore_table import (  # noqa: F401  (re-exported: the codec's entry points, one place)
    RawTableRequired,
    decide_codecs,
    decode_table,
    encode_table,
    remembered_codec_choices,
    run_in_worker,
    table_content_sha256,
    verify_table,
    worker_session,
)
from .tasks import StoreTarget

# ---------------------------------------------------------------------------------------------
# Client side: the client's ZarrWriter owns the store; workers write members into it.

def prepare_target(writer: ZarrWriter, members: list[Member]) -> StoreTarget:
    """Create every group the members' nodes sit in, make them visible to the workers, and
    describe the store for them. Members are then written by workers, the manifest by
    ``writer.close`` on the client."""
    location, options = writer.target          # a zip store is refused here, in one line
    for member in members:
        writer.group_for(member.path)
    writer.publish_groups()
    return StoreTarget(location, options)


# ---------------------------------------------------------------------------------------------
# Worker side: a writer attached to the store the client created.

@contextmanager
def attached_writer(target: StoreTarget, member_path: str) -> Iterator[ZarrWriter]:
    """A writer for one member of the store at ``target`` (see ``containers.zarr.attached_writer``),
    with this worker's object-store session reused."""
    store = _url_store(target) if target.is_url else None
    with _attached_writer(target.location, member_path, object_store=store) as writer:
        yield writer


_URL_STORES: dict[tuple[str, str], Any] = {}
_READERS: dict[str, ZarrReader] = {}
_CACHE_LOCK = threading.Lock()


def _url_store(target: StoreTarget) -> Any:
    """The object store at ``target``, opened once per worker process: opening one makes a
    botocore session and client, which took most of a small member's task time when done per task."""
    key = (target.location, json.dumps(dict(target.storage_options), sort_keys=True, default=str))
    with _CACHE_LOCK:
        store = _URL_STORES.get(key)
        if store is None:
            _register_close()
            store = _URL_STORES[key] = open_object_store(target.location, target.storage_options)
        return store


def archive_reader(location: str) -> ZarrReader:
    """The zarr archive at ``location``, opened (and its manifest verified) once per worker process."""
    with _CACHE_LOCK:
        reader = _READERS.get(location)
        if reader is None:
            _register_close()
            reader = _READERS[location] = ZarrReader(location)
        return reader


_session: ExitStack | None = None


@contextmanager
def casacore_session() -> Iterator[None]:
    """Around a task's tables: casacore reads and writes in a casacore worker process beside this
    one, as in a single-process archive (the codec overlaps reading and compressing that way;
    in-process it does one after the other). The session stays open for the Dask worker's life,
    so its casacore worker is reused by later tasks. (The codec choices are the client's, sent
    with each table: see ``worker.encode_table_member``.)"""
    global _session
    with _CACHE_LOCK:
        if _session is None:
            _register_close()
            _session = ExitStack()
            _session.enter_context(worker_session())
    yield


_registered = False


def _register_close() -> None:
    global _registered
    if not _registered:
        atexit.register(_close_all)
        _registered = True


def _close_all() -> None:
    """At the worker's exit: close object-store sessions and readers (aiohttp complains otherwise)."""
    with _CACHE_LOCK:
        for store in _URL_STORES.values():
            close_object_store(store)
        _URL_STORES.clear()
        for reader in _READERS.values():
            reader.close()
        _READERS.clear()
        if _session is not None:
            _session.close()
