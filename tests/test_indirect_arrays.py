"""WEIGHT and SIGMA of a DP3-written MS (fixed-shape arrays its StandardStMan keeps in an array
file) are restored by one write into that file, byte for byte as casacore's own puts would leave
it; where the file is not as expected, through casacore."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from casacore import tables as ct

from conftest import assert_tables_equal
from factor_archive.ms.casacore_table import decode, encode_table, indirect_arrays
from factor_archive.ms.casacore_table.decode import decode_table
from factor_archive.ms.synth import write_ms


@pytest.fixture(scope="module")
def dp3_ms(tmp_path_factory) -> Path:
    """A DP3-written MS of 4,320 rows whose WEIGHT and SIGMA differ from each other in every row."""
    d = tmp_path_factory.mktemp("indirect")
    src = write_ms(d / "band.ms", start_time=4.87e9, ntimes=120, interval=10.0,
                   chan_freqs=120e6 + np.arange(2) * 195312.5, chan_width=195312.5, nant=8)
    from factor_archive.ms.dp3 import Rewrite, dp3_available, rewrite_with_dp3

    if not dp3_available():
        pytest.skip("DP3 (the dp3 package) is not installed")
    out = d / "dp3.ms"
    rewrite_with_dp3([Rewrite(src, out)])
    rng = np.random.default_rng(5)
    with ct.table(str(out), readonly=False, ack=False) as t:
        assert t.nrows() >= indirect_arrays.MIN_ROWS
        for name in ("WEIGHT", "SIGMA"):
            assert t.getcoldesc(name)["option"] == 4  # FixedShape, not Direct: an array file
            t.putcol(name, rng.random((t.nrows(), 4), dtype=np.float32))
    return out


def _stored(src: Path, tmp_path: Path):
    root = zarr.open_group(zarr.storage.LocalStore(str(tmp_path / "a.zarr")), mode="w")
    encode_table(src, root.create_group("T"))
    return root["T"]


def _array_file(table: Path) -> bytes:
    (name,) = [p for p in table.iterdir() if p.name.startswith("table.f") and p.name.endswith("i")]
    return name.read_bytes()


def _spy_writes(monkeypatch) -> list[bool]:
    results: list[bool] = []
    real = decode.write_held

    def spy(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(decode, "write_held", spy)
    return results


def _spy_putcols(monkeypatch) -> list[str]:
    names: list[str] = []
    real = decode._put_uniform

    def spy(tb, name, *args, **kwargs):
        names.append(name)
        return real(tb, name, *args, **kwargs)

    monkeypatch.setattr(decode, "_put_uniform", spy)
    return names


def test_weight_and_sigma_go_into_their_array_file_at_once(dp3_ms, tmp_path, monkeypatch):
    group = _stored(dp3_ms, tmp_path)
    writes, putcols = _spy_writes(monkeypatch), _spy_putcols(monkeypatch)
    decode_table(group, tmp_path / "direct.ms")
    assert writes == [True]
    assert "WEIGHT" not in putcols and "SIGMA" not in putcols and "TIME" in putcols
    assert_tables_equal(dp3_ms, tmp_path / "direct.ms")

    monkeypatch.setattr(indirect_arrays, "MIN_ROWS", 10**9)  # every cell through casacore
    decode_table(group, tmp_path / "casacore.ms")
    assert writes == [True] and "WEIGHT" in putcols
    assert _array_file(tmp_path / "direct.ms") == _array_file(tmp_path / "casacore.ms")


def test_columns_found_in_another_order_are_put_through_casacore(dp3_ms, tmp_path, monkeypatch):
    """Both columns have records of one layout: taken in the wrong order, the read-back of the
    first row where they differ shows it, and casacore puts every cell."""
    group = _stored(dp3_ms, tmp_path)
    real = decode.write_held
    results = []

    def swapped(path, held, seqnr, order, nrows, open_table):
        results.append(real(path, held, seqnr, list(reversed(order)), nrows, open_table))
        return results[-1]

    monkeypatch.setattr(decode, "write_held", swapped)
    decode_table(group, tmp_path / "out.ms")
    assert results == [False]
    assert_tables_equal(dp3_ms, tmp_path / "out.ms")


def test_an_array_file_not_as_expected_is_left_unchanged(dp3_ms, tmp_path):
    """More rows than the file holds records for: nothing is written, the caller falls back."""
    table = tmp_path / "copy.ms"
    shutil.copytree(dp3_ms, table)
    before = _array_file(table)
    with ct.table(str(table), ack=False) as t:
        nrows, order, desc = t.nrows(), t.colnames(), t.getdesc()
        seqnr = next(dm["SEQNR"] for dm in t.getdminfo().values() if "WEIGHT" in dm["COLUMNS"])
    schema = decode.TableSchema.from_static(decode._static(_stored(dp3_ms, tmp_path)), "copy.ms")
    held = indirect_arrays.held_columns(schema, desc, schema.data_manager_types(), schema.endian)
    assert held is not None and set(held.columns) == {"WEIGHT", "SIGMA"}
    for column in held.columns.values():
        column.values[:] = 7
    assert not indirect_arrays.write_held(table, held, seqnr, order, nrows + 1,
                                          lambda p: ct.table(str(p), ack=False))
    assert _array_file(table) == before
    assert indirect_arrays.held_columns(schema, desc, schema.data_manager_types(), "big") is None


def test_records_of_other_types_and_shapes_are_found_too(tmp_path, monkeypatch):
    """Complex, double, short and float cells of several shapes (a 3 x 2 one: the file keeps the
    axes reversed): records of other lengths, some padded to 8 bytes, in the description's column
    order."""
    n = indirect_arrays.MIN_ROWS + 3
    rng = np.random.default_rng(7)
    values = {
        "C": (rng.random((n, 2, 2)) + 1j * rng.random((n, 2, 2))).astype(np.complex64),
        "A": rng.random((n, 3, 2)).astype(np.float32),
        "S": rng.integers(-999, 999, (n, 3)).astype(np.int16),
        "D": rng.random((n, 1)),
    }
    kinds = {"C": "complex", "A": "float", "S": "short", "D": "double"}
    desc = ct.maketabdesc([ct.makearrcoldesc(name, 0, shape=list(v.shape[1:]), valuetype=kinds[name],
                                             options=4) for name, v in values.items()]
                          + [ct.makescacoldesc("TIME", 0.0)])
    dminfo = {"*1": {"TYPE": "StandardStMan", "NAME": "SSM", "SPEC": {"BUCKETSIZE": 2048},
                     "COLUMNS": [*values, "TIME"]}}
    src = tmp_path / "src.tab"
    with ct.table(str(src), desc, nrow=n, dminfo=dminfo, ack=False) as t:
        for name, v in values.items():
            t.putcol(name, v)
        t.putcol("TIME", np.arange(n, dtype=float))
    writes = _spy_writes(monkeypatch)
    decode_table(_stored(src, tmp_path), tmp_path / "out.tab")
    assert writes == [True]
    assert_tables_equal(src, tmp_path / "out.tab")
