"""User stories: a Measurement Set (and odder casacore tables) go into a zarr store and come back
bit for bit, open as an xarray Dataset, and refuse cleanly when they cannot be stored by column."""

from __future__ import annotations

import json
import os
import re
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zarr
from casacore import tables as ct

from factor_archive.errors import FactorArchiveError
from factor_archive.ms import casacore_table
from factor_archive.ms.casacore_table import (
    CorruptTableData,
    PipelineSettings,
    RawTableRequired,
    casacore_read,
    codec_choice,
    codecs,
    common,
    decode_table,
    encode,
    encode_table,
    keywords,
    pipeline,
    schema,
    shards,
    table_content_sha256,
    worker_client,
    zarr_internals,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# --------------------------------------------------------------------------- table builders


def _write_ms(path: Path, ntimes=12, nchan=8, nant=4) -> Path:
    from factor_archive.ms.synth import write_ms

    write_ms(path, start_time=4.87e9, ntimes=ntimes, interval=10.0,
             chan_freqs=120e6 + np.arange(nchan) * 195312.5, chan_width=195312.5, nant=nant)
    with ct.table(str(path), readonly=False, ack=False) as t:  # a NaN with a payload, a -0.0
        d = t.getcell("DATA", 3)
        d.view(np.uint32)[0, 0] = 0x7FC0BEEF
        d.view(np.uint32)[1, 1] = 0x80000000
        t.putcell("DATA", 3, d)
    return path


def _tiled_copy(src: Path, dst: Path, nchan: int) -> Path:
    """The same MS with DP3-like tiled storage managers."""
    dminfo = {
        "*1": {"TYPE": "TiledColumnStMan", "NAME": "TiledDATA",
               "SPEC": {"DEFAULTTILESHAPE": [4, nchan, 16]}, "COLUMNS": ["DATA"]},
        "*2": {"TYPE": "TiledColumnStMan", "NAME": "TiledFlag",
               "SPEC": {"DEFAULTTILESHAPE": [4, nchan, 32]}, "COLUMNS": ["FLAG"]},
        "*3": {"TYPE": "IncrementalStMan", "NAME": "IncInterval", "SPEC": {"BUCKETSIZE": 2048},
               "COLUMNS": ["INTERVAL", "EXPOSURE"]},
    }
    with ct.table(str(src), ack=False) as t:
        desc = t.getdesc()
        desc["_keywords_"] = {}
        out = ct.table(str(dst), desc, nrow=t.nrows(), dminfo=dminfo, ack=False)
        for col in t.colnames():
            if col != "FLAG_CATEGORY":
                out.putcol(col, t.getcol(col))
        out.putinfo({**t.info(), "readme": t.info()["readme"].rstrip("\n")})
        out.removecolkeyword("FLAG_CATEGORY", "CATEGORY")  # came in as Int[0], not String[0]
        out.putcolkeyword("FLAG_CATEGORY", "CATEGORY", np.array([], dtype=str))
        for name, value in t.getkeywords().items():
            if isinstance(value, str) and value.startswith("Table: "):
                shutil.copytree(src / name, dst / name)
                out.putkeyword(name, "Table: " + str((dst / name).resolve()))
            else:
                out.putkeyword(name, np.float32(value) if name == "MS_VERSION" else value)
        out.close()
    return dst


def _custom_table(path: Path, endian="little") -> Path:
    """Variable shapes, undefined cells, string arrays, bools, odd types, typed nested keywords,
    a referenced and an unreferenced subtable, TiledShapeStMan and IncrementalStMan."""
    cds = [
        ct.makescacoldesc("TIME", 0.0, keywords={"QuantumUnits": ["s"],
                                                 "MEASINFO": {"type": "epoch", "Ref": "UTC"}}),
        ct.makescacoldesc("FLAG_ROW", False),
        ct.makescacoldesc("NAME", ""),
        ct.makescacoldesc("U8", 0, valuetype="uchar"),
        ct.makescacoldesc("I16", 0, valuetype="short"),
        ct.makescacoldesc("U32", 0, valuetype="uint"),
        ct.makescacoldesc("I64", 0, valuetype="int64"),
        ct.makescacoldesc("F32", 0.0, valuetype="float"),
        ct.makescacoldesc("C64", 0j, valuetype="complex"),
        ct.makearrcoldesc("VAR", 0.0, ndim=-1, comment="any ndim, some cells undefined"),
        ct.makearrcoldesc("VAR2", 0j, ndim=2, valuetype="dcomplex"),
        ct.makearrcoldesc("TSM", 0.0, ndim=2, valuetype="float"),
        ct.makearrcoldesc("SFIX", "", shape=[3, 2], options=4),
        ct.makearrcoldesc("SVAR", "", ndim=1),
        ct.makearrcoldesc("BARR", False, shape=[5], options=4),
        ct.makearrcoldesc("DIR", 0.0, shape=[2], options=4,
                          keywords={"QuantumUnits": ["rad", "rad"],
                                    "MEASINFO": {"type": "direction", "Ref": "J2000"}}),
        ct.makearrcoldesc("EMPTY", 0, ndim=1, comment="never written"),
        ct.makescacoldesc("INC", 0.0),
        ct.makearrcoldesc("ZERO", 0.0, ndim=2, comment="every cell holds no values"),
    ]
    dminfo = {
        "*1": {"TYPE": "TiledShapeStMan", "NAME": "TiledTSM", "SPEC": {"DEFAULTTILESHAPE": [3, 4, 8]},
               "COLUMNS": ["TSM"]},
        "*2": {"TYPE": "IncrementalStMan", "NAME": "Inc", "SPEC": {"BUCKETSIZE": 1024},
               "COLUMNS": ["INC"]},
        "*3": {"TYPE": "StandardStMan", "NAME": "SSM", "SPEC": {"BUCKETSIZE": 4096},
               "COLUMNS": [c["name"] for c in cds if c["name"] not in ("TSM", "INC")]},
    }
    n = 23
    rng = np.random.default_rng(7)
    t = ct.table(str(path), ct.maketabdesc(cds), nrow=n, dminfo=dminfo, ack=False, endian=endian)
    try:
        t.putinfo({"type": "Custom", "subType": "test", "readme": "line one\nline two\n"})
        t.putcol("TIME", 4.87e9 + np.arange(n) * 0.5)
        t.putcol("FLAG_ROW", rng.random(n) < 0.3)
        t.putcol("NAME", [f"name-{i}-é" if i % 4 else "" for i in range(n)])
        t.putcol("U8", np.arange(n, dtype=np.uint8) * 11)
        t.putcol("I16", -np.arange(n, dtype=np.int16))
        t.putcol("U32", np.arange(n, dtype=np.uint32) + 4_000_000_000)
        t.putcol("I64", np.arange(n, dtype=np.int64) << 40)
        f32 = rng.standard_normal(n).astype(np.float32)
        f32.view(np.uint32)[2] = 0x7FA00001  # signalling NaN with a payload
        t.putcol("F32", f32)
        t.putcol("C64", (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64))
        for r in range(n):
            if r % 3:
                shape = [(4,), (2, 3), (1, 2, 2)][r % 3 - 1] if r % 5 else (0,)
                t.putcell("VAR", r, rng.standard_normal(shape))
            if r % 4 != 1:
                t.putcell("VAR2", r, (rng.standard_normal((r % 3 + 1, 2)) * (1 + 1j)))
            t.putcell("TSM", r, rng.standard_normal((r % 2 + 2, 3)).astype(np.float32))
            t.putcell("ZERO", r, np.zeros((0, 2)))
            if r % 2:
                t.putcell("SVAR", r, np.array([f"s{r}"] * (r % 3 + 1)))
        t.putcol("SFIX", np.array([[[f"{r}{a}{b}" for b in "xy"] for a in "abc"] for r in range(n)]))
        t.putcol("BARR", rng.random((n, 5)) < 0.5)
        t.putcol("DIR", rng.standard_normal((n, 2)))
        t.putcol("INC", np.repeat([1.0, 2.0, 3.0], [10, 10, 3]))

        sub = ct.table(str(path / "SUBT"), ct.maketabdesc([
            ct.makescacoldesc("ID", 0), ct.makearrcoldesc("VALS", 0.0, ndim=-1)]), nrow=3, ack=False)
        sub.putcol("ID", np.arange(3, dtype=np.int32))
        sub.putcell("VALS", 1, np.arange(5.0))
        sub.putkeyword("WHAT", np.float32(2.5))
        sub.close()
        # An unreferenced table inside the directory (like an old MS/instrument parmdb).
        extra = ct.table(str(path / "instrument"), ct.maketabdesc([ct.makescacoldesc("V", 0.0)]),
                         nrow=2, ack=False)
        extra.putcol("V", [1.5, -2.5])
        extra.close()

        subref = "Table: " + str((path / "SUBT").resolve())
        t.putkeyword("MS_VERSION", np.float32(2.0))
        t.putkeyword("SUBT", subref)
        t.putkeyword("I32", np.int32(-5))
        t.putkeyword("I16K", np.int16(7))
        t.putkeyword("U32K", np.uint32(9))
        t.putkeyword("I64K", 2**40)
        t.putkeyword("DBL", 0.1)
        t.putkeyword("NAN", float("nan"))
        t.putkeyword("CPLX", np.complex64(1 - 2j))
        t.putkeyword("DCPLX", 3 + 4j)
        t.putkeyword("FLAG", True)
        t.putkeyword("TEXT", "multi\nline: Int 3")
        t.putkeyword("SARR2", np.array([["a", "b", "c"], ["d", "e", "f"]]))
        t.putkeyword("SARR1", np.array(["x"]))
        t.putkeyword("SEMPTY", np.array([], dtype=str))
        t.putkeyword("IARR", np.arange(6, dtype=np.int32).reshape(2, 3))
        t.putkeyword("BARRK", np.array([True, False]))
        t.putkeyword("CARR", np.array([1 + 1j, np.nan], dtype=np.complex64))
        t.putkeyword("NEST", {"level1": {"level2": {"ref": subref, "f": np.float32(0.5)},
                                         "units": ["Jy", "beam"]},
                              "empty": {}, "n": np.int32(3)})
        t.putcolkeyword("VAR", "CUSTOM", {"k": np.int16(1), "table": subref})
    finally:
        t.close()
    return path


def dp3_copy(src: Path, out: Path, dysco: bool = False) -> Path:
    """The MS as DP3 writes it (``DP3 msin=src msout=out steps=[]``, Dysco if asked)."""
    from factor_archive.ms.dp3 import Rewrite, dp3_available, rewrite_with_dp3

    if not dp3_available():
        pytest.skip("DP3 (the dp3 package) is not installed")
    rewrite_with_dp3([Rewrite(src, out, dysco=dysco)])
    return out


def source_model(i: int) -> dict:
    """A component list as CASA's ComponentList::toRecord writes one (a point source), with a
    field of every type python-casacore can write."""
    return {
        "nelements": np.int32(1),
        "component0": {
            "shape": {"type": "Point",
                      "direction": {"type": "direction", "refer": "J2000",
                                    "m0": {"unit": "rad", "value": 2.1 + 0.01 * i},
                                    "m1": {"unit": "rad", "value": 0.95 - 0.002 * i}}},
            "flux": {"unit": "Jy", "value": np.array([1.5 + i, 0, 0, 0], dtype=np.complex128),
                     "polarisation": "Stokes", "error": np.zeros(4, np.complex64)},
            "spectrum": {"type": "Spectral Index", "index": np.array([-0.7, 0, 0, 0]),
                         "frequency": {"type": "frequency", "refer": "LSRK",
                                       "m0": {"unit": "Hz", "value": 1.2e8}}},
            "label": f"src{i}", "freqRef": np.float32(1.2e8), "flag": i % 2 == 0,
            "id": np.int16(i), "nchan": np.uint32(4), "big": 2**40,
            "weights": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.arange(3, dtype=np.int32),
            "names": np.array([["a", "b"], ["c", "d"]]), "mask": np.array([True, False, True]),
        },
    }


def casa_like_ms(path: Path, template: Path) -> Path:
    """The template (a DP3-written MS) laid out as CASA writes MSs and DP3 does not: DATA, FLAG
    and WEIGHT_SPECTRUM in TiledShapeStMan hypercolumns (so the description has private
    keywords), two spectral windows (the template's channels, and twice as many) taking turns by
    time slot (two cell shapes, two hypercubes each), and a SOURCE subtable whose SOURCE_MODEL
    cells are records (one never written)."""
    big = ("DATA", "FLAG", "WEIGHT_SPECTRUM")
    with ct.table(str(template), ack=False) as t:
        desc = t.getdesc()
        values = {c: t.getcol(c) for c in t.colnames() if c not in big + ("FLAG_CATEGORY",)}
        cells = {c: t.getcol(c) for c in big}
        keywords = t.getkeywords()
        colkeywords = {c: t.getcolkeywords(c) for c in t.colnames()}
        nrows = t.nrows()
    hyper, dminfo = {}, {}
    for i, c in enumerate(big):
        name = "Tiled" + c.title().replace("_", "")
        desc[c] = {**desc[c], "ndim": 2, "option": 0, "dataManagerType": "TiledShapeStMan",
                   "dataManagerGroup": name, "keywords": {}}
        desc[c].pop("shape", None)
        hyper[name] = {"HCndim": 3, "HCdatanames": [c]}
        dminfo[f"*{i + 1}"] = {"TYPE": "TiledShapeStMan", "NAME": name, "COLUMNS": [c],
                               "SPEC": {"DEFAULTTILESHAPE": np.array([4, 8, 64], np.int32)}}
    for c, d in desc.items():
        if isinstance(d, dict) and "valueType" in d and c not in big:
            desc[c] = {**d, "dataManagerType": "StandardStMan", "dataManagerGroup": "StandardStMan",
                       "keywords": {}}
    desc["_define_hypercolumn_"] = hyper
    desc["_keywords_"] = {}
    out = ct.table(str(path), desc, nrow=nrows, dminfo=dminfo, ack=False)
    try:
        times = np.unique(values["TIME"])
        spw = (np.searchsorted(times, values["TIME"]) % 2).astype(np.int32)
        for c, v in values.items():
            out.putcol(c, v)
        out.putcol("DATA_DESC_ID", spw)
        for c, v in cells.items():
            for r in range(nrows):
                out.putcell(c, r, v[r] if spw[r] == 0 else np.concatenate([v[r], v[r][::-1]]))
        for c, kws in colkeywords.items():
            for k, v in kws.items():
                out.putcolkeyword(c, k, v)
        _two_spectral_windows(path, cells["DATA"].shape[1])
        _source_table(path)
        for name, v in {**keywords, "SOURCE": "Table: SOURCE"}.items():
            if isinstance(v, str) and v.startswith("Table: "):
                sub = Path(v[7:]).name
                if not (path / sub).exists():
                    shutil.copytree(template / sub, path / sub)
                out.putkeyword(name, "Table: " + str((path / sub).resolve()))
            else:
                out.putkeyword(name, v)
    finally:
        out.close()
    return path


def _two_spectral_windows(ms: Path, nchan: int) -> None:
    spw = ct.default_ms_subtable("SPECTRAL_WINDOW", str(ms / "SPECTRAL_WINDOW"))
    spw.addrows(2)
    for r, width in enumerate((nchan, 2 * nchan)):
        freqs = 120e6 + r * 1e6 + np.arange(width) * 195312.5
        spw.putcell("CHAN_FREQ", r, freqs)
        for c in ("CHAN_WIDTH", "EFFECTIVE_BW", "RESOLUTION"):
            spw.putcell(c, r, np.full(width, 195312.5))
        spw.putcell("NUM_CHAN", r, width)
        spw.putcell("REF_FREQUENCY", r, freqs[0])
        spw.putcell("TOTAL_BANDWIDTH", r, width * 195312.5)
        spw.putcell("NAME", r, f"SB{r}")
    spw.close()
    dd = ct.default_ms_subtable("DATA_DESCRIPTION", str(ms / "DATA_DESCRIPTION"))
    dd.addrows(2)
    dd.putcol("SPECTRAL_WINDOW_ID", np.arange(2, dtype=np.int32))
    dd.putcol("POLARIZATION_ID", np.zeros(2, np.int32))
    dd.close()


def _source_table(ms: Path) -> None:
    model = ct.complete_ms_desc("SOURCE")["SOURCE_MODEL"]
    src = ct.default_ms_subtable("SOURCE", str(ms / "SOURCE"), tabdesc={"SOURCE_MODEL": model})
    src.addrows(4)
    src.putcol("SOURCE_ID", np.arange(4, dtype=np.int32))
    src.putcol("NAME", [f"src{i}" for i in range(4)])
    src.putcol("DIRECTION", np.array([[2.1 + 0.01 * i, 0.95] for i in range(4)]))
    for i in (0, 1, 3):  # row 2 is never written
        src.putcell("SOURCE_MODEL", i, source_model(i))
    src.close()


# --------------------------------------------------------------------------- comparison


def _show(path: Path) -> str:
    """casacore's own listing of description, storage and typed keywords, paths removed."""
    with common._table(str(path), ack=False) as t:
        text = ct.taql("show table $1 tabkey colkey", tables=[t])[0]
    text = text.replace(str(Path(path).resolve()), "<T>").replace(str(path), "<T>")
    return "\n".join(text.split("\n")[3:])  # drop the title lines with the name


def _norm_kw(v, base: str):
    if isinstance(v, dict):
        return {k: _norm_kw(x, base) for k, x in v.items()}
    if isinstance(v, str):
        return v.replace(base, "<T>")
    if isinstance(v, np.ndarray):
        return (v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, float):
        return np.float64(v).tobytes()
    if isinstance(v, complex):
        return np.complex128(v).tobytes()
    if isinstance(v, list):
        return [_norm_kw(x, base) for x in v]
    return v


def _cell_bytes(v):
    if isinstance(v, np.ndarray):
        return ("a", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, dict):
        return ("s", tuple(v["shape"]), tuple(v["array"]))
    if isinstance(v, list):
        return ("l", tuple(v))
    if isinstance(v, float):
        return ("f", np.float64(v).tobytes())
    if isinstance(v, complex):
        return ("c", np.complex128(v).tobytes())
    return ("v", type(v).__name__, v)


def dm_layout(dminfo: dict) -> list:
    """Every data manager with its whole specification (bucket sizes, tile shapes, hypercubes
    with their cell, cube and tile shapes, row index size), without the sequence numbers a new
    table numbers its data managers (and their files) with."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items() if k != "SEQNR"}
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return sorted((plain(dm) for dm in dminfo.values()), key=lambda dm: dm["NAME"])


def stored_records(table: Path) -> dict:
    """The bytes casacore stores for every cell of every record column (None: never written)."""
    out = {}
    with common._table(str(table), ack=False) as t:
        names = [c for c in t.colnames() if t.coldatatype(c) == "record"]
        if names and t.nrows():
            cells = casacore_read._StoredRecords(t, Path(table), names)
            try:
                out = {(c, r): cells.cell(c, r) for c in names for r in range(t.nrows())}
            finally:
                cells.close()
    return out


def assert_tables_equal(a: Path, b: Path) -> None:
    """Everything casacore tells about two tables is the same, bit for bit: description (private
    keywords included), typed keywords, info, endianness, data-manager layout, and for every
    cell its definedness, shape and value (record cells: the bytes casacore stores); the same
    for every subtable."""
    ta, tb = common._table(str(a), ack=False), common._table(str(b), ack=False)
    try:
        assert tb.colnames() == ta.colnames()
        assert tb.nrows() == ta.nrows()
        assert tb.info() == ta.info()
        assert tb.endianformat() == ta.endianformat()
        base_a, base_b = str(Path(a).resolve()), str(Path(b).resolve())
        assert _norm_kw(tb.getdesc(), base_b) == _norm_kw(ta.getdesc(), base_a)
        assert _norm_kw(tb.getkeywords(), base_b) == _norm_kw(ta.getkeywords(), base_a)
        assert dm_layout(tb.getdminfo()) == dm_layout(ta.getdminfo())
        for col in ta.colnames():
            assert _norm_kw(tb.getcolkeywords(col), base_b) == _norm_kw(ta.getcolkeywords(col), base_a)
            assert tb.coldatatype(col) == ta.coldatatype(col)
            for r in range(ta.nrows()):
                d = ta.iscelldefined(col, r)
                assert tb.iscelldefined(col, r) == d, (col, r)
                if d and ta.coldatatype(col) == "record":
                    assert _norm_kw(tb.getcell(col, r), base_b) == _norm_kw(ta.getcell(col, r), base_a), (col, r)
                elif d:
                    assert _cell_bytes(tb.getcell(col, r)) == _cell_bytes(ta.getcell(col, r)), (col, r)
        subs_a = sorted(p.name for p in Path(a).iterdir() if p.is_dir())
        assert sorted(p.name for p in Path(b).iterdir() if p.is_dir()) == subs_a
    finally:
        ta.close()
        tb.close()
    assert _show(b) == _show(a)
    assert stored_records(b) == stored_records(a)
    for name in subs_a:
        assert_tables_equal(Path(a) / name, Path(b) / name)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ms(tmp_path_factory) -> Path:
    return _write_ms(tmp_path_factory.mktemp("ms") / "band.ms")


@pytest.fixture(scope="module")
def tiled_ms(tmp_path_factory, ms) -> Path:
    return _tiled_copy(ms, tmp_path_factory.mktemp("tiled") / "tiled.ms", nchan=8)


@pytest.fixture(scope="module")
def custom(tmp_path_factory) -> Path:
    return _custom_table(tmp_path_factory.mktemp("custom") / "custom.tab", endian="big")


@pytest.fixture(scope="module")
def dp3_ms(tmp_path_factory, ms) -> Path:
    return dp3_copy(ms, tmp_path_factory.mktemp("dp3") / "dp3.ms")


@pytest.fixture(scope="module")
def dysco_ms(tmp_path_factory, ms) -> Path:
    return dp3_copy(ms, tmp_path_factory.mktemp("dysco") / "dysco.ms", dysco=True)


@pytest.fixture(scope="module")
def casa_ms(tmp_path_factory, dp3_ms) -> Path:
    return casa_like_ms(tmp_path_factory.mktemp("casa") / "casa.ms", dp3_ms)


def _local(tmp_path: Path, name="store.zarr"):
    store = zarr.storage.LocalStore(str(tmp_path / name))
    return store, zarr.open_group(store, mode="w")


def _roundtrip(src: Path, tmp_path: Path, kind: str, **kw) -> tuple[dict, Path]:
    if kind == "zip":
        store = zarr.storage.ZipStore(str(tmp_path / "a.zip"), mode="w")
    else:
        store = zarr.storage.LocalStore(str(tmp_path / "a.zarr"))
    root = zarr.open_group(store, mode="w")
    info = encode_table(src, root.create_group("tables").create_group("T"), **kw)
    store.close()
    if kind == "zip":
        store = zarr.storage.ZipStore(str(tmp_path / "a.zip"), mode="r")
    else:
        store = zarr.storage.LocalStore(str(tmp_path / "a.zarr"), read_only=True)
    out = tmp_path / "restored" / src.name
    out.parent.mkdir()
    settings = kw.get("settings", PipelineSettings())
    decode_table(zarr.open_group(store, mode="r", path="tables/T"), out, settings=settings)
    store.close()
    return info, out


# --------------------------------------------------------------------------- stories


@pytest.mark.parametrize("kind", ["local", "zip"])
def test_measurement_set_comes_back_bit_for_bit(ms, tmp_path, kind):
    info, out = _roundtrip(ms, tmp_path, kind)
    assert_tables_equal(ms, out)
    assert info["rows"] == 12 * 10 and "DATA" in info["columns"]
    assert info["raw_fallback"] is False
    assert set(info["subtables"]) >= {"ANTENNA", "SPECTRAL_WINDOW", "FEED"}
    assert info["codecs"]["DATA"].startswith("blosc")
    assert info["codecs"]["FLAG"] in ("blosc-bitshuffle-zstd", "packbits-zstd")
    assert table_content_sha256(out) == table_content_sha256(ms) == info["content_sha256"]
    assert not list(out.parent.glob(".*partial*"))


@pytest.mark.parametrize("kind", ["local", "zip"])
def test_tiled_storage_managers_and_tile_shapes_are_recreated(tiled_ms, tmp_path, kind):
    info, out = _roundtrip(tiled_ms, tmp_path, kind)
    assert_tables_equal(tiled_ms, out)
    with ct.table(str(out), ack=False) as t:
        dm = {d["NAME"]: d for d in t.getdminfo().values()}
    assert dm["TiledDATA"]["TYPE"] == "TiledColumnStMan"
    assert list(dm["TiledDATA"]["SPEC"]["DEFAULTTILESHAPE"]) == [4, 8, 16]
    assert list(dm["TiledFlag"]["SPEC"]["HYPERCUBES"]["*1"]["TileShape"]) == [4, 8, 32]
    assert dm["IncInterval"]["TYPE"] == "IncrementalStMan"
    assert table_content_sha256(out) == info["content_sha256"] == table_content_sha256(tiled_ms)


@pytest.mark.parametrize("kind", ["local", "zip"])
def test_odd_table_with_ragged_columns_and_typed_keywords(custom, tmp_path, kind):
    info, out = _roundtrip(custom, tmp_path, kind)
    assert_tables_equal(custom, out)
    assert info["column_info"]["VAR"]["layout"] == "shaped"
    assert info["column_info"]["VAR"]["shapes"] == [[4], [2, 3], [0]]
    assert info["column_info"]["EMPTY"]["layout"] == "shaped"  # every cell undefined
    assert info["column_info"]["SFIX"]["layout"] == "fixed"
    assert info["column_info"]["ZERO"]["layout"] == "fixed"
    assert info["column_info"]["TSM"]["layout"] == "shaped"
    assert set(info["subtables"]) == {"SUBT", "instrument"}
    with ct.table(str(out), ack=False) as t:
        assert t.endianformat() == "big"
        kw = t.getkeywords()
        assert kw["SUBT"] == "Table: " + str((out / "SUBT").resolve())
        assert kw["NEST"]["level1"]["level2"]["ref"] == kw["SUBT"]
        assert np.isnan(kw["NAN"])
        assert t.getcolkeyword("TIME", "MEASINFO") == {"type": "epoch", "Ref": "UTC"}
        assert list(t.getcolkeyword("DIR", "QuantumUnits")) == ["rad", "rad"]
        assert ct.table(kw["SUBT"], ack=False).getcol("ID").tolist() == [0, 1, 2]
    assert table_content_sha256(out) == info["content_sha256"]


def test_group_layout_is_self_describing(custom, tmp_path):
    store, root = _local(tmp_path)
    g = root.create_group("T")
    encode_table(custom, g)
    st = g.attrs["casacore_table"]
    assert st["format"] == "factor-archive/casacore-table" and st["version"] == 2
    assert st["nrows"] == 23 and st["endian"] == "big"
    cols = {c["name"]: c for c in st["columns"]}
    assert cols["VAR"]["layout"] == "shaped" and cols["TIME"]["layout"] == "scalar"
    assert cols["TIME"]["desc"]["valueType"] == "double"
    kw = dict(st["keywords"]["fields"])
    assert kw["MS_VERSION"] == {"type": "Float", "value": 2.0}
    assert kw["SUBT"] == {"type": "Table", "value": "SUBT"}
    assert kw["I16K"]["type"] == "Short" and kw["U32K"]["type"] == "uInt"
    assert {s["name"]: s["referenced"] for s in st["subtables"]} == {"SUBT": True, "instrument": False}
    # VAR has cells of four shapes and undefined cells: a group per shape, cells + their rows
    sg = g["shaped/VAR"]
    assert sg.attrs["shapes"] == [[4], [2, 3], [0]]
    rows = {name: sg[f"{name}/row"][:] for name in ("4", "2x3", "0")}
    assert sorted(np.concatenate(list(rows.values())).tolist()) == [r for r in range(23) if r % 3]
    with ct.table(str(custom), ack=False) as t:
        for r in rows["2x3"]:
            want = t.getcell("VAR", int(r))
            got = sg["2x3/VAR"][list(rows["2x3"]).index(r)]
            assert got.shape == (2, 3) and got.tobytes() == want.tobytes()
    assert list(g["shaped/EMPTY"].keys()) == [] and g["shaped/EMPTY"].attrs["shapes"] == []
    assert g["subtables/SUBT"].attrs["casacore_table"]["nrows"] == 3
    assert g["NAME"].dtype.kind in "TOU"  # zarr string
    content = g.attrs["casacore_content"]
    assert content["content_sha256"] == table_content_sha256(custom)
    assert set(content["subtables"]) == {"SUBT", "instrument"}
    assert json.loads(json.dumps(dict(g.attrs)))  # plain JSON


def test_main_table_opens_in_xarray_with_named_dims(ms, tmp_path):
    xr = pytest.importorskip("xarray")
    store, root = _local(tmp_path)
    encode_table(ms, root.create_group("ms"))
    ds = xr.open_zarr(store, group="ms", consolidated=False, chunks=None)
    assert ds["DATA"].dims == ("row", "chan", "corr")
    assert ds["DATA"].dtype == np.complex64
    assert ds["FLAG"].dims == ("row", "chan", "corr") and ds["FLAG"].dtype == bool
    assert ds["WEIGHT_SPECTRUM"].dims == ("row", "chan", "corr")
    assert ds["UVW"].dims == ("row", "uvw")
    assert ds["WEIGHT"].dims == ("row", "corr")
    assert ds["TIME"].dims == ("row",) and ds["ANTENNA1"].dims == ("row",)
    assert ds.sizes["row"] == 120 and ds.sizes["chan"] == 8 and ds.sizes["corr"] == 4
    with ct.table(str(ms), ack=False) as t:
        assert ds["DATA"].values.tobytes() == t.getcol("DATA").tobytes()
        assert ds["TIME"].values.tobytes() == t.getcol("TIME").tobytes()


def test_big_columns_are_sharded_into_few_objects(ms, tmp_path):
    store, root = _local(tmp_path)
    g = root.create_group("ms")
    encode_table(ms, g, row_block=40)
    data = g["DATA"]
    assert data.shards == (40, 8, 4) and data.chunks[0] <= 40
    shard_files = list((tmp_path / "store.zarr" / "ms" / "DATA" / "c").rglob("*"))
    assert len([p for p in shard_files if p.is_file()]) == 3  # 120 rows / 40
    assert data.attrs["codec"] == g.attrs["casacore_table"]["columns"][
        [c["name"] for c in g.attrs["casacore_table"]["columns"]].index("DATA")]["codec"]


def test_tiny_row_blocks_give_identical_content(custom, ms, tmp_path):
    for src in (custom, ms):
        _, a = _roundtrip(src, tmp_path / f"{src.name}-default", "local")
        info, b = _roundtrip(src, tmp_path / f"{src.name}-tiny", "local", row_block=3)
        assert table_content_sha256(a) == table_content_sha256(b) == info["content_sha256"]
        assert_tables_equal(a, b)


def _long_table(path: Path, nrows: int) -> Path:
    cds = [ct.makescacoldesc("TIME", 0.0),
           ct.makearrcoldesc("DATA", 0j, valuetype="complex", shape=[16, 4], options=4),
           ct.makearrcoldesc("FLAG", False, shape=[16, 4], options=4),
           ct.makearrcoldesc("VAR", 0.0, ndim=1)]
    rng = np.random.default_rng(1)
    with ct.table(str(path), ct.maketabdesc(cds), nrow=nrows, ack=False) as t:
        t.putcol("TIME", np.arange(nrows) * 10.0)
        t.putcol("DATA", rng.standard_normal((nrows, 16, 4)).astype(np.complex64))
        t.putcol("FLAG", rng.random((nrows, 16, 4)) < 0.1)
        for r in range(0, nrows, 2):
            t.putcell("VAR", r, np.arange(r % 7 + 60.0))
    return path


def test_peak_memory_does_not_grow_with_table_size(tmp_path, monkeypatch):
    small_shards = PipelineSettings(shard_bytes=64 << 10, chunk_bytes=16 << 10)
    peaks = []
    for nrows in (2000, 8000):
        src = _long_table(tmp_path / f"t{nrows}.tab", nrows)
        store, root = _local(tmp_path, f"t{nrows}.zarr")
        g = root.create_group("T")
        tracemalloc.start()
        encode_table(src, g, row_block=500, settings=small_shards)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        tracemalloc.start()
        decode_table(g, tmp_path / f"r{nrows}.tab", settings=small_shards)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    enc_small, dec_small, enc_big, dec_big = peaks
    small_bytes = 2000 * 16 * 4 * 9  # DATA + FLAG: 1.15 MB, then 4.6 MB
    assert enc_big < enc_small + small_bytes / 4, peaks
    assert dec_big < dec_small + small_bytes / 4, peaks
    assert max(peaks) < 2 * small_bytes, peaks


def test_progress_counts_the_column_bytes(ms, tmp_path):
    seen = []
    store, root = _local(tmp_path)
    info = encode_table(ms, root.create_group("T"), progress=seen.append)
    total = sum(c["raw_bytes"] for c in info["column_info"].values())
    total += sum(c["raw_bytes"] for s in info["subtables"].values() for c in s["column_info"].values())
    assert sum(seen) == total and len(seen) > 10
    back = []
    decode_table(root["T"], tmp_path / "out.ms", progress=back.append)
    assert sum(back) == total


def test_content_checksum_is_about_content_not_files(ms, custom, tmp_path):
    copy = tmp_path / "copy.ms"
    shutil.copytree(ms, copy)
    assert table_content_sha256(copy) == table_content_sha256(ms)
    tiled = _tiled_copy(ms, tmp_path / "tiled.ms", nchan=8)  # other storage, same content
    assert table_content_sha256(tiled) == table_content_sha256(ms)
    with ct.table(str(copy), readonly=False, ack=False) as t:
        d = t.getcell("DATA", 5)
        d.view(np.uint32)[0, 0] ^= 1  # one bit
        t.putcell("DATA", 5, d)
    assert table_content_sha256(copy) != table_content_sha256(ms)
    c2 = tmp_path / "custom2.tab"
    shutil.copytree(custom, c2)
    with ct.table(str(c2), readonly=False, ack=False) as t:
        t.removekeyword("MS_VERSION")
        t.putkeyword("MS_VERSION", 2.0)  # same value, Double instead of Float
    assert table_content_sha256(c2) != table_content_sha256(custom)


# --------------------------------------------------------------------------- other producers' tables


def test_dp3_written_ms_is_stored_as_columns_and_comes_back_exactly(dp3_ms, tmp_path):
    info, out = _roundtrip(dp3_ms, tmp_path, "local")
    assert_tables_equal(dp3_ms, out)  # TiledColumnStMan tile shapes, SSM buckets included
    assert info["column_info"]["DATA"]["layout"] == "fixed"
    assert {c["layout"] for s in info["subtables"].values() for c in s["column_info"].values()} <= {
        "scalar", "fixed", "shaped", "ragged"}
    assert table_content_sha256(out) == table_content_sha256(dp3_ms) == info["content_sha256"]


@pytest.fixture(scope="module")
def dp3_ms_1440_rows(tmp_path_factory) -> Path:
    """A DP3-written MS whose StandardStMan file holds 32 buckets (1440 rows), not 4."""
    d = tmp_path_factory.mktemp("dp3rows")
    return dp3_copy(_write_ms(d / "band.ms", ntimes=40, nchan=4, nant=8), d / "dp3.ms")


def _bytes_read(fn) -> int:
    """What ``fn()`` read through read calls of this process (/proc/self/io rchar: page cache
    included, which is where casacore's re-reads of buckets go)."""
    def rchar() -> int:
        return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                        if line.startswith("rchar")).split()[1])

    before = rchar()
    fn()
    return rchar() - before


