"""What the benchmark scripts share: sizes, the machine's load, timing a command, the reference
commands' file lists, and realistic visibilities for a Measurement Set.

Every command is timed through a small launcher (a fresh ``python -S``) that forks the command,
reaps it with ``wait4`` and reports its rusage and the growth of its own ``/proc/self/io``: the
kernel carries a process's RSS high-water mark across ``exec``, so a command forked straight from
a benchmark (a large Python process) would report at least the benchmark's size, and the kernel
adds a reaped child's CPU times and I/O counters to its parent's.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
PY = sys.executable


# -- sizes and logging ----------------------------------------------------------------------------

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


def tree_bytes(path: Path, follow_links: bool = True) -> int:
    """Bytes of the regular files below ``path`` (or of ``path`` itself), links followed or not."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path, followlinks=follow_links):
        for f in files:
            p = os.path.join(dirpath, f)
            total += (os.stat(p) if follow_links else os.lstat(p)).st_size
    return total


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def machine_line() -> str:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{os.cpu_count()} cores, {human(ram)} RAM"


def code_state() -> str:
    """Which factor-archive code is measured (PYTHONPATH or the venv's editable install)."""
    import factor_archive

    src = Path(factor_archive.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return f"{src} (not a git work tree)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"{src} at {head}" + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")


# -- the machine's load ---------------------------------------------------------------------------

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


def remove(paths: list[Path]) -> None:
    for d in paths:
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)
        elif d.exists() or d.is_symlink():
            d.unlink()


def prepare(dests: list[Path], cold: bool, idle: bool = False, idle_limit: float = 120.0) -> None:
    """Before a trial: remove its destinations, sync, optionally drop caches and wait for idle."""
    remove(dests)
    subprocess.run(["sync"], check=True)
    if cold:
        drop_caches()
    if idle:
        wait_idle(idle_limit)


# -- timing a command -----------------------------------------------------------------------------

