"""The compiled fast path equals the textbook ``stateful=True`` mechanism, and the LSTM
equals a plain numpy reference; plus the model-level properties the daemon relies on."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from streamcast.config import Seeding
from streamcast.model import (
    assign_states,
    build_chain_trainer,
    build_forecaster,
    build_stateful_twin,
    flatten_states,
    read_states,
    seed_states,
    split_states,
    state_shapes,
)
from streamcast.model.predictor import Predictor

from .conftest import HORIZON, NUM_STEPS, UNIT_STACKS, make_cfg, seasonal, split
from .test_lags import LAG, lags_at, live_lags

ATOL = 1e-5
# Zeros mode is left out: its twin starts from zero states, as the model itself does, so
# the comparison could not tell a wrong seed from a right one.
SEEDED_MODES: list[Seeding] = ["truth", "carry"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def numpy_lstm(
    x: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    kernel: np.ndarray,
    recurrent: np.ndarray,
    bias: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference LSTM, Keras gate order (i, f, c, o); returns the final (h, c)."""
    x, h, c = x.astype(np.float64), h.astype(np.float64), c.astype(np.float64)
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
    return h, c


@pytest.mark.parametrize(
    ("units", "mode", "lag"),
    [
        *(
            pytest.param(u, m, 0, id=f"{m}-{'x'.join(map(str, u))}")
            for m in SEEDED_MODES
            for u in UNIT_STACKS
        ),
        pytest.param((8, 8), "carry", LAG, id="carry-8x8-lags"),
    ],
)
def test_fast_path_matches_stateful_twin(
    units: tuple[int, ...], mode: Seeding, lag: int, rng: np.random.Generator
) -> None:
    cfg = make_cfg(units, mode).model_copy(update={"seasonal_lag": lag})
    model = build_forecaster(cfg)
    n = 6
    if lag:  # windows with a season behind them; its branch made to count
        live_lags(model, rng)
        series = seasonal(n, LAG + 1 + NUM_STEPS, rng)
        window, truth = split(series, LAG)
        lags = lags_at(series, LAG + NUM_STEPS)
        known = np.array([[1], [1], [0], [1], [0], [1]], np.float32)
        extra = {"lags": lags * known[:, :, None], "lags_known": known}
    else:
        window, truth = split(seasonal(n, NUM_STEPS + 1, rng))
        extra = {}
    predictor = Predictor(model, cfg, max_batch=8)  # n=6 runs padded in bucket 8

    if mode == "carry":
        carry = (0.5 * rng.standard_normal((n, cfg.state_width))).astype(np.float32)
        has_carry = np.array([True, False, True, True, False, True])
        fast = predictor.predict(window, truth, carry, has_carry, **extra)
        seeded = flatten_states(seed_states(model, window, truth))
        states = split_states(np.where(has_carry[:, None], carry, seeded), cfg)
    else:
        fast = predictor.predict(window, truth, **extra)
        states = seed_states(model, window, truth)

    twin = build_stateful_twin(model, cfg, n)
    assign_states(twin, states)
    slow = np.asarray(twin({"window": window, **extra} if extra else window, training=False))

    assert fast.forecast.shape == (n, cfg.horizon, cfg.num_features)
    np.testing.assert_allclose(fast.forecast, slow, rtol=0, atol=ATOL)
    np.testing.assert_allclose(fast.states, flatten_states(read_states(twin)), rtol=0, atol=ATOL)


def test_lstm_matches_numpy_reference_with_distinct_gate_weights(
    rng: np.random.Generator,
) -> None:
    """One 2-unit layer over 3 steps from a given state, checked end to end.

    Every gate gets different weights: with one constant for all, any gate order
    would give the same numbers and the test could not catch a swap.
    """
    cfg = make_cfg((2,), "carry").model_copy(update={"num_steps": 3, "horizon": 1})
    model = build_forecaster(cfg)
    lstm = model.get_layer("lstm_0")
    kernel = np.linspace(-0.6, 0.6, 2 * 8, dtype=np.float32).reshape(2, 8)
    recurrent = np.linspace(0.5, -0.5, 2 * 8, dtype=np.float32).reshape(2, 8)
    bias = np.array([0.1, -0.2, 1.0, 0.8, 0.3, -0.3, -0.1, 0.2], np.float32)
    lstm.set_weights([kernel, recurrent, bias])

    window = np.array([[[1.0, 10.0], [2.0, 14.0], [4.0, 9.0]]], np.float32)
    truth = np.array([[0.0, 12.0]], np.float32)
    h0 = np.array([[0.3, -0.2]], np.float32)
    c0 = np.array([[-0.5, 0.7]], np.float32)

    out = Predictor(model, cfg, max_batch=1).predict(
        window, truth, np.concatenate([h0, c0], axis=1)
    )

    mean = window.mean(axis=1, keepdims=True)
    std = window.std(axis=1, keepdims=True)  # far above the floor here
    z = (window - mean) / std
    h, c = numpy_lstm(z, h0, c0, kernel, recurrent, bias)
    np.testing.assert_allclose(out.states, np.concatenate([h, c], axis=1), rtol=0, atol=1e-6)

    head_kernel, head_bias = model.get_layer("head").get_weights()
    y = np.concatenate([h, z.reshape(1, -1)], axis=1) @ head_kernel + head_bias
    expected = y.reshape(1, 1, 2) * std + mean
    np.testing.assert_allclose(out.forecast, expected, rtol=0, atol=1e-5)


