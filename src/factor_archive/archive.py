"""Archiving: run model and plan in, one container out, the manifest written last."""

from __future__ import annotations

import datetime as _dt
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .containers.detect import open_writer
from .errors import BadInput
from .manifest import Manifest, Member
from .ms.concat import concat_in_frequency
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
    if output == "-" or "://" in output:
        return
    out = Path(os.path.abspath(output))
    wd = plan.run.working_dir.resolve()
    resolved = out.resolve()
    if resolved == wd or wd in resolved.parents:
        raise BadInput(f"{output}: output is inside the working directory {wd}; choose a path outside the run")


def write_archive(plan: ArchivePlan, output: str, *, clobber: bool = False,
                  quiet: bool = False, log: Callable[[str], None] | None = None) -> Manifest:
    _check_output(plan, output)
    writer = open_writer(plan.options.form, output, clobber=clobber)
    reporter = Reporter(plan.total_bytes, "archiving", quiet=quiet)
    for miss in plan.missing:
        reporter.message(f"warning: {miss.source}: {miss.reason}")
    try:
        members = _write_members(plan.items, writer, reporter)
        manifest = Manifest(
            container=plan.options.form, run=plan.run_info(),
            options={"resumable": plan.options.resumable, "directions": plan.options.directions,
                     "format": plan.options.form},
            members=members, missing=plan.missing,
            created=_creation_time(),
        )
        writer.close(manifest)
    except BaseException:
        writer.abort()
        raise
    finally:
        reporter.close()
    return manifest


def _write_members(items: list[PlanItem], writer, progress) -> list[Member]:
    def one(item: PlanItem) -> Member:
        if item.concat is None:
            return writer.write(item.member, item.source, progress)
        reuse = getattr(writer, "already_written", None)
        done = reuse(item.member) if reuse else None
        if done is not None:
            progress(done.size)
            return done
        staged = writer.staging_dir() / Path(item.member.path).name
        concat_in_frequency(item.concat, staged)
        _stamp_like_inputs(staged, [Path(s) for s in item.concat if s])
        kwargs = {"move": True} if getattr(writer, "form", "") == "dir" else {}
        member = writer.write(item.member, staged, progress, **kwargs)
        return member

    if getattr(writer, "parallel", False):
        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(one, items))
    return [one(item) for item in items]


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
