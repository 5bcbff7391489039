"""What runs on a Dask worker: store one member of a task into the shared zarr store.

Each function takes a :class:`~.tasks.MemberTask` and a progress callback (bytes done) and
returns the filled-in manifest member. The layout is the zarr writer's own (the worker attaches
a writer to the store the client created, see ``adapters.attached_writer``); nothing here knows
node names or codecs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from ..manifest import Member
from .adapters import attached_writer
from .tasks import MemberTask

Progress = Callable[[int], None]


def store_file(task: MemberTask, progress: Progress) -> Member:
    """A file member: its bytes as a sharded, compressed uint8 array, its SHA-256 in the member."""
    return _store(task, "file", progress)


def encode_table_member(task: MemberTask, progress: Progress) -> Member:
    """A casacore table member: encoded column by column by the table codec (or kept as raw files
    when the codec says so), its content checksum in the member."""
    return _store(task, "table", progress)


WORKER_FUNCTIONS: dict[str, Callable[[MemberTask, Progress], Member]] = {
    "file": store_file, "table": encode_table_member}


def store_member(task: MemberTask, progress: Progress) -> Member:
    """The worker function for any task kind (what ``run_tasks`` is given for an archive)."""
    return WORKER_FUNCTIONS[task.kind](task, progress)


def _store(task: MemberTask, kind: str, progress: Progress) -> Member:
    if task.kind != kind:
        raise ValueError(f"{task.name}: a {task.kind} task given to the {kind} function")
    member = copy.deepcopy(task.member)
    with attached_writer(task.target, member.path) as writer:
        return writer.write(member, Path(task.sources[0]), progress)
