"""What the client sends to a worker: a small, picklable description of one member to store.

A task names paths, never data: workers read the run from the shared file system and write to
the target store themselves, and send back the manifest member (sizes, checksums, codecs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import BadInput
from ..manifest import Member

KINDS = ("file", "table")   # what a worker can do: store one file, encode one casacore table

# Storage options travel with every task and may be logged by Dask (task repr, errors): they
# must not hold credentials. Workers find those in their own environment, as botocore does.
_SECRET_WORDS = ("key", "secret", "token", "password", "credential")


@dataclass(frozen=True)
class StoreTarget:
    """The zarr store being written, as every worker sees it.

    ``location``: the absolute path of the (partial) store directory on the shared file system,
    or an object-store URL (``s3://bucket/prefix``). ``storage_options``: fsspec options for a
    URL (endpoint, retries), never credentials.
    """

    location: str
    storage_options: Mapping = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in self.storage_options:
            if any(word in name.lower() for word in _SECRET_WORDS):
                raise BadInput(f"{self.location}: storage option {name!r} looks like a credential; "
                               f"workers must get credentials from their environment")

    @property
    def is_url(self) -> bool:
        return "://" in self.location


@dataclass(frozen=True)
class MemberTask:
    """Store one member of the plan: ``kind`` is "file" or "table" (and must be the member's).

    ``sources``: the paths read (one, for these kinds). ``member``: the plan's member, filled in
    by the worker and returned as the manifest entry. ``codec_choices``: for a table, the
    client's codec choice for every column kind decided up to and including this table in plan
    order, as ``(kind, codec)`` pairs (see ``runs.with_codec_choices``); the worker obeys them.
    """

    kind: str
    member: Member
    sources: tuple[str, ...]
    target: StoreTarget
    codec_choices: tuple[tuple[tuple, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task kind {self.kind!r}: expected one of {KINDS}")
        if self.kind != self.member.kind:
            raise ValueError(f"{self.member.path}: a {self.member.kind} member in a {self.kind} task")
        if len(self.sources) != 1:
            raise ValueError(f"{self.member.path}: a {self.kind} task reads exactly one source")

    @property
    def name(self) -> str:
        """How errors and progress name the task: the member's archive path."""
        return self.member.path


# Small members go to the workers in batches: a task costs about a scheduler round trip (and, on
# an object store, a few requests to set the member up), which dominated a small file's time.
BATCH_BYTES = 64 << 20
BATCH_FILES = 200


@dataclass(frozen=True)
class Batch:
    """Members one worker stores (archive) or restores (unarchive) one after another: a table
    or a large file alone, small files together (up to BATCH_BYTES or BATCH_FILES)."""

    tasks: tuple

    @property
    def name(self) -> str:
        """How errors name the batch: its first member's path (and how many follow)."""
        first = self.tasks[0].name
        return first if len(self.tasks) == 1 else f"{first} (and {len(self.tasks) - 1} more members)"

    @property
    def names(self) -> tuple[str, ...]:
        """Every member's path: an error naming one of them needs no other name."""
        return tuple(t.name for t in self.tasks)


def batches(tasks: list, sizes: list[int], kinds: list[str]) -> list[Batch]:
    """``tasks`` in order, grouped: each table alone, files together until BATCH_BYTES or
    BATCH_FILES; a file of BATCH_BYTES or more alone."""
    out: list[Batch] = []
    group: list = []
    group_bytes = 0
    for task, size, kind in zip(tasks, sizes, kinds):
        if kind == "file" and size < BATCH_BYTES:
            if group and (group_bytes + size > BATCH_BYTES or len(group) >= BATCH_FILES):
                out.append(Batch(tuple(group)))
                group, group_bytes = [], 0
            group.append(task)
            group_bytes += size
            continue
        out.append(Batch((task,)))
    if group:
        out.append(Batch(tuple(group)))
    return out


@dataclass(frozen=True)
class RestoreTask:
    """Restore one member of the zarr archive at ``archive`` (a path every worker sees, or a
    URL) to ``dest`` on the shared file system."""

    archive: str
    member: Member
    dest: str

    @property
    def name(self) -> str:
        return self.member.path
