"""A small but realistic finished Factor run (v2.0 layout) to try the tool on and to test with.

Layout (``root`` is the directory given):
  root/factor.parset, root/directions.txt      the parset and directions file (outside the run)
  root/input/                                  dir_ms: two input MSs and their .merge sky models
  root/wdir/                                   dir_working: chunks, state, results, regions, logs

Every Measurement Set is written the way a real run's are: by DP3, from a small synthetic MS
(``ms/synth.py``) that DP3 rewrites. The chunks get SUBTRACTED_DATA_ALL from a second, in-place
DP3 run, and one chunk (band SB010, chunk 1) is Dysco-compressed, as Factor's
``use_compression`` writes them. Without DP3 (``dp3`` module or ``DP3`` executable) the MSs are
the synthetic ones, written by python-casacore: same names and rows, but StandardStMan
storage, variable-shape SPECTRAL_WINDOW columns and no Dysco.

State pickles are written the way Python 2 wrote them (protocols 0 and 2, byte strings, numpy 1.x
arrays); mapfiles are the one-line ``repr`` of a list of dicts that Factor writes. Two imaging
operations, a chunk that is a symlink to an input MS, a band missing in one time chunk of the
calibrated data, and decoy files that must not be archived are all there.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FactorArchiveError
from .ms.dp3 import MsRecipe, dp3_available, write_recipes
from .run.mapfile import py2_literal
from .run.state import dumps_py2

OBS = "L123456"
BANDS = [("SB000", 120.21e6), ("SB010", 120.21e6 + 1.953125e6)]
NCHAN = 4
CHAN_WIDTH = 1.953125e6 / NCHAN
START = 4.87e9
CHUNK_LEN = 600.0
INTERVAL = 60.0
DIRECTIONS = ["facet1", "facet2"]
IMAGE_OPS = ["facetimage", "facetimage_c15.0r0.0t45.0u160.0"]
MOSAIC_OPS = ["fieldmosaic", "fieldmosaic_c15.0r0.0t45.0u160.0"]
# Calibrated data that facet1's facetimage made: band SB010 is missing in chunk 1.
MISSING_CALIBRATED = {("SB010", 1)}
# The chunk that DP3 writes with Dysco compression (Factor's use_compression).
DYSCO_CHUNK = ("SB010", 1)
# DyscoStMan needs two time blocks before its first flush, so the chunks have at least this many.
MIN_DYSCO_TIMES = 2


def band_name(freq: float) -> str:
    return f"Band_{freq / 1e6:.2f}MHz"


def chan_freqs(centre: float) -> list[float]:
    return [centre - 1.953125e6 / 2 + (i + 0.5) * CHAN_WIDTH for i in range(NCHAN)]


def root_name(sb: str) -> str:
    return f"{OBS}_{sb}_uv.dppp.pre-cal"


def _mapfile(path: Path, files: list[str], skip: bool = False) -> None:
    """Write a mapfile the way Python 2 Factor does: repr of a list of dicts, one line, no newline.

    Python 2 paths are UTF-8 byte strings, so ``repr`` shows non-ASCII bytes as ``\\xNN``.
    """
    def literal(text: str) -> str:
        return py2_literal(text.encode("utf-8").decode("latin-1"), "'", False)

    entries = [f"{{'host': 'localhost', 'file': {literal(f)}, 'skip': {skip}}}" for f in files]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[" + ", ".join(entries) + "]", encoding="ascii")


def _py2(value):
    """Python 2 kept paths as byte strings: turn every str into UTF-8 bytes before pickling."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        return [_py2(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_py2(v) for v in value)
    if isinstance(value, dict):
        return {_py2(k): _py2(v) for k, v in value.items()}
    return value


def _pickle(path: Path, state: dict, protocol: int) -> None:
    path.write_bytes(dumps_py2(_py2(state), protocol=protocol))


def fits_bytes(seed: int, shape=(32, 32)) -> bytes:
    """A minimal valid FITS image."""
    rng = np.random.default_rng(seed)
    cards = [
        "SIMPLE  =                    T", "BITPIX  =                  -32", "NAXIS   =                    2",
        f"NAXIS1  = {shape[1]:20d}", f"NAXIS2  = {shape[0]:20d}", "BUNIT   = 'JY/BEAM '", "END",
    ]
    header = "".join(c.ljust(80) for c in cards).encode("ascii")
    header += b" " * (-len(header) % 2880)
    data = rng.normal(size=shape).astype(">f4").tobytes()
    return header + data + b"\0" * (-len(data) % 2880)


