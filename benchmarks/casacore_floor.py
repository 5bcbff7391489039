#!/usr/bin/env python
"""How long casacore alone takes to write a run's chunk MSs: the floor under any restore that
writes them through casacore, as the zarr restore does (issue 10).

Every main table of the run's chunk MSs (wdir/chunks/*/*.ms, symlinks followed) is read into
memory first, untimed; then ``--processes`` processes (default 2, one per core here) each make
their share of the tables as a zarr restore makes them (same description and data managers, the
StandardStMan cache raised as ``bucket_cache.raise_caches`` does), put every column whole with one
``putcol`` and close, and ``sync`` follows. Subtables are left out (a few kB each). Printed: the
wall time from the moment all processes start writing to the end of the sync, their CPU seconds,
and the reference ``tar xf && sync`` time given with ``--reference`` as a ratio.

    .venv/bin/python benchmarks/casacore_floor.py /tmp/fa-bench-run/run --reference 2.68

Nothing of factor_archive runs in the timed part but the cache-size rule; the numbers say what is
left for reading, decompressing and checking within a target.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def chunk_tables(run: Path) -> list[Path]:
    return sorted(p for p in (run / "wdir" / "chunks").glob("*/*.ms") if (p / "table.dat").is_file())


def load(path: Path) -> tuple[dict, dict, int, dict]:
    from casacore import tables as ct

    from factor_archive.ms.casacore_table import bucket_cache

    tb = ct.table(str(path), ack=False)
    try:
        desc, dminfo, nrows = tb.getdesc(), tb.getdminfo(), tb.nrows()
        values = {c: tb.getcol(c) for c in tb.colnames() if tb.iscelldefined(c, 0)}
    finally:
        tb.close()
    bucket_cache.raise_caches(dminfo, {c: v.nbytes for c, v in values.items()})
    return desc, dminfo, nrows, values


def write(tables: list[Path], out: Path, barrier, results) -> None:
    from casacore import tables as ct

    loaded = [load(p) for p in tables]
    barrier.wait()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for i, (desc, dminfo, nrows, values) in enumerate(loaded):
        cols = [ct.makecoldesc(c, desc[c]) for c in desc if not c.startswith("_")]
        tb = ct.table(str(out / f"{os.getpid()}-{i}.ms"), ct.maketabdesc(cols), nrow=nrows, dminfo=dminfo,
                      ack=False)
        for c, v in values.items():
            tb.putcol(c, v)
        tb.close()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    results.put((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run's directory (holding wdir/chunks)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--reference", type=float, help="tar xf && sync seconds, for the ratio")
    ap.add_argument("--out", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args()
    tables = chunk_tables(args.run)
    if not tables:
        print(f"{args.run}: no chunk MSs under wdir/chunks", file=sys.stderr)
        return 2
    out = Path(tempfile.mkdtemp(prefix="casacore-floor-", dir=args.out))
    try:
        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(args.processes + 1)
        results = ctx.Queue()
        shares = [tables[i::args.processes] for i in range(args.processes)]
        procs = [ctx.Process(target=write, args=(share, out, barrier, results)) for share in shares]
        for p in procs:
            p.start()
        barrier.wait()
        t0 = time.perf_counter()
        cpu = sum(results.get() for _ in procs)
        for p in procs:
            p.join()
        subprocess.run(["sync"], check=True)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    ratio = f", {wall / args.reference:.2f}x the reference {args.reference:.2f} s" if args.reference else ""
    print(f"{len(tables)} chunk MSs, {args.processes} processes: casacore writes + sync {wall:.2f} s wall{ratio}; "
          f"{cpu:.2f} CPU s in the writing processes ({cpu / len(tables):.2f} per table)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
