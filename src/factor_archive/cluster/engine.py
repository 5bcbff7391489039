"""Run member tasks on a Dask cluster and collect their manifest entries in plan order.

The client keeps every decision: it submits one task per member, aggregates progress, stops the
run on the first failure and returns the members; the caller writes the manifest only after
``run_tasks`` returned, that is, after every task succeeded.

Failures, told apart:

- a worker process dies (killed, out of memory, node lost): Dask's scheduler reschedules its task
  on another worker (up to ``distributed.scheduler.allowed-failures`` times, 3 by default; then
  ``KilledWorker``). A task removes its member's node before writing, so a rerun starts clean;
- a task raises :class:`~factor_archive.errors.FactorArchiveError` (an unreadable MS, a source
  that changed, a full disk): deterministic, so it is *not* retried; the run stops with the
  error's one line, naming the member;
- any other exception (a bug, a library surprise) is retried ``UNEXPECTED_RETRIES`` times (Dask's
  ``retries=``), then stops the run the same way.

Progress: each task reports its cumulative byte count as a Dask event (``Worker.log_event``, at
most every ``PROGRESS_INTERVAL`` seconds and at its end); the client subscribes to the run's
topic. Events are live (a 50 GB table shows progress while it is encoded, which per-task counts
on completion would not), cost one small message per interval per worker, and need no shared
object the workers poll. Because the counts are cumulative per task, a task rerun after its
worker died adds nothing until it passes what its first attempt reported, and the count the
finished task returns tops up any event that was lost: every byte is counted once.

Stopping: on a failure or Ctrl-C the client cancels every task. A task already running sees the
cancellation at its next progress call (its worker has marked it cancelled) and stops; the
client waits up to ``STOP_WAIT`` seconds for the running tasks to end, so that the writer's
clean-up that follows is not undone by a worker still writing.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput, FactorArchiveError

CONNECT_TIMEOUT = 10.0       # seconds to reach a scheduler before giving up
PROGRESS_INTERVAL = 0.5      # seconds between a task's progress events
UNEXPECTED_RETRIES = 1       # reruns of a task that raised something other than our errors
STOP_WAIT = 60.0             # seconds to wait for cancelled tasks still running to end
POLL = 0.2                   # seconds between the client's checks (progress, Ctrl-C)

_LOCAL = re.compile(r"local:(\d+)")
_SCHEMES = ("tcp://", "tls://", "ws://", "wss://", "ucx://")


class Cancelled(FactorArchiveError):
    """The client cancelled the task (another task failed, or Ctrl-C): stop writing."""


# ---------------------------------------------------------------------------------------------
# Clusters

def worker_environ() -> dict:
    """The environment Dask's nannies give the worker processes they start, without glibc's
    MALLOC_TRIM_THRESHOLD_ (Dask sets it to 64 KiB to give memory back sooner): the codec
    allocates and frees block-sized buffers, and with it the single-process archive of
    bench_run.py's run took 4 s more system CPU (about 9 s against 5 s; benchmarks/README.md)."""
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


