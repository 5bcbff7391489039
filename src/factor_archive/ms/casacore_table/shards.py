"""Sharded arrays written and read shard by shard, exactly as zarr lays them out (``sharding_indexed``,
index at the end), with a reader that reports an absent shard or chunk as missing data instead
of reading fill values.
"""

from __future__ import annotations

import json
import math
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import zarr_internals
from .codecs import _BadChunk, _ChunkCodec, _codec_from_metadata, _create, codec
from .common import _MAX_U64, _first_line, _ReadFailure
from .pipeline import PipelineSettings, _block_rows, _buffer_view, _Work, first_failure


def _rows_layout(nrows: int, row_bytes: int, row_block: int | None, settings: PipelineSettings,
                 shard_bytes: int | None = None) -> tuple[int, int]:
    """(chunk rows, shard rows); the shard is also the read/write block."""
    row_bytes = max(1, row_bytes)
    chunk = max(1, settings.chunk_bytes // row_bytes)
    if row_block:
        chunk = min(chunk, row_block)
    chunk = max(1, min(chunk, nrows))
    k = max(1, (shard_bytes or settings.shard_bytes) // (chunk * row_bytes))
    if row_block:
        k = max(1, min(k, row_block // chunk))
    k = min(k, max(1, -(-nrows // chunk)))
    return chunk, chunk * k


def _shard_key(doc: dict, path: str, s: int, ndim: int) -> str:
    """The store key of shard ``s`` (along rows) of the array at ``path``."""
    key = zarr_internals.chunk_key(doc, (s,) + (0,) * (ndim - 1))
    return f"{path}/{key}" if path else key


class _ArrayOut:
    """Writes a sharded array, block by block in row order, straight to the store.

    Blocks cover whole inner chunks (the last one may end with the array). Each chunk is
    compressed on the pool; once a shard's chunks are all queued, the io thread assembles them
    with the shard index (zarr's sharding format: chunks, then (offset, length) uint64 pairs
    and their crc32c) and stores the shard: every shard is written once, and at most
    settings.shards_in_flight of them are waiting to be stored.

    Into a local directory the io thread instead appends each block's chunks to the shard's file
    as they are compressed (``_ShardFile``, the same bytes): no shard is held in memory, so two
    tables can be encoded at once within the memory one took, and the shard is not copied.
    """

    def __init__(self, node: _Node, work: _Work):
        self.work = work
        self.node = node
        self.store, self.path = node.store, node.path
        self.shape = node.shape
        self.nrows = self.shape[0]
        self.chunk, self.shard = node.chunks[0], node.shards[0]
        self.cps = self.shard // self.chunk
        self.empty = 0 in self.shape
        if node.dtype is None:
            self.codec: Any = _StringChunkCodec(node.label, node.chunks)
        else:
            self.codec = _ChunkCodec.from_label(node.label, node.dtype, node.chunks)
        self.pos = 0
        self.parts: list = []
        self.inflight: deque = deque()
        self.stored = 0
        self.local = zarr_internals.local_object_target(self.store)
        if node.dtype is None and self.local is None:
            raise ValueError(f"{node.path}: strings are written through zarr, but to a local directory")
        self.shard_file: _ShardFile | None = None  # the shard being appended to (local stores)

    def write(self, block: np.ndarray) -> list:
        """Queue rows [pos, pos + len(block)); returns the futures still reading ``block``."""
        n = len(block)
        start = self.pos
        if start + n > self.nrows:
            raise _ReadFailure(f"{self.path}: {start + n} rows for an array of {self.nrows}")
        self.pos += n
        if self.empty or n == 0:
            return []
        if start % self.chunk or (n % self.chunk and start + n != self.nrows):
            raise ValueError(f"{self.path}: block {start}+{n} is not made of whole chunks")
        if self.local is not None:
            futs = [self.work.pool.submit(self.codec.encode, block[i:i + self.chunk]) for i in range(0, n, self.chunk)]
            while len(self.inflight) > self.work.settings.shards_in_flight:
                self.inflight.popleft().result()  # compressed blocks waiting to be appended: bounded
            self.inflight.append(self.work.store(self._append, start // self.chunk, list(futs)))
            return futs
        futs = []
        for i in range(0, n, self.chunk):
            futs.append(self.work.pool.submit(self.codec.encode, block[i:i + self.chunk]))
            self.parts.append(futs[-1])
            end = start + min(n, i + self.chunk)
            if end % self.shard == 0 or end == self.nrows:
                self._flush((end - 1) // self.shard)
        return futs

    def _flush(self, s: int) -> None:
        while len(self.inflight) >= self.work.settings.shards_in_flight:
            self.inflight.popleft().result()
        parts, self.parts = self.parts, []
        self.inflight.append(self.work.store(self._store_shard, s, parts))

    def _store_shard(self, s: int, parts: list) -> None:
        done = [f.result() for f in parts]
        parts.clear()
        buf = _shard_bytes(done, self.cps)
        zarr_internals.store_set(self.store, self.node.shard_key(s), buf)
        self.stored += len(buf)

    def _append(self, first: int, futs: list) -> None:
        """(io thread) Append the compressed chunks ``first``, ``first + 1``, ... to their shard
        files, each finished (index appended, renamed into place) with its last chunk."""
        assert self.local is not None
        try:
            for c, fut in enumerate(futs, first):
                s, j = divmod(c, self.cps)
                if self.shard_file is None:
                    self.shard_file = _ShardFile(zarr_internals.LocalObject(
                        self.local[0], self.node.shard_key(s), self.local[1]), self.cps)
                data, crc = fut.result()
                futs[c - first] = None  # the compressed chunk is freed once written
                self.shard_file.add(j, data, crc)
                del data
                if j == self.cps - 1 or (c + 1) * self.chunk >= self.nrows:
                    self.stored += self.shard_file.finish()
                    self.shard_file = None
        except BaseException:
            if self.shard_file is not None:
                self.shard_file.out.discard()
                self.shard_file = None
            raise

    def close(self) -> None:
        if self.pos != self.nrows:
            raise _ReadFailure(f"wrote {self.pos} of {self.nrows} elements")

    def stored_bytes(self) -> int | None:
        return self.stored


class _ShardFile:
    """A shard laid out as ``_shard_bytes`` lays it out, written chunk by chunk to a LocalObject."""

    def __init__(self, out, cps: int):
        self.out = out
        self.index = np.full((cps, 2), _MAX_U64, dtype="<u8")
        self.off = 0

    def add(self, j: int, data, crc: int) -> None:
        n = len(data)
        self.out.write(data)
        self.out.write(crc.to_bytes(4, "little"))
        self.index[j] = (self.off, n + 4)
        self.off += n + 4

    def finish(self) -> int:
        import google_crc32c

        raw = self.index.tobytes()
        self.out.write(raw)
        self.out.write(google_crc32c.value(raw).to_bytes(4, "little"))
        self.out.finish()
        return self.off + len(raw) + 4


def _shard_bytes(done: list, cps: int) -> np.ndarray:
    """A shard as zarr's ``sharding_indexed`` lays it out: the ``(compressed bytes, crc32c)``
    chunks in order, then the index of (offset, length) uint64 pairs (absent chunks all ones)
    and its crc32c. ``done`` is emptied as it is copied."""
    import google_crc32c

    total = sum(len(d) + 4 for d, _ in done) + 16 * cps + 4
    buf = np.empty(total, np.uint8)
    index = np.full((cps, 2), _MAX_U64, dtype="<u8")
    off = 0
    for j in range(len(done)):
        data, crc = done[j]
        done[j] = None  # compressed chunks are freed as they are copied
        n = len(data)
        buf[off:off + n] = np.frombuffer(data, np.uint8)
        buf[off + n:off + n + 4] = np.frombuffer(crc.to_bytes(4, "little"), np.uint8)
        index[j] = (off, n + 4)
        off += n + 4
        del data
    raw = index.tobytes()
    buf[off:off + len(raw)] = np.frombuffer(raw, np.uint8)
    buf[off + len(raw):] = np.frombuffer(google_crc32c.value(raw).to_bytes(4, "little"), np.uint8)
    return buf


class BytesShards:
    """A 1-D uint8 array (a file member) written shard by shard in the calling thread, straight
    to the store, with the bytes zarr writes for its document: no zarr Array to create (an
    existence check) and no round trips through zarr's event loop per shard."""

    def __init__(self, store, path: str, doc: dict):
        self.store, self.path, self.doc = store, path, doc
        probe = _StoredArray(store, path, tuple(doc["shape"]), np.dtype(doc["data_type"]), doc, (None, 0, 0))
        got = _codec_from_metadata(probe, doc)
        if got is None:
            raise ValueError(f"{path}: not a layout BytesShards writes")
        self.codec, self.chunk, self.shard = got

    def write(self, pos: int, block: np.ndarray) -> None:
        """Store the shard starting at byte ``pos`` (a whole shard, or the array's last)."""
        if pos % self.shard or (len(block) != self.shard and pos + len(block) != self.doc["shape"][0]):
            raise ValueError(f"{self.path}: bytes {pos}+{len(block)} are not one shard")
        done = [self.codec.encode(block[i:i + self.chunk]) for i in range(0, len(block), self.chunk)]
        zarr_internals.store_set(self.store, _shard_key(self.doc, self.path, pos // self.shard, 1),
                                 _shard_bytes(done, self.shard // self.chunk))


class _StringChunkCodec:
    """A chunk of strings as zarr's chain for them stores it (``vlen-utf8``, ``zstd``,
    ``crc32c``), padded with the fill value "" to the chunk shape: the bytes zarr writes, without
    a round trip through its event loop per shard (each costs milliseconds of interpreter time,
    and a run's subtables have hundreds of string columns)."""

    def __init__(self, label: str, chunk_shape: tuple):
        import numcodecs

        comp = codec(label).compressor
        if comp[0] != "zstd" or codec(label).filter is not None:
            raise ValueError(f"{label} is not a codec for strings")
        self.chunk_shape = tuple(chunk_shape)
        self._vlen = numcodecs.VLenUTF8()
        self._zstd = numcodecs.Zstd(level=comp[1])

    def encode(self, rows: np.ndarray) -> tuple[bytes, int]:
        import google_crc32c

        if rows.shape != self.chunk_shape:
            full = np.full(self.chunk_shape, "", dtype=object)
            full[:len(rows)] = rows
            rows = full
        data = self._zstd.encode(self._vlen.encode(np.ascontiguousarray(rows, dtype=object)))
        return data, google_crc32c.value(data)


class _ZarrOut:
    """Writes through zarr itself (variable-length strings), whole shards at a time."""

    def __init__(self, arr):
        self.arr, self.pos = arr, 0

    def write(self, block) -> list:
        n = len(block)
        if n:
            self.arr[self.pos:self.pos + n] = block
        self.pos += n
        return []

    def close(self) -> None:
        if self.pos != self.arr.shape[0]:
            raise _ReadFailure(f"wrote {self.pos} of {self.arr.shape[0]} elements")

    def stored_bytes(self) -> int | None:
        return _stored_bytes(self.arr)


def _writer(node: _Node, work: _Work):
    if node.dtype is None and zarr_internals.local_object_target(node.store) is None:
        import zarr

        arr = zarr.open_array(node.store, path=node.path, mode="r+", zarr_format=3)
        return _ZarrOut(arr.with_config({"write_empty_chunks": True}))  # every shard stored
    return _ArrayOut(node, work)


class _Appender:
    """Buffers values along axis 0 and writes whole shards, so no shard is written twice."""

    def __init__(self, out, shard: int):
        self.out, self.shard = out, shard
        self.parts: list[np.ndarray] = []
        self.n = 0

    def add(self, a: np.ndarray) -> None:
        if len(a):
            self.parts.append(a)
            self.n += len(a)
            if len(self.parts) > 64:  # many small parts cost more than their values
                self.parts = [np.concatenate(self.parts)]
        while self.n >= self.shard:
            self._flush(self.shard)

    def _flush(self, count: int) -> None:
        buf = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.out.write(buf[:count])
        rest = buf[count:]
        self.parts = [rest] if len(rest) else []
        self.n = len(rest)

    def close(self) -> None:
        if self.n:
            self._flush(self.n)
        self.out.close()


_TEMPLATES: dict = {}  # (dtype, codec label, ndim) -> the metadata document zarr writes


@dataclass
class _Node:
    """An array to be written: where, its layout, and its zarr.json document."""

    store: Any
    path: str
    shape: tuple
    chunks: tuple
    shards: tuple
    label: str
    dtype: np.dtype | None
    doc: dict

    def shard_key(self, s: int) -> str:
        return _shard_key(self.doc, self.path, s, len(self.shape))


def _array_doc(shape, dtype, chunk0: int, shard0: int, label: str, dims, attrs=None) -> tuple:
    """(zarr.json document, chunks, shards) of a new array. The document is the one zarr's
    create_array writes for an array of this dtype and codec (made once per kind, in memory),
    with shape, chunk shapes, dimension names and attributes filled in: creating each array
    through zarr costs milliseconds (validation, existence checks), which adds up for the many
    small columns of subtables."""
    shape = tuple(int(x) for x in shape)
    chunks = (max(1, chunk0),) + tuple(max(1, x) for x in shape[1:])
    shards = (max(1, shard0),) + chunks[1:]
    key = ("str" if dtype is None else np.dtype(dtype).str, label, len(shape))
    t = _TEMPLATES.get(key)
    if t is None:
        import zarr
        from zarr.storage import MemoryStore

        g = zarr.open_group(MemoryStore(), mode="w")
        arr = _create(g, "t", (1,) * len(shape), dtype, 1, 1, label, ("d",) * len(shape))
        t = zarr_internals.array_document(arr)
        _TEMPLATES[key] = t
    doc = json.loads(json.dumps(t))
    doc["shape"] = list(shape)
    doc["chunk_grid"]["configuration"]["chunk_shape"] = list(shards)
    doc["codecs"][0]["configuration"]["chunk_shape"] = list(chunks)
    doc["dimension_names"] = list(dims)
    doc["attributes"] = {"codec": label, **(attrs or {})}
    return doc, chunks, shards


def _stored_bytes(arr) -> int | None:
    """Bytes of the array's shards in the store (metadata not counted)."""
    try:
        return zarr_internals.stored_bytes(arr.store, f"{arr.path}/c/")
    except Exception:
        return None


class _Damage(Exception):
    """Stored data of rows (or values) first..last is missing or damaged."""

    def __init__(self, first: int, last: int, kind: str, detail: str = ""):
        super().__init__(f"{first}-{last}: {kind}")
        self.first, self.last, self.kind, self.detail = first, last, kind, detail

    def text(self, unit: str) -> str:
        return (f"{unit} {self.first}-{self.last}: stored data is {self.kind}"
                + (f" ({self.detail})" if self.detail else ""))


class _ArrayIn:
    """Reads an array stored as _ArrayOut writes it, without zarr's per-chunk machinery: the
    io thread fetches whole shards (one ahead), the pool checks each inner chunk's crc32c and
    decompresses it straight into a reused row-block buffer. A shard that is absent, or an
    inner chunk absent from its shard, is *missing* (zarr would read fill values); a bad
    checksum or size is *damaged*. Nothing needs listing the store, so any store works."""

    def __init__(self, arr, codec: _ChunkCodec | None, chunk: int, shard: int, work: _Work | None,
                 doc: dict | None = None):
        """``codec`` None: a subclass decodes (_StringsIn); ``work`` None: only ``read(here=True)``."""
        self.arr, self.codec, self.chunk, self.shard, self.work = arr, codec, chunk, shard, work
        self.store, self.path = arr.store, arr.path
        self.doc = doc if doc is not None else zarr_internals.array_document(arr)
        self.shape = tuple(arr.shape)
        self.nrows = self.shape[0]
        self.row_shape = self.shape[1:]
        self.dtype = np.dtype(arr.dtype)
        self.row_bytes = math.prod(self.row_shape) * self.dtype.itemsize
        self.cps = shard // chunk
        self.nshards = -(-self.nrows // shard)
        self._cached: dict[int, Any] = {}

    def _range(self, s: int) -> tuple[int, int]:
        return s * self.shard, min(self.nrows, (s + 1) * self.shard) - 1

    def _fetch(self, s: int):
        import google_crc32c

        first, last = self._range(s)
        key = _shard_key(self.doc, self.path, s, len(self.shape))
        isz = 16 * self.cps + 4
        try:
            data = zarr_internals.store_open(self.store, key)
            if data is None:
                raise _Damage(first, last, "missing")
            if data.size < isz:
                raise _Damage(first, last, "damaged", "shard too short")
            idx = data.read(data.size - isz, isz)
        except _Damage:
            raise
        except Exception as e:
            raise _Damage(first, last, "damaged", f"cannot read it: {_first_line(e)}") from None
        if len(idx) < isz:
            raise _Damage(first, last, "damaged", "shard too short")
        if google_crc32c.value(idx[:-4]) != int.from_bytes(idx[-4:].tobytes(), "little"):
            raise _Damage(first, last, "damaged", "shard index checksum mismatch")
        return data, np.frombuffer(idx[:-4].tobytes(), "<u8").reshape(self.cps, 2), data.size - isz

    @staticmethod
    def _bytes(data, off: int, length: int, r0: int, r1: int) -> np.ndarray:
        """Bytes [off, off + length) of a shard (a zarr_internals.StoredObject)."""
        try:
            got = data.read(off, length)
        except Exception as e:
            raise _Damage(r0, r1, "damaged", f"cannot read it: {_first_line(e)}") from None
        if len(got) != length:
            raise _Damage(r0, r1, "damaged", "chunk outside its shard")
        return got

    def _chunk(self, shard_fut, s: int, j: int, out: np.ndarray, skip: int = 0) -> None:
        """Decode inner chunk j of shard s; put its rows skip.. into ``out``."""
        data, table, end = shard_fut.result()
        r0 = s * self.shard + j * self.chunk
        r1 = min(self.nrows, r0 + self.chunk) - 1
        off, length = int(table[j, 0]), int(table[j, 1])
        if off == _MAX_U64:
            raise _Damage(r0, r1, "missing", "chunk absent from its shard")
        if off + length > end:
            raise _Damage(r0, r1, "damaged", "chunk outside its shard")
        whole = (self.chunk,) + self.row_shape
        assert self.codec is not None
        target = out if (skip == 0 and out.shape == whole) else np.empty(whole, self.dtype)
        try:
            self.codec.decode(self._bytes(data, off, length, r0, r1), target)
        except _BadChunk as e:
            raise _Damage(r0, r1, "damaged", str(e)) from None
        if target is not out:
            out[:] = target[skip:skip + len(out)]

    def blocks(self):
        """(start, stop, rows, buffer, damage) in row order; the caller gives ``buffer`` back
        (work.give) once it is done with ``rows``."""
        work = self.work
        assert work is not None
        if self.nrows == 0:
            return
        step = _block_rows(self.chunk, self.shard, self.row_bytes, work.settings.block_bytes)
        plan = [(b0, min(self._range(s)[1] + 1, b0 + step), s)
                for s in range(self.nshards) for b0 in range(s * self.shard, self._range(s)[1] + 1, step)]
        if self.row_bytes == 0:
            for b0, b1, _s in plan:
                yield b0, b1, np.zeros((b1 - b0,) + self.row_shape, self.dtype), None, None
            return
        fetched: dict[int, Any] = {}
        pending: deque = deque()
        # An array of one inner chunk (a subtable's column, a main table's scalar column) is read
        # and decoded in this thread: handing it to the io thread and the pool and waiting for
        # both cost more than the work, and nothing else could overlap it.
        io, pool = (_HERE, _HERE) if self.nrows <= self.chunk else (work.io, work.pool)

        def submit(i: int) -> None:
            b0, b1, s = plan[i]
            for t in (s, s + 1):  # this shard, and the next one ahead
                if t < self.nshards and t not in fetched:
                    fetched[t] = io.submit(self._fetch, t)
            buf = work.take((b1 - b0) * self.row_bytes)
            rows = _buffer_view(buf, self.dtype, (b1 - b0,) + self.row_shape)
            futs = [pool.submit(self._chunk, fetched[s], s, (r - s * self.shard) // self.chunk,
                                rows[r - b0:min(b1, r + self.chunk) - b0])
                    for r in range(b0, b1, self.chunk)]
            pending.append((b0, b1, s, rows, buf, futs))

        nxt = 0
        try:
            for i in range(len(plan)):
                while nxt < len(plan) and nxt < i + work.settings.ahead:
                    submit(nxt)
                    nxt += 1
                b0, b1, s, rows, buf, futs = pending.popleft()
                damage = first_failure(futs, _Damage)
                if i + 1 == len(plan) or plan[i + 1][2] != s:
                    fetched.pop(s, None)
                yield b0, b1, rows, buf, damage
        finally:
            for _b0, _b1, _s, _rows, buf, futs in pending:  # abandoned: back once decoded
                work.give(buf, futs)

    def read(self, start: int, stop: int, *, here: bool = False) -> np.ndarray:
        """Rows [start, stop) (raises _Damage); for the small ragged arrays. ``here``: read and
        decode in this thread (the reader may then have no _Work), for small files."""
        out = np.zeros((max(0, stop - start),) + self.row_shape, self.dtype)
        if stop <= start or self.row_bytes == 0:
            return out
        first_shard = start // self.shard
        for s in [k for k in self._cached if k < first_shard]:
            del self._cached[s]
        io: Any = _HERE
        pool: Any = _HERE
        if not here and self.work is not None:
            io, pool = self.work.io, self.work.pool
        futs = []
        for r in range(start - start % self.chunk, stop, self.chunk):
            s = r // self.shard
            if s not in self._cached:
                self._cached[s] = io.submit(self._fetch, s)
            a, b = max(start, r), min(stop, r + self.chunk)
            futs.append(pool.submit(self._chunk, self._cached[s], s, (r % self.shard) // self.chunk,
                                    out[a - start:b - start], a - r))
        damage = first_failure(futs, _Damage)
        if damage:
            raise damage
        return out


class _Here:
    """An executor that runs what it is given at once, in the caller's thread."""

    @staticmethod
    def submit(fn, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:
            fut.set_exception(e)
        return fut


_HERE = _Here()


class _StringsIn(_ArrayIn):
    """Reads a string array of zarr's layout (see _strings_layout) from its shard files, in
    this thread: like _ZarrIn, an absent shard is missing and an inner chunk absent from its
    shard reads as empty strings (zarr's fill value), but no zarr Array is opened and nothing
    goes through zarr's event loop."""

    def __init__(self, arr: _StoredArray, work: _Work):
        _kind, chunk, shard = arr.layout
        super().__init__(arr, None, chunk, shard, work, doc=arr.doc)
        self._shard_at: tuple[int, Any] | None = None  # the last shard fetched
        self.cell = tuple(arr.shape[1:])
        self.empty_cells = 0 in self.cell  # nothing stored: every cell is an empty array

    def _chunk_strings(self, s: int, j: int) -> np.ndarray:
        import google_crc32c
        import numcodecs

        if self._shard_at is None or self._shard_at[0] != s:
            self._shard_at = (s, self._fetch(s))
        data, table, end = self._shard_at[1]
        r0 = s * self.shard + j * self.chunk
        r1 = min(self.nrows, r0 + self.chunk) - 1
        off, length = int(table[j, 0]), int(table[j, 1])
        if off == _MAX_U64:
            return np.full((self.chunk, *self.cell), "", dtype=object)
        if off + length > end or length < 4:
            raise _Damage(r0, r1, "damaged", "chunk outside its shard")
        stored = self._bytes(data, off, length, r0, r1)
        body = stored[:-4]
        if google_crc32c.value(body) != int.from_bytes(stored[-4:].tobytes(), "little"):
            raise _Damage(r0, r1, "damaged", "crc32c checksum mismatch")
        try:
            values = numcodecs.VLenUTF8().decode(numcodecs.Zstd().decode(body))
        except Exception as e:
            raise _Damage(r0, r1, "damaged", f"cannot decompress: {_first_line(e)}") from None
        if len(values) != self.chunk * math.prod(self.cell):
            raise _Damage(r0, r1, "damaged", "size does not match the chunk")
        return values.reshape((self.chunk, *self.cell))

    def read(self, start: int, stop: int, *, here: bool = True) -> np.ndarray:
        """Rows [start, stop) (raises _Damage), always read in this thread."""
        if stop <= start or self.empty_cells:
            return np.empty((max(0, stop - start), *self.cell), dtype=object)
        parts = []
        for r in range(start - start % self.chunk, stop, self.chunk):
            s = r // self.shard
            values = self._chunk_strings(s, (r % self.shard) // self.chunk)
            parts.append(values[max(start, r) - r:min(stop, r + self.chunk) - r])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def blocks(self):
        for a in range(0, self.nrows, self.shard):
            b = min(self.nrows, a + self.shard)
            try:
                yield a, b, self.read(a, b), None, None
            except _Damage as e:
                yield a, b, None, None, e


class _ZarrIn:
    """Reads through zarr (strings, or an array stored some other way): shard by shard, each
    checked to exist first, since zarr would silently read fill values for an absent one."""

    def __init__(self, arr, work: _Work):
        self.arr, self.work = arr, work
        self.shape = tuple(arr.shape)
        self.nrows = self.shape[0]
        self.shard = (arr.shards or arr.chunks)[0]
        self._present: set[int] = set()
        self._doc = zarr_internals.array_document(arr)

    def _check(self, s: int) -> None:
        if s in self._present or 0 in self.shape:
            return
        key = _shard_key(self._doc, self.arr.path, s, len(self.shape))
        if not zarr_internals.store_exists(self.arr.store, key):
            raise _Damage(s * self.shard, min(self.nrows, (s + 1) * self.shard) - 1, "missing")
        self._present.add(s)

    def _get(self, a: int, b: int):
        for s in range(a // self.shard, (b - 1) // self.shard + 1):
            self._check(s)
        try:
            return self.arr[a:b]
        except Exception as e:
            raise _Damage(a, b - 1, "damaged", _first_line(e)) from None

    def blocks(self):
        for a in range(0, self.nrows, self.shard):
            b = min(self.nrows, a + self.shard)
            try:
                yield a, b, self._get(a, b), None, None
            except _Damage as e:
                yield a, b, None, None, e

    def read(self, start: int, stop: int):
        if stop <= start:
            return self.arr[start:start]
        return self._get(start, stop)


@dataclass(frozen=True)
class _StoredArray:
    """A numeric array stored as _ArrayOut writes it, known from its ``zarr.json`` alone:
    reading it needs no zarr Array, whose opening costs a round trip through zarr's event loop
    and a validation of the document (milliseconds, for each of the thousands of arrays of a run)."""

    store: Any
    path: str
    shape: tuple
    dtype: np.dtype
    doc: dict
    layout: tuple[Any, int, int]  # (chunk codec or STRINGS, chunk rows, shard rows)


def _stored_array(group, node: str) -> _StoredArray | None:
    """The array at ``node`` below ``group`` read from its document, when it is one _ArrayIn
    reads; None for anything else (strings, another layout, a missing or unreadable document):
    that is opened through zarr, which also names what is wrong with it."""
    path = f"{group.path}/{node}" if group.path else node
    try:
        raw = zarr_internals.store_get(group.store, f"{path}/zarr.json")
    except Exception:
        return None
    if raw is None:
        return None
    text = raw.tobytes()
    known = _DOCUMENTS.get(text)
    if known is None:
        known = _array_from_document(text)
        if len(text) <= _DOCUMENT_MAX_BYTES:
            if len(_DOCUMENTS) >= _DOCUMENTS_MAX:
                _DOCUMENTS.clear()
            _DOCUMENTS[text] = known
    if known is _NOT_OURS:
        return None
    shape, dtype, doc, layout = known
    return _StoredArray(group.store, path, shape, dtype, doc, layout)


# The documents read so far and what they describe: the chunk MSs of a run repeat the same arrays'
# documents (subtables, scalar columns), whose parsing and codec set-up took about 0.2 ms each.
# The chunk codecs are shared: decoding keeps no state in them.
_DOCUMENTS: dict[bytes, Any] = {}
_DOCUMENTS_MAX = 4096
_DOCUMENT_MAX_BYTES = 16 << 10  # ours are 1-2 kB
_NOT_OURS = object()


def _array_from_document(text: bytes) -> Any:
    """(shape, dtype, document, layout) of the array a ``zarr.json`` describes, when _ArrayIn or
    _StringsIn reads it; else _NOT_OURS."""
    try:
        doc = json.loads(text)
        shape = doc["shape"]
        if (doc.get("zarr_format") != 3 or doc.get("node_type") != "array"
                or not isinstance(doc.get("data_type"), str) or doc.get("storage_transformers")
                or doc["chunk_grid"].get("name") != "regular"
                or not all(type(x) is int and x >= 0 for x in shape)):
            return _NOT_OURS
        enc = doc["chunk_key_encoding"]
        if enc.get("name") not in ("default", "v2") or \
                (enc.get("configuration") or {}).get("separator", "/") not in ("/", "."):
            return _NOT_OURS
        if doc["data_type"] == "string":
            dtype = np.dtype(object)
            layout = _strings_layout(doc)
        else:
            dtype = np.dtype(doc["data_type"])
            probe = _StoredArray(None, "", tuple(shape), dtype, doc, (None, 0, 0))
            layout = _codec_from_metadata(probe, doc)
    except Exception:
        return _NOT_OURS
    if layout is None:
        return _NOT_OURS
    return tuple(shape), dtype, doc, layout


_VLEN_UTF8 = {"name": "vlen-utf8", "configuration": {}}


def _strings_layout(doc: dict) -> tuple | None:
    """(STRINGS, chunk rows, shard rows) of a string array as the codec has zarr write it
    (sharded along rows only, whole cells in a chunk, index at the end, chunks of vlen-utf8
    then zstd then crc32c); else None. Cells may have axes (FEED's POLARIZATION_TYPE, HISTORY's
    APP_PARAMS in a DP3-written MS), of length 0 too (zarr's chunk is then 1 long there)."""
    (sh,) = doc["codecs"]
    conf = sh["configuration"]
    le = {"name": "bytes", "configuration": {"endian": "little"}}
    chain = conf["codecs"]
    if (sh["name"] != "sharding_indexed" or len(doc["shape"]) < 1
            or conf.get("index_location", "end") != "end" or conf.get("index_codecs") != [le, {"name": "crc32c"}]
            or len(chain) != 3 or chain[0] != _VLEN_UTF8 or chain[1].get("name") != "zstd"
            or chain[2] != {"name": "crc32c"}):
        return None
    (shard, *shard_cell), (chunk, *chunk_cell) = doc["chunk_grid"]["configuration"]["chunk_shape"], conf["chunk_shape"]
    if type(chunk) is not int or type(shard) is not int or chunk < 1 or shard % chunk:
        return None
    if shard_cell != chunk_cell or chunk_cell != [max(1, n) for n in doc["shape"][1:]]:
        return None
    return STRINGS, chunk, shard


STRINGS = "strings"  # the layout of a _StoredArray read by _StringsIn


def _reader(arr, work: _Work):
    """The reader of an array: a _StoredArray or a numeric zarr array in our layout is read
    shard by shard (_ArrayIn, _StringsIn), anything else through zarr (_ZarrIn)."""
    if isinstance(arr, _StoredArray):
        if arr.layout[0] == STRINGS:
            return _StringsIn(arr, work)
        return _ArrayIn(arr, *arr.layout, work, doc=arr.doc)
    try:
        doc = zarr_internals.array_document(arr)
    except Exception:
        doc = None
    fast = _codec_from_metadata(arr, doc) if doc is not None else None
    return _ArrayIn(arr, *fast, work, doc=doc) if fast else _ZarrIn(arr, work)

