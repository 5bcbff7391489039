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


def source_size(path: Path) -> int:
    """The bytes of a file, or of every file of a table: with :func:`source_mtime`, what tells a
    rerun that a source changed since an interrupted run stored it."""
    if path.is_dir():
        return sum(os.stat(p).st_size for _rel, p in walk_table(path)[0])
    return path.stat().st_size


def source_mtime(path: Path) -> float:
    """The newest mtime of a file, or of a table's files and its directory."""
    if path.is_dir():
        return max([os.stat(p).st_mtime for _rel, p in walk_table(path)[0]] + [path.stat().st_mtime])
    return path.stat().st_mtime
