"""Store a casacore table (with its subtables) in a zarr v3 group and restore it bit for bit.

Format ``factor-archive/casacore-table`` version 1
=================================================

One casacore table is one zarr v3 group (the *table group*)::

    <table group>/                      attrs: "casacore_table" (static), and on the group that
                                        was handed to encode_table also "casacore_content"
      <COL>                             scalar or fixed-shape column: one array
      ragged/<COL>/defined              bool (nrows,): cell is defined
      ragged/<COL>/ndim                 int32 (nrows,): cell ndim, 0 where undefined
      ragged/<COL>/shape                int64 (nrows, max_ndim): cell shape, zero padded
      ragged/<COL>/values               (total,): every defined cell flattened, in row order
      subtables/<NAME>/                 a table group (same layout, recursively)

Arrays
  ``<COL>`` has shape ``(nrows, *cell_shape)`` (numpy axis order, i.e. casacore's reversed)
  and ``dimension_names`` ``("row", ...)``; well-known Measurement Set columns get shared names
  (DATA/FLAG/WEIGHT_SPECTRUM/...: ``("row", "chan", "corr")``, UVW: ``("row", "uvw")``,
  WEIGHT/SIGMA: ``("row", "corr")``), every other axis ``<COL>_<i>``, so
  ``xarray.open_zarr(store, group=...)`` gives a Dataset of the uniform columns. A column is
  *ragged* when some cell is undefined or cell shapes differ; xarray does not see those.
  Values are stored in their casacore type: bool, uint8 (uChar), int16, int32, uint32, int64,
  float32, float64, complex64, complex128 (native zarr complex), or zarr's variable-length
  UTF-8 ``string``. ``ragged/<COL>/values`` holds the cells one after another, each in C order
  of its numpy shape, so cell *i* is the slice after the cells of the defined rows before it.
  Every array is sharded along its first axis (``shards=``; inner chunks of ~2 MiB, shards of
  ~64 MiB or ``row_block`` rows) with ``write_empty_chunks`` so a missing shard is an error,
  and each inner chunk ends in a crc32c checksum. Array attribute ``codec`` names the pipeline:

  ``blosc-shuffle-zstd`` / ``blosc-bitshuffle-zstd``
      blosc (zstd level 5) with byte/bit shuffle; ``typesize`` is the size of one real
      component, so complex values shuffle as float pairs
  ``packbits-zstd``   numcodecs packbits then zstd (bool)
  ``delta-zstd``      numcodecs delta then zstd (integers; float64 scalars only when
                      delta decoding was verified bit-exact on every chunk)
  ``zstd``            zstd level 5 (strings, auxiliary arrays)

  Per column the candidates for its type are tried on the first chunk and the smallest wins;
  the numcodecs ones (not in the zarr v3 spec) are only tried on a chunk of 64 KiB or more and
  must beat the best spec codec by 10 %.

``casacore_table`` attribute (JSON)
  ``format``, ``version``, ``nrows``, ``endian`` ("little"/"big"), ``info`` (the table.info
  record: type, subType, readme), ``hypercolumns`` (``_define_hypercolumn_``), ``dminfo``
  (list of the data-manager records, SPEC included, so tile shapes are recreated),
  ``keywords`` (tagged record, below), ``subtables`` (list of ``{"name", "group",
  "referenced"}``; ``name`` is the directory inside the table) and ``columns``: a list in table
  order of ``{"name", "type" (casacore data type), "layout" ("scalar"|"fixed"|"ragged"),
  "cell_shape", "max_ndim", "dims", "block_rows", "codec", "desc" (column description without
  keywords), "keywords" (tagged record)}``. Numpy arrays inside ``desc``/``dminfo``/
  ``hypercolumns`` are ``{"__ndarray__": [...], "dtype": "<i4"}``.

Tagged keyword values keep the exact casacore type: ``{"type": T, "value": v}`` for scalars
(T one of Bool, Short, Int, uInt, Int64, Float, Double, Complex ([re, im]), DComplex,
String; a float that is not finite is ``{"bits": "<hex of the float64>"}``),
``{"type": "Table", "value": NAME}`` for a subtable (NAME relative to the table directory),
``{"type": "<T> array", "shape": [...], "data": base64}`` (little endian, C order) or for
strings ``{"type": "String array", "shape": [...], "value": [...]}``, and
``{"type": "Record", "fields": [[name, tagged], ...]}``.

``casacore_content`` (written last; its absence means the encoding did not finish)
  ``{"content_sha256", "columns": {COL: sha256}, "subtables": {NAME: {...same...}}}``.

Content checksum (``table_content_sha256``), version 1
  Per column, two sha256 streams over rows in order: *shapes* (array columns only; per row
  int64 LE ``[ndim or -1 if undefined, dims zero-padded to the column's max ndim]``) and
  *values* (each defined cell's values in C order, little endian; bool as one byte; strings as
  uint32 LE byte length + UTF-8). Column digest = sha256(canonical JSON ``{"name", "type",
  "scalar"}`` + "\\n" + shapes digest + values digest). Table checksum = sha256 of
  ``"factor-archive casacore-table content v1\\n"``, canonical JSON of ``{"nrows", "info",
  "columns": {COL: desc without dataManagerType/dataManagerGroup/keywords}, "keywords",
  "column_keywords"}`` + "\\n", then ``"column\\t<COL>\\t<digest>\\n"`` for columns sorted by
  name and ``"subtable\\t<NAME>\\t<checksum>\\n"`` for subtables sorted by name. Canonical JSON
  is ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``. It does not
  depend on storage managers, file layout or location, so original and restored tables agree.

Tables that cannot be restored exactly this way (data managers other than the standard
storage managers, Dysco included; reference/concatenated tables; keywords of a type python-
casacore cannot write; subtables outside the table; unknown files in the table directory;
unreadable columns) raise :class:`RawTableRequired` before anything is decoded partially.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import shutil
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr
from zarr import codecs as zc

from ..errors import FactorArchiveError

__all__ = ["encode_table", "decode_table", "table_content_sha256", "RawTableRequired",
           "CorruptTableData", "FORMAT", "FORMAT_VERSION"]

FORMAT = "factor-archive/casacore-table"
FORMAT_VERSION = 1
ATTR = "casacore_table"
CONTENT_ATTR = "casacore_content"
CHUNK_BYTES = 2 << 20
SHARD_BYTES = 64 << 20
LEVEL = 5
_NUMCODECS_MARGIN = 0.9  # a numcodecs pipeline must be 10 % smaller than the best spec one
_NUMCODECS_MIN_SAMPLE = 64 << 10  # ... and is not considered for smaller columns
_RESERVED = {"ragged", "subtables"}
_HASH_MAGIC = b"factor-archive casacore-table content v1\n"

# Storage managers whose SPEC recreates them and whose values python-casacore reads/writes as is.
_SAFE_DM = {"StandardStMan", "IncrementalStMan", "StManAipsIO", "TiledColumnStMan",
            "TiledShapeStMan", "TiledCellStMan"}

_CTYPES = {
    "boolean": np.dtype(bool), "uchar": np.dtype(np.uint8), "short": np.dtype(np.int16),
    "int": np.dtype(np.int32), "uint": np.dtype(np.uint32), "int64": np.dtype(np.int64),
    "float": np.dtype(np.float32), "double": np.dtype(np.float64),
    "complex": np.dtype(np.complex64), "dcomplex": np.dtype(np.complex128), "string": None,
}
# Keyword types python-casacore writes with the same type (numpy scalar -> casacore type).
_KW_SCALAR = {"Bool": bool, "Short": np.int16, "Int": np.int32, "uInt": np.uint32, "Int64": int,
              "Float": np.float32, "Double": float, "Complex": np.complex64, "DComplex": complex,
              "String": str}
_KW_ARRAY = {"Bool": np.dtype(bool), "Short": np.dtype(np.int16), "Int": np.dtype(np.int32),
             "uInt": np.dtype(np.uint32), "Int64": np.dtype(np.int64),
             "Float": np.dtype(np.float32), "Double": np.dtype(np.float64),
             "Complex": np.dtype(np.complex64), "DComplex": np.dtype(np.complex128)}

_CHAN_CORR = {"DATA", "MODEL_DATA", "CORRECTED_DATA", "FLAG", "WEIGHT_SPECTRUM", "SIGMA_SPECTRUM",
              "FLOAT_DATA", "CORRECTED_WEIGHT_SPECTRUM", "LAG_DATA", "IMAGING_WEIGHT"}
_KNOWN_DIMS = {("UVW", 1): ("uvw",), ("WEIGHT", 1): ("corr",), ("SIGMA", 1): ("corr",),
               ("FLAG_CATEGORY", 3): ("flagcat", "chan", "corr"), ("CHAN_FREQ", 1): ("chan",),
               ("CHAN_WIDTH", 1): ("chan",), ("EFFECTIVE_BW", 1): ("chan",),
               ("RESOLUTION", 1): ("chan",)}


class RawTableRequired(FactorArchiveError):
    """This table cannot be stored column-wise exactly: store its files byte for byte instead."""

    def __init__(self, table: str | Path, reason: str):
        super().__init__(f"{table}: {reason}")
        self.table = str(table)
        self.reason = reason


class CorruptTableData(FactorArchiveError):
    """Stored table data is missing or damaged (names the table, column and rows)."""


class _ReadFailure(Exception):
    pass


# --------------------------------------------------------------------------- helpers


def _ct():
    from casacore import tables

    return tables


def _canon(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        if o.dtype.kind not in "biuf":
            return [_jsonable(v) for v in o.tolist()]
        return {"__ndarray__": o.tolist(), "dtype": o.dtype.str}
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        raise ValueError("non-finite float in table description")
    return o


def _unjsonable(o):
    if isinstance(o, dict):
        if "__ndarray__" in o and set(o) == {"__ndarray__", "dtype"}:
            return np.array(o["__ndarray__"], dtype=np.dtype(o["dtype"]))
        return {k: _unjsonable(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_unjsonable(v) for v in o]
    return o


def _enc_float(x: float):
    x = float(x)
    if math.isfinite(x):
        return x
    return {"bits": struct.pack("<d", x).hex()}


def _dec_float(v) -> float:
    if isinstance(v, dict):
        return struct.unpack("<d", bytes.fromhex(v["bits"]))[0]
    return float(v)


def _parse_shape(s: str, cache: dict) -> tuple[int, ...]:
    r = cache.get(s)
    if r is None:
        body = s.strip()[1:-1].strip()
        r = tuple(int(x) for x in body.split(",")) if body else ()
        cache[s] = r
    return r


def _str_array(v) -> np.ndarray:
    """python-casacore string arrays come as a list (1-D) or {'shape', 'array'} (C order)."""
    if isinstance(v, dict):
        return np.array(list(v["array"]), dtype=object).reshape(tuple(v["shape"]))
    if isinstance(v, np.ndarray):
        return v.astype(object)
    out = np.empty(len(v), dtype=object)
    out[:] = list(v)
    return out


def _quiet_attrs_update(group: zarr.Group, attrs: dict) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Duplicate name")
        group.update_attributes(attrs)


# --------------------------------------------------------------------------- keywords


def _keyword_types(tb, path) -> tuple[dict, dict[str, dict]]:
    """Exact keyword types, which python-casacore's getkeywords loses, from TaQL SHOW."""
    ct = _ct()
    try:
        text = ct.taql("show table $1 tabkey colkey", tables=[tb])[0]
    except Exception as e:  # noqa: BLE001
        raise RawTableRequired(path, f"cannot list keyword types: {e}") from e
    lines = text.split("\n")
    try:
        start = lines.index("Keywords of main table ")
    except ValueError:
        start = 0
    lines = lines[start:]

    def section(header: str, expected: dict) -> dict:
        if not expected:
            return {}
        try:
            i = lines.index(header)
        except ValueError:
            raise RawTableRequired(path, f"cannot find keyword section {header.strip()!r}") from None
        return _parse_kw(lines, i + 1, 4, expected, path)[0]

    table_types = section("  Table Keywords", tb.getkeywords())
    col_types = {c: section(f"  Column {c}", tb.getcolkeywords(c)) for c in tb.colnames()}
    return table_types, col_types


