"""Fault injection for the command-line tools: signals at chosen moments, small file systems.

The commands run as the user runs them (the console scripts, in their own session, so a signal
reaches the whole process group as Ctrl-C at a terminal does). A signal is delivered at a moment
chosen by a predicate polled every few milliseconds: the process group is stopped (SIGSTOP), and
only if the command is still running is the signal sent before it continues (SIGCONT), so every
case really interrupts the command somewhere, at a point it did not choose.

A small file system is a tmpfs mounted for the test (root only); it is always unmounted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# What must never reach the user, whatever happens.
FORBIDDEN = ("Traceback", "terminate called", "Fatal Python error", "Aborted", "core dumped",
             "Exception ignored", "what():", "Task exception was never retrieved")


def command(name: str) -> list[str]:
    """The console script ``name`` as installed beside this Python, else the same entry point."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    entry = {"archivefactor": "archivefactor_main", "unarchivefactor": "unarchivefactor_main",
             "factor-archive": "main"}[name]
    return [sys.executable, "-c", f"import sys; from factor_archive.cli import {entry}; sys.exit({entry}())"]


@dataclass
class Outcome:
    returncode: int
    stderr: str
    interrupted: bool  # the signal was sent while the command was still running
    at: float  # seconds after the start
    pid: int  # also the process group (session) of the command

    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (the casacore workers of a command)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


def has_children(pid: int) -> bool:
    return bool(_children(pid))


def run(argv: list[str], *, when: Callable[[float, subprocess.Popen], bool] | None = None,
        sig: int = signal.SIGINT, action: Callable[[], None] | None = None,
        stdin_file: Path | None = None, stdout_file: Path | None = None,
        env: dict | None = None, timeout: float = 120.0) -> Outcome:
    """Run ``argv``; when ``when(elapsed, proc)`` first holds, deliver ``sig`` to its process group
    (``elapsed``: seconds since the command began to handle signals), or instead run ``action``
    while the command is stopped (filling its disk, say).

    Standard output goes to ``stdout_file`` or a pipe drained as fast as it fills (like
    ``| mbuffer``); standard input comes from ``stdin_file`` through a pipe (like ``cat run.tar |``).
    """
    with (open(stdout_file, "wb") if stdout_file is not None
          else contextlib.nullcontext(subprocess.PIPE)) as out:  # the command keeps its own copy
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin_file else subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.PIPE, start_new_session=True,
                                env={**os.environ, **(env or {})})
    errors: list[bytes] = []
    threads = [threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)]
    if stdout_file is None:
        threads.append(threading.Thread(target=lambda: _drain(proc.stdout), daemon=True))
    if stdin_file is not None:
        threads.append(threading.Thread(target=_feed, args=(stdin_file, proc.stdin), daemon=True))
    for t in threads:
        t.start()
    start = time.monotonic()
    interrupted, at = False, 0.0
    if when is not None:
        # Moments count from when the command handles signals (see handles_signals).
        while proc.poll() is None and not handles_signals(proc.pid) and time.monotonic() - start < timeout:
            time.sleep(0.002)
        start = time.monotonic()
        while proc.poll() is None and time.monotonic() - start < timeout:
            at = time.monotonic() - start
            if when(at, proc):
                interrupted = _deliver(proc, sig, action)
                break
            time.sleep(0.003)
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for t in threads:
        t.join(10)
    return Outcome(proc.returncode, b"".join(errors).decode("utf-8", "replace"), interrupted, at, proc.pid)


def _deliver(proc: subprocess.Popen, sig: int, action: Callable[[], None] | None) -> bool:
    """Freeze the group, and signal it (or act) only if the command has not ended meanwhile."""
    try:
        os.killpg(proc.pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    try:
        if not _stopped(proc):  # it was ending (or ended) when it was to be stopped
            return False
        if action is not None:
            action()
        else:
            os.killpg(proc.pid, sig)
        return True
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)