@contextmanager
def open_cluster(spec: str) -> Iterator[Any]:
    """A ``distributed.Client`` for ``spec``, closed (with a cluster it started) on exit.

    ``local:N``: a ``LocalCluster`` of N worker processes on this machine, one thread each (the
    codec runs its own threads), no dashboard, its logs silenced (the client reports
    every failure in one line). ``tcp://host:port`` (or
    another Dask scheme): the scheduler running there.
    """
    import dask
    from distributed import Client, LocalCluster

    text = spec.strip()
    local = _LOCAL.fullmatch(text)
    if local is None and not text.startswith(_SCHEMES):
        raise BadInput(f"--cluster {spec}: expected local:N (N worker processes here) or the address "
                       f"of a Dask scheduler (tcp://host:8786)")
    if local is not None:
        n = int(local.group(1))
        if n < 1:
            raise BadInput(f"--cluster {spec}: a local cluster needs at least one worker")
        with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
            # The scheduler's HTTP endpoint (health and metrics; the dashboard itself needs
            # bokeh) starts whatever dashboard_address says: a free loopback port, not 8787,
            # so that a user's own scheduler there is never disturbed.
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.CRITICAL,
                                   scheduler_kwargs={"dashboard": False,
                                                     "dashboard_address": "127.0.0.1:0"})
        try:
            client = Client(cluster, timeout=CONNECT_TIMEOUT)
        except BaseException:
            cluster.close()
            raise
    else:
        cluster = None
        try:
            client = Client(text, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInput(f"--cluster {text}: no Dask scheduler answers there within "
                           f"{CONNECT_TIMEOUT:.0f} s ({reason})") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------------------------------------
# On the worker

@dataclass
class _Done:
    result: Any
    nbytes: int


@dataclass
class _Failed:
    error: FactorArchiveError


class _WorkerProgress:
    """The progress callback a task gets on its worker: counts bytes, sends the cumulative count
    as an event now and then, and raises Cancelled once the client has cancelled the task."""

    def __init__(self, topic: str):
        from distributed import get_worker
        from distributed.worker import thread_state

        self.worker = get_worker()
        self.key = thread_state.key
        self.topic = topic
        self.done = 0
        self.last = time.monotonic()
        self.lock = threading.Lock()    # the codec may report from its pipeline threads

    def __call__(self, nbytes: int) -> None:
        with self.lock:
            self.done += nbytes
            now = time.monotonic()
            if now - self.last >= PROGRESS_INTERVAL:
                self.last = now
                self.worker.log_event(self.topic, [str(self.key), self.done])
        if self.cancelled():
            raise Cancelled(f"{self.key}: cancelled")

    def cancelled(self) -> bool:
        ts = self.worker.state.tasks.get(self.key)
        return ts is None or ts.state in ("cancelled", "released", "forgotten")


def _execute(fn: Callable, task: Any, topic: str) -> _Done | _Failed:
    """Run ``fn(task, progress)`` on the worker. Our errors come back as values (Dask would
    retry a raised one); anything else is raised, for Dask to retry."""
    progress = _WorkerProgress(topic)
    try:
        result = fn(task, progress)
    except FactorArchiveError as exc:
        return _Failed(exc)
    progress.worker.log_event(topic, [str(progress.key), progress.done])
    return _Done(result, progress.done)


def _running_keys(keys: list[str], dask_worker=None) -> list[str]:
    """The keys among ``keys`` whose function is still running in a thread of this worker."""
    wanted = set(keys)
    with dask_worker.active_threads_lock:
        return [str(k) for k in dask_worker.active_threads.values() if str(k) in wanted]


# ---------------------------------------------------------------------------------------------
# On the client

class _ProgressTally:
    """Cumulative counts per task from events and results, as increments for the caller."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}
        self.pending = 0

    def update(self, key: str, done: int) -> None:
        with self.lock:
            before = self.seen.get(key, 0)
            if done > before:
                self.seen[key] = done
                self.pending += done - before

    def on_event(self, event) -> None:
        _timestamp, msg = event
        try:
            key, done = msg
            self.update(str(key), int(done))
        except (TypeError, ValueError):
            pass

    def take(self) -> int:
        with self.lock:
            n, self.pending = self.pending, 0
            return n


def run_tasks(client, tasks: Sequence[Any], fn: Callable[[Any, Callable[[int], None]], Any],
              progress: Callable[[int], None] = lambda _n: None,
              prepare: Callable[[Any], Any] | None = None) -> list[Any]:
    """Run ``fn(task, progress)`` for every task on the cluster; return the results in the order
    of ``tasks``.

    Each task needs a ``name`` (how errors name it: the member path). ``progress`` is called on
    this thread with the bytes done on all workers. The first failure stops the run: the other
    tasks are cancelled and the failure is raised as one line naming its task; so is Ctrl-C
    (KeyboardInterrupt, after cancelling). ``fn`` must be importable on the workers (or pickled
    by value). ``prepare``: the client's last decisions for a task, which take time (a table's
    codecs): each task is given to it on this thread, in order, just before it is submitted, so
    the workers start on the first tasks while the client prepares the next.
    """
    from distributed import wait

    if not tasks:
        return []
    run = uuid.uuid4().hex[:12]
    topic = f"factor-archive-progress-{run}"
    tally = _ProgressTally()
    client.subscribe_topic(topic, tally.on_event)
    keys = [f"factor-archive-{run}-{i}" for i in range(len(tasks))]
    index = {key: i for i, key in enumerate(keys)}
    futures: list[Any] = []
    try:
        results: list[Any] = [None] * len(tasks)
        pending: set = set()
        waiting = list(range(len(tasks)))[::-1]     # not yet submitted, the next one last
        while pending or waiting:
            if waiting:
                i = waiting.pop()
                task = prepare(tasks[i]) if prepare is not None else tasks[i]
                future = client.submit(_execute, fn, task, topic, key=keys[i], pure=False,
                                       retries=UNEXPECTED_RETRIES)
                futures.append(future)
                pending.add(future)
            if waiting and (prepare is None or not pending):
                continue                            # nothing to wait for before the next
            try:
                finished, pending = wait(pending, timeout=0.01 if waiting else POLL,
                                         return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished = set()
            for future in finished:
                i = index[future.key]
                outcome = _outcome(future, tasks[i])
                future.release()
                tally.update(future.key, outcome.nbytes)
                results[i] = outcome.result
            n = tally.take()
            if n:
                progress(n)
        return results
    except BaseException:
        _stop(client, futures, keys)
        raise
    finally:
        client.unsubscribe_topic(topic)


def _outcome(future, task) -> _Done:
    """The finished task's result, or its failure raised as one line naming the task."""
    from distributed import KilledWorker

    if future.status == "finished":
        outcome = future.result()
        if isinstance(outcome, _Failed):
            raise _naming(outcome.error, task.name, getattr(task, "names", (task.name,)))
        return outcome
    if future.status == "cancelled":
        raise FactorArchiveError(f"{task.name}: the cluster dropped the task (scheduler restarted "
                                 f"or this client lost its connection)")
    exc = future.exception()
    if isinstance(exc, KilledWorker):
        raise FactorArchiveError(f"{task.name}: every worker that ran it died (last: "
                                 f"{getattr(exc.last_worker, 'address', exc.last_worker)}); "
                                 f"giving up") from None
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    raise FactorArchiveError(f"{task.name}: failed on the cluster ({type(exc).__name__}"
                             f"{': ' + text if text else ''})") from None


def _naming(error: FactorArchiveError, name: str, names: tuple[str, ...] = ()) -> FactorArchiveError:
    """The worker's error, its message starting with the task's name unless it names it (or
    one of ``names``: the members of a batch)."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not any(n in message for n in (name, *names)):
        message = f"{name}: {message}"
    error.args = (message,)
    return error


def _stop(client, futures: list, keys: list[str]) -> None:
    """Cancel every task and wait (at most STOP_WAIT) until none of them is still running."""
    try:
        if futures:
            client.cancel(futures)
        deadline = time.monotonic() + STOP_WAIT
        while time.monotonic() < deadline:
            running = client.run(_running_keys, keys, on_error="ignore")
            if not any(running.values()):
                return
            time.sleep(POLL)
    except Exception:
        pass   # the cluster itself failed: nothing more to stop
