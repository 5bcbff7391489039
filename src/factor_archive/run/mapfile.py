"""LOFAR ``DataMap`` mapfiles, read and rewritten without ``eval``.

LOFAR reads these with ``eval(f.read())``; archives come from strangers, so we only ever parse
them (``ast``) and rewrite path literals in place, leaving every other character as it was.

Values are Python 2 byte strings as written by ``repr``; non-ASCII bytes appear as ``\\xNN``
escapes and are seen here as latin-1 characters, as in :mod:`factor_archive.run.state`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BadInput

__all__ = ["MapfileError", "MapEntry", "parse_mapfile", "rewrite_mapfile"]


class MapfileError(BadInput, ValueError):
    """The text is not a mapfile we can read safely."""


@dataclass(frozen=True)
class MapEntry:
    host: str
    file: str
    skip: bool

    @property
    def is_multi(self) -> bool:
        """Factor's compressed entry ``'[a,b,c]'`` (MultiDataProduct)."""
        return _is_multi(self.file)

    @property
    def paths(self) -> list[str]:
        """The element strings: ``['a', 'b', 'c']`` for ``'[a,b,c]'``, else ``[file]``."""
        return _split(self.file)


def _is_multi(file: str) -> bool:
    return len(file) >= 2 and file[0] == "[" and file[-1] == "]"


def _split(file: str) -> list[str]:
    if _is_multi(file):
        inner = file[1:-1]
        return inner.split(",") if inner else []
    return [file]


def _literal(node: ast.expr) -> object:
    if type(node) is ast.Constant:  # what literal_eval would return, without its walk
        return node.value
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise MapfileError(f"not a plain literal at line {getattr(node, 'lineno', '?')}") from None


Span = tuple[int, int]  # where a value's literal is in the text's UTF-8 bytes: [start, end)

# The form LOFAR's DataMap writes, ``repr`` of a list of dicts with the keys in this order, with
# values that need no escaping (printable ASCII but quotes and backslashes): nearly every
# mapfile of a run. Such a text is read with these expressions, to the entries ``ast`` reads
# from it; any other text goes through ``ast``.
_PLAIN_LITERAL = r"'([\x20-\x26\x28-\x5b\x5d-\x7e]*)'"
_USUAL_ENTRY = re.compile(r"\{'host': " + _PLAIN_LITERAL + r", 'file': (" + _PLAIN_LITERAL
                          + r"), 'skip': (True|False)\}")


def _usual_entries(text: str) -> list[tuple[MapEntry, Span | None]] | None:
    """The entries of a mapfile in the usual form (see _USUAL_ENTRY), or None for any other text."""
    if not text.startswith("["):
        return None
    out: list[tuple[MapEntry, Span | None]] = []
    pos = 1
    while True:
        m = _USUAL_ENTRY.match(text, pos)
        if m is None:
            break
        out.append((MapEntry(m[1], m[3], m[4] == "True"), m.span(2)))
        pos = m.end()
        if not text.startswith(", ", pos):
            break
        pos += 2
    return out if text[pos:] in ("]", "]\n") else None


def _entries(text: str) -> list[tuple[MapEntry, Span | None]]:
    """Parse and check the structure; return each entry with the span of its file value's
    literal (None for a number)."""
    if not isinstance(text, str):
        raise TypeError("mapfile text must be str")
    usual = _usual_entries(text)
    if usual is not None:
        return usual
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise MapfileError("not a mapfile (not a Python literal)") from None
    body = tree.body
    if not isinstance(body, ast.List):
        raise MapfileError("not a mapfile (not a list)")
    line_starts = [0, *(m.end() for m in re.finditer(b"\n", text.encode("utf-8")))]
    out: list[tuple[MapEntry, Span | None]] = []
    for i, item in enumerate(body.elts):
        where = f"entry {i}"
        if isinstance(item, ast.Dict):
            fields: dict[object, ast.expr] = {}
            for k, v in zip(item.keys, item.values):
                key = _literal(k) if k is not None else None
                if key not in ("host", "file", "skip") or key in fields:
                    raise MapfileError(f"{where}: unexpected key {key!r}")
                fields[key] = v
            if "host" not in fields or "file" not in fields:
                raise MapfileError(f"{where}: needs 'host' and 'file'")
            host_node, file_node = fields["host"], fields["file"]
            skip_node = fields.get("skip")
        elif isinstance(item, (ast.Tuple, ast.List)) and len(item.elts) in (2, 3):
            host_node, file_node = item.elts[0], item.elts[1]  # legacy (host, file[, skip])
            skip_node = item.elts[2] if len(item.elts) == 3 else None
        else:
            raise MapfileError(f"{where}: not a dict or (host, file) pair")
        host = _literal(host_node)
        file = _literal(file_node)
        skip = True if skip_node is None else _literal(skip_node)
        if not isinstance(host, str):
            raise MapfileError(f"{where}: host is not a string")
        if type(skip) is int and skip in (0, 1):
            skip = bool(skip)
        if type(skip) is not bool:
            raise MapfileError(f"{where}: skip is not a bool")
        if isinstance(file, str):
            end_line, end_col = _end(file_node)
            span = (line_starts[file_node.lineno - 1] + file_node.col_offset, line_starts[end_line - 1] + end_col)
            out.append((MapEntry(host, file, skip), span))
        elif type(file) in (int, float):  # pad-size maps carry numbers, never paths
            out.append((MapEntry(host, str(file), skip), None))
        else:
            raise MapfileError(f"{where}: file is not a string")
    return out


