"""Encoding a casacore table into a table group (``encode_table``), and its content checksum
straight from casacore (``table_content_sha256``).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from ...errors import FactorArchiveError
from . import bucket_cache
from .casacore_read import (
    _GETCOLNP,
    _exact_cast,
    _read_runs,
    _read_uniform,
    _run_values,
    _shape_records,
    _StoredRecords,
)
from .codec_choice import decided_codecs, planning_turn, tables_two_at_once
from .common import (
    _RESERVED,
    ATTR,
    CONTENT_ATTR,
    CONTENT_VERSION,
    RawTableRequired,
    _canon,
    _quiet_attrs_update,
    _ReadFailure,
)
from .content_hash import _ColumnHash, _digest, _metadata_sha256, _result, _table_sha, content_checksum_version
from .group_sink import _GroupSink
from .keywords import _record_cell, _Refs
from .pipeline import DEFAULT_SETTINGS, PipelineSettings, _block_rows, _buffer_view, _Work
from .plan import _open, _plan, _table_file_bytes
from .schema import ColumnSchema, TableSchema
from .worker_client import _Worker, _worker_for, _WorkerError, _WorkerGone


def _scan_column(tb, nrows: int, col: ColumnSchema, w, progress, work: _Work, rtb=None, records=None):
    """Read one column in row blocks, hash it and hand it to ``w``; returns its digest (a
    future when hashed on the hashing thread). With ``rtb`` (the table in a casacore worker)
    numeric uniform columns are read there, a few blocks ahead; ``records`` is
    (_StoredRecords, _Refs) for a record column."""
    if col.layout == "record":
        h = _ColumnHash(col.name, col.ctype, True, content_checksum_version(CONTENT_VERSION))
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
    h = _ColumnHash(col.name, col.ctype, col.layout == "scalar", content_checksum_version(CONTENT_VERSION))
    if col.layout in ("ragged", "shaped"):
        cache: dict = {}
        for start in range(0, nrows, col.block_rows):
            n = min(col.block_rows, nrows - start)
            if col.layout == "shaped" and not col.shapes:
                # Planning read every cell's shape and found none defined (FLAG_CATEGORY of an
                # MS): asking casacore again, a TaQL call per block, is all this column would cost.
                defined, shapes, runs = np.zeros(n, bool), [None] * n, []
            else:
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
    dtype = col.dtype
    assert dtype is not None  # strings were read above
    step = _block_rows(col.chunk_rows, col.block_rows, row_bytes, work.settings.block_bytes)
    if col.per_cell:
        rtb = None  # read cell by cell, here
    hashed = []
    ahead: deque = deque()  # blocks being read by the worker
    limit = max(1, work.settings.buffers - 2) if rtb is not None else 1

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
                out = _buffer_view(buf, dtype, (n,) + cell)
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

    def __init__(self, fut, col: ColumnSchema, start: int, n: int, out: np.ndarray, direct: bool):
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


def _read_remote(rtb, col: ColumnSchema, start: int, n: int, out: np.ndarray) -> _RemoteRead:
    if col.dtype in _GETCOLNP:
        return _RemoteRead(rtb.call("getcolnp", col.name, out, start, n), col, start, n, out, True)
    return _RemoteRead(rtb.call("getcol", col.name, start, n), col, start, n, out, False)


def _raw_bytes(nrows: int, c: ColumnSchema) -> int:
    if c.layout in ("ragged", "shaped"):
        return int(c.total * c.itemsize)
    return int(nrows * c.itemsize * int(np.prod(c.cell_shape, dtype=np.int64)))


def _scan_table(plan: TableSchema, sink, progress, work: _Work, worker: _Worker | None = None) -> dict:
    """Read every column of plan's table in blocks, feed ``sink``; return content tree."""
    assert plan.path is not None  # a plan made from a table
    tb = _open(plan.path)
    rtb = worker.open(plan.path) if worker is not None else None
    digests = {}
    records = None
    try:
        # The table that reads the numeric columns (the worker's, when there is one) caches
        # every bucket; this process's then reads few of them (strace: 20 MiB either way).
        bucket_cache.widen_for_reading(rtb if rtb is not None else tb, plan.dminfo)
        if tb.nrows() != plan.nrows:
            raise _ReadFailure(f"row count changed from {plan.nrows} to {tb.nrows()}")
        names = [c.name for c in plan.columns if c.layout == "record"]
        if names and plan.nrows:
            records = (_StoredRecords(tb, plan.path, names, work.settings), _Refs(plan.path))
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
                                         {n: s["content_sha256"] for n, s in subs.items()},
                                         content_checksum_version(CONTENT_VERSION)),
            "metadata_sha256": _metadata_sha256(plan.static()),
            "columns": digests, "subtables": subs}


