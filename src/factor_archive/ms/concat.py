"""Factor's frequency concatenation of calibrated data (``archive -d``), without DP3.

Reproduces ``sort_times_into_freqGroups`` and then
``DP3 msin=[...] steps=[] msout=... msin.missingdata=true msin.orderms=false`` in process,
streaming by row blocks so memory does not grow with the number of rows.

What DP3 does, and so what this does (checked against DP3 6.6 by tests/test_concat_dp3.py):

* rows: kept as they are, autocorrelations included, in the first real input's order;
  TIME, ANTENNA1/2, UVW, INTERVAL and EXPOSURE come from the first real input,
  TIME_CENTROID is TIME, the ID columns (SCAN_NUMBER, STATE_ID, ...) are 0, WEIGHT and
  SIGMA are 1, FLAG_ROW is set where every flag of the row is set;
* flags: FLAG_ROW and non-finite DATA flag the input, then a channel flagged in any
  correlation is flagged in all; WEIGHT_SPECTRUM is copied (WEIGHT broadcast if absent);
* gaps: DATA 0, FLAG True, WEIGHT_SPECTRUM 0; gap channels continue the frequency
  grid in steps of the first real input's first channel width (starting after the
  previous band's last channel, or before the next one for leading gaps); with a gap all
  real inputs must have the same number of channels and ascend in frequency;
* SPECTRAL_WINDOW: channels concatenated, NUM_CHAN, TOTAL_BANDWIDTH = sum of widths,
  EFFECTIVE_BW/RESOLUTION concatenated (gap channels get the fill width); other
  subtables are copied from the first real input.
* REF_FREQUENCY rule (DP3 itself differs with and without a gap): always the centre of
  the whole output band, (low edge of first channel + high edge of last channel) / 2.

Not reproduced: LOFAR_FULL_RES_FLAG, extra data columns and a new HISTORY row.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from factor_archive.errors import BadInput, FactorArchiveError

__all__ = ["TimeGroup", "group_by_time", "concat_in_frequency"]

_BLOCK_BYTES = 256 * 2**20  # cap on one block's arrays, whatever row_block says
_SCAN_ROWS = 1_000_000  # rows per read when scanning a scalar column
_TIME_TOL = 1e-3  # seconds; DP3 compares times with casacore::near


@dataclass
class TimeGroup:
    key: int
    slots: list[str | None]  # frequency-ordered; None = gap (Factor's dummy.ms)


def _open(path, **kw):
    from casacore import tables as ct

    try:
        return ct.table(str(path), ack=False, **kw)
    except Exception as exc:  # casacore raises RuntimeError with multi-line text
        raise BadInput(f"cannot read Measurement Set {path}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


def _spw_row(ms) -> tuple[object, int]:
    from casacore import tables as ct

    ddid = int(ms.getcell("DATA_DESC_ID", 0)) if ms.nrows() else 0
    dd = ct.table(ms.getkeyword("DATA_DESCRIPTION"), ack=False)
    try:
        spw_id = int(dd.getcell("SPECTRAL_WINDOW_ID", ddid))
    finally:
        dd.close()
    return ct.table(ms.getkeyword("SPECTRAL_WINDOW"), ack=False), spw_id


def _min_time(ms) -> float:
    n = ms.nrows()
    if n == 0:
        raise ValueError("no rows")
    lo = np.inf
    for start in range(0, n, _SCAN_ROWS):
        lo = min(lo, float(ms.getcol("TIME", start, min(_SCAN_ROWS, n - start)).min()))
    return lo


def group_by_time(ms_paths: Sequence[str]) -> list[TimeGroup]:
    """Factor's sort_times_into_freqGroups with numSB=-1: one group per start time."""
    infos = []  # (time key, ref freq, bandwidth, path)
    for path in ms_paths:
        ms = _open(path)
        try:
            key = int(round(_min_time(ms)))
            spw, row = _spw_row(ms)
            try:
                ref = float(spw.getcell("REF_FREQUENCY", row))
                bw = float(spw.getcell("TOTAL_BANDWIDTH", row))
            finally:
                spw.close()
        except BadInput:
            raise
        except Exception as exc:
            raise BadInput(f"cannot read Measurement Set {path}: {_one_line(exc)}") from None
        finally:
            ms.close()
        infos.append((key, ref, bw, str(path)))
    if not infos:
        return []

    width = infos[0][2]
    for _, _, bw, path in infos[1:]:
        if bw != width:
            raise BadInput(f"{path}: TOTAL_BANDWIDTH {bw:g} Hz differs from {infos[0][3]}'s "
                           f"{width:g} Hz; all bands must have the same width")
    refs = [ref for _, ref, _, _ in infos]
    minfreq = min(refs) - width / 2
    maxfreq = max(refs) + width / 2
    nslots = int(round((maxfreq - minfreq) / width))

    by_key: dict[int, list[tuple[float, str]]] = {}
    for key, ref, _, path in infos:
        by_key.setdefault(key, []).append((ref, path))
    groups = []
    for key in sorted(by_key):
        files = sorted(by_key[key], key=lambda item: item[0])
        slots: list[str | None] = []
        i = 0
        for k in range(nslots):
            if i < len(files) and files[i][0] <= minfreq + (k + 1) * width:
                slots.append(files[i][1])
                i += 1
            else:
                slots.append(None)
        if i < len(files):
            raise BadInput(f"{files[i][1]}: no frequency slot left for it in time group {key} "
                           "(two bands in one slot?)")
        groups.append(TimeGroup(key, slots))
    return groups