def png_bytes(seed: int, size: int = 16) -> bytes:
    """A minimal valid greyscale PNG."""
    rng = np.random.default_rng(seed)
    raw = b"".join(b"\0" + rng.integers(0, 255, size, dtype=np.uint8).tobytes() for _ in range(size))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _h5_bytes(seed: int) -> bytes:
    """Stand-in payload with the HDF5 signature; archived as an opaque file."""
    rng = np.random.default_rng(seed)
    return b"\x89HDF\r\n\x1a\n" + rng.bytes(4096)


def write_sample_run(directory: str | os.PathLike, *, ntimes_per_chunk: int = 10, nant: int = 4,
                     dp3: bool | None = None, ms_cache: str | os.PathLike | None = None) -> Path:
    """Write the sample run below ``directory`` (created; must be empty) and return the parset path.

    ``dp3``: write the MSs through DP3 (True), with python-casacore only (False), or through DP3
    when it is installed (None). ``ms_cache``: a directory where DP3-written MSs are kept and
    reused by later calls with the same sizes (tests write many sample runs; a DP3 batch takes
    seconds).
    """
    use_dp3 = dp3_available() if dp3 is None else dp3
    if use_dp3 and not dp3_available():
        raise FactorArchiveError("DP3 is not installed (no dp3 Python module and no DP3 on PATH)")
    if use_dp3 and ntimes_per_chunk < MIN_DYSCO_TIMES:
        # DyscoStMan aborts DP3 ("flushed before at least two timeblocks were stored").
        raise FactorArchiveError(f"ntimes_per_chunk={ntimes_per_chunk}: the Dysco-compressed chunk "
                                 f"{DYSCO_CHUNK[0]} {DYSCO_CHUNK[1]} needs at least {MIN_DYSCO_TIMES} time slots")
    root = Path(os.path.abspath(directory))
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    wd, dir_ms = root / "wdir", root / "input"
    for sub in ("logs", "state", "results", "regions", "chunks"):
        (wd / sub).mkdir(parents=True)
    dir_ms.mkdir()
    seed = iter(range(10_000))
    nchunks = 3
    measurement_sets: list[MsRecipe] = []

    # Inputs, chunks, band state -------------------------------------------------------------
    band_names = []
    for b, (sb, centre) in enumerate(BANDS):
        root_ms = root_name(sb)
        bname = band_name(centre)
        band_names.append(bname)
        input_ms = dir_ms / f"{root_ms}.ms"
        measurement_sets.append(MsRecipe(input_ms, dict(
            start_time=START, ntimes=ntimes_per_chunk * nchunks, interval=INTERVAL,
            chan_freqs=chan_freqs(centre), chan_width=CHAN_WIDTH, nant=nant, seed=next(seed)),
            copies=("SUBTRACTED_DATA_ALL",)))
        sky = dir_ms / f"{root_ms}.merge"
        sky.write_text("FORMAT = Name, Type, Ra, Dec, I, Patch\n"
                       f", , p{b}, 14:41:01.88, +35.30.31.5\n"
                       f"s{b}a, POINT, 14:41:01.88, +35.30.31.5, 1.{b}, p{b}\n")
        band_dir = wd / "chunks" / bname
        band_dir.mkdir()
        files = []
        for c in range(nchunks):
            chunk = band_dir / f"{root_ms}_chunk{c}.ms"
            if b == 1 and c == 0:
                os.symlink(input_ms, chunk)  # an input that was not split becomes a symlink
            else:
                measurement_sets.append(MsRecipe(chunk, dict(
                    start_time=START + c * CHUNK_LEN, ntimes=ntimes_per_chunk, interval=INTERVAL,
                    chan_freqs=chan_freqs(centre), chan_width=CHAN_WIDTH, nant=nant,
                    seed=next(seed)), copies=("SUBTRACTED_DATA_ALL",), dysco=(sb, c) == DYSCO_CHUNK))
            files.append(str(chunk))
        _pickle(wd / "state" / f"{bname}_save.pkl", {
            "name": bname, "files": files, "msnames": [Path(f).name for f in files],
            "working_dir": str(wd), "chunks_dir": str(band_dir),
            "save_file": str(wd / "state" / f"{bname}_save.pkl"),
            "skymodel_dirindep": str(sky), "numMS": len(files),
            "freq": np.float64(centre), "nchan": np.int64(NCHAN),
            "chan_freqs_hz": np.array(chan_freqs(centre)), "chan_width_hz": np.float64(CHAN_WIDTH),
            "missing_channels": [], "ra": 220.2578, "dec": 35.5088, "diam": 30.0,
            "has_sub_data": True, "has_sub_data_new": False, "sumsamples": 30,
            "starttime": START, "endtime": START + nchunks * CHUNK_LEN, "timepersample": INTERVAL,
        }, protocol=0 if b == 0 else 2)

    # Parset, directions, regions, log ----------------------------------------------------------
    (root / "directions.txt").write_text(
        "# name position mscale_selfcal_do mscale_facet_do cal_imsize solint_p solint_a dynamic_range "
        "region_selfcal region_facet peel_skymodel outlier_source cal_size_deg cal_flux_mjy\n"
        "facet1  14h38m29.584,+33d57m37.82 True  True    0  1   0  LD empty empty empty False 0.02 1300\n"
        "facet2  14h41m01.884,+35d30m31.52 False False   0  1   0  LD empty empty empty False 0.02 900\n"
        "facet3  14h50m12.001,+36d01m10.00 empty empty   0  1   0  HD empty empty empty True 0.05 5000\n")
    (root / "factor.parset").write_text(
        "[global]\n"
        f"dir_working = {wd}\n"
        f"dir_ms = {dir_ms}\n"
        "chunk_size_sec = 600\n"
        "keep_avg_facet_data = True\n\n"
        "[calibration]\n"
        "exit_on_selfcal_failure = False\n\n"
        "[imaging]\n"
        "facet_cellsize_arcsec = [1.5, 15.0]\n"
        "facet_robust = [-0.5, 0.0]\n"
        "facet_taper_arcsec = [0.0, 45.0]\n"
        "facet_min_uv_lambda = [80.0, 160.0]\n\n"
        "[directions]\n"
        f"directions_file = {root / 'directions.txt'}\n"
        "target_ra = 14h41m01.884\n"
        "target_dec = +35d30m31.52\n"
        "target_radius_arcmin = 10\n"
        "target_has_own_facet = True\n\n"
        "[cluster]\n"
        "lofarroot = /opt/lofar\n"
        "dir_local = /tmp/scratch\n")
    (wd / "regions" / "facets_ds9.reg").write_text(
        "# Region file format: DS9 version 4.0\nfk5\npolygon(219.1,33.5,220.5,33.4,220.6,34.6,219.0,34.7)\n")
    (wd / "regions" / "calimages_ds9.reg").write_text(
        "# Region file format: DS9 version 4.0\nfk5\nbox(219.6,33.9,0.2,0.2,0)\n")
    (wd / "factor.log").write_text(
        "2017-06-15 10:00:00,000 - INFO - factor - Factor started\n"
        "2017-06-17 22:13:08,512 - INFO - factor - Factor has finished :)\n")

    # Directions: selfcal (facet1, facet2), imaging (all + target), mosaic (field) --------------
    res = wd / "results"
    chunk_files = [str(p) for b in band_names for p in sorted((wd / "chunks" / b).iterdir())]
    for d in DIRECTIONS + ["target"]:
        (wd / "logs" / "facetimage").mkdir(parents=True, exist_ok=True)
        (wd / "logs" / "facetimage" / f"{d}.out.log").write_text("wsclean output\n")
        state: dict[str, Any] = {
            "name": d, "ra": 219.62, "dec": 33.96, "working_dir": str(wd),
            "save_file": str(wd / "state" / f"{d}_save.pkl"),
            "vertices_file": str(wd / "state" / f"{d}_save.pkl"),
            "vertices": [np.array([219.1, 220.5, 220.6, 219.0]), np.array([33.5, 33.4, 34.6, 34.7])],
            "region_selfcal": f'["{wd}/regions/calimages_ds9.reg"]', "region_field": "empty",
            "peel_skymodel": None, "is_patch": False, "is_outlier": False,
            "contains_target": d == "target", "selfcal_ok": d != "target", "hosts": ["localhost"],
            "concat_data_mapfile": "concat_data.output.mapfile",
            "started_operations": [], "completed_operations": [],
            "facet_image_mapfile": {}, "facet_premask_mapfile": {}, "cleanup_mapfiles": [],
            "cellsize_selfcal_deg": 0.000417, "facet_imsize": 512, "missing_bands": [],
        }
        if d != "target":
            sc = res / "facetselfcal" / d
            md = sc / "mapfiles"
            md.mkdir(parents=True)
            h5 = sc / "combined_solutions.h5"
            h5.write_bytes(_h5_bytes(next(seed)))
            (sc / "fast_phases.h5").write_bytes(_h5_bytes(next(seed)))  # intermediate: not archived
            sourcedbs = []
            for sb, _c in BANDS:
                sdb = sc / f"{root_name(sb)}_chunk0.make_sourcedb_new_facet_sources"
                sdb.write_bytes(b"sourcedb blob " + os.urandom(0) + d.encode() + sb.encode() * 50)
                sourcedbs.append(str(sdb))
            for kind in ("tec+scalarphase_facet", "slow-amplitude_facet", "slow-phase_facet"):
                (sc / f"{kind}_{d}.png").write_bytes(png_bytes(next(seed)))
            img = sc / f"{root_name('SB000')}_chunk0.wsclean_image42_iter1-image.fits"
            img.write_bytes(fits_bytes(next(seed)))  # selfcal image: decoy
            (sc / "statefile").write_bytes(b"(lp0\n(dp1\n.")
            (sc / "pipeline.parset").write_text(f"pipeline.steps=[]\nworking_directory={wd}\n")
            _mapfile(md / "combine_all_h5parms_output.mapfile", [str(h5)])
            _mapfile(md / "make_sourcedb_new_facet_sources.mapfile", sourcedbs)
            _mapfile(md / "input_files_single.mapfile", chunk_files)
            _mapfile(md / "full_skymodels.mapfile", [str(dir_ms / f"{root_name(sb)}.merge") for sb, _ in BANDS])
            _mapfile(md / "concat_data_local.mapfile", [f"/tmp/scratch/{d}_a1b2c3/concat.ms"])
            _mapfile(md / "verify_subtract.break.mapfile", ["True"])
            _mapfile(md / "make_selfcal_plots.mapfile", [str(p) for p in sorted(sc.glob("*.png"))])
            facetsub_maps = res / "facetsub" / d / "mapfiles"
            facetsub_maps.mkdir(parents=True)
            _mapfile(facetsub_maps / "input_files_single.mapfile", chunk_files)
            state.update({
                "started_operations": ["facetselfcal", "facetsub"],
                "completed_operations": ["facetselfcal", "facetsub"],
                "dir_dep_h5parm_mapfile": str(md / "combine_all_h5parms_output.mapfile"),
                "sourcedb_new_facet_sources": str(md / "make_sourcedb_new_facet_sources.mapfile"),
                "input_files_single_mapfile": str(md / "input_files_single.mapfile"),
                "selfcal_plots_mapfile": str(md / "make_selfcal_plots.mapfile"),
                "cleanup_mapfiles": [str(md / "concat_data_local.mapfile")],
            })
        # Imaging operations: the final image comes from final_image.mapfile, not a glob.
        for k, op in enumerate(IMAGE_OPS):
            od = res / op / d
            md = od / "mapfiles"
            md.mkdir(parents=True)
            base = od / f"{root_name('SB000')}_chunk0.wsclean_image_full"
            final = Path(f"{base}-image.fits")
            final.write_bytes(fits_bytes(next(seed)))
            for decoy in ("-model.fits", "-residual.fits", "-psf.fits"):
                Path(f"{base}{decoy}").write_bytes(fits_bytes(next(seed), (8, 8)))
            (od / f"{root_name('SB000')}_chunk0.premask").write_bytes(fits_bytes(next(seed), (8, 8)))
            _mapfile(md / "final_image.mapfile", [str(final)])
            _mapfile(md / "premask.mapfile", [str(od / f"{root_name('SB000')}_chunk0.premask")])
            _mapfile(md / "input_bands.mapfile", chunk_files)
            state["facet_image_mapfile"][op] = str(md / "final_image.mapfile")
            state["facet_premask_mapfile"][op] = str(md / "premask.mapfile")
            state["started_operations"].append(op)
            state["completed_operations"].append(op)
            if k == 0 and d == "facet1":
                state["image_data_mapfile"] = str(md / "imaging_input.mapfile")
                measurement_sets += _calibrated_data(od, md, next(seed) * 100)
        _pickle(wd / "state" / f"{d}_save.pkl", state, protocol=0 if d != "facet2" else 2)

    _outlier_peel(wd, res, chunk_files, next(seed))

    # Field mosaic ------------------------------------------------------------------------------
    field: dict[str, Any] = {"name": "field", "working_dir": str(wd), "save_file": str(wd / "state" / "field_save.pkl"),
             "facet_image_filenames": [], "started_operations": [], "completed_operations": [],
             "facet_vertices_filenames": [str(wd / "state" / f"{d}_save.pkl") for d in DIRECTIONS + ["target"]]}
    for op in MOSAIC_OPS:
        od = res / op / "field"
        md = od / "mapfiles"
        md.mkdir(parents=True)
        products = [od / f"{root_name('SB000')}_chunk0.correct_mosaic.pbcor.fits",
                    od / f"{root_name('SB000')}_chunk0.correct_mosaic.pbcut.fits"]
        for p in products:
            p.write_bytes(fits_bytes(next(seed)))
        (od / f"{root_name('SB000')}_chunk0.make_mosaic").write_bytes(fits_bytes(next(seed), (8, 8)))
        _mapfile(md / "facet_vertices.mapfile", field["facet_vertices_filenames"])
        _mapfile(md / "pb_image.mapfile", [str(products[0])])
        field["facet_image_filenames"] += [str(res / op.replace("fieldmosaic", "facetimage") / d /
                                               f"{root_name('SB000')}_chunk0.wsclean_image_full-image.fits")
                                           for d in DIRECTIONS + ["target"]]
        field["pb_mapfile"] = str(md / "pb_image.mapfile")
        field["started_operations"].append(op)
        field["completed_operations"].append(op)
    _pickle(wd / "state" / "field_save.pkl", field, protocol=2)
    _write_measurement_sets(root, measurement_sets, use_dp3=use_dp3,
                            cache=None if ms_cache is None else
                            Path(ms_cache) / f"t{ntimes_per_chunk}-a{nant}")
    return root / "factor.parset"


