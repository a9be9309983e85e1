"""Per-sensor history of accepted readings within a byte budget, cut where serving restarts
a window: what the first model, and later retraining, learn from.

Each sensor keeps its most recent readings in one numpy ring (``streamcast.learn.ring``),
so there is no Python object per reading. The budget is shared fairly: rings grow
while the total fits; past it, the sensors holding the most are trimmed first, down
to a common level that never goes below one training ``span``. A sensor that cannot
get a span within the budget is not taken in, unless the sensor heard from least
recently has been silent for as many readings as the whole budget holds. Many sensors
reporting in turn thus each keep a usable run, instead of evicting each other reading
by reading.

Each ring cuts its readings where serving would restart the sensor's window
(``streamcast.learn.gaps``), and the history hands out those gap-free segments, so no
training example bridges an outage that the live model never sees bridged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from streamcast.learn.ring import SensorRing

logger = logging.getLogger(__name__)

_MIN_CAPACITY = 16
DEFAULT_MAX_BYTES = 64 * 2**20
# Per sensor beyond its readings: two array headers, the ring object and its fields,
# its dict entry and id (about 600 bytes under tracemalloc); counted against the budget.
SENSOR_OVERHEAD_BYTES = 640
_TRIM_TO = 7 / 8  # a trim frees down to this share of the budget, so trims are rare

FloatArray = npt.NDArray[np.float64]
ValueArray = npt.NDArray[np.float32]


class Readings(Protocol):
    """Column-wise readings (``streamcast.stream.messages.Readings`` is one)."""

    @property
    def sensors(self) -> list[str]: ...
    @property
    def ts(self) -> FloatArray: ...
    @property
    def values(self) -> ValueArray: ...

    def __len__(self) -> int: ...


class Segment(NamedTuple):
    """One gap-free run of a sensor's readings, oldest first."""

    sensor: str
    ts: FloatArray
    values: ValueArray


@dataclass(frozen=True)
class HistoryStats:
    """What a status line reports about the gathered history."""

    sensors: int
    readings: int
    segments: int
    examples: int
    nbytes: int
    max_bytes: int
    refused: int  # readings of sensors not taken in (no room for one more span)

    def __str__(self) -> str:
        return (
            f"{self.examples} examples from {self.sensors} sensors ({self.readings} readings, "
            f"{self.nbytes / 2**20:.1f} of {self.max_bytes / 2**20:.1f} MiB)"
        )


