"""Story: someone hands us an archive (or a run) made to hurt: paths that climb out of the
output, links to elsewhere, absurd sizes, unknown codecs, JSON nested a hundred thousand deep.

Each is refused in one line (or, for a run, archived as plain data) with nothing written outside
the output and no code run. Checksums are no signature: every hostile archive here has metadata
whose checksums agree, as an attacker would write it. Hostile tar archives are in
tests/test_tar_container.py (links, devices, absolute and ``..`` names, unlisted entries,
manifests pointing elsewhere), hostile pickles and mapfiles in tests/test_state_pickle.py and
tests/test_mapfile.py; they count in the same table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from factor_archive.manifest import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    TAG_MANIFEST_NAME,
    Manifest,
    checksums_text,
    tag_manifest_text,
)
from fault_cases import GOOD, Case, record, run_cli

EVIL = Path(f"/tmp/factor-archive-evil-{os.getpid()}")


def sandbox_listing(top: Path, out: Path) -> set[Path]:
    """Everything below ``top`` that is not inside ``out`` (the only place a restore may write)."""
    return {p for p in top.rglob("*") if p != out and out not in p.parents}


def judge(form: str, case: str, top: Path, archive: Path, capfd, request,
          must_refuse: bool = True) -> None:
    """Restore the hostile archive (and verify and list it): one line, nothing outside."""
    out = top / "out"
    before = sandbox_listing(top, out)
    runs = {name: run_cli(argv, capfd) for name, argv in (
        ("verify", ["verify", "-q", str(archive)]), ("ls", ["ls", str(archive)]),
        ("restore", ["unarchive", "-q", str(archive), str(out)]))}
    created = sandbox_listing(top, out) - before
    problems = []
    for name, r in runs.items():
        if r.traceback() or (r.code != 0 and not r.one_line_error()):
            problems.append(("traceback", f"{name}: {r.text[-1200:]}"))
    if created or EVIL.exists() or any(EVIL.parent.glob(EVIL.name + "*")):
        problems.append(("escaped", f"written outside the output: {sorted(created)[:5]}"))
    if must_refuse and runs["restore"].code == 0:
        problems.append(("silent", "restored without complaint"))
    outcome, detail = problems[0] if problems else ("refused", runs["restore"].err.strip()[:300])
    record(request.config, Case("hostile", form, case, case, outcome, detail))
    assert outcome in GOOD, detail


# ---------------------------------------------------------------------------------------------
# Directory archives

def rewrite_dir_manifest(archive: Path, text: str) -> None:
    """Replace the manifest and redo manifest-sha256.txt and the tag manifest to agree with it."""
    (archive / MANIFEST_NAME).write_text(text)
    try:
        (archive / CHECKSUMS_NAME).write_text(checksums_text(Manifest.from_json(text)))
    except Exception:
        pass
    (archive / TAG_MANIFEST_NAME).write_text(tag_manifest_text({
        MANIFEST_NAME: (archive / MANIFEST_NAME).read_bytes(),
        CHECKSUMS_NAME: (archive / CHECKSUMS_NAME).read_bytes()}))


def _first(manifest: dict, kind: str) -> dict:
    return next(m for m in manifest["members"] if m["kind"] == kind and m["restore_path"])


def _dir_member_link(archive: Path, manifest: dict, kind: str) -> None:
    """A member replaced by a symbolic link to something outside the archive, checksums fixed."""
    member = _first(manifest, kind)
    target = archive / member["path"]
    if kind == "file":
        outside = archive.parent / "outside.txt"
        outside.write_bytes(target.read_bytes())      # same bytes: only the link gives it away
        target.unlink()
    else:
        outside = archive.parent / "outside-table"
        shutil.copytree(target, outside)
        shutil.rmtree(target)
    target.symlink_to(outside)


DIR_CASES = {
    "member path climbing out": lambda m, a: _first(m, "file").update(path="../evil.txt"),
    "absolute member path": lambda m, a: _first(m, "file").update(path=str(EVIL)),
    "absolute restore path": lambda m, a: _first(m, "file").update(restore_path=str(EVIL)),
    "restore path climbing out": lambda m, a: _first(m, "file").update(restore_path="../../evil"),
    "table file climbing out": lambda m, a: _first(m, "table")["files"][0].update(path="../../evil"),
    "table directory climbing out": lambda m, a: _first(m, "table")["dirs"].append("../../evil"),
    "parset name with a slash": lambda m, a: m["run"].update(parset_name="../evil.parset"),
    "backslash in a path": lambda m, a: _first(m, "file").update(path="misc\\..\\..\\evil"),
    "wrong types": lambda m, a: _first(m, "file").update(size="huge", mode=[1]),
    "newer format version": lambda m, a: m.update(format_version=99),
    "file replaced by a link out": lambda m, a: _dir_member_link(a, m, "file"),
    "table replaced by a link out": lambda m, a: _dir_member_link(a, m, "table"),
}


@pytest.mark.parametrize("case", [*DIR_CASES, "manifest nested 100000 deep"])
def test_a_hostile_directory_archive_is_refused(case, workspace, tmp_path, capfd, request):
    archive = tmp_path / "archive"
    shutil.copytree(workspace["dir"].archive, archive, symlinks=True)
    manifest = json.loads((archive / MANIFEST_NAME).read_text())
    if case in DIR_CASES:
        DIR_CASES[case](manifest, archive)
        rewrite_dir_manifest(archive, json.dumps(manifest))
    else:
        rewrite_dir_manifest(archive, "[" * 100_000)
    judge("dir", case, tmp_path, archive, capfd, request)


# ---------------------------------------------------------------------------------------------
# Zarr stores

def rewrite_zarr_manifest(store: Path, text: str) -> None:
    """Replace the manifest array's bytes and its checksum attribute, as an attacker would."""
    import zarr

    from factor_archive.containers.zarr import layout as zarr_store

    root = zarr.open_group(zarr.storage.LocalStore(store), mode="r+")
    del root[zarr_store.MANIFEST_NODE]
    data = text.encode()
    zarr_store._write_bytes_array(root, zarr_store.MANIFEST_NODE, data, {zarr_store.ATTR: {
        "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}})


def _file_node(store: Path, manifest: dict) -> Path:
    """The zarr.json of the first restored file member's array."""
    member = _first(manifest, "file")
    return store / member["extra"]["zarr"]["node"] / "zarr.json"


def _edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _first_chunk(node_json: Path) -> Path:
    return next(p for p in node_json.parent.rglob("*") if p.is_file() and p.name != "zarr.json")


def _link_out(path: Path) -> None:
    path.unlink()
    path.symlink_to("/etc/hostname")


ZARR_MANIFEST_CASES = {
    "member path climbing out": lambda m: _first(m, "file").update(path="../evil.txt"),
    "absolute restore path": lambda m: _first(m, "file").update(restore_path=str(EVIL)),
    "raw group climbing out": lambda m: _first(m, "table")["extra"]["zarr"].update(
        stored="raw-files", raw_group="../../evil"),
    "wrong types": lambda m: _first(m, "file").update(size=-5),
    "newer format version": lambda m: m.update(format_version=99),
}
ZARR_STORE_CASES = {
    "huge shape": lambda s, m: _edit_json(_file_node(s, m), lambda d: d.update(shape=[10 ** 15])),
    "unknown codec": lambda s, m: _edit_json(_file_node(s, m), lambda d: d["codecs"][0].update(
        name="evil.codec")),
    "group where an array should be": lambda s, m: _file_node(s, m).write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {}})),
    "metadata nested 100000 deep": lambda s, m: _file_node(s, m).write_text("[" * 100_000),
    "chunk replaced by a link out": lambda s, m: _link_out(_first_chunk(_file_node(s, m))),
    "newer layout version": lambda s, m: _edit_json(s / "zarr.json", lambda d: d["attributes"][
        "factor_archive"].update(layout_version=99)),
    "root metadata nested 100000 deep": lambda s, m: (s / "zarr.json").write_text("[" * 100_000),
}


