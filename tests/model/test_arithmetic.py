"""Numbers of every size: the model's arithmetic stays finite for any finite float32 input,
and a signal far smaller than 1 is not flattened by a fixed floor."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from streamcast.model import build_forecaster
from streamcast.model.layers import WindowNormalization
from streamcast.model.predictor import Predictor

from .conftest import HORIZON, NUM_FEATURES, NUM_STEPS, make_cfg

FLOAT32_MAX = float(np.finfo(np.float32).max)


def _hostile(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Windows and truths at the edges of float32: the limits, mixed signs, tiny, flat."""
    n = 8
    t = np.arange(NUM_STEPS)[None, :, None]
    windows = np.stack(
        [
            np.full((NUM_STEPS, NUM_FEATURES), 3e38),
            np.full((NUM_STEPS, NUM_FEATURES), -3e38),
            np.where(t[0] % 2 == 0, 3e38, -3e38) * np.ones((1, NUM_FEATURES)),
            1e-9 * np.sin(t[0] / 2.0) * np.ones((1, NUM_FEATURES)),
            np.zeros((NUM_STEPS, NUM_FEATURES)),
            np.full((NUM_STEPS, NUM_FEATURES), 1e-45),  # subnormal
            rng.uniform(-FLOAT32_MAX, FLOAT32_MAX, (NUM_STEPS, NUM_FEATURES)),
            np.full((NUM_STEPS, NUM_FEATURES), 21.4),
        ]
    ).astype(np.float32)
    truths = np.array(
        [
            [-3e38, 3e38],
            [3e38, -3e38],
            [3e38, 3e38],
            [1.0, -1.0],
            [3e38, 0.0],
            [0.0, 0.0],
            [FLOAT32_MAX, -FLOAT32_MAX],
            [21.4, 21.4],
        ],
        np.float32,
    )[:n, :NUM_FEATURES]
    return windows, truths


@pytest.mark.parametrize("seeding", ["truth", "carry", "zeros"])
def test_any_finite_float32_input_gives_a_finite_forecast(seeding: str) -> None:
    cfg = make_cfg((8, 16), seeding)  # type: ignore[arg-type]
    model = build_forecaster(cfg)
    windows, truths = _hostile(np.random.default_rng(3))
    with np.errstate(all="ignore"):
        predictor = Predictor(model, cfg, max_batch=8, jit_compile="off")
        carry = np.full((len(windows), cfg.state_width), 1e6, np.float32)
        out = predictor.predict(windows, truths, carry if seeding == "carry" else None)
    assert out.forecast.shape == (len(windows), HORIZON, NUM_FEATURES)
    assert np.isfinite(out.forecast).all()
    assert np.isfinite(out.states).all()
    # A flat window is forecast at its level, whatever the level.
    np.testing.assert_allclose(out.forecast[7], 21.4, rtol=0.5)
    assert np.all(out.forecast[0] > 0) and np.all(out.forecast[1] < 0)


def test_a_tiny_signal_keeps_its_shape() -> None:
    """A 1e-9 amplitude sine normalises to the same z-scores as the same sine at 1."""
    t = np.arange(NUM_STEPS, dtype=np.float32)
    shape = np.sin(t / 2.0)[None, :, None] * np.ones((1, 1, NUM_FEATURES), np.float32)
    norm = WindowNormalization()
    z_small, mean_small, std_small = (keras.ops.convert_to_numpy(a) for a in norm(1e-9 * shape))
    z_unit, _, std_unit = (keras.ops.convert_to_numpy(a) for a in norm(shape))
    np.testing.assert_allclose(z_small, z_unit, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std_small, 1e-9 * std_unit, rtol=1e-4)
    assert np.abs(z_small).max() > 1.0  # not flattened to zero
    assert np.all(np.isfinite(mean_small))


def test_gradients_stay_finite_at_the_limits() -> None:
    import tensorflow as tf

    cfg = make_cfg((8,), "truth")
    model = build_forecaster(cfg)
    windows, truths = _hostile(np.random.default_rng(4))
    with tf.GradientTape() as tape:
        out = model({"window": windows, "truth": truths}, training=True)
        loss = tf.reduce_mean(tf.abs(out / 1e38))
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(np.isfinite(g.numpy()).all() for g in grads if g is not None)
