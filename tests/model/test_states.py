"""The state API: one checked way in, shapes named on every mismatch, nothing half-done."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import streamcast.model as model_module
from streamcast.errors import StateShapeError
from streamcast.model import (
    assign_states,
    build_forecaster,
    build_stateful_twin,
    flatten_states,
    lstm_layers,
    read_states,
    seed_states,
    split_states,
    state_shapes,
)

from .conftest import make_cfg

BATCH = 3
UNITS = (8, 16, 32)


@pytest.fixture(scope="module")
def twin() -> keras.Model:
    keras.utils.set_random_seed(1)
    cfg = make_cfg(UNITS, "carry")
    return build_stateful_twin(build_forecaster(cfg), cfg, BATCH)


def random_states(rng: np.random.Generator, units: tuple[int, ...] = UNITS) -> list[Any]:
    return [
        (
            rng.standard_normal((BATCH, u)).astype(np.float32),
            rng.standard_normal((BATCH, u)).astype(np.float32),
        )
        for u in units
    ]


def test_shapes_and_width_follow_the_config() -> None:
    cfg = make_cfg(UNITS)
    assert state_shapes(cfg, 5) == [((5, 8), (5, 8)), ((5, 16), (5, 16)), ((5, 32), (5, 32))]
    assert cfg.state_width == 2 * (8 + 16 + 32)


def test_layers_are_named_and_stacked_in_order() -> None:
    cfg = make_cfg(UNITS)
    model = build_forecaster(cfg)
    layers = lstm_layers(model)
    assert [layer.name for layer in layers] == ["lstm_0", "lstm_1", "lstm_2"]
    assert [layer.units for layer in layers] == list(UNITS)
    assert [layer.return_sequences for layer in layers] == [True, True, False]
    names = {layer.name for layer in model.layers}
    assert {f"seeder_{s}_{k}" for s in "hc" for k in range(3)} <= names


def test_zeros_mode_has_no_seeder_and_seeds_zeros(rng: np.random.Generator) -> None:
    cfg = make_cfg((8, 8), "zeros")
    model = build_forecaster(cfg)
    assert not any(layer.name.startswith("seeder") for layer in model.layers)
    seeds = seed_states(model, rng.standard_normal((4, 12, 2)), rng.standard_normal((4, 2)))
    assert [(h.shape, c.shape) for h, c in seeds] == state_shapes(cfg, 4)
    assert not any(np.any(t) for pair in seeds for t in pair)


def test_seeder_states_depend_on_truth(rng: np.random.Generator) -> None:
    cfg = make_cfg(UNITS, "truth")
    model = build_forecaster(cfg)
    window = rng.standard_normal((4, 12, 2)).astype(np.float32)
    truth = rng.standard_normal((4, 2)).astype(np.float32)
    seeds = seed_states(model, window, truth)
    assert [(h.shape, c.shape) for h, c in seeds] == state_shapes(cfg, 4)
    other = seed_states(model, window, truth + 1.0)
    assert not np.allclose(seeds[0][0], other[0][0])


def test_assign_then_read_back(twin: keras.Model, rng: np.random.Generator) -> None:
    states = random_states(rng)
    assign_states(twin, states)
    for (h, c), (rh, rc) in zip(states, read_states(twin), strict=True):
        np.testing.assert_array_equal(rh, h)
        np.testing.assert_array_equal(rc, c)


def test_assign_keeps_the_same_variables(twin: keras.Model, rng: np.random.Generator) -> None:
    before = [list(layer.states) for layer in lstm_layers(twin)]
    assign_states(twin, random_states(rng))
    new = random_states(rng)
    assign_states(twin, [(keras.ops.convert_to_tensor(h), c) for h, c in new])
    for layer, old in zip(lstm_layers(twin), before, strict=True):
        assert all(v is o for v, o in zip(layer.states, old, strict=True))
    np.testing.assert_array_equal(read_states(twin)[2][0], new[2][0])


def test_assigned_states_drive_the_next_batch(twin: keras.Model, rng: np.random.Generator) -> None:
    """A compiled call sees assigned values (variables were updated, not detached)."""
    window = rng.standard_normal((BATCH, 12, 2)).astype(np.float32)
    assign_states(twin, random_states(rng))
    first = twin.predict_on_batch(window)
    assign_states(twin, random_states(rng))
    second = twin.predict_on_batch(window)
    assert not np.allclose(first, second, atol=1e-4)


def bad_count(s: list[Any]) -> list[Any]:
    return s[:-1]


def bad_batch(s: list[Any]) -> list[Any]:
    return [(np.zeros((BATCH + 1, 8), np.float32), s[0][1]), *s[1:]]


def bad_units(s: list[Any]) -> list[Any]:
    return [s[0], (s[1][0], np.zeros((BATCH, 8), np.float32)), s[2]]


def truth_as_state(s: list[Any]) -> list[Any]:
    return [(np.zeros((BATCH, 2), np.float32), s[0][1]), *s[1:]]


def bad_rank(s: list[Any]) -> list[Any]:
    return [s[0], s[1], (s[2][0], np.zeros((32,), np.float32))]


def triple(s: list[Any]) -> list[Any]:
    return [s[0], s[1], (s[2][0], s[2][1], s[2][1])]


MISMATCHES = [
    (bad_count, "stateful_twin", "states", (3,), (2,)),
    (bad_batch, "lstm_0", "h", (BATCH, 8), (BATCH + 1, 8)),
    (bad_units, "lstm_1", "c", (BATCH, 16), (BATCH, 8)),
    (truth_as_state, "lstm_0", "h", (BATCH, 8), (BATCH, 2)),
    (bad_rank, "lstm_2", "c", (BATCH, 32), (32,)),
    (triple, "lstm_2", "(h, c)", (2,), (3,)),
]


@pytest.mark.parametrize(
    ("corrupt", "layer", "state", "expected", "received"),
    MISMATCHES,
    ids=[m[0].__name__ for m in MISMATCHES],
)
def test_mismatch_is_named_and_nothing_is_assigned(
    twin: keras.Model,
    rng: np.random.Generator,
    corrupt: Any,
    layer: str,
    state: str,
    expected: tuple[int, ...],
    received: tuple[int, ...],
) -> None:
    current = random_states(rng)
    assign_states(twin, current)
    with pytest.raises(StateShapeError) as info:
        assign_states(twin, corrupt(random_states(rng)))
    err = info.value
    assert (err.layer, err.state, err.expected, err.received) == (
        layer,
        state,
        expected,
        received,
    )
    message = str(err)
    for part in (repr(layer), repr(state), str(expected), str(received)):
        assert part in message
    for (h, c), (rh, rc) in zip(current, read_states(twin), strict=True):
        np.testing.assert_array_equal(rh, h)
        np.testing.assert_array_equal(rc, c)


def test_stateless_model_refuses_assignment(rng: np.random.Generator) -> None:
    cfg = make_cfg((8, 8))
    model = build_forecaster(cfg)
    with pytest.raises(StateShapeError, match=r"'lstm_0'.*not stateful"):
        assign_states(model, random_states(rng, (8, 8)))
    with pytest.raises(StateShapeError, match="not stateful"):
        read_states(model)


def test_flatten_and_split_round_trip(rng: np.random.Generator) -> None:
    cfg = make_cfg(UNITS)
    states = random_states(rng)
    flat = flatten_states(states)
    assert flat.shape == (BATCH, cfg.state_width)
    np.testing.assert_array_equal(flat[:, 8:16], states[0][1])  # [h_0, c_0, h_1, ...]
    for (h, c), (sh, sc) in zip(states, split_states(flat, cfg), strict=True):
        np.testing.assert_array_equal(sh, h)
        np.testing.assert_array_equal(sc, c)
    with pytest.raises(StateShapeError, match=r"\(3, 112\).*\(3, 111\)"):
        split_states(flat[:, :-1], cfg)


@pytest.mark.parametrize("module", ["__init__", "graph", "layers", "states"])
def test_the_graph_modules_stay_backend_agnostic(module: str) -> None:
    """The model's layers, graphs and state API use ``keras.layers`` / ``keras.ops`` only,
    so the same model runs on any Keras backend; backend-specific code (compilation,
    device discovery) lives in ``predictor`` and ``runtime``. Imports inside functions
    count too."""
    path = Path(model_module.__file__).with_name(f"{module}.py")
    tree = ast.parse(path.read_text(), str(path))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert imported, f"no imports found in {path}: the parse went wrong"
    assert not imported & {"tensorflow", "jax", "torch"}, path


def _seed_style_model() -> keras.Model:
    """As people write it: two stateful LSTMs of 8 and 16 units under Keras's default
    names (``lstm``, ``lstm_1``, or higher numbers when others were built before)."""
    inputs = keras.Input(batch_shape=(10, 96, 2))
    x = keras.layers.LSTM(8, stateful=True, return_sequences=True)(inputs)
    x = keras.layers.LSTM(16, stateful=True)(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _seed_sequential() -> keras.Model:
    """The same stack as a ``Sequential``, as the seed's own script builds it."""
    return keras.Sequential(
        [
            keras.Input(batch_shape=(10, 96, 2)),
            keras.layers.LSTM(8, stateful=True, return_sequences=True),
            keras.layers.LSTM(16, stateful=True),
            keras.layers.Dense(2),
        ]
    )


