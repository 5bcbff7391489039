"""Keywords and record cells as tagged JSON, with their exact casacore types.

python-casacore's getkeywords loses types (every integer is ``int``): the types come from TaQL
``SHOW`` instead, and a record cell's from the bytes casacore stores for it. Table references
become paths relative to the table (``NAME`` or ``NAME/INNER``) and back.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..casacore_record import RecordFormatError, parse_cell, serialize_cell
from ..casacore_record import dec_float as _dec_float
from ..casacore_record import enc_float as _enc_float
from .common import CorruptTableData, RawTableRequired, _ct, _str_array

# Keyword types python-casacore writes with the same type (numpy scalar -> casacore type).
_KW_SCALAR = {"Bool": bool, "Short": np.int16, "Int": np.int32, "uInt": np.uint32, "Int64": int,
              "Float": np.float32, "Double": float, "Complex": np.complex64, "DComplex": complex,
              "String": str}


_KW_ARRAY = {"Bool": np.dtype(bool), "Short": np.dtype(np.int16), "Int": np.dtype(np.int32),
             "uInt": np.dtype(np.uint32), "Int64": np.dtype(np.int64),
             "Float": np.dtype(np.float32), "Double": np.dtype(np.float64),
             "Complex": np.dtype(np.complex64), "DComplex": np.dtype(np.complex128)}


def _keyword_types(tb, path) -> tuple[dict, dict[str, dict]]:
    """Exact keyword types, which python-casacore's getkeywords loses, from TaQL SHOW."""
    ct = _ct()
    try:
        text = ct.taql("show table $1 tabkey colkey", tables=[tb])[0]
    except Exception as e:
        raise RawTableRequired(path, f"cannot list keyword types: {e}") from e
    lines = text.split("\n")
    try:
        start = lines.index("Keywords of main table ")
    except ValueError:
        start = 0
    lines = lines[start:]

    def section(header: str, expected: dict) -> dict:
        if not expected:
            return {}
        try:
            i = lines.index(header)
        except ValueError:
            raise RawTableRequired(path, f"cannot find keyword section {header.strip()!r}") from None
        return _parse_kw(lines, i + 1, 4, expected, path)[0]

    table_types = section("  Table Keywords", tb.getkeywords())
    col_types = {c: section(f"  Column {c}", tb.getcolkeywords(c)) for c in tb.colnames()}
    return table_types, col_types


def _parse_kw(lines, i, indent, expected: dict, path) -> tuple[dict, int]:
    types = {}
    for name, value in expected.items():
        prefix = " " * indent + name + ": "
        while i < len(lines) and not lines[i].startswith(prefix):
            i += 1
        if i == len(lines):
            raise RawTableRequired(path, f"cannot find the type of keyword {name!r}")
        rest = lines[i][len(prefix):]
        i += 1
        if rest == "{":
            if not isinstance(value, dict):
                raise RawTableRequired(path, f"keyword {name!r}: record expected")
            types[name], i = _parse_kw(lines, i, indent + 2, value, path)
            close = " " * indent + "}"
            while i < len(lines) and lines[i] != close:
                i += 1
            i += 1
        else:
            word = rest.split(" ", 1)[0]
            types[name] = word + " array" if rest.startswith(word + " array with shape") else word
    return types, i


def _node_name_ok(name: str) -> bool:
    return bool(name) and "/" not in name and not name.startswith("__") and name not in (".", "..")


class _Refs:
    """Turns 'Table: /abs/path' values (keywords, record cells) into paths relative to the table:
    a subtable (``NAME``) or a table inside one, at any depth (``NAME/INNER``)."""

    def __init__(self, table_dir: Path):
        self.base = os.path.realpath(table_dir)
        self.names: list[str] = []

    def rel(self, value: str) -> str:
        return self.rel_path(value[len("Table: "):])

    def rel_path(self, target: str) -> str:
        target = os.path.realpath(target)
        rel = os.path.relpath(target, self.base)
        if rel in (".", "") or rel.startswith("..") or os.path.isabs(rel):
            raise RawTableRequired(self.base, f"refers to a table outside it: {target}")
        parts = rel.split(os.sep)
        if not all(_node_name_ok(p) for p in parts):
            raise RawTableRequired(self.base, f"subtable {rel!r} has a name that cannot be a zarr node name")
        rel = "/".join(parts)
        if rel not in self.names:
            self.names.append(rel)
        return rel


def _resolver(table_dir: Path) -> Callable[[str], str]:
    """Stored subtable path (``NAME`` or ``NAME/INNER``) -> absolute path below ``table_dir``."""
    base = Path(table_dir).resolve()

    def resolve(rel: str) -> str:
        parts = rel.split("/") if isinstance(rel, str) else []
        if not parts or not all(_node_name_ok(p) for p in parts):
            raise CorruptTableData(f"{table_dir}: stored table reference {rel!r} is not a subtable path")
        target = base.joinpath(*parts)
        if not (target / "table.dat").is_file():
            raise CorruptTableData(f"{table_dir}: stored table reference {rel!r} names no restored subtable")
        return str(target)

    return resolve


