"""Factor's ``state/*.pkl`` files (Python 2 pickles), read and rewritten without unpickling.

Archives come from strangers, so nothing here ever calls ``pickle.load``: a small opcode
interpreter builds plain data itself and refuses every global except the four numpy names that
numpy 1.x uses for arrays and scalars (which are rebuilt by our own code, never called).

Python 2 byte strings are seen as ``str`` decoded with latin-1, so every byte round-trips.

``pickletools.genops`` is not used for reading: it decodes protocol-0 ``STRING`` arguments as
ASCII and so fails on real Python 2 pickles holding numpy data or non-ASCII paths.
"""

from __future__ import annotations

import math
import re
import struct
import sys
from collections.abc import Callable

import numpy as np

from ..errors import UnsafeArchive

__all__ = ["UnsafePickleError", "load_state", "rewrite_strings", "dumps_py2"]


class UnsafePickleError(UnsafeArchive, ValueError):
    """A pickle asks for more than plain data, or is not a well-formed pickle."""


# --------------------------------------------------------------------------- reading

_RECONSTRUCT = ("numpy.core.multiarray", "_reconstruct")
_SCALAR = ("numpy.core.multiarray", "scalar")
_NDARRAY = ("numpy", "ndarray")
_DTYPE = ("numpy", "dtype")
_ALLOWED_GLOBALS = {_RECONSTRUCT, _SCALAR, _NDARRAY, _DTYPE}

# Simple (non-object, non-structured) dtype names as numpy 1.x writes them in dtype.__reduce__.
_DTYPE_NAME = re.compile(r"(b1|[iu](1|2|4|8)|f(2|4|8|12|16)|c(8|16|24|32)|[SU][0-9]{1,9})\Z")

# Opcodes refused outright, by byte, with their pickletools names for the message.
_REFUSED = {
    b"P"[0]: "PERSID", b"Q"[0]: "BINPERSID", b"i"[0]: "INST", b"o"[0]: "OBJ",
    0x81: "NEWOBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x8F: "EMPTY_SET",
    0x90: "ADDITEMS", 0x91: "FROZENSET", 0x92: "NEWOBJ_EX", 0x95: "FRAME",
    0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
}

# String opcode families: a rewritten value keeps its family so Python 2 sees the same type.
_PY2STR_OPS = frozenset(b"STU")            # py2 str: STRING, BINSTRING, SHORT_BINSTRING
# everything else that pushes a string is unicode: UNICODE, BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
_BYTES_OPS = frozenset(b"BC\x8e")          # py3 BINBYTES, SHORT_BINBYTES, BINBYTES8


class _Str(str):
    """A string from the pickle, remembering which string opcode made it."""


class _Bytes(bytes):
    """Same, for protocol-3 bytes."""


class _Global:
    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key


class _PendingDtype:
    __slots__ = ("name", "dtype", "built")

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(name)
        self.built = False


class _PendingArray:
    __slots__ = ("value",)

    def __init__(self):
        self.value = None


class _Result:
    __slots__ = ("value", "strings", "protected")

    def __init__(self, value, strings, protected):
        self.value = value
        self.strings = strings      # [(start, end, opcode, value)], index = origin
        self.protected = protected  # origins consumed by numpy constructors


def _fail(msg: str):
    raise UnsafePickleError(msg)


def _text(s) -> str:
    if isinstance(s, str):
        return str(s)
    if isinstance(s, bytes):
        return bytes(s).decode("latin-1")
    _fail(f"expected a string, got {type(s).__name__}")


def _raw(s) -> bytes:
    if isinstance(s, str):
        return s.encode("latin-1")
    if isinstance(s, bytes):
        return bytes(s)
    _fail(f"numpy raw data must be a byte string, got {type(s).__name__}")


def _int(x, what: str) -> int:
    if type(x) is not int:
        _fail(f"{what} must be an int, got {type(x).__name__}")
    return x


def _mark_protected(obj, protected: set) -> None:
    if isinstance(obj, (_Str, _Bytes)):
        protected.add(obj.origin)
    elif isinstance(obj, tuple):
        for item in obj:
            _mark_protected(item, protected)


def _resolve_dtype(obj) -> np.dtype:
    if not isinstance(obj, _PendingDtype):
        _fail(f"expected a numpy dtype, got {type(obj).__name__}")
    return obj.dtype


