"""The disk of the archive (or of the restored run) fills up: every form, archive and restore, ends
with one line naming the output and its full file system, exit status 1, no traceback and no abort;
what is left is what docs/usage.md promises, and after freeing space the documented rerun finishes.

The disk is a tmpfs mounted for the test (root only; the tests skip, saying why, elsewhere). It is
either small from the start (the output fills it at some point) or filled by "another program"
at a chosen moment while the command is stopped (the -d concatenation, a table decoded by the
casacore worker).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

import faults
from faults import ARCHIVE_ARGS, ARCHIVE_FORMS, command

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs and /proc are Linux"),
    pytest.mark.skipif(faults.can_mount() is not None, reason=str(faults.can_mount())),
]

ROOMY = 256 << 20  # the disk after the user freed space
RESTORE_FORMS = ("dir", "tar", "stdin", "zarr", "zarr.zip")


@pytest.fixture(scope="module")
def restored_bytes(clean_restore) -> int:
    return faults.tree_bytes(clean_restore)


def archived_bytes(archived_run: dict, form: str) -> int:
    return faults.tree_bytes(archived_run["archives"]["tar" if form in ("stream", "stdin") else form])


def check_disk_full(outcome: faults.Outcome, prog: str, mnt: Path) -> str:
    """Exit 1, one line of ours naming a file on the full disk and that file system."""
    assert outcome.returncode == 1, (outcome.returncode, outcome.stderr)
    line = faults.assert_one_clean_line(outcome, prog, "error: ")
    assert "no space left on device" in line, line
    assert f"(file system {mnt} is full)" in line, line
    named = re.match(rf"{prog}: error: (.*?): no space left on device", line).group(1)
    assert named.startswith(str(mnt) + "/"), line  # the output's disk, never the run's
    faults.assert_group_gone(outcome.pid)
    return line


# -- archiving ----------------------------------------------------------------------------------

def archive(archived_run: dict, form: str, mnt: Path, env: dict | None = None, when=None, action=None):
    name = ARCHIVE_FORMS[form][0]
    target = name if form == "stream" else str(mnt / name)
    argv = command("archivefactor") + ARCHIVE_ARGS + [str(archived_run["parset"]), target]
    return faults.run(argv, when=when, action=action, env=env,
                      stdout_file=mnt / "run.tar" if form == "stream" else None)


def check_archive_left(form: str, mnt: Path, line: str) -> None:
    entries = sorted(e for e in os.listdir(mnt) if e != "ballast")
    if form == "dir":
        out = mnt / "run"
        assert entries == ["run"]
        assert not (out / "manifest.json").exists() and not (out / ".factor-archive-staging").exists()
        assert "run the same command again to complete it, or add -c to start over" in line
    elif form == "stream":
        assert entries == ["run.tar"]  # standard output, as the shell made it
    else:
        assert entries == [], entries  # partial archive and staging area removed
        assert line.endswith("nothing was kept")


def rerun_archive(archived_run: dict, form: str, mnt: Path) -> None:
    """The user frees space and runs the same command again: the archive is complete."""
    faults.grow(mnt, ROOMY)
    (mnt / "ballast").unlink(missing_ok=True)
    if form == "stream":
        (mnt / "run.tar").unlink()
    again = archive(archived_run, form, mnt)
    assert again.returncode == 0, again.stderr
    target = mnt / ("run.tar" if form == "stream" else ARCHIVE_FORMS[form][0])
    verified = faults.run(command("factor-archive") + ["verify", "-q", str(target)])
    assert verified.returncode == 0, verified.stderr


FAST_FRACTIONS = (0.3,)
FULL_FRACTIONS = (0.05, 0.15, 0.45, 0.6, 0.75, 0.9)


@pytest.mark.parametrize("form", ARCHIVE_FORMS)
@pytest.mark.parametrize("fraction", [*FAST_FRACTIONS, *[pytest.param(f, marks=pytest.mark.full)
                                                          for f in FULL_FRACTIONS]])
def test_a_full_disk_while_archiving_is_one_line_and_exit_1(archived_run, tmp_path, form, fraction):
    size = int(archived_bytes(archived_run, form) * fraction)
    with faults.small_filesystem(tmp_path / "disk", size) as mnt:
        outcome = archive(archived_run, form, mnt)
        if outcome.returncode == 0:
            pytest.skip(f"{size} bytes were enough for the {form} archive")
        line = check_disk_full(outcome, "archivefactor", mnt)
        check_archive_left(form, mnt, line)
        if form == "dir" or fraction == 0.45:
            rerun_archive(archived_run, form, mnt)


SLOW_FORMS = ("zarr", "zarr.zip")  # encoding and decoding tables takes seconds: reruns only with --full


@pytest.mark.parametrize("form,leave", [
    *[(f, 64 << 10) for f in ("dir", "stream", "zarr.zip")],
    *[pytest.param(f, leave, marks=pytest.mark.full) for f in ARCHIVE_FORMS for leave in (0, 1 << 20)],
    *[pytest.param(f, 64 << 10, marks=pytest.mark.full) for f in ("tar", "zarr")]])
def test_the_disk_fills_while_d_builds_calibrated_data(archived_run, tmp_path, form, leave, full_suite):
    """-d concatenates calibrated data in a staging area on the output's disk (TMPDIR for a
    stream); another program fills that disk meanwhile."""
    with faults.small_filesystem(tmp_path / "disk", ROOMY) as mnt:
        staging = (mnt / ".stdout.staging-*" if form == "stream"
                   else mnt / "run" / ".factor-archive-staging" if form == "dir"
                   else mnt / f".{ARCHIVE_FORMS[form][0]}.staging-*")
        env = {"TMPDIR": str(mnt)} if form == "stream" else None
        outcome = archive(archived_run, form, mnt, env=env, when=faults.once_exists(staging),
                          action=faults.fill(mnt, leave))
        assert outcome.interrupted, "the staging area never appeared"
        line = check_disk_full(outcome, "archivefactor", mnt)
        # The directory form and a local zarr store write another member meanwhile (two at
        # once), which may fail first.
        if form not in ("dir", "zarr"):
            assert "while building calibrated data" in line, line
        check_archive_left(form, mnt, line)
        if form not in SLOW_FORMS or full_suite:
            rerun_archive(archived_run, form, mnt)


# -- restoring ----------------------------------------------------------------------------------

def restore(archived_run: dict, form: str, out: Path, *, clobber: bool = False, when=None, action=None):
    archive_path = archived_run["archives"]["tar" if form == "stdin" else form]
    argv = command("unarchivefactor") + ["-q"] + (["-c"] if clobber else []) \
        + ["-" if form == "stdin" else str(archive_path), str(out)]
    return faults.run(argv, when=when, action=action, stdin_file=archive_path if form == "stdin" else None)


def check_restore_left(out: Path, line: str) -> None:
    if out.exists():
        assert faults.leftovers(out) == []  # scratch space and partial members removed
        assert (out / ".factor-archive-restore-incomplete").exists()
        assert not (out / "factor.parset").exists()
    assert "run the same command with -c to complete it" in line


def rerun_restore(archived_run: dict, form: str, mnt: Path, out: Path) -> None:
    faults.grow(mnt, ROOMY)
    (mnt / "ballast").unlink(missing_ok=True)
    again = restore(archived_run, form, out, clobber=True)
    assert again.returncode == 0, again.stderr
    assert not (out / ".factor-archive-restore-incomplete").exists()
    assert (out / "factor.parset").exists() and faults.leftovers(out) == []


@pytest.mark.parametrize("form", RESTORE_FORMS)
@pytest.mark.parametrize("fraction", [0.4, *[pytest.param(f, marks=pytest.mark.full)
                                             for f in (0.05, 0.2, 0.6, 0.8, 0.95)]])
def test_a_full_disk_while_restoring_is_one_line_and_exit_1(archived_run, restored_bytes, tmp_path, form, fraction):
    with faults.small_filesystem(tmp_path / "disk", int(restored_bytes * fraction)) as mnt:
        out = mnt / "restored"
        outcome = restore(archived_run, form, out)
        line = check_disk_full(outcome, "unarchivefactor", mnt)
        check_restore_left(out, line)
        if form in ("dir", "tar") or fraction == 0.6:
            rerun_restore(archived_run, form, mnt, out)


@pytest.mark.parametrize("form", ["zarr", "zarr.zip"])
@pytest.mark.parametrize("delay", [0.0, pytest.param(0.2, marks=pytest.mark.full),
                                   pytest.param(0.6, marks=pytest.mark.full)])
def test_the_disk_fills_while_the_casacore_worker_writes_a_table(archived_run, tmp_path, form, delay, full_suite):
    """A zarr restore decodes tables in the casacore worker; casacore aborts the process it runs
    in when a write fails there, which is why it is not ours: the restore still ends in one line."""
    with faults.small_filesystem(tmp_path / "disk", ROOMY) as mnt:
        out = mnt / "restored"
        outcome = restore(archived_run, form, out, when=faults.once_worker_runs(delay), action=faults.fill(mnt))
        assert outcome.interrupted, "no casacore worker ran"
        line = check_disk_full(outcome, "unarchivefactor", mnt)
        check_restore_left(out, line)
        if full_suite:
            rerun_restore(archived_run, form, mnt, out)
