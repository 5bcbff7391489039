"""User story: a Factor run is moved to a new working directory.

Factor (Python 2) saved its Band and Direction objects as pickles in ``state/``. We must read
them without unpickling (archives come from strangers), rewrite the paths in them, and hand back
files the Python 2 Factor still loads: same protocol, same string types, numpy data untouched.

``pickle.loads`` appears here only on bytes the test itself produced.
"""

from __future__ import annotations

import os
import pickle
import random
import struct

import numpy as np
import pytest

from factor_archive.run.state import UnsafePickleError, dumps_py2, load_state, rewrite_strings

OLD = "/data/wdir"
NEW = "/mnt/archive/restored runs/factor"
BAND = "Band_120.21MHz"


def band_state(wd: str = OLD) -> dict:
    chunks = [f"{wd}/chunks/{BAND}/L123456_SB000_uv.dppp.pre-cal_chunk{i}.ms" for i in range(3)]
    return {
        "files": chunks,
        "msnames": [c.rsplit("/", 1)[1] for c in chunks],
        "working_dir": wd,
        "chunks_dir": f"{wd}/chunks/{BAND}",
        "save_file": f"{wd}/state/{BAND}_save.pkl",
        "skymodel_dirindep": "/data/ms/L123456_SB000_uv.dppp.pre-cal.merge",  # outside the wd
        "dirindparmdbs": [c + "/instrument" for c in chunks],
        "name": BAND,
        "numMS": 3,
        "freq": np.float64(120212402.34375),
        "nchan": np.int32(20),
        "chan_freqs_hz": np.linspace(1.2e8, 1.21e8, 20),
        "chan_width_hz": np.float64(48828.125),
        "missing_channels": [3, 7],
        "ra": 123.40002, "dec": 56.70001, "diam": 30.75,
        "mean_el_rad": 0.9341, "fwhm_deg": 4.51,
        "has_sub_data": True, "has_sub_data_new": False,
        "sumsamples": 123456,
        "minSamplesPerFile": 4294967295,  # beyond 32 bits: py2 writes it as an INT line even at protocol 2
        "starttime": np.float64(4871282392.0), "endtime": np.float64(4871289592.0),
        "timepersample": 4.00556032,
    }


def direction_state(wd: str = OLD) -> dict:
    res = f"{wd}/results/facetimage/facet1/mapfiles"
    return {
        "name": "facet1",
        "ra": 123.1, "dec": 56.2,
        "vertices": [np.array([123.5, 122.9, 122.7, 123.6]), np.array([56.0, 56.1, 56.5, 56.4])],
        "width": 1.2,
        "is_patch": False, "contains_target": True,
        "working_dir": wd,
        "save_file": f"{wd}/state/facet1_save.pkl",
        "vertices_file": f"{wd}/state/facet1_save.pkl",
        "region_selfcal": f'["{wd}/regions/x.rgn"]',
        "region_field": "[]",
        "peel_skymodel": None,
        "facet_image_mapfile": {
            "facetimage": f"{res}/final_image.mapfile",
            "facetimage_c0": f"{res}/final_image_c0.mapfile",
        },
        "cleanup_mapfiles": [f"{res}/prepare_imaging_data.mapfile", f"{res}/concat.mapfile"],
        "image_data_mapfile": f"{res}/imaging_input.mapfile",
        "concat_data_mapfile": "concat_data.output.mapfile",  # not a path
        "started_operations": ["facetselfcal", "facetimage"],
        "completed_operations": ["facetselfcal"],
        "hosts": ["localhost"],
        "cal_imsize": 512, "robust_facet": -0.25, "solint_time_p": 1,
        "flag_abstime": None,
        "notes": "it's Factor's",       # a quote: py2 repr switches to double quotes
        "weird": "tab\there\x00\xe9\\",  # escapes py2 repr must reproduce
    }


