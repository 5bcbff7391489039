"""Story: a zarr restore decodes its tables two at a time and restores the run's small files on a
thread of their own. The files wait for the last round of tables, so that they fill the time the
last tables leave a core idle instead of slowing the first ones; a failure while they wait still
ends the restore at once, naming the member that failed."""
from __future__ import annotations

import threading
import time

from factor_archive.containers.base import extract_at_once


def run(jobs: list[tuple[str, bool]], *, beside_last: bool, fail: str | None = None) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def one(name: str, is_file: bool) -> None:
        with lock:
            events.append(("start", name))
        if name == fail:
            raise RuntimeError(f"{name} failed")
        time.sleep(0.005 if is_file else 0.05)
        with lock:
            events.append(("end", name))

    extract_at_once(jobs, one, workers=2, name="test", beside=lambda _name, is_file: is_file,
                    beside_last=beside_last)
    return events


JOBS = [("chunk0", False), ("parset", True), ("chunk1", False), ("state", True), ("chunk2", False),
        ("chunk3", False), ("mapfile", True)]


def test_the_files_start_with_the_last_round_of_tables():
    events = run(JOBS, beside_last=True)
    starts = [name for kind, name in events if kind == "start"]
    assert sorted(starts) == sorted(name for name, _ in JOBS)
    # Two tables at a time: the last round (chunk2 and chunk3) begins when chunk2 starts.
    assert starts.index("parset") > starts.index("chunk2")
    assert ("end", "chunk0") in events[:events.index(("start", "parset"))]
    assert [n for n in starts if n in ("parset", "state", "mapfile")] == ["parset", "state", "mapfile"]


def test_without_beside_last_the_files_start_at_once():
    starts = [name for kind, name in run(JOBS, beside_last=False) if kind == "start"]
    assert starts.index("parset") < starts.index("chunk3")


def test_a_table_failing_while_the_files_wait_ends_the_restore_naming_it():
    raised: list[BaseException] = []

    def restore() -> None:
        try:
            run(JOBS, beside_last=True, fail="chunk0")
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=restore, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the files went on waiting for tables that never started"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError) and "chunk0 failed" in str(raised[0])


def test_only_files_or_only_tables():
    files = [("a", True), ("b", True)]
    assert [n for k, n in run(files, beside_last=True) if k == "end"] == ["a", "b"]
    tables = [("t0", False), ("t1", False), ("t2", False)]
    assert sorted(n for k, n in run(tables, beside_last=True) if k == "end") == ["t0", "t1", "t2"]
