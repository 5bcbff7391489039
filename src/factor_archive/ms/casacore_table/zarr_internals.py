"""The private zarr-python APIs the codec calls, all here, each with the reason.

The codec writes and reads numeric arrays whole shards at a time instead of through zarr's
per-chunk machinery: casacore reading, compression and storing then overlap, a shard is stored
once, and an absent shard or inner chunk is reported as missing data (zarr reads fill values
for it). That takes the store's own get/set (public, ``zarr.abc.store.Store``, but async:
zarr has no public way to run them on its event loop, hence ``zarr.core.sync.sync``) and the
exact ``zarr.json`` documents zarr writes (``zarr.core.metadata.v3.ArrayV3Metadata`` and
``zarr.core.group.GroupMetadata``: the public ``zarr.create_hierarchy`` takes the same private
classes and checks every node for existence first, a read per node, which on S3 costs more
than writing the table's small subtables). Nothing else in the package imports ``zarr.core``.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...io.durable import WRITEBACK_MIN, start_writeback
from ...io.install import discard
from .local_store import LocalDirectory


def _sync(coro) -> Any:
    from zarr.core.sync import sync

    return sync(coro)


def _prototype():
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()


def array_document(arr) -> dict:
    """The ``zarr.json`` document of an open array, as stored."""
    return json.loads(arr.metadata.to_buffer_dict(_prototype())["zarr.json"].to_bytes())


def node_bytes(doc: dict | None, attrs: dict | None = None):
    """zarr's serialisation of an array document (validated by zarr), or of a group with
    ``attrs``: the bytes zarr itself would store as the node's ``zarr.json``.

    Remembered by the document's JSON: the chunk MSs of a run lay out the same nodes again and
    again, and zarr's validation and serialisation cost about 1 ms of interpreter time each."""
    try:
        key = json.dumps([doc, attrs], sort_keys=True)
    except (TypeError, ValueError):  # not plain JSON: zarr decides what it means
        return _serialised_node(doc, attrs)
    got = _NODE_BYTES.get(key)
    if got is None:
        got = _serialised_node(doc, attrs)
        if len(_NODE_BYTES) >= _NODE_BYTES_MAX:
            _NODE_BYTES.clear()
        _NODE_BYTES[key] = got
    return got


_NODE_BYTES: dict[str, bytes] = {}
_NODE_BYTES_MAX = 4096  # documents are < 2 kB: at most a few MB


def _serialised_node(doc: dict | None, attrs: dict | None) -> bytes:
    from zarr.core.group import GroupMetadata
    from zarr.core.metadata.v3 import ArrayV3Metadata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md = ArrayV3Metadata.from_dict(doc) if doc is not None else GroupMetadata(attributes=attrs or {})
        return md.to_buffer_dict(_prototype())["zarr.json"].to_bytes()


def chunk_key(doc: dict, coords: tuple) -> str:
    """The store key of a chunk (a shard, for a sharded array) below its array, by the
    array document's ``chunk_key_encoding`` (zarr v3 specification)."""
    enc = doc["chunk_key_encoding"]
    sep = (enc.get("configuration") or {}).get("separator", "/" if enc["name"] == "default" else ".")
    parts = [str(int(c)) for c in coords]
    return ("c" + sep + sep.join(parts)) if enc["name"] == "default" else sep.join(parts)


def store_set(store, key: str, data) -> None:
    """Store ``data`` (a uint8 array or bytes) under ``key``."""
    direct = _direct_target(store)
    if direct is not None:
        _put_local(direct[0], key, data, direct[1])
    else:
        _sync(store.set(key, _buffer(data)))


def store_many(store, items: list[tuple[str, Any]]) -> None:
    """Store ``(key, bytes)`` pairs: concurrently on an object store (one round trip), one after
    another in this thread for a local directory."""
    direct = _direct_target(store)
    if direct is not None:
        for k, v in items:
            _put_local(direct[0], k, v, direct[1])
        return

    async def put_all():
        import asyncio

        await asyncio.gather(*(store.set(k, _buffer(v)) for k, v in items))

    _sync(put_all())


def _buffer(data):
    return _prototype().buffer.from_array_like(np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data)


_TAG_RANDOM = uuid.uuid4().hex[:16]
_tag_numbers = itertools.count()


def _temporary_tag() -> str:
    """A name for an object's temporary file no other writer (thread or process, cluster
    workers included) uses: a random part drawn once, the process id and a counter (a uuid4 per
    object costs a getrandom call each, thousands of them in a run)."""
    return f"{_TAG_RANDOM}-{os.getpid()}-{next(_tag_numbers)}"


def _open_temporary(path: str) -> tuple[str, Any]:
    """The temporary file an object of a local store is written to before it is renamed to
    ``path`` (its parent directories made when missing), and its name."""
    tmp = f"{path}.{_temporary_tag()}.partial"
    try:
        return tmp, open(tmp, "wb")  # the caller closes it
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return tmp, open(tmp, "wb")


def _put_local(root: str, key: str, data, note=None) -> None:
    """Write an object of a local directory store as zarr's LocalStore does (its parent
    directories made, a temporary file renamed over the name, so a reader never sees half an
    object), without the round trip to zarr's event loop and a thread of its own: a LocalObject
    written at once, then ``note(key, data)``."""
    out = LocalObject(root, key)
    try:
        out.write(memoryview(data).cast("B") if not isinstance(data, bytes) else data)
    except BaseException:
        out.discard()
        raise
    out.finish()
    if note is not None:
        note(key, data)