def test_archiving_reads_a_standardstman_file_about_once(dp3_ms_1440_rows, monkeypatch):
    """With the 2 buckets DP3's StandardStMan keeps, reading its columns one after another read
    its file once per column; with a cache for every bucket, about once."""
    from factor_archive.ms.casacore_table import bucket_cache

    ssm_file = (dp3_ms_1440_rows / "table.f1").stat().st_size

    def encode() -> None:
        encode_table(dp3_ms_1440_rows, zarr.open_group(zarr.storage.MemoryStore(), mode="w").create_group("T"))

    encode()  # modules imported, page cache warm
    widened = _bytes_read(encode)
    monkeypatch.setattr(bucket_cache, "widen_for_reading", lambda *a: None)
    narrow = _bytes_read(encode)
    assert narrow - widened > 10 * ssm_file, (narrow, widened, ssm_file)


def test_restoring_reads_no_standardstman_bucket_back(dp3_ms_1440_rows, tmp_path, monkeypatch):
    """Made with the stored cache of 2 buckets, the table's StandardStMan file was written and
    read back while its rows were made and again for every column; made with a cache for every
    bucket, its file is not read back."""
    from factor_archive.ms.casacore_table import bucket_cache

    _, root = _local(tmp_path)
    encode_table(dp3_ms_1440_rows, root.create_group("T"))
    decode_table(root["T"], tmp_path / "warm.ms")
    raised = _bytes_read(lambda: decode_table(root["T"], tmp_path / "raised.ms"))
    monkeypatch.setattr(bucket_cache, "CACHE_BYTES", 0)
    stored = _bytes_read(lambda: decode_table(root["T"], tmp_path / "stored.ms"))
    assert stored - raised > 10 * (dp3_ms_1440_rows / "table.f1").stat().st_size, (stored, raised)


