"""User stories for the indexed tar form (``--format tar``)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from factor_archive.containers.registry import detect
from factor_archive.containers.tar import TarReader, TarWriter
from factor_archive.containers.tar import format as tarmod
from factor_archive.containers.tar.stream import _Scanner
from factor_archive.errors import BadInput, UnsafeArchive
from factor_archive.manifest import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    TAG_MANIFEST_NAME,
    Manifest,
    Member,
    tag_manifest_text,
)
from fault_cases import Case, record

SPACE_NAME = "field image ñ é.fits"      # a space and non-ASCII characters
CREATED = "2024-05-01T12:00:00+00:00"


def nothing(_n: int) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Inputs: a small Factor-like run made of real files and a real casacore table

def make_table(path: Path) -> None:
    from casacore import tables

    desc = tables.maketabdesc([tables.makescacoldesc("A", 0)])
    t = tables.table(str(path), desc, nrow=10, ack=False)
    t.putcol("A", list(range(10)))
    sub = tables.table(str(path / "ANTENNA"), desc, nrow=3, ack=False)
    sub.close()
    t.putkeyword("ANTENNA", "Table: " + str(path / "ANTENNA"))
    t.close()


@pytest.fixture
def run(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    (root / "images").mkdir(parents=True)
    (root / "images" / SPACE_NAME).write_bytes(os.urandom(20000) + b"end")
    (root / "misc").mkdir()
    (root / "misc" / "factor.parset").write_text("[global]\ndir_working = /data/run\n")
    os.chmod(root / "misc" / "factor.parset", 0o640)
    (root / "real.skymodel").write_text("format = Name, Type\n")
    (root / "misc" / "linked.skymodel").symlink_to(root / "real.skymodel")
    (root / "chunks").mkdir()
    make_table(root / "chunks" / "chunk0.ms")
    (root / "chunks" / "chunk0.ms" / "emptydir").mkdir()
    return root


def members_for(run: Path) -> list[tuple[Member, Path]]:
    def m(path: str, source: Path, kind: str, category: str) -> tuple[Member, Path]:
        return Member(path=path, source=str(source), category=category, kind=kind, size=0,
                      mode=0, mtime=0.0, sha256="", restore_path=path), source

    return [
        m(f"images/{SPACE_NAME}", run / "images" / SPACE_NAME, "file", "images"),
        m("misc/factor.parset", run / "misc" / "factor.parset", "file", "misc"),
        m("misc/linked.skymodel", run / "misc" / "linked.skymodel", "file", "sky_models"),
        m("chunks/chunk0.ms", run / "chunks" / "chunk0.ms", "table", "chunks"),
    ]


def write_archive(out: str | Path, items: list[tuple[Member, Path]], clobber: bool = False,
                  ) -> Manifest:
    writer = TarWriter(str(out), clobber=clobber)
    members = [writer.write(member, source, nothing) for member, source in items]
    manifest = Manifest(container="", run={"name": "test"}, options={}, members=members,
                        created=CREATED)
    writer.close(manifest)
    return manifest


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) under root."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = None if p.is_dir() else p.read_bytes()
    return out


def source_tree(run: Path, items: list[tuple[Member, Path]]) -> dict[str, bytes | None]:
    expect: dict[str, bytes | None] = {}
    for member, source in items:
        parts = member.path.split("/")
        for i in range(1, len(parts)):
            expect["/".join(parts[:i])] = None
        if member.kind == "file":
            expect[member.path] = source.read_bytes()
        else:
            expect[member.path] = None
            for rel, content in tree(source).items():
                expect[f"{member.path}/{rel}"] = content
    return expect


def to_dest(root: Path):
    return lambda member: root / member.path


@pytest.fixture
def archive(tmp_path: Path, run: Path) -> tuple[Path, Manifest, list[tuple[Member, Path]]]:
    items = members_for(run)
    out = tmp_path / "run.tar"
    return out, write_archive(out, items), items


# ---------------------------------------------------------------------------------------------
# Story: a colleague without our tool unpacks the archive with plain tar

def test_gnu_tar_lists_and_extracts_the_directory_layout_silently(tmp_path, run, archive):
    out, manifest, items = archive
    listing = subprocess.run(["tar", "tf", str(out)], capture_output=True, text=True)
    assert listing.returncode == 0 and listing.stderr == ""
    names = listing.stdout.splitlines()
    assert names[0] == f"images/{SPACE_NAME}"            # order of the write() calls
    assert names[-4:] == [MANIFEST_NAME, CHECKSUMS_NAME, TAG_MANIFEST_NAME, tarmod.INDEX_NAME]

    dest = tmp_path / "gnu"
    dest.mkdir()
    done = subprocess.run(["tar", "xf", str(out), "-C", str(dest)], capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == ""
    got = tree(dest)
    expect = source_tree(run, items)
    assert {k: v for k, v in got.items()
            if k not in (MANIFEST_NAME, CHECKSUMS_NAME, TAG_MANIFEST_NAME, tarmod.INDEX_NAME)} == expect
    assert Manifest.from_json(got[MANIFEST_NAME]).container == "tar"
    # sha256sum -c accepts the checksums file and the tag manifest from the extracted root
    for sums in (CHECKSUMS_NAME, TAG_MANIFEST_NAME):
        check = subprocess.run(["sha256sum", "--quiet", "-c", sums], cwd=dest,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    # mtimes to the nanosecond, modes from the sources; symlinked source stored as data
    src = run / "misc" / "factor.parset"
    assert os.stat(dest / "misc/factor.parset").st_mtime_ns == os.stat(src).st_mtime_ns
    assert os.stat(dest / "misc/factor.parset").st_mode & 0o777 == 0o640
    assert not (dest / "misc/linked.skymodel").is_symlink()
    assert (dest / "chunks/chunk0.ms/emptydir").is_dir()


def test_python_tarfile_reads_it(archive, run):
    out, manifest, items = archive
    with tarfile.open(out) as tf:
        infos = tf.getmembers()
        assert all(i.isfile() or i.isdir() for i in infos)
        assert all(i.uid == 0 and i.gid == 0 and i.uname == "" and i.gname == ""
                   for i in infos)
        by_name = {i.name: i for i in infos}
        data = tf.extractfile(by_name[f"images/{SPACE_NAME}"]).read()
        assert data == (run / "images" / SPACE_NAME).read_bytes()
        table_file = by_name["chunks/chunk0.ms/table.dat"]
        assert tf.extractfile(table_file).read() == \
            (run / "chunks/chunk0.ms/table.dat").read_bytes()
        # the manifest's offsets are where tarfile finds the data too
        member = manifest.member("chunks/chunk0.ms")
        entry = next(e for e in member.files if e.path == "table.dat")
        assert entry.offset == table_file.offset_data
        assert manifest.member("misc/factor.parset").offset == \
            by_name["misc/factor.parset"].offset_data


def test_index_is_found_from_the_end_with_tail_and_sha256sum(archive):
    """What formats/tar.md tells a third party to do, done with the shell tools it names."""
    out, manifest, _ = archive
    block = subprocess.run(f"tail -c 1536 '{out}' | head -c 512", shell=True,
                           capture_output=True, check=True).stdout
    lines = block.decode("ascii").split("\n")
    assert lines[0] == "factor-archive-index 1"
    name, offset, size, sha = lines[1].split(" ")
    assert name == MANIFEST_NAME
    got = subprocess.run(f"tail -c +{int(offset) + 1} '{out}' | head -c {size} | sha256sum",
                         shell=True, capture_output=True, check=True).stdout.split()[0]
    assert got.decode() == sha
    text = subprocess.run(f"tail -c +{int(offset) + 1} '{out}' | head -c {size}", shell=True,
                          capture_output=True, check=True).stdout
    assert json.loads(text)["members"][0]["path"] == f"images/{SPACE_NAME}"
    # the index's last line is the sha256 of the lines above it
    covered = subprocess.run(f"tail -c 1536 '{out}' | head -c 512 | head -n 4 | sha256sum",
                             shell=True, capture_output=True, check=True).stdout.split()[0]
    assert lines[4] == f"index-sha256 {covered.decode()}"


# ---------------------------------------------------------------------------------------------
# Story: restore one small member out of a big archive without reading the rest

class CountingFile(io.RawIOBase):
    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.bytes_read = 0
        self.name = str(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self.f.readinto(buf)
        self.bytes_read += n
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()
        super().close()


def test_seekable_reader_reads_only_the_index_and_the_wanted_member(tmp_path, run):
    big = tmp_path / "big.ms-like"
    with open(big, "wb") as f:                       # 50 MB, mostly a hole
        f.write(b"start")
        f.truncate(50_000_000)
        f.seek(25_000_000)
        f.write(b"middle")
    items = members_for(run)
    items.insert(0, (Member(path="calibrated_data/big.bin", source=str(big),
                            category="calibrated_data", kind="file", size=0, mode=0,
                            mtime=0.0, sha256=""), big))
    out = tmp_path / "run.tar"
    write_archive(out, items)
    assert out.stat().st_size > 50_000_000

    counting = CountingFile(out)
    reader = TarReader(counting)
    wanted = reader.manifest.member("misc/factor.parset")
    dest = tmp_path / "restored"
    reader.extract([wanted], to_dest(dest), nothing)
    reader.close()
    assert (dest / "misc/factor.parset").read_bytes() == \
        (run / "misc/factor.parset").read_bytes()
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == \
        ["misc", "misc/factor.parset"]
    assert counting.bytes_read < 1_000_000 + wanted.size
    st = os.stat(dest / "misc/factor.parset")
    assert st.st_mode & 0o777 == 0o640 and abs(st.st_mtime - wanted.mtime) < 1e-6


def test_full_restore_from_a_path_verifies_and_restores_metadata(tmp_path, run, archive):
    out, manifest, items = archive
    dest = tmp_path / "restored"
    with TarReader(str(out)) as reader:
        assert reader.form == "tar" and reader.manifest.container == "tar"
        assert reader.local_path(reader.manifest.members[0]) is None
        reader.extract(reader.manifest.members, to_dest(dest), nothing)
        assert reader.verify(nothing) == []
    assert tree(dest) == source_tree(run, items)
    table = reader.manifest.member("chunks/chunk0.ms")
    assert abs(os.stat(dest / "chunks/chunk0.ms").st_mtime - table.mtime) < 1e-6
    assert not list(dest.rglob(".*partial*"))
    # the table is a working casacore table again
    from casacore import tables
    t = tables.table(str(dest / "chunks/chunk0.ms"), ack=False)
    assert list(t.getcol("A")) == list(range(10))
    t.close()


def test_members_mapping_to_none_are_skipped(tmp_path, archive):
    out, manifest, _ = archive
    dest = tmp_path / "restored"
    with TarReader(out) as reader:
        reader.extract(None, lambda m: dest / m.path if m.kind == "table" else None, nothing)
    assert sorted(p.name for p in dest.iterdir()) == ["chunks"]


# ---------------------------------------------------------------------------------------------
# Story: archive straight into a pipe (ssh, tape) and restore from one

def pipe_capture() -> tuple[io.TextIOWrapper, list[bytes], threading.Thread]:
    r, w = os.pipe()
    chunks: list[bytes] = []

    def drain() -> None:
        with open(r, "rb") as f:
            while block := f.read(65536):
                chunks.append(block)

    thread = threading.Thread(target=drain)
    thread.start()
    return io.TextIOWrapper(open(w, "wb")), chunks, thread


def pipe_feed(data: bytes) -> io.BufferedReader:
    r, w = os.pipe()

    def feed() -> None:
        with open(w, "wb") as f:
            try:
                f.write(data)
            except BrokenPipeError:
                pass

    threading.Thread(target=feed, daemon=True).start()
    return open(r, "rb")


def test_writing_to_a_pipe_gives_the_same_bytes_as_writing_to_a_file(tmp_path, run, archive,
                                                                      monkeypatch):
    out, _, _ = archive
    stdout, chunks, thread = pipe_capture()
    monkeypatch.setattr(sys, "stdout", stdout)
    writer = TarWriter("-", clobber=False)
    staging = writer.staging_dir()
    assert staging.is_dir()
    members = [writer.write(m, s, nothing) for m, s in members_for(run)]
    writer.close(Manifest(container="", run={"name": "test"}, options={}, members=members,
                          created=CREATED))
    assert not staging.exists()
    stdout.close()
    thread.join()
    assert b"".join(chunks) == out.read_bytes()


def test_reading_from_a_pipe_gives_the_same_tree_as_reading_a_file(tmp_path, run, archive):
    out, manifest, items = archive
    by_path = tmp_path / "from-file"
    with TarReader(out) as reader:
        reader.extract(None, to_dest(by_path), nothing)

    from_pipe = tmp_path / "from-pipe"
    seen: list[Member] = []

    def dest_for(member: Member) -> Path:
        seen.append(member)                      # announced before its data: fields are real
        return from_pipe / member.restore_path

    stream = pipe_feed(out.read_bytes())
    with TarReader(stream) as reader:
        assert not reader.capabilities.seekable
        reader.extract(None, dest_for, nothing)
        assert [m.path for m in reader.manifest.members] == [m.path for m, _ in items]
    assert [m.path for m in seen] == [m.path for m, _ in items]
    assert tree(from_pipe) == tree(by_path) == source_tree(run, items)
    for p in [*by_path.rglob("*.*"), by_path / "chunks/chunk0.ms"]:   # members' metadata
        a, b = os.stat(p), os.stat(from_pipe / p.relative_to(by_path))
        assert (a.st_mode, a.st_mtime_ns) == (b.st_mode, b.st_mtime_ns), p
    assert not list(tmp_path.rglob(".*partial*"))


def test_stream_reader_can_give_the_manifest_first(tmp_path, run, archive):
    """A caller that needs the manifest before choosing members still works on a pipe."""
    out, manifest, items = archive
    spool_parent = tmp_path / "spool"
    spool_parent.mkdir()
    dest = tmp_path / "restored"
    with TarReader(pipe_feed(out.read_bytes()), staging=spool_parent) as reader:
        chosen = [m for m in reader.manifest.members if m.category != "images"]
        reader.extract(chosen, to_dest(dest), nothing)
    assert not (dest / "images").exists()
    assert (dest / "chunks/chunk0.ms/table.dat").read_bytes() == \
        (run / "chunks/chunk0.ms/table.dat").read_bytes()
    assert list(spool_parent.iterdir()) == []


def test_subprocess_pipeline_archive_to_stdout_restore_from_stdin(tmp_path, run):
    """archive ... --format tar - | ssh ... | unarchive -: both ends really are pipes."""
    items = members_for(run)
    spec = [(m.path, str(s), m.kind, m.category) for m, s in items]
    writer_code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from factor_archive.containers.tar import TarWriter\n"
        "from factor_archive.manifest import Manifest, Member\n"
        "w = TarWriter('-', clobber=False)\n"
        "ms = [w.write(Member(path=p, source=s, category=c, kind=k, size=0, mode=0,\n"
        "      mtime=0.0, sha256='', restore_path=p), Path(s), lambda n: None)\n"
        "      for p, s, k, c in json.loads(sys.argv[1])]\n"
        "w.close(Manifest(container='', run={}, options={}, members=ms,\n"
        f"                created={CREATED!r}))\n"
    )
    reader_code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from factor_archive.containers.tar import TarReader\n"
        "r = TarReader('-')\n"
        "r.extract(None, lambda m: Path(sys.argv[1]) / m.path, lambda n: None)\n"
        "print(len(r.manifest.members))\n"
    )
    dest = tmp_path / "restored"
    producer = subprocess.Popen([sys.executable, "-c", writer_code, json.dumps(spec)],
                                stdout=subprocess.PIPE)
    consumer = subprocess.run([sys.executable, "-c", reader_code, str(dest)],
                              stdin=producer.stdout, capture_output=True, text=True)
    producer.stdout.close()
    assert producer.wait() == 0
    assert consumer.returncode == 0, consumer.stderr
    assert consumer.stdout.strip() == str(len(items)) and consumer.stderr == ""
    assert tree(dest) == source_tree(run, items)


# ---------------------------------------------------------------------------------------------
# Story: the archive was cut short or damaged on the way

def offset_of(manifest: Manifest, path: str) -> int:
    if "/" in path and path.split("/", 2)[:2] == ["chunks", "chunk0.ms"]:
        member = manifest.member("chunks/chunk0.ms")
        return next(e.offset for e in member.files if e.path == path.split("/", 2)[2])
    return manifest.member(path).offset


def assert_one_line(exc: BaseException, *needles: str) -> None:
    text = str(exc)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text


def open_either(data: bytes, tmp_path: Path, seekable: bool):
    if seekable:
        p = tmp_path / "damaged.tar"
        p.write_bytes(data)
        return TarReader(p)
    return TarReader(pipe_feed(data))


@pytest.mark.parametrize("seekable", [True, False], ids=["file", "pipe"])
def test_truncated_archive_names_the_member_and_leaves_nothing(tmp_path, archive, seekable):
    out, manifest, _ = archive
    cut = offset_of(manifest, f"images/{SPACE_NAME}") + 1000
    data = out.read_bytes()[:cut]
    dest = tmp_path / "restored"
    with pytest.raises(BadInput) as err:
        reader = open_either(data, tmp_path, seekable)
        reader.extract(None, to_dest(dest), nothing)
    assert_one_line(err.value, "truncated", SPACE_NAME)
    assert not dest.exists() or [p for p in dest.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("seekable", [True, False], ids=["file", "pipe"])
@pytest.mark.parametrize("victim", ["misc/factor.parset", "chunks/chunk0.ms/table.f0"])
def test_corrupted_member_is_named_and_not_restored(tmp_path, archive, seekable, victim):
    out, manifest, _ = archive
    data = bytearray(out.read_bytes())
    data[offset_of(manifest, victim) + 3] ^= 0x01
    dest = tmp_path / "restored"
    reader = open_either(bytes(data), tmp_path, seekable)
    with pytest.raises(BadInput) as err:
        reader.extract(None, to_dest(dest), nothing)
    assert_one_line(err.value, "damaged", victim.rsplit("/", 1)[0] if "chunks" in victim
                    else victim)
    assert not (dest / victim).exists()
    assert not list(dest.rglob("*partial*")) if dest.exists() else True
    if not seekable:            # one pass: all or nothing
        assert not dest.exists() or [p for p in dest.rglob("*") if p.is_file()] == []
    reader.close()


def test_verify_lists_each_damaged_file(tmp_path, archive):
    out, manifest, _ = archive
    data = bytearray(out.read_bytes())
    for victim in ("misc/factor.parset", "chunks/chunk0.ms/table.f0"):
        data[offset_of(manifest, victim)] ^= 0xFF
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    with TarReader(damaged) as reader:
        problems = reader.verify(nothing)
    assert len(problems) == 2
    assert "misc/factor.parset" in problems[0] and "table.f0" in problems[1]
    with TarReader(pipe_feed(bytes(data))) as reader:
        assert len(reader.verify(nothing)) == 2


def test_damaged_manifest_or_missing_index_is_refused(tmp_path, archive):
    out, manifest, _ = archive
    data = bytearray(out.read_bytes())
    index = tarmod.parse_index(bytes(data[-1536:-1024]))
    data[index[MANIFEST_NAME][0] + 10] ^= 0x01
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(BadInput) as err:
        TarReader(bad)
    assert_one_line(err.value, "manifest", "damaged")
    # a tar made by someone else has no index
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(out, arcname="x")
    with pytest.raises(BadInput) as err:
        TarReader(plain)
    assert_one_line(err.value, "no factor-archive index")


def test_an_interrupted_write_leaves_nothing_that_looks_complete(tmp_path, run):
    items = members_for(run)
    out = tmp_path / "run.tar"
    writer = TarWriter(str(out), clobber=False)
    writer.write(*items[0], nothing)
    staging = writer.staging_dir()
    assert staging.parent == tmp_path
    assert not out.exists() and (tmp_path / f".run.tar.partial-{os.getpid()}").exists()
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_existing_output_needs_clobber_and_is_replaced_only_at_the_end(tmp_path, run):
    items = members_for(run)
    out = tmp_path / "run.tar"
    out.write_bytes(b"old archive")
    with pytest.raises(BadInput) as err:
        TarWriter(str(out), clobber=False)
    assert_one_line(err.value, str(out), "exists")
    writer = TarWriter(str(out), clobber=True)
    members = [writer.write(m, s, nothing) for m, s in items]
    assert out.read_bytes() == b"old archive"
    writer.close(Manifest(container="", run={}, options={}, members=members))
    assert detect(str(out)) == "tar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.tar"]


def test_same_inputs_archive_to_identical_bytes(tmp_path, run):
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    write_archive(a, members_for(run))
    write_archive(b, members_for(run))
    assert a.read_bytes() == b.read_bytes()
    assert hashlib.sha256(a.read_bytes()).hexdigest() == \
        hashlib.sha256(b.read_bytes()).hexdigest()


def test_link_members_carry_no_bytes(tmp_path, run):
    items = members_for(run)
    link = Member(path="misc/input.ms", source="/data/input.ms", category="misc", kind="link",
                  size=0, mode=0, mtime=0.0, sha256="", symlink_target="/data/input.ms")
    out = tmp_path / "run.tar"
    writer = TarWriter(str(out), clobber=False)
    members = [writer.write(m, s, nothing) for m, s in items[:1]]
    members.append(writer.write(link, Path("/data/input.ms"), nothing))
    writer.close(Manifest(container="", run={}, options={}, members=members))
    dest = tmp_path / "restored"
    with TarReader(out) as reader:
        reader.extract(None, to_dest(dest), nothing)
        assert reader.manifest.member("misc/input.ms").symlink_target == "/data/input.ms"
    with TarReader(pipe_feed(out.read_bytes())) as reader:
        reader.extract(None, to_dest(tmp_path / "r2"), nothing)
    assert not (dest / "misc").exists() and not (tmp_path / "r2/misc").exists()


# ---------------------------------------------------------------------------------------------
# Story: someone hands us a hostile archive

def data_offset(tf: tarfile.TarFile, data: bytes | None) -> int:
    """Where the entry just added keeps its data (tarfile records no offsets when writing)."""
    size = len(data or b"")
    return tf.offset - size - (-size % 512)


def craft(entries: list[tuple[tarfile.TarInfo, bytes | None, Member | None]]) -> bytes:
    """A tar written by Python's tarfile (not our writer) with a valid factor-archive index.

    Members get offsets from where tarfile put their data and are announced like ours, so
    only the hostile detail differs from a genuine archive.
    """
    buf = io.BytesIO()
    members = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data, member in entries:
            if member is not None:
                info.pax_headers = {"comment": tarmod.announcement(member)}
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
            if member is not None:
                member.offset = data_offset(tf, data)
                member.size = len(data or b"")
                member.sha256 = hashlib.sha256(data or b"").hexdigest()
                members.append(member)
        manifest = Manifest(container="tar", run={}, options={}, members=members)
        blobs = {}
        for name, body in ((MANIFEST_NAME, manifest.to_json().encode()), (CHECKSUMS_NAME, b"")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
            blobs[name] = (data_offset(tf, body), len(body), hashlib.sha256(body).hexdigest())
        end = tf.offset
    return buf.getvalue()[:end] + tarmod.index_entry(blobs, 0) + b"\0" * 1024


def file_info(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info


def special_info(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def plain_member(path: str) -> Member:
    return Member(path=path, source="/x", category="misc", kind="file", size=0, mode=0o644,
                  mtime=0.0, sha256="", restore_path=path)


HOSTILE = {
    "symlink": lambda: [(special_info("misc/evil", tarfile.SYMTYPE, "/etc/passwd"), None,
                         plain_member("misc/evil"))],
    "hardlink": lambda: [(special_info("misc/evil", tarfile.LNKTYPE, "/etc/passwd"), None,
                          plain_member("misc/evil"))],
    "device": lambda: [(special_info("misc/evil", tarfile.CHRTYPE), None,
                        plain_member("misc/evil"))],
    "fifo": lambda: [(special_info("misc/evil", tarfile.FIFOTYPE), None,
                      plain_member("misc/evil"))],
    "absolute": lambda: [(file_info("/tmp/evil", b"x"), b"x", None)],
    "dotdot": lambda: [(file_info("misc/../../evil", b"x"), b"x", None)],
    "unlisted": lambda: [(file_info("misc/ok", b"fine"), b"fine", plain_member("misc/ok")),
                         (file_info("misc/evil", b"x"), b"x", None)],
}


@pytest.mark.parametrize("seekable", [True, False], ids=["file", "pipe"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_nothing_escapes(tmp_path, case, seekable, request):
    data = craft(HOSTILE[case]())
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "out"
    before = set(tmp_path.rglob("*"))
    try:
        reader = open_either(data, tmp_path, seekable)
        reader.extract(None, to_dest(dest), nothing)
        dest.mkdir(exist_ok=True)
        refused = None
        problems = reader.verify(nothing) if seekable else []
    except BadInput as exc:
        refused = exc
    if case in ("unlisted", "absolute", "dotdot") and seekable:
        # The manifest cannot reference these, and seeking never reads an entry it does not
        # reference; verify walks every header and reports the stray one.
        assert refused is None
        assert tree(dest) == ({"misc": None, "misc/ok": b"fine"} if case == "unlisted" else {})
        assert len(problems) == 1 and "evil" in problems[0], problems
    else:
        assert refused is not None
        assert_one_line(refused)
        if case in ("symlink", "hardlink", "device", "fifo", "absolute", "dotdot"):
            assert isinstance(refused, UnsafeArchive), refused
        assert not dest.exists() or [p for p in dest.rglob("*") if not p.is_dir()] == []
    created = set(tmp_path.rglob("*")) - before
    assert all(p == dest or dest in p.parents or p.name == "damaged.tar" for p in created), \
        created
    assert not Path("/tmp/evil").exists()
    record(request.config, Case("hostile", "tar", case, f"{case} ({'file' if seekable else 'pipe'})",
                                "refused"))


def retail(data: bytes, mutate) -> bytes:
    """Replace an archive's manifest by a mutated one, with a correct index, like an attacker."""
    index = tarmod.parse_index(data[-1536:-1024])
    m_off = index[MANIFEST_NAME][0]
    start = m_off - 3 * 512                    # pax header block, pax data block, ustar header
    assert data[start:start + 14] == b"././@PaxHeader"
    manifest = Manifest.from_json(data[m_off:m_off + index[MANIFEST_NAME][1]])
    mutate(manifest)
    out = bytearray(data[:start])
    bodies = {MANIFEST_NAME: manifest.to_json().encode(), CHECKSUMS_NAME: b""}
    bodies[TAG_MANIFEST_NAME] = tag_manifest_text(bodies).encode()   # an attacker redoes them all
    blobs = {}
    for name, body in bodies.items():
        out += tarmod.entry_headers(name, b"0", len(body), 0o644, 0)
        blobs[name] = (len(out), len(body), hashlib.sha256(body).hexdigest())
        out += body + b"\0" * (-len(body) % 512)
    return bytes(out) + tarmod.index_entry(blobs, 0) + b"\0" * 1024


