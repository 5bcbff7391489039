"""Fault injection shared by tests/test_faults_*.py: archives to damage, damage that can be undone,
commands run as a user runs them, and a ledger that counts what happened.

Every case ends in one of a few outcomes. Good ones: ``detected`` (verify exits 1 and says
what, restore refuses in one line or writes exactly the clean result), ``no effect`` (verify
passes and restore writes exactly the clean result), ``refused`` (a hostile input is refused
in one line, nothing written outside the output), ``contained`` (a hostile run archived as plain
data, no code run, nothing written outside), ``completed`` (a rerun after kill -9 finishes and
equals a clean result). Bad ones: ``silent`` (restore wrote something else and said
nothing), ``traceback`` (a Python traceback, or a message of more than one line), ``missed``
(verify passed but restore failed), ``escaped`` (something written outside the output),
``incomplete`` (a rerun failed or differs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from conftest import tree_snapshot
from factor_archive.cli import main
from factor_archive.containers.tar import format as tarmod

GOOD = ("detected", "no effect", "refused", "contained", "completed")
BAD = ("silent", "traceback", "missed", "escaped", "incomplete")
# archive name per form: the name alone chooses the form
FORMS = {"dir": "run-archive", "tar": "run.tar", "zarr": "run.zarr", "zip": "run.zarr.zip"}
MARKER = ".factor-archive-restore-incomplete"


# ---------------------------------------------------------------------------------------------
# The ledger: every case is recorded; conftest prints the table at the end of the session.

@dataclass
class Case:
    suite: str        # corruption, truncation, kill, hostile, s3
    form: str
    region: str       # where the fault was put (a category: manifest, index, data, ...)
    what: str         # the exact fault, to reproduce it
    outcome: str
    detail: str = ""
    pending: str = ""  # a known gap being fixed elsewhere (the test is xfail): not counted as bad


def record(config, case: Case) -> Case:
    config._fault_ledger.append(asdict(case))
    return case


def summary_lines(cases: list[dict]) -> list[str]:
    """The table docs/reliability.md shows: per suite and form, cases tried and their outcomes."""
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for c in cases:
        counts = rows.setdefault((c["suite"], c["form"]), {})
        key = c["outcome"] if c["outcome"] in GOOD or not c.get("pending") else f"{c['outcome']} (pending)"
        counts[key] = counts.get(key, 0) + 1
    lines = ["| suite | form | tried | good | bad | outcomes |", "|---|---|---|---|---|---|"]
    for (suite, form), counts in sorted(rows.items()):
        good = sum(n for k, n in counts.items() if k in GOOD)
        pending = sum(n for k, n in counts.items() if k.endswith("(pending)"))
        bad = sum(counts.values()) - good - pending
        detail = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
        lines.append(f"| {suite} | {form} | {sum(counts.values())} | {good} | {bad} | {detail} |")
    bad_cases = [c for c in cases if c["outcome"] not in GOOD and not c.get("pending")]
    pending_cases = [c for c in cases if c["outcome"] not in GOOD and c.get("pending")]
    by_suite: dict[str, int] = {}
    for c in cases:
        by_suite[c["suite"]] = by_suite.get(c["suite"], 0) + 1
    lines.append("")
    lines.append("cases: " + ", ".join(f"{k} {n}" for k, n in sorted(by_suite.items()))
                 + f"; silent differences {sum(c['outcome'] == 'silent' for c in bad_cases)}"
                 + f", tracebacks {sum(c['outcome'] == 'traceback' for c in bad_cases)}"
                 + f", bad {len(bad_cases)}"
                 + (f"; pending elsewhere {len(pending_cases)}" if pending_cases else ""))
    for c in (bad_cases + pending_cases)[:30]:
        lines.append(f"  {'PENDING' if c.get('pending') else 'BAD'} {c['suite']} {c['form']} "
                     f"{c['region']}: {c['what']}: {c['outcome']}: {c['detail'][:300]}")
    return lines


# ---------------------------------------------------------------------------------------------
# Running the commands in this process (fast), output captured by pytest's capfd

@dataclass
class Run:
    code: int | None
    out: str
    err: str
    crash: str | None = None   # a traceback that escaped the command

    @property
    def text(self) -> str:
        return self.out + self.err + (self.crash or "")

    def traceback(self) -> bool:
        return self.crash is not None or "Traceback" in self.out + self.err

    def one_line_error(self) -> bool:
        """A failure says one line on stderr (verify: its problem lines on stdout, one summary)."""
        return len(self.err.strip().splitlines()) == 1


def run_cli(argv: list[str], capfd) -> Run:
    capfd.readouterr()
    crash = None
    try:
        code = main(argv)
    except BaseException:
        code, crash = None, traceback.format_exc()
    captured = capfd.readouterr()
    return Run(code, captured.out, captured.err, crash)


# ---------------------------------------------------------------------------------------------
# What a restore wrote, to compare with a clean restore

def restored_tree(root: Path) -> dict[str, tuple]:
    """What a restore wrote (directory mtimes aside: a restore sets them as it goes)."""
    return tree_snapshot(root, dir_mtimes=False)


def table_contents(root: Path, tables: set[str]) -> dict[str, str]:
    """The content checksum (values, description, keywords) of each restored table named;
    "" for a table it cannot be computed for (Dysco: stored, and restored, as raw files)."""
    from factor_archive.ms.casacore_table import RawTableRequired, table_content_sha256

    out = {}
    for t in sorted(tables):
        try:
            out[t] = table_content_sha256(root / t)
        except RawTableRequired:
            out[t] = ""
    return out


# casacore leaves unused bytes of the index file of an incremental storage manager
# (``table.f<n>i``) uninitialised, so two clean restores of a zarr archive (which writes tables
# through casacore) differ there, though rarely twice in a row: such files are compared by size,
# and their tables by content (values, description, keywords).
UNINITIALISED_BYTES = re.compile(r"table\.f\d+i")


@dataclass
class Expected:
    """What a clean restore writes (see UNINITIALISED_BYTES for the files compared by size)."""

    tree: dict
    stable_mtimes: set[str]
    unstable: set[str]
    tables: dict[str, str]      # table directory -> content checksum, for tables with unstable files


def expected_restore(trees: list[dict], root: Path, casacore_writes: bool) -> Expected:
    """From two or more clean restores; ``casacore_writes``: tables are written by casacore
    (the zarr form), not copied byte for byte."""
    first = trees[0]
    unstable = {k for k, v in first.items() if v[0] == "file"
                and (any(t.get(k, (None,) * 4)[3] != v[3] for t in trees[1:])
                     or (casacore_writes and UNINITIALISED_BYTES.fullmatch(Path(k).name)))}
    stable_mtimes = {k for k, v in first.items() if v[0] == "file"
                     and all(t.get(k, (None,) * 5)[4] == v[4] for t in trees[1:])}
    tables = table_contents(root, {str(Path(k).parent) for k in unstable})
    raw = {t for t, sha in tables.items() if not sha}     # restored byte for byte: compare bytes
    differing = {k for k in unstable if any(t.get(k, (None,) * 4)[3] != first[k][3] for t in trees[1:])}
    unstable = {k for k in unstable if str(Path(k).parent) not in raw or k in differing}
    return Expected(first, stable_mtimes, unstable, {t: sha for t, sha in tables.items() if sha})


def restore_differences(expected: Expected, root: Path) -> list[str]:
    got = restored_tree(root)
    clean = expected.tree
    diffs = []
    for rel in sorted(set(clean) | set(got)):
        a, b = clean.get(rel), got.get(rel)
        if a is None or b is None:
            diffs.append(f"{rel}: {'extra' if a is None else 'missing'}")
        elif a[0] == "file" and b[0] == "file":
            same = a[:3] == b[:3] if rel in expected.unstable else a[:4] == b[:4]
            if not same or (rel in expected.stable_mtimes and a[4] != b[4]):
                diffs.append(f"{rel}: differs")
        elif a != b:
            diffs.append(f"{rel}: differs")
    if not diffs and expected.tables:
        for table, sha in table_contents(root, set(expected.tables)).items():
            if sha != expected.tables[table]:
                diffs.append(f"{table}: table content differs")
    return diffs


# ---------------------------------------------------------------------------------------------
# Regions of an archive: (category, file, start, end), so damage can be aimed at each kind of byte

@dataclass(frozen=True)
class Region:
    category: str
    path: Path         # the file holding it
    start: int
    end: int           # exclusive
    label: str


def _zarr_key_category(key: str, read) -> str:
    """manifest, root metadata, table metadata, group metadata, array metadata or data."""
    if key.startswith("manifest.json/"):
        return "manifest"
    if key == "zarr.json":
        return "root metadata"
    if key.endswith("zarr.json"):
        try:
            doc = json.loads(read())
        except ValueError:
            return "array metadata"
        if doc.get("node_type") == "group":
            return "table metadata" if "casacore_table" in doc.get("attributes", {}) \
                else "group metadata"
        return "array metadata"
    return "data"


def dir_regions(root: Path) -> list[Region]:
    names = {"manifest.json": "manifest", "manifest-sha256.txt": "checksums file",
             "tagmanifest-sha256.txt": "tag manifest"}
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.stat().st_size:
            rel = str(p.relative_to(root))
            out.append(Region(names.get(rel, "member data"), p, 0, p.stat().st_size, rel))
    return out


def zarr_dir_regions(root: Path) -> list[Region]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.stat().st_size:
            key = str(p.relative_to(root))
            out.append(Region(_zarr_key_category(key, p.read_bytes), p, 0, p.stat().st_size, key))
    return out


def zip_regions(path: Path) -> list[Region]:
    out = []
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            at = info.header_offset
            name_len = int.from_bytes(data[at + 26:at + 28], "little")
            extra_len = int.from_bytes(data[at + 28:at + 30], "little")
            begin = at + 30 + name_len + extra_len
            out.append(Region("zip structure", path, at, begin, f"local header of {info.filename}"))
            if info.compress_size:
                category = _zarr_key_category(info.filename, lambda i=info: zf.read(i))
                out.append(Region(category, path, begin, begin + info.compress_size, info.filename))
        out.append(Region("zip structure", path, zf.start_dir, len(data),
                          "central directory and end records"))
    return out


def tar_regions(path: Path) -> list[Region]:
    """Headers, pax records, member data, padding, metadata files, the index and the end blocks."""
    out = []
    data = path.read_bytes()
    metadata = {"manifest.json": "manifest", "manifest-sha256.txt": "checksums file",
                "tagmanifest-sha256.txt": "tag manifest", tarmod.INDEX_NAME: "index"}
    pos = 0
    pax: dict[str, str] = {}
    header_start = 0
    while pos + 512 <= len(data):
        header = tarmod.parse_header(data[pos:pos + 512])
        if header is None:
            out.append(Region("end blocks", path, pos, len(data), "end-of-archive blocks"))
            break
        if header.typeflag == b"x":
            header_start = pos if not pax else header_start
            size = header.size
            pax.update(tarmod.parse_pax(data[pos + 512:pos + 512 + size]))
            pos += 512 + size + (-size % 512)
            continue
        if not pax:
            header_start = pos
        name = pax.get("path", header.name.decode())
        out.append(Region("headers", path, header_start, pos + 512, f"headers of {name}"))
        pos += 512
        size = int(pax.get("size", header.size)) if header.typeflag != b"5" else 0
        if size:
            category = metadata.get(name, "member data")
            out.append(Region(category, path, pos, pos + size, name))
            pad = -size % 512
            if pad:
                out.append(Region("padding", path, pos + size, pos + size + pad, f"padding of {name}"))
            pos += size + pad
        pax = {}
    return out


def regions_of(form: str, archive: Path) -> list[Region]:
    return {"dir": dir_regions, "tar": tar_regions, "zarr": zarr_dir_regions,
            "zip": zip_regions}[form](archive)


# ---------------------------------------------------------------------------------------------
# Damage that is undone afterwards (the archive is built once per session)

class Damage:
    """Change a file's bytes (or remove it) and put everything back afterwards, times included:
    the directory form restores the archive files' own mtimes, so they must not move."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved = path.read_bytes()
        st = os.stat(path)
        self.times = (st.st_atime_ns, st.st_mtime_ns)
        pst = os.stat(path.parent)
        self.parent_times = (pst.st_atime_ns, pst.st_mtime_ns)

    def _keep_times(self) -> None:
        if self.path.exists():
            os.utime(self.path, ns=self.times)
        os.utime(self.path.parent, ns=self.parent_times)

    def flip(self, offset: int, bit: int) -> None:
        with open(self.path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ (1 << bit)]))
        self._keep_times()

    def truncate(self, size: int) -> None:
        with open(self.path, "r+b") as f:
            f.truncate(size)
        self._keep_times()

    def delete(self) -> None:
        self.path.unlink()
        self._keep_times()

    def undo(self) -> None:
        self.path.write_bytes(self.saved)
        self._keep_times()

    def __enter__(self) -> Damage:
        return self

    def __exit__(self, *_exc) -> None:
        self.undo()


