#!/usr/bin/env python
"""Tar-form benchmark (issue 3): the indexed tar against GNU tar on exactly the same files.

Builds a realistic Factor run of about ``--size`` archivable bytes with the builder of
``bench_dir.py`` (the sample run with LOFAR-sized chunk Measurement Sets, 62 stations), then
measures, each side after a ``sync`` (and, unless --no-wait-idle, once the machine is idle):

1. archive: ``archivefactor -q -r --format tar PARSET run.tar`` (hashes every byte, fsyncs the
   archive and its directory) against ``tar -c -h -f same.tar -C farm <top dirs> && sync``.
   ``farm`` is a directory of symbolic links laid out exactly like the archive (one link per
   member, to the very source the plan archives: the working directory's archived parts, the
   chunk that is a symlink to an input MS, the out-of-run sky models, parset, directions file);
   ``-h`` makes GNU tar store what the links point at, as we do. Same files, same names, same bytes.
2. restore: ``unarchivefactor -q run.tar out && sync`` (checks every sha256, then rewrites the
   paths in the state pickles, the mapfiles and the parset) against
   ``mkdir out2 && tar -x -f same.tar -C out2 && sync``.
3. listing: ``factor-archive ls run.tar`` against ``tar -t -f same.tar`` (and, for reference,
   ``tar -t -f run.tar``: GNU tar reads our archive too).
4. one small member (an image): ``TarReader(run.tar).extract([member], dest_for)`` (the Python API;
   there is no CLI for one member) against ``tar -x -f same.tar -C dest MEMBER``.

Bytes read are the child's ``rchar`` (every byte returned by read(2) and friends, page cache or
not) and ``read_bytes`` (bytes the kernel fetched from the block device), taken from the
launcher's /proc/self/io before and after it reaps the child: Linux adds a reaped child's I/O
counters to its parent's. A Python command's rchar includes loading the interpreter's and the
package's modules, so for ``factor-archive ls`` and the API extraction the script also measures
in-process, with every module already imported, how many bytes the call itself reads: that is
what it reads of the archive. The "cold" rows evict only the two archives from the page cache
(posix_fadvise DONTNEED, no root, nothing else on the machine is touched) before each trial.

Archive and restore alternate the two sides ``--repeat`` times; listing and one member
``--repeat-small`` times; the best (smallest) wall time of each side is compared. ``--block-kib``
runs our side with ``factor_archive.io.copy.BLOCK`` overridden, to try a copy block size
without editing src/. Results and their reading: benchmarks/README.md, "Tar form".

Run from the repository root:  .venv/bin/python benchmarks/bench_tar.py --size 2G
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dir import build_spread_run
from common import BIN, PY, Trial, code_state, human, log, make_farm, parse_size, prepare, timed, wait_idle

ARCHIVE_TARGET = 1.2
RESTORE_TARGET = None          # no target was set for restore; reported only
LIST_BYTES_TARGET = 1 << 20    # "well under 1 MB"
LIST_TIME_TARGET = 1.0         # "well under a second"


# -- measuring ------------------------------------------------------------------------------------

def evict(paths: list[Path]) -> None:
    """Drop these files' pages from the page cache (and only theirs)."""
    for p in paths:
        if not p.exists():
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# Probes run the factor-archive side in a fresh interpreter, import everything first, then
# measure only the call: the bytes it reads are archive bytes. Output: one JSON line on fd 3.
_PROBE_COMMON = """
import json, os, sys, time
def io():
    with open("/proc/self/io", "rb", buffering=0) as f:
        text = f.read().decode()
    return dict((k, int(v)) for k, v in (line.split(":") for line in text.splitlines()))
import factor_archive.cli, factor_archive.containers.registry, factor_archive.containers.tar
import factor_archive.manifest, factor_archive.io.copy, factor_archive.progress
from factor_archive.containers.tar import TarReader
"""

