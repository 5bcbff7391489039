"""Casacore records as typed JSON, and the bytes casacore stores for a record-valued cell.

python-casacore hands a record (a keyword set, or a cell of a record column) to Python with
its scalar types lost: Short, Int, uInt and Int64 all become ``int``, Float and Double
``float``. The table codec must give them back exactly, so it keeps records in a *tagged* JSON
form (every value with its casacore type) and, for record columns, reads the types from the
bytes casacore itself stores for each cell.

Tagged values (``{"type": T, ...}``, the form of ``formats/zarr.md``)
  scalars ``{"type": T, "value": v}``, T one of Bool, uChar, Short, Int, uInt, Int64, Float,
  Double, Complex, DComplex (``[re, im]``), String; a float that is not finite is
  ``{"bits": "<hex of the float64>"}``; a table ``{"type": "Table", "value": NAME}``; arrays
  ``{"type": "<T> array", "shape": [numpy shape], "data": base64}`` (little endian, C order,
  Bool one byte each) or ``{"type": "String array", "shape": [...], "value": [...]}``; records
  ``{"type": "Record", "fields": [[name, tagged], ...]}`` in field order.

Stored cells
  casacore stores a record cell as the AipsIO serialisation of a ``TableRecord`` (canonical,
  big endian), as an array of uChar in the column's data manager. :func:`parse_cell` reads it
  into the tagged form; :func:`serialize_cell` writes the tagged form as casacore does for a
  record made by python-casacore (variable structure, array fields of any shape, sub-records
  described in their own data, no comments). A cell for which ``serialize_cell(parse_cell(b))
  != b`` was made some other way and cannot be written back exactly from Python.
"""

from __future__ import annotations

import base64
import math
import struct

import numpy as np

__all__ = ["enc_float", "dec_float", "parse_cell", "serialize_cell", "RecordFormatError"]

MAGIC = 0xBEBEBEBE

# casacore's DataType enumeration (casa/Utilities/DataType.h): scalar and array type numbers.
_SCALARS = {0: "Bool", 2: "uChar", 3: "Short", 5: "Int", 6: "uInt", 7: "Float", 8: "Double",
            9: "Complex", 10: "DComplex", 11: "String", 29: "Int64"}
_ARRAYS = {13: "Bool", 15: "uChar", 16: "Short", 18: "Int", 19: "uInt", 20: "Float", 21: "Double",
           22: "Complex", 23: "DComplex", 24: "String", 30: "Int64"}
_TABLE, _RECORD = 12, 25
_SCALAR_CODE = {v: k for k, v in _SCALARS.items()}
_ARRAY_CODE = {v: k for k, v in _ARRAYS.items()}
# Element types in canonical (big endian) form; Bool arrays are packed bits.
_BE: dict[str, np.dtype] = {
       "uChar": np.dtype("u1"), "Short": np.dtype(">i2"), "Int": np.dtype(">i4"),
       "uInt": np.dtype(">u4"), "Int64": np.dtype(">i8"), "Float": np.dtype(">f4"),
       "Double": np.dtype(">f8"), "Complex": np.dtype(">c8"), "DComplex": np.dtype(">c16")}
_SCALAR_FMT = {"Bool": ">B", "uChar": ">B", "Short": ">h", "Int": ">i", "uInt": ">I",
               "Int64": ">q", "Float": ">f", "Double": ">d", "Complex": ">ff", "DComplex": ">dd"}
# The object names RecordRep::putDataField gives each array type.
_ARRAY_NAME = {"Bool": "Array<void>", "uChar": "Array<uChar>", "Short": "Array<short>",
               "Int": "Array<Int>", "uInt": "Array<uInt>", "Int64": "Array<Int64>",
               "Float": "Array<float>", "Double": "Array<double>", "Complex": "Array<void>",
               "DComplex": "Array<void>", "String": "Array<String>"}


class RecordFormatError(ValueError):
    """The bytes are not a TableRecord this module understands."""


def enc_float(x) -> float | dict:
    """A float as JSON: itself when finite, else the bits of its float64."""
    x = float(x)
    if math.isfinite(x):
        return x
    return {"bits": struct.pack("<d", x).hex()}


