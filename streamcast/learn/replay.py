"""What periodic retraining learns from: a ``History`` that also counts new examples.

A trainer should start after enough new data, not on a clock, and should replay the
older runs with the new ones rather than forget them; this buffer keeps both.
"""

from __future__ import annotations

from streamcast.learn.history import (
    DEFAULT_MAX_BYTES,
    SENSOR_OVERHEAD_BYTES,
    History,
    Readings,
    Segment,
)


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
    ) -> None:
        self.num_steps = num_steps
        self.horizon = horizon
        span = num_steps + 1 + horizon
        if max_per_sensor is None:
            max_per_sensor = max(
                span, (max_bytes - SENSOR_OVERHEAD_BYTES) // (8 + 4 * num_features)
            )
        self.history = History(
            num_features, max_per_sensor, max_bytes=max_bytes, span=span, gap_factor=gap_factor
        )
        self._drained = 0

    def add(self, readings: Readings) -> int:
        return self.history.add(readings)

    @property
    def nbytes(self) -> int:
        return self.history.nbytes

    @property
    def max_bytes(self) -> int:
        return self.history.max_bytes

    @property
    def new_examples(self) -> int:
        """Examples completed by readings added since the last ``drain``."""
        return self.history.examples_seen - self._drained

    def examples(self) -> int:
        """Examples the buffer holds now."""
        return self.history.examples(self.num_steps, self.horizon)

    def drain(self, max_examples: int | None = None) -> list[Segment]:
        """The held runs to train on (copies, fair across sensors); restarts ``new_examples``.

        The runs stay in the buffer: the next training replays them with what comes
        next, until the budget ages them out.
        """
        self._drained = self.history.examples_seen
        return self.history.segments(max_examples)
