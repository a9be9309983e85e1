"""Custom layers of the forecaster: per-window normalisation and the carried-state select.

Registered as Keras serialisables, so a saved model loads with ``safe_mode=True``
and no pickled code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamcast.model.runtime import keras

ops = keras.ops

_TINY = 1e-30  # well above float32's smallest normal (1.2e-38), far below any reading
_FLOAT32_MAX = 3.4028234663852886e38


@keras.saving.register_keras_serializable(package="streamcast")
class WindowNormalization(keras.layers.Layer):  # type: ignore[misc]
    """Standardise each window per feature, so one model fits sensors of any level and scale.

    The window is first divided by its largest magnitude, so no square overflows
    float32 whatever the readings (±3e38 included) and no tiny signal underflows
    (1e-9 amplitude included). The standard deviation is floored relative to that
    magnitude (``relative_floor``), so a flat window stays finite and a small but
    real wiggle is not flattened; ``floor`` is an absolute floor, 0 for new models
    (models saved with one keep it). Floors sit under the square root to keep
    gradients finite.
    """

    def __init__(self, floor: float = 0.0, relative_floor: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.floor = float(floor)
        self.relative_floor = float(relative_floor)

    def call(self, window: Any) -> tuple[Any, Any, Any]:
        magnitude = ops.max(ops.abs(window), axis=1)  # (batch, features)
        scale = ops.where(magnitude > _TINY, magnitude, ops.ones_like(magnitude))
        x = window / ops.expand_dims(scale, 1)  # every |x| <= 1
        mean = ops.mean(x, axis=1)
        var = ops.mean(ops.square(x - ops.expand_dims(mean, 1)), axis=1)
        floor = ops.maximum(ops.minimum(self.floor / scale, 1.0), self.relative_floor)
        std = ops.sqrt(ops.maximum(var, ops.square(floor)))
        z = (x - ops.expand_dims(mean, 1)) / ops.expand_dims(std, 1)
        # Back to the sensor's units; the std never reaches 0, so dividing by it is safe.
        return z, mean * scale, ops.maximum(std * scale, _TINY)

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
    """Bring the forecast back to the sensor's own units (the loss is taken there).

    A forecast beyond float32's range (readings near its limit, extrapolated) is
    held at the largest finite value rather than becoming infinite.
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        y, mean, std = inputs
        out = y * ops.expand_dims(std, 1) + ops.expand_dims(mean, 1)
        return ops.clip(out, -_FLOAT32_MAX, _FLOAT32_MAX)


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
