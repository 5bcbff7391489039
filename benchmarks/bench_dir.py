#!/usr/bin/env python
"""Directory-form benchmark (issue 2): archivefactor -r and unarchivefactor against cp -a && sync.

Builds a realistic Factor run (the sample run of ``factor_archive.sample`` with LOFAR-sized chunk
Measurement Sets, 62 stations) holding about ``--size`` bytes of archivable data, then measures:

* archive: ``archivefactor -q -r PARSET OUT`` (the installed console script, as a subprocess; it
  hashes every byte and syncs the file system before writing the manifest) against
  ``cp -aL`` of exactly the same member sources to the same layout, followed by ``sync``;
* restore: ``unarchivefactor -q ARCHIVE OUT && sync`` against ``cp -a ARCHIVE DEST && sync``;
* memory: the peak RSS of ``archivefactor -r`` on a run whose one chunk MS is ``--mem-size`` bytes.

Both sides of each comparison run the same number of times, alternately, each with its destination
removed beforehand, after a ``sync`` and after waiting for the rest of the machine to go idle; the
best and the median wall times of each side are compared. The source data stays in the page cache,
so this is the CPU-bound, hardest case for a tool that hashes; ``--drop-caches`` (root only) drops
the page cache before every trial instead. See benchmarks/README.md.

Run from the repository root:  .venv/bin/python benchmarks/bench_dir.py --size 2G
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, cp_script, human, log, parse_size, prepare, timed, tree_bytes

RATIO_TARGET = 1.25
MEMORY_TARGET = 300 * 10 ** 6
NANT = 62                      # a Dutch LOFAR HBA observation: 62 stations, 1953 baselines


# -- building runs --------------------------------------------------------------------------------

def _bytes_per_time(tmp: Path) -> tuple[int, int]:
    """(bytes per time slot, fixed bytes) of a chunk MS with NANT stations and the sample's band."""
    from factor_archive.ms.synth import write_ms
    from factor_archive.sample import BANDS, CHAN_WIDTH, INTERVAL, START, chan_freqs

    sizes = []
    for n in (1, 3):
        ms = tmp / f"probe{n}.ms"
        write_ms(ms, start_time=START, ntimes=n, interval=INTERVAL, chan_freqs=chan_freqs(BANDS[0][1]),
                 chan_width=CHAN_WIDTH, nant=NANT, data_columns=("DATA", "SUBTRACTED_DATA_ALL"))
        sizes.append(tree_bytes(ms))
        shutil.rmtree(ms)
    per_time = (sizes[1] - sizes[0]) // 2
    return per_time, sizes[0] - per_time


def build_spread_run(root: Path, size: int) -> Path:
    """The sample run with every chunk scaled up so that the -r archive holds about ``size`` bytes.

    write_sample_run writes 5 chunk MSs of T time slots plus two input MSs of 3T (one of which is a
    chunk via a symlink and is archived): 8T slots are archived, 11T written.
    """
    from factor_archive.sample import MIN_DYSCO_TIMES, write_sample_run

    per_time, _fixed = _bytes_per_time(root.parent)
    ntimes = max(MIN_DYSCO_TIMES, round(size / (8 * per_time)))
    log(f"building run at {root}: {NANT} stations, {ntimes} time slots per chunk "
        f"(~{human(per_time * ntimes)} per chunk MS)")
    return write_sample_run(root, ntimes_per_chunk=ntimes, nant=NANT)


def build_single_run(root: Path, size: int) -> tuple[Path, Path]:
    """The small sample run with one chunk MS replaced by one of about ``size`` bytes."""
    from factor_archive.ms.synth import write_ms
    from factor_archive.sample import (
        BANDS,
        CHAN_WIDTH,
        INTERVAL,
        START,
        band_name,
        chan_freqs,
        root_name,
        write_sample_run,
    )

    per_time, fixed = _bytes_per_time(root.parent)
    ntimes = max(1, round((size - fixed) / per_time))
    parset = write_sample_run(root)
    sb, centre = BANDS[0]
    chunk = root / "wdir" / "chunks" / band_name(centre) / f"{root_name(sb)}_chunk0.ms"
    shutil.rmtree(chunk)
    log(f"building one chunk MS of {ntimes} time slots x {NANT} stations at {chunk}")
    write_ms(chunk, start_time=START, ntimes=ntimes, interval=INTERVAL, chan_freqs=chan_freqs(centre),
             chan_width=CHAN_WIDTH, nant=NANT, seed=1, data_columns=("DATA", "SUBTRACTED_DATA_ALL"))
    return parset, chunk


