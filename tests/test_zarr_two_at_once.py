"""User story: a zarr archive into a local directory writes two members at once, and the store is
the one a writer taking one member at a time makes, object for object; the tables still choose
their codecs in the run's order."""
from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from pathlib import Path

from factor_archive.cli import archivefactor_main
from factor_archive.containers.zarr import ZarrWriter
from factor_archive.ms.casacore_table import codec_choice


def store_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_members_at_once_store_what_one_at_a_time_stores(sample_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1714564800")  # the same manifest, creation time included
    planned: list[str] = []
    real_plan = codec_choice.PlanningTurns.planning

    def noting(self):
        planned.append(threading.current_thread().name)
        return real_plan(self)

    monkeypatch.setattr(codec_choice.PlanningTurns, "planning", noting)
    writes: list[tuple[str, int, float, float]] = []  # (kind, thread, start, end)
    real_write = ZarrWriter.write

    def timed(self, member, *args, **kwargs):
        start = time.monotonic()
        try:
            return real_write(self, member, *args, **kwargs)
        finally:
            writes.append((member.kind, threading.get_ident(), start, time.monotonic()))

    monkeypatch.setattr(ZarrWriter, "write", timed)
    assert archivefactor_main(["-q", "-r", str(sample_run), str(tmp_path / "two.zarr")]) == 0
    assert planned, "the tables were not planned in turns"
    # The files went through a thread of their own, while tables were being written.
    table_threads = {t for kind, t, _, _ in writes if kind == "table"}
    tables = [(a, b) for kind, _, a, b in writes if kind == "table"]
    files_beside = [w for w in writes if w[0] == "file" and w[1] not in table_threads
                    and any(a < w[3] and w[2] < b for a, b in tables)]
    assert len(table_threads) == 2 and files_beside
    monkeypatch.setattr(ZarrWriter, "write", real_write)

    one_at_a_time = ZarrWriter.__init__

    def single(self, *args, **kwargs):
        one_at_a_time(self, *args, **kwargs)
        self.capabilities = dataclasses.replace(self.capabilities, parallel_members=False)

    monkeypatch.setattr(ZarrWriter, "__init__", single)
    assert archivefactor_main(["-q", "-r", str(sample_run), str(tmp_path / "one.zarr")]) == 0
    two, one = store_digests(tmp_path / "two.zarr"), store_digests(tmp_path / "one.zarr")
    assert len(two) > 100 and two == one


def test_a_table_plans_only_after_every_member_before_it():
    """Members 0-3 start in the wrong order; each plans only once those before it planned or
    finished (member 1 is a file: it never plans, it finishes)."""
    turns = codec_choice.PlanningTurns()
    order: list[int] = []
    lock = threading.Lock()

    def member(index: int, plans: bool, delay: float) -> None:
        time.sleep(delay)
        with turns.item(index):
            if plans:
                with turns.planning():
                    with lock:
                        order.append(index)
                    time.sleep(0.01)
                time.sleep(0.05)  # the table's encoding: the next one plans meanwhile

    threads = [threading.Thread(target=member, args=(i, i != 1, d))
               for i, d in [(3, 0.0), (2, 0.01), (1, 0.04), (0, 0.02)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order == [0, 2, 3]


def test_a_table_does_not_wait_for_a_file_still_being_written():
    """Files go through their own thread and plan nothing: the table after a file plans while
    the file is still being written."""
    turns = codec_choice.PlanningTurns()
    turns.plans_nothing(0)  # member 0, a file, not finished yet
    planned = threading.Event()

    def table() -> None:
        with turns.item(1), turns.planning():
            planned.set()

    t = threading.Thread(target=table)
    t.start()
    t.join(10)
    assert planned.is_set()


def test_a_file_array_document_is_the_one_zarr_writes(tmp_path):
    """A file's zarr.json, serialised without zarr, has zarr's bytes (non-ASCII path included)."""
    import json

    from factor_archive.containers.zarr.writer import _file_doc_bytes
    from factor_archive.ms.casacore_table import zarr_internals

    writer = ZarrWriter(tmp_path / "run.zarr")
    try:
        group = writer._group("members/files")
        for size, name in [(1, "a"), (5_000_000, "b")]:
            source = tmp_path / name
            source.write_bytes(b"x" * size)
            writer._write_file(source, group, name, f"site ø/{name}.fits", source.stat(), lambda n: None)
            stored = (writer.tmp / "members" / "files" / name / "zarr.json").read_bytes()
            assert stored == _file_doc_bytes(json.loads(stored)) == zarr_internals.node_bytes(json.loads(stored))
    finally:
        writer.abort()


def test_a_zip_is_still_written_one_member_at_a_time(tmp_path):
    writer = ZarrWriter(tmp_path / "run.zarr.zip")
    try:
        assert not writer.capabilities.parallel_members
    finally:
        writer.abort()
    local = ZarrWriter(tmp_path / "run.zarr")
    try:
        assert local.capabilities.parallel_members
    finally:
        local.abort()
