"""A small progress bar for the long build steps (disk conversion, hashing, packing).

On a terminal it redraws one line; otherwise (CI logs) it prints a line every 10%. Callers get
plain callbacks: `bar(done, total)` for one step, or `TerminalProgress()(phase, done, total)` for
several steps in a row (a new phase finishes the previous line).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

Progress = Callable[[int, int], None]
PhaseProgress = Callable[[str, int, int], None]

_MIB = 1024 * 1024


def format_line(label: str, done: int, total: int, elapsed: float, width: int = 30) -> str:
    """One progress line: label, bar, percent, MiB done/total and rate."""
    fraction = 1.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    filled = int(fraction * width)
    bar = "#" * filled + "-" * (width - filled)
    rate = f"{done / _MIB / elapsed:7.1f} MiB/s" if elapsed > 0 else "      - MiB/s"
    return f"{label} [{bar}] {fraction * 100:5.1f}% {done / _MIB:8.1f}/{total / _MIB:.1f} MiB {rate}"


class ProgressBar:
    """A (done, total) callback drawing one step's progress to `stream`."""

    def __init__(self, label: str, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._next_decile = 0
        self._last: tuple[int, int] = (0, 0)
        self.closed = False

    def __call__(self, done: int, total: int) -> None:
        """Report progress; draws at most ~10 times a second on a TTY, every 10% otherwise."""
        self._last = (done, total)
        elapsed = time.monotonic() - self.started
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or done >= total:
                self._last_draw = now
                self.stream.write("\r" + format_line(self.label, done, total, elapsed))
                self.stream.flush()
            return
        decile = 10 if total <= 0 else min(done * 10 // total, 10)
        if decile >= self._next_decile:
            self.stream.write(format_line(self.label, done, total, elapsed) + "\n")
            self.stream.flush()
            self._next_decile = decile + 1

    def close(self) -> None:
        """End the line (TTY) so later output starts on a fresh one."""
        if self.closed:
            return
        self.closed = True
        if self.tty:
            done, total = self._last
            elapsed = time.monotonic() - self.started
            self.stream.write("\r" + format_line(self.label, done, total, elapsed) + "\n")
            self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TerminalProgress:
    """A (phase, done, total) callback: one ProgressBar per phase, in sequence."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = tty
        self._bar: ProgressBar | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        """Report progress of `phase`; a new phase closes the previous bar."""
        if self._bar is None or self._bar.label != phase:
            self.close()
            self._bar = ProgressBar(phase, self.stream, tty=self.tty)
        self._bar(done, total)

    def close(self) -> None:
        """Finish the current bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
