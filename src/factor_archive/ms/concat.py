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
* layout: the first real input's descriptions of the required MS columns, in its order;
  DATA, FLAG and WEIGHT_SPECTRUM redefined for the output's channels and tiled like DP3
  (1 MiB DATA tiles, UVW keeps the input's tiles); other columns dropped; StandardStMan
  for everything not tiled;
* SPECTRAL_WINDOW: channels concatenated, NUM_CHAN, TOTAL_BANDWIDTH = sum of widths,
  EFFECTIVE_BW/RESOLUTION concatenated (gap channels get the fill width); fixed-shape
  per-channel columns (DP3 writes them so) are redefined with the new shape; other
  subtables are copied from the first real input.
* REF_FREQUENCY rule (DP3 itself differs with and without a gap): always the centre of
  the whole output band, (low edge of first channel + high edge of last channel) / 2.

Not reproduced: LOFAR_FULL_RES_FLAG and DP3's new HISTORY row.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from factor_archive.errors import BadInput, FactorArchiveError

__all__ = ["TimeGroup", "group_by_time", "concat_in_frequency"]

_BLOCK_BYTES = 256 * 2**20  # cap on one block's arrays, whatever row_block says
_SCAN_ROWS = 1_000_000  # rows per read when scanning a scalar column
_TIME_TOL = 1e-3  # seconds; DP3 compares times with casacore::near

# An open ``casacore.tables.table``: python-casacore ships no type information.
Table = Any


@dataclass
class TimeGroup:
    key: int
    slots: list[str | None]  # frequency-ordered; None = gap (Factor's dummy.ms)


def _open(path: str | os.PathLike, **kw: Any) -> Table:
    from casacore import tables as ct

    try:
        return ct.table(str(path), ack=False, **kw)
    except Exception as exc:  # casacore raises RuntimeError with multi-line text
        raise BadInput(f"cannot read Measurement Set {path}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


def _spw_id(ms: Table) -> int:
    """The SPECTRAL_WINDOW row of the data (that of the first row's DATA_DESC_ID)."""
    from casacore import tables as ct

    ddid = int(ms.getcell("DATA_DESC_ID", 0)) if ms.nrows() else 0
    dd = ct.table(ms.getkeyword("DATA_DESCRIPTION"), ack=False)
    try:
        return int(dd.getcell("SPECTRAL_WINDOW_ID", ddid))
    finally:
        dd.close()


def _spw_row(ms: Table) -> tuple[Table, int]:
    from casacore import tables as ct

    spw_id = _spw_id(ms)
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
    table: Table
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
    first = real[0]
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


_TILED = {"UVW": "TiledUVW", "DATA": "TiledData", "FLAG": "TiledFlag",
          "WEIGHT_SPECTRUM": "TiledWeightSpectrum"}
# DP3's descriptions of the columns it writes anew.
_NEW_COLUMNS = {"DATA": ("complex", "visibility data"), "FLAG": ("boolean", "The data flags"),
                "WEIGHT_SPECTRUM": ("float", "weight per corr/chan")}


def _main_desc(first, nchan: int, ncorr: int) -> dict:
    """The output's column descriptions, taken from the first input's as DP3 takes them.

    DP3 keeps the MS's required columns with their descriptions (comments, units, measure
    frames) and order, drops every other column (extra data columns, LOFAR_FULL_RES_FLAG),
    and redefines DATA, FLAG and WEIGHT_SPECTRUM with the output's channel count; everything
    that is not tiled is stored with StandardStMan.
    """
    from casacore import tables as ct

    required = ct.required_ms_desc("MAIN")
    source = first.getdesc()
    wanted = [c for c in required if not c.startswith("_")] + list(_NEW_COLUMNS)
    names = [c for c in first.colnames() if c in wanted]
    names += [c for c in wanted if c not in names]
    desc = {}
    for name in names:
        col = dict(source[name]) if name in source else dict(required.get(name, {}))
        if name in _NEW_COLUMNS:
            vtype, comment = _NEW_COLUMNS[name]
            col = {**ct.makearrcoldesc(name, None, ndim=2, valuetype=vtype)["desc"],
                   "comment": comment, "keywords": col.get("keywords", {})}
            col.update(shape=np.array([nchan, ncorr]), ndim=2, option=4)
        elif name in ("WEIGHT", "SIGMA"):
            col.update(shape=np.array([ncorr]), ndim=1, option=4)
        # python-casacore gives an empty string array as [], which would come back as Int[0].
        col["keywords"] = {k: np.array([], dtype=str) if isinstance(v, list) and not v else v
                           for k, v in col.get("keywords", {}).items()}
        col["dataManagerType"] = "TiledColumnStMan" if name in _TILED else "StandardStMan"
        col["dataManagerGroup"] = _TILED.get(name, "StandardStMan")
        desc[name] = col
    return desc


def _uvw_tile(first) -> list[int]:
    """DP3 keeps the input's UVW tiles when UVW is tiled, else uses 8192 rows per tile."""
    try:
        tile = first.getdminfo("UVW").get("SPEC", {}).get("DEFAULTTILESHAPE")
    except RuntimeError:
        tile = None
    if tile is not None and len(tile) == 2 and int(tile[0]) == 3:
        return [3, int(tile[1])]
    return [3, 8192]


def _dminfo(nchan: int, ncorr: int, uvw_tile: list[int]) -> dict:
    rows = max(1, 131072 // (nchan * ncorr))  # 1 MiB DATA tiles, as DP3's default msout.tilesize
    tiles = {"UVW": uvw_tile, "DATA": [ncorr, nchan, rows], "FLAG": [ncorr, nchan, rows * 8],
             "WEIGHT_SPECTRUM": [ncorr, nchan, rows]}
    return {f"*{i + 1}": {"TYPE": "TiledColumnStMan", "NAME": _TILED[col],
                          "SPEC": {"DEFAULTTILESHAPE": np.array(shape, np.int32)},
                          "COLUMNS": [col]}
            for i, (col, shape) in enumerate(tiles.items())}


_CHANNEL_COLUMNS = ("CHAN_FREQ", "CHAN_WIDTH", "RESOLUTION", "EFFECTIVE_BW")


def _copy_subtables(first, out, spectral: tuple[np.ndarray, ...]) -> None:
    """Copy the first input's subtables and keywords; SPECTRAL_WINDOW gets the output's channels.

    Other subtables are copied unchanged, as DP3 copies them (none of the MS subtables DP3
    writes has a per-channel shape; an optional SYSCAL's spectra keep the first band's channels).
    """
    for name, value in first.getkeywords().items():
        if not (isinstance(value, str) and value.startswith("Table: ")):
            with _casacore_errors(f"cannot write keyword {name} of", out.name()):
                out.putkeyword(name, value)
            continue
        src_path = value[len("Table: "):]
        dst_path = os.path.join(out.name(), name)
        src = _open(src_path)
        try:
            with _casacore_errors(f"cannot copy {src_path} to", dst_path):
                if name == "SPECTRAL_WINDOW":
                    dst = _write_spectral_window(src, dst_path, first, *spectral)
                else:
                    dst = src.copy(dst_path, deep=True)
                try:
                    out.putkeyword(name, dst)
                finally:
                    dst.close()
        finally:
            src.close()


def _write_spectral_window(src, dst_path: str, ms, freqs, widths, res, ebw):
    """SPECTRAL_WINDOW with the output's channels in the row the data refers to.

    The table is made anew from the input's description and data managers, with fixed-shape
    per-channel columns redefined to the output's channel count (as DP3 does; putting a longer
    array into such a column fails). A per-channel column that other rows need with another
    shape becomes variable-shaped.
    """
    from casacore import tables as ct

    row = _spw_id(ms)
    nchan = len(freqs)
    new = dict(zip(_CHANNEL_COLUMNS, (freqs, widths, res, ebw)))
    desc = src.getdesc()
    for col in _CHANNEL_COLUMNS:
        cd = desc.get(col)
        if cd is None or "shape" not in cd:
            continue
        others = [r for r in range(src.nrows()) if r != row]
        if any(not src.iscelldefined(col, r) or src.getcell(col, r).shape != (nchan,)
               for r in others):
            del cd["shape"]
            cd["option"] = int(cd.get("option", 0)) & ~4  # no longer FixedShape
            cd["ndim"] = 1
        else:
            cd["shape"] = np.array([nchan])
    dst = ct.table(dst_path, desc, nrow=src.nrows(), dminfo=src.getdminfo(), ack=False)
    try:
        dst.putinfo(src.info())
        dst.putkeywords(src.getkeywords())
        for col in src.colnames():
            for r in range(src.nrows()):
                if col in new and r == row:
                    dst.putcell(col, r, new[col])
                elif src.iscelldefined(col, r):
                    dst.putcell(col, r, src.getcell(col, r))
        dst.putcell("NUM_CHAN", row, nchan)
        dst.putcell("TOTAL_BANDWIDTH", row, float(np.sum(widths)))
        low = freqs[0] - widths[0] / 2
        high = freqs[-1] + widths[-1] / 2
        dst.putcell("REF_FREQUENCY", row, float((low + high) / 2))
    except BaseException:
        dst.close()
        raise
    return dst


@contextmanager
def _casacore_errors(what: str, path, error: type[FactorArchiveError] = FactorArchiveError):
    """Turn a casacore exception (a multi-line RuntimeError) into one line naming the file."""
    try:
        yield
    except RuntimeError as exc:
        raise error(f"{what} {path}: {_one_line(exc)}") from None


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
    A casacore failure is a one-line error naming the input (BadInput) or the output.
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
        with _casacore_errors("cannot read Measurement Set", first.path, BadInput):
            nrow = ms0.nrows()
            ncorr = int(ms0.getcell("DATA", 0).shape[1])
            interval = float(ms0.getcell("INTERVAL", 0))
            nbl = _baselines_per_slot(ms0)
            bl_a1 = ms0.getcol("ANTENNA1", 0, nbl)
            bl_a2 = ms0.getcol("ANTENNA2", 0, nbl)
        for band in real[1:]:
            tab = band.table
            with _casacore_errors("cannot read Measurement Set", band.path, BadInput):
                rows, corr = tab.nrows(), int(tab.getcell("DATA", 0).shape[1])
                band_interval = float(tab.getcell("INTERVAL", 0))
            if rows != nrow:
                raise BadInput(f"{band.path}: {rows} rows, but {first.path} has {nrow}")
            if corr != ncorr:
                raise BadInput(f"{band.path}: number of correlations differs from {first.path}")
            if abs(band_interval - interval) > _TIME_TOL:
                raise BadInput(f"{band.path}: time interval differs from {first.path}")
        spectral = _spectral_layout(bands)
        nchan = len(spectral[0])
        if nrow % nbl:
            raise BadInput(f"{first.path}: irregular Measurement Set ({nrow} rows is not a "
                           f"multiple of {nbl} baselines)")

        bytes_per_row = nchan * ncorr * 2 * (8 + 1 + 4) + 64
        block = max(1, min(row_block, _BLOCK_BYTES // bytes_per_row))

        with _casacore_errors("cannot write", out_path):
            desc = _main_desc(ms0, nchan, ncorr)
            out = ct.table(str(tmp), desc, nrow=nrow, ack=False,
                           dminfo=_dminfo(nchan, ncorr, _uvw_tile(ms0)))
            info = ms0.info()
            out.putinfo({**info, "readme": info.get("readme", "").rstrip("\n")})
        _copy_subtables(ms0, out, spectral)

        # A gap gets as many channels as the first real band (DP3's FillBands).
        offsets = np.cumsum([0] + [first.nchan if b is None else b.nchan for b in bands])
        prev_time = -np.inf
        for start in range(0, nrow, block):
            n = min(block, nrow - start)
            with _casacore_errors("cannot read Measurement Set", first.path, BadInput):
                time = ms0.getcol("TIME", start, n)
                a1 = ms0.getcol("ANTENNA1", start, n)
                a2 = ms0.getcol("ANTENNA2", start, n)
                cols = {"TIME": time, "TIME_CENTROID": time,
                        "INTERVAL": ms0.getcol("INTERVAL", start, n),
                        "EXPOSURE": ms0.getcol("EXPOSURE", start, n),
                        "ANTENNA1": a1, "ANTENNA2": a2, "UVW": ms0.getcol("UVW", start, n)}
            _check_regular(first.path, start, time, a1, a2, bl_a1, bl_a2, prev_time)
            prev_time = float(time[-1])

            data = np.zeros((n, nchan, ncorr), np.complex64)
            flag = np.ones((n, nchan, ncorr), bool)
            wspec = np.zeros((n, nchan, ncorr), np.float32)
            for i, slot in enumerate(bands):
                if slot is None:
                    continue
                if slot is not first:
                    _check_same_rows(slot.path, first.path, start, time, a1, a2, slot.table)
                c0, c1 = offsets[i], offsets[i + 1]
                data[:, c0:c1], flag[:, c0:c1], wspec[:, c0:c1] = _read_band_block(slot, start, n)

            cols.update({
                "DATA": data, "FLAG": flag, "WEIGHT_SPECTRUM": wspec,
                "FLAG_ROW": flag.all(axis=(1, 2)),
                "WEIGHT": np.ones((n, ncorr), np.float32),
                "SIGMA": np.ones((n, ncorr), np.float32),
            })
            zeros = np.zeros(n, np.int32)
            for name in ("ARRAY_ID", "DATA_DESC_ID", "FEED1", "FEED2", "FIELD_ID",
                         "OBSERVATION_ID", "PROCESSOR_ID", "SCAN_NUMBER", "STATE_ID"):
                cols[name] = zeros
            written = 0
            with _casacore_errors("cannot write", out_path):
                for name, value in cols.items():
                    out.putcol(name, value, start, n)
                    written += value.nbytes
            if progress is not None:
                progress(written)

        with _casacore_errors("cannot write", out_path):
            out.close()
        out = None
        os.rename(tmp, out_path)
    except BaseException:
        if out is not None:
            try:
                out.close()
            except RuntimeError:
                pass  # already failing; the partial output is removed below
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for opened in bands:
            if opened is not None:
                opened.table.close()


def _read_band_block(band: _Band, start: int, n: int):
    """DATA, FLAG and WEIGHT_SPECTRUM of n rows of one band, flagged the way DP3 reads them."""
    tab = band.table
    with _casacore_errors("cannot read Measurement Set", band.path, BadInput):
        d = tab.getcol("DATA", start, n)
        f = tab.getcol("FLAG", start, n) if band.has_flag else np.zeros(d.shape, bool)
        f |= tab.getcol("FLAG_ROW", start, n)[:, None, None]
        if band.has_weight_spectrum:
            w = tab.getcol("WEIGHT_SPECTRUM", start, n)
        else:
            w = tab.getcol("WEIGHT", start, n)[:, None, :]
    f |= ~np.isfinite(d)
    f[:] = f.any(axis=2, keepdims=True)
    return d, f, w


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
    with _casacore_errors("cannot read Measurement Set", path, BadInput):
        t = tab.getcol("TIME", start, n)
        b1, b2 = tab.getcol("ANTENNA1", start, n), tab.getcol("ANTENNA2", start, n)
    if np.abs(t - time).max() > _TIME_TOL:
        raise BadInput(f"{path}: times differ from {first_path} (near row {start})")
    if not (np.array_equal(b1, a1) and np.array_equal(b2, a2)):
        raise BadInput(f"{path}: baseline order differs from {first_path} (near row {start})")
