"""An astronomer points the tools at Factor's parset: it is read without Factor's side effects, a
parset we cannot use is one line naming the file, and a restore rewrites only the lines it must."""

from __future__ import annotations

from pathlib import Path

import pytest

from factor_archive.errors import BadInput
from factor_archive.run.parset import read_parset, rewrite_parset

PARSET = """\
# Factor parset as a user writes it
[global]
Dir_Working = /data/run
dir_ms  :  /data/ms
skymodel_extension = .wsclean

[directions]
target_has_own_facet = True
"""


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "factor.parset"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_option_names_are_case_insensitive_and_values_trimmed(tmp_path):
    parset = read_parset(write(tmp_path, PARSET))
    assert parset.working_dir == "/data/run"            # written Dir_Working
    assert parset.dir_ms == "/data/ms"                  # ':' separator, spaces around it
    assert parset.get("DIRECTIONS".lower(), "Target_Has_Own_Facet") == "True"
    assert parset.skymodel_extension == ".wsclean"
    assert parset.path == (tmp_path / "factor.parset").resolve()


def test_default_skymodel_extension_is_factors(tmp_path):
    assert read_parset(write(tmp_path, "[global]\ndir_working = /w\n")).skymodel_extension == ".merge"


def test_bytes_that_are_not_utf8_survive(tmp_path):
    parset = read_parset(write(tmp_path, b"[global]\ndir_working = /data/r\xf8n\n"))
    assert parset.working_dir.encode("utf-8", "surrogateescape") == b"/data/r\xf8n"


@pytest.mark.parametrize("text,problem", [
    (None, "parset not found"),
    ("dir_working = /w\n", "malformed parset (File contains no section headers."),
    ("[cluster]\nlofarroot = /opt\n", "malformed parset (no [global] section)"),
    ("[global]\ndir_ms = /ms\n", "[global] dir_working is not set"),
    ("[global]\ndir_working =\n", "[global] dir_working is not set"),
])
def test_a_parset_we_cannot_use_is_one_line_naming_it(tmp_path, text, problem):
    path = tmp_path / "factor.parset" if text is None else write(tmp_path, text)
    with pytest.raises(BadInput) as err:
        read_parset(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {problem}"), message
    assert "\n" not in message


def test_a_directory_is_not_a_parset(tmp_path):
    with pytest.raises(BadInput, match="is a directory, not a parset"):
        read_parset(tmp_path)


def test_rewriting_changes_only_the_named_values(tmp_path):
    new = rewrite_parset(PARSET, {("global", "dir_working"): "/restored/run",
                                  ("global", "DIR_MS"): "/restored/ms"})
    old_lines, new_lines = PARSET.splitlines(), new.splitlines()
    changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    # the key keeps its spelling and its separator; nothing else moves
    assert changed == [("Dir_Working = /data/run", "Dir_Working = /restored/run"),
                       ("dir_ms  :  /data/ms", "dir_ms  :  /restored/ms")]
    assert len(new_lines) == len(old_lines)
    reread = read_parset(write(tmp_path, new))
    assert (reread.working_dir, reread.dir_ms) == ("/restored/run", "/restored/ms")


def test_absent_keys_go_to_the_end_of_their_section_or_a_new_one(tmp_path):
    new = rewrite_parset(PARSET, {("directions", "directions_file"): "/r/dirs.txt",
                                  ("cluster", "dir_local"): "/scratch",
                                  ("cluster", "lofarroot"): "/opt/lofar"})
    lines = new.splitlines()
    assert lines[lines.index("[directions]") + 2] == "directions_file = /r/dirs.txt"
    assert lines.count("[cluster]") == 1
    assert lines[-3:] == ["[cluster]", "dir_local = /scratch", "lofarroot = /opt/lofar"]
    reread = read_parset(write(tmp_path, new))
    assert reread.get("directions", "directions_file") == "/r/dirs.txt"
    assert reread.get("cluster", "lofarroot") == "/opt/lofar"
