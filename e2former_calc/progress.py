"""A small progress bar for long jobs (no dependency): ``[####----] 45% 450/1000  12.3/s  ETA 45s``."""

from __future__ import annotations

import sys
import time


class Progress:
    """Call :meth:`update` with the number of items done; :meth:`close` at the end.

    On a terminal the bar redraws in place at most ten times a second; elsewhere (logs, CI)
    it prints a line every tenth of the work.
    """

    def __init__(self, total: int, label: str = "", unit: str = "steps", stream=None):
        self.total, self.label, self.unit = max(int(total), 1), label, unit
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_tenth = -1
        self.extra = ""

    def update(self, done: int, extra: str = "") -> None:
        self.extra = extra or self.extra
        now = time.perf_counter()
        tenth = int(10 * done / self.total)
        if self.tty and (now - self._last_draw > 0.1 or done >= self.total):
            self._last_draw = now
            print("\r" + self._line(done), end="", file=self.stream, flush=True)
        elif not self.tty and tenth > self._last_tenth:
            self._last_tenth = tenth
            print(self._line(done), file=self.stream, flush=True)

    def _line(self, done: int) -> str:
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        filled = int(20 * done / self.total)
        bar = "#" * filled + "-" * (20 - filled)
        return (
            f"{self.label} [{bar}] {100 * done / self.total:3.0f}% {done}/{self.total} {self.unit} "
            f"{rate:7.1f}/s ETA {eta:5.0f}s {self.extra}"
        )

    def close(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)