ZARR_CI = {"member path climbing out", "huge shape", "metadata nested 100000 deep"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=[] if c in ZARR_CI else [pytest.mark.full])
                                  for c in [*ZARR_MANIFEST_CASES, *ZARR_STORE_CASES]])
def test_a_hostile_zarr_store_is_refused(case, workspace, tmp_path, capfd, request):
    store = tmp_path / "run.zarr"
    shutil.copytree(workspace["zarr"].archive, store)
    from fault_cases import manifest_json

    manifest = json.loads(manifest_json(store))
    if case in ZARR_MANIFEST_CASES:
        ZARR_MANIFEST_CASES[case](manifest)
        rewrite_zarr_manifest(store, json.dumps(manifest))
    else:
        ZARR_STORE_CASES[case](store, manifest)
    judge("zarr", case, tmp_path, store, capfd, request)


# ---------------------------------------------------------------------------------------------
# Hostile runs: what archivefactor reads

def _run_cases(wd: Path) -> dict:
    image = next((wd / "images").rglob("*.fits")) if (wd / "images").is_dir() \
        else next(wd.rglob("*image*.fits"))
    mapfile = next(wd.rglob("*.mapfile"))
    chunk = next((wd / "chunks").glob("*/*.ms"))
    return {
        "image is a FIFO": lambda: (image.unlink(), os.mkfifo(image)),
        "image links to a system file": lambda: (image.unlink(), image.symlink_to("/etc/hostname")),
        "chunk is a symlink loop": lambda: (shutil.rmtree(chunk), chunk.symlink_to(chunk)),
        "mapfile holds an expression": lambda: mapfile.write_text(
            f"[{{'host': 'localhost', 'file': __import__('os').system('touch {EVIL}'), "
            "'skip': False}]"),
    }


@pytest.mark.parametrize("case", ["image is a FIFO", "mapfile holds an expression",
                                  pytest.param("image links to a system file", marks=pytest.mark.full),
                                  pytest.param("chunk is a symlink loop", marks=pytest.mark.full)])
def test_a_hostile_run_is_archived_as_data_or_refused(case, sample_run, tmp_path, capfd,
                                                      request):
    wd = sample_run.parent / "wdir"
    _run_cases(wd)[case]()
    out = tmp_path / "archive"
    before = sandbox_listing(tmp_path, out)
    run = run_cli(["archive", "-q", "-r", str(sample_run), str(out)], capfd)
    created = {p for p in sandbox_listing(tmp_path, out) - before if wd not in p.parents}
    if run.traceback() or (run.code != 0 and not run.one_line_error()):
        outcome, detail = "traceback", run.text[-1200:]
    elif created or EVIL.exists():
        outcome, detail = "escaped", f"{sorted(created)[:5]} {EVIL.exists()}"
    else:
        outcome, detail = ("refused" if run.code else "contained"), run.err.strip()[:300]
    record(request.config, Case("hostile", "run", case, case, outcome, detail))
    assert outcome in GOOD, detail
