"""Upload of a large tar to an S3 object store (SeaweedFS on loopback): io/objectstore.py's
streamed multipart upload (S3Blobs) against s3fs ``put`` of the same file (what ``aws s3 cp``
does: one object by s3fs's own multipart upload), and what opening and listing the uploaded tar
costs in GET requests and bytes.

    .venv/bin/python benchmarks/bench_s3.py --size 256M
    .venv/bin/python benchmarks/bench_s3.py --size 256M --concurrency 4 --part-size 8M

The tar is made by GNU ``tar cf`` of a directory holding 8 files of random bytes (``--size`` in
all) and 300 small files (4 KiB each, like a run's logs and mapfiles). Both uploads read the same
file from the page cache (it is read once before timing); each is repeated ``--repeat`` times,
alternating, and the best and the median wall time are reported.
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import human, log, parse_size  # noqa: E402


def make_tar(work: Path, size: int) -> Path:
    src = work / "run"
    (src / "chunks").mkdir(parents=True)
    (src / "logs").mkdir()
    for n in range(8):
        with open(src / "chunks" / f"chunk{n}.bin", "wb") as f:
            left = size // 8
            while left:
                block = os.urandom(min(left, 16 << 20))
                f.write(block)
                left -= len(block)
    for n in range(300):
        (src / "logs" / f"step{n:03}.log").write_bytes(os.urandom(4096))
    tar = work / "run.tar"
    subprocess.run(["tar", "cf", str(tar), "-C", str(work), "run"], check=True)
    return tar


def upload_blobs(path: Path, url: str, part_size: int, concurrency: int) -> dict:
    from factor_archive.io.objectstore import S3Blobs

    blobs = S3Blobs(url, part_size=part_size, concurrency=concurrency)
    start = time.monotonic()
    writer = blobs.create(path.name)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            writer.write(block)
    writer.commit()
    return {"seconds": time.monotonic() - start, "requests": blobs.counts.total,
            "parts": blobs.counts["upload_part"]}


def upload_s3fs(path: Path, url: str) -> dict:
    import s3fs

    from factor_archive.io.objectstore import s3_endpoint

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint(), skip_instance_cache=True)
    start = time.monotonic()
    fs.put_file(str(path), f"{url.removeprefix('s3://')}/{path.name}")
    return {"seconds": time.monotonic() - start}


def listing_cost(url: str, name: str) -> dict:
    from factor_archive.io.objectstore import S3Blobs

    blobs = S3Blobs(url)
    with blobs.open(name) as f:
        f.seek(-65536, os.SEEK_END)             # where an index at the end would be
        f.read()
        tail = (f.gets, f.bytes_fetched)
    with blobs.open(name) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        members = len(tar.getnames())
        walk = (f.gets, f.bytes_fetched)
    return {"tail": tail, "walk": walk, "members": members, "size": blobs.size(name)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="256M", help="bytes of random data in the tar (default 256M; the "
                   "test server holds about 2 GiB, and each trial stores the tar twice)")
    p.add_argument("--part-size", default="16M", help="S3Blobs part size (default 16M)")
    p.add_argument("--concurrency", type=int, default=8, help="S3Blobs parts in flight (default 8)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    print("$ " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"# machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-s3-"))
    try:
        return run(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    from s3server import SeaweedS3

    log(f"making the tar in {work}")
    tar = make_tar(work, parse_size(args.size))
    size = tar.stat().st_size
    with open(tar, "rb") as f:                   # into the page cache
        while f.read(16 << 20):
            pass
    with SeaweedS3(work / "seaweed") as s3:
        os.environ.update(s3.env)
        s3.make_bucket("bench")
        ours, theirs = [], []
        from factor_archive.io.objectstore import S3Blobs
        S3Blobs("s3://bench/warm-up").names()     # imports and a client: not the upload's memory
        for n in range(args.repeat):
            log(f"trial {n + 1}: S3Blobs")
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            ours.append(upload_blobs(tar, f"s3://bench/ours{n}", parse_size(args.part_size),
                                     args.concurrency))
            ours[-1]["rss_growth"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) << 10
            log(f"trial {n + 1}: s3fs put")
            theirs.append(upload_s3fs(tar, f"s3://bench/put{n}"))
        cost = listing_cost("s3://bench/ours0", tar.name)

    def row(what: str, runs: list[dict]) -> str:
        secs = sorted(r["seconds"] for r in runs)
        return (f"| {what} | {secs[0]:.2f} s | {statistics.median(secs):.2f} s | "
                f"{size / secs[0] / (1 << 20):.0f} MiB/s |")

    print(f"\ntar: {human(size)} ({cost['members']} members), part size {args.part_size}, "
          f"{args.concurrency} parts in flight, {args.repeat} trials each\n")
    print("| upload | best | median | best throughput |")
    print("| --- | --- | --- | --- |")
    print(row(f"S3Blobs ({ours[0]['parts']} parts, {ours[0]['requests']} requests)", ours))
    print(row("s3fs put_file", theirs))
    print(f"\nS3Blobs: process max RSS grew by {human(max(r['rss_growth'] for r in ours))} during its "
          f"first upload (bound: (concurrency + 1) x part size = "
          f"{human((args.concurrency + 1) * parse_size(args.part_size))})")
    print(f"reading the last 64 KiB (an index at the end): {cost['tail'][0]} GET, "
          f"{human(cost['tail'][1])}")
    print(f"listing every member with Python's tarfile (a header per member, no index): "
          f"{cost['walk'][0]} GETs, {human(cost['walk'][1])} of {human(cost['size'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