def test_a_standardstman_caches_every_bucket_while_restored_and_keeps_its_stored_cache_size(
        dp3_ms, tmp_path, monkeypatch):
    """Restore makes a table whose StandardStMan holds more buckets than it caches with a cache
    for all of them (so casacore writes no bucket twice and reads none back), then writes back
    the stored PERSCACHESIZE: the table reports the stored size and its files are byte for byte
    those of a restore with the stored cache."""
    from factor_archive.ms.casacore_table import bucket_cache

    _, root = _local(tmp_path)
    encode_table(dp3_ms, root.create_group("T"))
    raised: list[dict] = []
    restore = bucket_cache.restore_cache_sizes

    def noted(table, kept, files, where):
        raised.append(dict(kept))
        restore(table, kept, files, where)

    monkeypatch.setattr(bucket_cache, "restore_cache_sizes", noted)
    decode_table(root["T"], tmp_path / "raised.ms")
    assert [kept for kept, _size in raised[-1].values()] == [2]   # the main table's (DP3 keeps 2)
    monkeypatch.setattr(bucket_cache, "CACHE_BYTES", 0)  # nothing raised: the stored cache
    decode_table(root["T"], tmp_path / "stored.ms")
    assert raised[-1] == {}
    def standard_specs(path):
        with ct.table(str(path), ack=False) as t:
            return sorted((dm["NAME"], sorted(dm["SPEC"].items())) for dm in t.getdminfo().values()
                          if dm["TYPE"] == "StandardStMan")

    assert standard_specs(tmp_path / "raised.ms") == standard_specs(dp3_ms) == standard_specs(tmp_path / "stored.ms")
    assert dict(standard_specs(dp3_ms)[0][1])["PERSCACHESIZE"] == 2
    files = sorted(p.relative_to(tmp_path / "raised.ms") for p in (tmp_path / "raised.ms").rglob("table.*")
                   if p.name not in ("table.lock", "table.f0i"))   # .f0i: casacore's unused bytes
    assert files
    for f in files:
        assert (tmp_path / "raised.ms" / f).read_bytes() == (tmp_path / "stored.ms" / f).read_bytes(), f


