"""The zarr form: one zarr v3 store (a directory, a zip file or an object-store prefix).

Casacore tables become zarr groups of columns (``ms.casacore_table``), so a Measurement Set can be
read with plain zarr or xarray; every other file is a compressed 1-D ``uint8`` array; the manifest
is the array ``manifest.json`` at the root, written last. ``formats/zarr.md`` specifies the layout;
``layout`` names it, ``stores`` opens the three kinds of store, ``writer`` and ``reader`` use them.
"""

from .layout import archive_path_of, node_component, node_path
from .reader import ZarrReader
from .writer import ZarrWriter, attached_writer, close_object_store, open_object_store

__all__ = ["ZarrReader", "ZarrWriter", "archive_path_of", "attached_writer", "close_object_store",
           "node_component", "node_path", "open_object_store"]
