"""User story: a zarr restore is synced at its end, and the disk does not wait for that sync to
start: every restored table's big files, and every big plain file, have their write-back started
once they are complete, so the final sync has little left to write."""
from __future__ import annotations

import json
import os
from pathlib import Path

from factor_archive.cli import archivefactor_main, unarchivefactor_main
from factor_archive.io import durable
from fault_cases import manifest_json

SMALL = 4096  # the threshold of a "big" file, lowered so that a sample run's tables have some


def restored_files(root: Path) -> dict[tuple[int, int], tuple[str, int]]:
    """(device, inode) -> (path relative to root, size) of every regular file below root."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            out[(st.st_dev, st.st_ino)] = (str(path.relative_to(root)), st.st_size)
    return out


def test_each_restored_table_and_big_file_starts_its_write_back(sample_run, tmp_path, monkeypatch):
    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0

    started: dict[tuple[int, int], int] = {}   # (device, inode) -> size when write-back started

    def noting(fd: int) -> None:
        st = os.fstat(fd)
        started[(st.st_dev, st.st_ino)] = st.st_size

    monkeypatch.setattr(durable, "WRITEBACK_MIN", SMALL)
    monkeypatch.setattr(durable, "start_writeback", noting)
    out = tmp_path / "restored"
    assert unarchivefactor_main(["-q", str(store), str(out)]) == 0

    files = restored_files(out)
    manifest = json.loads(manifest_json(store))
    tables = [m["restore_path"] for m in manifest["members"] if m["kind"] == "table"
              and m["restore_path"] and m["extra"]["zarr"]["stored"] == "columns"]
    assert tables
    in_tables = {key for key, (rel, size) in files.items()
                 if size >= SMALL and any(rel.startswith(t + "/") for t in tables)}
    assert in_tables, "the sample run's tables have no file over the lowered threshold"
    big_plain = {key for key, (rel, size) in files.items() if size >= SMALL and key not in in_tables}
    assert big_plain, "the sample run has no plain file over the lowered threshold"
    # Every big file of every table (subtables included) and every big plain file: once each.
    assert in_tables <= started.keys()
    assert big_plain - started.keys() <= _rewritten(manifest, files)
    # Small files are left to the final sync.
    assert all(size >= SMALL for size in started.values())
    assert not (out / ".factor-archive-restore-incomplete").exists()


def _rewritten(manifest: dict, files: dict) -> set[tuple[int, int]]:
    """Files whose paths were rewritten after their restore: a new file (inode) in their place."""
    paths = {m["restore_path"] for m in manifest["members"] if m.get("rewrite")}
    return {key for key, (rel, _size) in files.items() if rel in paths}