# argv: FD OUT COMMAND...; the command's stdout goes to OUT ("-": inherited). Reports on FD:
# maxrss (KiB), user and system CPU seconds, and the growth of rchar, read_bytes, syscr, wchar and
# write_bytes of the launcher's /proc/self/io across the wait (its own two reads of /proc/self/io,
# ~100 bytes each, are included in rchar: that is the measurement's resolution).
LAUNCHER = """
import os, sys
def io():
    with open("/proc/self/io", "rb", buffering=0) as f:
        text = f.read().decode()
    return dict((k, int(v)) for k, v in (line.split(":") for line in text.splitlines()))
fd = int(sys.argv[1])
out = sys.argv[2]
before = io()
pid = os.fork()
if pid == 0:
    os.close(fd)
    if out != "-":
        o = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(o, 1)
        os.close(o)
    os.execvp(sys.argv[3], sys.argv[3:])
_, status, usage = os.wait4(pid, 0)
after = io()
d = [after[k] - before[k] for k in ("rchar", "read_bytes", "syscr", "wchar", "write_bytes")]
os.write(fd, ("%d %r %r %d %d %d %d %d" % (usage.ru_maxrss, usage.ru_utime, usage.ru_stime, *d)).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass
class Trial:
    seconds: float          # wall time, including the final sync where there is one
    maxrss: int             # bytes: the largest single process among the command and its reaped descendants
    user: float             # CPU seconds of the command and its reaped descendants
    system: float
    rchar: int = 0          # bytes returned by read(2) and friends (page cache or not)
    read_bytes: int = 0     # bytes fetched from the block device
    syscr: int = 0
    wchar: int = 0          # bytes passed to write(2) and friends
    write_bytes: int = 0    # bytes the command caused to be written to the block device
    others: float = 0.0     # CPU seconds used meanwhile by everything else on the machine
    tree_rss: int = 0       # largest sampled sum of RSS over the command's process tree (when sampled)
    out_bytes: int = 0      # size of what the command wrote, when the caller measures it
    inner: dict | None = field(default=None)  # in-process measurement printed by a probe, if any

    @property
    def cpu(self) -> float:
        return self.user + self.system


def _tree_rss(pid: int) -> int:
    """Sum of the RSS of ``pid``'s descendants (not ``pid`` itself), from /proc."""
    total = 0
    todo = [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    first = True
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            if not first:
                with open(f"/proc/{p}/statm") as f:
                    total += int(f.read().split()[1]) * page
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        first = False
    return total


def timed(argv: list[str], *, then_sync: bool = False, stdout: str = os.devnull,
          pass_fds: tuple[int, ...] = (), sample_rss: float = 0.0) -> Trial:
    """Wall time of ``argv`` (plus a ``sync`` when asked), its rusage and I/O counters.

    ``sample_rss`` > 0 also samples the summed RSS of the command's process tree every that many
    seconds (a command with helper processes, e.g. the casacore worker, holds memory in several).
    """
    r, w = os.pipe()
    peak = [0]
    done = threading.Event()
    try:
        b0 = busy_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen([PY, "-S", "-c", LAUNCHER, str(w), stdout, *argv],
                                stdin=subprocess.DEVNULL, pass_fds=(w, *pass_fds))
        os.close(w)
        w = -1
        sampler = None
        if sample_rss > 0:
            def sample() -> None:
                while not done.wait(sample_rss):
                    peak[0] = max(peak[0], _tree_rss(proc.pid))
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        code = proc.wait()
        done.set()
        if sampler is not None:
            sampler.join()
        if code != 0:
            raise SystemExit(f"failed ({code}): {shlex.join(argv)}")
        if then_sync:
            subprocess.run(["sync"], check=True)
        seconds = time.perf_counter() - t0
        busy = busy_seconds() - b0
        fields = os.read(r, 256).split()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    maxrss, user, system, rchar, read_bytes, syscr, wchar, write_bytes = fields
    cpu = float(user) + float(system)
    return Trial(seconds, int(maxrss) * 1024, float(user), float(system), int(rchar), int(read_bytes),
                 int(syscr), int(wchar), int(write_bytes), max(0.0, busy - cpu), peak[0])


# -- the reference commands' file lists -------------------------------------------------------------

def cp_script(parset: Path, dest: Path, form: str = "dir") -> tuple[str, int, int]:
    """A shell script that copies exactly the sources of the -r archive's members with ``cp -aL``.

    Members whose archive name equals the source's name share one cp per destination directory
    (as a person would type it); renamed ones (a chunk that was a symlink to an input MS) get their
    own. Returns (script, number of cp invocations, bytes).
    """
    from factor_archive.archive import plan_archive
    from factor_archive.plan import Options

    plan = plan_archive(str(parset), Options(resumable=True, form=form))
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


def make_farm(parset: Path, farm: Path, form: str = "tar") -> tuple[list[str], int, int, list[str]]:
    """Symlinks laid out as the archive, one per member, to the source the plan archives.

    ``tar -c -h -C farm TOPS`` then stores the same files under the same names as our archive.
    Returns (top-level names in archive order, number of members, bytes, notes).
    """
    from factor_archive.archive import plan_archive
    from factor_archive.plan import Options

    plan = plan_archive(str(parset), Options(resumable=True, form=form))
    if farm.exists():
        shutil.rmtree(farm)
    farm.mkdir(parents=True)
    tops: list[str] = []
    nbytes = nmembers = nlinks = 0
    for item in plan.items:
        if item.source is None:
            raise SystemExit("the benchmark run has generated members; not comparable with tar")
        if item.member.kind == "link":
            nlinks += 1
            continue
        target = farm / item.member.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(item.source), target)
        top = item.member.path.split("/", 1)[0]
        if top not in tops:
            tops.append(top)
        nbytes += item.size
        nmembers += 1
    notes = [f"{nlinks} link member(s) carry no data and have no link in the farm"] if nlinks else []
    return tops, nmembers, nbytes, notes


# -- Measurement Sets -----------------------------------------------------------------------------

def rewrite_with_dp3(src: Path, dest: Path) -> None:
    """``DP3 msin=src steps=[] msout=dest``: the table DP3 writes (its storage managers and tiles)."""
    from factor_archive.ms.dp3 import Rewrite
    from factor_archive.ms.dp3 import rewrite_with_dp3 as rewrite

    rewrite([Rewrite(src, dest)])


