"""Moving the paths recorded inside state pickles and mapfiles to the restored run."""

from __future__ import annotations

import os
from collections.abc import Callable


def _norm(path: str) -> str:
    return os.path.normpath(path) if path else path


def make_path_mapper(old_roots: list[str], new_root: str,
                     relocations: dict[str, str]) -> Callable[[str], str | None]:
    """A function old path -> new path, or None for values that must stay as they are.

    ``relocations`` maps archived items (files or tables, possibly outside the old working
    directory) to their restored place; the longest match wins. Anything else under an old
    working directory moves under the new one. Scratch paths, ``dummy.ms`` and non-paths stay.
    CASA-style list strings (``'["/a.rgn","/b.rgn"]'``) are mapped element by element.
    """
    roots = sorted({_norm(r) for r in old_roots if r}, key=len, reverse=True)
    # By path: a path's own entry, else its nearest ancestor's, is the longest match. Looking
    # up each ancestor costs the path's depth, not the number of archived items (hundreds).
    moves: dict[str, str] = {}
    for k, v in relocations.items():
        if k.startswith("/"):
            moves.setdefault(_norm(k), v)

    # The nearest of a path and its ancestors that moved, (it, its new place), or None; kept for
    # every path and directory looked at: a run's paths share their directories.
    nearest: dict[str, tuple[str, str] | None] = {}

    def nearest_move(path: str) -> tuple[str, str] | None:
        walked = []
        found: tuple[str, str] | None = None
        while True:
            if path in nearest:
                found = nearest[path]
                break
            walked.append(path)
            new = moves.get(path)
            if new is not None:
                found = (path, new)
                break
            cut = path.rfind("/")
            if cut <= 0:
                break
            path = path[:cut]
        for p in walked:
            nearest[p] = found
        return found

    def one(path: str) -> str | None:
        if not path.startswith("/"):
            return None
        norm = _norm(path)
        trail = "/" if path.endswith("/") and norm != "/" else ""
        moved = nearest_move(norm)
        if moved is not None:
            old, new = moved
            return new + norm[len(old):] + trail
        for old in roots:
            if norm == old:
                return new_root + trail
            if norm.startswith(old + "/"):
                return new_root + norm[len(old):] + trail
        return None

    def mapper(value: str) -> str | None:
        if len(value) > 2 and value[0] == "[" and value[-1] == "]":
            parts = value[1:-1].split(",")
            changed = False
            out = []
            for part in parts:
                stripped = part.strip()
                quote = stripped[0] if stripped[:1] in ("'", '"') and stripped[-1:] == stripped[:1] else ""
                inner = stripped[1:-1] if quote else stripped
                new = one(inner)
                if new is None:
                    out.append(part)
                else:
                    changed = True
                    lead = part[: len(part) - len(part.lstrip())]
                    out.append(f"{lead}{quote}{new}{quote}")
            return "[" + ",".join(out) + "]" if changed else None
        return one(value)

    return mapper


def py2_bytes_mapper(mapper: Callable[[str], str | None]) -> Callable[[str], str | None]:
    """Adapt a mapper to Python 2 byte strings, which our readers present as latin-1 text.

    Paths on disk are UTF-8: decode before mapping, and hand back the UTF-8 bytes as latin-1
    text so that the pickle and mapfile writers store exactly those bytes.
    """
    def adapted(value: str) -> str | None:
        try:
            text = value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            text = value
        new = mapper(text)
        return None if new is None else new.encode("utf-8", "surrogateescape").decode("latin-1")

    return adapted
