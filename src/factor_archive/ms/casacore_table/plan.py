"""Planning an encode: read a table's description, decide each column's layout, shard layout
and codec, and refuse (RawTableRequired) what cannot be restored exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import bucket_cache
from .casacore_read import _as_cells, _block_shapes, _getcol, _read_uniform, _StoredRecords
from .codec_choice import _start_choice, column_kind, remembered
from .codecs import _candidates
from .common import _CTYPES, MAX_SHAPES, MIN_CELLS_PER_SHAPE, RawTableRequired, _canon, _jsonable, _ReadFailure, _table
from .hypercubes import _check_hypercubes
from .keywords import _enc_kw, _keyword_types, _node_name_ok, _record_cell, _Refs
from .pipeline import PipelineSettings, _Work
from .schema import ColumnSchema, TableSchema, _assign_dims, _column_node
from .shards import _rows_layout

# Storage managers whose SPEC recreates them and whose values python-casacore reads/writes as is.
_SAFE_DM = {"StandardStMan", "IncrementalStMan", "StManAipsIO", "TiledColumnStMan",
            "TiledShapeStMan", "TiledCellStMan"}

_RECORD_DM = {"StandardStMan", "IncrementalStMan", "StManAipsIO"}  # may hold record columns


_LOSSY_DM = {"DyscoStMan"}


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


def _plan(path: Path, row_block: int | None, settings: PipelineSettings, *,
          work: _Work | None = None, role: str = "") -> TableSchema:
    """The table's layout; ``work`` (threads for the codec trials) or None: default codecs.
    ``role``: "" for the table encoded, the subtable's path below it for a subtable."""
    path = Path(path)
    if not (path / "table.dat").is_file():
        raise FileNotFoundError(f"not a casacore table: {path}")
    if not _is_plain(path):
        raise RawTableRequired(path, "not a plain table (reference or concatenated table)")
    tb = _open(path)
    try:
        return _plan_open(tb, path, row_block, settings, work, role)
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
    keywords = _enc_kw(tb.getkeywords(), types, refs, "")
    colkeywords = {c: _enc_kw(tb.getcolkeywords(c), coltypes[c], refs, c) for c in colnames}
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