def dec_float(v) -> float:
    if isinstance(v, dict):
        return struct.unpack("<d", bytes.fromhex(v["bits"]))[0]
    return float(v)


# --------------------------------------------------------------------------- reading


class _Reader:
    def __init__(self, data: bytes):
        self.b, self.p = memoryview(data), 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.p + n > len(self.b):
            raise RecordFormatError("record ends early")
        out = self.b[self.p:self.p + n]
        self.p += n
        return out

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def u32(self) -> int:
        return self.unpack(">I")[0]

    def i32(self) -> int:
        return self.unpack(">i")[0]

    def string(self) -> str:
        try:
            return bytes(self.take(self.u32())).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordFormatError(f"string is not UTF-8: {e}") from None

    def start(self, want: str | None, outer: bool = False) -> tuple[str, int, int]:
        """An AipsIO object header: (type, version, end position)."""
        if outer and self.u32() != MAGIC:
            raise RecordFormatError("no AipsIO magic number")
        begin = self.p
        length = self.u32()
        kind = self.string()
        version = self.u32()
        if want is not None and kind != want:
            raise RecordFormatError(f"{want} expected, found {kind!r}")
        return kind, version, begin + length

    def end(self, stop: int) -> None:
        if self.p != stop:
            raise RecordFormatError("object length does not match its content")


def _desc(r: _Reader) -> list:
    """A RecordDesc: [(name, kind, sub-description or None)]; kind a type name."""
    _kind, version, stop = r.start("RecordDesc")
    if version not in (1, 2):
        raise RecordFormatError(f"RecordDesc version {version}")
    fields = []
    for _ in range(r.i32()):
        name = r.string()
        code = r.i32()
        sub = None
        if code == _RECORD:
            sub = _desc(r)
        elif code in _ARRAYS:
            _k, v, s = r.start("IPosition")
            n = r.u32()
            r.take(n * (4 if v == 1 else 8))
            r.end(s)
        elif code == _TABLE:
            r.string()
        elif code not in _SCALARS:
            raise RecordFormatError(f"field {name!r} has data type {code}, which is not supported")
        if version > 1:
            r.string()  # comment
        fields.append((name, code, sub))
    r.end(stop)
    return fields


def _record(r: _Reader, outer: bool = False) -> dict:
    _kind, _version, stop = r.start("TableRecord", outer)
    fields = _desc(r)
    r.i32()  # record type (fixed or variable)
    out = _data(r, fields)
    r.end(stop)
    return out


def _data(r: _Reader, fields: list) -> dict:
    out = []
    for name, code, sub in fields:
        if code == _RECORD:
            out.append([name, _record(r) if not sub else _data(r, sub)])
        elif code == _TABLE:
            out.append([name, {"type": "Table", "value": r.string()}])
        elif code in _ARRAYS:
            out.append([name, _array(r, _ARRAYS[code])])
        else:
            out.append([name, _scalar(r, _SCALARS[code])])
    return {"type": "Record", "fields": out}


def _scalar(r: _Reader, t: str) -> dict:
    if t == "String":
        return {"type": t, "value": r.string()}
    v = r.unpack(_SCALAR_FMT[t])
    if t == "Bool":
        return {"type": t, "value": bool(v[0] & 1)}
    if t in ("Float", "Double"):
        return {"type": t, "value": enc_float(v[0])}
    if t in ("Complex", "DComplex"):
        return {"type": t, "value": [enc_float(v[0]), enc_float(v[1])]}
    return {"type": t, "value": int(v[0])}


