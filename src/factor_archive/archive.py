"""Archiving: run model and plan in, one container out, the manifest written last."""

from __future__ import annotations

import datetime as _dt
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from . import signals
from .containers.base import ArchiveWriter, table_worker_session
from .containers.locations import parse_location
from .containers.registry import open_writer
from .errors import BadInput, FactorArchiveError
from .io.copy import Progress
from .io.failures import disk_full, is_disk_full, written_path
from .io.memory import one_malloc_arena
from .manifest import Manifest, Member
from .plan import ArchivePlan, Options, PlanItem, make_plan
from .progress import Reporter, human
from .run.model import load_run


def plan_archive(parset: str, options: Options) -> ArchivePlan:
    return make_plan(load_run(parset), options)


def describe_plan(plan: ArchivePlan) -> list[str]:
    """The --dry-run listing: what, from where, to where, how large."""
    lines = []
    for item in plan.items:
        m = item.member
        origin = item.source if item.concat is None else f"concatenation of {len(item.concat)} slots"
        lines.append(f"{m.category:17} {human(item.size):>10}  {m.path}  <- {origin}")
    lines.append(f"{len(plan.items)} members, {human(plan.total_bytes)} in all")
    for miss in plan.missing:
        lines.append(f"missing: {miss.source} ({miss.reason})")
    return lines


def _check_output(plan: ArchivePlan, output: str) -> None:
    loc = parse_location(output)
    if not loc.is_local:
        return
    out = loc.local_path()
    wd = plan.run.working_dir.resolve()
    resolved = out.resolve()
    if resolved == wd or wd in resolved.parents:
        raise BadInput(f"{output}: output is inside the working directory {wd}; choose a path outside the run")


def write_archive(plan: ArchivePlan, output: str, *, clobber: bool = False,
                  quiet: bool = False, cluster: str | None = None) -> Manifest:
    """Write the archive; on any failure or interruption the writer's abort leaves nothing that
    looks complete (the directory form keeps what it wrote, for a rerun to complete).

    ``cluster`` (``local:N`` or a Dask scheduler's address): the members are stored by the
    cluster's workers (the zarr form only, see docs/cluster.md); the client still writes the
    manifest last."""
    _check_output(plan, output)
    one_malloc_arena()
    if cluster is None:
        return _write_archive(plan, output, clobber, quiet, None)
    if plan.options.form != "zarr":
        raise BadInput(f"--cluster: the {plan.options.form} form is written by one process (a tar is "
                       f"one stream; a directory copy gains nothing from more machines); use --format "
                       f"zarr (a .zarr directory or an s3:// URL)")
    from .cluster import open_cluster

    with open_cluster(cluster) as client:
        return _write_archive(plan, output, clobber, quiet, client)


def _write_archive(plan: ArchivePlan, output: str, clobber: bool, quiet: bool, client) -> Manifest:
    staging: list[Path] = []  # where calibrated data was built, once it is
    reporter = None
    signals.hold()  # a Ctrl-C while the writer is made is raised inside the try below
    writer = open_writer(plan.options.form, output, clobber=clobber, volumes=_volumes(plan.options))
    try:  # from here on every failure, Ctrl-C included, goes through writer.abort()
        signals.check()
        reporter = Reporter(plan.total_bytes, "archiving", quiet=quiet)
        for notice in writer.notices:
            reporter.message(notice)
        for miss in plan.missing:
            reporter.message(f"warning: {miss.source}: {miss.reason}")
        needs_workers = ((writer.capabilities.table_workers and client is None)
                         or any(i.concat for i in plan.items))
        with table_worker_session(needs_workers):  # casacore writes (-d, zarr) run in worker processes
            if client is None:
                members = _write_members(_in_volume_order(plan), writer, reporter, staging)
            else:
                from .cluster.runs import archive_members

                members = archive_members(client, plan.items, writer, reporter,  # type: ignore[arg-type]
                                          lambda items: _write_members(items, writer, reporter, staging))
        manifest = Manifest(
            container=plan.options.form, run=plan.run_info(),
            options={"resumable": plan.options.resumable, "directions": plan.options.directions,
                     "format": plan.options.form},
            members=members, missing=plan.missing,
            created=_creation_time(),
        )
        # Past this point the archive becomes complete: a signal now is reported afterwards, as
        # "after the work was complete" (a third one still ends the process at once).
        signals.hold()
        writer.close(manifest)
    except BaseException as exc:
        writer.abort()
        if is_disk_full(exc) and signals.received() is None:
            continues = plan.options.form == "dir" or plan.options.volume_size is not None
            raise _output_full(exc, output, continues, staging) from None
        raise
    finally:
        if reporter is not None:
            reporter.close()
    return manifest


def _volumes(options):
    """The tar form's volume options, or None for one file."""
    if options.volume_size is None:
        if options.group_by is not None:
            raise BadInput("--group-by: needs --volume-size (it groups members into volumes)")
        return None
    from .containers.tar.volume_writer import VolumeOptions

    return VolumeOptions(options.volume_size, options.group_by)


def _in_volume_order(plan: ArchivePlan) -> list[PlanItem]:
    """--group-by category: the items of each category group together (stable within one), so
    each group fills volumes of its own."""
    if plan.options.group_by != "category":
        return plan.items
    from .containers.tar.volumes import GROUP_ORDER, category_group

    return sorted(plan.items, key=lambda i: GROUP_ORDER.index(category_group(i.member.category)))