@pytest.mark.parametrize("seekable", [True, False], ids=["file", "pipe"])
def test_manifest_offsets_pointing_elsewhere_are_refused(tmp_path, archive, seekable, request):
    out, _, _ = archive

    def swap(manifest: Manifest) -> None:
        a = manifest.member("misc/factor.parset")
        b = manifest.member(f"images/{SPACE_NAME}")
        a.offset = b.offset                    # data of another file, sha stays a's

    dest = tmp_path / "restored"
    with pytest.raises(BadInput) as err:
        reader = open_either(retail(out.read_bytes(), swap), tmp_path, seekable)
        reader.extract(None, to_dest(dest), nothing)
    assert_one_line(err.value, "misc/factor.parset", "does not point at its data")
    assert not (dest / "misc/factor.parset").exists()
    record(request.config, Case("hostile", "tar", "manifest offsets pointing elsewhere",
                                "offsets swapped", "refused"))


@pytest.mark.parametrize("seekable", [True, False], ids=["file", "pipe"])
def test_manifest_naming_an_escape_is_refused(tmp_path, archive, seekable, request):
    out, _, _ = archive

    def escape(manifest: Manifest) -> None:
        manifest.member("chunks/chunk0.ms").files[0].path = "../../../evil"

    with pytest.raises(UnsafeArchive):
        reader = open_either(retail(out.read_bytes(), escape), tmp_path, seekable)
        reader.extract(None, to_dest(tmp_path / "restored"), nothing)
    assert not (tmp_path / "restored").exists()
    record(request.config, Case("hostile", "tar", "manifest naming an escape", "table file ../../../evil",
                                "refused"))


