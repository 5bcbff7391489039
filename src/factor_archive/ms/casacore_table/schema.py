"""The table schema: what a table group says about a table and each of its columns.

Encoding fills a :class:`_Plan` (the table) and its :class:`_Col` entries (the columns) from
casacore; their ``static()`` is the group's ``casacore_table`` attribute. Decoding and verifying
parse that attribute back (``_static``), and name the nodes with the same helpers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .common import _CTYPES, _RESERVED, ATTR, FORMAT, FORMAT_VERSION, READ_VERSIONS, CorruptTableData
from .content_hash import _hash_header

_CHAN_CORR = {"DATA", "MODEL_DATA", "CORRECTED_DATA", "FLAG", "WEIGHT_SPECTRUM", "SIGMA_SPECTRUM",
              "FLOAT_DATA", "CORRECTED_WEIGHT_SPECTRUM", "LAG_DATA", "IMAGING_WEIGHT"}


_KNOWN_DIMS = {("UVW", 1): ("uvw",), ("WEIGHT", 1): ("corr",), ("SIGMA", 1): ("corr",),
               ("FLAG_CATEGORY", 3): ("flagcat", "chan", "corr"), ("CHAN_FREQ", 1): ("chan",),
               ("CHAN_WIDTH", 1): ("chan",), ("EFFECTIVE_BW", 1): ("chan",),
               ("RESOLUTION", 1): ("chan",)}


@dataclass
class _Col:
    name: str
    ctype: str
    dtype: np.dtype | None
    layout: str  # scalar | fixed | shaped | ragged | record
    node: str = ""  # its node in the table group: the array, or the group of a shaped/ragged column
    cell_shape: tuple = ()
    max_ndim: int = 0
    total: int = 0
    max_cell: int = 0
    shapes: list = field(default_factory=list)  # distinct cell shapes, first seen first
    counts: list = field(default_factory=list)  # cells of each of those shapes
    runs: int = 0  # runs of rows of one shape (or undefined) up to the last defined cell
    defined_runs: list | None = None  # [(shape, cells)] of the defined cells in row order
    first_run: tuple = (0, 0)  # (first row, rows) of the first run of defined cells
    per_cell: bool = False  # read and written cell by cell (TiledCellStMan, see _getcol)
    dims: tuple = ()
    block_rows: int = 1
    chunk_rows: int = 1
    codec: str = "zstd"
    choice: Any = None  # while planning: finish(tb, path) -> codec

    @property
    def is_string(self) -> bool:
        """Stored as zarr strings (string columns, and record columns as tagged JSON)."""
        return self.dtype is None

    @property
    def itemsize(self) -> int:
        return 32 if self.dtype is None else self.dtype.itemsize

    def static(self, desc: dict, keywords: dict) -> dict:
        out = {"name": self.name, "type": self.ctype, "layout": self.layout, "node": self.node,
               "cell_shape": list(self.cell_shape), "max_ndim": self.max_ndim, "dims": list(self.dims),
               "block_rows": self.block_rows, "codec": self.codec, "desc": desc, "keywords": keywords}
        if self.layout == "shaped":
            out["shapes"] = [list(s) for s in self.shapes]
            out["counts"] = list(self.counts)
        return out


@dataclass
class _Plan:
    path: Path
    nrows: int
    endian: str
    info: dict
    desc: dict  # column -> jsonable desc without keywords
    hypercolumns: Any
    private_keywords: dict
    dminfo: list
    keywords: dict
    colkeywords: dict
    columns: list
    subtables: list  # [(name, referenced)]
    children: dict = field(default_factory=dict)

    def static(self) -> dict:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "nrows": self.nrows, "endian": self.endian,
            "info": self.info, "hypercolumns": self.hypercolumns,
            "private_keywords": self.private_keywords, "dminfo": self.dminfo,
            "keywords": self.keywords,
            "subtables": [{"name": n, "group": f"subtables/{n}", "referenced": r}
                          for n, r in self.subtables],
            "columns": [c.static(self.desc[c.name], self.colkeywords[c.name]) for c in self.columns],
        }

    def hash_header(self) -> dict:
        return _hash_header(self.nrows, self.info, self.desc, self.keywords, self.colkeywords)


def _column_node(name: str) -> str:
    """The zarr node name of a column: its name, with ``%`` and ``/`` percent-encoded and a name
    the table group uses itself (``ragged``, ``shaped``, ``subtables``, ``zarr.json``), one that
    starts with ``__`` (reserved by zarr) or ``.``/``..`` getting its first character encoded."""
    node = name.replace("%", "%25").replace("/", "%2F")
    if node in _RESERVED or node.startswith("__") or node in (".", ".."):
        node = f"%{ord(node[0]):02X}{node[1:]}"
    return node


def _axis_names(name: str, cell_shape: tuple, sizes: dict) -> tuple:
    """Dimension names of a column's cell axes: the Measurement Set's shared ones where they
    apply (and agree with ``sizes``, which they then extend), else ``<COL>_<i>``."""
    nd = len(cell_shape)
    named = _KNOWN_DIMS.get((name, nd))
    if named is None and nd == 2 and name in _CHAN_CORR:
        named = ("chan", "corr")
    if named is not None and all(sizes.get(d, s) == s for d, s in zip(named, cell_shape)):
        for d, s in zip(named, cell_shape):
            sizes[d] = s
        return tuple(named)
    return tuple(f"{name}_{i}" for i in range(nd))


def _assign_dims(cols: list[_Col]) -> None:
    sizes: dict[str, int] = {}
    for c in cols:
        if c.layout in ("scalar", "fixed", "record"):
            c.dims = ("row",) + _axis_names(c.name, c.cell_shape, sizes)


def _shape_name(shape) -> str:
    """The group name of a cell shape in a shaped column: ``64x4`` (numpy order)."""
    return "x".join(str(int(x)) for x in shape) if len(shape) else "0d"


def _shaped_leaf(node: str) -> str:
    """Name of a shaped column's cell array in each shape group (``row`` is the row numbers)."""
    leaf = node.split("/", 1)[1]
    return "%72ow" if leaf == "row" else leaf


def _static(group: zarr.Group) -> dict:
    st = group.attrs.get(ATTR)
    if not isinstance(st, dict) or st.get("format") != FORMAT:
        raise CorruptTableData(f"zarr group {group.path!r} holds no complete casacore table")
    if st.get("version") not in READ_VERSIONS:
        raise CorruptTableData(f"zarr group {group.path!r}: unsupported table format version "
                               f"{st.get('version')}")
    return st


def _column_bytes(nrows: int, c: dict) -> int:
    """Bytes of a stored numeric column (0 for strings, records and ragged columns)."""
    dt = _CTYPES.get(c["type"])
    if c["layout"] in ("ragged", "record") or dt is None:
        return 0
    if c["layout"] == "shaped":
        return dt.itemsize * sum(int(n) * int(np.prod(s, dtype=np.int64))
                                 for s, n in zip(c.get("shapes", []), c.get("counts", [])))
    return nrows * dt.itemsize * int(np.prod(c["cell_shape"], dtype=np.int64))


def _column_node_of(c: dict) -> str:
    """Where a stored column is (version 1 tables name no node: the column name)."""
    node = c.get("node")
    if isinstance(node, str) and node:
        return node
    return f"ragged/{c['name']}" if c["layout"] == "ragged" else c["name"]

