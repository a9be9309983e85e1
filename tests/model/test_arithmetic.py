"""Numbers of every size: the model's arithmetic stays finite for any finite float32 input,
a signal far smaller than 1 is not flattened by a fixed floor, and forecasts keep their
significant digits on the wire."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import keras
import numpy as np
import orjson
import pytest
import tensorflow as tf

from streamcast.model import build_forecaster
from streamcast.model.layers import Denormalize, Standardize, WindowNormalization
from streamcast.model.predictor import Predictor
from streamcast.stream.messages import encode_forecasts

from .conftest import HORIZON, NUM_FEATURES, NUM_STEPS, make_cfg, seasonal, split

FLOAT32_MAX = float(np.finfo(np.float32).max)
EPS = float(np.finfo(np.float32).eps)
T = np.arange(NUM_STEPS, dtype=np.float64)[:, None] * np.ones((1, NUM_FEATURES))
WIGGLE = np.sin(T / 2.0)  # (steps, features), amplitude 1 around 0


def _np(x: object) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def _hostile(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Window and truth per case, at the edges of float32: the limits, mixed signs, tiny, flat."""
    full = np.ones((NUM_STEPS, NUM_FEATURES))
    alternating = np.where(T % 2 == 0, 1.0, -1.0)
    cases = {
        "+3e38 flat": (3e38 * full, [-3e38, 3e38]),
        "-3e38 flat": (-3e38 * full, [3e38, -3e38]),
        "±3e38 alternating": (3e38 * alternating, [3e38, 3e38]),
        "±max uniform": (rng.uniform(-FLOAT32_MAX, FLOAT32_MAX, full.shape), [FLOAT32_MAX] * 2),
        "max with 0": (np.where(T == 3, FLOAT32_MAX, 0.0), [-FLOAT32_MAX, 0.0]),
        "1e-9 wiggle at 0": (1e-9 * WIGGLE, [1.0, -1.0]),
        "1e-9 wiggle at 1": (1.0 + 1e-9 * WIGGLE, [1.0, 1.0 + 1e-9]),
        "1e-9 wiggle at 1e6": (1e6 + 1e-9 * WIGGLE, [1e6, -1e6]),
        "all zero": (0.0 * full, [3e38, 0.0]),
        "subnormal": (1e-45 * full, [0.0, 0.0]),
        "21.4 flat": (21.4 * full, [21.4, 21.4]),
        "-1e-20 flat": (-1e-20 * full, [-1e-20, 1e-20]),
    }
    return {
        name: (np.asarray(w, np.float32), np.asarray(t, np.float32)[:NUM_FEATURES])
        for name, (w, t) in cases.items()
    }