def test_a_big_endian_standardstman_gets_its_own_cache_size_back(tmp_path, monkeypatch):
    """The cache size is written back in the table's byte order (and any stored value, here 3)."""
    from factor_archive.ms.casacore_table import bucket_cache

    src = tmp_path / "be.tab"
    cds = [ct.makescacoldesc("I", 0), ct.makescacoldesc("D", 0.0)]
    dm = {"*1": {"TYPE": "StandardStMan", "NAME": "SSM", "COLUMNS": ["I", "D"],
                 "SPEC": {"BUCKETSIZE": 1024, "PERSCACHESIZE": 3}}}
    with ct.table(str(src), ct.maketabdesc(cds), nrow=20000, dminfo=dm, ack=False, endian="big") as t:
        t.putcol("I", np.arange(20000, dtype=np.int32))
        t.putcol("D", np.arange(20000) * 0.5)
    _, root = _local(tmp_path)
    encode_table(src, root.create_group("T"))
    raised: list[dict] = []
    restore = bucket_cache.restore_cache_sizes
    monkeypatch.setattr(bucket_cache, "restore_cache_sizes",
                        lambda table, kept, files, where: (raised.append(kept), restore(table, kept, files, where)))
    decode_table(root["T"], tmp_path / "out.tab")
    assert [{n: kept for n, (kept, _size) in r.items()} for r in raised] == [{"SSM": 3}]
    with ct.table(str(tmp_path / "out.tab"), ack=False) as t:
        assert t.endianformat() == "big" and t.getdminfo()["*1"]["SPEC"]["PERSCACHESIZE"] == 3
    assert (tmp_path / "out.tab" / "table.f0").read_bytes() == (src / "table.f0").read_bytes()


