"""Ctrl-C and SIGTERM: stop the work in order, clean up, leave with status 128 + the signal number.

Within :func:`handled`, the first SIGINT or SIGTERM raises :class:`Interrupted` in the main thread
(as Python raises KeyboardInterrupt for Ctrl-C) and is remembered, so pipeline threads stop too:
they call :func:`check` at every block (the progress callback does), and code that waits for a
thread or a child process polls :func:`received`. Later signals are only counted, so the clean-up
the first one started (stopping threads and the casacore worker, removing or marking partial
output) is not itself cut short; a third one gives up on cleaning and leaves at once.

A signal that arrives while Python runs a finaliser or a weakref callback raises there and is
swallowed by the interpreter ("Exception ignored in ..."); because it is remembered, the next
:func:`check` raises it again and the command still ends as interrupted.

When the command-line module runs as a program it calls :func:`remember_early` before importing
anything else: until :func:`handled` begins, and again after it ends, signals are only remembered.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM)
_GIVE_UP_AFTER = 3  # signals

_received: int | None = None
_count = 0
_raising = False  # inside handled(): the first signal raises
_holding = False  # hold() was called inside handled(): the next check() raises again
_program = False  # remember_early() was called: no handler of anybody else to restore


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the command ends with status 128 + signum after cleaning up."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def received() -> int | None:
    """The first signal received (since :func:`remember_early` or :func:`handled` began), or None."""
    return _received


def check() -> None:
    """Raise :class:`Interrupted` if a signal arrived: pipeline threads call this between blocks.

    After :func:`hold`, signals raise again from here on.
    """
    global _raising, _holding
    if _holding:
        _raising, _holding = True, False
    if _received is not None:
        raise Interrupted(_received)


def hold() -> None:
    """Until the next :func:`check`, a signal is only remembered.

    For code that makes something it must clean up and then enters the ``try`` that cleans it up:
    a signal in between would otherwise skip the clean-up (``hold(); x = make(); try: check() ...``);
    and for the last step that makes the work complete (no check follows): a signal during it is
    reported once the work is done, instead of cleaning up work that is already complete.
    """
    global _raising, _holding
    if _raising:
        _raising, _holding = False, True


def _handler(signum: int, _frame) -> None:
    global _received, _count
    _count += 1
    if _received is None:
        _received = signum
        if _raising:
            raise Interrupted(signum)
        return
    if _count >= _GIVE_UP_AFTER:
        try:
            os.write(2, b"interrupted again: leaving without cleaning up\n")
        finally:
            os._exit(128 + _received)


def remember_early() -> None:
    """Signals are remembered from now on (and raised by the first :func:`check`), not raised
    wherever the interpreter happens to be: for a program, before it imports the rest."""
    global _program, _wakeup
    if threading.current_thread() is threading.main_thread():
        for sig in HANDLED:
            signal.signal(sig, _handler)
        _program = True
        sys.unraisablehook = _quiet_unraisable
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)  # see last_received
        _wakeup = r


_wakeup: int | None = None  # read end of the interpreter's signal wakeup pipe (programs only)


def last_received() -> int | None:
    """For a program about to exit: stop taking signals and return the first one received,
    including one that arrived so late that no Python handler ran for it (still pending, or only
    noted on the wakeup pipe), so the exit status can say so."""
    global _received
    if not _program:
        return _received
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    late = list(signal.sigpending() & set(HANDLED))
    if _wakeup is not None:
        try:
            late += [n for n in os.read(_wakeup, 4096) if n in HANDLED]
        except OSError:  # BlockingIOError: nothing arrived
            pass
    if _received is None and late:
        _received = late[0]
    return _received


def is_program() -> bool:
    """:func:`remember_early` was called: this process is one of our commands."""
    return _program


def _quiet_unraisable(unraisable) -> None:
    """A signal raised inside a finaliser or weakref callback is swallowed there; it is remembered
    (see :func:`check`), so the interpreter's "Exception ignored in ..." report is noise."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        return
    sys.__unraisablehook__(unraisable)


@contextmanager
def handled() -> Iterator[None]:
    """Within this block SIGINT and SIGTERM raise :class:`Interrupted` (main thread only).

    A signal remembered since :func:`remember_early` is raised by the first :func:`check`.
    Afterwards a program keeps remembering signals; in-process callers (tests) get their own
    handlers back.
    """
    global _received, _count, _raising, _holding
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _program:
        _received, _count = None, 0
    previous = {sig: signal.getsignal(sig) for sig in HANDLED}
    for sig in HANDLED:
        signal.signal(sig, _handler)
    _raising = True
    try:
        yield
    finally:
        _raising = _holding = False
        if not _program:
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
