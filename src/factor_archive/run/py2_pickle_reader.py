"""Reading Factor's ``state/*.pkl`` files (Python 2 pickles) as plain data, without unpickling.

Archives come from strangers, so nothing here ever calls ``pickle.load``: a small opcode
interpreter builds plain data itself and refuses every global except the four numpy names that
numpy 1.x uses for arrays and scalars (which are rebuilt by our own code, never called).

Python 2 byte strings are seen as ``str`` decoded with latin-1, so every byte round-trips.
The interpreter also notes where each string opcode sits, which :func:`..state.rewrite_strings`
uses to rewrite paths in place.

``pickletools.genops`` is not used for reading: it decodes protocol-0 ``STRING`` arguments as
ASCII and so fails on real Python 2 pickles holding numpy data or non-ASCII paths.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from ..errors import UnsafeArchive

__all__ = ["UnsafePickleError", "ScannedPickle", "interpret", "load_state"]


class UnsafePickleError(UnsafeArchive, ValueError):
    """A pickle asks for more than plain data, or is not a well-formed pickle."""


NUMPY_RECONSTRUCT = ("numpy.core.multiarray", "_reconstruct")
NUMPY_SCALAR = ("numpy.core.multiarray", "scalar")
NUMPY_NDARRAY = ("numpy", "ndarray")
NUMPY_DTYPE = ("numpy", "dtype")
_ALLOWED_GLOBALS = {NUMPY_RECONSTRUCT, NUMPY_SCALAR, NUMPY_NDARRAY, NUMPY_DTYPE}

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
PY2_STRING_OPS = frozenset(b"STU")            # py2 str: STRING, BINSTRING, SHORT_BINSTRING
# everything else that pushes a string is unicode: UNICODE, BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
PY3_BYTES_OPS = frozenset(b"BC\x8e")          # py3 BINBYTES, SHORT_BINBYTES, BINBYTES8


class _Str(str):
    """A string from the pickle, remembering which string opcode made it."""

    origin: int  # index into ScannedPickle.strings


class _Bytes(bytes):
    """Same, for protocol-3 bytes."""

    origin: int


class _Global:
    __slots__ = ("key",)

    def __init__(self, key: tuple[str, str]):
        self.key = key


class _PendingDtype:
    __slots__ = ("name", "dtype", "built")

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(name)
        self.built = False


class _PendingArray:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: np.ndarray | None = None


@dataclass
class ScannedPickle:
    """What the interpreter found: the value, and where each string opcode sits."""

    value: object
    strings: list[tuple[int, int, int, str]]  # (start, end, opcode, value); index = origin
    protected: set[int]                       # origins consumed by numpy constructors


def _fail(msg: str) -> NoReturn:
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
    if order in ("<", ">") and dt.itemsize > 1 and dt.kind != "S":
        dt = dt.newbyteorder("<" if order == "<" else ">")
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
    if key == NUMPY_DTYPE:
        if len(args) != 3:
            _fail("numpy.dtype wants 3 arguments")
        name = _text(args[0])
        if not _DTYPE_NAME.match(name):
            _fail(f"numpy dtype {name!r} refused (only simple numeric/string dtypes)")
        return _PendingDtype(name)
    if key == NUMPY_SCALAR:
        return _make_scalar(args)
    if key == NUMPY_RECONSTRUCT:
        if len(args) != 3 or not isinstance(args[0], _Global) or args[0].key != NUMPY_NDARRAY:
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


def _memo_index(data: bytes, pos: int, form: int) -> tuple[int, int]:
    """The argument of PUT/GET (form 0: a decimal line), BINPUT/BINGET (1: one byte) and
    LONG_BINPUT/LONG_BINGET (2: four bytes, little endian)."""
    if form == 0:
        line, pos = _line(data, pos)
        return int(line), pos
    b, pos = _take(data, pos, 1 if form == 1 else 4)
    return (b[0] if form == 1 else struct.unpack("<I", b)[0]), pos


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


def interpret(data: bytes) -> ScannedPickle:
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


def _run(data: bytes) -> ScannedPickle:
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
            return ScannedPickle(stack.pop(), strings, protected)
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
            if op in PY2_STRING_OPS:
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
            marked = tuple(pop_mark())  # first: pop_mark rebinds stack
            stack.append(marked)
        elif op in (0x85, 0x86, 0x87):                     # TUPLE1..3
            k = op - 0x84
            if len(stack) < k:
                _fail("stack underflow")
            top = tuple(stack[-k:])
            del stack[-k:]
            stack.append(top)
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
        elif op in (0x70, 0x71, 0x72):                     # PUT, BINPUT, LONG_BINPUT
            idx, pos = _memo_index(data, pos, op - 0x70)
            memo[idx] = stack[-1]
        elif op == 0x94:                                   # MEMOIZE
            memo[len(memo)] = stack[-1]
        elif op in (0x67, 0x68, 0x6A):                     # GET, BINGET, LONG_BINGET
            idx, pos = _memo_index(data, pos, {0x67: 0, 0x68: 1, 0x6A: 2}[op])
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
        as_list: list = []
        seen[id(obj)] = as_list
        as_list.extend(_plain(x, seen) for x in obj)
        return as_list
    if t is dict:
        as_dict: dict = {}
        seen[id(obj)] = as_dict
        for k, v in obj.items():
            as_dict[_plain(k, seen)] = _plain(v, seen)
        return as_dict
    if t is tuple:
        as_tuple = tuple(_plain(x, seen) for x in obj)
        seen[id(obj)] = as_tuple
        return as_tuple
    if t is _PendingArray:
        if obj.value is None:
            _fail("numpy array without its data (no BUILD)")
        return obj.value
    _fail(f"{t.__name__.lstrip('_')} object is not plain data")


def load_state(data: bytes) -> object:
    """Load a Factor state pickle as plain data, executing nothing from it."""
    result = interpret(data)
    try:
        return _plain(result.value, {})
    except UnsafePickleError:
        raise
    except (TypeError, RecursionError, MemoryError) as exc:
        raise UnsafePickleError(f"malformed pickle: {type(exc).__name__}: {exc}") from None