@pytest.mark.parametrize(
    "build", [_seed_style_model, _seed_sequential], ids=["functional", "sequential"]
)
def test_the_state_api_works_on_any_keras_lstm_stack_whatever_its_names(build: Any) -> None:
    model = build()
    layers = lstm_layers(model)
    assert [layer.units for layer in layers] == [8, 16]
    variables = [list(layer.states) for layer in layers]
    rng = np.random.default_rng(0)
    states = [
        (
            rng.standard_normal((10, u)).astype(np.float32),
            rng.standard_normal((10, u)).astype(np.float32),
        )
        for u in (8, 16)
    ]
    assign_states(model, states)
    # The values landed in the layers' own variables: the same objects, now holding them.
    for layer, before, (h, c) in zip(layers, variables, states, strict=True):
        assert all(a is b for a, b in zip(layer.states, before, strict=True))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.states[0]), h)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.states[1]), c)
    for (h, c), (want_h, want_c) in zip(read_states(model), states, strict=True):
        np.testing.assert_array_equal(h, want_h)
        np.testing.assert_array_equal(c, want_c)
    # A (10, 2) reading offered as the 8-unit layer's h: refused, named, nothing assigned.
    truth = rng.standard_normal((10, 2)).astype(np.float32)
    with pytest.raises(StateShapeError) as err:
        assign_states(model, [(truth, truth), states[1]])
    e = err.value
    assert (e.layer, e.state, e.expected, e.received) == (layers[0].name, "h", (10, 8), (10, 2))
    for part in (layers[0].name, "'h'", "(10, 8)", "(10, 2)"):
        assert part in str(e)
    np.testing.assert_array_equal(read_states(model)[0][0], states[0][0])
    with pytest.raises(StateShapeError, match=r"\(10, 8\).*\(10, 16\)|\(10, 16\).*\(10, 8\)"):
        assign_states(model, [states[1], states[0]])  # the pairs swapped: 16 units into 8


def test_nested_models_are_walked_in_place() -> None:
    inner = _seed_style_model()
    outer = keras.Model(inner.inputs, inner(inner.inputs[0]))
    assert [layer.units for layer in lstm_layers(outer)] == [8, 16]
    with pytest.raises(ValueError, match="no LSTM layer"):
        lstm_layers(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