# -- measuring ------------------------------------------------------------------------------------

def compare(name: str, ours: list[str], theirs: list[str], dests: list[Path], repeat: int, cold: bool,
            ours_sync: bool, idle: bool) -> dict:
    ours_t, theirs_t = [], []
    for i in range(repeat):
        for label, argv, bucket, sync_after in (("cp", theirs, theirs_t, False),
                                                ("tool", ours, ours_t, ours_sync)):
            prepare(dests, cold, idle)
            trial = timed(argv, then_sync=sync_after)
            bucket.append(trial)
            log(f"{name} #{i + 1} {label}: {trial.seconds:.2f} s, CPU {trial.cpu:.2f} s, max RSS "
                f"{human(trial.maxrss)}, other processes' CPU meanwhile {trial.others:.2f} s")
    best_ours = min(t.seconds for t in ours_t)
    best_theirs = min(t.seconds for t in theirs_t)
    med_ours = statistics.median(t.seconds for t in ours_t)
    med_theirs = statistics.median(t.seconds for t in theirs_t)
    return {"name": name, "ours": ours_t, "theirs": theirs_t, "best_ours": best_ours,
            "best_theirs": best_theirs, "ratio": best_ours / best_theirs,
            "med_ours": med_ours, "med_theirs": med_theirs, "med_ratio": med_ours / med_theirs,
            "rss": max(t.maxrss for t in ours_t),
            "cpu_ours": min(t.cpu for t in ours_t), "cpu_theirs": min(t.cpu for t in theirs_t)}


