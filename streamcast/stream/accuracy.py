"""Live accuracy: a bounded sample of served forecasts, scored against the readings they covered.

Training scores a model on held-out history; this scores what was actually served, on
the readings that arrive later, per horizon bucket (the buckets training uses), next to
persistence (the last reading, held) on the same readings. Only a sample is tracked, in
arrays of ``max_tracked`` rows allocated up front, so memory does not grow with the fleet;
both calls do numpy work over the batch plus one C-level dict lookup per reading.

Errors are in raw units: a scored reading's error is |forecast - reading| averaged over
features, and a bucket's MAE is the plain mean of its last ``window`` scored readings, so
sensors with large values weigh more. The model and persistence are always scored on
the same readings, so comparing the two (what an alert should do) is scale-consistent.

A forecast is scored by readings that arrive after it was issued. While the daemon
catches up on a backlog, a poll holds many steps of a sensor and the forecasts issued
from it find their readings already past: the sample then thins until the stream is
live again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from streamcast.learn.evaluation import bucket_label, horizon_buckets, reading_errors
from streamcast.stream.messages import Readings

if TYPE_CHECKING:
    from streamcast.ops.metrics import Metrics

logger = logging.getLogger(__name__)

MODEL = "model"
PERSISTENCE = "persistence"
FORECASTERS = (MODEL, PERSISTENCE)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class LiveAccuracy:
    """MAE per horizon bucket of the served model and of persistence, over recent readings.

    ``issued`` tracks each forecast with probability ``1 / sample_every``, at most one per
    sensor at a time and at most ``max_tracked`` in all; ``observed`` scores arriving
    readings against them. A reading counts for the horizon step nearest to it
    (``round((ts - issue_ts) / step_s)``, so jitter up to half a step is tolerated); each
    step is scored once. A forecast is let go when a reading of its sensor falls beyond
    its horizon, when every step was scored, or, for a sensor whose readings stopped (or
    were evicted), once event time is ``max(horizon * step_s, grace_s)`` past the end of
    its horizon. Event time is the running maximum of each batch's median ``ts``: one
    sensor with a clock running ahead cannot expire everyone's forecasts, but a sensor
    (or partition) whose readings arrive later than that behind the rest is not scored.
    Bounded memory: see ``nbytes`` and ``bound_bytes``.
    """

    def __init__(
        self,
        horizon: int,
        num_features: int,
        *,
        max_tracked: int = 4096,
        sample_every: int = 16,
        window: int = 4096,
        grace_s: float = 600.0,
        seed: int | None = None,
    ) -> None:
        if horizon < 1 or num_features < 1 or max_tracked < 1 or sample_every < 1 or window < 1:
            raise ValueError(
                "horizon, num_features, max_tracked, sample_every and window must be >= 1"
            )
        if not grace_s >= 0.0:
            raise ValueError(f"grace_s {grace_s} must be >= 0")
        self.horizon = horizon
        self.num_features = num_features
        self.max_tracked = max_tracked
        self.sample_every = sample_every
        self.window = window
        self.grace_s = float(grace_s)
        self.buckets = horizon_buckets(horizon)
        self.labels = [bucket_label(b) for b in self.buckets]
        self._bucket_of = np.empty(horizon, np.int64)  # horizon step - 1 -> bucket index
        for b, (lo, hi) in enumerate(self.buckets):
            self._bucket_of[lo - 1 : hi] = b
        self._rng = np.random.default_rng(seed)

        # Tracked forecasts, one row each; a free row has an infinite deadline.
        rows = max_tracked
        self._forecast = np.zeros((rows, horizon, num_features), np.float32)
        self._last = np.zeros((rows, num_features), np.float32)
        self._seen = np.zeros((rows, horizon), np.bool_)
        self._issue_ts = np.zeros(rows, np.float64)
        self._step = np.ones(rows, np.float64)
        self._deadline = np.full(rows, np.inf, np.float64)
        self._version = np.zeros(rows, np.int64)
        self._row_of: dict[str, int] = {}
        self._sensor_of: list[str | None] = [None] * rows
        self._free: list[int] = list(range(rows - 1, -1, -1))
        self._event_time = -math.inf
        self._next_expiry = math.inf

        # The last ``window`` scored readings per bucket: [model, persistence] errors.
        nb = len(self.buckets)
        self._errors = np.zeros((len(FORECASTERS), nb, window), np.float64)
        self._error_version = np.zeros((nb, window), np.int64)
        self._filled = np.zeros(nb, np.int64)
        self._pos = np.zeros(nb, np.int64)
        self.scored = 0  # readings scored since start, all buckets

    # -- introspection -------------------------------------------------------------------

    def __len__(self) -> int:
        """Forecasts tracked now (never more than ``max_tracked``)."""
        return len(self._row_of)

    def __contains__(self, sensor: object) -> bool:
        return sensor in self._row_of

    @property
    def nbytes(self) -> int:
        """Bytes of the numpy arrays, all allocated at start (the dict of names comes on top)."""
        arrays = (
            self._forecast,
            self._last,
            self._seen,
            self._issue_ts,
            self._step,
            self._deadline,
            self._version,
            self._bucket_of,
            self._errors,
            self._error_version,
            self._filled,
            self._pos,
        )
        return sum(a.nbytes for a in arrays)

    @staticmethod
    def bound_bytes(
        horizon: int,
        num_features: int,
        max_tracked: int = 4096,
        window: int = 4096,
        name_bytes: int = 64,
    ) -> int:
        """An upper bound of the memory held, whatever the fleet size.

        Per tracked row: the forecast (4·H·F), the last reading (4·F), the scored steps
        (H), four 8-byte columns, a list slot (8), and, while tracked, a dict entry and its
        name (about 100 bytes + a str of ``name_bytes`` characters). Per bucket: three
        8-byte rings of ``window``.
        """
        nb = len(horizon_buckets(horizon))
        per_row = 4 * horizon * num_features + 4 * num_features + horizon + 4 * 8 + 8
        per_name = 100 + 49 + name_bytes
        return max_tracked * (per_row + per_name) + nb * window * 3 * 8 + nb * 16 + horizon * 8

    # -- the hot path --------------------------------------------------------------------

    def issued(
        self,
        sensors: Sequence[str],
        ts: npt.ArrayLike,
        step_s: npt.ArrayLike,
        forecasts: npt.NDArray[np.floating],
        last_values: npt.NDArray[np.floating],
        model_version: int,
    ) -> int:
        """Track a sample of just-served forecasts; how many were taken.

        ``forecasts`` (n, horizon, F) are the values at ``ts + k * step_s``, k = 1..horizon;
        ``last_values`` (n, F) the reading at ``ts``, which persistence repeats.
        """
        n = len(sensors)
        if n == 0 or not self._free:
            return 0
        h, f = self.horizon, self.num_features
        if forecasts.shape != (n, h, f) or last_values.shape != (n, f):
            raise ValueError(
                f"forecasts {forecasts.shape} and last values {last_values.shape} do not fit "
                f"{n} sensors, horizon {h}, {f} features"
            )
        ts_a = np.broadcast_to(np.asarray(ts, np.float64), (n,))
        step = np.broadcast_to(np.asarray(step_s, np.float64), (n,))
        pick = (step > 0) & np.isfinite(step) & np.isfinite(ts_a)
        if self.sample_every > 1:
            pick &= self._rng.random(n) < 1.0 / self.sample_every
        idx = np.flatnonzero(pick)
        if len(idx) > len(self._free):
            idx = np.sort(self._rng.choice(idx, len(self._free), replace=False))
        if not len(idx):
            return 0
        taken_rows: list[int] = []
        taken: list[int] = []
        row_of = self._row_of
        for i, t in zip(idx.tolist(), ts_a[idx].tolist(), strict=True):
            name = sensors[i]
            old = row_of.get(name)
            if old is not None:
                # Keep the tracked forecast while this one falls inside its horizon; a
                # sensor whose clock moved back (a restart) or passed it starts afresh.
                start = float(self._issue_ts[old])
                if start < t <= start + (h + 0.5) * float(self._step[old]):
                    continue
                self._release(old)
            row = self._free.pop()
            row_of[name] = row
            self._sensor_of[row] = name
            taken_rows.append(row)
            taken.append(i)
        if not taken:
            return 0
        rows = np.array(taken_rows, np.int64)
        src = np.array(taken, np.int64)
        self._forecast[rows] = forecasts[src]
        self._last[rows] = last_values[src]
        self._seen[rows] = False
        self._issue_ts[rows] = ts_a[src]
        self._step[rows] = step[src]
        span = step[src] * h
        deadline = ts_a[src] + span + 0.5 * step[src] + np.maximum(span, self.grace_s)
        self._deadline[rows] = deadline
        self._next_expiry = min(self._next_expiry, float(deadline.min()))
        self._version[rows] = int(model_version)
        return len(rows)

    def observed(self, readings: Readings) -> int:
        """Score arriving readings against the tracked forecasts; how many were scored."""
        n = len(readings)
        if n == 0 or not self._row_of:
            return 0
        ts = readings.ts
        event_time = float(np.partition(ts, n // 2)[n // 2])  # the median, near enough
        if event_time > self._event_time:
            self._event_time = event_time
        scored = self._match(readings)
        # Expire after matching: a poll that catches up on a backlog holds many steps at
        # once, and the readings in it must still score the forecasts they cover.
        if self._event_time >= self._next_expiry:
            self._expire()
        return scored

    def _match(self, readings: Readings) -> int:
        n = len(readings)
        ts = readings.ts
        rows = np.fromiter(
            map(self._row_of.get, readings.sensors, repeat(-1, n)), np.int64, count=n
        )
        hit = np.flatnonzero(rows >= 0)
        if not len(hit):
            return 0
        h = self.horizon
        r = rows[hit]
        k = np.rint((ts[hit] - self._issue_ts[r]) / self._step[r]).astype(np.int64)
        inside = (k >= 1) & (k <= h)
        scored = 0
        if inside.any():
            scored = self._score(r[inside], k[inside] - 1, hit[inside], readings.values)
        touched = np.unique(r)
        done = touched[self._seen[touched].all(axis=1)]
        beyond = r[k > h]
        if len(beyond):
            done = np.union1d(done, beyond)
        for row in done.tolist():
            self._release(row)
        return scored

    # -- the recent window -----------------------------------------------------------------

    def snapshot(self, model_version: int | None = None) -> dict[tuple[str, str], float]:
        """MAE per (bucket label, forecaster) over each bucket's recent scored readings.

        Buckets with nothing scored yet are left out; ``model_version`` keeps only the
        readings that scored that version's forecasts.
        """
        out: dict[tuple[str, str], float] = {}
        for b, label in enumerate(self.labels):
            filled = int(self._filled[b])
            if not filled:
                continue
            errors = self._errors[:, b, :filled]
            if model_version is not None:
                errors = errors[:, self._error_version[b, :filled] == model_version]
                if not errors.shape[1]:
                    continue
            means = errors.mean(axis=1)
            for name, mae in zip(FORECASTERS, means.tolist(), strict=True):
                out[(label, name)] = mae
        return out

    def export(self, metrics: Metrics) -> None:
        """Set ``streamcast_forecast_mae{horizon_bucket, forecaster}`` from ``snapshot``."""
        for (bucket, forecaster), mae in self.snapshot().items():
            metrics.forecast_mae.labels(bucket, forecaster).set(mae)

    # -- internals -------------------------------------------------------------------------

    def _score(
        self, rows: IntArray, steps: IntArray, at: IntArray, values: npt.NDArray[np.float32]
    ) -> int:
        """Errors of readings ``at`` against horizon ``steps`` (0-based) of ``rows``."""
        fresh = ~self._seen[rows, steps]
        rows, steps, at = rows[fresh], steps[fresh], at[fresh]
        # One score per forecast step even when a batch holds two readings near it.
        _, first = np.unique(rows * self.horizon + steps, return_index=True)
        if len(first) < len(rows):
            first.sort()
            rows, steps, at = rows[first], steps[first], at[first]
        if not len(rows):
            return 0
        self._seen[rows, steps] = True
        truth = values[at]
        model = reading_errors(self._forecast[rows, steps], truth)
        persistence = reading_errors(self._last[rows], truth)
        self._record(self._bucket_of[steps], model, persistence, self._version[rows])
        return len(rows)

    def _record(
        self, bucket: IntArray, model: FloatArray, persistence: FloatArray, version: IntArray
    ) -> None:
        """Append scored errors to their buckets' rings, oldest overwritten first."""
        w = self.window
        for b in np.unique(bucket).tolist():
            sel = bucket == b
            m, p, v = model[sel], persistence[sel], version[sel]
            if len(m) > w:
                m, p, v = m[-w:], p[-w:], v[-w:]
            pos = (int(self._pos[b]) + np.arange(len(m))) % w
            self._errors[0, b, pos] = m
            self._errors[1, b, pos] = p
            self._error_version[b, pos] = v
            self._pos[b] = (int(self._pos[b]) + len(m)) % w
            self._filled[b] = min(w, int(self._filled[b]) + len(m))
        self.scored += len(model)

    def _expire(self) -> None:
        """Let go of forecasts whose deadline event time has passed (readings stopped)."""
        expired = np.flatnonzero(self._deadline <= self._event_time)
        for row in expired.tolist():
            self._release(row)
        if len(expired):
            logger.debug("live accuracy let go of expired forecasts count=%d", len(expired))
        self._next_expiry = float(self._deadline.min())

    def _release(self, row: int) -> None:
        name = self._sensor_of[row]
        if name is not None:
            del self._row_of[name]
        self._sensor_of[row] = None
        self._deadline[row] = np.inf
        self._free.append(row)
