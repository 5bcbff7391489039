"""A finished (or interrupted) Factor run, read-only: what it produced and where.

Everything is found from the parset, the directions file, the state pickles and the mapfiles,
never by importing Factor, and nothing is ever written to the working directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInput
from .directions import direction_names, directions_file
from .mapfile import MapfileError, parse_mapfile
from .parset import Parset, read_parset
from .state import UnsafePickleError, load_state

SELFCAL_OPS = ("facetselfcal", "facetpeel", "outlierpeel")
_IMAGE_OP = re.compile(r"^facetimage(_c.*)?$")
_MOSAIC_OP = re.compile(r"^fieldmosaic(_c.*)?$")
# Keys of a direction's state whose mapfile lists its solution tables (v2 h5parm, v1 parmdb).
SOLUTION_KEYS = (
    "dir_dep_h5parm_mapfile", "preapply_h5parm_mapfile",
    "converted_parmdb_mapfile", "dir_dep_parmdb_mapfile", "preapply_parmdb_mapfile",
)
SOLUTION_MAPFILES = ("combine_all_h5parms_output.mapfile",)


def is_table(path: Path) -> bool:
    """A casacore table is a directory holding table.dat."""
    return path.is_dir() and (path / "table.dat").exists()


@dataclass
class FactorRun:
    parset: Parset
    working_dir: Path                  # as the parset names it, made absolute
    directions: list[str]
    band_states: dict[str, dict] = field(default_factory=dict)       # band name -> state
    direction_states: dict[str, dict] = field(default_factory=dict)  # direction -> state
    state_files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing: list[tuple[str, str, str | None]] = field(default_factory=list)  # (path, why, direction)

    # -- paths ----------------------------------------------------------------------------------
    @property
    def results(self) -> Path:
        return self.working_dir / "results"

    def local(self, recorded: str, direction: str | None = None) -> Path:
        """A path recorded in state or a mapfile, moved to where the working directory is now."""
        old_wd = None
        if direction is not None:
            old_wd = self.direction_states.get(direction, {}).get("working_dir")
        for base in filter(None, {old_wd, self.parset.working_dir}):
            base = base.rstrip("/")
            if recorded == base or recorded.startswith(base + "/"):
                return self.working_dir / recorded[len(base):].lstrip("/")
        return Path(recorded)

    def op_dirs(self, direction: str) -> dict[str, Path]:
        """Every operation that has a results directory for ``direction``, by op name."""
        found = {}
        if self.results.is_dir():
            for op in sorted(os.listdir(self.results)):
                d = self.results / op / direction
                if d.is_dir():
                    found[op] = d
        return found

    # -- products -------------------------------------------------------------------------------
    def mapfile_paths(self, mapfile: Path, direction: str | None = None) -> list[Path]:
        """Existing files named by a mapfile; missing ones are recorded, 'dummy.ms' and non-paths skipped."""
        try:
            entries = parse_mapfile(mapfile.read_text(encoding="utf-8", errors="surrogateescape"))
        except FileNotFoundError:
            self.missing.append((str(mapfile), "mapfile not found", direction))
            return []
        except (MapfileError, OSError) as exc:
            raise BadInput(f"{mapfile}: unreadable mapfile ({exc})") from None
        paths = []
        for entry in entries:
            for element in entry.paths:
                element = py2_text(element)
                if not element.startswith("/"):
                    continue
                p = self.local(element, direction)
                if p.exists():
                    paths.append(p)
                else:
                    self.missing.append((str(p), f"listed in {mapfile.name} but absent", direction))
        return paths

    def final_images(self, direction: str) -> dict[str, list[Path]]:
        out = {}
        for op, d in self.op_dirs(direction).items():
            if _IMAGE_OP.match(op):
                mapfile = d / "mapfiles" / "final_image.mapfile"
                if mapfile.exists():
                    out[op] = self.mapfile_paths(mapfile, direction)
                else:
                    self.missing.append((str(mapfile), "no final image recorded", direction))
        return out

    def mosaic_images(self) -> dict[str, list[Path]]:
        out = {}
        for op, d in self.op_dirs("field").items():
            if _MOSAIC_OP.match(op):
                out[op] = sorted(p for p in d.glob("*.fits") if p.is_file())
        return out

    def plots(self, direction: str) -> dict[str, list[Path]]:
        out = {}
        for op, d in self.op_dirs(direction).items():
            if op in SELFCAL_OPS:
                pngs = sorted(p for p in d.glob("*.png") if p.is_file())
                if pngs:
                    out[op] = pngs
        return out

    def mapfiles(self, direction: str) -> dict[str, list[Path]]:
        out = {}
        for op, d in self.op_dirs(direction).items():
            md = d / "mapfiles"
            if md.is_dir():
                files = sorted(p for p in md.iterdir() if p.is_file())
                if files:
                    out[op] = files
        return out

    def _state_mapfile(self, direction: str, key: str, fallback_names: tuple[str, ...]) -> list[Path]:
        recorded = self.direction_states.get(direction, {}).get(key)
        if isinstance(recorded, str) and recorded.startswith("/"):
            return [self.local(recorded, direction)]
        found = []
        for op in SELFCAL_OPS:
            for name in fallback_names:
                p = self.results / op / direction / "mapfiles" / name
                if p.exists():
                    found.append(p)
        return found

    def sky_models(self, direction: str) -> list[Path]:
        paths: list[Path] = []
        for mapfile in self._state_mapfile(direction, "sourcedb_new_facet_sources",
                                           ("make_sourcedb_new_facet_sources.mapfile",)):
            paths += self.mapfile_paths(mapfile, direction)
        return unique(paths)

    def instrument_tables(self, direction: str) -> list[Path]:
        paths: list[Path] = []
        for key in SOLUTION_KEYS:
            names = SOLUTION_MAPFILES if key == "dir_dep_h5parm_mapfile" else ()
            for mapfile in self._state_mapfile(direction, key, names):
                paths += self.mapfile_paths(mapfile, direction)
        return unique(paths)

    def calibrated_inputs(self, direction: str) -> list[Path]:
        """The direction's ``*.prepare_imaging_data`` MSs (Factor's image_data_mapfile)."""
        recorded = self.direction_states.get(direction, {}).get("image_data_mapfile")
        if isinstance(recorded, str) and recorded.startswith("/"):
            mapfile = self.local(recorded, direction)
        else:
            mapfile = self.results / "facetimage" / direction / "mapfiles" / "imaging_input.mapfile"
        if not mapfile.exists():
            return []
        return [p for p in self.mapfile_paths(mapfile, direction) if is_table(p)]

    def chunks(self) -> dict[str, list[Path]]:
        """Chunk MSs by band directory (symlinked chunks included: they are followed later)."""
        out = {}
        chunks_dir = self.working_dir / "chunks"
        if chunks_dir.is_dir():
            for band in sorted(chunks_dir.iterdir()):
                if band.is_dir():
                    mss = sorted(p for p in band.iterdir() if p.suffix.lower() == ".ms" and is_table(p))
                    dangling = sorted(p for p in band.iterdir() if p.is_symlink() and not p.exists())
                    for p in dangling:
                        self.missing.append((str(p), f"chunk symlink points to missing {os.readlink(p)}", None))
                    if mss:
                        out[band.name] = mss
        return out

    def dirindep_skymodels(self) -> dict[str, Path]:
        """Each band's direction-independent sky model (usually outside the working dir)."""
        out = {}
        for band, state in self.band_states.items():
            recorded = state.get("skymodel_dirindep")
            if isinstance(recorded, str) and recorded:
                p = self.local(recorded)
                if p.is_file():
                    out[band] = p
                else:
                    self.missing.append((str(p), f"sky model of {band} not found", None))
        return out

    def misc_files(self) -> list[Path]:
        files = [self.parset.path]
        dfile = directions_file(self.parset)
        if dfile is not None and dfile.is_file():
            files.append(dfile)
        for name in ("factor.log",):
            p = self.working_dir / name
            if p.is_file():
                files.append(p)
        regions = self.working_dir / "regions"
        if regions.is_dir():
            files += sorted(p for p in regions.iterdir() if p.is_file())
        return unique(files)