def _enc_kw(value, ktype, refs: _Refs, where: str):
    if isinstance(ktype, dict):
        if not isinstance(value, dict):
            raise RawTableRequired(refs.base, f"keyword {where}: record expected")
        return {"type": "Record",
                "fields": [[k, _enc_kw(value[k], ktype[k], refs, f"{where}.{k}")] for k in value]}
    if ktype == "Table":
        if not (isinstance(value, str) and value.startswith("Table: ")):
            raise RawTableRequired(refs.base, f"keyword {where}: table reference expected")
        return {"type": "Table", "value": refs.rel(value)}
    if ktype.endswith(" array"):
        base = ktype[:-6]
        if base == "String":
            a = _str_array(value)
            return {"type": ktype, "shape": list(a.shape), "value": [str(s) for s in a.ravel()]}
        dt = _KW_ARRAY.get(base)
        a = np.asarray(value)
        if dt is None or a.dtype != dt:
            raise RawTableRequired(refs.base, f"keyword {where} of type {ktype} cannot be restored exactly")
        data = np.ascontiguousarray(a, dtype=dt.newbyteorder("<")).tobytes()
        return {"type": ktype, "shape": list(a.shape), "data": base64.b64encode(data).decode("ascii")}
    if ktype not in _KW_SCALAR:
        raise RawTableRequired(refs.base, f"keyword {where} of type {ktype} cannot be restored exactly")
    if ktype == "String":
        if not isinstance(value, str) or value.startswith("Table: "):
            raise RawTableRequired(refs.base, f"string keyword {where} would read back as a table")
        return {"type": ktype, "value": value}
    if ktype == "Bool":
        return {"type": ktype, "value": bool(value)}
    if ktype in ("Float", "Double"):
        return {"type": ktype, "value": _enc_float(value)}
    if ktype in ("Complex", "DComplex"):
        c = complex(value)
        return {"type": ktype, "value": [_enc_float(c.real), _enc_float(c.imag)]}
    return {"type": ktype, "value": int(value)}


def _dec_kw(e: dict, resolve: Callable[[str], str]):
    """A tagged value as python-casacore writes it with that exact type (``resolve`` gives the
    absolute path of a stored subtable reference)."""
    t = e["type"]
    if t == "Record":
        return {k: _dec_kw(v, resolve) for k, v in e["fields"]}
    if t == "Table":
        return "Table: " + resolve(e["value"])
    if t.endswith(" array"):
        base = t[:-6]
        shape = tuple(e["shape"])
        if base == "String":
            return np.array(e["value"], dtype=str).reshape(shape)
        dt = _KW_ARRAY[base].newbyteorder("<")
        return np.frombuffer(base64.b64decode(e["data"]), dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
    v = e["value"]
    if t in ("Float", "Double"):
        return _KW_SCALAR[t](_dec_float(v))
    if t in ("Complex", "DComplex"):
        return _KW_SCALAR[t](complex(_dec_float(v[0]), _dec_float(v[1])))
    return _KW_SCALAR[t](v)


def _add_directory(name: str, table_dir: str) -> str:
    """The path of a table reference as casacore stored it (Path::addDirectory): ``././X`` is X
    inside the table, ``./X`` beside it; other names are used as they are."""
    rest = name
    while rest.startswith("./"):
        rest = rest[2:]
    removed = (len(name) - len(rest)) // 2
    if removed == 0:
        return name
    return os.path.join(table_dir if removed > 1 else os.path.dirname(table_dir), rest)


def _record_cell(raw: bytes, refs: _Refs, where: str) -> dict:
    """The tagged record stored in a record-column cell, its table references made relative;
    RawTableRequired when python-casacore could not write exactly these bytes back."""
    try:
        rec = parse_cell(raw)
        same = serialize_cell(rec) == raw
    except RecordFormatError as e:
        raise RawTableRequired(refs.base, f"{where}: record cannot be read ({e})") from None
    if not same:
        raise RawTableRequired(refs.base, f"{where}: record has a structure python-casacore cannot "
                                          f"write back (field comments or fixed field shapes)")

    def walk(e: dict, at: str) -> None:
        t = e["type"]
        if t == "Record":
            for k, v in e["fields"]:
                walk(v, f"{at}.{k}" if at else k)
        elif t == "Table":
            e["value"] = refs.rel_path(_add_directory(e["value"], refs.base))
        elif t.split(" ")[0] not in _KW_SCALAR:
            raise RawTableRequired(refs.base, f"{where}: record field {at} of type {t} cannot be "
                                              f"written back from Python")

    walk(rec, "")
    return rec

