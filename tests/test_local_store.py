"""A zarr store in a local directory read without zarr (local_store): the same groups,
attributes and arrays zarr reads, and no node path that leaves the store."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from factor_archive.ms.casacore_table import local_store
from factor_archive.ms.casacore_table.shards import _stored_array


def test_groups_and_attributes_read_as_zarr_reads_them(tmp_path):
    root = zarr.open_group(zarr.storage.LocalStore(tmp_path / "s.zarr"), mode="w", attributes={"a": 1})
    sub = root.create_group("members").create_group("x y", attributes={"k": [1, "two"]})
    sub.create_array("odd", shape=(3,), dtype="int32", chunks=(2,))[:] = [1, 2, 3]

    here = local_store.open_group(tmp_path / "s.zarr")
    assert here.attrs == {"a": 1} and local_store.is_group(here)
    group = here["members/x y"]
    assert local_store.is_group(group) and group.attrs == {"k": [1, "two"]} and group.path == "members/x y"
    assert here.get("members/absent") is None
    with pytest.raises(KeyError):
        here["absent"]
    arr = group["odd"]                    # not in the codec's layout: opened through zarr
    assert not local_store.is_group(arr) and np.array_equal(arr[:], [1, 2, 3])
    assert _stored_array(group, "odd") is None


@pytest.mark.parametrize("path", ["..", "members/../..", "/etc", "members//x", "a\\b"])
def test_a_node_path_leaving_the_store_is_refused(tmp_path, path):
    zarr.open_group(zarr.storage.LocalStore(tmp_path / "s.zarr"), mode="w")
    here = local_store.open_group(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="bad node path"):
        here[path]


def test_a_document_that_is_not_a_zarr_v3_node_is_refused(tmp_path):
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "s.zarr" / "zarr.json").write_text('{"zarr_format": 2}')
    with pytest.raises(ValueError, match="not a zarr v3 node"):
        local_store.open_group(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array"}')
    with pytest.raises(ValueError, match="not a group"):
        local_store.open_group(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        local_store.open_group(tmp_path / "s.zarr")
    with pytest.raises(FileNotFoundError):
        local_store.open_group(tmp_path / "absent")


def test_a_small_object_is_read_in_one_open_and_a_big_one_by_range(tmp_path, monkeypatch):
    """A small file's shard is read whole when opened (reading its index, then its chunk, opened
    it twice more); a shard of tens of MB is read by range, so a reader holds one chunk."""
    from factor_archive.ms.casacore_table import zarr_internals

    monkeypatch.setattr(zarr_internals, "SMALL_OBJECT", 1000)
    (tmp_path / "small").write_bytes(bytes(range(200)) * 5)
    (tmp_path / "big").write_bytes(bytes(1001))
    store = local_store.LocalDirectory(str(tmp_path))
    small, big = zarr_internals.store_open(store, "small"), zarr_internals.store_open(store, "big")
    assert small is not None and small.path is None and small.size == 1000
    assert big is not None and big.path is not None and big.data is None and big.size == 1001
    (tmp_path / "small").unlink()  # read already: nothing more to open
    assert small.read(995, 10).tobytes() == bytes(range(195, 200))
    assert big.read(1000, 5).tobytes() == bytes(1)
    assert zarr_internals.store_open(store, "gone") is None
