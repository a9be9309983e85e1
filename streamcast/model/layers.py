"""Custom layers of the forecaster: per-window normalisation and the carried-state select.

Registered as Keras serialisables, so a saved model loads with ``safe_mode=True``
and no pickled code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamcast.model.runtime import keras

ops = keras.ops


@keras.saving.register_keras_serializable(package="streamcast")
class WindowNormalization(keras.layers.Layer):  # type: ignore[misc]
    """Standardise each window per feature, so one model fits sensors of any level and scale.

    The standard deviation is floored (absolute and relative to the level) so a flat
    window, or one whose wiggle is below float32 resolution at its level, stays finite;
    the floor sits under the square root to keep gradients finite as well.
    """

    def __init__(self, floor: float = 1e-3, relative_floor: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.floor = float(floor)
        self.relative_floor = float(relative_floor)

    def call(self, window: Any) -> tuple[Any, Any, Any]:
        mean = ops.mean(window, axis=1)
        var = ops.mean(ops.square(window - ops.expand_dims(mean, 1)), axis=1)
        floor = self.floor + self.relative_floor * ops.abs(mean)
        std = ops.sqrt(ops.maximum(var, ops.square(floor)))
        return (window - ops.expand_dims(mean, 1)) / ops.expand_dims(std, 1), mean, std

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "floor": self.floor, "relative_floor": self.relative_floor}


@keras.saving.register_keras_serializable(package="streamcast")
class Standardize(keras.layers.Layer):  # type: ignore[misc]
    """Put the truth on the window's scale; clipped so one wild reading saturates the seeder
    instead of blowing up the cell state."""

    def __init__(self, clip: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clip = float(clip)

    def call(self, inputs: Sequence[Any]) -> Any:
        x, mean, std = inputs
        return ops.clip((x - mean) / std, -self.clip, self.clip)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "clip": self.clip}


@keras.saving.register_keras_serializable(package="streamcast")
class Denormalize(keras.layers.Layer):  # type: ignore[misc]
    """Bring the forecast back to the sensor's own units (the loss is taken there)."""

    def call(self, inputs: Sequence[Any]) -> Any:
        y, mean, std = inputs
        return y * ops.expand_dims(std, 1) + ops.expand_dims(mean, 1)


@keras.saving.register_keras_serializable(package="streamcast")
class CarrySelect(keras.layers.Layer):  # type: ignore[misc]
    """Per row, the sensor's carried state where it has one and the seeder's otherwise.

    A row-wise select keeps one compiled graph for a batch that mixes warm sensors
    with ones seen for the first time (or whose state was lost on a rebalance).
    """

    def __init__(self, offset: int, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.offset = int(offset)
        self.units = int(units)

    def call(self, inputs: Sequence[Any]) -> Any:
        carry, has_carry, seeded = inputs
        carried = carry[:, self.offset : self.offset + self.units]
        return ops.where(ops.expand_dims(has_carry, -1), carried, seeded)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "offset": self.offset, "units": self.units}
