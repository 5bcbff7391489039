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
    assert archivefactor_main(["-q", "-r", str(sample_run), str(tmp_path / "two.zarr")]) == 0
    assert planned, "the tables were not planned in turns"

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
