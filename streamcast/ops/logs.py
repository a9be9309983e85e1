"""Logging set-up: plain text for people, JSON lines for log collectors.

Context travels as ``key=value`` in the message (text) or as fields passed with
``extra={"ctx": {...}}`` (both formats); secrets never reach a log call.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

_QUIET = ("kafka", "tensorflow", "absl", "h5py")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = getattr(record, "ctx", None)
        if isinstance(ctx, dict):
            doc.update(ctx)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = getattr(record, "ctx", None)
        if isinstance(ctx, dict) and ctx:
            line += " " + " ".join(f"{k}={v}" for k, v in ctx.items())
        return line


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # The client's event loop warns whenever a task runs past 100 ms, which a busy
    # 2-core machine does routinely; it says nothing an operator can act on.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


class RateLimited:
    """One log line per key per period: for events that come in floods (bad input), where
    the first says what is wrong and the metrics count the rest."""

    def __init__(self, period_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self._clock = clock
        self._last: dict[str, float] = {}

    def due(self, key: str) -> bool:
        """True (and the period restarts) when ``key`` was not logged within the period."""
        now = self._clock()
        if now - self._last.get(key, -math.inf) < self.period_s:
            return False
        self._last[key] = now
        return True
