"""The codecs of the table group: each one is a label (the array attribute ``codec``), the zarr
codec chain it stands for, and the same chain applied to one inner chunk at a time (``_ChunkCodec``,
so shards are written and read without zarr's per-chunk machinery).
"""

from __future__ import annotations

import math
import struct
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .schema import ColumnSchema

if TYPE_CHECKING:
    import zarr

LEVEL = 5  # zstd level (and blosc clevel) of the default codecs


@dataclass(frozen=True)
class CodecSpec:
    """One codec of the table group: its label (the array attribute ``codec``), its chain
    (optional numcodecs filter, ``bytes`` little endian, one compressor, ``crc32c``), and the
    columns it is tried on.

    ``compressor`` is ``("blosc", cname, clevel, shuffle)`` or ``("zstd", level)``; ``filter``
    ``"packbits"`` or ``"delta"`` (numcodecs filters: not in the zarr v3 specification, so they
    must beat the best specification codec clearly, see codec_choice). ``tried_for`` maps a column
    family (see :func:`column_families`) to the codec's rank among that family's candidates
    (rank 0 is the family's default); ``fast_for`` likewise for the quick codecs, tried only on
    columns big enough to choose by speed.

    ``seconds_per_gb``: the codec's CPU cost, encode + decode, per GB of raw values, a constant
    so that the choice (see codec_choice) depends on the data and the settings only, never on
    how busy the machine was. Measured with benchmarks/codec_speeds.py (the median over samples
    of a DP3 MS's columns of 8 MiB or more, one core of the development machine); real costs vary
    with the data (blosc zstd level 5 took 2-30 s/GB), the model only ranks a big column's
    candidates.
    """

    label: str
    compressor: tuple
    filter: str | None = None
    tried_for: dict[str, int] = field(default_factory=dict)
    fast_for: dict[str, int] = field(default_factory=dict)
    seconds_per_gb: float = field(kw_only=True)

    @property
    def numcodecs(self) -> bool:
        return self.filter is not None

    @property
    def exact_on_floats(self) -> bool:
        """False when the chain may not give float values back bit for bit (delta: cumsum of
        rounded differences), so each column must be checked before it is chosen."""
        return self.filter != "delta"

    def zarr_codecs(self, dtype: np.dtype | None) -> dict:
        """The ``filters`` and ``compressors`` arguments of zarr's create_array."""
        from zarr import codecs as zc

        crc = zc.Crc32cCodec()
        if self.compressor[0] == "blosc":
            _, cname, level, shuffle = self.compressor
            if dtype is None:
                raise ValueError(f"{self.label} is not a codec for strings")
            compressor: Any = zc.BloscCodec(cname=cname, clevel=level, shuffle=shuffle, typesize=_component(dtype))
        else:
            compressor = zc.ZstdCodec(level=self.compressor[1])
        filters: tuple = ()
        if self.filter is not None:
            if dtype is None:
                raise ValueError(f"{self.label} is not a codec for strings")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Numcodecs codecs are not in the Zarr version 3 specification"
                filters = (zc.PackBits(),) if self.filter == "packbits" else (zc.Delta(dtype=dtype.str),)
        return {"filters": filters, "compressors": (compressor, crc)}

    def chunk_codec(self, dtype: np.dtype, chunk_shape: tuple) -> _ChunkCodec:
        return _ChunkCodec(dtype, chunk_shape, self.filter, self.compressor)


