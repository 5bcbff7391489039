"""User stories for the zarr form (``--format zarr``): a directory store, a zip file, an S3 bucket."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_tables_equal
from factor_archive.cli import archivefactor_main, main, unarchivefactor_main

CHUNK = "chunks/Band_120.21MHz/L123456_SB000_uv.dppp.pre-cal_chunk0.ms"
PARMDB = "instrument_tables/facet3/L123456_SB000_uv.dppp.pre-cal_chunk0.merge_selfcal_parmdbs"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def zarr_manifest(location: str | Path) -> dict:
    from factor_archive.containers.zarr import ZarrReader

    reader = ZarrReader(str(location))
    try:
        return json.loads(reader.manifest.to_json())
    finally:
        reader.close()


def table_roots(manifest: dict) -> list[str]:
    return [m["restore_path"] for m in manifest["members"]
            if m["kind"] == "table" and m["restore_path"] is not None]


def plain_files(root: Path, tables: list[str]) -> dict[str, str]:
    """Every regular file below root outside the tables: relative path -> sha256."""
    skip = {root / t for t in tables}
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in filenames:
            p = here / name
            out[str(p.relative_to(root))] = sha(p)
    return out


def assert_same_restore(expected: Path, got: Path, manifest: dict) -> None:
    """Tables column by column; every other file byte for byte (rewritten ones included)."""
    tables = table_roots(manifest)
    assert tables
    for rel in tables:
        assert (got / rel).is_dir() and not (got / rel).is_symlink(), rel
        assert_tables_equal(expected / rel, got / rel)
    want, have = plain_files(expected, tables), plain_files(got, tables)
    assert want.keys() == have.keys()
    assert want == have


def restore_both(dir_archive: Path, zarr_archive: str, out: Path) -> Path:
    """Restore the directory form and the zarr form at the same path (so rewritten paths agree)."""
    assert unarchivefactor_main(["-q", str(dir_archive), str(out)]) == 0
    from_dir = out.with_name(out.name + "-from-dir")
    out.rename(from_dir)
    assert unarchivefactor_main(["-q", zarr_archive, str(out)]) == 0
    return from_dir


# ---------------------------------------------------------------------------------------------
# Directory store

def test_zarr_round_trip_restores_what_the_directory_form_restores(sample_run, tmp_path, monkeypatch):
    from factor_archive.containers import zarr as zarr_store
    from factor_archive.ms.casacore_table import table_content_sha256

    real_write = zarr_store.ZarrWriter.write
    staged_left = []

    def write(self, member, source, progress, **kw):
        done = real_write(self, member, source, progress, **kw)
        if member.category == "calibrated_data":
            staged_left.append(Path(source).exists())
        return done

    monkeypatch.setattr(zarr_store.ZarrWriter, "write", write)
    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", "-d", "facet1", str(sample_run), str(store)]) == 0
    assert staged_left == [False, False, False]   # generated chunks leave the staging dir once stored
    assert archivefactor_main(["-q", "-r", "-d", "facet1", str(sample_run), str(tmp_path / "dir")]) == 0
    assert (store / "zarr.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary left

    manifest = zarr_manifest(store)
    assert manifest["container"] == "zarr"
    by_path = {m["path"]: m for m in manifest["members"]}
    chunk = by_path[CHUNK]
    info = chunk["extra"]["zarr"]
    assert info["stored"] == "columns" and info["node"] == f"members/{CHUNK}"
    assert info["rows"] > 0 and "DATA" in info["codecs"]
    # A table's checksum in this form is its content checksum, which the restored table shares.
    assert chunk["sha256"] == info["content_sha256"] == table_content_sha256(chunk["source"])
    assert chunk["files"] == []
    image = next(m for m in manifest["members"] if m["category"] == "images")
    assert image["sha256"] == sha(Path(image["source"]))
    assert image["extra"]["zarr"]["stored"] == "file"
    cal = [m for m in manifest["members"] if m["category"] == "calibrated_data"]
    assert len(cal) == 3 and all(m["extra"]["zarr"]["stored"] == "columns" for m in cal)

    assert main(["verify", "-q", str(store)]) == 0
    real_node = zarr_store.ZarrReader._node

    def node(self, member):  # file members are read from their shard files, not through zarr
        assert member.kind != "file", member.path
        return real_node(self, member)

    monkeypatch.setattr(zarr_store.ZarrReader, "_node", node)
    out = tmp_path / "restored ü" / "run"
    from_dir = restore_both(tmp_path / "dir", str(store), out)
    assert_same_restore(from_dir, out, manifest)
    assert (out / "factor.parset").read_text() == (from_dir / "factor.parset").read_text()
    assert str(out) in (out / "factor.parset").read_text()
    assert not (out / ".factor-archive-restore-incomplete").exists()


def test_plain_zarr_and_xarray_read_the_store_without_our_code(sample_run, tmp_path):
    import xarray as xr
    import zarr
    from casacore import tables as ct

    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    manifest = zarr_manifest(store)
    chunk = next(m for m in manifest["members"] if m["path"] == CHUNK)

    ds = xr.open_zarr(str(store), group=f"members/{CHUNK}", consolidated=False)
    assert ds["DATA"].dims == ("row", "chan", "corr")
    with ct.table(chunk["source"], ack=False) as t:
        np.testing.assert_array_equal(ds["DATA"].values, t.getcol("DATA"))
        np.testing.assert_array_equal(ds["FLAG"].values, t.getcol("FLAG"))
        assert ds.sizes["row"] == t.nrows()

    # A file is a uint8 array; the manifest is one too.
    root = zarr.open_group(str(store), mode="r")
    image = next(m for m in manifest["members"] if m["category"] == "images")
    data = root[f"members/{image['path']}"][:].tobytes()
    assert data == Path(image["source"]).read_bytes()
    text = root["manifest.json"][:].tobytes().decode("utf-8")
    assert json.loads(text)["members"][0]["path"] == manifest["members"][0]["path"]
    assert root.attrs["factor_archive"]["manifest"] == "manifest.json"


# ---------------------------------------------------------------------------------------------
# Zip

def test_zip_store_round_trip_and_clobber(sample_run, tmp_path, capsys):
    out = tmp_path / "run.zarr.zip"
    assert archivefactor_main(["-q", "-r", "-d", "facet1", str(sample_run), str(out)]) == 0
    assert zipfile.is_zipfile(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.zarr.zip", "site ø"]
    names = zipfile.ZipFile(out).namelist()
    assert "manifest.json/zarr.json" in names and f"members/{CHUNK}/DATA/zarr.json" in names
    assert main(["verify", "-q", str(out)]) == 0
    capsys.readouterr()
    assert main(["ls", str(out)]) == 0
    assert "# zarr archive" in capsys.readouterr().out

    restored = tmp_path / "r"
    assert unarchivefactor_main(["-q", str(out), str(restored)]) == 0
    manifest = zarr_manifest(out)
    for m in manifest["members"]:
        if m["restore_path"] is None or m["category"] == "calibrated_data":
            continue
        if m["kind"] == "table":
            assert_tables_equal(Path(m["source"]), restored / m["restore_path"])
        elif m["rewrite"] is None:
            assert sha(Path(m["source"])) == sha(restored / m["restore_path"]), m["path"]
    assert (restored / "factor.parset").is_file()

    before = out.read_bytes()
    assert archivefactor_main(["-q", "-r", str(sample_run), str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "use -c" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before
    assert archivefactor_main(["-q", "-c", "-r", str(sample_run), str(out)]) == 0
    assert out.read_bytes() != before
    assert main(["verify", "-q", str(out)]) == 0


# ---------------------------------------------------------------------------------------------
# S3 (SeaweedFS on loopback)

def test_s3_store_round_trip(sample_run, tmp_path, monkeypatch, capsys):
    from s3server import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed")
    with SeaweedS3(tmp_path / "seaweed") as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.delenv("FACTOR_ARCHIVE_S3_ENDPOINT", raising=False)
        s3.make_bucket("factor-archives")
        url = "s3://factor-archives/runs/L123456"
        assert archivefactor_main(["-q", "-r", str(sample_run), url]) == 0
        fs = s3.filesystem()
        assert fs.exists("factor-archives/runs/L123456/manifest.json/zarr.json")
        assert fs.exists(f"factor-archives/runs/L123456/members/{CHUNK}/DATA/zarr.json")

        # The same keys through FACTOR_ARCHIVE_S3_ENDPOINT only.
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        monkeypatch.setenv("FACTOR_ARCHIVE_S3_ENDPOINT", s3.endpoint)
        assert main(["verify", "-q", url]) == 0
        capsys.readouterr()
        assert main(["ls", url]) == 0
        assert CHUNK in capsys.readouterr().out

        assert archivefactor_main(["-q", "-r", str(sample_run), url]) == 2
        err = capsys.readouterr().err
        assert url in err and "use -c" in err

        # Wrong keys: one line, no traceback.
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        assert main(["ls", url]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and url in err and "Traceback" not in err
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.env["AWS_SECRET_ACCESS_KEY"])

        assert archivefactor_main(["-q", "-r", str(sample_run), str(tmp_path / "dir")]) == 0
        out = tmp_path / "restored"
        from_dir = restore_both(tmp_path / "dir", url, out)
        assert_same_restore(from_dir, out, zarr_manifest(url))


# ---------------------------------------------------------------------------------------------
# Damage

def test_corrupt_chunk_is_named_by_table_column_and_rows(sample_run, tmp_path, capsys):
    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    shard = store / "members" / CHUNK / "DATA" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    mid = len(data) // 3
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    shard.write_bytes(bytes(data))
    image, other = [m for m in zarr_manifest(store)["members"] if m["category"] == "images"][:2]
    (store / "members" / image["path"] / "c" / "0").unlink()          # a file's only shard
    shard = store / "members" / other["path"] / "c" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF                                       # inside its one chunk
    shard.write_bytes(bytes(data))

    capsys.readouterr()
    assert main(["verify", "-q", str(store)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(re.search(rf"{re.escape(CHUNK)}: column DATA rows \d+-\d+: stored data is damaged", line)
               for line in lines), lines
    assert any(image["path"] in line and "missing" in line for line in lines), lines
    assert any(re.search(rf"{re.escape(other['path'])}: bytes 0-\d+: stored data is damaged", line)
               for line in lines), lines
    assert len(lines) == 3, lines

    restored = tmp_path / "r"
    assert unarchivefactor_main(["-q", str(store), str(restored)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (restored / "factor.parset").exists()


def test_tables_restored_two_at_once_report_the_first_damaged_one(sample_run, tmp_path, capsys):
    """Restore decodes two members at once; when several tables are damaged, the one named is
    the first in the archive's order, every time, and the restore is left incomplete."""
    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    members = [m for m in zarr_manifest(store)["members"]
               if m["kind"] == "table" and (m.get("extra", {}).get("zarr") or {}).get("stored") == "columns"]
    tables = [m["path"] for m in members]
    assert len(tables) >= 3, tables
    damaged = tables[1:]                     # all but the first: two of them decode side by side
    for path in damaged:
        for shard in sorted((store / "members" / path).glob("*/c/0")) + \
                sorted((store / "members" / path).glob("*/c/0/0")):
            if shard.is_file() and shard.stat().st_size > 64:
                data = bytearray(shard.read_bytes())
                data[len(data) // 3] ^= 0xFF
                shard.write_bytes(bytes(data))
                break
        else:
            pytest.fail(f"no shard to damage in {path}")
    for attempt in range(2):
        restored = tmp_path / f"r{attempt}"
        capsys.readouterr()
        assert unarchivefactor_main(["-q", str(store), str(restored)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert damaged[0] in err and "damaged" in err, (damaged, err)
        assert not (restored / "factor.parset").exists()
        assert (restored / ".factor-archive-restore-incomplete").exists()
        assert not (restored / members[1]["restore_path"]).exists()  # nothing half-written there


def test_missing_subtable_shard_is_named(sample_run, tmp_path, capsys):
    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    ant = store / "members" / CHUNK / "subtables" / "ANTENNA" / "POSITION" / "c" / "0" / "0"
    ant.unlink()
    capsys.readouterr()
    assert main(["verify", "-q", str(store)]) == 1
    out = capsys.readouterr().out
    assert f"{CHUNK}/ANTENNA: column POSITION rows 0-" in out and "missing" in out


def test_incomplete_store_is_not_an_archive(sample_run, tmp_path, capsys):
    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    shutil.rmtree(store / "manifest.json")
    capsys.readouterr()
    assert unarchivefactor_main(["-q", str(store), str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a complete archive" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# -s: chunks materialised once

def test_symlink_restore_materialises_each_chunk_once(sample_run, tmp_path, monkeypatch):
    from factor_archive.containers.zarr.reader import ZarrReader

    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    decoded: list[str] = []
    real = ZarrReader._extract_table  # each table decoded (in a casacore worker, or here)

    def counting(self, member, dest, *args, **kw):
        decoded.append(str(dest))
        return real(self, member, dest, *args, **kw)

    monkeypatch.setattr(ZarrReader, "_extract_table", counting)
    chunk_store = Path(str(store) + ".store")

    assert unarchivefactor_main(["-q", "-s", str(store), str(tmp_path / "r1")]) == 0
    link = tmp_path / "r1" / CHUNK
    assert link.is_symlink()
    target = Path(os.readlink(link))
    assert chunk_store in target.parents and (target.parent / ".complete").is_file()
    first = [p for p in decoded if str(chunk_store) in p]
    nchunks = sum(1 for m in zarr_manifest(store)["members"]      # raw (Dysco) tables are copied
                  if m["category"] == "chunks" and m["kind"] == "table"
                  and m["extra"]["zarr"]["stored"] == "columns")
    assert len(first) == nchunks
    assert_tables_equal(Path(next(m["source"] for m in zarr_manifest(store)["members"]
                                                if m["path"] == CHUNK)), link)
    inode = target.stat().st_ino

    decoded.clear()
    assert unarchivefactor_main(["-q", "-s", str(store), str(tmp_path / "r2")]) == 0
    assert not [p for p in decoded if str(chunk_store) in p]          # reused, not decoded again
    assert Path(os.readlink(tmp_path / "r2" / CHUNK)) == target and target.stat().st_ino == inode

    # --store puts the same content-addressed layout elsewhere, decoded once there too.
    other = tmp_path / "elsewhere"
    sha = next(m["sha256"] for m in zarr_manifest(store)["members"] if m["path"] == CHUNK)
    decoded.clear()
    for out in ("r3", "r4"):
        assert unarchivefactor_main(["-q", "-s", "--store", str(other), str(store),
                                     str(tmp_path / out)]) == 0
        got = Path(os.readlink(tmp_path / out / CHUNK))
        assert got == other / sha[:2] / sha / Path(CHUNK).name
    assert len([p for p in decoded if str(other) in p]) == nchunks


# ---------------------------------------------------------------------------------------------
# Raw tables, clobber, interruption, names

def test_tables_that_cannot_be_decoded_are_kept_as_raw_files(sample_run, tmp_path, monkeypatch, capsys):
    from factor_archive.ms import casacore_table as table_codec

    real = table_codec.encode_table

    def dysco_like(table_path, group, **kw):
        if str(table_path).endswith(("parmdbs", ".ms")) and "Band_120.21MHz" not in str(table_path):
            raise table_codec.RawTableRequired(table_path, "data manager DyscoStMan is not available")
        return real(table_path, group, **kw)

    monkeypatch.setattr(table_codec, "encode_table", dysco_like)
    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    manifest = zarr_manifest(store)
    parmdb = next(m for m in manifest["members"] if m["path"] == PARMDB)
    assert parmdb["extra"]["zarr"]["stored"] == "raw-files"
    assert "DyscoStMan" in parmdb["extra"]["zarr"]["raw_reason"]
    assert parmdb["files"] and parmdb["extra"]["zarr"]["checksum"] == "tree-digest"
    assert next(m for m in manifest["members"] if m["path"] == CHUNK)["extra"]["zarr"]["stored"] == "columns"
    assert main(["verify", "-q", str(store)]) == 0

    restored = tmp_path / "r"
    assert unarchivefactor_main(["-q", str(store), str(restored)]) == 0
    src, dst = Path(parmdb["source"]), restored / parmdb["restore_path"]
    for f in parmdb["files"]:
        assert sha(src / f["path"]) == sha(dst / f["path"]) == f["sha256"]
    assert_tables_equal(src, dst)
    from factor_archive.containers.zarr import ZarrReader
    from factor_archive.ms.casacore_table.shards import _StoredArray

    reader = ZarrReader(str(store))   # raw files are read from their files, as file members are: no zarr
    try:
        member = next(m for m in reader.manifest.members if m.path == PARMDB)
        raw = reader._raw_group(member, reader._node(member))
        assert all(isinstance(reader._raw_file(raw, f["path"]), _StoredArray) for f in parmdb["files"])
    finally:
        reader.close()

    first = parmdb["files"][0]["path"]
    shard = store / "members" / PARMDB / "raw" / first / "c" / "0"
    shard.write_bytes(shard.read_bytes()[:-8] + b"garbage!")
    capsys.readouterr()
    assert main(["verify", "-q", str(store)]) == 1
    assert f"{PARMDB}/{first}: bytes 0-" in capsys.readouterr().out


def test_existing_store_needs_clobber_and_a_failed_archive_leaves_nothing(sample_run, tmp_path,
                                                                         monkeypatch, capsys):
    from factor_archive.containers import zarr as zarr_store

    store = tmp_path / "run.zarr"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 0
    before = (store / "manifest.json" / "c" / "0").read_bytes()
    capsys.readouterr()
    assert archivefactor_main(["-q", "-r", str(sample_run), str(store)]) == 2
    err = capsys.readouterr().err
    assert str(store) in err and "use -c" in err

    real = zarr_store.ZarrWriter.write
    calls = {"n": 0}

    def interrupted(self, member, source, progress, **kw):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return real(self, member, source, progress, **kw)

    monkeypatch.setattr(zarr_store.ZarrWriter, "write", interrupted)
    # Overwriting: the old store stays whole until the new one is complete.
    assert archivefactor_main(["-q", "-c", "-r", str(sample_run), str(store)]) == 130
    assert (store / "manifest.json" / "c" / "0").read_bytes() == before
    assert main(["verify", "-q", str(store)]) == 0
    fresh = tmp_path / "fresh.zarr"
    calls["n"] = 0
    assert archivefactor_main(["-q", "-r", str(sample_run), str(fresh)]) == 130
    assert not fresh.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(zarr_store.ZarrWriter, "write", real)
    assert archivefactor_main(["-q", "-r", str(sample_run), str(fresh)]) == 0

    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "precious.txt").write_text("keep")
    assert archivefactor_main(["-q", "-c", "--format", "zarr", str(sample_run),
                               str(tmp_path / "notastore")]) == 2
    assert (tmp_path / "notastore" / "precious.txt").read_text() == "keep"


def test_awkward_member_names_become_safe_node_names(tmp_path):
    """(Their round trip through every form is in test_container_contract.py.)"""
    from factor_archive.containers.zarr import archive_path_of, node_component, node_path

    for name in ("zarr.json", "__init__", "100%.txt", "a b ø", "c", "_x"):
        assert node_component(name) != "zarr.json" and not node_component(name).startswith("__")
        assert archive_path_of(node_path(f"misc/{name}")) == f"misc/{name}"


@pytest.mark.parametrize("size", [0, 1, 4, 5, 16, 37])
def test_a_file_member_in_a_local_directory_is_stored_as_zarr_would_store_it(size, tmp_path, monkeypatch):
    """A file's array in a local .zarr directory is written without zarr's Array (its
    zarr.json and shards by the codec), byte for byte what zarr writes into any other store,
    and plain zarr reads the file back; sizes around a chunk (4 B here) and a shard (16 B)."""
    import zarr

    from factor_archive.containers.zarr import layout, writer

    monkeypatch.setattr(layout, "FILE_CHUNK", 4)
    monkeypatch.setattr(layout, "FILE_SHARD", 16)
    data = bytes(range(7, 7 + size))
    chunk, shard = layout._file_layout(size)
    attrs = {"factor_archive": {"path": "f.txt", "kind": "file", "size": size}}
    local = zarr.open_group(zarr.storage.LocalStore(str(tmp_path / "a.zarr")), mode="w")
    memory_store = zarr.storage.MemoryStore()
    memory = zarr.open_group(memory_store, mode="w")

    direct = writer._direct_file(local, "f", size, chunk, shard, attrs)
    through_zarr = writer._direct_file(memory, "f", size, chunk, shard, attrs)
    arr = writer._create_file_array(memory, "f", size, chunk, shard, attrs)
    assert direct is not None and through_zarr is None
    for pos in range(0, size, shard):
        direct.write(pos, np.frombuffer(data[pos:pos + shard], np.uint8))
        arr[pos:pos + shard] = np.frombuffer(data[pos:pos + shard], np.uint8)

    on_disk = {str(p.relative_to(tmp_path / "a.zarr")): p.read_bytes()
               for p in (tmp_path / "a.zarr").rglob("*") if p.is_file()}
    assert on_disk == {k: v.to_bytes() for k, v in memory_store._store_dict.items()}
    back = zarr.open_array(zarr.storage.LocalStore(str(tmp_path / "a.zarr"), read_only=True), path="f", mode="r")
    assert back[:].tobytes() == data and back.attrs.asdict() == attrs