# ---------------------------------------------------------------------------------------------
# Story: a calibrated-data MS bigger than 8 GiB

def test_size_over_8_gib_uses_a_pax_size_record():
    size = 9 * 2 ** 30 + 7
    headers = tarmod.entry_headers("calibrated_data/huge.ms/table.f0_TSM0", b"0", size, 0o644,
                                   1_700_000_000_123_456_789)
    assert b" size=9663676423\n" in headers
    ustar = headers[-512:]
    assert ustar[124:136] == b"00000000000\0"       # the octal field cannot hold it
    with tarfile.open(fileobj=io.BytesIO(headers + b"\0" * 4096), mode="r|") as t:
        info = t.next()
    assert info.size == size and info.name == "calibrated_data/huge.ms/table.f0_TSM0"
    assert info.mtime == pytest.approx(1_700_000_000.123456789)
    scanner = _Scanner(io.BytesIO(headers), "test", None)
    entry = scanner.next()
    assert entry.size == size and entry.data_offset == len(headers)
    gnu = subprocess.run(["tar", "tvf", "-"], input=headers + b"\0" * 4096,
                         capture_output=True)
    assert b"9663676423" in gnu.stdout


def test_long_and_non_ascii_names_live_in_the_pax_path_record():
    for path in ("chunks/" + "d" * 120 + "/table.f0", "x" * 300, "images/field ñ é.fits"):
        headers = tarmod.entry_headers(path, b"0", 0, 0o644, 0)
        ustar = tarmod.parse_header(headers[-512:])
        assert ustar.name == path.encode("ascii", "replace")[:100]    # what tarfile puts there
        assert ustar.name in tarmod.ustar_names(path)
        assert tarmod.parse_pax(headers[512:-512])["path"] == path
        with tarfile.open(fileobj=io.BytesIO(headers + b"\0" * 1024), mode="r|") as t:
            assert t.next().name == path
        gnu = subprocess.run(["tar", "tf", "-"], input=headers + b"\0" * 1024, capture_output=True)
        assert gnu.stdout.decode().strip() == path


