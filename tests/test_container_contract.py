"""The contract every container form keeps, run against each registered back end.

A new back end gets these tests by adding one subclass at the bottom (docs/architecture.md,
"Adding a back end"): round trips of files, tables, symlinked chunks, empty files and awkward
names; capabilities that say what they do; an abort that leaves nothing complete; the manifest
written last; verify noticing one flipped byte.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path

import pytest

from conftest import assert_tables_equal
from factor_archive.containers.registry import BACKENDS, open_reader, open_writer
from factor_archive.containers.tar.volume_writer import VolumeOptions
from factor_archive.errors import FactorArchiveError
from factor_archive.manifest import Manifest, Member
from test_tar_container import make_table as make_casacore_table
from test_tar_container import nothing

CREATED = "2024-05-01T12:00:00+00:00"
AWKWARD = {"zarr.json": b"{}", "__init__": b"", "100%.txt": os.urandom(3 << 20),
           "a b ø.fits": os.urandom(20000), "zeros.bin": bytes(5 << 20)}


def make_table(path: Path) -> None:
    """A real casacore table with a subtable (test_tar_container's) and an empty directory."""
    make_casacore_table(path)
    (path / "emptydir").mkdir()


@pytest.fixture
def run(tmp_path: Path) -> list[tuple[Member, Path]]:
    """A small run: awkward names, an empty file, a table, and a chunk that is a symbolic link
    to an input table (its data is archived, not the link)."""
    root = tmp_path / "run"
    (root / "misc").mkdir(parents=True)
    items = []

    def add(path: str, source: Path, kind: str, category: str) -> None:
        items.append((Member(path=path, source=str(source), category=category, kind=kind, size=0,
                             mode=0, mtime=0.0, sha256="", restore_path=path), source))

    for name, data in AWKWARD.items():
        (root / "misc" / name).write_bytes(data)
        add(f"misc/{name}", root / "misc" / name, "file", "misc")
    make_table(root / "input.ms")
    (root / "chunks").mkdir()
    make_table(root / "chunks" / "chunk0.ms")
    (root / "chunks" / "chunk1.ms").symlink_to(root / "input.ms")
    add("chunks/chunk0.ms", root / "chunks" / "chunk0.ms", "table", "chunks")
    add("chunks/chunk1.ms", root / "chunks" / "chunk1.ms", "table", "chunks")
    return items


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ContainerContract:
    """Subclasses set ``form`` and ``name`` (the archive's file name) and may override
    :meth:`flip_a_byte`."""

    form = ""
    name = ""
    options: dict = {}          # more keyword arguments of open_writer (tar volumes)

    def location(self, tmp_path: Path) -> str:
        return str(tmp_path / self.name)

    def write(self, tmp_path: Path, items: list[tuple[Member, Path]]) -> tuple[str, list[Member]]:
        where = self.location(tmp_path)
        writer = open_writer(self.form, where, clobber=False, **self.options)
        try:
            stored = [writer.write(m, s, nothing) for m, s in items]
            writer.close(Manifest(container="", run={}, options={}, members=stored, created=CREATED))
        except BaseException:
            writer.abort()
            raise
        return where, stored

    def flip_a_byte(self, where: str, member: Member) -> None:
        raise NotImplementedError

    # -- the contract ----------------------------------------------------------------------------

    def test_round_trip_of_files_tables_links_and_awkward_names(self, tmp_path, run):
        where, _stored = self.write(tmp_path, run)
        out = tmp_path / "out"
        with open_reader(where, staging=tmp_path / "scratch") as reader:
            assert reader.form == self.form
            assert reader.verify(nothing) == []
            reader.extract(None, lambda m: out / m.path, nothing)
        for name, data in AWKWARD.items():
            assert (out / "misc" / name).read_bytes() == data
        assert_tables_equal(tmp_path / "run" / "chunks" / "chunk0.ms", out / "chunks" / "chunk0.ms")
        linked = out / "chunks" / "chunk1.ms"
        assert linked.is_dir() and not linked.is_symlink()
        assert_tables_equal(tmp_path / "run" / "input.ms", linked)
        assert not [p for p in out.rglob("*") if ".partial" in p.name]

    def test_writers_return_new_members_and_leave_the_plan_alone(self, tmp_path, run):
        _where, stored = self.write(tmp_path, run)
        assert all(m.sha256 == "" and m.size == 0 for m, _s in run)
        assert [m.path for m in stored] == [m.path for m, _s in run]
        assert all(len(m.sha256) == 64 for m in stored)
        sizes = {m.path: m.size for m in stored}
        assert sizes["misc/zeros.bin"] == 5 << 20 and sizes["misc/__init__"] == 0

    def test_a_selection_is_extracted_and_nothing_else(self, tmp_path, run):
        where, _stored = self.write(tmp_path, run)
        out = tmp_path / "out"
        with open_reader(where) as reader:
            chosen = [m for m in reader.manifest.members if m.path.endswith("100%.txt")]
            reader.extract(chosen, lambda m: out / m.path, nothing)
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) \
            == ["misc/100%.txt"]

    def test_capabilities_say_what_the_form_does(self, tmp_path, run):
        where = self.location(tmp_path)
        writer = open_writer(self.form, where, clobber=False, **self.options)
        caps = writer.capabilities
        try:
            if caps.parallel_members:      # two members written at once
                results: list[Member] = []
                threads = [threading.Thread(target=lambda i=i: results.append(
                    writer.write(*run[i], nothing))) for i in (0, 2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert len(results) == 2
            else:
                writer.write(*run[0], nothing)
            if caps.resumable_writes:
                writer.abort()
                writer = open_writer(self.form, where, clobber=False, **self.options)
                assert writer.already_written(run[0][0]) is not None
            else:
                assert writer.already_written(run[0][0]) is None
        finally:
            writer.abort()
        assert [b for b in BACKENDS if b.name == self.form][0].stdio == caps.streams
        where, stored = self.write(tmp_path / "again", run) if (tmp_path / "again").mkdir() is None \
            else ("", [])
        with open_reader(where) as reader:
            table = next(m for m in reader.manifest.members if m.kind == "table")
            local = reader.local_path(table)
            if reader.capabilities.local_paths:
                assert local is not None and (local / "table.dat").is_file()
            else:
                assert local is None
            assert reader.capabilities.seekable       # a file or a directory, not a pipe

    def test_abort_leaves_nothing_that_looks_complete(self, tmp_path, run):
        where = self.location(tmp_path)
        writer = open_writer(self.form, where, clobber=False, **self.options)
        for member, source in run[:3]:
            writer.write(member, source, nothing)
        writer.abort()
        with pytest.raises(FactorArchiveError):
            open_reader(where).close()

    def test_the_manifest_is_written_last(self, tmp_path, run):
        where = self.location(tmp_path)
        writer = open_writer(self.form, where, clobber=False, **self.options)
        try:
            stored = [writer.write(m, s, nothing) for m, s in run]
            with pytest.raises(FactorArchiveError):      # every member stored, not yet an archive
                open_reader(where).close()
            writer.close(Manifest(container="", run={}, options={}, members=stored, created=CREATED))
        except BaseException:
            writer.abort()
            raise
        with open_reader(where) as reader:
            assert len(reader.manifest.members) == len(run)

    def test_verify_notices_one_flipped_byte(self, tmp_path, run):
        where, stored = self.write(tmp_path, run)
        victim = next(m for m in stored if m.path == "misc/a b ø.fits")
        self.flip_a_byte(where, victim)
        with open_reader(where) as reader:
            problems = reader.verify(nothing)
        assert problems and any("a b ø.fits" in line for line in problems), problems


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _zarr_chunk_of(root: Path, member: Member) -> Path:
    from factor_archive.containers.zarr import node_path

    shards = [p for p in (root / node_path(member.path)).rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert shards
    return shards[0]


class TestDirectoryForm(ContainerContract):
    form, name = "dir", "archive"

    def flip_a_byte(self, where, member):
        _flip(Path(where) / member.path, 100)


class TestTarForm(ContainerContract):
    form, name = "tar", "archive.tar"

    def flip_a_byte(self, where, member):
        _flip(Path(where), member.offset + 100)


class TestTarVolumesForm(ContainerContract):
    """A set of 256 KiB volumes: the 3 and 5 MiB files are cut into parts over many volumes."""

    form, name = "tar", "archive.tar"
    options = {"volumes": VolumeOptions(256 << 10)}

    def flip_a_byte(self, where, member):
        from factor_archive.containers.tar.volume_reader import open_volume_set

        reader = open_volume_set(where)
        entry = next(e for e in reader.last.entries if e.file == member.path)
        _flip(Path(where).parent / reader.records[entry.volume].name, entry.offset + 100)

    def test_capabilities_say_what_the_form_does(self, tmp_path, run):
        pytest.skip("volumes are not streamed, and a rerun keeps whole volumes, not members: "
                    "test_tar_volumes.py covers both")


class TestZarrForm(ContainerContract):
    form, name = "zarr", "archive.zarr"

    def flip_a_byte(self, where, member):
        chunk = _zarr_chunk_of(Path(where), member)
        _flip(chunk, chunk.stat().st_size // 2)


class TestZarrZipForm(ContainerContract):
    form, name = "zarr", "archive.zarr.zip"

    def flip_a_byte(self, where, member):
        from factor_archive.containers.zarr import node_path

        with zipfile.ZipFile(where) as z:
            info = next(i for i in z.infolist() if i.filename.startswith(node_path(member.path) + "/")
                        and not i.filename.endswith("zarr.json"))
        with open(where, "rb") as f:
            f.seek(info.header_offset + 26)
            name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        _flip(Path(where), info.header_offset + 30 + name_len + extra_len + info.compress_size // 2)
