"""Restoring a casacore table from its table group (``decode_table``): the description and data
managers first, then the columns in row order, then a comparison with what was stored.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import FactorArchiveError
from . import bucket_cache
from .common import CONTENT_ATTR, CorruptTableData, _canon, _first_line, _jsonable, _table, _unjsonable
from .content_hash import (
    _content_version,
    _hash_header,
    _metadata_problem,
    _result,
    _table_sha,
    content_checksum_version,
)
from .indirect_arrays import HeldArrays, held_columns, write_held
from .keywords import _dec_kw, _resolver
from .local_store import is_group
from .pipeline import DEFAULT_SETTINGS, PipelineSettings, _Work
from .plan import _describe, _open
from .schema import ColumnSchema, TableSchema, _static
from .stored_columns import _read_column
from .worker_client import _RemoteTable, _Worker, _worker_for, in_session

if TYPE_CHECKING:
    import zarr

    from .local_store import LocalGroup


def decode_table(group: zarr.Group | LocalGroup, out_path: str | Path, *, progress=None,
                 settings: PipelineSettings = DEFAULT_SETTINGS) -> None:
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
    if not isinstance(content, dict):
        content = None
    schema = _checked_schema(st, content, version, out.name)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
            with _worker_for(schema.numeric_bytes(), settings, writes=True) as worker, \
                    _Work(settings, worker and worker.buf) as work:
                _decode_into(group, schema, tmp, content, version, progress, out.name, work, worker)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _checked_schema(st: dict, content: dict | None, version: int, where: str) -> TableSchema:
    """The stored description, once its metadata checksum says it is the one written, parsed
    (and its structure checked); every column readable, or nothing is written."""
    problem = _metadata_problem(st, content, version, where)
    if problem:
        raise CorruptTableData(problem)
    schema = TableSchema.from_static(st, where)
    for col in schema.columns:
        if col.problem:
            raise CorruptTableData(f"{where}: column {col.name}: {col.problem}")
    return schema


class _ColumnWriter:
    """Puts the values of one stored column into the casacore table being restored (a table
    in this process, or a _RemoteTable in a casacore worker)."""

    def __init__(self, tb, col: ColumnSchema, resolve: Callable[[str], str], what: str, by_value: bool):
        self.tb, self.col, self.resolve, self.what, self.by_value = tb, col, resolve, what, by_value

    def block(self, block: np.ndarray, start: int, n: int):
        col = self.col
        if col.layout == "record":
            _put_records(self.tb, col.name, block, start, self.resolve, self.what)
            return None
        if self.by_value:  # a copy goes with the command: the buffer is free at once
            _put_uniform(self.tb, col.name, np.array(block), start, n, col.is_string, col.layout == "scalar",
                         col.per_cell)
            return None
        return _put_uniform(self.tb, col.name, block, start, n, col.is_string, col.layout == "scalar",
                            col.per_cell)

    def run(self, block: np.ndarray, start: int, n: int) -> None:
        _put_uniform(self.tb, self.col.name, block, start, n, self.col.is_string, False, self.col.per_cell)

    def cell(self, row: int, cell: np.ndarray) -> None:
        if self.col.is_string:
            cell = np.array([str(s) for s in cell.reshape(-1)], dtype=str).reshape(cell.shape)
        self.tb.putcell(self.col.name, row, cell)


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


def _decode_into(group: zarr.Group | LocalGroup, schema: TableSchema, path: Path, content: dict | None, version: int,
                 progress, where: str, work: _Work, worker: _Worker | None = None) -> dict:
    nrows = schema.nrows
    checksum = content_checksum_version(version)
    cols = schema.columns
    desc = {}
    for c in cols:
        d = _unjsonable(schema.desc[c.name])
        d["keywords"] = {}
        desc[c.name] = d
    desc["_define_hypercolumn_"] = _unjsonable(schema.hypercolumns)
    desc["_keywords_"] = {}
    desc["_private_keywords_"] = {}
    dminfo = {f"*{i + 1}": _unjsonable(dm) for i, dm in enumerate(schema.dminfo)}
    raised = bucket_cache.raise_caches(dminfo, {c.name: c.numeric_bytes(nrows) for c in cols})
    dm_type = schema.data_manager_types()
    for c in cols:
        c.per_cell = dm_type.get(c.name) == "TiledCellStMan"
    # IncrementalStMan gives a cell never written the value of the row before it, unless the
    # table was closed and reopened since it was made: such columns (whose cells may be
    # undefined) are written last, after a reopen. (StManAipsIO, by contrast, loses what is
    # written after its table was first flushed: its columns go before.)
    reopen = [c for c in cols if dm_type.get(c.name) == "IncrementalStMan"
              and c.layout in ("shaped", "ragged", "record")]
    # WEIGHT and SIGMA of a DP3-written MS: written into their array file once the table is
    # closed (indirect_arrays.py); only for a table written in this process.
    held = held_columns(schema, desc, dm_type, schema.endian) if worker is None else None
    order: list[str] = []
    seqnr: int | None = None
    if worker is not None:
        tb = worker.table(str(path), desc, nrows, dminfo, schema.endian)
    else:
        tb = _table(str(path), desc, nrow=nrows, dminfo=dminfo, ack=False, endian=schema.endian)
    resolve = _resolver(path)
    digests = {}
    done = False

    def read(c: ColumnSchema) -> None:
        what = f"{where}: column {c.name}"
        # A worker writes slowly into small (scalar) columns; sending those along lets this
        # thread go on meanwhile (to the subtables).
        by_value = isinstance(tb, _RemoteTable) and c.numeric_bytes(nrows) <= work.settings.by_value_bytes
        writer = held.columns[c.name] if held is not None and c.name in held.columns else \
            _ColumnWriter(tb, c, resolve, what, by_value)
        digests[c.name] = _read_column(group, c, nrows, work, what, checksum=checksum, progress=progress,
                                       writer=writer)

    try:
        info = dict(schema.info)
        if info.get("readme", "").endswith("\n"):  # putinfo ends every readme line itself
            info["readme"] = info["readme"][:-1]
        tb.putinfo(info)
        records = [c for c in cols if c.layout == "record" and c not in reopen]  # may refer to subtables
        for c in sorted((c for c in cols if c not in records and c not in reopen),
                        key=lambda c: -c.numeric_bytes(nrows)):
            read(c)  # biggest first (see _scan_table)
        subs = {}
        if schema.subtables and worker is not None:
            tb.wait_created()  # the subtables go inside its directory
        for name, _referenced in schema.subtables:
            sub_where = f"{where}/{name}"
            sg: Any = group.get(schema.groups[name])
            if not is_group(sg):
                raise CorruptTableData(f"{sub_where}: subtable missing")
            sub_content = (content or {}).get("subtables", {}).get(name) if content else None
            if not isinstance(sub_content, dict):
                sub_content = None
            # Subtables (small) are written by this process while the worker catches up; inside
            # a worker_session by the worker too (every casacore write is isolated there).
            subs[name] = _decode_into(sg, _checked_schema(_static(sg), sub_content, version, sub_where),
                                      path / name, sub_content, version, progress, sub_where, work,
                                      worker if in_session() else None)
        for c in records:
            read(c)
        if reopen:
            tb.close()
            tb = worker.open(path, writable=True) if worker is not None else \
                _table(str(path), readonly=False, ack=False)
            for c in reopen:
                read(c)
        for k, v in _dec_kw(schema.keywords, resolve).items():
            tb.putkeyword(k, v)
        for c in cols:
            for k, v in _dec_kw(schema.colkeywords[c.name], resolve).items():
                tb.putcolkeyword(c.name, k, v)
        digests = {n: _result(d) for n, d in digests.items()}
        tb.flush()
        dms = _getdminfo(tb) if raised or held is not None else {}
        files = bucket_cache.data_manager_files(dms, raised) if raised else {}
        if held is not None:
            order = list(tb.colnames())
            seqnr = next((int(dm["SEQNR"]) for dm in dms.values() if dm.get("NAME") == held.manager), None)
        done = True
    finally:
        if done:
            tb.close()
        else:
            try:
                tb.close()
            except Exception:
                pass
    if held is not None:
        _write_held(path, held, seqnr, order, nrows)
    bucket_cache.restore_cache_sizes(path, raised, files, where)
    header = schema.hash_header()
    _check_restored_header(path, schema, header, where)
    sha = _table_sha(header, digests, {n: s["content_sha256"] for n, s in subs.items()}, checksum)
    if content:
        for name, d in digests.items():
            if content["columns"].get(name) != d:
                raise CorruptTableData(f"{where}: column {name} does not match its checksum")
        if content["content_sha256"] != sha:
            raise CorruptTableData(f"{where}: table content does not match its checksum")
    return {"content_sha256": sha, "columns": digests, "subtables": subs}


def _write_held(path: Path, held: HeldArrays, seqnr: int | None, order: list[str], nrows: int) -> None:
    """The held columns into the closed table: into the array file at once, or, where it is
    not laid out as expected, through casacore."""
    if seqnr is not None and write_held(path, held, seqnr, order, nrows, lambda p: _table(str(p), ack=False)):
        return
    tb = _table(str(path), readonly=False, ack=False)
    try:
        for name, column in held.columns.items():
            tb.putcol(name, column.values)
    finally:
        tb.close()


def _getdminfo(tb) -> dict:
    return tb.call("getdminfo").result() if isinstance(tb, _RemoteTable) else tb.getdminfo()


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


def _check_restored_header(path: Path, schema: TableSchema, header: dict, where: str) -> None:
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
    if schema.version >= 2:
        if _canon(d["private_keywords"]) != _canon(schema.private_keywords):
            diff.append("private keywords")
        if _canon(layout) != _canon(_dm_layout(schema.dminfo)):
            diff.append("data-manager layout")
    if diff:
        raise FactorArchiveError(f"{where}: restored table differs from the stored one in {diff}")

