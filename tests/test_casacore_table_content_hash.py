"""The content and metadata checksums are what formats/zarr.md specifies: computed here again
from the specification alone, for a small table, they agree with the codec's; a table group
stored by an earlier version (content checksum v1, SHA-256 streams) still restores and verifies."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import xxhash
import zarr
from casacore import tables as ct

from factor_archive.ms.casacore_table import decode_table, encode_table, table_content_sha256, verify_table
from factor_archive.ms.casacore_table import encode as encode_module

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.fixture
def small(tmp_path):
    """Three rows: an int scalar, a double array column with an undefined cell and two cell
    shapes, a string scalar with a non-ASCII value."""
    path = tmp_path / "small.tab"
    cds = [ct.makescacoldesc("I", 0), ct.makearrcoldesc("V", 0.0, ndim=1), ct.makescacoldesc("S", "")]
    with ct.table(str(path), ct.maketabdesc(cds), nrow=3, ack=False) as t:
        t.putcol("I", np.array([1, -2, 3], np.int32))
        t.putcell("V", 0, np.array([1.0, 2.0]))
        t.putcell("V", 2, np.array([3.0]))
        t.putcol("S", ["a", "bé", ""])
    return path


def specified_checksum(version: int) -> str:
    """The small table's content checksum of ``version``, from formats/zarr.md alone."""
    stream = {1: lambda b: hashlib.sha256(b).digest(), 2: lambda b: xxhash.xxh3_128(b).digest()}[version]

    def column(name, ctype, scalar, shapes: bytes, values: bytes) -> str:
        head = canonical({"name": name, "type": ctype, "scalar": scalar})
        return hashlib.sha256(head + b"\n" + stream(shapes) + stream(values)).hexdigest()

    shapes_v = np.array([[1, 2], [-1, 0], [1, 1]], "<i8").tobytes()  # [ndim or -1, dims padded]
    digests = {
        "I": column("I", "int", True, b"", np.array([1, -2, 3], "<i4").tobytes()),
        "V": column("V", "double", False, shapes_v, np.array([1.0, 2.0, 3.0], "<f8").tobytes()),
        "S": column("S", "string", True, b"",
                    b"".join(len(s.encode()).to_bytes(4, "little") + s.encode() for s in ("a", "bé", ""))),
    }
    common = {"valueType": None, "option": 0, "maxlen": 0, "comment": ""}
    header = {"nrows": 3, "info": {"type": "", "subType": "", "readme": ""},
              "columns": {"I": {**common, "valueType": "int"},
                          "V": {**common, "valueType": "double", "ndim": 1, "_c_order": True},
                          "S": {**common, "valueType": "string"}},
              "keywords": {"type": "Record", "fields": []},
              "column_keywords": {c: {"type": "Record", "fields": []} for c in "IVS"}}
    h = hashlib.sha256(f"factor-archive casacore-table content v{version}\n".encode() + canonical(header) + b"\n")
    for name in sorted(digests):
        h.update(f"column\t{name}\t{digests[name]}\n".encode())
    return h.hexdigest()


def test_content_checksum_follows_the_specification(small):
    assert table_content_sha256(small) == specified_checksum(2)
    assert specified_checksum(1) != specified_checksum(2)


def test_stored_checksums_are_the_ones_specified(small, tmp_path):
    g = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    info = encode_table(small, g)
    content = g.attrs["casacore_content"]
    assert content["content_sha256"] == info["content_sha256"] == table_content_sha256(small)
    static = g.attrs["casacore_table"]
    want = hashlib.sha256(b"factor-archive casacore-table metadata v1\n" + canonical(static)).hexdigest()
    assert content["metadata_sha256"] == info["metadata_sha256"] == want
    assert content["version"] == 3 and set(content["columns"]) == {"I", "V", "S"}


def test_a_table_stored_with_sha256_streams_still_restores_and_verifies(small, tmp_path, monkeypatch):
    """Archives written before content checksum v2 hold casacore_content version 2: a reader
    hashes their columns with SHA-256 again, and still notices damage."""
    g = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    with monkeypatch.context() as m:
        m.setattr(encode_module, "CONTENT_VERSION", 2)
        info = encode_table(small, g)
    content = g.attrs["casacore_content"]
    assert content["version"] == 2 and info["content_sha256"] == specified_checksum(1)
    assert verify_table(g) == []
    decode_table(g, tmp_path / "restored.tab")
    assert table_content_sha256(tmp_path / "restored.tab") == specified_checksum(2)
    with ct.table(str(tmp_path / "restored.tab"), ack=False) as t:
        assert list(t.getcol("S")) == ["a", "bé", ""]

    g.attrs["casacore_content"] = {**content, "version": 3}   # claims v2 checksums: they differ
    problems = verify_table(g)
    assert problems and all("differ" in p for p in problems), problems
