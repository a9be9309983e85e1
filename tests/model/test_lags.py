"""Seasonal lags (``model.seasonal_lag``): the model's extra inputs, served as trained.

Each forecast step h is also given the reading ``seasonal_lag`` steps before it, and
whether all of a row's lags were observed. The branch that reads them moves the
normalised forecast towards the lags by a learned share and adds a correction that
starts at zero: a fresh lag model is the plain one where the lags are unknown, and a
small step from it towards the lags where they are known.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from streamcast.config import ModelSpec, Seeding
from streamcast.learn.registry import ModelRegistry
from streamcast.model import build_forecaster, build_stepper
from streamcast.model.predictor import Predictor

from .conftest import HORIZON, NUM_FEATURES, NUM_STEPS, seasonal

LAG = 16  # longer than the window and its truth: lags read readings the window lost
ATOL = 1e-5


def lag_cfg(seeding: Seeding = "truth", units: tuple[int, ...] = (8, 8)) -> ModelSpec:
    return ModelSpec(
        num_steps=NUM_STEPS,
        num_features=NUM_FEATURES,
        units=units,
        horizon=HORIZON,
        seasonal_lag=LAG,
        dropout=0.0,
        seeding=seeding,
        calendar=False,  # the lags alone
    )


def live_lags(model: keras.Model, rng: np.random.Generator, sd: float = 0.5) -> keras.Model:
    """Random non-zero weights on every layer of the lag branch (``lag_hidden``,
    ``lag_out``, ...; its correction starts at zero), so all of it counts."""
    layers = [x for x in model.layers if x.name.startswith("lag_") and x.weights]
    assert {"lag_hidden", "lag_out"} <= {x.name for x in layers}
    for layer in layers:
        layer.set_weights([rng.normal(0.0, sd, w.shape).astype(np.float32) for w in layer.weights])
    return model


def lags_at(series: np.ndarray, last: int, period: int = LAG) -> np.ndarray:
    """(n, horizon, F): for each step h = 1..horizon after ``last``, the reading ``period``
    steps before it."""
    rows = last + np.arange(1, HORIZON + 1) - period
    assert rows[0] >= 0
    return series[:, rows]


def lagged_batch(
    n: int, rng: np.random.Generator, unknown: tuple[int, ...] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(window, truth, lags, lags_known (n,)) cut from seasonal series; rows in ``unknown``
    have no season behind them (zeros, known 0)."""
    start = LAG  # the window is series[start + 1 : start + 1 + NUM_STEPS]
    series = seasonal(n, start + 1 + NUM_STEPS, rng)
    window, truth = series[:, start + 1 :], series[:, start]
    lags = lags_at(series, start + NUM_STEPS).copy()
    known = np.ones(n, np.float32)
    known[list(unknown)] = 0.0
    lags[list(unknown)] = 0.0
    return window, truth, lags, known


def _feed(
    window: np.ndarray, truth: np.ndarray, lags: np.ndarray, known: np.ndarray
) -> dict[str, np.ndarray]:
    return {"window": window, "truth": truth, "lags": lags, "lags_known": known[:, None]}


@pytest.mark.parametrize("seeding", ["truth", "carry", "zeros"])
def test_served_forecasts_equal_the_trainable_models(
    seeding: Seeding, rng: np.random.Generator
) -> None:
    """The Predictor's compiled, padded, seeded path gives what ``model.predict`` gives
    the same inputs, unknown rows included; ``lags_known`` as (n,) or (n, 1)."""
    cfg = lag_cfg(seeding)
    model = live_lags(build_forecaster(cfg), rng)
    window, truth, lags, known = lagged_batch(6, rng, unknown=(1, 4))
    expected = model.predict(_feed(window, truth, lags, known), verbose=0)
    predictor = Predictor(model, cfg, max_batch=8)  # 6 rows run padded in bucket 8
    served = predictor.predict(window, truth, lags=lags, lags_known=known)
    np.testing.assert_allclose(served.forecast, expected, rtol=0, atol=ATOL)
    column = predictor.predict(window, truth, lags=lags, lags_known=known[:, None])
    np.testing.assert_array_equal(column.forecast, served.forecast)
    single = Predictor(model, cfg, max_batch=1)
    row = single.predict(window[2:3], truth[2:3], lags=lags[2:3], lags_known=known[2:3])
    np.testing.assert_allclose(row.forecast[0], expected[2], rtol=0, atol=ATOL)


def test_the_lags_move_the_forecast_and_unknown_lags_do_not(rng: np.random.Generator) -> None:
    cfg = lag_cfg()
    model = live_lags(build_forecaster(cfg), rng)
    predictor = Predictor(model, cfg, max_batch=8)
    window, truth, lags, known = lagged_batch(5, rng)
    given = predictor.predict(window, truth, lags=lags, lags_known=known).forecast
    blind = predictor.predict(
        window, truth, lags=np.zeros_like(lags), lags_known=np.zeros_like(known)
    ).forecast
    other = predictor.predict(window, truth, lags=lags[::-1].copy(), lags_known=known).forecast
    assert np.abs(given - blind).max(axis=(1, 2)).min() > 1e-3  # every row
    assert np.abs(given - other).max() > 1e-3  # and which lags, not only whether
    # Marked unknown, whatever the lags hold is not read.
    junk = rng.normal(0, 1e3, lags.shape).astype(np.float32)
    ignored = predictor.predict(window, truth, lags=junk, lags_known=np.zeros_like(known))
    np.testing.assert_array_equal(ignored.forecast, blind)


