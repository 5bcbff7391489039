"""The casacore worker processes a zarr restore decodes its tables in (see
ZarrReader._extract_table), started ahead. Light on purpose: importing it imports neither zarr
nor casacore, so the workers start and import while the restoring process still does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ...ms.casacore_table.pipeline import PipelineSettings

# Each table decoded beside others gets smaller row blocks and two decompression threads: its
# worker is about one core's work, and the workers together stay within the memory of a few.
TABLES_AT_ONCE_SETTINGS = PipelineSettings(block_bytes=4 << 20, worker_queue_bytes=8 << 20, threads=2)


def tables_at_once() -> int:
    """Tables decoded at once, each by a worker of its own: one per core this process may use,
    2 to 8 (a worker decoding a chunk MS peaks at about 170 MB)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(2, min(8, cores))


def local_store(location: str | os.PathLike[str]) -> Path | None:
    """The absolute path of ``location`` when it is a zarr store in a local directory."""
    path = Path(location)
    try:
        return path.absolute() if (path / "zarr.json").is_file() else None
    except OSError:
        return None


@contextmanager
def decoding_ahead(location: str | os.PathLike[str]) -> Iterator[None]:
    """For a restore of ``location``: when it is a zarr store on local disk, a worker session
    with its decoders started now, before the restoring process imports the codec, so that they
    start and import while it does; nothing otherwise."""
    store = local_store(location)
    if store is None:
        yield
        return
    from ...ms.casacore_table.worker_client import worker_session

    with worker_session():
        # The restore syncs its whole output before it is complete: casacore's fsyncs are skipped.
        start_decoders(store, skip_fsync=True)
        yield


def start_decoders(store: Path, tables: int | None = None, *, skip_fsync: bool = False) -> None:
    """Inside a worker_session: a worker ready for each table decoded at once (for ``tables``
    tables at most), each importing the codec and opening ``store`` meanwhile
    (table_members.prepare_decoding). ``skip_fsync``: see worker_client.fsync_skipper (only
    where the caller syncs the tables' file system itself, as unarchive does; not a cluster's
    workers, whose shared file system the client cannot sync)."""
    from ...ms.casacore_table.worker_client import start_workers

    count = min(tables or tables_at_once(), tables_at_once())
    start_workers(count, ("prepare_decoding", (str(store),)),
                  TABLES_AT_ONCE_SETTINGS if count > 1 else PipelineSettings(), skip_fsync=skip_fsync)
