"""User stories for archive files on an S3 object store (io/objectstore.py's S3Blobs), against
SeaweedFS on loopback: multipart uploads with bounded memory, ranged reads that fetch only what
they need, permanent errors in one line at once, transient ones retried, a stopped server."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import time

import pytest

from factor_archive.errors import BadInput, FactorArchiveError
from factor_archive.io.objectstore import RetryPolicy, S3Blobs, s3_concurrency

MiB = 1 << 20
QUICK = RetryPolicy(attempts=3, base=0.05, cap=0.2)   # a stopped server is reported in < 1 s


@pytest.fixture(scope="module")
def s3(seaweed):
    seaweed.make_bucket("blobs")
    return seaweed


class PartWatcher:
    """A botocore client that notes how many parts are being uploaded at once (each part takes
    a little while, so that parts overlap when the writer lets them)."""

    def __init__(self, client):
        self._client = client
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def upload_part(self, **kwargs):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.1)
            return self._client.upload_part(**kwargs)
        finally:
            with self._lock:
                self.running -= 1

    def __getattr__(self, name):
        return getattr(self._client, name)


def unfinished_uploads(blobs: S3Blobs, name: str) -> list:
    page = blobs.client.list_multipart_uploads(Bucket=blobs.bucket, Prefix=blobs.key(name))
    return [u for u in page.get("Uploads", []) if u["Key"] == blobs.key(name)]


def test_a_large_blob_goes_up_in_parts_a_few_at_a_time_and_appears_only_at_commit(s3_env):
    from factor_archive.io.objectstore import make_client

    watcher = PartWatcher(make_client(4))
    blobs = S3Blobs("s3://blobs/runs/L1", part_size=5 * MiB, concurrency=2, client=watcher)
    data = os.urandom(23 * MiB)
    writer = blobs.create("run.tar")
    for at in range(0, len(data), MiB):
        writer.write(data[at:at + MiB])
    assert blobs.size("run.tar") is None and "run.tar" not in blobs.names()   # not yet visible
    writer.commit()

    assert blobs.counts["upload_part"] == 5 and blobs.counts["create_multipart_upload"] == 1
    assert blobs.counts["complete_multipart_upload"] == 1 and blobs.counts["put_object"] == 0
    assert blobs.counts.bytes_sent == len(data)
    assert watcher.most == 2        # at most `concurrency` parts in flight (and so in memory)
    assert blobs.names() == ["run.tar"] and blobs.size("run.tar") == len(data)
    stored = s3_env.filesystem().cat("blobs/runs/L1/run.tar")
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()


def test_a_small_blob_is_one_put(s3_env):
    blobs = S3Blobs("s3://blobs/small")
    writer = blobs.create("index.json")
    writer.write(b'{"members": []}')
    writer.commit()
    assert blobs.counts.requests == {"put_object": 1}
    assert s3_env.filesystem().cat("blobs/small/index.json") == b'{"members": []}'


def test_an_aborted_upload_leaves_nothing(s3_env):
    blobs = S3Blobs("s3://blobs/aborted", part_size=5 * MiB, concurrency=2)
    writer = blobs.create("run.tar")
    writer.write(os.urandom(12 * MiB))          # two parts sent, the rest in memory
    writer.abort()
    assert blobs.counts["upload_part"] == 2 and blobs.counts["abort_multipart_upload"] == 1
    assert blobs.names() == [] and blobs.size("run.tar") is None
    assert unfinished_uploads(blobs, "run.tar") == []


def test_an_upload_left_by_a_killed_run_is_aborted_by_the_next(s3_env):
    blobs = S3Blobs("s3://blobs/killed", part_size=5 * MiB)
    left = blobs.client.create_multipart_upload(Bucket=blobs.bucket, Key=blobs.key("run.tar"))
    blobs.client.upload_part(Bucket=blobs.bucket, Key=blobs.key("run.tar"), UploadId=left["UploadId"],
                             PartNumber=1, Body=os.urandom(5 * MiB))
    writer = blobs.create("run.tar")
    writer.write(os.urandom(6 * MiB))
    writer.commit()
    assert unfinished_uploads(blobs, "run.tar") == [] and blobs.size("run.tar") == 6 * MiB


def test_a_ranged_reader_fetches_only_what_it_reads(s3_env):
    """Listing a tar of 20 members of 1 MiB reads each 512-byte header: one small GET each."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n in range(20):
            info = tarfile.TarInfo(f"chunks/part{n:02}.bin")
            info.size = MiB
            tar.addfile(info, io.BytesIO(os.urandom(MiB)))
    data = raw.getvalue()
    blobs = S3Blobs("s3://blobs/ranged")
    writer = blobs.create("run.tar")
    writer.write(data)
    writer.commit()

    with blobs.open("run.tar") as f:
        f.seek(-1024, os.SEEK_END)              # a tail (where an index would be): one GET
        assert f.read() == data[-1024:] and (f.gets, f.bytes_fetched) == (1, 1024)
        f.seek(10 * MiB)
        assert f.read(100) == data[10 * MiB:10 * MiB + 100]
        assert f.read(100) == data[10 * MiB + 100:10 * MiB + 200]   # from the read-ahead
        assert f.gets == 2 and f.bytes_fetched == 1024 + (64 << 10)
    with blobs.open("run.tar") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        names = tar.getnames()
        assert len(names) == 20
        assert f.gets <= 21 and f.bytes_fetched < len(data) // 10, (f.gets, f.bytes_fetched)
    with blobs.open("run.tar") as f:            # read through: the read-ahead grows
        for at in range(0, 4 * MiB, 64 << 10):
            assert f.read(64 << 10) == data[at:at + (64 << 10)]
        assert f.gets <= 7 and f.bytes_fetched <= 2 * 4 * MiB    # never more than twice what was read