def _parse_kw(lines, i, indent, expected: dict, path) -> tuple[dict, int]:
    types = {}
    for name, value in expected.items():
        prefix = " " * indent + name + ": "
        while i < len(lines) and not lines[i].startswith(prefix):
            i += 1
        if i == len(lines):
            raise RawTableRequired(path, f"cannot find the type of keyword {name!r}")
        rest = lines[i][len(prefix):]
        i += 1
        if rest == "{":
            if not isinstance(value, dict):
                raise RawTableRequired(path, f"keyword {name!r}: record expected")
            types[name], i = _parse_kw(lines, i, indent + 2, value, path)
            close = " " * indent + "}"
            while i < len(lines) and lines[i] != close:
                i += 1
            i += 1
        else:
            word = rest.split(" ", 1)[0]
            types[name] = word + " array" if rest.startswith(word + " array with shape") else word
    return types, i


def _node_name_ok(name: str) -> bool:
    return bool(name) and "/" not in name and not name.startswith("__") and name not in (".", "..")


class _Refs:
    """Turns 'Table: /abs/path' keyword values into subtable names relative to the table."""

    def __init__(self, table_dir: Path):
        self.base = os.path.realpath(table_dir)
        self.names: list[str] = []

    def rel(self, value: str) -> str:
        target = os.path.realpath(value[len("Table: "):])
        rel = os.path.relpath(target, self.base)
        if rel in (".", "") or rel.startswith(".."):
            raise RawTableRequired(self.base, f"keyword refers to a table outside it: {target}")
        if os.sep in rel or not _node_name_ok(rel):
            raise RawTableRequired(self.base, f"subtable {rel!r} is nested or has an awkward name")
        if rel not in self.names:
            self.names.append(rel)
        return rel


