#!/usr/bin/env python
"""Benchmark on the shape of a real Factor run (issue 10): many mid-sized chunk MSs and hundreds of
small files, archived and restored in each form (dir, tar, zarr) against the reference commands.

The run (built once, kept in --workdir and reused while the parameters are the same):

* ``--bands`` bands of ``--chunks`` time-chunk MSs of about ``--chunk-mb`` MB each, every one written
  by DP3 (``DP3 msin=<synth> steps=[] msout=<chunk>``) from a ``factor_archive.ms.synth`` MS of
  ``--stations`` stations and ``--channels`` channels whose visibilities, flags and weights were
  made realistic by ``common.realistic_columns`` (modelled sky + gains + noise, RFI-like flags);
  the last chunk of the first band is a symlink to an input MS in dir_ms, as Factor makes for an
  input that it did not split;
* the small files of a run around them: ``factor_archive.sample.write_sample_run`` lays out the
  parset, directions file, regions, log, state pickles, selfcal/subtract/imaging/mosaic results
  (h5parms, sourcedbs, a parmdb, plots, images, mapfiles); its bands are replaced by the ones above
  and it is filled out to the numbers of a real run with the sample's own helpers: ~100 mapfiles per
  self-calibrated direction, ~15 per other operation, selfcal-image plots, and final and mosaic
  images of ``--image-px`` pixels square (FITS).

Each measurement alternates the two sides ``--repeat`` times, each trial after removing its
output, ``sync`` and (unless --no-wait-idle) waiting up to --idle-wait s for the rest of the
machine to go idle; page cache warm. Sides (``...`` is the same file list on both sides: a farm of
symlinks laid out as the archive, one per member, or ``cp -aL`` of each member's source):

| form | archive: ours | reference | restore: ours | reference |
|---|---|---|---|---|
| dir  | ``archivefactor -q -r --format dir`` | ``cp -aL ...`` | ``unarchivefactor -q`` | ``tar xf ref.tar`` |
| tar  | ``archivefactor -q -r --format tar`` | ``tar chf ref.tar ...`` | the same | the same |
| zarr | ``archivefactor -q -r --format zarr`` | ``tar chf - ... | zstd -3 -T0 -o ...`` | the same | the same |

(every side, ours and reference, ends with ``sync``, inside the time measured)

and the zarr store's size against ``tar chf - ... | zstd -19 -T0`` (run once per run built; its
size is kept in the work directory). ``--threads 1,2`` adds zarr archive sides with the table
codec's compression pool set to that many threads (``PipelineSettings(threads=N)``, passed by a
wrapper that binds it to the package's ``encode_table`` before calling the CLI: no edit of src/).

Reported per side: wall time (best and median), CPU seconds (user + system of the command and
every process it reaped, e.g. the casacore worker), bytes written (``write_bytes`` of
/proc/PID/io: what the command sent to the block layer, and the output's size), peak RSS (the
largest single process, from wait4, and the largest sampled sum over the process tree), and the
machine's load (load average, and the CPU the rest of the machine used during each trial).

Run from the repository root (README: benchmarks/README.md, "Real shape of a run"):

    .venv/bin/python benchmarks/bench_run.py                      # 1 band x 8 chunks x ~190 MB
    .venv/bin/python benchmarks/bench_run.py --repeat 3 --threads 1,2
    .venv/bin/python benchmarks/bench_run.py --bands 2 --chunks 4 --chunk-mb 100 --forms zarr
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BIN,
    PY,
    Trial,
    code_state,
    cp_script,
    human,
    log,
    machine_line,
    make_farm,
    prepare,
    realistic_columns,
    remove,
    rewrite_with_dp3,
    timed,
    tree_bytes,
)

BUILD_VERSION = 1              # bump when the builder changes what it writes
INTERVAL = 4.0                 # seconds per time slot
BAND_WIDTH = 1.953125e6        # Hz, as the sample run's bands
TARGETS = {("zarr", "archive"): 2.0, ("tar", "archive"): 1.0, ("dir", "archive"): 1.25,
           ("zarr", "restore"): 1.5, ("tar", "restore"): 1.5, ("dir", "restore"): None}
MEMORY_TARGET = 500 * 10 ** 6
FORMS = ("dir", "tar", "zarr")

# Factor's facetselfcal writes about a hundred mapfiles per direction, one or two per step.
SELFCAL_STEPS = [
    "create_ms_map", "create_msmulti_map", "expand_merged_parmdb_map", "create_full_skymodels_map",
    "make_facet_skymodels_all", "make_facet_skymodels_cal", "make_sourcedb_all_facet_sources",
    "make_sourcedb_cal_facet_sources", "expand_sourcedb_all_facet_sources",
    "expand_sourcedb_cal_facet_sources", "shift_cal", "add_all_facet_sources", "shift_empty",
    "sort_into_Groups", "sort_into_Groups_maps", "concat_data", "concat_data_sorted",
    "copy_column", "predict_all_model_data", "avg_model_data", "corrupt_final_model",
    "average_pre", "average_post", "wsclean_image01", "wsclean_image02", "wsclean_image11",
    "wsclean_image12", "wsclean_image21", "wsclean_image22", "wsclean_image31", "wsclean_image32",
    "wsclean_image41", "wsclean_image42", "solve_phaseonly1", "solve_phaseonly2", "solve_tec1",
    "solve_tec2", "solve_ampphase", "merge_selfcal_parmdbs", "smooth_amp", "norm_amp",
    "make_selfcal_images", "make_selfcal_plots_tec", "make_selfcal_plots_amp", "premask01",
    "premask11", "premask21", "premask31", "premask41", "create_compressed_mapfile",
]
OTHER_STEPS = [
    "create_ms_map", "create_msmulti_map", "expand_merged_parmdb_map", "make_sourcedb",
    "expand_sourcedb", "shift_and_average", "concat_averaged", "predict_and_difference",
    "subtract_models", "prepare_imaging_data", "wsclean_image_full", "mask", "make_mosaic",
    "correct_mosaic", "make_pbimage",
]


# -- building the run -----------------------------------------------------------------------------

def band_setup(b: int, nchan: int) -> tuple[str, float, list[float]]:
    """(subband name, centre frequency, channel frequencies) of band ``b``; the sample's first two."""
    centre = 120.21e6 + b * BAND_WIDTH
    width = BAND_WIDTH / nchan
    return f"SB{10 * b:03d}", centre, [centre - BAND_WIDTH / 2 + (i + 0.5) * width for i in range(nchan)]