def _stopped(proc: subprocess.Popen, timeout: float = 5.0) -> bool:
    """Wait until the command is really stopped (SIGSTOP takes effect asynchronously); False if
    it exits instead (it was already leaving: a signal now would come after its last word)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state in ("T", "t"):
            return True
        if state in ("Z", "X"):
            return False
        time.sleep(0.001)
    return False


def _drain(stream) -> None:
    while stream.read(1 << 20):
        pass


def _feed(path: Path, stream) -> None:
    try:
        with open(path, "rb") as f:
            shutil.copyfileobj(f, stream, 1 << 16)
    except (BrokenPipeError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            stream.close()


def after(seconds: float) -> Callable[[float, subprocess.Popen], bool]:
    return lambda elapsed, _proc: elapsed >= seconds


def once_exists(path: Path, delay: float = 0.0) -> Callable[[float, subprocess.Popen], bool]:
    """As soon as ``path`` exists (or any match when it holds a ``*``), plus ``delay`` seconds."""
    seen: list[float] = []

    def when(elapsed: float, _proc) -> bool:
        if not seen:
            found = any(path.parent.glob(path.name)) if "*" in path.name else path.exists()
            if not found:
                return False
            seen.append(elapsed)
        return elapsed >= seen[0] + delay

    return when


def once_worker_runs(delay: float = 0.0) -> Callable[[float, subprocess.Popen], bool]:
    """While a casacore worker (a child process of the command) runs, plus ``delay`` seconds."""
    seen: list[float] = []

    def when(elapsed: float, proc) -> bool:
        if not seen:
            if not has_children(proc.pid):
                return False
            seen.append(elapsed)
        return elapsed >= seen[0] + delay

    return when


def assert_one_clean_line(outcome: Outcome, prog: str, starts: str) -> str:
    """Standard error is exactly one line of ours, with no traceback or abort text."""
    for bad in FORBIDDEN:
        assert bad not in outcome.stderr, outcome.stderr
    lines = outcome.lines()
    assert len(lines) == 1, outcome.stderr
    assert lines[0].startswith(f"{prog}: {starts}"), lines[0]
    return lines[0]


def assert_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """No process of the command's session (a casacore worker, say) outlives it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"processes of session {pgid} still running after the command ended")


def leftovers(root: Path) -> list[str]:
    """Partial and staging entries below ``root`` (what an ended command must not leave behind)."""
    names = []
    for p in root.rglob("*"):
        partial = ".partial" in p.name or ".staging" in p.name or p.name.startswith(".factor-archive-restore")
        if partial and p.name != ".factor-archive-restore-incomplete":
            names.append(str(p.relative_to(root)))
    return sorted(names)


# -- small file systems -------------------------------------------------------------------------

def can_mount() -> str | None:
    """None when tmpfs can be mounted here, else why not (the reason tests skip with)."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount command"
    return None


@contextlib.contextmanager
def small_filesystem(where: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``where``, unmounted afterwards whatever happens."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={max(size, 4096)}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        import pytest

        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def grow(where: Path, size: int) -> None:
    """Give the tmpfs at ``where`` more room (the user freed space)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True, capture_output=True)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) \
        if root.is_dir() else root.stat().st_size


def handles_signals(pid: int) -> bool:
    """The command has installed its signal handlers (it catches SIGTERM, which Python does not
    by default); before that, a signal ends the starting interpreter as Python always does."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except OSError:
        pass
    return False


# -- the run and its archives, built once per test session ---------------------------------------

ARCHIVE_FORMS = {  # form -> (output name, extra archivefactor options)
    "dir": ("run", []), "tar": ("run.tar", []), "stream": ("-", []),
    "zarr": ("run.zarr", []), "zarr.zip": ("run.zarr.zip", []),
}
ARCHIVE_ARGS = ["-q", "-r", "-d", "all"]  # everything: chunks, state, calibrated data (-d)
_built: dict[str, dict] = {}


def session_run(tmp_path_factory) -> dict:
    """The sample run and a complete archive of it in every form (dir, tar, zarr, zarr.zip)."""
    from factor_archive.cli import archivefactor_main
    from factor_archive.sample import write_sample_run

    key = str(tmp_path_factory.getbasetemp())
    if key not in _built:
        base = tmp_path_factory.mktemp("faults")
        parset = write_sample_run(base / "site ø" / "run with spaces")
        archives = {}
        for form in ("dir", "tar", "zarr", "zarr.zip"):
            out = base / "archives" / ARCHIVE_FORMS[form][0]
            assert archivefactor_main(ARCHIVE_ARGS + [str(parset), str(out)]) == 0
            archives[form] = out
        _built[key] = {"parset": parset, "archives": archives}
    return _built[key]


def fill(where: Path, leave: int = 0) -> Callable[[], None]:
    """An action: take all the free space of the file system at ``where`` but ``leave`` bytes
    (another program filling the disk while the command runs)."""
    def action() -> None:
        st = os.statvfs(where)
        free = st.f_bavail * st.f_frsize
        fd = os.open(where / "ballast", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if free > leave:
                os.posix_fallocate(fd, 0, free - leave)
        finally:
            os.close(fd)
    return action
