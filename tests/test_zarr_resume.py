"""User stories: a zarr archive killed half-way, on local disk and on S3, is completed by running
the same command again, which keeps what the killed run stored (each member's resume record
checked against the store and the source) and writes only the rest; the manifest comes last."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import jsonschema
import pytest

import faults
from factor_archive.cli import archivefactor_main, main
from factor_archive.containers.zarr.resume import RESUME_DIR

RECORD_SCHEMA = json.loads((Path(__file__).parents[1] / "formats" /
                            "zarr-resume-record.schema.json").read_text())
KILL_AT = 0.5        # the killed run is stopped once records cover half the archive's bytes
AT_MOST = 0.6        # the rerun may write at most this share of the bytes again


def recorded_bytes(records: dict[str, bytes]) -> int:
    """The bytes of stored objects the resume records read so far vouch for."""
    total = 0
    for data in records.values():
        try:
            total += sum(size for size, _md5 in json.loads(data)["objects"].values())
        except (ValueError, KeyError, TypeError):
            pass                        # being written: counted next time
    return total


def member_checksums(manifest: dict) -> dict[str, tuple[str, int]]:
    return {m["path"]: (m["sha256"], m["size"]) for m in manifest["members"]}


def zarr_manifest(location) -> dict:
    from factor_archive.containers.zarr import ZarrReader

    with ZarrReader(str(location)) as reader:
        return json.loads(reader.manifest.to_json())


def kill_when_half_recorded(argv, read_records, total: int, env: dict | None = None) -> faults.Outcome:
    """Run the archive command and kill -9 it once its records vouch for KILL_AT of ``total``."""
    seen: dict[str, bytes] = {}
    last = [0.0]

    def half_way(_at, _proc) -> bool:
        if time.monotonic() - last[0] < 0.05:
            return False
        last[0] = time.monotonic()
        seen.update(read_records(set(seen)))
        return recorded_bytes(seen) >= KILL_AT * total

    return faults.run(argv, when=half_way, sig=signal.SIGKILL, env=env)


def watch_uploads(monkeypatch) -> dict:
    """Note the most zarr objects being uploaded at once (each upload takes a little longer)."""
    import asyncio

    from zarr.storage import FsspecStore

    state = {"now": 0, "most": 0}
    real = FsspecStore.set

    async def watched(self, key, value):
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        try:
            await asyncio.sleep(0.01)
            return await real(self, key, value)
        finally:
            state["now"] -= 1

    monkeypatch.setattr(FsspecStore, "set", watched)
    return state


def test_a_killed_zarr_archive_on_local_disk_is_completed_writing_only_what_is_missing(
        sample_run, tmp_path, capfd):
    """... and a member whose stored object was damaged, or whose source changed, is written again."""
    # The same run archived once without interruption: what a complete store holds.
    whole = tmp_path / "whole.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(whole)]) == 0
    total = faults.tree_bytes(whole)
    expected = member_checksums(zarr_manifest(whole))

    out = tmp_path / "run.zarr"

    def read_records(known: set[str]) -> dict[str, bytes]:
        found = {}
        for path in tmp_path.glob(f".run.zarr.partial-*/{RESUME_DIR}/*.json"):
            if str(path) not in known:
                try:
                    found[str(path)] = path.read_bytes()
                except OSError:
                    pass
        return found

    killed = kill_when_half_recorded(faults.command("archivefactor") + ["-q", "-r", str(sample_run),
                                                                          str(out)], read_records, total)
    assert killed.interrupted and killed.returncode == -signal.SIGKILL, killed.stderr
    [partial] = tmp_path.glob(".run.zarr.partial-*")
    assert not out.exists() and not (partial / "manifest.json").exists()
    records = list((partial / RESUME_DIR).glob("*.json"))
    assert records
    for record in records:              # what formats/zarr-resume-record.schema.json says
        jsonschema.validate(json.loads(record.read_bytes()), RECORD_SCHEMA)
        # a local store's objects are recorded with their XXH3-128
        assert all(d.startswith("xxh3:") for _size, d in json.loads(record.read_bytes())["objects"].values())
    left = {str(p.relative_to(partial)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in partial.rglob("*") if p.is_file()}

    # Meanwhile one stored object was damaged (same size) and one source file was touched:
    # neither member may be kept.
    recorded = sorted((json.loads(r.read_bytes()) for r in records),
                      key=lambda r: sum(size for size, _ in r["objects"].values()))
    damaged = next(r for r in recorded if r["objects"])          # small members: the rerun
    shard = max(damaged["objects"], key=lambda k: damaged["objects"][k][0])   # stays cheap
    with open(partial / shard, "r+b") as f:
        f.seek(damaged["objects"][shard][0] // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    touched = next(r for r in recorded if r["member"]["kind"] == "file" and r is not damaged)
    source = Path(touched["member"]["source"])
    os.utime(source, (source.stat().st_atime, source.stat().st_mtime + 10))
    # Records as earlier versions wrote them for a local store (MD5s, then SHA-256s) are still
    # read: their members are kept.
    olds = [(p, doc) for p in records for doc in [json.loads(p.read_bytes())]
            if doc["objects"] and doc["member"]["path"] not in
            (damaged["member"]["path"], touched["member"]["path"])][:2]
    assert len(olds) == 2
    for (old_path, old), digest in zip(olds, (lambda b: hashlib.md5(b).hexdigest(),
                                              lambda b: "sha256:" + hashlib.sha256(b).hexdigest())):
        old["objects"] = {k: [size, digest((partial / k).read_bytes())]
                          for k, (size, _xxh3) in old["objects"].items()}
        jsonschema.validate(old, RECORD_SCHEMA)
        old_path.write_text(json.dumps(old))

    capfd.readouterr()
    assert archivefactor_main(["-r", str(sample_run), str(out)]) == 0
    err = capfd.readouterr().err
    assert f"{out}: continuing an interrupted archive" in err

    written_again = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and left.get(
        str(p.relative_to(out))) != (p.stat().st_ino, p.stat().st_mtime_ns))
    assert 0 < written_again < AT_MOST * total, (written_again, total)
    manifest = zarr_manifest(out)
    assert member_checksums(manifest) == expected
    for key in [shard, *touched["objects"]]:      # both written again
        assert left[key] != ((out / key).stat().st_ino, (out / key).stat().st_mtime_ns), key
    for key in [k for _path, old in olds for k in old["objects"]]:   # kept
        assert left[key] == ((out / key).stat().st_ino, (out / key).stat().st_mtime_ns), key
    [member] = [m for m in manifest["members"] if m["path"] == touched["member"]["path"]]
    assert member["mtime"] == source.stat().st_mtime
    assert main(["verify", "-q", str(out)]) == 0
    assert not (out / RESUME_DIR).exists() and list(tmp_path.glob(".run.zarr.*")) == []


def test_a_killed_zarr_upload_is_completed_uploading_only_what_is_missing(sample_run, tmp_path,
                                                                          monkeypatch, capfd):
    from s3server import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed")
    whole = tmp_path / "whole.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(whole)]) == 0
    total = faults.tree_bytes(whole)
    expected = member_checksums(zarr_manifest(whole))
    with SeaweedS3(tmp_path / "seaweed") as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.delenv("FACTOR_ARCHIVE_S3_ENDPOINT", raising=False)
        s3.make_bucket("archives")
        url, prefix = "s3://archives/runs/L123456", "archives/runs/L123456"
        fs = s3.filesystem()

        def read_records(known: set[str]) -> dict[str, bytes]:
            try:
                keys = [k for k in fs.find(f"{prefix}/{RESUME_DIR}") if k not in known]
                return fs.cat(keys) if keys else {}
            except (OSError, FileNotFoundError):
                return {}

        def listing() -> dict[str, tuple]:
            fs.invalidate_cache()
            return {k: (v["size"], v["ETag"], v["LastModified"])
                    for k, v in fs.find(prefix, detail=True).items()}

        killed = kill_when_half_recorded(faults.command("archivefactor") + ["-q", "-r", str(sample_run),
                                                                              url], read_records, total)
        assert killed.interrupted and killed.returncode == -signal.SIGKILL, killed.stderr
        left = listing()
        assert not any(k.startswith(f"{prefix}/manifest.json/") for k in left)
        time.sleep(1.1)                 # an object sent again gets a later LastModified (1 s steps)

        capfd.readouterr()
        in_flight = watch_uploads(monkeypatch)
        assert archivefactor_main(["-r", "--s3-concurrency", "2", str(sample_run), url]) == 0
        assert f"{url}: continuing an interrupted archive" in capfd.readouterr().err
        assert in_flight["most"] == 2        # --s3-concurrency caps the zarr objects in flight

        now = listing()
        uploaded_again = sum(size for k, (size, etag, when) in now.items() if left.get(k) != (size, etag, when))
        assert 0 < uploaded_again < AT_MOST * total, (uploaded_again, total)
        assert member_checksums(zarr_manifest(url)) == expected
        assert main(["verify", "-q", url]) == 0
        assert not any(RESUME_DIR in k for k in now)


@pytest.mark.full
def test_a_zarr_upload_cut_off_by_a_stopped_server_is_completed_after_it_restarts(
        sample_run, tmp_path, monkeypatch, capfd):
    """The server stops mid-upload: one line saying the uploaded members are kept; once the
    server is back, the same command completes the archive from there."""
    import subprocess

    from s3server import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed")
    s3 = SeaweedS3(tmp_path / "seaweed").start()
    try:
        s3.make_bucket("archives")
        url, prefix = "s3://archives/runs/L123456", "archives/runs/L123456"
        fs = s3.filesystem()
        upload = subprocess.Popen(faults.command("archivefactor") + ["-q", "-r", str(sample_run), url],
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, **s3.env})
        deadline = time.monotonic() + 120
        while upload.poll() is None and time.monotonic() < deadline:
            fs.invalidate_cache()
            try:
                if len(fs.find(f"{prefix}/{RESUME_DIR}")) >= 5:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        s3.stop()
        _out, err = upload.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert upload.returncode != 0 and len(lines) == 1 and "Traceback" not in err, err
        assert url in err and "the members uploaded so far are kept" in err

        s3.start()                               # the same data, a new port
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.delenv("FACTOR_ARCHIVE_S3_ENDPOINT", raising=False)
        capfd.readouterr()
        assert archivefactor_main(["-r", str(sample_run), url]) == 0
        assert f"{url}: continuing an interrupted archive" in capfd.readouterr().err
        assert main(["verify", "-q", url]) == 0
    finally:
        s3.stop()


def test_a_rerun_after_the_first_table_takes_the_codecs_that_table_chose(sample_run, tmp_path):
    """The first table of a run chooses each column kind's codec for the tables after it. A rerun
    that keeps that table (and writes the next ones) takes those choices from its record instead
    of trying the codecs again on the next table, which could choose otherwise: the store is the
    one an uninterrupted run makes."""
    import subprocess
    import sys

    env = {**os.environ, "SOURCE_DATE_EPOCH": "1714564800"}
    # Every process notes the column kinds whose codecs it tries, and the second table of the
    # run kills it once the first table's record is stored.
    tried = tmp_path / "tried.jsonl"
    program = f"""
