"""Choosing a column's codec: the candidates for its type are tried on a sample, on the
compression pool, while planning goes on; the smallest wins, or for a big column the cheapest in
modelled CPU seconds (a fixed cost per byte for each codec) plus stored bytes. Nothing measured
about the machine enters the choice: the store is a function of the data and the settings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext

import numpy as np

from .casacore_read import _read_uniform
from .codecs import _BadChunk, _candidates, _ChunkCodec, codec, model_seconds
from .common import RawTableRequired, _ReadFailure
from .pipeline import _Work
from .schema import ColumnSchema


def _trials(cands: list[str], sample: np.ndarray) -> dict[str, int]:
    """{label: compressed bytes} of one chunk; a pipeline that does not give the chunk back bit
    for bit is left out."""
    out = {}
    sample = np.ascontiguousarray(sample)
    back = np.empty_like(sample)
    for label in cands:
        chain = _ChunkCodec.from_label(label, sample.dtype, sample.shape)
        data, crc = chain.encode(sample)
        stored = np.empty(len(data) + 4, np.uint8)
        stored[:-4] = np.frombuffer(data, np.uint8)
        stored[-4:] = np.frombuffer(crc.to_bytes(4, "little"), np.uint8)
        try:
            chain.decode(stored, back)
        except _BadChunk:
            continue
        if back.tobytes() == sample.tobytes():
            out[label] = len(data)
    return out


class CodecMemory:
    """Codec choices made during one run, by kind of column: the Measurement Sets of a run have
    the same columns with the same types and cell shapes, so the trials made for the first one
    decide for the others (each array still names its codec; a reader never needs to know)."""

    def __init__(self, choices: Mapping[tuple, str] | None = None) -> None:
        self._choices: dict[tuple, str] = dict(choices or {})
        self._own: dict[tuple, str] = {}  # choices good for their own table only (see note)
        self._lock = threading.Lock()

    def snapshot(self) -> dict[tuple, str]:
        """Every choice made so far, by column kind, and those noted since the last snapshot
        (the table just planned: its own choices are all there), which it forgets."""
        with self._lock:
            own, self._own = self._own, {}
            return {**self._choices, **own}

    def note(self, key: tuple, label: str) -> None:
        """A choice for this table's column only, that later tables must make again."""
        with self._lock:
            self._own[key] = label

    def choices(self) -> dict[tuple, str]:
        """The choices every later column of their kind takes (not the table-only ones)."""
        with self._lock:
            return dict(self._choices)

    def get(self, key: tuple) -> str | None:
        with self._lock:
            return self._choices.get(key)

    def put(self, key: tuple, label: str) -> None:
        with self._lock:
            self._choices.setdefault(key, label)


_memory: CodecMemory | None = None


@contextmanager
def remembered_codec_choices(decided: Mapping[tuple, str] | None = None) -> Iterator[CodecMemory]:
    """Within this block a column's codec, once chosen, is used for every later column of the
    same kind (see :func:`column_kind`) without trying the candidates again.

    ``decided``: choices made elsewhere (by a cluster's client, for the run's tables up to and
    including the one encoded here, see decide_codecs): these kinds are never tried here, and an
    enclosing block's choices are not used."""
    global _memory
    outer = _memory
    _memory = CodecMemory(decided) if decided is not None else (_memory or CodecMemory())
    try:
        yield _memory
    finally:
        _memory = outer


