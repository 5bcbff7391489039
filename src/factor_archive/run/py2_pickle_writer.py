"""Writing Python 2 pickles byte for byte as Python 2.7 and numpy 1.x wrote Factor's state.

Used to build sample runs (``factor-archive sample``, the tests) and, for single string values,
by :func:`..state.rewrite_strings`, which must write each string back in its own opcode family.
"""

from __future__ import annotations

import struct
import sys

import numpy as np

from .py2_pickle_reader import (
    NUMPY_DTYPE,
    NUMPY_NDARRAY,
    NUMPY_RECONSTRUCT,
    NUMPY_SCALAR,
    PY2_STRING_OPS,
    PY3_BYTES_OPS,
)

__all__ = ["dumps_py2", "encode_string", "py2_bytes"]


def _py2_repr_bytes(b: bytes) -> bytes:
    """Python 2 ``repr(str)``, which py2 ``pickle`` writes for protocol-0 STRING."""
    quote = 0x22 if (0x27 in b and 0x22 not in b) else 0x27
    out = bytearray([quote])
    for c in b:
        if c == quote or c == 0x5C:
            out += b"\\" + bytes([c])
        elif c == 0x09:
            out += b"\\t"
        elif c == 0x0A:
            out += b"\\n"
        elif c == 0x0D:
            out += b"\\r"
        elif c < 0x20 or c >= 0x7F:
            out += b"\\x%02x" % c
        else:
            out.append(c)
    out.append(quote)
    return bytes(out)


def py2_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            f"{value!r} does not fit a Python 2 byte string (characters above U+00FF)"
        ) from None


def encode_string(op: int, value: str) -> bytes:
    if op in PY2_STRING_OPS or op in PY3_BYTES_OPS:
        b = py2_bytes(value)
        if op == 0x53:
            return b"S" + _py2_repr_bytes(b) + b"\n"
        if op == 0x8E:
            return b"\x8e" + struct.pack("<Q", len(b)) + b
        if op in PY2_STRING_OPS:
            return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b
        return (b"C" + bytes([len(b)]) if len(b) < 256 else b"B" + struct.pack("<I", len(b))) + b
    if op == 0x56:
        escaped = value
        for ch in ("\\", "\n", "\r", "\x00", "\x1a"):
            escaped = escaped.replace(ch, f"\\u{ord(ch):04x}")
        return b"V" + escaped.encode("raw-unicode-escape") + b"\n"
    b = value.encode("utf-8", "surrogatepass")
    if op == 0x8D:
        return b"\x8d" + struct.pack("<Q", len(b)) + b
    if op == 0x8C and len(b) < 256:
        return b"\x8c" + bytes([len(b)]) + b
    return b"X" + struct.pack("<I", len(b)) + b


_LITTLE = sys.byteorder == "little"


