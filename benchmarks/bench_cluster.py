"""Archive the real-shaped run on a Dask LocalCluster of 1 and 2 workers (issue 12).

Measures the wall time of ``write_archive(..., cluster=...)`` (what ``archivefactor --cluster``
runs) against the single-process archive, the scheduler's overhead per task (empty tasks
through ``run_tasks``) and the client's codec decisions, says whether the manifests are equal
(all but the creation time; the members that differ, if any), and projects a
2 TB run on 10 nodes x 32 cores from the measured per-worker throughput. benchmarks/README.md
("Many machines") has the command and the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import busy_seconds, human, log, machine_line, wait_idle
from factor_archive.archive import plan_archive, write_archive
from factor_archive.cluster import open_cluster, run_tasks
from factor_archive.plan import Options

PROJECT_BYTES = 2e12        # a 2 TB run
PROJECT_WORKERS = 10 * 32   # 10 nodes x 32 cores, one worker process per core


@dataclass(frozen=True)
class Empty:
    """A task that does nothing: its time on the cluster is the scheduler's overhead."""

    name: str


def nothing(_task: Empty, _progress) -> None:
    return None


def comparable(manifest) -> dict:
    """The whole manifest but its creation time (the one field two archives of a run differ in)."""
    whole = dataclasses.asdict(manifest)
    whole.pop("created")
    return whole


def differing_members(manifest, reference) -> list[str]:
    theirs = {m.path: dataclasses.asdict(m) for m in reference.members}
    return [m.path for m in manifest.members if dataclasses.asdict(m) != theirs.get(m.path)]


def client_decisions(plan) -> tuple[float, int]:
    """Seconds the client spends making the run's codec choices (``decide_codecs`` for every
    table in plan order, as ``archivefactor --cluster`` does before sending the tables)."""
    from factor_archive.ms.casacore_table import decide_codecs, remembered_codec_choices

    tables = [i for i in plan.items if i.member.kind == "table" and i.source is not None]
    t0 = time.monotonic()
    with remembered_codec_choices():
        for item in tables:
            decide_codecs(str(item.source))
    return time.monotonic() - t0, len(tables)


def timed_archive(plan, out: Path, cluster: str | None):
    shutil.rmtree(out, ignore_errors=True)
    b0, t0 = busy_seconds(), time.monotonic()
    manifest = write_archive(plan, str(out), quiet=True, cluster=cluster)
    wall, cpu = time.monotonic() - t0, busy_seconds() - b0
    shutil.rmtree(out, ignore_errors=True)
    return manifest, wall, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parset", default="/tmp/fa-bench-run/run/factor.parset",
                    help="the run to archive, read only (default: bench_run.py's run)")
    ap.add_argument("--out", default="/tmp/fa-bench-cluster", help="where the archives go (removed after)")
    ap.add_argument("--workers", default="1,2", help="cluster sizes to measure (default 1,2)")
    ap.add_argument("--empty-tasks", type=int, default=200, help="empty tasks for the overhead (default 200)")
    ap.add_argument("--no-wait-idle", action="store_true")
    args = ap.parse_args(argv)

    print(f"command: {' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}")
    print(f"machine: {machine_line()}")
    plan = plan_archive(args.parset, Options(resumable=True, form="zarr"))
    total = plan.total_bytes
    kinds = [i.member.kind for i in plan.items]
    print(f"run: {args.parset}: {len(plan.items)} members ({kinds.count('table')} tables), {human(total)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if not args.no_wait_idle:
        wait_idle()
    log("single process")
    reference, wall1p, cpu1p = timed_archive(plan, out / "single.zarr", None)
    rows = [("one process (no --cluster)", wall1p, cpu1p, "", "")]
    per_worker = {}
    for n in [int(x) for x in args.workers.split(",")]:
        if not args.no_wait_idle:
            wait_idle()
        log(f"local:{n}")
        t0 = time.monotonic()
        with open_cluster(f"local:{n}") as client:
            client.wait_for_workers(n)
            start = time.monotonic() - t0
            from distributed import get_task_stream

            with get_task_stream(client) as stream:
                manifest, wall, cpu = timed_archive(plan, out / f"cluster{n}.zarr", client.scheduler.address)
            ntasks = len({t["key"] for t in stream.data if str(t["key"]).startswith("factor-archive-")})
            differ = differing_members(manifest, reference)
            same = comparable(manifest) == comparable(reference)
            print(f"local:{n}: manifest equal to one process's: {'yes' if same else 'no'}"
                  + (f"; members differing: {differ}" if differ else ""))
            empties = [Empty(f"empty-{i}") for i in range(args.empty_tasks)]
            t1 = time.monotonic()
            run_tasks(client, empties, nothing)
            overhead = (time.monotonic() - t1) / len(empties)
        per_worker[n] = total / wall / n
        rows.append((f"local:{n} ({ntasks} tasks)", wall, cpu, f"{start:.1f} s", f"{overhead * 1e3:.1f} ms"))

    decide, ntables = client_decisions(plan)
    print(f"\nthe client's codec decisions ({ntables} tables, in plan order): {decide:.2f} s")
    print()
    print("| archive | wall | machine CPU | cluster start | overhead per empty task |")
    print("| --- | --- | --- | --- | --- |")
    for name, wall, cpu, start, overhead in rows:
        print(f"| {name} | {wall:.2f} s ({human(total / wall)}/s) | {cpu:.1f} s | {start} | {overhead} |")
    walls = {int(r[0].split(":")[1].split()[0]): r[1] for r in rows[1:]}
    if 1 in walls and 2 in walls:
        print(f"\nspeed-up 1 -> 2 workers: {walls[1] / walls[2]:.2f}x")
    if 1 in per_worker:
        rate = per_worker[1]
        hours = PROJECT_BYTES / (rate * PROJECT_WORKERS) / 3600
        print(f"projection: 2 TB / ({human(rate)}/s per worker x {PROJECT_WORKERS} workers) = "
              f"{PROJECT_BYTES / (rate * PROJECT_WORKERS):.0f} s = {hours:.2f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
