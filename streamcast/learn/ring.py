"""One sensor's most recent readings in a numpy ring, with where its window restarted.

A ring of preallocated arrays costs no Python object per reading, and appending a
poll's readings is a few vectorised writes. The ring runs the gap rule
(``streamcast.learn.gaps``) as readings arrive and remembers its restarts by a
stable reading number, so it hands out gap-free segments even after it wraps or
shrinks. ``History`` decides how large each ring may grow.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt

from streamcast.learn.gaps import advance

_RESTART_BYTES = 40  # one remembered window restart: an int in a list

FloatArray = npt.NDArray[np.float64]
ValueArray = npt.NDArray[np.float32]


class SensorRing:
    """One sensor: a ring of (ts, values), ``start`` the oldest, ``n`` the fill.

    ``total`` counts every reading ever kept, so a reading has a stable number;
    ``restarts`` holds the numbers of the retained readings that restart a window.
    """

    __slots__ = (
        "count",
        "last_ts",
        "n",
        "restarts",
        "start",
        "step",
        "total",
        "touched",
        "ts",
        "values",
    )

    def __init__(self, num_features: int, capacity: int) -> None:
        self.ts = np.empty(capacity, np.float64)
        self.values = np.empty((capacity, num_features), np.float32)
        self.start = 0
        self.n = 0
        self.total = 0
        self.restarts: list[int] = []
        self.count, self.step, self.last_ts = 0, 0.0, -math.inf
        self.touched = 0

    @property
    def nbytes(self) -> int:
        return self.ts.nbytes + self.values.nbytes + _RESTART_BYTES * len(self.restarts)

    def ordered(self) -> tuple[FloatArray, ValueArray]:
        idx = (self.start + np.arange(self.n)) % len(self.ts)
        return self.ts[idx], self.values[idx]

    def lengths(self) -> list[int]:
        """Lengths of the retained segments, oldest first."""
        if not self.restarts:
            return [self.n] if self.n else []
        bounds = [self.total - self.n, *self.restarts, self.total]
        return [b - a for a, b in itertools.pairwise(bounds)]

    def segments(self) -> list[tuple[FloatArray, ValueArray]]:
        ts, values = self.ordered()
        if not self.restarts:
            return [(ts, values)] if self.n else []
        cuts = [r - (self.total - self.n) for r in self.restarts]
        return list(zip(np.split(ts, cuts), np.split(values, cuts), strict=True))

    def extend(
        self,
        ts: list[float],
        rows: list[int],
        values: ValueArray,
        bound: int,
        gap_factor: float,
        span: int,
    ) -> int:
        """Append the readings ``rows`` of ``values`` (``ts`` newer than the last ones).

        Returns how many of them complete a span since their window's (re)start.
        """
        restarts, completed, state = advance(
            ts, (self.count, self.step, self.last_ts), gap_factor, span
        )
        self.count, self.step, self.last_ts = state
        if restarts:
            self.restarts.extend(self.total + i for i in restarts)
        k = len(ts)
        self.total += k
        cap = len(self.ts)
        if self.n + k > cap and cap < bound:
            # Grow (unrolled, oldest first) before wrapping, up to the bound.
            self._reallocate(min(bound, max(2 * cap, self.n + k)))
            cap = len(self.ts)
        if k == 1:  # the common case: one reading per sensor and poll
            pos = (self.start + self.n) % cap
            self.ts[pos] = ts[0]
            self.values[pos] = values[rows[0]]
            if self.n < cap:
                self.n += 1
            else:
                self.start = (self.start + 1) % cap
        elif k >= cap:
            self.ts[:] = ts[-cap:]
            self.values[:] = values[rows[-cap:]]
            self.start, self.n = 0, cap
        else:
            idx = (self.start + self.n + np.arange(k)) % cap
            self.ts[idx] = ts
            self.values[idx] = values[rows]
            fill = self.n + k
            if fill > cap:
                self.start = (self.start + fill - cap) % cap
                fill = cap
            self.n = fill
        if self.restarts:
            self._forget_restarts()
        return completed

    def shrink(self, capacity: int) -> None:
        """Keep only the newest ``capacity`` readings, in arrays of that size."""
        self._reallocate(capacity)
        self._forget_restarts()

    def _reallocate(self, capacity: int) -> None:
        ts, values = self.ordered()
        keep = min(self.n, capacity)
        self.ts = np.empty(capacity, np.float64)
        self.values = np.empty((capacity, values.shape[1]), np.float32)
        self.ts[:keep] = ts[self.n - keep :]
        self.values[:keep] = values[self.n - keep :]
        self.start, self.n = 0, keep

    def _forget_restarts(self) -> None:
        oldest = self.total - self.n
        if self.restarts and self.restarts[0] <= oldest:
            self.restarts = [r for r in self.restarts if r > oldest]
