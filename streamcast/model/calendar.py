"""The calendar layer: each horizon step's time of day and day of week, as harmonics.

Input: the ``calendar`` input (batch, 3) = [day phase, week phase, step in days] at the
forecast's origin (``streamcast.learn.calendar``). Output: (batch, horizon, 2 x (day +
week harmonics)) sines and cosines at every step's own time, so a forecast 8 hours
ahead knows it falls in the evening, and one 3 days ahead that it falls on a Sunday,
whatever the sensor's step. The forecaster adds a small learned function of these and
of the LSTM's final state to its normalised forecast: the state says how this sensor
follows the calendar, the features say where each step falls in it.
"""

from __future__ import annotations

import math
from typing import Any

from streamcast.model.runtime import keras

ops = keras.ops


@keras.saving.register_keras_serializable(package="streamcast")
class CalendarFeatures(keras.layers.Layer):  # type: ignore[misc]
    """[day phase, week phase, step in days] -> harmonics of each horizon step's phases."""

    def __init__(
        self, horizon: int, day_harmonics: int = 3, week_harmonics: int = 2, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.horizon = int(horizon)
        self.day_harmonics = int(day_harmonics)
        self.week_harmonics = int(week_harmonics)

    @property
    def width(self) -> int:
        return 2 * (self.day_harmonics + self.week_harmonics)

    def call(self, calendar: Any) -> Any:
        steps = ops.cast(ops.arange(1, self.horizon + 1), calendar.dtype)[None, :]  # (1, H)
        step_days = calendar[:, 2:3]
        day = calendar[:, 0:1] + steps * step_days  # (batch, H), in days
        week = calendar[:, 1:2] + steps * (step_days / 7.0)  # in weeks
        # Only the fraction matters; dropping whole days keeps float32 precise far ahead.
        day = day - ops.floor(day)
        week = week - ops.floor(week)
        parts = []
        for phase, harmonics in ((day, self.day_harmonics), (week, self.week_harmonics)):
            for m in range(1, harmonics + 1):
                angle = (2.0 * math.pi * m) * phase
                parts += [ops.sin(angle), ops.cos(angle)]
        return ops.stack(parts, axis=-1)  # (batch, H, width)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], self.horizon, self.width)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "horizon": self.horizon,
            "day_harmonics": self.day_harmonics,
            "week_harmonics": self.week_harmonics,
        }
