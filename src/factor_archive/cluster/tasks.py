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
    by the worker and returned as the manifest entry.
    """

    kind: str
    member: Member
    sources: tuple[str, ...]
    target: StoreTarget

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
