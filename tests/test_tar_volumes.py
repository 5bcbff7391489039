"""Story: the run goes to tape as tar volumes of a chosen size, and comes back from any of them.

The astronomer archives with ``--volume-size``: every volume is a tar GNU tar extracts on its own,
one volume lists alone, the set restores from its first volume, any volume or its directory,
reading each volume once and in order. A lost or foreign volume is named in one line. A killed
archive, run again, keeps the volumes it had finished and writes only the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factor_archive.cli import archivefactor_main, main, unarchivefactor_main
from factor_archive.containers.registry import open_reader
from factor_archive.containers.tar.local_blobs import LocalBlobWriter
from factor_archive.containers.tar.volumes import (
    VOLUME_INDEX_NAME,
    category_group,
    parse_size,
    read_volume_index,
)
from factor_archive.sample import write_sample_run

ARGS = ["-q", "-r", "-d", "facet1"]
SIZE = "1M"


def volumes(directory: Path) -> list[Path]:
    """The set's volumes in order: NAME.tar, NAME.001.tar, ..."""
    return sorted(directory.glob("*.tar"), key=lambda p: (p.name.count("."), p.name))


def own_index(volume: Path):
    with open(volume, "rb") as f:
        found = read_volume_index(f, str(volume))
    assert found is not None
    return found[0]


def restored(out: Path) -> dict[str, str]:
    """What a restore wrote, with the restored directory's own path (rewritten into the parset,
    mapfiles and state) replaced by a placeholder."""
    snap = {}
    for dirpath, _dirs, files in os.walk(out, followlinks=True):   # -s: into the linked chunks
        for name in files:
            p = Path(dirpath) / name
            data = p.read_bytes().replace(str(out).encode(), b"<OUT>")
            snap[str(p.relative_to(out))] = hashlib.sha256(data).hexdigest()
    return snap


def assert_restores_like_the_single_tar(archive: Path, base: Path, tmp_path: Path,
                                        extra: tuple[str, ...] = ()) -> None:
    """Restore ``archive`` to tmp_path/restored and the single tar to tmp_path/expected (paths
    of the same length, so rewritten state files compare byte for byte)."""
    assert unarchivefactor_main(["-q", *extra, str(archive), str(tmp_path / "restored")]) == 0
    assert unarchivefactor_main(["-q", str(base / "single.tar"), str(tmp_path / "expected")]) == 0
    assert restored(tmp_path / "restored") == restored(tmp_path / "expected")


@pytest.fixture(scope="module")
def run_and_sets(tmp_path_factory, dp3_ms_cache) -> dict:
    """The sample run, its single tar, and a set of 1 MiB volumes."""
    base = tmp_path_factory.mktemp("volumes")
    parset = write_sample_run(base / "run", dp3=True, ms_cache=dp3_ms_cache)
    (base / "set").mkdir()
    assert archivefactor_main(ARGS + [str(parset), str(base / "single.tar")]) == 0
    assert archivefactor_main(ARGS + ["--volume-size", SIZE, str(parset),
                                      str(base / "set" / "run.tar")]) == 0
    return {"base": base, "parset": parset, "set": base / "set"}


def test_sizes_take_powers_of_1024():
    assert parse_size("4G") == 4 << 30
    assert parse_size("256M") == 256 << 20
    assert parse_size("64k") == 64 << 10
    with pytest.raises(Exception, match="not a size"):
        parse_size("four")


def test_each_volume_is_a_tar_gnu_tar_extracts_alone_and_lists_itself(run_and_sets, tmp_path):
    vols = volumes(run_and_sets["set"])
    assert [v.name for v in vols[:3]] == ["run.tar", "run.001.tar", "run.002.tar"]
    assert len(vols) > 10
    indexes = [own_index(v) for v in vols]
    assert [i.volume for i in indexes] == list(range(len(vols)))
    assert len({i.set for i in indexes}) == 1
    assert [i.last for i in indexes] == [False] * (len(vols) - 1) + [True]
    for v, index in zip(vols, indexes):
        out = tmp_path / v.name
        out.mkdir()
        done = subprocess.run(["tar", "xf", str(v), "-C", str(out)], capture_output=True, text=True)
        assert done.returncode == 0 and done.stderr == ""
        listed = json.loads((out / VOLUME_INDEX_NAME).read_text())
        assert listed["volume"] == index.volume
        own = [e for e in index.entries if e.volume == index.volume]
        assert own and all((out / e.name).stat().st_size == e.size for e in own)
        assert (out / "manifest.json").exists() == index.last
        # data stays within the chosen size; the index (and the last volume's manifest) comes on top
        data_end = max(e.offset + e.size for e in own)
        assert data_end <= parse_size(SIZE)


