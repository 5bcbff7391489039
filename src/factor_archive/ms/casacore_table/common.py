"""Names and constants of the table-group format, the codec's errors, and the small helpers
every step uses (opening a table with python-casacore, canonical JSON).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import FactorArchiveError

if TYPE_CHECKING:
    import zarr

FORMAT = "factor-archive/casacore-table"


FORMAT_VERSION = 2


READ_VERSIONS = (1, 2)  # versions of the table group decode_table and verify_table read


ATTR = "casacore_table"


CONTENT_ATTR = "casacore_content"


CONTENT_VERSION = 3  # casacore_content: 3 content checksum v2 (XXH3-128 streams); 2 v1 with metadata
                     # checksums; 1 v1 without them (no "version")


MAX_SHAPES = 32  # a column with more distinct cell shapes than this is stored "ragged" ...


MIN_CELLS_PER_SHAPE = 4  # ... and so is one with fewer cells per shape (variable-length lists)


_RESERVED = {"ragged", "shaped", "subtables", "zarr.json"}  # column nodes get another name


_CTYPES = {
    "boolean": np.dtype(bool), "uchar": np.dtype(np.uint8), "short": np.dtype(np.int16),
    "ushort": np.dtype(np.uint16), "int": np.dtype(np.int32), "uint": np.dtype(np.uint32),
    "int64": np.dtype(np.int64), "float": np.dtype(np.float32), "double": np.dtype(np.float64),
    "complex": np.dtype(np.complex64), "dcomplex": np.dtype(np.complex128), "string": None,
    "record": None,  # stored as strings: one tagged JSON record per cell
}


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


def _ct():
    from casacore import tables

    return tables


_TABLE_CLASS = None


def _table(*args, **kwargs):
    """python-casacore's table, which also opens tables it cannot make a row object for (a
    uShort column: its TableRow has no field type for it), since the codec never uses one."""
    global _TABLE_CLASS
    if _TABLE_CLASS is None:
        class Table(_ct().table):  # type: ignore[misc]  # a base class only known at run time
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


_MAX_U64 = 2**64 - 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

