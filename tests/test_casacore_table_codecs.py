"""The codec registry: each codec is one entry, tried on the column types formats/zarr.md lists;
every codec's arrays, written shard by shard by the codec, read back through plain zarr, and
arrays zarr writes read back through the codec's own reader; a new codec is one entry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import zarr
from casacore import tables as ct

from factor_archive.ms.casacore_table import decode_table, encode_table, verify_table, zarr_internals
from factor_archive.ms.casacore_table.codecs import CODECS, CodecSpec, _create, candidates
from factor_archive.ms.casacore_table.pipeline import _Work
from factor_archive.ms.casacore_table.shards import (
    _array_doc,
    _ArrayIn,
    _ArrayOut,
    _Damage,
    _Node,
    _reader,
    _stored_array,
    _StoredArray,
    _ZarrIn,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BLOSC_FAST = ["blosc-shuffle-zstd1", "blosc-bitshuffle-zstd1", "blosc-shuffle-lz4", "blosc-bitshuffle-lz4"]


@pytest.mark.parametrize("dtype, layout, tried, fast", [
    (None, "scalar", ["zstd"], []),
    (bool, "fixed", ["blosc-bitshuffle-zstd", "packbits-zstd"], ["blosc-bitshuffle-zstd1", "blosc-bitshuffle-lz4"]),
    (np.uint8, "scalar", ["zstd", "blosc-bitshuffle-zstd"], ["zstd1", "blosc-bitshuffle-lz4"]),
    (np.int32, "scalar", ["blosc-shuffle-zstd", "zstd", "delta-zstd"], ["blosc-shuffle-zstd1", "blosc-shuffle-lz4"]),
    (np.uint16, "fixed", ["blosc-shuffle-zstd", "zstd", "delta-zstd"], ["blosc-shuffle-zstd1", "blosc-shuffle-lz4"]),
    (np.complex64, "fixed", ["blosc-shuffle-zstd", "blosc-bitshuffle-zstd"], BLOSC_FAST),
    (np.float64, "fixed", ["blosc-shuffle-zstd", "blosc-bitshuffle-zstd"], BLOSC_FAST),
    (np.float64, "scalar", ["blosc-shuffle-zstd", "blosc-bitshuffle-zstd", "delta-zstd"], BLOSC_FAST),
])
def test_candidates_by_column_type_are_the_documented_ones(dtype, layout, tried, fast):
    dt = None if dtype is None else np.dtype(dtype)
    assert candidates(dt, layout) == tried  # the first is the column's default
    assert candidates(dt, layout, fast=True) == tried + fast


def _samples():
    """(label, dtype) for every registered codec and every numeric type it is tried on."""
    by_family = {"bool": [bool], "byte": [np.uint8], "int": [np.int16, np.uint16, np.int32, np.int64],
                 "float": [np.float32, np.complex64, np.complex128], "float64-scalar": [np.float64]}
    out = []
    for label, spec in CODECS.items():
        for family in {**spec.tried_for, **spec.fast_for}:
            out += [(label, np.dtype(t)) for t in by_family.get(family, [])]
    return out


def _values(dtype: np.dtype, shape) -> np.ndarray:
    rng = np.random.default_rng(5)
    if dtype.kind == "b":
        return rng.random(shape) < 0.3
    if dtype.kind in "iu":
        return rng.integers(0, 100, shape).astype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return (np.round(rng.standard_normal(shape) * 8) / 4).astype(dtype)  # delta is exact on these


@pytest.mark.parametrize("label, dtype", _samples(), ids=lambda v: str(v))
def test_every_codec_writes_shards_plain_zarr_reads_and_reads_what_zarr_writes(label, dtype):
    store = zarr.storage.MemoryStore()
    root = zarr.open_group(store, mode="w")
    shape = (57,) if dtype == np.float64 else (57, 3)  # float delta: scalar columns only
    data = _values(dtype, shape)
    dims = ("row",) + tuple(f"x{i}" for i in range(len(shape) - 1))
    # written by the codec, shard by shard (chunks of 4 rows, shards of 12, a partial last one)
    doc, chunks, shards = _array_doc(shape, dtype, 4, 12, label, dims)
    zarr_internals.store_many(store, [("ours/zarr.json", zarr_internals.node_bytes(doc))])
    with _Work() as work:
        out = _ArrayOut(_Node(store, "ours", shape, chunks, shards, label, dtype, doc), work)
        for start in range(0, shape[0], 12):
            out.write(data[start:start + 12])
        work.drain()
        out.close()
    ours = zarr.open_array(store, path="ours", mode="r")
    assert ours.attrs["codec"] == label
    assert ours[:].tobytes() == data.tobytes()
    # written by zarr through the codec's chain, read by the codec's reader
    theirs = _create(root, "theirs", shape, dtype, 4, 12, label, dims)
    theirs[:] = data
    with _Work() as work:
        reader = _reader(theirs, work)
        assert isinstance(reader, _ArrayIn)
        assert reader.read(0, shape[0]).tobytes() == data.tobytes()
        assert reader.read(5, 30).tobytes() == data[5:30].tobytes()


def test_restore_reads_arrays_of_its_layout_from_their_files_and_the_rest_through_zarr(tmp_path, monkeypatch):
    """In a local store, a numeric array laid out as the codec writes it is read from its
    zarr.json and shard files alone, without zarr's event loop, and so is a column of strings
    as zarr writes it; arrays of another layout and absent ones are left to zarr; a shard file
    gone is reported missing."""
    store = zarr.storage.LocalStore(str(tmp_path / "s.zarr"))
    root = zarr.open_group(store, mode="w")
    data = _values(np.dtype(np.int32), (57, 3))
    _create(root, "ours", data.shape, np.dtype(np.int32), 4, 12, "blosc-shuffle-zstd", ("row", "x"))[:] = data
    words = np.array(["a", "", "ø" * 300, "d", "e", "f", "g"], dtype=object)
    _create(root, "words", (7,), None, 2, 4, "zstd", ("row",))[:] = words
    pairs = np.array([["a", "b"], ["c", "d"], ["e", "ø"]], dtype=object)
    _create(root, "table", (3, 2), None, 2, 2, "zstd", ("row", "x"))[:] = pairs  # strings of two axes
    _create(root, "none", (3, 0), None, 2, 2, "zstd", ("row", "x"))  # cells of no strings (HISTORY's CLI_COMMAND)
    root.create_array("plain", shape=data.shape, dtype=np.int32, chunks=(4, 3))[:] = data  # not sharded

    def no_event_loop(coro):
        coro.close()
        raise AssertionError("went through zarr's event loop")

    monkeypatch.setattr(zarr_internals, "_sync", no_event_loop)
    known = _stored_array(root, "ours")
    assert isinstance(known, _StoredArray) and known.shape == data.shape and known.dtype == np.int32
    strings = _stored_array(root, "words")
    assert isinstance(strings, _StoredArray) and strings.shape == (7,)
    table, none = _stored_array(root, "table"), _stored_array(root, "none")
    assert isinstance(table, _StoredArray) and isinstance(none, _StoredArray)
    assert [_stored_array(root, name) for name in ("plain", "absent")] == [None, None]
    with _Work() as work:
        assert _reader(table, work).read(0, 3).tolist() == pairs.tolist()
        assert _reader(table, work).read(1, 3).tolist() == pairs[1:].tolist()
        assert _reader(none, work).read(0, 3).shape == (3, 0)
        assert _reader(known, work).read(0, 57).tobytes() == data.tobytes()
        assert list(_reader(strings, work).read(0, 7)) == list(words)
        assert list(_reader(strings, work).read(3, 6)) == list(words[3:6])
        assert [(a, b, list(v)) for a, b, v, _buf, _damage in _reader(strings, work).blocks()] == \
            [(0, 4, list(words[:4])), (4, 7, list(words[4:]))]
        (tmp_path / "s.zarr" / "ours" / "c" / "1" / "0").unlink()
        with pytest.raises(_Damage, match="missing"):
            _reader(known, work).read(0, 57)
        (tmp_path / "s.zarr" / "words" / "c" / "1").unlink()
        assert [str(d) for *_rest, d in _reader(strings, work).blocks()] == ["None", "4-6: missing"]
    monkeypatch.undo()
    with _Work() as work:
        assert isinstance(_reader(root["plain"], work), _ZarrIn)


def test_a_new_codec_is_one_registry_entry(tmp_path, monkeypatch):
    """Registered as the only float codec, a blosc chain without shuffle is what a float
    column gets; the table restores, verifies, and plain zarr reads the column."""
    registry = {label: dataclasses.replace(spec, tried_for={f: r for f, r in spec.tried_for.items() if f != "float"},
                                           fast_for={f: r for f, r in spec.fast_for.items() if f != "float"})
                for label, spec in CODECS.items()}
    registry["blosc-noshuffle-zstd"] = CodecSpec("blosc-noshuffle-zstd", ("blosc", "zstd", 3, "noshuffle"),
                                                 tried_for={"float": 0}, seconds_per_gb=6.0)
    monkeypatch.setattr("factor_archive.ms.casacore_table.codecs.CODECS", registry)
    src = tmp_path / "t.tab"
    with ct.table(str(src), ct.maketabdesc([ct.makearrcoldesc("D", 0.0, shape=[4], options=4, valuetype="float")]),
                  nrow=100, ack=False) as t:
        t.putcol("D", np.arange(400, dtype=np.float32).reshape(100, 4))
    g = zarr.open_group(zarr.storage.LocalStore(str(tmp_path / "s.zarr")), mode="w").create_group("T")
    info = encode_table(src, g)
    assert info["codecs"] == {"D": "blosc-noshuffle-zstd"}
    blosc = zarr.open_array(g.store, path="T/D", mode="r").metadata.to_dict()["codecs"][0]["configuration"]
    assert blosc["codecs"][1] == {"name": "blosc", "configuration": {
        "typesize": 4, "cname": "zstd", "clevel": 3, "shuffle": "noshuffle", "blocksize": 0}}
    assert zarr.open_array(g.store, path="T/D", mode="r")[:].tobytes() == np.arange(400, dtype=np.float32).tobytes()
    assert verify_table(g, name="T") == []
    decode_table(g, tmp_path / "back.tab")
    with ct.table(str(tmp_path / "back.tab"), ack=False) as t:
        assert t.getcol("D").tobytes() == np.arange(400, dtype=np.float32).tobytes()


def test_the_tables_of_a_run_choose_each_column_kind_codec_once(tmp_path, monkeypatch):
    """Within remembered_codec_choices (archivefactor opens it around a run) the second MS of
    the same shape tries no codec again and stores each column with the first one's choice."""
    from factor_archive.ms.casacore_table import codec_choice, remembered_codec_choices
    from factor_archive.ms.synth import write_ms

    tried = []
    real = codec_choice._trials
    monkeypatch.setattr(codec_choice, "_trials", lambda cands, *a, **kw: tried.extend(cands) or real(cands, *a, **kw))
    for i in range(2):
        write_ms(tmp_path / f"c{i}.ms", start_time=4.87e9 + i * 1000, ntimes=6, interval=10.0,
                 chan_freqs=120e6 + np.arange(4) * 1e5, chan_width=1e5, nant=3)
    root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    with remembered_codec_choices():
        first = encode_table(tmp_path / "c0.ms", root.create_group("c0"))
        tried_first, tried[:] = list(tried), []
        second = encode_table(tmp_path / "c1.ms", root.create_group("c1"))
    assert tried_first and tried == []
    assert second["codecs"] == first["codecs"]
    assert {n: s["codecs"] for n, s in second["subtables"].items()} == \
        {n: s["codecs"] for n, s in first["subtables"].items()}
    assert verify_table(root["c1"], name="c1") == []
    # outside it, every table tries again
    encode_table(tmp_path / "c1.ms", root.create_group("again"))
    assert tried


