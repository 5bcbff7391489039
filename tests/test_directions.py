"""Which directions a run has: from the directions file the parset names, else the one Factor
generated in the working directory; a file we cannot use is one line naming it and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from factor_archive.errors import BadInput
from factor_archive.run.directions import direction_names, directions_file
from factor_archive.run.parset import read_parset

ROW14 = "{name} 14h41m01.884 +35d30m31.52 0 0 0 0 0 0 0 0 1.0 0 0"
ROW12 = "{name} 219.62 33.96 0 0 0 0 0 0 0 0 1.0"


def parset(tmp_path: Path, *, directions_file: Path | None = None, own_facet: str | None = None) -> Path:
    wd = tmp_path / "wd"
    wd.mkdir(exist_ok=True)
    text = f"[global]\ndir_working = {wd}\n[directions]\n"
    if directions_file is not None:
        text += f"directions_file = {directions_file}\n"
    if own_facet is not None:
        text += f"target_has_own_facet = {own_facet}\n"
    path = tmp_path / "factor.parset"
    path.write_text(text)
    return path


def test_names_come_from_the_first_column_skipping_comments(tmp_path):
    dirs = tmp_path / "dirs.txt"
    dirs.write_text("# name ra dec ...\n\n" + ROW14.format(name="facet1") + "  # bright\n"
                    + ROW12.format(name="facet2") + "\n")
    assert direction_names(read_parset(parset(tmp_path, directions_file=dirs))) == ["facet1", "facet2"]


def test_the_parset_file_wins_over_factors_generated_one(tmp_path):
    named = tmp_path / "dirs.txt"
    named.write_text(ROW14.format(name="chosen") + "\n")
    generated_parset = parset(tmp_path)
    (tmp_path / "wd" / "factor_directions.txt").write_text(ROW14.format(name="generated") + "\n")
    assert direction_names(read_parset(generated_parset)) == ["generated"]
    with_file = read_parset(parset(tmp_path, directions_file=named))
    assert directions_file(with_file) == named
    assert direction_names(with_file) == ["chosen"]


@pytest.mark.parametrize("flag,expected", [
    ("True", ["facet1", "target"]), ("yes", ["facet1", "target"]),
    ("False", ["facet1"]), (None, ["facet1"]),
])
def test_target_is_a_direction_when_it_has_its_own_facet(tmp_path, flag, expected):
    dirs = tmp_path / "dirs.txt"
    dirs.write_text(ROW14.format(name="facet1") + "\n")
    assert direction_names(read_parset(parset(tmp_path, directions_file=dirs, own_facet=flag))) == expected


def test_target_listed_in_the_file_is_not_added_twice(tmp_path):
    dirs = tmp_path / "dirs.txt"
    dirs.write_text(ROW14.format(name="target") + "\n")
    assert direction_names(read_parset(parset(tmp_path, directions_file=dirs, own_facet="true"))) == ["target"]


def test_a_row_with_the_wrong_number_of_columns_names_its_line(tmp_path):
    dirs = tmp_path / "dirs.txt"
    dirs.write_text("# header\n" + ROW14.format(name="facet1") + "\nfacet2 219.6 33.9\n")
    with pytest.raises(BadInput, match=r"dirs\.txt: line 3: expected 12 or 14 columns, found 3$"):
        direction_names(read_parset(parset(tmp_path, directions_file=dirs)))


def test_no_directions_file_at_all_is_one_line_naming_both_places(tmp_path):
    path = parset(tmp_path)
    with pytest.raises(BadInput) as err:
        direction_names(read_parset(path))
    assert str(err.value) == (f"{path.resolve()}: no directions: neither [directions] directions_file nor "
                              f"{tmp_path / 'wd' / 'factor_directions.txt'} exists")


def test_a_named_file_that_is_missing_or_empty_is_refused(tmp_path):
    missing = tmp_path / "gone.txt"
    with pytest.raises(BadInput, match=r"gone\.txt: directions file not found \(named in .*factor\.parset\)"):
        direction_names(read_parset(parset(tmp_path, directions_file=missing)))
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n")
    with pytest.raises(BadInput, match=r"empty\.txt: no directions in the directions file"):
        direction_names(read_parset(parset(tmp_path, directions_file=empty)))
