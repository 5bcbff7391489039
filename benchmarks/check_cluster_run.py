"""Issue 12's check on a run of the real shape: archive it through a 2-worker LocalCluster to
local disk and to S3 (SeaweedFS on loopback), compare each manifest with the single-process
archive's, and restore both cluster archives through the cluster, comparing the restored files
with a single-process restore (every file byte for byte, every table's content).

    PYTHONPATH=src:benchmarks:tests .venv/bin/python benchmarks/check_cluster_run.py
    PYTHONPATH=src:benchmarks:tests .venv/bin/python benchmarks/check_cluster_run.py --parset P --workers 2

Every command is the user's (`archivefactor`/`unarchivefactor`, with and without
``--cluster local:N``), run as a child process; wall times are printed. Exit status 0 only when
every comparison holds.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import timed_step  # noqa: E402

NOT_COMPARED = ("created",)      # the time each archive was made


def comparable(location: str) -> dict:
    from factor_archive.containers.registry import open_reader

    with open_reader(location) as reader:
        whole = dataclasses.asdict(reader.manifest)
    for name in NOT_COMPARED:
        whole.pop(name)
    return whole


def same_tables(a: Path, b: Path) -> bool:
    """Two restored tables hold the same content (casacore's view, not the bytes: the storage
    managers' files carry the table's own path)."""
    from conftest import assert_tables_equal

    try:
        assert_tables_equal(a, b)
    except AssertionError as exc:
        print(f"  {a}: {str(exc)[:200]}")
        return False
    return True


def same_restore(location: str, ours: Path, theirs: Path) -> bool:
    from factor_archive.containers.registry import open_reader

    with open_reader(location) as reader:
        manifest = reader.manifest
    ok = True
    for m in manifest.members:
        if m.restore_path is None or m.kind == "link":
            continue
        a, b = ours / m.restore_path, theirs / m.restore_path
        if m.kind == "table":
            ok &= same_tables(a, b)
        elif a.read_bytes().replace(str(ours).encode(), str(theirs).encode()) != b.read_bytes():
            print(f"  {m.path}: differs")
            ok = False
    return ok and (ours / "factor.parset").is_file() \
        and not (ours / ".factor-archive-restore-incomplete").exists()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parset", type=Path, default=Path("/tmp/fa-bench-run/run/factor.parset"))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from s3server import SeaweedS3, weed_binary

    if weed_binary() is None:
        sys.exit("the SeaweedFS 'weed' binary is not installed")
    bin_dir = Path(sys.executable).parent
    archive, unarchive = str(bin_dir / "archivefactor"), str(bin_dir / "unarchivefactor")
    cluster = ["--cluster", f"local:{args.workers}"]
    ok = True
    with tempfile.TemporaryDirectory(prefix="check-cluster-", dir="/tmp") as tmp_name, \
            SeaweedS3(Path(tmp_name) / "s3", max_volumes=400) as s3:
        tmp = Path(tmp_name)
        s3.make_bucket("runs")
        env = {**os.environ, **s3.env}
        os.environ.update(s3.env)
        one, here, there = str(tmp / "one.zarr"), str(tmp / "cluster.zarr"), "s3://runs/cluster"
        timed_step("archive, one process, local zarr",
                   [archive, "-q", "-r", "--format", "zarr", str(args.parset), one], env)
        timed_step(f"archive, local:{args.workers}, local zarr",
            [archive, "-q", "-r", *cluster, "--format", "zarr", str(args.parset), here], env)
        timed_step(f"archive, local:{args.workers}, S3 zarr",
                   [archive, "-q", "-r", *cluster, str(args.parset), there], env)
        reference = comparable(one)
        for name, location in (("local", here), ("S3", there)):
            equal = comparable(location) == reference
            ok &= equal
            print(f"manifest of the {name} cluster archive equal to one process's: {'yes' if equal else 'NO'}")
        timed_step("restore, one process, from the local zarr", [unarchive, "-q", one, str(tmp / "r_one")], env)
        for name, location, out in (("local", here, "r_loc"), ("S3", there, "r_s3x")):
            timed_step(f"restore, local:{args.workers}, from the {name} zarr",
                [unarchive, "-q", *cluster, location, str(tmp / out)], env)
            equal = same_restore(one, tmp / out, tmp / "r_one")
            ok &= equal
            print(f"restore from the {name} cluster archive equal to one process's: {'yes' if equal else 'NO'}")
    print("all equal" if ok else "DIFFERENCES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
