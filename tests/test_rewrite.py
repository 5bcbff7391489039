"""A run restored somewhere else: the paths recorded in its state and mapfiles move with it, and
only those (scratch paths, relative names and non-paths stay as they were)."""

from __future__ import annotations

from factor_archive.restore.rewrite import make_path_mapper, py2_bytes_mapper

OLD = "/home/astro/run"
NEW = "/data/restored"


def test_paths_under_the_old_working_directory_move_under_the_new_one():
    move = make_path_mapper([OLD], NEW, {})
    assert move(f"{OLD}/results/facetimage/facet1/image.fits") == f"{NEW}/results/facetimage/facet1/image.fits"
    assert move(OLD) == NEW
    assert move(f"{OLD}/chunks/") == f"{NEW}/chunks/"           # a trailing slash is kept
    assert move(f"{OLD}//state/./x.pkl") == f"{NEW}/state/x.pkl"  # as the OS would resolve it


def test_values_that_are_not_our_paths_stay():
    move = make_path_mapper([OLD], NEW, {})
    for value in ("/tmp/scratch/facet1/concat.ms", f"{OLD}2/other", "dummy.ms", "results/x", "True", "", "/"):
        assert move(value) is None, value


def test_any_of_several_old_roots_moves_and_the_longest_wins():
    move = make_path_mapper(["/old", "/old/run2", "", "/else/"], NEW, {})
    assert move("/old/run2/x") == f"{NEW}/x"      # not NEW/run2/x
    assert move("/old/x") == f"{NEW}/x"
    assert move("/else/y") == f"{NEW}/y"


def test_relocated_items_outside_the_working_directory_go_where_they_were_restored():
    relocations = {"/sky/models": f"{NEW}/sky_models",
                   "/sky/models/special.skymodel": f"{NEW}/sky_models/special/special.skymodel",
                   "relative/ignored": f"{NEW}/never"}
    move = make_path_mapper([OLD], NEW, relocations)
    assert move("/sky/models/a.skymodel") == f"{NEW}/sky_models/a.skymodel"
    assert move("/sky/models/special.skymodel") == f"{NEW}/sky_models/special/special.skymodel"
    assert move("relative/ignored") is None
    # a relocation inside the old working directory beats the working directory itself
    move = make_path_mapper([OLD], NEW, {f"{OLD}/chunks/c0.ms": f"{NEW}/chunks/Band_1/c0.ms"})
    assert move(f"{OLD}/chunks/c0.ms/table.dat") == f"{NEW}/chunks/Band_1/c0.ms/table.dat"


def test_casa_list_strings_map_element_by_element_keeping_their_quotes():
    move = make_path_mapper([OLD], NEW, {})
    value = f"[\"{OLD}/regions/a.rgn\", '{OLD}/regions/b.rgn',/elsewhere/c.rgn]"
    assert move(value) == f"[\"{NEW}/regions/a.rgn\", '{NEW}/regions/b.rgn',/elsewhere/c.rgn]"
    assert move("['/elsewhere/a.rgn']") is None   # nothing of ours: left as it is
    assert move("[]") is None


def test_python2_byte_strings_are_mapped_as_utf8_and_handed_back_as_bytes():
    # Pickles and mapfiles present Python 2 byte strings as latin-1 text.
    move = py2_bytes_mapper(make_path_mapper(["/home/søren/run"], "/data/ø restored", {}))
    as_read = "/home/søren/run/state/x.pkl".encode().decode("latin-1")
    moved = move(as_read)
    assert moved is not None
    assert moved.encode("latin-1") == "/data/ø restored/state/x.pkl".encode()
    # bytes that are not UTF-8 (a latin-1 path) are compared as they are
    assert py2_bytes_mapper(make_path_mapper(["/r\xf8"], "/new", {}))("/r\xf8/x") == "/new/x"


def test_the_nearest_relocation_wins_whatever_was_asked_before():
    # The mapper remembers what it found for each directory: the answers must not depend on order.
    relocations = {"/sky": f"{NEW}/sky", "/sky/a/b/c.ms": f"{NEW}/chunks/c.ms", "/": "/never"}
    asks = ["/sky/a/b/c.ms/table.dat", "/sky/a/b/d.ms", "/sky/a/b", "/sky/a/b/c.ms", "/elsewhere/x"]
    want = [f"{NEW}/chunks/c.ms/table.dat", f"{NEW}/sky/a/b/d.ms", f"{NEW}/sky/a/b", f"{NEW}/chunks/c.ms",
            None]
    for order in (asks, asks[::-1], asks[1:] + asks[:1]):
        move = make_path_mapper([OLD], NEW, relocations)
        assert {a: move(a) for a in order} == dict(zip(asks, want))
    deep = "/x" * 5000                            # a hostile path: no recursion to run out of
    assert make_path_mapper([OLD], NEW, {})(deep) is None
