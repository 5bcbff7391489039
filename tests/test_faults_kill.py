"""Story: the machine went down (kill -9) while archiving or restoring, maybe several times.

Running the same command again completes the work: it removes (or reuses) what the killed runs
left, says so, and the result equals a clean run's (the same manifest, member for member; the same
restored tree). Nothing the killed runs left ever looks complete. Hypothesis chooses when each
kill lands (a fraction of a clean run's duration); a chain of kills, each on the rerun of the one
before, ends with one rerun left to finish. The counts are printed at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fault_cases import (
    EPOCH,
    FORMS,
    GOOD,
    MARKER,
    Case,
    Workspace,
    manifest_json,
    record,
    restore_differences,
    )

# (kills per chain, chains) in the full suite: 5*5*2*2 + 3*3*2*2 = 136 planned kill points (a
# kill that would land after the run finished is no kill point: typically 100-120 remain). CI: one
# chain of one kill for each (form, operation) marked fast below (a zarr chain takes ~20 s; the
# zarr form's leftovers are covered in CI by test_leftovers_of_a_killed_zarr_archive_are_removed).
FULL_CHAINS = {"dir": (5, 5), "tar": (5, 5), "zarr": (3, 3), "zip": (3, 3)}
CI_FAST = {("dir", "archive"), ("dir", "restore"), ("tar", "archive"), ("tar", "restore")}
NO_SHRINK = (Phase.explicit, Phase.generate)


def command(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from factor_archive.cli import main; "
            "sys.exit(main(sys.argv[1:]))", *args]


def environment() -> dict[str, str]:
    return {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(command(*args), stdout=out, stderr=subprocess.STDOUT,
                                env=environment(), start_new_session=True)


def kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """kill -9 the process after ``seconds`` (its own process only, as a crash would); True if it
    was still running. Helpers it started (a casacore worker) are reaped afterwards."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)         # a worker process notices its parent died and exits by itself
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return True


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), capture_output=True, text=True, env=environment())


def leftovers(parent: Path, name: str) -> list[str]:
    """Hidden temporary names of the output beside it (``.<name>.partial-<pid>``, staging, ...)."""
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{name}."))


def inside_leftovers(root: Path) -> list[str]:
    """Temporary names a run leaves inside an archive directory or a restored run."""
    if not root.is_dir():
        return []
    found = []
    for p in root.rglob("*"):
        n = p.name
        if n in (".factor-archive-journal.jsonl", ".factor-archive-staging", MARKER,
                 ".factor-archive-restore") or ".partial" in n:
            found.append(str(p.relative_to(root)))
    return sorted(found)


def _params():
    for form in FORMS:
        for op in ("archive", "restore"):
            marks = [] if (form, op) in CI_FAST else [pytest.mark.full]
            yield pytest.param(form, op, marks=marks, id=f"{form}-{op}")


def _judge_chain(form: str, op: str, workspace: Workspace, fractions: list[float],
                 workdir: Path) -> tuple[Case, list[str]]:
    kills: list[str] = []
    return _chain(form, op, workspace, fractions, workdir, kills), kills


