"""The truth-seeded stacked LSTM forecaster and the one checked way to set its states.

Only ``keras.layers`` and ``keras.ops`` appear here, so the same model runs on the
TensorFlow, JAX and PyTorch backends; backend-specific compilation lives in
``streamcast.inference``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from streamcast.config import ModelConfig
from streamcast.errors import StateShapeError

logger = logging.getLogger(__name__)

__all__ = [
    "CarrySelect",
    "Denormalize",
    "Standardize",
    "WindowNormalization",
    "assign_states",
    "build_forecaster",
    "build_stateful_twin",
    "build_stepper",
    "flatten_states",
    "load_model",
    "lstm_layers",
    "read_states",
    "save_model",
    "seed_states",
    "split_states",
    "state_shapes",
    "state_width",
]

StatePair = tuple[Any, Any]

_LSTM_NAME = re.compile(r"^lstm_(\d+)$")


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


@dataclass
class _Stack:
    """The layers of one forecaster: fresh ones, or those of a built model found by name."""

    norm: Any
    truth_norm: Any
    seeders: list[tuple[Any, Any]]
    lstms: list[Any]
    dropouts: list[Any]
    flatten: Any
    concat: Any
    head: Any
    reshape: Any
    denorm: Any


def _fresh_stack(cfg: ModelConfig, *, seeded: bool, stateful: bool = False) -> _Stack:
    top = len(cfg.units) - 1
    return _Stack(
        norm=WindowNormalization(name="window_norm"),
        truth_norm=Standardize(name="truth_norm"),
        seeders=[
            (
                keras.layers.Dense(u, activation="tanh", name=f"seeder_h_{k}"),
                keras.layers.Dense(u, name=f"seeder_c_{k}"),
            )
            for k, u in enumerate(cfg.units)
        ]
        if seeded
        else [],
        lstms=[
            keras.layers.LSTM(
                u,
                return_sequences=k < top,
                return_state=True,
                stateful=stateful,
                name=f"lstm_{k}",
            )
            for k, u in enumerate(cfg.units)
        ],
        dropouts=[keras.layers.Dropout(cfg.dropout, name=f"dropout_{k}") for k in range(top + 1)],
        flatten=keras.layers.Flatten(name="window_flat"),
        concat=keras.layers.Concatenate(name="head_input"),
        head=keras.layers.Dense(cfg.horizon * cfg.num_features, name="head"),
        reshape=keras.layers.Reshape((cfg.horizon, cfg.num_features), name="head_reshape"),
        denorm=Denormalize(name="forecast"),
    )


def _stack_of(model: keras.Model) -> _Stack:
    names = {layer.name for layer in model.layers}
    lstms = lstm_layers(model)
    seeded = all(f"seeder_h_{k}" in names and f"seeder_c_{k}" in names for k in range(len(lstms)))
    return _Stack(
        norm=model.get_layer("window_norm"),
        truth_norm=model.get_layer("truth_norm") if seeded else None,
        seeders=[
            (model.get_layer(f"seeder_h_{k}"), model.get_layer(f"seeder_c_{k}"))
            for k in range(len(lstms))
        ]
        if seeded
        else [],
        lstms=lstms,
        dropouts=[model.get_layer(f"dropout_{k}") for k in range(len(lstms))],
        flatten=model.get_layer("window_flat"),
        concat=model.get_layer("head_input"),
        head=model.get_layer("head"),
        reshape=model.get_layer("head_reshape"),
        denorm=model.get_layer("forecast"),
    )


def _seed(stack: _Stack, norm_truth: Any) -> list[list[Any]]:
    return [[h(norm_truth), c(norm_truth)] for h, c in stack.seeders]


def _run(
    stack: _Stack, z: Any, mean: Any, std: Any, initial: list[list[Any]] | None
) -> tuple[Any, list[StatePair]]:
    """LSTM stack plus direct head; the skip over the window carries seasonal structure."""
    x = z
    finals: list[StatePair] = []
    for k, lstm in enumerate(stack.lstms):
        if initial is None:
            out, h, c = lstm(x)
        else:
            out, h, c = lstm(x, initial_state=initial[k])
        finals.append((h, c))
        x = stack.dropouts[k](out)
    y = stack.head(stack.concat([x, stack.flatten(z)]))
    return stack.denorm([stack.reshape(y), mean, std]), finals


def _inputs(cfg: ModelConfig) -> tuple[Any, Any]:
    window = keras.Input((cfg.num_steps, cfg.num_features), name="window")
    truth = keras.Input((cfg.num_features,), name="truth")
    return window, truth


def build_forecaster(cfg: ModelConfig) -> keras.Model:
    """The trainable model: ``{"window", "truth"}`` in, (batch, horizon, features) out.

    In carry mode the seeder is trained as the cold-start seed; carried states only
    replace it at inference (``build_stepper``).
    """
    window, truth = _inputs(cfg)
    stack = _fresh_stack(cfg, seeded=cfg.seed != "zeros")
    z, mean, std = stack.norm(window)
    initial = None
    if stack.seeders:
        initial = _seed(stack, stack.truth_norm([truth, mean, std]))
    forecast, _ = _run(stack, z, mean, std, initial)
    return keras.Model({"window": window, "truth": truth}, forecast, name="forecaster")


def build_stepper(model: keras.Model, cfg: ModelConfig) -> keras.Model:
    """The inference graph over the trained model's own layers (weights shared, not copied).

    Inputs ``window``, ``truth`` and, in carry mode, ``carry`` (batch, state_width) and
    ``has_carry`` (batch,) bool; outputs ``forecast`` and the flattened final ``states``.
    """
    stack = _stack_of(model)
    if len(stack.lstms) != len(cfg.units) or any(
        lstm.units != u for lstm, u in zip(stack.lstms, cfg.units, strict=True)
    ):
        raise ValueError(
            f"model has LSTM units {[lstm.units for lstm in stack.lstms]}, config says "
            f"{list(cfg.units)}"
        )
    window, truth = _inputs(cfg)
    inputs: dict[str, Any] = {"window": window, "truth": truth}
    z, mean, std = stack.norm(window)
    initial = None
    if cfg.seed != "zeros":
        if not stack.seeders:
            raise ValueError(f"seed mode {cfg.seed!r} needs a seeder; this model was built without")
        initial = _seed(stack, stack.truth_norm([truth, mean, std]))
        if cfg.seed == "carry":
            carry = keras.Input((state_width(cfg),), name="carry")
            has_carry = keras.Input((), dtype="bool", name="has_carry")
            inputs |= {"carry": carry, "has_carry": has_carry}
            offset = 0
            for k, u in enumerate(cfg.units):
                for i, s in enumerate("hc"):
                    sel = CarrySelect(offset, u, name=f"carry_{s}_{k}")
                    initial[k][i] = sel([carry, has_carry, initial[k][i]])
                    offset += u
    forecast, finals = _run(stack, z, mean, std, initial)
    states = keras.layers.Concatenate(name="states")([t for pair in finals for t in pair])
    return keras.Model(inputs, {"forecast": forecast, "states": states}, name="stepper")


def build_stateful_twin(model: keras.Model, cfg: ModelConfig, batch_size: int) -> keras.Model:
    """The textbook mechanism with a copy of the same weights: ``stateful=True`` LSTMs.

    Takes only ``window`` (normalisation needs nothing else); each layer starts from
    whatever ``assign_states`` put in its state variables and keeps its final state,
    so consecutive calls continue the sequence.
    """
    window = keras.Input(batch_shape=(batch_size, cfg.num_steps, cfg.num_features), name="window")
    stack = _fresh_stack(cfg, seeded=False, stateful=True)
    z, mean, std = stack.norm(window)
    forecast, _ = _run(stack, z, mean, std, None)
    twin = keras.Model(window, forecast, name="stateful_twin")
    for layer in twin.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return twin


def lstm_layers(model: keras.Model) -> list[keras.layers.LSTM]:
    """The LSTM layers named ``lstm_<k>``, in stacking order."""
    found: dict[int, keras.layers.LSTM] = {}
    for layer in model.layers:
        match = _LSTM_NAME.match(layer.name)
        if match and isinstance(layer, keras.layers.LSTM):
            found[int(match.group(1))] = layer
    if sorted(found) != list(range(len(found))) or not found:
        raise ValueError(f"model {model.name!r} has no lstm_0..lstm_n stack: {sorted(found)}")
    return [found[k] for k in range(len(found))]


def state_shapes(cfg: ModelConfig, batch: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(h, c) shapes per layer for a batch."""
    return [((batch, u), (batch, u)) for u in cfg.units]