import hashlib, json, os, signal, sys, time
from pathlib import Path
from factor_archive.cli import archivefactor_main
from factor_archive.containers.zarr import ZarrWriter
from factor_archive.ms.casacore_table import plan
real_choice, real_write = plan._start_choice, ZarrWriter._write_table
def choice(col, nbytes, sample, work, kind=None):
    with open({str(tried)!r}, "a") as f:
        f.write(json.dumps(kind) + "\\n")
    return real_choice(col, nbytes, sample, work, kind)
def write(self, member, *args, **kwargs):
    kill_at, first = os.environ.get("KILL_AT"), os.environ.get("FIRST_RECORD")
    if member.path == kill_at:
        for _ in range(600):
            if any(Path({str(tmp_path)!r}).glob(".run.zarr.partial-*/{RESUME_DIR}/" + first)):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.05)
    return real_write(self, member, *args, **kwargs)
plan._start_choice, ZarrWriter._write_table = choice, write
sys.exit(archivefactor_main(sys.argv[1:]))
"""

    def archive(target: Path, **more) -> subprocess.CompletedProcess:
        tried.unlink(missing_ok=True)
        return subprocess.run([sys.executable, "-c", program, "-r", str(sample_run), str(target)],
                              env={**env, **more}, capture_output=True, text=True)

    def kinds_tried() -> set[str]:
        return set(tried.read_text().splitlines()) if tried.exists() else set()

    whole = tmp_path / "whole.zarr"
    assert archive(whole).returncode == 0
    assert kinds_tried(), "no codec was tried: the spy did not see the planning"
    tables = [m["path"] for m in zarr_manifest(whole)["members"]
              if m["kind"] == "table" and m["extra"]["zarr"]["stored"] == "columns"]
    assert len(tables) >= 3
    out = tmp_path / "run.zarr"
    first = hashlib.sha256(tables[0].encode("utf-8")).hexdigest() + ".json"
    killed = archive(out, KILL_AT=tables[1], FIRST_RECORD=first)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [record] = tmp_path.glob(f".run.zarr.partial-*/{RESUME_DIR}/{first}")
    doc = json.loads(record.read_bytes())
    jsonschema.validate(doc, RECORD_SCHEMA)
    decided = {json.dumps(kind) for kind, _label in doc.get("codec_choices", [])}
    assert decided, "the first table's record holds no codec choices"

    rerun = archive(out)
    assert rerun.returncode == 0 and "continuing an interrupted archive" in rerun.stderr, rerun.stderr
    assert not decided & kinds_tried(), sorted(decided & kinds_tried())[:5]
    assert zarr_manifest(out) == zarr_manifest(whole)


def test_a_record_whose_codec_choices_are_not_ours_is_ignored():
    """A record read from a store is not trusted: choices that are not column kinds with a codec
    this version knows make the record unreadable, so its member is written again."""
    from factor_archive.containers.zarr.resume import parse_record, record_bytes
    from factor_archive.manifest import Member

    member = Member(path="chunks/a.ms", kind="table", size=1, sha256="0" * 64, source="a.ms", category="chunks",
                    mode=0o755, mtime=1.0)
    kind = ["", "TIME", "double", "scalar", [], False]
    good = parse_record(record_bytes(member, None, {}, [[kind, "zstd"], [["ANTENNA", "X", "int", "fixed", [3], True],
                                                                        "zstd"]]))
    assert good is not None
    assert good.codec_choices == [(("", "TIME", "double", "scalar", (), False), "zstd"),
                                  (("ANTENNA", "X", "int", "fixed", (3,), True), "zstd")]
    for choices in ([[kind, "no-such-codec"]], [[kind[:5], "zstd"]], [[[*kind[:4], [-1], False], "zstd"]],
                    [[[*kind[:5], "yes"], "zstd"]], [[kind, 5]], {"a": 1}, "zstd"):
        doc = json.loads(record_bytes(member, None, {}))
        doc["codec_choices"] = choices
        assert parse_record(json.dumps(doc).encode()) is None, choices
