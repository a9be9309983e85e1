"""What periodic retraining learns from: a ``History`` that also counts new examples.

A trainer should start after enough new data, not on a clock, and should replay the
older runs with the new ones rather than forget them; this buffer keeps both.

Readings reach the history a few tens of thousands at a time, not poll by poll: its cost
is a Python step per sensor per call, and a poll at a high rate holds about one reading
of each of thousands of sensors. Gathered, each call carries many readings per sensor.
Everything that reads the buffer hands the gathered readings over first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamcast.learn.history import (
    DEFAULT_MAX_BYTES,
    SENSOR_OVERHEAD_BYTES,
    History,
    Readings,
    Segment,
)

#: Readings gathered before they go into the history in one call.
GATHER_READINGS = 32_768


@dataclass(frozen=True)
class _Gathered:
    """Several polls' readings as one column-wise batch (what ``History.add`` takes)."""

    sensors: list[str]
    ts: npt.NDArray[np.float64]
    values: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.sensors)


class ReplayBuffer:
    """Recent gap-free runs of every sensor within ``max_bytes``, for periodic retraining.

    Fed the readings the daemon accepts, it keeps the newest readings of each sensor
    fairly (a ``History`` with the training span); ``new_examples`` counts the
    examples that arrived since the last ``drain``, so a trainer can start every N.
    """

    def __init__(
        self,
        num_features: int,
        num_steps: int,
        horizon: int,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        gap_factor: float = 3.0,
        max_per_sensor: int | None = None,
        seasonal_lag: int = 0,
    ) -> None:
        self.num_steps = num_steps
        self.horizon = horizon
        # The readings one example covers, its lags included (``ModelSpec.span``).
        span = max(num_steps + 1, seasonal_lag) + horizon
        if max_per_sensor is None:
            max_per_sensor = max(
                span, (max_bytes - SENSOR_OVERHEAD_BYTES) // (8 + 4 * num_features)
            )
        self.history = History(
            num_features, max_per_sensor, max_bytes=max_bytes, span=span, gap_factor=gap_factor
        )
        self._drained = 0
        self._gathered: list[Readings] = []
        self._gathered_n = 0

    def add(self, readings: Readings) -> None:
        """Take accepted readings (kept by reference: the caller does not reuse them)."""
        if not len(readings):
            return
        self._gathered.append(readings)
        self._gathered_n += len(readings)
        if self._gathered_n >= GATHER_READINGS:
            self.flush()

    def flush(self) -> int:
        """Hand the gathered readings to the history; how many it kept."""
        if not self._gathered:
            return 0
        parts, self._gathered, self._gathered_n = self._gathered, [], 0
        if len(parts) == 1:
            return self.history.add(parts[0])
        return self.history.add(
            _Gathered(
                [s for p in parts for s in p.sensors],
                np.concatenate([p.ts for p in parts]),
                np.concatenate([p.values for p in parts]),
            )
        )

    @property
    def nbytes(self) -> int:
        self.flush()
        return self.history.nbytes

    @property
    def max_bytes(self) -> int:
        return self.history.max_bytes

    @property
    def new_examples(self) -> int:
        """Examples completed by readings added since the last ``drain``."""
        self.flush()
        return self.history.examples_seen - self._drained

    def examples(self) -> int:
        """Examples the buffer holds now."""
        self.flush()
        return self.history.examples(self.num_steps, self.horizon)

    def lengths(self) -> list[int]:
        """Readings per held run."""
        self.flush()
        return self.history.lengths()

    def drain(self, max_examples: int | None = None) -> list[Segment]:
        """The held runs to train on (copies, fair across sensors); restarts ``new_examples``.

        The runs stay in the buffer: the next training replays them with what comes
        next, until the budget ages them out.
        """
        self.flush()
        self._drained = self.history.examples_seen
        return self.history.segments(max_examples)
