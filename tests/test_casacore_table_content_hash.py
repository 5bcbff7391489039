"""The content and metadata checksums are what formats/zarr.md specifies: computed here again
from the specification alone, for a small table, they agree with the codec's."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import zarr
from casacore import tables as ct

from factor_archive.ms.casacore_table import encode_table, table_content_sha256

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


def test_content_checksum_follows_the_specification(small):
    def column(name, ctype, scalar, shapes: bytes, values: bytes) -> str:
        head = canonical({"name": name, "type": ctype, "scalar": scalar})
        return hashlib.sha256(head + b"\n" + hashlib.sha256(shapes).digest()
                              + hashlib.sha256(values).digest()).hexdigest()

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
    h = hashlib.sha256(b"factor-archive casacore-table content v1\n" + canonical(header) + b"\n")
    for name in sorted(digests):
        h.update(f"column\t{name}\t{digests[name]}\n".encode())
    assert table_content_sha256(small) == h.hexdigest()


def test_stored_checksums_are_the_ones_specified(small, tmp_path):
    g = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    info = encode_table(small, g)
    content = g.attrs["casacore_content"]
    assert content["content_sha256"] == info["content_sha256"] == table_content_sha256(small)
    static = g.attrs["casacore_table"]
    want = hashlib.sha256(b"factor-archive casacore-table metadata v1\n" + canonical(static)).hexdigest()
    assert content["metadata_sha256"] == info["metadata_sha256"] == want
    assert content["version"] == 2 and set(content["columns"]) == {"I", "V", "S"}
