"""User story: restoring a zarr archive from local disk, each table is decoded whole (reading,
decompressing, checking, casacore writing) by a worker process of its own, one per core, with
the files restored meanwhile by the restoring process; the tables come back the same, progress
is reported while they are decoded, and a failure there reaches the user as it would from here."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from conftest import assert_tables_equal
from factor_archive.cli import archivefactor_main, unarchivefactor_main
from factor_archive.containers.zarr import ZarrReader
from factor_archive.containers.zarr.decoders import tables_at_once
from factor_archive.ms.casacore_table import worker_client


def test_tables_are_decoded_by_workers_while_files_are_restored_here(sample_run, tmp_path, monkeypatch):
    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    reader = ZarrReader(str(store))
    tables = [m for m in reader.manifest.members
              if m.kind == "table" and m.extra["zarr"]["stored"] == "columns"]
    reader.close()
    assert len(tables) >= 3

    def not_here(self, member, out, *args):  # what a worker runs; here it must not run
        raise AssertionError(f"{member.path} decoded in the restoring process")

    monkeypatch.setattr(ZarrReader, "_decode_member", not_here)
    started: list[int] = []
    real_init = worker_client._Worker.__init__

    def counting(self, *args, **kwargs):
        started.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(worker_client._Worker, "__init__", counting)
    reported: dict[str, int] = {}
    real_extract = ZarrReader.extract

    def counting_progress(self, members, dest_for, progress=None):
        def progress_seen(nbytes: int) -> None:
            name = threading.current_thread().name
            reported[name] = reported.get(name, 0) + nbytes
            if progress is not None:
                progress(nbytes)
        return real_extract(self, members, dest_for, progress_seen)

    monkeypatch.setattr(ZarrReader, "extract", counting_progress)

    out = tmp_path / "restored"
    assert unarchivefactor_main(["-q", str(store), str(out)]) == 0
    assert len(started) == min(tables_at_once(), len(tables))  # started ahead, kept for the next table
    for member in tables:
        assert_tables_equal(Path(member.source), out / member.restore_path)
    # The column values decoded, reported by the workers (heard on the thread reading their replies).
    assert reported.get("table-codec-worker", 0) > 0


def test_a_worker_error_keeps_its_kind():
    from factor_archive.errors import BadInput, DamagedArchive, DiskFull, FactorArchiveError

    for name, cls in (("BadInput", BadInput), ("DamagedArchive", DamagedArchive),
                      ("DiskFull", DiskFull), ("FactorArchiveError", FactorArchiveError)):
        err = worker_client._reply_error(("X", name, "out/a.ms: the problem"))
        assert type(err) is cls and str(err) == "out/a.ms: the problem"
    other = worker_client._reply_error(("RuntimeError", "other", "casacore said so"))
    assert isinstance(other, worker_client._WorkerError) and str(other) == "RuntimeError: casacore said so"
    with pytest.raises(FactorArchiveError):
        raise worker_client._reply_error(("X", "exit", "not an error class"))


def test_a_damaged_table_fails_the_restore_in_one_line_with_status_1(sample_run, tmp_path, capsys):
    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    data = max((p for p in store.rglob("*") if p.is_file() and "DATA" in p.parts), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    data.write_bytes(bytes(raw))
    capsys.readouterr()
    assert unarchivefactor_main(["-q", str(store), str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "DATA" in err, err
    assert not (tmp_path / "r" / "factor.parset").exists()


def test_a_worker_that_dies_while_decoding_is_reported_naming_the_table(sample_run, tmp_path, monkeypatch, capsys):
    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    real_run = worker_client._Worker.run

    def dying(self, name, args, stop, progress=None):
        if name == "decode_stored_table":
            self.proc.kill()  # as the OOM killer or a kill -9 of the worker would
            self.proc.wait()
        return real_run(self, name, args, stop, progress)

    monkeypatch.setattr(worker_client._Worker, "run", dying)
    capsys.readouterr()
    assert unarchivefactor_main(["-q", str(store), str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "casacore worker process" in err and ".ms" in err and str(store) in err, err
    assert not (tmp_path / "r" / "factor.parset").exists()


def test_a_restore_from_a_local_store_imports_zarr_in_none_of_its_processes(sample_run, tmp_path):
    """zarr costs each process about 0.3 s of CPU to import, before the first table starts: a
    local store is read from its files (local_store), by the restoring process and its workers.
    Each process of the restore notes its start, and any import of zarr, in a log."""
    import os
    import subprocess
    import sys

    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    hook = tmp_path / "hook"
    hook.mkdir()
    log = tmp_path / "imports.log"
    (hook / "sitecustomize.py").write_text(f"""
import os, sys
LOG = {str(log)!r}
def note(text):
    with open(LOG, "a") as f:
        f.write(f"{{os.getpid()}} {{text}} {{' '.join(sys.orig_argv)}}\\n")
note("started")
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "zarr":
            note("imports zarr")
        return None
