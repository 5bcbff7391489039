"""Fixed-shape arrays that a StandardStMan keeps indirectly (WEIGHT and SIGMA of a DP3-written MS)
are written into the data manager's array file at once, after casacore has closed the table.

casacore puts such a column cell by cell: for every row it looks up the row's bucket, reads the
array's shape back from the array file and writes the values. For WEIGHT and SIGMA of a
203,775-row chunk MS that took 0.044 s each, a tenth of the table's restore. A table made with all
its rows at once already holds every array: making it reserves, column after column in the order
of the table description and row after row, one record per cell in the array file ``table.f<N>i``
(casacore's StManArrayFile). A record starts at an 8-byte boundary and holds a reference count
(file version 1 only), the number of axes and the axis lengths (32-bit integers, the first axis
varying fastest), then the values, all in the table's byte order; the file starts with its version
and length. So once every record is found exactly where that layout puts it, the values of all
rows go in with one write. A few cells are then read back through casacore, among them, for every
two columns of the same layout, the first row where their values differ (a swapped order would
show there). If anything does not match, the caller puts the values through casacore as before.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .schema import ColumnSchema

MAX_COLUMN_BYTES = 32 << 20  # the values are held until the table is closed
MIN_ROWS = 4096  # below this the extra read-back costs more than the cell-by-cell puts
_FIXED_SHAPE, _DIRECT = 4, 1  # casacore ColumnDesc options
_KINDS = "iufc"  # integers, floats, complex (casacore stores bools as bits: not here)


@dataclass
class HeldColumn:
    """Values of one fixed-shape indirect column, held while the table is being written."""

    col: ColumnSchema
    values: np.ndarray

    def block(self, block: np.ndarray, start: int, n: int) -> None:
        self.values[start:start + n] = block[:n]

    def run(self, block: np.ndarray, start: int, n: int) -> None:
        raise TypeError("a fixed-shape column has no runs of shapes")

    def cell(self, row: int, cell: np.ndarray) -> None:
        raise TypeError("a fixed-shape column is not read cell by cell")


@dataclass
class HeldArrays:
    """The columns of one StandardStMan whose values are written into its array file."""

    manager: str
    columns: dict[str, HeldColumn] = field(default_factory=dict)


def held_columns(schema, desc: dict, dm_type: dict[str, str], endian: str) -> HeldArrays | None:
    """The fixed-shape indirect columns of the table's StandardStMan, when every such column can
    be written directly (numeric, little-endian, not too big) and there are enough rows."""
    if endian != "little" or sys.byteorder != "little" or schema.nrows < MIN_ROWS:
        return None
    found: HeldArrays | None = None
    for dm in schema.dminfo:
        if dm.get("TYPE") != "StandardStMan":
            continue
        cols = [c for c in schema.columns if c.name in dm.get("COLUMNS", []) and _fixed_indirect(desc.get(c.name))]
        if not cols:
            continue
        if found is not None or not all(_writable(c, desc[c.name], schema.nrows) for c in cols):
            return None  # one data manager of this kind only, and all of its columns
        name = dm.get("NAME")
        if not isinstance(name, str):
            return None
        found = HeldArrays(name, {c.name: HeldColumn(c, np.empty((schema.nrows,) + tuple(c.cell_shape), c.dtype))
                                  for c in cols})
    return found


def _fixed_indirect(d) -> bool:
    if not isinstance(d, dict):
        return False
    option = d.get("option")
    return isinstance(option, int) and bool(option & _FIXED_SHAPE) and not option & _DIRECT \
        and d.get("ndim", 0) > 0


def _writable(c: ColumnSchema, d: dict, nrows: int) -> bool:
    if c.layout != "fixed" or c.dtype is None or c.dtype.kind not in _KINDS or c.per_cell:
        return False
    if c.dtype.byteorder == ">" or not c.cell_shape:
        return False
    shape = d.get("shape")  # python-casacore's order, as the cell shape (the file's is reversed)
    if shape is None or [int(x) for x in shape] != list(c.cell_shape):
        return False
    return c.numeric_bytes(nrows) <= MAX_COLUMN_BYTES


def write_held(table: Path, held: HeldArrays, seqnr: int, order: list[str], nrows: int, open_table) -> bool:
    """Write the held values into ``table``'s array file (the table closed); True once they are
    in place and read back equal, False when the file is not laid out as expected (nothing of
    it changed then, or the values are to be put through casacore anyway). ``order``: the
    table's columns in description order; ``open_table(path)``: a read-only casacore table."""
    path = table / f"table.f{seqnr}i"
    names = [n for n in order if n in held.columns]
    if len(names) != len(held.columns):
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        head = os.pread(fd, 16, 0)
        if len(head) != 16:
            return False
        version, length = struct.unpack_from("<Iq", head)
        if version not in (0, 1):
            return False
        layouts = []
        at = 16
        for name in names:
            col = held.columns[name].col
            dims = list(reversed(col.cell_shape))
            header = struct.pack("<" + "I" * (1 + len(dims) + (version > 0)),
                                 *(([1] if version > 0 else []) + [len(dims)] + dims))
            data = held.columns[name].values.itemsize * held.columns[name].values[0].size
            stride = -(-(len(header) + data) // 8) * 8
            layouts.append((name, at, header, data, stride))
            at += stride * nrows
        if length < at or os.fstat(fd).st_size < at:
            return False
        region = np.empty(at - 16, np.uint8)
        if os.preadv(fd, [region.data], 16) != region.size:
            return False
        for name, start, header, data, stride in layouts:
            records = region[start - 16:start - 16 + stride * nrows].reshape(nrows, stride)
            expected = np.frombuffer(header, np.uint8)
            if not np.array_equal(records[:, :len(header)], np.broadcast_to(expected, (nrows, len(header)))):
                return False
            values = np.ascontiguousarray(held.columns[name].values).reshape(nrows, -1).view(np.uint8)
            records[:, len(header):len(header) + data] = values
        _pwrite_all(fd, region, 16)
    finally:
        os.close(fd)
    return _reads_back(table, held, names, nrows, open_table)


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = data.data
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _reads_back(table: Path, held: HeldArrays, names: list[str], nrows: int, open_table) -> bool:
    """Some cells of each column read back through casacore as held: the first, middle and last
    rows, and for every two columns of one layout the first row where they differ."""
    rows: dict[str, set[int]] = {n: {0, nrows // 2, nrows - 1} for n in names}
    flat = {n: held.columns[n].values.reshape(nrows, -1).view(np.uint8) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if flat[a].shape == flat[b].shape:
                differ = np.flatnonzero(np.any(flat[a] != flat[b], axis=1))
                if differ.size:
                    rows[a].add(int(differ[0]))
                    rows[b].add(int(differ[0]))
    tb = open_table(table)
    try:
        for name in names:
            values = held.columns[name].values
            for r in sorted(rows[name]):
                got = np.asarray(tb.getcell(name, r), dtype=values.dtype)
                if got.shape != values.shape[1:] or got.tobytes() != values[r].tobytes():
                    return False
    finally:
        tb.close()
    return True