@dataclass
class _Band:
    path: str
    table: object
    nchan: int
    freqs: np.ndarray
    widths: np.ndarray
    resolution: np.ndarray
    effective_bw: np.ndarray
    has_flag: bool
    has_weight_spectrum: bool


def _open_band(path: str) -> _Band:
    ms = _open(path)
    try:
        cols = set(ms.colnames())
        if "DATA" not in cols:
            raise BadInput(f"{path}: no DATA column")
        if ms.nrows() == 0:
            raise BadInput(f"{path}: Measurement Set has no rows")
        spw, row = _spw_row(ms)
        try:
            freqs = np.asarray(spw.getcell("CHAN_FREQ", row), dtype=np.float64)
            widths = np.asarray(spw.getcell("CHAN_WIDTH", row), dtype=np.float64)
            res = np.asarray(spw.getcell("RESOLUTION", row), dtype=np.float64)
            ebw = np.asarray(spw.getcell("EFFECTIVE_BW", row), dtype=np.float64)
        finally:
            spw.close()
        return _Band(path, ms, len(freqs), freqs, widths, res, ebw, "FLAG" in cols,
                     "WEIGHT_SPECTRUM" in cols)
    except BadInput:
        ms.close()
        raise
    except Exception as exc:
        ms.close()
        raise BadInput(f"cannot read Measurement Set {path}: {_one_line(exc)}") from None


def _spectral_layout(slots: Sequence[_Band | None]):
    """Output channels the way DP3's MultiMsReader builds them."""
    real = [b for b in slots if b is not None]
    if len(real) == len(slots):
        return tuple(np.concatenate([getattr(b, attr) for b in real])
                     for attr in ("freqs", "widths", "resolution", "effective_bw"))
    first_idx = next(i for i, b in enumerate(slots) if b is not None)
    first = slots[first_idx]
    nfill = first.nchan
    chanw = float(first.widths[0])
    cursor = float(first.freqs[0]) - first_idx * nfill * chanw
    parts = []
    for band in slots:
        if band is None:
            f = cursor + chanw * np.arange(nfill, dtype=np.float64)
            w = np.full(nfill, chanw)
            parts.append((f, w, w, w))
            cursor = float(f[-1]) + chanw
            continue
        if band.nchan != nfill:
            raise BadInput(f"{band.path}: {band.nchan} channels, but {first.path} has {nfill}; "
                           "with a missing band all bands must have equal channel counts")
        if band.freqs[0] < cursor and not np.isclose(band.freqs[0], cursor, rtol=1e-5, atol=0):
            raise BadInput(f"{band.path}: bands are not in increasing frequency order")
        parts.append((band.freqs, band.widths, band.resolution, band.effective_bw))
        cursor = float(band.freqs[-1] + band.widths[-1])
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def _main_desc(first, nchan: int, ncorr: int) -> dict:
    from casacore import tables as ct

    desc = ct.required_ms_desc("MAIN")
    for name, value, shape in (("DATA", 0j, (nchan, ncorr)), ("FLAG", False, (nchan, ncorr)),
                               ("WEIGHT_SPECTRUM", 0.0, (nchan, ncorr)),
                               ("WEIGHT", 0.0, (ncorr,)), ("SIGMA", 0.0, (ncorr,))):
        vtype = {"DATA": "complex", "FLAG": "boolean"}.get(name, "float")
        col = ct.makearrcoldesc(name, value, ndim=len(shape), shape=list(shape), options=4,
                                valuetype=vtype)["desc"]
        desc[name] = col
    # Keep the input's measure frames and units (e.g. UVW in J2000).
    for name in desc:
        if name.startswith("_") or name not in first.colnames():
            continue
        kw = first.getcolkeywords(name)
        if kw:
            desc[name]["keywords"] = {**desc[name].get("keywords", {}), **kw}
    return desc


