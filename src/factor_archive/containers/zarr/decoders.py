"""The casacore worker processes a zarr restore decodes its tables in (see
ZarrReader._extract_table), started ahead. Light on purpose: importing it imports neither zarr
nor casacore, so the workers start and import while the restoring process still does."""

from __future__ import annotations

import os
from pathlib import Path

from ...ms.casacore_table.pipeline import PipelineSettings

MEMBERS_AT_ONCE = 2  # tables decoded at once, each by a worker of its own
# ... each table with smaller row blocks than a table decoded alone, so that two tables at once
# stay within the memory one used to take.
TABLES_AT_ONCE_SETTINGS = PipelineSettings(block_bytes=4 << 20, worker_queue_bytes=8 << 20)


def local_store(location: str | os.PathLike[str]) -> Path | None:
    """The absolute path of ``location`` when it is a zarr store in a local directory."""
    path = Path(location)
    try:
        return path.absolute() if (path / "zarr.json").is_file() else None
    except OSError:
        return None


def start_decoders(store: Path, tables: int = MEMBERS_AT_ONCE) -> None:
    """Inside a worker_session: up to ``tables`` workers ready (at most MEMBERS_AT_ONCE), each
    importing the codec and opening ``store`` meanwhile (reader.prepare_decoding)."""
    from ...ms.casacore_table.worker_client import start_workers

    count = min(tables, MEMBERS_AT_ONCE)
    start_workers(count, ("prepare_decoding", (str(store),)),
                  TABLES_AT_ONCE_SETTINGS if count > 1 else PipelineSettings())
