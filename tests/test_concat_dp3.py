"""concat_in_frequency must write what DP3 writes for Factor's calibrated-data concatenation,
from the MSs DP3 itself wrote (as every MS of a real run is), Dysco-compressed ones included.

All comparisons are exact (no tolerance): both sides copy the same float values.
REF_FREQUENCY is the one deliberate difference (see factor_archive.ms.concat).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

casacore_tables = pytest.importorskip("casacore.tables")

from factor_archive.cli import archivefactor_main, unarchivefactor_main  # noqa: E402
from factor_archive.errors import BadInput, FactorArchiveError  # noqa: E402
from factor_archive.ms.concat import TimeGroup, concat_in_frequency, group_by_time  # noqa: E402
from factor_archive.ms.dp3 import Dp3Run, MsRecipe, dp3_available, run_dp3, write_recipes  # noqa: E402
from factor_archive.ms.synth import write_ms  # noqa: E402
from factor_archive.sample import BANDS, DYSCO_CHUNK, MISSING_CALIBRATED, band_name, root_name  # noqa: E402

NCHAN = 4
CHAN_WIDTH = 48828.125  # LOFAR-like, not a round number
F0 = 120.0e6 + CHAN_WIDTH / 2
T0 = 4.87e9 + 0.25
INTERVAL = 8.01
NTIMES = 6
NANT = 5  # 15 baselines with autocorrelations

MAIN_COLUMNS = ("TIME", "ANTENNA1", "ANTENNA2", "UVW", "DATA", "FLAG", "WEIGHT_SPECTRUM",
                # DP3 also sets these; we match them too
                "TIME_CENTROID", "INTERVAL", "EXPOSURE", "FLAG_ROW", "WEIGHT", "SIGMA",
                "SCAN_NUMBER", "STATE_ID", "ARRAY_ID", "FIELD_ID", "DATA_DESC_ID")
SPW_COLUMNS = ("CHAN_FREQ", "CHAN_WIDTH", "NUM_CHAN", "TOTAL_BANDWIDTH", "EFFECTIVE_BW",
               "RESOLUTION")

pytestmark = pytest.mark.skipif(not dp3_available(), reason="DP3 (the dp3 package) is not installed")


def band_freqs(b: int) -> np.ndarray:
    return F0 + (b * NCHAN + np.arange(NCHAN)) * CHAN_WIDTH


def band_synth(band: int, chunk: int, **kw) -> dict:
    """write_ms arguments of frequency band ``band`` in time chunk ``chunk``."""
    return dict(start_time=T0 + chunk * NTIMES * INTERVAL, ntimes=NTIMES, interval=INTERVAL,
                chan_freqs=band_freqs(band), chan_width=CHAN_WIDTH, nant=NANT,
                seed=10 * chunk + band, name=f"SB{band}", **kw)


def make_band(path, band: int, chunk: int, **kw) -> str:
    """A synthetic band written by python-casacore only (for shapes DP3 does not write)."""
    write_ms(path, **band_synth(band, chunk, **kw))
    return str(path)


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    """DP3-written bands, keys (band, chunk): 3 bands x 2 chunks, band 1 missing in chunk 1;
    "dysco": band 1 of chunk 0 written with Dysco; "fine": twice the channels at half the width;
    "narrow": one channel less. One DP3 batch for all."""
    d = tmp_path_factory.mktemp("bands")
    recipes = {}
    for chunk in (0, 1):
        for band in (0, 1, 2):
            if (band, chunk) != (1, 1):
                recipes[band, chunk] = MsRecipe(d / f"b{band}_c{chunk}.prepare_imaging_data.ms",
                                                band_synth(band, chunk))
    recipes["dysco"] = MsRecipe(d / "b1_c0_dysco.ms", band_synth(1, 0), dysco=True)
    recipes["fine"] = MsRecipe(d / "fine.ms", dict(
        band_synth(2, 0), chan_width=CHAN_WIDTH / 2,
        chan_freqs=F0 - CHAN_WIDTH / 4 + (4 * NCHAN + np.arange(2 * NCHAN)) * CHAN_WIDTH / 2))
    recipes["narrow"] = MsRecipe(d / "narrow.ms", dict(
        band_synth(3, 0), chan_freqs=band_freqs(3)[:-1]))
    write_recipes(list(recipes.values()))
    return {key: str(r.path) for key, r in recipes.items()}


def dp3_concat(slots, out: Path) -> None:
    """Factor's call: DP3 msin=[...] with dummy.ms for a gap, in a directory without dummy.ms."""
    cwd = out.parent / "dp3cwd"
    cwd.mkdir(exist_ok=True)
    assert not (cwd / "dummy.ms").exists()
    names = ",".join("dummy.ms" if s is None else str(s) for s in slots)
    run_dp3([Dp3Run(cwd, (f"msin=[{names}]", "steps=[]", f"msout={out}",
                          "msin.missingdata=true", "msin.orderms=false"))])


