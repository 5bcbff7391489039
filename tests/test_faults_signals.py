"""An astronomer presses Ctrl-C (or the batch system sends SIGTERM) at any moment of an archive or a
restore: the command stops its threads and its casacore worker, removes or marks what it left as
docs/usage.md says, and exits 130 (143) with one line, never a traceback or an abort.

Every case interrupts a running command (see faults.run): it is stopped, checked to be still
running, signalled and continued. The fast cases run in CI; ``--full`` adds enough moments for
well over a hundred interruptions across forms and phases.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import faults
from faults import ARCHIVE_ARGS, ARCHIVE_FORMS, command

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process groups and /proc are Linux here")

RESTORE_FORMS = ("dir", "tar", "stdin", "zarr", "zarr.zip")


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): ("link:" + os.readlink(p)) if p.is_symlink()
            else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def assert_same_run(restored: Path, clean: Path) -> None:
    """Every file and table is back, every table with the same content. (Table files themselves
    may differ: the zarr form rebuilds tables from their columns, with its own file numbering.
    Files holding paths, such as the parset and mapfiles, name their own output: compared by name.)"""
    from factor_archive.ms.casacore_table import RawTableRequired, table_content_sha256

    def layout(root: Path) -> tuple[list[str], list[str]]:
        tables = sorted({str(p.parent.relative_to(root)) for p in root.rglob("table.dat")})
        tables = [t for t in tables if not any(t.startswith(u + "/") for u in tables)]  # not subtables
        files = sorted(name for name in snapshot(root)
                       if not any(name.startswith(t + "/") for t in tables))
        return tables, files

    tables, files = layout(clean)
    assert layout(restored) == (tables, files)
    assert len(tables) > 5
    for rel in tables:
        try:
            assert table_content_sha256(restored / rel) == table_content_sha256(clean / rel), rel
        except RawTableRequired:  # a table every form keeps byte for byte (Dysco)
            assert snapshot(restored / rel) == snapshot(clean / rel), rel


# -- moments ------------------------------------------------------------------------------------
# A moment is (name, factory): factory(out, tmp) gives the predicate for faults.run, given the
# output path and the case's private directory (TMPDIR of the command).

def _at_start(_out, _tmp):
    return faults.after(0.0)


def _writing(delay):
    """Once the output (or its partial file) appears, plus ``delay`` seconds."""
    def factory(out: Path, tmp: Path):
        if out.name == "-":
            return faults.once_exists(tmp / "stdout.tar", delay)
        return faults.once_exists(out.parent / f"*{out.name}*", delay)
    return factory


def _building_calibrated_data(delay):
    """While -d concatenates calibrated data (in the casacore worker) into the staging area."""
    def factory(out: Path, tmp: Path):
        if out.name == "-":
            return faults.once_exists(tmp / ".stdout.staging-*", delay)
        if out.suffix in (".tar", ".zip", ".zarr"):
            return faults.once_exists(out.parent / f".{out.name}.staging-*", delay)
        return faults.once_exists(out / ".factor-archive-staging", delay)
    return factory


def _restoring(delay):
    """Once the restore marked its output as incomplete, plus ``delay`` seconds."""
    return lambda out, _tmp: faults.once_exists(out / ".factor-archive-restore-incomplete", delay)


def _worker_busy(delay):
    """While the casacore worker writes a table decoded from zarr."""
    return lambda _out, _tmp: faults.once_worker_runs(delay)


FAST_ARCHIVE_MOMENTS = [("start", _at_start), ("writing", _writing(0.0)), ("writing+0.4", _writing(0.4)),
                        ("calibrated", _building_calibrated_data(0.05))]
FULL_ARCHIVE_MOMENTS = [(f"writing+{d}", _writing(d)) for d in (0.05, 0.15, 0.25, 0.6, 0.9, 1.3, 2.0, 3.0)] \
    + [(f"calibrated+{d}", _building_calibrated_data(d)) for d in (0.0, 0.2, 0.5, 1.0)] \
    + [("start+0.1", lambda o, t: faults.after(0.1)), ("start+0.3", lambda o, t: faults.after(0.3))]
FAST_RESTORE_MOMENTS = [("start", _at_start), ("restoring", _restoring(0.0)), ("restoring+0.4", _restoring(0.4))]
FULL_RESTORE_MOMENTS = [(f"restoring+{d}", _restoring(d)) for d in (0.05, 0.15, 0.25, 0.6, 0.9, 1.3, 2.0, 3.0)] \
    + [("start+0.1", lambda o, t: faults.after(0.1)), ("start+0.3", lambda o, t: faults.after(0.3))]


def _cases(forms, fast, full, extra=()):
    cases = [pytest.param(f, name, fac, id=f"{f}-{name}") for f in forms for name, fac in fast]
    cases += [pytest.param(f, name, fac, id=f"{f}-{name}", marks=pytest.mark.full)
              for f in forms for name, fac in full]
    return cases + list(extra)


ARCHIVE_CASES = _cases(ARCHIVE_FORMS, FAST_ARCHIVE_MOMENTS, FULL_ARCHIVE_MOMENTS)
RESTORE_CASES = _cases(RESTORE_FORMS, FAST_RESTORE_MOMENTS, FULL_RESTORE_MOMENTS, extra=[
    pytest.param(f, f"worker+{d}", _worker_busy(d), id=f"{f}-worker+{d}",
                 marks=() if d == 0.1 else pytest.mark.full)
    for f in ("zarr", "zarr.zip") for d in (0.1, 0.0, 0.3, 0.8)])


# -- running one case ---------------------------------------------------------------------------

def interrupt(argv, out: Path, tmp: Path, factory, sig=signal.SIGINT, stdin_file=None,
              reset=lambda: None) -> faults.Outcome:
    """Run until the signal really interrupted the command: a case whose command finished before
    its moment came is tried once more, then at the command's start."""
    stdout_file = tmp / "stdout.tar" if argv[-1] == "-" else None  # archivefactor ... -
    for attempt in range(4):
        reset()
        when = factory(out, tmp) if attempt < 2 else faults.after(0.0)
        outcome = faults.run(argv, when=when, sig=sig, stdin_file=stdin_file, stdout_file=stdout_file,
                             env={"TMPDIR": str(tmp)})
        if outcome.interrupted:
            return outcome
    pytest.fail(f"{argv}: never interrupted while running")