class History:
    """The most recent accepted readings of each sensor, in ts order, within ``max_bytes``.

    ``span`` is the readings one training example covers (num_steps + 1 + horizon):
    each sensor keeps at least that many while the budget allows, and every reading
    that completes one since its window's (re)start counts in ``examples_seen``.
    ``max_sensors`` caps the sensors taken in (the budget caps them too).
    """

    def __init__(
        self,
        num_features: int,
        max_per_sensor: int,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        span: int = 1,
        gap_factor: float = 3.0,
        max_sensors: int | None = None,
    ) -> None:
        if num_features < 1 or max_per_sensor < 1 or span < 1:
            raise ValueError("num_features, max_per_sensor and span must be >= 1")
        if max_sensors is not None and max_sensors < 1:
            raise ValueError("max_sensors must be >= 1")
        if gap_factor <= 1.0:
            raise ValueError(f"gap_factor {gap_factor} must be > 1")
        self.num_features = num_features
        self.max_per_sensor = max_per_sensor
        self.max_bytes = max_bytes
        self.span = span
        self.gap_factor = float(gap_factor)
        self.max_sensors = max_sensors
        self.reading_bytes = 8 + 4 * num_features
        self._min_keep = min(span, max_per_sensor)
        reserved = SENSOR_OVERHEAD_BYTES + self._min_keep * self.reading_bytes
        if max_bytes < reserved:
            raise ValueError(f"max_bytes {max_bytes} cannot hold one sensor's span ({reserved})")
        self._max_held = max_bytes // reserved
        if max_sensors is not None:
            self._max_held = min(self._max_held, max_sensors)
        self._stale_after = max_bytes // self.reading_bytes
        self._series: dict[str, SensorRing] = {}  # insertion order = least recently updated first
        self._level: int | None = None  # readings a sensor may grow to, once the budget binds
        self._bytes = 0
        self._readings = 0
        self._clock = 0  # readings offered so far: the age of a silent sensor
        self.examples_seen = 0
        self.refused = 0
        self.trims = 0

    def __len__(self) -> int:
        return len(self._series)

    @property
    def num_readings(self) -> int:
        return self._readings

    @property
    def nbytes(self) -> int:
        """Bytes held: every ring's arrays and restarts, plus a fixed cost per sensor."""
        return self._bytes

    def _bound(self) -> int:
        return self.max_per_sensor if self._level is None else min(self.max_per_sensor, self._level)

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
        self._clock += n
        local: dict[str, int] = {}
        inv = np.fromiter(
            (local.setdefault(s, len(local)) for s in readings.sensors), np.int64, count=n
        )
        order = np.argsort(inv, kind="stable").tolist()
        ends = np.cumsum(np.bincount(inv, minlength=len(local))).tolist()
        ts_all: list[float] = readings.ts.tolist()
        kept = 0
        begin = 0
        for name, end in zip(local, ends, strict=True):
            rows = order[begin:end]
            begin = end
            ring = self._series.pop(name, None)
            if ring is None:
                if not self._admit():
                    if not self.refused:
                        logger.info(
                            "history full: further sensors wait for a silent one's room "
                            "sensors=%d max_bytes=%d",
                            len(self._series),
                            self.max_bytes,
                        )
                    self.refused += len(rows)
                    continue
                ring = SensorRing(self.num_features, min(_MIN_CAPACITY, self._bound()))
                self._bytes += SENSOR_OVERHEAD_BYTES + ring.nbytes
            self._series[name] = ring  # (re)insert at the end: most recently updated
            ring.touched = self._clock
            newer, ts, last = [], [], ring.last_ts
            for i in rows:
                t = ts_all[i]
                if t > last:
                    newer.append(i)
                    ts.append(t)
                    last = t
            if newer:
                before_bytes, before_n = ring.nbytes, ring.n
                self.examples_seen += ring.extend(
                    ts, newer, readings.values, self._bound(), self.gap_factor, self.span
                )
                self._bytes += ring.nbytes - before_bytes
                self._readings += ring.n - before_n
                kept += len(newer)
                if self._bytes > self.max_bytes:
                    self._trim()
        return kept

    def _admit(self) -> bool:
        """Room for one more sensor's span, or the least recently updated one has gone silent."""
        if len(self._series) < self._max_held:
            return True
        oldest = next(iter(self._series))
        if self._clock - self._series[oldest].touched <= self._stale_after:
            return False
        ring = self._series.pop(oldest)
        self._bytes -= SENSOR_OVERHEAD_BYTES + ring.nbytes
        self._readings -= ring.n
        self._level = None  # the others may grow into the room; the next trim levels them
        logger.debug("history forgets a silent sensor sensor=%s", oldest)
        return True

    def _trim(self) -> None:
        """Shrink the rings holding the most to one level, so the total fits again."""
        rings = list(self._series.values())
        caps = np.fromiter((len(r.ts) for r in rings), np.int64, count=len(rings))
        fixed = self._bytes - int(caps.sum()) * self.reading_bytes
        room = (int(self.max_bytes * _TRIM_TO) - fixed) // self.reading_bytes
        level = max(_water_level(caps, room), self._min_keep)
        self._level = level
        for ring in rings:
            if len(ring.ts) > level:
                before_bytes, before_n = ring.nbytes, ring.n
                ring.shrink(level)
                self._bytes += ring.nbytes - before_bytes
                self._readings += ring.n - before_n
        self.trims += 1
        logger.debug("history trimmed level=%d sensors=%d bytes=%d", level, len(rings), self._bytes)

    def examples(self, num_steps: int, horizon: int) -> int:
        """How many (window, truth, target) examples the segments can make, sliding by one."""
        need = num_steps + 1 + horizon
        return sum(max(0, n - need + 1) for n in self.lengths())

    def stats(self, num_steps: int, horizon: int) -> HistoryStats:
        """Progress for a status line, in one pass over the sensors."""
        lengths = self.lengths()
        need = num_steps + 1 + horizon
        return HistoryStats(
            sensors=len(self._series),
            readings=self._readings,
            segments=len(lengths),
            examples=sum(max(0, n - need + 1) for n in lengths),
            nbytes=self._bytes,
            max_bytes=self.max_bytes,
            refused=self.refused,
        )

    def segments(
        self, max_examples: int | None = None, *, need: int | None = None
    ) -> list[Segment]:
        """Each sensor's gap-free runs (copies), oldest first, sensor by sensor.

        With ``max_examples``, each sensor contributes its most recent runs up to a
        common number of examples of ``need`` readings (default ``span``), so the
        total stays within ``max_examples`` and no sensor crowds out the others.
        """
        out: list[Segment] = []
        if max_examples is None:
            for name, ring in self._series.items():
                out.extend(Segment(name, ts, values) for ts, values in ring.segments())
            return out
        need = self.span if need is None else need
        per_sensor = [
            sum(max(0, n - need + 1) for n in ring.lengths()) for ring in self._series.values()
        ]
        quota = _water_level(np.asarray(per_sensor, np.int64), max_examples)
        for (name, ring), have in zip(self._series.items(), per_sensor, strict=True):
            if have <= quota:
                out.extend(Segment(name, ts, values) for ts, values in ring.segments())
                continue
            left, taken = quota, []
            for ts, values in reversed(ring.segments()):
                if left <= 0:
                    break
                made = len(ts) - need + 1
                if made <= 0:
                    continue
                keep = len(ts) if made <= left else left + need - 1
                taken.append(Segment(name, ts[-keep:], values[-keep:]))
                left -= min(made, left)
            out.extend(reversed(taken))
        return out

    def series(self) -> list[ValueArray]:
        """Each segment's values, (n, num_features) float32, oldest first."""
        return [s.values for s in self.segments()]

    def timestamps(self) -> list[FloatArray]:
        """Each segment's ts, in the order ``series()`` returns them."""
        return [s.ts for s in self.segments()]

    def lengths(self) -> list[int]:
        """Readings per segment, in the order ``series()`` returns them."""
        return [n for ring in self._series.values() for n in ring.lengths()]

    def sensors(self) -> list[str]:
        """The sensor of each segment, in the order ``series()`` returns them."""
        return [name for name, ring in self._series.items() for _ in ring.lengths()]

    def time_range(self) -> tuple[float, float]:
        """(first ts, last ts) over all sensors; (nan, nan) while empty."""
        firsts = [float(r.ts[r.start]) for r in self._series.values() if r.n]
        if not firsts:
            return (math.nan, math.nan)
        return (min(firsts), max(r.last_ts for r in self._series.values() if r.n))

    def clear(self) -> None:
        self._series.clear()
        self._level = None
        self._bytes = self._readings = 0


def _water_level(sizes: npt.NDArray[np.int64], room: int) -> int:
    """The largest level L with sum(min(sizes, L)) <= room (the largest size if all fit)."""
    if len(sizes) == 0:
        return max(room, 0)
    s = np.sort(sizes)
    below = np.concatenate(([0], np.cumsum(s)[:-1]))  # sum of the sizes under s[j]
    filled = below + (len(s) - np.arange(len(s))) * s  # sum(min(sizes, s[j]))
    over = np.flatnonzero(filled > room)
    if len(over) == 0:
        return int(s[-1])
    j = int(over[0])
    return int((room - int(below[j])) // (len(s) - j))
