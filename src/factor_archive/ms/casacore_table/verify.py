"""Checking a stored table without writing one (``verify_table``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import zarr

from .common import CONTENT_ATTR, CorruptTableData
from .content_hash import _content_version, _metadata_problem, _result, _table_sha, content_checksum_version
from .pipeline import DEFAULT_SETTINGS, PipelineSettings, _Work
from .schema import TableSchema, _static
from .stored_columns import _read_column


def verify_table(group: zarr.Group, *, name: str | None = None,
                 progress: Callable[[int], None] | None = None,
                 settings: PipelineSettings = DEFAULT_SETTINGS) -> list[str]:
    """Check a stored table without writing one: check each table description against its
    metadata checksum, read every shard of every column (subtables included), recompute each
    column's sha256 and the content checksum, and compare them with the stored
    ``casacore_content``. Returns one line per problem, [] when all is well; each line names
    the table (``name``, by default the group's path; ``<name>/<SUBTABLE>`` for a subtable),
    the column and the row (or, for ragged values, value) range, e.g.
    ``x.ms: column DATA rows 0-1023: stored data is damaged (crc32c checksum mismatch)``.
    ``progress`` gets the column bytes checked, as in decode_table.
    """
    where = name if name is not None else (group.path or "/")
    problems: list[str] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
        with _Work(settings) as work:
            content = group.attrs.get(CONTENT_ATTR)
            if not isinstance(content, dict):
                problems.append(f"{where}: no content checksum (the table was not stored completely)")
                content = None
            try:
                version = _content_version(content, where)
            except CorruptTableData as e:
                problems.append(str(e))
                version, content = 0, None
            _verify_into(group, content, version, where, progress, work, problems)
    return problems


def _verify_into(group, content: dict | None, version: int, where: str, progress, work: _Work,
                 problems: list[str]) -> str | None:
    """The table's recomputed content checksum, or None when some of it could not be read."""
    try:
        st = _static(group)
    except CorruptTableData:
        problems.append(f"{where}: no readable casacore table description")
        return None
    before = len(problems)
    problem = _metadata_problem(st, content, version, where)
    if problem:
        problems.append(problem)
    try:
        schema = TableSchema.from_static(st, where)
    except CorruptTableData as e:
        problems.append(str(e))
        return None
    checksum = content_checksum_version(version)
    digests = {c.name: _read_column(group, c, schema.nrows, work, f"{where}: column {c.name}",
                                    checksum=checksum, progress=progress, problems=problems)
               for c in schema.columns}
    subs: dict[str, str | None] = {}
    for name, _referenced in schema.subtables:
        sub_where = f"{where}/{name}"
        try:
            sg = group[schema.groups[name]]
        except Exception:
            problems.append(f"{sub_where}: subtable missing")
            subs[name] = None
            continue
        sub_content = (content or {}).get("subtables", {}).get(name)
        if content is not None and not isinstance(sub_content, dict):
            problems.append(f"{sub_where}: no content checksum")
            sub_content = None
        subs[name] = _verify_into(sg, sub_content, version, sub_where, progress, work, problems)
    digests = {n: _result(d) for n, d in digests.items()}
    if content is not None:
        stored = content.get("columns") or {}
        for n, d in digests.items():
            if d is not None and stored.get(n) != d:
                problems.append(f"{where}: column {n}: values differ from the stored checksum")
    whole = {n: d for n, d in digests.items() if d is not None}
    sub_whole = {n: d for n, d in subs.items() if d is not None}
    if len(whole) < len(digests) or len(sub_whole) < len(subs):
        return None
    sha = _table_sha(schema.hash_header(), whole, sub_whole, checksum)
    if content is not None and content.get("content_sha256") != sha and len(problems) == before:
        problems.append(f"{where}: table content differs from the stored checksum")
    return sha

