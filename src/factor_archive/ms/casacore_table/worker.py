"""The casacore worker process: ``python -m factor_archive.ms.casacore_table.worker CMD_FD REPLY_FD PARENT_PID``.

It runs casacore calls for the codec (see worker_client.py, the client): commands arrive pickled on
the command pipe, each answered in order on the reply pipe; row blocks travel through shared
memory (a memfd both map, announced by the "shm" command). It imports only numpy, casacore and
the light client module (this package's ``__init__`` imports nothing eagerly), so it starts in
about 0.1 s; a "run" command imports what its function needs.

The pipes carry pickles between this process and its parent only: both ends are ours, made by
the parent for this child; nothing read from an archive or a working directory is unpickled.
"""

from __future__ import annotations

import importlib
import mmap
import os
import pickle
import signal
import struct
import sys
import threading

# What the "run" command may call: name -> (module, whether it reports progress). A function
# that reports progress gets ``progress=`` a callable taking a byte count, which the parent
# hears before the reply (see worker_client._Worker.run).
RUN = {"concat_in_frequency": ("factor_archive.ms.concat", False),
       "decode_stored_table": ("factor_archive.containers.zarr.table_members", True),
       "prepare_decoding": ("factor_archive.containers.zarr.table_members", False)}


def call(name: str, args: tuple, progress) -> object:
    """The allow-listed function ``name`` of RUN called with ``args`` (and ``progress=``, when it
    reports progress): here in the worker, or in the parent where no worker runs."""
    module, reports = RUN[name]
    fn = getattr(importlib.import_module(module), name)
    return fn(*args, progress=progress) if reports else fn(*args)


def follow_parent(parent_pid: int) -> None:
    """The parent decides when we stop: Ctrl-C and SIGTERM reach the whole process group, and
    the parent stops its threads first, then ends us. If the parent dies, we die with it
    (parent-death signal; EOF on the command pipe where there is no prctl). Done first, before
    the slow imports, so a Ctrl-C at start-up cannot end us by itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(0)


def kind(e: BaseException) -> str:
    """The name of the error's nearest class in factor_archive.errors (the parent raises that
    class again, so an exit status survives the pipe), or "other"."""
    for c in type(e).__mro__:
        if c.__module__ == "factor_archive.errors":
            return c.__name__
    return "other"


def serve(command_fd: int, reply_fd: int) -> None:
    """Answer the commands on ``command_fd`` until "exit" or its end."""
    import numpy as np
    from casacore import tables as ct

    class Table(ct.table):  # as common._table: also tables with a uShort column
        def _makerow(self):
            try:
                super()._makerow()
            except RuntimeError:
                self._row = None

    from . import worker_client

    worker_client.serving_as_worker()  # what runs here writes its tables itself
    rd = os.fdopen(command_fd, "rb")
    wr = os.fdopen(reply_fd, "wb")

    sending = threading.Lock()  # progress may come from any thread of a function run here

    def send(message) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with sending:
            wr.write(struct.pack("<Q", len(data)) + data)
            wr.flush()

    def progress(nbytes: int) -> None:  # before the reply: (None, bytes)
        send((None, int(nbytes)))

    shm: mmap.mmap | None = None
    tables = {}
    # Failed calls are kept, with their frames: a casacore table in them that failed to write
    # would write again in its destructor, and abort. The parent never reuses a worker that failed.
    failed = []

    def value(a):
        if isinstance(a, tuple) and len(a) == 4 and a[0] == "__shm__":
            _tag, off, dtype, shape = a
            assert shm is not None, "shared memory is announced first"
            n = int(np.prod(shape, dtype=np.int64))
            return np.frombuffer(shm, dtype=np.dtype(dtype), count=n, offset=off).reshape(shape)
        return a

    while True:
        head = rd.read(8)
        if len(head) < 8:
            return
        op = pickle.loads(rd.read(struct.unpack("<Q", head)[0]))
        try:
            if op[0] == "shm":
                shm = mmap.mmap(op[1], op[2])
                out = None
            elif op[0] == "open":
                writable = len(op) > 3 and op[3]
                tables[op[1]] = Table(op[2], ack=False, readonly=not writable,
                                      lockoptions="default" if writable else "autonoread")
                out = None
            elif op[0] == "new":
                _o, tid, path, desc, nrow, dminfo, endian = op
                tables[tid] = Table(path, desc, nrow=nrow, dminfo=dminfo, ack=False, endian=endian)
                out = None
            elif op[0] == "call":
                _o, tid, method, args = op
                out = getattr(tables[tid], method)(*[value(a) for a in args])
                if method == "close":
                    del tables[tid]
                elif isinstance(out, np.ndarray) and out.base is not None:
                    out = np.array(out)
            elif op[0] == "run":
                _o, name, args = op
                out = call(name, args, progress)
            elif op[0] == "exit":
                for t in tables.values():
                    t.close()
                return
            reply = (True, out)
        except BaseException as e:
            failed.append(e)
            reply = (False, (type(e).__name__, kind(e), " ".join(str(e).split())))
        send(reply)


if __name__ == "__main__":
    follow_parent(int(sys.argv[3]))
    try:
        serve(int(sys.argv[1]), int(sys.argv[2]))
    except BaseException:  # the parent went away (broken pipe): nobody to tell
        pass
    os._exit(0)  # no interpreter shutdown: nothing left for destructors to write
