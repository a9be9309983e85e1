"""A progress bar on stderr for long commands (backtest, replay), drawn only on a terminal.

Redirected output stays clean: a log file or a pipe gets no carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``bar(done, total)`` redraws at most 10 times a second; ``close()`` ends the line."""

    def __init__(self, label: str, stream: TextIO | None = None, force: bool = False) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or self.stream.isatty()
        self.started = time.monotonic()
        self._drawn = 0.0
        self._last = ""

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn < 0.1 and done < total:
            return
        self._drawn = now
        share = done / total if total else 1.0
        filled = int(30 * share)
        elapsed = now - self.started
        eta = f", {elapsed / share - elapsed:.0f} s left" if 0 < share < 1 else ""
        self._last = (
            f"\r{self.label} [{'#' * filled}{' ' * (30 - filled)}] {100 * share:3.0f}% "
            f"{done:,}/{total:,} readings, {elapsed:.0f} s{eta}"
        )
        self.stream.write(self._last)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\n")
            self.stream.flush()