def write_chunk(path: Path, *, start: float, ntimes: int, freqs: list[float], nant: int, seed: int,
                scratch: Path) -> None:
    """A chunk MS as Factor has it: realistic columns, written by DP3."""
    from factor_archive.ms.synth import write_ms

    src = scratch / f"{path.stem}.synth.ms"
    shutil.rmtree(src, ignore_errors=True)
    write_ms(src, start_time=start, ntimes=ntimes, interval=INTERVAL, chan_freqs=freqs,
             chan_width=BAND_WIDTH / len(freqs), nant=nant, seed=seed, name=path.stem)
    realistic_columns(src, seed=seed)
    rewrite_with_dp3(src, path)
    shutil.rmtree(src)


def bytes_per_time(scratch: Path, nant: int, nchan: int) -> tuple[float, int]:
    """(bytes per time slot, fixed bytes) of a DP3-written chunk: DP3's tables do not compress."""
    from factor_archive.ms.synth import write_ms
    from factor_archive.sample import START

    sizes = []
    for n in (20, 60):
        src, out = scratch / f"probe{n}.synth.ms", scratch / f"probe{n}.ms"
        remove([src, out])
        write_ms(src, start_time=START, ntimes=n, interval=INTERVAL, chan_freqs=band_setup(0, nchan)[2],
                 chan_width=BAND_WIDTH / nchan, nant=nant)
        rewrite_with_dp3(src, out)
        sizes.append(tree_bytes(out))
        remove([src, out])
    per_time = (sizes[1] - sizes[0]) / 40
    return per_time, int(sizes[0] - 20 * per_time)