def test_a_fresh_lag_model_starts_from_the_plain_model(rng: np.random.Generator) -> None:
    """With the plain model's weights, a fresh lag model forecasts what the plain one
    does where the lags are unknown, whatever they hold; where they are known, it moves
    each step towards its lag by the gate's initial share (its kernel starts at zero,
    so the share is sigmoid of its bias): no correction yet."""
    cfg = lag_cfg()
    model = build_forecaster(cfg)
    plain = build_forecaster(cfg.model_copy(update={"seasonal_lag": 0}))
    assert not {"lag_features", "lag_out"} & {layer.name for layer in plain.layers}
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    window, truth, lags, known = lagged_batch(4, rng)
    base = np.asarray(plain({"window": window, "truth": truth}), np.float64)
    for junk in (0 * lags, 3 * lags - 5, rng.normal(0, 1e3, lags.shape).astype(np.float32)):
        out = np.asarray(model(_feed(window, truth, junk, 0 * known)))
        np.testing.assert_allclose(out, base, rtol=0, atol=ATOL)
    kernel, bias = model.get_layer("lag_gate").get_weights()
    assert np.all(kernel == 0) and np.all(np.abs(model.get_layer("lag_out").kernel) == 0)
    share = 1.0 / (1.0 + np.exp(-bias.astype(np.float64)))  # per feature
    assert np.all((share > 0) & (share < 0.5))  # near the plain model, not the lags
    out = np.asarray(model(_feed(window, truth, lags, known)), np.float64)
    # The lags lie well within 10 window stds, so none is clipped: in the sensor's units,
    # forecast + share * (lag - forecast).
    np.testing.assert_allclose(out, base + share * (lags - base), rtol=0, atol=ATOL)


def test_missing_or_misshapen_lags_are_refused(rng: np.random.Generator) -> None:
    cfg = lag_cfg("carry")
    model = build_forecaster(cfg)
    predictor = Predictor(model, cfg, max_batch=4)
    window, truth, lags, known = lagged_batch(3, rng)
    with pytest.raises(ValueError, match=r"pass lags$"):
        predictor.predict(window, truth)
    with pytest.raises(ValueError, match="pass lags_known"):
        predictor.predict(window, truth, lags=lags)
    carry = np.zeros((3, cfg.state_width), np.float32)
    with pytest.raises(ValueError, match=r"pass lags$"):
        predictor.predict(window, truth, carry, lags_known=known)
    bad = {
        r"lags must be \(3, 4, 2\), got \(3, 3, 2\)": (lags[:, 1:], known),
        r"lags must be \(3, 4, 2\), got \(3, 4, 1\)": (lags[:, :, :1], known),
        r"lags must be \(3, 4, 2\), got \(2, 4, 2\)": (lags[:2], known),
        r"lags must be \(3, 4, 2\), got \(3, 8\)": (lags.reshape(3, 8), known),
        r"lags_known must be \(3, 1\), got \(2,\)": (lags, known[:2]),
        r"lags_known must be \(3, 1\), got \(3, 2\)": (lags, np.ones((3, 2))),
    }
    for message, (given, flags) in bad.items():
        with pytest.raises(ValueError, match=message):
            predictor.predict(window, truth, carry, lags=given, lags_known=flags)
    # The graphs are built for the model's own inputs, and say which is missing.
    with pytest.raises(ValueError, match="seasonal-lag"):
        build_stepper(model, cfg.model_copy(update={"seasonal_lag": 0}))
    plain_cfg = cfg.model_copy(update={"seasonal_lag": 0})
    with pytest.raises(ValueError, match="seasonal-lag"):
        build_stepper(build_forecaster(plain_cfg), cfg)
    # A model without lags ignores any it is offered.
    plain = Predictor(build_forecaster(plain_cfg), plain_cfg, max_batch=4)
    np.testing.assert_array_equal(
        plain.predict(window, truth, lags=lags, lags_known=known).forecast,
        plain.predict(window, truth).forecast,
    )


def test_a_saved_lag_model_reloads_through_the_registry(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Saved and loaded in safe mode, with its spec: the same forecasts, seeded and carried."""
    cfg = lag_cfg("carry")
    model = live_lags(build_forecaster(cfg), rng)
    window, truth, lags, known = lagged_batch(5, rng, unknown=(3,))
    carry = rng.standard_normal((5, cfg.state_width)).astype(np.float32)
    has_carry = np.array([True, False, True, False, True])
    before = Predictor(model, cfg, max_batch=8, jit_compile="off")
    expected = before.predict(window, truth, carry, has_carry, lags=lags, lags_known=known)

    registry = ModelRegistry(tmp_path / "reg")
    version = registry.save(model, cfg)
    loaded = registry.load(version, expect=cfg)
    assert loaded.cfg == cfg and loaded.cfg.seasonal_lag == LAG
    np.testing.assert_array_equal(
        loaded.model.predict_on_batch(_feed(window, truth, lags, known)),
        model.predict_on_batch(_feed(window, truth, lags, known)),
    )
    after = Predictor(loaded.model, loaded.cfg, max_batch=8, jit_compile="off")
    served = after.predict(window, truth, carry, has_carry, lags=lags, lags_known=known)
    np.testing.assert_array_equal(served.forecast, expected.forecast)
    np.testing.assert_array_equal(served.states, expected.states)
    blind = after.predict(window, truth, carry, has_carry, lags=0 * lags, lags_known=0 * known)
    assert np.abs(blind.forecast - served.forecast).max() > 1e-3  # the loaded branch is live
