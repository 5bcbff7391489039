"""Store a casacore table (with its subtables) in a zarr v3 group and restore it bit for bit.

Format ``factor-archive/casacore-table`` version 2 (version 1 groups are still read)
===================================================================================

One casacore table is one zarr v3 group (the *table group*)::

    <table group>/                      attrs: "casacore_table" (static), and on the group that
                                        was handed to encode_table also "casacore_content"
      <COL>                             a scalar column, an array column whose cells all have
                                        one shape ("fixed"), or a record column: one array
      shaped/<COL>/                     an array column with several cell shapes or undefined
                                        cells; attrs {"column", "shapes", "counts"}
      shaped/<COL>/<SHAPE>/<COL>        (count, *shape): its cells of one shape, in row order
      shaped/<COL>/<SHAPE>/row          int64 (count,): the rows of those cells, ascending
      ragged/<COL>/defined              bool (nrows,): cell is defined      } an array column
      ragged/<COL>/ndim                 int32 (nrows,): cell ndim, 0 where  } with many cell
                                        undefined                           } shapes (more than
      ragged/<COL>/shape                int64 (nrows, max_ndim): cell shape } MAX_SHAPES, or
                                        zero padded                         } fewer than
      ragged/<COL>/values               (total,): every defined cell        } MIN_CELLS_PER_SHAPE
                                        flattened, in row order             } cells per shape)
      subtables/<NAME>/                 a table group (same layout, recursively)

Node names
  ``<COL>`` is the column name with ``%`` written ``%25`` and ``/`` written ``%2F``; a name the
  table group uses itself (``ragged``, ``shaped``, ``subtables``, ``zarr.json``), one starting
  with ``__`` (reserved by zarr) and ``.``/``..`` have their first character percent-encoded
  too (``%72agged``). In a shape group a column named ``row`` is ``%72ow``. ``<SHAPE>`` is the
  cell shape in numpy order joined by ``x`` (``64x4``; ``0d`` for no axes). Each column's entry
  in ``casacore_table`` names its node, so a reader need not know these rules.

Arrays
  ``<COL>`` has shape ``(nrows, *cell_shape)`` (numpy axis order, i.e. casacore's reversed)
  and ``dimension_names`` ``("row", ...)``; well-known Measurement Set columns get shared names
  (DATA/FLAG/WEIGHT_SPECTRUM/...: ``("row", "chan", "corr")``, UVW: ``("row", "uvw")``,
  WEIGHT/SIGMA: ``("row", "corr")``), every other axis ``<COL>_<i>``, so
  ``xarray.open_zarr(store, group=...)`` gives a Dataset of those columns. Each shape group of
  a shaped column is such a group too (``<COL>`` with ``("row", ...)``, ``row`` its
  coordinate): ``xarray.open_zarr(store, group=".../shaped/DATA/64x4")`` gives the cells of
  that shape with their table rows.
  Values are stored in their casacore type: bool, uint8 (uChar), int16, uint16 (uShort),
  int32, uint32, int64, float32, float64, complex64, complex128 (native zarr complex), or
  zarr's variable-length UTF-8 ``string``. A record column is a string array of one tagged
  record per cell (below, as canonical JSON), ``""`` for a cell never written.
  ``ragged/<COL>/values`` holds the cells one after another, each in C order of its numpy
  shape, so cell *i* is the slice after the cells of the defined rows before it.
  Every array is sharded along its first axis only (inner chunks of ~2 MiB, shards of ~64 MiB
  or ``row_block`` rows; the arrays of a shaped column share that: 64 MiB / shapes each), in
  zarr's ``sharding_indexed`` layout with the index at the end (``bytes`` little endian +
  ``crc32c``), and each inner chunk ends in a crc32c checksum.
  Every shard, and every inner chunk of a shard that lies within the array, is stored (also
  when it holds only fill values), so an absent one is damage, never fill values. (Numeric
  arrays are written and read shard by shard without zarr's per-chunk machinery, exactly as
  zarr would; any reader of zarr v3 reads them.) Array attribute ``codec`` names the chain:

  ``blosc-shuffle-zstd`` / ``blosc-bitshuffle-zstd``
      blosc (zstd, blosc clevel 5) with byte/bit shuffle; ``typesize`` is the size of one
      real component, so complex values shuffle as float pairs
  ``blosc-shuffle-zstd1`` / ``blosc-bitshuffle-zstd1``   the same at blosc clevel 1
  ``blosc-shuffle-lz4`` / ``blosc-bitshuffle-lz4``       blosc (lz4, clevel 9)
  ``packbits-zstd``   numcodecs packbits then zstd (bool)
  ``delta-zstd``      numcodecs delta then zstd (integers; float64 scalars only when
                      delta decoding was verified bit-exact on every chunk)
  ``zstd`` / ``zstd1`` zstd level 5 / 1 (strings, records, auxiliary arrays)

  Per column the candidates for its type are tried on a sample (the first chunk; at most
  256 KiB of it for a column under 64 MiB; for a shaped column the first cells of its first
  shape) and the smallest wins. A column of 64 MiB or more
  also tries the clevel-1 and lz4 chains, and the one with the least (encode + decode CPU
  seconds, best of up to three runs) + (stored bytes / 20 MB) wins: saving 20 MB is worth a
  second of CPU, so noisy visibilities get a fast chain and smooth columns a strong one. The
  numcodecs ones (not in the zarr v3 spec) are only tried on a sample of 64 KiB or more and
  must beat the winner by 10 %. Readers need not know the labels: the array metadata is the
  truth.

``casacore_table`` attribute (JSON)
  ``format``, ``version`` (2), ``nrows``, ``endian`` ("little"/"big"), ``info`` (the
  table.info record: type, subType, readme), ``hypercolumns`` (``_define_hypercolumn_``),
  ``private_keywords`` (``_private_keywords_``: casacore keeps only the hypercolumn definitions
  there, and makes them again from ``hypercolumns``), ``dminfo`` (list of the data-manager
  records, SPEC included, so bucket and tile shapes are recreated), ``keywords`` (tagged
  record, below), ``subtables`` (list of ``{"name", "group", "referenced"}``; ``name`` is the
  directory inside the table) and ``columns``: a list in table order of ``{"name", "type"
  (casacore data type: boolean, uchar, short, ushort, int, uint, int64, float, double,
  complex, dcomplex, string, record), "layout" ("scalar"|"fixed"|"shaped"|"ragged"|"record"),
  "node", "cell_shape", "max_ndim", "dims", "block_rows", "codec", "desc" (column description
  without keywords), "keywords" (tagged record)}``, shaped columns also ``"shapes"`` (numpy
  order, first seen first) and ``"counts"`` (cells of each). Numpy arrays inside
  ``desc``/``dminfo``/``hypercolumns`` are ``{"__ndarray__": [...], "dtype": "<i4"}``.
  (Version 1 has no ``private_keywords`` and no ``node``: every column's node is its name, or
  ``ragged/<name>``; its multi-shape columns are all ragged.)

Tagged values (keywords, record cells) keep the exact casacore type: ``{"type": T, "value": v}``
for scalars (T one of Bool, Short, Int, uInt, Int64, Float, Double, Complex ([re, im]),
DComplex, String; a float that is not finite is ``{"bits": "<hex of the float64>"}``),
``{"type": "Table", "value": PATH}`` for a table (PATH relative to the table directory:
``NAME``, or ``NAME/INNER`` for a table inside a subtable),
``{"type": "<T> array", "shape": [...], "data": base64}`` (little endian, C order) or for
strings ``{"type": "String array", "shape": [...], "value": [...]}``, and
``{"type": "Record", "fields": [[name, tagged], ...]}`` (see casacore_record). The types of
a record cell's fields come from the bytes casacore stores for it, not from python-casacore
(which turns every integer into ``int`` and every float into ``float``).

``casacore_content`` (written last; its absence means the encoding did not finish)
  ``{"version": 2, "content_sha256", "metadata_sha256", "columns": {COL: sha256},
  "subtables": {NAME: {"content_sha256", "metadata_sha256", "columns", "subtables"}}}``.
  (Version 1, written before metadata checksums, has neither ``version`` nor
  ``metadata_sha256``.)

Metadata checksum (``metadata_sha256``), version 1
  sha256 of ``"factor-archive casacore-table metadata v1\\n"`` + the canonical JSON of the
  table group's ``casacore_table`` document: everything restore takes from it (description,
  private keywords, keywords, data-manager layout, node names, shapes) is covered, so a
  changed byte that would change what restore writes without changing a single value is
  found. verify_table and decode_table check it before using a description (decode_table
  before writing the table); in a version-2 ``casacore_content`` a missing one is damage.

Content checksum (``table_content_sha256``), version 1
  Per column, two sha256 streams over rows in order: *shapes* (array columns only; per row
  int64 LE ``[ndim or -1 if undefined, dims zero-padded to the column's max ndim]``) and
  *values* (each defined cell's values in C order, little endian; bool as one byte; strings as
  uint32 LE byte length + UTF-8; a record column as a scalar string column of its stored
  texts). Column digest = sha256(canonical JSON ``{"name", "type", "scalar"}`` + "\\n" +
  shapes digest + values digest). Table checksum = sha256 of
  ``"factor-archive casacore-table content v1\\n"``, canonical JSON of ``{"nrows", "info",
  "columns": {COL: desc without dataManagerType/dataManagerGroup/keywords}, "keywords",
  "column_keywords"}`` + "\\n", then ``"column\\t<COL>\\t<digest>\\n"`` for columns sorted by
  name and ``"subtable\\t<NAME>\\t<checksum>\\n"`` for subtables sorted by name. Canonical JSON
  is ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``. It does not
  depend on storage managers, file layout, location or the column's layout in the group, so
  original and restored tables agree.

Checking a stored table (``verify_table``)
  Every description is checked against its metadata checksum; every shard of every array is
  read and every inner chunk's crc32c checked; the column checksums and the content checksum
  are recomputed from the stored values and compared with ``casacore_content``, without
  writing a table. Each problem is one line naming table, column and rows (values, for ragged
  values), as decode_table's errors do.

Restoring (``decode_table``)
  The table is made with the stored description and data-manager specs, and its columns are
  written in row order, so the data managers lay them out as the original's: TiledShapeStMan
  makes its hypercubes in the order cell shapes first appear, each with the tile shape its
  default gives. TiledCellStMan columns are read and written cell by cell (casacore's row-range
  access to them is wrong when a tile does not fit the cell). IncrementalStMan gives a cell
  never written the value of the row before unless the table was reopened since it was made,
  so its columns that may have undefined cells are written after a reopen (and StManAipsIO
  loses values written after its table's first flush: its columns are written before). Then
  the restored description, keywords, private keywords and data-manager layout are compared
  with the stored ones.

Tables that cannot be restored exactly this way raise :class:`RawTableRequired` (its
``reason`` goes to the manifest) before anything is decoded partially: data managers other
than the standard storage managers (Dysco and other lossy or unknown ones); reference and
concatenated tables; TiledShapeStMan / TiledCellStMan hypercubes that writing the rows in
order does not recreate (rows written out of order, cells reshaped, tile shapes not the
default's); keywords and record fields of a type python-casacore cannot write (uChar), record
cells with a structure it cannot write (field comments, fixed field shapes); references to
tables outside the table; unknown files in the table directory; unreadable columns.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import shutil
import struct
import threading
import warnings
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr import codecs as zc

from ..errors import FactorArchiveError
from .casacore_record import RecordFormatError, parse_cell, serialize_cell
from .casacore_record import dec_float as _dec_float
from .casacore_record import enc_float as _enc_float

__all__ = ["encode_table", "decode_table", "verify_table", "table_content_sha256", "RawTableRequired",
           "CorruptTableData", "FORMAT", "FORMAT_VERSION"]

FORMAT = "factor-archive/casacore-table"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)  # versions of the table group decode_table and verify_table read
ATTR = "casacore_table"
CONTENT_ATTR = "casacore_content"
CONTENT_VERSION = 2  # casacore_content with metadata checksums (version 1: none, no "version")
MAX_SHAPES = 32  # a column with more distinct cell shapes than this is stored "ragged" ...
MIN_CELLS_PER_SHAPE = 4  # ... and so is one with fewer cells per shape (variable-length lists)
CHUNK_BYTES = 2 << 20
SHARD_BYTES = 64 << 20
LEVEL = 5
BLOCK_BYTES = 16 << 20  # rows read / decoded at once (whole inner chunks), at most a shard
_THREADS = 0  # compression threads; 0: one per core (2 to 8)
_BUFFERS = 4  # row-block buffers in use at once
_AHEAD = 3  # row blocks being decoded ahead of the one being written
_SHARDS_IN_FLIGHT = 1  # assembled shards waiting to be stored, per array
_SPEED_MIN_BYTES = 64 << 20  # columns this big choose their codec by speed as well as size
_WORTH = 20e6  # ... where saving this many stored bytes is worth one second of CPU
_SAMPLE_BYTES = 256 << 10  # codec trial sample of a smaller column
_WORKER_MIN_BYTES: int | None = 64 << 20  # tables this big use a casacore worker process
_WORKER_QUEUE_BYTES = 64 << 20  # commands (with the values sent along) queued for it at most
_BY_VALUE_BYTES = 8 << 20  # columns this small are sent to the worker, not put from a buffer
_NUMCODECS_MARGIN = 0.9  # a numcodecs pipeline must be 10 % smaller than the best spec one
_NUMCODECS_MIN_SAMPLE = 64 << 10  # ... and is not considered for smaller columns
_RESERVED = {"ragged", "shaped", "subtables", "zarr.json"}  # column nodes get another name
_HASH_MAGIC = b"factor-archive casacore-table content v1\n"
_META_MAGIC = b"factor-archive casacore-table metadata v1\n"

# Storage managers whose SPEC recreates them and whose values python-casacore reads/writes as is.
_SAFE_DM = {"StandardStMan", "IncrementalStMan", "StManAipsIO", "TiledColumnStMan",
            "TiledShapeStMan", "TiledCellStMan"}
_RECORD_DM = {"StandardStMan", "IncrementalStMan", "StManAipsIO"}  # may hold record columns
_LOSSY_DM = {"DyscoStMan"}

_CTYPES = {
    "boolean": np.dtype(bool), "uchar": np.dtype(np.uint8), "short": np.dtype(np.int16),
    "ushort": np.dtype(np.uint16), "int": np.dtype(np.int32), "uint": np.dtype(np.uint32),
    "int64": np.dtype(np.int64), "float": np.dtype(np.float32), "double": np.dtype(np.float64),
    "complex": np.dtype(np.complex64), "dcomplex": np.dtype(np.complex128), "string": None,
    "record": None,  # stored as strings: one tagged JSON record per cell
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


_TABLE_CLASS = None


def _table(*args, **kwargs):
    """python-casacore's table, which also opens tables it cannot make a row object for (a
    uShort column: its TableRow has no field type for it), since the codec never uses one."""
    global _TABLE_CLASS
    if _TABLE_CLASS is None:
        class Table(_ct().table):
            def _makerow(self):
                try:
                    super()._makerow()
                except RuntimeError:
                    self._row = None

        _TABLE_CLASS = Table
    return _TABLE_CLASS(*args, **kwargs)


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
    except Exception as e:
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
    """Turns 'Table: /abs/path' values (keywords, record cells) into paths relative to the table:
    a subtable (``NAME``) or a table inside one, at any depth (``NAME/INNER``)."""

    def __init__(self, table_dir: Path):
        self.base = os.path.realpath(table_dir)
        self.names: list[str] = []

    def rel(self, value: str) -> str:
        return self.rel_path(value[len("Table: "):])

    def rel_path(self, target: str) -> str:
        target = os.path.realpath(target)
        rel = os.path.relpath(target, self.base)
        if rel in (".", "") or rel.startswith("..") or os.path.isabs(rel):
            raise RawTableRequired(self.base, f"refers to a table outside it: {target}")
        parts = rel.split(os.sep)
        if not all(_node_name_ok(p) for p in parts):
            raise RawTableRequired(self.base, f"subtable {rel!r} has a name that cannot be a zarr node name")
        rel = "/".join(parts)
        if rel not in self.names:
            self.names.append(rel)
        return rel


def _resolver(table_dir: Path) -> Callable[[str], str]:
    """Stored subtable path (``NAME`` or ``NAME/INNER``) -> absolute path below ``table_dir``."""
    base = Path(table_dir).resolve()

    def resolve(rel: str) -> str:
        parts = rel.split("/") if isinstance(rel, str) else []
        if not parts or not all(_node_name_ok(p) for p in parts):
            raise CorruptTableData(f"{table_dir}: stored table reference {rel!r} is not a subtable path")
        target = base.joinpath(*parts)
        if not (target / "table.dat").is_file():
            raise CorruptTableData(f"{table_dir}: stored table reference {rel!r} names no restored subtable")
        return str(target)

    return resolve


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


def _dec_kw(e: dict, resolve: Callable[[str], str]):
    """A tagged value as python-casacore writes it with that exact type (``resolve`` gives the
    absolute path of a stored subtable reference)."""
    t = e["type"]
    if t == "Record":
        return {k: _dec_kw(v, resolve) for k, v in e["fields"]}
    if t == "Table":
        return "Table: " + resolve(e["value"])
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


def _add_directory(name: str, table_dir: str) -> str:
    """The path of a table reference as casacore stored it (Path::addDirectory): ``././X`` is X
    inside the table, ``./X`` beside it; other names are used as they are."""
    rest = name
    while rest.startswith("./"):
        rest = rest[2:]
    removed = (len(name) - len(rest)) // 2
    if removed == 0:
        return name
    return os.path.join(table_dir if removed > 1 else os.path.dirname(table_dir), rest)


def _record_cell(raw: bytes, refs: _Refs, where: str) -> dict:
    """The tagged record stored in a record-column cell, its table references made relative;
    RawTableRequired when python-casacore could not write exactly these bytes back."""
    try:
        rec = parse_cell(raw)
        same = serialize_cell(rec) == raw
    except RecordFormatError as e:
        raise RawTableRequired(refs.base, f"{where}: record cannot be read ({e})") from None
    if not same:
        raise RawTableRequired(refs.base, f"{where}: record has a structure python-casacore cannot "
                                          f"write back (field comments or fixed field shapes)")

    def walk(e: dict, at: str) -> None:
        t = e["type"]
        if t == "Record":
            for k, v in e["fields"]:
                walk(v, f"{at}.{k}" if at else k)
        elif t == "Table":
            e["value"] = refs.rel_path(_add_directory(e["value"], refs.base))
        elif t.split(" ")[0] not in _KW_SCALAR:
            raise RawTableRequired(refs.base, f"{where}: record field {at} of type {t} cannot be "
                                              f"written back from Python")

    walk(rec, "")
    return rec


# --------------------------------------------------------------------------- planning


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


def _hash_header(nrows, info, desc, keywords, colkeywords) -> dict:
    cols = {n: {k: v for k, v in d.items() if k not in ("dataManagerType", "dataManagerGroup")}
            for n, d in desc.items()}
    return {"nrows": nrows, "info": info, "columns": cols, "keywords": keywords,
            "column_keywords": colkeywords}


def _metadata_sha256(static: dict) -> str:
    """Checksum of a table group's ``casacore_table`` document (metadata checksum v1)."""
    return hashlib.sha256(_META_MAGIC + _canon(static)).hexdigest()


