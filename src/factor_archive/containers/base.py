"""The one interface every container form implements, and what each form can do.

A writer turns planned items into stored members and returns their manifest entries (new
``Member`` values: the plan's are never changed); it writes the manifest last, after the data is
durable. A reader gives back members (verifying checksums as it goes) in whatever order suits its
medium, so a tape-like stream can be restored in one pass. Callers decide by a form's
:class:`Capabilities`, never by its name or by probing attributes.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.copy import Progress
from ..manifest import FileEntry, Manifest, Member, tree_digest

DestFor = Callable[[Member], "Path | None"]


@dataclass(frozen=True)
class Capabilities:
    """What a writer or reader of one form can do; callers read these instead of the form's name."""

    parallel_members: bool = False   # two members may be written (extracted) at once
    resumable_writes: bool = False   # a rerun completes an interrupted archive (already_written)
    seekable: bool = True            # reader: the manifest is known before extract, members in any order
    local_paths: bool = False        # reader: members exist as plain files that -s can link to
    streams: bool = False            # writes to standard output / reads from standard input ("-")
    table_workers: bool = False      # encodes or decodes tables in casacore worker processes: the
    #                                  caller opens a worker session (ms.casacore_table) around its work


class ArchiveWriter(ABC):
    """Stores members; ``close`` makes them durable and writes the manifest last."""

    form: str
    capabilities: Capabilities
    notices: list[str]               # for the user: e.g. leftovers of killed runs removed

    @abstractmethod
    def write(self, member: Member, source: Path, progress: Progress, *, staged: bool = False) -> Member:
        """Store ``source`` (a file, a table directory, or nothing for a link) as ``member``;
        return the member with sizes, checksums, mode and mtime filled in.

        ``staged``: the source was built in :meth:`staging_dir` and is the writer's to consume
        (moved into the archive, or removed once stored)."""

    def begin_write(self, member: Member, source: Path, progress: Progress, *,
                    staged: bool = False) -> Callable[[], Member]:
        """:meth:`write`, the result waited for when the returned callable is called: a writer
        that stores one member after another (a tar) may copy the next member while this one's
        checksums are still being computed. Here: written at once."""
        done = self.write(member, source, progress, staged=staged)
        return lambda: done

    @abstractmethod
    def staging_dir(self) -> Path:
        """A scratch directory for generated members (calibrated data), on the output's disk if possible."""

    def already_written(self, member: Member) -> Member | None:
        """With ``resumable_writes``: the member as an interrupted earlier run stored it, if intact."""
        return None

    @abstractmethod
    def close(self, manifest: Manifest) -> None:
        """Make everything durable, then write the manifest last."""

    @abstractmethod
    def abort(self) -> None:
        """Leave nothing that looks like a complete archive."""


class ArchiveReader(ABC):
    """Reads an archive's manifest and members, verifying every checksum it reads."""

    form: str
    capabilities: Capabilities

    @property
    @abstractmethod
    def manifest(self) -> Manifest:
        """The archive's manifest. A reader that is not ``seekable`` reads (spools) the whole
        stream to find it; such a caller may use ``extract(None, ...)`` instead."""

    @abstractmethod
    def extract(self, members: list[Member] | None, dest_for: DestFor, progress: Progress) -> None:
        """Write each member (None: every member) at ``dest_for(member)``, skipping those it maps
        to None, verifying checksums while copying. On a reader that is not ``seekable`` and has
        not read its stream, ``dest_for`` sees each member as announced in the stream (all fields
        but sizes and checksums) and the manifest is checked at the end."""

    def local_path(self, member: Member) -> Path | None:
        """With ``local_paths``: where the member already exists as plain files (for -s)."""
        return None

    @abstractmethod
    def verify(self, progress: Progress) -> list[str]:
        """Recompute every checksum; one line per member that differs or is missing."""

    @abstractmethod
    def close(self) -> None:
        """Release files, connections and scratch space."""

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


def table_worker_session(needed: bool) -> AbstractContextManager[Any]:
    """The casacore worker session of ms.casacore_table (for ``table_workers``, or -d), with the
    run's remembered codec choices (the tables of one run choose each column kind's codec once),
    or nothing when no one needs it: importing the codec imports zarr (about 0.6 s), which a tar
    or directory archive or restore need not spend."""
    if not needed:
        return nullcontext()
    from ..ms.casacore_table import remembered_codec_choices, worker_session

    stack = ExitStack()
    stack.enter_context(worker_session())
    stack.enter_context(remembered_codec_choices())
    return stack


def table_member(member: Member, entries: list[FileEntry], dirs: list[str], **changes: Any) -> Member:
    """``member`` as a stored table: its files, sub-directories, size and tree digest."""
    return dataclasses.replace(member, files=entries, dirs=dirs, size=sum(e.size for e in entries),
                               sha256=tree_digest(entries), **changes)


def file_member(member: Member, st: os.stat_result, sha: str, size: int, **changes: Any) -> Member:
    """``member`` as a stored file: size, checksum, and the source's mode and mtime."""
    return dataclasses.replace(member, size=size, sha256=sha, mode=stat.S_IMODE(st.st_mode),
                               mtime=st.st_mtime, **changes)


def extract_at_once(jobs: Iterable[tuple[Any, ...]], extract_one: Callable[..., None], *,
                    workers: int, name: str, beside: Callable[..., bool] | None = None,
                    beside_last: bool = False) -> None:
    """``extract_one(*job)`` for every job, ``workers`` at a time, started in order (the order of
    the manifest). After a failure no further job starts, and the first failure in job order is
    raised once the running ones are done: the same member is named whichever thread was first.

    Jobs for which ``beside(*job)`` is true run in order on one more thread of their own, beside
    the others (small work this process does while the others wait for worker processes); with
    ``beside_last`` they start with the last round of the others (fewer than ``workers`` of them
    left to start), so that they fill the time the last ones leave cores idle instead of slowing
    the first ones."""
    jobs = list(jobs)
    failed = threading.Event()
    aside = [beside is not None and bool(beside(*job)) for job in jobs]
    unstarted = sum(not a for a in aside)   # jobs of the pool not started yet
    last_round = threading.Event()
    lock = threading.Lock()
    if not beside_last or unstarted < workers:
        last_round.set()

    def one(*job: Any, aside: bool = False) -> None:
        nonlocal unstarted
        if aside:
            while not last_round.wait(0.1) and not failed.is_set():
                pass
        elif not last_round.is_set():
            with lock:
                unstarted -= 1
                if unstarted < workers:
                    last_round.set()
        if failed.is_set():
            return
        try:
            extract_one(*job)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-beside") as side:
        futures = [side.submit(one, *job, aside=True) if a else pool.submit(one, *job)
                   for job, a in zip(jobs, aside)]
        try:
            for future in futures:
                future.result()
        except BaseException:
            failed.set()
            for future in futures:
                future.cancel()
            raise
