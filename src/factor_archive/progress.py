"""Progress for long copies: a byte bar with rate on a terminal, sparse log lines otherwise."""

from __future__ import annotations

import sys
import threading
import time

from .signals import check as check_interrupted


class Reporter:
    """Thread-safe byte counter that draws a bar (tty) or prints a line every few seconds (logs)."""

    def __init__(self, total: int, label: str, *, quiet: bool = False, stream=None, interval: float = 10.0):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.label = label
        self.total = total
        self.done = 0
        self.interval = interval
        self.lock = threading.Lock()
        self.start = self.last = time.monotonic()
        self.bar = None
        if not quiet and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm  # only for a terminal: importing it takes a while

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                            file=self.stream, dynamic_ncols=True, leave=True)

    def __call__(self, nbytes: int) -> None:
        check_interrupted()  # every copy loop calls this per block: pipeline threads stop here
        with self.lock:
            self.done += nbytes
            if self.done > self.total:  # generated members (calibrated data) are estimates
                self.total = self.done
                if self.bar is not None:
                    self.bar.total = self.total
            if self.bar is not None:
                self.bar.update(nbytes)
            elif not self.quiet and time.monotonic() - self.last >= self.interval:
                self.last = time.monotonic()
                self._line()

    def _line(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(f"{self.label}: {human(self.done)} of {human(self.total)} ({pct:.0f}%), "
              f"{human(self.done / elapsed)}/s", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.quiet:
            self._line()


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
