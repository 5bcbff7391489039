"""The table's content checksum and metadata checksum (formats/zarr.md, "Table checksums").

The content checksum depends only on the description, keywords and values, never on the storage
managers or the layout in the group, so an original table and its restored copy agree.
"""

from __future__ import annotations

import hashlib

import numpy as np
import xxhash

from .common import _CTYPES, CONTENT_VERSION, CorruptTableData, _canon

# Content checksum v1 (casacore_content versions 1 and 2) hashes each column's shapes and values
# with SHA-256; v2 (casacore_content version 3) with XXH3-128, which runs at about 8 GB/s here
# against 1.2 GB/s, and was a seventh of the CPU of an archive or a restore of a real run's
# shape. The checksum guards against damage and our own mistakes, not against someone who
# rewrites an archive (they would rewrite the manifest too), so collision resistance buys
# nothing; what combines the streams stays SHA-256.
_HASH_MAGIC = {1: b"factor-archive casacore-table content v1\n",
               2: b"factor-archive casacore-table content v2\n"}


def content_checksum_version(content_version: int) -> int:
    """The content checksum a ``casacore_content`` document of this version holds."""
    return 2 if content_version >= 3 else 1


def _stream(checksum: int):
    return xxhash.xxh3_128() if checksum >= 2 else hashlib.sha256()


_META_MAGIC = b"factor-archive casacore-table metadata v1\n"


def _hash_header(nrows, info, desc, keywords, colkeywords) -> dict:
    cols = {n: {k: v for k, v in d.items() if k not in ("dataManagerType", "dataManagerGroup")}
            for n, d in desc.items()}
    return {"nrows": nrows, "info": info, "columns": cols, "keywords": keywords,
            "column_keywords": colkeywords}


def _metadata_sha256(static: dict) -> str:
    """Checksum of a table group's ``casacore_table`` document (metadata checksum v1)."""
    return hashlib.sha256(_META_MAGIC + _canon(static)).hexdigest()


class _ColumnHash:
    def __init__(self, name: str, ctype: str, scalar: bool, checksum: int):
        self.head = _canon({"name": name, "type": ctype, "scalar": scalar})
        self.dtype = _CTYPES[ctype]
        self.is_string = self.dtype is None  # strings, and records as tagged JSON text
        self.shapes = _stream(checksum)
        self.values = _stream(checksum)

    def uniform(self, block: np.ndarray, scalar: bool) -> None:
        if not scalar:
            n, cell = block.shape[0], block.shape[1:]
            rec = np.empty((n, 1 + len(cell)), "<i8")
            rec[:, 0] = len(cell)
            rec[:, 1:] = cell
            self.shapes.update(rec.tobytes())
        self._values(block)

    def ragged(self, defined, ndim, shp, values) -> None:
        rec = np.empty((len(defined), 1 + shp.shape[1]), "<i8")
        rec[:, 0] = np.where(defined, ndim, -1)
        rec[:, 1:] = np.where(defined[:, None], shp, 0)
        self.shapes.update(rec.tobytes())
        self._values(values)

    def _values(self, a: np.ndarray) -> None:
        if self.is_string:
            out = bytearray()
            for s in np.asarray(a, dtype=object).reshape(-1):
                b = str(s).encode("utf-8")
                out += len(b).to_bytes(4, "little")
                out += b
            self.values.update(bytes(out))
        else:
            assert self.dtype is not None
            a = np.ascontiguousarray(a, dtype=self.dtype.newbyteorder("<"))
            self.values.update(a.reshape(-1).view(np.uint8).data)

    def hexdigest(self) -> str:
        return hashlib.sha256(self.head + b"\n" + self.shapes.digest() + self.values.digest()).hexdigest()


def _table_sha(header: dict, columns: dict[str, str], subtables: dict[str, str], checksum: int) -> str:
    h = hashlib.sha256(_HASH_MAGIC[checksum])
    h.update(_canon(header) + b"\n")
    for name in sorted(columns):
        h.update(f"column\t{name}\t{columns[name]}\n".encode())
    for name in sorted(subtables):
        h.update(f"subtable\t{name}\t{subtables[name]}\n".encode())
    return h.hexdigest()


def _digest(h: _ColumnHash, futs: list) -> str:
    for f in futs:  # done already (same thread, in order); re-raises a failed update
        f.result()
    return h.hexdigest()


def _result(d):
    return d.result() if hasattr(d, "result") else d


def _content_version(content, where: str) -> int:
    """Version of a ``casacore_content`` document (1: no metadata checksums)."""
    if not isinstance(content, dict):
        return 0
    version = content.get("version", 1)
    if version not in (1, 2, CONTENT_VERSION):
        raise CorruptTableData(f"{where}: unsupported table checksum version {version!r}")
    return version


def _metadata_problem(st: dict, content: dict | None, version: int, where: str) -> str | None:
    """What is wrong with a table's stored description, judged by its metadata checksum."""
    if not isinstance(content, dict):
        return None
    want = content.get("metadata_sha256")
    if want is None:
        return f"{where}: table description has no checksum" if version >= 2 else None
    if _metadata_sha256(st) != want:
        return f"{where}: table description differs from its stored checksum"
    return None

