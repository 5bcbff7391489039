"""-s: the content-addressed store of chunk tables that restored runs link to.

A form whose members exist as plain files (``local_paths``: the directory form) is linked to
directly. Other forms materialise each chunk once into ``<store>/<sha[:2]>/<sha>/<name>`` (the store
is ``<archive>.store`` beside the archive, or ``--store``), a ``.complete`` file marking a finished
entry, so a second restore from the same archive reuses it without copying.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..containers.base import ArchiveReader
from ..containers.locations import parse_location
from ..errors import BadInput
from ..io.install import remove
from ..manifest import Manifest, safe_relpath


class ChunkLinks:
    """-s: chunk tables become symlinks instead of copies.

    A directory archive already holds each chunk as plain files: link to it. Other forms
    materialise each chunk once into a store beside the archive (or ``--store``), keyed by the
    member's checksum, so a second restore from the same archive reuses it without copying.
    """

    def __init__(self, reader: ArchiveReader, archive: str, store: str | None):
        self.reader = reader
        self.archive = archive
        self.store_option = store
        self.targets: dict[str, Path] = {}   # member path -> what the link points to
        self.pending: dict[str, Path] = {}   # member path -> where extract writes it first

    def store_dir(self) -> Path:
        if self.store_option:
            return Path(os.path.abspath(self.store_option))
        if not parse_location(self.archive).is_local:
            raise BadInput(f"{self.archive}: -s with a stream or a URL needs --store DIR for the chunks")
        return Path(os.path.abspath(self.archive.rstrip("/")) + ".store")

    def plan(self, manifest: Manifest) -> None:
        for m in manifest.members:
            if m.category != "chunks" or m.kind != "table" or m.restore_path is None:
                continue
            local = self.reader.local_path(m) if self.reader.capabilities.local_paths else None
            if local is not None:
                self.targets[m.path] = local
                continue
            final = self.store_dir() / m.sha256[:2] / m.sha256 / Path(m.path).name
            self.targets[m.path] = final
            if not (final.parent / ".complete").exists():
                self.pending[m.path] = final.parent.with_name(f".partial-{m.sha256}") / final.name
                remove(self.pending[m.path].parent)

    def finish(self, manifest: Manifest, new_wd: Path) -> None:
        for path, tmp in self.pending.items():
            final_dir = self.targets[path].parent
            (tmp.parent / ".complete").write_text("")
            if final_dir.exists():
                remove(tmp.parent)             # another restore finished it first
            else:
                os.rename(tmp.parent, final_dir)
        for m in manifest.members:
            if m.path not in self.targets:
                continue
            assert m.restore_path is not None       # plan() keeps only restored chunks
            dest = new_wd / safe_relpath(m.restore_path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            remove(dest)
            os.symlink(self.targets[m.path], dest)