def _dminfo(nchan: int, ncorr: int) -> dict:
    rows = max(1, 131072 // (nchan * ncorr))  # ~1 MiB DATA tiles, like DP3's layout
    tiled = {"UVW": ("TiledUVW", [3, 1024]), "DATA": ("TiledData", [ncorr, nchan, rows]),
             "FLAG": ("TiledFlag", [ncorr, nchan, rows * 8]),
             "WEIGHT_SPECTRUM": ("TiledWeightSpectrum", [ncorr, nchan, rows * 2])}
    return {f"*{i + 1}": {"TYPE": "TiledColumnStMan", "NAME": name,
                          "SPEC": {"DEFAULTTILESHAPE": np.array(shape, np.int32)},
                          "COLUMNS": [col]}
            for i, (col, (name, shape)) in enumerate(tiled.items())}


def _copy_subtables(first, out) -> None:
    from casacore import tables as ct

    for name, value in first.getkeywords().items():
        if isinstance(value, str) and value.startswith("Table: "):
            src = ct.table(value[len("Table: "):], ack=False)
            try:
                dst = src.copy(os.path.join(out.name(), name), deep=True)
            finally:
                src.close()
            out.putkeyword(name, dst)
            dst.close()
        else:
            out.putkeyword(name, value)


def _fix_spectral_window(out_path: str, freqs, widths, res, ebw) -> None:
    from casacore import tables as ct

    dd = ct.table(f"{out_path}::DATA_DESCRIPTION", ack=False)
    try:
        row = int(dd.getcell("SPECTRAL_WINDOW_ID", 0))
    finally:
        dd.close()
    spw = ct.table(f"{out_path}::SPECTRAL_WINDOW", readonly=False, ack=False)
    try:
        spw.putcell("CHAN_FREQ", row, freqs)
        spw.putcell("CHAN_WIDTH", row, widths)
        spw.putcell("RESOLUTION", row, res)
        spw.putcell("EFFECTIVE_BW", row, ebw)
        spw.putcell("NUM_CHAN", row, len(freqs))
        spw.putcell("TOTAL_BANDWIDTH", row, float(np.sum(widths)))
        low = freqs[0] - widths[0] / 2
        high = freqs[-1] + widths[-1] / 2
        spw.putcell("REF_FREQUENCY", row, float((low + high) / 2))
    except Exception as exc:
        raise FactorArchiveError(f"cannot update SPECTRAL_WINDOW of {out_path}: "
                                 f"{_one_line(exc)}") from None
    finally:
        spw.close()


def _baselines_per_slot(ms) -> int:
    n = ms.nrows()
    t0 = ms.getcell("TIME", 0)
    for start in range(0, n, _SCAN_ROWS):
        t = ms.getcol("TIME", start, min(_SCAN_ROWS, n - start))
        diff = np.nonzero(t != t0)[0]
        if len(diff):
            return start + int(diff[0])
    return n


def concat_in_frequency(slots: Sequence[str | None], out_path, *, row_block: int = 20000,
                        progress: Callable[[int], None] | None = None) -> None:
    """Write one uncompressed MS at out_path, as DP3 would from these frequency slots.

    ``progress`` gets the number of bytes of each written row block (an increment).
    """
    from casacore import tables as ct

    out_path = Path(out_path)
    if out_path.exists() or out_path.is_symlink():
        raise FactorArchiveError(f"{out_path} already exists")
    if not any(s is not None for s in slots):
        raise BadInput("no real Measurement Set among the slots to concatenate")
    if row_block < 1:
        raise ValueError("row_block must be positive")

    bands: list[_Band | None] = []
    tmp = out_path.parent / f".{out_path.name}.tmp-{os.getpid()}"
    out = None
    try:
        for s in slots:
            bands.append(None if s is None else _open_band(str(s)))
        real = [b for b in bands if b is not None]
        first = real[0]
        ms0 = first.table
        nrow = ms0.nrows()
        ncorr = int(ms0.getcell("DATA", 0).shape[1])
        interval = float(ms0.getcell("INTERVAL", 0))
        for band in real[1:]:
            tab = band.table
            if tab.nrows() != nrow:
                raise BadInput(f"{band.path}: {tab.nrows()} rows, but {first.path} has {nrow}")
            if int(tab.getcell("DATA", 0).shape[1]) != ncorr:
                raise BadInput(f"{band.path}: number of correlations differs from {first.path}")
            if abs(float(tab.getcell("INTERVAL", 0)) - interval) > _TIME_TOL:
                raise BadInput(f"{band.path}: time interval differs from {first.path}")
        freqs, widths, res, ebw = _spectral_layout(bands)
        nchan = len(freqs)

        nbl = _baselines_per_slot(ms0)
        if nrow % nbl:
            raise BadInput(f"{first.path}: irregular Measurement Set ({nrow} rows is not a "
                           f"multiple of {nbl} baselines)")
        bl_a1 = ms0.getcol("ANTENNA1", 0, nbl)
        bl_a2 = ms0.getcol("ANTENNA2", 0, nbl)

        bytes_per_row = nchan * ncorr * 2 * (8 + 1 + 4) + 64
        block = max(1, min(row_block, _BLOCK_BYTES // bytes_per_row))

        desc = _main_desc(ms0, nchan, ncorr)
        out = ct.table(str(tmp), desc, nrow=nrow, dminfo=_dminfo(nchan, ncorr), ack=False)
        out.putinfo(ms0.info())
        _copy_subtables(ms0, out)

        # A gap gets as many channels as the first real band (DP3's FillBands).
        offsets = np.cumsum([0] + [first.nchan if b is None else b.nchan for b in bands])
        prev_time = -np.inf
        for start in range(0, nrow, block):
            n = min(block, nrow - start)
            time = ms0.getcol("TIME", start, n)
            a1 = ms0.getcol("ANTENNA1", start, n)
            a2 = ms0.getcol("ANTENNA2", start, n)
            _check_regular(first.path, start, time, a1, a2, bl_a1, bl_a2, prev_time)
            prev_time = float(time[-1])

            data = np.zeros((n, nchan, ncorr), np.complex64)
            flag = np.ones((n, nchan, ncorr), bool)
            wspec = np.zeros((n, nchan, ncorr), np.float32)
            for i, band in enumerate(bands):
                if band is None:
                    continue
                tab = band.table
                if band is not first:
                    _check_same_rows(band.path, first.path, start, time, a1, a2, tab)
                c0, c1 = offsets[i], offsets[i + 1]
                d = tab.getcol("DATA", start, n)
                f = tab.getcol("FLAG", start, n) if band.has_flag else np.zeros(d.shape, bool)
                f |= tab.getcol("FLAG_ROW", start, n)[:, None, None]
                f |= ~np.isfinite(d)
                f[:] = f.any(axis=2, keepdims=True)
                if band.has_weight_spectrum:
                    w = tab.getcol("WEIGHT_SPECTRUM", start, n)
                else:
                    w = tab.getcol("WEIGHT", start, n)[:, None, :]
                data[:, c0:c1] = d
                flag[:, c0:c1] = f
                wspec[:, c0:c1] = w

            cols = {
                "TIME": time, "TIME_CENTROID": time,
                "INTERVAL": ms0.getcol("INTERVAL", start, n),
                "EXPOSURE": ms0.getcol("EXPOSURE", start, n),
                "ANTENNA1": a1, "ANTENNA2": a2,
                "UVW": ms0.getcol("UVW", start, n),
                "DATA": data, "FLAG": flag, "WEIGHT_SPECTRUM": wspec,
                "FLAG_ROW": flag.all(axis=(1, 2)),
                "WEIGHT": np.ones((n, ncorr), np.float32),
                "SIGMA": np.ones((n, ncorr), np.float32),
            }
            zeros = np.zeros(n, np.int32)
            for name in ("ARRAY_ID", "DATA_DESC_ID", "FEED1", "FEED2", "FIELD_ID",
                         "OBSERVATION_ID", "PROCESSOR_ID", "SCAN_NUMBER", "STATE_ID"):
                cols[name] = zeros
            written = 0
            for name, value in cols.items():
                out.putcol(name, value, start, n)
                written += value.nbytes
            if progress is not None:
                progress(written)

        out.close()
        out = None
        _fix_spectral_window(str(tmp), freqs, widths, res, ebw)
        os.rename(tmp, out_path)
    except BaseException:
        if out is not None:
            out.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for band in bands:
            if band is not None:
                band.table.close()


def _check_regular(path, start, time, a1, a2, bl_a1, bl_a2, prev_time) -> None:
    nbl = len(bl_a1)
    phase = start % nbl
    idx = (phase + np.arange(len(time))) % nbl
    if not (np.array_equal(a1, bl_a1[idx]) and np.array_equal(a2, bl_a2[idx])):
        raise BadInput(f"{path}: baselines are not in the same order in every time slot "
                       f"(near row {start})")
    new_slot = idx[1:] == 0
    step = np.diff(time)
    if np.any(step[~new_slot] != 0) or np.any(step[new_slot] <= 0) \
            or (time[0] != prev_time if phase else time[0] <= prev_time):
        raise BadInput(f"{path}: rows are not grouped in ascending time slots (near row {start})")


def _check_same_rows(path, first_path, start, time, a1, a2, tab) -> None:
    n = len(time)
    t = tab.getcol("TIME", start, n)
    if np.abs(t - time).max() > _TIME_TOL:
        raise BadInput(f"{path}: times differ from {first_path} (near row {start})")
    if not (np.array_equal(tab.getcol("ANTENNA1", start, n), a1)
            and np.array_equal(tab.getcol("ANTENNA2", start, n), a2)):
        raise BadInput(f"{path}: baseline order differs from {first_path} (near row {start})")
