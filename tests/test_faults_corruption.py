"""Story: an archive sat on a disk or a tape for years, and a bit flipped or the end went missing.

Whatever byte was hit (member data, a tar header, the index, the manifest, the tag manifest, a
zarr metadata document, the zip directory), either ``verify`` says so (exit 1, one line per
problem) and ``unarchivefactor`` refuses in one line, or nothing the restore writes changes.
Never a traceback, never a silent difference. Hypothesis chooses where; each kind of region is
its own test, so every region is hit in CI and the full suite (``--full``) hits each many times.
The counts are printed at the end of the session (see docs/reliability.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fault_cases import (
    FORMS,
    GOOD,
    Case,
    CleanArchive,
    Damage,
    judge_damaged_archive,
    record,
    regions_of,
)

CATEGORIES = {
    "dir": ["manifest", "checksums file", "tag manifest", "member data"],
    "tar": ["manifest", "checksums file", "tag manifest", "index", "headers", "member data",
            "padding", "end blocks"],
    "zarr": ["manifest", "root metadata", "group metadata", "table metadata", "array metadata",
             "data"],
    "zip": ["zip structure", "manifest", "root metadata", "group metadata", "table metadata",
            "array metadata", "data"],
}
# The fast subset (CI): CI_FLIPS[form] flips in each of these categories; the full suite flips
# FULL_FLIPS[form] times in every category. A zarr case costs ~5 s (verify and restore decode
# every table), a dir or tar case under 1 s.
CI_CATEGORIES = {
    "dir": {"manifest", "checksums file", "tag manifest", "member data"},
    "tar": {"manifest", "tag manifest", "index", "headers", "member data"},
    "zarr": {"manifest", "array metadata", "group metadata", "table metadata"},
    "zip": {"zip structure", "manifest"},
}
FULL_FLIPS = {"dir": 35, "tar": 30, "zarr": 9, "zip": 9}
# In CI: Hypothesis's first example is the simplest (the first byte of the first region), so the
# cheap forms get a second, random one.
CI_FLIPS = {"dir": 2, "tar": 2, "zarr": 1, "zip": 1}
FULL_ZARR_DATA_FLIPS = 5   # chunk data is covered by crc32c and the existing tests: fewer there
FULL_TRUNCATIONS = {"dir": 10, "tar": 10, "zarr": 6, "zip": 6}
NO_SHRINK = (Phase.explicit, Phase.generate)   # a failing zarr case costs seconds: report it as found


def _params():
    for form, categories in CATEGORIES.items():
        for category in categories:
            marks = []
            if category not in CI_CATEGORIES[form]:
                marks.append(pytest.mark.full)
            yield pytest.param(form, category, marks=marks, id=f"{form}-{category.replace(' ', '_')}")


@pytest.fixture(scope="module")
def regions(workspace):
    """Where each kind of byte lies in each clean archive (made when first needed)."""
    class Regions(dict):
        def __missing__(self, form):
            self[form] = regions_of(form, workspace[form].archive)
            return self[form]

    return Regions()


def _judge(base: CleanArchive, capfd, request, suite: str, region: str, what: str) -> None:
    outcome, detail = judge_damaged_archive(base, capfd)
    record(request.config, Case(suite, base.form, region, what, outcome, detail))
    assert outcome in GOOD, f"{what}: {outcome}: {detail}"


@pytest.mark.parametrize("form, category", list(_params()))
def test_a_flipped_bit_is_detected_or_changes_nothing(form, category, workspace, regions, capfd,
                                                      request, full_suite):
    base = workspace[form]
    here = [r for r in regions[form] if r.category == category]
    assert here, f"no {category} in the {form} archive"

    examples = FULL_ZARR_DATA_FLIPS if category == "data" else FULL_FLIPS[form]

    @settings(max_examples=examples if full_suite else CI_FLIPS[form], phases=NO_SHRINK, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def flip(data):
        region = data.draw(st.sampled_from(here), label="region")
        offset = data.draw(st.integers(region.start, region.end - 1), label="offset")
        bit = data.draw(st.integers(0, 7), label="bit")
        what = f"bit {bit} of byte {offset} of {region.path.name} ({region.label})"
        with Damage(region.path) as damage:
            damage.flip(offset, bit)
            _judge(base, capfd, request, "corruption", category, what)

    flip()


@pytest.mark.parametrize("form", list(FORMS))
def test_a_truncated_or_lost_file_is_detected(form, workspace, regions, capfd, request,
                                              full_suite):
    """One file of the archive cut short or gone (dir, zarr directory), or the archive itself cut
    short anywhere (tar, zip): the end of a tape, a copy that stopped, a disk that filled up."""
    base = workspace[form]
    single_file = form in ("tar", "zip")

    @settings(max_examples=FULL_TRUNCATIONS[form] if full_suite else 2, phases=NO_SHRINK,
              database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def cut(data):
        category = data.draw(st.sampled_from(CATEGORIES[form]), label="category")
        here = [r for r in regions[form] if r.category == category]
        region = data.draw(st.sampled_from(here), label="region")
        if single_file:
            at = data.draw(st.integers(region.start, region.end - 1), label="cut at")
            what = f"{region.path.name} cut at byte {at} ({region.label})"
        else:
            size = region.end
            at = data.draw(st.one_of(st.just(-1), st.integers(0, size - 1)), label="cut at")
            what = (f"{region.label} deleted" if at < 0 else f"{region.label} cut to {at} of {size} bytes")
        with Damage(region.path) as damage:
            if at < 0:
                damage.delete()
            else:
                damage.truncate(at)
            _judge(base, capfd, request, "truncation", category, what)

    cut()


def test_the_regions_cover_every_byte_of_a_tar(workspace, regions):
    """The tar regions the flips aim at leave no byte out (so 'every region' means every byte)."""
    size = workspace["tar"].archive.stat().st_size
    spans = sorted((r.start, r.end) for r in regions["tar"])
    at = 0
    for start, end in spans:
        assert start == at, (start, at)
        at = end
    assert at == size


# ---------------------------------------------------------------------------------------------
# Story: archives made before the tag manifest and the index checksum existed

def _as_previous_version(form: str, archive: Path, dest: Path) -> Path:
    """The archive as the previous version wrote it: no tag manifest, no ``tag_manifest`` key,
    and for tar an index of two lines without its checksum line (formats/tar.md, version 1)."""
    import hashlib
    import json

    from factor_archive.containers.tar import format as tarmod
    from factor_archive.manifest import CHECKSUMS_NAME, MANIFEST_NAME, TAG_MANIFEST_NAME

    def old_manifest(data: bytes) -> bytes:
        doc = json.loads(data)
        del doc["tag_manifest"]
        return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()

    if form == "dir":
        shutil.copytree(archive, dest)
        (dest / TAG_MANIFEST_NAME).unlink()
        (dest / MANIFEST_NAME).write_bytes(old_manifest((dest / MANIFEST_NAME).read_bytes()))
        return dest
    data = archive.read_bytes()
    index = tarmod.parse_index(data[-1536:-1024])
    start = index[MANIFEST_NAME][0] - 3 * 512          # pax header, pax records, ustar header
    checksums = data[index[CHECKSUMS_NAME][0]:index[CHECKSUMS_NAME][0] + index[CHECKSUMS_NAME][1]]
    out = bytearray(data[:start])
    at = {}
    for name, body in ((MANIFEST_NAME, old_manifest(data[index[MANIFEST_NAME][0]:
                                                         index[MANIFEST_NAME][0] + index[MANIFEST_NAME][1]])),
                       (CHECKSUMS_NAME, checksums)):
        out += tarmod.entry_headers(name, b"0", len(body), 0o644, 0)
        at[name] = (len(out), len(body), hashlib.sha256(body).hexdigest())
        out += body + b"\0" * (-len(body) % 512)
    body = f"{tarmod.INDEX_MAGIC}\n" + "".join(f"{n} {o} {s} {h}\n" for n, (o, s, h) in at.items())
    block = body.encode() + b" " * (511 - len(body)) + b"\n"
    out += tarmod.ustar_header(tarmod.INDEX_NAME, b"0", 512, 0o644, 0) + block + b"\0" * 1024
    dest.write_bytes(bytes(out))
    return dest


@pytest.mark.parametrize("form", ["dir", "tar"])
def test_an_archive_of_the_previous_version_still_restores_and_verifies(form, workspace, tmp_path,
                                                                        capfd):
    from fault_cases import restore_differences, run_cli

    base = workspace[form]
    old = _as_previous_version(form, base.archive, tmp_path / base.archive.name)
    assert run_cli(["verify", "-q", str(old)], capfd).code == 0
    shutil.rmtree(base.restore_to, ignore_errors=True)
    try:
        assert run_cli(["unarchive", "-q", str(old), str(base.restore_to)], capfd).code == 0
        assert restore_differences(base.expected, base.restore_to) == []
    finally:
        shutil.rmtree(base.restore_to, ignore_errors=True)


def test_a_renamed_member_in_an_old_directory_archive_is_caught(workspace, tmp_path, capfd):
    """The flip the issue found: `input_bands.mapfile` became `i,put_bands.mapfile` in the
    manifest and nothing noticed. Without a tag manifest, manifest-sha256.txt (derived from the
    manifest) is the witness: the two disagree, so verify and restore both refuse."""
    from factor_archive.manifest import MANIFEST_NAME
    from fault_cases import run_cli

    old = _as_previous_version("dir", workspace["dir"].archive, tmp_path / "old")
    text = (old / MANIFEST_NAME).read_text()
    assert "/input_bands.mapfile" in text
    (old / MANIFEST_NAME).write_text(text.replace("/input_bands.mapfile", "/i,put_bands.mapfile", 1))
    for argv in (["verify", "-q", str(old)], ["unarchive", "-q", str(old), str(tmp_path / "out")]):
        run = run_cli(argv, capfd)
        assert run.code == 1 and run.one_line_error() and not run.traceback(), run.text
        assert "manifest-sha256.txt" in run.err and "damaged" in run.err
    assert not (tmp_path / "out" / "factor.parset").exists()