# The registry: adding a codec is one entry here (a chain of the form above).
CODECS: dict[str, CodecSpec] = {spec.label: spec for spec in (
    CodecSpec("blosc-shuffle-zstd", ("blosc", "zstd", LEVEL, "shuffle"), tried_for={"int": 0, "float": 0},
              seconds_per_gb=13.0),
    CodecSpec("blosc-bitshuffle-zstd", ("blosc", "zstd", LEVEL, "bitshuffle"),
              tried_for={"bool": 0, "byte": 1, "float": 1}, seconds_per_gb=7.6),
    CodecSpec("blosc-shuffle-zstd1", ("blosc", "zstd", 1, "shuffle"), fast_for={"int": 0, "float": 0},
              seconds_per_gb=4.0),
    CodecSpec("blosc-bitshuffle-zstd1", ("blosc", "zstd", 1, "bitshuffle"), fast_for={"bool": 0, "float": 1},
              seconds_per_gb=3.9),
    CodecSpec("blosc-shuffle-lz4", ("blosc", "lz4", 9, "shuffle"), fast_for={"int": 1, "float": 2},
              seconds_per_gb=2.3),
    CodecSpec("blosc-bitshuffle-lz4", ("blosc", "lz4", 9, "bitshuffle"),
              fast_for={"bool": 1, "byte": 1, "float": 3}, seconds_per_gb=2.2),
    CodecSpec("packbits-zstd", ("zstd", LEVEL), "packbits", tried_for={"bool": 1}, seconds_per_gb=1.0),
    CodecSpec("delta-zstd", ("zstd", LEVEL), "delta", tried_for={"int": 2, "float64-scalar": 2},
              seconds_per_gb=1.8),
    CodecSpec("zstd", ("zstd", LEVEL), tried_for={"string": 0, "byte": 0, "int": 1}, seconds_per_gb=4.6),
    CodecSpec("zstd1", ("zstd", 1), fast_for={"byte": 0}, seconds_per_gb=3.5),
)}


def model_seconds(label: str, nbytes: int) -> float:
    """The CPU seconds the speed model gives codec ``label`` to encode and decode ``nbytes``
    of raw values (see CodecSpec.seconds_per_gb)."""
    return codec(label).seconds_per_gb * nbytes / 1e9


def codec(label: str) -> CodecSpec:
    try:
        return CODECS[label]
    except KeyError:
        raise ValueError(f"unknown codec {label!r}") from None


def column_families(dtype: np.dtype | None, layout: str) -> tuple[str, ...]:
    """The families whose candidates a column of this type and layout is tried with: strings
    (and records), bool, byte (uint8), int, float (float and complex), and float64-scalar (TIME
    and the like, which may also try delta)."""
    if dtype is None:
        return ("string",)
    if dtype.kind == "b":
        return ("bool",)
    if dtype.itemsize == 1:
        return ("byte",)
    if dtype.kind in "iu":
        return ("int",)
    if layout == "scalar" and dtype == np.float64:
        return ("float", "float64-scalar")
    return ("float",)


def candidates(dtype: np.dtype | None, layout: str, fast: bool = False) -> list[str]:
    """Codec labels a column is tried with, its default first; ``fast`` adds the quick ones."""
    fams = column_families(dtype, layout)

    def ranked(attr: str) -> list[str]:
        found = [(min(r for f, r in getattr(s, attr).items() if f in fams), s.label)
                 for s in CODECS.values() if any(f in fams for f in getattr(s, attr))]
        return [label for _rank, label in sorted(found)]

    return ranked("tried_for") + (ranked("fast_for") if fast else [])


def _candidates(col: ColumnSchema, fast: bool = False) -> list[str]:
    return candidates(col.dtype, col.layout, fast)


def _component(dtype: np.dtype) -> int:
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize


class _BadChunk(Exception):
    pass