def test_a_standardstman_file_not_as_expected_is_an_error_not_a_patch(tmp_path):
    from factor_archive.ms.casacore_table import bucket_cache

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "table.f0").write_bytes(b"\xbe\xbe\xbe\xbe" + bytes(60))
    with pytest.raises(CorruptTableData, match="t: table.f0 is not a StandardStMan file"):
        bucket_cache.restore_cache_sizes(tmp_path / "t", {"SSM": (2, 100)}, {"SSM": 0}, "t")
    assert (tmp_path / "t" / "table.f0").read_bytes() == b"\xbe\xbe\xbe\xbe" + bytes(60)
    # a real StandardStMan file whose cache size is not the one raised is not touched either
    with ct.table(str(tmp_path / "real"), ct.maketabdesc([ct.makescacoldesc("I", 0)]), nrow=3, ack=False):
        pass
    before = (tmp_path / "real" / "table.f0").read_bytes()
    with pytest.raises(CorruptTableData, match="real: table.f0 is not a StandardStMan file as expected"):
        bucket_cache.restore_cache_sizes(tmp_path / "real", {"StandardStMan": (2, 999)}, {"StandardStMan": 0}, "real")
    assert (tmp_path / "real" / "table.f0").read_bytes() == before


@pytest.mark.parametrize("row_block", [None, 7])
def test_a_table_in_a_local_directory_is_stored_as_zarr_would_store_it(dp3_ms, tmp_path, monkeypatch, row_block):
    """A local directory's shards (string columns' too) and zarr.json documents are written by
    the codec itself, not through zarr's event loop; other stores' through zarr: both hold the
    same objects, and no temporary file is left behind. With chunks of 7 rows, the last chunk of
    most columns is padded (with "" for strings) as zarr pads it."""
    local = zarr.storage.LocalStore(str(tmp_path / "a.zarr"))
    memory = zarr.storage.MemoryStore()
    groups = [zarr.open_group(store, mode="w").create_group("T") for store in (local, memory)]
    through_zarr: list[str] = []
    zarr_set = zarr.storage.LocalStore.set

    async def recorded_set(self, key, value):
        through_zarr.append(key)
        return await zarr_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", recorded_set)
    for group in groups:
        encode_table(dp3_ms, group, row_block=row_block)
    on_disk = {str(p.relative_to(tmp_path / "a.zarr")): p.read_bytes()
               for p in (tmp_path / "a.zarr").rglob("*") if p.is_file()}
    in_memory = {k: v.to_bytes() for k, v in memory._store_dict.items()}
    assert not [k for k in on_disk if k.endswith(".partial")]
    assert on_disk == in_memory and len(on_disk) > 100
    assert through_zarr == ["T/zarr.json"]  # the table's attributes, last
    strings = [k for k in on_disk if k.endswith("/zarr.json") and json.loads(on_disk[k]).get("data_type") == "string"]
    assert strings and any(k.rsplit("/", 1)[0] + "/c/0" in on_disk for k in strings)


def test_dysco_written_ms_is_raw_and_says_why(dysco_ms, tmp_path):
    with ct.table(str(dysco_ms), ack=False) as t:  # python-casacore reads Dysco ...
        assert t.getcol("DATA").shape[0] == t.nrows()
    store, root = _local(tmp_path)
    g = root.create_group("T")
    with pytest.raises(RawTableRequired) as e:  # ... but writing the values back is not Dysco's bytes
        encode_table(dysco_ms, g)
    assert "DyscoStMan" in e.value.reason and "lossy" in e.value.reason
    assert list(g.keys()) == [] and "casacore_table" not in g.attrs


def test_archive_manifest_shows_columns_for_all_but_dysco(dp3_ms, dysco_ms, casa_ms, tmp_path):
    """Through the zarr container: the DP3, CASA-like and Dysco MSs as table members."""
    from factor_archive.containers.zarr import ZarrReader, ZarrWriter
    from factor_archive.manifest import Manifest, Member

    writer = ZarrWriter(str(tmp_path / "run.zarr"), clobber=False)
    members = []
    for src in (dp3_ms, casa_ms, dysco_ms):
        m = Member(path=f"chunks/{src.name}", source=str(src), category="chunks", kind="table",
                   size=0, mode=0, mtime=0.0, sha256="", restore_path=f"chunks/{src.name}")
        members.append(writer.write(m, src, lambda n: None))
    writer.close(Manifest(container="", run={}, options={}, members=members))
    import jsonschema

    schema = json.loads((Path(__file__).parents[1] / "formats" / "manifest.schema.json").read_text())
    for m in json.loads(Manifest(container="zarr", run={}, options={}, members=members).to_json())["members"]:
        jsonschema.validate(m, {"$ref": "#/$defs/member", "$defs": schema["$defs"]})
    stored = {m.path: m.extra["zarr"] for m in members}
    assert stored["chunks/dp3.ms"]["stored"] == stored["chunks/casa.ms"]["stored"] == "columns"
    assert stored["chunks/dysco.ms"]["stored"] == "raw-files"
    assert "DyscoStMan" in stored["chunks/dysco.ms"]["raw_reason"]
    assert stored["chunks/casa.ms"]["subtables"]["SOURCE"]["column_info"]["SOURCE_MODEL"]["layout"] == "record"
    reader = ZarrReader(str(tmp_path / "run.zarr"))
    try:
        assert reader.verify(lambda n: None) == []
        out = tmp_path / "out"
        reader.extract(reader.manifest.members, lambda m: out / m.restore_path, lambda n: None)
    finally:
        reader.close()
    for src in (dp3_ms, casa_ms, dysco_ms):
        assert_tables_equal(src, out / "chunks" / src.name)


def test_casa_like_ms_with_private_keywords_records_and_two_spectral_windows(casa_ms, tmp_path):
    info, out = _roundtrip(casa_ms, tmp_path, "zip")
    # hypercubes (two per column), private keywords, SOURCE_MODEL's stored bytes: all the same
    assert_tables_equal(casa_ms, out)
    cols = info["column_info"]
    for c in ("DATA", "FLAG", "WEIGHT_SPECTRUM"):
        assert cols[c]["layout"] == "shaped" and cols[c]["shapes"] == [[8, 4], [16, 4]]
    assert info["subtables"]["SOURCE"]["column_info"]["SOURCE_MODEL"]["layout"] == "record"
    with ct.table(str(out), ack=False) as t:
        assert set(t.getdesc()["_private_keywords_"]) == {
            "Hypercolumn_TiledData", "Hypercolumn_TiledFlag", "Hypercolumn_TiledWeightSpectrum"}
        cubes = [dm["SPEC"]["HYPERCUBES"] for dm in t.getdminfo().values() if dm["NAME"] == "TiledData"][0]
        assert [list(c["CellShape"]) for c in cubes.values()] == [[4, 8], [4, 16]]
    with ct.table(str(out / "SOURCE"), ack=False) as src:
        model = src.getcell("SOURCE_MODEL", 1)["component0"]
        assert model["flux"]["value"].dtype == np.complex128 and model["weights"].dtype == np.float32
        assert src.getcell("SOURCE_MODEL", 2) == {}


def test_record_cells_are_stored_as_typed_json(casa_ms, tmp_path):
    store, root = _local(tmp_path)
    encode_table(casa_ms, root.create_group("ms"))
    cells = root["ms/subtables/SOURCE/SOURCE_MODEL"][:]
    assert cells[2] == ""  # never written
    fields = dict(json.loads(cells[1])["fields"])
    comp = dict(fields["component0"]["fields"])
    assert fields["nelements"] == {"type": "Int", "value": 1}
    assert comp["freqRef"] == {"type": "Float", "value": 1.2e8}
    assert comp["id"] == {"type": "Short", "value": 1} and comp["nchan"] == {"type": "uInt", "value": 4}
    assert comp["big"] == {"type": "Int64", "value": 2**40} and comp["flag"] == {"type": "Bool", "value": False}
    assert comp["names"]["type"] == "String array" and comp["names"]["shape"] == [2, 2]


def test_each_cell_shape_of_a_column_reads_with_plain_zarr_and_xarray(casa_ms, tmp_path):
    xr = pytest.importorskip("xarray")
    store, root = _local(tmp_path)
    encode_table(casa_ms, root.create_group("ms"))
    with ct.table(str(casa_ms), ack=False) as t:
        spw = t.getcol("DATA_DESC_ID")
        want = {r: t.getcell("DATA", r) for r in range(t.nrows())}
    for name, spw_id, nchan in (("8x4", 0, 8), ("16x4", 1, 16)):
        ds = xr.open_zarr(store, group=f"ms/shaped/DATA/{name}", consolidated=False, chunks=None)
        assert ds["DATA"].dims == ("row", "chan", "corr") and ds.sizes["chan"] == nchan
        rows = ds["row"].values
        assert rows.tolist() == np.flatnonzero(spw == spw_id).tolist()
        for i, r in enumerate(rows):
            assert ds["DATA"].values[i].tobytes() == want[r].tobytes()
        assert root[f"ms/shaped/FLAG/{name}/row"][:].tolist() == rows.tolist()  # plain zarr
    main = xr.open_zarr(store, group="ms", consolidated=False, chunks=None)
    assert "DATA" not in main and main["UVW"].dims == ("row", "uvw")


def test_ushort_columns_come_back(tmp_path):
    p = tmp_path / "u.tab"
    t = common._table(str(p), ct.maketabdesc([
        ct.makescacoldesc("S", 0, valuetype="ushort"),
        ct.makearrcoldesc("F", 0, valuetype="ushort", shape=[3], options=4),
        ct.makearrcoldesc("V", 0, valuetype="ushort", ndim=1)]), nrow=12, ack=False)
    try:
        t.putcol("S", np.arange(12, dtype=np.uint16) * 5000)
        t.putcol("F", np.arange(36, dtype=np.uint16).reshape(12, 3) + 65500)
        for r in range(12):
            if r % 3:
                t.putcell("V", r, np.full(r % 2 + 1, 65535 - r, np.uint16))
    finally:
        t.close()
    info, out = _roundtrip(p, tmp_path, "local")
    assert_tables_equal(p, out)
    assert info["column_info"]["S"]["type"] == "ushort" and info["column_info"]["V"]["layout"] == "shaped"


def _tiled_shape_table(path: Path, order) -> Path:
    cds = [ct.makearrcoldesc("D", 0j, ndim=2, valuetype="complex"), ct.makescacoldesc("I", 0)]
    dminfo = {"*1": {"TYPE": "TiledShapeStMan", "NAME": "TSM", "SPEC": {"DEFAULTTILESHAPE": [4, 8, 16]},
                     "COLUMNS": ["D"]}}
    with ct.table(str(path), ct.maketabdesc(cds), nrow=12, dminfo=dminfo, ack=False) as t:
        for r in order:
            t.putcell("D", r, np.full((4, 8) if r % 3 else (4, 2), r, np.complex64))
    return path