def state_width(cfg: ModelConfig) -> int:
    """Floats per sensor in the flattened layout [h_0, c_0, h_1, c_1, ...]."""
    return 2 * sum(cfg.units)


def flatten_states(states: Sequence[StatePair]) -> np.ndarray:
    """Per-layer (h, c) pairs to the (batch, state_width) rows a window store keeps."""
    return np.concatenate(
        [np.asarray(ops.convert_to_numpy(t), np.float32) for pair in states for t in pair], axis=-1
    )


def split_states(flat: np.ndarray, cfg: ModelConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """The inverse of ``flatten_states``: (batch, state_width) rows to (h, c) per layer."""
    flat = np.asarray(flat, np.float32)
    if flat.ndim != 2 or flat.shape[1] != state_width(cfg):
        raise StateShapeError(
            "carry", "h, c", (flat.shape[0] if flat.ndim else None, state_width(cfg)), flat.shape
        )
    out: list[tuple[np.ndarray, np.ndarray]] = []
    offset = 0
    for u in cfg.units:
        out.append((flat[:, offset : offset + u], flat[:, offset + u : offset + 2 * u]))
        offset += 2 * u
    return out


def _shape_of(x: Any) -> tuple[int | None, ...] | None:
    shape = getattr(x, "shape", None)
    if shape is None:
        try:
            shape = np.shape(x)
        except Exception:
            return None
    return tuple(None if d is None else int(d) for d in shape)


def assign_states(model: keras.Model, states: Sequence[StatePair]) -> None:
    """Assign into each stateful LSTM's existing state variables, all or nothing.

    Every shape is checked before the first assignment, so a bad pair never leaves
    the model half-updated; the variables are assigned, never replaced, so compiled
    functions that captured them keep seeing the new values.
    """
    layers = lstm_layers(model)
    for layer in layers:
        if not layer.stateful or layer.states is None:
            raise StateShapeError(
                layer.name, "h, c", None, None, "layer is not stateful; use build_stateful_twin"
            )
    if isinstance(states, (str, bytes)) or not isinstance(states, Sequence):
        raise StateShapeError(
            model.name, "states", (len(layers),), None, "expected one (h, c) pair per LSTM layer"
        )
    if len(states) != len(layers):
        names = ", ".join(layer.name for layer in layers)
        raise StateShapeError(
            model.name, "states", (len(layers),), (len(states),), f"one (h, c) pair for {names}"
        )
    checked: list[tuple[Any, Any]] = []
    for layer, pair in zip(layers, states, strict=True):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            received = (len(pair),) if isinstance(pair, Sequence) else _shape_of(pair)
            raise StateShapeError(layer.name, "(h, c)", (2,), received, "expected an (h, c) pair")
        for name, variable, value in zip("hc", layer.states, pair, strict=True):
            expected = tuple(int(d) for d in variable.shape)
            received = _shape_of(value)
            if received != expected:
                raise StateShapeError(layer.name, name, expected, received)
            checked.append((variable, value))
    for variable, value in checked:
        variable.assign(ops.convert_to_tensor(value, dtype=variable.dtype))


def read_states(model: keras.Model) -> list[tuple[np.ndarray, np.ndarray]]:
    """The current (h, c) of every stateful LSTM layer, as numpy copies."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for layer in lstm_layers(model):
        if not layer.stateful or layer.states is None:
            raise StateShapeError(layer.name, "h, c", None, None, "layer is not stateful")
        h, c = (np.array(ops.convert_to_numpy(v.value)) for v in layer.states)
        out.append((h, c))
    return out


def seed_states(
    model: keras.Model, window: np.ndarray, truth: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The initial (h, c) per layer this model gives a batch: the seeder's, or zeros."""
    stack = _stack_of(model)
    _, mean, std = stack.norm(ops.convert_to_tensor(window, dtype="float32"))
    if not stack.seeders:
        n = int(np.shape(window)[0])
        return [
            (np.zeros((n, lstm.units), np.float32), np.zeros((n, lstm.units), np.float32))
            for lstm in stack.lstms
        ]
    norm_truth = stack.truth_norm([ops.convert_to_tensor(truth, dtype="float32"), mean, std])
    return [
        (np.asarray(ops.convert_to_numpy(h)), np.asarray(ops.convert_to_numpy(c)))
        for h, c in _seed(stack, norm_truth)
    ]


def save_model(model: keras.Model, path: str | Path) -> None:
    """Write the ``.keras`` archive; custom layers are registered, so no code is pickled."""
    model.save(str(path))
    logger.info("model saved path=%s", path)


def load_model(path: str | Path) -> keras.Model:
    """Load with ``safe_mode=True``: a model file can never run arbitrary code."""
    return keras.saving.load_model(str(path), safe_mode=True)