def test_a_missing_bucket_or_wrong_keys_stop_at_once_in_one_line(s3_env, monkeypatch):
    blobs = S3Blobs("s3://no-such-bucket/runs")
    with pytest.raises(BadInput) as failed:
        blobs.names()       # (SeaweedFS makes a missing bucket on a PUT by an admin: list instead)
    assert str(failed.value) == "s3://no-such-bucket/runs: no such bucket"
    assert blobs.counts.retries == 0 and blobs.counts.total == 1

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    blobs = S3Blobs("s3://blobs/runs")
    with pytest.raises(FactorArchiveError) as failed:
        blobs.names()
    line = str(failed.value)
    assert line.startswith("s3://blobs/runs: access denied (SignatureDoesNotMatch)") and "\n" not in line
    assert blobs.counts.retries == 0 and blobs.counts.total == 1

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(FactorArchiveError, match=r"^s3://blobs/runs: access denied \(InvalidAccessKeyId\)"):
        S3Blobs("s3://blobs/runs").names()
    with pytest.raises(FactorArchiveError, match=r"^s3://blobs/runs/run.tar: access denied \(HTTP 403\)"):
        S3Blobs("s3://blobs/runs").size("run.tar")


def test_the_concurrency_cap_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FACTOR_ARCHIVE_S3_CONCURRENCY", "3")
    assert s3_concurrency() == 3
    monkeypatch.setenv("FACTOR_ARCHIVE_S3_CONCURRENCY", "none")
    with pytest.raises(BadInput, match="FACTOR_ARCHIVE_S3_CONCURRENCY=none"):
        s3_concurrency()


def test_a_server_stopped_mid_upload_is_one_clear_error_and_a_rerun_completes(tmp_path, monkeypatch):
    from s3server import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed")
    data = os.urandom(16 * MiB)
    server = SeaweedS3(tmp_path / "seaweed").start()
    try:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        server.make_bucket("blobs")
        blobs = S3Blobs("s3://blobs/runs", part_size=5 * MiB, concurrency=2, retry=QUICK)
        writer = blobs.create("run.tar")
        writer.write(data[:6 * MiB])             # one part sent
        server.stop()
        with pytest.raises(FactorArchiveError) as failed:
            writer.write(data[6 * MiB:])
            writer.commit()
        line = str(failed.value)
        assert line.startswith("s3://blobs/runs/run.tar: object store unreachable or failing after 3 "
                               "attempts") and "\n" not in line
        assert blobs.counts.retries >= 2

        server.start()                           # the same data, a new port
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        blobs = S3Blobs("s3://blobs/runs", part_size=5 * MiB, retry=QUICK)
        assert blobs.size("run.tar") is None     # the failed upload never appeared
        writer = blobs.create("run.tar")
        writer.write(data)
        writer.commit()
        assert server.filesystem().cat("blobs/runs/run.tar") == data
        assert unfinished_uploads(blobs, "run.tar") == []
    finally:
        server.stop()