# ---------------------------------------------------------------------------------------------
# One corruption case: verify, ls and restore the damaged archive, then judge

EPOCH = "1714564800"   # SOURCE_DATE_EPOCH: the same run archives to the same manifest


@dataclass
class CleanArchive:
    """A clean archive of the sample run, what a clean restore of it writes (always restored at
    ``restore_to``, since restored files name their own location), and how long each took."""

    form: str
    archive: Path
    restore_to: Path
    expected: Expected
    parset_name: str
    manifest: str           # its manifest JSON (SOURCE_DATE_EPOCH fixes the creation time)
    archive_seconds: float  # as a command: interpreter start-up included
    restore_seconds: float


class Workspace:
    """The sample run, and a clean archive of it per form, made when first asked for.

    One per session: the corruption and kill suites share the archives.
    """

    def __init__(self, top: Path, ms_cache: Path | None = None) -> None:
        from factor_archive.sample import write_sample_run

        self.top = top
        # as conftest's sample_run: DP3-written MSs, below a path with spaces and non-ASCII
        self.parset = write_sample_run(top / "site ø" / "run with spaces", dp3=True,
                                       ms_cache=ms_cache)
        self._clean: dict[str, CleanArchive] = {}
        began = time.monotonic()
        subprocess.run([sys.executable, "-c", "import factor_archive.cli, zarr, casacore.tables"],
                       check=True)
        self.startup = time.monotonic() - began

    def __getitem__(self, form: str) -> CleanArchive:
        if form not in self._clean:
            self._clean[form] = self._make(form)
        return self._clean[form]

    def _make(self, form: str) -> CleanArchive:
        archive = self.top / "clean" / FORMS[form]
        archive.parent.mkdir(exist_ok=True)
        saved = os.environ.get("SOURCE_DATE_EPOCH")
        os.environ["SOURCE_DATE_EPOCH"] = EPOCH
        try:
            began = time.monotonic()
            assert main(["archive", "-q", "-r", str(self.parset), str(archive)]) == 0
            archive_seconds = time.monotonic() - began + self.startup
        finally:
            if saved is None:
                del os.environ["SOURCE_DATE_EPOCH"]
            else:
                os.environ["SOURCE_DATE_EPOCH"] = saved
        restore_to = self.top / f"restored-{form}"
        trees = []
        for _ in range(2):
            shutil.rmtree(restore_to, ignore_errors=True)
            began = time.monotonic()
            assert main(["unarchive", "-q", str(archive), str(restore_to)]) == 0
            restore_seconds = time.monotonic() - began + self.startup
            trees.append(restored_tree(restore_to))
        expected = expected_restore(trees, restore_to, casacore_writes=form in ("zarr", "zip"))
        shutil.rmtree(restore_to)
        return CleanArchive(form, archive, restore_to, expected, self.parset.name,
                            manifest_json(archive), archive_seconds, restore_seconds)


