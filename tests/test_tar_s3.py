"""User stories for the tar form on an object store, against SeaweedFS on loopback: a run archived
to ``s3://bucket/run.tar`` is one object uploaded in parts, the same bytes as the tar on disk;
listing it reads a few ranges, not the archive; volumes are objects beside the first, each a tar
GNU tar reads; a killed volume upload is completed sending only the rest."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from factor_archive.cli import archivefactor_main, main, unarchivefactor_main
from factor_archive.containers import registry
from factor_archive.sample import write_sample_run
from test_tar_volumes import KILL_AT, restored

ARGS = ["-q", "-r", "-d", "facet1"]
EPOCH = "1700000000"            # SOURCE_DATE_EPOCH: the same run gives the same tar bytes


@pytest.fixture(scope="module")
def s3(seaweed):
    seaweed.make_bucket("tars")
    return seaweed


@pytest.fixture(autouse=True)
def same_bytes_every_time(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


@pytest.fixture(scope="module")
def run(tmp_path_factory, dp3_ms_cache) -> dict:
    """The sample run (DP3-written chunks) and its single tar on local disk."""
    base = tmp_path_factory.mktemp("tar-s3")
    parset = write_sample_run(base / "run", dp3=True, ms_cache=dp3_ms_cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        assert archivefactor_main(ARGS + [str(parset), str(base / "single.tar")]) == 0
    return {"base": base, "parset": parset, "single": base / "single.tar"}


def objects(s3_env, prefix: str) -> dict[str, tuple[int, str]]:
    """key -> (size, ETag) of the objects below ``prefix`` in the bucket."""
    from factor_archive.io.objectstore import make_client

    page = make_client(1).list_objects_v2(Bucket="tars", Prefix=prefix)
    return {o["Key"]: (o["Size"], o["ETag"]) for o in page.get("Contents", [])}


def download(key: str, to: Path) -> Path:
    from factor_archive.io.objectstore import make_client

    to.write_bytes(make_client(1).get_object(Bucket="tars", Key=key)["Body"].read())
    return to


@contextlib.contextmanager
def counted_stores(monkeypatch):
    """Every S3Blobs the registry opens meanwhile (their request counters)."""
    made = []
    plain = registry._object_blobs

    def counting(url):
        blobs = plain(url)
        made.append(blobs)
        return blobs

    monkeypatch.setattr(registry, "_object_blobs", counting)
    yield made


def received(stores) -> int:
    return sum(s.counts.bytes_received for s in stores)


def test_a_run_archived_to_s3_is_the_tar_on_disk_and_lists_with_a_few_ranged_reads(
        run, s3_env, tmp_path, monkeypatch, capsys):
    url = "s3://tars/runs/L1/run.tar"
    assert archivefactor_main(ARGS + [str(run["parset"]), url]) == 0
    stored = objects(s3_env, "runs/L1/")
    assert list(stored) == ["runs/L1/run.tar"]              # one object, no leftovers
    assert download("runs/L1/run.tar", tmp_path / "got.tar").read_bytes() == run["single"].read_bytes()

    with counted_stores(monkeypatch) as stores:
        assert main(["ls", url]) == 0
        listing = capsys.readouterr().out
    assert "chunks/" in listing and "facet1" in listing
    size = stored["runs/L1/run.tar"][0]
    assert received(stores) < min(1 << 20, size // 10)     # the index and the manifest, no data

    with counted_stores(monkeypatch) as stores:
        assert main(["verify", "-q", url]) == 0
    assert received(stores) >= size - (1 << 20)            # verify reads every member

    assert unarchivefactor_main(["-q", url, str(tmp_path / "restored")]) == 0
    assert unarchivefactor_main(["-q", str(run["single"]), str(tmp_path / "expected")]) == 0
    assert restored(tmp_path / "restored") == restored(tmp_path / "expected")


def test_an_existing_tar_object_is_not_replaced_without_clobber(run, s3_env, capsys):
    url = "s3://tars/runs/L2/run.tar"
    assert archivefactor_main(ARGS + [str(run["parset"]), url]) == 0
    capsys.readouterr()
    assert archivefactor_main(ARGS + [str(run["parset"]), url]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0] and "exists" in err[0]
    assert archivefactor_main(ARGS + ["-c", str(run["parset"]), url]) == 0


def test_volumes_on_s3_are_objects_gnu_tar_reads_and_restore_from_the_prefix_or_any_volume(
        run, s3_env, tmp_path):
    prefix = "runs/V1/"
    assert archivefactor_main(ARGS + ["--volume-size", "1M", "--group-by", "category",
                                      str(run["parset"]), f"s3://tars/{prefix}run.tar"]) == 0
    stored = objects(s3_env, prefix)
    assert len(stored) > 3 and "runs/V1/run.tar" in stored
    assert all(key.endswith(".tar") for key in stored)
    for key in sorted(stored):
        volume = download(key, tmp_path / Path(key).name)
        out = tmp_path / "gnu" / volume.name
        out.mkdir(parents=True)
        gnu = subprocess.run(["tar", "xf", str(volume), "-C", str(out)], capture_output=True, text=True)
        assert gnu.returncode == 0 and gnu.stderr == "", (key, gnu.stderr)
        with tarfile.open(volume) as t:
            assert t.getnames()

    assert unarchivefactor_main(["-q", str(run["single"]), str(tmp_path / "expected")]) == 0
    middle = sorted(stored)[len(stored) // 2]
    for i, given in enumerate((f"s3://tars/{prefix.rstrip('/')}", f"s3://tars/{middle}")):
        out = tmp_path / f"restore{i}"          # as long as "expected": state files compare
        assert unarchivefactor_main(["-q", given, str(out)]) == 0, given
        assert restored(out) == restored(tmp_path / "expected"), given
        assert main(["verify", "-q", given]) == 0


def test_a_killed_volume_upload_is_completed_sending_less_than_60_percent_again(
        run, s3_env, tmp_path):
    prefix = "runs/K1/"
    url = f"s3://tars/{prefix}run.tar"
    argv = ARGS + ["--volume-size", "1M", str(run["parset"]), url]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", KILL_AT, "run.018.tar", "200000", *argv],
                            capture_output=True, text=True, env=env)
    assert killed.returncode == -9, killed.stderr
    before = objects(s3_env, prefix)
    assert len(before) == 18 and "runs/K1/run.018.tar" not in before   # the cut volume is unseen
    assert main(["ls", f"s3://tars/{prefix.rstrip('/')}"]) != 0        # nothing looks complete

    assert archivefactor_main(argv) == 0
    after = objects(s3_env, prefix)
    sent = sum(size for key, (size, etag) in after.items() if before.get(key) != (size, etag))
    total = sum(size for size, _etag in after.values())
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert 0 < sent < 0.6 * total, (sent, total, changed, sorted(before))
    assert main(["verify", "-q", url]) == 0
    assert unarchivefactor_main(["-q", url, str(tmp_path / "restored")]) == 0
    assert unarchivefactor_main(["-q", str(run["single"]), str(tmp_path / "expected")]) == 0
    assert restored(tmp_path / "restored") == restored(tmp_path / "expected")