def test_hypercubes_that_row_order_cannot_recreate_mean_raw_files(tmp_path):
    in_order = _tiled_shape_table(tmp_path / "a.tab", range(12))
    info, out = _roundtrip(in_order, tmp_path / "a", "local")
    assert_tables_equal(in_order, out)
    backwards = _tiled_shape_table(tmp_path / "b.tab", range(11, -1, -1))
    store, root = _local(tmp_path)
    with pytest.raises(RawTableRequired, match="writing the rows in order does not recreate"):
        encode_table(backwards, root.create_group("T"))


def test_columns_with_many_shapes_are_ragged(tmp_path):
    p = tmp_path / "many.tab"
    with ct.table(str(p), ct.maketabdesc([ct.makearrcoldesc("L", 0.0, ndim=1)]), nrow=50, ack=False) as t:
        for r in range(50):
            t.putcell("L", r, np.arange(float(r)))
    info, out = _roundtrip(p, tmp_path, "local")
    assert info["column_info"]["L"]["layout"] == "ragged"
    assert_tables_equal(p, out)


def test_columns_named_like_the_layout_get_other_node_names(tmp_path):
    p = tmp_path / "names.tab"
    names = ["ragged", "shaped", "subtables", "row", "zarr.json", "50%", "__x"]
    with ct.table(str(p), ct.maketabdesc([ct.makescacoldesc(n, 0) for n in names]
                                         + [ct.makearrcoldesc("row2", 0.0, ndim=1)]), nrow=8, ack=False) as t:
        for i, n in enumerate(names):
            t.putcol(n, np.arange(8, dtype=np.int32) * i)
        for r in range(8):
            t.putcell("row2", r, np.zeros(r % 2 + 1))
    info, out = _roundtrip(p, tmp_path, "local")
    assert_tables_equal(p, out)
    nodes = {n: c["node"] for n, c in info["column_info"].items()}
    assert nodes["ragged"] == "%72agged" and nodes["zarr.json"] == "%7Aarr.json"
    assert nodes["50%"] == "50%25" and nodes["__x"] == "%5F_x" and nodes["row"] == "row"


def test_subtables_referenced_at_any_depth(tmp_path):
    p = tmp_path / "deep.tab"
    with ct.table(str(p), ct.maketabdesc([ct.makescacoldesc("R", {}, valuetype="record")]), nrow=2,
                  ack=False) as t:
        ct.table(str(p / "SUB"), ct.maketabdesc([ct.makescacoldesc("X", 0)]), nrow=1, ack=False).close()
        with ct.table(str(p / "SUB" / "INNER"), ct.maketabdesc([ct.makescacoldesc("Y", 0.0)]), nrow=3,
                      ack=False) as inner:
            inner.putcol("Y", [1.0, 2.0, 3.0])
        inner_ref = "Table: " + str((p / "SUB" / "INNER").resolve())
        t.putkeyword("DEEP", {"level": {"inner": inner_ref}})
        t.putcolkeyword("R", "INNER", inner_ref)
        t.putcell("R", 0, {"where": inner_ref, "n": np.int16(2)})
    info, out = _roundtrip(p, tmp_path, "local")
    assert_tables_equal(p, out)
    with ct.table(str(out), ack=False) as t:
        ref = t.getkeyword("DEEP")["level"]["inner"]
        assert ref == "Table: " + str((out / "SUB" / "INNER").resolve()) == t.getcell("R", 0)["where"]
        assert ct.table(ref[7:], ack=False).getcol("Y").tolist() == [1.0, 2.0, 3.0]


def test_a_record_python_casacore_cannot_write_back_means_raw(tmp_path):
    from factor_archive.ms.casacore_record import parse_cell, serialize_cell

    rec = {"type": "Record", "fields": [["a", {"type": "Int", "value": 1}]]}
    raw = serialize_cell(rec)
    assert parse_cell(raw) == rec
    # A field comment ("c"), which C++ can give a field and Python cannot: the description grows
    # by one byte, and so do the lengths of the TableRecord and RecordDesc objects.
    desc_at = raw.index(b"RecordDesc") - 8
    w = bytearray(raw)
    comment_at = raw.index(b"\x00\x00\x00\x05", desc_at) + 4  # after the field's type (Int = 5)
    w[comment_at:comment_at + 4] = b"\x00\x00\x00\x01c"
    for at in (4, desc_at):
        n = int.from_bytes(w[at:at + 4], "big") + 1
        w[at:at + 4] = n.to_bytes(4, "big")
    commented = bytes(w)
    assert dict(parse_cell(commented)["fields"])["a"] == {"type": "Int", "value": 1}
    assert serialize_cell(parse_cell(commented)) != commented
    with pytest.raises(RawTableRequired, match="cannot write back"):
        keywords._record_cell(commented, keywords._Refs(tmp_path), "column R row 0")
    uchar = {"type": "Record", "fields": [["u", {"type": "uChar", "value": 7}]]}
    with pytest.raises(RawTableRequired, match="uChar"):
        keywords._record_cell(serialize_cell(uchar), keywords._Refs(tmp_path), "column R row 0")


# --------------------------------------------------------------------------- refusals


def _rename_data_manager(table: Path, old: bytes, new: bytes) -> None:
    assert len(old) == len(new)
    dat = table / "table.dat"
    dat.write_bytes(dat.read_bytes().replace(old, new))


def test_unknown_data_manager_means_raw_files(tiled_ms, tmp_path):
    bad = tmp_path / "bad.ms"
    shutil.copytree(tiled_ms, bad)
    _rename_data_manager(bad, b"IncrementalStMan", b"NoSuchStManXYZAB")  # as if Dysco were missing
    store, root = _local(tmp_path)
    g = root.create_group("T")
    with pytest.raises(RawTableRequired) as e:
        encode_table(bad, g)
    assert "nosuchstmanxyzab" in str(e.value).lower() and e.value.table == str(bad)
    assert list(g.keys()) == [] and "casacore_table" not in g.attrs
    with pytest.raises(RawTableRequired):
        table_content_sha256(bad)


def test_dysco_column_means_raw_files_even_when_readable(ms, tmp_path, monkeypatch):
    real = ct.table.getdminfo

    def dysco(self, columnname=None):
        info = real(self, columnname)
        for dm in info.values():
            if "DATA" in dm["COLUMNS"]:
                dm["TYPE"] = "DyscoStMan"
        return info

    monkeypatch.setattr(ct.table, "getdminfo", dysco)
    store, root = _local(tmp_path)
    g = root.create_group("T")
    with pytest.raises(RawTableRequired, match="DyscoStMan"):
        encode_table(ms, g)
    assert list(g.keys()) == []


def test_column_failing_midway_leaves_no_partial_table(ms, tmp_path, monkeypatch):
    real = casacore_read._read_uniform

    def flaky(tb, col, start, n, *args, **kwargs):
        if col.name == "WEIGHT_SPECTRUM" and start > 0:
            raise common._ReadFailure(f"column {col.name} rows {start}-{start + n - 1}: I/O error")
        return real(tb, col, start, n, *args, **kwargs)

    monkeypatch.setattr(encode, "_read_uniform", flaky)
    store, root = _local(tmp_path)
    g = root.create_group("T")
    with pytest.raises(RawTableRequired, match="WEIGHT_SPECTRUM"):
        encode_table(ms, g, row_block=50)
    assert list(g.keys()) == [] and "casacore_table" not in g.attrs


def test_reference_tables_and_outside_subtables_are_raw(custom, tmp_path):
    ref = tmp_path / "sel.tab"
    with ct.table(str(custom), ack=False) as t:
        t.query("I16 < -3", name=str(ref)).close()
    store, root = _local(tmp_path)
    with pytest.raises(RawTableRequired, match="not a plain table"):
        encode_table(ref, root.create_group("A"))
    outside = tmp_path / "outside.tab"
    ct.table(str(outside), ct.maketabdesc([ct.makescacoldesc("X", 0)]), nrow=1, ack=False).close()
    linked = tmp_path / "linked.tab"
    ct.table(str(linked), ct.maketabdesc([ct.makescacoldesc("X", 0)]), nrow=1, ack=False).close()
    with ct.table(str(linked), readonly=False, ack=False) as t:
        t.putkeyword("OTHER", "Table: " + str(outside))
    with pytest.raises(RawTableRequired, match="outside"):
        encode_table(linked, root.create_group("B"))
    stray = tmp_path / "stray.tab"
    shutil.copytree(outside, stray)
    (stray / "notes.txt").write_text("hello")
    with pytest.raises(RawTableRequired, match="notes.txt"):
        encode_table(stray, root.create_group("C"))


def test_uchar_keyword_cannot_be_written_back_so_raw(tmp_path):
    p = tmp_path / "u.tab"
    ct.table(str(p), ct.maketabdesc([ct.makescacoldesc("X", 0)]), nrow=1, ack=False).close()
    ct.taql(f"ALTER TABLE {p} SET KEYWORD K=3 AS UCHAR")
    store, root = _local(tmp_path)
    with pytest.raises(RawTableRequired, match="uChar"):
        encode_table(p, root.create_group("T"))


# --------------------------------------------------------------------------- damage


def _encoded(ms, tmp_path, **kw):
    store, root = _local(tmp_path)
    g = root.create_group("T")
    encode_table(ms, g, **kw)
    return store, g


def test_corrupted_chunk_names_column_and_rows(ms, tmp_path):
    store, g = _encoded(ms, tmp_path, row_block=40)
    shard = tmp_path / "store.zarr" / "T" / "DATA" / "c" / "1" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    for i in range(100, 140):
        raw[i] ^= 0xFF
    shard.write_bytes(bytes(raw))
    out = tmp_path / "out.ms"
    with pytest.raises(CorruptTableData) as e:
        decode_table(zarr.open_group(store, mode="r", path="T"), out)
    assert "column DATA" in str(e.value) and "rows 40-79" in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".out.ms.partial*"))


def test_missing_shard_names_column_and_rows(ms, tmp_path):
    store, g = _encoded(ms, tmp_path, row_block=40)
    (tmp_path / "store.zarr" / "T" / "FLAG" / "c" / "2" / "0" / "0").unlink()
    with pytest.raises(CorruptTableData, match=r"column FLAG rows 80-119.*missing"):
        decode_table(zarr.open_group(store, mode="r", path="T"), tmp_path / "out.ms")