# -- main -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="2G", help="archivable bytes in the run for the timings (default 2G)")
    p.add_argument("--mem-size", default=None,
                   help="size of the single chunk MS for the memory measurement (default: --size)")
    p.add_argument("--repeat", type=int, default=2, help="trials per side; the best is kept (default 2)")
    p.add_argument("--workdir", default=None,
                   help="where to build runs and write archives (default: a new directory in /tmp); "
                        "runs already built there are reused")
    p.add_argument("--keep", action="store_true",
                   help="keep what was built (otherwise removed; of an existing --workdir, only the "
                        "benchmark's own entries are)")
    p.add_argument("--drop-caches", action="store_true", help="drop the page cache before every trial (root)")
    p.add_argument("--no-wait-idle", action="store_true",
                   help="do not wait (up to 2 min) for the rest of the machine to go idle before each trial")
    p.add_argument("--skip-archive", action="store_true")
    p.add_argument("--skip-restore", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args(argv)
    size = parse_size(args.size)
    mem_size = parse_size(args.mem_size) if args.mem_size else size
    command = shlex.join([sys.executable, *sys.argv])
    idle = not args.no_wait_idle
    load_before = os.getloadavg()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fa-bench-", dir="/tmp")).resolve()
    ours_only = args.workdir is not None and work.exists()  # then remove only what we put there
    work.mkdir(parents=True, exist_ok=True)
    need = 6 * size + (0 if args.skip_memory else 2 * mem_size)
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(f"{work}: {human(free)} free, need about {human(need)}")
    archivefactor, unarchivefactor = str(BIN / "archivefactor"), str(BIN / "unarchivefactor")
    results = []
    notes = []
    try:
        # Timings --------------------------------------------------------------------------------
        if not (args.skip_archive and args.skip_restore):
            run = work / "run"
            parset = run / "factor.parset"
            if not parset.exists():
                t0 = time.perf_counter()
                build_spread_run(run, size)
                log(f"built in {time.perf_counter() - t0:.0f} s")
            archive, cp_dest = work / "archive", work / "cp-archive"
            script, ncp, nbytes = cp_script(parset, cp_dest)
            (work / "cp-members.sh").write_text(script)
            notes.append(f"run: {run} ({human(nbytes)} in the -r archive's members)")
            notes.append(f"cp side of 'archive': {work / 'cp-members.sh'} ({ncp} cp -aL invocations of "
                         f"exactly the members' sources, then sync)")
            ours = [archivefactor, "-q", "-r", str(parset), str(archive)]
            if not args.skip_archive:
                results.append(compare("archive", ours, ["sh", str(work / "cp-members.sh")],
                                       [archive, cp_dest], args.repeat, args.drop_caches, False, idle))
                results[-1]["cmd"] = (shlex.join(ours), f"sh {work / 'cp-members.sh'}")
            elif not (archive / "manifest.json").exists():
                prepare([archive], False)
                timed(ours)
            if not args.skip_restore:
                if not (archive / "manifest.json").exists():
                    prepare([archive], False)
                    timed(ours)
                restored, cp_restored = work / "restored", work / "cp-restored"
                ours_r = [unarchivefactor, "-q", str(archive), str(restored)]
                theirs_r = ["sh", "-c", f"cp -a {shlex.quote(str(archive))} {shlex.quote(str(cp_restored))} && sync"]
                results.append(compare("restore", ours_r, theirs_r, [restored, cp_restored],
                                       args.repeat, args.drop_caches, True, idle))
                results[-1]["cmd"] = (shlex.join(ours_r) + " && sync", shlex.join(theirs_r[2:]))
                prepare([restored, cp_restored], False)
            prepare([cp_dest], False)

        # Memory ---------------------------------------------------------------------------------
        mem = None
        if not args.skip_memory:
            mrun = work / "run-1ms"
            mparset = mrun / "factor.parset"
            if not mparset.exists():
                t0 = time.perf_counter()
                build_single_run(mrun, mem_size)
                log(f"built in {time.perf_counter() - t0:.0f} s")
            from factor_archive.sample import BANDS, band_name, root_name
            big = mrun / "wdir" / "chunks" / band_name(BANDS[0][1]) / f"{root_name(BANDS[0][0])}_chunk0.ms"
            big_files = sorted(((p.stat().st_size, p.name) for p in big.iterdir() if p.is_file()), reverse=True)
            marchive = work / "archive-1ms"
            ours_m = [archivefactor, "-q", "-r", str(mparset), str(marchive)]
            prepare([marchive], args.drop_caches, idle)
            trial = timed(ours_m)
            mem = {"trial": trial, "cmd": shlex.join(ours_m), "ms": tree_bytes(big),
                   "largest": big_files[0], "total": tree_bytes(marchive)}
            prepare([marchive], False)
    finally:
        if not args.keep:
            if ours_only:
                for name in ("run", "run-1ms", "archive", "archive-1ms", "cp-archive", "restored",
                             "cp-restored", "cp-members.sh"):
                    target = work / name
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target, ignore_errors=True)
                    elif target.exists() or target.is_symlink():
                        target.unlink()
            else:
                shutil.rmtree(work, ignore_errors=True)

    # Report -------------------------------------------------------------------------------------
    sys.stderr.flush()
    print("# factor-archive directory-form benchmark")
    print(f"command: {command}")
    print(f"machine: {os.cpu_count()} cores, {human(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))} RAM, "
          f"load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after; work dir {work}"
          f"{' (removed)' if not args.keep else ''}")
    print(f"conditions: page cache {'dropped before every trial' if args.drop_caches else 'warm'}; sync "
          f"{'and wait for an idle machine ' if idle else ''}before every trial; sides alternate; best of "
          f"{args.repeat}")
    for n in notes:
        print(n)
    if results:
        print()
        print("| operation | factor-archive best (median) | cp -a && sync best (median) | ratio best (median) "
              "| target | CPU tool / cp, least | tool max RSS |")
        print("|---|---:|---:|---:|---|---:|---:|")
        for r in results:
            ok = "met" if r["ratio"] <= RATIO_TARGET else "MISSED"
            print(f"| {r['name']} | {r['best_ours']:.2f} s ({r['med_ours']:.2f} s) | {r['best_theirs']:.2f} s "
                  f"({r['med_theirs']:.2f} s) | {r['ratio']:.2f} ({r['med_ratio']:.2f}) | <= {RATIO_TARGET}: {ok} "
                  f"(best) | {r['cpu_ours']:.2f} / {r['cpu_theirs']:.2f} s | {human(r['rss'])} |")
        print()
        for r in results:
            print(f"{r['name']} trials, wall s (other processes' CPU s meanwhile): tool "
                  + " ".join(f"{t.seconds:.2f} ({t.others:.1f})" for t in r["ours"]) + "; cp "
                  + " ".join(f"{t.seconds:.2f} ({t.others:.1f})" for t in r["theirs"]))
            print(f"  tool: {r['cmd'][0]}")
            print(f"  cp:   {r['cmd'][1]}")
    if mem is not None:
        rss = mem["trial"].maxrss
        print()
        print(f"memory: archivefactor -r of a run with one {human(mem['ms'])} chunk MS (largest file "
              f"{mem['largest'][1]}, {human(mem['largest'][0])}; archive {human(mem['total'])}): "
              f"max RSS {human(rss)}, {mem['trial'].seconds:.2f} s "
              f"(target < {MEMORY_TARGET // 10 ** 6} MB: {'met' if rss < MEMORY_TARGET else 'MISSED'})")
        print(f"  tool: {mem['cmd']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