def parse_mapfile(text: str) -> list[MapEntry]:
    """Read a mapfile safely (LOFAR itself uses ``eval``)."""
    return [entry for entry, _ in _entries(text)]


_PLAIN = re.compile(r"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but the backslash


def py2_literal(value: str, quote: str, unicode_ok: bool) -> str:
    """A literal Python 2 evaluates back to ``value`` (``repr`` style, preferring ``quote``)."""
    if quote in value and ('"' if quote == "'" else "'") not in value:
        quote = '"' if quote == "'" else "'"
    if _PLAIN.fullmatch(value) and quote not in value:  # nearly every path: nothing to escape
        return quote + value + quote
    out = [quote]
    for ch in value:
        c = ord(ch)
        if ch == quote or ch == "\\":
            out.append("\\" + ch)
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif c < 0x20 or 0x7F <= c <= 0xFF:
            out.append(f"\\x{c:02x}")
        elif c > 0xFF:
            if not unicode_ok:
                raise ValueError(f"{value!r} does not fit a Python 2 byte string")
            out.append(f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}")
        else:
            out.append(ch)
    out.append(quote)
    return "".join(out)


def _end(node: ast.expr) -> tuple[int, int]:
    """(line, column) where a node ends: ``ast.parse`` sets both (None only for made-up nodes)."""
    if node.end_lineno is None or node.end_col_offset is None:
        raise MapfileError(f"no end position for the value at line {node.lineno}")
    return node.end_lineno, node.end_col_offset


def rewrite_mapfile(text: str, fn: Callable[[str], str | None]) -> tuple[str, int]:
    """Rewrite path elements of ``file`` values in place; everything else stays byte-identical.

    ``fn`` is called on each element (each of ``a``, ``b``, ``c`` for ``'[a,b,c]'``) and returns
    a replacement or None. Returns the new text and the number of elements changed.
    """
    entries = _entries(text)
    raw = text.encode("utf-8")  # spans count UTF-8 bytes, as ast column offsets do

    edits: list[tuple[int, int, bytes]] = []
    changed = 0
    for entry, span in entries:
        if span is None:
            continue
        elems = entry.paths
        new_elems = []
        for elem in elems:
            new = fn(elem) if elem else None
            if new is None or new == elem:
                new_elems.append(elem)
                continue
            if not isinstance(new, str):
                raise TypeError(f"replacement for {elem!r} must be str, got {type(new).__name__}")
            if entry.is_multi and ("," in new or new.startswith("[") or new.endswith("]")):
                raise ValueError(f"{new!r} cannot be an element of a compressed '[a,b]' entry")
            new_elems.append(new)
            changed += 1
        if new_elems == elems:
            continue
        value = "[" + ",".join(new_elems) + "]" if entry.is_multi else new_elems[0]
        start, end = span
        source = raw[start:end].decode("utf-8")
        prefix = ""
        while source[len(prefix)] not in "'\"":
            prefix += source[len(prefix)]
        unicode_ok = "u" in prefix.lower()
        literal = ("u" if unicode_ok else "") + py2_literal(value, source[len(prefix)], unicode_ok)
        edits.append((start, end, literal.encode("utf-8")))

    if not edits:
        return text, 0
    pieces: list[bytes] = []
    last = 0
    for start, end, literal_bytes in edits:
        pieces += (raw[last:start], literal_bytes)
        last = end
    pieces.append(raw[last:])
    new_text = b"".join(pieces).decode("utf-8")
    _entries(new_text)  # our own output must still parse
    return new_text, changed
