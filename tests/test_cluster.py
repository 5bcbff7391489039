"""User stories for archiving on a Dask cluster: a real LocalCluster of 2 worker processes stores
the sample run's members in a zarr store (a local directory, an S3 bucket), the client writes the
manifest, and the result is the single-process archive's."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from conftest import assert_tables_equal
from factor_archive.archive import plan_archive, write_archive
from factor_archive.cli import main, unarchivefactor_main
from factor_archive.cluster import MemberTask, StoreTarget, engine, open_cluster, run_tasks
from factor_archive.cluster.adapters import prepare_target, remembered_codec_choices, table_content_sha256
from factor_archive.cluster.runs import with_codec_choices
from factor_archive.cluster.worker import store_member
from factor_archive.containers.zarr import ZarrWriter
from factor_archive.errors import BadInput, FactorArchiveError
from factor_archive.manifest import Manifest
from factor_archive.plan import Options
from factor_archive.sample import write_sample_run

CHUNK = "chunks/Band_120.21MHz/L123456_SB000_uv.dppp.pre-cal_chunk0.ms"
PARMDB = "instrument_tables/facet3/L123456_SB000_uv.dppp.pre-cal_chunk0.merge_selfcal_parmdbs"
FITS = "images/facet1/facetimage/L123456_SB000_uv.dppp.pre-cal_chunk0.wsclean_image_full-image.fits"


# ---------------------------------------------------------------------------------------------
# Fixtures: one cluster, one sample run and its single-process archive for the whole module

@pytest.fixture(scope="module")
def client():
    # The test's own worker functions (below) travel by value: workers cannot import this module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with open_cluster("local:2") as c:
            c.wait_for_workers(2)
            yield c
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def parset(tmp_path_factory, dp3_ms_cache) -> Path:
    return write_sample_run(tmp_path_factory.mktemp("cluster") / "run", dp3=True, ms_cache=dp3_ms_cache)


@pytest.fixture(scope="module")
def reference(parset, tmp_path_factory) -> tuple[Manifest, int, Path]:
    """The single-process archive (``write_archive``, as archivefactor -r runs it): its manifest,
    the bytes its progress reported, and where it is."""
    import factor_archive.archive as archive_module

    counted = []

    class CountingReporter(archive_module.Reporter):
        def close(self) -> None:
            counted.append(self.done)
            super().close()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(archive_module, "Reporter", CountingReporter)
        store = tmp_path_factory.mktemp("ref") / "run.zarr"
        manifest = write_archive(zarr_plan(parset), str(store), quiet=True)
    return manifest, counted[0], store


def zarr_plan(parset: Path):
    plan = plan_archive(str(parset), Options(resumable=True, form="zarr"))
    assert all(item.concat is None for item in plan.items)
    return plan


def archive_on_cluster(client, plan, location: str, fn=store_member) -> tuple[Manifest, list[int]]:
    """The engine below ``archivefactor --cluster``, one task per member and the worker function
    ``fn`` (the test's own, to fail or crawl): the client creates the store, the workers store
    the members, the client writes the manifest last."""
    writer = ZarrWriter(location)
    try:
        target = prepare_target(writer, [item.member for item in plan.items])
        tasks = [MemberTask(item.member.kind, item.member, (str(item.source),), target) for item in plan.items]
        progress: list[int] = []
        with remembered_codec_choices():     # the client's codec choices, sent with the tables
            members = run_tasks(client, tasks, fn, progress.append, prepare=with_codec_choices)
        manifest = Manifest(container="zarr", run=plan.run_info(),
                            options={"resumable": True, "directions": [], "format": "zarr"},
                            members=members, missing=plan.missing, created="2026-01-01T00:00:00+00:00")
        writer.close(manifest)
    except BaseException:
        writer.abort()
        raise
    return manifest, progress


# Two archives of one run differ only in when they were made; everything else (every member's
# kind, size, checksums, mode, mtime, and how the zarr form stored it: nodes, column layouts,
# each column's codec and stored bytes, the metadata checksum) must be equal.
NOT_COMPARED = ("created",)   # the creation time: the reference was made earlier in the session


def comparable(manifest: Manifest, paths: set[str] | None = None) -> dict:
    """The whole manifest as compared between archives (only the members in ``paths``, if given)."""
    whole = dataclasses.asdict(manifest)
    for name in NOT_COMPARED:
        whole.pop(name)
    if paths is not None:
        whole["members"] = [m for m in whole["members"] if m["path"] in paths]
    return whole


def workers_of(stream: list[dict]) -> set[str]:
    return {t["worker"] for t in stream if str(t["key"]).startswith("factor-archive-")}


def runs_of(stream: list[dict], index: int) -> int:
    return sum(1 for t in stream if str(t["key"]).endswith(f"-{index}") and str(t["key"]).startswith("factor-archive-"))


# ---------------------------------------------------------------------------------------------
# A local store

def test_two_workers_store_the_run_as_the_single_process_archive_does(client, parset, reference, tmp_path):
    from distributed import get_task_stream

    store = tmp_path / "run.zarr"
    with get_task_stream(client) as stream:
        manifest, progress = archive_on_cluster(client, zarr_plan(parset), str(store))
    ref_manifest, ref_progress, _store = reference

    assert len(workers_of(stream.data)) == 2                  # both workers stored members
    assert comparable(manifest) == comparable(ref_manifest)  # codecs and stored bytes included
    table = next(m for m in manifest.members if m.path == CHUNK)
    assert table.sha256 == table_content_sha256(table.source)  # the table's content checksum
    assert sum(progress) == ref_progress                      # every byte, from both workers, once

    assert main(["verify", "-q", str(store)]) == 0
    out = tmp_path / "restored"
    assert unarchivefactor_main(["-q", str(store), str(out)]) == 0
    source_ms = Path(table.source)
    assert_tables_equal(source_ms, out / table.restore_path)
    parmdb = next(m for m in manifest.members if m.path == PARMDB)
    assert_tables_equal(Path(parmdb.source), out / parmdb.restore_path)


# ---------------------------------------------------------------------------------------------
# Failures

SLOW = "misc/factor.log"    # a member whose task takes a minute unless cancelled


def store_or_crawl(notes: Path, task, progress):
    """The plain worker function, except that SLOW crawls (reporting progress) for a minute and
    writes down in ``notes`` how it ended."""
    if task.name != SLOW:
        return store_member(task, progress)
    try:
        for _ in range(600):
            progress(1)
            time.sleep(0.1)
        (notes / "crawl-ended").write_text("finished")
    except FactorArchiveError as exc:
        (notes / "crawl-ended").write_text(type(exc).__name__)
        raise
    return store_member(task, progress)


def test_an_unreadable_member_stops_the_run_with_one_line_and_no_archive(client, parset, tmp_path):
    from distributed import get_task_stream

    plan = zarr_plan(parset)
    index = next(i for i, item in enumerate(plan.items) if item.member.path == FITS)
    source = plan.items[index].source
    hidden = source.with_name(source.name + ".away")
    os.rename(source, hidden)        # planned, then gone: every attempt fails the same way
    notes = tmp_path / "notes"
    notes.mkdir()
    store = tmp_path / "run.zarr"
    try:
        started = time.monotonic()
        with get_task_stream(client) as stream, pytest.raises(FactorArchiveError) as failure:
            archive_on_cluster(client, plan, str(store), fn=functools.partial(store_or_crawl, notes))
        took = time.monotonic() - started
    finally:
        os.rename(hidden, source)
    message = str(failure.value)
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert message.startswith(FITS), message
    assert runs_of(stream.data, index) == 1                   # deterministic: not retried
    assert took < 30                                          # the crawling task did not run on
    ended = notes / "crawl-ended"     # absent: cancelled before a worker started it
    assert not ended.exists() or ended.read_text() == "Cancelled"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]   # no store, no partial one


def die_once(notes: Path, task, progress):
    """The plain worker function, except that the first attempt at CHUNK stops after its first
    progress report, writes its process id in ``notes`` and waits to be killed."""
    if task.name != CHUNK:
        return store_member(task, progress)
    marker = notes / "first-attempt-pid"

    def report(n):
        progress(n)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(120)

    return store_member(task, report)


def test_a_worker_killed_mid_task_is_replaced_and_the_archive_completes(client, parset, reference, tmp_path):
    import threading

    notes = tmp_path / "notes"
    notes.mkdir()
    marker = notes / "first-attempt-pid"
    pids = set(client.run(os.getpid).values())
    killed: list[int] = []

    def kill_when_written():
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.05)                                      # the pid is written
        if marker.exists() and int(marker.read_text()) in pids:   # a worker process, not ours
            os.kill(int(marker.read_text()), signal.SIGKILL)
            killed.append(int(marker.read_text()))

    killer = threading.Thread(target=kill_when_written)
    killer.start()
    store = tmp_path / "run.zarr"
    try:
        manifest, progress = archive_on_cluster(client, zarr_plan(parset), str(store),
                                              fn=functools.partial(die_once, notes))
    finally:
        killer.join()
    assert killed
    assert comparable(manifest) == comparable(reference[0])
    assert sum(progress) == reference[1]                      # the rerun's bytes are not counted twice
    assert main(["verify", "-q", str(store)]) == 0
    client.wait_for_workers(2)                                # the nanny replaced the killed worker


def test_a_dead_attempts_late_first_group_document_is_found_by_verify(reference, tmp_path, capsys):
    """The one object a table task writes twice is the table's group document (first with the
    member's path and kind, last with the table's description). A first version from a dead
    attempt landing after the rerun's last (docs/cluster.md) is damage that verify reports,
    naming the member."""
    import shutil

    store = tmp_path / "run.zarr"
    shutil.copytree(reference[2], store)
    document = store / "members" / CHUNK / "zarr.json"
    final = json.loads(document.read_text())
    first = {**final, "attributes": {"factor_archive": final["attributes"]["factor_archive"]}}
    assert first != final
    document.write_text(json.dumps(first))
    assert main(["verify", "-q", str(store)]) == 1
    assert f"{CHUNK}: table checksum in the store differs from the manifest" in capsys.readouterr().out


def always_breaks(notes: Path, task, progress):
    with open(notes / "attempts", "a") as f:
        f.write(f"{os.getpid()}\n")
    raise RuntimeError("a bug in a worker function")


def test_an_unexpected_error_is_retried_once_then_reported(client, parset, tmp_path):
    plan = zarr_plan(parset)
    target = StoreTarget(str(tmp_path / "nowhere"))
    tasks = [MemberTask(plan.items[0].member.kind, plan.items[0].member, (str(plan.items[0].source),), target)]
    with pytest.raises(FactorArchiveError) as failure:
        run_tasks(client, tasks, functools.partial(always_breaks, tmp_path))
    assert str(failure.value) == ("misc/factor.parset: failed on the cluster "
                                  "(RuntimeError: a bug in a worker function)")
    assert len((tmp_path / "attempts").read_text().splitlines()) == 1 + engine.UNEXPECTED_RETRIES


# ---------------------------------------------------------------------------------------------
# S3

@pytest.mark.parametrize("whole_run", [False, pytest.param(True, marks=pytest.mark.full)],
                         ids=["two-tables-and-two-files", "whole-run-and-restore"])
def test_two_workers_store_the_run_in_an_s3_bucket(client, parset, reference, tmp_path, monkeypatch, whole_run):
    """CI stores two tables and two files (writing and verifying the whole run in SeaweedFS takes
    a minute); --full stores the whole run and restores it."""
    from s3server import weed_binary

    if weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed")
    plan = zarr_plan(parset)
    if not whole_run:
        plan.items = [item for item in plan.items if item.member.path in (CHUNK, PARMDB, FITS, "misc/factor.parset")]
    with seaweed_seen_by_cluster(client, tmp_path, monkeypatch) as s3:
        url = "s3://factor-archives/runs/L123456"
        manifest, progress = archive_on_cluster(client, plan, url)
        stored = {item.member.path for item in plan.items}
        assert comparable(manifest, stored) == comparable(reference[0], stored)
        assert s3.filesystem().exists(f"factor-archives/runs/L123456/members/{CHUNK}/DATA/zarr.json")
        assert main(["verify", "-q", url]) == 0
        if whole_run:
            assert sum(progress) == reference[1]
            out = tmp_path / "restored"
            assert unarchivefactor_main(["-q", url, str(out)]) == 0
            table = next(m for m in manifest.members if m.path == CHUNK)
            assert_tables_equal(Path(table.source), out / table.restore_path)


@contextlib.contextmanager
def seaweed_seen_by_cluster(client, tmp_path: Path, monkeypatch) -> Iterator:
    """A SeaweedFS server with the bucket "factor-archives", whose keys and endpoint the client
    and every worker find in their environment, as on a cluster; the workers' environment is
    given back afterwards."""
    from s3server import SeaweedS3

    with SeaweedS3(tmp_path / "seaweed") as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        for name in ("AWS_ENDPOINT_URL_S3", "FACTOR_ARCHIVE_S3_ENDPOINT"):
            monkeypatch.delenv(name, raising=False)
        before = client.run(_environment_of, list(s3.env))
        client.run(_restore_environment, s3.env)
        try:
            s3.make_bucket("factor-archives")
            yield s3
        finally:
            for address, saved in before.items():
                client.run(_restore_environment, saved, workers=[address])


def _environment_of(names: list[str]) -> dict:
    return {name: os.environ.get(name) for name in names}


def _restore_environment(saved: dict) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_local_workers_keep_glibcs_own_memory_trimming(client):
    """Dask's nannies set MALLOC_TRIM_THRESHOLD_ to 64 KiB; the codec's block buffers then cost
    a worker far more system CPU than one process (benchmarks/README.md), so local:N unsets it."""
    assert set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}


def test_a_local_cluster_leaves_port_8787_to_the_users_own_scheduler(client):
    """local:N's scheduler serves its health and metrics endpoint on a free loopback port."""
    address = client.scheduler_info()["services"].get("dashboard")
    assert address != 8787


