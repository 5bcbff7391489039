"""The manifest is input too: what our code accepts is what formats/manifest.schema.json allows,
a damaged or hostile manifest is one line naming it, and the BagIt tag manifest catches edits."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import jsonschema
import pytest

from factor_archive.errors import BadInput, DamagedArchive, UnsafeArchive
from factor_archive.manifest import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    TAG_MANIFEST_NAME,
    FileEntry,
    Manifest,
    Member,
    Missing,
    check_checksums_file,
    checksums_text,
    tag_manifest_text,
    tag_problems,
    tree_digest,
)

SCHEMA = json.loads((Path(__file__).parents[1] / "formats" / "manifest.schema.json").read_text())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def small_manifest() -> Manifest:
    files = [FileEntry("table.dat", 5, 0o644, 1.5e9, sha(b"table")),
             FileEntry("table.f0", 3, 0o644, 1.5e9, sha(b"col"))]
    return Manifest(
        container="dir",
        run={"working_dir": "/run", "working_dir_abs": "/run", "parset": "/run/factor.parset",
             "parset_name": "factor.parset", "directions": ["facet1"]},
        options={"resumable": True, "directions": [], "format": "dir"},
        members=[
            Member("misc/factor.parset", "/run/factor.parset", "misc", "file", 6, 0o644, 1.5e9,
                   sha(b"parset"), restore_path="factor.parset"),
            Member("chunks/Band_1/c0.ms", "/run/chunks/Band_1/c0.ms", "chunks", "table", 8, 0o755,
                   1.5e9, tree_digest(files), files=files, dirs=["ANTENNA"],
                   restore_path="chunks/Band_1/c0.ms"),
            Member("state/facet1_save.pkl", "/run/state/facet1_save.pkl", "state", "file", 4, 0o600,
                   1.5e9, sha(b"pkl"), direction="facet1", rewrite="state",
                   restore_path="state/facet1_save.pkl"),
        ],
        missing=[Missing("/sky/a.skymodel", "sky_models", "not found", "facet1")],
        created="2024-05-01T12:00:00Z", tag_manifest=TAG_MANIFEST_NAME)


def test_what_we_write_follows_the_schema_and_reads_back_the_same():
    manifest = small_manifest()
    raw = json.loads(manifest.to_json())
    jsonschema.validate(raw, SCHEMA)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.member("state/facet1_save.pkl").rewrite == "state"


def _set(path: str, value):
    def change(raw: dict) -> None:
        *parents, last = path.split(".")
        target = raw
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value
    return change


def _drop(path: str):
    def change(raw: dict) -> None:
        *parents, last = path.split(".")
        target = raw
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        del target[last]
    return change


# Each is refused by the schema and by the reader (one line, naming the manifest).
DAMAGE = {
    "member escapes with ..": (_set("members.0.path", "../../etc/passwd"), UnsafeArchive),
    "absolute member path": (_set("members.0.path", "/etc/passwd"), UnsafeArchive),
    "restore path escapes": (_set("members.0.restore_path", "a/../../x"), UnsafeArchive),
    "table file escapes": (_set("members.1.files.0.path", "../table.dat"), UnsafeArchive),
    "table dir escapes": (_set("members.1.dirs.0", "/abs"), UnsafeArchive),
    "size is text": (_set("members.0.size", "6"), BadInput),
    "negative mode": (_set("members.0.mode", -1), BadInput),
    "mtime is text": (_set("members.1.files.1.mtime", "yesterday"), BadInput),
    "sha256 not hex": (_set("members.0.sha256", "z" * 64), BadInput),
    "unknown category": (_set("members.0.category", "secrets"), BadInput),
    "unknown kind": (_set("members.0.kind", "device"), BadInput),
    "unknown rewrite": (_set("members.2.rewrite", "exec"), BadInput),
    "file entry without sha256": (_drop("members.1.files.0.sha256"), BadInput),
    "members not a list": (_set("members", {"a": 1}), BadInput),
    "run not an object": (_set("run", "factor.parset"), BadInput),
    "missing entry malformed": (_set("missing.0.reason", 3), BadInput),
}


@pytest.mark.parametrize("what", DAMAGE)
def test_a_manifest_against_the_schema_is_refused_in_one_line(what):
    change, error = DAMAGE[what]
    raw = copy.deepcopy(json.loads(small_manifest().to_json()))
    change(raw)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, SCHEMA)
    with pytest.raises(error) as err:
        Manifest.from_json(json.dumps(raw), origin="run.tar/manifest.json")
    message = str(err.value)
    assert message.startswith("run.tar/manifest.json: ") and "\n" not in message, message


@pytest.mark.parametrize("text,problem", [
    ("{not json", "not a valid manifest"),
    ('{"format": "bagit"}', "not a factor-archive manifest"),
    ('{"format": "factor-archive", "format_version": "2"}', "malformed manifest (format_version)"),
    ('{"format": "factor-archive", "format_version": 999}', "format version 999 is newer than this tool"),
])
def test_not_our_manifest_or_from_a_newer_tool(text, problem):
    with pytest.raises(BadInput, match="^" + re.escape(f"m.json: {problem}")):
        Manifest.from_json(text, origin="m.json")


def test_the_tag_manifest_names_each_metadata_file_that_was_changed_or_lost():
    manifest = small_manifest()
    files = {MANIFEST_NAME: manifest.to_json().encode(), CHECKSUMS_NAME: checksums_text(manifest).encode()}
    tag = tag_manifest_text(files).encode()
    assert tag_problems("a", tag, files) == {}
    edited = {MANIFEST_NAME: files[MANIFEST_NAME].replace(b"factor.parset", b"evil.parset"), CHECKSUMS_NAME: None}
    assert tag_problems("a", tag, edited) == {
        MANIFEST_NAME: f"a/{MANIFEST_NAME}: damaged (sha256 differs from {TAG_MANIFEST_NAME})",
        CHECKSUMS_NAME: f"a/{CHECKSUMS_NAME}: missing"}
    for damaged in (tag[:-1], tag.replace(b"  ", b" ", 1), b"\xff\n", tag + tag):
        with pytest.raises(DamagedArchive, match=f"^a/{TAG_MANIFEST_NAME}: damaged"):
            tag_problems("a", damaged, files)


def test_the_checksums_file_must_say_what_the_manifest_says():
    manifest = small_manifest()
    body = checksums_text(manifest)
    assert body.splitlines()[1] == f"{sha(b'table')}  chunks/Band_1/c0.ms/table.dat"  # sha256sum -c
    assert check_checksums_file("a", manifest, body.encode()) == []
    assert check_checksums_file("a", manifest, None) == [f"a/{CHECKSUMS_NAME}: missing"]
    assert check_checksums_file("a", manifest, body.encode()[:-1]) == [
        f"a/{CHECKSUMS_NAME}: differs from the manifest (damaged)"]