def test_a_table_encoded_with_the_choices_its_client_decided_tries_nothing_and_is_stored_as_in_one_process(
        tmp_path, monkeypatch):
    """On a cluster the client decides the run's codecs (decide_codecs, table after table in plan
    order) and a worker encodes a table with the choices decided by then: it tries no codec and
    stores the table exactly as one process encoding the whole run does."""
    from factor_archive.ms.casacore_table import codec_choice, decide_codecs, remembered_codec_choices
    from factor_archive.ms.synth import write_ms

    for i in range(2):
        write_ms(tmp_path / f"c{i}.ms", start_time=4.87e9 + i * 1000, ntimes=6 + 4 * i, interval=10.0,
                 chan_freqs=120e6 + np.arange(4) * 1e5, chan_width=1e5, nant=3)
    tables = [tmp_path / "c0.ms", tmp_path / "c1.ms"]
    with remembered_codec_choices():                        # one process archives the run
        one_process = [encode_table(t, zarr.open_group(zarr.storage.MemoryStore(), mode="w")) for t in tables]
    with remembered_codec_choices():                        # a cluster's client
        decided = [decide_codecs(t) for t in tables]
    assert decided[0].items() <= decided[1].items()         # later tables keep the earlier choices

    tried = []
    real = codec_choice._trials
    monkeypatch.setattr(codec_choice, "_trials", lambda cands, *a, **kw: tried.extend(cands) or real(cands, *a, **kw))
    with remembered_codec_choices(decided[1]):              # the worker given the second table
        on_worker = encode_table(tables[1], zarr.open_group(zarr.storage.MemoryStore(), mode="w"))
    assert tried == []
    assert on_worker == one_process[1]                      # codecs, stored bytes, checksums


