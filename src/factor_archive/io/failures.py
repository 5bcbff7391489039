"""One-line errors for I/O failures: a full disk names its file system and our output in it."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from ..errors import DiskFull, FactorArchiveError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("no space left on device", "disk quota exceeded")
_ABSOLUTE_PATH = re.compile(r"(/[^\s:'\"]+)")
_PARTIAL = re.compile(r"^\.(.+)\.partial(-\d+)?$")


def io_error(path: Path | str, exc: OSError) -> FactorArchiveError:
    """One-line error for an OS failure; a full disk or an I/O error names the file system too."""
    if exc.errno in FULL_ERRNOS:
        return disk_full(path, exc.errno or errno.ENOSPC)
    if exc.errno == errno.EIO:
        return FactorArchiveError(f"{path}: input/output error (file system {filesystem_of(path)})")
    return FactorArchiveError(f"{path}: {exc.strerror or exc}")


def filesystem_of(path: Path | str) -> str:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    try:
        dev = os.stat(p).st_dev
    except OSError:
        return str(p)
    while p != p.parent:
        try:
            if os.stat(p.parent).st_dev != dev:
                break
        except OSError:
            break
        p = p.parent
    return str(p)


def disk_full(path: Path | str, err: int = errno.ENOSPC, *, during: str = "") -> DiskFull:
    """The one-line error for a full file system (or quota) while writing ``path``."""
    fs = filesystem_of(path)
    if err == errno.EDQUOT:
        what = f"disk quota exceeded{during} (file system {fs})"
    else:
        what = f"no space left on device{during} (file system {fs} is full)"
    return DiskFull(f"{path}: {what}", str(path))


def is_disk_full(exc: BaseException) -> bool:
    """True for a full file system or quota, however it reached us (OSError, our error, the text
    of a casacore error from this process or from the casacore worker)."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return True
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return False
    text = str(exc).lower()
    return any(t in text for t in _FULL_TEXTS)


def written_path(exc: BaseException, roots: list[Path]) -> Path | None:
    """The file named by ``exc`` that lies below one of ``roots`` (where we write), if any.

    A full disk is always one we write to; an error that names another file (a source in the
    run) would send the user to the wrong disk.
    """
    names = []
    if isinstance(exc, DiskFull) and exc.path:
        names.append(exc.path)
    if isinstance(exc, OSError) and exc.filename:
        names.append(os.fsdecode(exc.filename))
    names += _ABSOLUTE_PATH.findall(str(exc))
    for name in names:
        p = Path(os.path.abspath(name))
        for root in roots:
            if p == root or root in p.parents:
                return _without_partial(p)
    return None


def _without_partial(path: Path) -> Path:
    """``dir/.x.ms.partial/table.f0`` -> ``dir/x.ms``: the member as the user knows it."""
    parts = path.parts
    for i, part in enumerate(parts):
        m = _PARTIAL.match(part)
        if m:
            return Path(*parts[:i], m.group(1))
    return path