def read_ms(path) -> tuple[dict, dict]:
    t = casacore_tables.table(str(path), ack=False)
    try:
        main = {c: t.getcol(c) for c in MAIN_COLUMNS}
    finally:
        t.close()
    s = casacore_tables.table(f"{path}::SPECTRAL_WINDOW", ack=False)
    try:  # the data's spectral window (row 0)
        spw = {c: s.getcell(c, 0) for c in SPW_COLUMNS + ("REF_FREQUENCY",)}
    finally:
        s.close()
    return main, spw


def assert_same(ours, theirs) -> None:
    (m1, s1), (m2, s2) = read_ms(ours), read_ms(theirs)
    for c in MAIN_COLUMNS:
        assert m1[c].shape == m2[c].shape, c
        assert m1[c].dtype == m2[c].dtype, c
        assert np.array_equal(m1[c], m2[c], equal_nan=c == "DATA"), c
    for c in SPW_COLUMNS:
        assert np.array_equal(s1[c], s2[c]), c


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "SEQNR"}
    if isinstance(value, np.ndarray):
        return (str(value.dtype), value.tolist())
    return value


def layout(path) -> dict:
    """What a table's layout is made of: column descriptions, in order, and tile shapes."""
    t = casacore_tables.table(str(path), ack=False)
    try:
        columns = [(c, _plain(t.getcoldesc(c))) for c in t.colnames()]
        tiles = {c: _plain(t.getdminfo(c)["SPEC"].get("DEFAULTTILESHAPE")) for c in t.colnames()
                 if t.getdminfo(c)["TYPE"] == "TiledColumnStMan"}
        subtables = sorted(k for k, v in t.getkeywords().items()
                           if isinstance(v, str) and v.startswith("Table: "))
        return {"columns": columns, "tiles": tiles, "info": t.info(), "subtables": subtables}
    finally:
        t.close()


def assert_same_layout(ours, theirs) -> None:
    """Column descriptions (shapes, options, comments, units, managers) and tiles are DP3's."""
    assert layout(ours) == layout(theirs)
    for sub in layout(theirs)["subtables"]:
        assert layout(Path(ours) / sub)["columns"] == layout(Path(theirs) / sub)["columns"], sub


def expected_ref(spw) -> float:
    f, w = spw["CHAN_FREQ"], spw["CHAN_WIDTH"]
    return (f[0] - w[0] / 2 + f[-1] + w[-1] / 2) / 2


def test_group_by_time(bands):
    keys = [k for k in bands if isinstance(k, tuple)]
    paths = [bands[k] for k in sorted(keys, reverse=True)]  # order must not matter
    groups = group_by_time(paths)
    key0 = int(round(T0))
    key1 = int(round(T0 + NTIMES * INTERVAL))
    assert groups == [
        TimeGroup(key0, [bands[0, 0], bands[1, 0], bands[2, 0]]),
        TimeGroup(key1, [bands[0, 1], None, bands[2, 1]]),
    ]