def _plan_open(tb, path: Path, row_block, settings: PipelineSettings, work, role: str = "") -> TableSchema:
    dminfo = tb.getdminfo()
    dms = [dminfo[k] for k in sorted(dminfo, key=lambda k: int(k[1:]))]
    for dm in dms:
        if dm.get("TYPE") not in _SAFE_DM:
            why = ("is a lossy compressor: its values written again are not its stored bytes"
                   if dm.get("TYPE") in _LOSSY_DM else
                   "is not a standard storage manager: its values written again need not be its bytes")
            raise RawTableRequired(path, f"data manager {dm.get('TYPE')} ({dm.get('NAME')}) of columns "
                                         f"{list(dm.get('COLUMNS', []))} {why}")
    bucket_cache.widen_for_reading(tb, dms)  # the shapes of array columns are read row by row
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
    cells = _StoredRecords(tb, path, records, settings) if records and nrows else None
    try:
        # Array columns (the big ones, as a rule) first, and the subtables planned before the
        # trials are waited for: the trials run on the pool meanwhile.
        tiled_cell = {c for c in colnames if dm_of.get(c, {}).get("TYPE") == "TiledCellStMan"}
        order = sorted(colnames, key=lambda c: tb.isscalarcol(c))
        planned = {c: _plan_column(tb, path, c, nrows, desc[c], row_block, settings, work, role,
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
                          tb.endianformat(), settings)
    plan = TableSchema(path=path, nrows=nrows, endian=tb.endianformat(), info=d["info"],
                 desc=d["desc"], hypercolumns=d["hypercolumns"],
                 private_keywords=d["private_keywords"], dminfo=_jsonable(dms),
                 keywords=d["keywords"], colkeywords=d["colkeywords"], columns=cols,
                 subtables=[(n, True) for n in referenced] + [(n, False) for n in extra])
    for n, _ref in plan.subtables:
        plan.children[n] = _plan(path / n, row_block, settings, work=work, role=f"{role}/{n}" if role else n)
    for col in cols:
        if col.choice is not None:
            col.codec, col.choice = col.choice(tb, path), None
    _assign_dims(cols)
    return plan


def _plan_column(tb, path, name, nrows, desc, row_block, settings: PipelineSettings, work, role: str, *,
                 cells=None, refs=None, per_cell=False) -> ColumnSchema:
    ctype = tb.coldatatype(name)
    if ctype not in _CTYPES:
        raise RawTableRequired(path, f"column {name} has unsupported type {ctype}")
    dtype = _CTYPES[ctype]
    col = ColumnSchema(name=name, ctype=ctype, dtype=dtype, layout="scalar", node=_column_node(name),
               per_cell=per_cell)
    if ctype == "record":
        col.layout = "record"
        for r in range(nrows):  # every cell must be one python-casacore writes back exactly
            raw = cells.cell(name, r)
            if raw is not None:
                _record_cell(raw, refs, f"column {name} row {r}")
        col.chunk_rows, col.block_rows = _rows_layout(nrows, 512, row_block, settings)
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
                                    settings.shard_bytes // max(1, col.max_cell * col.itemsize)))
        col.block_rows = max(1, min(col.block_rows, nrows or 1))
        col.codec = _candidates(col)[0]
        kind = column_kind(role, col, col.total * col.itemsize, settings)
        if col.layout == "shaped" and col.shapes and work is not None and remembered(kind):
            col.codec = remembered(kind) or col.codec
        elif col.layout == "shaped" and col.shapes and work is not None:
            cell_bytes = col.itemsize * int(np.prod(col.shapes[0], dtype=np.int64))
            row, n = col.first_run
            n = max(1, min(n, settings.sample_bytes // max(1, cell_bytes)))
            try:
                first = _as_cells(_getcol(tb, col, row, n), col, (n,) + tuple(col.shapes[0]))
            except Exception as e:
                raise RawTableRequired(path, f"column {name} rows {row}-{row + n - 1}: {e}") from e
            col.choice = _start_choice(col, col.total * col.itemsize, first, work, kind)
        return col
    row_bytes = col.itemsize * int(np.prod(col.cell_shape, dtype=np.int64))
    col.chunk_rows, col.block_rows = _rows_layout(nrows, row_bytes, row_block, settings)
    sample: np.ndarray | None = None
    kind = column_kind(role, col, nrows * row_bytes, settings)
    known = remembered(kind) if work is not None else None
    if nrows:
        # The first chunk for a column that may choose by speed; a smaller start otherwise
        # (casacore reads scalar columns slowly, and every row is read again when encoding).
        n = col.chunk_rows
        if work is None or known:
            n = 1
        elif nrows * row_bytes < settings.speed_min_bytes:
            n = max(1, min(n, settings.sample_bytes // max(1, row_bytes)))
        try:
            sample = _read_uniform(tb, col, 0, n)
            _read_uniform(tb, col, nrows - 1, 1)
        except _ReadFailure as e:
            raise RawTableRequired(path, str(e)) from e
    if known:
        col.codec = known
    elif work is not None:  # trials run on the pool while the next columns are planned
        col.choice = _start_choice(col, nrows * row_bytes, sample, work, kind)
    else:
        col.codec = _candidates(col)[0]
    return col


_BEFORE_FIRST = object()  # the "shape" of the row before the first


def _scan_shapes(tb, path, col: ColumnSchema, nrows, desc, row_block, track_runs=False) -> None:
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
    first_run: list | None = None
    for start in range(0, nrows, step):
        n = min(step, nrows - start)
        try:
            defined, shapes = _block_shapes(tb, col.name, start, n, cache)
        except Exception as e:
            raise RawTableRequired(path, f"column {col.name}: cannot read cell shapes: {e}") from e
        undefined += int(n - defined.sum())
        if shapes and shapes.count(shapes[0]) == len(shapes):
            cells = [(0, shapes[0], len(shapes))]  # one shape (or none) for the whole block
        else:
            cells = [(i, s, 1) for i, s in enumerate(shapes)]
        for i, s, m in cells:
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
            counts[s] = counts.get(s, 0) + m
            if track_runs:
                if defined_runs and defined_runs[-1][0] == s:
                    defined_runs[-1][1] += m
                else:
                    defined_runs.append([s, m])
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