def test_one_volume_lists_alone(run_and_sets, tmp_path, capsys):
    alone = tmp_path / "run.007.tar"
    shutil.copy(run_and_sets["set"] / "run.007.tar", alone)
    assert main(["ls", "--volume", str(alone)]) == 0
    lines = capsys.readouterr().out.splitlines()
    index = own_index(alone)
    assert lines[0].startswith(f"# volume 7 of set {index.set} (run.tar)")
    assert [line.split()[1] for line in lines[1:]] == \
        [e.name for e in index.entries if e.volume == 7]
    assert main(["ls", str(alone)]) != 0           # the set needs its other volumes
    assert "missing volume 0" in capsys.readouterr().err


def test_a_file_larger_than_a_volume_is_cut_into_parts_that_cat_joins(run_and_sets, tmp_path):
    for v in volumes(run_and_sets["set"]):
        subprocess.run(["tar", "xf", str(v), "-C", str(tmp_path)], check=True)
    parts = sorted((tmp_path / "chunks").rglob("*.part000"))
    assert parts, "the sample has 1 MiB files: larger than a 1 MiB volume's room"
    first = parts[0]
    stem = first.name[:-len(".part000")]
    pieces = sorted(first.parent.glob(stem + ".part*"))
    assert len(pieces) >= 2
    joined = b"".join(p.read_bytes() for p in pieces)
    source = run_and_sets["base"] / "run" / "wdir" / first.parent.relative_to(tmp_path) / stem
    assert joined == source.read_bytes()


def test_every_member_is_announced_once_even_when_spread_over_volumes(run_and_sets):
    """formats/tar.md: a member's first entry carries its announcement; a table or file cut
    across volumes is no exception (its root directory entry, or its first part)."""
    import tarfile

    from factor_archive.containers.tar.format import MEMBER_MAGIC

    announced = []
    for v in volumes(run_and_sets["set"]):
        with tarfile.open(v) as t:
            announced += [json.loads(m.pax_headers["comment"][len(MEMBER_MAGIC):])["path"]
                          for m in t.getmembers() if "comment" in m.pax_headers]
    manifest = open_reader(str(run_and_sets["set"])).manifest
    stored = [m.path for m in manifest.members if m.kind != "link"]
    assert sorted(announced) == sorted(stored)
    spread = {m.path for m in manifest.members if m.kind == "table"
              and len({e.volume for e in own_index(volumes(run_and_sets["set"])[-1]).entries
                       if e.member == m.path}) > 1}
    assert spread, "the sample's Measurement Sets are larger than a 1 MiB volume"


