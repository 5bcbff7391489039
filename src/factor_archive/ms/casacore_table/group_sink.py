"""Where one table goes: every node of the table group (groups, arrays) laid out at once, then
each column's values appended in row order.
"""

from __future__ import annotations

import numpy as np

from . import zarr_internals
from .common import ATTR, _ReadFailure
from .pipeline import _Work
from .schema import ColumnSchema, TableSchema, _axis_names, _shape_name, _shaped_leaf
from .shards import _Appender, _array_doc, _Node, _rows_layout, _writer


class _GroupSink:
    """Where one table goes. Every node of the table tree (groups, arrays) is laid out first and
    its zarr.json written in one concurrent batch (write_nodes); columns are then filled."""

    def __init__(self, store, path: str, plan: TableSchema, work: _Work, attrs: dict | None = None):
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
            rows_chunk, rows_shard = _rows_layout(plan.nrows, 8 * (col.max_ndim + 1), None, work.settings)
            elem_chunk, elem_shard = _rows_layout(col.total, col.itemsize, None, work.settings)
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

    def _shaped(self, col: ColumnSchema, base: str) -> list[_Node]:
        """A group per cell shape, holding the column's cells of that shape and their rows."""
        self.nodes.append((self._sub(base), None, {
            "column": col.name, "shapes": [list(s) for s in col.shapes], "counts": list(col.counts)}))
        settings = self.work.settings
        shard_bytes = max(settings.chunk_bytes, settings.shard_bytes // max(1, len(col.shapes)))  # all fill at once
        leaf = _shaped_leaf(col.node)
        out = []
        for s, count in zip(col.shapes, col.counts):
            g = f"{base}/{_shape_name(s)}"
            self.nodes.append((self._sub(g), None, {"cell_shape": list(s)}))
            cell_bytes = col.itemsize * int(np.prod(s, dtype=np.int64))
            c0, s0 = _rows_layout(count, cell_bytes, None, settings, shard_bytes)
            out.append(self._array(f"{g}/{leaf}", (count,) + tuple(s), col.dtype, c0, s0, col.codec,
                                   ("row",) + _axis_names(col.name, tuple(s), {})))
            r0, r1 = _rows_layout(count, 8, None, settings, shard_bytes)
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
        items = []

        def collect(sink):
            for path, doc, attrs in sink.nodes:
                items.append((f"{path}/zarr.json" if path else "zarr.json", zarr_internals.node_bytes(doc, attrs)))
            for child in sink.children.values():
                collect(child)

        collect(self)

        zarr_internals.store_many(self.store, items)

    def column(self, col: ColumnSchema):
        writers = [_writer(n, self.work) for n in self.arrays[col.name]]
        self.writers[col.name] = writers
        if col.layout == "ragged":
            return _RaggedWriter(writers, self.arrays[col.name])
        if col.layout == "shaped":
            return _ShapedWriter(writers, self.arrays[col.name], col.shapes)
        return writers[0]

    def subtable(self, name: str, plan: TableSchema) -> _GroupSink:
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

