"""User story: the astronomer names an output or points at an archive, and the tool picks the form:
by name when writing, by content when reading, with one parser for ``-``, paths and URLs."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from factor_archive.containers.locations import parse_location
from factor_archive.containers.registry import BACKENDS, detect, form_for_output, names, open_writer
from factor_archive.errors import BadInput


@pytest.mark.parametrize("output, form", [
    ("-", "tar"), ("run.tar", "tar"), ("RUN.TAR", "tar"), ("run.zarr", "zarr"), ("run.zarr/", "zarr"),
    ("run.zarr.zip", "zarr"), ("s3://bucket/run", "zarr"), ("run", "dir"), ("run.zip", "dir"),
    ("backup.tar.d", "dir"),
])
def test_output_names_choose_the_form(output, form):
    assert form_for_output(output) == form


def test_locations_are_told_apart_in_one_place(tmp_path):
    assert parse_location("-").kind == "stdio"
    url = parse_location("s3://bucket/prefix/")
    assert (url.kind, url.scheme, url.url) == ("url", "s3", "s3://bucket/prefix")
    local = parse_location("some/dir")
    assert local.is_local and local.local_path().is_absolute()
    with pytest.raises(BadInput, match="needs a bucket"):
        parse_location("s3://")


def test_archives_are_recognised_by_content_not_name(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text("{}")
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "zarr.json").write_text("{}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(tarfile.TarInfo("x"), io.BytesIO(b""))
    (tmp_path / "named.zarr").write_bytes(buf.getvalue())          # a tar, whatever its name
    with zipfile.ZipFile(tmp_path / "store.bin", "w") as z:
        z.writestr("zarr.json", "{}")
    assert detect(str(tmp_path / "d")) == "dir"
    assert detect(str(tmp_path / "z")) == "zarr"
    assert detect(str(tmp_path / "named.zarr")) == "tar"
    assert detect(str(tmp_path / "store.bin")) == "zarr"
    assert detect("-") == "tar"


@pytest.mark.parametrize("content", [b"old archive", b"PK\x03\x04 a zip that is no zarr store"])
def test_other_files_are_no_archive(tmp_path, content):
    path = tmp_path / "thing.zip"
    if content.startswith(b"PK"):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "hello")
    else:
        path.write_bytes(content.ljust(512, b"\0"))
    with pytest.raises(BadInput, match="not a factor-archive archive"):
        detect(str(path))


def test_missing_and_unfinished_archives_are_one_line(tmp_path):
    with pytest.raises(BadInput, match="archive not found"):
        detect(str(tmp_path / "nope"))
    (tmp_path / "half").mkdir()
    with pytest.raises(BadInput, match="an interrupted archive"):
        detect(str(tmp_path / "half"))


def test_only_a_streaming_form_writes_to_standard_output():
    assert [b.name for b in BACKENDS if b.stdio] == ["tar"]
    with pytest.raises(BadInput, match="cannot be written to standard output"):
        open_writer("zarr", "-", clobber=False)
    with pytest.raises(BadInput, match="unknown archive format 'hdf5'"):
        open_writer("hdf5", "x", clobber=False)
    assert names() == ("dir", "tar", "zarr")
