"""Custom layers of the forecaster: per-window normalisation and carry mode's state slices.

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
_Z_LIMIT = 2.0**100  # a normalised forecast past this is no forecast; keeps y * std finite


def _power_of_two_scale(magnitude: Any) -> Any:
    """A power of two within a factor of 4 of ``magnitude`` (2**-100 below 1e-30).

    Dividing by it is exact, so the scaled arithmetic rounds as the plain one would,
    but no square, sum or product overflows float32. Piecewise constant, so it
    carries no gradient.
    """
    exponent = ops.clip(ops.floor(ops.log2(ops.maximum(magnitude, _TINY))), -100.0, 126.0)
    return ops.stop_gradient(ops.power(2.0, exponent))


@keras.saving.register_keras_serializable(package="streamcast")
class WindowNormalization(keras.layers.Layer):  # type: ignore[misc]
    """Standardise each window per feature, so one model fits sensors of any level and scale.

    The window is first scaled by a power of two near its largest magnitude, so no
    square overflows float32 whatever the readings (±3e38 included) and no tiny signal
    underflows (1e-9 amplitude included). The standard deviation is floored relative to
    that magnitude (``relative_floor``), so a flat window stays finite and a small but
    real wiggle is not flattened; ``floor`` is an absolute floor, 0 for new models
    (models saved with one keep it), and an all-zero window is floored at 1e-30. Floors
    sit under the square root to keep gradients finite.
    """

    def __init__(self, floor: float = 0.0, relative_floor: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.floor = float(floor)
        self.relative_floor = float(relative_floor)

    def call(self, window: Any) -> tuple[Any, Any, Any]:
        magnitude = ops.max(ops.abs(window), axis=1)  # (batch, features)
        scale = _power_of_two_scale(magnitude)
        x = window / ops.expand_dims(scale, 1)  # every |x| < 4
        mean = ops.mean(x, axis=1)
        # Second pass: the first mean can be an ulp off, a z of 0.2 in a constant window
        # (against the relative floor); corrected, a constant window centres to exactly 0.
        mean = mean + ops.mean(x - ops.expand_dims(mean, 1), axis=1)
        centred = x - ops.expand_dims(mean, 1)
        var = ops.mean(ops.square(centred), axis=1)
        # In the sensor's units: an absolute floor no larger than the signal, the relative
        # one, and 1e-30 so an all-zero window is not 0 / 0.
        floor = ops.maximum(
            ops.maximum(ops.minimum(self.floor, magnitude), self.relative_floor * magnitude),
            _TINY,
        )
        std = ops.sqrt(ops.maximum(var, ops.square(floor / scale)))
        z = centred / ops.expand_dims(std, 1)
        # Back to the sensor's units (exact: the scale is a power of two).
        return z, mean * scale, ops.maximum(std * scale, _TINY)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "floor": self.floor, "relative_floor": self.relative_floor}


@keras.saving.register_keras_serializable(package="streamcast")
class Standardize(keras.layers.Layer):  # type: ignore[misc]
    """Put the truth on the window's scale; clipped so one wild reading saturates the seeder
    instead of blowing up the cell state.

    Computed on a common power-of-two scale, so a truth at +3e38 against a mean at -3e38
    (or any truth against a 1e-30 std) saturates without an infinite intermediate.
    """

    def __init__(self, clip: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clip = float(clip)

    def call(self, inputs: Sequence[Any]) -> Any:
        x, mean, std = inputs
        magnitude = ops.maximum(ops.maximum(ops.abs(x), ops.abs(mean)), ops.maximum(std, _TINY))
        scale = _power_of_two_scale(magnitude)
        gap = x / scale - mean / scale  # |gap| < 8
        # A std under 1e-30 of the scale only matters where the gap is 0 (0 / 0); any
        # other gap is past the clip either way.
        spread = ops.maximum(std / scale, _TINY)
        # Clip the gap before dividing: gap / spread can overflow (a truth 1e20 spreads
        # off), and the clip's zero gradient times an infinite one is NaN. The bound sits
        # a hair past the clip, so the outer clip still decides the value exactly.
        bound = self.clip * spread * (1.0 + 2.0**-20)
        return ops.clip(ops.clip(gap, -bound, bound) / spread, -self.clip, self.clip)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "clip": self.clip}


@keras.saving.register_keras_serializable(package="streamcast")
class Denormalize(keras.layers.Layer):  # type: ignore[misc]
    """Bring the forecast back to the sensor's own units (the loss is taken there).

    ``y * std + mean`` is computed on a power-of-two scale of the window, so a forecast
    beyond float32's range (readings near its limit, extrapolated) is held at the
    largest finite value instead of passing through infinity.
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        y, mean, std = inputs
        magnitude = ops.maximum(ops.maximum(std, ops.abs(mean)), _TINY)
        scale = ops.expand_dims(_power_of_two_scale(magnitude), 1)
        y = ops.clip(y, -_Z_LIMIT, _Z_LIMIT)
        scaled = y * (ops.expand_dims(std, 1) / scale) + ops.expand_dims(mean, 1) / scale
        bound = _FLOAT32_MAX / ops.maximum(scale, 1.0)  # scaled * scale stays finite
        out = ops.clip(scaled, -bound, bound) * scale
        # A no-op where the power of two is exact (TensorFlow); a guard where it is not.
        return ops.clip(out, -_FLOAT32_MAX, _FLOAT32_MAX)


