"""Tiny but real LOFAR-like Measurement Sets for tests and synthetic Factor runs.

Real tables (not look-alike folders) so that DP3 and casacore exercise the code under
test. Output depends only on the arguments; the antenna layout depends only on
``nant``, so bands written with the same times/phase centre share ANTENNA and UVW.
TIME of row block i is ``start_time + i * interval`` (the centre of the integration).
FLAG is random per correlation (DP3 ORs it over correlations on reading), and one row is
wholly flagged with FLAG_ROW set. DP3 reads only ``ncorr=4``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_ms"]

_LOFAR_CORE_ITRF = np.array([3826577.1, 461022.9, 5064892.8])
_CORR_TYPES = {1: [9], 2: [9, 12], 4: [9, 10, 11, 12]}  # XX, XY, YX, YY
_CORR_PRODUCTS = {1: [[0, 0]], 2: [[0, 0], [1, 1]], 4: [[0, 0], [0, 1], [1, 0], [1, 1]]}


def _arr_desc(name: str, vtype: str, shape: Sequence[int], comment: str) -> dict:
    from casacore.tables import makearrcoldesc

    d = makearrcoldesc(name, _VALUE[vtype], ndim=len(shape), shape=list(shape), options=4,
                       comment=comment, valuetype=vtype)
    return {name: d["desc"]}


_VALUE = {"complex": 0j, "float": 0.0, "boolean": False}


def _antenna_positions(nant: int) -> np.ndarray:
    # Fixed pseudo-random layout within a few km of the LOFAR core (independent of seed).
    rng = np.random.default_rng(12345 + nant)
    off = rng.uniform(-2000.0, 2000.0, size=(nant, 3))
    off[0] = 0.0
    return _LOFAR_CORE_ITRF + off


def _uvw(pos: np.ndarray, a1: np.ndarray, a2: np.ndarray, times: np.ndarray,
         ra: float, dec: float) -> np.ndarray:
    """Geometric UVW (ant2 - ant1) with an approximate GMST; plausible, not astrometric."""
    mjd_days = times / 86400.0
    gmst = (2 * math.pi * (0.7790572732640 + 1.00273781191135448 * (mjd_days - 51544.5))) % (2 * math.pi)
    ha = gmst - ra
    b = pos[a2] - pos[a1]
    sh, ch = np.sin(ha), np.cos(ha)
    sd, cd = math.sin(dec), math.cos(dec)
    u = sh * b[:, 0] + ch * b[:, 1]
    v = -sd * ch * b[:, 0] + sd * sh * b[:, 1] + cd * b[:, 2]
    w = cd * ch * b[:, 0] - cd * sh * b[:, 1] + sd * b[:, 2]
    return np.stack([u, v, w], axis=1)


def write_ms(path, *, start_time: float, ntimes: int, interval: float, chan_freqs: Sequence[float],
             chan_width: float, nant: int = 4, ncorr: int = 4, seed: int = 0,
             data_columns: Sequence[str] = ("DATA",), weight_spectrum: bool = True,
             phase_centre: tuple[float, float] = (3.84, 0.62), name: str = "") -> Path:
    """Write a small MS at ``path`` (must not exist) and return its Path."""
    from casacore import tables as ct

    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    if ncorr not in _CORR_TYPES:
        raise ValueError(f"ncorr must be 1, 2 or 4, not {ncorr}")
    freqs = np.asarray(chan_freqs, dtype=np.float64)
    nchan = len(freqs)
    if nchan < 1 or ntimes < 1 or nant < 2:
        raise ValueError("need at least one channel, one time and two antennas")

    a1, a2 = np.triu_indices(nant)  # LOFAR order, autocorrelations included
    nbl = len(a1)
    nrow = ntimes * nbl
    times = start_time + interval * np.repeat(np.arange(ntimes, dtype=np.float64), nbl)
    ant1 = np.tile(a1, ntimes).astype(np.int32)
    ant2 = np.tile(a2, ntimes).astype(np.int32)

    desc = {}
    for col in data_columns:
        desc.update(_arr_desc(col, "complex", (nchan, ncorr), "visibility data"))
    desc.update(_arr_desc("FLAG", "boolean", (nchan, ncorr), "The data flags"))
    if weight_spectrum:
        desc.update(_arr_desc("WEIGHT_SPECTRUM", "float", (nchan, ncorr), "Weight for each channel"))
    desc.update(_arr_desc("WEIGHT", "float", (ncorr,), "Weight for each polarization"))
    desc.update(_arr_desc("SIGMA", "float", (ncorr,), "Estimated rms noise"))

    # Mix the spectral and time setup into the seed so that bands differ even with seed=0.
    mix = zlib.crc32(np.asarray([start_time, freqs[0], chan_width], dtype=np.float64).tobytes())
    rng = np.random.default_rng([seed, mix, nant, ncorr])
    pos = _antenna_positions(nant)
    ra, dec = phase_centre

    ms = ct.default_ms(str(path), desc)
    try:
        ms.addrows(nrow)
        ms.putcol("TIME", times)
        ms.putcol("TIME_CENTROID", times)
        ms.putcol("INTERVAL", np.full(nrow, interval))
        ms.putcol("EXPOSURE", np.full(nrow, interval))
        ms.putcol("ANTENNA1", ant1)
        ms.putcol("ANTENNA2", ant2)
        for col in ("FEED1", "FEED2", "DATA_DESC_ID", "FIELD_ID", "ARRAY_ID", "OBSERVATION_ID",
                    "PROCESSOR_ID", "SCAN_NUMBER"):
            ms.putcol(col, np.zeros(nrow, np.int32))
        ms.putcol("STATE_ID", np.full(nrow, -1, np.int32))
        ms.putcol("UVW", _uvw(pos, ant1, ant2, times, ra, dec))

        shape = (nrow, nchan, ncorr)
        for col in data_columns:
            re = rng.standard_normal(shape, dtype=np.float32)
            im = rng.standard_normal(shape, dtype=np.float32)
            ms.putcol(col, (re + 1j * im).astype(np.complex64))
        flag = rng.random(shape) < 0.05
        flag_row = np.zeros(nrow, bool)
        flag_row[rng.integers(nrow)] = True  # one wholly flagged row, as DP3 sees it
        flag[flag_row] = True
        ms.putcol("FLAG", flag)
        ms.putcol("FLAG_ROW", flag_row)
        wspec = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
        if weight_spectrum:
            ms.putcol("WEIGHT_SPECTRUM", wspec)
        weight = wspec.mean(axis=1, dtype=np.float64).astype(np.float32)
        ms.putcol("WEIGHT", weight)
        ms.putcol("SIGMA", (1.0 / np.sqrt(weight)).astype(np.float32))
    finally:
        ms.close()

    _fill_subtables(path, freqs=freqs, chan_width=chan_width, nant=nant, ncorr=ncorr, pos=pos,
                    t0=start_time - interval / 2, t1=start_time + (ntimes - 0.5) * interval,
                    ra=ra, dec=dec, name=name or path.stem)
    return path


def _fill_subtables(path: Path, *, freqs, chan_width, nant, ncorr, pos, t0, t1, ra, dec, name):
    from casacore import tables as ct

    def sub(name_):
        return ct.table(f"{path}::{name_}", readonly=False, ack=False)

    nchan = len(freqs)
    with sub("ANTENNA") as t:
        t.addrows(nant)
        t.putcol("NAME", [f"CS{i + 1:03d}HBA0" for i in range(nant)])
        t.putcol("STATION", ["LOFAR"] * nant)
        t.putcol("TYPE", ["GROUND-BASED"] * nant)
        t.putcol("MOUNT", ["X-Y"] * nant)
        t.putcol("POSITION", pos)
        t.putcol("OFFSET", np.zeros((nant, 3)))
        t.putcol("DISH_DIAMETER", np.full(nant, 31.3))
        t.putcol("FLAG_ROW", np.zeros(nant, bool))

    total_bw = nchan * chan_width
    with sub("SPECTRAL_WINDOW") as t:
        t.addrows(1)
        width = np.full((1, nchan), chan_width)
        t.putcol("CHAN_FREQ", freqs[None, :])
        t.putcol("CHAN_WIDTH", width)
        t.putcol("EFFECTIVE_BW", width)
        t.putcol("RESOLUTION", width)
        t.putcell("NUM_CHAN", 0, nchan)
        t.putcell("REF_FREQUENCY", 0, float(freqs[0] - chan_width / 2 + total_bw / 2))
        t.putcell("TOTAL_BANDWIDTH", 0, float(total_bw))
        t.putcell("NAME", 0, name)
        t.putcell("MEAS_FREQ_REF", 0, 5)  # TOPO
        t.putcell("NET_SIDEBAND", 0, 1)
        t.putcell("FREQ_GROUP", 0, 0)
        t.putcell("FREQ_GROUP_NAME", 0, "")
        t.putcell("IF_CONV_CHAIN", 0, 0)
        t.putcell("FLAG_ROW", 0, False)

    with sub("POLARIZATION") as t:
        t.addrows(1)
        t.putcell("NUM_CORR", 0, ncorr)
        t.putcell("CORR_TYPE", 0, np.array(_CORR_TYPES[ncorr], np.int32))
        t.putcell("CORR_PRODUCT", 0, np.array(_CORR_PRODUCTS[ncorr], np.int32))
        t.putcell("FLAG_ROW", 0, False)

    direction = np.array([[ra, dec]])
    with sub("FIELD") as t:
        t.addrows(1)
        for col in ("PHASE_DIR", "DELAY_DIR", "REFERENCE_DIR"):
            t.putcell(col, 0, direction)
        t.putcell("NAME", 0, "BEAM_0")
        t.putcell("CODE", 0, "")
        t.putcell("TIME", 0, t0)
        t.putcell("NUM_POLY", 0, 0)
        t.putcell("SOURCE_ID", 0, -1)
        t.putcell("FLAG_ROW", 0, False)

    with sub("DATA_DESCRIPTION") as t:
        t.addrows(1)
        t.putcell("SPECTRAL_WINDOW_ID", 0, 0)
        t.putcell("POLARIZATION_ID", 0, 0)
        t.putcell("FLAG_ROW", 0, False)

    with sub("OBSERVATION") as t:
        t.addrows(1)
        t.putcell("TELESCOPE_NAME", 0, "LOFAR")
        t.putcell("TIME_RANGE", 0, np.array([t0, t1]))
        t.putcell("OBSERVER", 0, "factor-archive")
        t.putcell("PROJECT", 0, "SYNTH")
        t.putcell("SCHEDULE_TYPE", 0, "LOFAR")
        t.putcell("RELEASE_DATE", 0, t1)
        t.putcell("FLAG_ROW", 0, False)

    with sub("FEED") as t:
        t.addrows(nant)
        t.putcol("ANTENNA_ID", np.arange(nant, dtype=np.int32))
        t.putcol("FEED_ID", np.zeros(nant, np.int32))
        t.putcol("SPECTRAL_WINDOW_ID", np.full(nant, -1, np.int32))
        t.putcol("BEAM_ID", np.full(nant, -1, np.int32))
        t.putcol("TIME", np.full(nant, (t0 + t1) / 2))
        t.putcol("INTERVAL", np.full(nant, t1 - t0))
        t.putcol("NUM_RECEPTORS", np.full(nant, 2, np.int32))
        t.putcol("BEAM_OFFSET", np.zeros((nant, 2, 2)))
        t.putcol("POLARIZATION_TYPE", np.array([["X", "Y"]] * nant))
        t.putcol("POL_RESPONSE", np.tile(np.eye(2, dtype=np.complex128), (nant, 1, 1)))
        t.putcol("POSITION", np.zeros((nant, 3)))
        t.putcol("RECEPTOR_ANGLE", np.tile([-math.pi / 4, math.pi / 4], (nant, 1)))

    with sub("POINTING") as t:
        t.addrows(nant)
        t.putcol("ANTENNA_ID", np.arange(nant, dtype=np.int32))
        t.putcol("TIME", np.full(nant, (t0 + t1) / 2))
        t.putcol("INTERVAL", np.full(nant, t1 - t0))
        t.putcol("NAME", [""] * nant)
        t.putcol("NUM_POLY", np.zeros(nant, np.int32))
        t.putcol("TIME_ORIGIN", np.full(nant, t0))
        t.putcol("DIRECTION", np.tile(direction, (nant, 1, 1)))
        t.putcol("TARGET", np.tile(direction, (nant, 1, 1)))
        t.putcol("TRACKING", np.ones(nant, bool))
