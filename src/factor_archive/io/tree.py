"""Reading what is to be archived: a table directory's files, a source's status."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadInput


def walk_table(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Files and sub-directories of a table directory, sorted, relative to ``root``.

    The root may be a symlink (a chunk linked to an input MS): we follow it. Links inside the
    table are followed too, so the archive always holds data, never a dangling reference.
    """
    files: list[tuple[str, Path]] = []
    dirs: list[str] = []

    def unreadable(exc: OSError) -> None:
        raise BadInput(f"{exc.filename}: cannot read ({exc.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir != ".":
            dirs.append(rel_dir.replace(os.sep, "/"))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            files.append((rel, full))
    return files, dirs


def stat_entry(path: Path) -> os.stat_result:
    """os.stat, with a one-line error naming the source."""
    try:
        return os.stat(path)
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None