def _write_measurement_sets(root: Path, todo: list[MsRecipe], *, use_dp3: bool,
                            cache: Path | None) -> None:
    """Write every MS (DP3 in one batch), reusing and filling the cache of DP3-written MSs."""
    if not use_dp3 or cache is None:
        write_recipes(todo, use_dp3=use_dp3)
        return
    missing = []
    for ms in todo:
        cached = cache / ms.path.relative_to(root)
        if cached.is_dir():
            shutil.copytree(cached, ms.path, symlinks=True)
        else:
            missing.append(ms)
    write_recipes(missing)
    for ms in missing:
        cached = cache / ms.path.relative_to(root)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.name}.partial-{os.getpid()}")
        shutil.copytree(ms.path, partial, symlinks=True)
        try:
            partial.rename(cached)
        except OSError:  # another process cached it first
            shutil.rmtree(partial, ignore_errors=True)


def _outlier_peel(wd: Path, res: Path, chunk_files: list[str], seed: int) -> None:
    """facet3: an outlier peeled with v1-style parmdb solutions (a casacore table), never imaged."""
    od = res / "outlierpeel" / "facet3"
    md = od / "mapfiles"
    md.mkdir(parents=True)
    parmdb = od / f"{root_name('SB000')}_chunk0.merge_selfcal_parmdbs"
    write_parmdb(parmdb, seed)
    (od / f"{root_name('SB000')}_chunk0_tec_channel0.png").write_bytes(png_bytes(seed))
    (od / f"{root_name('SB000')}_chunk0_phase_channel0.png").write_bytes(png_bytes(seed + 1))
    sdb = od / f"{root_name('SB000')}_chunk0.make_sourcedb_new_facet_sources"
    sdb.write_bytes(b"sourcedb blob facet3" * 40)
    _mapfile(md / "merge_selfcal_parmdbs.mapfile", [str(parmdb)])
    _mapfile(md / "make_sourcedb_new_facet_sources.mapfile", [str(sdb)])
    _mapfile(md / "input_files_single.mapfile", chunk_files)
    _pickle(wd / "state" / "facet3_save.pkl", {
        "name": "facet3", "working_dir": str(wd), "save_file": str(wd / "state" / "facet3_save.pkl"),
        "is_outlier": True, "peel_calibrator": True, "region_selfcal": "[]",
        "peel_skymodel": "/opt/factor/skymodels/3C295.skymodel",   # inside the Factor install: stays
        "started_operations": ["outlierpeel"], "completed_operations": ["outlierpeel"],
        "dir_dep_parmdb_mapfile": str(md / "merge_selfcal_parmdbs.mapfile"),
        "sourcedb_new_facet_sources": str(md / "make_sourcedb_new_facet_sources.mapfile"),
        "facet_image_mapfile": {}, "cleanup_mapfiles": [],
    }, protocol=0)