def check_interrupted(outcome: faults.Outcome, prog: str, sig: int) -> str:
    name = signal.Signals(sig).name
    assert outcome.returncode == 128 + sig, (outcome.returncode, outcome.stderr)
    line = faults.assert_one_clean_line(outcome, prog, f"interrupted ({name})")
    faults.assert_group_gone(outcome.pid)  # the casacore worker ended with the command
    return line


def archive_argv(archived_run: dict, out: Path) -> list[str]:
    return command("archivefactor") + ARCHIVE_ARGS + [str(archived_run["parset"]), "-" if out.name == "-" else str(out)]


def check_archive_left(form: str, out: Path, tmp: Path, line: str) -> bool:
    """What an interrupted archive leaves, as documented; True when it completed just before."""
    complete = "after the work was complete" in line
    leftovers = [p.name for p in tmp.iterdir() if "staging" in p.name]
    assert leftovers == [], leftovers  # the staging area of -d is always removed
    if form == "stream":
        return complete
    if form == "dir":
        assert not (out / ".factor-archive-staging").exists()
        assert (out / "manifest.json").exists() == complete
        return complete
    assert sorted(os.listdir(out.parent)) == ([out.name] if complete else []), os.listdir(out.parent)
    return complete


@pytest.mark.parametrize("form,moment,factory", ARCHIVE_CASES)
def test_ctrl_c_while_archiving_exits_130_and_leaves_what_the_docs_say(archived_run, tmp_path, form, moment, factory):
    out = tmp_path / "o" / ARCHIVE_FORMS[form][0]
    tmp = tmp_path / "tmp"

    def reset():
        shutil.rmtree(out.parent, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        out.parent.mkdir(parents=True)
        tmp.mkdir()

    outcome = interrupt(archive_argv(archived_run, out), out, tmp, factory, reset=reset)
    line = check_interrupted(outcome, "archivefactor", signal.SIGINT)
    complete = check_archive_left(form, out, tmp, line)
    if form == "dir" and not complete and moment in ("writing+0.4", "calibrated", "writing+0.9"):
        # "run the same command again to complete it"
        again = faults.run(archive_argv(archived_run, out))
        assert again.returncode == 0, again.stderr
        verified = faults.run(command("factor-archive") + ["verify", "-q", str(out)])
        assert verified.returncode == 0, verified.stderr


@pytest.mark.parametrize("form,moment,factory", RESTORE_CASES)
def test_ctrl_c_while_restoring_exits_130_and_marks_the_output_incomplete(archived_run, clean_restore, tmp_path,
                                                                         form, moment, factory):
    archive = archived_run["archives"]["tar" if form == "stdin" else form]
    out = tmp_path / "restored"
    tmp = tmp_path / "tmp"

    def reset():
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()

    source = "-" if form == "stdin" else str(archive)
    argv = command("unarchivefactor") + ["-q", source, str(out)]
    outcome = interrupt(argv, out, tmp, factory, stdin_file=archive if form == "stdin" else None,
                        reset=reset)
    line = check_interrupted(outcome, "unarchivefactor", signal.SIGINT)
    if out.exists():
        assert faults.leftovers(out) == []  # scratch and partial members removed
    complete = "after the work was complete" in line
    marker = out / ".factor-archive-restore-incomplete"
    if complete:
        assert not marker.exists() and (out / "factor.parset").exists()
    elif out.exists() and any(out.iterdir()):
        assert marker.exists() and not (out / "factor.parset").exists()
    if (moment == "restoring+0.4" and form not in ("zarr", "zarr.zip")) or moment in ("restoring+0.9", "worker+0.3"):
        # "run the same command with -c to complete it"
        again = faults.run(command("unarchivefactor") + ["-q", "-c", source, str(out)],
                           stdin_file=archive if form == "stdin" else None)
        assert again.returncode == 0, again.stderr
        assert not marker.exists()
        assert_same_run(out, clean_restore)


@pytest.mark.parametrize("form", [
    "dir", "zarr", pytest.param("tar", marks=pytest.mark.full), pytest.param("stream", marks=pytest.mark.full),
    pytest.param("zarr.zip", marks=pytest.mark.full)])
def test_sigterm_while_archiving_exits_143(archived_run, tmp_path, form):
    out = tmp_path / "o" / ARCHIVE_FORMS[form][0]
    tmp = tmp_path / "tmp"

    def reset():
        shutil.rmtree(out.parent, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        out.parent.mkdir(parents=True)
        tmp.mkdir()

    outcome = interrupt(archive_argv(archived_run, out), out, tmp, _writing(0.3), sig=signal.SIGTERM, reset=reset)
    line = check_interrupted(outcome, "archivefactor", signal.SIGTERM)
    check_archive_left(form, out, tmp, line)


@pytest.mark.parametrize("form", ["zarr", pytest.param("dir", marks=pytest.mark.full),
                                  pytest.param("zarr.zip", marks=pytest.mark.full)])
def test_sigterm_while_restoring_exits_143(archived_run, tmp_path, form):
    out = tmp_path / "restored"
    tmp = tmp_path / "tmp"
    tmp.mkdir()

    def reset():
        shutil.rmtree(out, ignore_errors=True)

    argv = command("unarchivefactor") + ["-q", str(archived_run["archives"][form]), str(out)]
    outcome = interrupt(argv, out, tmp, _restoring(0.3), sig=signal.SIGTERM, reset=reset)
    check_interrupted(outcome, "unarchivefactor", signal.SIGTERM)
    assert faults.leftovers(out) == []


# -- the casacore worker when its parent dies --------------------------------------------------

def _state(pid: int) -> str | None:
    """The process state letter, or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_the_worker_ends_silently_when_unarchivefactor_is_killed(archived_run, tmp_path):
    """kill -9 of the command: its casacore worker does not live on, nor print anything."""
    argv = command("unarchivefactor") + ["-q", str(archived_run["archives"]["zarr"]), str(tmp_path / "r")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while not workers and proc.poll() is None and time.monotonic() < deadline:
            workers = faults._children(proc.pid)
            time.sleep(0.005)
        assert workers, "no casacore worker started"
        proc.kill()  # the parent only: the worker must notice by itself
        proc.wait()
        deadline = time.monotonic() + 5
        while any(_state(w) not in (None, "Z") for w in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(_state(w) in (None, "Z") for w in workers), [(w, _state(w)) for w in workers]
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_worker_whose_command_pipe_closes_exits_at_once_and_quietly():
    """EOF on its command pipe (the parent went away, on a system without a parent-death
    signal) ends the worker with status 0 and nothing on its standard error."""
    from factor_archive.ms.casacore_table import worker_client

    if not hasattr(os, "memfd_create"):
        pytest.skip("no memfd_create here")
    worker = worker_client._Worker(1 << 20)
    try:
        worker._stop_sender()  # closes the command pipe, as the parent's exit would
        assert worker.proc.wait(timeout=30) == 0
        assert os.pread(worker._stderr, 4096, 0) == b""
    finally:
        worker._end(kill=True)
