"""Ctrl-C and SIGTERM: stop the work in order, clean up, leave with status 128 + the signal number.

The first SIGINT or SIGTERM raises :class:`Interrupted` in the main thread (as Python raises
KeyboardInterrupt for Ctrl-C) and is remembered, so pipeline threads stop too: they call
:func:`check` at every block (the progress callback does), and code that waits for a thread or a
child process polls :func:`received`. Later signals are only counted, so the clean-up the first one
started (stopping threads and the casacore worker, removing or marking partial output) is not
itself cut short; a third one gives up on cleaning and leaves at once.

A signal that arrives while Python runs a finaliser or a weakref callback raises there and is
swallowed by the interpreter ("Exception ignored in ..."); because it is remembered, the next
:func:`check` raises it again and the command still ends as interrupted.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)
_GIVE_UP_AFTER = 3  # signals

_received: int | None = None
_count = 0


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the command ends with status 128 + signum after cleaning up."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def received() -> int | None:
    """The first signal received while :func:`handled` was active, or None."""
    return _received


def check() -> None:
    """Raise :class:`Interrupted` if a signal arrived: pipeline threads call this between blocks."""
    if _received is not None:
        raise Interrupted(_received)


def _handler(signum: int, _frame) -> None:
    global _received, _count
    _count += 1
    if _received is None:
        _received = signum
        raise Interrupted(signum)
    if _count >= _GIVE_UP_AFTER:
        try:
            os.write(2, b"interrupted again: leaving without cleaning up\n")
        finally:
            os._exit(128 + _received)


@contextmanager
def handled() -> Iterator[None]:
    """Within this block SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""
    global _received, _count
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received, _count = None, 0
    previous = {sig: signal.getsignal(sig) for sig in HANDLED}
    for sig in HANDLED:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
