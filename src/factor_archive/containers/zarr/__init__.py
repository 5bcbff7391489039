"""The zarr form: one zarr v3 store (a directory, a zip file or an object-store prefix).

Casacore tables become zarr groups of columns (``ms.casacore_table``), so a Measurement Set can be
read with plain zarr or xarray; every other file is a compressed 1-D ``uint8`` array; the manifest
is the array ``manifest.json`` at the root, written last. ``formats/zarr.md`` specifies the layout;
``layout`` names it, ``stores`` opens the three kinds of store, ``writer`` and ``reader`` use them,
``decoders`` starts the restore's table decoders.

Nothing is imported until it is asked for (zarr takes about 0.4 s to import): a restore starts
its table decoders (``decoders``) before it opens the store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .layout import archive_path_of, node_component, node_path
    from .reader import ZarrReader
    from .writer import ZarrWriter, attached_writer, close_object_store, open_object_store

_EXPORTS = {"archive_path_of": "layout", "node_component": "layout", "node_path": "layout",
            "ZarrReader": "reader", "ZarrWriter": "writer", "attached_writer": "writer",
            "close_object_store": "writer", "open_object_store": "writer"}

__all__ = ["ZarrReader", "ZarrWriter", "archive_path_of", "attached_writer", "close_object_store",
           "node_component", "node_path", "open_object_store"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