def scenarios(bands):
    return {
        "full": [bands[0, 0], bands[1, 0], bands[2, 0]],
        "middle_gap": [bands[0, 1], None, bands[2, 1]],
        "leading_gap": [None, bands[1, 0], bands[2, 0]],
        "edge_gaps": [None, bands[0, 1], None, bands[2, 1], None],
        "dysco": [bands[0, 0], bands["dysco"], bands[2, 0]],
        "dysco_first_after_gap": [None, bands["dysco"], bands[2, 0]],
    }


@pytest.mark.parametrize("name", ["full", "middle_gap", "leading_gap", "edge_gaps", "dysco",
                                  "dysco_first_after_gap"])
def test_concat_matches_dp3(bands, tmp_path, name):
    slots = scenarios(bands)[name]
    ours, theirs = tmp_path / "ours.ms", tmp_path / "dp3.ms"
    written = []
    concat_in_frequency(slots, ours, progress=written.append)
    dp3_concat(slots, theirs)
    assert_same(ours, theirs)
    assert_same_layout(ours, theirs)
    assert sum(written) > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    (main, spw), (_, dp3_spw) = read_ms(ours), read_ms(theirs)
    assert spw["NUM_CHAN"] == NCHAN * len(slots)
    assert spw["REF_FREQUENCY"] == pytest.approx(expected_ref(spw), abs=1e-3)
    if None in slots:  # DP3 uses the whole band's centre only when there is a gap
        assert spw["REF_FREQUENCY"] == pytest.approx(dp3_spw["REF_FREQUENCY"], abs=1e-3)
    for i, slot in enumerate(slots):
        chans = slice(i * NCHAN, (i + 1) * NCHAN)
        if slot is None:
            assert np.all(main["DATA"][:, chans] == 0)
            assert np.all(main["FLAG"][:, chans])
            assert np.all(main["WEIGHT_SPECTRUM"][:, chans] == 0)
    # Autocorrelations are kept.
    assert np.any(main["ANTENNA1"] == main["ANTENNA2"])


def test_dp3_writes_fixed_shape_channel_columns_which_the_output_redefines(bands, tmp_path):
    """The cause of the original failure: DP3's SPECTRAL_WINDOW has CHAN_FREQ fixed at [4]."""
    with casacore_tables.table(f"{bands[0, 0]}::SPECTRAL_WINDOW", ack=False) as spw:
        assert list(spw.getcoldesc("CHAN_FREQ")["shape"]) == [NCHAN]
    concat_in_frequency(scenarios(bands)["full"], tmp_path / "ours.ms")
    with casacore_tables.table(str(tmp_path / "ours.ms" / "SPECTRAL_WINDOW"), ack=False) as spw:
        for col in ("CHAN_FREQ", "CHAN_WIDTH", "RESOLUTION", "EFFECTIVE_BW"):
            assert list(spw.getcoldesc(col)["shape"]) == [3 * NCHAN], col


def test_a_second_spectral_window_keeps_its_own_channels(bands, tmp_path):
    """Rows the data do not use keep their shape: the column becomes variable-shaped."""
    first = tmp_path / "two_spw.ms"
    shutil.copytree(bands[0, 0], first)
    with casacore_tables.table(str(first / "SPECTRAL_WINDOW"), readonly=False, ack=False) as spw:
        spw.addrows(1)
        for col in spw.colnames():
            spw.putcell(col, 1, spw.getcell(col, 0))
        spw.putcell("NAME", 1, "other")
    slots = [str(first), bands[1, 0], bands[2, 0]]
    concat_in_frequency(slots, tmp_path / "ours.ms")
    concat_in_frequency(scenarios(bands)["full"], tmp_path / "plain.ms")
    assert_same(tmp_path / "ours.ms", tmp_path / "plain.ms")
    with casacore_tables.table(str(tmp_path / "ours.ms" / "SPECTRAL_WINDOW"), ack=False) as spw:
        assert "shape" not in spw.getcoldesc("CHAN_FREQ")
        assert spw.getcell("CHAN_FREQ", 0).shape == (3 * NCHAN,)
        np.testing.assert_array_equal(spw.getcell("CHAN_FREQ", 1), band_freqs(0))
        assert spw.getcell("NAME", 1) == "other" and spw.getcell("NUM_CHAN", 1) == NCHAN


