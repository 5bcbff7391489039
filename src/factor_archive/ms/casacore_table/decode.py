"""Restoring a casacore table from its table group (``decode_table``): the description and data
managers first, then the columns in row order, then a comparison with what was stored.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import zarr

from ...errors import FactorArchiveError
from .common import CONTENT_ATTR, CorruptTableData, _canon, _jsonable, _table, _unjsonable
from .content_hash import _content_version, _hash_header, _metadata_problem, _result, _table_sha
from .keywords import _dec_kw, _resolver
from .pipeline import DEFAULT_SETTINGS, PipelineSettings, _Work
from .plan import _describe, _open
from .schema import _column_bytes, _static
from .stored_columns import _read_column
from .worker_client import _Worker, _worker_for, in_session


def decode_table(group: zarr.Group, out_path: str | Path, *, progress=None,
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
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
            with _worker_for(_uniform_bytes(st), settings, writes=True) as worker, \
                    _Work(settings, worker and worker.buf) as work:
                _decode_into(group, st, tmp, content, version, progress, out.name, work, worker)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _uniform_bytes(st: dict) -> int:
    """Bytes of the table's numeric columns (what a casacore worker would move)."""
    return sum(_column_bytes(st["nrows"], c) for c in st["columns"])


def _decode_into(group: zarr.Group, st: dict, path: Path, content: dict | None, version: int,
                 progress, where: str, work: _Work, worker: _Worker | None = None) -> dict:
    problem = _metadata_problem(st, content, version, where)
    if problem:
        raise CorruptTableData(problem)
    nrows = st["nrows"]
    cols = st["columns"]
    desc = {}
    for c in cols:
        d = _unjsonable(c["desc"])
        d["keywords"] = {}
        desc[c["name"]] = d
    desc["_define_hypercolumn_"] = _unjsonable(st.get("hypercolumns") or {})
    desc["_keywords_"] = {}
    desc["_private_keywords_"] = {}
    dminfo = {f"*{i + 1}": _unjsonable(dm) for i, dm in enumerate(st["dminfo"])}
    dm_type = {c: dm.get("TYPE") for dm in st["dminfo"] if isinstance(dm, dict) for c in dm.get("COLUMNS", [])}
    per_cell = {c for c, t in dm_type.items() if t == "TiledCellStMan"}
    # IncrementalStMan gives a cell never written the value of the row before it, unless the
    # table was closed and reopened since it was made: such columns (whose cells may be
    # undefined) are written last, after a reopen. (StManAipsIO, by contrast, loses what is
    # written after its table was first flushed: its columns go before.)
    reopen = [c for c in cols if dm_type.get(c["name"]) == "IncrementalStMan"
              and c["layout"] in ("shaped", "ragged", "record")]
    if worker is not None:
        tb = worker.table(str(path), desc, nrows, dminfo, st["endian"])
    else:
        tb = _table(str(path), desc, nrow=nrows, dminfo=dminfo, ack=False, endian=st["endian"])
    resolve = _resolver(path)
    digests = {}
    done = False

    def read(c: dict) -> None:
        digests[c["name"]] = _read_column(group, c, nrows, work, f"{where}: column {c['name']}", tb=tb,
                                          progress=progress, resolve=resolve, per_cell=c["name"] in per_cell)

    try:
        info = dict(st["info"])
        if info.get("readme", "").endswith("\n"):  # putinfo ends every readme line itself
            info["readme"] = info["readme"][:-1]
        tb.putinfo(info)
        records = [c for c in cols if c["layout"] == "record" and c not in reopen]  # may refer to subtables
        for c in sorted((c for c in cols if c not in records and c not in reopen),
                        key=lambda c: -_column_bytes(nrows, c)):
            read(c)  # biggest first (see _scan_table)
        subs = {}
        if st["subtables"] and worker is not None:
            tb.wait_created()  # the subtables go inside its directory
        for s in st["subtables"]:
            sg = group[s["group"]]
            sub_content = (content or {}).get("subtables", {}).get(s["name"]) if content else None
            # Subtables (small) are written by this process while the worker catches up; inside
            # a worker_session by the worker too (every casacore write is isolated there).
            subs[s["name"]] = _decode_into(sg, _static(sg), path / s["name"], sub_content, version,
                                           progress, f"{where}/{s['name']}", work,
                                           worker if in_session() else None)
        for c in records:
            read(c)
        if reopen:
            tb.close()
            tb = worker.open(path, writable=True) if worker is not None else \
                _table(str(path), readonly=False, ack=False)
            for c in reopen:
                read(c)
        for k, v in _dec_kw(st["keywords"], resolve).items():
            tb.putkeyword(k, v)
        for c in cols:
            for k, v in _dec_kw(c["keywords"], resolve).items():
                tb.putcolkeyword(c["name"], k, v)
        digests = {n: _result(d) for n, d in digests.items()}
        tb.flush()
        done = True
    finally:
        if done:
            tb.close()
        else:
            try:
                tb.close()
            except Exception:
                pass
    header = _hash_header(nrows, st["info"], {c["name"]: c["desc"] for c in cols}, st["keywords"],
                          {c["name"]: c["keywords"] for c in cols})
    _check_restored_header(path, st, header, where)
    sha = _table_sha(header, digests, {n: s["content_sha256"] for n, s in subs.items()})
    if content:
        for name, d in digests.items():
            if content["columns"].get(name) != d:
                raise CorruptTableData(f"{where}: column {name} does not match its checksum")
        if content["content_sha256"] != sha:
            raise CorruptTableData(f"{where}: table content does not match its checksum")
    return {"content_sha256": sha, "columns": digests, "subtables": subs}


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


def _check_restored_header(path: Path, st: dict, header: dict, where: str) -> None:
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
    if st.get("version", 1) >= 2:
        if _canon(d["private_keywords"]) != _canon(st.get("private_keywords") or {}):
            diff.append("private keywords")
        if _canon(layout) != _canon(_dm_layout(st["dminfo"])):
            diff.append("data-manager layout")
    if diff:
        raise FactorArchiveError(f"{where}: restored table differs from the stored one in {diff}")

