"""A run archived in the tar form to an S3 object store (SeaweedFS on loopback), as one object and
as volumes: the archive's time against the same archive to local disk, and what ``ls`` of the
archive on the store costs in GET requests and bytes (the index and the manifest only).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_tar_s3.py                       # bench_run.py's run
    PYTHONPATH=src .venv/bin/python benchmarks/bench_tar_s3.py --parset P --volume-size 256M

Each archive runs ``archivefactor -q -r --format tar`` as a child process; wall time and the
child's CPU (user + sys) are printed. ``ls`` runs in this process so that the requests of the
store it opens can be counted.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import human, log  # noqa: E402

DEFAULT_PARSET = Path("/tmp/fa-bench-run/run/factor.parset")


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(argv, check=True, env=env)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def counted_ls(url: str) -> tuple[int, int, int]:
    """(entries listed, GET requests, bytes received) of ``factor-archive ls URL``."""
    from factor_archive.cli import main
    from factor_archive.containers import registry

    made = []
    plain = registry._object_blobs

    def counting(u):
        blobs = plain(u)
        made.append(blobs)
        return blobs

    registry._object_blobs = counting
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert main(["ls", url]) == 0
    finally:
        registry._object_blobs = plain
    gets = sum(b.counts["get_object"] for b in made)
    return len(out.getvalue().splitlines()), gets, sum(b.counts.bytes_received for b in made)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parset", type=Path, default=DEFAULT_PARSET)
    ap.add_argument("--volume-size", default="256M")
    args = ap.parse_args()
    if not args.parset.is_file():
        sys.exit(f"{args.parset}: no such parset (build the run with bench_run.py --build-only)")
    from s3server import SeaweedS3, weed_binary

    if weed_binary() is None:
        sys.exit("the SeaweedFS 'weed' binary is not installed")
    archivefactor = str(Path(sys.executable).with_name("archivefactor"))
    with tempfile.TemporaryDirectory(prefix="bench-tar-s3-") as tmp, SeaweedS3(Path(tmp) / "s3", max_volumes=400) as s3:
        s3.make_bucket("bench")
        env = {**os.environ, **s3.env}
        os.environ.update(s3.env)
        local = Path(tmp) / "run.tar"
        rows = []
        wall, cpu = timed([archivefactor, "-q", "-r", "--format", "tar", str(args.parset), str(local)], env)
        size = local.stat().st_size
        rows.append(("local disk, one file", wall, cpu))
        local.unlink()
        wall, cpu = timed([archivefactor, "-q", "-r", str(args.parset), "s3://bench/one/run.tar"], env)
        rows.append(("S3, one object", wall, cpu))
        wall, cpu = timed([archivefactor, "-q", "-r", "--volume-size", args.volume_size,
                           str(args.parset), "s3://bench/vols/run.tar"], env)
        rows.append((f"S3, volumes of {args.volume_size}", wall, cpu))
        print(f"run: {args.parset} ({human(size)} as a tar)")
        print("| archive to | wall | CPU (user+sys) | MB/s |")
        print("|---|---:|---:|---:|")
        for what, wall, cpu in rows:
            print(f"| {what} | {wall:.2f} s | {cpu:.2f} s | {size / wall / 1e6:.0f} |")
        print()
        print("| ls of | entries | GET requests | bytes read | share of the archive |")
        print("|---|---:|---:|---:|---:|")
        for what, url in (("one object", "s3://bench/one/run.tar"), ("the volume set's prefix", "s3://bench/vols")):
            lines, gets, got = counted_ls(url)
            print(f"| {what} | {lines} | {gets} | {got} | {got / size:.5f} |")
        log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
