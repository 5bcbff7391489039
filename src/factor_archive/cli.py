"""Command-line layer: argument parsing, messages and exit codes only."""

from __future__ import annotations

import os
import sys

from . import signals

if __name__ == "__main__" or os.path.basename(getattr(sys.modules.get("__main__"), "__file__", None) or "") \
        in ("archivefactor", "unarchivefactor", "factor-archive"):
    signals.remember_early()  # run as a program: a Ctrl-C from here on ends as "interrupted"
    # We do no linear algebra: the thread pool OpenBLAS starts with numpy (here and in the
    # casacore workers, which inherit this) only spins, 0.7-0.8 % of the machine's samples in a
    # `perf record -a` of a zarr archive and restore.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import contextlib
import errno
import signal
import warnings
from collections.abc import Callable, Sequence

from . import __version__
from .errors import FactorArchiveError

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _say(prog: str, text: str) -> None:
    try:
        print(f"{prog}: {_one_line(text)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr gone (a closed terminal): the status still says it
        pass


def _interrupted(prog: str, hint: str, *, after_work: bool = False) -> int:
    signum = signals.received() or signal.SIGINT
    name = signal.Signals(signum).name
    if after_work:
        _say(prog, f"interrupted ({name}) after the work was complete")
    else:
        _say(prog, f"interrupted ({name}); {hint}" if hint else f"interrupted ({name})")
    return 128 + signum


def _guard(prog: str, func: Callable[[], int], hint: Callable[[], str] = lambda: "") -> int:
    """One line on stderr and a status, never a traceback, for the errors users can meet.

    A signal (see signals.py) wins over whatever error the unwinding it caused produced.
    """
    if signals.is_program():
        # A zarr call a signal interrupts may leave coroutines it made and never ran; each would
        # print a RuntimeWarning when freed, below our one line.
        warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
    try:
        with signals.handled():  # inside the try: a signal at any moment of the work lands below
            code = func() or 0
    except KeyboardInterrupt:
        return _interrupted(prog, hint())
    except FactorArchiveError as exc:
        if signals.received() is not None:
            return _interrupted(prog, hint())
        _say(prog, f"error: {exc}")
        return exc.exit_code
    except BrokenPipeError:
        if signals.received() is not None:  # Ctrl-C stopped the reader of our pipe too
            return _interrupted(prog, hint())
        # `factor-archive ls x | head`: the reader left; not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if signals.received() is not None:
            return _interrupted(prog, hint())
        if exc.filename and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            from .io.failures import io_error

            _say(prog, f"error: {io_error(os.fsdecode(exc.filename), exc)}")
        else:
            where = f"{exc.filename}: " if exc.filename else ""
            _say(prog, f"error: {where}{exc.strerror or exc}")
        return EXIT_FAILURE
    except Exception:
        if signals.received() is not None:
            return _interrupted(prog, hint())
        raise
    return code


def _leave(prog: str, code: int) -> int:
    """The exit status. A program leaves with os._exit once everything is closed and cleaned up.

    Interpreter shutdown would otherwise run while threads that belong to libraries (zarr's event
    loop, blosc) may still be inside native code, and finalise objects that wrap C++ state: either
    can abort the process; and it restores the default signal handlers, so a Ctrl-C arriving then
    would end the process by the signal instead of with the status the user expects.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if signals.last_received() is not None and code == 0:
        code = _interrupted(prog, "", after_work=True)
    if not signals.is_program() and signals.received() is None:
        return code
    if code == 0 and signals.last_received() is not None:  # one that came while we were reporting
        code = _interrupted(prog, "", after_work=True)
    os._exit(code)


def _quiet_library_logs() -> None:
    """Errors reach the user through _guard, one line each; asyncio would also log every failed
    task of zarr's event loop ("Task exception was never retrieved") with its traceback, and zarr
    warns about the half-written nodes a failed write leaves in a store it is about to remove.
    A zip store gets a node's zarr.json again when its attributes change, and zipfile warns
    "Duplicate name" (the last entry is the one read): the writers silence that around their
    calls, but ``catch_warnings`` is not thread-safe, and a write of zarr's event-loop thread
    still under way when Ctrl-C unwinds them printed it (seen once in a test run under load)."""
    import logging
    import warnings

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"zarr(\.|$)")
    warnings.filterwarnings("ignore", message="Duplicate name", module="zipfile")


# -- archive ------------------------------------------------------------------------------------

def _archive_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("parset", help="the Factor parset of the run")
    p.add_argument("output", help="archive to write (directory, .tar file, '-' for a tar on stdout, "
                                  "zarr store or s3:// URL)")
    p.add_argument("-d", "--directions", default="",
                   help='comma-separated directions whose calibrated data to export, or "all"')
    p.add_argument("-r", "--resumable", action="store_true",
                   help="make an archive suitable for resuming (chunks, state, sky models, solutions, mapfiles)")
    p.add_argument("-c", "--clobber", action="store_true", help="overwrite an existing archive")
    from .containers.registry import names

    p.add_argument("--format", choices=names(), default=None,
                   help="archive form (default: tar for '-', *.tar and s3://.../*.tar, zarr for *.zarr, "
                        "*.zarr.zip and other s3:// URLs, dir otherwise)")
    p.add_argument("--volume-size", metavar="SIZE", default=None,
                   help="tar form: write volumes NAME.tar, NAME.001.tar, ... of at most SIZE bytes "
                        "of data each (K, M, G, T: powers of 1024; e.g. 4G); see docs/usage.md")
    p.add_argument("--group-by", choices=["category"], default=None,
                   help="with --volume-size: each category group (calibrated data, chunks and "
                        "state, solutions and sky models, images and plots, misc) in its own volumes")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("--dry-run", action="store_true", help="print what would be archived and stop")
    _cluster_argument(p, "store the members on a Dask cluster (zarr form; see docs/cluster.md)")
    _s3_concurrency_argument(p)


def _s3_concurrency_argument(p: argparse.ArgumentParser) -> None:
    def positive(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text}: must be a whole number of at least 1")
        return int(text)

    p.add_argument("--s3-concurrency", metavar="N", type=positive, default=None,
                   help="at most N requests at once to an object store (uploads of multipart parts "
                        "or zarr objects, connections while restoring); default: "
                        "$FACTOR_ARCHIVE_S3_CONCURRENCY, else 8 parts / 32 zarr objects")


@contextlib.contextmanager
def _s3_concurrency(args: argparse.Namespace):
    """--s3-concurrency as FACTOR_ARCHIVE_S3_CONCURRENCY, the one setting every S3 writer (and
    worker process) reads, for the duration of the command."""
    from .io.objectstore import CONCURRENCY_ENV

    value = getattr(args, "s3_concurrency", None)
    if value is None:
        yield
        return
    before = os.environ.get(CONCURRENCY_ENV)
    os.environ[CONCURRENCY_ENV] = str(value)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CONCURRENCY_ENV, None)
        else:
            os.environ[CONCURRENCY_ENV] = before


def _cluster_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--cluster", metavar="ADDRESS|local:N", default=None,
                   help=f"{what}: a scheduler address (tcp://head:8786) or local:N worker processes here")


def _guess_form(output: str) -> str:
    from .containers.registry import form_for_output

    return form_for_output(output)


def _archive_hint(args: argparse.Namespace) -> str:
    """What an interrupted archive leaves, as docs/usage.md describes it."""
    if args.output == "-":
        return "the tar written to standard output is incomplete (it has no index)"
    form = args.format or _guess_form(args.output)
    if form == "dir" or getattr(args, "volume_size", None):
        return "the archive is incomplete: run the same command again to complete it (-c starts over)"
    if form == "zarr" and "://" in args.output:
        return ("the members uploaded so far are kept: run the same command again to complete the "
                "archive (-c starts over)")
    return "nothing was kept; run the same command again"


def _run_archive(args: argparse.Namespace) -> int:
    from .archive import describe_plan, plan_archive, write_archive
    from .plan import Options
    from .progress import human

    dirs = [d.strip() for d in args.directions.split(",") if d.strip()]
    form = args.format or _guess_form(args.output)
    volume_size = None
    if args.volume_size is not None:
        from .containers.tar.volumes import parse_size

        volume_size = parse_size(args.volume_size)
    plan = plan_archive(args.parset, Options(resumable=args.resumable, directions=dirs, form=form,
                                             volume_size=volume_size, group_by=args.group_by))
    out = sys.stderr if args.output == "-" else sys.stdout
    if args.dry_run:
        for line in describe_plan(plan):
            print(line, file=out)
        return 0
    with _s3_concurrency(args):
        manifest = write_archive(plan, args.output, clobber=args.clobber, quiet=args.quiet,
                                 cluster=args.cluster)
    if not args.quiet:
        total = sum(m.size for m in manifest.members)
        print(f"archived {len(manifest.members)} members ({human(total)}) from {plan.run.working_dir} "
              f"to {args.output} [{form}]", file=out)
        if manifest.missing:
            print(f"{len(manifest.missing)} referenced item(s) were missing; see 'missing' in the manifest",
                  file=out)
    return 0


# -- unarchive ----------------------------------------------------------------------------------

def _unarchive_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", help="archive made with -r (directory, tar, '-' for a tar on stdin, zarr)")
    p.add_argument("output", help="new working directory for the restored run")
    p.add_argument("-s", "--symlink", action="store_true",
                   help="symlink the subtracted-data chunks to the archive's copies instead of copying them")
    p.add_argument("-c", "--clobber", action="store_true", help="overwrite files in the output directory")
    p.add_argument("--store", default=None,
                   help="with -s and a tar or zarr archive: where the chunks are materialised once "
                        "(default: beside the archive)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _cluster_argument(p, "decode the tables on a Dask cluster into the output (zarr archives; see "
                         "docs/cluster.md)")
    _s3_concurrency_argument(p)


RESTORE_MARKER = ".factor-archive-restore-incomplete"  # restore.unarchive.MARKER, not imported:
# a hint is written after an interruption, which may have broken an import half-way


def _unarchive_hint(args: argparse.Namespace) -> str:
    return (f"the restore is incomplete ({RESTORE_MARKER} marks it): run the same command with -c "
            "to complete it")


def _run_unarchive(args: argparse.Namespace) -> int:
    from .restore.unarchive import unarchive

    with _s3_concurrency(args):
        manifest = unarchive(args.archive, args.output, symlink=args.symlink, clobber=args.clobber,
                             quiet=args.quiet, store=args.store, cluster=args.cluster)
    if not args.quiet:
        name = manifest.run.get("parset_name", "factor.parset")
        print(f"restored {len(manifest.members)} members into {args.output}; resume with "
              f"runfactor {args.output.rstrip('/')}/{name}")
    return 0


# -- ls / verify / sample ------------------------------------------------------------------------

def _run_ls(args: argparse.Namespace) -> int:
    from .containers.registry import open_reader

    if args.volume:
        from .containers.tar.volume_reader import volume_listing

        print("\n".join(volume_listing(args.archive)))
        return 0
    reader = open_reader(args.archive)
    try:
        m = reader.manifest
        print(f"# {reader.form} archive of {m.run.get('working_dir')} made {m.created} "
              f"by factor-archive {m.tool_version} (resumable: {bool(m.options.get('resumable'))})")
        volume_set = m.options.get("volume_set")
        if isinstance(volume_set, dict):
            print(f"# volume set {volume_set.get('set')}: {volume_set.get('volumes')} volumes of "
                  f"{volume_set.get('volume_size')} bytes (group by: {volume_set.get('group_by')})")
        for member in m.members:
            print(f"{member.category:17} {member.direction or '-':12} {member.kind:5} "
                  f"{member.size:>14}  {member.path}")
        for miss in m.missing:
            print(f"missing: {miss.source} ({miss.reason})")
    finally:
        reader.close()
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    from .containers.registry import open_reader
    from .progress import Reporter

    reader = open_reader(args.archive)
    try:
        total = sum(m.size for m in reader.manifest.members)
        reporter = Reporter(total, "verifying", quiet=args.quiet)
        try:
            problems = reader.verify(reporter)
        finally:
            reporter.close()
    finally:
        reader.close()
    for line in problems:
        print(line)
    if problems:
        print(f"{args.archive}: {len(problems)} problem(s) found", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.archive}: all {len(reader.manifest.members)} members verified")
    return 0


def _run_sample(args: argparse.Namespace) -> int:
    from .ms.dp3 import dp3_available
    from .sample import write_sample_run

    by_dp3 = dp3_available()
    parset = write_sample_run(args.directory, dp3=by_dp3)
    writer = "DP3" if by_dp3 else "python-casacore (DP3 is not installed)"
    print(f"sample Factor run written, Measurement Sets by {writer}; parset: {parset}")
    return 0


# -- entry points ------------------------------------------------------------------------------

def _command(prog: str, description: str, add_arguments, run, argv: Sequence[str] | None,
             hint=None) -> int:
    parsed: list[argparse.Namespace] = []

    def work() -> int:
        signals.check()  # a signal that came while the program started
        if signals.is_program():
            _quiet_library_logs()
        p = argparse.ArgumentParser(prog=prog, description=description)
        p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
        add_arguments(p)
        parsed.append(p.parse_args(argv))
        return run(parsed[0])

    return _leave(prog, _guard(prog, work, lambda: hint(parsed[0]) if hint and parsed else ""))


def archivefactor_main(argv: Sequence[str] | None = None) -> int:
    return _command("archivefactor", "Archive a Factor run.", _archive_arguments, _run_archive, argv,
                    _archive_hint)


def unarchivefactor_main(argv: Sequence[str] | None = None) -> int:
    return _command("unarchivefactor", "Restore a resumable Factor archive.", _unarchive_arguments,
                    _run_unarchive, argv, _unarchive_hint)


_RUNS = {"archive": (_run_archive, _archive_hint), "unarchive": (_run_unarchive, _unarchive_hint),
         "ls": (_run_ls, None), "verify": (_run_verify, None), "sample": (_run_sample, None)}


def _main_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="command", required=True)
    _archive_arguments(sub.add_parser("archive", help="archive a run (as archivefactor)"))
    _unarchive_arguments(sub.add_parser("unarchive", help="restore a run (as unarchivefactor)"))
    ls = sub.add_parser("ls", help="list the members of an archive")
    ls.add_argument("archive")
    ls.add_argument("--volume", action="store_true",
                    help="a tar volume: list only this volume, from its own index (the set's "
                         "other volumes need not be there)")
    verify = sub.add_parser("verify", help="recompute every checksum of an archive")
    verify.add_argument("archive")
    verify.add_argument("-q", "--quiet", action="store_true")
    sample = sub.add_parser("sample", help="write a small realistic Factor run to try the tool on")
    sample.add_argument("directory")


def main(argv: Sequence[str] | None = None) -> int:
    def run(args: argparse.Namespace) -> int:
        return _RUNS[args.command][0](args)

    def hint(args: argparse.Namespace) -> str:
        h = _RUNS[args.command][1]
        return h(args) if h else ""

    return _command("factor-archive", "Archive and restore Factor runs.", _main_arguments, run, argv, hint)


if __name__ == "__main__":
    sys.exit(main())
