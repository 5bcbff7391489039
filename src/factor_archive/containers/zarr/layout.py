"""The zarr form's layout: node names, the file-array layout and the small arrays it writes.

``formats/zarr.md`` specifies it; the other modules of this package ask this one.
"""
from __future__ import annotations

from urllib.parse import unquote

import numpy as np

LAYOUT = "factor-archive/zarr"
LAYOUT_VERSION = 1
ATTR = "factor_archive"            # attribute key on the root and on every member node
MEMBERS = "members"                # group holding one node per member
MANIFEST_NODE = "manifest.json"    # uint8 array at the root: the manifest JSON, written last
RAW_GROUP = "raw"                  # sub-group of a raw-stored table holding its files
FILE_CHUNK = 1 << 20               # inner chunk of a file array (bytes)
FILE_SHARD = 32 << 20              # shard (one stored object) of a file array (bytes)
FILE_LEVEL = 3                     # zstd level of file arrays
TABLE_CHECKSUM = "casacore-table-content-v2"  # v1 (SHA-256 streams) in older archives
STORE_SUFFIX = ".store"            # -s: chunk tables materialised beside the archive


# ---------------------------------------------------------------------------------------------
# Node names

def node_component(name: str) -> str:
    """One path component as a zarr node name.

    Every ``%`` becomes ``%25``; then a name zarr reserves is escaped as well: ``zarr.json``
    (it would clash with the parent's metadata document) becomes ``zarr%2Ejson`` and a leading
    ``__`` becomes ``%5F_``. ``urllib.parse.unquote`` is the exact inverse.
    """
    out = name.replace("%", "%25")
    if out == "zarr.json":
        out = "zarr%2Ejson"
    if out.startswith("__"):
        out = "%5F" + out[1:]
    return out


def node_path(archive_path: str) -> str:
    """The zarr path of the member stored at ``archive_path``: ``members/<archive path>``."""
    return "/".join([MEMBERS] + [node_component(c) for c in archive_path.split("/")])


def archive_path_of(node: str) -> str:
    """Inverse of node_path."""
    parts = node.split("/")
    if parts[0] != MEMBERS or len(parts) < 2:
        raise ValueError(f"{node!r} is not a member node")
    return "/".join(unquote(p) for p in parts[1:])


def _compressors(level: int = FILE_LEVEL):
    from zarr import codecs as zc

    return [zc.ZstdCodec(level=level), zc.Crc32cCodec()]


def _file_layout(size: int) -> tuple[int, int]:
    """(inner chunk, shard) lengths of a file array of ``size`` bytes."""
    chunk = max(1, min(FILE_CHUNK, size))
    shard = max(chunk, min(FILE_SHARD, -(-size // chunk) * chunk))
    return chunk, shard


def _file_extra(node: str, size: int) -> dict:
    chunk, shard = _file_layout(size)
    return {"node": node, "stored": "file", "checksum": "sha256", "chunk": chunk, "shard": shard,
            "codecs": f"zstd-{FILE_LEVEL}+crc32c"}


def _write_bytes_array(group, name: str, data: bytes, attrs: dict) -> None:
    arr = group.create_array(name, shape=(len(data),), dtype="uint8", chunks=(max(1, len(data)),),
                             compressors=_compressors(), fill_value=0, dimension_names=("byte",),
                             attributes=attrs, config={"write_empty_chunks": True})
    if data:
        arr[:] = np.frombuffer(data, dtype=np.uint8)


