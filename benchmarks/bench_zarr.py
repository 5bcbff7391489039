#!/usr/bin/env python
"""Zarr-form benchmark (issue 4): one DP3-written Measurement Set of at least 1 GB.

Input. ``factor_archive.ms.synth.write_ms`` lays out a LOFAR-like MS (62 stations, 1953 baselines
with autocorrelations, 64 channels of 48.8 kHz at 120 MHz, 4 correlations, 4 s integrations);
its random columns are then replaced, row block by row block, with realistic ones:

* DATA: a sky of 8 point sources (0.5-15 Jy, spectral index -0.8 +- 0.3, within 2 degrees of the
  phase centre) predicted exactly from the MS's UVW and channel frequencies, times smooth
  per-station complex gains (amplitude 1 +- 10 %, phases drifting over minutes), XX/YY with 2 %
  Stokes Q, 0.5 % XY/YX leakage, plus complex Gaussian noise of 1 Jy per component (the source
  sum is ~40 Jy, so the noise is small but present in every sample, as in real data);
* FLAG: RFI-like: two edge channels on each side always, a few narrow-band RFI channels that come
  and go over time, occasional broad-band time slots, one dead station, autocorrelations; all
  correlations of a sample flagged together (as DP3 does); about 12 % in all;
* WEIGHT_SPECTRUM: per baseline a constant (the product of two station sensitivities) times the
  fraction of unflagged raw samples averaged into the channel (mostly 1, sometimes 7/8 or 6/8).

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
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

NANT = 62
NCHAN = 64
CHAN_WIDTH = 48828.125
FREQ0 = 120e6
INTERVAL = 4.0
START = 4.87e9           # MJD seconds, 2013
MEMORY_TARGET = 500 << 20
BIN = Path(sys.executable).parent


# -- helpers --------------------------------------------------------------------------------------

def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def run_child(argv: list[str], *, shell: bool = False, env: dict | None = None) -> tuple[float, int]:
    """Run one command; return (wall seconds, peak RSS in bytes of it and its descendants' max)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, shell=shell, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {argv}")
    return wall, usage.ru_maxrss * 1024


def sync() -> None:
    os.sync()


def casacore_env() -> dict:
    import casacore

    root = os.path.dirname(casacore.__file__)
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "AIPSPATH": root,
            "CASACORE_DATADIR": os.path.join(root, "data")}


# -- input ---------------------------------------------------------------------------------------

def realistic_columns(ms: Path, seed: int = 7) -> None:
    """Replace DATA, FLAG, FLAG_ROW, WEIGHT_SPECTRUM, WEIGHT and SIGMA with realistic values."""
    import numpy as np
    from casacore import tables as ct

    rng = np.random.default_rng(seed)
    c = 299792458.0
    freqs = FREQ0 + np.arange(NCHAN) * CHAN_WIDTH
    nsrc = 8
    flux = rng.uniform(0.5, 15.0, nsrc)
    alpha = rng.normal(-0.8, 0.3, nsrc)
    l = rng.uniform(-0.035, 0.035, nsrc)
    m = rng.uniform(-0.035, 0.035, nsrc)
    n1 = np.sqrt(1 - l * l - m * m) - 1
    spec = flux[:, None] * (freqs[None, :] / freqs[0]) ** alpha[:, None]          # (src, chan)
    station_amp = rng.uniform(0.9, 1.1, NANT)
    station_rate = rng.normal(0, 2 * math.pi / 1800, NANT)                         # rad/s
    station_phase0 = rng.uniform(-math.pi, math.pi, NANT)
    sens = rng.uniform(0.8, 1.2, NANT).astype(np.float32)
    dead = 17
    rfi_channels = rng.choice(np.arange(2, NCHAN - 2), 5, replace=False)

    t = ct.table(str(ms), readonly=False, ack=False)
    try:
        nrow = t.nrows()
        nbl = NANT * (NANT + 1) // 2
        step = nbl * 8
        for start in range(0, nrow, step):
            n = min(step, nrow - start)
            uvw = t.getcol("UVW", start, n)
            a1 = t.getcol("ANTENNA1", start, n)
            a2 = t.getcol("ANTENNA2", start, n)
            time_ = t.getcol("TIME", start, n) - START
            # Exact point-source prediction: exp(-2 pi i (ul + vm + w(n-1)) f / c).
            geo = (uvw[:, 0:1] * l + uvw[:, 1:2] * m + uvw[:, 2:3] * n1)           # (row, src) metres
            phase = -2 * math.pi * geo[:, :, None] * (freqs / c)[None, None, :]     # (row, src, chan)
            vis = np.einsum("rsc,sc->rc", np.exp(1j * phase), spec)                 # Stokes I
            g1 = station_amp[a1] * np.exp(1j * (station_phase0[a1] + station_rate[a1] * time_))
            g2 = station_amp[a2] * np.exp(1j * (station_phase0[a2] + station_rate[a2] * time_))
            vis *= (g1 * np.conj(g2))[:, None]
            data = np.empty((n, NCHAN, 4), np.complex64)
            data[:, :, 0] = 0.5 * vis * 1.02
            data[:, :, 3] = 0.5 * vis * 0.98
            data[:, :, 1] = 0.005 * vis * np.exp(0.3j)
            data[:, :, 2] = 0.005 * vis * np.exp(-0.3j)
            noise = rng.standard_normal((n, NCHAN, 4, 2), dtype=np.float32)
            data += (noise[..., 0] + 1j * noise[..., 1]).astype(np.complex64)

            flag = np.zeros((n, NCHAN), bool)
            flag[:, :2] = flag[:, -2:] = True
            slot = (start // nbl) + np.arange(n) // nbl
            for k, ch in enumerate(rfi_channels):
                on = ((slot // (7 + 3 * k)) % 3) == 0
                flag[on, ch] = True
            burst = rng.random(int(slot.max()) + 1) < 0.02
            flag[burst[slot]] = True
            flag[(a1 == dead) | (a2 == dead)] = True
            flag[a1 == a2] = True
            flag3 = np.repeat(flag[:, :, None], 4, axis=2)

            frac = np.ones((n, NCHAN), np.float32)
            part = rng.random((n, NCHAN)) < 0.04
            frac[part] = rng.choice(np.array([0.875, 0.75], np.float32), int(part.sum()))
            w = (sens[a1] * sens[a2])[:, None] * frac * np.float32(8.0)
            wspec = np.repeat(w[:, :, None], 4, axis=2).astype(np.float32)
            weight = wspec.mean(axis=1).astype(np.float32)

            t.putcol("DATA", data, start, n)
            t.putcol("FLAG", flag3, start, n)
            t.putcol("FLAG_ROW", flag.all(axis=1), start, n)
            t.putcol("WEIGHT_SPECTRUM", wspec, start, n)
            t.putcol("WEIGHT", weight, start, n)
            t.putcol("SIGMA", (1.0 / np.sqrt(weight)).astype(np.float32), start, n)
    finally:
        t.close()


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
    cmd = [str(BIN / "DP3.py"), f"msin={src}", "steps=[]", f"msout={big}"]
    subprocess.run(cmd, check=True, env=casacore_env(), stdout=subprocess.DEVNULL)
    shutil.rmtree(src)
    (workdir / "big.ms.ok").write_text("")
    return big


# -- children ------------------------------------------------------------------------------------

def child_archive(ms: str, store: str) -> None:
    from factor_archive.containers.zarr_store import ZarrWriter
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
    from factor_archive.containers.zarr_store import ZarrReader

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
    check = subprocess.run(me[:1] + ["-c", "import sys; from factor_archive.ms.table_codec import "
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