def _array(r: _Reader, t: str) -> dict:
    _kind, version, stop = r.start(None)
    if version != 3:
        raise RecordFormatError(f"array version {version}")
    ndim = r.u32()
    shape = [r.u32() for _ in range(ndim)][::-1]  # numpy order
    n = r.u32()
    if n != int(np.prod(shape, dtype=np.int64)):
        raise RecordFormatError("array size does not match its shape")
    if t == "String":
        values = [r.string() for _ in range(n)]
        r.end(stop)
        return {"type": "String array", "shape": shape, "value": values}
    if t == "Bool":
        packed = np.frombuffer(r.take((n + 7) // 8), np.uint8)
        a = np.unpackbits(packed, bitorder="little")[:n].astype(bool)
    else:
        dt = _BE[t]
        a = np.frombuffer(r.take(n * dt.itemsize), dt).astype(dt.newbyteorder("<"))
    r.end(stop)
    return {"type": f"{t} array", "shape": shape, "data": base64.b64encode(a.tobytes()).decode("ascii")}


def parse_cell(data: bytes) -> dict:
    """The tagged record stored in one record-column cell (the AipsIO bytes casacore keeps).
    Table fields carry the name casacore stored (relative names start with ``./``)."""
    r = _Reader(bytes(data))
    try:
        rec = _record(r, outer=True)
    except struct.error as e:
        raise RecordFormatError(str(e)) from None
    if r.p != len(r.b):
        raise RecordFormatError("bytes after the record")
    return rec


# --------------------------------------------------------------------------- writing


class _Writer:
    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0
        self.open: list[tuple[int, int]] = []  # (slot of the length, where the object begins)

    def put(self, b: bytes) -> None:
        self.parts.append(b)
        self.size += len(b)

    def u32(self, v: int) -> None:
        self.put(struct.pack(">I", v))

    def i32(self, v: int) -> None:
        self.put(struct.pack(">i", v))

    def string(self, s: str) -> None:
        b = s.encode("utf-8")
        self.u32(len(b))
        self.put(b)

    def start(self, kind: str, version: int) -> None:
        if not self.open:
            self.u32(MAGIC)
        self.open.append((len(self.parts), self.size))
        self.parts.append(b"")  # the object's length, filled in by end
        self.size += 4
        self.string(kind)
        self.u32(version)

    def end(self) -> None:
        slot, begin = self.open.pop()
        self.parts[slot] = struct.pack(">I", self.size - begin)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def _put_record(w: _Writer, rec: dict) -> None:
    w.start("TableRecord", 1)
    w.start("RecordDesc", 2)
    fields = rec["fields"]
    w.i32(len(fields))
    for name, v in fields:
        t = v["type"]
        w.string(name)
        if t == "Record":
            w.i32(_RECORD)
            w.start("RecordDesc", 2)
            w.i32(0)
            w.end()
        elif t == "Table":
            w.i32(_TABLE)
            w.string("")
        elif t.endswith(" array"):
            w.i32(_ARRAY_CODE[t[:-6]])
            w.start("IPosition", 1)
            w.u32(1)
            w.i32(-1)
            w.end()
        else:
            w.i32(_SCALAR_CODE[t])
        w.string("")  # comment
    w.end()
    w.i32(1)  # variable structure
    for _name, v in fields:
        t = v["type"]
        if t == "Record":
            _put_record(w, v)
        elif t == "Table":
            w.string(v["value"])
        elif t.endswith(" array"):
            _put_array(w, t[:-6], v)
        elif t == "String":
            w.string(v["value"])
        elif t in ("Float", "Double"):
            w.put(struct.pack(_SCALAR_FMT[t], dec_float(v["value"])))
        elif t in ("Complex", "DComplex"):
            w.put(struct.pack(_SCALAR_FMT[t], dec_float(v["value"][0]), dec_float(v["value"][1])))
        else:
            w.put(struct.pack(_SCALAR_FMT[t], int(v["value"])))
    w.end()


def _put_array(w: _Writer, t: str, v: dict) -> None:
    shape = [int(x) for x in v["shape"]]
    n = int(np.prod(shape, dtype=np.int64))
    w.start(_ARRAY_NAME[t], 3)
    w.u32(len(shape))
    for x in shape[::-1]:
        w.u32(x)
    w.u32(n)
    if t == "String":
        for s in v["value"]:
            w.string(s)
    else:
        raw = base64.b64decode(v["data"])
        if t == "Bool":
            bits = np.frombuffer(raw, np.uint8).astype(bool)
            w.put(np.packbits(bits, bitorder="little").tobytes())
        else:
            le = _BE[t].newbyteorder("<")
            w.put(np.frombuffer(raw, le).astype(_BE[t]).tobytes())
    w.end()


def serialize_cell(rec: dict) -> bytes:
    """The bytes casacore stores for ``rec`` (tagged) put into a cell from python-casacore."""
    w = _Writer()
    _put_record(w, rec)
    return w.bytes()