def test_lstm_gate_order_by_hand() -> None:
    """Biases only: i = o = 1/2, f = 3/4, g = 1/2, so c_t = 3/4 c_{t-1} + 1/4 by hand.

    From c_0 = 0.2: c = 0.4, 0.55, 0.6625 and h_3 = tanh(0.6625) / 2. Swapping any two
    of the i, f, c, o blocks changes these numbers.
    """
    cfg = make_cfg((2,), "carry").model_copy(update={"num_steps": 3, "horizon": 1})
    model = build_forecaster(cfg)
    gate = {"i": 0.0, "f": np.log(3.0), "c": np.arctanh(0.5), "o": 0.0}
    bias = np.repeat([gate[g] for g in "ifco"], 2).astype(np.float32)
    model.get_layer("lstm_0").set_weights(
        [np.zeros((2, 8), np.float32), np.zeros((2, 8), np.float32), bias]
    )
    window = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    carry = np.array([[0.9, -0.9, 0.2, 0.2]], np.float32)  # h_0 has no weight to act through
    out = Predictor(model, cfg, max_batch=1, jit_compile="off").predict(
        window, np.zeros((1, 2), np.float32), carry
    )
    h3 = np.tanh(0.6625) / 2
    np.testing.assert_allclose(out.states, [[h3, h3, 0.6625, 0.6625]], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("num_steps", "stride", "lag"),
    [
        pytest.param(NUM_STEPS, 1, 0, id="12-1"),
        pytest.param(NUM_STEPS, 5, 0, id="12-5"),
        pytest.param(NUM_STEPS, NUM_STEPS, 0, id="12-12"),
        pytest.param(96, 1, 0, id="96-1"),
        pytest.param(96, 96, 0, id="96-96"),
        pytest.param(NUM_STEPS, 5, LAG, id="12-5-lags"),
    ],
)
def test_carry_continues_like_the_stateful_twin(
    rng: np.random.Generator, num_steps: int, stride: int, lag: int
) -> None:
    """Each window moves on by ``stride`` readings and its states continue from the last
    window's, stepping only the new readings: what a ``stateful=True`` twin does when it
    runs those readings from the states the previous call left (``assign_states`` hands
    the seeded first window's states from a whole-window twin to the stepping one).
    With seasonal lags, each window also gets its own."""
    cfg = make_cfg((8, 16), "carry").model_copy(
        update={"num_steps": num_steps, "seasonal_lag": lag}
    )
    model = build_forecaster(cfg)
    if lag:
        live_lags(model, rng)
    n, windows = 4, 6
    lead = max(0, lag - num_steps - 1)  # readings before the first window, for its lags
    series = seasonal(n, lead + num_steps + 1 + (windows - 1) * stride, rng)
    extra: dict[str, np.ndarray] = {}

    def split_at(start: int) -> tuple[np.ndarray, np.ndarray]:
        start += lead
        if lag:
            extra["lags"] = lags_at(series, start + num_steps)
            extra["lags_known"] = np.ones((n, 1), np.float32)
        return series[:, start + 1 : start + 1 + num_steps], series[:, start]

    def twin_input(w: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        return {"window": w, **extra} if lag else w

    predictor = Predictor(model, cfg, max_batch=4, carried_steps=stride)
    assert predictor.carried_steps == stride
    carried_graph = predictor._steppers["carried"]
    assert tuple(carried_graph.get_layer("carried_steps").output.shape) == (None, stride, 2)

    whole = build_stateful_twin(model, cfg, n)
    stepping = build_stateful_twin(model, cfg, n, steps=stride)
    w, t = split_at(0)
    assign_states(whole, seed_states(model, w, t))
    out = predictor.predict(w, t, **extra)
    np.testing.assert_allclose(out.forecast, whole(twin_input(w), training=False), atol=ATOL)
    assign_states(stepping, read_states(whole))
    for j in range(1, windows):
        w, t = split_at(j * stride)
        previous = out.states
        out = predictor.predict(w, t, carry=previous, **extra)
        slow = stepping(twin_input(w), training=False)
        np.testing.assert_allclose(out.forecast, slow, rtol=0, atol=ATOL)
        np.testing.assert_allclose(out.states, flatten_states(read_states(stepping)), atol=ATOL)
    # Seeded afresh, the last window ends elsewhere (an untrained model forgets a state
    # within 96 steps: there, one window's worth of steps from it says nothing).
    cold = predictor.predict(w, t, **extra)
    if stride < 96:
        assert np.abs(out.states - cold.states).max() > 1e-3
    # The carried state is the sequence's: the last window's new readings, stepped from
    # the state before them, give it; stepping the whole window again would not.
    if stride < num_steps:
        again = Predictor(model, cfg, max_batch=4, carried_steps=num_steps)
        twice = again.predict(w, t, carry=previous, **extra)
        assert np.abs(twice.states - out.states).max() > 1e-3
    if lag:  # the lags reach the carried forecast
        blind = predictor.predict(
            w, t, carry=previous, lags=0 * extra["lags"], lags_known=0 * extra["lags_known"]
        )
        assert np.abs(blind.forecast - out.forecast).max() > 1e-3


@pytest.mark.parametrize(
    ("calendar", "lag"),
    [(False, 0), (True, 0), (False, LAG), (True, LAG)],
    ids=["plain", "calendar", "lags", "calendar-lags"],
)
def test_the_chain_trained_is_the_chain_served(
    rng: np.random.Generator, calendar: bool, lag: int
) -> None:
    """The training graph of carry mode forecasts each link of a chain exactly as the
    daemon's predictor does when it seeds the first window and steps each later one;
    each link with its own calendar and seasonal lags, where the model has them."""
    cfg = make_cfg((8, 16), "carry").model_copy(update={"calendar": calendar, "seasonal_lag": lag})
    model = build_forecaster(cfg)
    if calendar:  # the calendar's output layer starts at zero: make it count
        out_layer = model.get_layer("calendar_out")
        out_layer.set_weights([rng.normal(0, 0.5, w.shape) for w in out_layer.get_weights()])
    if lag:
        live_lags(model, rng)
    n, links = 3, 7
    lead = max(0, lag - NUM_STEPS - 1)  # readings before the first window, for its lags
    series = seasonal(n, lead + NUM_STEPS + links, rng)
    windows = np.stack(
        [series[:, lead + j + 1 : lead + j + 1 + NUM_STEPS] for j in range(links)], axis=1
    )
    truth = series[:, lead]
    cal = rng.uniform(0, 1, (n, links, 3)).astype(np.float32)
    extra: dict[str, np.ndarray] = {"calendar": cal} if calendar else {}
    if lag:
        lags = np.stack([lags_at(series, lead + j + NUM_STEPS) for j in range(links)], axis=1)
        known = np.ones((n, links, 1), np.float32)
        known[1, :3] = 0.0  # a sensor whose first links have no season behind them yet
        extra |= {"lags": lags * known[..., None], "lags_known": known}
    feed = {"windows": windows, "truth": truth} | extra
    trained = np.asarray(build_chain_trainer(model, cfg, links)(feed, training=False))
    assert trained.shape == (n, links, HORIZON, 2)

    def link(j: int) -> dict[str, np.ndarray]:
        return {name: value[:, j] for name, value in extra.items()}

    predictor = Predictor(model, cfg, max_batch=4, carried_steps=1)
    out = predictor.predict(windows[:, 0], truth, **link(0))
    np.testing.assert_allclose(trained[:, 0], out.forecast, rtol=0, atol=ATOL)
    for j in range(1, links):
        out = predictor.predict(windows[:, j], series[:, lead + j], carry=out.states, **link(j))
        np.testing.assert_allclose(trained[:, j], out.forecast, rtol=0, atol=ATOL)
    if lag:  # the chain's lag path carries weight too
        feed["lags_known"] = np.zeros_like(known)
        blind = np.asarray(build_chain_trainer(model, cfg, links)(feed, training=False))
        assert np.abs(blind - trained).max() > 1e-3


def test_save_load_round_trip_is_identical(tmp_path: Path, rng: np.random.Generator) -> None:
    cfg = make_cfg((8, 16, 32), "carry")
    model = build_forecaster(cfg)
    n = 5
    window, truth = split(seasonal(n, NUM_STEPS + 1, rng))
    carry = rng.standard_normal((n, cfg.state_width)).astype(np.float32)
    before = Predictor(model, cfg, max_batch=8, jit_compile="off")  # adds stepper nodes first
    expected = before.predict(window, truth, carry)

    path = tmp_path / "model.keras"
    model.save(str(path))
    loaded = keras.saving.load_model(str(path), safe_mode=True)

    feed = {"window": window, "truth": truth}
    np.testing.assert_array_equal(loaded.predict_on_batch(feed), model.predict_on_batch(feed))
    after = Predictor(loaded, cfg, max_batch=8, jit_compile="off").predict(window, truth, carry)
    np.testing.assert_array_equal(after.forecast, expected.forecast)
    np.testing.assert_array_equal(after.states, expected.states)


def test_forecast_follows_the_sensor_level_and_scale(rng: np.random.Generator) -> None:
    """Instance normalisation: f(a x + b) = a f(x) + b, so any sensor range works."""
    cfg = make_cfg((8, 8), "truth")
    model = build_forecaster(cfg)
    window, truth = split(seasonal(4, NUM_STEPS + 1, rng))
    base = model.predict_on_batch({"window": window, "truth": truth})
    a, b = 250.0, 1000.0
    moved = model.predict_on_batch({"window": a * window + b, "truth": a * truth + b})
    np.testing.assert_allclose(moved, a * base + b, rtol=1e-5, atol=2e-3)


def test_gradients_reach_the_seeder_and_stay_finite_on_flat_windows(
    rng: np.random.Generator,
) -> None:
    cfg = make_cfg((8, 16), "carry")
    model = build_forecaster(cfg)
    window, truth = split(seasonal(4, NUM_STEPS + 1, rng))
    window[0] = 3.0  # a stuck sensor: zero variance
    truth[0] = 3.0
    target = rng.standard_normal((4, cfg.horizon, cfg.num_features)).astype(np.float32)
    with tf.GradientTape() as tape:
        pred = model({"window": window, "truth": truth}, training=True)
        loss = keras.ops.mean(keras.ops.square(pred - target))
    grads = tape.gradient(loss, model.trainable_variables)
    by_name = {v.path: g for v, g in zip(model.trainable_variables, grads, strict=True)}
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
    assert np.any(by_name["seeder_c_1/kernel"] != 0)
    assert np.any(by_name["lstm_0/lstm_cell/kernel"] != 0)


def test_model_trains_on_seasonal_data(rng: np.random.Generator) -> None:
    cfg = make_cfg((8, 8), "truth")
    model = build_forecaster(cfg)
    series = seasonal(256, NUM_STEPS + 1 + cfg.horizon, rng)
    window, truth = split(series)
    target = series[:, NUM_STEPS + 1 :]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    history = model.fit(
        {"window": window, "truth": truth}, target, epochs=5, batch_size=64, verbose=0
    )
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0]