sys.meta_path.insert(0, Watch())
""")
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), src, os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "restored"
    done = subprocess.run([sys.executable, "-c", "import sys; from factor_archive.cli import unarchivefactor_main; "
                           "sys.exit(unarchivefactor_main(sys.argv[1:]))", "-q", str(store), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = log.read_text().splitlines()
    workers = [line for line in lines if "started" in line and "casacore_table.worker" in line]
    assert len(workers) == 2, lines            # the restoring process started two workers
    assert not [line for line in lines if "imports zarr" in line], lines
    reader = ZarrReader(str(store))
    tables = [m for m in reader.manifest.members if m.kind == "table" and m.extra["zarr"]["stored"] == "columns"]
    reader.close()
    for member in tables:
        assert_tables_equal(Path(member.source), out / member.restore_path)


@pytest.mark.parametrize("keep_fsync", [False, True])
def test_the_restores_decoders_skip_casacores_fsyncs_unless_told_not_to(sample_run, tmp_path, monkeypatch, keep_fsync):
    """casacore fsyncs every table it flushes or closes; a restore syncs its whole output before it
    is complete, so its decoders run with libeatmydata preloaded (when installed), which makes
    those fsyncs return at once. FACTOR_ARCHIVE_WORKER_FSYNC=1 keeps them."""
    if worker_client.fsync_skipper() is None and not keep_fsync:
        pytest.skip("libeatmydata is not installed (scripts/setup.sh installs it)")
    if keep_fsync:
        monkeypatch.setenv(worker_client.FSYNC_ENV, "1")
    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    preloaded: list[bool] = []
    real_run = worker_client._Worker.run

    def noting(self, name, args, stop, progress=None):
        if name == "decode_stored_table":  # the worker runs: what it has loaded shows in its maps
            preloaded.append("libeatmydata" in Path(f"/proc/{self.proc.pid}/maps").read_text())
        return real_run(self, name, args, stop, progress)

    monkeypatch.setattr(worker_client._Worker, "run", noting)
    out = tmp_path / "restored"
    assert unarchivefactor_main(["-q", str(store), str(out)]) == 0
    assert len(preloaded) >= 3 and set(preloaded) == {not keep_fsync}
    assert not (out / ".factor-archive-restore-incomplete").exists()
    reader = ZarrReader(str(store))
    tables = [m for m in reader.manifest.members if m.kind == "table" and m.extra["zarr"]["stored"] == "columns"]
    reader.close()
    for member in tables:
        assert_tables_equal(Path(member.source), out / member.restore_path)


def test_a_worker_gets_its_next_table_while_the_last_one_is_put_in_place(sample_run, tmp_path, monkeypatch):
    """Putting a decoded table in place (mode, mtime, rename, work directory removed) waited up to
    0.25 s behind the disk's write-back; the worker that decoded it does not wait for that: the
    thread that handed it its table hands it the next one meanwhile."""
    import time

    from factor_archive.containers.zarr import reader as zarr_reader
    from factor_archive.ms import casacore_table

    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    installs: dict[str, tuple[float, float]] = {}  # table -> while it was put in place
    real_install = zarr_reader.install

    def slow(tmp, dest):
        start = time.monotonic()
        if dest.name.endswith(".ms"):
            time.sleep(0.5)
        real_install(tmp, dest)
        installs[dest.name] = (start, time.monotonic())

    decodes: list[tuple[str, int, float]] = []  # (table, thread handing it over, when)
    real_run = casacore_table.run_in_worker

    def noting(name, store_path, out, *args, **kwargs):
        decodes.append((Path(out).name, threading.get_ident(), time.monotonic()))
        return real_run(name, store_path, out, *args, **kwargs)

    monkeypatch.setattr(zarr_reader, "install", slow)
    monkeypatch.setattr(casacore_table, "run_in_worker", noting)
    out = tmp_path / "restored"
    assert unarchivefactor_main(["-q", str(store), str(out)]) == 0
    handed = {table: thread for table, thread, _ in decodes}
    assert any(a < when < b for table, (a, b) in installs.items() if table in handed
               for other, thread, when in decodes if other != table and thread == handed[table]), \
        (installs, decodes)
    chunks = sample_run.parent / "wdir" / "chunks"  # sample_run: the parset
    src = next(p for p in sorted(chunks.rglob("*.ms")) if not p.is_symlink())
    assert_tables_equal(src, out / "chunks" / src.relative_to(chunks))


def test_a_table_that_cannot_be_put_in_place_fails_the_restore_in_one_line(sample_run, tmp_path, monkeypatch,
                                                                           capsys):
    import errno

    from factor_archive.containers.zarr import reader as zarr_reader

    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    real_install = zarr_reader.install

    def refusing(tmp, dest):
        if dest.name.endswith(".ms"):
            raise OSError(errno.EACCES, "Permission denied", str(dest))
        real_install(tmp, dest)

    monkeypatch.setattr(zarr_reader, "install", refusing)
    capsys.readouterr()
    out = tmp_path / "r"
    assert unarchivefactor_main(["-q", str(store), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and ".ms" in err and "ermission" in err, err
    assert (out / ".factor-archive-restore-incomplete").exists()
    assert not list(out.rglob(".*.partial"))