def test_silently_altered_values_fail_the_checksum(ms, tmp_path):
    store, g = _encoded(ms, tmp_path)
    g["ANTENNA1"][5] = 3  # a valid chunk with other content
    with pytest.raises(CorruptTableData, match="ANTENNA1"):
        decode_table(g, tmp_path / "out.ms")


def test_decode_refuses_incomplete_group_and_existing_output(ms, tmp_path):
    store, root = _local(tmp_path)
    with pytest.raises(CorruptTableData, match="no complete casacore table"):
        decode_table(root.create_group("empty"), tmp_path / "x.ms")
    g = root.create_group("T")
    encode_table(ms, g)
    (tmp_path / "exists.ms").mkdir()
    with pytest.raises(FileExistsError):
        decode_table(g, tmp_path / "exists.ms")


# --------------------------------------------------------------------------- direct shard I/O


BLOSC_LABELS = [label for label, spec in codecs.CODECS.items() if spec.compressor[0] == "blosc"]


def _arrays(group) -> list:
    return sorted((a for _n, a in group.members(max_depth=None) if isinstance(a, zarr.Array)),
                  key=lambda a: a.path)


@pytest.mark.parametrize("src_name", ["ms", "custom"])
def test_shards_written_directly_read_back_the_same_through_zarr(src_name, request, tmp_path):
    """The shards this module writes itself are plain zarr: zarr reads what the fast reader
    reads, and the fast reader reads what zarr writes (partial last chunks and shards too)."""
    src = request.getfixturevalue(src_name)
    store, g = _encoded(src, tmp_path, row_block=7)
    fast = 0
    with pipeline._Work() as work:
        for arr in _arrays(g):
            reader = shards._reader(arr, work)
            if isinstance(reader, shards._ArrayIn):
                fast += 1
            got = reader.read(0, arr.shape[0])
            want = arr[:]
            assert np.asarray(got).shape == want.shape, arr.path
            assert np.asarray(got).tobytes() == np.asarray(want).tobytes(), arr.path
            pieces = []
            for _a, _b, block, buf, dmg in reader.blocks():
                assert dmg is None
                pieces.append(np.array(block, copy=True))
                if buf is not None:
                    work.give(buf)
            if pieces:
                assert np.concatenate(pieces).tobytes() == np.asarray(want).tobytes(), arr.path
    assert fast >= 10
    # zarr-written arrays, every codec label, read by the fast reader
    root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    rng = np.random.default_rng(3)
    cases = [(np.float32, label) for label in BLOSC_LABELS] + [(np.float64, "delta-zstd"), (np.int32, "zstd"),
                                                    (np.int32, "zstd1"), (bool, "packbits-zstd"),
                                                    (np.complex64, "blosc-bitshuffle-lz4")]
    with pipeline._Work() as work:
        for i, (dt, label) in enumerate(cases):
            data = (rng.random((53, 3)) * 100).astype(dt)
            arr = codecs._create(root, f"a{i}", data.shape, np.dtype(dt), 4, 12, label, ("row", "x"))
            arr[:] = data
            reader = shards._reader(arr, work)
            assert isinstance(reader, shards._ArrayIn), label
            want = arr[:]  # float delta is not exact for arbitrary values: compare with zarr
            assert reader.read(0, 53).tobytes() == want.tobytes(), label
            assert reader.read(5, 30).tobytes() == want[5:30].tobytes(), label
            if label != "delta-zstd":
                assert want.tobytes() == data.tobytes()


def test_node_documents_are_the_ones_zarr_writes():
    from zarr.core.buffer import default_buffer_prototype

    root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    cases = [((100, 8, 4), np.dtype(np.complex64), 16, 64, label) for label in BLOSC_LABELS]
    cases += [((100,), np.dtype(np.float64), 32, 96, "delta-zstd"), ((7,), None, 7, 7, "zstd"),
              ((100, 3), np.dtype(bool), 10, 50, "packbits-zstd"), ((0, 2), np.dtype(np.int16), 1, 1, "zstd1")]
    for i, (shape, dtype, chunk, shard, label) in enumerate(cases):
        dims = ("row",) + tuple(f"d{k}" for k in range(len(shape) - 1))
        arr = codecs._create(root, f"x{i}", shape, dtype, chunk, shard, label, dims)
        want = json.loads(arr.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes())
        doc, _chunks, _shards = shards._array_doc(shape, dtype, chunk, shard, label, dims)
        assert doc == want, label
        assert json.loads(zarr_internals.node_bytes(doc)) == want
        assert zarr_internals.node_bytes(dict(doc)) == zarr_internals.node_bytes(doc)  # remembered: same bytes
    group = json.loads(zarr_internals.node_bytes(None, {"column": "FLAG"}))
    assert group["node_type"] == "group" and group["attributes"] == {"column": "FLAG"}


def test_codec_choice_weighs_speed_for_big_columns(monkeypatch):
    """A big column weighs each codec's modelled CPU cost against its stored bytes: noisy
    visibilities take the fast chain, 2 % larger; a small one takes the smallest."""
    col = schema.ColumnSchema(name="DATA", ctype="complex", dtype=np.dtype(np.complex64), layout="fixed",
                  cell_shape=(64, 4), chunk_rows=1024, block_rows=32768)
    sample = np.zeros((1024, 64, 4), np.complex64)  # 2 MiB; the sizes below are DATA's in the benchmark run
    fake = {"blosc-shuffle-zstd": 1_850_000, "blosc-bitshuffle-zstd": 1_840_000,
            "blosc-shuffle-zstd1": 1_968_000, "blosc-bitshuffle-zstd1": 1_910_000,
            "blosc-shuffle-lz4": 1_950_000, "blosc-bitshuffle-lz4": 1_892_000}
    monkeypatch.setattr(codec_choice, "_trials", lambda cands, s: {c: fake[c] for c in cands if c in fake})
    with pipeline._Work() as work:
        row_bytes = 64 * 4 * 8
        choice = codec_choice._start_choice(col, 351540 * row_bytes, sample, work)
        assert choice(None, None) == "blosc-bitshuffle-lz4"
        assert codec_choice._start_choice(col, 100 * row_bytes, sample, work)(None, None) == "blosc-bitshuffle-zstd"


def test_codec_choice_of_a_dp3_ms_does_not_depend_on_how_long_the_trials_take(dp3_ms, monkeypatch):
    """Every column of a DP3-written MS chooses by speed, with CPU all that counts, three times:
    as is, with clocks that say every trial took 1000 s, and with clocks that jump at random
    while another thread keeps a core busy compressing. The stores are the same: the same codec
    for every column, the same stored bytes."""
    import random
    import threading
    import time

    import numcodecs

    settings = pipeline.PipelineSettings(speed_min_bytes=1, numcodecs_min_sample=1, worth=1e12)

    def encode() -> dict:
        store = zarr.storage.MemoryStore()
        info = encode_table(dp3_ms, zarr.open_group(store, mode="w"), settings=settings)
        return {"info": info, "objects": {k: bytes(v.to_bytes()) for k, v in store._store_dict.items()}}

    as_is = encode()
    fast = {s.label for s in codecs.CODECS.values() if s.fast_for}
    assert fast & set(as_is["info"]["codecs"].values()), "no column chose by speed"

    clocks = ["thread_time", "perf_counter", "process_time"]
    ticks = iter(range(1, 1 << 30))
    for name in clocks:  # every reading 1000 s after the one before
        monkeypatch.setattr(time, name, lambda: 1000.0 * next(ticks))
        monkeypatch.setattr(time, name + "_ns", lambda: 1000 * 10**9 * next(ticks))
    slow_clocks = encode()

    rng = random.Random(5)
    for name in clocks:
        monkeypatch.setattr(time, name, lambda: rng.uniform(0, 1e6))
        monkeypatch.setattr(time, name + "_ns", lambda: rng.randrange(10**15))
    stop = threading.Event()

    def burn() -> None:
        noise = np.random.default_rng(1).integers(0, 255, 4 << 20, np.uint8).tobytes()
        while not stop.is_set():
            numcodecs.Zstd(level=9).encode(noise)

    burner = threading.Thread(target=burn)
    burner.start()
    try:
        busy_and_random = encode()
    finally:
        stop.set()
        burner.join(30)
    assert slow_clocks == as_is
    assert busy_and_random == as_is


# --------------------------------------------------------------------------- verify_table


def test_verify_table_finds_nothing_wrong_in_an_intact_table(custom, ms, tmp_path):
    for src in (ms, custom):
        store, g = _encoded(src, tmp_path / src.name, row_block=9)
        seen = []
        assert casacore_table.verify_table(g, name="t", progress=seen.append) == []
        info_total = sum(seen)
        back = []
        decode_table(g, tmp_path / src.name / "out", progress=back.append)
        assert info_total == sum(back)


def test_verify_table_names_damaged_missing_and_altered_data(ms, tmp_path):
    store, g = _encoded(ms, tmp_path, row_block=40)
    base = tmp_path / "store.zarr" / "T"
    shard = base / "DATA" / "c" / "1" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[100:140] = bytes(b ^ 0xFF for b in raw[100:140])
    shard.write_bytes(bytes(raw))
    (base / "FLAG" / "c" / "2" / "0" / "0").unlink()
    (base / "subtables" / "ANTENNA" / "POSITION" / "c" / "0" / "0").unlink()
    g["ANTENNA1"][5] = 3  # a valid chunk with other content
    problems = casacore_table.verify_table(zarr.open_group(store, mode="r", path="T"), name="x/band.ms")
    assert any(re.fullmatch(r"x/band\.ms: column DATA rows 40-79: stored data is damaged \(.*\)", p)
               for p in problems), problems
    assert "x/band.ms: column FLAG rows 80-119: stored data is missing" in problems
    assert any(p.startswith("x/band.ms/ANTENNA: column POSITION rows 0-") and "missing" in p
               for p in problems), problems
    assert "x/band.ms: column ANTENNA1: values differ from the stored checksum" in problems
    assert len(problems) == 4, problems


def test_verify_table_notices_altered_description(ms, tmp_path):
    store, g = _encoded(ms, tmp_path)
    st = dict(g.attrs["casacore_table"])
    st["info"] = {**st["info"], "readme": "changed\n"}
    common._quiet_attrs_update(g, {"casacore_table": st})
    assert casacore_table.verify_table(g, name="T") == ["T: table description differs from its stored checksum"]
    g2 = _local(tmp_path, "other.zarr")[1].create_group("E")
    assert casacore_table.verify_table(g2, name="E") == [
        "E: no content checksum (the table was not stored completely)",
        "E: no readable casacore table description"]


