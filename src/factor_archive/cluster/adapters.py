"""The one module through which the cluster engine reaches the table codec and the zarr writer.

Issue 9 is moving both (``ms/table_codec.py`` becomes the package ``ms/casacore_table``;
``containers/zarr_store.py`` becomes ``containers/zarr/``). Everything the engine needs from them
is imported or wrapped here, so that move is an edit of this file only.

What the merge should expose publicly, replacing the private calls below (TODO(issue 9)):

- ``ZarrWriter.group_for(member_path: str) -> zarr.Group``: create (once) the group a member's
  node sits in (today ``ZarrWriter._group(parent_of(node_path(path)))``);
- ``ZarrWriter.publish_groups() -> None``: make the groups made so far visible to other
  processes (an object store's write-behind queue flushed; today ``_sync(writer.store.flush())``);
- ``ZarrWriter.target -> (location, storage_options)``: where other processes write members:
  the partial directory (today ``writer.tmp``) or the URL and fsspec options (``writer.loc``);
- ``write_member(store, member: Member, source: Path, progress) -> Member`` in
  ``containers/zarr/writer.py``: store one member below an existing store's ``members`` group
  without owning the store (today a ``ZarrWriter`` attached by :func:`attached_writer`), and
  ``open_member_store(location, storage_options, existing_groups) -> store`` for it;
- ``remove_node(store, node: str) -> None``: delete a node and everything below it.
"""

from __future__ import annotations

import atexit
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..containers import zarr_store
from ..containers.base import sync_filesystem
from ..containers.zarr_store import ZarrWriter, node_path
from ..errors import BadInput
from ..manifest import Member
from ..ms.table_codec import (  # noqa: F401  (re-exported: the codec's entry points, one place)
    RawTableRequired,
    decode_table,
    encode_table,
    run_in_worker,
    table_content_sha256,
    verify_table,
    worker_session,
)
from .tasks import StoreTarget


def parent_node(member_path: str) -> str:
    """The zarr path of the group a member's node sits in (``members/...``)."""
    return node_path(member_path).rsplit("/", 1)[0]


# ---------------------------------------------------------------------------------------------
# Client side: the client's ZarrWriter owns the store; workers write members into it.

def prepare_target(writer: ZarrWriter, members: list[Member]) -> StoreTarget:
    """Create every group the members' nodes sit in, make them visible to the workers, and
    describe the store for them. Members are then written by workers, the manifest by
    ``writer.close`` on the client."""
    if writer.loc.kind == "zip":
        raise BadInput(f"{writer.loc.text}: a zip store cannot be written by several processes; "
                       f"archive to a directory (.zarr) or an object store (s3://) on a cluster")
    for member in members:
        writer._group(parent_node(member.path))  # TODO(issue 9): ZarrWriter.group_for
    if writer.loc.kind == "url":
        zarr_store._sync(writer.store.flush())  # TODO(issue 9): ZarrWriter.publish_groups
        return StoreTarget(writer.loc.url, dict(writer.loc.options))
    return StoreTarget(str(writer.tmp))  # TODO(issue 9): ZarrWriter.target


# ---------------------------------------------------------------------------------------------
# Worker side: a ZarrWriter attached to a store another process created.

@contextmanager
def attached_writer(target: StoreTarget, member_path: str) -> Iterator[ZarrWriter]:
    """A writer for one member of the store at ``target``: its parent group exists (the client
    made it); the member's node is removed first, so a retried task starts from nothing.

    TODO(issue 9): replace by ``write_member`` / ``open_member_store`` / ``remove_node`` (above);
    this sets exactly the attributes ``ZarrWriter.write`` uses.
    """
    import zarr

    writer = ZarrWriter.__new__(ZarrWriter)
    writer.loc = zarr_store._Location(target.location)
    writer.clobber = False
    writer._staging = None
    writer._groups = {}
    writer._groups_lock = threading.Lock()
    writer._closed = True                # abort() must never remove the shared store
    writer.notices = []
    writer._hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="factor-archive-hash")
    node, parent = node_path(member_path), parent_node(member_path)
    base = None
    try:
        try:
            store, base = _open_member_store(writer, target, parent)
            writer.store = store
            writer._groups[parent] = zarr.open_group(store, path=parent, mode="r+")
            _remove_node(writer, base, node)
        except Exception as exc:
            raise writer._failure(exc, target.location) from None
        yield writer
        try:
            if writer.loc.kind == "url":
                zarr_store._sync(store.flush())      # every object stored before the task succeeds
            else:
                sync_filesystem(Path(target.location))   # durable before the client writes the manifest
        except Exception as exc:
            raise writer._failure(exc, target.location) from None
    except BaseException:
        if writer.loc.kind == "url" and base is not None and getattr(writer, "store", None) is not None:
            try:
                zarr_store._sync(writer.store.cancel())
            except Exception:
                pass
        raise
    finally:
        writer._hash_pool.shutdown(wait=True)


def _open_member_store(writer: ZarrWriter, target: StoreTarget, parent: str):
    """(store, object-store base or None) for writing members below the existing ``parent``."""
    if writer.loc.kind == "url":
        writer.loc.options = {**writer.loc.options, **target.storage_options}
        base = _url_store(writer.loc)
        store = zarr_store._fresh_store_class()(base)
        # The write-behind store answers reads from what it wrote; the client wrote the root and
        # the parent groups: those are read from the object store.
        parts = parent.split("/")
        store._known.update({f"{'/'.join(parts[:i])}/zarr.json".lstrip("/"): None
                             for i in range(len(parts) + 1)})
        return store, base
    from zarr.storage import LocalStore

    root = Path(target.location)
    if not (root / "zarr.json").is_file():
        raise BadInput(f"{root}: the store being written is not there (is the file system shared "
                       f"with the client, at the same path?)")
    return LocalStore(root), None


_URL_STORES: dict[tuple[str, str], Any] = {}
_URL_STORES_LOCK = threading.Lock()


def _url_store(loc) -> Any:
    """The object store at ``loc``, opened once per worker process: opening one makes a botocore
    session and client, which took most of a small member's task time when done per task."""
    key = (loc.url, json.dumps(loc.options, sort_keys=True, default=str))
    with _URL_STORES_LOCK:
        store = _URL_STORES.get(key)
        if store is None:
            if not _URL_STORES:
                atexit.register(_close_url_stores)
            store = _URL_STORES[key] = loc.open_url_store(read_only=False)
        return store


def _close_url_stores() -> None:
    """At the worker's exit: close the object-store sessions (aiohttp complains otherwise)."""
    with _URL_STORES_LOCK:
        for store in _URL_STORES.values():
            zarr_store._close_url_store(store)
        _URL_STORES.clear()


def _remove_node(writer: ZarrWriter, base, node: str) -> None:
    """Remove what an earlier attempt at this member wrote (its worker died)."""
    if base is not None:
        zarr_store._remove_objects(base.fs, f"{base.path}/{node}")
    else:
        zarr_store._remove(Path(writer.loc.text) / node)
