"""Bounded per-sensor history of accepted readings, to train the first model from the stream.

Each sensor keeps at most ``max_per_sensor`` readings in one numpy ring (grown by
doubling up to that bound), so memory is bounded and there is no Python object
per reading. With ``max_sensors`` set, the sensor updated least recently is
forgotten when a new one arrives.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

_MIN_CAPACITY = 16


class Readings(Protocol):
    """Column-wise readings (``streamcast.stream.messages.Readings`` is one)."""

    @property
    def sensors(self) -> list[str]: ...
    @property
    def ts(self) -> npt.NDArray[np.float64]: ...
    @property
    def values(self) -> npt.NDArray[np.float32]: ...

    def __len__(self) -> int: ...


class _SensorHistory:
    """One sensor's ring of (ts, values); ``start`` is the oldest, ``n`` the fill."""

    __slots__ = ("n", "start", "ts", "values")

    def __init__(self, num_features: int, capacity: int) -> None:
        self.ts = np.empty(capacity, np.float64)
        self.values = np.empty((capacity, num_features), np.float32)
        self.start = 0
        self.n = 0

    @property
    def last_ts(self) -> float:
        if self.n == 0:
            return -math.inf
        return float(self.ts[(self.start + self.n - 1) % len(self.ts)])

    def ordered(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
        idx = (self.start + np.arange(self.n)) % len(self.ts)
        return self.ts[idx], self.values[idx]

    def extend(
        self, ts: npt.NDArray[np.float64], values: npt.NDArray[np.float32], bound: int
    ) -> None:
        cap = len(self.ts)
        if self.n + len(ts) > cap and cap < bound:
            # Grow (unrolled, oldest first) before wrapping, up to the bound.
            new_cap = min(bound, max(2 * cap, self.n + len(ts)))
            old_ts, old_values = self.ordered()
            self.ts = np.empty(new_cap, np.float64)
            self.values = np.empty((new_cap, values.shape[1]), np.float32)
            self.ts[: self.n] = old_ts
            self.values[: self.n] = old_values
            self.start = 0
            cap = new_cap
        if len(ts) >= cap:
            ts, values = ts[-cap:], values[-cap:]
            self.ts[:] = ts
            self.values[:] = values
            self.start, self.n = 0, cap
            return
        idx = (self.start + self.n + np.arange(len(ts))) % cap
        self.ts[idx] = ts
        self.values[idx] = values
        total = self.n + len(ts)
        if total > cap:
            self.start = (self.start + total - cap) % cap
            total = cap
        self.n = total


class History:
    """The last ``max_per_sensor`` accepted readings of each sensor, in ts order."""

    def __init__(
        self, num_features: int, max_per_sensor: int, *, max_sensors: int | None = None
    ) -> None:
        if num_features < 1 or max_per_sensor < 1:
            raise ValueError("num_features and max_per_sensor must be >= 1")
        if max_sensors is not None and max_sensors < 1:
            raise ValueError("max_sensors must be >= 1")
        self.num_features = num_features
        self.max_per_sensor = max_per_sensor
        self.max_sensors = max_sensors
        self._series: dict[
            str, _SensorHistory
        ] = {}  # insertion order = least recently updated first

    def __len__(self) -> int:
        return len(self._series)

    @property
    def num_readings(self) -> int:
        return sum(s.n for s in self._series.values())

    @property
    def nbytes(self) -> int:
        return sum(s.ts.nbytes + s.values.nbytes for s in self._series.values())

    def add(self, readings: Readings) -> int:
        """Append accepted readings; a reading not newer than its sensor's last is skipped.

        The skip makes re-adding readings (a replay after a rebalance) harmless.
        Returns how many readings were kept.
        """
        n = len(readings)
        if n == 0:
            return 0
        if readings.values.shape[1] != self.num_features:
            raise ValueError(
                f"readings have {readings.values.shape[1]} features, history {self.num_features}"
            )
        local: dict[str, int] = {}
        inv = np.fromiter(
            (local.setdefault(s, len(local)) for s in readings.sensors), np.int64, count=n
        )
        order = np.argsort(inv, kind="stable")
        counts = np.bincount(inv, minlength=len(local))
        ends = np.cumsum(counts).tolist()
        kept = 0
        begin = 0
        for name, end in zip(local, ends, strict=True):
            rows = order[begin:end]
            begin = end
            series = self._series.pop(name, None)
            if series is None:
                series = _SensorHistory(self.num_features, min(_MIN_CAPACITY, self.max_per_sensor))
            self._series[name] = series  # (re)insert at the end: most recently updated
            ts = readings.ts[rows]
            prior = np.maximum.accumulate(np.concatenate(([series.last_ts], ts[:-1])))
            newer = ts > prior
            if not newer.all():
                rows, ts = rows[newer], ts[newer]
            if len(rows):
                series.extend(ts, readings.values[rows], self.max_per_sensor)
                kept += len(rows)
        if self.max_sensors is not None:
            while len(self._series) > self.max_sensors:
                del self._series[next(iter(self._series))]
        return kept

    def examples(self, num_steps: int, horizon: int) -> int:
        """How many (window, truth, target) examples the history can make, sliding by one."""
        need = num_steps + 1 + horizon
        return sum(max(0, s.n - need + 1) for s in self._series.values())

    def series(self) -> list[npt.NDArray[np.float32]]:
        """Each sensor's values, (n, num_features) float32, oldest first."""
        return [s.ordered()[1] for s in self._series.values()]

    def timestamps(self) -> list[npt.NDArray[np.float64]]:
        """Each sensor's ts, in the order ``series()`` returns them."""
        return [s.ordered()[0] for s in self._series.values()]

    def lengths(self) -> list[int]:
        """Readings held per sensor, in the order ``series()`` returns them."""
        return [s.n for s in self._series.values()]

    def sensors(self) -> list[str]:
        """Sensor ids in the order ``series()`` returns them."""
        return list(self._series)

    def time_range(self) -> tuple[float, float]:
        """(first ts, last ts) over all sensors; (nan, nan) while empty."""
        firsts = [float(s.ts[s.start]) for s in self._series.values() if s.n]
        if not firsts:
            return (math.nan, math.nan)
        return (min(firsts), max(s.last_ts for s in self._series.values() if s.n))

    def clear(self) -> None:
        self._series.clear()
