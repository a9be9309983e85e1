"""The one checked way to set and read LSTM states, and the flat per-sensor layout.

A Keras layer's state is a variable that compiled graphs read; rebinding
``layer.states[i]`` to a new tensor leaves them reading the old one. Here every
shape is checked first and the values are assigned into the existing variables.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from streamcast.config import ModelSpec
from streamcast.errors import StateShapeError
from streamcast.model.runtime import keras

ops = keras.ops

StatePair = tuple[Any, Any]

_LSTM_NAME = re.compile(r"^lstm_(\d+)$")


def lstm_layers(model: keras.Model) -> list[keras.layers.LSTM]:
    """The model's LSTM layers in stacking order, whatever their names.

    Keras keeps a functional model's layers in topological order (a Sequential model's in
    sequence), so that order is the stack's; nested models are walked in place. Layers
    named ``lstm_<k>`` (streamcast's own graphs) are ordered by ``k``.
    """
    found = list(_lstms(model))
    if not found:
        raise ValueError(f"model {model.name!r} has no LSTM layer")
    numbered = [_LSTM_NAME.match(layer.name) for layer in found]
    if all(numbered):
        keys = [int(m.group(1)) for m in numbered if m is not None]
        if sorted(keys) == list(range(len(found))):
            return [layer for _, layer in sorted(zip(keys, found, strict=True))]
    return found


def _lstms(model: keras.Model) -> Iterator[keras.layers.LSTM]:
    for layer in model.layers:
        if isinstance(layer, keras.layers.LSTM):
            yield layer
        elif isinstance(layer, keras.Model):
            yield from _lstms(layer)


def state_shapes(cfg: ModelSpec, batch: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(h, c) shapes per layer for a batch."""
    return [((batch, u), (batch, u)) for u in cfg.units]


def flatten_states(states: Sequence[StatePair]) -> np.ndarray:
    """Per-layer (h, c) pairs to the (batch, state_width) rows a window store keeps."""
    return np.concatenate(
        [np.asarray(ops.convert_to_numpy(t), np.float32) for pair in states for t in pair], axis=-1
    )


def split_states(flat: np.ndarray, cfg: ModelSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """The inverse of ``flatten_states``: (batch, state_width) rows to (h, c) per layer."""
    flat = np.asarray(flat, np.float32)
    if flat.ndim != 2 or flat.shape[1] != cfg.state_width:
        raise StateShapeError(
            "carry", "h, c", (flat.shape[0] if flat.ndim else None, cfg.state_width), flat.shape
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