class LocalObject:
    """An object of a local directory store, written part by part (a shard, chunk by chunk, as
    each is compressed: no buffer holds the whole object) under a temporary name and renamed once
    complete, its write-back started when it is big. A recorder wrapping the store (see
    ``_direct_target``) is told of it: with its digest, computed as the parts go by, when the
    recorder takes one (``new_hash``/``note_hash``)."""

    def __init__(self, root: str, key: str, recorder=None):
        self.key, self.recorder = key, recorder
        self.path = os.path.join(root, key)
        self.tmp, self.f = _open_temporary(self.path)  # closed by finish or discard
        self.hash = recorder.new_hash() if hasattr(recorder, "new_hash") else None
        self.size = 0

    def write(self, data) -> None:
        self.f.write(data)
        if self.hash is not None:
            self.hash.update(data)
        self.size += len(data)

    def finish(self) -> None:
        try:
            if self.size >= WRITEBACK_MIN:  # the disk starts on it now, not at the final sync
                start_writeback(self.f.fileno())
            self.f.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        if self.hash is not None:
            self.recorder.note_hash(self.key, self.size, self.hash)
        elif self.recorder is not None:
            with open(self.path, "rb") as f:
                self.recorder.note_stored(self.key, f.read())

    def discard(self) -> None:
        self.f.close()
        discard(Path(self.tmp))


def local_object_target(store) -> tuple[str, Any] | None:
    """(directory, recorder or None) when objects of ``store`` can be written as LocalObjects."""
    from zarr.storage import LocalStore

    direct = _direct_target(store)
    if direct is None:
        return None
    return direct[0], (store if type(store) is not LocalStore else None)


def store_get(store, key: str) -> np.ndarray | None:
    """The bytes under ``key`` as a uint8 array, or None when there is no such object.

    From a local directory store the file is read here, in the calling thread: through the
    store it would be a round trip to zarr's event loop and from there to a thread of its own
    (about 1 ms of interpreter time per object, thousands of shards and documents per run)."""
    root = _local_root(store)
    if root is not None:
        try:
            with open(os.path.join(root, key), "rb") as f:
                return np.frombuffer(f.read(), np.uint8)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None  # as zarr's LocalStore.get
    got = _sync(store.get(key, prototype=_prototype()))
    return None if got is None else got.as_numpy_array().reshape(-1).view(np.uint8)


class StoredObject:
    """An object of a store read by byte range (``read``): a file of a local directory store is
    read piece by piece (a reader of one inner chunk at a time then holds that chunk, not its
    whole shard of tens of MB); from any other store the object is fetched whole once."""

    def __init__(self, size: int, path: str | None = None, data: np.ndarray | None = None):
        self.size, self.path, self.data = size, path, data

    def read(self, offset: int, length: int) -> np.ndarray:
        """Bytes [offset, offset + length) (fewer if the object is shorter)."""
        if self.data is not None:
            return self.data[offset:offset + length]
        with open(self.path, "rb") as f:  # type: ignore[arg-type]
            return np.frombuffer(os.pread(f.fileno(), length, offset), np.uint8)


SMALL_OBJECT = 1 << 20  # a local object this small is read whole when opened


def store_open(store, key: str) -> StoredObject | None:
    """The object under ``key``, to be read by byte range, or None when there is no such object.
    A small local one (every small file's and small column's shard) is read at once: one open,
    where reading its index and then its chunk would open it twice more."""
    root = _local_root(store)
    if root is not None:
        path = os.path.join(root, key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size <= SMALL_OBJECT:
                    whole = np.frombuffer(f.read(), np.uint8)
                    return StoredObject(len(whole), data=whole)
                return StoredObject(size, path=path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None  # as zarr's LocalStore.get
    data = store_get(store, key)
    return None if data is None else StoredObject(len(data), data=data)


def is_local_directory(store) -> bool:
    """Whether objects of ``store`` are files this package writes itself (a local directory
    store opened for writing, possibly behind a wrapper that notes what is stored)."""
    return _direct_target(store) is not None


def _direct_target(store) -> tuple[str, Any] | None:
    """(directory, note) for a store whose objects are written here: a LocalStore opened for
    writing, or a wrapper of one that is told of each object stored past it (``note_stored``,
    the zarr writer's resume recorder); None for any other store (written through zarr)."""
    if isinstance(store, LocalDirectory):
        return None  # read-only
    from zarr.storage import LocalStore

    note = None
    inner = getattr(store, "_store", None)
    if type(store) is not LocalStore and inner is not None and hasattr(store, "note_stored"):
        store, note = inner, store.note_stored
    if type(store) is not LocalStore or store.read_only:
        return None
    return str(store.root), note


def _local_root(store) -> str | None:
    """The directory of a LocalDirectory, or of a zarr LocalStore (exactly that class: a
    subclass may read otherwise). A store is a zarr one only once zarr is imported."""
    if isinstance(store, LocalDirectory):
        return store.root
    storage = sys.modules.get("zarr.storage")
    return str(store.root) if storage is not None and type(store) is storage.LocalStore else None


def store_exists(store, key: str) -> bool:
    return bool(_sync(store.exists(key)))


def stored_bytes(store, prefix: str) -> int:
    """Bytes of the objects below ``prefix``."""
    return int(_sync(store.getsize_prefix(prefix)))
