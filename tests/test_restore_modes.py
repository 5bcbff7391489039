"""User story: whichever form the astronomer archived the run in, the restored run has the same
permission bits and modification times (docs/layout.md, "Modes and times")."""

from __future__ import annotations

import os
from pathlib import Path

from factor_archive.cli import archivefactor_main, unarchivefactor_main

FORMS = {"dir": "run", "tar": "run.tar", "zarr": "run.zarr"}
STAMP_NS = 1_500_000_000_123_456_789


def modes_and_times(root: Path) -> dict[str, tuple[int, int]]:
    """(permission bits, mtime in µs) of every file outside tables and of every table directory.

    Inside a table only what the table holds is compared (the zarr form decodes the files), and
    plain directories and the rewritten parset are made by the restore itself."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here != root and "table.dat" in filenames:
            dirnames.clear()
            filenames = []
        for name in filenames:
            if here == root and name.endswith(".parset") or name.startswith(".factor-archive"):
                continue
            path = here / name
            st = os.lstat(path)
            out[str(path.relative_to(root))] = (st.st_mode & 0o7777, st.st_mtime_ns // 1000)
        for name in dirnames:
            p = here / name
            if (p / "table.dat").exists():
                st = os.stat(p)
                out[str(p.relative_to(root))] = (st.st_mode & 0o7777, st.st_mtime_ns // 1000)
    return out


def test_every_form_restores_the_same_modes_and_mtimes(sample_run, tmp_path):
    wd = sample_run.parent / "wdir"
    region = wd / "regions" / "facets_ds9.reg"
    os.chmod(region, 0o4750)                    # set-user-ID: never restored
    os.utime(region, ns=(STAMP_NS, STAMP_NS))
    chunk = next((wd / "chunks").glob("*/*chunk1.ms"))
    os.chmod(chunk, 0o750)
    os.utime(chunk, ns=(STAMP_NS, STAMP_NS))

    restored = {}
    for form, name in FORMS.items():
        archive = tmp_path / name
        assert archivefactor_main(["-q", "-r", "--format", form, str(sample_run), str(archive)]) == 0
        out = tmp_path / f"restored-{form}"
        assert unarchivefactor_main(["-q", str(archive), str(out)]) == 0
        restored[form] = modes_and_times(out)

    reference = restored["dir"]
    assert reference["regions/facets_ds9.reg"] == (0o750, STAMP_NS // 1000)
    assert reference[str(chunk.relative_to(wd))] == (0o750, STAMP_NS // 1000)
    assert len(reference) > 20
    for form in ("tar", "zarr"):
        differ = {k: (reference.get(k), restored[form].get(k))
                  for k in set(reference) | set(restored[form]) if reference.get(k) != restored[form].get(k)}
        assert differ == {}, form
