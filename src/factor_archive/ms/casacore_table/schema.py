"""The table schema: what a table group says about a table and each of its columns.

Encoding fills a :class:`TableSchema` (the table) and its :class:`ColumnSchema` entries (the
columns) from casacore; their ``static()`` is the group's ``casacore_table`` attribute.
Decoding and verifying parse that attribute back into the same classes (``from_static``),
checking its structure first: archives can be hostile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import _CTYPES, _RESERVED, ATTR, FORMAT, FORMAT_VERSION, READ_VERSIONS, CorruptTableData
from .content_hash import _hash_header

if TYPE_CHECKING:
    import zarr

    from .local_store import LocalGroup

_CHAN_CORR = {"DATA", "MODEL_DATA", "CORRECTED_DATA", "FLAG", "WEIGHT_SPECTRUM", "SIGMA_SPECTRUM",
              "FLOAT_DATA", "CORRECTED_WEIGHT_SPECTRUM", "LAG_DATA", "IMAGING_WEIGHT"}


_KNOWN_DIMS = {("UVW", 1): ("uvw",), ("WEIGHT", 1): ("corr",), ("SIGMA", 1): ("corr",),
               ("FLAG_CATEGORY", 3): ("flagcat", "chan", "corr"), ("CHAN_FREQ", 1): ("chan",),
               ("CHAN_WIDTH", 1): ("chan",), ("EFFECTIVE_BW", 1): ("chan",),
               ("RESOLUTION", 1): ("chan",)}


@dataclass
class ColumnSchema:
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
    problem: str | None = None  # read from a table group: why the column cannot be read

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

    def numeric_bytes(self, nrows: int) -> int:
        """Bytes of the column's values when numeric and not ragged (what a casacore worker
        moves through shared memory); 0 for strings, records and ragged columns."""
        if self.dtype is None or self.layout in ("ragged", "record"):
            return 0
        if self.layout == "shaped":
            return self.dtype.itemsize * sum(n * math.prod(s)
                                             for s, n in zip(self.shapes, self.counts))
        return nrows * self.dtype.itemsize * math.prod(self.cell_shape)

    @classmethod
    def from_static(cls, c: dict, version: int) -> ColumnSchema:
        """A column entry of a stored ``casacore_table``, checked: a column that cannot be read
        has ``problem`` set (the rest of the table may still be verified)."""
        name = c.get("name") if isinstance(c, dict) else None
        if not isinstance(name, str):
            raise ValueError(f"column entry {_short(c)} has no name")
        ctype, layout = c.get("type"), c.get("layout")
        if ctype not in _CTYPES or layout not in LAYOUTS:
            return cls(name=name, ctype=str(ctype), dtype=None, layout=str(layout),
                       problem=f"stored column of type {ctype!r}, layout {layout!r} is not readable")
        col = cls(name=name, ctype=ctype, dtype=_CTYPES[ctype], layout=layout)
        try:
            node = c.get("node")
            if version >= 2 or node is not None:
                if not isinstance(node, str) or not node:
                    raise ValueError(f"node {_short(node)}")
                col.node = node
            else:  # version 1 names no node: the column name
                col.node = f"ragged/{name}" if layout == "ragged" else name
            col.max_ndim = _count(c.get("max_ndim", 0), "max_ndim")
            col.block_rows = max(1, _count(c.get("block_rows", 1), "block_rows"))
            col.cell_shape = tuple(_count(x, "cell_shape") for x in _list(c.get("cell_shape", []), "cell_shape"))
            col.codec = str(c.get("codec", ""))
            col.dims = tuple(str(d) for d in _list(c.get("dims", []), "dims"))
        except (TypeError, ValueError) as e:
            col.problem = f"stored column description is unreadable ({e})"
            return col
        if layout == "shaped":
            try:
                col.shapes = [tuple(_count(x, "shape") for x in _list(s, "shape"))
                              for s in _list(c["shapes"], "shapes")]
                col.counts = [_count(n, "count") for n in _list(c["counts"], "counts")]
                if len(col.shapes) != len(col.counts) or min(col.counts, default=1) < 1:
                    raise ValueError("shapes and counts do not match")
            except (KeyError, TypeError, ValueError) as e:
                col.problem = f"stored shapes are unreadable ({e})"
        return col


@dataclass
class TableSchema:
    path: Path | None  # the table encoded; None when read from a table group
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
    version: int = FORMAT_VERSION
    groups: dict = field(default_factory=dict)  # read from a table group: subtable -> its node

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

    def numeric_bytes(self) -> int:
        """Bytes of the table's numeric columns (what a casacore worker would move)."""
        return sum(c.numeric_bytes(self.nrows) for c in self.columns)

    def data_manager_types(self) -> dict[str, str]:
        """Column -> type of the data manager that stores it."""
        return {c: dm.get("TYPE") for dm in self.dminfo for c in dm.get("COLUMNS", [])}

    @classmethod
    def from_static(cls, st: dict, where: str) -> TableSchema:
        """The schema a stored ``casacore_table`` document describes, checked before anything
        uses it: CorruptTableData (one line naming the table) when its structure is not that of
        the format. A column that cannot be read keeps its ``problem``."""
        try:
            version = st["version"]
            nrows = _count(st["nrows"], "nrows")
            endian = st["endian"]
            if endian not in ("little", "big"):
                raise ValueError(f"endian {_short(endian)}")
            columns = [ColumnSchema.from_static(c, version) for c in _list(st["columns"], "columns")]
            names = [c.name for c in columns]
            if len(set(names)) != len(names):
                raise ValueError("a column is described twice")
            stored = {c["name"]: c for c in st["columns"]}
            desc = {n: _dict(stored[n].get("desc"), f"desc of {n}") for n in names}
            colkeywords = {n: _record(stored[n].get("keywords"), f"keywords of {n}") for n in names}
            subtables, groups = [], {}
            for sub in _list(st["subtables"], "subtables"):
                name, node = _dict(sub, "subtable").get("name"), sub.get("group")
                if not isinstance(name, str) or not name or not isinstance(node, str) or name in groups:
                    raise ValueError(f"subtable entry {_short(sub)}")
                subtables.append((name, bool(sub.get("referenced"))))
                groups[name] = node
            dminfo = _list(st["dminfo"], "dminfo")
            for dm in dminfo:
                _list(_dict(dm, "data manager").get("COLUMNS", []), "data manager columns")
            schema = cls(path=None, nrows=nrows, endian=endian, info=_dict(st["info"], "info"), desc=desc,
                         hypercolumns=_dict(st.get("hypercolumns") or {}, "hypercolumns"),
                         private_keywords=_dict(st.get("private_keywords") or {}, "private_keywords"),
                         dminfo=dminfo, keywords=_record(st["keywords"], "keywords"), colkeywords=colkeywords,
                         columns=columns, subtables=subtables, version=version, groups=groups)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CorruptTableData(f"{where}: stored table description is unreadable ({_why(e)})") from None
        return schema