class _GlobalRef:
    """A reference to a class or function, written as GLOBAL (numpy.ndarray in _reconstruct)."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key


class _Py2Pickler:
    """Mimics Python 2.7 ``pickle.Pickler`` with numpy 1.x reduce values, byte for byte."""

    def __init__(self, protocol: int):
        if protocol not in (0, 1, 2):
            raise ValueError("Python 2 Factor reads protocols 0-2 only")
        self.proto = protocol
        self.bin = protocol >= 1
        self.out: list[bytes] = []
        self.memo: dict = {}
        self.keep: list = []  # keeps memoized objects alive so their ids stay unique

    def write(self, b: bytes) -> None:
        self.out.append(b)

    def memoize(self, key, obj) -> None:
        i = len(self.memo)
        self.memo[key] = i
        self.keep.append(obj)
        if not self.bin:
            self.write(b"p%d\n" % i)
        elif i < 256:
            self.write(b"q" + bytes([i]))
        else:
            self.write(b"r" + struct.pack("<i", i))

    def get(self, key) -> bool:
        i = self.memo.get(key)
        if i is None:
            return False
        if not self.bin:
            self.write(b"g%d\n" % i)
        elif i < 256:
            self.write(b"h" + bytes([i]))
        else:
            self.write(b"j" + struct.pack("<i", i))
        return True

    def save(self, obj) -> None:
        t = type(obj)
        if obj is None:
            self.write(b"N")
        elif t is bool:
            if self.proto >= 2:
                self.write(b"\x88" if obj else b"\x89")
            else:
                self.write(b"I01\n" if obj else b"I00\n")
        elif t is int:
            self.save_int(obj)
        elif t is float:
            self.write(b"G" + struct.pack(">d", obj) if self.bin else b"F" + repr(obj).encode() + b"\n")
        elif t is str:
            self.save_string(py2_bytes(obj), obj)
        elif t is bytes:
            self.save_string(obj, obj)
        elif t is list:
            self.save_list(obj)
        elif t is tuple:
            self.save_tuple(obj)
        elif t is dict:
            self.save_dict(obj)
        elif t is _GlobalRef:
            self.save_global(obj.key)
        elif isinstance(obj, np.ndarray) and t is np.ndarray:
            self.save_array(obj)
        elif isinstance(obj, np.generic):
            self.save_scalar(obj)
        elif t is np.dtype or isinstance(obj, np.dtype):
            self.save_dtype(obj)
        else:
            raise TypeError(f"cannot write {t.__name__} into a Python 2 state pickle")

    def save_int(self, x: int) -> None:
        if not -(1 << 63) <= x < (1 << 63):            # a py2 long
            if self.proto >= 2:
                if x == 0:
                    b = b""
                else:
                    b = x.to_bytes((x.bit_length() >> 3) + 1, "little", signed=True)
                    if x < 0 and len(b) > 1 and b[-1] == 0xFF and b[-2] & 0x80:
                        b = b[:-1]
                if len(b) < 256:
                    self.write(b"\x8a" + bytes([len(b)]) + b)
                else:
                    self.write(b"\x8b" + struct.pack("<i", len(b)) + b)
            else:
                self.write(b"L%dL\n" % x)
            return
        if self.bin:
            if 0 <= x <= 0xFF:
                return self.write(b"K" + bytes([x]))
            if 0 <= x <= 0xFFFF:
                return self.write(b"M" + struct.pack("<H", x))
            if -(1 << 31) <= x < (1 << 31):
                return self.write(b"J" + struct.pack("<i", x))
        self.write(b"I%d\n" % x)

    def save_string(self, b: bytes, obj) -> None:
        # Python 2 caches 0- and 1-character strings, so equal ones are one object there.
        key = ("s", b) if len(b) <= 1 else id(obj)
        if self.get(key):
            return
        if not self.bin:
            self.write(b"S" + _py2_repr_bytes(b) + b"\n")
        elif len(b) < 256:
            self.write(b"U" + bytes([len(b)]) + b)
        else:
            self.write(b"T" + struct.pack("<i", len(b)) + b)
        self.memoize(key, obj)

    def save_global(self, key: tuple[str, str]) -> None:
        mkey = ("g",) + key
        if self.get(mkey):
            return
        self.write(b"c" + key[0].encode() + b"\n" + key[1].encode() + b"\n")
        self.memoize(mkey, key)

    def save_tuple(self, obj: tuple) -> None:
        if self.get(id(obj)):
            return
        n = len(obj)
        if n == 0:
            self.write(b")" if self.bin else b"(t")
            return
        if n <= 3 and self.proto >= 2:
            for x in obj:
                self.save(x)
            self.write(bytes([0x84 + n]))
        else:
            self.write(b"(")
            for x in obj:
                self.save(x)
            self.write(b"t")
        self.memoize(id(obj), obj)

    def _batch(self, items: list, one: bytes, many: bytes, pairs: bool) -> None:
        def save_item(item):
            if pairs:
                self.save(item[0])
                self.save(item[1])
            else:
                self.save(item)

        if not self.bin:
            for item in items:
                save_item(item)
                self.write(one)
            return
        for i in range(0, len(items), 1000):
            batch = items[i:i + 1000]
            if len(batch) > 1:
                self.write(b"(")
                for item in batch:
                    save_item(item)
                self.write(many)
            else:
                save_item(batch[0])
                self.write(one)

    def save_list(self, obj: list) -> None:
        if self.get(id(obj)):
            return
        self.write(b"]" if self.bin else b"(l")
        self.memoize(id(obj), obj)
        self._batch(list(obj), b"a", b"e", False)

    def save_dict(self, obj: dict) -> None:
        if self.get(id(obj)):
            return
        self.write(b"}" if self.bin else b"(d")
        self.memoize(id(obj), obj)
        self._batch(list(obj.items()), b"s", b"u", True)

    def save_dtype(self, dt: np.dtype) -> None:
        if self.get(id(dt)):
            return
        if dt.fields is not None or dt.subdtype is not None or dt.kind not in "biufcSU":
            raise TypeError(f"numpy dtype {dt} cannot go into a Factor state pickle")
        size = dt.itemsize // 4 if dt.kind == "U" else dt.itemsize
        name = ("b1" if dt.kind == "b" else f"{dt.kind}{size}")
        order = dt.byteorder
        if order == "=":
            order = "<" if _LITTLE else ">"
        flexible = dt.kind in "SU"
        self.save_global(NUMPY_DTYPE)
        self.save_tuple((name, 0, 1))
        self.write(b"R")
        self.memoize(id(dt), dt)
        state = (3, order, None, None, None,
                 dt.itemsize if flexible else -1, dt.alignment if flexible else -1, 0)
        self.save_tuple(state)
        self.write(b"b")

    def save_array(self, arr: np.ndarray) -> None:
        if self.get(id(arr)):
            return
        fortran = bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)
        self.save_global(NUMPY_RECONSTRUCT)
        self.save_tuple((_GlobalRef(NUMPY_NDARRAY), tuple([0]), "b"))
        self.write(b"R")
        self.memoize(id(arr), arr)
        raw = arr.tobytes(order="F" if fortran else "C")
        self.save_tuple((1, tuple(int(n) for n in arr.shape), arr.dtype, fortran, raw))
        self.write(b"b")

    def save_scalar(self, obj: np.generic) -> None:
        if self.get(id(obj)):
            return
        self.save_global(NUMPY_SCALAR)
        self.save_tuple((obj.dtype, obj.tobytes()))
        self.write(b"R")
        self.memoize(id(obj), obj)


def dumps_py2(obj, protocol: int = 0) -> bytes:
    """Pickle plain data the way Python 2.7 ``pickle`` and numpy 1.x wrote Factor's state."""
    p = _Py2Pickler(protocol)
    if protocol >= 2:
        p.write(b"\x80" + bytes([protocol]))
    p.save(obj)
    p.write(b".")
    return b"".join(p.out)