PROBE_LS = _PROBE_COMMON + """
mods = set(sys.modules)
a = io(); t = time.perf_counter()
code = factor_archive.cli.main(["ls", sys.argv[1]])
t = time.perf_counter() - t; b = io()
sys.stdout.flush()
os.write(int(sys.argv[2]), json.dumps({"seconds": t, "rchar": b["rchar"] - a["rchar"],
    "read_bytes": b["read_bytes"] - a["read_bytes"], "syscr": b["syscr"] - a["syscr"],
    "new_modules": sorted(set(sys.modules) - mods)}).encode())
sys.exit(code)
"""

PROBE_ONE = _PROBE_COMMON + """
from pathlib import Path
archive, name, dest, fd = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
mods = set(sys.modules)
a = io(); t = time.perf_counter()
with TarReader(archive) as reader:
    member = next(m for m in reader.manifest.members if m.path == name)
    reader.extract([member], lambda m: dest / m.path, lambda n: None)
t = time.perf_counter() - t; b = io()
os.write(fd, json.dumps({"seconds": t, "rchar": b["rchar"] - a["rchar"],
    "read_bytes": b["read_bytes"] - a["read_bytes"], "syscr": b["syscr"] - a["syscr"],
    "new_modules": sorted(set(sys.modules) - mods)}).encode())
"""


