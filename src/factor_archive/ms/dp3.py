"""Running DP3, the program that writes every Measurement Set of a real Factor run.

The sample run and the tests rewrite small synthetic MSs with DP3 so that the tool sees the
table layouts real users have (tiled storage managers, fixed-shape SPECTRAL_WINDOW columns,
Dysco compression). DP3 comes from the ``dp3`` PyPI package (a test dependency) or from a
``DP3`` executable on PATH.

DP3 runs in a child process: the ``dp3`` module bundles its own casacore, and loading it into
a process that already uses python-casacore crashes. With the ``dp3`` module, one child runs
a whole batch (its start-up costs more than a small run); a ``DP3`` executable runs once per
call.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from factor_archive.errors import FactorArchiveError

__all__ = ["Dp3Run", "MsRecipe", "Rewrite", "dp3_available", "run_dp3", "rewrite_with_dp3",
           "write_recipes"]

# Runs a JSON list of {"cwd", "args"} through the dp3 module; reports the first failure on one
# line of stderr as "FAILED <index> <message>".
_WORKER = r"""
import json, os, sys
import dp3
runs = json.load(sys.stdin)
for i, run in enumerate(runs):
    os.chdir(run["cwd"])
    try:
        dp3.execute_from_command_line(["DP3"] + run["args"])
    except Exception as exc:
        sys.stderr.write("FAILED %d %s\n" % (i, " ".join(str(exc).split())))
        sys.exit(1)
"""


@dataclass(frozen=True)
class Dp3Run:
    """One ``DP3 key=value ...`` invocation, run in ``cwd`` (relative paths are taken from there)."""

    cwd: Path
    args: tuple[str, ...]


@dataclass(frozen=True)
class Rewrite:
    """Rewrite the MS ``source`` as ``target`` with DP3, as Factor's pipeline writes its MSs.

    ``dysco``: write DATA and WEIGHT_SPECTRUM with ``msout.storagemanager=dysco`` (Factor's
    use_compression). ``copies``: data columns that a second, in-place DP3 run adds as copies
    of DATA (as Factor's subtraction adds SUBTRACTED_DATA_ALL to its chunks).
    """

    source: Path
    target: Path
    dysco: bool = False
    copies: tuple[str, ...] = field(default=())

    def runs(self) -> list[Dp3Run]:
        manager = ("msout.storagemanager=dysco",) if self.dysco else ()
        # Relative names keep the caller's paths (spaces, non-ASCII) out of DP3's parser
        # and out of the HISTORY subtable DP3 writes.
        cwd = self.target.parent
        src = os.path.relpath(self.source, cwd)
        out = [Dp3Run(cwd, (f"msin={src}", f"msout={self.target.name}", "steps=[]") + manager)]
        for column in self.copies:
            out.append(Dp3Run(cwd, (f"msin={self.target.name}", "msout=.", "steps=[]",
                                    f"msout.datacolumn={column}") + manager))
        return out


def _has_module() -> bool:
    return importlib.util.find_spec("dp3") is not None


def dp3_available() -> bool:
    """True when DP3 can run here (the ``dp3`` module or a ``DP3`` executable on PATH)."""
    return _has_module() or shutil.which("DP3") is not None


def _env() -> dict[str, str]:
    """DP3 needs casacore's measures data; python-casacore's wheel ships it."""
    env = dict(os.environ)
    env["OPENBLAS_NUM_THREADS"] = "1"  # DP3 refuses to run with a multi-threaded OpenBLAS
    if "AIPSPATH" not in env and "CASACORE_DATADIR" not in env:
        spec = importlib.util.find_spec("casacore")
        if spec is not None and spec.origin:
            root = os.path.dirname(spec.origin)
            if os.path.isdir(os.path.join(root, "data")):
                env.update(AIPSPATH=root, CASACORE_DATADIR=os.path.join(root, "data"))
    return env


def _failure(run: Dp3Run, message: str) -> FactorArchiveError:
    out = next((a[len("msout="):] for a in run.args if a.startswith("msout=")), "?")
    target = run.cwd if out == "." else run.cwd / out
    return FactorArchiveError(f"DP3 could not write {target}: {message[:300] or 'no message'}")


def run_dp3(runs: Sequence[Dp3Run]) -> None:
    """Run DP3 once per item, in order; the first failure is a one-line FactorArchiveError."""
    if not runs:
        return
    env = _env()
    if _has_module():
        payload = json.dumps([{"cwd": str(r.cwd), "args": list(r.args)} for r in runs])
        proc = subprocess.run([sys.executable, "-c", _WORKER], input=payload, env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode == 0:
            return
        for line in proc.stderr.splitlines():
            if line.startswith("FAILED "):
                _, index, message = (line.split(" ", 2) + [""])[:3]
                raise _failure(runs[int(index)], message)
        last = " ".join(proc.stderr.strip().splitlines()[-1:])
        raise _failure(runs[0], f"DP3 exited with status {proc.returncode}: {last}")
    exe = shutil.which("DP3")
    if exe is None:
        raise FactorArchiveError("DP3 is not installed (no dp3 Python module and no DP3 on PATH)")
    for run in runs:
        proc = subprocess.run([exe, *run.args], cwd=run.cwd, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise _failure(run, " ".join(proc.stdout.strip().splitlines()[-1:]))


def rewrite_with_dp3(rewrites: Sequence[Rewrite]) -> None:
    """Write every target from its source with DP3 (one batch); targets must not exist."""
    for rw in rewrites:
        if rw.target.exists() or rw.target.is_symlink():
            raise FactorArchiveError(f"{rw.target} already exists")
    run_dp3([run for rw in rewrites for run in rw.runs()])


@dataclass(frozen=True)
class MsRecipe:
    """A small MS to write: ``synth`` are the keyword arguments of ``synth.write_ms``.

    ``copies``: data columns besides DATA; ``dysco``: Dysco-compressed (DP3 only).
    """

    path: Path
    synth: dict
    copies: tuple[str, ...] = ()
    dysco: bool = False


def write_recipes(recipes: Sequence[MsRecipe], *, use_dp3: bool = True) -> None:
    """Write each MS: with DP3 from a synthetic source (one batch), or synthetic only.

    With DP3, the source is written beside the target as ``<stem>.synth.ms`` and removed
    afterwards; the ``copies`` columns are DP3's in-place copies of DATA. Synthetic only, they
    hold their own random values.
    """
    from factor_archive.ms.synth import write_ms

    if not use_dp3:
        for r in recipes:
            write_ms(r.path, data_columns=("DATA",) + r.copies, **r.synth)
        return
    rewrites = []
    try:
        for r in recipes:
            source = r.path.with_name(r.path.stem + ".synth.ms")
            rewrites.append(Rewrite(source, r.path, dysco=r.dysco, copies=r.copies))
            write_ms(source, **r.synth)
        rewrite_with_dp3(rewrites)
    finally:
        for rw in rewrites:
            shutil.rmtree(rw.source, ignore_errors=True)