def test_credentials_never_travel_in_a_task():
    with pytest.raises(BadInput, match="credential"):
        StoreTarget("s3://bucket/run", {"key": "AKIA...", "endpoint_url": "http://s3"})
    target = StoreTarget("s3://bucket/run", {"endpoint_url": "http://s3:8333"})
    assert "8333" not in repr(target)


# ---------------------------------------------------------------------------------------------
# Connecting

@pytest.mark.parametrize("spec", ["local:0", "local:two", "head:8786", "local", ""])
def test_a_bad_cluster_spec_is_one_line(spec):
    with pytest.raises(BadInput) as failure, open_cluster(spec):
        pass
    message = str(failure.value)
    assert "\n" not in message and message.startswith(f"--cluster {spec}:")


def test_an_unreachable_scheduler_is_reported_within_the_timeout(monkeypatch):
    from s3server import free_ports

    monkeypatch.setattr(engine, "CONNECT_TIMEOUT", 2.0)
    address = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    started = time.monotonic()
    with pytest.raises(BadInput) as failure, open_cluster(address):
        pass
    assert time.monotonic() - started < 15
    message = str(failure.value)
    assert message.startswith(f"--cluster {address}: no Dask scheduler answers there") and "\n" not in message


# ---------------------------------------------------------------------------------------------
# archivefactor --cluster / unarchivefactor --cluster, end to end (the module's cluster, by address)