def _enc_kw(value, ktype, refs: _Refs, where: str):
    if isinstance(ktype, dict):
        if not isinstance(value, dict):
            raise RawTableRequired(refs.base, f"keyword {where}: record expected")
        return {"type": "Record",
                "fields": [[k, _enc_kw(value[k], ktype[k], refs, f"{where}.{k}")] for k in value]}
    if ktype == "Table":
        if not (isinstance(value, str) and value.startswith("Table: ")):
            raise RawTableRequired(refs.base, f"keyword {where}: table reference expected")
        return {"type": "Table", "value": refs.rel(value)}
    if ktype.endswith(" array"):
        base = ktype[:-6]
        if base == "String":
            a = _str_array(value)
            return {"type": ktype, "shape": list(a.shape), "value": [str(s) for s in a.ravel()]}
        dt = _KW_ARRAY.get(base)
        a = np.asarray(value)
        if dt is None or a.dtype != dt:
            raise RawTableRequired(refs.base, f"keyword {where} of type {ktype} cannot be restored exactly")
        data = np.ascontiguousarray(a, dtype=dt.newbyteorder("<")).tobytes()
        return {"type": ktype, "shape": list(a.shape), "data": base64.b64encode(data).decode("ascii")}
    if ktype not in _KW_SCALAR:
        raise RawTableRequired(refs.base, f"keyword {where} of type {ktype} cannot be restored exactly")
    if ktype == "String":
        if not isinstance(value, str) or value.startswith("Table: "):
            raise RawTableRequired(refs.base, f"string keyword {where} would read back as a table")
        return {"type": ktype, "value": value}
    if ktype == "Bool":
        return {"type": ktype, "value": bool(value)}
    if ktype in ("Float", "Double"):
        return {"type": ktype, "value": _enc_float(value)}
    if ktype in ("Complex", "DComplex"):
        c = complex(value)
        return {"type": ktype, "value": [_enc_float(c.real), _enc_float(c.imag)]}
    return {"type": ktype, "value": int(value)}


def _dec_kw(e: dict, tables: dict[str, str]):
    t = e["type"]
    if t == "Record":
        return {k: _dec_kw(v, tables) for k, v in e["fields"]}
    if t == "Table":
        return "Table: " + tables[e["value"]]
    if t.endswith(" array"):
        base = t[:-6]
        shape = tuple(e["shape"])
        if base == "String":
            return np.array(e["value"], dtype=str).reshape(shape)
        dt = _KW_ARRAY[base].newbyteorder("<")
        return np.frombuffer(base64.b64decode(e["data"]), dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
    v = e["value"]
    if t in ("Float", "Double"):
        return _KW_SCALAR[t](_dec_float(v))
    if t in ("Complex", "DComplex"):
        return _KW_SCALAR[t](complex(_dec_float(v[0]), _dec_float(v[1])))
    return _KW_SCALAR[t](v)


def _kw_record(values: dict, types: dict, refs: _Refs, where: str) -> dict:
    return _enc_kw(values, types, refs, where)


# --------------------------------------------------------------------------- planning


@dataclass
class _Col:
    name: str
    ctype: str
    dtype: np.dtype | None
    layout: str  # scalar | fixed | ragged
    cell_shape: tuple = ()
    max_ndim: int = 0
    total: int = 0
    max_cell: int = 0
    dims: tuple = ()
    block_rows: int = 1
    chunk_rows: int = 1
    codec: str = "zstd"

    @property
    def is_string(self) -> bool:
        return self.dtype is None

    @property
    def itemsize(self) -> int:
        return 32 if self.dtype is None else self.dtype.itemsize


@dataclass
class _Plan:
    path: Path
    nrows: int
    endian: str
    info: dict
    desc: dict  # column -> jsonable desc without keywords
    hypercolumns: Any
    dminfo: list
    keywords: dict
    colkeywords: dict
    columns: list
    subtables: list  # [(name, referenced)]
    children: dict = field(default_factory=dict)

    def static(self) -> dict:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "nrows": self.nrows, "endian": self.endian,
            "info": self.info, "hypercolumns": self.hypercolumns, "dminfo": self.dminfo,
            "keywords": self.keywords,
            "subtables": [{"name": n, "group": f"subtables/{n}", "referenced": r}
                          for n, r in self.subtables],
            "columns": [{
                "name": c.name, "type": c.ctype, "layout": c.layout,
                "cell_shape": list(c.cell_shape), "max_ndim": c.max_ndim, "dims": list(c.dims),
                "block_rows": c.block_rows, "codec": c.codec, "desc": self.desc[c.name],
                "keywords": self.colkeywords[c.name],
            } for c in self.columns],
        }

    def hash_header(self) -> dict:
        return _hash_header(self.nrows, self.info, self.desc, self.keywords, self.colkeywords)


def _hash_header(nrows, info, desc, keywords, colkeywords) -> dict:
    cols = {n: {k: v for k, v in d.items() if k not in ("dataManagerType", "dataManagerGroup")}
            for n, d in desc.items()}
    return {"nrows": nrows, "info": info, "columns": cols, "keywords": keywords,
            "column_keywords": colkeywords}


