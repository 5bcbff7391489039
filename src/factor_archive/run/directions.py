"""Direction names of a run, from the directions file or Factor's generated factor_directions.txt."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadInput
from .parset import Parset


def directions_file(parset: Parset) -> Path | None:
    """Factor's lookup order: parset ``directions_file``, then ``<wd>/factor_directions.txt``."""
    given = parset.get("directions", "directions_file")
    if given:
        return Path(given)
    generated = Path(parset.working_dir) / "factor_directions.txt"
    return generated if generated.exists() else None


def read_direction_names(path: Path) -> list[str]:
    """First column of every non-comment row (the 14- or 12-column format Factor reads)."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise BadInput(f"{path}: cannot read directions file ({exc.strerror})") from None
    names = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) not in (12, 14):
            raise BadInput(f"{path}: line {number}: expected 12 or 14 columns, found {len(fields)}")
        names.append(fields[0])
    return names


def has_target_facet(parset: Parset) -> bool:
    return (parset.get("directions", "target_has_own_facet") or "false").strip().lower() in (
        "true", "yes", "1", "on")


def direction_names(parset: Parset) -> list[str]:
    """Every direction of the run, with ``target`` when it has its own facet (``field`` is separate)."""
    path = directions_file(parset)
    if path is None:
        raise BadInput(
            f"{parset.path}: no directions: neither [directions] directions_file nor "
            f"{os.path.join(parset.working_dir, 'factor_directions.txt')} exists")
    if not path.exists():
        raise BadInput(f"{path}: directions file not found (named in {parset.path})")
    names = read_direction_names(path)
    if has_target_facet(parset) and "target" not in names:
        names.append("target")
    if not names:
        raise BadInput(f"{path}: no directions in the directions file")
    return names
