"""How a file or table takes its name, loses it, and gets its mode and mtime: one set of rules for
every container form (docs/layout.md, "Modes and times").

- A member is written under a temporary name beside its destination (:func:`partial_name`) and
  renamed into place only once complete and verified (:func:`install`); whatever was at the
  destination goes only then.
- Its mode is the recorded permission bits ``mode & 0o777`` (never set-user-ID, set-group-ID or
  sticky, whatever the archive says) and its mtime the recorded time to the nanosecond that a
  float carries (:func:`set_meta`); failing to set either is an error, not a silent difference.
- A table's files get their own recorded mode and mtime, its sub-directories the table's mtime,
  and the table directory itself its recorded mode and mtime last (:func:`set_table_meta`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import BadInput

PERMISSION_BITS = 0o777


def partial_name(dest: Path) -> Path:
    """The temporary name a member is written under: ``.<name>.partial`` beside ``dest``."""
    return dest.with_name(f".{dest.name}.partial")


def remove(path: Path | None) -> None:
    """Remove a file, link or directory tree (read-only directories too); absent is fine."""
    if path is None or not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        for sub in [path, *path.rglob("*")]:   # a read-only directory would stop rmtree
            if sub.is_dir() and not sub.is_symlink():
                os.chmod(sub, 0o700)
        shutil.rmtree(path)
    else:
        path.unlink()


def discard(path: Path | None) -> None:
    """:func:`remove`, best effort: for clean-up after a failure, which must not hide it."""
    try:
        remove(path)
    except OSError:
        pass


def install(tmp: Path, dest: Path) -> None:
    """Put a complete temporary copy in place; whatever was at ``dest`` goes only now."""
    if os.path.lexists(dest) and (os.path.isdir(tmp) or (os.path.isdir(dest) and not os.path.islink(dest))):
        remove(dest)
    os.replace(tmp, dest)


def _checked(path: Path, mode: Any, mtime: Any) -> tuple[int, int]:
    """Values from a manifest are checked here: a malformed one is bad input, not a crash."""
    try:
        return int(mode) & PERMISSION_BITS, round(float(mtime) * 1e9)
    except (TypeError, ValueError, OverflowError):
        raise BadInput(f"{path.name}: malformed mode or mtime in the manifest") from None


def set_meta(path: Path, mode: Any, mtime: Any) -> None:
    """Give ``path`` its recorded permission bits and mtime (see the module's rules)."""
    bits, ns = _checked(path, mode, mtime)
    os.chmod(path, bits)
    os.utime(path, ns=(ns, ns))


def set_table_meta(root: Path, files: Iterable[tuple[str, Any, Any]], dirs: Iterable[str],
                   mode: Any, mtime: Any) -> None:
    """Modes and mtimes of a restored table: files (path, mode, mtime) first, then its
    sub-directories (the table's mtime), deepest first, then the table directory itself."""
    for rel, file_mode, file_mtime in files:
        set_meta(root / rel, file_mode, file_mtime)
    _bits, ns = _checked(root, mode, mtime)
    for rel in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
        os.utime(root / rel, ns=(ns, ns))
    set_meta(root, mode, mtime)


class Undo:
    """Temporary names and directories a failed extraction must take away again."""

    def __init__(self) -> None:
        self.tmps: list[Path] = []
        self.made_dirs: list[Path] = []

    def makedirs(self, path: Path) -> None:
        """mkdir -p, remembering what it made."""
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            if p.parent == p:
                break
            p = p.parent
        for d in reversed(missing):
            os.mkdir(d)
            self.made_dirs.append(d)

    def fresh(self, tmp: Path) -> Path:
        """``tmp``, emptied of what an earlier run left, and removed again by :meth:`undo`."""
        discard(tmp)
        self.tmps.append(tmp)
        return tmp

    def undo(self) -> None:
        for tmp in reversed(self.tmps):
            discard(tmp)
        for d in reversed(self.made_dirs):
            try:
                os.rmdir(d)
            except OSError:
                pass


def swap_into_place(tmp: Path, final: Path) -> None:
    """Rename a finished directory to its name; an older one there is removed afterwards."""
    from .durable import fsync_dir

    old = None
    if os.path.lexists(final):
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        remove(old)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    remove(old)