class PlanningTurns:
    """Members written two at a time still plan their tables in the run's order: a table's
    codec choices depend on the choices remembered from the tables before it (the first table
    of a kind decides, see CodecMemory), so table k plans only once every member before it has
    planned or finished. Then the archive is the one a single writer makes, byte for byte.

    ``item(i)`` (around the whole of member i's write, in the thread writing it) gives the
    member its place; ``planning()`` (around a table's planning, by encode_table) waits for
    the turn and passes it on. Outside ``item`` both do nothing."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._passed: set[int] = set()  # members that planned or finished
        self._next = 0                  # every member below this one passed
        self._mine = threading.local()

    @contextmanager
    def item(self, index: int) -> Iterator[None]:
        self._mine.index = index
        try:
            yield
        finally:
            self._mine.index = None
            self._pass(index)

    @contextmanager
    def planning(self) -> Iterator[None]:
        index = getattr(self._mine, "index", None)
        if index is None:
            yield
            return
        with self._cond:
            while self._next < index:
                self._cond.wait()
        try:
            yield
        finally:
            self._pass(index)

    def plans_nothing(self, index: int) -> None:
        """Member ``index`` plans no table (a file): the members after it need not wait for it."""
        self._pass(index)

    def _pass(self, index: int) -> None:
        with self._cond:
            if index < self._next:
                return  # passed already (planned, now finished)
            self._passed.add(index)
            while self._next in self._passed:
                self._passed.discard(self._next)
                self._next += 1
            self._cond.notify_all()


_turns: PlanningTurns | None = None


@contextmanager
def planning_in_order(turns: PlanningTurns | None) -> Iterator[None]:
    """Within this block encode_table plans in the order ``turns`` gives (see PlanningTurns)."""
    global _turns
    outer, _turns = _turns, turns
    try:
        yield
    finally:
        _turns = outer


def tables_two_at_once() -> bool:
    """Whether this thread writes a member while another thread may write the next one (within
    planning_in_order)."""
    return _turns is not None and getattr(_turns._mine, "index", None) is not None


def planning_turn():
    """The context encode_table plans in: its member's turn, when members are written in order
    two at a time (see planning_in_order), else nothing."""
    return _turns.planning() if _turns is not None else nullcontext()


def column_kind(table_role: str, col: ColumnSchema, nbytes: int, settings) -> tuple:
    """What makes two columns of a run take the same codec: the table (``""`` for the main
    table, else the subtable path), the column's name, type, layout and cell shapes, and whether
    it is big enough to choose by speed."""
    shapes = tuple(col.shapes) if col.layout == "shaped" else tuple(col.cell_shape)
    return (table_role, col.name, col.ctype, col.layout, shapes, nbytes >= settings.speed_min_bytes)


def decided_codecs() -> dict[tuple, str]:
    """The choices remembered so far in this block (none outside one), by column kind, with
    the table-only choices noted since the last call (see CodecMemory.snapshot)."""
    return _memory.snapshot() if _memory is not None else {}


def remembered_choices() -> list[list]:
    """The choices remembered so far in this block, as JSON ([[kind as a list, label], ...]):
    what a zarr resume record keeps, so that a rerun which keeps the member remembers them too
    (see remember_choices)."""
    if _memory is None:
        return []
    return [[list(kind), label] for kind, label in sorted(_memory.choices().items(), key=repr)]


def remember_choices(choices: Iterable[tuple[tuple, str]]) -> None:
    """Choices read back from the record of a member a rerun keeps ((kind, label), the kind as
    kind_from_json gives it), remembered as if its tables had just chosen them: the tables after
    it take them, as in an uninterrupted run (where the first table of a kind decides). Nothing
    outside a remembered_codec_choices block."""
    if _memory is None:
        return
    for kind, label in choices:
        _memory.put(kind, label)


def kind_from_json(value) -> tuple:
    """A column kind (see column_kind) from its JSON form; ValueError when it is not one (a
    resume record is read from a store, and a damaged one must not be trusted)."""
    if not isinstance(value, list) or len(value) != 6 or not all(isinstance(x, str) for x in value[:4]) \
            or not isinstance(value[5], bool) or not isinstance(value[4], list):
        raise ValueError("not a column kind")

    def shape(v):
        if isinstance(v, list):
            return tuple(shape(x) for x in v)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
        raise ValueError("not a cell shape")

    return (*value[:4], shape(value[4]), value[5])


def remembered(kind: tuple) -> str | None:
    """The codec chosen earlier in this run for a column of this kind, if any."""
    return _memory.get(kind) if _memory is not None else None


def _start_choice(col: ColumnSchema, nbytes: int, sample, work: _Work, kind: tuple | None = None) -> Callable:
    """Start the codec trials of a column of ``nbytes`` on the pool; returns finish(tb, path)
    -> label.

    The smallest on the first chunk wins; for a column of settings.speed_min_bytes or more the
    cheapest in model_seconds (each codec's fixed CPU cost per byte, encode + decode) + (stored
    bytes / settings.worth), so that fast codecs win on noisy data. Sizes are exact and the
    model a constant, so the same data and settings always give the same choice. A numcodecs
    pipeline must beat that by 10 % (float delta: exactly).
    """
    if sample is None or sample.size == 0:
        return lambda tb, path: _candidates(col)[0]
    settings = work.settings
    big = nbytes >= settings.speed_min_bytes and sample.nbytes >= settings.numcodecs_min_sample
    cands = _candidates(col, big)
    if len(cands) == 1:
        return lambda tb, path: cands[0]
    if sample.nbytes < settings.numcodecs_min_sample:
        cands = [c for c in cands if not codec(c).numcodecs]
    trials = [work.pool.submit(_trials, [c], sample) for c in cands]

    def finish(tb, path) -> str:
        label = choose(tb, path)
        if kind is not None and _memory is not None:
            if codec(label).exact_on_floats or col.dtype is None or col.dtype.kind != "f":
                _memory.put(kind, label)
            else:  # float delta is checked on every column's values
                _memory.note(kind, label)
        return label

    def choose(tb, path) -> str:
        size = {c: n for f in trials for c, n in f.result().items()}
        spec = [c for c in cands if not codec(c).numcodecs and c in size]
        if not spec:
            return _candidates(col)[0]
        if big:
            best = min(spec, key=lambda c: model_seconds(c, sample.nbytes) + size[c] / settings.worth)
        else:
            best = min(spec, key=lambda c: size[c])
        for c in cands:
            if codec(c).numcodecs and c in size and size[c] < settings.numcodecs_margin * size[best]:
                rows = nbytes // col.itemsize  # float delta: scalar columns only
                if (not codec(c).exact_on_floats and col.dtype is not None and col.dtype.kind == "f"
                        and not _delta_exact(tb, path, col, rows)):
                    continue
                return c
        return best

    return finish


def _delta_exact(tb, path, col: ColumnSchema, nrows: int) -> bool:
    """Float delta is lossless only if cumsum(diff) gives back every bit of every chunk (as
    numcodecs computes them: the first value, then the differences, in the column's type)."""
    for start in range(0, nrows, col.block_rows):
        n = min(col.block_rows, nrows - start)
        k = -(-n // col.chunk_rows)
        flat = np.zeros(k * col.chunk_rows, col.dtype)  # zero padded, like the last chunk
        try:  # read straight into it (getcolnp: several times faster than getcol)
            _read_uniform(tb, col, start, n, out=flat[:n].reshape((n,) + tuple(col.cell_shape)))
        except _ReadFailure as e:
            raise RawTableRequired(path, str(e)) from e
        chunks = flat.reshape(k, col.chunk_rows)
        enc = np.empty_like(chunks)
        enc[:, 0] = chunks[:, 0]
        np.subtract(chunks[:, 1:], chunks[:, :-1], out=enc[:, 1:])
        back = np.cumsum(enc, axis=1, dtype=col.dtype)
        if back.tobytes() != chunks.tobytes():
            return False
    return True

