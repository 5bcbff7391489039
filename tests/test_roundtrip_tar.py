"""The same astronomer sends the run to tape as one indexed tar, and gets it back."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factor_archive.cli import archivefactor_main, main, unarchivefactor_main

CLI = [sys.executable, "-m", "factor_archive.cli"]


def content_snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash (or link target), for every file and link below root."""
    snap = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            snap[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def test_tar_restores_the_same_run_as_the_directory_form(sample_run, tmp_path):
    args = ["-q", "-r", "-d", "facet1", str(sample_run)]
    assert archivefactor_main(args + [str(tmp_path / "run")]) == 0
    assert archivefactor_main(["--format", "tar"] + args + [str(tmp_path / "run.tar")]) == 0
    restored = tmp_path / "restored"
    assert unarchivefactor_main(["-q", str(tmp_path / "run"), str(restored)]) == 0
    from_dir = content_snapshot(restored)
    shutil.rmtree(restored)
    assert unarchivefactor_main(["-q", str(tmp_path / "run.tar"), str(restored)]) == 0
    assert content_snapshot(restored) == from_dir
    assert len(from_dir) > 100


def test_gnu_tar_extracts_the_directory_form_tree(sample_run, tmp_path):
    args = ["-q", "-r", "-d", "facet1", str(sample_run)]
    assert archivefactor_main(args + [str(tmp_path / "run")]) == 0
    assert archivefactor_main(args + [str(tmp_path / "run.tar")]) == 0   # form from the name
    listing = subprocess.run(["tar", "tf", str(tmp_path / "run.tar")], capture_output=True, text=True, check=True)
    assert listing.stderr == ""
    out = tmp_path / "x"
    out.mkdir()
    done = subprocess.run(["tar", "xf", str(tmp_path / "run.tar"), "-C", str(out)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""
    subprocess.run(["sha256sum", "--quiet", "-c", "manifest-sha256.txt"], cwd=out, check=True)
    extracted, directory = content_snapshot(out), content_snapshot(tmp_path / "run")
    for name in ("manifest.json", "manifest-sha256.txt", "tagmanifest-sha256.txt", ".factor-archive-index"):
        extracted.pop(name, None)
        directory.pop(name, None)
    assert extracted == directory


def test_streaming_through_pipes(sample_run, tmp_path):
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    args = ["archive", "-q", "-r", "-d", "facet1", str(sample_run)]
    as_file = tmp_path / "run.tar"
    subprocess.run(CLI + args + [str(as_file)], check=True, env=env)
    piped = subprocess.run(CLI + args + ["-"], check=True, env=env, capture_output=True)
    # Streaming never seeks and yet writes the same bytes, index included.
    assert piped.stdout == as_file.read_bytes()
    restored = tmp_path / "from pipe"
    done = subprocess.run(CLI + ["unarchive", "-q", "-", str(restored)], input=piped.stdout,
                          capture_output=True, env=env)
    assert done.returncode == 0, done.stderr
    assert (restored / "factor.parset").is_file()
    reference = tmp_path / "from file"
    assert unarchivefactor_main(["-q", str(as_file), str(reference)]) == 0
    a, b = content_snapshot(restored), content_snapshot(reference)
    assert a.keys() == b.keys()
    same = [k for k in a if a[k] == b[k]]
    # Only files holding the (different) restore path differ.
    for k in set(a) - set(same):
        assert k.endswith((".pkl", ".mapfile", ".parset")), k


def test_symlink_restore_materialises_chunks_once(sample_run, tmp_path):
    archive = tmp_path / "run.tar"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(archive)]) == 0
    assert unarchivefactor_main(["-q", "-s", str(archive), str(tmp_path / "r1")]) == 0
    chunk = tmp_path / "r1/chunks/Band_120.21MHz/L123456_SB000_uv.dppp.pre-cal_chunk0.ms"
    assert chunk.is_symlink()
    target = Path(os.readlink(chunk))
    assert target.is_relative_to(tmp_path / "run.tar.store") and (target / "table.dat").is_file()
    stamp = (target / "table.dat").stat().st_ino
    assert unarchivefactor_main(["-q", "-s", str(archive), str(tmp_path / "r2")]) == 0
    again = tmp_path / "r2/chunks/Band_120.21MHz/L123456_SB000_uv.dppp.pre-cal_chunk0.ms"
    assert Path(os.readlink(again)) == target and (target / "table.dat").stat().st_ino == stamp
    # --store puts it elsewhere.
    assert unarchivefactor_main(["-q", "-s", "--store", str(tmp_path / "cache"), str(archive),
                                 str(tmp_path / "r3")]) == 0
    third = tmp_path / "r3/chunks/Band_120.21MHz/L123456_SB000_uv.dppp.pre-cal_chunk0.ms"
    assert Path(os.readlink(third)).is_relative_to(tmp_path / "cache")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_tar_fails_in_one_line_and_restores_nothing_complete(sample_run, tmp_path, capsys, damage):
    archive = tmp_path / "run.tar"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(archive)]) == 0
    data = bytearray(archive.read_bytes())
    if damage == "truncate":
        archive.write_bytes(bytes(data[: len(data) // 2]))
    else:
        # Flip a byte in the middle of a chunk's data: the index still reads.
        pos = len(data) // 3
        data[pos] ^= 0xFF
        archive.write_bytes(bytes(data))
    capsys.readouterr()
    rc = unarchivefactor_main(["-q", str(archive), str(tmp_path / "r")])
    assert rc in (1, 2)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run.tar" in err, err
    assert ("truncated" if damage == "truncate" else "damaged") in err
    assert not (tmp_path / "r" / "factor.parset").exists()
    if damage == "flip":
        assert main(["verify", "-q", str(archive)]) == 1


def test_restore_from_a_named_pipe(sample_run, tmp_path):
    """`unarchivefactor <(mbuffer ...) out`: a FIFO path is read as a stream, never sniffed."""
    import threading

    archive = tmp_path / "run.tar"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(archive)]) == 0
    fifo = tmp_path / "tape"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as f:
            f.write(archive.read_bytes())

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        assert unarchivefactor_main(["-q", str(fifo), str(tmp_path / "r")]) == 0
    finally:
        feeder.join(timeout=30)
    assert (tmp_path / "r" / "factor.parset").is_file()
    assert (tmp_path / "r/chunks/Band_122.16MHz/L123456_SB010_uv.dppp.pre-cal_chunk0.ms/table.dat").is_file()