def _rows_layout(nrows: int, row_bytes: int, row_block: int | None) -> tuple[int, int]:
    """(chunk rows, shard rows); the shard is also the read/write block."""
    row_bytes = max(1, row_bytes)
    chunk = max(1, CHUNK_BYTES // row_bytes)
    if row_block:
        chunk = min(chunk, row_block)
    chunk = max(1, min(chunk, nrows))
    k = max(1, SHARD_BYTES // (chunk * row_bytes))
    if row_block:
        k = max(1, min(k, row_block // chunk))
    k = min(k, max(1, -(-nrows // chunk)))
    return chunk, chunk * k


def _is_plain(path: Path) -> bool:
    try:
        with open(path / "table.dat", "rb") as f:
            head = f.read(96)
    except OSError:
        return False
    return b"\x00\x00\x00\nPlainTable" in head


def _open(path: Path):
    ct = _ct()
    try:
        return ct.table(str(path), ack=False, lockoptions="autonoread")
    except Exception as e:  # noqa: BLE001
        raise RawTableRequired(path, f"casacore cannot open it: {e}") from e


def _plan(path: Path, row_block: int | None, *, trials: bool = True) -> _Plan:
    path = Path(path)
    if not (path / "table.dat").is_file():
        raise FileNotFoundError(f"not a casacore table: {path}")
    if not _is_plain(path):
        raise RawTableRequired(path, "not a plain table (reference or concatenated table)")
    tb = _open(path)
    try:
        return _plan_open(tb, path, row_block, trials)
    finally:
        tb.close()


def _describe(tb, path: Path) -> dict:
    """Description, keywords (exact types) and table info, in their stored JSON form."""
    desc = tb.getdesc()
    if desc.get("_private_keywords_"):
        raise RawTableRequired(path, "table has private keywords")
    colnames = list(tb.colnames())
    types, coltypes = _keyword_types(tb, path)
    refs = _Refs(path)
    keywords = _kw_record(tb.getkeywords(), types, refs, "")
    colkeywords = {c: _kw_record(tb.getcolkeywords(c), coltypes[c], refs, c) for c in colnames}
    cdesc = {}
    for c in colnames:
        d = dict(desc[c])
        d.pop("keywords", None)
        try:
            cdesc[c] = _jsonable(d)
        except ValueError as e:
            raise RawTableRequired(path, f"column {c}: {e}") from e
    return {"raw_desc": desc, "colnames": colnames, "desc": cdesc, "keywords": keywords,
            "colkeywords": colkeywords, "refs": refs, "info": _jsonable(tb.info()),
            "hypercolumns": _jsonable(desc.get("_define_hypercolumn_", {}))}


def _plan_open(tb, path: Path, row_block, trials) -> _Plan:
    dminfo = tb.getdminfo()
    dms = [dminfo[k] for k in sorted(dminfo, key=lambda k: int(k[1:]))]
    for dm in dms:
        if dm.get("TYPE") not in _SAFE_DM:
            raise RawTableRequired(path, f"data manager {dm.get('TYPE')} ({dm.get('NAME')}) for "
                                         f"columns {list(dm.get('COLUMNS', []))} is not supported")
    colnames = list(tb.colnames())
    for c in colnames:
        if c in _RESERVED or not _node_name_ok(c):
            raise RawTableRequired(path, f"column name {c!r} cannot be a zarr node name")
    d = _describe(tb, path)
    desc, refs = d["raw_desc"], d["refs"]
    referenced = list(refs.names)
    extra = []
    for entry in sorted(os.listdir(path)):
        p = path / entry
        if entry.startswith("table.") and not p.is_dir():
            continue
        if p.is_dir() and not p.is_symlink() and (p / "table.dat").is_file() and _node_name_ok(entry):
            if entry not in referenced:
                extra.append(entry)
            continue
        raise RawTableRequired(path, f"unexpected entry in the table directory: {entry}")
    for n in referenced:
        if not (path / n / "table.dat").is_file():
            raise RawTableRequired(path, f"subtable {n} is missing")
    nrows = tb.nrows()
    cols = [_plan_column(tb, path, c, nrows, desc[c], row_block, trials) for c in colnames]
    _assign_dims(cols)
    plan = _Plan(path=path, nrows=nrows, endian=tb.endianformat(), info=d["info"],
                 desc=d["desc"], hypercolumns=d["hypercolumns"], dminfo=_jsonable(dms),
                 keywords=d["keywords"], colkeywords=d["colkeywords"], columns=cols,
                 subtables=[(n, True) for n in referenced] + [(n, False) for n in extra])
    for n, _ref in plan.subtables:
        plan.children[n] = _plan(path / n, row_block, trials=trials)
    return plan


def _plan_column(tb, path, name, nrows, desc, row_block, trials) -> _Col:
    ctype = tb.coldatatype(name)
    if ctype not in _CTYPES:
        raise RawTableRequired(path, f"column {name} has unsupported type {ctype}")
    dtype = _CTYPES[ctype]
    col = _Col(name=name, ctype=ctype, dtype=dtype, layout="scalar")
    if tb.isscalarcol(name):
        pass
    elif (desc.get("option", 0) & 4) and "shape" in desc:
        col.layout = "fixed"
        col.cell_shape = tuple(int(x) for x in desc["shape"])
    else:
        _scan_shapes(tb, path, col, nrows, desc, row_block)
    if col.layout == "ragged":
        col.dims = ()
        col.block_rows = max(1, min(row_block or nrows or 1,
                                    SHARD_BYTES // max(1, col.max_cell * col.itemsize)))
        col.block_rows = max(1, min(col.block_rows, nrows or 1))
        col.codec = _candidates(col)[0]
        return col
    row_bytes = col.itemsize * int(np.prod(col.cell_shape, dtype=np.int64))
    col.chunk_rows, col.block_rows = _rows_layout(nrows, row_bytes, row_block)
    sample = None
    if nrows:
        try:
            sample = _read_uniform(tb, col, 0, col.chunk_rows)
            _read_uniform(tb, col, nrows - 1, 1)
        except _ReadFailure as e:
            raise RawTableRequired(path, str(e)) from e
    col.codec = _choose_codec(tb, path, col, nrows, sample) if trials else _candidates(col)[0]
    return col


def _scan_shapes(tb, path, col: _Col, nrows, desc, row_block) -> None:
    """Decide fixed vs ragged for an array column without a fixed shape; get ragged sizes."""
    shapes_seen = set()
    undefined = 0
    total = 0
    max_cell = 0
    max_ndim = max(0, int(desc.get("ndim", 0) or 0))
    step = row_block or 65536
    cache: dict = {}
    for start in range(0, nrows, step):
        n = min(step, nrows - start)
        try:
            defined, shapes = _block_shapes(tb, col.name, start, n, cache)
        except Exception as e:  # noqa: BLE001
            raise RawTableRequired(path, f"column {col.name}: cannot read cell shapes: {e}") from e
        undefined += int(n - defined.sum())
        for s, count in Counter(shapes).items():
            if s is None:
                continue
            size = int(np.prod(s, dtype=np.int64))
            shapes_seen.add(s)
            max_ndim = max(max_ndim, len(s))
            max_cell = max(max_cell, size)
            total += size * count
    if undefined == 0 and len(shapes_seen) == 1:
        col.layout = "fixed"
        col.cell_shape = next(iter(shapes_seen))
    elif nrows == 0 and "shape" in desc and len(desc["shape"]):
        col.layout = "fixed"
        col.cell_shape = tuple(int(x) for x in desc["shape"])
    else:
        col.layout = "ragged"
        col.max_ndim = max_ndim
        col.total = total
        col.max_cell = max_cell


def _block_shapes(tb, name, start, n, cache) -> tuple[np.ndarray, list]:
    try:
        strs = tb.getcolshapestring(name, start, n)
        defined = np.ones(n, bool)
        if len(strs) == 1 and n > 1:
            strs = strs * n
    except Exception:  # noqa: BLE001 - undefined cells in the block
        defined = _defined(tb, name, start, n)
        strs = [tb.getcolshapestring(name, start + i, 1)[0] if d else None
                for i, d in enumerate(defined)]
    if len(strs) != n:
        raise _ReadFailure(f"column {name}: {len(strs)} shapes for {n} rows")
    return defined, [None if s is None else _parse_shape(s, cache) for s in strs]


def _defined(tb, name, start, n) -> np.ndarray:
    try:  # one TaQL call instead of a Python call per row
        d = np.asarray(_ct().taql(f"calc isdefined({name}) from $1 limit {n} offset {start}",
                                  tables=[tb]), dtype=bool).reshape(-1)
        if d.shape == (n,):
            return d
    except Exception:  # noqa: BLE001 - e.g. a column name TaQL cannot parse
        pass
    return np.fromiter((tb.iscelldefined(name, start + i) for i in range(n)), bool, n)


def _assign_dims(cols: list[_Col]) -> None:
    sizes: dict[str, int] = {}
    for c in cols:
        if c.layout == "ragged":
            continue
        nd = len(c.cell_shape)
        named = _KNOWN_DIMS.get((c.name, nd))
        if named is None and nd == 2 and c.name in _CHAN_CORR:
            named = ("chan", "corr")
        if named is not None and all(sizes.get(d, s) == s for d, s in zip(named, c.cell_shape)):
            for d, s in zip(named, c.cell_shape):
                sizes[d] = s
        else:
            named = tuple(f"{c.name}_{i}" for i in range(nd))
        c.dims = ("row",) + tuple(named)


# --------------------------------------------------------------------------- codecs


def _candidates(col: _Col) -> list[str]:
    if col.is_string:
        return ["zstd"]
    k = col.dtype.kind
    if k == "b":
        return ["blosc-bitshuffle-zstd", "packbits-zstd"]
    if col.dtype.itemsize == 1:
        return ["zstd", "blosc-bitshuffle-zstd"]
    if k in "iu":
        return ["blosc-shuffle-zstd", "zstd", "delta-zstd"]
    out = ["blosc-shuffle-zstd", "blosc-bitshuffle-zstd"]
    if col.layout == "scalar" and col.dtype == np.float64:
        out.append("delta-zstd")
    return out


_NUMCODECS = {"packbits-zstd", "delta-zstd"}


def _component(dtype: np.dtype) -> int:
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize


def _trial_size(label: str, a: np.ndarray) -> int:
    import numcodecs

    a = np.ascontiguousarray(a)
    if label == "zstd":
        return len(numcodecs.Zstd(LEVEL).encode(a.tobytes()))
    if label.startswith("blosc"):
        shuffle = numcodecs.Blosc.BITSHUFFLE if "bitshuffle" in label else numcodecs.Blosc.SHUFFLE
        view = a.reshape(-1).view(f"u{_component(a.dtype)}")
        return len(numcodecs.Blosc("zstd", LEVEL, shuffle).encode(view))
    if label == "packbits-zstd":
        return len(numcodecs.Zstd(LEVEL).encode(numcodecs.PackBits().encode(a.reshape(-1))))
    if label == "delta-zstd":
        return len(numcodecs.Zstd(LEVEL).encode(numcodecs.Delta(a.dtype).encode(a.reshape(-1))))
    raise ValueError(label)


def _choose_codec(tb, path, col: _Col, nrows: int, sample) -> str:
    cands = _candidates(col)
    if sample is None or len(cands) == 1 or sample.size == 0:
        return cands[0]
    if sample.nbytes < _NUMCODECS_MIN_SAMPLE:
        cands = [c for c in cands if c not in _NUMCODECS]
    sizes = {c: _trial_size(c, sample) for c in cands}
    spec = [c for c in cands if c not in _NUMCODECS]
    best = min(spec, key=lambda c: sizes[c])
    for c in cands:
        if c in _NUMCODECS and sizes[c] < _NUMCODECS_MARGIN * sizes[best]:
            if c == "delta-zstd" and col.dtype.kind == "f" and not _delta_exact(tb, path, col, nrows):
                continue
            best = c
            break
    return best


def _delta_exact(tb, path, col: _Col, nrows: int) -> bool:
    """Float delta is lossless only if cumsum(diff) gives back every bit of every chunk."""
    import numcodecs

    codec = numcodecs.Delta(col.dtype)
    for start in range(0, nrows, col.block_rows):
        n = min(col.block_rows, nrows - start)
        try:
            block = _read_uniform(tb, col, start, n)
        except _ReadFailure as e:
            raise RawTableRequired(path, str(e)) from e
        for s in range(0, n, col.chunk_rows):
            chunk = np.zeros(col.chunk_rows, col.dtype)
            part = block[s:s + col.chunk_rows]
            chunk[:len(part)] = part
            back = codec.decode(codec.encode(chunk))
            if back.tobytes() != chunk.tobytes():
                return False
    return True


def _pipeline(label: str, dtype: np.dtype | None) -> dict:
    crc = zc.Crc32cCodec()
    if label == "zstd":
        return {"filters": (), "compressors": (zc.ZstdCodec(level=LEVEL), crc)}
    if label.startswith("blosc"):
        shuffle = "bitshuffle" if "bitshuffle" in label else "shuffle"
        blosc = zc.BloscCodec(cname="zstd", clevel=LEVEL, shuffle=shuffle, typesize=_component(dtype))
        return {"filters": (), "compressors": (blosc, crc)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if label == "packbits-zstd":
            return {"filters": (zc.PackBits(),), "compressors": (zc.ZstdCodec(level=LEVEL), crc)}
        if label == "delta-zstd":
            return {"filters": (zc.Delta(dtype=dtype.str),), "compressors": (zc.ZstdCodec(level=LEVEL), crc)}
    raise ValueError(label)


def _fill(dtype):
    return "" if dtype is None else np.zeros((), dtype).item()


def _create(group: zarr.Group, name: str, shape, dtype, chunk0: int, shard0: int, label: str,
            dims, attrs: dict | None = None):
    shape = tuple(int(s) for s in shape)
    chunks = (max(1, chunk0),) + tuple(max(1, s) for s in shape[1:])
    shards = (max(1, shard0),) + chunks[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return group.create_array(
            name, shape=shape, dtype=str if dtype is None else dtype, chunks=chunks, shards=shards,
            fill_value=_fill(dtype), dimension_names=tuple(dims), config={"write_empty_chunks": True},
            attributes={"codec": label, **(attrs or {})}, **_pipeline(label, dtype))


# --------------------------------------------------------------------------- reading casacore


def _read_uniform(tb, col: _Col, start: int, n: int) -> np.ndarray:
    try:
        v = tb.getcol(col.name, start, n)
    except Exception as e:  # noqa: BLE001
        raise _ReadFailure(f"column {col.name} rows {start}-{start + n - 1}: {e}") from e
    if col.is_string:
        a = _str_array(v)
    else:
        a = np.asarray(v)
        if a.dtype != col.dtype:
            b = a.astype(col.dtype)
            if not np.array_equal(b, a):
                raise _ReadFailure(f"column {col.name}: values do not fit {col.dtype}")
            a = b
    want = (n,) + tuple(col.cell_shape)
    if a.shape != want:
        raise _ReadFailure(f"column {col.name} rows {start}-{start + n - 1}: shape {a.shape}, "
                           f"expected {want}")
    return a


def _cell_array(v, col: _Col) -> np.ndarray:
    if col.is_string:
        if isinstance(v, str):
            raise _ReadFailure(f"column {col.name}: scalar in an array column")
        return _str_array(v)
    a = np.asarray(v)
    return a.astype(col.dtype) if a.dtype != col.dtype else a


def _read_ragged(tb, col: _Col, start: int, n: int, cache: dict):
    try:
        defined, shapes = _block_shapes(tb, col.name, start, n, cache)
    except _ReadFailure:
        raise
    except Exception as e:  # noqa: BLE001
        raise _ReadFailure(f"column {col.name} rows {start}-{start + n - 1}: {e}") from e
    ndim = np.zeros(n, np.int32)
    shp = np.zeros((n, col.max_ndim), np.int64)
    for i, s in enumerate(shapes):
        if s is not None:
            if len(s) > col.max_ndim:
                raise _ReadFailure(f"column {col.name} row {start + i}: ndim changed while reading")
            ndim[i] = len(s)
            shp[i, :len(s)] = s
    parts = []
    uniform = defined.all() and len(set(shapes)) == 1
    try:
        if uniform and n:
            v = tb.getcol(col.name, start, n)
            a = _str_array(v) if col.is_string else np.asarray(v)
            if not col.is_string and a.dtype != col.dtype:
                a = a.astype(col.dtype)
            if a.shape != (n,) + shapes[0]:
                raise _ReadFailure(f"column {col.name} rows {start}-{start + n - 1}: shape {a.shape}")
            parts.append(a.reshape(-1))
        else:
            for i, s in enumerate(shapes):
                if s is None:
                    continue
                a = _cell_array(tb.getcell(col.name, start + i), col)
                if a.shape != s:
                    raise _ReadFailure(f"column {col.name} row {start + i}: shape {a.shape} != {s}")
                parts.append(a.reshape(-1))
    except _ReadFailure:
        raise
    except Exception as e:  # noqa: BLE001
        raise _ReadFailure(f"column {col.name} rows {start}-{start + n - 1}: {e}") from e
    if parts:
        values = np.concatenate(parts)
    else:
        values = np.empty(0, dtype=object if col.is_string else col.dtype)
    return defined, ndim, shp, values


# --------------------------------------------------------------------------- hashing


class _ColumnHash:
    def __init__(self, name: str, ctype: str, scalar: bool):
        self.head = _canon({"name": name, "type": ctype, "scalar": scalar})
        self.is_string = ctype == "string"
        self.dtype = _CTYPES[ctype]
        self.shapes = hashlib.sha256()
        self.values = hashlib.sha256()

    def uniform(self, block: np.ndarray, scalar: bool) -> None:
        if not scalar:
            n, cell = block.shape[0], block.shape[1:]
            rec = np.empty((n, 1 + len(cell)), "<i8")
            rec[:, 0] = len(cell)
            rec[:, 1:] = cell
            self.shapes.update(rec.tobytes())
        self._values(block)

    def ragged(self, defined, ndim, shp, values) -> None:
        rec = np.empty((len(defined), 1 + shp.shape[1]), "<i8")
        rec[:, 0] = np.where(defined, ndim, -1)
        rec[:, 1:] = np.where(defined[:, None], shp, 0)
        self.shapes.update(rec.tobytes())
        self._values(values)

    def _values(self, a: np.ndarray) -> None:
        if self.is_string:
            out = bytearray()
            for s in np.asarray(a, dtype=object).reshape(-1):
                b = str(s).encode("utf-8")
                out += len(b).to_bytes(4, "little")
                out += b
            self.values.update(bytes(out))
        else:
            a = np.ascontiguousarray(a, dtype=self.dtype.newbyteorder("<"))
            self.values.update(a.reshape(-1).view(np.uint8).data)

    def hexdigest(self) -> str:
        return hashlib.sha256(self.head + b"\n" + self.shapes.digest() + self.values.digest()).hexdigest()


def _table_sha(header: dict, columns: dict[str, str], subtables: dict[str, str]) -> str:
    h = hashlib.sha256(_HASH_MAGIC)
    h.update(_canon(header) + b"\n")
    for name in sorted(columns):
        h.update(f"column\t{name}\t{columns[name]}\n".encode("utf-8"))
    for name in sorted(subtables):
        h.update(f"subtable\t{name}\t{subtables[name]}\n".encode("utf-8"))
    return h.hexdigest()


# --------------------------------------------------------------------------- encode


class _Appender:
    """Buffers values along axis 0 and writes whole shards, so no shard is written twice."""

    def __init__(self, arr, shard: int):
        self.arr, self.shard, self.pos = arr, shard, 0
        self.parts: list[np.ndarray] = []
        self.n = 0

    def add(self, a: np.ndarray) -> None:
        if len(a):
            self.parts.append(a)
            self.n += len(a)
        while self.n >= self.shard:
            self._flush(self.shard)

    def _flush(self, count: int) -> None:
        buf = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.arr[self.pos:self.pos + count] = buf[:count]
        self.pos += count
        rest = buf[count:]
        self.parts = [rest] if len(rest) else []
        self.n = len(rest)

    def close(self) -> None:
        if self.n:
            self._flush(self.n)
        if self.pos != self.arr.shape[0]:
            raise _ReadFailure(f"wrote {self.pos} of {self.arr.shape[0]} elements")


def _scan_table(plan: _Plan, sink, progress) -> dict:
    """Read every column of plan's table in blocks, feed ``sink``; return content tree."""
    tb = _open(plan.path)
    digests = {}
    try:
        if tb.nrows() != plan.nrows:
            raise _ReadFailure(f"row count changed from {plan.nrows} to {tb.nrows()}")
        for col in plan.columns:
            h = _ColumnHash(col.name, col.ctype, col.layout == "scalar")
            w = sink.column(col) if sink else None
            cache: dict = {}
            for start in range(0, plan.nrows, col.block_rows):
                n = min(col.block_rows, plan.nrows - start)
                if col.layout == "ragged":
                    block = _read_ragged(tb, col, start, n, cache)
                    h.ragged(*block)
                    nbytes = block[3].size * col.itemsize
                else:
                    block = _read_uniform(tb, col, start, n)
                    h.uniform(block, col.layout == "scalar")
                    nbytes = block.size * col.itemsize
                if w:
                    w.write(start, n, block)
                if progress:
                    progress(int(nbytes))
            if w:
                w.close()
            digests[col.name] = h.hexdigest()
    finally:
        tb.close()
    subs = {}
    for name, _ref in plan.subtables:
        subs[name] = _scan_table(plan.children[name], sink.subtable(name, plan.children[name]) if sink else None,
                                 progress)
    return {"content_sha256": _table_sha(plan.hash_header(), digests,
                                         {n: s["content_sha256"] for n, s in subs.items()}),
            "columns": digests, "subtables": subs}


class _GroupSink:
    def __init__(self, group: zarr.Group, plan: _Plan):
        self.group, self.plan = group, plan
        self.ragged = None
        self.subs = None
        self.arrays: dict[str, Any] = {}
        self.children: dict[str, _GroupSink] = {}

    def column(self, col: _Col):
        if col.layout != "ragged":
            shape = (self.plan.nrows,) + tuple(col.cell_shape)
            arr = _create(self.group, col.name, shape, col.dtype, col.chunk_rows, col.block_rows,
                          col.codec, col.dims)
            self.arrays[col.name] = [arr]
            return _UniformWriter(arr)
        if self.ragged is None:
            self.ragged = self.group.create_group("ragged")
        g = self.ragged.create_group(col.name, attributes={"column": col.name})
        w = _RaggedWriter(g, col, self.plan.nrows)
        self.arrays[col.name] = [app.arr for app in w.apps]
        return w

    def subtable(self, name: str, plan: _Plan) -> _GroupSink:
        if self.subs is None:
            self.subs = self.group.create_group("subtables")
        g = self.subs.create_group(name, attributes={ATTR: plan.static()})
        self.children[name] = _GroupSink(g, plan)
        return self.children[name]


class _UniformWriter:
    def __init__(self, arr):
        self.arr = arr

    def write(self, start, n, block):
        self.arr[start:start + n] = block

    def close(self):
        pass


class _RaggedWriter:
    def __init__(self, g: zarr.Group, col: _Col, nrows: int):
        rows_chunk, rows_shard = _rows_layout(nrows, 8 * (col.max_ndim + 1), None)
        elem_chunk, elem_shard = _rows_layout(col.total, col.itemsize, None)
        a_def = _create(g, "defined", (nrows,), np.dtype(bool), rows_chunk, rows_shard,
                        "blosc-bitshuffle-zstd", ("row",))
        a_nd = _create(g, "ndim", (nrows,), np.dtype(np.int32), rows_chunk, rows_shard, "zstd", ("row",))
        a_shp = _create(g, "shape", (nrows, col.max_ndim), np.dtype(np.int64), rows_chunk, rows_shard,
                        "zstd", ("row", f"{col.name}_axis"))
        a_val = _create(g, "values", (col.total,), col.dtype, elem_chunk, elem_shard, col.codec,
                        (f"{col.name}_value",))
        self.apps = [_Appender(a_def, rows_shard), _Appender(a_nd, rows_shard),
                     _Appender(a_shp, rows_shard), _Appender(a_val, elem_shard)]

    def write(self, start, n, block):
        for app, part in zip(self.apps, block):
            app.add(part)

    def close(self):
        for app in self.apps:
            app.close()


def _stored_bytes(arr) -> int | None:
    """Bytes of the array's shards in the store (metadata not counted)."""
    from zarr.core.sync import sync

    try:
        return int(sync(arr.store.getsize_prefix(f"{arr.path}/c/")))
    except Exception:  # noqa: BLE001 - not every store can size its objects
        return None


def _info(plan: _Plan, content: dict, sink: _GroupSink | None) -> dict:
    cols = {}
    for c in plan.columns:
        entry = {"layout": c.layout, "type": c.ctype, "codec": c.codec,
                 "raw_bytes": int(plan.nrows * c.itemsize * int(np.prod(c.cell_shape, dtype=np.int64)))
                 if c.layout != "ragged" else int(c.total * c.itemsize)}
        arrs = sink.arrays.get(c.name, []) if sink else []
        sizes = [_stored_bytes(a) for a in arrs]
        if arrs and None not in sizes:
            entry["stored_bytes"] = sum(sizes)
        cols[c.name] = entry
    return {
        "rows": plan.nrows,
        "columns": [c.name for c in plan.columns],
        "codecs": {c.name: c.codec for c in plan.columns},
        "column_info": cols,
        "raw_fallback": False,
        "content_sha256": content["content_sha256"],
        "subtables": {n: _info(plan.children[n], content["subtables"][n],
                               sink.children.get(n) if sink else None) for n, _r in plan.subtables},
    }


def encode_table(table_path: str | Path, group: zarr.Group, *, row_block: int | None = None,
                 progress: Callable[[int], None] | None = None) -> dict:
    """Write the table (and its subtables) into ``group``; return the manifest info.

    Raises RawTableRequired, before writing anything, when the table cannot be restored
    exactly from columns; the caller then keeps the table's files as they are. Every shard
    and child is written once; only ``group``'s own zarr.json is rewritten, once, at the end
    (its attributes), so in a ZipStore that one entry appears twice (the last one counts).
    """
    if row_block is not None and row_block < 1:
        raise ValueError("row_block must be at least 1")
    path = Path(table_path)
    plan = _plan(path, row_block)
    existing = set(group.keys())
    if existing & ({c.name for c in plan.columns} | _RESERVED):
        raise FactorArchiveError(f"zarr group {group.path!r} is not empty")
    sink = _GroupSink(group, plan)
    try:
        content = _scan_table(plan, sink, progress)
    except _ReadFailure as e:
        _cleanup(group, existing)
        raise RawTableRequired(path, f"reading failed: {e}") from e
    except BaseException:
        _cleanup(group, existing)
        raise
    _quiet_attrs_update(group, {ATTR: plan.static(), CONTENT_ATTR: content})
    return _info(plan, content, sink)


def _cleanup(group: zarr.Group, keep: set) -> None:
    for k in list(group.keys()):
        if k not in keep:
            try:
                del group[k]
            except Exception:  # noqa: BLE001 - e.g. a ZipStore cannot delete
                pass


def table_content_sha256(table_path: str | Path) -> str:
    """Checksum of the table's content (see the module docstring), streaming by row blocks."""
    plan = _plan(Path(table_path), None, trials=False)
    try:
        return _scan_table(plan, None, None)["content_sha256"]
    except _ReadFailure as e:
        raise RawTableRequired(table_path, f"reading failed: {e}") from e


# --------------------------------------------------------------------------- decode


def _static(group: zarr.Group) -> dict:
    st = group.attrs.get(ATTR)
    if not isinstance(st, dict) or st.get("format") != FORMAT:
        raise CorruptTableData(f"zarr group {group.path!r} holds no complete casacore table")
    if st.get("version") != FORMAT_VERSION:
        raise CorruptTableData(f"zarr group {group.path!r}: unsupported table format version "
                               f"{st.get('version')}")
    return st


def decode_table(group: zarr.Group, out_path: str | Path, *, progress=None) -> None:
    """Rebuild the table at ``out_path`` (made under a temporary name, then renamed)."""
    out = Path(out_path)
    st = _static(group)
    content = group.attrs.get(CONTENT_ATTR)
    if os.path.lexists(out):
        raise FileExistsError(f"{out} exists")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
            _decode_into(group, st, tmp, content, progress, where=out.name)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _decode_into(group: zarr.Group, st: dict, path: Path, content: dict | None, progress,
                 where: str) -> dict:
    ct = _ct()
    nrows = st["nrows"]
    cols = st["columns"]
    desc = {}
    for c in cols:
        d = _unjsonable(c["desc"])
        d["keywords"] = {}
        desc[c["name"]] = d
    desc["_define_hypercolumn_"] = _unjsonable(st.get("hypercolumns") or {})
    desc["_keywords_"] = {}
    desc["_private_keywords_"] = {}
    dminfo = {f"*{i + 1}": _unjsonable(dm) for i, dm in enumerate(st["dminfo"])}
    tb = ct.table(str(path), desc, nrow=nrows, dminfo=dminfo, ack=False, endian=st["endian"])
    digests = {}
    try:
        info = dict(st["info"])
        if info.get("readme", "").endswith("\n"):  # putinfo ends every readme line itself
            info["readme"] = info["readme"][:-1]
        tb.putinfo(info)
        for c in cols:
            digests[c["name"]] = _decode_column(group, tb, c, nrows, progress, where)
        subs = {}
        tables = {}
        for s in st["subtables"]:
            sg = group[s["group"]]
            sub_content = (content or {}).get("subtables", {}).get(s["name"]) if content else None
            subs[s["name"]] = _decode_into(sg, _static(sg), path / s["name"], sub_content,
                                           progress, f"{where}/{s['name']}")
            tables[s["name"]] = str((path / s["name"]).resolve())
        for k, v in _dec_kw(st["keywords"], tables).items():
            tb.putkeyword(k, v)
        for c in cols:
            for k, v in _dec_kw(c["keywords"], tables).items():
                tb.putcolkeyword(c["name"], k, v)
        tb.flush()
    finally:
        tb.close()
    header = _hash_header(nrows, st["info"], {c["name"]: c["desc"] for c in cols}, st["keywords"],
                          {c["name"]: c["keywords"] for c in cols})
    _check_restored_header(path, header, where)
    sha = _table_sha(header, digests, {n: s["content_sha256"] for n, s in subs.items()})
    if content:
        for name, d in digests.items():
            if content["columns"].get(name) != d:
                raise CorruptTableData(f"{where}: column {name} does not match its checksum")
        if content["content_sha256"] != sha:
            raise CorruptTableData(f"{where}: table content does not match its checksum")
    return {"content_sha256": sha, "columns": digests, "subtables": subs}


def _check_restored_header(path: Path, header: dict, where: str) -> None:
    """casacore may normalise what it is given: make sure it kept exactly what was stored."""
    tb = _open(path)
    try:
        d = _describe(tb, path)
        got = _hash_header(tb.nrows(), d["info"], d["desc"], d["keywords"], d["colkeywords"])
    finally:
        tb.close()
    if _canon(got) != _canon(header):
        diff = sorted(k for k in header if _canon(header[k]) != _canon(got.get(k)))
        raise FactorArchiveError(f"{where}: restored table differs from the stored one in {diff}")


def _missing_shards(arr) -> list[tuple[int, int]]:
    """Row ranges of shards absent from the store (encode writes every shard, empty or not)."""
    if 0 in arr.shape:  # nothing to store, so no shard
        return []
    from zarr.core.sync import sync

    async def listing(prefix):
        return {k async for k in arr.store.list_prefix(prefix)}

    base = f"{arr.path}/" if arr.path else ""
    present = sync(listing(base + "c/"))
    step = (arr.shards or arr.chunks)[0]
    nd = len(arr.shape)
    missing = []
    for i in range(-(-arr.shape[0] // step)):
        if base + arr.metadata.encode_chunk_key((i,) + (0,) * (nd - 1)) not in present:
            missing.append((i * step, min(arr.shape[0], (i + 1) * step) - 1))
    return missing


def _read(arr, start, stop, what: str, rows: str):
    try:
        return arr[start:stop]
    except Exception as e:  # noqa: BLE001
        raise CorruptTableData(f"{what} {rows}: cannot read stored data: {e}") from e


def _check_complete(arr, what: str, unit: str) -> None:
    missing = _missing_shards(arr)
    if missing:
        a, b = missing[0]
        raise CorruptTableData(f"{what} {unit} {a}-{b}: stored data is missing")


def _decode_column(group, tb, c: dict, nrows: int, progress, where: str) -> str:
    name = c["name"]
    ctype = c["type"]
    dtype = _CTYPES[ctype]
    is_string = dtype is None
    h = _ColumnHash(name, ctype, c["layout"] == "scalar")
    what = f"{where}: column {name}"
    itemsize = 32 if is_string else dtype.itemsize
    if c["layout"] != "ragged":
        arr = group[name]
        _check_complete(arr, what, "rows")
        step = c["block_rows"]
        for start in range(0, nrows, step):
            stop = min(nrows, start + step)
            block = _read(arr, start, stop, what, f"rows {start}-{stop - 1}")
            h.uniform(block, c["layout"] == "scalar")
            if is_string:
                vals = [str(s) for s in block.reshape(-1)]
                if c["layout"] == "scalar":
                    tb.putcol(name, vals, start, stop - start)
                else:
                    tb.putcol(name, np.array(vals, dtype=str).reshape(block.shape), start, stop - start)
            else:
                tb.putcol(name, np.ascontiguousarray(block), start, stop - start)
            if progress:
                progress(int(block.size * itemsize))
        return h.hexdigest()
    g = group[f"ragged/{name}"]
    a_def, a_nd, a_shp, a_val = g["defined"], g["ndim"], g["shape"], g["values"]
    for a, unit in ((a_def, "rows"), (a_nd, "rows"), (a_shp, "rows"), (a_val, "values")):
        _check_complete(a, what, unit)
    step = c["block_rows"]
    off = 0
    for start in range(0, nrows, step):
        stop = min(nrows, start + step)
        rows = f"rows {start}-{stop - 1}"
        defined = _read(a_def, start, stop, what, rows)
        ndim = _read(a_nd, start, stop, what, rows)
        shp = _read(a_shp, start, stop, what, rows)
        sizes = [int(np.prod(shp[i, :ndim[i]], dtype=np.int64)) if defined[i] else 0
                 for i in range(stop - start)]
        total = sum(sizes)
        values = _read(a_val, off, off + total, what, rows)
        if len(values) != total:
            raise CorruptTableData(f"{what} {rows}: ragged values end early")
        h.ragged(defined, ndim, shp, values)
        pos = 0
        for i, size in enumerate(sizes):
            if not defined[i]:
                continue
            cell = values[pos:pos + size].reshape(tuple(int(x) for x in shp[i, :ndim[i]]))
            pos += size
            if is_string:
                cell = np.array([str(s) for s in cell.reshape(-1)], dtype=str).reshape(cell.shape)
            tb.putcell(name, start + i, cell)
        off += total
        if progress:
            progress(int(total * itemsize))
    return h.hexdigest()
