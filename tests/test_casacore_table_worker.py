"""The casacore worker process: a real module started with ``python -m``, which reads a table into
shared memory, answers in order, is kept for the next table inside a worker_session and ends
with it, quietly."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from casacore import tables as ct

from factor_archive.ms.casacore_table import worker_client, worker_session

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd_create here")


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "t.tab"
    with ct.table(str(path), ct.maketabdesc([ct.makescacoldesc("V", 0.0),
                                             ct.makearrcoldesc("A", 0j, shape=[3], options=4)]),
                  nrow=5, ack=False) as t:
        t.putcol("V", np.arange(5.0) * 1.5)
        t.putcol("A", (np.arange(15) + 1j).reshape(5, 3).astype(np.complex128))
    return path


def test_the_worker_is_the_module_started_with_dash_m_and_reads_into_shared_memory(table):
    worker = worker_client._Worker(1 << 20)
    try:
        assert worker.proc.args[1:3] == ["-m", "factor_archive.ms.casacore_table.worker"]
        rt = worker.open(table)
        out = worker.buf[:5 * 3 * 16].view(np.complex128).reshape(5, 3)
        rt.call("getcolnp", "A", out, 0, 5).result()  # written by the worker, in place
        assert out.tobytes() == (np.arange(15) + 1j).astype(np.complex128).tobytes()
        assert rt.call("getcol", "V", 1, 2).result().tolist() == [1.5, 3.0]
        assert rt.call("nrows").result() == 5
        rt.close()
    finally:
        worker._end()
    assert worker.proc.returncode == 0


def test_importing_the_worker_module_starts_nothing_and_imports_neither_zarr_nor_casacore():
    """The worker must start quickly: neither its module nor the package imports zarr, and
    importing it (linters, documentation tools) runs no worker."""
    code = ("import sys, factor_archive.ms.casacore_table.worker as w; "
            "print(sorted(m for m in ('zarr', 'casacore', 'numcodecs') if m in sys.modules), callable(w.serve))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[] True"


def test_a_session_keeps_a_clean_worker_for_the_next_table_and_ends_it_on_leaving(table):
    with worker_session():
        with worker_client._worker_for(0, writes=True) as first:
            assert first is not None
            first.open(table).close()
        with worker_client._worker_for(0, writes=True) as second:
            assert second is first  # kept, not started again
    assert first.proc.poll() == 0, "the kept worker ends with the session"


def test_a_worker_whose_call_failed_is_never_kept(table):
    with worker_session():
        with worker_client._worker_for(0, writes=True) as worker:
            rt = worker.open(table)
            with pytest.raises(worker_client._WorkerError, match="NOPE"):
                rt.call("getcol", "NOPE", 0, 1).result()
            rt.close(quiet=True)
        assert worker.proc.wait(timeout=30) == 0  # ended at once, not kept
        with worker_client._worker_for(0, writes=True) as other:
            assert other is not worker


def test_outside_a_session_small_tables_stay_in_this_process():
    with worker_client._worker_for(1 << 10) as worker:
        assert worker is None


def test_run_in_worker_calls_the_allow_listed_function_here_or_in_the_worker():
    """Outside a session the function runs in this process; inside one in a worker, its error
    coming back as one line."""
    from factor_archive.ms.casacore_table import run_in_worker

    with pytest.raises(TypeError, match="concat_in_frequency"):
        run_in_worker("concat_in_frequency")  # found and called here: it wants arguments
    with worker_session(), pytest.raises(worker_client._WorkerError, match="TypeError: concat_in_frequency"):
        run_in_worker("concat_in_frequency")
