"""User story: a restored Factor run must find its data products under the new working directory.

LOFAR mapfiles are one-line Python 2 reprs that LOFAR itself reads with ``eval``. We read them
with ``ast`` only, and rewrite the chosen path elements without touching any other character.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factor_archive.run.mapfile import MapEntry, MapfileError, _usual_entries, parse_mapfile, rewrite_mapfile

_REAL_USUAL = _usual_entries

OLD = "/data/wdir"
NEW = "/mnt/restored/wdir"
SELFCAL = f"{OLD}/results/facetselfcal/facet1"
IMAGE = f"{OLD}/results/facetimage/facet1"
CHUNK = f"{OLD}/chunks/Band_120.21MHz/L123456_SB000_uv.dppp.pre-cal_chunk0.ms"
MERGE = "/data/ms/L123456_SB000_uv.dppp.pre-cal.merge"  # outside the wd (dir_ms)

COMBINED = f"[{{'host': 'localhost', 'file': '{SELFCAL}/combined_solutions.h5', 'skip': False}}]"
SOURCEDB = (
    f"[{{'host': 'localhost', 'file': '{SELFCAL}/L123456_SB000_uv.dppp.pre-cal_chunk0"
    f".make_sourcedb_new_facet_sources', 'skip': False}}, "
    f"{{'host': 'localhost', 'file': '{SELFCAL}/L123456_SB010_uv.dppp.pre-cal_chunk0"
    f".make_sourcedb_new_facet_sources', 'skip': False}}]"
)
IMAGING_FILES = [
    f"{IMAGE}/L123456_SB{sb:03d}_uv.dppp.pre-cal_chunk{c}.prepare_imaging_data"
    for sb in (0, 10) for c in range(3)
]
IMAGING_INPUT = f"[{{'host': 'localhost', 'file': '[{','.join(IMAGING_FILES)}]', 'skip': False}}]"
BANDS = (
    f"[{{'host': 'localhost', 'file': '{CHUNK}', 'skip': False}}, "
    "{'host': 'localhost', 'file': 'dummy.ms', 'skip': True}]"
)
BREAK = "[{'host': 'localhost', 'file': 'True', 'skip': False}]"
SKYMODELS = f"[{{'host': 'node017', 'file': '{MERGE}', 'skip': False}}]"

EXAMPLES = [COMBINED, SOURCEDB, IMAGING_INPUT, BANDS, BREAK, SKYMODELS]


def relocate(path: str) -> str | None:
    if path == OLD or path.startswith(OLD + "/"):
        return NEW + path[len(OLD):]
    return None


def test_reading_the_examples():
    entries = parse_mapfile(IMAGING_INPUT)
    assert entries == [MapEntry("localhost", f"[{','.join(IMAGING_FILES)}]", False)]
    assert entries[0].paths == IMAGING_FILES and len(entries[0].paths) == 6

    bands = parse_mapfile(BANDS)
    assert [e.paths for e in bands] == [[CHUNK], ["dummy.ms"]]
    assert [e.skip for e in bands] == [False, True]
    assert parse_mapfile(BREAK)[0].paths == ["True"]
    assert parse_mapfile(SKYMODELS) == [MapEntry("node017", MERGE, False)]
    assert parse_mapfile("[]") == []
    assert parse_mapfile(f"[('localhost', '{CHUNK}')]") == [MapEntry("localhost", CHUNK, True)]


@pytest.mark.parametrize("text", EXAMPLES)
def test_relocating_changes_only_paths_under_the_wd(text):
    seen = []

    def fn(p):
        seen.append(p)
        return relocate(p)

    new, n = rewrite_mapfile(text, fn)

    assert new == text.replace(OLD + "/", NEW + "/")
    assert n == text.count(OLD + "/")
    assert seen == [p for e in parse_mapfile(text) for p in e.paths]  # every element, no hosts
    assert [e.host for e in parse_mapfile(new)] == [e.host for e in parse_mapfile(text)]


def test_compressed_entry_keeps_its_brackets_and_other_elements():
    moved = {IMAGING_FILES[1], IMAGING_FILES[4]}
    new, n = rewrite_mapfile(IMAGING_INPUT, lambda p: relocate(p) if p in moved else None)

    assert n == 2
    (entry,) = parse_mapfile(new)
    assert entry.file.startswith("[") and entry.file.endswith("]")
    assert entry.paths == [relocate(p) if p in moved else p for p in IMAGING_FILES]
    assert new.startswith("[{'host': 'localhost', 'file': '[") and new.endswith("]', 'skip': False}]")


def test_paths_outside_the_wd_can_be_chosen_too():
    new, n = rewrite_mapfile(SKYMODELS, lambda p: p.replace("/data/ms/", "/archive/ms/") or None)
    assert n == 1
    assert new == SKYMODELS.replace("/data/ms/", "/archive/ms/")


def test_layout_quoting_and_key_order_survive():
    text = (
        '[ {"skip" : True,"file":"/data/wdir/state/facet1_save.pkl" , "host":"node01"},'
        "\n  {'file': u'/data/wdir/chunks/x.ms', 'host': 'localhost', 'skip': False} ]"
    )
    new, n = rewrite_mapfile(text, relocate)
    assert n == 2
    assert new == text.replace(OLD, NEW)


def test_rewritten_literals_use_python2_escapes():
    text = r"[{'host': 'localhost', 'file': '/data/wdir/caf\xc3\xa9.ms', 'skip': False}]"
    assert parse_mapfile(text)[0].file == "/data/wdir/caf\xc3\xa9.ms"  # latin-1 view of py2 bytes

    new, n = rewrite_mapfile(text, relocate)
    assert n == 1 and new == text.replace(OLD, NEW)

    new, _ = rewrite_mapfile(text, lambda p: "/it's/here")
    assert new == "[{'host': 'localhost', 'file': \"/it's/here\", 'skip': False}]"
    with pytest.raises(ValueError):
        rewrite_mapfile(text, lambda p: "/snow/\u2603")  # not a Python 2 byte string


def test_non_ascii_before_a_value_and_unicode_literals_keep_their_place():
    # ast counts columns in UTF-8 bytes: a non-ASCII host before the path on the same line,
    # on a later line of the file, must not shift the edit.
    text = ("[{'host': u'n\u00f8de', 'file': 'dummy.ms', 'skip': True},\n"
            " {'host': u'nøde', 'file': u'/data/wdir/x.ms', 'skip': False}]")
    new, n = rewrite_mapfile(text, relocate)
    assert n == 1 and new == text.replace(OLD, NEW)
    # a unicode literal may take characters a Python 2 byte string cannot: written as escapes
    new, _ = rewrite_mapfile(text, lambda p: "/snow/\u2603" if p.startswith("/") else None)
    assert new.endswith("'file': u'/snow/\\u2603', 'skip': False}]")
    assert parse_mapfile(new)[1].file == "/snow/\u2603"


def test_element_with_a_comma_cannot_enter_a_compressed_entry():
    with pytest.raises(ValueError):
        rewrite_mapfile(IMAGING_INPUT, lambda p: p + ",x")


def test_numbers_and_unchanged_text_pass_through():
    pads = "[{'host': 'localhost', 'file': 1024, 'skip': False}]"
    assert parse_mapfile(pads)[0].file == "1024"
    assert rewrite_mapfile(pads, lambda p: "/x") == (pads, 0)
    assert rewrite_mapfile(BREAK, relocate) == (BREAK, 0)


def test_malicious_text_is_refused_without_running_it(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    marker = tmp_path / "pwned"
    hostile = [
        "__import__('os').system('x')",
        f"[{{'host': 'localhost', 'file': __import__('os').system('touch {marker}'), 'skip': False}}]",
        "[{'host': 'localhost', 'file': open('/etc/passwd').read(), 'skip': False}]",
        "[{'host': 'localhost', 'file': 'a', 'skip': False, **__builtins__}]",
        "[{'host': 'localhost', 'file': 'a', 'skip': (lambda: 1)()}]",
        "[x for x in ().__class__.__base__.__subclasses__()]",
    ]
    for text in hostile:
        with pytest.raises(MapfileError):
            parse_mapfile(text)
        with pytest.raises(MapfileError):
            rewrite_mapfile(text, lambda p: "/x")
    assert calls == [] and not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        "[global]\ndir_working = /data/wdir\n",         # a Factor parset
        "facet1 14h41m01.884 +35d30m31.52 # comment",  # a directions file
        '{"host": "localhost", "file": "/x"}',          # not a list
        "[{'host': 'localhost', 'skip': False}]",       # no file
        "[{'host': 'localhost', 'file': '/x', 'skip': False, 'size': 3}]",  # unknown key
        "[{'host': 'localhost', 'file': ['/x'], 'skip': False}]",           # file not a string
        "[{'host': 'localhost', 'file': '/x', 'skip': 'no'}]",              # skip not a bool
        "[('localhost',)]",
        "[1, 2, 3]",
        "",
        "\x00\x01binary",
        "[" * 100000,
    ],
)
def test_files_that_are_not_mapfiles(text):
    with pytest.raises(MapfileError):
        parse_mapfile(text)


# The usual form LOFAR writes is read without ast (run/mapfile._usual_entries); whatever text it
# takes, it must read and rewrite exactly as ast does.
# Pieces of values: paths, and what Python reads otherwise: escapes, quotes, non-ASCII, controls.
_PIECES = ["a", "/data/wdir/", ".ms", ",", "[", "]", " ", "'", '"', "\\", "\\n", "\\x41", "\\'", "\\0",
           "\u00e9", "\t", "\n"]
_VALUES = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)


@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")   # ast's, of "\\a"
@settings(max_examples=300)  # about a millisecond each
@given(entries=st.lists(st.tuples(_VALUES, _VALUES, st.booleans()), max_size=3),
       sep=st.sampled_from([", ", ",", ",\n "]), end=st.sampled_from(["]", "]\n", "] ", ", ]", "]\n\n"]))
def test_the_usual_form_is_read_and_rewritten_as_ast_reads_it(entries, sep, end):
    from factor_archive.run import mapfile

    text = "[" + sep.join(f"{{'host': '{h}', 'file': '{f}', 'skip': {s}}}" for h, f, s in entries) + end

    def read(text: str):
        try:
            return parse_mapfile(text), rewrite_mapfile(text, lambda p: p.replace("/data/wdir", "/new") or None)
        except (MapfileError, ValueError) as exc:
            return type(exc)

    fast = read(text)
    mapfile._usual_entries = lambda text: None    # every text through ast
    try:
        assert fast == read(text)
    finally:
        mapfile._usual_entries = _REAL_USUAL


def test_the_examples_in_the_usual_form_are_read_without_ast(monkeypatch):
    import ast

    from factor_archive.run import mapfile

    def no_ast(*args, **kwargs):
        raise AssertionError("ast used")

    monkeypatch.setattr(ast, "parse", no_ast)
    for text in (COMBINED, SOURCEDB, IMAGING_INPUT, BANDS, BREAK, SKYMODELS, "[]"):
        assert mapfile._usual_entries(text) is not None
        rewrite_mapfile(text, relocate)                # its own output is read the same way