def _stacked(rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    cases = _hostile(rng)
    return (
        list(cases),
        np.stack([w for w, _ in cases.values()]),
        np.stack([t for _, t in cases.values()]),
    )


def _randomised(seeding: str = "truth", sd: float = 0.5) -> keras.Model:
    """An untrained forecaster with fixed random weights, biases included, so a constant
    input does not map to a zero forecast by accident."""
    model = build_forecaster(make_cfg((8, 16), seeding))  # type: ignore[arg-type]
    rng = np.random.default_rng(11)
    for w in model.weights:
        w.assign(rng.normal(0.0, sd, w.shape).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return _randomised()


@pytest.fixture
def check_numerics() -> Iterator[None]:
    """Every op's output is checked for inf and NaN (TensorFlow only)."""
    tf.debugging.enable_check_numerics()
    try:
        yield
    finally:
        tf.debugging.disable_check_numerics()


@pytest.mark.parametrize("seeding", ["truth", "carry", "zeros"])
def test_any_finite_float32_input_gives_a_finite_forecast(seeding: str) -> None:
    cfg = make_cfg((8, 16), seeding)  # type: ignore[arg-type]
    model = build_forecaster(cfg)
    names, windows, truths = _stacked(np.random.default_rng(3))
    n = len(names)
    with np.errstate(all="ignore"):
        predictor = Predictor(model, cfg, max_batch=16, jit_compile="off")
        carry = np.full((n, cfg.state_width), 1e6, np.float32)
        out = predictor.predict(windows, truths, carry if seeding == "carry" else None)
    assert out.forecast.shape == (n, HORIZON, NUM_FEATURES)
    assert np.isfinite(out.forecast).all()
    assert np.isfinite(out.states).all()
    row = dict(zip(names, out.forecast, strict=True))
    # A flat window is forecast at its level, whatever the level.
    np.testing.assert_allclose(row["21.4 flat"], 21.4, rtol=1e-5)
    np.testing.assert_allclose(row["-1e-20 flat"], -1e-20, rtol=1e-5)
    np.testing.assert_allclose(row["+3e38 flat"], 3e38, rtol=1e-5)
    np.testing.assert_allclose(row["-3e38 flat"], -3e38, rtol=1e-5)
    assert np.all(np.abs(row["all zero"]) <= 1e-28)
    assert np.all(np.abs(row["1e-9 wiggle at 0"]) < 1e-7)


def test_no_intermediate_overflows(check_numerics: None) -> None:
    """Not only the forecast: no op on the way (truth against the window, denormalising)
    passes through inf, also with a head that extrapolates far (a model trained to
    answer 1e6 window-stds away)."""
    names, windows, truths = _stacked(np.random.default_rng(5))
    model = _randomised("truth")
    head_bias = model.get_layer("head").bias
    head_bias.assign(np.where(np.arange(head_bias.shape[0]) % 2 == 0, 1e6, -1e6))
    out = _np(model({"window": windows, "truth": truths}))
    assert np.isfinite(out).all()
    row = dict(zip(names, out, strict=True))
    # Extrapolated past float32's range: held at the limit, with the head's sign.
    assert np.abs(row["±3e38 alternating"]).max() == FLOAT32_MAX


def test_gradients_stay_finite_at_the_limits() -> None:
    """To the weights and to the inputs (no 0 * inf where a clip or floor saturates)."""
    model = build_forecaster(make_cfg((8,), "truth"))
    _, windows, truths = _stacked(np.random.default_rng(4))
    window, truth = tf.constant(windows), tf.constant(truths)
    with tf.GradientTape() as tape:
        tape.watch([window, truth])
        out = model({"window": window, "truth": truth}, training=True)
        loss = tf.reduce_mean(tf.abs(out / 1e38))
    grads = tape.gradient(loss, [window, truth, *model.trainable_weights])
    assert all(np.isfinite(g.numpy()).all() for g in grads if g is not None)


# (level, amplitude): 1e-9 on 0, on 1e-7 and (below one ulp) on 1 and 5e4; ~100 ulps elsewhere.
WIGGLES = [(0.0, 1e-9), (1e-7, 1e-9), (1.0, 1e-9), (1.0, 1e-5), (5e4, 1e-9), (5e4, 0.5),
           (-1e6, 8.0), (1e20, 1e16), (-3e38, 1e33)]  # fmt: skip


@pytest.mark.parametrize(("level", "amplitude"), WIGGLES)
def test_a_small_wiggle_is_normalised_to_unit_scale(level: float, amplitude: float) -> None:
    """Whatever float32 holds of a wiggle is brought to unit scale, not floored flat.

    Float32 keeps about 7 digits: 1e-9 around 1.0 or 5e4 is below one ulp, so that
    window *is* constant once it is float32 (z exactly 0, finite); around 0 or 1e-7
    the same 1e-9 is a full signal, and so is a wiggle of ~100 ulps at any level.
    """
    window = (level + amplitude * WIGGLE)[None].astype(np.float32)
    z, mean, std = (_np(a) for a in WindowNormalization()(window))
    z_unit, _, std_unit = (_np(a) for a in WindowNormalization()(WIGGLE[None].astype(np.float32)))
    assert np.isfinite(z).all() and np.isfinite(mean).all() and np.isfinite(std).all()
    ulp = float(np.spacing(np.float32(abs(level))))
    if amplitude < 4 * ulp:
        assert np.all(window == window[:, :1]) and np.all(z == 0.0)
        return
    # What float32 rounding does to the shape, in units of its spread.
    tolerance = 2 * ulp / (amplitude * float(std_unit.min())) + 1e-5
    np.testing.assert_allclose(z, z_unit, atol=tolerance)
    np.testing.assert_allclose(std, amplitude * std_unit, rtol=tolerance)
    np.testing.assert_allclose(mean, level, rtol=1e-6, atol=amplitude)


@pytest.mark.parametrize(
    "level", [0.0, 21.4, -21.4, 1e-9, -1e-30, 1e-45, 1e20, -3e38, FLOAT32_MAX, -FLOAT32_MAX]
)
def test_a_constant_window_is_centred_exactly(level: float) -> None:
    """Zero variance: z is exactly 0, the mean is the level, the std a finite floor
    relative to the level (1e-30 at most for an all-zero window)."""
    window = np.full((1, NUM_STEPS, NUM_FEATURES), level, np.float32)
    z, mean, std = (_np(a) for a in WindowNormalization()(window))
    assert np.all(z == 0.0)
    if abs(level) < np.finfo(np.float32).tiny:  # a subnormal may be read as 0 (flush to zero)
        assert np.all((mean == window[:, 0]) | (mean == 0.0))
    else:
        np.testing.assert_array_equal(mean, window[:, 0])
    assert np.all(std > 0) and np.isfinite(std).all()
    assert np.all(std <= max(1e-6 * abs(float(window.flat[0])), 1e-30) * (1 + 4 * EPS))


def test_an_absolute_floor_saved_with_a_model_is_kept() -> None:
    """Models saved before floors were relative carry ``floor=1e-3`` in their config."""
    old = WindowNormalization.from_config(
        WindowNormalization(floor=1e-3, relative_floor=1e-5, name="window_norm").get_config()
    )
    window = (1.0 + 1e-4 * WIGGLE)[None].astype(np.float32)
    _, _, std_old = (_np(a) for a in old(window))
    _, _, std_new = (_np(a) for a in WindowNormalization()(window))
    np.testing.assert_allclose(std_old, 1e-3, rtol=1e-6)
    assert np.all(std_new < 1e-4)


def _seasonal_batch() -> tuple[np.ndarray, np.ndarray]:
    return split(seasonal(6, NUM_STEPS + 1, np.random.default_rng(0)))


def _representable(a: float, b: float, spread: float) -> bool:
    """``a * window + b`` keeps the window's shape to 1e-3 of its spread in float32."""
    return abs(b) * EPS <= 1e-3 * a * spread


@pytest.mark.parametrize(
    ("a", "b"), list(itertools.product([1e-9, 1e-3, 1.0, 1e3, 1e20], [0, 1, -1e6]))
)
def test_scale_and_shift_move_the_forecast_alike(model: keras.Model, a: float, b: float) -> None:
    """forecast(a * window + b) == a * forecast(window) + b to float32 precision: no
    floor anywhere is absolute. Where float32 cannot hold the window at ``b`` (1e-9
    around 1, 1 around -1e6), the forecast is still finite and at the level."""
    window, truth = _seasonal_batch()
    base = _np(model({"window": window, "truth": truth})).astype(np.float64)
    moved = _np(
        model(
            {
                "window": (a * window.astype(np.float64) + b).astype(np.float32),
                "truth": (a * truth.astype(np.float64) + b).astype(np.float32),
            }
        )
    ).astype(np.float64)
    assert np.isfinite(moved).all()
    size = a * np.maximum(np.abs(window).max(axis=(1, 2)), np.abs(base).max(axis=(1, 2))) + abs(b)
    error = np.abs(moved - (a * base + b)).max(axis=(1, 2)) / (EPS * size)
    spread = float(window.std(axis=1).min())
    assert error.max() <= (16 if _representable(a, b, spread) else 256), error


@pytest.mark.parametrize("k", [-90, -60, -20, 20, 60, 120])
def test_a_power_of_two_rescale_is_exact(model: keras.Model, k: int) -> None:
    """Scaling by 2**k is exact in float32, and so is the model's answer: bit for bit."""
    window, truth = _seasonal_batch()
    factor = np.float32(2.0**k)
    base = _np(model({"window": window, "truth": truth}))
    scaled = _np(model({"window": window * factor, "truth": truth * factor}))
    np.testing.assert_array_equal(scaled, base * factor)


def test_truth_far_from_the_window_is_standardised_without_overflow() -> None:
    """+max against a mean of -5e37 is 2.18 stds, not the clip reached through inf."""
    standardize = Standardize()
    mean = np.array([[-5.47e37, -3e38, 5.0]], np.float32)
    std = np.array([[1.81e38, 3e32, 1e-30]], np.float32)
    truth = np.array([[FLOAT32_MAX, 3e38, 5.0]], np.float32)
    z = _np(standardize([truth, mean, std]))
    expected = (FLOAT32_MAX - mean[0, 0].astype(np.float64)) / std[0, 0].astype(np.float64)
    np.testing.assert_allclose(z[0, 0], expected, rtol=1e-6)
    assert z[0, 1] == 10.0 and z[0, 2] == 0.0


def test_denormalize_saturates_at_the_float32_limit() -> None:
    """A forecast past float32's range is held at its limit; one inside is exact."""
    y = np.array([[[1e30], [-1e30], [FLOAT32_MAX], [-0.5]]], np.float32)
    mean = np.array([[3e38]], np.float32)
    std = np.array([[3e38]], np.float32)
    out = _np(Denormalize()([y, mean, std]))
    np.testing.assert_array_equal(out[0, :3, 0], [FLOAT32_MAX, -FLOAT32_MAX, FLOAT32_MAX])
    np.testing.assert_allclose(out[0, 3, 0], 1.5e38, rtol=1e-7)


def test_forecasts_keep_their_significant_digits_on_the_wire() -> None:
    """Shortest float32 text, not 6 decimals: tiny and huge forecasts read back the same."""
    values = np.array([1e-9, 3e38, 21.4, -1e-30], np.float32)
    forecasts = values.reshape(1, len(values), 1)
    (payload,) = encode_forecasts(["s"], [0.0], [60.0], forecasts, 1.0, 1, "truth")
    decoded = np.asarray(orjson.loads(payload)["values"], np.float64).astype(np.float32)
    np.testing.assert_array_equal(decoded.reshape(-1).view(np.uint32), values.view(np.uint32))
    assert b"21.4" in payload and b"21.39999" not in payload


# ---------------------------------------------------------------------------------------------
# Seasonal lags at the edges of float32: standardised on the window's scale, like the truth.

LAG = 16


def _lag_cases() -> dict[str, np.ndarray]:
    """(horizon, features) lags: the limits, mixed signs, tiny, and zeros."""
    steps = np.arange(HORIZON, dtype=np.float64)[:, None] * np.ones((1, NUM_FEATURES))
    alternating = np.where(steps % 2 == 0, 1.0, -1.0)
    cases = {
        "+3e38": 3e38 + 0 * steps,
        "-3e38": -3e38 + 0 * steps,
        "±3e38": 3e38 * alternating,
        "±max": FLOAT32_MAX * alternating,
        "1e-9 wiggle at 0": 1e-9 * np.sin(steps / 2.0 + 1.0),
        "1e-9 wiggle at 1": 1.0 + 1e-9 * np.sin(steps / 2.0 + 1.0),
        "zeros": 0 * steps,
    }
    return {name: np.asarray(v, np.float32) for name, v in cases.items()}


def _lag_model(seeding: str, sd: float = 0.5) -> tuple[keras.Model, object]:
    """An untrained lag model with fixed random weights everywhere, its lag branch included."""
    cfg = make_cfg((8, 16), seeding).model_copy(update={"seasonal_lag": LAG})  # type: ignore[arg-type]
    model = build_forecaster(cfg)
    rng = np.random.default_rng(12)
    for w in model.weights:
        w.assign(rng.normal(0.0, sd, w.shape).astype(np.float32))
    return model, cfg


def _every_pairing() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every hostile window with every hostile lag: (window, truth, lags, known)."""
    _, windows, truths = _stacked(np.random.default_rng(6))
    cases = list(_lag_cases().values())
    w = np.repeat(windows, len(cases), axis=0)
    t = np.repeat(truths, len(cases), axis=0)
    lags = np.tile(np.stack(cases), (len(windows), 1, 1))
    known = np.ones((len(w), 1), np.float32)
    known[::5] = 0.0  # some rows without a season (their lags are then not read)
    return w, t, lags, known


@pytest.mark.parametrize("seeding", ["truth", "carry"])
def test_lags_at_any_finite_float32_value_give_finite_forecasts(seeding: str) -> None:
    model, cfg = _lag_model(seeding)
    window, truth, lags, known = _every_pairing()
    n = len(window)
    with np.errstate(all="ignore"):
        predictor = Predictor(model, cfg, max_batch=128, jit_compile="off")  # type: ignore[arg-type]
        carry = np.full((n, 2 * (8 + 16)), 1e6, np.float32) if seeding == "carry" else None
        out = predictor.predict(window, truth, carry, lags=lags, lags_known=known)
    assert out.forecast.shape == (n, HORIZON, NUM_FEATURES)
    assert np.isfinite(out.forecast).all()
    assert np.isfinite(out.states).all()


def test_no_intermediate_overflows_with_lags(check_numerics: None) -> None:
    """No op of the lag branch (the lags against the window, the blend) passes through
    inf or NaN, whatever the window and the lags."""
    model, _ = _lag_model("truth")
    window, truth, lags, known = _every_pairing()
    feed = {"window": window, "truth": truth, "lags": lags, "lags_known": known}
    assert np.isfinite(_np(model(feed))).all()


def test_gradients_stay_finite_with_lags_at_the_limits() -> None:
    """To the weights, the truth and the lags, whatever the lags; to the window, see the
    next test."""
    model, _ = _lag_model("truth", sd=0.1)
    window, truth, lags, known = (tf.constant(a) for a in _every_pairing())
    with tf.GradientTape() as tape:
        tape.watch([window, truth, lags])
        feed = {"window": window, "truth": truth, "lags": lags, "lags_known": known}
        loss = tf.reduce_mean(tf.abs(model(feed, training=True) / 1e38))
    grads = tape.gradient(loss, [truth, lags, *model.trainable_weights])
    assert all(np.isfinite(g.numpy()).all() for g in grads if g is not None)


@pytest.mark.parametrize("far", ["truth", "lags"])
def test_window_gradients_stay_finite_with_an_input_far_off_its_scale(far: str) -> None:
    """A flat window at -1e-20 (its std floored at 1e-26) against a reading of 1: the
    truth or the lags saturate at the clip, and no gradient may pass through inf."""
    model, _ = _lag_model("truth", sd=0.1)
    window = tf.constant(np.full((1, NUM_STEPS, NUM_FEATURES), -1e-20, np.float32))
    near = np.full((1, NUM_FEATURES), -1e-20, np.float32)
    truth = tf.constant(np.ones_like(near) if far == "truth" else near)
    lags = tf.constant(
        np.full((1, HORIZON, NUM_FEATURES), 1.0 if far == "lags" else -1e-20, np.float32)
    )
    known = tf.ones((1, 1))
    feed = {"window": window, "truth": truth, "lags": lags, "lags_known": known}
    with tf.GradientTape() as tape:
        tape.watch(window)
        loss = tf.reduce_mean(tf.abs(model(feed, training=True)))
    assert np.isfinite(tape.gradient(loss, window).numpy()).all()


@pytest.mark.parametrize(("a", "b"), [(1e-9, 0.0), (1e-9, 1e-7), (1e3, -1e6), (1e20, 0.0)])
def test_lags_move_with_the_sensor_level_and_scale(a: float, b: float) -> None:
    """forecast(a x + b) == a forecast(x) + b with the lags moved alike: a 1e-9 signal's
    season is read as well as a unit one's, not floored flat."""
    model, _ = _lag_model("truth")
    rng = np.random.default_rng(1)
    series = seasonal(6, LAG + 1 + NUM_STEPS, rng).astype(np.float64)
    window, truth = split(series, LAG)
    rows = LAG + NUM_STEPS + np.arange(1, HORIZON + 1) - LAG
    lags = series[:, rows] + 0.3 * rng.standard_normal((6, HORIZON, NUM_FEATURES))
    known = np.ones((6, 1), np.float32)

    def run(x: float, y: float, lag_input: np.ndarray) -> np.ndarray:
        feed = {
            "window": (x * window + y).astype(np.float32),
            "truth": (x * truth + y).astype(np.float32),
            "lags": (x * lag_input + y).astype(np.float32),
            "lags_known": known,
        }
        return _np(model(feed)).astype(np.float64)

    base, moved = run(1.0, 0.0, lags), run(a, b, lags)
    size = a * np.maximum(np.abs(window).max(axis=(1, 2)), np.abs(base).max(axis=(1, 2))) + abs(b)
    error = np.abs(moved - (a * base + b)).max(axis=(1, 2)) / (EPS * size)
    assert error.max() <= 16, error
    # Other lags, another forecast, at this scale too.
    other = run(a, b, lags[::-1])
    assert np.abs(other - moved).max() > 1e-3 * a