@keras.saving.register_keras_serializable(package="streamcast")
class CarrySlice(keras.layers.Layer):  # type: ignore[misc]
    """One layer's h or c out of the flat carried states ``[h_0, c_0, h_1, c_1, ...]``."""

    def __init__(self, offset: int, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.offset = int(offset)
        self.units = int(units)

    def call(self, carry: Any) -> Any:
        return carry[:, self.offset : self.offset + self.units]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "offset": self.offset, "units": self.units}


@keras.saving.register_keras_serializable(package="streamcast")
class LastSteps(keras.layers.Layer):  # type: ignore[misc]
    """The last ``steps`` steps of a sequence: the readings a carried state has not seen."""

    def __init__(self, steps: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = int(steps)

    def call(self, sequence: Any) -> Any:
        return sequence[:, -self.steps :, :]

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (input_shape[0], self.steps, *input_shape[2:])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "steps": self.steps}


@keras.saving.register_keras_serializable(package="streamcast")
class LagFeatures(keras.layers.Layer):  # type: ignore[misc]
    """Per forecast step: the reading one season before it on the window's scale, whether
    the lags are known, and the step's place in the horizon.

    Inputs ``[lags (batch, H, F), known (batch, 1), mean (batch, F), std (batch, F)]``;
    output (batch, H, F + 2). Unknown lags (a sensor with less history than a season)
    are zeros with ``known`` 0, so the model learns to do without them; a lag far off the
    window's scale saturates at the clip, as the truth does (``Standardize``).
    """

    def __init__(self, horizon: int, clip: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.horizon = int(horizon)
        self.clip = float(clip)
        self._standardize = Standardize(clip=clip)

    def call(self, inputs: Sequence[Any]) -> Any:
        lags, known, mean, std = inputs
        known = ops.expand_dims(ops.cast(known, lags.dtype), 1)  # (batch, 1, 1)
        z = self._standardize([lags, ops.expand_dims(mean, 1), ops.expand_dims(std, 1)]) * known
        ones = ops.ones_like(z[:, :, :1])
        position = ops.cast(ops.arange(1, self.horizon + 1), z.dtype) / float(self.horizon)
        steps = ones * ops.reshape(position, (1, self.horizon, 1))
        return ops.concatenate([z, ones * known, steps], axis=-1)

    def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple[Any, ...]:
        lags = input_shape[0]
        return (lags[0], self.horizon, lags[2] + 2)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "horizon": self.horizon, "clip": self.clip}


@keras.saving.register_keras_serializable(package="streamcast")
class LagBlend(keras.layers.Layer):  # type: ignore[misc]
    """Move each step of the normalised forecast towards its lag, by a learned share.

    Inputs ``[forecast (batch, H, F), lag features (batch, H, F + 2), gate (batch, H, F)]``
    (``LagFeatures``: the lags, then ``known``). The share is ``sigmoid(gate)`` where the
    lags are known and 0 where not: a season that repeats is taken as it was, one that
    does not is left to the rest of the model.
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        y, features, gate = inputs
        f = y.shape[-1]
        lags, known = features[..., :f], features[..., f : f + 1]
        return y + ops.sigmoid(gate) * known * (lags - y)