LAYOUTS = ("scalar", "fixed", "shaped", "ragged", "record")


def _why(e: BaseException) -> str:
    return f"no {e.args[0]!r}" if isinstance(e, KeyError) else str(e)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _count(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{what} {_short(v)} is not a count")
    return v


def _list(v: Any, what: str) -> list:
    if not isinstance(v, list):
        raise ValueError(f"{what} is not a list")
    return v


def _dict(v: Any, what: str) -> dict:
    if not isinstance(v, dict):
        raise ValueError(f"{what} is not an object")
    return v


def _record(v: Any, what: str) -> dict:
    """A tagged record (keywords): its fields are checked when they are decoded."""
    if not isinstance(v, dict) or v.get("type") != "Record" or not isinstance(v.get("fields"), list):
        raise ValueError(f"{what} is not a tagged record")
    return v


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


def _assign_dims(cols: list[ColumnSchema]) -> None:
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


def _static(group: zarr.Group | LocalGroup) -> dict:
    """The stored ``casacore_table`` document of a table group, as stored (the metadata
    checksum is over exactly this); CorruptTableData when there is none of a version we read."""
    st = group.attrs.get(ATTR)
    if not isinstance(st, dict) or st.get("format") != FORMAT:
        raise CorruptTableData(f"zarr group {group.path!r} holds no complete casacore table")
    if st.get("version") not in READ_VERSIONS:
        raise CorruptTableData(f"zarr group {group.path!r}: unsupported table format version "
                               f"{st.get('version')}")
    return st