def test_seeds_are_the_seeder_applied_to_the_truth_on_the_window_scale(
    rng: np.random.Generator,
) -> None:
    """h = tanh(Dense(z)), c = Dense(z) per layer, z the truth standardised by the window's
    own mean and std and clipped at 10 std (one wild reading saturates, never explodes)."""
    cfg = make_cfg((8, 16, 32), "truth")
    model = build_forecaster(cfg)
    window, truth = split(seasonal(3, NUM_STEPS + 1, rng))
    truth[2] = window[2].mean(axis=0) + 1e3 * window[2].std(axis=0)  # far out: clipped
    seeds = seed_states(model, window, truth)
    assert [(h.shape, c.shape) for h, c in seeds] == state_shapes(cfg, 3)

    mean, std = window.mean(axis=1), window.std(axis=1)  # far above the floor here
    z = np.clip((truth - mean) / std, -10.0, 10.0)
    assert np.all(z[2] == 10.0)
    for k, (h, c) in enumerate(seeds):
        h_kernel, h_bias = model.get_layer(f"seeder_h_{k}").get_weights()
        c_kernel, c_bias = model.get_layer(f"seeder_c_{k}").get_weights()
        np.testing.assert_allclose(h, np.tanh(z @ h_kernel + h_bias), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(c, z @ c_kernel + c_bias, rtol=1e-5, atol=1e-5)
