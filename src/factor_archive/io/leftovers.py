"""Leftovers of killed runs: temporary names that a rerun may remove."""

from __future__ import annotations

import os
from pathlib import Path

from .install import remove


def _process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs any more (a zombie counts as gone)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False                # someone else's process: alive, and not ours anyway
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def remove_stale_partials(final: Path, kinds: tuple[str, ...] = ("partial", "staging", "old")) -> list[str]:
    """Remove ``.<name>.<kind>-<pid>`` beside ``final`` left by runs that were killed.

    Only names made for this very output, owned by this user, whose process has exited, are
    removed; a run still going (or another user's) is left alone. Returns one notice per removal,
    for the user to see.
    """
    notices: list[str] = []
    parent = final.parent
    prefix = f".{final.name}."
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return notices
    for name in sorted(names):
        kind, dash, pid = name[len(prefix):].rpartition("-")
        if not dash or kind not in kinds or not pid.isdigit() or not _process_gone(int(pid)):
            continue
        path = parent / name
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            remove(path)
        except OSError:
            continue
        notices.append(f"removed {path}, left by an interrupted run (process {pid} has exited)")
    return notices
