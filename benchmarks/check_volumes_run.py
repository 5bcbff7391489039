"""Issue 11's check on a run of the real shape: tar volumes of a chosen size, grouped by category,
written to local disk and to S3 (SeaweedFS on loopback); GNU tar extracts every volume alone; the
run restores from both; ``ls`` of the set on S3 is counted in GETs and bytes.

    PYTHONPATH=src:benchmarks:tests .venv/bin/python benchmarks/check_volumes_run.py
    PYTHONPATH=src:benchmarks:tests .venv/bin/python benchmarks/check_volumes_run.py --parset P --volume-size 256M

GNU tar runs on every local volume and on every S3 object (fetched whole). Exit status 0 only
when every check holds.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_tar_s3 import counted_ls  # noqa: E402
from common import timed_step  # noqa: E402


def tree(out: Path) -> dict[str, str]:
    """Every restored file's sha256, the output's own path swapped for a placeholder."""
    found = {}
    for dirpath, _dirs, files in os.walk(out):
        for name in files:
            p = Path(dirpath) / name
            data = p.read_bytes().replace(str(out).encode(), b"<OUT>")
            found[str(p.relative_to(out))] = hashlib.sha256(data).hexdigest()
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parset", type=Path, default=Path("/tmp/fa-bench-run/run/factor.parset"))
    ap.add_argument("--volume-size", default="256M")
    args = ap.parse_args()
    from factor_archive.io.objectstore import make_client
    from s3server import SeaweedS3, weed_binary

    if weed_binary() is None:
        sys.exit("the SeaweedFS 'weed' binary is not installed")
    bin_dir = Path(sys.executable).parent
    archive, unarchive = str(bin_dir / "archivefactor"), str(bin_dir / "unarchivefactor")
    options = ["-q", "-r", "--volume-size", args.volume_size, "--group-by", "category"]
    ok = True
    with tempfile.TemporaryDirectory(prefix="check-volumes-", dir="/tmp") as tmp_name, \
            SeaweedS3(Path(tmp_name) / "s3", max_volumes=400) as s3:
        tmp = Path(tmp_name)
        s3.make_bucket("tapes")
        env = {**os.environ, **s3.env}
        os.environ.update(s3.env)
        (tmp / "set").mkdir()
        timed_step("archive to local volumes", [archive, *options, str(args.parset), str(tmp / "set" / "run.tar")], env)
        timed_step("archive to S3 volumes", [archive, *options, str(args.parset), "s3://tapes/L1/run.tar"], env)
        local = sorted(tmp.joinpath("set").iterdir())
        client = make_client(1)
        listing = client.list_objects_v2(Bucket="tapes", Prefix="L1/").get("Contents", [])
        remote = {o["Key"].removeprefix("L1/"): o["Size"] for o in listing}
        print(f"volumes: {len(local)} local, {len(remote)} on S3; sizes "
              f"{', '.join(str(p.stat().st_size >> 20) + ' MiB' for p in local)}")
        (tmp / "s3set").mkdir()
        for p in local:
            fetched = tmp / "s3set" / p.name
            fetched.write_bytes(client.get_object(Bucket="tapes", Key=f"L1/{p.name}")["Body"].read())
            for where, volume in (("local", p), ("S3", fetched)):
                out = tmp / "gnu" / where / p.name
                out.mkdir(parents=True)
                gnu = subprocess.run(["tar", "xf", str(volume), "-C", str(out)], capture_output=True, text=True)
                alone = gnu.returncode == 0 and not gnu.stderr
                ok &= alone
                print(f"  {where} {p.name} ({volume.stat().st_size} B): GNU tar extracts it alone: "
                      f"{'yes' if alone else 'NO ' + gnu.stderr[:200]}")
            fetched.unlink()
        ok &= set(remote) == {p.name for p in local}
        lines, gets, got = counted_ls("s3://tapes/L1")
        print(f"ls of the set on S3: {lines} lines, {gets} GETs, {got} bytes read")
        timed_step("restore from the local set (first volume)",
                   [unarchive, "-q", str(local[0]), str(tmp / "r_loc")], env)
        timed_step("restore from the S3 set (its prefix)", [unarchive, "-q", "s3://tapes/L1", str(tmp / "r_s3x")], env)
        equal = tree(tmp / "r_loc") == tree(tmp / "r_s3x")
        ok &= equal
        print(f"the two restores equal: {'yes' if equal else 'NO'}")
    print("all checks hold" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
