"""What runs on a Dask worker: store members into the shared zarr store, or restore them from it.

Each function takes a task and a progress callback (bytes done) and returns what the client
needs (the filled-in manifest members). The layout is the zarr container's own (the worker
attaches a writer to the store the client created, or opens a reader of the archive); nothing
here knows node names or codecs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from ..errors import FactorArchiveError
from ..manifest import Member
from .adapters import archive_reader, attached_writer, casacore_session, remembered_codec_choices
from .tasks import Batch, MemberTask, RestoreTask

Progress = Callable[[int], None]


def store_file(task: MemberTask, progress: Progress) -> Member:
    """A file member: its bytes as a sharded, compressed uint8 array, its SHA-256 in the member."""
    return _store(task, "file", progress)


def encode_table_member(task: MemberTask, progress: Progress) -> Member:
    """A casacore table member: encoded column by column by the table codec (or kept as raw files
    when the codec says so), its content checksum in the member. Each column takes the codec the
    client chose for its kind (the task's ``codec_choices``); only a kind left open is tried here."""
    with remembered_codec_choices(dict(task.codec_choices)):
        return _store(task, "table", progress)


WORKER_FUNCTIONS: dict[str, Callable[[MemberTask, Progress], Member]] = {
    "file": store_file, "table": encode_table_member}


def store_member(task: MemberTask, progress: Progress) -> Member:
    """The worker function for any task kind (what ``run_tasks`` is given for an archive)."""
    return WORKER_FUNCTIONS[task.kind](task, progress)


def store_batch(batch: Batch, progress: Progress) -> list[Member]:
    """Store a batch's members one after another; an error names the member it came from."""
    with casacore_session():
        return [_naming_member(store_member, task, progress) for task in batch.tasks]


def restore_batch(batch: Batch, progress: Progress) -> list[None]:
    """Restore a batch's members (``RestoreTask``) from the archive, checksums verified as they
    are read, each installed at its destination only once complete."""
    with casacore_session():
        return [_naming_member(restore_member, task, progress) for task in batch.tasks]


def restore_member(task: RestoreTask, progress: Progress) -> None:
    """One member from the archive (opened once per worker) to its place on the shared file system."""
    reader = archive_reader(task.archive)
    reader.extract([task.member], lambda _m: Path(task.dest), progress)


def _naming_member(fn: Callable, task, progress: Progress):
    try:
        return fn(task, progress)
    except FactorArchiveError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if task.name not in message:
            exc.args = (f"{task.name}: {message}",)
        raise


def _store(task: MemberTask, kind: str, progress: Progress) -> Member:
    if task.kind != kind:
        raise ValueError(f"{task.name}: a {task.kind} task given to the {kind} function")
    member = copy.deepcopy(task.member)
    with attached_writer(task.target, member.path) as writer:
        return writer.write(member, Path(task.sources[0]), progress)