def _chain(form: str, op: str, workspace: Workspace, fractions: list[float], workdir: Path,
           kills: list[str]) -> Case:
    ref = workspace[form]
    if op == "archive":
        target = workdir / FORMS[form]
        args = ["archive", "-r", str(workspace.parset), str(target)]
        seconds = ref.archive_seconds
    else:
        target = ref.restore_to
        args = ["unarchive", str(ref.archive), str(target)]
        seconds = ref.restore_seconds
    shutil.rmtree(target, ignore_errors=True)
    for i, fraction in enumerate(fractions):
        proc = start(args + ["-q"], workdir / f"killed-{i}.log")
        if kill_after(proc, fraction * seconds):
            kills.append(f"{fraction * seconds:.2f}s")
        killed_text = (workdir / f"killed-{i}.log").read_text(errors="replace")
        if "Traceback" in killed_text:
            return Case("kill", form, op, f"kills at {kills}", "traceback",
                        f"the killed run printed: {killed_text[-800:]}")
        if _complete(form, op, target):
            break       # the kill came after the work was done: nothing left to complete
    what = f"{op} killed at {', '.join(kills) or 'no point (it finished first)'}"
    before = leftovers(target.parent, target.name) + inside_leftovers(target)
    if not _complete(form, op, target):
        rerun = run(args)
        if rerun.returncode != 0 or "Traceback" in rerun.stdout + rerun.stderr:
            return Case("kill", form, op, what, "traceback" if "Traceback" in rerun.stderr
                        else "incomplete", f"rerun exit {rerun.returncode}: {rerun.stderr[-800:]}")
        said = rerun.stderr
        removed = [n for n in before if n.startswith(f".{target.name}.")]
        if removed and not all(n in said for n in removed):
            return Case("kill", form, op, what, "incomplete",
                        f"leftovers {removed} removed without saying so: {said[-500:]}")
        continued = (op == "restore" and target.is_dir() and any(before)) or \
            (op == "archive" and ".factor-archive-journal.jsonl" in before)
        if continued and "continuing an interrupted" not in said:
            return Case("kill", form, op, what, "incomplete",
                        f"the rerun did not say it continued: {said[-500:]}")
    left = [n for n in leftovers(target.parent, target.name)] + inside_leftovers(target)
    if left:
        return Case("kill", form, op, what, "incomplete", f"leftovers after the rerun: {left}")
    if op == "archive":
        if manifest_json(target) != ref.manifest:
            return Case("kill", form, op, what, "incomplete", "the manifest differs from a clean run's")
        from factor_archive.cli import main

        if main(["verify", "-q", str(target)]) != 0:
            return Case("kill", form, op, what, "incomplete", "verify found problems")
    else:
        diffs = restore_differences(ref.expected, target)
        if diffs:
            return Case("kill", form, op, what, "incomplete", f"the restore differs: {diffs[:5]}")
    return Case("kill", form, op, what, "completed", f"{len(kills)} kill(s)")


def _complete(form: str, op: str, target: Path) -> bool:
    """What a finished run leaves: the archive under its name; a restore without its marker."""
    if op == "restore":
        return target.is_dir() and not (target / MARKER).exists() and any(target.glob("*.parset"))
    if form == "dir":
        return (target / "manifest.json").is_file()
    return target.exists()


@pytest.mark.parametrize("form, op", list(_params()))
def test_a_killed_run_is_completed_by_running_it_again(form, op, workspace, tmp_path, request,
                                                      full_suite):
    kills, chains = FULL_CHAINS[form] if full_suite else (1, 1)
    results: list[Case] = []

    @settings(max_examples=chains, phases=NO_SHRINK, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fractions=st.lists(st.floats(0.1, 0.9), min_size=kills, max_size=kills))
    def chain(fractions):
        workdir = tmp_path / f"chain-{len(results)}"
        workdir.mkdir()
        case, points = _judge_chain(form, op, workspace, fractions, workdir)
        results.append(case)
        for point in points:        # the ledger counts kill points, each with its chain's outcome
            record(request.config, Case(case.suite, form, op, f"{point} ({case.what})",
                                        case.outcome, case.detail))
        assert case.outcome in GOOD, f"{case.what}: {case.outcome}: {case.detail}"

    chain()


# ---------------------------------------------------------------------------------------------
# Story: the object store went away in the middle of an upload, or of a restore

def _judge_stopped_store(op: str, proc: subprocess.Popen, config) -> subprocess.Popen:
    try:
        _out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        err += "\n(still running 120 s after the store stopped)"
    lines = err.strip().splitlines()
    if proc.returncode == 0:
        outcome = "silent"             # it cannot have finished: the store was stopped first
    elif len(lines) != 1 or "Traceback" in err:
        outcome = "traceback"
    else:
        outcome = "detected"
    record(config, Case("s3", "zarr", op, f"store stopped during {op}", outcome, err.strip()[-800:]))
    assert outcome in GOOD, err
    return proc


