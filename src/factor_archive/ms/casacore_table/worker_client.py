"""The parent's side of the casacore worker process (worker.py): starting it, sending it commands,
reading its replies, keeping it for the next table within a ``worker_session``.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...errors import FactorArchiveError
from .pipeline import DEFAULT_SETTINGS, PipelineSettings

# python-casacore holds the GIL inside getcol/putcol, and for a big table those calls (with the
# kernel's copying) take as long as decompressing and hashing everything else: in one process
# they would take turns. A worker process runs the casacore calls instead; row blocks travel
# through shared memory (a memfd both map), commands and small values through pipes. The
# worker imports only numpy and casacore, so it starts in about 0.1 s.
#
# The worker is also where casacore writes go inside a worker_session() (the commands open one):
# casacore aborts the process (std::terminate) when a write fails in a destructor, which a full
# disk makes happen, so its writes must not run in ours. The worker's standard error goes to a
# memfd: an abort's "what()" line becomes our one-line error, and nothing of it reaches the user.
WORKER_MODULE = __package__ + ".worker"

# Finished workers kept for the next table within a worker_session: as many as a restore decodes
# tables at once (containers/zarr/decoders.py); no more are kept than ever ran at the same time.
_IDLE_WORKERS = 8
_session_lock = threading.Lock()
_sessions = 0
_idle: list[_Worker] = []
_spawner = None  # the thread that starts workers (see _spawn)
_serving = False  # this process is a worker (see serving_as_worker)


class _WorkerError(FactorArchiveError):
    """A casacore call failed in the worker."""


class _WorkerGone(_WorkerError):
    """The worker process is not there any more."""


class _WorkerStopped(_WorkerError):
    """The caller stopped waiting (interrupted, or another member failed)."""


def _reply_error(value) -> FactorArchiveError:
    """Our error for a failed call in the worker: the worker's own one-line text, as the class
    of factor_archive.errors it was raised as (see worker.kind)."""
    from ... import errors

    tname, kind, text = value
    cls = getattr(errors, kind, None) if kind != "other" else None
    if isinstance(cls, type) and issubclass(cls, FactorArchiveError):
        return cls(text)
    return _WorkerError(f"{tname}: {text}")


def _last_words(text: str) -> str:
    """What a worker that died said last: casacore's what() line for an abort, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "what():" in line:
            return line.split("what():", 1)[1].strip()
    return lines[-1] if lines else ""


def _full_disk_note(text: str, path: str | None) -> str:
    """``text`` (a casacore failure), saying so when the disk it was writing to is full.

    casacore does not always report a full disk as such (a short write can surface as "Failed
    AlwaysAssert tracePWRITE(...)"); the free space of the table's file system, looked at at once,
    still says what happened.
    """
    if not path or "no space left on device" in text.lower():
        return text
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return text
    free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    if free >= _FULL_BELOW:
        return text
    return f"{path}: No space left on device ({text})" if text else f"{path}: No space left on device"


_FULL_BELOW = 1 << 20  # bytes free under which a failed casacore write is put down to a full disk


def _spawn(*args, **kwargs):
    """subprocess.Popen, from one long-lived thread: the worker's parent-death signal fires when
    the *thread* that started it ends, and a pipeline thread may end before a kept worker does."""
    global _spawner
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    with _session_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(1, thread_name_prefix="casacore-worker-spawner")
    return _spawner.submit(subprocess.Popen, *args, **kwargs).result()