def restored_equal(manifest: Manifest, ours: Path, theirs: Path) -> None:
    """Two restores of the same run into sibling directories of equal name length are the same
    run: every file byte for byte once the output path is swapped, every table's content."""
    for m in manifest.members:
        if m.restore_path is None or m.kind == "link":
            continue
        a, b = ours / m.restore_path, theirs / m.restore_path
        if m.kind == "table":
            assert_tables_equal(a, b)
        else:
            assert a.read_bytes().replace(str(ours).encode(), str(theirs).encode()) == b.read_bytes(), m.path
    assert (ours / "factor.parset").is_file() and not (ours / ".factor-archive-restore-incomplete").exists()


def test_archivefactor_on_a_cluster_archives_and_restores_as_one_process_does(client, parset, reference, tmp_path):
    from factor_archive.cli import archivefactor_main
    from factor_archive.containers.zarr import ZarrReader

    address = client.scheduler.address
    store = tmp_path / "run.zarr"
    with __import__("distributed").get_task_stream(client) as stream:
        assert archivefactor_main(["-q", "-r", "--cluster", address, str(parset), str(store)]) == 0
    assert len(workers_of(stream.data)) == 2
    with ZarrReader(store) as reader:
        manifest = reader.manifest
    assert comparable(manifest) == comparable(reference[0])
    # Small files went in batches: fewer tasks than members.
    assert len({t["key"] for t in stream.data if str(t["key"]).startswith("factor-archive-")}) < len(manifest.members)

    assert unarchivefactor_main(["-q", "--cluster", address, str(store), str(tmp_path / "r1")]) == 0
    assert unarchivefactor_main(["-q", str(store), str(tmp_path / "r2")]) == 0
    restored_equal(manifest, tmp_path / "r1", tmp_path / "r2")


