"""Long copies report progress: a line every few seconds in a log (a bar on a terminal), nothing
with -q, and the copy loops stop at the next block once Ctrl-C arrived."""

from __future__ import annotations

import io
import signal

import pytest

from factor_archive import signals
from factor_archive.progress import Reporter, human


def test_a_log_gets_a_line_per_interval_with_size_share_and_rate():
    log = io.StringIO()
    reporter = Reporter(4 << 20, "archiving", stream=log, interval=0.0)
    reporter(1 << 20)
    reporter(1 << 20)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("archiving: 1.0 MiB of 4.0 MiB (25%), ")
    assert lines[1].startswith("archiving: 2.0 MiB of 4.0 MiB (50%), ")
    assert lines[1].endswith("/s")


def test_lines_are_sparse_and_the_last_one_comes_at_close():
    log = io.StringIO()
    reporter = Reporter(1000, "restoring", stream=log, interval=3600.0)
    for _ in range(10):
        reporter(100)
    assert log.getvalue() == ""
    reporter.message("chunks/c0.ms: done")
    reporter.close()
    assert log.getvalue().splitlines()[0] == "chunks/c0.ms: done"
    assert log.getvalue().splitlines()[1].startswith("restoring: 1000 B of 1000 B (100%)")


def test_an_estimate_that_was_too_small_grows_instead_of_passing_100_percent():
    log = io.StringIO()
    reporter = Reporter(100, "x", stream=log, interval=0.0)
    reporter(250)
    assert reporter.total == 250
    assert "(100%)" in log.getvalue()


def test_quiet_prints_nothing():
    log = io.StringIO()
    reporter = Reporter(10, "x", quiet=True, stream=log, interval=0.0)
    reporter(5)
    reporter.message("hello")
    reporter.close()
    assert log.getvalue() == ""


def test_a_copy_stops_at_its_next_block_after_ctrl_c():
    reporter = Reporter(10, "x", quiet=True)
    with signals.handled():
        with pytest.raises(signals.Interrupted):
            signal.raise_signal(signal.SIGINT)
        with pytest.raises(signals.Interrupted) as err:
            reporter(1)  # a pipeline thread's next block
    assert err.value.exit_code == 130
    assert reporter.done == 0


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                    (5 << 20, "5.0 MiB"), (3 << 40, "3.0 TiB"), (5000 << 40, "5000.0 TiB")])
def test_human_sizes(n, text):
    assert human(n) == text