def test_concat_matches_dp3_on_awkward_input(bands, tmp_path):
    """NaN data, FLAG_ROW, per-correlation flags and WEIGHT instead of WEIGHT_SPECTRUM
    (a band DP3 would not write: python-casacore writes it)."""
    odd = make_band(tmp_path / "odd.ms", 1, 0, weight_spectrum=False)
    t = casacore_tables.table(odd, readonly=False, ack=False)
    try:
        data = t.getcol("DATA")
        data[3, 1, 2] = np.nan
        data[7, 0, :] = complex(np.inf, 0)
        t.putcol("DATA", data)
        flag_row = t.getcol("FLAG_ROW")
        flag_row[11] = True
        t.putcol("FLAG_ROW", flag_row)
        t.putcol("SCAN_NUMBER", np.full(t.nrows(), 3, np.int32))
    finally:
        t.close()
    slots = [bands[0, 0], odd, bands[2, 0]]
    concat_in_frequency(slots, tmp_path / "ours.ms")
    dp3_concat(slots, tmp_path / "dp3.ms")
    assert_same(tmp_path / "ours.ms", tmp_path / "dp3.ms")


def test_row_block_does_not_change_output(bands, tmp_path):
    slots = [bands[0, 1], None, bands[2, 1]]
    nrow = NTIMES * NANT * (NANT + 1) // 2
    calls_small, calls_big = [], []
    concat_in_frequency(slots, tmp_path / "small.ms", row_block=7, progress=calls_small.append)
    concat_in_frequency(slots, tmp_path / "big.ms", row_block=10**6, progress=calls_big.append)
    assert len(calls_small) == -(-nrow // 7)  # really written block by block
    assert len(calls_big) == 1
    assert sum(calls_small) == sum(calls_big)
    assert_same(tmp_path / "small.ms", tmp_path / "big.ms")
    s1, s2 = read_ms(tmp_path / "small.ms")[1], read_ms(tmp_path / "big.ms")[1]
    assert s1["REF_FREQUENCY"] == s2["REF_FREQUENCY"]


def test_mismatched_bandwidth_is_bad_input(bands):
    narrow = bands["narrow"]
    with pytest.raises(BadInput) as err:
        group_by_time([bands[0, 0], bands[1, 0], narrow])
    msg = str(err.value)
    assert narrow in msg and "TOTAL_BANDWIDTH" in msg and "\n" not in msg


def test_unreadable_input_is_bad_input(bands, tmp_path):
    missing = tmp_path / "nothere.ms"
    with pytest.raises(BadInput) as err:
        group_by_time([bands[0, 0], str(missing)])
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BadInput):
        concat_in_frequency([bands[0, 0], str(missing)], tmp_path / "out.ms")
    assert list(tmp_path.iterdir()) == []


def test_damaged_input_is_one_line_naming_it_and_leaves_nothing(bands, tmp_path):
    """casacore's multi-line error on a truncated DATA tile file becomes one line."""
    damaged = tmp_path / "damaged.ms"
    shutil.copytree(bands[2, 0], damaged)
    with casacore_tables.table(str(damaged), ack=False) as t:
        seqnr = t.getdminfo("DATA")["SEQNR"]
    with open(damaged / f"table.f{seqnr}_TSM0", "r+b") as f:
        f.truncate(1000)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BadInput) as err:
        concat_in_frequency([bands[0, 0], bands[1, 0], str(damaged)], out / "cal.ms")
    msg = str(err.value)
    assert str(damaged) in msg and "\n" not in msg
    assert list(out.iterdir()) == []