def test_tar_and_directory_archives_refuse_a_cluster_in_one_line(parset, tmp_path, capsys):
    from factor_archive.cli import archivefactor_main

    assert archivefactor_main(["-q", "-r", "--cluster", "local:2", str(parset), str(tmp_path / "run.tar")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("archivefactor: error: --cluster: the tar form is written by one process")
    assert len(err.splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_a_member_gone_after_planning_stops_the_cluster_archive_in_one_line(client, parset, tmp_path):
    plan = zarr_plan(parset)
    source = next(item.source for item in plan.items if item.member.path == FITS)
    hidden = source.with_name(source.name + ".away")
    os.rename(source, hidden)        # planned, then unreadable: every attempt fails the same way
    try:
        with pytest.raises(FactorArchiveError) as failure:
            write_archive(plan, str(tmp_path / "run.zarr"), quiet=True, cluster=client.scheduler.address)
    finally:
        os.rename(hidden, source)
    message = str(failure.value)
    assert len(message.splitlines()) == 1 and FITS in message, message
    assert list(tmp_path.iterdir()) == []            # no store, no partial one


def test_ctrl_c_during_a_cluster_archive_exits_130_and_keeps_nothing(client, parset, tmp_path):
    import faults

    out = tmp_path / "o" / "run.zarr"
    out.parent.mkdir()
    argv = faults.command("archivefactor") + ["-q", "-r", "--cluster", client.scheduler.address, str(parset), str(out)]
    # Once the workers write members into the partial store.
    outcome = faults.run(argv, when=faults.once_exists(out.parent / ".run.zarr.partial-*", delay=0.5))
    assert outcome.interrupted
    assert outcome.returncode == 130, outcome.stderr
    line = faults.assert_one_clean_line(outcome, "archivefactor", "interrupted (SIGINT)")
    if "after the work was complete" not in line:
        assert list(out.parent.iterdir()) == []      # the partial store removed
    assert client.run(_running_keys_of_run) == {w: [] for w in client.scheduler_info()["workers"]}


def test_ctrl_c_during_a_cluster_restore_exits_130_and_the_output_is_marked_incomplete(client, reference, tmp_path):
    import faults

    out = tmp_path / "restored"
    argv = faults.command("unarchivefactor") + ["-q", "--cluster", client.scheduler.address,
                                                str(reference[2]), str(out)]
    # Once the workers decode tables into the output.
    outcome = faults.run(argv, when=faults.once_exists(out / "chunks", delay=0.3))
    assert outcome.interrupted
    assert outcome.returncode == 130, outcome.stderr
    line = faults.assert_one_clean_line(outcome, "unarchivefactor", "interrupted (SIGINT)")
    if "after the work was complete" not in line:
        assert (out / ".factor-archive-restore-incomplete").is_file() and not (out / "factor.parset").exists()
        assert faults.leftovers(out) == []           # no partial table left by a worker
    assert client.run(_running_keys_of_run) == {w: [] for w in client.scheduler_info()["workers"]}


def _running_keys_of_run(dask_worker=None) -> list[str]:
    """Tasks of an archive still running on this worker (none, once the client has stopped)."""
    with dask_worker.active_threads_lock:
        return [str(k) for k in dask_worker.active_threads.values() if str(k).startswith("factor-archive-")]


@pytest.mark.full
def test_archivefactor_on_a_cluster_to_s3_and_back(client, parset, reference, tmp_path, monkeypatch):
    """The whole run through the CLI into SeaweedFS and back (about a minute: --full)."""
    from factor_archive.cli import archivefactor_main
    from factor_archive.containers.zarr import ZarrReader
    from s3server import weed_binary

    if weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed")
    with seaweed_seen_by_cluster(client, tmp_path, monkeypatch):
        url = "s3://factor-archives/runs/cli"
        address = client.scheduler.address
        assert archivefactor_main(["-q", "-r", "--cluster", address, str(parset), url]) == 0
        with ZarrReader(url) as reader:
            manifest = reader.manifest
        assert comparable(manifest) == comparable(reference[0])
        assert unarchivefactor_main(["-q", "--cluster", address, url, str(tmp_path / "r1")]) == 0
        assert unarchivefactor_main(["-q", url, str(tmp_path / "r2")]) == 0
        restored_equal(manifest, tmp_path / "r1", tmp_path / "r2")
