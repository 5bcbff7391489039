"""Reading a stored column back from its table group in row order: its values are hashed and, when
restoring, written into the casacore table. Damage is named by column and rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from .common import _CTYPES, CorruptTableData, _first_line
from .content_hash import _ColumnHash, _digest
from .keywords import _dec_kw
from .pipeline import _Work
from .schema import _Col, _column_bytes, _column_node_of, _shape_name, _shaped_leaf
from .shards import _Damage, _reader
from .worker_client import _RemoteTable


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
    by_value = isinstance(tb, _RemoteTable) and _column_bytes(nrows, c) <= work.settings.by_value_bytes
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