def test_an_object_store_that_stops_gives_one_line(workspace, tmp_path, request):
    """The S3 server stops while one archive is being uploaded and another restored: each
    command fails in one line (no aiohttp noise after it); the upload leaves no manifest, and the
    restored output does not look like a run ready to resume."""
    from s3server import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed")
    restored = tmp_path / "restored"
    with SeaweedS3(tmp_path / "s3") as s3:
        s3.make_bucket("faults")
        env = {**environment(), **s3.env}
        done = subprocess.run(command("archive", "-q", "-r", str(workspace.parset), "s3://faults/done"),
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        fs = s3.filesystem()

        def midway() -> bool:
            fs.invalidate_cache()
            return (restored / "chunks").is_dir() and len(fs.find("faults/partial")) > 50

        upload = subprocess.Popen(command("archive", "-q", "-r", str(workspace.parset),
                                          "s3://faults/partial"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        restore = subprocess.Popen(command("unarchive", "-q", "s3://faults/done", str(restored)),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 60
        while not midway() and upload.poll() is None and restore.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        s3.stop()
        _judge_stopped_store("upload", upload, request.config)
        _judge_stopped_store("restore", restore, request.config)
    assert (restored / MARKER).exists() and not (restored / workspace.parset.name).exists()


# ---------------------------------------------------------------------------------------------
# Story: what a killed archive left beside its output

def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("form", ["tar", "zarr", "zip"])
def test_leftovers_of_a_killed_archive_are_removed_and_reported(form, workspace, tmp_path, capfd):
    """`.<name>.partial-<pid>` and `.<name>.staging-<pid>` of a process that is gone are removed,
    with a line saying so; those of a process still running (or of another output) stay."""
    from fault_cases import run_cli

    name = FORMS[form]
    dead, sleeper = _exited_pid(), subprocess.Popen(["sleep", "60"])
    try:
        gone = [tmp_path / f".{name}.partial-{dead}", tmp_path / f".{name}.staging-{dead}"]
        kept = [tmp_path / f".{name}.partial-{sleeper.pid}", tmp_path / f".other.tar.partial-{dead}"]
        for path in gone + kept:
            if path.name.startswith(f".{name}.staging") or form == "zarr":
                path.mkdir()
                (path / "x").write_text("left over")
            else:
                path.write_text("left over")
        if form == "tar":
            run = run_cli(["archive", "-r", str(workspace.parset), str(tmp_path / name)], capfd)
            assert run.code == 0 and not run.traceback(), run.text
            said = run.err
        else:
            from factor_archive.containers.zarr import ZarrWriter

            writer = ZarrWriter(str(tmp_path / name))
            said = "\n".join(writer.notices)
            writer.abort()
        for path in gone:
            assert not path.exists() and f"removed {path}" in said, said
        assert all(path.exists() for path in kept)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_directory_archive_killed_between_rename_and_journal_completes(workspace, tmp_path, capfd):
    """The window the kill suite found: a member renamed into place, then kill -9 before its
    journal line. The rerun must take the member for its own leftover, not a stranger's file."""
    from factor_archive.containers.directory import JOURNAL_NAME
    from factor_archive.manifest import CHECKSUMS_NAME, MANIFEST_NAME, TAG_MANIFEST_NAME
    from fault_cases import run_cli

    out = tmp_path / "run-archive"
    shutil.copytree(workspace["dir"].archive, out)
    for name in (MANIFEST_NAME, TAG_MANIFEST_NAME, CHECKSUMS_NAME):
        (out / name).unlink()
    (out / JOURNAL_NAME).write_text("")            # every member in place, no journal line yet
    run = run_cli(["archive", "-r", str(workspace.parset), str(out)], capfd)
    assert run.code == 0 and not run.traceback(), run.text
    assert "continuing an interrupted archive" in run.err
    assert run_cli(["verify", "-q", str(out)], capfd).code == 0
    assert not (out / JOURNAL_NAME).exists()