def test_plain_zip_store_with_prefix_sharing_columns(ms, tmp_path):
    """DATA and DATA_DESC_ID share a prefix; a plain ZipStore lists by string prefix. Decoding
    and verifying must not depend on listing."""
    store = zarr.storage.ZipStore(str(tmp_path / "a.zip"), mode="w")
    encode_table(ms, zarr.open_group(store, mode="w").create_group("T"), row_block=50)
    store.close()
    store = zarr.storage.ZipStore(str(tmp_path / "a.zip"), mode="r")
    g = zarr.open_group(store, mode="r", path="T")
    assert {"DATA", "DATA_DESC_ID"} <= set(g.keys())
    assert casacore_table.verify_table(g, name="T") == []
    decode_table(g, tmp_path / "out.ms")
    store.close()
    assert_tables_equal(ms, tmp_path / "out.ms")


def test_damage_in_a_shaped_column_is_named_by_shape_and_cells(casa_ms, tmp_path):
    store, g = _encoded(casa_ms, tmp_path)
    base = tmp_path / "store.zarr" / "T" / "shaped" / "DATA" / "16x4"
    (base / "DATA" / "c" / "0" / "0" / "0").unlink()
    problems = casacore_table.verify_table(zarr.open_group(store, mode="r", path="T"), name="casa.ms")
    assert len(problems) == 1 and re.fullmatch(
        r"casa\.ms: column DATA shape 16x4 cells 0-\d+: stored data is missing", problems[0]), problems
    with pytest.raises(CorruptTableData, match="column DATA shape 16x4 cells 0-"):
        decode_table(g, tmp_path / "out.ms")


def test_metadata_checksum_guards_what_restore_writes(tiled_ms, tmp_path):
    """A changed byte in a table's description (here the bucket size of a data manager, which
    would change the restored table's files and nothing else) is found by verify and refused
    by decode; the same for a subtable's, and for a checksum that went missing."""
    store, g = _encoded(tiled_ms, tmp_path)
    original = dict(g.attrs["casacore_table"])
    st = json.loads(json.dumps(original))
    ism = next(dm for dm in st["dminfo"] if dm["TYPE"] == "IncrementalStMan")
    ism["SPEC"]["BUCKETSIZE"] += 1024
    common._quiet_attrs_update(g, {"casacore_table": st})
    assert casacore_table.verify_table(g, name="T") == ["T: table description differs from its stored checksum"]
    with pytest.raises(CorruptTableData, match="T: table description differs"):
        decode_table(g, tmp_path / "T")
    assert not (tmp_path / "T").exists() and not list(tmp_path.glob(".T.partial*"))
    common._quiet_attrs_update(g, {"casacore_table": original})
    assert casacore_table.verify_table(g, name="T") == []

    sub = g["subtables/ANTENNA"]
    sst = json.loads(json.dumps(dict(sub.attrs["casacore_table"])))
    sst["columns"][0]["desc"]["comment"] += "!"
    common._quiet_attrs_update(sub, {"casacore_table": sst})
    assert casacore_table.verify_table(g, name="T") == ["T/ANTENNA: table description differs from its stored checksum"]
    with pytest.raises(CorruptTableData, match="T/ANTENNA: table description differs"):
        decode_table(g, tmp_path / "T")

    content = json.loads(json.dumps(dict(g.attrs["casacore_content"])))
    del content["metadata_sha256"]
    common._quiet_attrs_update(g, {"casacore_content": content})
    assert "T: table description has no checksum" in casacore_table.verify_table(g, name="T")


def test_archives_of_format_version_1_still_restore(tmp_path, monkeypatch):
    """A table stored by the first version of this format (no metadata checksums, multi-shape
    columns ragged) decodes and verifies as before."""
    src = _custom_table(tmp_path / "custom.tab", endian="big")  # what the stored one was made from
    store = zarr.storage.ZipStore(str(Path(__file__).parent / "data" / "table_codec_v1.zarr.zip"), mode="r")
    try:
        g = zarr.open_group(store, mode="r", path="T")
        assert g.attrs["casacore_table"]["version"] == 1 and "version" not in g.attrs["casacore_content"]
        assert casacore_table.verify_table(g, name="T") == []
        decode_table(g, tmp_path / "out.tab")
        stored = g.attrs["casacore_content"]["content_sha256"]
    finally:
        store.close()
    assert_tables_equal(src, tmp_path / "out.tab")
    # the content checksum (what manifests hold) is still computed as it was, by the encoder of
    # casacore_content version 1 (content checksum v1, SHA-256 streams)
    monkeypatch.setattr(casacore_table.encode, "CONTENT_VERSION", 1)
    assert table_content_sha256(tmp_path / "out.tab") == table_content_sha256(src) == stored


def _node_documents(group) -> dict:
    """Every zarr.json below a group (arrays and groups), by path, as stored."""
    out = {}
    for path, node in group.members(max_depth=None):
        out[path] = {k: v for k, v in node.metadata.to_dict().items()}
    return out


def test_archives_of_format_version_2_written_before_the_split_still_restore(tmp_path, monkeypatch):
    """Tables stored by the codec as it was before it became a package (tests/data/
    table_codec_v2.zarr.zip: the odd custom table as "T", a CASA-like MS with record cells and
    two cell shapes as "C") verify, decode bit for bit, and encoding their sources today writes
    the same description, checksums and array documents."""
    custom = _custom_table(tmp_path / "custom.tab", endian="little")
    casa = casa_like_ms(tmp_path / "casa.ms", _write_ms(tmp_path / "band.ms", ntimes=4, nchan=4, nant=3))
    store = zarr.storage.ZipStore(str(Path(__file__).parent / "data" / "table_codec_v2.zarr.zip"), mode="r")
    _, fresh = _local(tmp_path, "fresh.zarr")
    try:
        for name, src in (("T", custom), ("C", casa)):
            g = zarr.open_group(store, mode="r", path=name)
            assert g.attrs["casacore_table"]["version"] == 2
            assert casacore_table.verify_table(g, name=name) == []
            decode_table(g, tmp_path / f"out-{name}")
            assert_tables_equal(src, tmp_path / f"out-{name}")
            again = fresh.create_group(name)
            with monkeypatch.context() as m:   # the checksums of then: casacore_content version 2
                m.setattr(casacore_table.encode, "CONTENT_VERSION", 2)
                encode_table(src, again)
            assert again.attrs["casacore_table"] == g.attrs["casacore_table"]
            assert again.attrs["casacore_content"] == g.attrs["casacore_content"]
            assert _node_documents(again) == _node_documents(g)
    finally:
        store.close()


# --------------------------------------------------------------------------- casacore worker


IN_WORKERS = PipelineSettings(worker_min_bytes=0)  # every table, however small, in a worker process


@pytest.fixture
def workers(monkeypatch):
    """Counts the casacore worker processes started (tests pass settings=IN_WORKERS)."""
    if not hasattr(os, "memfd_create"):
        pytest.skip("no memfd_create here")
    started = []
    real = worker_client._Worker.__init__

    def init(self, *a, **kw):
        real(self, *a, **kw)
        started.append(self)

    monkeypatch.setattr(worker_client._Worker, "__init__", init)
    yield started
    for w in started:
        assert w.proc.poll() is not None  # none left running


def test_encode_and_decode_in_casacore_worker_processes(custom, ms, tmp_path, workers):
    for src in (custom, ms):
        info, out = _roundtrip(src, tmp_path / src.name, "local", row_block=5, settings=IN_WORKERS)
        assert_tables_equal(src, out)
        assert table_content_sha256(out, IN_WORKERS) == info["content_sha256"]
    # encode, decode, checksum of each; and the scratch table in which planning the custom
    # table (encode, checksum) finds the tile shapes of its TiledShapeStMan
    assert len(workers) == 8


def test_worker_decode_of_damaged_data_leaves_nothing(ms, tmp_path, workers):
    store, g = _encoded(ms, tmp_path, row_block=40, settings=IN_WORKERS)
    shard = tmp_path / "store.zarr" / "T" / "DATA" / "c" / "1" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[100:140] = bytes(b ^ 0xFF for b in raw[100:140])
    shard.write_bytes(bytes(raw))
    out = tmp_path / "out.ms"
    with pytest.raises(CorruptTableData, match=r"column DATA rows 40-79: stored data is damaged"):
        decode_table(zarr.open_group(store, mode="r", path="T"), out, settings=IN_WORKERS)
    assert not out.exists() and not list(tmp_path.glob(".out.ms.partial*"))
    assert len(workers) == 2  # encode, decode


def test_a_worker_that_dies_is_an_error_not_a_hang(ms, tmp_path, workers, monkeypatch):
    store, g = _encoded(ms, tmp_path)
    real = worker_client._RemoteTable._call

    def dying(self, method, *args):
        if method == "putcol":
            self.worker.proc.kill()
            self.worker.proc.wait()
        return real(self, method, *args)

    monkeypatch.setattr(worker_client._RemoteTable, "_call", dying)
    with pytest.raises(FactorArchiveError, match="worker"):
        decode_table(g, tmp_path / "out.ms", settings=IN_WORKERS)
    assert not (tmp_path / "out.ms").exists()


def test_a_worker_that_dies_while_encoding_fails_the_encode(ms, tmp_path, workers, monkeypatch):
    real = worker_client._RemoteTable.call

    def dying(self, method, *args):
        if method == "getcolnp":
            self.worker.proc.kill()
            self.worker.proc.wait()
        return real(self, method, *args)

    monkeypatch.setattr(worker_client._RemoteTable, "call", dying)
    store, root = _local(tmp_path)
    g = root.create_group("T")
    with pytest.raises(FactorArchiveError, match="worker") as e:
        encode_table(ms, g, settings=IN_WORKERS)
    assert not isinstance(e.value, RawTableRequired)  # not mistaken for an unreadable table
    assert list(g.keys()) == []


def test_shaped_columns_and_records_through_worker_processes(casa_ms, tmp_path, workers):
    info, out = _roundtrip(casa_ms, tmp_path, "local", row_block=7, settings=IN_WORKERS)
    assert_tables_equal(casa_ms, out)
    assert table_content_sha256(out, IN_WORKERS) == info["content_sha256"]
    assert len(workers) >= 3  # encode, decode, checksum, and the scratch tables planning makes
