"""``--cluster`` for archivefactor and unarchivefactor: which members go to the workers, which
stay on the client, and how the results come back in plan order.

Archive (zarr form): every file and table member is stored by a worker (small files in batches);
links and the calibrated data of ``-d`` (a DP3-style concatenation built in the client's staging
area) are written by the client, after the workers are done. Restore: tables are decoded by the
workers into the output directory (a shared file system); the client restores the files, then
rewrites paths and writes the parset as without a cluster.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from ..containers.locations import parse_location
from ..containers.zarr import ZarrWriter
from ..io.copy import Progress
from ..manifest import Member
from ..plan import PlanItem
from .adapters import decide_codecs, prepare_target, remembered_codec_choices
from .engine import run_tasks
from .tasks import Batch, MemberTask, RestoreTask, batches
from .worker import restore_batch, store_batch


def archive_members(client, items: list[PlanItem], writer: ZarrWriter, progress: Progress,
                    write_here: Callable[[list[PlanItem]], list[Member]]) -> list[Member]:
    """The members of ``items`` in plan order: files and tables stored by the cluster's workers
    into ``writer``'s store, the rest (links, ``-d`` concatenations) by ``write_here`` on the
    client once the workers are done."""
    remote = [i for i, item in enumerate(items)
              if item.concat is None and item.source is not None and item.member.kind in ("file", "table")]
    target = prepare_target(writer, [items[i].member for i in remote])
    tasks = [MemberTask(items[i].member.kind, items[i].member, (str(items[i].source),), target)
             for i in remote]
    groups = batches(tasks, [items[i].size for i in remote], [items[i].member.kind for i in remote])
    # Files first: the workers store them while the client decides the tables' codecs, each
    # table sent once decided, in plan order (see with_codec_choices).
    groups.sort(key=lambda batch: any(t.kind == "table" for t in batch.tasks))
    # One run's codec choices, made here: the workers' tables, then the client's own (-d
    # concatenations, last in plan order, as in a single process) take them.
    with remembered_codec_choices():
        done = run_tasks(client, groups, store_batch, progress, prepare=batch_with_codec_choices)
        # Batches are not in plan order (a batch of small files is sent when full): by path.
        stored = {m.path: m for group in done for m in group}
        members: list[Member | None] = [None] * len(items)
        for i in remote:
            members[i] = stored[items[i].member.path]
        here = [i for i, m in enumerate(members) if m is None]
        for i, member in zip(here, write_here([items[i] for i in here])):
            members[i] = member
    return [m for m in members if m is not None]


def with_codec_choices(task: MemberTask) -> MemberTask:
    """``task``, if a table, with the codec choices the client made for the run up to and
    including it (``decide_codecs``, within the caller's ``remembered_codec_choices``; called for
    the tables in plan order). These are the trials a single process makes, in its order, so
    every worker encodes a table as the single process does and the manifests are equal (a
    worker choosing for itself would choose from its own first table)."""
    if task.kind != "table":
        return task
    return dataclasses.replace(task, codec_choices=tuple(decide_codecs(task.sources[0]).items()))


def batch_with_codec_choices(batch: Batch) -> Batch:
    return Batch(tuple(with_codec_choices(t) for t in batch.tasks))


def restore_tables(client, archive: str, members: list[Member],
                   dest_for: Callable[[Member], Path | None], progress: Progress) -> list[Member]:
    """Decode the table members of the zarr archive ``archive`` on the workers, each into its
    ``dest_for`` place; return the other members, for the client to restore."""
    location = worker_location(archive)
    tables = [m for m in members if m.kind == "table" and dest_for(m) is not None]
    tasks = [RestoreTask(location, m, str(dest_for(m))) for m in tables]
    run_tasks(client, batches(tasks, [m.size for m in tables], ["table"] * len(tables)),
              restore_batch, progress)
    done = {m.path for m in tables}
    return [m for m in members if m.path not in done]


def worker_location(location: str) -> str:
    """``location`` as every worker sees it: an absolute path (the file system is shared at the
    same paths) or the URL itself."""
    loc = parse_location(location)
    return os.path.abspath(loc.local_path()) if loc.is_local else loc.text
