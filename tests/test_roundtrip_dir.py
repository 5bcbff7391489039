"""An astronomer archives a finished Factor run in the directory form and resumes it elsewhere."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import assert_tables_equal, tree_snapshot
from factor_archive.cli import archivefactor_main, main, unarchivefactor_main
from factor_archive.manifest import TAG_MANIFEST_NAME, tag_manifest_text
from factor_archive.run.mapfile import parse_mapfile
from factor_archive.run.model import read_pickle
from factor_archive.run.parset import read_parset


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_of(archive: Path) -> dict:
    return json.loads((archive / "manifest.json").read_text())


def all_strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from all_strings(k)
            yield from all_strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from all_strings(v)


def test_basic_archive_holds_images_plots_and_misc_only(sample_run, tmp_path):
    out = tmp_path / "basic"
    assert archivefactor_main(["-q", str(sample_run), str(out)]) == 0
    paths = {m["path"] for m in manifest_of(out)["members"]}
    cats = {m["category"] for m in manifest_of(out)["members"]}
    assert cats == {"misc", "images", "plots"}
    # Final facet images come from final_image.mapfile, for both imaging operations and target.
    for d in ("facet1", "facet2", "target"):
        for op in ("facetimage", "facetimage_c15.0r0.0t45.0u160.0"):
            assert f"images/{d}/{op}/L123456_SB000_uv.dppp.pre-cal_chunk0.wsclean_image_full-image.fits" in paths
    assert "images/field/fieldmosaic/L123456_SB000_uv.dppp.pre-cal_chunk0.correct_mosaic.pbcor.fits" in paths
    assert "plots/facet1/facetselfcal/slow-phase_facet_facet1.png" in paths
    assert {"misc/factor.parset", "misc/directions.txt", "misc/factor.log",
            "misc/facets_ds9.reg", "misc/calimages_ds9.reg"} <= paths
    # Decoys stay out: model/residual images, premasks, selfcal images, intermediate h5parms.
    assert not [p for p in paths if p.endswith(("-model.fits", "-residual.fits", ".premask", ".h5"))]
    assert not [p for p in paths if "wsclean_image42" in p]
    # sha256sum -c accepts the checksum list.
    subprocess.run(["sha256sum", "--quiet", "-c", "manifest-sha256.txt"], cwd=out, check=True)


def test_archiving_never_writes_to_the_run(sample_run, tmp_path):
    root = sample_run.parent
    before = tree_snapshot(root)
    assert archivefactor_main(["-q", "-r", "-d", "all", str(sample_run), str(tmp_path / "a")]) == 0
    assert tree_snapshot(root) == before


def test_resumable_round_trip_restores_every_item_with_paths_moved(sample_run, tmp_path):
    wd = sample_run.parent / "wdir"
    archive = tmp_path / "arch ive"
    restored = tmp_path / "new place ü" / "run"
    assert archivefactor_main(["-q", "-r", "-d", "facet1", str(sample_run), str(archive)]) == 0
    manifest = manifest_of(archive)
    assert manifest["options"]["resumable"] is True
    by_path = {m["path"]: m for m in manifest["members"]}
    # Solutions: v2 h5parm of a selfcal direction, v1 parmdb table of a peeled outlier.
    assert by_path["instrument_tables/facet1/combined_solutions.h5"]["kind"] == "file"
    parmdb = "instrument_tables/facet3/L123456_SB000_uv.dppp.pre-cal_chunk0.merge_selfcal_parmdbs"
    assert by_path[parmdb]["kind"] == "table"
    assert "sky_models/facet3/L123456_SB000_uv.dppp.pre-cal_chunk0.make_sourcedb_new_facet_sources" in by_path
    # Mapfiles of every operation of a direction, the mosaic's included.
    assert {"pipeline_state/facet1/facetselfcal/input_files_single.mapfile",
            "pipeline_state/facet1/facetsub/input_files_single.mapfile",
            "pipeline_state/facet1/facetimage/final_image.mapfile",
            "pipeline_state/target/facetimage_c15.0r0.0t45.0u160.0/final_image.mapfile",
            "pipeline_state/field/fieldmosaic/pb_image.mapfile",
            "pipeline_state/facet3/outlierpeel/merge_selfcal_parmdbs.mapfile"} <= set(by_path)
    assert unarchivefactor_main(["-q", str(archive), str(restored)]) == 0

    # Every restored member equals its source: tables column by column, files byte for byte.
    for m in manifest["members"]:
        if m["restore_path"] is None or m["category"] == "calibrated_data":
            continue
        src, dst = Path(m["source"]), restored / m["restore_path"]
        assert dst.exists() and not dst.is_symlink(), m["path"]
        if m["kind"] == "table":
            assert_tables_equal(src, dst)
        elif m["rewrite"] is None:
            assert sha(src) == sha(dst), m["path"]

    # The symlinked chunk came back as real data.
    linked = restored / "chunks/Band_122.16MHz/L123456_SB010_uv.dppp.pre-cal_chunk0.ms"
    assert (wd / "chunks/Band_122.16MHz/L123456_SB010_uv.dppp.pre-cal_chunk0.ms").is_symlink()
    assert linked.is_dir() and not linked.is_symlink() and (linked / "table.dat").exists()

    # No path into the old run survives in any state pickle or mapfile; moved paths exist.
    old_root = str(sample_run.parent)
    for pkl in (restored / "state").glob("*.pkl"):
        state = read_pickle(pkl)
        strings = list(all_strings(state))
        assert not [s for s in strings if old_root in s], pkl
        assert state["working_dir"] == str(restored)
    facet1 = read_pickle(restored / "state/facet1_save.pkl")
    assert facet1["region_selfcal"] == f'["{restored}/regions/calimages_ds9.reg"]'
    assert Path(facet1["facet_image_mapfile"]["facetimage"]).exists()
    # A path into the Factor installation is not part of the run and stays as it was.
    assert read_pickle(restored / "state/facet3_save.pkl")["peel_skymodel"] == "/opt/factor/skymodels/3C295.skymodel"
    band = read_pickle(restored / "state/Band_120.21MHz_save.pkl")
    # The dir-independent sky model lived outside the run: it moved to the restored chunks dir.
    assert band["skymodel_dirindep"] == str(restored / "chunks/Band_120.21MHz/L123456_SB000_uv.dppp.pre-cal.merge")
    assert Path(band["skymodel_dirindep"]).is_file()
    for path in band["files"]:
        assert Path(path).is_dir()

    mapfiles = list((restored / "results").rglob("mapfiles/*.mapfile"))
    assert mapfiles
    for mf in mapfiles:
        text = mf.read_bytes().decode("latin-1")
        assert old_root.encode("utf-8").decode("latin-1") not in text, mf
    final = parse_mapfile((restored / "results/facetimage/facet1/mapfiles/final_image.mapfile").read_text())
    assert Path(final[0].file.encode("latin-1").decode("utf-8")).is_file()
    # Values that are not paths stay as they were.
    brk = parse_mapfile((restored / "results/facetselfcal/facet1/mapfiles/verify_subtract.break.mapfile").read_text())
    assert brk[0].file == "True"
    scratch = parse_mapfile((restored / "results/facetselfcal/facet1/mapfiles/concat_data_local.mapfile").read_text())
    assert scratch[0].file == "/tmp/scratch/facet1_a1b2c3/concat.ms"
    multi = parse_mapfile((restored / "results/facetimage/facet1/mapfiles/imaging_input.mapfile").read_text())
    assert multi[0].file.startswith("[") and multi[0].file.endswith("]") and len(multi[0].paths) == 5

    # The resumable parset points at the restored run.
    parset = read_parset(restored / "factor.parset")
    assert parset.working_dir == str(restored)
    assert parset.dir_ms == str(restored / "chunks")
    assert parset.get("directions", "directions_file") == str(restored / "directions.txt")
    assert (restored / "directions.txt").read_bytes() == (sample_run.parent / "directions.txt").read_bytes()
    assert not (restored / ".factor-archive-restore-incomplete").exists()

    # Calibrated data: one MS per time chunk, concatenated in frequency.
    cal = sorted((restored / "calibrated_data/facet1").iterdir())
    assert [p.name for p in cal] == [f"facet1_calibrated_data_chunk{i}.ms" for i in range(3)]


def test_calibrated_data_fills_the_missing_band_with_flagged_data(sample_run, tmp_path):
    import numpy as np
    from casacore import tables as ct

    archive = tmp_path / "a"
    assert archivefactor_main(["-q", "-d", "facet1", str(sample_run), str(archive)]) == 0
    chunk1 = archive / "calibrated_data/facet1/facet1_calibrated_data_chunk1.ms"
    with ct.table(str(chunk1), ack=False) as t:
        flags = t.getcol("FLAG")
    assert flags.shape[1] == 8
    assert np.all(flags[:, 4:, :])           # the band that is missing in this chunk
    with ct.table(str(chunk1 / "SPECTRAL_WINDOW"), ack=False) as spw:
        assert spw.getcell("NUM_CHAN", 0) == 8


def test_unknown_direction_lists_the_known_ones(sample_run, tmp_path, capsys):
    assert archivefactor_main(["-d", "facet9", str(sample_run), str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "facet9" in err and "facet1" in err and "target" in err
    assert not (tmp_path / "a").exists()


def test_basic_archive_cannot_be_unarchived(sample_run, tmp_path, capsys):
    assert archivefactor_main(["-q", str(sample_run), str(tmp_path / "a")]) == 0
    assert unarchivefactor_main([str(tmp_path / "a"), str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "without -r" in err and len(err.strip().splitlines()) == 1


def test_existing_archive_is_not_overwritten_without_clobber(sample_run, tmp_path, capsys):
    out = tmp_path / "a"
    assert archivefactor_main(["-q", str(sample_run), str(out)]) == 0
    before = (out / "manifest.json").read_bytes()
    assert archivefactor_main(["-q", str(sample_run), str(out)]) == 2
    assert "use -c" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before
    assert archivefactor_main(["-q", "-c", str(sample_run), str(out)]) == 0


def test_restore_refuses_a_non_empty_output_without_clobber(sample_run, tmp_path, capsys):
    archive, out = tmp_path / "a", tmp_path / "r"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(archive)]) == 0
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert unarchivefactor_main(["-q", str(archive), str(out)]) == 2
    assert (out / "precious.txt").read_text() == "keep me"
    assert unarchivefactor_main(["-q", "-c", str(archive), str(out)]) == 0
    assert (out / "factor.parset").exists()


def test_interrupted_archive_is_completed_by_rerunning(sample_run, tmp_path, monkeypatch):
    import dataclasses

    from factor_archive.containers import directory

    out = tmp_path / "a"
    real_write = directory.DirectoryWriter.write
    calls = {"n": 0}

    def failing_write(self, member, source, progress, **kw):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real_write(self, member, source, progress, **kw)

    monkeypatch.setattr(directory.DirectoryWriter, "write", failing_write)
    monkeypatch.setattr(directory.DirectoryWriter, "capabilities",   # one member at a time
                        dataclasses.replace(directory.DirectoryWriter.capabilities, parallel_members=False))
    assert archivefactor_main(["-q", "-r", str(sample_run), str(out)]) == 130
    assert not (out / "manifest.json").exists()      # never looks complete
    done_before = {p: p.stat().st_ino for p in out.rglob("*") if p.is_file() and ".factor" not in p.name}
    assert done_before
    monkeypatch.setattr(directory.DirectoryWriter, "write", real_write)
    assert archivefactor_main(["-q", "-r", str(sample_run), str(out)]) == 0
    # Members already written were kept, not copied again.
    for p, ino in done_before.items():
        assert p.stat().st_ino == ino, p
    assert main(["verify", "-q", str(out)]) == 0
    assert not (out / ".factor-archive-journal.jsonl").exists()


def test_verify_names_the_damaged_and_missing_members(sample_run, tmp_path, capsys):
    out = tmp_path / "a"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(out)]) == 0
    assert main(["verify", "-q", str(out)]) == 0
    img = next((out / "images/facet1/facetimage").iterdir())
    img.write_bytes(img.read_bytes()[:-1] + b"x")
    (out / "state/target_save.pkl").unlink()
    capsys.readouterr()
    assert main(["verify", "-q", str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(img.name in line and "differs" in line for line in lines)
    assert any("state/target_save.pkl: missing" in line for line in lines)
    # A restore from the damaged archive fails with one line and does not look complete.
    assert unarchivefactor_main(["-q", str(out), str(tmp_path / "r")]) == 1
    assert not (tmp_path / "r" / "factor.parset").exists()


def test_ls_lists_members_with_category_direction_and_size(sample_run, tmp_path, capsys):
    out = tmp_path / "a"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(out)]) == 0
    capsys.readouterr()
    assert main(["ls", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    chunk = [line for line in lines if "chunks/Band_120.21MHz/L123456_SB000_uv.dppp.pre-cal_chunk0.ms" in line]
    assert chunk and chunk[0].split()[:3] == ["chunks", "-", "table"]
    assert any(line.split()[:2] == ["images", "facet2"] for line in lines)


def test_dry_run_prints_the_plan_and_writes_nothing(sample_run, tmp_path, capsys):
    out = tmp_path / "a"
    assert archivefactor_main(["--dry-run", "-r", "-d", "facet1", str(sample_run), str(out)]) == 0
    text = capsys.readouterr().out
    assert "calibrated_data/facet1/facet1_calibrated_data_chunk0.ms" in text
    assert "chunks/Band_122.16MHz/L123456_SB010_uv.dppp.pre-cal_chunk0.ms" in text
    assert not out.exists()


def test_symlink_restore_links_chunks_to_the_archive(sample_run, tmp_path):
    archive, out = tmp_path / "a", tmp_path / "r"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(archive)]) == 0
    assert unarchivefactor_main(["-q", "-s", str(archive), str(out)]) == 0
    chunk = out / "chunks/Band_120.21MHz/L123456_SB000_uv.dppp.pre-cal_chunk1.ms"
    assert chunk.is_symlink()
    assert Path(os.readlink(chunk)) == archive / "chunks/Band_120.21MHz/L123456_SB000_uv.dppp.pre-cal_chunk1.ms"
    assert (out / "state/facet1_save.pkl").is_file()


@pytest.mark.parametrize("problem", ["missing parset", "malformed", "no dir_working", "missing wd",
                                     "no directions", "bad pickle"])
def test_bad_input_is_one_line_naming_the_file(sample_run, tmp_path, capsys, problem):
    parset = sample_run
    text = parset.read_text()
    wd = parset.parent / "wdir"
    if problem == "missing parset":
        parset = tmp_path / "nope.parset"
        needle = "nope.parset"
    elif problem == "malformed":
        parset.write_text("this is not [an ini file\n")
        needle = str(parset)
    elif problem == "no dir_working":
        parset.write_text(text.replace("dir_working", "# dir_working"))
        needle = "dir_working"
    elif problem == "missing wd":
        parset.write_text(text.replace(str(wd), str(wd) + "_gone"))
        needle = "wdir_gone"
    elif problem == "no directions":
        (parset.parent / "directions.txt").unlink()
        needle = "directions.txt"
    else:
        (wd / "state/facet2_save.pkl").write_bytes(b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
        needle = "facet2_save.pkl"
    assert archivefactor_main(["-r", str(parset), str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_hostile_manifest_cannot_write_outside_the_output(sample_run, tmp_path, capsys):
    archive = tmp_path / "a"
    assert archivefactor_main(["-q", "-r", str(sample_run), str(archive)]) == 0
    manifest = manifest_of(archive)
    manifest["members"][0]["restore_path"] = "../../escaped.txt"
    (archive / "manifest.json").write_text(json.dumps(manifest))
    # checksums are no signature: an attacker rewrites the tag manifest as well
    (archive / TAG_MANIFEST_NAME).write_text(tag_manifest_text({
        "manifest.json": (archive / "manifest.json").read_bytes(),
        "manifest-sha256.txt": (archive / "manifest-sha256.txt").read_bytes()}))
    assert unarchivefactor_main(["-q", str(archive), str(tmp_path / "r")]) == 2
    assert "refusing" in capsys.readouterr().err
    assert not (tmp_path / "escaped.txt").exists()


def test_output_inside_the_working_directory_is_refused(sample_run, capsys):
    out = sample_run.parent / "wdir" / "archive"
    assert archivefactor_main([str(sample_run), str(out)]) == 2
    assert "inside the working directory" in capsys.readouterr().err
    assert not out.exists()


def test_full_disk_is_one_line(sample_run, tmp_path, monkeypatch, capsys):
    import errno

    from factor_archive.io import copy as copy_engine

    real = copy_engine.copy_stream

    def full(src, dst, progress=copy_engine.no_progress, limit=None):
        if dst is not None:
            raise OSError(errno.ENOSPC, "No space left on device", getattr(dst, "name", None))
        return real(src, dst, progress, limit)

    monkeypatch.setattr("factor_archive.containers.directory.copy_stream", full)
    assert archivefactor_main(["-q", str(sample_run), str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on device" in err
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_manifest_follows_its_published_schema(sample_run, tmp_path):
    import jsonschema

    out = tmp_path / "a"
    assert archivefactor_main(["-q", "-r", "-d", "facet1", str(sample_run), str(out)]) == 0
    schema = json.loads((Path(__file__).parents[1] / "formats/manifest.schema.json").read_text())
    jsonschema.validate(manifest_of(out), schema)
    bad = manifest_of(out)
    bad["members"][0]["path"] = "../evil"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_version_and_help_are_available(capsys):
    from factor_archive import __version__

    for entry in (archivefactor_main, unarchivefactor_main, main):
        with pytest.raises(SystemExit) as exit_info:
            entry(["--version"])
        assert exit_info.value.code == 0
        assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        archivefactor_main(["-h"])
    help_text = capsys.readouterr().out
    for option in ("--directions", "--resumable", "--clobber", "--format", "--dry-run"):
        assert option in help_text
