"""Factor's ``state/*.pkl`` files (Python 2 pickles): read, rewritten and written without unpickling.

Reading is :mod:`.py2_pickle_reader` (an opcode interpreter that builds plain data and never
runs anything), writing is :mod:`.py2_pickle_writer`; this module joins them to move the paths
recorded inside a pickle while keeping every other byte.
"""

from __future__ import annotations

from collections.abc import Callable

from .py2_pickle_reader import UnsafePickleError, interpret, load_state
from .py2_pickle_writer import dumps_py2, encode_string

__all__ = ["UnsafePickleError", "load_state", "rewrite_strings", "dumps_py2"]


def rewrite_strings(data: bytes, fn: Callable[[str], str | None]) -> tuple[bytes, int]:
    """Rewrite string values in place, keeping every other byte and Python 2's string types.

    ``fn`` sees each string opcode once (dict keys too, never numpy dtype names or raw array
    data) and returns a replacement or None. Values are latin-1 views of Python 2 byte strings.
    """
    result = interpret(data)
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
        out += (data[last:start], encode_string(op, new))
        last = end
        changed += 1
    if not changed:
        return data, 0
    out.append(data[last:])
    new_data = b"".join(out)
    interpret(new_data)  # our own output must still be a pickle we accept
    return new_data, changed