class _ChunkCodec:
    """One inner chunk <-> its stored bytes, exactly as the zarr codec chain does it.

    The chain (spec): optional filter (``numcodecs.packbits`` / ``numcodecs.delta``), ``bytes``
    (little endian), one compressor (``blosc`` or ``zstd``), ``crc32c``. Built from a label when
    encoding and from the array's metadata when decoding, so any chain of that form is read.
    """

    def __init__(self, dtype: np.dtype, chunk_shape: tuple, filt: str | None, comp: tuple):
        import numcodecs

        self.dtype = np.dtype(dtype)
        self.chunk_shape = tuple(chunk_shape)
        self.nbytes = math.prod(self.chunk_shape) * self.dtype.itemsize
        self.filt = filt
        self.comp = comp
        if comp[0] == "blosc":
            _, cname, level, shuffle = comp
            self._codec = numcodecs.Blosc(cname=cname, clevel=level, shuffle={
                "noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[shuffle])
        else:
            self._codec = numcodecs.Zstd(level=comp[1])
        if filt == "packbits":
            self._filter = numcodecs.PackBits()
        elif filt == "delta":
            self._filter = numcodecs.Delta(dtype=self.dtype.str)
        else:
            self._filter = None

    @classmethod
    def from_label(cls, label: str, dtype: np.dtype, chunk_shape: tuple) -> _ChunkCodec:
        return codec(label).chunk_codec(dtype, chunk_shape)

    def encode(self, rows: np.ndarray) -> tuple[bytes, int]:
        """(compressed bytes, their crc32c) of ``rows`` padded with zeros to the chunk shape."""
        import google_crc32c

        if rows.shape != self.chunk_shape:
            full = np.zeros(self.chunk_shape, self.dtype)
            full[:len(rows)] = rows
            rows = full
        flat = np.ascontiguousarray(rows).reshape(-1)
        if self._filter is not None:
            flat = self._filter.encode(flat)
        if self.comp[0] == "blosc":  # typesize: one real component
            data = self._codec.encode(flat.view(f"u{_component(self.dtype)}"))
        else:
            data = self._codec.encode(flat)
        return data, google_crc32c.value(data)

    def decode(self, stored: np.ndarray, out: np.ndarray) -> None:
        """Check the crc32c of one stored chunk and decompress it into ``out`` (a whole chunk)."""
        import google_crc32c
        import numcodecs.blosc

        if len(stored) < 4:
            raise _BadChunk("chunk too short")
        body = stored[:-4]
        if google_crc32c.value(body) != int.from_bytes(stored[-4:].tobytes(), "little"):
            raise _BadChunk("crc32c checksum mismatch")
        target = out.reshape(-1).view(np.uint8)
        if self.comp[0] == "blosc" and self._filter is None:
            if len(body) < 16:
                raise _BadChunk("blosc header missing")
            nbytes, _block, cbytes = struct.unpack_from("<III", body[:16].tobytes(), 4)
            if nbytes != self.nbytes or cbytes != len(body):
                raise _BadChunk("blosc sizes do not match the chunk")
            numcodecs.blosc.decompress(body, target)
            return
        if self.comp[0] == "zstd" and self._filter is None and self.nbytes and \
                _zstd_content_size(body) == self.nbytes:
            import numcodecs.zstd

            try:  # straight into the chunk: no buffer to allocate, fault in and copy
                numcodecs.zstd.decompress(body, target)
            except Exception as e:
                raise _BadChunk(f"cannot decompress: {e}") from None
            return
        try:
            raw = np.frombuffer(self._codec.decode(body), np.uint8)
        except Exception as e:
            raise _BadChunk(f"cannot decompress: {e}") from None
        if self._filter is not None:
            size = self.nbytes // self.dtype.itemsize
            if self.filt == "packbits":
                if len(raw) != 1 + -(-size // 8):
                    raise _BadChunk("packed size does not match the chunk")
                raw = self._filter.decode(raw).view(np.uint8)
            else:
                if len(raw) != self.nbytes:
                    raise _BadChunk("size does not match the chunk")
                raw = np.asarray(self._filter.decode(raw.view(self.dtype))).reshape(-1).view(np.uint8)
        if len(raw) != self.nbytes:
            raise _BadChunk("size does not match the chunk")
        target[:] = raw


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_content_size(body: np.ndarray) -> int | None:
    """The decompressed size a zstd frame declares in its header (RFC 8878, 3.1.1.1), or None:
    a frame that declares none, or another, is decompressed into a buffer of its own and its size
    compared after."""
    head = body[:18].tobytes()
    if len(head) < 6 or head[:4] != _ZSTD_MAGIC:
        return None
    descriptor = head[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    at = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(head) < at + size:
        return None
    value = int.from_bytes(head[at:at + size], "little")
    return value + 256 if size == 2 else value


def _codec_from_metadata(arr, md: dict | None = None) -> tuple[_ChunkCodec, int, int] | None:
    """(chunk codec, chunk rows, shard rows) when the array is stored as this module writes
    (sharded along rows only, index at the end with bytes + crc32c, a chain _ChunkCodec
    reads); None otherwise (it is then read through zarr). ``md``: the array's document, when
    the caller has it already (making it costs a serialisation)."""
    import sys

    from . import zarr_internals

    try:  # the stored JSON document, as the zarr v3 spec describes it
        if md is None:
            md = zarr_internals.array_document(arr)
        dtype = np.dtype(arr.dtype)
    except Exception:
        return None
    if sys.byteorder != "little" or dtype.kind not in "biufc" or len(md.get("codecs", ())) != 1:
        return None
    sh = md["codecs"][0]
    if sh.get("name") != "sharding_indexed":
        return None
    conf = sh.get("configuration", {})
    shape = tuple(arr.shape)
    shard = tuple(md["chunk_grid"]["configuration"]["chunk_shape"])
    chunk = tuple(conf.get("chunk_shape", ()))
    cell = tuple(max(1, s) for s in shape[1:])
    if (len(shard) != len(shape) or len(chunk) != len(shape) or shard[1:] != cell
            or chunk[1:] != cell or chunk[0] < 1 or shard[0] % chunk[0]):
        return None
    le = {"name": "bytes", "configuration": {"endian": "little"}}
    if conf.get("index_location", "end") != "end" or conf.get("index_codecs") != [le, {"name": "crc32c"}]:
        return None
    chain = list(conf.get("codecs", []))
    if len(chain) < 3 or chain[-1] != {"name": "crc32c"}:
        return None
    comp, ser, filters = chain[-2], chain[-3], chain[:-3]
    if ser.get("name") != "bytes" or (ser.get("configuration") or {}).get("endian", "little") not in (
            "little", None):
        return None
    cc = comp.get("configuration") or {}
    c: tuple
    if comp.get("name") == "blosc":
        c = ("blosc", cc.get("cname"), int(cc.get("clevel", 5)), cc.get("shuffle"))
        if c[3] not in ("noshuffle", "shuffle", "bitshuffle") or cc.get("blocksize", 0) not in (0, None):
            return None
    elif comp.get("name") == "zstd":
        c = ("zstd", int(cc.get("level", 0)))
    else:
        return None
    filt = None
    if len(filters) > 1:
        return None
    if filters:
        f = filters[0]
        fc = f.get("configuration") or {}
        if f.get("name") == "numcodecs.packbits" and not fc and dtype.kind == "b":
            filt = "packbits"
        elif (f.get("name") == "numcodecs.delta" and fc.get("dtype") == dtype.str
              and fc.get("astype", dtype.str) == dtype.str):
            filt = "delta"
        else:
            return None
    try:
        return _ChunkCodec(dtype, chunk, filt, c), chunk[0], shard[0]
    except Exception:
        return None


def _fill(dtype):
    return "" if dtype is None else np.zeros((), dtype).item()


def _create(group: zarr.Group, name: str, shape, dtype, chunk0: int, shard0: int, label: str,
            dims, attrs: dict | None = None):
    shape = tuple(int(s) for s in shape)
    chunks = (max(1, chunk0),) + tuple(max(1, s) for s in shape[1:])
    shards = (max(1, shard0),) + chunks[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return group.create_array(
            name, shape=shape, dtype=str if dtype is None else dtype, chunks=chunks, shards=shards,
            fill_value=_fill(dtype), dimension_names=tuple(dims), config={"write_empty_chunks": True},
            attributes={"codec": label, **(attrs or {})}, **codec(label).zarr_codecs(dtype))