def _build_dtype(pd: _PendingDtype, state) -> None:
    if pd.built:
        _fail("BUILD applied twice to a numpy dtype")
    if type(state) is not tuple or len(state) not in (8, 9) or state[0] not in (3, 4):
        _fail("unsupported numpy dtype state")
    order = _text(state[1])
    if order not in ("<", ">", "|", "="):
        _fail(f"bad dtype byte order {order!r}")
    if state[2] is not None or state[3] is not None or state[4] is not None:
        _fail("structured or sub-array numpy dtypes are not supported")
    elsize = _int(state[5], "dtype elsize")
    dt = pd.dtype
    if dt.kind in "SU" and elsize != -1 and elsize != dt.itemsize:
        _fail("numpy dtype size disagrees with its name")
    if order in "<>" and dt.itemsize > 1 and dt.kind != "S":
        dt = dt.newbyteorder(order)
    pd.dtype = dt
    pd.built = True


def _make_scalar(args):
    if type(args) is not tuple or len(args) != 2:
        _fail("numpy scalar wants (dtype, data)")
    dt = _resolve_dtype(args[0])
    raw = _raw(args[1])
    if len(raw) != dt.itemsize:
        _fail("numpy scalar data has the wrong size")
    return np.frombuffer(raw, dtype=dt)[0]


def _build_array(pa: _PendingArray, state) -> None:
    if pa.value is not None:
        _fail("BUILD applied twice to a numpy array")
    if type(state) is not tuple or len(state) not in (4, 5):
        _fail("unsupported numpy array state")
    if len(state) == 5:
        if state[0] != 1 or type(state[0]) is not int:
            _fail("unsupported numpy array state version")
        state = state[1:]
    shape, dtype, fortran, raw = state
    if type(shape) is not tuple or len(shape) > 64:
        _fail("numpy array shape must be a tuple")
    for n in shape:
        if _int(n, "numpy array dimension") < 0:
            _fail("negative numpy array dimension")
    dt = _resolve_dtype(dtype)
    if type(fortran) not in (bool, int) or fortran not in (0, 1):
        _fail("numpy array order flag must be a bool")
    raw = _raw(raw)
    count = math.prod(shape)
    if len(raw) != count * dt.itemsize:
        _fail("numpy array data has the wrong size")
    flat = np.frombuffer(raw, dtype=dt, count=count) if count else np.empty(0, dtype=dt)
    pa.value = flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


def _reduce(func, args, protected: set):
    if not isinstance(func, _Global):
        _fail(f"REDUCE on {type(func).__name__} refused")
    key = func.key
    if type(args) is not tuple:
        _fail("REDUCE arguments must be a tuple")
    _mark_protected(args, protected)
    if key == _DTYPE:
        if len(args) != 3:
            _fail("numpy.dtype wants 3 arguments")
        name = _text(args[0])
        if not _DTYPE_NAME.match(name):
            _fail(f"numpy dtype {name!r} refused (only simple numeric/string dtypes)")
        return _PendingDtype(name)
    if key == _SCALAR:
        return _make_scalar(args)
    if key == _RECONSTRUCT:
        if len(args) != 3 or not isinstance(args[0], _Global) or args[0].key != _NDARRAY:
            _fail("numpy _reconstruct is only allowed for numpy.ndarray")
        return _PendingArray()
    _fail(f"REDUCE on global {'.'.join(key)} refused")