def manifest_json(archive: Path) -> str:
    from factor_archive.containers.registry import open_reader

    reader = open_reader(str(archive))
    try:
        return reader.manifest.to_json()
    finally:
        reader.close()


def judge_damaged_archive(base: CleanArchive, capfd) -> tuple[str, str]:
    """(outcome, detail) for the archive as it is now."""
    archive = str(base.archive)
    verify = run_cli(["verify", "-q", archive], capfd)
    listing = run_cli(["ls", archive], capfd)
    shutil.rmtree(base.restore_to, ignore_errors=True)
    restore = run_cli(["unarchive", "-q", archive, str(base.restore_to)], capfd)
    try:
        for name, r in (("verify", verify), ("ls", listing), ("restore", restore)):
            if r.traceback():
                return "traceback", f"{name}: {r.text[-1500:]}"
            if r.code != 0 and not r.one_line_error():
                return "traceback", f"{name} said more than one line: {r.err[-1500:]}"
        if verify.code not in (0, 1):
            if verify.code == 2 and "error:" in verify.err:
                pass    # refused outright as not an archive of ours: still one line, detected
            else:
                return "traceback", f"verify exit {verify.code}"
        if restore.code == 0:
            diffs = restore_differences(base.expected, base.restore_to)
            if diffs:
                return "silent", f"restore wrote something else: {diffs[:5]}; verify {verify.code}"
            return ("no effect" if verify.code == 0 else "detected"), verify.err.strip()[:200]
        # The restore failed: it must not look complete, and verify must have seen the damage.
        parset = base.restore_to / base.parset_name
        if parset.exists() and not (base.restore_to / MARKER).exists():
            return "silent", "a failed restore left an output that looks complete"
        if verify.code == 0:
            return "missed", f"verify passed, restore said: {restore.err.strip()[:300]}"
        return "detected", restore.err.strip()[:200]
    finally:
        shutil.rmtree(base.restore_to, ignore_errors=True)
