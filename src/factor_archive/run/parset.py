"""Factor's parset: an INI file whose option names are case-insensitive (ConfigParser lower-cases them)."""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput


@dataclass
class Parset:
    path: Path
    text: str
    sections: dict[str, dict[str, str]]

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        return self.sections.get(section, {}).get(key.lower(), default)

    @property
    def working_dir(self) -> str:
        return self.sections["global"]["dir_working"]

    @property
    def dir_ms(self) -> str | None:
        return self.get("global", "dir_ms")

    @property
    def skymodel_extension(self) -> str:
        return self.get("global", "skymodel_extension") or ".merge"


def read_parset(path: str | os.PathLike) -> Parset:
    """Read without any of Factor's side effects (no directory creation, no chdir, no env checks)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{p}: parset not found") from None
    except IsADirectoryError:
        raise BadInput(f"{p}: is a directory, not a parset") from None
    except OSError as exc:
        raise BadInput(f"{p}: cannot read parset ({exc.strerror})") from None
    text = raw.decode("utf-8", errors="surrogateescape")
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(text, source=str(p))
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise BadInput(f"{p}: malformed parset ({first})") from None
    sections = {name: {k.lower(): v.strip() for k, v in parser.items(name)} for name in parser.sections()}
    if "global" not in sections:
        raise BadInput(f"{p}: malformed parset (no [global] section)")
    if not sections["global"].get("dir_working"):
        raise BadInput(f"{p}: [global] dir_working is not set")
    return Parset(path=p.resolve(), text=text, sections=sections)


_KEY_LINE = re.compile(r"^(\s*)([A-Za-z0-9_]+)(\s*[=:]\s*)(.*?)(\s*)$")
_SECTION_LINE = re.compile(r"^\s*\[([^\]]+)\]\s*$")


def rewrite_parset(text: str, changes: dict[tuple[str, str], str]) -> str:
    """Set ``(section, key) -> value`` in the parset text, keeping every other line as it was.

    Keys that are absent are added at the end of their section (the section is created if needed).
    """
    pending = {(s, k.lower()): v for (s, k), v in changes.items()}
    out: list[str] = []
    section = None

    def flush_section(sec: str | None) -> None:
        for (s, k), v in list(pending.items()):
            if s == sec:
                out.append(f"{k} = {v}")
                del pending[(s, k)]

    for line in text.splitlines():
        m = _SECTION_LINE.match(line)
        if m:
            flush_section(section)
            section = m.group(1)
            out.append(line)
            continue
        m = _KEY_LINE.match(line)
        if m and section is not None and (section, m.group(2).lower()) in pending:
            key = (section, m.group(2).lower())
            out.append(f"{m.group(1)}{m.group(2)}{m.group(3)}{pending.pop(key)}")
            continue
        out.append(line)
    flush_section(section)
    for (s, k), v in list(pending.items()):
        if s not in _section_names(out):
            out.append(f"[{s}]")
        out.append(f"{k} = {v}")
    return "\n".join(out) + "\n"


def _section_names(lines: list[str]) -> set[str]:
    return {m.group(1) for m in map(_SECTION_LINE.match, lines) if m}