def test_gnu_tar_alone_rebuilds_the_directory_form_tree(run_and_sets, tmp_path):
    """The recipe of formats/tar.md: every volume extracted in order, the parts joined."""
    script = r"""
    for v in run.tar run.[0-9][0-9][0-9]*.tar; do tar xf "$v" -C "$OUT"; done
    cd "$OUT"
    find . -name '*.part000' | while read -r p; do
        f=${p%.part000}; cat "$f".part[0-9]* > "$f" && rm "$f".part[0-9]*; done
    rm factor-archive-volume.json
    sha256sum --quiet -c manifest-sha256.txt
    """
    done = subprocess.run(["bash", "-ec", script], cwd=run_and_sets["set"],
                          env={**os.environ, "OUT": str(tmp_path)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("*.part0*"))


@pytest.mark.parametrize("given", ["run.tar", "run.005.tar", "last", "directory"])
def test_ls_verify_and_restore_from_any_volume_or_the_directory(run_and_sets, tmp_path, given,
                                                                capsys):
    vols = volumes(run_and_sets["set"])
    archive = {"run.tar": vols[0], "run.005.tar": vols[5], "last": vols[-1],
               "directory": run_and_sets["set"]}[given]
    assert main(["ls", str(archive)]) == 0
    listing = capsys.readouterr().out
    assert f"{len(vols)} volumes" in listing and "misc/factor.parset" in listing
    assert main(["verify", "-q", str(archive)]) == 0
    if given != "last":
        assert_restores_like_the_single_tar(archive, run_and_sets["base"], tmp_path)


def test_a_renamed_set_is_read_under_its_new_names(run_and_sets, tmp_path, capsys):
    for v in volumes(run_and_sets["set"]):
        shutil.copy(v, tmp_path / v.name.replace("run", "tape7", 1))
    assert main(["verify", "-q", str(tmp_path / "tape7.004.tar")]) == 0
    assert main(["ls", str(tmp_path)]) == 0
    assert "misc/factor.parset" in capsys.readouterr().out


def test_restore_reads_each_volume_once_and_in_order(run_and_sets, tmp_path):
    reader = open_reader(str(run_and_sets["set"]))
    try:
        reader.extract(None, lambda m: tmp_path / m.path)
    finally:
        reader.close()
    assert reader.opened == [v.name for v in volumes(run_and_sets["set"])]


def test_symlinked_chunks_from_a_volume_set(run_and_sets, tmp_path):
    store = tmp_path / "store"
    assert_restores_like_the_single_tar(run_and_sets["set"], run_and_sets["base"], tmp_path,
                                        ("-s", "--store", str(store)))
    chunks = [p for p in (tmp_path / "restored" / "chunks").rglob("*.ms") if p.is_symlink()]
    assert chunks and all(store in p.resolve().parents for p in chunks)


def test_a_missing_volume_is_named_in_one_line(run_and_sets, tmp_path, capsys):
    lost = tmp_path / "lost"
    shutil.copytree(run_and_sets["set"], lost)
    (lost / "run.003.tar").unlink()
    for argv in (["ls", str(lost / "run.tar")], ["verify", str(lost)]):
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "run.003.tar" in err and "missing" in err
    assert unarchivefactor_main(["-q", str(lost / "run.001.tar"), str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run.003.tar" in err
    assert not (tmp_path / "out").exists()
    (lost / vols_last(lost)).unlink()               # the last volume lost too
    assert main(["ls", str(lost)]) != 0
    assert "missing" in capsys.readouterr().err


def vols_last(directory: Path) -> str:
    return volumes(directory)[-1].name


def test_a_foreign_volume_is_named_in_one_line(run_and_sets, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    assert archivefactor_main(ARGS + ["--volume-size", SIZE, str(run_and_sets["parset"]),
                                      str(other / "run.tar")]) == 0
    mixed = tmp_path / "mixed"
    shutil.copytree(run_and_sets["set"], mixed)
    shutil.copy(other / "run.002.tar", mixed / "run.002.tar")
    for argv in (["ls", str(mixed)], ["verify", str(mixed / "run.tar")]):
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "run.002.tar" in err and "foreign" in err
    assert unarchivefactor_main(["-q", str(mixed / "run.002.tar"), str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run.002.tar" in err and "foreign" in err


def test_a_flipped_byte_in_one_volume_is_found_and_named(run_and_sets, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(run_and_sets["set"], damaged)
    volume = damaged / "run.004.tar"
    entry = next(e for e in own_index(volume).entries if e.volume == 4 and e.size > 1000)
    with open(volume, "r+b") as f:
        f.seek(entry.offset + 500)
        byte = f.read(1)
        f.seek(entry.offset + 500)
        f.write(bytes([byte[0] ^ 1]))
    assert main(["verify", "-q", str(damaged)]) == 1
    out = capsys.readouterr().out
    assert f"run.004.tar: entry {entry.name!r} is damaged" in out
    assert unarchivefactor_main(["-q", str(damaged), str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run.004.tar" in err and "damaged" in err


def test_group_by_category_gives_each_group_its_own_volumes(run_and_sets, tmp_path):
    out = tmp_path / "grouped"
    out.mkdir()
    assert archivefactor_main(ARGS + ["--volume-size", "4M", "--group-by", "category",
                                      str(run_and_sets["parset"]), str(out / "run.tar")]) == 0
    reader = open_reader(str(out))
    try:
        by_path = {m.path: m for m in reader.manifest.members}
    finally:
        reader.close()
    seen: list[str] = []
    for v in volumes(out):
        index = own_index(v)
        groups = {category_group(by_path[e.member].category)
                  for e in index.entries if e.volume == index.volume}
        assert len(groups) <= 1 and (not groups or groups == {index.group})
        if index.group is not None and (not seen or seen[-1] != index.group):
            assert index.group not in seen, "a group's volumes are consecutive"
            seen.append(index.group)
    assert {"calibrated-data", "chunks-and-state", "images-and-plots"} <= set(seen)
    assert_restores_like_the_single_tar(out / "run.tar", run_and_sets["base"], tmp_path)


@contextlib.contextmanager
def counting_committed_bytes():
    """Volume name -> bytes of each volume written (committed) meanwhile."""
    committed: dict[str, int] = {}
    plain = LocalBlobWriter.commit

    def commit(self):
        committed[self.final.name] = os.fstat(self.file.fileno()).st_size
        plain(self)

    LocalBlobWriter.commit = commit
    try:
        yield committed
    finally:
        LocalBlobWriter.commit = plain


KILL_AT = """
import os, signal, sys
from factor_archive.containers.tar import writer
at_volume, at_bytes = sys.argv[1], int(sys.argv[2])
plain = writer._Sink.write
def write(self, data):
    if self.name.endswith(at_volume) and self.pos > at_bytes:
        os.kill(os.getpid(), signal.SIGKILL)       # the machine goes down mid-volume
    return plain(self, data)
writer._Sink.write = write
from factor_archive.cli import archivefactor_main
sys.exit(archivefactor_main(sys.argv[3:]))
"""


def test_a_killed_volume_archive_resumes_writing_only_the_rest(run_and_sets, tmp_path, capsys):
    out = tmp_path / "resumed"
    out.mkdir()
    argv = ARGS + ["--volume-size", SIZE, str(run_and_sets["parset"]), str(out / "run.tar")]
    total = sum(v.stat().st_size for v in volumes(run_and_sets["set"]))
    killed = subprocess.run([sys.executable, "-c", KILL_AT, "run.018.tar", str(200_000), *argv],
                            capture_output=True, text=True)
    assert killed.returncode == -9
    before = {v.name: os.stat(v).st_ino for v in volumes(out)}
    assert len(before) == 18 and any(p.name.startswith(".run.018.tar.partial-")
                                     for p in out.iterdir())
    assert main(["ls", str(out)]) != 0             # nothing looks complete
    assert "missing" in capsys.readouterr().err
    (out / ".run.040.tar.partial-999999").write_bytes(b"left by an older killed run")

    with counting_committed_bytes() as committed:
        assert archivefactor_main(argv[1:]) == 0   # the same command, not quiet: says so
    said = capsys.readouterr()
    assert "continuing an interrupted volume archive" in said.out + said.err
    assert "removed" in said.out + said.err and ".run.040.tar.partial-999999" in said.out + said.err
    assert 0 < sum(committed.values()) < 0.6 * total
    rewritten = set(committed) & set(before)       # a volume whose last member ran on into
    assert len(rewritten) <= 1                     # the lost one is written again
    assert set(committed) - rewritten == {v.name for v in volumes(out)} - set(before)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert main(["verify", "-q", str(out)]) == 0
    assert_restores_like_the_single_tar(out, run_and_sets["base"], tmp_path)


def test_a_changed_source_is_written_again_on_resume(run_and_sets, tmp_path, dp3_ms_cache):
    run = tmp_path / "run"
    parset = write_sample_run(run, dp3=True, ms_cache=dp3_ms_cache)
    out = tmp_path / "set"
    out.mkdir()
    argv = ARGS + ["--volume-size", SIZE, str(parset), str(out / "run.tar")]
    killed = subprocess.run([sys.executable, "-c", KILL_AT, "run.012.tar", "0", *argv],
                            capture_output=True, text=True)
    assert killed.returncode == -9
    first = own_index(out / "run.tar")
    changed = next(m for m in first.members if m.kind == "file")
    source = Path(changed.source)
    source.write_bytes(source.read_bytes() + b"\n# edited\n")
    with counting_committed_bytes() as committed:
        assert archivefactor_main(argv) == 0
    assert "run.tar" in committed                  # nothing is kept before the changed member
    reader = open_reader(str(out))
    try:
        member = next(m for m in reader.manifest.members if m.path == changed.path)
    finally:
        reader.close()
    assert member.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()


def test_a_complete_set_is_not_replaced_without_clobber(run_and_sets, tmp_path, capsys):
    out = tmp_path / "set"
    shutil.copytree(run_and_sets["set"], out)
    argv = ARGS + ["--volume-size", SIZE, str(run_and_sets["parset"]), str(out / "run.tar")]
    assert archivefactor_main(argv) != 0
    assert "already exists" in capsys.readouterr().err
    assert archivefactor_main(["-c"] + argv) == 0
    assert main(["verify", "-q", str(out)]) == 0


def test_volumes_need_the_tar_form_and_a_file(run_and_sets, tmp_path, capsys):
    parset = str(run_and_sets["parset"])
    assert archivefactor_main(ARGS + ["--volume-size", SIZE, parset, str(tmp_path / "d")]) != 0
    assert "only the tar form" in capsys.readouterr().err
    assert archivefactor_main(ARGS + ["--group-by", "category", parset,
                                      str(tmp_path / "x.tar")]) != 0
    assert "needs --volume-size" in capsys.readouterr().err
    assert archivefactor_main(ARGS + ["--volume-size", SIZE, "--format", "tar", parset, "-"]) != 0
    assert "local directory" in capsys.readouterr().err


def test_a_single_tar_and_a_set_are_read_through_a_blob_store(run_and_sets):
    """What an object store's BlobStore gets: the same reader code, by blob name."""
    from factor_archive.containers.tar.local_blobs import LocalBlobs
    from factor_archive.containers.tar.volume_reader import VolumeSetReader, open_tar_blob

    single = open_tar_blob(LocalBlobs(run_and_sets["base"]), "single.tar")
    volume_set = open_tar_blob(LocalBlobs(run_and_sets["set"]), "run.003.tar")
    try:
        assert not isinstance(single, VolumeSetReader) and isinstance(volume_set, VolumeSetReader)
        assert [m.path for m in single.manifest.members] == \
            [m.path for m in volume_set.manifest.members]
        assert single.verify() == [] and volume_set.verify() == []
    finally:
        single.close()
        volume_set.close()
