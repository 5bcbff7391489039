"""Shared fixtures: a sample Factor run built once per session, and helpers to compare trees."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from factor_archive.sample import write_sample_run

# Long suites (full fault injection, long hypothesis profiles, big files) run only with
# `bash scripts/test.sh --full` (or FACTOR_ARCHIVE_FULL=1); CI runs the fast subset.
try:
    from hypothesis import HealthCheck, settings

    _SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
    settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=_SLOW_OK)
    settings.register_profile("full", max_examples=500, deadline=None, suppress_health_check=_SLOW_OK)
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    settings = None


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="also run the long suites (full fault injection, long hypothesis profiles)")


def pytest_configure(config):
    config.addinivalue_line("markers", "full: a long test that runs only with --full")
    full = config.getoption("--full") or os.environ.get("FACTOR_ARCHIVE_FULL") == "1"
    config._factor_archive_full = full
    config._fault_ledger = []   # cases of the fault-injection suites (tests/fault_cases.py)
    if settings is not None and not config.getoption("--hypothesis-profile", default=None):
        settings.load_profile("full" if full else "ci")


def pytest_collection_modifyitems(config, items):
    if config._factor_archive_full:
        return
    skip = pytest.mark.skip(reason="long suite: run with `bash scripts/test.sh --full`")
    for item in items:
        if item.get_closest_marker("full") is not None:  # not keywords: a test id may say "full"
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, config):
    """The fault-injection suites' table: cases tried per suite and form, and their outcomes.

    Also kept in .pytest_cache (``pytest --cache-show 'factor-archive/*'``) for docs/reliability.md.
    """
    cases = getattr(config, "_fault_ledger", [])
    if not cases:
        return
    from fault_cases import summary_lines

    lines = summary_lines(cases)
    terminalreporter.write_sep("=", "fault injection")
    for line in lines:
        terminalreporter.write_line(line)
    if getattr(config, "cache", None) is not None:
        config.cache.set("factor-archive/faults", {"full": config._factor_archive_full,
                                                   "summary": lines, "cases": cases})


@pytest.fixture
def full_suite(request) -> bool:
    """True when the long suites run: tests scale their case counts with it."""
    return request.config._factor_archive_full


@pytest.fixture(scope="session")
def dp3_ms_cache(tmp_path_factory) -> Path:
    """Where the session keeps the sample run's DP3-written MSs, so DP3 runs once per session."""
    return tmp_path_factory.mktemp("dp3-ms-cache")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, dp3_ms_cache):
    """The fault-injection suites' clean archives of every form, made when first needed."""
    from fault_cases import Workspace

    return Workspace(tmp_path_factory.mktemp("faults"), dp3_ms_cache)


@pytest.fixture(scope="session")
def archived_run(tmp_path_factory) -> dict:
    """For the interruption and full-disk suites: the sample run and an archive in every form."""
    import faults

    return faults.session_run(tmp_path_factory)


@pytest.fixture(scope="session")
def clean_restore(archived_run, tmp_path_factory) -> Path:
    """A restore of the dir archive that nothing interrupted (tests only read it)."""
    from factor_archive.cli import unarchivefactor_main

    out = tmp_path_factory.mktemp("clean") / "restored"
    assert unarchivefactor_main(["-q", str(archived_run["archives"]["dir"]), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    """A SeaweedFS S3 server on loopback for this test module; skips when 'weed' is absent.
    A module makes its buckets in its own ``s3`` fixture, which ``s3_env`` uses."""
    from s3server import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed")
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The environment a user of the module's ``s3`` server has: its keys and endpoint only."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "FACTOR_ARCHIVE_S3_ENDPOINT", "FACTOR_ARCHIVE_S3_CONCURRENCY"):
        monkeypatch.delenv(key, raising=False)
    return s3


@pytest.fixture
def sample_run(tmp_path, dp3_ms_cache) -> Path:
    """A fresh sample run below a path with spaces and non-ASCII characters; returns its parset.

    Its MSs are written by DP3, as a real run's are (the test needs the dp3 package)."""
    return write_sample_run(tmp_path / "site ø" / "run with spaces", dp3=True, ms_cache=dp3_ms_cache)


def tree_snapshot(root: Path, *, dir_mtimes: bool = True) -> dict[str, tuple]:
    """Every entry below root: files by mode, size, content hash and mtime, links by target,
    directories by mode and (unless ``dir_mtimes`` is False) mtime."""
    snap: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if p.is_symlink():
                snap[rel] = ("link", os.readlink(p))
            elif p.is_file():
                snap[rel] = ("file", st.st_mode, st.st_size,
                             hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
            else:
                snap[rel] = ("dir", st.st_mode, st.st_mtime_ns) if dir_mtimes else ("dir", st.st_mode)
    return snap


def assert_tables_equal(a: Path, b: Path) -> None:
    """Column by column, keyword by keyword, subtable by subtable."""
    from casacore import tables as ct

    ta, tb = ct.table(str(a), ack=False), ct.table(str(b), ack=False)
    try:
        assert ta.nrows() == tb.nrows(), (a, b)
        assert sorted(ta.colnames()) == sorted(tb.colnames()), (a, b)
        assert _plain(ta.getkeywords()) == _plain(tb.getkeywords()), a
        for col in ta.colnames():
            assert _plain(ta.getcolkeywords(col)) == _plain(tb.getcolkeywords(col)), (a, col)
            if ta.nrows() == 0:
                continue
            if ta.isvarcol(col):
                va, vb = ta.getvarcol(col), tb.getvarcol(col)
                assert va.keys() == vb.keys()
                for k in va:
                    np.testing.assert_array_equal(va[k], vb[k])
            else:
                ca, cb = ta.getcol(col), tb.getcol(col)
                if isinstance(ca, np.ndarray):
                    assert ca.dtype == cb.dtype and ca.tobytes() == cb.tobytes(), (a, col)
                else:
                    assert ca == cb, (a, col)
        for value in ta.getkeywords().values():
            if isinstance(value, str) and value.startswith("Table: "):
                assert_tables_equal(Path(value[7:]), b / Path(value[7:]).name)
    finally:
        ta.close()
        tb.close()


def _plain(rec):
    """Keywords with subtable references reduced to the subtable name (paths differ by design)."""
    if isinstance(rec, dict):
        return {k: _plain(v) for k, v in rec.items()}
    if isinstance(rec, str) and rec.startswith("Table: "):
        return "Table: " + Path(rec[7:]).name
    if isinstance(rec, np.ndarray):
        return rec.tolist()
    return rec