def relocate(s: str) -> str | None:
    """What the restore tool does: move paths under the old wd (also inside CASA-list strings)."""
    return s.replace(OLD, NEW) if OLD in s else None


def relocated(obj):
    if isinstance(obj, str):
        return relocate(obj) or obj
    if isinstance(obj, list):
        return [relocated(x) for x in obj]
    if isinstance(obj, dict):
        return {relocated(k): relocated(v) for k, v in obj.items()}
    return obj


def all_strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [s for x in obj for s in all_strings(x)]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in all_strings(k) + all_strings(v)]
    return []


def assert_same(a, b):
    """Equal values and equal types, numpy dtypes and layouts included."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


STATES = {"band": band_state, "direction": direction_state}


# ---------------------------------------------------------------- reading what Factor wrote

@pytest.mark.parametrize("protocol", [0, 2])
@pytest.mark.parametrize("kind", sorted(STATES))
def test_state_files_load_as_plain_data(kind, protocol):
    state = STATES[kind]()
    data = dumps_py2(state, protocol)

    loaded = load_state(data)

    assert_same(loaded, state)
    # CPython's own reader (on our own bytes only) sees exactly the same thing.
    assert_same(pickle.loads(data, encoding="latin1"), loaded)


def test_protocol_0_dict_as_python2_wrote_it():
    data = b"(dp0\nS'working_dir'\np1\nS'/data/wdir'\np2\ns."
    assert load_state(data) == {"working_dir": "/data/wdir"}
    assert dumps_py2({"working_dir": "/data/wdir"}, 0) == data

    new, n = rewrite_strings(data, lambda s: "/new" if s == "/data/wdir" else None)
    assert (new, n) == (b"(dp0\nS'working_dir'\np1\nS'/new'\np2\ns.", 1)


# Hand-written the way Python 2.7 pickle + numpy 1.x lay out an array and a scalar at protocol 0:
# the raw data is a py2 str whose repr escapes non-printable bytes, bools are I01/I00.
PY2_PROTO0_ARRAY = (
    b"(dp0\nS'chan_freqs_hz'\np1\n"
    b"cnumpy.core.multiarray\n_reconstruct\np2\n(cnumpy\nndarray\np3\n(I0\ntp4\nS'b'\np5\ntp6\nRp7\n"
    b"(I1\n(I2\ntp8\ncnumpy\ndtype\np9\n(S'f8'\np10\nI0\nI1\ntp11\nRp12\n"
    b"(I3\nS'<'\np13\nNNNI-1\nI-1\nI0\ntp14\nb"
    b"I00\nS'\\x00\\x00\\x00\\x00\\x00\\x00\\xf8?\\x00\\x00\\x00\\x00\\x00\\x00\\x00@'\np15\ntp16\nb"
    b"sS'freq'\np17\ncnumpy.core.multiarray\nscalar\np18\n(g12\nS'\\x00\\x00\\x00\\x00\\x00\\x00\\x04@'\n"
    b"p19\ntp20\nRp21\ns."
)

# The same layout at protocol 2 (Direction.vertices): globals, dtype and 'b' come back via BINGET.
PY2_PROTO2_VERTICES = (
    b"\x80\x02}q\x00U\x08verticesq\x01]q\x02("
    b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85q\x05U\x01bq\x06\x87q\x07Rq\x08"
    b"(K\x01K\x02\x85q\tcnumpy\ndtype\nq\nU\x02f8q\x0bK\x00K\x01\x87q\x0cRq\r"
    b"(K\x03U\x01<q\x0eNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0fb"
    b"\x89U\x10\x00\x00\x00\x00\x00\x00%@\x00\x00\x00\x00\x00\x00&@q\x10tq\x11b"
    b"h\x03h\x04K\x00\x85q\x12h\x06\x87q\x13Rq\x14"
    b"(K\x01K\x02\x85q\x15h\r\x89U\x10\x00\x00\x00\x00\x00 I@\x00\x00\x00\x00\x00\x80I@q\x16tq\x17b"
    b"es."
)


def test_numpy_data_as_python2_wrote_it():
    d = load_state(PY2_PROTO0_ARRAY)
    assert list(d) == ["chan_freqs_hz", "freq"]
    assert d["chan_freqs_hz"].dtype == np.float64 and d["chan_freqs_hz"].tolist() == [1.5, 2.0]
    assert type(d["freq"]) is np.float64 and d["freq"] == 2.5

    v = load_state(PY2_PROTO2_VERTICES)["vertices"]
    assert [a.tolist() for a in v] == [[10.5, 11.0], [50.25, 51.0]]

    # Our writer produces exactly these bytes, and CPython agrees on the values.
    assert dumps_py2({"vertices": [np.array([10.5, 11.0]), np.array([50.25, 51.0])]}, 2) == PY2_PROTO2_VERTICES
    for data in (PY2_PROTO0_ARRAY, PY2_PROTO2_VERTICES):
        assert_same(pickle.loads(data, encoding="latin1"), load_state(data))


def test_cpickle_memo_numbering_and_big_endian_arrays_also_load():
    # cPickle numbers its memo from 1; an array may be stored big-endian or in Fortran order.
    data = b"(dp1\nS'a'\np2\n(lp3\nI1\naL12345678901234567890L\nag2\nasS'b'\np4\nI01\ns."
    assert load_state(data) == {"a": [1, 12345678901234567890, "a"], "b": True}

    for arr in (np.arange(4, dtype=">i4"), np.asfortranarray(np.arange(6.0).reshape(2, 3)),
                np.array([b"ab", b"cd"]), np.zeros((0, 3)), np.array(7.0)):
        for protocol in (0, 2):
            got = load_state(dumps_py2({"x": arr}, protocol))["x"]
            assert got.dtype == arr.dtype and got.shape == arr.shape
            assert np.array_equal(got, arr) and got.flags.f_contiguous == arr.flags.f_contiguous


# ---------------------------------------------------------------- relocating

@pytest.mark.parametrize("protocol", [0, 2])
@pytest.mark.parametrize("kind", sorted(STATES))
def test_relocation_changes_only_the_paths(kind, protocol):
    state = STATES[kind]()
    data = dumps_py2(state, protocol)
    seen: list[str] = []

    def fn(s):
        seen.append(s)
        return relocate(s)

    new, n = rewrite_strings(data, fn)

    # fn saw every string of the state (keys too) and nothing else: no dtype names, no array
    # data. Equal strings that were one object (interned names) are one memoized opcode.
    assert set(seen) == set(all_strings(state)) and len(seen) <= len(all_strings(state))
    assert n == sum(OLD in s for s in all_strings(state))
    # Same protocol, same opcode families: byte-identical to what Python 2 writes for the
    # relocated state, so array data and every other byte are untouched.
    assert new[:2] == data[:2]
    assert new == dumps_py2(relocated(state), protocol)
    expected = relocated(state)
    assert_same(load_state(new), expected)
    assert_same(pickle.loads(new, encoding="latin1"), expected)


def test_short_binstring_grows_to_binstring():
    data = dumps_py2({"working_dir": OLD, "files": [OLD + "/chunks/a.ms"]}, 2)
    assert b"U\n" + OLD.encode() in data
    long_wd = "/x" * 200

    new, n = rewrite_strings(data, lambda s: s.replace(OLD, long_wd) if OLD in s else None)

    assert n == 2
    assert b"T" + struct.pack("<i", len(long_wd)) + long_wd.encode() in new
    assert load_state(new) == {"working_dir": long_wd, "files": [long_wd + "/chunks/a.ms"]}
    assert pickle.loads(new, encoding="latin1") == load_state(new)


def test_array_data_is_never_offered_to_fn():
    # Raw data that happens to spell the old wd, and an fn that would clobber any string.
    sneaky = np.frombuffer(b"/data/wdir/state", dtype="<f8").copy()
    state = {"vertices": [sneaky, sneaky.copy()], "freq": np.float64(1.0), "path": OLD}
    for protocol in (0, 2):
        data = dumps_py2(state, protocol)
        new, n = rewrite_strings(data, lambda s: s + "!")
        loaded = load_state(new)
        assert n == 4  # 'vertices', 'freq', 'path' and OLD
        assert loaded["path!"] == OLD + "!"
        assert loaded["vertices!"][0].tobytes() == b"/data/wdir/state"
        assert loaded["freq!"] == 1.0


def test_unicode_values_stay_unicode():
    # Python 2 unicode (rare in Factor): UNICODE at protocol 0, BINUNICODE at protocol 2.
    p0 = b"(dp0\nS'region_field'\np1\nV/data/wdir/r\\u00e9gion.rgn\np2\ns."
    new, n = rewrite_strings(p0, relocate)
    assert n == 1 and new.startswith(b"(dp0\nS'region_field'\np1\nV" + NEW.encode())
    assert load_state(new) == {"region_field": NEW + "/r\xe9gion.rgn"}

    p2 = b"\x80\x02}q\x00U\x01aX\x0c\x00\x00\x00/data/wdir/xq\x01s."
    new, n = rewrite_strings(p2, relocate)
    assert n == 1 and b"X" + struct.pack("<I", len(NEW) + 2) + NEW.encode() + b"/x" in new
    assert load_state(new) == pickle.loads(new) == {"a": NEW + "/x"}


def test_nothing_to_change_returns_the_input():
    data = dumps_py2(band_state(), 0)
    assert rewrite_strings(data, lambda s: None) == (data, 0)


# ---------------------------------------------------------------- hostile archives

def test_hostile_pickles_are_refused_and_run_nothing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    marker = tmp_path / "pwned"
    touch = f"touch {marker}".encode()
    hostile = {
        "os.system": b"cos\nsystem\n(S'echo hi'\ntR.",
        "posix.system": b"\x80\x02cposix\nsystem\nq\x00U" + bytes([len(touch)]) + touch + b"\x85R.",
        "builtins.eval": b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x0e__import__('os')\x85R.",
        "INST": b"(S'echo hi'\nios\nsystem\n.",
        "OBJ": b"(cos\nsystem\nS'x'\no.",
        "EXT1": b"\x80\x02\x82\x01.",
        "PERSID": b"Pfoo\n.",
        "numpy object dtype": b"cnumpy\ndtype\n(S'O8'\nI0\nI1\ntR.",
        "_reconstruct of another class": b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\ndtype\n(I0\ntS'b'\ntR.",
        "REDUCE on data": b"(I1\nI2\ntR.",
        "copy_reg": b"ccopy_reg\n_reconstructor\n(c__builtin__\nobject\nN\ntR.",
    }
    for data in hostile.values():
        with pytest.raises(UnsafePickleError):
            load_state(data)
        with pytest.raises(UnsafePickleError):
            rewrite_strings(data, lambda s: "x")
    assert calls == [] and not marker.exists()

    with pytest.raises(UnsafePickleError, match="os.system"):
        load_state(hostile["os.system"])
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_state(hostile["builtins.eval"])


@pytest.mark.parametrize("protocol", [0, 2])
def test_truncated_files_are_refused(protocol):
    data = dumps_py2(direction_state(), protocol)
    for cut in range(len(data)):
        with pytest.raises(UnsafePickleError):
            load_state(data[:cut])
    with pytest.raises(UnsafePickleError):
        load_state(data + b"trailing")


def test_corrupted_bytes_give_data_or_unsafe_pickle_error():
    rng = random.Random(1234)
    good = [dumps_py2(band_state(), 0), dumps_py2(direction_state(), 2)]
    for _ in range(3000):
        data = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            load_state(bytes(data))
        except UnsafePickleError:
            pass
