"""What goes where: the archive plan for a run and a set of options.

Each planned item becomes one manifest member. The plan decides its archive path (the layout of the
original documentation), where it goes back on restore, and whether paths inside it are rewritten.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInput
from .manifest import Member, Missing
from .ms.concat import group_by_time
from .run.model import FactorRun, is_table, unique


@dataclass
class Options:
    resumable: bool = False
    directions: list[str] = field(default_factory=list)   # calibrated data to export ("all" expanded)
    form: str = "dir"
    volume_size: int | None = None    # tar: write volumes of this many bytes (--volume-size)
    group_by: str | None = None       # with volumes: "category" keeps category groups apart


@dataclass
class PlanItem:
    member: Member                  # pre-filled; the writer adds sizes and checksums
    source: Path | None             # what to read; None for generated calibrated data
    size: int                       # bytes to read (estimate for generated items)
    concat: list[str | None] | None = None  # calibrated data: frequency-ordered slots


@dataclass
class ArchivePlan:
    run: FactorRun
    options: Options
    items: list[PlanItem]
    missing: list[Missing]

    @property
    def total_bytes(self) -> int:
        return sum(i.size for i in self.items)

    def run_info(self) -> dict:
        run = self.run
        return {
            "working_dir": run.parset.working_dir,
            "working_dir_abs": str(run.working_dir),
            "parset": str(run.parset.path),
            "parset_name": run.parset.path.name,
            "dir_ms": run.parset.dir_ms,
            "directions_file": run.parset.get("directions", "directions_file"),
            "skymodel_extension": run.parset.skymodel_extension,
            "directions": run.directions,
            "bands": sorted(run.band_states),
            "input_paths": sorted({str(p) for p in _input_paths(run)}),
        }


def _input_paths(run: FactorRun) -> list[Path]:
    paths = []
    for state in run.band_states.values():
        for f in state.get("files", []) or []:
            p = run.local(f)
            if p.is_symlink():
                paths.append(Path(os.readlink(p)))
    if run.parset.dir_ms:
        paths.append(Path(run.parset.dir_ms))
    return paths


def tree_size(path: Path) -> int:
    if path.is_dir():
        total = 0
        for dirpath, _dirs, files in os.walk(path, followlinks=True):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total
    return path.stat().st_size


class _Planner:
    def __init__(self, run: FactorRun, options: Options):
        self.run = run
        self.options = options
        self.items: list[PlanItem] = []
        self.used: set[str] = set()
        self.seen_sources: dict[tuple[str, str], str] = {}

    def restore_rel(self, source: Path) -> str | None:
        try:
            rel = source.relative_to(self.run.working_dir)
        except ValueError:
            return None
        return rel.as_posix()

    def add(self, category: str, arcdir: str, source: Path, *, direction: str | None = None,
            name: str | None = None, restore_path: str | None = "auto", rewrite: str | None = None,
            extra: dict | None = None) -> None:
        key = (category, str(source))
        if key in self.seen_sources:
            return
        real = Path(os.path.realpath(source))
        link = os.readlink(source) if source.is_symlink() else None
        kind = "table" if is_table(real) else "file"
        base = name or source.name
        arcpath = f"{arcdir}/{base}"
        n = 1
        while arcpath in self.used:
            n += 1
            arcpath = f"{arcdir}/{n}_{base}"
        self.used.add(arcpath)
        self.seen_sources[key] = arcpath
        if restore_path == "auto":
            restore_path = self.restore_rel(source)
        st = real.stat()
        member = Member(
            path=arcpath, source=str(source), category=category, kind=kind, size=0,
            mode=stat.S_IMODE(st.st_mode), mtime=st.st_mtime, sha256="", direction=direction,
            restore_path=restore_path, symlink_target=link, rewrite=rewrite, extra=extra or {},
        )
        self.items.append(PlanItem(member=member, source=real, size=tree_size(real)))

    # -- categories -----------------------------------------------------------------------------
    def misc(self) -> None:
        run = self.run
        for f in run.misc_files():
            if f == run.parset.path:
                # The restore writes a resumable copy of the parset instead of the original.
                self.add("misc", "misc", f, restore_path=None)
            elif self.restore_rel(f) is None:
                self.add("misc", "misc", f, restore_path=f.name)  # e.g. a directions file outside the run
            else:
                self.add("misc", "misc", f)

    def images(self) -> None:
        for d in self.run.directions:
            for op, files in self.run.final_images(d).items():
                for f in files:
                    self.add("images", f"images/{d}/{op}", f, direction=d)
        for op, files in self.run.mosaic_images().items():
            for f in files:
                self.add("images", f"images/field/{op}", f, direction="field")

    def plots(self) -> None:
        for d in self.run.directions:
            for op, files in self.run.plots(d).items():
                for f in files:
                    self.add("plots", f"plots/{d}/{op}", f, direction=d)

    def chunks(self) -> None:
        run = self.run
        for band, mss in run.chunks().items():
            for ms in mss:
                self.add("chunks", f"chunks/{band}", ms)
        for band, sky in run.dirindep_skymodels().items():
            # Named so that a resume with dir_ms=<run>/chunks finds it (Factor looks for <ms root><ext>).
            roots = [Path(f).name.split("_chunk")[0] for f in run.band_states[band].get("files", [])]
            name = (roots[0] + run.parset.skymodel_extension) if roots else sky.name
            self.add("chunks", f"chunks/{band}", sky, name=name,
                     restore_path=f"chunks/{band}/{name}", extra={"original_name": sky.name})

    def state(self) -> None:
        for f in self.run.state_files:
            self.add("state", "state", f, rewrite="state" if f.suffix == ".pkl" else None)

    def per_direction(self) -> None:
        run = self.run
        for d in run.directions + ["field"]:
            for f in run.sky_models(d):
                self.add("sky_models", f"sky_models/{d}", f, direction=d,
                         restore_path=self.restore_rel(f) or f"sky_models/{d}/{f.name}")
            for f in run.instrument_tables(d):
                self.add("instrument_tables", f"instrument_tables/{d}", f, direction=d,
                         restore_path=self.restore_rel(f) or f"instrument_tables/{d}/{f.name}")
            for op, files in run.mapfiles(d).items():
                for f in files:
                    self.add("pipeline_state", f"pipeline_state/{d}/{op}", f, direction=d,
                             rewrite="mapfile")

    def calibrated_data(self) -> None:
        for d in self.options.directions:
            inputs = self.run.calibrated_inputs(d)
            if not inputs:
                raise BadInput(f"direction {d}: no calibrated data in the run "
                               f"(no imaging_input.mapfile with existing MSs)")
            for i, group in enumerate(group_by_time([str(p) for p in inputs])):
                name = f"{d}_calibrated_data_chunk{i}.ms"
                arcpath = f"calibrated_data/{d}/{name}"
                self.used.add(arcpath)
                member = Member(
                    path=arcpath, source="", category="calibrated_data", kind="table", size=0,
                    mode=0o755, mtime=0.0, sha256="", direction=d, restore_path=arcpath,
                    extra={"time_key": group.key, "concatenated_from": group.slots},
                )
                size = sum(tree_size(Path(s)) for s in group.slots if s)
                self.items.append(PlanItem(member=member, source=None, size=size, concat=group.slots))


def resolve_directions(run: FactorRun, requested: list[str]) -> list[str]:
    """Expand ``all`` and refuse unknown names with the list of known ones."""
    if not requested:
        return []
    if requested == ["all"]:
        return [d for d in run.directions if run.calibrated_inputs(d)]
    known = run.directions
    unknown = [d for d in requested if d not in known]
    if unknown:
        raise BadInput(f"unknown direction(s) {', '.join(unknown)}; known directions: {', '.join(known)}")
    return requested


def make_plan(run: FactorRun, options: Options) -> ArchivePlan:
    options.directions = resolve_directions(run, options.directions)
    planner = _Planner(run, options)
    planner.misc()
    planner.images()
    planner.plots()
    if options.resumable:
        planner.chunks()
        planner.state()
        planner.per_direction()
    planner.calibrated_data()
    missing = [Missing(source=p, category="referenced", reason=why, direction=d)
               for p, why, d in unique(run.missing)]
    return ArchivePlan(run=run, options=options, items=planner.items, missing=missing)

