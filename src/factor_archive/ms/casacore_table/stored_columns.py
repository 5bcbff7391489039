"""Reading a stored column back from its table group in row order, as restore and verify both
do: its values are hashed and, when restoring, handed to a writer. Damage is named by column
and rows (or, for ragged values, values).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .common import CorruptTableData, _first_line
from .content_hash import _ColumnHash, _digest
from .pipeline import _Work
from .schema import ColumnSchema, _shape_name, _shaped_leaf
from .shards import _HERE, _Damage, _reader, _stored_array


class ColumnWriter(Protocol):
    """Where a restore puts the values read (decode.py); verify reads without one."""

    def block(self, block: np.ndarray, start: int, n: int) -> Any:
        """Rows [start, start + n) of a scalar, fixed or record column, in a buffer given back
        once the returned future (if any) is done."""

    def run(self, block: np.ndarray, start: int, n: int) -> None:
        """A run of cells of one shape of a shaped column."""

    def cell(self, row: int, cell: np.ndarray) -> None:
        """One cell of a ragged column."""


def _read_column(group, col: ColumnSchema, nrows: int, work: _Work, what: str, *, checksum: int,
                 writer: ColumnWriter | None = None, progress=None, problems: list | None = None):
    """Read one stored column in row order and hash it, handing its values to ``writer`` when
    restoring.

    Returns the column digest (or a future of it). Damage raises CorruptTableData, or, with
    ``problems``, is appended there (one line per damaged range) and None is returned.
    """

    def bad(line: str) -> None:
        if problems is None:
            raise CorruptTableData(line)
        if line not in problems:
            problems.append(line)

    if col.problem:
        bad(f"{what}: {col.problem}")
        return None
    h = _ColumnHash(col.name, col.ctype, col.layout in ("scalar", "record"), checksum)
    try:
        if col.layout == "ragged":
            return _read_ragged_column(group, col, nrows, work, what, h, writer, progress, bad)
        if col.layout == "shaped":
            return _read_shaped_column(group, col, nrows, work, what, h, writer, progress, bad)
        return _read_uniform_column(group, col, nrows, work, what, h, writer, progress, bad)
    except _Unreadable as e:
        bad(f"{what}: {e}")
        return None


class _Unreadable(Exception):
    """A stored array of a column is missing or its metadata cannot be read."""


def _array_at(group, node: str, what: str):
    """The stored array at ``node``: from its document alone when it is in our layout (see
    _stored_array), else opened through zarr."""
    known = _stored_array(group, node)
    if known is not None:
        return known
    try:
        return group[node]
    except KeyError:
        raise _Unreadable("stored array is missing") from None
    except Exception as e:
        raise _Unreadable(f"stored array is unreadable ({_first_line(e)})") from None


_HASH_HERE_BYTES = 2 << 20  # a column this small is hashed in the thread reading it


def _read_uniform_column(group, col: ColumnSchema, nrows, work, what, h, writer, progress, bad):
    scalar = col.layout in ("scalar", "record")
    arr = _array_at(group, col.node, what)
    if arr.shape[:1] != (nrows,):
        bad(f"{what}: stored array has shape {arr.shape}, expected {nrows} rows")
        return None
    ok = True
    hashed = []
    # A small column is hashed in this thread (a thread hand-off costs more than its hashing).
    hasher = _HERE if col.numeric_bytes(nrows) <= _HASH_HERE_BYTES else work.hasher
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
            fut = hasher.submit(h.uniform, block, scalar)
            hashed.append(fut)
        put = None
        try:
            if writer is not None:
                put = writer.block(block, start, stop - start)
        finally:
            if buf is not None:
                work.give(buf, [fut, put if hasattr(put, "add_done_callback") else None])
        if progress:
            progress(int(block.size * col.itemsize))
    return hasher.submit(_digest, h, hashed) if ok else None


def _read_ragged_column(group, col: ColumnSchema, nrows, work, what, h, writer, progress, bad):
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
            if writer is not None:
                pos = 0
                for i, size in enumerate(sizes):
                    if not defined[i]:
                        continue
                    writer.cell(start + i, values[pos:pos + size].reshape(tuple(int(x) for x in shp[i, :ndim[i]])))
                    pos += size
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


def _read_shaped_column(group, col: ColumnSchema, nrows, work, what, h, writer, progress, bad):
    """A column stored a group per cell shape (cells + their rows): read back in row order, a
    run of rows of one shape at a time."""
    shapes, counts = col.shapes, col.counts
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
            for i, j in _runs(kk):
                k = int(kk[i])
                if k >= 0:
                    block = cells[k].read(used[k], used[k] + (j - i))
                    used[k] += j - i
                    parts.append(block.reshape(-1))
                    if writer is not None:
                        writer.run(block, start + i, j - i)
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


def _runs(kk: np.ndarray) -> list[tuple[int, int]]:
    """[i, j) of each run of equal values in ``kk``, found by numpy: a column whose cells are
    all undefined (FLAG_CATEGORY of an MS) is one run, however many rows it has."""
    if not len(kk):
        return []
    edges = (np.flatnonzero(kk[1:] != kk[:-1]) + 1).tolist()
    return list(zip([0] + edges, edges + [len(kk)]))


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

