"""The table schema: what encoding writes as ``casacore_table`` is read back into the same
classes, and a description that is not of the format (a hostile archive that even recomputed its
checksums) is one line naming the table, before restore writes anything."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import zarr
from casacore import tables as ct

from factor_archive.ms.casacore_table import CorruptTableData, decode_table, encode_table, verify_table
from factor_archive.ms.casacore_table.common import _quiet_attrs_update
from factor_archive.ms.casacore_table.content_hash import _metadata_sha256
from factor_archive.ms.casacore_table.schema import TableSchema

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A small table with a scalar, a fixed, a shaped and a string column, and a subtable,
    encoded into a local store; returns (store dir, source table)."""
    base = tmp_path_factory.mktemp("schema")
    src = base / "t.tab"
    cds = [ct.makescacoldesc("TIME", 0.0), ct.makearrcoldesc("DATA", 0j, shape=[2, 2], options=4, valuetype="complex"),
           ct.makearrcoldesc("VAR", 0.0, ndim=1), ct.makescacoldesc("NAME", "")]
    with ct.table(str(src), ct.maketabdesc(cds), nrow=12, ack=False) as t:
        t.putcol("TIME", np.arange(12.0))
        t.putcol("DATA", np.ones((12, 2, 2), np.complex64))
        for r in range(12):
            t.putcell("VAR", r, np.arange(2.0 + r % 2))
        t.putcol("NAME", [f"n{r}" for r in range(12)])
        sub = ct.table(str(src / "SUB"), ct.maketabdesc([ct.makescacoldesc("ID", 0)]), nrow=2, ack=False)
        sub.putcol("ID", np.arange(2, dtype=np.int32))
        sub.close()
        t.putkeyword("SUB", "Table: " + str((src / "SUB").resolve()))
    root = zarr.open_group(zarr.storage.LocalStore(str(base / "s.zarr")), mode="w")
    encode_table(src, root.create_group("T"))
    return base / "s.zarr", src


def _copy(stored, tmp_path) -> zarr.Group:
    import shutil

    shutil.copytree(stored[0], tmp_path / "s.zarr")
    return zarr.open_group(zarr.storage.LocalStore(str(tmp_path / "s.zarr")), mode="r+", path="T")


def test_the_stored_description_reads_back_as_the_schema_encoding_wrote(stored):
    g = zarr.open_group(zarr.storage.LocalStore(str(stored[0]), read_only=True), mode="r", path="T")
    st = json.loads(json.dumps(dict(g.attrs["casacore_table"])))
    schema = TableSchema.from_static(st, "T")
    assert schema.static() == st  # nothing lost, nothing added
    cols = {c.name: c for c in schema.columns}
    assert [c.layout for c in schema.columns] == ["scalar", "fixed", "shaped", "scalar"]
    assert cols["VAR"].shapes == [(2,), (3,)] and cols["VAR"].counts == [6, 6]
    assert cols["DATA"].numeric_bytes(schema.nrows) == 12 * 4 * 8
    assert schema.groups == {"SUB": "subtables/SUB"} and schema.subtables == [("SUB", True)]
    assert all(c.problem is None for c in schema.columns)


def _bad(st: dict, change) -> dict:
    st = copy.deepcopy(st)
    change(st)
    return st


