#!/usr/bin/env python
"""Measure the table codecs' CPU cost per uncompressed byte, to calibrate the speed model of
codec_choice (``CodecSpec.seconds_per_gb`` in src/factor_archive/ms/casacore_table/codecs.py).

A column of ``speed_min_bytes`` or more chooses its codec by size and by a *fixed* CPU cost per
byte of each codec, not by timing the trials (a timed choice changed with the machine's load, and
with it the store). This script is where those fixed costs come from: it reads the first inner
chunk (as the planner does: ``chunk_bytes`` of rows) and one from the middle of the columns of a
DP3 Measurement Set, and for every candidate codec of each column (the fast ones included) runs
encode + decode through the same ``_ChunkCodec`` the archive uses, on this thread, timed with
``time.thread_time``, best of ``--runs``. It prints, per column and codec, the stored size (as a
fraction of the raw bytes), the seconds per GB of raw bytes, and the cost the choice would give
(model seconds + stored bytes / worth) with the constants as they are now, and the codec that
cost makes cheapest; then, per codec, the median seconds per GB over the samples of the columns
that choose by speed (for the byte codecs, DATA's bytes seen as uint8; a codec no such column
tries, over all its samples): rounded, what ``seconds_per_gb`` holds.

Run from the repository root on an otherwise idle machine (default MS: the first chunk MS of the
run bench_run.py builds; ``bench_run.py --build-only`` makes it):

    PYTHONPATH=src .venv/bin/python benchmarks/codec_speeds.py
    PYTHONPATH=src .venv/bin/python benchmarks/codec_speeds.py --ms some.ms --runs 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line

DEFAULT_MS = Path("/tmp/fa-bench-run/run/wdir/chunks/Band_120.21MHz/L123456_SB000_uv.dppp.pre-cal_chunk0.ms")
COLUMNS = ["DATA", "WEIGHT_SPECTRUM", "FLAG", "UVW", "TIME", "ANTENNA1", "FLAG_ROW", "WEIGHT"]


def encode_decode_seconds(label: str, sample: np.ndarray, runs: int) -> tuple[int, float] | None:
    """(stored bytes, best encode + decode thread CPU seconds) of one chunk, None if the chain
    does not give it back bit for bit."""
    from factor_archive.ms.casacore_table.codecs import _ChunkCodec

    chain = _ChunkCodec.from_label(label, sample.dtype, sample.shape)
    back = np.empty_like(sample)
    best = float("inf")
    size = 0
    for _ in range(runs):
        t0 = time.thread_time()
        data, crc = chain.encode(sample)
        stored = np.empty(len(data) + 4, np.uint8)
        stored[:-4] = np.frombuffer(data, np.uint8)
        stored[-4:] = np.frombuffer(crc.to_bytes(4, "little"), np.uint8)
        chain.decode(stored, back)
        best = min(best, time.thread_time() - t0)
        size = len(data)
    if back.tobytes() != sample.tobytes():
        return None
    return size, best


def column_samples(ms: Path, name: str, settings) -> tuple[list[np.ndarray], bool]:
    """The first inner chunk of a column and one from the middle, as the planner lays them out,
    and whether the column is big enough to choose its codec by speed."""
    import casacore.tables as ct

    from factor_archive.ms.casacore_table.shards import _rows_layout

    with ct.table(str(ms), ack=False, readonly=True) as tb:
        if name not in tb.colnames():
            return [], False
        nrows = tb.nrows()
        row_bytes = np.asarray(tb.getcol(name, 0, 1)).nbytes
        chunk, _shard = _rows_layout(nrows, row_bytes, None, settings)
        starts = sorted({0, (nrows // 2 // chunk) * chunk})
        samples = [np.ascontiguousarray(tb.getcol(name, s, chunk)) for s in starts if nrows - s >= chunk]
        return samples, nrows * row_bytes >= settings.speed_min_bytes


def main(argv: list[str] | None = None) -> int:
    from factor_archive.ms.casacore_table.codecs import CODECS, candidates, model_seconds
    from factor_archive.ms.casacore_table.pipeline import DEFAULT_SETTINGS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ms", type=Path, default=DEFAULT_MS, help=f"a DP3 Measurement Set (default {DEFAULT_MS})")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per codec and sample; the best is kept")
    ap.add_argument("--columns", default=",".join(COLUMNS))
    args = ap.parse_args(argv)
    if not args.ms.is_dir():
        print(f"codec_speeds: {args.ms}: no such Measurement Set (build it: bench_run.py --build-only)",
              file=sys.stderr)
        return 2
    settings = DEFAULT_SETTINGS
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(machine_line())
    print(f"MS: {args.ms}; load average at start: {os.getloadavg()[0]:.2f}")
    big_samples: dict[str, list[float]] = {label: [] for label in CODECS}  # s/GB on columns choosing by speed
    byte_samples: dict[str, list[float]] = {label: [] for label in CODECS}
    other_samples: dict[str, list[float]] = {label: [] for label in CODECS}
    print("(* a column of speed_min_bytes or more: it chooses by speed, and its samples make the medians)")
    print(f"{'column, type':26} {'sample':>9} {'codec':24} {'stored':>7} {'s/GB':>7} {'model cost':>10}")
    for name in args.columns.split(","):
        samples, big = column_samples(args.ms, name, settings)
        views = [(s, f"{name} {s.dtype}{' *' if big else ''}", big_samples if big else other_samples)
                 for s in samples]
        if name == "DATA":  # the byte codecs (zstd1 is tried on big uint8 columns only) on noisy bytes
            views += [(s.reshape(-1).view(np.uint8), f"{name} as uint8", byte_samples) for s in samples]
        for sample, tag, into in views:
            layout = "scalar" if sample.ndim == 1 else "fixed"
            costs = {}
            for label in candidates(sample.dtype, layout, fast=True):
                got = encode_decode_seconds(label, sample, args.runs)
                if got is None:
                    print(f"{tag:26} {sample.nbytes:>9} {label:24} not exact")
                    continue
                size, secs = got
                per_gb = secs / sample.nbytes * 1e9
                into[label].append(per_gb)
                if not CODECS[label].numcodecs:
                    costs[label] = model_seconds(label, sample.nbytes) + size / settings.worth
                print(f"{tag:26} {sample.nbytes:>9} {label:24} {size / sample.nbytes:7.4f} {per_gb:7.2f} "
                      f"{costs.get(label, float('nan')) * 1e3:8.2f}ms")
            print(f"{tag:26} cheapest specification codec by the model: {min(costs, key=costs.get)}")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    print("per codec: median s/GB over the samples of the columns marked * (else the uint8 view, else all)")
    print(f"{'codec':24} {'median s/GB':>11} {'min':>7} {'max':>7} {'model':>7}")
    for label in CODECS:
        values = big_samples[label] or byte_samples[label] or other_samples[label]
        if values:
            print(f"{label:24} {statistics.median(values):11.2f} {min(values):7.2f} {max(values):7.2f} "
                  f"{CODECS[label].seconds_per_gb:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
