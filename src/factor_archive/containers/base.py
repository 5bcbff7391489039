"""The one interface every container form implements.

A writer turns planned items into stored members and returns their manifest entries; it writes the
manifest last, after the data is durable. A reader gives back members (verifying checksums as it
goes) in whatever order suits its medium, so a tape-like stream can be restored in one pass.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..io.copy import Progress
from ..manifest import FileEntry, Manifest, Member, tree_digest


class ArchiveWriter(Protocol):
    form: str

    def write(self, member: Member, source: Path, progress: Progress) -> Member:
        """Store ``source`` (file or table directory) as ``member``; fill in sizes and checksums."""

    def staging_dir(self) -> Path:
        """A scratch directory for generated members (calibrated data), on the output's disk if possible."""

    def close(self, manifest: Manifest) -> None:
        """Make everything durable, then write the manifest last."""

    def abort(self) -> None:
        """Leave nothing that looks like a complete archive."""


class ArchiveReader(Protocol):
    form: str
    manifest: Manifest

    def extract(self, members: list[Member], dest_for: Callable[[Member], Path | None],
                progress: Progress) -> None:
        """Write each member at dest_for(member), verifying its checksums while copying."""

    def local_path(self, member: Member) -> Path | None:
        """A path where the member already exists as plain files (for -s), or None."""

    def verify(self, progress: Progress) -> list[str]:
        """Recompute every checksum; one line per member that differs or is missing."""

    def close(self) -> None: ...


def finish_table_member(member: Member, entries: list[FileEntry], dirs: list[str]) -> Member:
    member.files = entries
    member.dirs = dirs
    member.size = sum(e.size for e in entries)
    member.sha256 = tree_digest(entries)
    return member


def fill_file_member(member: Member, st: os.stat_result, sha: str, size: int) -> Member:
    member.size = size
    member.sha256 = sha
    member.mode = stat.S_IMODE(st.st_mode)
    member.mtime = st.st_mtime
    return member