HOSTILE = {
    "nrows is text": lambda st: st.update(nrows="12"),
    "nrows below zero": lambda st: st.update(nrows=-1),
    "endian unknown": lambda st: st.update(endian="middle"),
    "columns not a list": lambda st: st.update(columns={"TIME": {}}),
    "a column without a name": lambda st: st["columns"][0].pop("name"),
    "a column twice": lambda st: st["columns"].append(st["columns"][0]),
    "keywords not a record": lambda st: st.update(keywords=[1, 2]),
    "a column's desc not an object": lambda st: st["columns"][1].update(desc="x"),
    "a subtable without a group": lambda st: st["subtables"][0].pop("group"),
    "dminfo not a list": lambda st: st.update(dminfo={"*1": {}}),
    "info missing": lambda st: st.pop("info"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_description_not_of_the_format_is_one_line_naming_the_table(stored, case):
    g = zarr.open_group(zarr.storage.LocalStore(str(stored[0]), read_only=True), mode="r", path="T")
    st = _bad(json.loads(json.dumps(dict(g.attrs["casacore_table"]))), HOSTILE[case])
    with pytest.raises(CorruptTableData) as e:
        TableSchema.from_static(st, "x.tab")
    assert str(e.value).startswith("x.tab: stored table description is unreadable (")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("change, problem", [
    (lambda c: c.update(type="float128"), "stored column of type 'float128', layout 'shaped' is not readable"),
    (lambda c: c.update(counts=[6]), "stored shapes are unreadable (shapes and counts do not match)"),
    (lambda c: c.update(shapes=[["2"], [3]]), "stored shapes are unreadable (shape '2' is not a count)"),
    (lambda c: c.update(node=7), "stored column description is unreadable (node 7)"),
    (lambda c: c.update(block_rows=1.5), "stored column description is unreadable (block_rows 1.5 is not a count)"),
])
def test_a_column_that_cannot_be_read_is_named_and_the_others_still_verified(stored, tmp_path, change, problem):
    """verify names the column and goes on; restore refuses before it writes anything, even
    when the archive's metadata checksum was made to match."""
    g = _copy(stored, tmp_path)
    st = json.loads(json.dumps(dict(g.attrs["casacore_table"])))
    change(next(c for c in st["columns"] if c["name"] == "VAR"))
    content = json.loads(json.dumps(dict(g.attrs["casacore_content"])))
    content["metadata_sha256"] = _metadata_sha256(st)  # a forger who knows the format
    _quiet_attrs_update(g, {"casacore_table": st, "casacore_content": content})
    assert verify_table(g, name="x.tab") == [f"x.tab: column VAR: {problem}"]
    out = tmp_path / "out.tab"
    with pytest.raises(CorruptTableData, match=f"^x?.*out.tab: column VAR: {problem.split('(')[0]}"):
        decode_table(g, out)
    assert not out.exists() and not list(tmp_path.glob(".out.tab.partial*"))


def test_a_hostile_description_with_a_matching_checksum_is_refused_before_writing(stored, tmp_path):
    g = _copy(stored, tmp_path)
    st = json.loads(json.dumps(dict(g.attrs["casacore_table"])))
    st["nrows"] = "many"
    content = json.loads(json.dumps(dict(g.attrs["casacore_content"])))
    content["metadata_sha256"] = _metadata_sha256(st)
    _quiet_attrs_update(g, {"casacore_table": st, "casacore_content": content})
    assert verify_table(g, name="x.tab") == [
        "x.tab: stored table description is unreadable (nrows 'many' is not a count)"]
    with pytest.raises(CorruptTableData, match=r"^out.tab: stored table description is unreadable"):
        decode_table(g, tmp_path / "out.tab")
    assert not (tmp_path / "out.tab").exists() and not list(tmp_path.glob(".out.tab.partial*"))


def test_a_subtable_node_that_is_not_a_group_is_missing(stored, tmp_path):
    g = _copy(stored, tmp_path)
    st = json.loads(json.dumps(dict(g.attrs["casacore_table"])))
    st["subtables"][0]["group"] = "TIME"  # an array, not a table group
    content = json.loads(json.dumps(dict(g.attrs["casacore_content"])))
    content["metadata_sha256"] = _metadata_sha256(st)
    _quiet_attrs_update(g, {"casacore_table": st, "casacore_content": content})
    with pytest.raises(CorruptTableData, match=r"out.tab/SUB: subtable missing"):
        decode_table(g, tmp_path / "out.tab")
    assert not (tmp_path / "out.tab").exists()