def build_run(root: Path, p: dict) -> dict:
    """Write the run below ``root`` (see the module docstring); return what was built."""
    from factor_archive.sample import (
        MIN_DYSCO_TIMES,
        START,
        _h5_bytes,
        _mapfile,
        _pickle,
        band_name,
        fits_bytes,
        png_bytes,
        root_name,
        write_sample_run,
    )

    remove([root])
    # As small as the sample allows (its Dysco chunk needs MIN_DYSCO_TIMES): its bands are replaced.
    parset = write_sample_run(root, ntimes_per_chunk=MIN_DYSCO_TIMES, nant=2)
    wd, dir_ms, res = root / "wdir", root / "input", root / "wdir" / "results"
    scratch = root.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    # The sample's tiny bands go; ours replace them.
    remove([wd / "chunks", *dir_ms.glob("*.ms"), *(wd / "state").glob("Band_*_save.pkl")])
    (wd / "chunks").mkdir()
    per_time, fixed = bytes_per_time(scratch, p["stations"], p["channels"])
    ntimes = max(2, round((p["chunk_mb"] * 1e6 - fixed) / per_time))
    log(f"chunks: {p['stations']} stations, {p['channels']} channels, {ntimes} time slots of {INTERVAL:g} s "
        f"(~{human(fixed + ntimes * per_time)} each)")
    seed = 1000
    chunk_files = []
    for b in range(p["bands"]):
        sb, centre, freqs = band_setup(b, p["channels"])
        root_ms, bname = root_name(sb), band_name(centre)
        band_dir = wd / "chunks" / bname
        band_dir.mkdir()
        sky = dir_ms / f"{root_ms}.merge"
        if not sky.exists():
            sky.write_text("FORMAT = Name, Type, Ra, Dec, I, Patch\n, , p0, 14:41:01.88, +35.30.31.5\n"
                           "s0a, POINT, 14:41:01.88, +35.30.31.5, 1.0, p0\n")
        files = []
        for c in range(p["chunks"]):
            t0 = time.perf_counter()
            chunk = band_dir / f"{root_ms}_chunk{c}.ms"
            start = START + c * ntimes * INTERVAL
            seed += 1
            if b == 0 and c == p["chunks"] - 1 and p["chunks"] > 1:
                target = dir_ms / f"{root_ms}.ms"   # an input Factor did not split: the chunk links to it
                write_chunk(target, start=start, ntimes=ntimes, freqs=freqs, nant=p["stations"], seed=seed,
                            scratch=scratch)
                os.symlink(target, chunk)
            else:
                write_chunk(chunk, start=start, ntimes=ntimes, freqs=freqs, nant=p["stations"], seed=seed,
                            scratch=scratch)
            files.append(str(chunk))
            log(f"  {chunk.name}{' -> ' + str(target) if chunk.is_symlink() else ''}: "
                f"{human(tree_bytes(chunk))} in {time.perf_counter() - t0:.0f} s")
        chunk_files += files
        _pickle(wd / "state" / f"{bname}_save.pkl", {
            "name": bname, "files": files, "msnames": [Path(f).name for f in files],
            "working_dir": str(wd), "chunks_dir": str(band_dir),
            "save_file": str(wd / "state" / f"{bname}_save.pkl"),
            "skymodel_dirindep": str(sky), "numMS": len(files), "freq": centre, "nchan": p["channels"],
            "chan_freqs_hz": freqs, "chan_width_hz": BAND_WIDTH / p["channels"], "missing_channels": [],
            "ra": 220.2578, "dec": 35.5088, "diam": 30.0, "has_sub_data": True, "has_sub_data_new": False,
            "sumsamples": ntimes * p["chunks"], "starttime": START,
            "endtime": START + p["chunks"] * ntimes * INTERVAL, "timepersample": INTERVAL,
        }, protocol=2)
    shutil.rmtree(scratch)

    # The sample's mapfiles that list the chunks now list ours.
    for name in ("input_files_single.mapfile", "input_bands.mapfile"):
        for mapfile in res.glob(f"*/*/mapfiles/{name}"):
            _mapfile(mapfile, chunk_files)
    # Filled out to a real run's numbers of small files.
    roots = [Path(f).name.removesuffix(".ms") for f in chunk_files]
    k = 0
    for op_dir in sorted(res.glob("*/*")):
        op = op_dir.parent.name
        steps = SELFCAL_STEPS if op == "facetselfcal" else OTHER_STEPS
        for step in steps:
            for suffix in ((".mapfile", "_groups.mapfile") if op == "facetselfcal" else (".mapfile",)):
                mapfile = op_dir / "mapfiles" / f"{step}{suffix}"
                if not mapfile.exists():
                    _mapfile(mapfile, [f"{op_dir}/{r}.{step}" for r in roots])
        if op == "facetselfcal":
            for image in ("01", "12", "22", "32", "42"):
                for it in (1, 2):
                    k += 1
                    (op_dir / f"{roots[0]}.wsclean_image{image}_iter{it}-image.png").write_bytes(
                        png_bytes(k, 128))
            for h5 in ("fast_phases.h5", "slow_gains.h5"):
                (op_dir / h5).write_bytes(_h5_bytes(k))
    px = p["image_px"]
    for mapfile in res.glob("facetimage*/*/mapfiles/final_image.mapfile"):
        for image in mapfile.parent.parent.glob("*-image.fits"):
            k += 1
            image.write_bytes(fits_bytes(k, (px, px)))
    for image in res.glob("fieldmosaic*/field/*.fits"):
        k += 1
        image.write_bytes(fits_bytes(k, (px, px)))
    return {"parset": str(parset), "ntimes": ntimes}


