"""A StandardStMan's bucket cache while archive reads its table and restore writes it.

Archive reads a table column by column, and every column has values in every bucket: with the
2 buckets DP3's tables keep, casacore read the 20 MiB StandardStMan file of a 190 MB chunk MS
27 times (556 MiB in 123,000 reads, strace). Reading, a cache for all the buckets can be asked
for once the table is open (``MaxCacheSize``, not stored): :func:`widen_for_reading`.

A StandardStMan keeps PERSCACHESIZE buckets in memory (2 in a table DP3 writes). Restore makes a
table with all its rows at once and then writes it column by column, and every column has values
in every bucket. With 2 buckets cached, casacore wrote the empty buckets while it made the rows
(68 MiB written and 39 MiB read back for the 20 MiB StandardStMan file of a 190 MB chunk MS) and
read each back for every column written after. Asking for a bigger cache once the table exists
(``MaxCacheSize``) comes too late for the first part, and casacore keeps that cache to the
buckets there are.

So the table is made with a persistent cache big enough for its buckets (up to CACHE_BYTES), and
once it is closed the one field that records that size, in the data manager's file header, is
set back to the stored value. That header is casacore's AipsIO object "StandardStMan": magic
0xbebebebe, object length, the type name (length + bytes), version, for version 3 and later an
endian flag byte, then bucket size, number of buckets and persistent cache size, each a uint32
in the table's byte order. The bytes casacore writes are otherwise the same as with the small
cache (compared file by file), and the restore's header check compares the data-manager layout,
PERSCACHESIZE included, with the stored one.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .common import CorruptTableData

CACHE_BYTES = 64 << 20
_MAGIC = b"\xbe\xbe\xbe\xbe"
_TYPE = b"StandardStMan"


def widen_for_reading(tb, dminfo) -> None:
    """Ask each StandardStMan of the open table ``tb`` (casacore's, or one in a worker) for a
    cache of every bucket, up to CACHE_BYTES; casacore keeps it to the buckets there are."""
    for dm in dminfo.values() if isinstance(dminfo, dict) else dminfo:
        spec = dm.get("SPEC")
        bucket = _positive(spec.get("BUCKETSIZE")) if isinstance(spec, dict) else 0
        columns = dm.get("COLUMNS")
        if dm.get("TYPE") == "StandardStMan" and bucket and columns:
            tb.setdmprop(str(columns[0]), {"MaxCacheSize": max(2, CACHE_BYTES // bucket)})


def raise_caches(dminfo: dict, column_bytes: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Raise PERSCACHESIZE in ``dminfo`` (the specs the new table is made with) for each
    StandardStMan holding more buckets than it caches; returns {data manager name: (stored
    value, raised value)}. ``column_bytes``: the values of each column, in bytes (a quarter more
    buckets are allowed for, for the index and the buckets' own bookkeeping)."""
    raised = {}
    for dm in dminfo.values():
        spec = dm.get("SPEC")
        if dm.get("TYPE") != "StandardStMan" or not isinstance(spec, dict):
            continue
        bucket, kept, name = _positive(spec.get("BUCKETSIZE")), _positive(spec.get("PERSCACHESIZE")), dm.get("NAME")
        if not bucket or not kept or not isinstance(name, str):
            continue
        buckets = sum(column_bytes.get(c, 0) for c in dm.get("COLUMNS", [])) // bucket * 5 // 4 + 2
        size = min(buckets, CACHE_BYTES // bucket)
        if size > kept:
            dm["SPEC"] = {**spec, "PERSCACHESIZE": size}
            raised[name] = (kept, size)
    return raised


def _positive(v) -> int:
    return int(v) if isinstance(v, (int, np.integer)) and v > 0 else 0


def data_manager_files(dminfo: dict, raised: dict[str, tuple[int, int]]) -> dict[str, int]:
    """{name: sequence number} of the raised data managers, from the new table's getdminfo()."""
    return {dm["NAME"]: int(dm["SEQNR"]) for dm in dminfo.values()
            if dm.get("NAME") in raised and "SEQNR" in dm}


def restore_cache_sizes(table: Path, raised: dict[str, tuple[int, int]], files: dict[str, int],
                        where: str) -> None:
    """Write back the stored PERSCACHESIZE of each raised StandardStMan of the closed ``table``,
    where its header holds the raised one."""
    for name, (kept, size) in raised.items():
        if name not in files:
            raise CorruptTableData(f"{where}: restored table has no data manager {name!r}")
        path = table / f"table.f{files[name]}"
        with open(path, "r+b") as f:
            head = f.read(64)
            at, order = _cache_size_offset(head)
            if at is None or struct.unpack_from(order + "I", head, at) != (size,):
                raise CorruptTableData(f"{where}: {path.name} is not a StandardStMan file as expected")
            os.pwrite(f.fileno(), struct.pack(order + "I", kept), at)


def _cache_size_offset(head: bytes) -> tuple[int | None, str]:
    """Offset of the persistent cache size in a StandardStMan file header, and its byte order."""
    if head[:4] != _MAGIC or len(head) < 12:
        return None, "<"
    for order in ("<", ">"):
        (n,) = struct.unpack_from(order + "I", head, 8)
        if n == len(_TYPE) and head[12:12 + n] == _TYPE:
            at = 12 + n
            (version,) = struct.unpack_from(order + "I", head, at)
            at += 4 + (1 if version >= 3 else 0) + 8  # endian flag, bucket size, bucket count
            return (at, order) if at + 4 <= len(head) else (None, order)
    return None, "<"