def test_names_written_before_tarfile_built_the_headers_are_still_accepted():
    deep = "chunks/" + "d" * 120 + "/table.f0"
    assert deep.encode() in tarmod.ustar_names(deep)          # prefix/name split, joined
    assert any(n.startswith(b"@LongName/") for n in tarmod.ustar_names("x" * 300))


def test_damaged_pax_records_are_refused_not_skipped():
    good = tarmod.entry_headers("misc/a", b"0", 0, 0o644, 0)[512:-512]
    for bad in (b"99" + good[2:], good.replace(b"\n", b"x", 1), b"12 path=x\n" + b"junk".ljust(500, b"\0")):
        with pytest.raises(ValueError):
            tarmod.parse_pax(bad)


@pytest.mark.skipif(os.environ.get("FACTOR_ARCHIVE_BIG_TESTS") != "1",
                    reason="writes and reads 8 GiB through a pipe; set FACTOR_ARCHIVE_BIG_TESTS=1")
def test_member_over_8_gib_round_trips_through_a_pipe(tmp_path, monkeypatch):
    big = tmp_path / "huge.bin"
    size = 8 * 2 ** 30 + 513
    with open(big, "wb") as f:
        f.truncate(size)
        f.seek(size - 4)
        f.write(b"tail")
    member = Member(path="calibrated_data/huge.bin", source=str(big),
                    category="calibrated_data", kind="file", size=0, mode=0, mtime=0.0,
                    sha256="")
    r, w = os.pipe()
    reader_in = open(r, "rb")  # noqa: SIM115 - the pipe's ends outlive this block
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(open(w, "wb")))  # noqa: SIM115
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            writer = TarWriter("-", clobber=False)
            writer.close(Manifest(container="", run={}, options={},
                                  members=[writer.write(member, big, nothing)]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            sys.stdout.close()

    thread = threading.Thread(target=produce)
    thread.start()
    with TarReader(reader_in) as reader:
        assert reader.verify(nothing) == []
        assert reader.manifest.member("calibrated_data/huge.bin").size == size
    thread.join()
    assert not errors


# ---------------------------------------------------------------------------------------------
# Story: restore again over an earlier restore (unarchive -c), archive generated data

@pytest.mark.parametrize("seekable", [True, False], ids=["file", "pipe"])
def test_restoring_over_an_earlier_restore_replaces_it(tmp_path, run, archive, seekable):
    out, _, items = archive
    dest = tmp_path / "restored"
    (dest / "chunks/chunk0.ms").mkdir(parents=True)
    (dest / "chunks/chunk0.ms/stale.f9").write_text("from an older restore")
    (dest / "misc").mkdir()
    (dest / "misc/factor.parset").write_text("old")
    reader = open_either(out.read_bytes(), tmp_path, seekable)
    reader.extract(None, to_dest(dest), nothing)
    reader.close()
    assert tree(dest) == source_tree(run, items)


def test_a_staged_member_is_freed_once_it_is_in_the_archive(tmp_path, run):
    out = tmp_path / "run.tar"
    writer = TarWriter(str(out), clobber=False)
    scratch = writer.staging_dir()
    staged = scratch / "chunk0_concat.ms"
    shutil.copytree(run / "chunks/chunk0.ms", staged)
    member = Member(path="calibrated_data/chunk0_concat.ms", source=str(staged),
                    category="calibrated_data", kind="table", size=0, mode=0, mtime=0.0,
                    sha256="")
    stored = writer.write(member, staged, nothing, staged=True)
    assert not staged.exists()
    assert member.sha256 == "" and stored.sha256      # the plan's member is left as it was
    writer.close(Manifest(container="", run={}, options={}, members=[stored]))
    assert not scratch.exists()
    with TarReader(out) as reader:
        assert reader.verify(nothing) == []


@pytest.mark.parametrize("seekable", [True, False], ids=["file", "pipe"])
def test_progress_counts_the_bytes_of_the_chosen_members(tmp_path, archive, seekable):
    out, manifest, _ = archive
    done: list[int] = []
    reader = open_either(out.read_bytes(), tmp_path, seekable)
    reader.extract(None, lambda m: tmp_path / "r" / m.path if m.kind == "table" else None,
                   done.append)
    reader.close()
    assert sum(done) == manifest.member("chunks/chunk0.ms").size
    checked: list[int] = []
    with open_either(out.read_bytes(), tmp_path, seekable) as reader:
        assert reader.verify(checked.append) == []
    assert sum(checked) == sum(m.size for m in manifest.members)


def test_clashing_archive_paths_are_refused(tmp_path, run):
    items = members_for(run)
    writer = TarWriter(str(tmp_path / "run.tar"), clobber=False)
    writer.write(*items[3], nothing)                              # chunks/chunk0.ms
    for bad in ("chunks/chunk0.ms", "chunks/chunk0.ms/extra", "chunks", MANIFEST_NAME,
                "misc/./x"):
        member, source = members_for(run)[1]
        member.path = bad
        with pytest.raises(BadInput):
            writer.write(member, source, nothing)
    writer.abort()


# ---------------------------------------------------------------------------------------------
# Story: an archive written by factor-archive 0.1.0, before tarfile built the headers (UTF-8 ustar
# names split into prefix and name, pax header blocks with mode 0644), is read as before

OLD_TAR = Path(__file__).parent / "data" / "tar_written_by_0.1.0.tar"


@pytest.mark.parametrize("seekable", [True, False], ids=["file", "pipe"])
def test_an_archive_written_before_tarfile_built_the_headers_still_restores(tmp_path, seekable):
    reader = open_either(OLD_TAR.read_bytes(), tmp_path, seekable)
    with reader:
        if seekable:
            assert reader.verify(nothing) == []
        reader.extract(None, lambda m: tmp_path / "out" / m.path, nothing)
    out = tmp_path / "out"
    image = out / "images" / "field image ñ é.fits"
    assert image.read_bytes() == bytes(range(256)) * 40
    assert image.stat().st_mode & 0o777 == 0o640 and image.stat().st_mtime_ns // 1000 == 1_700_000_000_123_456
    deep = out / "pipeline_state" / ("d" * 60) / ("e" * 60) / "long name ø.mapfile"
    assert len(str(deep.relative_to(out)).encode()) > 100 and deep.is_file()
    assert (out / "misc" / "empty").read_bytes() == b""
    assert (out / "chunks" / "chunk0.ms" / "table.dat").is_file()


# ---------------------------------------------------------------------------------------------
# Story: a run's tables are archived one after another; each table's files are checksummed
# (read back from the tar on other threads) while the next member is copied, and the tar is the
# same as one written member by member

def big_table_run(root: Path) -> list[tuple[Member, Path]]:
    table = root / "chunks" / "big.ms"
    table.mkdir(parents=True)
    (table / "table.f0").write_bytes(os.urandom(20 << 20))   # several copy ranges: hashed on a thread
    (table / "table.dat").write_bytes(b"x" * 100)
    (root / "after.txt").write_text("the next member\n")

    def m(path: str, source: Path, kind: str) -> tuple[Member, Path]:
        return Member(path=path, source=str(source), category="chunks", kind=kind, size=0,
                      mode=0, mtime=0.0, sha256="", restore_path=path), source

    return [m("chunks/big.ms", table, "table"), m("after.txt", root / "after.txt", "file")]


def test_a_table_is_checksummed_while_the_next_member_is_copied(tmp_path, monkeypatch):
    from factor_archive.archive import _one_behind
    from factor_archive.plan import PlanItem

    items = big_table_run(tmp_path / "run")
    events: list[str] = []
    real_checksum, real_write_file = TarWriter._checksum, TarWriter._write_file

    def checksum(self, sha, **kwargs):
        events.append("wait")
        return real_checksum(self, sha, **kwargs)

    def write_file(self, apath, *args, **kwargs):
        events.append(apath)
        return real_write_file(self, apath, *args, **kwargs)

    monkeypatch.setattr(TarWriter, "_checksum", checksum)
    monkeypatch.setattr(TarWriter, "_write_file", write_file)
    writer = TarWriter(str(tmp_path / "behind.tar"))
    plan = [PlanItem(member=m, source=s, size=0) for m, s in items]
    members = _one_behind(plan, lambda item: writer.begin_write(item.member, item.source, nothing))
    writer.close(Manifest(container="", run={"name": "test"}, options={}, members=members, created=CREATED))
    # The table's two files, then the next member copied, then the table's checksums waited for.
    assert events[:3] == ["chunks/big.ms/table.dat", "chunks/big.ms/table.f0", "after.txt"]
    assert events[3:5] == ["wait", "wait"]
    monkeypatch.setattr(TarWriter, "_checksum", real_checksum)
    monkeypatch.setattr(TarWriter, "_write_file", real_write_file)

    one_by_one = write_archive(tmp_path / "one.tar", items)
    assert [m.sha256 for m in members] == [m.sha256 for m in one_by_one.members]
    assert members[0].files[1].sha256 == hashlib.sha256((items[0][1] / "table.f0").read_bytes()).hexdigest()
    assert (tmp_path / "behind.tar").read_bytes() == (tmp_path / "one.tar").read_bytes()


def test_a_checksum_failing_after_the_next_member_was_copied_fails_the_archive(tmp_path, monkeypatch):
    """The table's read-back fails while the next member is copied: the archive stops with one
    line naming the output, and leaves nothing that looks like an archive."""
    from factor_archive.archive import _one_behind
    from factor_archive.errors import FactorArchiveError
    from factor_archive.io import copy as copy_engine
    from factor_archive.plan import PlanItem

    items = big_table_run(tmp_path / "run")
    real_read_back = copy_engine._read_back

    def failing(fd, offset, size, buf, digest):
        if size > 1 << 20 and offset > 8 << 20:   # a later range of the big file: on a hashing thread
            raise OSError(errno.EIO, "Input/output error")
        return real_read_back(fd, offset, size, buf, digest)

    monkeypatch.setattr(copy_engine, "_read_back", failing)
    out = tmp_path / "run.tar"
    writer = TarWriter(str(out))
    copied: list[str] = []

    def begin(item: PlanItem):
        finish = writer.begin_write(item.member, item.source, nothing)
        copied.append(item.member.path)
        return finish

    with pytest.raises(FactorArchiveError) as failure:
        try:
            _one_behind([PlanItem(member=m, source=s, size=0) for m, s in items], begin)
        except BaseException:
            writer.abort()
            raise
    assert copied == ["chunks/big.ms", "after.txt"]
    message = str(failure.value)
    assert "\n" not in message and str(out) in message and "input/output error" in message.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