def ensure_run(work: Path, p: dict) -> Path:
    """The run in ``work/run``, built unless one with the same parameters is there."""
    info_file = work / "run.json"
    want = {**p, "build_version": BUILD_VERSION}
    if info_file.exists():
        info = json.loads(info_file.read_text())
        if info.get("params") == want and Path(info["parset"]).exists():
            log(f"reusing the run in {work / 'run'} (built {info['built']})")
            return Path(info["parset"])
        log(f"the run in {work / 'run'} was built with other parameters; rebuilding")
    remove([info_file, work / "zstd19.json"])
    need = int(4.5 * p["bands"] * p["chunks"] * p["chunk_mb"] * 1e6)
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(f"{work}: {human(free)} free, need about {human(need)} (run, archives, restores)")
    t0 = time.perf_counter()
    built = build_run(work / "run", p)
    log(f"built in {time.perf_counter() - t0:.0f} s")
    info_file.write_text(json.dumps({"params": want, "built": time.strftime("%Y-%m-%d %H:%M"), **built}))
    return Path(built["parset"])


# -- measuring ------------------------------------------------------------------------------------

_THREADS_WRAPPER = """
import sys
import functools
from factor_archive.ms import casacore_table
from factor_archive.ms.casacore_table import encode
casacore_table.encode_table = functools.partial(
    encode.encode_table, settings=casacore_table.PipelineSettings(threads=int(sys.argv[1])))
from factor_archive import cli
sys.exit(cli.archivefactor_main(sys.argv[2:]))
"""


def alternate(name: str, sides: list[tuple[str, list[str], bool, Path]], repeat: int, dests: list[Path],
              idle: bool, idle_limit: float) -> dict[str, list[Trial]]:
    """Run each side (label, argv, ours?, output) ``repeat`` times, alternately.

    Ours is followed by ``sync`` and has its process tree's RSS sampled; each trial's output size
    is kept in ``Trial.out_bytes``.
    """
    out: dict[str, list[Trial]] = {label: [] for label, *_ in sides}
    for i in range(repeat):
        for label, argv, ours, output in sides:
            prepare(dests, False, idle, idle_limit)
            trial = timed(argv, then_sync=ours, sample_rss=0.2 if ours else 0.0)
            trial.out_bytes = tree_bytes(output, follow_links=False)
            out[label].append(trial)
            log(f"{name} #{i + 1} {label}: {trial.seconds:.2f} s, CPU {trial.user:.2f} + {trial.system:.2f} s, "
                f"written {human(trial.write_bytes)}, output {human(trial.out_bytes)}, max RSS {human(trial.maxrss)}"
                + (f" (tree {human(trial.tree_rss)})" if ours else "")
                + f", other processes' CPU meanwhile {trial.others:.2f} s")
    return out


