"""Whether writing the rows in order recreates a tiled data manager's hypercubes exactly, found
by asking casacore itself (a scratch table) which tile shapes it would choose.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .common import _CTYPES, RawTableRequired, _table
from .pipeline import PipelineSettings
from .schema import ColumnSchema
from .worker_client import _worker_for


def _check_hypercubes(path: Path, dm: dict, cols: list[ColumnSchema], desc: dict, nrows: int,
                      endian: str, settings: PipelineSettings) -> None:
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

    def defined_runs(c: ColumnSchema) -> list:
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
        shape_runs: list = []
        for s in cell:
            if shape_runs and shape_runs[-1][0] == s:
                shape_runs[-1][1] += 1
            else:
                shape_runs.append([s, 1])
        if [tuple(g) for g in shape_runs] != [tuple(w) for w in want]:
            refuse("hypercubes in an order other than the rows'")
    if not shapes:
        return
    tiles = _tile_shapes(dm, desc, shapes, endian, settings)
    for h, s in zip(actual, cell):
        if (np.asarray(h["TileShape"]).tolist(), int(h["BucketSize"])) != tiles[s]:
            refuse(f"tile shape {np.asarray(h['TileShape']).tolist()} for cells of shape {list(s)}")


def _scratch_table(path: str, desc: dict, nrow: int, dminfo: dict, endian: str, settings: PipelineSettings,
                   cells=()) -> dict:
    """Make a scratch table (putting ``cells``, (column, row, value)) and return its
    data-manager info. Inside a worker_session in a worker, as every casacore write there."""
    with _worker_for(0, settings, writes=True) as worker:
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


def _tile_shapes(dm: dict, desc: dict, shapes: list, endian: str, settings: PipelineSettings) -> dict:
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
        info = _scratch_table(os.path.join(tmp, "t"), sdesc, len(shapes), {"*1": dm}, endian, settings, cells)
        cubes = next(iter(info.values()))["SPEC"].get("HYPERCUBES", {})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {}
    for h in cubes.values():
        s = tuple(int(x) for x in np.asarray(h["CellShape"]).tolist()[::-1])
        out[s] = (np.asarray(h["TileShape"]).tolist(), int(h["BucketSize"]))
    return out