def realistic_columns(ms: Path, seed: int = 7) -> None:
    """Replace DATA, FLAG, FLAG_ROW, WEIGHT_SPECTRUM, WEIGHT and SIGMA with realistic values.

    The MS's stations, channels and start time are read from it (rows in LOFAR order, one time
    slot of all baselines after another, autocorrelations included, as ``ms.synth`` writes them):

    * DATA: a sky of 8 point sources (0.5-15 Jy, spectral index -0.8 +- 0.3, within 2 degrees of
      the phase centre) predicted exactly from the MS's UVW and channel frequencies, times smooth
      per-station complex gains (amplitude 1 +- 10 %, phases drifting over minutes), XX/YY with 2 %
      Stokes Q, 0.5 % XY/YX leakage, plus complex Gaussian noise of 1 Jy per component;
    * FLAG: RFI-like: two edge channels on each side always, a few narrow-band RFI channels that
      come and go over time, occasional broad-band time slots, one dead station,
      autocorrelations; all correlations of a sample flagged together (as DP3 does);
    * WEIGHT_SPECTRUM: per baseline a constant (the product of two station sensitivities) times
      the fraction of unflagged raw samples averaged into the channel (mostly 1, sometimes 7/8 or 6/8).
    """
    import numpy as np
    from casacore import tables as ct

    with ct.table(str(ms / "ANTENNA"), ack=False) as ant:
        nant = ant.nrows()
    with ct.table(str(ms / "SPECTRAL_WINDOW"), ack=False) as spw:
        freqs = np.asarray(spw.getcell("CHAN_FREQ", 0), dtype=np.float64)
    nchan = len(freqs)
    rng = np.random.default_rng(seed)
    c = 299792458.0
    nsrc = 8
    flux = rng.uniform(0.5, 15.0, nsrc)
    alpha = rng.normal(-0.8, 0.3, nsrc)
    ell = rng.uniform(-0.035, 0.035, nsrc)  # direction cosines l, m
    m = rng.uniform(-0.035, 0.035, nsrc)
    n1 = np.sqrt(1 - ell * ell - m * m) - 1
    spec = flux[:, None] * (freqs[None, :] / freqs[0]) ** alpha[:, None]          # (src, chan)
    station_amp = rng.uniform(0.9, 1.1, nant)
    station_rate = rng.normal(0, 2 * math.pi / 1800, nant)                         # rad/s
    station_phase0 = rng.uniform(-math.pi, math.pi, nant)
    sens = rng.uniform(0.8, 1.2, nant).astype(np.float32)
    dead = 17 % nant
    rfi_channels = rng.choice(np.arange(2, nchan - 2), min(5, max(0, nchan - 4)), replace=False)

    t = ct.table(str(ms), readonly=False, ack=False)
    try:
        nrow = t.nrows()
        start_time = t.getcell("TIME", 0)
        nbl = nant * (nant + 1) // 2
        step = nbl * 8
        for start in range(0, nrow, step):
            n = min(step, nrow - start)
            uvw = t.getcol("UVW", start, n)
            a1 = t.getcol("ANTENNA1", start, n)
            a2 = t.getcol("ANTENNA2", start, n)
            time_ = t.getcol("TIME", start, n) - start_time
            # Exact point-source prediction: exp(-2 pi i (ul + vm + w(n-1)) f / c).
            geo = (uvw[:, 0:1] * ell + uvw[:, 1:2] * m + uvw[:, 2:3] * n1)           # (row, src) metres
            phase = -2 * math.pi * geo[:, :, None] * (freqs / c)[None, None, :]     # (row, src, chan)
            vis = np.einsum("rsc,sc->rc", np.exp(1j * phase), spec)                 # Stokes I
            g1 = station_amp[a1] * np.exp(1j * (station_phase0[a1] + station_rate[a1] * time_))
            g2 = station_amp[a2] * np.exp(1j * (station_phase0[a2] + station_rate[a2] * time_))
            vis *= (g1 * np.conj(g2))[:, None]
            data = np.empty((n, nchan, 4), np.complex64)
            data[:, :, 0] = 0.5 * vis * 1.02
            data[:, :, 3] = 0.5 * vis * 0.98
            data[:, :, 1] = 0.005 * vis * np.exp(0.3j)
            data[:, :, 2] = 0.005 * vis * np.exp(-0.3j)
            noise = rng.standard_normal((n, nchan, 4, 2), dtype=np.float32)
            data += (noise[..., 0] + 1j * noise[..., 1]).astype(np.complex64)

            flag = np.zeros((n, nchan), bool)
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

            frac = np.ones((n, nchan), np.float32)
            part = rng.random((n, nchan)) < 0.04
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


def timed_step(what: str, argv: list[str], env: dict) -> None:
    """Run one step of a check (a user's command), stopping on failure; print its wall time."""
    start = time.monotonic()
    subprocess.run(argv, check=True, env=env)
    print(f"{what}: {time.monotonic() - start:.1f} s", flush=True)