def test_a_float_column_the_client_gave_the_delta_filter_is_not_tried_again_on_the_worker(tmp_path, monkeypatch):
    """Whether the float delta filter is lossless depends on a column's values, so one process
    tries it on every table; on a cluster the client's check of the table stands, and every
    attempt at the table writes the same bytes."""
    from factor_archive.ms.casacore_table import codec_choice, decide_codecs, remembered_codec_choices

    tables = []
    for i in range(2):
        tables.append(tmp_path / f"t{i}.tab")
        with ct.table(str(tables[-1]), ct.maketabdesc([ct.makescacoldesc("TIME", 0.0)]), nrow=20000, ack=False) as t:
            t.putcol("TIME", 4.87e9 + 1000 * i + 10.0 * np.arange(20000))
    with remembered_codec_choices():                        # one process archives the run
        one_process = [encode_table(t, zarr.open_group(zarr.storage.MemoryStore(), mode="w")) for t in tables]
    assert [info["codecs"] for info in one_process] == [{"TIME": "delta-zstd"}] * 2
    with remembered_codec_choices():                        # a cluster's client
        decided = [decide_codecs(t) for t in tables]

    monkeypatch.setattr(codec_choice, "_trials", lambda *a, **kw: pytest.fail("a codec tried on the worker"))
    attempts = []
    for _attempt in range(2):                               # a worker killed, the task run again
        store = zarr.storage.MemoryStore()
        with remembered_codec_choices(decided[1]):
            assert encode_table(tables[1], zarr.open_group(store, mode="w")) == one_process[1]
        attempts.append({k: bytes(v.to_bytes()) for k, v in store._store_dict.items()})
    assert attempts[0] == attempts[1]                       # the same keys, the same bytes