def _line(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.find(b"\n", pos)
    if end < 0:
        _fail("truncated pickle (no newline)")
    return data[pos:end], end + 1


def _take(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    if n < 0 or pos + n > len(data):
        _fail("truncated pickle")
    return data[pos:pos + n], pos + n


_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|[\s\S]?)")
_SIMPLE_ESCAPES = {b"\\": b"\\", b"'": b"'", b'"': b'"', b"a": b"\a", b"b": b"\b", b"f": b"\f",
                   b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v", b"\n": b""}


def _unescape(m: re.Match) -> bytes:
    e = m.group(1)
    if not e or e == b"x":
        _fail("bad escape in STRING")
    if e[0] == 0x78 and len(e) == 3:
        return bytes([int(e[1:], 16)])
    if e[0] in b"01234567":
        return bytes([int(e, 8) & 0xFF])
    return _SIMPLE_ESCAPES.get(e, b"\\" + e)  # py2 keeps unknown escapes as they are


def _unquote_py2(line: bytes) -> bytes:
    """Python 2 ``string-escape`` decoding of a protocol-0 STRING argument."""
    if len(line) < 2 or line[:1] not in (b"'", b'"') or line[-1:] != line[:1]:
        _fail("STRING argument is not quoted")
    return _ESCAPE.sub(_unescape, line[1:-1])


def _interpret(data: bytes) -> _Result:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("pickle data must be bytes")
    data = bytes(data)
    try:
        return _run(data)
    except UnsafePickleError:
        raise
    except (IndexError, KeyError, TypeError, ValueError, AttributeError, struct.error,
            OverflowError, UnicodeError, RecursionError, MemoryError) as exc:
        raise UnsafePickleError(f"malformed pickle: {type(exc).__name__}: {exc}") from None


def _run(data: bytes) -> _Result:
    stack: list = []
    metastack: list[list] = []
    memo: dict[int, object] = {}
    strings: list[tuple[int, int, int, str]] = []
    protected: set[int] = set()
    pos, n = 0, len(data)

    def pop_mark() -> list:
        nonlocal stack
        items = stack
        stack = metastack.pop()
        return items

    def push_string(value, start, end, op, cls=_Str):
        s = cls(value)
        s.origin = len(strings)
        strings.append((start, end, op, _text(value)))
        stack.append(s)

    while True:
        if pos >= n:
            _fail("truncated pickle (no STOP)")
        start = pos
        op = data[pos]
        pos += 1

        if op in _REFUSED:
            _fail(f"opcode {_REFUSED[op]} refused")
        elif op == 0x2E:                                   # . STOP
            if pos != n:
                _fail("data after STOP")
            if metastack or len(stack) != 1:
                _fail("unbalanced stack at STOP")
            return _Result(stack.pop(), strings, protected)
        elif op == 0x80:                                   # PROTO
            b, pos = _take(data, pos, 1)
            if b[0] > 5:
                _fail(f"unknown pickle protocol {b[0]}")
        elif op == 0x28:                                   # ( MARK
            metastack.append(stack)
            stack = []
        elif op == 0x30:                                   # 0 POP
            if stack:
                stack.pop()
            else:
                pop_mark()
        elif op == 0x31:                                   # 1 POP_MARK
            pop_mark()
        elif op == 0x32:                                   # 2 DUP
            stack.append(stack[-1])
        elif op == 0x4E:                                   # N NONE
            stack.append(None)
        elif op == 0x88:                                   # NEWTRUE
            stack.append(True)
        elif op == 0x89:                                   # NEWFALSE
            stack.append(False)
        elif op == 0x49:                                   # I INT (py2: I01/I00 are bools)
            line, pos = _line(data, pos)
            if line == b"01":
                stack.append(True)
            elif line == b"00":
                stack.append(False)
            else:
                stack.append(int(line))
        elif op == 0x4C:                                   # L LONG
            line, pos = _line(data, pos)
            stack.append(int(line[:-1] if line.endswith(b"L") else line))
        elif op == 0x46:                                   # F FLOAT
            line, pos = _line(data, pos)
            stack.append(float(line))
        elif op == 0x47:                                   # G BINFLOAT
            b, pos = _take(data, pos, 8)
            stack.append(struct.unpack(">d", b)[0])
        elif op == 0x4A:                                   # J BININT
            b, pos = _take(data, pos, 4)
            stack.append(struct.unpack("<i", b)[0])
        elif op == 0x4B:                                   # K BININT1
            b, pos = _take(data, pos, 1)
            stack.append(b[0])
        elif op == 0x4D:                                   # M BININT2
            b, pos = _take(data, pos, 2)
            stack.append(struct.unpack("<H", b)[0])
        elif op in (0x8A, 0x8B):                           # LONG1, LONG4
            b, pos = _take(data, pos, 1 if op == 0x8A else 4)
            size = b[0] if op == 0x8A else struct.unpack("<i", b)[0]
            b, pos = _take(data, pos, size)
            stack.append(int.from_bytes(b, "little", signed=True))
        elif op == 0x53:                                   # S STRING
            line, pos = _line(data, pos)
            push_string(_unquote_py2(line).decode("latin-1"), start, pos, op)
        elif op in (0x54, 0x55, 0x42, 0x43, 0x8E):         # BINSTRING, SHORT_BINSTRING, *BYTES
            width = {0x54: 4, 0x55: 1, 0x42: 4, 0x43: 1, 0x8E: 8}[op]
            b, pos = _take(data, pos, width)
            size = int.from_bytes(b, "little", signed=(op == 0x54))
            b, pos = _take(data, pos, size)
            if op in _PY2STR_OPS:
                push_string(b.decode("latin-1"), start, pos, op)
            else:
                push_string(b, start, pos, op, _Bytes)
        elif op == 0x56:                                   # V UNICODE
            line, pos = _line(data, pos)
            push_string(line.decode("raw-unicode-escape"), start, pos, op)
        elif op in (0x58, 0x8C, 0x8D):                     # BINUNICODE, SHORT_, 8
            width = {0x58: 4, 0x8C: 1, 0x8D: 8}[op]
            b, pos = _take(data, pos, width)
            b, pos = _take(data, pos, int.from_bytes(b, "little"))
            push_string(b.decode("utf-8", "surrogatepass"), start, pos, op)
        elif op == 0x29:                                   # ) EMPTY_TUPLE
            stack.append(())
        elif op == 0x74:                                   # t TUPLE
            items = tuple(pop_mark())
            stack.append(items)
        elif op in (0x85, 0x86, 0x87):                     # TUPLE1..3
            k = op - 0x84
            if len(stack) < k:
                _fail("stack underflow")
            items = tuple(stack[-k:])
            del stack[-k:]
            stack.append(items)
        elif op == 0x5D:                                   # ] EMPTY_LIST
            stack.append([])
        elif op == 0x6C:                                   # l LIST
            items = pop_mark()
            stack.append(items)
        elif op == 0x7D:                                   # } EMPTY_DICT
            stack.append({})
        elif op == 0x64:                                   # d DICT
            items = pop_mark()
            if len(items) % 2:
                _fail("odd number of items for DICT")
            stack.append(dict(zip(items[::2], items[1::2])))
        elif op == 0x61:                                   # a APPEND
            value = stack.pop()
            if type(stack[-1]) is not list:
                _fail("APPEND to a non-list")
            stack[-1].append(value)
        elif op == 0x65:                                   # e APPENDS
            items = pop_mark()
            if type(stack[-1]) is not list:
                _fail("APPENDS to a non-list")
            stack[-1].extend(items)
        elif op == 0x73:                                   # s SETITEM
            value = stack.pop()
            key = stack.pop()
            if type(stack[-1]) is not dict:
                _fail("SETITEM on a non-dict")
            stack[-1][key] = value
        elif op == 0x75:                                   # u SETITEMS
            items = pop_mark()
            if len(items) % 2 or type(stack[-1]) is not dict:
                _fail("bad SETITEMS")
            for i in range(0, len(items), 2):
                stack[-1][items[i]] = items[i + 1]
        elif op in (0x70, 0x71, 0x72, 0x94):               # PUT, BINPUT, LONG_BINPUT, MEMOIZE
            if op == 0x70:
                line, pos = _line(data, pos)
                idx = int(line)
            elif op == 0x71:
                b, pos = _take(data, pos, 1)
                idx = b[0]
            elif op == 0x72:
                b, pos = _take(data, pos, 4)
                idx = struct.unpack("<I", b)[0]
            else:
                idx = len(memo)
            memo[idx] = stack[-1]
        elif op in (0x67, 0x68, 0x6A):                     # GET, BINGET, LONG_BINGET
            if op == 0x67:
                line, pos = _line(data, pos)
                idx = int(line)
            elif op == 0x68:
                b, pos = _take(data, pos, 1)
                idx = b[0]
            else:
                b, pos = _take(data, pos, 4)
                idx = struct.unpack("<I", b)[0]
            if idx not in memo:
                _fail(f"memo key {idx} missing")
            stack.append(memo[idx])
        elif op in (0x63, 0x93):                           # c GLOBAL, STACK_GLOBAL
            if op == 0x63:
                module, pos = _line(data, pos)
                name, pos = _line(data, pos)
                key = (module.decode("latin-1"), name.decode("latin-1"))
            else:
                name = stack.pop()
                module = stack.pop()
                _mark_protected((module, name), protected)
                key = (_text(module), _text(name))
            if key not in _ALLOWED_GLOBALS:
                _fail(f"global {key[0]}.{key[1]} refused")
            stack.append(_Global(key))
        elif op == 0x52:                                   # R REDUCE
            args = stack.pop()
            stack[-1] = _reduce(stack[-1], args, protected)
        elif op == 0x62:                                   # b BUILD
            state = stack.pop()
            target = stack[-1]
            _mark_protected(state, protected)
            if isinstance(target, _PendingDtype):
                _build_dtype(target, state)
            elif isinstance(target, _PendingArray):
                _build_array(target, state)
            else:
                _fail(f"BUILD on {type(target).__name__} refused")
        else:
            _fail(f"unknown or unsupported opcode 0x{op:02x}")


def _plain(obj, seen: dict):
    """Turn the interpreter's working objects into plain data, keeping shared/recursive links."""
    t = type(obj)
    if t is _Str:
        return str(obj)
    if t is _Bytes:
        return bytes(obj)
    if obj is None or t in (bool, int, float) or isinstance(obj, np.generic):
        return obj
    if id(obj) in seen:
        return seen[id(obj)]
    if t is list:
        out = seen[id(obj)] = []
        out.extend(_plain(x, seen) for x in obj)
        return out
    if t is dict:
        out = seen[id(obj)] = {}
        for k, v in obj.items():
            out[_plain(k, seen)] = _plain(v, seen)
        return out
    if t is tuple:
        out = tuple(_plain(x, seen) for x in obj)
        seen[id(obj)] = out
        return out
    if t is _PendingArray:
        if obj.value is None:
            _fail("numpy array without its data (no BUILD)")
        return obj.value
    _fail(f"{t.__name__.lstrip('_')} object is not plain data")


def load_state(data: bytes) -> object:
    """Load a Factor state pickle as plain data, executing nothing from it."""
    result = _interpret(data)
    try:
        return _plain(result.value, {})
    except UnsafePickleError:
        raise
    except (TypeError, RecursionError, MemoryError) as exc:
        raise UnsafePickleError(f"malformed pickle: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- rewriting

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


def _py2_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            f"{value!r} does not fit a Python 2 byte string (characters above U+00FF)"
        ) from None


def _encode_string(op: int, value: str) -> bytes:
    if op in _PY2STR_OPS or op in _BYTES_OPS:
        b = _py2_bytes(value)
        if op == 0x53:
            return b"S" + _py2_repr_bytes(b) + b"\n"
        if op == 0x8E:
            return b"\x8e" + struct.pack("<Q", len(b)) + b
        if op in _PY2STR_OPS:
            return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b
        return (b"C" + bytes([len(b)]) if len(b) < 256 else b"B" + struct.pack("<I", len(b))) + b
    if op == 0x56:
        escaped = value
        for ch in ("\\", "\n", "\r", "\x00", "\x1a"):
            escaped = escaped.replace(ch, "\\u%04x" % ord(ch))
        return b"V" + escaped.encode("raw-unicode-escape") + b"\n"
    b = value.encode("utf-8", "surrogatepass")
    if op == 0x8D:
        return b"\x8d" + struct.pack("<Q", len(b)) + b
    if op == 0x8C and len(b) < 256:
        return b"\x8c" + bytes([len(b)]) + b
    return b"X" + struct.pack("<I", len(b)) + b


def rewrite_strings(data: bytes, fn: Callable[[str], str | None]) -> tuple[bytes, int]:
    """Rewrite string values in place, keeping every other byte and Python 2's string types.

    ``fn`` sees each string opcode once (dict keys too, never numpy dtype names or raw array
    data) and returns a replacement or None. Values are latin-1 views of Python 2 byte strings.
    """
    result = _interpret(data)
    data = bytes(data)
    out: list[bytes] = []
    last = changed = 0
    for origin, (start, end, op, value) in enumerate(result.strings):
        if origin in result.protected:
            continue
        new = fn(value)
        if new is None or new == value:
            continue
        if not isinstance(new, str):
            raise TypeError(f"replacement for {value!r} must be str, got {type(new).__name__}")
        out += (data[last:start], _encode_string(op, new))
        last = end
        changed += 1
    if not changed:
        return data, 0
    out.append(data[last:])
    new_data = b"".join(out)
    _interpret(new_data)  # our own output must still be a pickle we accept
    return new_data, changed


# --------------------------------------------------------------------------- writing

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
            self.save_string(_py2_bytes(obj), obj)
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
        self.save_global(_DTYPE)
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
        self.save_global(_RECONSTRUCT)
        self.save_tuple((_GlobalRef(_NDARRAY), tuple([0]), "b"))
        self.write(b"R")
        self.memoize(id(arr), arr)
        raw = arr.tobytes(order="F" if fortran else "C")
        self.save_tuple((1, tuple(int(n) for n in arr.shape), arr.dtype, fortran, raw))
        self.write(b"b")

    def save_scalar(self, obj: np.generic) -> None:
        if self.get(id(obj)):
            return
        self.save_global(_SCALAR)
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
