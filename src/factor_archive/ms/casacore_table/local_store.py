"""A zarr v3 store in a local directory, read without zarr: its groups from their ``zarr.json``
documents, its arrays in the codec's layout by shards.py itself.

Importing zarr costs about 0.3 s of CPU. A restore spends that in the restoring process and in
each casacore worker decoding its tables, on the cores the tables are decoded on, before the
first table starts (benchmarks/README.md, seventh session). What decoding a table reads from a
group is small: its attributes, its child groups, and arrays that shards.py reads from their
documents (``_stored_array``). Only an array in another layout is opened through zarr, which is
then imported.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


class LocalDirectory:
    """The store: a directory (zarr_internals reads its objects as files)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = os.fspath(root)

    def close(self) -> None:
        pass

    def zarr_store(self):
        """zarr's own view of the directory, read-only (for an array read through zarr)."""
        from zarr.storage import LocalStore

        return LocalStore(self.root, read_only=True)


class LocalGroup:
    """A group of a LocalDirectory: the parts of ``zarr.Group`` that reading a table uses
    (``store``, ``path``, ``attrs``, ``group[name]``, ``group.get(name)``)."""

    def __init__(self, store: LocalDirectory, path: str, attrs: dict):
        self.store, self.path, self.attrs = store, path, attrs

    def __getitem__(self, name: str) -> Any:
        path = f"{self.path}/{name}" if self.path else name
        doc = read_document(self.store, path)
        if doc is None:
            raise KeyError(name)
        if doc.get("node_type") == "group":
            return LocalGroup(self.store, path, _attributes(doc, path))
        import zarr

        return zarr.open_array(self.store.zarr_store(), path=path, mode="r", zarr_format=3)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __repr__(self) -> str:
        return f"<LocalGroup {self.store.root}:{self.path or '/'}>"


def open_group(root: str | os.PathLike[str]) -> LocalGroup:
    """The root group of the store in directory ``root``; FileNotFoundError when it has no
    ``zarr.json``, ValueError when that is not a zarr v3 group's document."""
    store = LocalDirectory(root)
    doc = read_document(store, "")
    if doc is None:
        raise FileNotFoundError(os.path.join(store.root, "zarr.json"))
    if doc.get("node_type") != "group":
        raise ValueError("the root node is not a group")
    return LocalGroup(store, "", _attributes(doc, ""))


def read_document(store: LocalDirectory, path: str) -> dict | None:
    """The ``zarr.json`` of the node at ``path`` (None when there is none), checked to be a zarr
    v3 node's document; ValueError otherwise. Paths come from the archive: none leaves the store."""
    parts = path.split("/") if path else []
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise ValueError(f"bad node path {path!r}")
    try:
        with open(os.path.join(store.root, *parts, "zarr.json"), "rb") as f:
            raw = f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ValueError(f"{path or '/'}: zarr.json is not JSON") from None
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") not in ("group", "array"):
        raise ValueError(f"{path or '/'}: zarr.json is not a zarr v3 node's document")
    return doc


def _attributes(doc: dict, path: str) -> dict:
    attrs = doc.get("attributes", {})
    if not isinstance(attrs, dict):
        raise ValueError(f"{path or '/'}: zarr.json attributes are not a mapping")
    return attrs


def is_group(node: Any) -> bool:
    """Whether ``node`` is a group: a LocalGroup, or a zarr Group (zarr is imported by then)."""
    if isinstance(node, LocalGroup):
        return True
    zarr = sys.modules.get("zarr")
    return zarr is not None and isinstance(node, zarr.Group)