def write_parmdb(path: Path, seed: int) -> None:
    """A small table shaped like a LOFAR parmdb: values with NAMES and DEFAULTVALUES subtables."""
    from casacore import tables as ct

    rng = np.random.default_rng(seed)
    main = ct.table(str(path), ct.maketabdesc([
        ct.makescacoldesc("NAMEID", 0), ct.makescacoldesc("STARTX", 0.0), ct.makescacoldesc("ENDX", 0.0),
        ct.makearrcoldesc("VALUES", 0.0, 2)]), nrow=6, ack=False)
    main.putcol("NAMEID", np.array([0, 1, 0, 1, 0, 1]))
    main.putcol("STARTX", np.linspace(1.2e8, 1.25e8, 6))
    main.putcol("ENDX", np.linspace(1.21e8, 1.26e8, 6))
    for row in range(6):
        main.putcell("VALUES", row, rng.normal(size=(1 + row % 2, 3)))   # variably shaped cells
    names = ct.table(str(path / "NAMES"), ct.maketabdesc([
        ct.makescacoldesc("NAME", ""), ct.makescacoldesc("FUNKLETTYPE", 0),
        ct.makearrcoldesc("PERTURBATION", 0.0, 1)]), nrow=2, ack=False)
    names.putcol("NAME", ["TEC:CS001HBA0:3C295", "TEC:CS002HBA0:3C295"])
    names.putcol("FUNKLETTYPE", [0, 0])
    names.putcol("PERTURBATION", np.full((2, 1), 1e-6))
    names.close()
    defaults = ct.table(str(path / "DEFAULTVALUES"), ct.maketabdesc([
        ct.makescacoldesc("NAME", ""), ct.makearrcoldesc("VALUES", 0.0, 2)]), nrow=1, ack=False)
    defaults.putcell("NAME", 0, "Gain:0:0:Ampl")
    defaults.putcell("VALUES", 0, np.ones((1, 1)))
    defaults.close()
    main.putkeyword("NAMES", "Table: " + str(path / "NAMES"))
    main.putkeyword("DEFAULTVALUES", "Table: " + str(path / "DEFAULTVALUES"))
    main.close()


def _calibrated_data(od: Path, md: Path, seed: int) -> list[MsRecipe]:
    """facet1's phase-shifted, averaged per band and chunk MSs, one band missing in one chunk."""
    files: list[MsRecipe] = []
    for c in range(3):
        for sb, centre in BANDS:
            if (sb, c) in MISSING_CALIBRATED:
                continue
            ms = od / f"{root_name(sb)}_chunk{c}.prepare_imaging_data"
            files.append(MsRecipe(ms, dict(
                start_time=START + c * CHUNK_LEN, ntimes=5, interval=2 * INTERVAL,
                chan_freqs=chan_freqs(centre), chan_width=CHAN_WIDTH, nant=4, seed=seed + len(files))))
    _mapfile(md / "imaging_input.mapfile", ["[" + ",".join(str(f.path) for f in files) + "]"])
    return files