class _Worker:
    """A casacore worker process (see worker.py). Calls return futures, answered in order
    by a reader thread; arguments that are views of ``shm`` go by reference."""

    def __init__(self, shm_bytes: int, queue_bytes: int = DEFAULT_SETTINGS.worker_queue_bytes, *,
                 skip_fsync: bool = False):
        """``skip_fsync``: casacore's fsync calls return at once in this worker, where the
        library for that is installed (see fsync_skipper): only for workers whose tables are
        made durable by the caller (a restore syncs its whole output before it is complete)."""
        import mmap
        import subprocess
        import sys

        self.queue_bytes = queue_bytes
        self.fd = os.memfd_create("factor-archive-table", 0)
        try:
            os.ftruncate(self.fd, shm_bytes)
            self.shm = mmap.mmap(self.fd, shm_bytes)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = shm_bytes
        package_root = str(Path(__file__).resolve().parents[3])  # src/: for -m and the "run" command's imports
        env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        skipper = fsync_skipper() if skip_fsync else None
        if skipper is not None:
            env["LD_PRELOAD"] = " ".join(p for p in (skipper, os.environ.get("LD_PRELOAD")) if p)
        self.skips_fsync = skipper is not None
        # Own pipes, not stdin/stdout: whatever casacore prints cannot garble the replies.
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self._stderr = os.memfd_create("factor-archive-worker-stderr", 0)
        try:
            self.proc = _spawn([sys.executable, "-m", WORKER_MODULE, str(cmd_r), str(rep_w), str(os.getpid())],
                               stdin=subprocess.DEVNULL, stderr=self._stderr,
                               pass_fds=(self.fd, cmd_r, rep_w), env=env)
        except BaseException:
            for fd in (cmd_r, cmd_w, rep_r, rep_w, self.fd, self._stderr):
                os.close(fd)
            raise
        os.close(cmd_r)
        os.close(rep_w)
        self._cmd = os.fdopen(cmd_w, "wb")
        self._replies = os.fdopen(rep_r, "rb")
        self._lock = threading.Lock()
        self._waiting: deque = deque()
        self._error: BaseException | None = None
        self._failed = False  # a call failed: never reused (see worker.py)
        self._open: set[int] = set()  # tables made or opened and not yet closed
        self._paths: dict[int, str] = {}  # table id -> path, of the tables made here
        # Commands are written by a sender thread, so a caller never waits for the worker to
        # read (only when queue_bytes of commands are queued already).
        self._queue: deque = deque()
        self._queued = 0
        self._qcond = threading.Condition()
        self._reader = threading.Thread(target=self._read_replies, name="table-codec-worker", daemon=True)
        self._reader.start()
        self._sender = threading.Thread(target=self._send_commands, name="table-codec-worker-send",
                                        daemon=True)
        self._sender.start()
        self._ntables = 0
        self._on_progress: Callable[[int], None] = _no_progress
        self.send(("shm", self.fd, shm_bytes))

    def _read_replies(self) -> None:
        import pickle

        out = self._replies
        try:
            while True:
                head = out.read(8)
                if len(head) < 8:
                    break
                ok, value = pickle.loads(out.read(struct.unpack("<Q", head)[0]))
                if ok is None:  # progress of the "run" under way
                    self._on_progress(value)
                    continue
                with self._lock:
                    fut, path = self._waiting.popleft()
                if ok:
                    fut.set_result(value)
                else:
                    self._failed = True
                    tname, kind, text = value
                    fut.set_exception(_reply_error((tname, kind, _full_disk_note(text, path))))
        except BaseException as e:
            self._error = _WorkerGone(f"casacore worker process failed: {e}")
        with self._lock:
            pending = list(self._waiting)
            self._waiting.clear()
            if self._error is None:
                said = _full_disk_note(self._said(), pending[0][1] if pending else None)
                self._error = _WorkerGone("casacore worker process ended" + (f": {said}" if said else ""))
        for fut, _path in pending:
            fut.set_exception(self._error)
        with self._qcond:
            self._qcond.notify_all()

    def _said(self) -> str:
        """The worker's last words on its standard error (see _last_words)."""
        try:
            self.proc.wait(timeout=5)  # the replies ended: it is exiting, or gone
        except Exception:
            pass
        try:
            size = os.fstat(self._stderr).st_size
            text = os.pread(self._stderr, 8192, max(0, size - 8192))
        except OSError:
            return ""
        return _last_words(text.decode("utf-8", errors="replace"))

    def _send_commands(self) -> None:
        while True:
            with self._qcond:
                while not self._queue:
                    self._qcond.wait()
                data = self._queue.popleft()
            if data is None:
                break
            try:
                self._cmd.write(struct.pack("<Q", len(data)) + data)
                self._cmd.flush()
            except (OSError, ValueError):  # the worker is gone: the reader fails the futures
                with self._qcond:
                    self._queue.clear()
                    self._queued = 0
                    self._qcond.notify_all()
                break
            with self._qcond:
                self._queued -= len(data)
                self._qcond.notify_all()
        try:
            self._cmd.close()
        except OSError:
            pass

    def send(self, op: tuple):
        import pickle

        data = pickle.dumps(op, protocol=pickle.HIGHEST_PROTOCOL)
        fut: Future = Future()
        with self._qcond:
            while self._queued and self._queued + len(data) > self.queue_bytes and self._error is None:
                self._qcond.wait(0.5)
            with self._lock:
                if self._error is not None:
                    raise self._error
                self._waiting.append((fut, self._written_by(op)))
            self._queue.append(data)
            self._queued += len(data)
            self._qcond.notify_all()
        return fut

    def _written_by(self, op: tuple) -> str | None:
        """The table a command writes (for _full_disk_note), as far as the client knows it."""
        if op[0] == "new" or (op[0] == "open" and len(op) > 3 and op[3]):
            self._paths[op[1]] = op[2]
            return op[2]
        if op[0] == "call":
            return self._paths.get(op[1])
        if op[0] == "run" and len(op[2]) > 1:
            return str(op[2][1])  # concat_in_frequency(slots, out_path), decode_stored_table(store, out_path, ...)
        return None

    def _stop_sender(self) -> None:
        with self._qcond:
            self._queue.append(None)
            self._qcond.notify_all()
        self._sender.join()

    @functools.cached_property
    def buf(self):
        """The shared memory as a uint8 array (made when first used: a restore starts its workers
        first thing, before numpy is imported, and its decoders never use it)."""
        import numpy as np

        return np.frombuffer(self.shm, np.uint8)

    @functools.cached_property
    def base(self) -> int:
        return self.buf.__array_interface__["data"][0]

    def ref(self, a):
        """``a`` by reference when it lives in the shared memory, else as it is."""
        import numpy as np

        if isinstance(a, np.ndarray) and a.flags.c_contiguous and a.dtype.kind in "biufc" and a.size:
            addr = a.__array_interface__["data"][0]
            if self.base <= addr and addr + a.nbytes <= self.base + self.size:
                return ("__shm__", addr - self.base, a.dtype.str, a.shape)
        return a

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(kill=exc_type is not None)

    def open(self, path, writable: bool = False) -> _RemoteTable:
        """The table, opened for reading (or writing) in the worker (asynchronously)."""
        self._ntables += 1
        tid = self._ntables
        self._open.add(tid)
        return _RemoteTable(self, tid, self.send(("open", tid, str(path), writable)))

    def table(self, path, desc, nrow, dminfo, endian) -> _RemoteTable:
        self._ntables += 1
        tid = self._ntables
        self._open.add(tid)
        # Not waited for: the columns are read meanwhile.
        return _RemoteTable(self, tid, self.send(("new", tid, str(path), desc, nrow, dminfo, endian)))

    def run(self, name: str, args: tuple, stop: Callable[[], bool],
            progress: Callable[[int], None] | None = None):
        """The allow-listed function ``name`` (see RUN in worker.py) called in the worker.

        ``stop`` is polled while waiting (a pipeline thread does not see KeyboardInterrupt):
        when it says so, _WorkerStopped is raised and the worker, left busy, is killed on exit.
        ``progress`` hears the byte counts a function that reports progress sends meanwhile.
        """
        from concurrent.futures import TimeoutError as FutureTimeout

        self._on_progress = progress or _no_progress
        try:
            fut = self.send(("run", name, args))
            while True:
                try:
                    return fut.result(timeout=0.2)
                except FutureTimeout:
                    if stop():
                        raise _WorkerStopped(f"stopped while {name} ran") from None
        finally:
            self._on_progress = _no_progress

    def close(self, kill: bool = False) -> None:
        """Keep the worker for the next table (inside a worker_session, when it is clean), or end it."""
        if not kill and self._keep():
            return
        self._end(kill)

    def _keep(self) -> bool:
        if self._failed or self._error is not None or self._open or self._waiting \
                or self.proc.poll() is not None:
            return False
        with _session_lock:
            if _sessions and len(_idle) < _IDLE_WORKERS:
                _idle.append(self)
                return True
        return False

    def _end(self, kill: bool = False) -> None:
        try:
            if kill:
                self.proc.kill()
            else:
                try:
                    self.send(("exit",))
                except _WorkerError:
                    pass
            self._stop_sender()
            try:
                self.proc.wait(timeout=None if kill else 30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        finally:
            self._reader.join(timeout=10)
            self._replies.close()
            self.__dict__.pop("buf", None)
            try:
                self.shm.close()
            except BufferError:  # a view still exists; the mapping goes with the process
                pass
            os.close(self.fd)
            os.close(self._stderr)


class _NoWorker:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _worker_for(nbytes: int, settings: PipelineSettings = DEFAULT_SETTINGS, *, writes: bool = False):
    """A casacore worker (context manager) when a table of ``nbytes`` warrants one, or when the
    table is written inside a worker_session, and the platform allows it; else a context giving
    None (casacore runs in this process). Inside a session a kept worker is reused."""
    if not workers_possible():
        return _NoWorker()
    if not (writes and _sessions) and (settings.worker_min_bytes is None or nbytes < settings.worker_min_bytes):
        return _NoWorker()
    with _session_lock:
        if _idle:
            return _idle.pop()
    try:
        return _Worker(settings.buffers * settings.block_bytes, settings.worker_queue_bytes)
    except Exception:
        return _NoWorker()


def start_workers(count: int, run: tuple[str, tuple] | None = None,
                  settings: PipelineSettings = DEFAULT_SETTINGS, *, skip_fsync: bool = False) -> None:
    """Inside a worker_session, have ``count`` idle workers ready, each already running ``run``
    (a worker.RUN name and its arguments, e.g. imports to make), so that the first tables do not
    wait for workers to start and import. Outside a session, or where workers are not possible,
    nothing happens; a worker that fails to start is not an error (one starts when needed).
    ``skip_fsync``: see _Worker (for a session whose every table is made durable by its caller)."""
    if not workers_possible():
        return
    with _session_lock:
        if not _sessions:
            return
        count -= len(_idle)
    for _ in range(max(0, count)):
        try:
            worker = _Worker(settings.buffers * settings.block_bytes, settings.worker_queue_bytes,
                             skip_fsync=skip_fsync)
        except Exception:
            return
        if run is not None:
            worker.send(("run", run[0], run[1]))  # answered before the next command's reply
        with _session_lock:
            if _sessions and len(_idle) < _IDLE_WORKERS:
                _idle.append(worker)
                continue
        worker._end()


FSYNC_ENV = "FACTOR_ARCHIVE_WORKER_FSYNC"  # "1": restore workers keep casacore's fsync calls
_LIBRARY = "libeatmydata.so.1"


def fsync_skipper() -> str | None:
    """The path of libeatmydata (package eatmydata on Debian and Ubuntu) when it is installed,
    unless FACTOR_ARCHIVE_WORKER_FSYNC=1. Preloaded into a worker, it makes fsync return at once.

    casacore fsyncs a table's data-manager files and its lock file whenever the table is flushed
    or closed: about 40 fsyncs per chunk MS with its subtables, each waiting for a journal commit
    behind the restore's own write-back, while the worker holds the GIL and its decompression
    threads wait. A restore syncs its whole output (syncfs) before it removes its marker, so
    those calls add nothing to what survives a crash (benchmarks/README.md, seventh session)."""
    if os.environ.get(FSYNC_ENV) == "1":
        return None
    import sysconfig

    arch = sysconfig.get_config_var("MULTIARCH") or ""
    for d in (f"/usr/lib/{arch}" if arch else "", f"/lib/{arch}" if arch else "", "/usr/lib64", "/usr/lib",
              "/usr/local/lib"):
        if d and os.path.isfile(os.path.join(d, _LIBRARY)):
            return os.path.join(d, _LIBRARY)
    return None


def workers_possible() -> bool:
    """Whether this process can start workers: the platform has memfd_create, and this process
    is not a worker itself."""
    return hasattr(os, "memfd_create") and not _serving


def serving_as_worker() -> None:
    """This process is a casacore worker (worker.py): the tables it writes, it writes itself."""
    global _serving
    _serving = True


def _no_progress(nbytes: int) -> None:
    pass


def in_session() -> bool:
    """Whether a worker_session is open (every casacore write then runs in a worker)."""
    return _sessions > 0


@contextmanager
def worker_session():
    """Within this block every casacore write runs in a worker process, and workers that finished
    cleanly are kept (at most _IDLE_WORKERS) for the next table; leaving it ends the kept ones.

    A full disk can make casacore abort the process it runs in: in a worker that is our one-line
    error, in this process it would be an abort. The commands open a session around their work.
    """
    global _sessions
    with _session_lock:
        _sessions += 1
    try:
        yield
    finally:
        with _session_lock:
            _sessions -= 1
            done = list(_idle) if _sessions == 0 else []
            if _sessions == 0:
                _idle.clear()
        for worker in done:
            worker._end()


def run_in_worker(name: str, *args, stop: Callable[[], bool] = lambda: False,
                  progress: Callable[[int], None] | None = None, here: Callable[[], Any] | None = None):
    """Call the casacore-writing function ``name`` (one of worker.RUN) in a worker inside a
    worker_session (in this process otherwise, or ``here()`` instead when given); its errors come
    back as they were raised."""
    with _worker_for(0, writes=True) as worker:
        if worker is None and here is not None:
            return here()
        if worker is None:
            from .worker import call

            return call(name, args, progress or _no_progress)
        return worker.run(name, args, stop, progress)


class _RemoteTable:
    """The casacore table calls decode makes (put*, setdmprop, flush, close), run by the worker. All but
    close return a future at once; the first failure is raised by the next call and by close."""

    def __init__(self, worker: _Worker, tid: int, created=None):
        self.worker, self.tid, self.created = worker, tid, created
        self.pending: list = [created] if created is not None else []

    def _call(self, method: str, *args):
        self._check()
        return self.worker.send(("call", self.tid, method, tuple(self.worker.ref(a) for a in args)))

    def _check(self) -> None:
        done = [f for f in self.pending if f.done()]
        for f in done:
            f.result()
        if done:
            self.pending = [f for f in self.pending if not f.done()]

    def __getattr__(self, method):
        if not method.startswith("put") and method not in ("flush", "setdmprop"):
            raise AttributeError(method)

        def call(*args):
            fut = self._call(method, *args)
            self.pending.append(fut)
            return fut

        return call

    def wait_created(self) -> None:
        """Wait until the worker has made (or opened) the table."""
        if self.created is not None:
            self.created.result()

    def call(self, method: str, *args):
        """Any table method; returns its future (reads: the caller waits for it)."""
        self._check()
        return self.worker.send(("call", self.tid, method, tuple(self.worker.ref(a) for a in args)))

    def close(self, quiet: bool = False) -> None:
        try:
            fut = self.worker.send(("call", self.tid, "close", ()))
            pending, self.pending = self.pending, []
            for f in pending:
                f.result()
            fut.result()
            self.worker._open.discard(self.tid)
        except _WorkerError:
            if not quiet:
                raise