def _info(plan: TableSchema, content: dict, sink: _GroupSink | None) -> dict:
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
                 progress: Callable[[int], None] | None = None,
                 settings: PipelineSettings = DEFAULT_SETTINGS) -> dict:
    """Write the table (and its subtables) into ``group``; return the manifest info.

    Raises RawTableRequired, before writing anything, when the table cannot be restored
    exactly from columns; the caller then keeps the table's files as they are. Every shard
    and child is written once; only ``group``'s own zarr.json is rewritten, once, at the end
    (its attributes), so in a ZipStore that one entry appears twice (the last one counts).
    Reading (casacore; for a table of settings.worker_min_bytes or more in a worker process, see
    _Worker), hashing, compressing and storing overlap (see _Work).
    """
    if row_block is not None and row_block < 1:
        raise ValueError("row_block must be at least 1")
    path = Path(table_path)
    if tables_two_at_once():  # two tables in the memory one takes: each reads half the rows at once
        settings = dataclasses.replace(settings, block_bytes=max(settings.chunk_bytes, settings.block_bytes // 2))
    with _worker_for(_table_file_bytes(path), settings) as worker, \
            _Work(settings, worker and worker.buf) as work:
        with planning_turn():  # members written two at a time still plan in the run's order
            plan = _plan(path, row_block, settings, work=work)
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


def decide_codecs(table_path: str | Path, settings: PipelineSettings = DEFAULT_SETTINGS) -> dict[tuple, str]:
    """Make the codec choices :func:`encode_table` would make for this table next in the run
    (within :func:`remembered_codec_choices`), without encoding it, and return every choice
    remembered by then. A cluster's client calls it for the run's tables in plan order and sends
    each table's choices with its task, so the worker encoding it (in
    ``remembered_codec_choices(choices)``) tries no kind the client decided and the archive is
    the single process's. The trials are the single process's: the same planning, in the same
    order. Included: the choices good for this table only (a float column's delta filter,
    checked on its values), so the worker tries nothing and every attempt at the table writes
    the same bytes."""
    path = Path(table_path)
    decided_codecs()  # forget the table-only choices of a table before
    with _Work(settings) as work:
        try:
            _plan(path, None, settings, work=work)
        except Exception:  # encode_table meets it again: keeps raw files, or reports it naming the member
            pass
    return decided_codecs()


def _cleanup(group: zarr.Group, keep: set) -> None:
    for k in list(group.keys()):
        if k not in keep:
            try:
                del group[k]
            except Exception:
                pass


def table_content_sha256(table_path: str | Path, settings: PipelineSettings = DEFAULT_SETTINGS) -> str:
    """Checksum of the table's content (see the module docstring), streaming by row blocks."""
    path = Path(table_path)
    with _worker_for(_table_file_bytes(path), settings) as worker, \
            _Work(settings, worker and worker.buf) as work:
        plan = _plan(path, None, settings)
        try:
            return _scan_table(plan, None, None, work, worker)["content_sha256"]
        except _ReadFailure as e:
            raise RawTableRequired(table_path, f"reading failed: {e}") from e