def probed(code: str, args: list[str]) -> Trial:
    """Run a probe as a timed command; its in-process numbers come back through a pipe."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        argv = [PY, "-c", code, *[a.replace("{FD}", str(w)) for a in args]]
        try:
            trial = timed(argv, pass_fds=(w,))
        except SystemExit:
            raise SystemExit(f"probe failed: {shlex.join(argv[:1] + ['-c', '...'] + argv[3:])}") from None
        os.close(w)
        w = -1
        trial.inner = json.loads(os.read(r, 1 << 16))
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    return trial


# -- the GNU tar side -------------------------------------------------------------------------

# --block-kib: run archivefactor / unarchivefactor with io.copy.BLOCK (the read/write block
# of every copy) overridden, to try a block size without editing src/.
_BLOCK_WRAPPER = """
import sys
import factor_archive.io.copy as copy_engine
copy_engine.BLOCK = int(sys.argv[1]) << 10
from factor_archive import cli
main = cli.archivefactor_main if sys.argv[2] == "archivefactor" else cli.unarchivefactor_main
sys.exit(main(sys.argv[3:]))
"""


def tool(name: str, block_kib: int | None) -> list[str]:
    if block_kib is None:
        return [str(BIN / name)]
    return [PY, "-c", _BLOCK_WRAPPER, str(block_kib), name]


def shown(argv: list[str], block_kib: int | None) -> str:
    """The command as printed: the --block-kib wrapper is shown as a note, not its source."""
    if block_kib is not None and argv[:2] == [PY, "-c"]:
        return f"[io.copy.BLOCK = {block_kib} KiB] " + shlex.join([str(BIN / argv[4]), *argv[5:]])
    return shlex.join(argv)


def tar_contents(path: Path) -> tuple[int, int]:
    """(regular files, data bytes) of a tar, by walking its headers."""
    files = size = 0
    with tarfile.open(path, "r:") as tf:
        for info in tf:
            if info.isfile() and not info.name.endswith((".factor-archive-index", "manifest.json",
                                                         "manifest-sha256.txt")):
                files += 1
                size += info.size
    return files, size


# -- comparisons ------------------------------------------------------------------------------

SMALL_IDLE = 15.0      # longest wait for an idle machine before a sub-second trial


def warm(paths: list[Path]) -> None:
    """Read these files once so that they are in the page cache."""
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass


def alternate(name: str, sides: list[tuple[str, object]], repeat: int, dests: list[Path],
              idle: bool, before=None, idle_limit: float = 120.0) -> dict[str, list[Trial]]:
    """Run each side ``repeat`` times, alternately; ``object`` is a callable returning a Trial."""
    out: dict[str, list[Trial]] = {label: [] for label, _ in sides}
    for i in range(repeat):
        for label, run in sides:
            prepare(dests, False)
            if before is not None:
                before()
            if idle:
                wait_idle(idle_limit)
            trial = run()
            out[label].append(trial)
            extra = f", inner {trial.inner['seconds']:.4f} s / {trial.inner['rchar']} B" if trial.inner else ""
            log(f"{name} #{i + 1} {label}: {trial.seconds:.3f} s, CPU {trial.cpu:.2f} s, "
                f"rchar {trial.rchar}, read_bytes {trial.read_bytes}, max RSS {human(trial.maxrss)}{extra}")
    prepare(dests, False)
    return out


def best(trials: list[Trial]) -> Trial:
    return min(trials, key=lambda t: t.seconds)


def fmt_bytes(n: int) -> str:
    return f"{n} B" if n < 10240 else human(n)


# -- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="2G", help="archivable bytes in the run (default 2G)")
    p.add_argument("--repeat", type=int, default=2,
                   help="trials per side for archive and restore; the best is kept (default 2)")
    p.add_argument("--repeat-small", type=int, default=5,
                   help="trials per side for listing and one member (default 5)")
    p.add_argument("--workdir", default=None,
                   help="where to build the run and write archives (default: a new directory in /tmp); "
                        "a run already built there is reused")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--no-wait-idle", action="store_true",
                   help="do not wait (up to 2 min) for the rest of the machine to go idle before each trial")
    p.add_argument("--skip-archive", action="store_true",
                   help="time nothing for archive (the archives are still made once if missing)")
    p.add_argument("--skip-restore", action="store_true")
    p.add_argument("--skip-small", action="store_true", help="skip the listing and one-member measurements")
    p.add_argument("--block-kib", type=int, default=None,
                   help="run archivefactor/unarchivefactor with factor_archive.io.copy.BLOCK set to "
                        "this many KiB (an experiment; default: the code as it is)")
    args = p.parse_args(argv)
    size = parse_size(args.size)
    command = shlex.join([sys.executable, *sys.argv])
    idle = not args.no_wait_idle
    load_before = os.getloadavg()
    code = code_state()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fa-bench-tar-", dir="/tmp")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    parset = run / "factor.parset"
    built = parset.exists()
    need = (0 if built else int(1.4 * size)) + 4 * size + (64 << 20)
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(f"{work}: {human(free)} free, need about {human(need)}")
    fa = str(BIN / "factor-archive")
    ours_tar, same_tar = work / "run.tar", work / "same.tar"
    farm = work / "farm"
    rows: list[dict] = []
    notes: list[str] = []
    try:
        if not built:
            t0 = time.perf_counter()
            build_spread_run(run, size)
            log(f"built in {time.perf_counter() - t0:.0f} s")
        tops, nmembers, nbytes, farm_notes = make_farm(parset, farm)
        notes += farm_notes
        notes.append(f"run: {run}; the -r archive holds {nmembers} members with data, {human(nbytes)} "
                     f"({nbytes} B)")
        ours_a = [*tool("archivefactor", args.block_kib), "-q", "-r", "--format", "tar", str(parset),
                  str(ours_tar)]
        tar_c = shlex.join(["tar", "-c", "-h", "-f", str(same_tar), "-C", str(farm), *tops])
        theirs_a = ["sh", "-c", f"{tar_c} && sync"]

        # 1. archive ----------------------------------------------------------------------------
        if not args.skip_archive:
            res = alternate("archive", [("gnu tar", lambda: timed(theirs_a)),
                                        ("factor-archive", lambda: timed(ours_a))],
                            args.repeat, [ours_tar, same_tar], idle)
            rows.append({"op": "archive", "ours": res["factor-archive"], "theirs": res["gnu tar"],
                         "cmd": (shown(ours_a, args.block_kib), f"{tar_c} && sync"), "target": ARCHIVE_TARGET})
        # leave one archive of each kind for what follows
        for path, cmd in ((ours_tar, ours_a), (same_tar, theirs_a)):
            if not path.exists():
                timed(cmd)
        n_ours, b_ours = tar_contents(ours_tar)
        n_same, b_same = tar_contents(same_tar)
        notes.append(f"run.tar: {human(ours_tar.stat().st_size)}, {n_ours} data files, {b_ours} data bytes; "
                     f"same.tar: {human(same_tar.stat().st_size)}, {n_same} data files, {b_same} data bytes"
                     + ("" if (n_ours, b_ours) == (n_same, b_same) else "  ** CONTENTS DIFFER **"))

        # 2. restore ----------------------------------------------------------------------------
        if not args.skip_restore:
            out, out2 = work / "out", work / "out2"
            ours_r = [*tool("unarchivefactor", args.block_kib), "-q", str(ours_tar), str(out)]
            out2_q = shlex.quote(str(out2))
            tar_x = f"mkdir {out2_q} && tar -x -f {shlex.quote(str(same_tar))} -C {out2_q}"
            theirs_r = ["sh", "-c", f"{tar_x} && sync"]
            res = alternate("restore", [("gnu tar", lambda: timed(theirs_r)),
                                        ("factor-archive", lambda: timed(ours_r, then_sync=True))],
                            args.repeat, [out, out2], idle)
            rows.append({"op": "restore", "ours": res["factor-archive"], "theirs": res["gnu tar"],
                         "cmd": (shown(ours_r, args.block_kib) + " && sync", f"{tar_x} && sync"),
                         "target": RESTORE_TARGET})

        # 3. listing and 4. one small member, warm then with the archives evicted -----------------
        if not args.skip_small:
            from factor_archive.containers.tar import TarReader
            with TarReader(str(ours_tar)) as reader:
                members = reader.manifest.members
            image = next(m for m in members if m.category == "images" and m.kind == "file")
            position = [m.path for m in members].index(image.path)
            ls_out = work / "ls.txt"
            ours_l = [fa, "ls", str(ours_tar)]
            theirs_l = ["tar", "-t", "-f", str(same_tar)]
            theirs_l2 = ["tar", "-t", "-f", str(ours_tar)]
            one, one2 = work / "one", work / "one2"
            theirs_1 = ["tar", "-x", "-f", str(same_tar), "-C", str(one2), image.path]
            theirs_1b = ["tar", "-x", "-f", str(ours_tar), "-C", str(one2), image.path]

            def gnu_one(argv: list[str]) -> Trial:
                one2.mkdir()
                return timed(argv)

            for cold in (False, True):
                tag = " (archives evicted from cache)" if cold else ""
                if cold:
                    before = lambda: evict([ours_tar, same_tar])  # noqa: E731
                else:
                    before = None
                    warm([ours_tar, same_tar])
                res = alternate(f"ls{' cold' if cold else ''}",
                                [("gnu tar", lambda: timed(theirs_l)),
                                 ("gnu tar (our archive)", lambda: timed(theirs_l2)),
                                 ("factor-archive", lambda: timed(ours_l, stdout=str(ls_out))),
                                 ("factor-archive probe", lambda: probed(PROBE_LS, [str(ours_tar), "{FD}"]))],
                                args.repeat_small, [], idle, before, SMALL_IDLE)
                rows.append({"op": "list" + tag,
                             "ours": res["factor-archive"], "theirs": res["gnu tar"],
                             "probe": res["factor-archive probe"], "extra": res["gnu tar (our archive)"],
                             "cmd": (shlex.join(ours_l), shlex.join(theirs_l)),
                             "extra_cmd": shlex.join(theirs_l2)})
                res = alternate(f"one member{' cold' if cold else ''}",
                                [("gnu tar", lambda: gnu_one(theirs_1)),
                                 ("gnu tar (our archive)", lambda: gnu_one(theirs_1b)),
                                 ("factor-archive probe",
                                  lambda: probed(PROBE_ONE, [str(ours_tar), image.path, str(one), "{FD}"]))],
                                args.repeat_small, [one, one2], idle, before, SMALL_IDLE)
                rows.append({"op": "one member" + tag,
                             "ours": res["factor-archive probe"], "theirs": res["gnu tar"],
                             "probe": res["factor-archive probe"], "extra": res["gnu tar (our archive)"],
                             "cmd": (f"TarReader({str(ours_tar)!r}).extract([member], lambda m: dest / m.path)",
                                     shlex.join(["mkdir", str(one2)]) + " && " + shlex.join(theirs_1)),
                             "extra_cmd": shlex.join(theirs_1b)})
            listed = ls_out.read_text().splitlines()
            notes.append(f"factor-archive ls printed {len(listed)} lines")
            notes.append(f"one member: {image.path} ({image.size} B), member {position + 1} of {len(members)} "
                         "in archive order")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    # Report -------------------------------------------------------------------------------------
    sys.stderr.flush()
    print("# factor-archive tar-form benchmark")
    print(f"command: {command}")
    print(f"machine: {os.cpu_count()} cores, {human(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))} "
          f"RAM; {subprocess.run(['tar', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}; "
          f"load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after; work dir {work}"
          f"{' (removed)' if not args.keep else ''}")
    print(f"conditions: page cache warm unless a row says otherwise; sync "
          f"{'and wait for an idle machine ' if idle else ''}before every trial; sides alternate; best of "
          f"{args.repeat} (archive, restore) or {args.repeat_small} (list, one member)")
    print(f"code measured: {code}"
          + (f"; io.copy.BLOCK overridden to {args.block_kib} KiB (--block-kib)" if args.block_kib else ""))
    for n in notes:
        print(n)
    print()
    print("| operation | factor-archive | GNU tar | ratio | target |")
    print("|-----------|---------------:|--------:|------:|--------|")
    for r in rows:
        o, t = best(r["ours"]), best(r["theirs"])
        ratio = o.seconds / t.seconds
        if r["op"] in ("archive", "restore"):
            tgt = r["target"]
            verdict = "-" if tgt is None else f"<= {tgt} {'met' if ratio <= tgt else 'MISSED'}"
            print(f"| {r['op']} | {o.seconds:.2f} s (CPU {o.cpu:.2f} s) | {t.seconds:.2f} s (CPU {t.cpu:.2f} s) "
                  f"| {ratio:.2f} | {verdict} |")
        else:
            pr = best(r["probe"])
            inner = pr.inner
            if r["op"].startswith("list"):
                ok = inner["rchar"] < LIST_BYTES_TARGET and o.seconds < LIST_TIME_TARGET
                verdict = (f"< 1 MB and < 1 s: {'met' if ok else 'MISSED'}")
            else:
                verdict = "-"
            print(f"| {r['op']} | {o.seconds:.3f} s, reads {fmt_bytes(o.rchar)} (disk {fmt_bytes(o.read_bytes)}); "
                  f"the call itself: {inner['seconds'] * 1000:.1f} ms, reads {fmt_bytes(inner['rchar'])} "
                  f"(disk {fmt_bytes(inner['read_bytes'])}) "
                  f"| {t.seconds:.3f} s, reads {fmt_bytes(t.rchar)} (disk {fmt_bytes(t.read_bytes)}) "
                  f"| {ratio:.2f} | {verdict} |")
    print()
    for r in rows:
        print(f"{r['op']}: factor-archive {' '.join(f'{x.seconds:.3f}' for x in r['ours'])} s; "
              f"GNU tar {' '.join(f'{x.seconds:.3f}' for x in r['theirs'])} s")
        print(f"  factor-archive: {r['cmd'][0]}")
        print(f"  GNU tar:        {r['cmd'][1]}")
        if "extra" in r:
            e = best(r["extra"])
            print(f"  GNU tar on our archive: {e.seconds:.3f} s, reads {fmt_bytes(e.rchar)} "
                  f"(disk {fmt_bytes(e.read_bytes)}): {r['extra_cmd']}")
        if "probe" in r:
            pr = best(r["probe"])
            mods = pr.inner.get("new_modules") or []
            print(f"  in-process probe (modules imported beforehand): whole process {pr.seconds:.3f} s, "
                  f"{fmt_bytes(pr.rchar)}; the call {pr.inner['seconds'] * 1000:.1f} ms, "
                  f"{pr.inner['rchar']} B in {pr.inner['syscr']} read calls"
                  + (f"; modules imported during the call: {', '.join(mods)}" if mods else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
