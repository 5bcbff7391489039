"""concat_in_frequency must write what DP3 writes for Factor's calibrated-data concatenation.

All comparisons are exact (no tolerance): both sides copy the same float values.
REF_FREQUENCY is the one deliberate difference (see factor_archive.ms.concat).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

casacore_tables = pytest.importorskip("casacore.tables")

from factor_archive.errors import BadInput, FactorArchiveError  # noqa: E402
from factor_archive.ms.concat import TimeGroup, concat_in_frequency, group_by_time  # noqa: E402
from factor_archive.ms.synth import write_ms  # noqa: E402

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


def band_freqs(b: int) -> np.ndarray:
    return F0 + (b * NCHAN + np.arange(NCHAN)) * CHAN_WIDTH


def make_band(path, band: int, chunk: int, **kw) -> str:
    write_ms(path, start_time=T0 + chunk * NTIMES * INTERVAL, ntimes=NTIMES, interval=INTERVAL,
             chan_freqs=band_freqs(band), chan_width=CHAN_WIDTH, nant=NANT, seed=10 * chunk + band,
             name=f"SB{band}", **kw)
    return str(path)


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    """3 bands x 2 chunks, band 1 missing in chunk 1; keys (band, chunk)."""
    d = tmp_path_factory.mktemp("bands")
    out = {}
    for chunk in (0, 1):
        for band in (0, 1, 2):
            if (band, chunk) == (1, 1):
                continue
            out[band, chunk] = make_band(d / f"b{band}_c{chunk}.prepare_imaging_data.ms",
                                         band, chunk)
    return out


def dp3_executable() -> str | None:
    found = shutil.which("DP3.py")
    if found:
        return found
    beside = Path(sys.executable).parent / "DP3.py"
    return str(beside) if beside.exists() else None


def dp3_env() -> dict:
    import casacore

    root = os.path.dirname(casacore.__file__)
    env = dict(os.environ)
    env.update(AIPSPATH=root, CASACORE_DATADIR=os.path.join(root, "data"),
               OPENBLAS_NUM_THREADS="1")
    return env


def run_dp3(slots, out: Path) -> None:
    exe = dp3_executable()
    if exe is None:
        pytest.skip("DP3 is not installed (no DP3.py on PATH or beside the Python interpreter)")
    # Factor passes the literal name dummy.ms for a gap; run in a directory where it is absent.
    cwd = out.parent / "dp3cwd"
    cwd.mkdir(exist_ok=True)
    assert not (cwd / "dummy.ms").exists()
    names = ",".join("dummy.ms" if s is None else str(s) for s in slots)
    cmd = [sys.executable, exe, f"msin=[{names}]", "steps=[]", f"msout={out}",
           "msin.missingdata=true", "msin.orderms=false"]
    proc = subprocess.run(cmd, cwd=cwd, env=dp3_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def read_ms(path) -> tuple[dict, dict]:
    t = casacore_tables.table(str(path), ack=False)
    try:
        main = {c: t.getcol(c) for c in MAIN_COLUMNS}
    finally:
        t.close()
    s = casacore_tables.table(f"{path}::SPECTRAL_WINDOW", ack=False)
    try:
        spw = {c: s.getcol(c) for c in SPW_COLUMNS + ("REF_FREQUENCY",)}
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


def expected_ref(spw) -> float:
    f, w = spw["CHAN_FREQ"][0], spw["CHAN_WIDTH"][0]
    return (f[0] - w[0] / 2 + f[-1] + w[-1] / 2) / 2


def test_group_by_time(bands):
    paths = [bands[k] for k in sorted(bands, reverse=True)]  # order must not matter
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
    }


@pytest.mark.parametrize("name", ["full", "middle_gap", "leading_gap", "edge_gaps"])
def test_concat_matches_dp3(bands, tmp_path, name):
    slots = scenarios(bands)[name]
    ours, theirs = tmp_path / "ours.ms", tmp_path / "dp3.ms"
    written = []
    concat_in_frequency(slots, ours, progress=written.append)
    run_dp3(slots, theirs)
    assert_same(ours, theirs)
    assert sum(written) > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    (main, spw), (_, dp3_spw) = read_ms(ours), read_ms(theirs)
    assert spw["NUM_CHAN"][0] == NCHAN * len(slots)
    assert spw["REF_FREQUENCY"][0] == pytest.approx(expected_ref(spw), abs=1e-3)
    if None in slots:  # DP3 uses the whole band's centre only when there is a gap
        assert spw["REF_FREQUENCY"][0] == pytest.approx(dp3_spw["REF_FREQUENCY"][0], abs=1e-3)
    for i, slot in enumerate(slots):
        chans = slice(i * NCHAN, (i + 1) * NCHAN)
        if slot is None:
            assert np.all(main["DATA"][:, chans] == 0)
            assert np.all(main["FLAG"][:, chans])
            assert np.all(main["WEIGHT_SPECTRUM"][:, chans] == 0)
    # Autocorrelations are kept.
    assert np.any(main["ANTENNA1"] == main["ANTENNA2"])


def test_concat_matches_dp3_on_awkward_input(bands, tmp_path):
    """NaN data, FLAG_ROW, per-correlation flags and WEIGHT instead of WEIGHT_SPECTRUM."""
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
    run_dp3(slots, tmp_path / "dp3.ms")
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
    assert s1["REF_FREQUENCY"][0] == s2["REF_FREQUENCY"][0]


def test_mismatched_bandwidth_is_bad_input(bands, tmp_path):
    narrow = tmp_path / "narrow.ms"
    write_ms(narrow, start_time=T0, ntimes=NTIMES, interval=INTERVAL,
             chan_freqs=F0 + (3 * NCHAN + np.arange(NCHAN - 1)) * CHAN_WIDTH,
             chan_width=CHAN_WIDTH, nant=NANT)
    with pytest.raises(BadInput) as err:
        group_by_time([bands[0, 0], bands[1, 0], str(narrow)])
    msg = str(err.value)
    assert str(narrow) in msg and "TOTAL_BANDWIDTH" in msg and "\n" not in msg


def test_unreadable_input_is_bad_input(bands, tmp_path):
    missing = tmp_path / "nothere.ms"
    with pytest.raises(BadInput) as err:
        group_by_time([bands[0, 0], str(missing)])
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BadInput):
        concat_in_frequency([bands[0, 0], str(missing)], tmp_path / "out.ms")
    assert list(tmp_path.iterdir()) == []


def test_unequal_channel_counts(bands, tmp_path):
    """Same TOTAL_BANDWIDTH, twice the channels: fine without a gap (as DP3), refused with one."""
    fine = tmp_path / "fine.ms"
    write_ms(fine, start_time=T0, ntimes=NTIMES, interval=INTERVAL,
             chan_freqs=F0 - CHAN_WIDTH / 4 + (4 * NCHAN + np.arange(2 * NCHAN)) * CHAN_WIDTH / 2,
             chan_width=CHAN_WIDTH / 2, nant=NANT)
    slots = [bands[0, 0], bands[1, 0], str(fine)]
    concat_in_frequency(slots, tmp_path / "ours.ms")
    run_dp3(slots, tmp_path / "dp3.ms")
    assert_same(tmp_path / "ours.ms", tmp_path / "dp3.ms")
    with pytest.raises(BadInput, match="channels"):
        concat_in_frequency([bands[0, 0], None, str(fine)], tmp_path / "gap.ms")
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
