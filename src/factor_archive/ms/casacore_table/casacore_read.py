"""Reading values from casacore: uniform columns into reused buffers, cells of varying shape as
runs, and the stored bytes of record cells (which python-casacore hands out with types lost).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .common import RawTableRequired, _ct, _parse_shape, _ReadFailure, _str_array, _table
from .hypercubes import _scratch_table
from .pipeline import DEFAULT_SETTINGS, PipelineSettings
from .schema import ColumnSchema


def _block_shapes(tb, name, start, n, cache) -> tuple[np.ndarray, list]:
    try:
        strs = tb.getcolshapestring(name, start, n)
        defined = np.ones(n, bool)
        if len(strs) == 1 and n > 1:
            strs = strs * n
    except Exception:
        defined = _defined(tb, name, start, n)
        if not defined.any():  # a column never written (FLAG_CATEGORY of every MS): no loop per row
            strs = [None] * n
        else:
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


def _exact_cast(a: np.ndarray, col) -> np.ndarray:
    """casacore may hand back a wider type than the column's: narrow it only if no value changes."""
    if a.dtype == col.dtype:
        return a
    b = a.astype(col.dtype)
    if not np.array_equal(b, a):
        raise _ReadFailure(f"column {col.name}: values do not fit {col.dtype}")
    return b


def _read_uniform(tb, col: ColumnSchema, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
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


def _getcol(tb, col: ColumnSchema, start: int, n: int):
    """getcol; cell by cell for a TiledCellStMan column, whose row-range access casacore gets
    wrong (it fails or reads other cells when a tile does not fit the cell)."""
    if not col.per_cell:
        return tb.getcol(col.name, start, n)
    return np.stack([np.asarray(tb.getcell(col.name, start + i)) for i in range(n)])


def _as_cells(v, col: ColumnSchema, want: tuple, start: int = 0) -> np.ndarray:
    """What getcol returned as an array of the column's type and shape ``want``."""
    a = _str_array(v) if col.is_string else _exact_cast(np.asarray(v), col)
    if a.shape != want:
        raise _ReadFailure(f"column {col.name} rows {start}-{start + want[0] - 1}: shape {a.shape}, "
                           f"expected {want}")
    return a


def _read_runs(tb, col: ColumnSchema, start: int, n: int, cache: dict):
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
    if not defined.any():
        return ndim, shp
    for i, s in enumerate(shapes):
        if s is not None:
            ndim[i] = len(s)
            shp[i, :len(s)] = s
    return ndim, shp


def _run_values(runs: list, col: ColumnSchema) -> np.ndarray:
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

    def __init__(self, tb, path: Path, names: list[str], settings: PipelineSettings = DEFAULT_SETTINGS):
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
        sdm: list[dict] = []  # data managers in sequence order, placeholders before each
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
                                  tb.endianformat(), settings)
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
        assert self.tb is not None, "cell() after close()"
        if not self.tb.iscelldefined(name, row):
            return None
        return np.asarray(self.tb.getcell(name, row)).astype(np.uint8).tobytes()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        shutil.rmtree(self.dir, ignore_errors=True)

