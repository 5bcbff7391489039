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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATIO_TARGET = 1.25
MEMORY_TARGET = 300 * 10 ** 6
NANT = 62                      # a Dutch LOFAR HBA observation: 62 stations, 1953 baselines
BIN = Path(sys.executable).parent


# -- helpers --------------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in units else ""
    return int(float(t[:len(t) - len(unit)]) * units[unit])


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
    for dirpath, _dirs, files in os.walk(path, followlinks=True):
        total += sum(os.stat(os.path.join(dirpath, f)).st_size for f in files)
    return total


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


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
    from factor_archive.sample import write_sample_run

    per_time, _fixed = _bytes_per_time(root.parent)
    ntimes = max(1, round(size / (8 * per_time)))
    log(f"building run at {root}: {NANT} stations, {ntimes} time slots per chunk "
        f"(~{human(per_time * ntimes)} per chunk MS)")
    return write_sample_run(root, ntimes_per_chunk=ntimes, nant=NANT)


def build_single_run(root: Path, size: int) -> tuple[Path, Path]:
    """The small sample run with one chunk MS replaced by one of about ``size`` bytes."""
    from factor_archive.ms.synth import write_ms
    from factor_archive.sample import BANDS, CHAN_WIDTH, INTERVAL, START, chan_freqs, root_name, band_name
    from factor_archive.sample import write_sample_run

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

class Trial:
    def __init__(self, seconds: float, maxrss: int, cpu: float, others: float):
        self.seconds = seconds
        self.maxrss = maxrss     # bytes; of the command and the descendants it waited for
        self.cpu = cpu           # user + system CPU seconds of the command and its descendants
        self.others = others     # CPU seconds used meanwhile by everything else on the machine


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_idle(limit: float = 120.0) -> None:
    """Wait (up to ``limit`` s) until the rest of the machine uses under 10% of one core."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        b0 = busy_seconds()
        time.sleep(1.0)
        if busy_seconds() - b0 < 0.1:
            return
    log("machine still busy; measuring anyway")


def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def prepare(dests: list[Path], cold: bool, idle: bool = False) -> None:
    for d in dests:
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)
        elif d.exists() or d.is_symlink():
            d.unlink()
    subprocess.run(["sync"], check=True)
    if cold:
        drop_caches()
    if idle:
        wait_idle()


# Runs the command in a grandchild and reports the grandchild's own max RSS. The kernel carries a
# process's RSS high-water mark across exec, so a child forked straight from this (large) Python
# process would report at least our size; the small launcher forks it from a fresh interpreter.
_LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(fd)
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
os.write(fd, f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}".encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed(argv: list[str], *, then_sync: bool = False) -> Trial:
    """Wall time of ``argv`` (plus a ``sync`` when asked) and the command's max RSS (wait4)."""
    r, w = os.pipe()
    try:
        b0 = busy_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(w), *argv],
                                stdin=subprocess.DEVNULL, pass_fds=(w,))
        os.close(w)
        w = -1
        code = proc.wait()
        if code != 0:
            raise SystemExit(f"failed ({code}): {shlex.join(argv)}")
        if then_sync:
            subprocess.run(["sync"], check=True)
        seconds = time.perf_counter() - t0
        busy = busy_seconds() - b0
        maxrss_kib, cpu = os.read(r, 128).split()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    return Trial(seconds, int(maxrss_kib) * 1024, float(cpu), max(0.0, busy - float(cpu)))


def cp_script(parset: Path, dest: Path) -> tuple[str, int, int]:
    """A shell script that copies exactly the sources of the -r archive's members with ``cp -aL``.

    Members whose archive name equals the source's name share one cp per destination directory
    (as a person would type it); renamed ones (a chunk that was a symlink to an input MS) get their
    own. Returns (script, number of cp invocations, bytes).
    """
    from factor_archive.archive import plan_archive
    from factor_archive.plan import Options

    plan = plan_archive(str(parset), Options(resumable=True, form="dir"))
    groups: dict[str, list[str]] = {}
    single: list[tuple[str, str]] = []
    nbytes = 0
    for item in plan.items:
        if item.source is None:
            raise SystemExit("the benchmark run has generated members; not comparable with cp")
        nbytes += item.size
        target = dest / item.member.path
        if target.name == item.source.name:
            groups.setdefault(str(target.parent), []).append(str(item.source))
        else:
            single.append((str(item.source), str(target)))
    dirs = sorted({str(dest / Path(i.member.path).parent) for i in plan.items})
    lines = ["set -e", "mkdir -p " + shlex.join(dirs)]
    for d, srcs in groups.items():
        lines.append(shlex.join(["cp", "-aL", *srcs, d + "/"]))
    for src, dst in single:
        lines.append(shlex.join(["cp", "-aL", src, dst]))
    lines.append("sync")
    return "\n".join(lines) + "\n", len(groups) + len(single), nbytes


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