def summary(trials: list[Trial]) -> dict:
    best = min(trials, key=lambda t: t.seconds)
    return {"best": best.seconds, "median": statistics.median(t.seconds for t in trials),
            "cpu": min(t.cpu for t in trials), "user": best.user, "system": best.system,
            "written": best.write_bytes, "rss": max(t.maxrss for t in trials),
            "tree_rss": max(t.tree_rss for t in trials), "others": [t.others for t in trials],
            "times": [t.seconds for t in trials], "out": [t.out_bytes for t in trials]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/fa-bench-run",
                    help="where the run is built and kept (reused while the parameters are the same) and "
                         "outputs are written (removed at the end); default /tmp/fa-bench-run")
    ap.add_argument("--bands", type=int, default=1, help="bands (default 1)")
    ap.add_argument("--chunks", type=int, default=8, help="time chunks per band (default 8)")
    ap.add_argument("--chunk-mb", type=float, default=190, help="size of each chunk MS in MB (default 190)")
    ap.add_argument("--stations", type=int, default=38, help="stations (default 38)")
    ap.add_argument("--channels", type=int, default=16, help="channels per band (default 16)")
    ap.add_argument("--image-px", type=int, default=1024,
                    help="side of the final and mosaic FITS images in pixels (default 1024: 4 MiB each)")
    ap.add_argument("--forms", default=",".join(FORMS), help="forms to measure (default dir,tar,zarr)")
    ap.add_argument("--repeat", type=int, default=1, help="trials per side (default 1)")
    ap.add_argument("--threads", default="",
                    help="also time the zarr archive with the table codec's compression pool at these "
                         "thread counts, e.g. 1,2 (PipelineSettings(threads=N) in a wrapper)")
    ap.add_argument("--skip-restore", action="store_true")
    ap.add_argument("--skip-zstd19", action="store_true",
                    help="do not run tar | zstd -19 (slow); an earlier result for this run is still shown")
    ap.add_argument("--build-only", action="store_true", help="build (or check) the run and stop")
    ap.add_argument("--idle-wait", type=float, default=30.0,
                    help="before each trial, wait at most this many seconds for the machine to go idle (default 30)")
    ap.add_argument("--no-wait-idle", action="store_true")
    args = ap.parse_args(argv)
    forms = [f for f in args.forms.split(",") if f]
    if not set(forms) <= set(FORMS):
        raise SystemExit(f"--forms: choose among {', '.join(FORMS)}")
    threads = [int(t) for t in args.threads.split(",") if t]
    command = shlex.join([sys.executable, *sys.argv])
    idle = not args.no_wait_idle
    params = {k: getattr(args, k) for k in ("bands", "chunks", "chunk_mb", "stations", "channels", "image_px")}

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    parset = ensure_run(work, params)
    if args.build_only:
        return 0
    load_before = os.getloadavg()
    code = code_state()
    out = work / "out"
    farm = work / "farm"
    remove([out])
    out.mkdir()
    tops, nmembers, nbytes, notes = make_farm(parset, farm)
    script, ncp, _ = cp_script(parset, out / "cp", form="dir")
    (work / "cp-members.sh").write_text(script)
    files = sum(len(fs) for _, _, fs in os.walk(farm, followlinks=True))
    chunks = sorted((work / "run" / "wdir" / "chunks").glob("*/*.ms"))
    small = sum(1 for f in farm.rglob("*") if f.is_file() and f.parts[len(farm.parts)] != "chunks")
    notes = [f"run: {work / 'run'}: {len(chunks)} chunk MSs "
             f"({sum(1 for c in chunks if c.is_symlink())} a symlink to an input MS), "
             f"{human(sum(tree_bytes(c) for c in chunks))}; the -r archive holds {nmembers} members with data, "
             f"{files} files, {human(nbytes)} ({nbytes} B), of which {small} files outside chunks/ "
             f"({human(nbytes - sum(tree_bytes(c) for c in chunks))})"] + notes
    notes.append(f"reference file lists: tar -h on the symlink farm {farm} (one link per member); "
                 f"cp side: {work / 'cp-members.sh'} ({ncp} cp -aL invocations)")

    af, uf = str(BIN / "archivefactor"), str(BIN / "unarchivefactor")
    tar_c = shlex.join(["tar", "chf", str(out / "ref.tar"), "-C", str(farm), *tops])
    tar_pipe = shlex.join(["tar", "chf", "-", "-C", str(farm), *tops])
    refs = {
        "dir": (["sh", str(work / "cp-members.sh")], f"sh {work / 'cp-members.sh'}  (cp -aL ... && sync)",
                out / "cp"),
        "tar": (["sh", "-c", f"{tar_c} && sync"], f"{tar_c} && sync", out / "ref.tar"),
        "zarr": (["sh", "-c", f"{tar_pipe} | zstd -3 -T0 -q -o {out / 'ref.tar.zst'} && sync"],
                 f"{tar_pipe} | zstd -3 -T0 -q -o {out / 'ref.tar.zst'} && sync", out / "ref.tar.zst"),
    }
    rows: list[dict] = []
    sizes: dict[str, int] = {}
    try:
        for form in forms:
            ours = out / f"ours.{form}"
            argv = [af, "-q", "-r", "--format", form, str(parset), str(ours)]
            ref_argv, ref_shown, ref_out = refs[form]
            sides = [("reference", ref_argv, False, ref_out)]
            if form == "zarr":
                for n in threads:
                    sides.append((f"{n} thread{'s' if n > 1 else ''}",
                                  [PY, "-c", _THREADS_WRAPPER, str(n), *argv[1:]], True, ours))
            sides.append(("factor-archive", argv, True, ours))
            res = alternate(f"{form} archive", sides, args.repeat, [ours, ref_out], idle, args.idle_wait)
            sizes[form] = res["factor-archive"][-1].out_bytes
            sizes[f"ref-{form}"] = res["reference"][-1].out_bytes
            row = {"form": form, "op": "archive", "ours": summary(res["factor-archive"]),
                   "ref": summary(res["reference"]), "cmd": (shlex.join(argv) + " && sync", ref_shown),
                   "out": sizes[form]}
            rows.append(row)
            for n in threads if form == "zarr" else []:
                label = f"{n} thread{'s' if n > 1 else ''}"
                shown = f"[PipelineSettings(threads={n})] " + shlex.join(argv) + " && sync"
                rows.append({"form": form, "op": f"archive, {label}", "ours": summary(res[label]),
                             "ref": row["ref"], "cmd": (shown, ref_shown), "out": sizes[form]})
            if args.skip_restore:
                remove([ours])
                continue
            ref_tar = out / "ref.tar"
            if not ref_tar.exists():
                timed(refs["tar"][0])
            restored, ref_restored = out / "restored", out / "ref-restored"
            ours_r = [uf, "-q", str(ours), str(restored)]
            tar_x = (f"mkdir {shlex.quote(str(ref_restored))} && tar xf {shlex.quote(str(ref_tar))} "
                     f"-C {shlex.quote(str(ref_restored))}")
            res = alternate(f"{form} restore", [("reference", ["sh", "-c", f"{tar_x} && sync"], False, ref_restored),
                                                ("factor-archive", ours_r, True, restored)],
                            args.repeat, [restored, ref_restored], idle, args.idle_wait)
            rows.append({"form": form, "op": "restore", "ours": summary(res["factor-archive"]),
                         "ref": summary(res["reference"]), "cmd": (shlex.join(ours_r) + " && sync",
                                                                  f"{tar_x} && sync")})
            remove([ours, restored, ref_restored])

        # Size: zarr against zstd -19 (once per run built) ------------------------------------------
        z19_file = work / "zstd19.json"
        z19 = json.loads(z19_file.read_text()) if z19_file.exists() else None
        if "zarr" in forms and z19 is None and not args.skip_zstd19:
            z19_out = out / "ref.tar.zst19"
            cmd = f"{tar_pipe} | zstd -19 -T0 -q -o {z19_out} && sync"
            prepare([z19_out], False, idle, args.idle_wait)
            log("tar | zstd -19 -T0 (slow) ...")
            trial = timed(["sh", "-c", cmd])
            z19 = {"bytes": z19_out.stat().st_size, "seconds": trial.seconds, "cpu": trial.cpu, "command": cmd}
            z19_file.write_text(json.dumps(z19))
            remove([z19_out])
    finally:
        remove([out])

    # Report -------------------------------------------------------------------------------------
    sys.stderr.flush()
    print("# factor-archive benchmark on the shape of a real run")
    print(f"command: {command}")
    print(f"machine: {machine_line()}; load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after")
    print(f"code measured: {code}")
    waiting = f"and wait (up to {args.idle_wait:g} s) for an idle machine " if idle else ""
    print(f"conditions: page cache warm; sync {waiting}"
          f"before every trial; sides alternate; {args.repeat} trial(s) per side")
    for n in notes:
        print(n)
    print()
    print("| form | operation | factor-archive best (median) | reference best (median) | ratio best (median) "
          "| target | CPU user+sys, least: ours / ref | written: ours / ref | max RSS ours: process / tree |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        o, t = r["ours"], r["ref"]
        ratio, mratio = o["best"] / t["best"], o["median"] / t["median"]
        target = TARGETS.get((r["form"], r["op"].split(",")[0]))
        verdict = "-" if target is None else f"<= {target}: {'met' if ratio <= target else 'MISSED'}"
        print(f"| {r['form']} | {r['op']} | {o['best']:.2f} s ({o['median']:.2f} s) | {t['best']:.2f} s "
              f"({t['median']:.2f} s) | {ratio:.2f} ({mratio:.2f}) | {verdict} | {o['cpu']:.2f} / {t['cpu']:.2f} s "
              f"| {human(o['written'])} / {human(t['written'])} | {human(o['rss'])} / {human(o['tree_rss'])} |")
    print()
    if "zarr" in sizes:
        z = sizes["zarr"]
        line = f"size: zarr store {human(z)} ({z} B, {nbytes / z:.2f}x smaller than the data)"
        z3 = sizes["ref-zarr"]
        line += f"; tar | zstd -3 {human(z3)} ({nbytes / z3:.2f}x)"
        if z19:
            line += (f"; tar | zstd -19 {human(z19['bytes'])} ({nbytes / z19['bytes']:.2f}x, {z19['seconds']:.0f} s, "
                     f"CPU {z19['cpu']:.0f} s); zarr / zstd-19 = {z / z19['bytes']:.3f} (target < 1: "
                     f"{'met' if z < z19['bytes'] else 'MISSED'})")
        print(line)
    for f, ref in (("dir", "cp -aL"), ("tar", "tar chf")):
        if f in sizes:
            print(f"size: {f} archive {human(sizes[f])} ({sizes[f]} B); {ref}: {human(sizes['ref-' + f])}")
    rss = max([r["ours"]["tree_rss"] for r in rows] + [r["ours"]["rss"] for r in rows] or [0])
    print(f"peak memory of ours (largest of process and tree): {human(rss)} (target < 500 MB: "
          f"{'met' if rss < MEMORY_TARGET else 'MISSED'})")
    print()
    for r in rows:
        print(f"{r['form']} {r['op']}: ours {' '.join(f'{x:.2f}' for x in r['ours']['times'])} s "
              f"(others' CPU {' '.join(f'{x:.1f}' for x in r['ours']['others'])} s); "
              f"reference {' '.join(f'{x:.2f}' for x in r['ref']['times'])} s "
              f"(others' CPU {' '.join(f'{x:.1f}' for x in r['ref']['others'])} s)")
        print(f"  ours:      {r['cmd'][0]}")
        print(f"  reference: {r['cmd'][1]}")
    others = [x for r in rows for side in ("ours", "ref") for x in r[side]["others"]]
    secs = sum(x for r in rows for side in ("ours", "ref") for x in r[side]["times"])
    if secs:
        print(f"load during the trials: the rest of the machine used {sum(others) / secs:.2f} cores on average "
              f"(of {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