def _rows_layout(nrows: int, row_bytes: int, row_block: int | None,
                 shard_bytes: int | None = None) -> tuple[int, int]:
    """(chunk rows, shard rows); the shard is also the read/write block."""
    row_bytes = max(1, row_bytes)
    chunk = max(1, CHUNK_BYTES // row_bytes)
    if row_block:
        chunk = min(chunk, row_block)
    chunk = max(1, min(chunk, nrows))
    k = max(1, (shard_bytes or SHARD_BYTES) // (chunk * row_bytes))
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
    try:
        return _table(str(path), ack=False, lockoptions="autonoread")
    except Exception as e:
        raise RawTableRequired(path, f"casacore cannot open it: {e}") from e


def _column_node(name: str) -> str:
    """The zarr node name of a column: its name, with ``%`` and ``/`` percent-encoded and a name
    the table group uses itself (``ragged``, ``shaped``, ``subtables``, ``zarr.json``), one that
    starts with ``__`` (reserved by zarr) or ``.``/``..`` getting its first character encoded."""
    node = name.replace("%", "%25").replace("/", "%2F")
    if node in _RESERVED or node.startswith("__") or node in (".", ".."):
        node = f"%{ord(node[0]):02X}{node[1:]}"
    return node


def _plan(path: Path, row_block: int | None, *, work: _Work | None = None) -> _Plan:
    """The table's layout; ``work`` (threads for the codec trials) or None: default codecs."""
    path = Path(path)
    if not (path / "table.dat").is_file():
        raise FileNotFoundError(f"not a casacore table: {path}")
    if not _is_plain(path):
        raise RawTableRequired(path, "not a plain table (reference or concatenated table)")
    tb = _open(path)
    try:
        return _plan_open(tb, path, row_block, work)
    finally:
        tb.close()


def _hypercolumn_keywords(hypercolumns: dict) -> dict:
    """The private keywords casacore derives from the hypercolumn definitions (which are all it
    ever keeps there, TableDesc::defineHypercolumn), in getdesc's JSON form."""
    return {f"Hypercolumn_{name}": {"ndim": d.get("HCndim"), "data": list(d.get("HCdatanames", [])),
                                    "coord": list(d.get("HCcoordnames", [])),
                                    "id": list(d.get("HCidnames", []))}
            for name, d in hypercolumns.items()}


def _describe(tb, path: Path) -> dict:
    """Description, keywords (exact types) and table info, in their stored JSON form."""
    desc = tb.getdesc()
    colnames = list(tb.colnames())
    types, coltypes = _keyword_types(tb, path)
    refs = _Refs(path)
    keywords = _kw_record(tb.getkeywords(), types, refs, "")
    colkeywords = {c: _kw_record(tb.getcolkeywords(c), coltypes[c], refs, c) for c in colnames}
    cdesc = {}
    try:
        for c in colnames:
            d = dict(desc[c])
            d.pop("keywords", None)
            cdesc[c] = _jsonable(d)
        hypercolumns = _jsonable(desc.get("_define_hypercolumn_") or {})
        private = _jsonable(desc.get("_private_keywords_") or {})
    except ValueError as e:
        raise RawTableRequired(path, f"description: {e}") from e
    if _canon(private) != _canon(_hypercolumn_keywords(hypercolumns)):
        raise RawTableRequired(path, "private keywords other than the hypercolumn definitions")
    return {"raw_desc": desc, "colnames": colnames, "desc": cdesc, "keywords": keywords,
            "colkeywords": colkeywords, "refs": refs, "info": _jsonable(tb.info()),
            "hypercolumns": hypercolumns, "private_keywords": private}


def _plan_open(tb, path: Path, row_block, work) -> _Plan:
    dminfo = tb.getdminfo()
    dms = [dminfo[k] for k in sorted(dminfo, key=lambda k: int(k[1:]))]
    for dm in dms:
        if dm.get("TYPE") not in _SAFE_DM:
            why = ("is a lossy compressor: its values written again are not its stored bytes"
                   if dm.get("TYPE") in _LOSSY_DM else
                   "is not a standard storage manager: its values written again need not be its bytes")
            raise RawTableRequired(path, f"data manager {dm.get('TYPE')} ({dm.get('NAME')}) of columns "
                                         f"{list(dm.get('COLUMNS', []))} {why}")
    colnames = list(tb.colnames())
    dm_of = {c: dm for dm in dms for c in dm.get("COLUMNS", [])}
    d = _describe(tb, path)
    desc, refs = d["raw_desc"], d["refs"]
    nrows = tb.nrows()
    records = [c for c in colnames if tb.coldatatype(c) == "record"]
    for c in records:
        if dm_of.get(c, {}).get("TYPE") not in _RECORD_DM:
            raise RawTableRequired(path, f"record column {c} is in data manager "
                                         f"{dm_of.get(c, {}).get('TYPE')}")
    cells = _StoredRecords(tb, path, records) if records and nrows else None
    try:
        # Array columns (the big ones, as a rule) first, and the subtables planned before the
        # trials are waited for: the trials run on the pool meanwhile.
        tiled_cell = {c for c in colnames if dm_of.get(c, {}).get("TYPE") == "TiledCellStMan"}
        order = sorted(colnames, key=lambda c: tb.isscalarcol(c))
        planned = {c: _plan_column(tb, path, c, nrows, desc[c], row_block, work,
                                   cells=cells, refs=refs, per_cell=c in tiled_cell) for c in order}
    finally:
        if cells is not None:
            cells.close()
    cols = [planned[c] for c in colnames]
    referenced = [n for n in refs.names if "/" not in n]
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
    for n in refs.names:
        parts = n.split("/")
        for i in range(1, len(parts) + 1):
            if not path.joinpath(*parts[:i], "table.dat").is_file():
                raise RawTableRequired(path, f"subtable {'/'.join(parts[:i])} (referenced as {n}) "
                                             f"is missing")
    for dm in dms:
        _check_hypercubes(path, dm, [planned[c] for c in dm.get("COLUMNS", [])], desc, nrows,
                          tb.endianformat())
    plan = _Plan(path=path, nrows=nrows, endian=tb.endianformat(), info=d["info"],
                 desc=d["desc"], hypercolumns=d["hypercolumns"],
                 private_keywords=d["private_keywords"], dminfo=_jsonable(dms),
                 keywords=d["keywords"], colkeywords=d["colkeywords"], columns=cols,
                 subtables=[(n, True) for n in referenced] + [(n, False) for n in extra])
    for n, _ref in plan.subtables:
        plan.children[n] = _plan(path / n, row_block, work=work)
    for col in cols:
        if col.choice is not None:
            col.codec, col.choice = col.choice(tb, path), None
    _assign_dims(cols)
    return plan


def _plan_column(tb, path, name, nrows, desc, row_block, work, *, cells=None, refs=None,
                 per_cell=False) -> _Col:
    ctype = tb.coldatatype(name)
    if ctype not in _CTYPES:
        raise RawTableRequired(path, f"column {name} has unsupported type {ctype}")
    dtype = _CTYPES[ctype]
    col = _Col(name=name, ctype=ctype, dtype=dtype, layout="scalar", node=_column_node(name),
               per_cell=per_cell)
    if ctype == "record":
        col.layout = "record"
        for r in range(nrows):  # every cell must be one python-casacore writes back exactly
            raw = cells.cell(name, r)
            if raw is not None:
                _record_cell(raw, refs, f"column {name} row {r}")
        col.chunk_rows, col.block_rows = _rows_layout(nrows, 512, row_block)
        col.codec = "zstd"
        return col
    if tb.isscalarcol(name):
        pass
    elif (desc.get("option", 0) & 4) and "shape" in desc:
        col.layout = "fixed"
        col.cell_shape = tuple(int(x) for x in desc["shape"])
    else:
        _scan_shapes(tb, path, col, nrows, desc, row_block, track_runs=per_cell)
    if col.layout in ("shaped", "ragged"):
        col.node = f"{col.layout}/{col.node}"
        col.block_rows = max(1, min(row_block or nrows or 1,
                                    SHARD_BYTES // max(1, col.max_cell * col.itemsize)))
        col.block_rows = max(1, min(col.block_rows, nrows or 1))
        col.codec = _candidates(col)[0]
        if col.layout == "shaped" and col.shapes and work is not None:
            cell_bytes = col.itemsize * int(np.prod(col.shapes[0], dtype=np.int64))
            row, n = col.first_run
            n = max(1, min(n, _SAMPLE_BYTES // max(1, cell_bytes)))
            try:
                sample = _as_cells(_getcol(tb, col, row, n), col, (n,) + tuple(col.shapes[0]))
            except Exception as e:
                raise RawTableRequired(path, f"column {name} rows {row}-{row + n - 1}: {e}") from e
            col.choice = _start_choice(col, col.total * col.itemsize, sample, work)
        return col
    row_bytes = col.itemsize * int(np.prod(col.cell_shape, dtype=np.int64))
    col.chunk_rows, col.block_rows = _rows_layout(nrows, row_bytes, row_block)
    sample = None
    if nrows:
        # The first chunk for a column that may choose by speed; a smaller start otherwise
        # (casacore reads scalar columns slowly, and every row is read again when encoding).
        n = col.chunk_rows
        if work is None:
            n = 1
        elif nrows * row_bytes < _SPEED_MIN_BYTES:
            n = max(1, min(n, _SAMPLE_BYTES // max(1, row_bytes)))
        try:
            sample = _read_uniform(tb, col, 0, n)
            _read_uniform(tb, col, nrows - 1, 1)
        except _ReadFailure as e:
            raise RawTableRequired(path, str(e)) from e
    if work is not None:  # trials run on the pool while the next columns are planned
        col.choice = _start_choice(col, nrows * row_bytes, sample, work)
    else:
        col.codec = _candidates(col)[0]
    return col


_BEFORE_FIRST = object()  # the "shape" of the row before the first


def _scan_shapes(tb, path, col: _Col, nrows, desc, row_block, track_runs=False) -> None:
    """Layout of an array column without a fixed shape: *fixed* if every cell is defined and of
    one shape, else *shaped* (up to MAX_SHAPES distinct shapes with MIN_CELLS_PER_SHAPE cells
    each on average) or *ragged*; with the shapes in the order first seen, their counts and
    the runs of rows (which the tiled data managers' layout follows)."""
    counts: dict[tuple, int] = {}
    undefined = 0
    total = 0
    max_cell = 0
    max_ndim = max(0, int(desc.get("ndim", 0) or 0))
    step = row_block or 65536
    cache: dict = {}
    last: Any = _BEFORE_FIRST  # shape (or None) of the row before
    runs = runs_defined = 0  # runs so far, and up to the last defined cell
    defined_runs: list = []
    first_run = None
    for start in range(0, nrows, step):
        n = min(step, nrows - start)
        try:
            defined, shapes = _block_shapes(tb, col.name, start, n, cache)
        except Exception as e:
            raise RawTableRequired(path, f"column {col.name}: cannot read cell shapes: {e}") from e
        undefined += int(n - defined.sum())
        for i, s in enumerate(shapes):
            if s != last:
                runs += 1
                if first_run is not None and first_run[1] is None:
                    first_run[1] = start + i - first_run[0]
                last = s
            if s is None:
                continue
            runs_defined = runs
            if first_run is None:
                first_run = [start + i, None]
            if s in counts:
                counts[s] += 1
            else:
                counts[s] = 1
            if track_runs:
                if defined_runs and defined_runs[-1][0] == s:
                    defined_runs[-1][1] += 1
                else:
                    defined_runs.append([s, 1])
    if first_run is not None and first_run[1] is None:
        first_run[1] = nrows - first_run[0]
    for s, k in counts.items():
        size = int(np.prod(s, dtype=np.int64))
        max_ndim = max(max_ndim, len(s))
        max_cell = max(max_cell, size)
        total += size * k
    col.shapes, col.counts, col.runs = list(counts), list(counts.values()), runs_defined
    col.first_run = tuple(first_run) if first_run else (0, 0)
    col.defined_runs = [tuple(r) for r in defined_runs] if track_runs else None
    if undefined == 0 and len(counts) == 1:
        col.layout = "fixed"
        col.cell_shape = next(iter(counts))
    elif nrows == 0 and "shape" in desc and len(desc["shape"]):
        col.layout = "fixed"
        col.cell_shape = tuple(int(x) for x in desc["shape"])
    else:
        few = len(counts) <= MAX_SHAPES and sum(counts.values()) >= MIN_CELLS_PER_SHAPE * len(counts)
        col.layout = "shaped" if few else "ragged"
        col.max_ndim = max_ndim
        col.total = total
        col.max_cell = max_cell


def _check_hypercubes(path: Path, dm: dict, cols: list[_Col], desc: dict, nrows: int,
                      endian: str) -> None:
    """A TiledShapeStMan or TiledCellStMan makes a hypercube per cell shape (or cell) as cells
    are first written, its tile shape from the default tile shape; decode_table writes the rows
    in order. Raise RawTableRequired unless that recreates this data manager's hypercubes
    exactly (order, cell and cube shapes, tile shapes, bucket sizes, row index)."""
    kind = dm.get("TYPE")
    if kind not in ("TiledShapeStMan", "TiledCellStMan"):
        return
    arrays = [c for c in cols if c.layout in ("fixed", "shaped", "ragged")]
    if not arrays:
        return
    spec = dm.get("SPEC", {})
    cubes = spec.get("HYPERCUBES", {})
    actual = [cubes[k] for k in sorted(cubes, key=lambda k: int(k[1:]))]
    cell = [tuple(int(x) for x in np.asarray(h["CellShape"]).tolist()[::-1]) for h in actual]

    def refuse(why: str) -> None:
        raise RawTableRequired(path, f"data manager {dm.get('NAME')} ({kind}) of columns "
                                     f"{list(dm.get('COLUMNS', []))}: {why}, which writing the rows in "
                                     f"order does not recreate")

    def defined_runs(c: _Col) -> list:
        if c.layout == "fixed":
            return [(tuple(c.cell_shape), nrows)] if nrows else []
        return c.defined_runs or []

    first = arrays[0]
    shapes = [tuple(first.cell_shape)] if first.layout == "fixed" and nrows else list(first.shapes)
    if kind == "TiledShapeStMan":
        counts = [nrows] if first.layout == "fixed" and nrows else list(first.counts)
        runs = (1 if nrows else 0) if first.layout == "fixed" else first.runs
        for c in arrays[1:]:
            if (c.layout == "fixed") != (first.layout == "fixed") or (
                    c.layout != "fixed" and (c.shapes, c.counts, c.runs) != (first.shapes, first.counts, first.runs)):
                refuse("its columns have cells of different shapes")
        got = [int(np.asarray(h["CubeShape"])[-1]) for h in actual]
        if cell != shapes or got != counts:
            refuse(f"hypercubes of cell shapes {cell} with {got} rows (rows in order give {shapes} "
                   f"with {counts})")
        if int(spec.get("IndexSize", runs)) != runs:
            refuse(f"a row index of {spec.get('IndexSize')} entries (rows in order give {runs})")
    else:
        want = defined_runs(first)
        for c in arrays[1:]:
            if defined_runs(c) != want:
                refuse("its columns have cells of different shapes")
        got: list = []
        for s in cell:
            if got and got[-1][0] == s:
                got[-1][1] += 1
            else:
                got.append([s, 1])
        if [tuple(g) for g in got] != [tuple(w) for w in want]:
            refuse("hypercubes in an order other than the rows'")
    if not shapes:
        return
    tiles = _tile_shapes(dm, desc, shapes, endian)
    for h, s in zip(actual, cell):
        if (np.asarray(h["TileShape"]).tolist(), int(h["BucketSize"])) != tiles[s]:
            refuse(f"tile shape {np.asarray(h['TileShape']).tolist()} for cells of shape {list(s)}")


def _scratch_table(path: str, desc: dict, nrow: int, dminfo: dict, endian: str, cells=()) -> dict:
    """Make a scratch table (putting ``cells``, (column, row, value)) and return its
    data-manager info. Inside a worker_session in a worker, as every casacore write there."""
    with _worker_for(0, writes=True) as worker:
        if worker is None:
            t = _table(path, desc, nrow=nrow, dminfo=dminfo, ack=False, endian=endian)
            try:
                for c, r, v in cells:
                    t.putcell(c, r, v)
                return t.getdminfo()
            finally:
                t.close()
        rt = worker.table(path, desc, nrow, dminfo, endian)
        try:
            for c, r, v in cells:
                rt.putcell(c, r, v)
            return rt.call("getdminfo").result()
        finally:
            rt.close()


def _tile_shapes(dm: dict, desc: dict, shapes: list, endian: str) -> dict:
    """{cell shape: (tile shape, bucket size)} that the data manager, created as decode_table
    creates it, gives a hypercube of each of ``shapes``: found by writing one cell of each
    shape to a scratch table."""
    import tempfile

    names = list(dm.get("COLUMNS", []))
    sdesc = {c: {**desc[c], "keywords": {}} for c in names}
    sdesc.update({"_define_hypercolumn_": {}, "_keywords_": {}, "_private_keywords_": {}})
    cells = [(c, r, np.zeros(s, _CTYPES.get(desc[c].get("valueType")) or np.float64))
             for c in names if "ndim" in desc[c] for r, s in enumerate(shapes)]
    tmp = tempfile.mkdtemp(prefix="factor-archive-tiles-")
    try:
        info = _scratch_table(os.path.join(tmp, "t"), sdesc, len(shapes), {"*1": dm}, endian, cells)
        cubes = next(iter(info.values()))["SPEC"].get("HYPERCUBES", {})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {}
    for h in cubes.values():
        s = tuple(int(x) for x in np.asarray(h["CellShape"]).tolist()[::-1])
        out[s] = (np.asarray(h["TileShape"]).tolist(), int(h["BucketSize"]))
    return out


def _block_shapes(tb, name, start, n, cache) -> tuple[np.ndarray, list]:
    try:
        strs = tb.getcolshapestring(name, start, n)
        defined = np.ones(n, bool)
        if len(strs) == 1 and n > 1:
            strs = strs * n
    except Exception:
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
    except Exception:
        pass
    return np.fromiter((tb.iscelldefined(name, start + i) for i in range(n)), bool, n)


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


# --------------------------------------------------------------------------- codecs

# Labels of the blosc pipelines: (compressor, blosc clevel, shuffle).
_BLOSC = {
    "blosc-shuffle-zstd": ("zstd", LEVEL, "shuffle"),
    "blosc-bitshuffle-zstd": ("zstd", LEVEL, "bitshuffle"),
    "blosc-shuffle-zstd1": ("zstd", 1, "shuffle"),
    "blosc-bitshuffle-zstd1": ("zstd", 1, "bitshuffle"),
    "blosc-shuffle-lz4": ("lz4", 9, "shuffle"),
    "blosc-bitshuffle-lz4": ("lz4", 9, "bitshuffle"),
}
_ZSTD = {"zstd": LEVEL, "zstd1": 1}
_NUMCODECS = {"packbits-zstd", "delta-zstd"}


def _candidates(col: _Col, fast: bool = False) -> list[str]:
    """Codec labels for the column's type, the default first; ``fast`` adds the quick ones."""
    if col.is_string:
        return ["zstd"]
    k = col.dtype.kind
    if k == "b":
        out = ["blosc-bitshuffle-zstd", "packbits-zstd"]
        more = ["blosc-bitshuffle-zstd1", "blosc-bitshuffle-lz4"]
    elif col.dtype.itemsize == 1:
        out = ["zstd", "blosc-bitshuffle-zstd"]
        more = ["zstd1", "blosc-bitshuffle-lz4"]
    elif k in "iu":
        out = ["blosc-shuffle-zstd", "zstd", "delta-zstd"]
        more = ["blosc-shuffle-zstd1", "blosc-shuffle-lz4"]
    else:
        out = ["blosc-shuffle-zstd", "blosc-bitshuffle-zstd"]
        if col.layout == "scalar" and col.dtype == np.float64:
            out.append("delta-zstd")
        more = ["blosc-shuffle-zstd1", "blosc-bitshuffle-zstd1", "blosc-shuffle-lz4",
                "blosc-bitshuffle-lz4"]
    return out + more if fast else out


def _component(dtype: np.dtype) -> int:
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize


class _BadChunk(Exception):
    pass


class _ChunkCodec:
    """One inner chunk <-> its stored bytes, exactly as the zarr codec chain does it.

    The chain (spec): optional filter (``numcodecs.packbits`` / ``numcodecs.delta``), ``bytes``
    (little endian), one compressor (``blosc`` or ``zstd``), ``crc32c``. Built from a label when
    encoding and from the array's metadata when decoding, so any chain of that form is read.
    """

    def __init__(self, dtype: np.dtype, chunk_shape: tuple, filt: str | None, comp: tuple):
        import numcodecs

        self.dtype = np.dtype(dtype)
        self.chunk_shape = tuple(chunk_shape)
        self.nbytes = int(np.prod(self.chunk_shape, dtype=np.int64)) * self.dtype.itemsize
        self.filt = filt
        self.comp = comp
        if comp[0] == "blosc":
            _, cname, level, shuffle = comp
            self._codec = numcodecs.Blosc(cname=cname, clevel=level, shuffle={
                "noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[shuffle])
        else:
            self._codec = numcodecs.Zstd(level=comp[1])
        if filt == "packbits":
            self._filter = numcodecs.PackBits()
        elif filt == "delta":
            self._filter = numcodecs.Delta(dtype=self.dtype.str)
        else:
            self._filter = None

    @classmethod
    def from_label(cls, label: str, dtype: np.dtype, chunk_shape: tuple) -> _ChunkCodec:
        if label in _BLOSC:
            cname, level, shuffle = _BLOSC[label]
            return cls(dtype, chunk_shape, None, ("blosc", cname, level, shuffle))
        if label in _ZSTD:
            return cls(dtype, chunk_shape, None, ("zstd", _ZSTD[label]))
        if label == "packbits-zstd":
            return cls(dtype, chunk_shape, "packbits", ("zstd", LEVEL))
        if label == "delta-zstd":
            return cls(dtype, chunk_shape, "delta", ("zstd", LEVEL))
        raise ValueError(label)

    def encode(self, rows: np.ndarray) -> tuple[bytes, int]:
        """(compressed bytes, their crc32c) of ``rows`` padded with zeros to the chunk shape."""
        import google_crc32c

        if rows.shape != self.chunk_shape:
            full = np.zeros(self.chunk_shape, self.dtype)
            full[:len(rows)] = rows
            rows = full
        flat = np.ascontiguousarray(rows).reshape(-1)
        if self._filter is not None:
            flat = self._filter.encode(flat)
        if self.comp[0] == "blosc":  # typesize: one real component
            data = self._codec.encode(flat.view(f"u{_component(self.dtype)}"))
        else:
            data = self._codec.encode(flat)
        return data, google_crc32c.value(data)

    def decode(self, stored: np.ndarray, out: np.ndarray) -> None:
        """Check the crc32c of one stored chunk and decompress it into ``out`` (a whole chunk)."""
        import google_crc32c
        import numcodecs.blosc

        if len(stored) < 4:
            raise _BadChunk("chunk too short")
        body = stored[:-4]
        if google_crc32c.value(body) != int.from_bytes(stored[-4:].tobytes(), "little"):
            raise _BadChunk("crc32c checksum mismatch")
        target = out.reshape(-1).view(np.uint8)
        if self.comp[0] == "blosc" and self._filter is None:
            if len(body) < 16:
                raise _BadChunk("blosc header missing")
            nbytes, _block, cbytes = struct.unpack_from("<III", body, 4)
            if nbytes != self.nbytes or cbytes != len(body):
                raise _BadChunk("blosc sizes do not match the chunk")
            numcodecs.blosc.decompress(body, target)
            return
        try:
            raw = np.frombuffer(self._codec.decode(body), np.uint8)
        except Exception as e:
            raise _BadChunk(f"cannot decompress: {e}") from None
        if self._filter is not None:
            size = self.nbytes // self.dtype.itemsize
            if self.filt == "packbits":
                if len(raw) != 1 + -(-size // 8):
                    raise _BadChunk("packed size does not match the chunk")
                raw = self._filter.decode(raw).view(np.uint8)
            else:
                if len(raw) != self.nbytes:
                    raise _BadChunk("size does not match the chunk")
                raw = np.asarray(self._filter.decode(raw.view(self.dtype))).reshape(-1).view(np.uint8)
        if len(raw) != self.nbytes:
            raise _BadChunk("size does not match the chunk")
        target[:] = raw


def _codec_from_metadata(arr) -> tuple[_ChunkCodec, int, int] | None:
    """(chunk codec, chunk rows, shard rows) when the array is stored as this module writes
    (sharded along rows only, index at the end with bytes + crc32c, a chain _ChunkCodec
    reads); None otherwise (it is then read through zarr)."""
    import sys

    from zarr.core.buffer import default_buffer_prototype

    try:  # the stored JSON document, as the zarr v3 spec describes it
        md = json.loads(arr.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes())
        dtype = np.dtype(arr.dtype)
    except Exception:
        return None
    if sys.byteorder != "little" or dtype.kind not in "biufc" or len(md.get("codecs", ())) != 1:
        return None
    sh = md["codecs"][0]
    if sh.get("name") != "sharding_indexed":
        return None
    conf = sh.get("configuration", {})
    shape = tuple(arr.shape)
    shard = tuple(md["chunk_grid"]["configuration"]["chunk_shape"])
    chunk = tuple(conf.get("chunk_shape", ()))
    cell = tuple(max(1, s) for s in shape[1:])
    if (len(shard) != len(shape) or len(chunk) != len(shape) or shard[1:] != cell
            or chunk[1:] != cell or chunk[0] < 1 or shard[0] % chunk[0]):
        return None
    le = {"name": "bytes", "configuration": {"endian": "little"}}
    if conf.get("index_location", "end") != "end" or conf.get("index_codecs") != [le, {"name": "crc32c"}]:
        return None
    chain = list(conf.get("codecs", []))
    if len(chain) < 3 or chain[-1] != {"name": "crc32c"}:
        return None
    comp, ser, filters = chain[-2], chain[-3], chain[:-3]
    if ser.get("name") != "bytes" or (ser.get("configuration") or {}).get("endian", "little") not in (
            "little", None):
        return None
    cc = comp.get("configuration") or {}
    if comp.get("name") == "blosc":
        c = ("blosc", cc.get("cname"), int(cc.get("clevel", 5)), cc.get("shuffle"))
        if c[3] not in ("noshuffle", "shuffle", "bitshuffle") or cc.get("blocksize", 0) not in (0, None):
            return None
    elif comp.get("name") == "zstd":
        c = ("zstd", int(cc.get("level", 0)))
    else:
        return None
    filt = None
    if len(filters) > 1:
        return None
    if filters:
        f = filters[0]
        fc = f.get("configuration") or {}
        if f.get("name") == "numcodecs.packbits" and not fc and dtype.kind == "b":
            filt = "packbits"
        elif (f.get("name") == "numcodecs.delta" and fc.get("dtype") == dtype.str
              and fc.get("astype", dtype.str) == dtype.str):
            filt = "delta"
        else:
            return None
    try:
        return _ChunkCodec(dtype, chunk, filt, c), chunk[0], shard[0]
    except Exception:
        return None


def _trials(cands: list[str], sample: np.ndarray, timed: bool, runs: int = 1) -> dict[str, tuple[int, float]]:
    """{label: (compressed bytes, encode + decode CPU seconds)} of one chunk; a pipeline that
    does not give the chunk back bit for bit is left out. Timed: the best of ``runs`` runs of
    this thread's CPU time, so other threads and processes do not skew the choice."""
    import time

    out = {}
    sample = np.ascontiguousarray(sample)
    back = np.empty_like(sample)
    for label in cands:
        codec = _ChunkCodec.from_label(label, sample.dtype, sample.shape)
        best = math.inf
        for _ in range(runs if timed else 1):
            t0 = time.thread_time()
            data, crc = codec.encode(sample)
            t1 = time.thread_time()
            stored = np.empty(len(data) + 4, np.uint8)
            stored[:-4] = np.frombuffer(data, np.uint8)
            stored[-4:] = np.frombuffer(crc.to_bytes(4, "little"), np.uint8)
            t2 = time.thread_time()
            try:
                codec.decode(stored, back)
            except _BadChunk:
                break
            t3 = time.thread_time()
            best = min(best, (t1 - t0) + (t3 - t2))
        else:
            if back.tobytes() == sample.tobytes():
                out[label] = (len(data), best if timed else 0.0)
    return out


def _choose_codec(tb, path, col: _Col, nrows: int, sample, work: _Work) -> str:
    row_bytes = col.itemsize * int(np.prod(col.cell_shape, dtype=np.int64))
    return _start_choice(col, nrows * row_bytes, sample, work)(tb, path)


def _start_choice(col: _Col, nbytes: int, sample, work: _Work) -> Callable:
    """Start the codec trials of a column of ``nbytes`` on the pool; returns finish(tb, path)
    -> label.

    The smallest on the first chunk wins; for a column of _SPEED_MIN_BYTES or more the
    cheapest in (encode + decode CPU seconds) + (stored bytes / _WORTH), so that fast codecs
    win on noisy data. A numcodecs pipeline must beat that by 10 % (float delta: exactly).
    """
    if sample is None or sample.size == 0:
        return lambda tb, path: _candidates(col)[0]
    big = nbytes >= _SPEED_MIN_BYTES and sample.nbytes >= _NUMCODECS_MIN_SAMPLE
    cands = _candidates(col, big)
    if len(cands) == 1:
        return lambda tb, path: cands[0]
    if sample.nbytes < _NUMCODECS_MIN_SAMPLE:
        cands = [c for c in cands if c not in _NUMCODECS]
    res: dict[str, tuple[int, float]] = {}

    def run(labels, runs=1):
        return [work.pool.submit(_trials, [c], sample, big, runs) for c in labels]

    def collect(futs):
        for f in futs:
            for c, (size, secs) in f.result().items():
                res[c] = (size, min(secs, res[c][1]) if c in res else secs)

    first = run(cands)

    def finish(tb, path) -> str:
        collect(first)
        spec = [c for c in cands if c not in _NUMCODECS and c in res]
        if not spec:
            return _candidates(col)[0]
        if big:
            def cost(c):
                return res[c][1] + res[c][0] / _WORTH

            low = min(cost(c) for c in spec)
            collect(run([c for c in spec if cost(c) <= 1.08 * low], 2))  # contenders: best of 3
            best = min(spec, key=cost)
        else:
            best = min(spec, key=lambda c: res[c][0])
        for c in cands:
            if c in _NUMCODECS and c in res and res[c][0] < _NUMCODECS_MARGIN * res[best][0]:
                rows = nbytes // col.itemsize  # float delta: scalar columns only
                if c == "delta-zstd" and col.dtype.kind == "f" and not _delta_exact(tb, path, col, rows):
                    continue
                return c
        return best

    return finish


def _delta_exact(tb, path, col: _Col, nrows: int) -> bool:
    """Float delta is lossless only if cumsum(diff) gives back every bit of every chunk (as
    numcodecs computes them: the first value, then the differences, in the column's type)."""
    for start in range(0, nrows, col.block_rows):
        n = min(col.block_rows, nrows - start)
        try:
            block = _read_uniform(tb, col, start, n)
        except _ReadFailure as e:
            raise RawTableRequired(path, str(e)) from e
        k = -(-n // col.chunk_rows)
        chunks = np.zeros(k * col.chunk_rows, col.dtype)  # zero padded, like the last chunk
        chunks[:n] = block
        chunks = chunks.reshape(k, col.chunk_rows)
        enc = np.empty_like(chunks)
        enc[:, 0] = chunks[:, 0]
        np.subtract(chunks[:, 1:], chunks[:, :-1], out=enc[:, 1:])
        back = np.cumsum(enc, axis=1, dtype=col.dtype)
        if back.tobytes() != chunks.tobytes():
            return False
    return True


def _pipeline(label: str, dtype: np.dtype | None) -> dict:
    crc = zc.Crc32cCodec()
    if label in _ZSTD:
        return {"filters": (), "compressors": (zc.ZstdCodec(level=_ZSTD[label]), crc)}
    if label in _BLOSC:
        cname, level, shuffle = _BLOSC[label]
        blosc = zc.BloscCodec(cname=cname, clevel=level, shuffle=shuffle, typesize=_component(dtype))
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


# --------------------------------------------------------------------------- threads


class _Work:
    """The threads of one encode, decode or verify.

    ``pool`` compresses and decompresses inner chunks (and runs the codec trials), ``hasher``
    (one thread, so each column's blocks are hashed in order) feeds the sha256 streams, ``io``
    (one thread) stores assembled shards in order and fetches shards ahead. hashlib, blosc and
    zstd release the GIL, so they overlap casacore, which holds it. Row blocks live in at most
    _BUFFERS reused buffers, each back in the pool once every task reading it is done.
    """

    def __init__(self, shm: np.ndarray | None = None):
        from concurrent.futures import ThreadPoolExecutor

        n = _THREADS or max(2, min(8, os.cpu_count() or 2))
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="table-codec")
        self.hasher = ThreadPoolExecutor(1, thread_name_prefix="table-codec-hash")
        self.io = ThreadPoolExecutor(1, thread_name_prefix="table-codec-io")
        self._cond = threading.Condition()
        self._free: list[np.ndarray] = []
        self._count = 0
        self._stores: list = []
        self._slot = 0
        if shm is not None:  # the buffers are slots of memory shared with a casacore worker
            self._slot = len(shm) // _BUFFERS
            self._free = [shm[i * self._slot:(i + 1) * self._slot] for i in range(_BUFFERS)]
            self._count = _BUFFERS

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(cancel=exc_type is not None)

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 buffer of at least ``nbytes``; waits while _BUFFERS are in use."""
        nbytes = max(1, int(nbytes))
        if self._slot and nbytes > self._slot:
            return np.empty(nbytes, np.uint8)  # bigger than a shared slot: a private one
        with self._cond:
            while True:
                for i, b in enumerate(self._free):
                    if b.nbytes >= nbytes:
                        return self._free.pop(i)
                if self._count < _BUFFERS:
                    self._count += 1
                    break
                if self._free:  # all free ones too small: drop one, allocate below
                    self._free.pop()
                    self._count -= 1
                    continue
                self._cond.wait()
        try:
            return np.empty(nbytes, np.uint8)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify_all()
            raise

    def give(self, buf: np.ndarray, after=()) -> None:
        """Return ``buf`` to the pool once the futures ``after`` are done."""
        after = [f for f in after if f is not None]
        left = [len(after)]

        if self._slot and buf.nbytes != self._slot:
            return  # a private buffer (see take): just dropped

        def done(_f=None):
            with self._cond:
                left[0] -= 1
                if left[0] <= 0:
                    self._free.append(buf)
                    self._cond.notify_all()

        if not after:
            done()
        for f in after:
            f.add_done_callback(done)

    def store(self, fn, *args):
        fut = self.io.submit(fn, *args)
        # Stored ones are forgotten (failures kept for drain): the list stays short.
        self._stores = [f for f in self._stores if not f.done() or f.exception() is not None]
        self._stores.append(fut)
        return fut

    def drain(self) -> None:
        """Wait until everything handed to ``store`` is stored; raise the first failure."""
        stores, self._stores = self._stores, []
        first = None
        for f in stores:
            try:
                f.result()
            except BaseException as e:
                first = first or e
        if first is not None:
            raise first

    def close(self, cancel: bool = False) -> None:
        execs = (self.pool, self.io, self.hasher)
        if cancel:
            for ex in execs:
                ex.shutdown(wait=False, cancel_futures=True)
        for ex in execs:
            ex.shutdown(wait=True)
        self._free.clear()


def _buffer_view(buf: np.ndarray, dtype: np.dtype, shape: tuple) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return buf[:n].view(dtype).reshape(shape)


def _block_rows(chunk_rows: int, shard_rows: int, row_bytes: int) -> int:
    """Rows read or decoded at once: whole inner chunks, about BLOCK_BYTES, within a shard."""
    k = max(1, BLOCK_BYTES // max(1, chunk_rows * row_bytes))
    return max(1, min(shard_rows, chunk_rows * k))


# --------------------------------------------------------------------------- reading casacore


def _exact_cast(a: np.ndarray, col) -> np.ndarray:
    """casacore may hand back a wider type than the column's: narrow it only if no value changes."""
    if a.dtype == col.dtype:
        return a
    b = a.astype(col.dtype)
    if not np.array_equal(b, a):
        raise _ReadFailure(f"column {col.name}: values do not fit {col.dtype}")
    return b


def _read_uniform(tb, col: _Col, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows [start, start + n) of a uniform column; into ``out`` (C-contiguous, the column's
    dtype and shape) when given: getcolnp into a reused buffer is several times faster than
    getcol, which allocates (and page-faults) a new array each time."""
    if out is not None and col.dtype in _GETCOLNP and out.dtype == col.dtype and not col.per_cell:
        try:
            tb.getcolnp(col.name, out, start, n)
        except Exception as e:
            raise _ReadFailure(f"column {col.name} rows {start}-{start + n - 1}: {e}") from e
        return out
    try:
        v = _getcol(tb, col, start, n)
    except Exception as e:
        raise _ReadFailure(f"column {col.name} rows {start}-{start + n - 1}: {e}") from e
    a = _as_cells(v, col, (n,) + tuple(col.cell_shape), start)
    if out is not None:
        out[...] = a
        return out
    return a


# Types python-casacore's getcolnp reads (it converts silently, so only exact matches are used).
_GETCOLNP = {np.dtype(t) for t in (bool, np.int32, np.float32, np.float64, np.complex64, np.complex128)}


def _getcol(tb, col: _Col, start: int, n: int):
    """getcol; cell by cell for a TiledCellStMan column, whose row-range access casacore gets
    wrong (it fails or reads other cells when a tile does not fit the cell)."""
    if not col.per_cell:
        return tb.getcol(col.name, start, n)
    return np.stack([np.asarray(tb.getcell(col.name, start + i)) for i in range(n)])


def _as_cells(v, col: _Col, want: tuple, start: int = 0) -> np.ndarray:
    """What getcol returned as an array of the column's type and shape ``want``."""
    a = _str_array(v) if col.is_string else _exact_cast(np.asarray(v), col)
    if a.shape != want:
        raise _ReadFailure(f"column {col.name} rows {start}-{start + want[0] - 1}: shape {a.shape}, "
                           f"expected {want}")
    return a


def _read_runs(tb, col: _Col, start: int, n: int, cache: dict):
    """Rows [start, start + n) of a column whose cells vary: (defined, shapes, runs), runs being
    (first row in the block, rows, shape, cells) of consecutive defined cells of one shape,
    each read with one getcol."""
    try:
        defined, shapes = _block_shapes(tb, col.name, start, n, cache)
    except _ReadFailure:
        raise
    except Exception as e:
        raise _ReadFailure(f"column {col.name} rows {start}-{start + n - 1}: {e}") from e
    runs = []
    i = 0
    while i < n:
        s = shapes[i]
        j = i + 1
        while j < n and shapes[j] == s:
            j += 1
        if s is not None:
            if len(s) > col.max_ndim:
                raise _ReadFailure(f"column {col.name} row {start + i}: ndim changed while reading")
            try:
                v = _getcol(tb, col, start + i, j - i)
            except Exception as e:
                raise _ReadFailure(f"column {col.name} rows {start + i}-{start + j - 1}: {e}") from e
            runs.append((i, j - i, s, _as_cells(v, col, (j - i,) + s, start + i)))
        i = j
    return defined, shapes, runs


def _shape_records(defined: np.ndarray, shapes: list, max_ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ndim, shape zero padded to max_ndim) of each row; 0 where undefined."""
    n = len(shapes)
    ndim = np.zeros(n, np.int32)
    shp = np.zeros((n, max_ndim), np.int64)
    for i, s in enumerate(shapes):
        if s is not None:
            ndim[i] = len(s)
            shp[i, :len(s)] = s
    return ndim, shp


def _run_values(runs: list, col: _Col) -> np.ndarray:
    """The values of the runs' cells, one cell after another, each in C order."""
    if runs:
        return np.concatenate([a.reshape(-1) for _i, _n, _s, a in runs])
    return np.empty(0, dtype=object if col.is_string else col.dtype)


class _StoredRecords:
    """The bytes casacore stores for the cells of record columns (see casacore_record), which
    python-casacore only hands out with their types lost. casacore keeps a record cell as an
    array of uChar in the column's data manager; a scratch table in a temporary directory has
    the same data managers with each record column described as that array (and the same
    sequence numbers, which their files record: placeholder data managers fill the gaps), and
    the original data-manager files linked in, so reading it reads the stored bytes."""

    _FILE = __import__("re").compile(r"table\.f(\d+)(\D.*)?$")

    def __init__(self, tb, path: Path, names: list[str]):
        import tempfile

        desc = tb.getdesc()
        info = tb.getdminfo()
        dms = sorted((dm for dm in info.values() if set(dm["COLUMNS"]) & set(names)),
                     key=lambda dm: dm["SEQNR"])
        mine = {c for dm in dms for c in dm["COLUMNS"]}
        sdesc = {}
        for c in tb.colnames():
            if c not in mine:
                continue
            d = {**desc[c], "keywords": {}}
            if c in names:
                d = {**_ct().makearrcoldesc(c, 0, valuetype="uchar", ndim=1)["desc"],
                     "dataManagerType": d.get("dataManagerType", ""),
                     "dataManagerGroup": d.get("dataManagerGroup", ""), "keywords": {}}
            sdesc[c] = d
        sdesc.update({"_define_hypercolumn_": {}, "_keywords_": {}, "_private_keywords_": {}})
        sdm = []  # data managers in sequence order, placeholders before each
        for dm in dms:
            while len(sdm) < dm["SEQNR"]:
                name = f"__placeholder{len(sdm)}"
                while name in sdesc:
                    name += "_"
                sdesc[name] = {**_ct().makescacoldesc(name, 0)["desc"], "keywords": {}}
                sdm.append({"TYPE": "StandardStMan", "NAME": name, "SPEC": {}, "COLUMNS": [name]})
            sdm.append(dm)
        self.dir = tempfile.mkdtemp(prefix="factor-archive-records-")
        self.tb = None
        try:
            scratch = os.path.join(self.dir, "t")
            info = _scratch_table(scratch, sdesc, tb.nrows(), {f"*{i + 1}": dm for i, dm in enumerate(sdm)},
                                  tb.endianformat())
            seq = {dm["NAME"]: dm["SEQNR"] for dm in info.values()}
            for dm in dms:  # the scratch table's files of each data manager -> the original's
                if seq[dm["NAME"]] != dm["SEQNR"]:
                    raise RawTableRequired(path, f"record columns of data manager {dm['NAME']} cannot be read")
                self._relink(scratch, str(path), dm["SEQNR"])
            self.tb = _table(scratch, ack=False)
        except BaseException:
            self.close()
            raise

    def _relink(self, scratch: str, original: str, seq: int) -> None:
        for entry in os.listdir(scratch):
            m = self._FILE.match(entry)
            if m and int(m.group(1)) == seq:
                os.remove(os.path.join(scratch, entry))
        for entry in os.listdir(original):
            m = self._FILE.match(entry)
            if m and int(m.group(1)) == seq:
                os.symlink(os.path.join(os.path.realpath(original), entry), os.path.join(scratch, entry))

    def cell(self, name: str, row: int) -> bytes | None:
        """The stored bytes of a cell; None if it was never written."""
        if not self.tb.iscelldefined(name, row):
            return None
        return np.asarray(self.tb.getcell(name, row)).astype(np.uint8).tobytes()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- hashing


class _ColumnHash:
    def __init__(self, name: str, ctype: str, scalar: bool):
        self.head = _canon({"name": name, "type": ctype, "scalar": scalar})
        self.dtype = _CTYPES[ctype]
        self.is_string = self.dtype is None  # strings, and records as tagged JSON text
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
        h.update(f"column\t{name}\t{columns[name]}\n".encode())
    for name in sorted(subtables):
        h.update(f"subtable\t{name}\t{subtables[name]}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- encode


_MAX_U64 = 2**64 - 1


def _shard_key(meta, path: str, s: int, ndim: int) -> str:
    key = meta.encode_chunk_key((s,) + (0,) * (ndim - 1))
    return f"{path}/{key}" if path else key


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _ArrayOut:
    """Writes a sharded array, block by block in row order, straight to the store.

    Blocks cover whole inner chunks (the last one may end with the array). Each chunk is
    compressed on the pool; once a shard's chunks are all queued, the io thread assembles them
    with the shard index (zarr's sharding format: chunks, then (offset, length) uint64 pairs
    and their crc32c) and stores the shard: every shard is written once, and at most
    _SHARDS_IN_FLIGHT of them are waiting to be stored.
    """

    def __init__(self, node: _Node, work: _Work):
        self.work = work
        self.node = node
        self.store, self.path = node.store, node.path
        self.shape = node.shape
        self.nrows = self.shape[0]
        self.chunk, self.shard = node.chunks[0], node.shards[0]
        self.cps = self.shard // self.chunk
        self.empty = 0 in self.shape
        self.codec = _ChunkCodec.from_label(node.label, node.dtype, node.chunks)
        self.pos = 0
        self.parts: list = []
        self.inflight: deque = deque()
        self.stored = 0

    def write(self, block: np.ndarray) -> list:
        """Queue rows [pos, pos + len(block)); returns the futures still reading ``block``."""
        n = len(block)
        start = self.pos
        if start + n > self.nrows:
            raise _ReadFailure(f"{self.path}: {start + n} rows for an array of {self.nrows}")
        self.pos += n
        if self.empty or n == 0:
            return []
        if start % self.chunk or (n % self.chunk and start + n != self.nrows):
            raise ValueError(f"{self.path}: block {start}+{n} is not made of whole chunks")
        futs = []
        for i in range(0, n, self.chunk):
            futs.append(self.work.pool.submit(self.codec.encode, block[i:i + self.chunk]))
            self.parts.append(futs[-1])
            end = start + min(n, i + self.chunk)
            if end % self.shard == 0 or end == self.nrows:
                self._flush((end - 1) // self.shard)
        return futs

    def _flush(self, s: int) -> None:
        while len(self.inflight) >= _SHARDS_IN_FLIGHT:
            self.inflight.popleft().result()
        parts, self.parts = self.parts, []
        self.inflight.append(self.work.store(self._store_shard, s, parts))

    def _store_shard(self, s: int, parts: list) -> None:
        import google_crc32c
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        done = [f.result() for f in parts]
        parts.clear()
        total = sum(len(d) + 4 for d, _ in done) + 16 * self.cps + 4
        buf = np.empty(total, np.uint8)
        index = np.full((self.cps, 2), _MAX_U64, dtype="<u8")
        off = 0
        for j in range(len(done)):
            data, crc = done[j]
            done[j] = None  # compressed chunks are freed as they are copied
            n = len(data)
            buf[off:off + n] = np.frombuffer(data, np.uint8)
            buf[off + n:off + n + 4] = np.frombuffer(crc.to_bytes(4, "little"), np.uint8)
            index[j] = (off, n + 4)
            off += n + 4
            del data
        raw = index.tobytes()
        buf[off:off + len(raw)] = np.frombuffer(raw, np.uint8)
        buf[off + len(raw):] = np.frombuffer(google_crc32c.value(raw).to_bytes(4, "little"), np.uint8)
        key = self.node.shard_key(s)
        sync(self.store.set(key, default_buffer_prototype().buffer.from_array_like(buf)))
        self.stored += total

    def close(self) -> None:
        if self.pos != self.nrows:
            raise _ReadFailure(f"wrote {self.pos} of {self.nrows} elements")

    def stored_bytes(self) -> int | None:
        return self.stored


class _ZarrOut:
    """Writes through zarr itself (variable-length strings), whole shards at a time."""

    def __init__(self, arr):
        self.arr, self.pos = arr, 0

    def write(self, block) -> list:
        n = len(block)
        if n:
            self.arr[self.pos:self.pos + n] = block
        self.pos += n
        return []

    def close(self) -> None:
        if self.pos != self.arr.shape[0]:
            raise _ReadFailure(f"wrote {self.pos} of {self.arr.shape[0]} elements")

    def stored_bytes(self) -> int | None:
        return _stored_bytes(self.arr)


def _writer(node: _Node, work: _Work):
    if node.dtype is None:
        arr = zarr.open_array(node.store, path=node.path, mode="r+", zarr_format=3)
        return _ZarrOut(arr.with_config({"write_empty_chunks": True}))  # every shard stored
    return _ArrayOut(node, work)


class _Appender:
    """Buffers values along axis 0 and writes whole shards, so no shard is written twice."""

    def __init__(self, out, shard: int):
        self.out, self.shard = out, shard
        self.parts: list[np.ndarray] = []
        self.n = 0

    def add(self, a: np.ndarray) -> None:
        if len(a):
            self.parts.append(a)
            self.n += len(a)
            if len(self.parts) > 64:  # many small parts cost more than their values
                self.parts = [np.concatenate(self.parts)]
        while self.n >= self.shard:
            self._flush(self.shard)

    def _flush(self, count: int) -> None:
        buf = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.out.write(buf[:count])
        rest = buf[count:]
        self.parts = [rest] if len(rest) else []
        self.n = len(rest)

    def close(self) -> None:
        if self.n:
            self._flush(self.n)
        self.out.close()


def _digest(h: _ColumnHash, futs: list) -> str:
    for f in futs:  # done already (same thread, in order); re-raises a failed update
        f.result()
    return h.hexdigest()


def _scan_column(tb, nrows: int, col: _Col, w, progress, work: _Work, rtb=None, records=None):
    """Read one column in row blocks, hash it and hand it to ``w``; returns its digest (a
    future when hashed on the hashing thread). With ``rtb`` (the table in a casacore worker)
    numeric uniform columns are read there, a few blocks ahead; ``records`` is
    (_StoredRecords, _Refs) for a record column."""
    if col.layout == "record":
        h = _ColumnHash(col.name, col.ctype, True)
        for start in range(0, nrows, col.block_rows):
            cells, refs = records
            n = min(col.block_rows, nrows - start)
            texts = np.empty(n, dtype=object)
            for i in range(n):
                raw = cells.cell(col.name, start + i)
                texts[i] = "" if raw is None else _canon(
                    _record_cell(raw, refs, f"column {col.name} row {start + i}")).decode("utf-8")
            h.uniform(texts, True)
            if w:
                w.write(texts)
            if progress:
                progress(n * col.itemsize)
        if w:
            w.close()
        return h.hexdigest()
    h = _ColumnHash(col.name, col.ctype, col.layout == "scalar")
    if col.layout in ("ragged", "shaped"):
        cache: dict = {}
        for start in range(0, nrows, col.block_rows):
            n = min(col.block_rows, nrows - start)
            defined, shapes, runs = _read_runs(tb, col, start, n, cache)
            ndim, shp = _shape_records(defined, shapes, col.max_ndim)
            values = _run_values(runs, col)
            h.ragged(defined, ndim, shp, values)
            if w:
                w.write(start, n, (defined, ndim, shp, values, runs))
            if progress:
                progress(int(values.size * col.itemsize))
        if w:
            w.close()
        return h.hexdigest()
    scalar = col.layout == "scalar"
    cell = tuple(col.cell_shape)
    row_items = int(np.prod(cell, dtype=np.int64))
    if col.is_string or row_items == 0:
        for start in range(0, nrows, col.block_rows):
            n = min(col.block_rows, nrows - start)
            block = _read_uniform(tb, col, start, n)
            h.uniform(block, scalar)
            if w:
                w.write(block)
            if progress:
                progress(int(block.size * col.itemsize))
        if w:
            w.close()
        return h.hexdigest()
    row_bytes = row_items * col.itemsize
    step = _block_rows(col.chunk_rows, col.block_rows, row_bytes)
    if col.per_cell:
        rtb = None  # read cell by cell, here
    hashed = []
    ahead: deque = deque()  # blocks being read by the worker
    limit = max(1, _BUFFERS - 2) if rtb is not None else 1

    def finish() -> None:
        start, n, buf, block, fut = ahead.popleft()
        try:
            if fut is not None:
                block = fut.result()
        except BaseException:
            work.give(buf)
            raise
        futs = [work.hasher.submit(h.uniform, block, scalar)]
        hashed.append(futs[0])
        if w:
            futs += w.write(block)
        work.give(buf, futs)
        if progress:
            progress(n * row_bytes)

    try:
        for s0 in range(0, nrows, col.block_rows):
            s1 = min(nrows, s0 + col.block_rows)
            for start in range(s0, s1, step):
                n = min(step, s1 - start)
                while len(ahead) >= limit:
                    finish()
                buf = work.take(n * row_bytes)
                out = _buffer_view(buf, col.dtype, (n,) + cell)
                try:
                    if rtb is not None:
                        ahead.append((start, n, buf, out, _read_remote(rtb, col, start, n, out)))
                    else:
                        ahead.append((start, n, buf, _read_uniform(tb, col, start, n, out=out), None))
                except BaseException:
                    work.give(buf)
                    raise
        while ahead:
            finish()
    finally:
        for item in ahead:  # failed: let the worker finish with them first
            work.give(item[2], [item[4]])
    if w:
        w.close()
    return work.hasher.submit(_digest, h, hashed)


class _RemoteRead:
    """A block the worker reads into shared memory (or returns, for types getcolnp lacks)."""

    def __init__(self, fut, col: _Col, start: int, n: int, out: np.ndarray, direct: bool):
        self.fut, self.col, self.start, self.n, self.out, self.direct = fut, col, start, n, out, direct

    def add_done_callback(self, fn):
        self.fut.add_done_callback(lambda _f: fn(self))

    def result(self) -> np.ndarray:
        col, rows = self.col, f"rows {self.start}-{self.start + self.n - 1}"
        try:
            v = self.fut.result()
        except _WorkerGone:
            raise
        except _WorkerError as e:  # casacore could not read it, as in _read_uniform
            raise _ReadFailure(f"column {col.name} {rows}: {e}") from e
        if self.direct:
            return self.out
        a = _exact_cast(np.asarray(v), col)
        if a.shape != self.out.shape:
            raise _ReadFailure(f"column {col.name} {rows}: shape {a.shape}, expected {self.out.shape}")
        self.out[...] = a
        return self.out


def _read_remote(rtb, col: _Col, start: int, n: int, out: np.ndarray) -> _RemoteRead:
    if col.dtype in _GETCOLNP:
        return _RemoteRead(rtb.call("getcolnp", col.name, out, start, n), col, start, n, out, True)
    return _RemoteRead(rtb.call("getcol", col.name, start, n), col, start, n, out, False)


def _raw_bytes(nrows: int, c: _Col) -> int:
    if c.layout in ("ragged", "shaped"):
        return int(c.total * c.itemsize)
    return int(nrows * c.itemsize * int(np.prod(c.cell_shape, dtype=np.int64)))


def _result(d):
    return d.result() if hasattr(d, "result") else d


def _scan_table(plan: _Plan, sink, progress, work: _Work, worker: _Worker | None = None) -> dict:
    """Read every column of plan's table in blocks, feed ``sink``; return content tree."""
    tb = _open(plan.path)
    rtb = worker.open(plan.path) if worker is not None else None
    digests = {}
    records = None
    try:
        if tb.nrows() != plan.nrows:
            raise _ReadFailure(f"row count changed from {plan.nrows} to {tb.nrows()}")
        names = [c.name for c in plan.columns if c.layout == "record"]
        if names and plan.nrows:
            records = (_StoredRecords(tb, plan.path, names), _Refs(plan.path))
        for col in sorted(plan.columns, key=lambda c: -_raw_bytes(plan.nrows, c)):
            # Biggest first: casacore's slow scalar reads then overlap their compression.
            w = sink.column(col) if sink else None
            digests[col.name] = _scan_column(tb, plan.nrows, col, w, progress, work, rtb, records)
    finally:
        if records is not None:
            records[0].close()
        tb.close()
        if rtb is not None:
            rtb.close(quiet=True)
    subs = {}
    for name, _ref in plan.subtables:
        subs[name] = _scan_table(plan.children[name], sink.subtable(name, plan.children[name]) if sink else None,
                                 progress, work, worker)
    digests = {n: _result(d) for n, d in digests.items()}
    return {"content_sha256": _table_sha(plan.hash_header(), digests,
                                         {n: s["content_sha256"] for n, s in subs.items()}),
            "metadata_sha256": _metadata_sha256(plan.static()),
            "columns": digests, "subtables": subs}


_TEMPLATES: dict = {}  # (dtype, codec label, ndim) -> the metadata document zarr writes


@dataclass
class _Node:
    """An array to be written: where, its layout, and its zarr.json document."""

    store: Any
    path: str
    shape: tuple
    chunks: tuple
    shards: tuple
    label: str
    dtype: np.dtype | None
    doc: dict

    def shard_key(self, s: int) -> str:
        enc = self.doc["chunk_key_encoding"]
        sep = (enc.get("configuration") or {}).get("separator", "/")
        coords = (s,) + (0,) * (len(self.shape) - 1)
        key = ("c" + sep + sep.join(str(c) for c in coords)) if enc["name"] == "default" else \
            ".".join(str(c) for c in coords)
        return f"{self.path}/{key}" if self.path else key


def _array_doc(shape, dtype, chunk0: int, shard0: int, label: str, dims, attrs=None) -> tuple:
    """(zarr.json document, chunks, shards) of a new array. The document is the one zarr's
    create_array writes for an array of this dtype and codec (made once per kind, in memory),
    with shape, chunk shapes, dimension names and attributes filled in: creating each array
    through zarr costs milliseconds (validation, existence checks), which adds up for the many
    small columns of subtables."""
    from zarr.core.buffer import default_buffer_prototype

    shape = tuple(int(x) for x in shape)
    chunks = (max(1, chunk0),) + tuple(max(1, x) for x in shape[1:])
    shards = (max(1, shard0),) + chunks[1:]
    key = ("str" if dtype is None else np.dtype(dtype).str, label, len(shape))
    t = _TEMPLATES.get(key)
    if t is None:
        g = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
        arr = _create(g, "t", (1,) * len(shape), dtype, 1, 1, label, ("d",) * len(shape))
        t = json.loads(arr.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes())
        _TEMPLATES[key] = t
    doc = json.loads(json.dumps(t))
    doc["shape"] = list(shape)
    doc["chunk_grid"]["configuration"]["chunk_shape"] = list(shards)
    doc["codecs"][0]["configuration"]["chunk_shape"] = list(chunks)
    doc["dimension_names"] = list(dims)
    doc["attributes"] = {"codec": label, **(attrs or {})}
    return doc, chunks, shards


def _node_bytes(doc: dict | None, attrs: dict | None = None):
    """zarr's serialisation of an array document (validated by zarr), or of a group."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata
    from zarr.core.metadata.v3 import ArrayV3Metadata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md = ArrayV3Metadata.from_dict(doc) if doc is not None else GroupMetadata(attributes=attrs or {})
        return md.to_buffer_dict(default_buffer_prototype())["zarr.json"]


class _GroupSink:
    """Where one table goes. Every node of the table tree (groups, arrays) is laid out first and
    its zarr.json written in one concurrent batch (write_nodes); columns are then filled."""

    def __init__(self, store, path: str, plan: _Plan, work: _Work, attrs: dict | None = None):
        self.store, self.path, self.plan, self.work = store, path, plan, work
        self.nodes: list[tuple[str, dict | None, dict | None]] = []  # (path, array doc, group attrs)
        self.arrays: dict[str, list[_Node]] = {}
        self.writers: dict[str, list] = {}
        self.children: dict[str, _GroupSink] = {}
        if attrs is not None:
            self.nodes.append((path, None, attrs))
        groups: set[str] = set()
        for col in plan.columns:
            if col.layout in ("scalar", "fixed", "record"):
                shape = (plan.nrows,) + tuple(col.cell_shape)
                self.arrays[col.name] = [self._array(col.node, shape, col.dtype, col.chunk_rows,
                                                     col.block_rows, col.codec, col.dims)]
                continue
            if col.layout not in groups:
                self.nodes.append((self._sub(col.layout), None, {}))
                groups.add(col.layout)
            base = col.node
            if col.layout == "shaped":
                self.arrays[col.name] = self._shaped(col, base)
                continue
            self.nodes.append((self._sub(base), None, {"column": col.name}))
            rows_chunk, rows_shard = _rows_layout(plan.nrows, 8 * (col.max_ndim + 1), None)
            elem_chunk, elem_shard = _rows_layout(col.total, col.itemsize, None)
            self.arrays[col.name] = [
                self._array(f"{base}/defined", (plan.nrows,), np.dtype(bool), rows_chunk, rows_shard,
                            "blosc-bitshuffle-zstd", ("row",)),
                self._array(f"{base}/ndim", (plan.nrows,), np.dtype(np.int32), rows_chunk, rows_shard,
                            "zstd", ("row",)),
                self._array(f"{base}/shape", (plan.nrows, col.max_ndim), np.dtype(np.int64), rows_chunk,
                            rows_shard, "zstd", ("row", f"{col.name}_axis")),
                self._array(f"{base}/values", (col.total,), col.dtype, elem_chunk, elem_shard, col.codec,
                            (f"{col.name}_value",))]
        if plan.subtables:
            self.nodes.append((self._sub("subtables"), None, {}))
        for name, _ref in plan.subtables:
            child = plan.children[name]
            self.children[name] = _GroupSink(store, self._sub(f"subtables/{name}"), child, work,
                                             {ATTR: child.static()})

    def _sub(self, rel: str) -> str:
        return f"{self.path}/{rel}" if self.path else rel

    def _shaped(self, col: _Col, base: str) -> list[_Node]:
        """A group per cell shape, holding the column's cells of that shape and their rows."""
        self.nodes.append((self._sub(base), None, {
            "column": col.name, "shapes": [list(s) for s in col.shapes], "counts": list(col.counts)}))
        shard_bytes = max(CHUNK_BYTES, SHARD_BYTES // max(1, len(col.shapes)))  # all fill at once
        leaf = _shaped_leaf(col.node)
        out = []
        for s, count in zip(col.shapes, col.counts):
            g = f"{base}/{_shape_name(s)}"
            self.nodes.append((self._sub(g), None, {"cell_shape": list(s)}))
            cell_bytes = col.itemsize * int(np.prod(s, dtype=np.int64))
            c0, s0 = _rows_layout(count, cell_bytes, None, shard_bytes)
            out.append(self._array(f"{g}/{leaf}", (count,) + tuple(s), col.dtype, c0, s0, col.codec,
                                   ("row",) + _axis_names(col.name, tuple(s), {})))
            r0, r1 = _rows_layout(count, 8, None, shard_bytes)
            out.append(self._array(f"{g}/row", (count,), np.dtype(np.int64), r0, r1,
                                   "blosc-shuffle-zstd", ("row",)))
        return out

    def _array(self, rel, shape, dtype, chunk0, shard0, label, dims) -> _Node:
        doc, chunks, shards = _array_doc(shape, dtype, chunk0, shard0, label, dims)
        node = _Node(self.store, self._sub(rel), tuple(int(x) for x in shape), chunks, shards, label,
                     dtype, doc)
        self.nodes.append((node.path, doc, None))
        return node

    def write_nodes(self) -> None:
        """Store the zarr.json of every group and array of the table tree, all at once."""
        import asyncio

        from zarr.core.sync import sync

        items = []

        def collect(sink):
            for path, doc, attrs in sink.nodes:
                items.append((f"{path}/zarr.json" if path else "zarr.json", _node_bytes(doc, attrs)))
            for child in sink.children.values():
                collect(child)

        collect(self)

        async def put_all():
            await asyncio.gather(*(self.store.set(k, v) for k, v in items))

        sync(put_all())

    def column(self, col: _Col):
        writers = [_writer(n, self.work) for n in self.arrays[col.name]]
        self.writers[col.name] = writers
        if col.layout == "ragged":
            return _RaggedWriter(writers, self.arrays[col.name])
        if col.layout == "shaped":
            return _ShapedWriter(writers, self.arrays[col.name], col.shapes)
        return writers[0]

    def subtable(self, name: str, plan: _Plan) -> _GroupSink:
        return self.children[name]


class _RaggedWriter:
    def __init__(self, writers: list, nodes: list[_Node]):
        self.apps = [_Appender(w, n.shards[0]) for w, n in zip(writers, nodes)]

    def write(self, start, n, block):
        for app, part in zip(self.apps, block[:4]):
            app.add(part)

    def close(self):
        for app in self.apps:
            app.close()


class _ShapedWriter:
    """Appends each run of cells to the arrays of its shape: the cells, and their row numbers."""

    def __init__(self, writers: list, nodes: list[_Node], shapes: list):
        self.apps = [_Appender(w, n.shards[0]) for w, n in zip(writers, nodes)]
        self.index = {tuple(s): k for k, s in enumerate(shapes)}

    def write(self, start, n, block):
        cells: dict[int, list] = {}
        rows: dict[int, list] = {}
        for i, m, s, a in block[4]:
            k = self.index.get(s)
            if k is None:
                raise _ReadFailure(f"row {start + i}: cell shape {list(s)} appeared while reading")
            cells.setdefault(k, []).append(a)
            rows.setdefault(k, []).append(np.arange(start + i, start + i + m, dtype=np.int64))
        for k in cells:  # one part per shape and block, however short the runs
            self.apps[2 * k].add(np.concatenate(cells[k]) if len(cells[k]) > 1 else cells[k][0])
            self.apps[2 * k + 1].add(np.concatenate(rows[k]))

    def close(self):
        for app in self.apps:
            app.close()


def _shape_name(shape) -> str:
    """The group name of a cell shape in a shaped column: ``64x4`` (numpy order)."""
    return "x".join(str(int(x)) for x in shape) if len(shape) else "0d"


def _shaped_leaf(node: str) -> str:
    """Name of a shaped column's cell array in each shape group (``row`` is the row numbers)."""
    leaf = node.split("/", 1)[1]
    return "%72ow" if leaf == "row" else leaf


def _stored_bytes(arr) -> int | None:
    """Bytes of the array's shards in the store (metadata not counted)."""
    from zarr.core.sync import sync

    try:
        return int(sync(arr.store.getsize_prefix(f"{arr.path}/c/")))
    except Exception:
        return None


def _info(plan: _Plan, content: dict, sink: _GroupSink | None) -> dict:
    cols = {}
    for c in plan.columns:
        entry = {"layout": c.layout, "type": c.ctype, "codec": c.codec, "node": c.node,
                 "raw_bytes": _raw_bytes(plan.nrows, c)}
        if c.layout == "shaped":
            entry["shapes"] = [list(s) for s in c.shapes]
        writers = sink.writers.get(c.name, []) if sink else []
        sizes = [w.stored_bytes() for w in writers]
        if writers and None not in sizes:
            entry["stored_bytes"] = sum(sizes)
        cols[c.name] = entry
    return {
        "rows": plan.nrows,
        "columns": [c.name for c in plan.columns],
        "codecs": {c.name: c.codec for c in plan.columns},
        "column_info": cols,
        "raw_fallback": False,
        "content_sha256": content["content_sha256"],
        "metadata_sha256": content["metadata_sha256"],
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
    Reading (casacore; for a table of _WORKER_MIN_BYTES or more in a worker process, see
    _Worker), hashing, compressing and storing overlap (see _Work).
    """
    if row_block is not None and row_block < 1:
        raise ValueError("row_block must be at least 1")
    path = Path(table_path)
    with _worker_for(_table_file_bytes(path)) as worker, _Work(worker and worker.buf) as work:
        plan = _plan(path, row_block, work=work)
        existing = set(group.keys())
        if existing & ({c.node.split("/")[0] for c in plan.columns} | _RESERVED):
            raise FactorArchiveError(f"zarr group {group.path!r} is not empty")
        sink = _GroupSink(group.store, group.path, plan, work)
        try:
            sink.write_nodes()
            content = _scan_table(plan, sink, progress, work, worker)
            work.drain()
        except _ReadFailure as e:
            work.close(cancel=True)
            _cleanup(group, existing)
            raise RawTableRequired(path, f"reading failed: {e}") from e
        except BaseException:
            work.close(cancel=True)
            _cleanup(group, existing)
            raise
    _quiet_attrs_update(group, {ATTR: plan.static(), CONTENT_ATTR: {"version": CONTENT_VERSION, **content}})
    return _info(plan, content, sink)


def _table_file_bytes(path: Path) -> int:
    """Bytes of the files of the table itself (not its subtables)."""
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return total


def _cleanup(group: zarr.Group, keep: set) -> None:
    for k in list(group.keys()):
        if k not in keep:
            try:
                del group[k]
            except Exception:
                pass


def table_content_sha256(table_path: str | Path) -> str:
    """Checksum of the table's content (see the module docstring), streaming by row blocks."""
    path = Path(table_path)
    with _worker_for(_table_file_bytes(path)) as worker, _Work(worker and worker.buf) as work:
        plan = _plan(path, None)
        try:
            return _scan_table(plan, None, None, work, worker)["content_sha256"]
        except _ReadFailure as e:
            raise RawTableRequired(table_path, f"reading failed: {e}") from e


# --------------------------------------------------------------------------- casacore worker

# python-casacore holds the GIL inside getcol/putcol, and for a big table those calls (with the
# kernel's copying) take as long as decompressing and hashing everything else: in one process
# they would take turns. A worker process runs the casacore calls instead; row blocks travel
# through shared memory (a memfd both map), commands and small values through pipes. The
# worker imports only numpy and casacore, so it starts in about 0.1 s.
#
# The worker is also where casacore writes go inside a worker_session() (the commands open one):
# casacore aborts the process (std::terminate) when a write fails in a destructor, which a full
# disk makes happen, so its writes must not run in ours. The worker's standard error goes to a
# memfd: an abort's "what()" line becomes our one-line error, and nothing of it reaches the user.
_WORKER_SOURCE = r"""
import os, signal, sys
# The parent decides when we stop: Ctrl-C and SIGTERM reach the whole process group, and the
# parent stops its threads first, then ends us. If the parent dies, we die with it (parent-death
# signal; EOF on the command pipe where there is no prctl).
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[3]):  # the parent died before prctl
    os._exit(0)
import importlib, mmap, pickle, struct
import numpy as np
from casacore import tables as ct

RUN = {"concat_in_frequency": "factor_archive.ms.concat"}  # what the "run" command may call


class Table(ct.table):  # as table_codec._table: also tables with a uShort column
    def _makerow(self):
        try:
            super()._makerow()
        except RuntimeError:
            self._row = None


def kind(e):
    names = {c.__name__ for c in type(e).__mro__}
    return "bad_input" if "BadInput" in names else "ours" if "FactorArchiveError" in names else "other"


def main():
    rd = os.fdopen(int(sys.argv[1]), "rb")
    wr = os.fdopen(int(sys.argv[2]), "wb")
    shm = None
    tables = {}
    # Failed calls are kept, with their frames: a casacore table in them that failed to write
    # would write again in its destructor, and abort. The parent never reuses a worker that failed.
    failed = []

    def value(a):
        if isinstance(a, tuple) and len(a) == 4 and a[0] == "__shm__":
            _tag, off, dtype, shape = a
            n = int(np.prod(shape, dtype=np.int64))
            return np.frombuffer(shm, dtype=np.dtype(dtype), count=n, offset=off).reshape(shape)
        return a

    while True:
        head = rd.read(8)
        if len(head) < 8:
            return
        op = pickle.loads(rd.read(struct.unpack("<Q", head)[0]))
        try:
            if op[0] == "shm":
                shm = mmap.mmap(op[1], op[2])
                out = None
            elif op[0] == "open":
                writable = len(op) > 3 and op[3]
                tables[op[1]] = Table(op[2], ack=False, readonly=not writable,
                                      lockoptions="default" if writable else "autonoread")
                out = None
            elif op[0] == "new":
                _o, tid, path, desc, nrow, dminfo, endian = op
                tables[tid] = Table(path, desc, nrow=nrow, dminfo=dminfo, ack=False, endian=endian)
                out = None
            elif op[0] == "call":
                _o, tid, method, args = op
                out = getattr(tables[tid], method)(*[value(a) for a in args])
                if method == "close":
                    del tables[tid]
                elif isinstance(out, np.ndarray) and out.base is not None:
                    out = np.array(out)
            elif op[0] == "run":
                _o, name, args = op
                out = getattr(importlib.import_module(RUN[name]), name)(*args)
            elif op[0] == "exit":
                for t in tables.values():
                    t.close()
                return
            reply = (True, out)
        except BaseException as e:
            failed.append(e)
            reply = (False, (type(e).__name__, kind(e), " ".join(str(e).split())))
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        wr.write(struct.pack("<Q", len(data)) + data)
        wr.flush()


try:
    main()
except BaseException:  # the parent went away (broken pipe): nobody to tell
    pass
os._exit(0)  # no interpreter shutdown: nothing left for destructors to write
"""

_IDLE_WORKERS = 2  # finished workers kept for the next table within a worker_session
_session_lock = threading.Lock()
_sessions = 0
_idle: list[_Worker] = []
_spawner = None  # the thread that starts workers (see _spawn)


class _WorkerError(FactorArchiveError):
    """A casacore call failed in the worker."""


class _WorkerGone(_WorkerError):
    """The worker process is not there any more."""


class _WorkerStopped(_WorkerError):
    """The caller stopped waiting (interrupted, or another member failed)."""


def _reply_error(value) -> FactorArchiveError:
    """Our error for a failed call in the worker: the worker's own one-line text."""
    from ..errors import BadInput

    tname, kind, text = value
    if kind == "bad_input":
        return BadInput(text)
    if kind == "ours":
        return FactorArchiveError(text)
    return _WorkerError(f"{tname}: {text}")


def _last_words(text: str) -> str:
    """What a worker that died said last: casacore's what() line for an abort, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "what():" in line:
            return line.split("what():", 1)[1].strip()
    return lines[-1] if lines else ""


def _full_disk_note(text: str, path: str | None) -> str:
    """``text`` (a casacore failure), saying so when the disk it was writing to is full.

    casacore does not always report a full disk as such (a short write can surface as "Failed
    AlwaysAssert tracePWRITE(...)"); the free space of the table's file system, looked at at once,
    still says what happened.
    """
    if not path or "no space left on device" in text.lower():
        return text
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return text
    free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    if free >= _FULL_BELOW:
        return text
    return f"{path}: No space left on device ({text})" if text else f"{path}: No space left on device"


_FULL_BELOW = 1 << 20  # bytes free under which a failed casacore write is put down to a full disk


def _spawn(*args, **kwargs):
    """subprocess.Popen, from one long-lived thread: the worker's parent-death signal fires when
    the *thread* that started it ends, and a pipeline thread may end before a kept worker does."""
    global _spawner
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    with _session_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(1, thread_name_prefix="casacore-worker-spawner")
    return _spawner.submit(subprocess.Popen, *args, **kwargs).result()


class _Worker:
    """A casacore worker process (see _WORKER_SOURCE). Calls return futures, answered in order
    by a reader thread; arguments that are views of ``shm`` go by reference."""

    def __init__(self, shm_bytes: int):
        import mmap
        import subprocess
        import sys
        from concurrent.futures import Future

        self._Future = Future
        self.fd = os.memfd_create("factor-archive-table", 0)
        try:
            os.ftruncate(self.fd, shm_bytes)
            self.shm = mmap.mmap(self.fd, shm_bytes)
        except BaseException:
            os.close(self.fd)
            raise
        self.buf = np.frombuffer(self.shm, np.uint8)
        self.base = self.buf.__array_interface__["data"][0]
        self.size = shm_bytes
        package_root = str(Path(__file__).resolve().parents[2])  # for the "run" command's imports
        env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        # Own pipes, not stdin/stdout: whatever casacore prints cannot garble the replies.
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self._stderr = os.memfd_create("factor-archive-worker-stderr", 0)
        try:
            self.proc = _spawn([sys.executable, "-c", _WORKER_SOURCE, str(cmd_r), str(rep_w), str(os.getpid())],
                               stdin=subprocess.DEVNULL, stderr=self._stderr,
                               pass_fds=(self.fd, cmd_r, rep_w), env=env)
        except BaseException:
            for fd in (cmd_r, cmd_w, rep_r, rep_w, self.fd, self._stderr):
                os.close(fd)
            raise
        os.close(cmd_r)
        os.close(rep_w)
        self._cmd = os.fdopen(cmd_w, "wb")
        self._replies = os.fdopen(rep_r, "rb")
        self._lock = threading.Lock()
        self._waiting: deque = deque()
        self._error: BaseException | None = None
        self._failed = False  # a call failed: never reused (see _WORKER_SOURCE)
        self._open: set[int] = set()  # tables made or opened and not yet closed
        self._paths: dict[int, str] = {}  # table id -> path, of the tables made here
        # Commands are written by a sender thread, so a caller never waits for the worker to
        # read (only when _WORKER_QUEUE_BYTES of commands are queued already).
        self._queue: deque = deque()
        self._queued = 0
        self._qcond = threading.Condition()
        self._reader = threading.Thread(target=self._read_replies, name="table-codec-worker", daemon=True)
        self._reader.start()
        self._sender = threading.Thread(target=self._send_commands, name="table-codec-worker-send",
                                        daemon=True)
        self._sender.start()
        self._ntables = 0
        self.send(("shm", self.fd, shm_bytes))

    def _read_replies(self) -> None:
        import pickle

        out = self._replies
        try:
            while True:
                head = out.read(8)
                if len(head) < 8:
                    break
                ok, value = pickle.loads(out.read(struct.unpack("<Q", head)[0]))
                with self._lock:
                    fut, path = self._waiting.popleft()
                if ok:
                    fut.set_result(value)
                else:
                    self._failed = True
                    tname, kind, text = value
                    fut.set_exception(_reply_error((tname, kind, _full_disk_note(text, path))))
        except BaseException as e:
            self._error = _WorkerGone(f"casacore worker process failed: {e}")
        with self._lock:
            pending = list(self._waiting)
            self._waiting.clear()
            if self._error is None:
                said = _full_disk_note(self._said(), pending[0][1] if pending else None)
                self._error = _WorkerGone("casacore worker process ended" + (f": {said}" if said else ""))
        for fut, _path in pending:
            fut.set_exception(self._error)
        with self._qcond:
            self._qcond.notify_all()

    def _said(self) -> str:
        """The worker's last words on its standard error (see _last_words)."""
        try:
            self.proc.wait(timeout=5)  # the replies ended: it is exiting, or gone
        except Exception:
            pass
        try:
            size = os.fstat(self._stderr).st_size
            text = os.pread(self._stderr, 8192, max(0, size - 8192))
        except OSError:
            return ""
        return _last_words(text.decode("utf-8", errors="replace"))

    def _send_commands(self) -> None:
        while True:
            with self._qcond:
                while not self._queue:
                    self._qcond.wait()
                data = self._queue.popleft()
            if data is None:
                break
            try:
                self._cmd.write(struct.pack("<Q", len(data)) + data)
                self._cmd.flush()
            except (OSError, ValueError):  # the worker is gone: the reader fails the futures
                with self._qcond:
                    self._queue.clear()
                    self._queued = 0
                    self._qcond.notify_all()
                break
            with self._qcond:
                self._queued -= len(data)
                self._qcond.notify_all()
        try:
            self._cmd.close()
        except OSError:
            pass

    def send(self, op: tuple):
        import pickle

        data = pickle.dumps(op, protocol=pickle.HIGHEST_PROTOCOL)
        fut = self._Future()
        with self._qcond:
            while self._queued and self._queued + len(data) > _WORKER_QUEUE_BYTES and self._error is None:
                self._qcond.wait(0.5)
            with self._lock:
                if self._error is not None:
                    raise self._error
                self._waiting.append((fut, self._written_by(op)))
            self._queue.append(data)
            self._queued += len(data)
            self._qcond.notify_all()
        return fut

    def _written_by(self, op: tuple) -> str | None:
        """The table a command writes (for _full_disk_note), as far as the client knows it."""
        if op[0] == "new" or (op[0] == "open" and len(op) > 3 and op[3]):
            self._paths[op[1]] = op[2]
            return op[2]
        if op[0] == "call":
            return self._paths.get(op[1])
        if op[0] == "run" and len(op[2]) > 1:
            return str(op[2][1])  # concat_in_frequency(slots, out_path)
        return None

    def _stop_sender(self) -> None:
        with self._qcond:
            self._queue.append(None)
            self._qcond.notify_all()
        self._sender.join()

    def ref(self, a):
        """``a`` by reference when it lives in the shared memory, else as it is."""
        if isinstance(a, np.ndarray) and a.flags.c_contiguous and a.dtype.kind in "biufc" and a.size:
            addr = a.__array_interface__["data"][0]
            if self.base <= addr and addr + a.nbytes <= self.base + self.size:
                return ("__shm__", addr - self.base, a.dtype.str, a.shape)
        return a

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(kill=exc_type is not None)

    def open(self, path, writable: bool = False) -> _RemoteTable:
        """The table, opened for reading (or writing) in the worker (asynchronously)."""
        self._ntables += 1
        tid = self._ntables
        self._open.add(tid)
        return _RemoteTable(self, tid, self.send(("open", tid, str(path), writable)))

    def table(self, path, desc, nrow, dminfo, endian) -> _RemoteTable:
        self._ntables += 1
        tid = self._ntables
        self._open.add(tid)
        # Not waited for: the columns are read meanwhile.
        return _RemoteTable(self, tid, self.send(("new", tid, str(path), desc, nrow, dminfo, endian)))

    def run(self, name: str, args: tuple, stop: Callable[[], bool]):
        """The allow-listed function ``name`` (see RUN in _WORKER_SOURCE) called in the worker.

        ``stop`` is polled while waiting (a pipeline thread does not see KeyboardInterrupt):
        when it says so, _WorkerStopped is raised and the worker, left busy, is killed on exit.
        """
        from concurrent.futures import TimeoutError as FutureTimeout

        fut = self.send(("run", name, args))
        while True:
            try:
                return fut.result(timeout=0.2)
            except FutureTimeout:
                if stop():
                    raise _WorkerStopped(f"stopped while {name} ran") from None

    def close(self, kill: bool = False) -> None:
        """Keep the worker for the next table (inside a worker_session, when it is clean), or end it."""
        if not kill and self._keep():
            return
        self._end(kill)

    def _keep(self) -> bool:
        if self._failed or self._error is not None or self._open or self._waiting \
                or self.proc.poll() is not None:
            return False
        with _session_lock:
            if _sessions and len(_idle) < _IDLE_WORKERS:
                _idle.append(self)
                return True
        return False

    def _end(self, kill: bool = False) -> None:
        try:
            if kill:
                self.proc.kill()
            else:
                try:
                    self.send(("exit",))
                except _WorkerError:
                    pass
            self._stop_sender()
            try:
                self.proc.wait(timeout=None if kill else 30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        finally:
            self._reader.join(timeout=10)
            self._replies.close()
            self.buf = None
            try:
                self.shm.close()
            except BufferError:  # a view still exists; the mapping goes with the process
                pass
            os.close(self.fd)
            os.close(self._stderr)


class _NoWorker:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _worker_for(nbytes: int, *, writes: bool = False):
    """A casacore worker (context manager) when a table of ``nbytes`` warrants one, or when the
    table is written inside a worker_session, and the platform allows it; else a context giving
    None (casacore runs in this process). Inside a session a kept worker is reused."""
    if not hasattr(os, "memfd_create"):
        return _NoWorker()
    if not (writes and _sessions) and (_WORKER_MIN_BYTES is None or nbytes < _WORKER_MIN_BYTES):
        return _NoWorker()
    with _session_lock:
        if _idle:
            return _idle.pop()
    try:
        return _Worker(_BUFFERS * BLOCK_BYTES)
    except Exception:
        return _NoWorker()


@contextmanager
def worker_session():
    """Within this block every casacore write runs in a worker process, and workers that finished
    cleanly are kept (at most _IDLE_WORKERS) for the next table; leaving it ends the kept ones.

    A full disk can make casacore abort the process it runs in: in a worker that is our one-line
    error, in this process it would be an abort. The commands open a session around their work.
    """
    global _sessions
    with _session_lock:
        _sessions += 1
    try:
        yield
    finally:
        with _session_lock:
            _sessions -= 1
            done = list(_idle) if _sessions == 0 else []
            if _sessions == 0:
                _idle.clear()
        for worker in done:
            worker._end()


def run_in_worker(name: str, *args, stop: Callable[[], bool] = lambda: False):
    """Call the casacore-writing function ``name`` (``concat_in_frequency``) in a worker inside a
    worker_session (in this process otherwise); its errors come back as they were raised."""
    with _worker_for(0, writes=True) as worker:
        if worker is None:
            from . import concat

            return getattr(concat, name)(*args)
        return worker.run(name, args, stop)


class _RemoteTable:
    """The casacore table calls decode makes (put*, flush, close), run by the worker. All but
    close return a future at once; the first failure is raised by the next call and by close."""

    def __init__(self, worker: _Worker, tid: int, created=None):
        self.worker, self.tid, self.created = worker, tid, created
        self.pending: list = [created] if created is not None else []

    def _call(self, method: str, *args):
        self._check()
        return self.worker.send(("call", self.tid, method, tuple(self.worker.ref(a) for a in args)))

    def _check(self) -> None:
        done = [f for f in self.pending if f.done()]
        for f in done:
            f.result()
        if done:
            self.pending = [f for f in self.pending if not f.done()]

    def __getattr__(self, method):
        if not method.startswith("put") and method != "flush":
            raise AttributeError(method)

        def call(*args):
            fut = self._call(method, *args)
            self.pending.append(fut)
            return fut

        return call

    def wait_created(self) -> None:
        """Wait until the worker has made (or opened) the table."""
        if self.created is not None:
            self.created.result()

    def call(self, method: str, *args):
        """Any table method; returns its future (reads: the caller waits for it)."""
        self._check()
        return self.worker.send(("call", self.tid, method, tuple(self.worker.ref(a) for a in args)))

    def close(self, quiet: bool = False) -> None:
        try:
            fut = self.worker.send(("call", self.tid, "close", ()))
            pending, self.pending = self.pending, []
            for f in pending:
                f.result()
            fut.result()
            self.worker._open.discard(self.tid)
        except _WorkerError:
            if not quiet:
                raise


# --------------------------------------------------------------------------- decode


def _static(group: zarr.Group) -> dict:
    st = group.attrs.get(ATTR)
    if not isinstance(st, dict) or st.get("format") != FORMAT:
        raise CorruptTableData(f"zarr group {group.path!r} holds no complete casacore table")
    if st.get("version") not in READ_VERSIONS:
        raise CorruptTableData(f"zarr group {group.path!r}: unsupported table format version "
                               f"{st.get('version')}")
    return st


class _Damage(Exception):
    """Stored data of rows (or values) first..last is missing or damaged."""

    def __init__(self, first: int, last: int, kind: str, detail: str = ""):
        super().__init__(f"{first}-{last}: {kind}")
        self.first, self.last, self.kind, self.detail = first, last, kind, detail

    def text(self, unit: str) -> str:
        return (f"{unit} {self.first}-{self.last}: stored data is {self.kind}"
                + (f" ({self.detail})" if self.detail else ""))


class _ArrayIn:
    """Reads an array stored as _ArrayOut writes it, without zarr's per-chunk machinery: the
    io thread fetches whole shards (one ahead), the pool checks each inner chunk's crc32c and
    decompresses it straight into a reused row-block buffer. A shard that is absent, or an
    inner chunk absent from its shard, is *missing* (zarr would read fill values); a bad
    checksum or size is *damaged*. Nothing needs listing the store, so any store works."""

    def __init__(self, arr, codec: _ChunkCodec, chunk: int, shard: int, work: _Work):
        self.arr, self.codec, self.chunk, self.shard, self.work = arr, codec, chunk, shard, work
        self.store, self.path, self.meta = arr.store, arr.path, arr.metadata
        self.shape = tuple(arr.shape)
        self.nrows = self.shape[0]
        self.row_shape = self.shape[1:]
        self.dtype = np.dtype(arr.dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.cps = shard // chunk
        self.nshards = -(-self.nrows // shard)
        self._cached: dict[int, Any] = {}

    def _range(self, s: int) -> tuple[int, int]:
        return s * self.shard, min(self.nrows, (s + 1) * self.shard) - 1

    def _fetch(self, s: int):
        import google_crc32c
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        first, last = self._range(s)
        key = _shard_key(self.meta, self.path, s, len(self.shape))
        try:
            got = sync(self.store.get(key, prototype=default_buffer_prototype()))
        except Exception as e:
            raise _Damage(first, last, "damaged", f"cannot read it: {_first_line(e)}") from None
        if got is None:
            raise _Damage(first, last, "missing")
        data = got.as_numpy_array().reshape(-1).view(np.uint8)
        isz = 16 * self.cps + 4
        if len(data) < isz:
            raise _Damage(first, last, "damaged", "shard too short")
        idx = data[-isz:]
        if google_crc32c.value(idx[:-4]) != int.from_bytes(idx[-4:].tobytes(), "little"):
            raise _Damage(first, last, "damaged", "shard index checksum mismatch")
        return data, np.frombuffer(idx[:-4].tobytes(), "<u8").reshape(self.cps, 2), len(data) - isz

    def _chunk(self, shard_fut, s: int, j: int, out: np.ndarray, skip: int = 0) -> None:
        """Decode inner chunk j of shard s; put its rows skip.. into ``out``."""
        data, table, end = shard_fut.result()
        r0 = s * self.shard + j * self.chunk
        r1 = min(self.nrows, r0 + self.chunk) - 1
        off, length = int(table[j, 0]), int(table[j, 1])
        if off == _MAX_U64:
            raise _Damage(r0, r1, "missing", "chunk absent from its shard")
        if off + length > end:
            raise _Damage(r0, r1, "damaged", "chunk outside its shard")
        whole = (self.chunk,) + self.row_shape
        target = out if (skip == 0 and out.shape == whole) else np.empty(whole, self.dtype)
        try:
            self.codec.decode(data[off:off + length], target)
        except _BadChunk as e:
            raise _Damage(r0, r1, "damaged", str(e)) from None
        if target is not out:
            out[:] = target[skip:skip + len(out)]

    def blocks(self):
        """(start, stop, rows, buffer, damage) in row order; the caller gives ``buffer`` back
        (work.give) once it is done with ``rows``."""
        if self.nrows == 0:
            return
        step = _block_rows(self.chunk, self.shard, self.row_bytes)
        plan = [(b0, min(self._range(s)[1] + 1, b0 + step), s)
                for s in range(self.nshards) for b0 in range(s * self.shard, self._range(s)[1] + 1, step)]
        if self.row_bytes == 0:
            for b0, b1, _s in plan:
                yield b0, b1, np.zeros((b1 - b0,) + self.row_shape, self.dtype), None, None
            return
        fetched: dict[int, Any] = {}
        pending: deque = deque()
        work = self.work

        def submit(i: int) -> None:
            b0, b1, s = plan[i]
            for t in (s, s + 1):  # this shard, and the next one ahead
                if t < self.nshards and t not in fetched:
                    fetched[t] = work.io.submit(self._fetch, t)
            buf = work.take((b1 - b0) * self.row_bytes)
            rows = _buffer_view(buf, self.dtype, (b1 - b0,) + self.row_shape)
            futs = [work.pool.submit(self._chunk, fetched[s], s, (r - s * self.shard) // self.chunk,
                                     rows[r - b0:min(b1, r + self.chunk) - b0])
                    for r in range(b0, b1, self.chunk)]
            pending.append((b0, b1, s, rows, buf, futs))

        nxt = 0
        try:
            for i in range(len(plan)):
                while nxt < len(plan) and nxt < i + _AHEAD:
                    submit(nxt)
                    nxt += 1
                b0, b1, s, rows, buf, futs = pending.popleft()
                damage = None
                for f in futs:
                    try:
                        f.result()
                    except _Damage as e:
                        damage = damage or e
                if i + 1 == len(plan) or plan[i + 1][2] != s:
                    fetched.pop(s, None)
                yield b0, b1, rows, buf, damage
        finally:
            for _b0, _b1, _s, _rows, buf, futs in pending:  # abandoned: back once decoded
                work.give(buf, futs)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) (raises _Damage); for the small ragged arrays."""
        out = np.zeros((max(0, stop - start),) + self.row_shape, self.dtype)
        if stop <= start or self.row_bytes == 0:
            return out
        first_shard = start // self.shard
        for s in [k for k in self._cached if k < first_shard]:
            del self._cached[s]
        futs = []
        for r in range(start - start % self.chunk, stop, self.chunk):
            s = r // self.shard
            if s not in self._cached:
                self._cached[s] = self.work.io.submit(self._fetch, s)
            a, b = max(start, r), min(stop, r + self.chunk)
            futs.append(self.work.pool.submit(self._chunk, self._cached[s], s, (r % self.shard) // self.chunk,
                                              out[a - start:b - start], a - r))
        damage = None
        for f in futs:
            try:
                f.result()
            except _Damage as e:
                damage = damage or e
        if damage:
            raise damage
        return out


class _ZarrIn:
    """Reads through zarr (strings, or an array stored some other way): shard by shard, each
    checked to exist first, since zarr would silently read fill values for an absent one."""

    def __init__(self, arr, work: _Work):
        self.arr, self.work = arr, work
        self.shape = tuple(arr.shape)
        self.nrows = self.shape[0]
        self.shard = (arr.shards or arr.chunks)[0]
        self._present: set[int] = set()

    def _check(self, s: int) -> None:
        from zarr.core.sync import sync

        if s in self._present or 0 in self.shape:
            return
        key = _shard_key(self.arr.metadata, self.arr.path, s, len(self.shape))
        if not sync(self.arr.store.exists(key)):
            raise _Damage(s * self.shard, min(self.nrows, (s + 1) * self.shard) - 1, "missing")
        self._present.add(s)

    def _get(self, a: int, b: int):
        for s in range(a // self.shard, (b - 1) // self.shard + 1):
            self._check(s)
        try:
            return self.arr[a:b]
        except Exception as e:
            raise _Damage(a, b - 1, "damaged", _first_line(e)) from None

    def blocks(self):
        for a in range(0, self.nrows, self.shard):
            b = min(self.nrows, a + self.shard)
            try:
                yield a, b, self._get(a, b), None, None
            except _Damage as e:
                yield a, b, None, None, e

    def read(self, start: int, stop: int):
        if stop <= start:
            return self.arr[start:start]
        return self._get(start, stop)


def _reader(arr, work: _Work):
    fast = _codec_from_metadata(arr)
    return _ArrayIn(arr, *fast, work) if fast else _ZarrIn(arr, work)


def decode_table(group: zarr.Group, out_path: str | Path, *, progress=None) -> None:
    """Rebuild the table at ``out_path`` (made under a temporary name, then renamed).

    Every table description is checked against its metadata checksum before it is used, every
    column against its stored sha256 and the table against its content checksum; damage
    raises CorruptTableData naming the table, column and rows. Reading and decompressing
    (pool), hashing (one thread) and casacore writing (this thread, or for a big table a
    worker process, see _Worker) overlap.
    """
    out = Path(out_path)
    st = _static(group)
    content = group.attrs.get(CONTENT_ATTR)
    if os.path.lexists(out):
        raise FileExistsError(f"{out} exists")
    version = _content_version(content, out.name)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
            with _worker_for(_uniform_bytes(st), writes=True) as worker, _Work(worker and worker.buf) as work:
                _decode_into(group, st, tmp, content, version, progress, out.name, work, worker)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _content_version(content, where: str) -> int:
    """Version of a ``casacore_content`` document (1: no metadata checksums)."""
    if not isinstance(content, dict):
        return 0
    version = content.get("version", 1)
    if version not in (1, CONTENT_VERSION):
        raise CorruptTableData(f"{where}: unsupported table checksum version {version!r}")
    return version


def _metadata_problem(st: dict, content: dict | None, version: int, where: str) -> str | None:
    """What is wrong with a table's stored description, judged by its metadata checksum."""
    if not isinstance(content, dict):
        return None
    want = content.get("metadata_sha256")
    if want is None:
        return f"{where}: table description has no checksum" if version >= 2 else None
    if _metadata_sha256(st) != want:
        return f"{where}: table description differs from its stored checksum"
    return None


def _column_bytes(nrows: int, c: dict) -> int:
    """Bytes of a stored numeric column (0 for strings, records and ragged columns)."""
    dt = _CTYPES.get(c["type"])
    if c["layout"] in ("ragged", "record") or dt is None:
        return 0
    if c["layout"] == "shaped":
        return dt.itemsize * sum(int(n) * int(np.prod(s, dtype=np.int64))
                                 for s, n in zip(c.get("shapes", []), c.get("counts", [])))
    return nrows * dt.itemsize * int(np.prod(c["cell_shape"], dtype=np.int64))


def _uniform_bytes(st: dict) -> int:
    """Bytes of the table's numeric columns (what a casacore worker would move)."""
    return sum(_column_bytes(st["nrows"], c) for c in st["columns"])


def _decode_into(group: zarr.Group, st: dict, path: Path, content: dict | None, version: int,
                 progress, where: str, work: _Work, worker: _Worker | None = None) -> dict:
    problem = _metadata_problem(st, content, version, where)
    if problem:
        raise CorruptTableData(problem)
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
    dm_type = {c: dm.get("TYPE") for dm in st["dminfo"] if isinstance(dm, dict) for c in dm.get("COLUMNS", [])}
    per_cell = {c for c, t in dm_type.items() if t == "TiledCellStMan"}
    # IncrementalStMan gives a cell never written the value of the row before it, unless the
    # table was closed and reopened since it was made: such columns (whose cells may be
    # undefined) are written last, after a reopen. (StManAipsIO, by contrast, loses what is
    # written after its table was first flushed: its columns go before.)
    reopen = [c for c in cols if dm_type.get(c["name"]) == "IncrementalStMan"
              and c["layout"] in ("shaped", "ragged", "record")]
    if worker is not None:
        tb = worker.table(str(path), desc, nrows, dminfo, st["endian"])
    else:
        tb = _table(str(path), desc, nrow=nrows, dminfo=dminfo, ack=False, endian=st["endian"])
    resolve = _resolver(path)
    digests = {}
    done = False

    def read(c: dict) -> None:
        digests[c["name"]] = _read_column(group, c, nrows, work, f"{where}: column {c['name']}", tb=tb,
                                          progress=progress, resolve=resolve, per_cell=c["name"] in per_cell)

    try:
        info = dict(st["info"])
        if info.get("readme", "").endswith("\n"):  # putinfo ends every readme line itself
            info["readme"] = info["readme"][:-1]
        tb.putinfo(info)
        records = [c for c in cols if c["layout"] == "record" and c not in reopen]  # may refer to subtables
        for c in sorted((c for c in cols if c not in records and c not in reopen),
                        key=lambda c: -_column_bytes(nrows, c)):
            read(c)  # biggest first (see _scan_table)
        subs = {}
        if st["subtables"] and worker is not None:
            tb.wait_created()  # the subtables go inside its directory
        for s in st["subtables"]:
            sg = group[s["group"]]
            sub_content = (content or {}).get("subtables", {}).get(s["name"]) if content else None
            # Subtables (small) are written by this process while the worker catches up; inside
            # a worker_session by the worker too (every casacore write is isolated there).
            subs[s["name"]] = _decode_into(sg, _static(sg), path / s["name"], sub_content, version,
                                           progress, f"{where}/{s['name']}", work,
                                           worker if _sessions else None)
        for c in records:
            read(c)
        if reopen:
            tb.close()
            tb = worker.open(path, writable=True) if worker is not None else \
                _table(str(path), readonly=False, ack=False)
            for c in reopen:
                read(c)
        for k, v in _dec_kw(st["keywords"], resolve).items():
            tb.putkeyword(k, v)
        for c in cols:
            for k, v in _dec_kw(c["keywords"], resolve).items():
                tb.putcolkeyword(c["name"], k, v)
        digests = {n: _result(d) for n, d in digests.items()}
        tb.flush()
        done = True
    finally:
        if done:
            tb.close()
        else:
            try:
                tb.close()
            except Exception:
                pass
    header = _hash_header(nrows, st["info"], {c["name"]: c["desc"] for c in cols}, st["keywords"],
                          {c["name"]: c["keywords"] for c in cols})
    _check_restored_header(path, st, header, where)
    sha = _table_sha(header, digests, {n: s["content_sha256"] for n, s in subs.items()})
    if content:
        for name, d in digests.items():
            if content["columns"].get(name) != d:
                raise CorruptTableData(f"{where}: column {name} does not match its checksum")
        if content["content_sha256"] != sha:
            raise CorruptTableData(f"{where}: table content does not match its checksum")
    return {"content_sha256": sha, "columns": digests, "subtables": subs}


def _dm_layout(dms) -> list:
    """The data-manager layout restore must recreate (every data manager's type, name, columns
    and specification: bucket sizes, tile shapes, hypercubes), without the sequence numbers
    casacore gives the data managers of a new table, which name its files."""
    def plain(v):
        if isinstance(v, dict):
            if set(v) == {"__ndarray__", "dtype"}:
                return [plain(x) for x in v["__ndarray__"]]
            return {k: plain(x) for k, x in v.items() if k != "SEQNR"}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    out = [plain(_jsonable(dm)) for dm in (dms.values() if isinstance(dms, dict) else dms)]
    for dm in out:
        dm["COLUMNS"] = sorted(dm.get("COLUMNS", []))
    return sorted(out, key=lambda dm: str(dm.get("NAME")))


def _check_restored_header(path: Path, st: dict, header: dict, where: str) -> None:
    """casacore may normalise what it is given: make sure it kept exactly what was stored
    (description, keywords, info; for a version 2 table also the private keywords and the
    data-manager layout)."""
    tb = _open(path)
    try:
        d = _describe(tb, path)
        got = _hash_header(tb.nrows(), d["info"], d["desc"], d["keywords"], d["colkeywords"])
        layout = _dm_layout(tb.getdminfo())
    finally:
        tb.close()
    diff = sorted(k for k in header if _canon(header[k]) != _canon(got.get(k)))
    if st.get("version", 1) >= 2:
        if _canon(d["private_keywords"]) != _canon(st.get("private_keywords") or {}):
            diff.append("private keywords")
        if _canon(layout) != _canon(_dm_layout(st["dminfo"])):
            diff.append("data-manager layout")
    if diff:
        raise FactorArchiveError(f"{where}: restored table differs from the stored one in {diff}")


def _put_uniform(tb, name: str, block, start: int, n: int, is_string: bool, scalar: bool,
                 per_cell: bool = False):
    """putcol (cell by cell for a TiledCellStMan column, see _getcol); returns what it returns
    (a future when a worker writes)."""
    if per_cell:
        for i in range(n):
            put = tb.putcell(name, start + i, block[i])
        return put if n else None
    if is_string:
        vals = [str(s) for s in block.reshape(-1)]
        if scalar:
            return tb.putcol(name, vals, start, n)
        return tb.putcol(name, np.array(vals, dtype=str).reshape(block.shape), start, n)
    return tb.putcol(name, block, start, n)


def _column_node_of(c: dict) -> str:
    """Where a stored column is (version 1 tables name no node: the column name)."""
    node = c.get("node")
    if isinstance(node, str) and node:
        return node
    return f"ragged/{c['name']}" if c["layout"] == "ragged" else c["name"]


def _read_column(group, c: dict, nrows: int, work: _Work, what: str, *, tb=None, progress=None,
                 problems: list | None = None, resolve: Callable[[str], str] | None = None,
                 per_cell: bool = False):
    """Read one stored column, hash it and (with ``tb``) write it into the casacore table.

    Returns the column digest (or a future of it). Damage raises CorruptTableData, or, with
    ``problems``, is appended there (one line per damaged range) and None is returned.
    ``resolve`` turns the subtable references in record cells into paths; ``per_cell``: write
    cell by cell (see _getcol).
    """

    def bad(line: str) -> None:
        if problems is None:
            raise CorruptTableData(line)
        if line not in problems:
            problems.append(line)

    layout = c.get("layout")
    if c.get("type") not in _CTYPES or layout not in ("scalar", "fixed", "record", "ragged", "shaped"):
        bad(f"{what}: stored column of type {c.get('type')!r}, layout {layout!r} is not readable")
        return None
    col = _Col(name=c["name"], ctype=c["type"], dtype=_CTYPES[c["type"]], layout=layout,
               node=_column_node_of(c), max_ndim=int(c.get("max_ndim", 0)),
               block_rows=max(1, int(c.get("block_rows", 1))), per_cell=per_cell)
    h = _ColumnHash(col.name, col.ctype, layout in ("scalar", "record"))
    try:
        if layout == "ragged":
            return _read_ragged_column(group, col, nrows, work, what, h, tb, progress, bad)
        if layout == "shaped":
            return _read_shaped_column(group, col, c, nrows, work, what, h, tb, progress, bad)
        return _read_uniform_column(group, col, nrows, work, what, h, tb, progress, bad, resolve)
    except _Unreadable as e:
        bad(f"{what}: {e}")
        return None


class _Unreadable(Exception):
    """A stored array of a column is missing or its metadata cannot be read."""


def _array_at(group, node: str, what: str):
    try:
        return group[node]
    except KeyError:
        raise _Unreadable("stored array is missing") from None
    except Exception as e:
        raise _Unreadable(f"stored array is unreadable ({_first_line(e)})") from None


def _read_uniform_column(group, col: _Col, nrows, work, what, h, tb, progress, bad, resolve):
    name = col.name
    scalar = col.layout in ("scalar", "record")
    arr = _array_at(group, col.node, what)
    if arr.shape[:1] != (nrows,):
        bad(f"{what}: stored array has shape {arr.shape}, expected {nrows} rows")
        return None
    ok = True
    hashed = []
    # A worker writes slowly into small (scalar) columns; sending those along lets this
    # thread go on meanwhile (to the subtables).
    c = {"type": col.ctype, "layout": col.layout, "cell_shape": list(arr.shape[1:])}
    by_value = isinstance(tb, _RemoteTable) and _column_bytes(nrows, c) <= _BY_VALUE_BYTES
    for start, stop, block, buf, damage in _reader(arr, work).blocks():
        if damage is not None or not ok:
            if damage is not None:
                ok = False
                bad(f"{what} {damage.text('rows')}")
            if buf is not None:
                work.give(buf)
            continue
        if col.is_string:
            h.uniform(block, scalar)
            fut = None
        else:
            fut = work.hasher.submit(h.uniform, block, scalar)
            hashed.append(fut)
        put = None
        try:
            if tb is not None and col.layout == "record":
                _put_records(tb, name, block, start, resolve, what)
            elif tb is not None:
                data = block
                if by_value:  # a copy goes with the command: the buffer is free at once
                    data, put = np.array(block), None
                put = _put_uniform(tb, name, data, start, stop - start, col.is_string, scalar,
                                   col.per_cell)
                if by_value:
                    put = None
        finally:
            if buf is not None:
                work.give(buf, [fut, put if hasattr(put, "add_done_callback") else None])
        if progress:
            progress(int(block.size * col.itemsize))
    return work.hasher.submit(_digest, h, hashed) if ok else None


def _put_records(tb, name: str, block, start: int, resolve, what: str) -> None:
    for i, text in enumerate(block.reshape(-1)):
        if text == "":
            continue  # a cell never written
        try:
            value = _dec_kw(json.loads(str(text)), resolve)
        except CorruptTableData:
            raise
        except Exception as e:
            raise CorruptTableData(f"{what} row {start + i}: stored record is damaged ({_first_line(e)})") from None
        tb.putcell(name, start + i, value)


def _read_ragged_column(group, col: _Col, nrows, work, what, h, tb, progress, bad):
    name = col.name
    arrays = [_array_at(group, f"{col.node}/{part}", what) for part in ("defined", "ndim", "shape", "values")]
    r_def, r_nd, r_shp, r_val = (_reader(a, work) for a in arrays)
    n_values = arrays[3].shape[0]
    step = col.block_rows
    off = 0
    unit = "rows"
    try:
        for start in range(0, nrows, step):
            stop = min(nrows, start + step)
            unit = "rows"
            defined = r_def.read(start, stop)
            ndim = r_nd.read(start, stop)
            shp = r_shp.read(start, stop)
            sizes = [int(np.prod(shp[i, :ndim[i]], dtype=np.int64)) if defined[i] else 0
                     for i in range(stop - start)]
            total = sum(sizes)
            if off + total > n_values:
                bad(f"{what} rows {start}-{stop - 1}: ragged values end early")
                return None
            unit = "values"
            values = r_val.read(off, off + total)
            h.ragged(defined, ndim, shp, values)
            if tb is not None:
                pos = 0
                for i, size in enumerate(sizes):
                    if not defined[i]:
                        continue
                    cell = values[pos:pos + size].reshape(tuple(int(x) for x in shp[i, :ndim[i]]))
                    pos += size
                    if col.is_string:
                        cell = np.array([str(s) for s in cell.reshape(-1)], dtype=str).reshape(cell.shape)
                    tb.putcell(name, start + i, cell)
            off += total
            if progress:
                progress(int(total * col.itemsize))
    except _Damage as e:
        bad(f"{what} {e.text(unit)}")
        return None
    if off != n_values:
        bad(f"{what}: {n_values - off} stored values belong to no cell")
        return None
    return h.hexdigest()


def _read_shaped_column(group, col: _Col, c: dict, nrows, work, what, h, tb, progress, bad):
    """A column stored a group per cell shape (cells + their rows): read back in row order, a
    run of rows of one shape at a time (one putcol each)."""
    try:
        shapes = [tuple(int(x) for x in s) for s in c["shapes"]]
        counts = [int(n) for n in c["counts"]]
        if len(shapes) != len(counts) or min(counts, default=1) < 1:
            raise ValueError("shapes and counts do not match")
    except (KeyError, TypeError, ValueError) as e:
        bad(f"{what}: stored shapes are unreadable ({e})")
        return None
    leaf = _shaped_leaf(col.node)
    cells, rows = [], []
    for s, n in zip(shapes, counts):
        g = f"{col.node}/{_shape_name(s)}"
        a, r = _array_at(group, f"{g}/{leaf}", what), _array_at(group, f"{g}/row", what)
        if tuple(a.shape) != (n,) + s or tuple(r.shape) != (n,):
            bad(f"{what}: stored arrays of cell shape {list(s)} have shapes {a.shape} and {r.shape}, "
                f"expected {n} cells")
            return None
        cells.append(_reader(a, work))
        rows.append(_RowCursor(_reader(r, work), n))
    used = [0] * len(shapes)  # cells of each shape read so far
    ndims = np.array([len(s) for s in shapes] + [0], np.int32)
    table = np.zeros((len(shapes) + 1, col.max_ndim), np.int64)
    for k, s in enumerate(shapes):
        if len(s) > col.max_ndim:
            bad(f"{what}: stored cell shape {list(s)} has more axes than the column's {col.max_ndim}")
            return None
        table[k, :len(s)] = s
    step = col.block_rows
    k = 0  # the shape whose arrays are being read
    try:
        for start in range(0, nrows, step):
            stop = min(nrows, start + step)
            kk = np.full(stop - start, -1, np.int32)
            for k, cursor in enumerate(rows):
                got = cursor.take_below(stop)
                if len(got) and (got[0] < start or np.any(np.diff(got) <= 0) or np.any(kk[got - start] >= 0)):
                    bad(f"{what} rows {start}-{stop - 1}: stored row numbers of cell shape "
                        f"{list(shapes[k])} are out of order")
                    return None
                kk[got - start] = k
            defined = kk >= 0
            ndim, shp = ndims[kk], table[kk]  # the last entry (-1) is an undefined cell's
            parts = []
            i = 0
            while i < len(kk):
                k = int(kk[i])
                j = i + 1
                while j < len(kk) and kk[j] == k:
                    j += 1
                if k >= 0:
                    block = cells[k].read(used[k], used[k] + (j - i))
                    used[k] += j - i
                    parts.append(block.reshape(-1))
                    if tb is not None:
                        _put_uniform(tb, col.name, block, start + i, j - i, col.is_string, False,
                                     col.per_cell)
                i = j
            values = np.concatenate(parts) if parts else np.empty(0, object if col.is_string else col.dtype)
            h.ragged(defined, ndim, shp, values)
            if progress:
                progress(int(values.size * col.itemsize))
    except _Damage as e:  # in the arrays of one shape, counted in its cells
        bad(f"{what} shape {_shape_name(shapes[k])} {e.text('cells')}")
        return None
    left = [n - u for n, u in zip(counts, used)]
    if any(left):
        bad(f"{what}: {sum(left)} stored cells belong to no row")
        return None
    return h.hexdigest()


class _RowCursor:
    """Reads a sorted array of row numbers window by window, handing out those below a bound."""

    def __init__(self, reader, n: int):
        self.reader, self.n = reader, n
        self.pos = 0  # entries handed out
        self.buf = np.empty(0, np.int64)
        self.buf_start = 0

    def take_below(self, stop: int) -> np.ndarray:
        out = []
        while self.pos < self.n:
            if self.pos >= self.buf_start + len(self.buf):
                self.buf_start = self.pos
                self.buf = np.asarray(self.reader.read(self.pos, min(self.n, self.pos + 65536)), np.int64)
            rest = self.buf[self.pos - self.buf_start:]
            k = int(np.searchsorted(rest, stop))
            if k:
                out.append(rest[:k])
                self.pos += k
            if k < len(rest):
                break
        return np.concatenate(out) if out else np.empty(0, np.int64)


# --------------------------------------------------------------------------- verify


def verify_table(group: zarr.Group, *, name: str | None = None,
                 progress: Callable[[int], None] | None = None) -> list[str]:
    """Check a stored table without writing one: check each table description against its
    metadata checksum, read every shard of every column (subtables included), recompute each
    column's sha256 and the content checksum, and compare them with the stored
    ``casacore_content``. Returns one line per problem, [] when all is well; each line names
    the table (``name``, by default the group's path; ``<name>/<SUBTABLE>`` for a subtable),
    the column and the row (or, for ragged values, value) range, e.g.
    ``x.ms: column DATA rows 0-1023: stored data is damaged (crc32c checksum mismatch)``.
    ``progress`` gets the column bytes checked, as in decode_table.
    """
    where = name if name is not None else (group.path or "/")
    problems: list[str] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
        with _Work() as work:
            content = group.attrs.get(CONTENT_ATTR)
            if not isinstance(content, dict):
                problems.append(f"{where}: no content checksum (the table was not stored completely)")
                content = None
            try:
                version = _content_version(content, where)
            except CorruptTableData as e:
                problems.append(str(e))
                version, content = 0, None
            _verify_into(group, content, version, where, progress, work, problems)
    return problems


def _verify_into(group, content: dict | None, version: int, where: str, progress, work: _Work,
                 problems: list[str]) -> str | None:
    """The table's recomputed content checksum, or None when some of it could not be read."""
    try:
        st = _static(group)
    except CorruptTableData:
        problems.append(f"{where}: no readable casacore table description")
        return None
    before = len(problems)
    problem = _metadata_problem(st, content, version, where)
    if problem:
        problems.append(problem)
    nrows = st["nrows"]
    digests = {c["name"]: _read_column(group, c, nrows, work, f"{where}: column {c['name']}",
                                       progress=progress, problems=problems)
               for c in st["columns"]}
    subs = {}
    for s in st["subtables"]:
        sub_where = f"{where}/{s['name']}"
        try:
            sg = group[s["group"]]
        except Exception:
            problems.append(f"{sub_where}: subtable missing")
            subs[s["name"]] = None
            continue
        sub_content = (content or {}).get("subtables", {}).get(s["name"])
        if content is not None and not isinstance(sub_content, dict):
            problems.append(f"{sub_where}: no content checksum")
            sub_content = None
        subs[s["name"]] = _verify_into(sg, sub_content, version, sub_where, progress, work, problems)
    digests = {n: _result(d) for n, d in digests.items()}
    if content is not None:
        stored = content.get("columns") or {}
        for n, d in digests.items():
            if d is not None and stored.get(n) != d:
                problems.append(f"{where}: column {n}: values differ from the stored checksum")
    if None in digests.values() or None in subs.values():
        return None
    header = _hash_header(nrows, st["info"], {c["name"]: c["desc"] for c in st["columns"]},
                          st["keywords"], {c["name"]: c["keywords"] for c in st["columns"]})
    sha = _table_sha(header, digests, subs)
    if content is not None and content.get("content_sha256") != sha and len(problems) == before:
        problems.append(f"{where}: table content differs from the stored checksum")
    return sha
