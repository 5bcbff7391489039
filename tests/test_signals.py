"""Ctrl-C and SIGTERM end a command in order: the first one raises where the work is (exit status
128 + the signal), one that lands during a step that must finish is held until it is done, and
later ones do not cut the clean-up short."""

from __future__ import annotations

import signal

import pytest

from factor_archive import signals


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_first_signal_raises_with_its_exit_status(sig, status):
    with signals.handled(), pytest.raises(signals.Interrupted) as err:
        signal.raise_signal(sig)
    assert err.value.signum == sig and err.value.exit_code == status
    assert isinstance(err.value, KeyboardInterrupt)  # code that stops on Ctrl-C stops on it too


def test_a_held_signal_is_remembered_and_raised_by_the_next_check():
    with signals.handled():
        signals.hold()
        signal.raise_signal(signal.SIGTERM)   # lands while something is being made
        assert signals.received() == signal.SIGTERM
        with pytest.raises(signals.Interrupted) as err:
            signals.check()
    assert err.value.exit_code == 143


def test_a_second_signal_during_the_clean_up_is_only_counted():
    with signals.handled():
        with pytest.raises(signals.Interrupted):
            signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)     # impatient user: the clean-up goes on
        assert signals.received() == signal.SIGINT


def test_outside_a_command_the_callers_handlers_come_back():
    before = {sig: signal.getsignal(sig) for sig in signals.HANDLED}
    with signals.handled():
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
    assert {sig: signal.getsignal(sig) for sig in signals.HANDLED} == before
    with signals.handled():
        assert signals.received() is None     # a new command starts with nothing received
        signals.check()


@pytest.mark.parametrize("preset,expected", [(None, "1"), ("3", "3")])
def test_a_command_run_as_a_program_keeps_openblas_to_one_thread(tmp_path, preset, expected):
    """The commands do no linear algebra: run as a program, they set OPENBLAS_NUM_THREADS=1 for
    themselves and the casacore workers they start (which inherit it), unless the user set it."""
    import os
    import subprocess
    import sys

    program = tmp_path / "unarchivefactor"   # the name the console script has
    program.write_text("import subprocess, sys\nimport factor_archive.cli\n"
                       "subprocess.run([sys.executable, '-c', "
                       "'import os; print(os.environ.get(\"OPENBLAS_NUM_THREADS\"))'], check=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if preset is not None:
        env["OPENBLAS_NUM_THREADS"] = preset
    out = subprocess.run([sys.executable, str(program)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