@pytest.mark.parametrize("n", [1, 255, 256, 300, 65791, 65792, 70000, 1 << 20])
def test_a_zstd_chunk_is_read_by_the_size_its_frame_declares(n):
    """A zstd chunk whose frame declares the chunk's size is decompressed straight into it; one
    that declares another size (a damaged or hostile archive) is an error, not stale bytes."""
    import numcodecs

    from factor_archive.ms.casacore_table.codecs import _BadChunk, _ChunkCodec, _zstd_content_size

    values = (np.arange(n, dtype=np.int64) * 7919 % 251).astype(np.uint8)
    for level in (1, 5, 19):
        frame = np.frombuffer(numcodecs.Zstd(level=level).encode(values), np.uint8)
        assert _zstd_content_size(frame) == n
    codec = _ChunkCodec(np.dtype(np.uint8), (n,), None, ("zstd", 5))
    data, crc = codec.encode(values)
    stored = np.frombuffer(data + crc.to_bytes(4, "little"), np.uint8)
    out = np.full(n, 99, np.uint8)
    codec._codec = None  # not through the codec object: straight into ``out``
    codec.decode(stored, out)
    assert out.tobytes() == values.tobytes()
    longer = _ChunkCodec(np.dtype(np.uint8), (n + 8,), None, ("zstd", 5))
    with pytest.raises(_BadChunk):
        longer.decode(stored, np.full(n + 8, 99, np.uint8))
