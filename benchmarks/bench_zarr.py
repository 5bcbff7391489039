#!/usr/bin/env python
"""Zarr-form benchmark (issue 4): one DP3-written Measurement Set of at least 1 GB.

Input. ``factor_archive.ms.synth.write_ms`` lays out a LOFAR-like MS (62 stations, 1953 baselines
with autocorrelations, 64 channels of 48.8 kHz at 120 MHz, 4 correlations, 4 s integrations);
its random columns are then replaced, row block by row block, with realistic ones by
``common.realistic_columns`` (a modelled sky of point sources times station gains plus noise,
RFI-like flags, weights that follow the flags; see its docstring).

``DP3 msin=<that> steps=[] msout=big.ms`` then writes the MS that is measured, so the storage
managers and tile layout are DP3's own.

Measured (each side after ``sync``; page cache warm, as both sides read the same cached input):

* compressed size: the zarr store (``du``) vs ``tar cf - big.ms | zstd -3 -T0`` and ``zstd -19 -T0``;
* archive time: writing the store (ZarrWriter: the MS as one table member, manifest, rename)
  vs the ``tar | zstd -3 -T0`` pipeline;
* restore time: ZarrReader.extract of the member (decode_table, checksum-verified) vs ``tar xf``
  of the uncompressed tar, each followed by ``sync``;
* peak memory: maximum resident set of the archiving and the restoring process (rusage of each
  child, from ``os.wait4``).

Targets: smaller than zstd -19; archive <= 2x zstd -3; restore <= 1.5x tar xf; peak < 500 MB.

Run from the repository root (the input is kept in --workdir and reused by later runs):

    /work/venv/bin/python benchmarks/bench_zarr.py --workdir /tmp/bench-zarr

``--skip-zstd19`` skips the slow zstd -19 run (an earlier run's result in --workdir is used for
the size comparison); ``--repeat N`` reports the median of N timings of each side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import human, realistic_columns, rewrite_with_dp3, timed, tree_bytes

NANT = 62
NCHAN = 64
CHAN_WIDTH = 48828.125
FREQ0 = 120e6
INTERVAL = 4.0
START = 4.87e9           # MJD seconds, 2013
MEMORY_TARGET = 500 << 20


def run_child(argv: list[str] | str, *, shell: bool = False) -> tuple[float, int]:
    """Run one command; return (wall seconds, peak RSS in bytes of its largest process)."""
    trial = timed(["sh", "-c", argv] if shell else argv, stdout="-")
    return trial.seconds, trial.maxrss


def sync() -> None:
    os.sync()


# -- input ---------------------------------------------------------------------------------------

def make_input(workdir: Path, ntimes: int) -> Path:
    """big.ms in workdir (reused if present): synth layout, realistic columns, written by DP3."""
    big = workdir / "big.ms"
    if (big / "table.dat").exists() and (workdir / "big.ms.ok").exists():
        return big
    import numpy as np

    from factor_archive.ms.synth import write_ms

    src = workdir / "synth.ms"
    for p in (src, big):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.perf_counter()
    write_ms(src, start_time=START, ntimes=ntimes, interval=INTERVAL,
             chan_freqs=FREQ0 + np.arange(NCHAN) * CHAN_WIDTH, chan_width=CHAN_WIDTH, nant=NANT,
             name="L123456_SB000_uv")
    realistic_columns(src)
    print(f"synthetic input written in {time.perf_counter() - t0:.0f} s", flush=True)
    rewrite_with_dp3(src, big)
    shutil.rmtree(src)
    (workdir / "big.ms.ok").write_text("")
    return big


# -- children ------------------------------------------------------------------------------------

def child_archive(ms: str, store: str) -> None:
    from factor_archive.containers.zarr import ZarrWriter
    from factor_archive.manifest import Manifest, Member

    writer = ZarrWriter(store, clobber=True)
    try:
        member = Member(path=f"chunks/{Path(ms).name}", source=ms, category="chunks", kind="table",
                        size=0, mode=0, mtime=0.0, sha256="", restore_path=f"chunks/{Path(ms).name}")
        member = writer.write(member, Path(ms), lambda n: None)
        writer.close(Manifest(container="", run={}, options={}, members=[member]))
    except BaseException:
        writer.abort()
        raise


def child_restore(store: str, dest: str) -> None:
    from factor_archive.containers.zarr import ZarrReader

    reader = ZarrReader(store)
    try:
        reader.extract(reader.manifest.members, lambda m: Path(dest), lambda n: None)
    finally:
        reader.close()


# -- main ----------------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/bench-zarr")
    p.add_argument("--ntimes", type=int, default=180, help="time slots (1953 rows each); 180 -> ~1.1 GB")
    p.add_argument("--skip-zstd19", action="store_true",
                   help="do not run zstd -19 (slow); the size of an earlier run's big.tar.zst19 in "
                        "--workdir is used if there is one")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="time archive, zstd -3, restore and tar xf N times each and report the "
                        "median (and the largest peak memory): a shared machine is noisy")
    p.add_argument("--child-archive", nargs=2, metavar=("MS", "STORE"), help=argparse.SUPPRESS)
    p.add_argument("--child-restore", nargs=2, metavar=("STORE", "DEST"), help=argparse.SUPPRESS)
    p.add_argument("--child-input", nargs=2, metavar=("WORKDIR", "NTIMES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_input:
        make_input(Path(args.child_input[0]), int(args.child_input[1]))
        return 0
    if args.child_archive:
        child_archive(*args.child_archive)
        return 0
    if args.child_restore:
        child_restore(*args.child_restore)
        return 0

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    # Everything heavy runs in children: a child's peak RSS (ru_maxrss) starts from the memory of
    # the process it was forked from, so this parent stays small (no numpy, no casacore).
    subprocess.run(me + ["--child-input", str(work), str(args.ntimes)], check=True)
    big = work / "big.ms"
    raw = tree_bytes(big)
    print(f"input: {big} ({human(raw)}, written by DP3), {os.cpu_count()} cores", flush=True)

    repeat = max(1, args.repeat)

    def median_run(prepare, argv, **kw) -> tuple[float, int]:
        """Median wall time and largest peak RSS of ``repeat`` runs, each after prepare()+sync."""
        times, peaks = [], []
        for _ in range(repeat):
            prepare()
            sync()
            t, rss = run_child(argv, **kw)
            times.append(t)
            peaks.append(rss)
        if repeat > 1:
            print(f"  runs: {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
        return statistics.median(times), max(peaks)

    store = work / "big.zarr"
    t_arch, rss_arch = median_run(lambda: shutil.rmtree(store, ignore_errors=True),
                                  me + ["--child-archive", str(big), str(store)])
    sync()
    t_arch_sync = t_arch  # the writer syncs the file system itself before and after the manifest
    zsize = tree_bytes(store)

    tar = work / "big.tar"
    t_z3, _ = median_run(lambda: None, f"tar cf - -C '{big.parent}' '{big.name}' | zstd -3 -T0 -q -f -o "
                         f"'{work}/big.tar.zst3' && sync", shell=True)
    z3 = (work / "big.tar.zst3").stat().st_size
    z19_file = work / "big.tar.zst19"
    if args.skip_zstd19:
        t_z19, z19 = float("nan"), None
        if z19_file.exists() and z19_file.stat().st_mtime >= (work / "big.ms.ok").stat().st_mtime:
            z19 = z19_file.stat().st_size  # from an earlier run on this same input
            print(f"zstd -19 size from {z19_file} (earlier run)")
    else:
        t_z19, _ = run_child(f"tar cf - -C '{big.parent}' '{big.name}' | zstd -19 -T0 -q -f -o "
                             f"'{work}/big.tar.zst19' && sync", shell=True)
        z19 = (work / "big.tar.zst19").stat().st_size
    run_child(["tar", "cf", str(tar), "-C", str(big.parent), big.name])

    dest = work / "restored" / "big.ms"

    def fresh_dest() -> None:
        shutil.rmtree(dest.parent, ignore_errors=True)
        dest.parent.mkdir()

    # The restore child, then sync (the restored table's data reaches the disk, as with tar).
    t_rest, rss_rest = median_run(fresh_dest, f"'{me[0]}' '{me[1]}' --child-restore '{store}' '{dest}' && sync",
                                  shell=True)
    tx = work / "tarx"

    def fresh_tx() -> None:
        shutil.rmtree(tx, ignore_errors=True)
        tx.mkdir()

    t_tarx, _ = median_run(fresh_tx, f"tar xf '{tar}' -C '{tx}' && sync", shell=True)

    # The restored table equals the input, column by column (content checksum).
    check = subprocess.run(me[:1] + ["-c", "import sys; from factor_archive.ms.casacore_table import "
                                     "table_content_sha256 as h; print(h(sys.argv[1]) == h(sys.argv[2]))",
                                     str(big), str(dest)], check=True, capture_output=True, text=True)
    same = check.stdout.strip() == "True"

    def line(label, value, ref, target, ok):
        print(f"  {label:34} {value:>14}  vs {ref:>14}   target {target:12} {'PASS' if ok else 'FAIL'}")

    print()
    print(f"MS: {human(raw)} ({raw} bytes)")
    line("compressed size (zarr vs zstd -19)", human(zsize), human(z19) if z19 else "not run",
         "< zstd -19", z19 is not None and zsize < z19)
    print(f"  {'':34} {'':>14}     zstd -3: {human(z3)}  (ratios: zarr {raw / zsize:.2f}, "
          f"zstd-3 {raw / z3:.2f}" + (f", zstd-19 {raw / z19:.2f})" if z19 else ")"))
    line("archive time (zarr vs zstd -3)", f"{t_arch_sync:.1f} s", f"{t_z3:.1f} s", "<= 2x",
         t_arch_sync <= 2 * t_z3)
    print(f"  {'':34} {'':>14}     zstd -19: {t_z19:.1f} s; zarr throughput {raw / t_arch / 1e6:.0f} MB/s")
    line("restore time (zarr vs tar xf)", f"{t_rest:.1f} s", f"{t_tarx:.1f} s", "<= 1.5x",
         t_rest <= 1.5 * t_tarx)
    line("peak memory, archive", human(rss_arch), "", "< 500 MB", rss_arch < MEMORY_TARGET)
    line("peak memory, restore", human(rss_rest), "", "< 500 MB", rss_rest < MEMORY_TARGET)
    print(f"  restored table content equals the input: {same}")
    for p_ in (tar, work / "tarx", work / "restored"):
        shutil.rmtree(p_, ignore_errors=True) if p_.is_dir() else p_.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
