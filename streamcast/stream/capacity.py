"""Telling operators the window store is too small, loudly enough and not too often."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from streamcast.ops.logs import RateLimited

logger = logging.getLogger(__name__)


class EvictionWarnings:
    """A WARNING at most once a ``period_s`` while a full store evicts sensors.

    It says how many were evicted in the last period, the capacity, and the setting to
    raise: past ``window.capacity`` active sensors every new reading evicts another
    sensor, whose window restarts, and nothing is forecast. Every eviction is also
    counted in ``streamcast_sensors_evicted_total``.
    """

    def __init__(
        self,
        capacity: int,
        bytes_per_sensor: int = 0,
        *,
        period_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.bytes_per_sensor = bytes_per_sensor
        self.period_s = period_s
        self._clock = clock
        self._due = RateLimited(period_s, clock)
        self._recent: deque[tuple[float, int]] = deque()  # (when, evicted) per append

    def record(self, evicted: int) -> None:
        if evicted <= 0:
            return
        now = self._clock()
        recent = self._recent
        recent.append((now, evicted))
        while now - recent[0][0] > self.period_s:
            recent.popleft()
        if not self._due.due("evicted"):
            return
        count = sum(n for _, n in recent)
        logger.warning(
            "window store full: %d sensors evicted in the last %.0fs (window.capacity=%d); "
            "an evicted sensor's window restarts, and with more active sensors than the "
            "capacity few or none are forecast: raise window.capacity "
            "(STREAMCAST_WINDOW__CAPACITY, %d bytes of arrays per sensor) or spread the "
            "partitions over more replicas",
            count,
            self.period_s,
            self.capacity,
            self.bytes_per_sensor,
            extra={"ctx": {"evicted": count, "capacity": self.capacity}},
        )