def _output_full(exc: BaseException, output: str, continues: bool,
                 staging: list[Path]) -> FactorArchiveError:
    """The full-disk error naming the output (or the staging area, where -d builds calibrated
    data) and its file system, never a source in the run, and saying what was left."""
    if output == "-":
        after = "; the tar written to standard output is incomplete"
        out = Path(_stdout_path() or "/dev/stdout")
    else:
        out = Path(os.path.abspath(output))
        after = ("; the archive is incomplete: free space, then run the same command again to "
                 "complete it, or add -c to start over") if continues else "; nothing was kept"
    where = written_path(exc, staging + [out])
    if staging and where is not None and (where == staging[0] or staging[0] in where.parents):
        # -d: beside (or in) the output, or in $TMPDIR for standard output
        full = (disk_full(staging[0], during=" while building calibrated data") if output == "-"
                else disk_full(out, during=f" while building calibrated data in {staging[0]}"))
    else:
        full = disk_full(where or out)
    return type(full)(f"{full}{after}", full.path)


def _stdout_path() -> str | None:
    """The file standard output is redirected to, if it is one (for naming its file system)."""
    try:
        target = os.readlink("/proc/self/fd/1")
    except OSError:
        return None
    return target if target.startswith("/") else None


def _write_members(items: list[PlanItem], writer: ArchiveWriter, progress: Progress,
                   staging: list[Path]) -> list[Member]:
    failed = threading.Event()  # a member failed (or a signal came): the others stop

    def stopping() -> bool:
        return failed.is_set() or signals.received() is not None

    def begin(item: PlanItem) -> Callable[[], Member]:
        """The item stored (writer.begin_write); the callable gives its member."""
        signals.check()
        if failed.is_set():
            raise FactorArchiveError("not started: another member failed")
        if item.concat is None:
            assert item.source is not None
            return writer.begin_write(item.member, item.source, progress)
        done = writer.already_written(item.member) if writer.capabilities.resumable_writes else None
        if done is not None:
            progress(done.size)
            return lambda: done
        from .ms.casacore_table import run_in_worker

        place = writer.staging_dir()
        if not staging:
            staging.append(place)
        staged = place / Path(item.member.path).name
        run_in_worker("concat_in_frequency", list(item.concat), str(staged), stop=stopping)
        _stamp_like_inputs(staged, [Path(s) for s in item.concat if s])
        return writer.begin_write(item.member, staged, progress, staged=True)

    def one(item: PlanItem) -> Member:
        return begin(item)()

    if not writer.capabilities.parallel_members:
        return _one_behind(items, begin)
    turns = None
    in_order: Any = nullcontext()
    if writer.capabilities.table_workers:  # tables encoded two at a time plan in the run's order
        from .ms.casacore_table.codec_choice import PlanningTurns, planning_in_order

        turns = PlanningTurns()
        in_order = planning_in_order(turns)

    def nth(index: int, item: PlanItem) -> Member:
        if turns is None:
            return one(item)
        with turns.item(index):
            return one(item)

    with in_order:
        pool = ThreadPoolExecutor(max_workers=2)
        # With table workers the files (~460 small ones in a real run) go through a third thread
        # beside the two tables, so they fill the gaps the tables leave instead of running alone
        # after the last table. Files plan nothing: they pass their turn at once, and the tables
        # still plan in the run's order.
        files_pool = ThreadPoolExecutor(max_workers=1) if turns is not None else pool
        futures = []
        for i, item in enumerate(items):
            if turns is not None and not _is_table(item):
                turns.plans_nothing(i)
            futures.append((pool if _is_table(item) else files_pool).submit(nth, i, item))
        try:
            return [f.result() for f in futures]
        except BaseException:
            failed.set()
            raise
        finally:
            # Never leave with a thread still writing: the caller's clean-up comes next.
            files_pool.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)


def _one_behind(items: list[PlanItem], begin: Callable[[PlanItem], Callable[[], Member]]) -> list[Member]:
    """Members stored one after another, each one's result (its checksums) waited for once the
    next one is stored: hashing a member overlaps copying the next, and at most two members are
    being hashed at once."""
    members: list[Member] = []
    pending: list[Callable[[], Member]] = []     # stored, not yet waited for: at most two
    try:
        for item in items:
            pending.append(begin(item))
            if len(pending) == 2:
                members.append(pending.pop(0)())
        while pending:
            members.append(pending.pop(0)())
    except BaseException:
        for finish in pending:   # let their hashing threads end before the caller cleans up
            try:
                finish()
            except BaseException:
                pass
        raise
    return members


def _is_table(item: PlanItem) -> bool:
    """Calibrated data built from chunks, or a casacore table of the run."""
    return item.concat is not None or item.member.kind == "table"


def _stamp_like_inputs(table: Path, inputs: list[Path]) -> None:
    """Generated tables take the newest input's mtime, so the same run archives to the same bytes."""
    newest = max(p.stat().st_mtime_ns for p in inputs)
    for dirpath, _dirs, files in os.walk(table):
        for name in files + [""]:
            os.utime(os.path.join(dirpath, name) if name else dirpath, ns=(newest, newest))


def _creation_time() -> str:
    """Now, or SOURCE_DATE_EPOCH when set (reproducible archives)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (_dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch and epoch.isdigit()
            else _dt.datetime.now(_dt.timezone.utc))
    return when.isoformat(timespec="seconds")