def test_unequal_channel_counts(bands, tmp_path):
    """Same TOTAL_BANDWIDTH, twice the channels: fine without a gap (as DP3), refused with one."""
    fine = bands["fine"]
    slots = [bands[0, 0], bands[1, 0], fine]
    concat_in_frequency(slots, tmp_path / "ours.ms")
    dp3_concat(slots, tmp_path / "dp3.ms")
    assert_same(tmp_path / "ours.ms", tmp_path / "dp3.ms")
    assert_same_layout(tmp_path / "ours.ms", tmp_path / "dp3.ms")
    with pytest.raises(BadInput, match="channels"):
        concat_in_frequency([bands[0, 0], None, fine], tmp_path / "gap.ms")
    assert not (tmp_path / "gap.ms").exists()


def test_existing_output_is_refused(bands, tmp_path):
    out = tmp_path / "out.ms"
    out.mkdir()
    with pytest.raises(FactorArchiveError):
        concat_in_frequency([bands[0, 0]], out)


def test_write_ms_is_deterministic(tmp_path):
    a = make_band(tmp_path / "a.ms", 0, 0)
    b = make_band(tmp_path / "b.ms", 0, 0)
    assert_same(a, b)


# ---------------------------------------------------------------------------------------------
# The user's story: a run whose MSs DP3 wrote, calibrated data exported with -d all


@pytest.mark.parametrize("form", ["dir", "tar", "zarr"])
def test_exported_calibrated_data_of_a_dp3_written_run_is_dp3s_concatenation(sample_run, tmp_path,
                                                                             form):
    """archivefactor -r -d all, unarchivefactor: each time chunk's calibrated data is what DP3
    makes of facet1's prepare_imaging_data MSs (a missing band filled with flagged zeros)."""
    facet1 = sample_run.parent / "wdir" / "results" / "facetimage" / "facet1"
    with casacore_tables.table(str(next(facet1.glob("*.prepare_imaging_data"))), ack=False) as t:
        assert t.getdminfo("DATA")["TYPE"] == "TiledColumnStMan"   # really DP3-written

    archive = tmp_path / f"run.{form}"
    assert archivefactor_main(["-q", "-r", "-d", "all", "--format", form, str(sample_run),
                               str(archive)]) == 0
    restored = tmp_path / "restored"
    assert unarchivefactor_main(["-q", str(archive), str(restored)]) == 0

    if form == "zarr":  # every table is stored as columns except the Dysco-compressed chunk
        from factor_archive.containers.zarr import ZarrReader

        reader = ZarrReader(str(archive))
        try:
            stored = {m.path: m.extra["zarr"]["stored"] for m in reader.manifest.members
                      if m.kind == "table"}
        finally:
            reader.close()
        sb, c = DYSCO_CHUNK
        dysco = f"chunks/{band_name(dict(BANDS)[sb])}/{root_name(sb)}_chunk{c}.ms"
        assert stored.pop(dysco) == "raw-files"
        assert set(stored.values()) == {"columns"} and len(stored) == 9

    cal = restored / "calibrated_data" / "facet1"
    assert sorted(p.name for p in cal.iterdir()) == [f"facet1_calibrated_data_chunk{c}.ms"
                                                     for c in range(3)]
    for c in range(3):
        slots = [None if (sb, c) in MISSING_CALIBRATED
                 else str(facet1 / f"{root_name(sb)}_chunk{c}.prepare_imaging_data")
                 for sb, _ in BANDS]
        theirs = tmp_path / f"dp3_chunk{c}.ms"
        dp3_concat(slots, theirs)
        ours = cal / f"facet1_calibrated_data_chunk{c}.ms"
        assert_same(ours, theirs)
        assert_same_layout(ours, theirs)


def test_a_failing_dp3_run_is_one_line_naming_what_it_was_writing(tmp_path):
    with pytest.raises(FactorArchiveError) as err:
        run_dp3([Dp3Run(tmp_path, ("msin=nothere.ms", "msout=out.ms", "steps=[]"))])
    msg = str(err.value)
    assert str(tmp_path / "out.ms") in msg and "nothere.ms" in msg and "\n" not in msg
    assert not (tmp_path / "out.ms").exists()