def unique(items: list) -> list:
    """Drop repeats, keeping first-seen order."""
    return list(dict.fromkeys(items))


def read_pickle(path: Path) -> dict:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read state file ({exc.strerror})") from None
    try:
        value = load_state(data)
    except UnsafePickleError as exc:
        raise BadInput(f"{path}: unreadable state pickle ({exc})") from None
    if not isinstance(value, dict):
        raise BadInput(f"{path}: state pickle does not hold a dictionary")
    return py2_text(value)


def py2_text(value):
    """Python 2 byte strings arrive decoded as latin-1; paths on disk are UTF-8, so decode them so."""
    if isinstance(value, str):
        try:
            return value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return value
    if isinstance(value, list):
        return [py2_text(v) for v in value]
    if isinstance(value, tuple):
        return tuple(py2_text(v) for v in value)
    if isinstance(value, dict):
        return {py2_text(k): py2_text(v) for k, v in value.items()}
    return value


def load_run(parset_path: str | os.PathLike) -> FactorRun:
    parset = read_parset(parset_path)
    wd_text = parset.working_dir
    working_dir = Path(os.path.abspath(wd_text))
    if not working_dir.exists():
        raise BadInput(f"{parset.path}: working directory {wd_text} (dir_working) does not exist")
    if not working_dir.is_dir():
        raise BadInput(f"{parset.path}: dir_working {wd_text} is not a directory")
    run = FactorRun(parset=parset, working_dir=working_dir, directions=direction_names(parset))
    state_dir = working_dir / "state"
    if state_dir.is_dir():
        for pkl in sorted(state_dir.iterdir()):
            if not pkl.is_file():
                continue
            run.state_files.append(pkl)
            if pkl.name.endswith("_save.pkl"):
                name = pkl.name[: -len("_save.pkl")]
                state = read_pickle(pkl)
                if name.startswith("Band_"):
                    run.band_states[name] = state
                else:
                    run.direction_states[name] = state
    return run
