"""The Predictor: fixed buckets (no retracing), chunking, padding, input checks."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from streamcast.errors import StateShapeError
from streamcast.model import build_forecaster
from streamcast.model.predictor import Predictor, buckets

from .conftest import HORIZON, NUM_FEATURES, make_cfg

Batch = Callable[[int], tuple[np.ndarray, np.ndarray]]


@pytest.fixture(scope="module")
def carry_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return build_forecaster(make_cfg((8, 16), "carry"))


def test_buckets_are_powers_of_two_up_to_max_batch() -> None:
    assert buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert buckets(1) == [1]
    with pytest.raises(ValueError, match="max_batch"):
        buckets(0)


def test_any_batch_size_reuses_the_warm_buckets(carry_model: keras.Model, batch: Batch) -> None:
    cfg = make_cfg((8, 16), "carry")
    predictor = Predictor(carry_model, cfg, max_batch=8)
    assert predictor.trace_count == 0
    predictor.warmup()
    # Carry mode compiles two graphs: seeded from the truth, and continuing carried states.
    assert predictor.trace_count == 2 * len(predictor.buckets) == 8
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 30, 1, 6]:
        window, truth = batch(n)
        carry = np.zeros((n, cfg.state_width), np.float32)
        out = predictor.predict(window, truth, carry, rng.random(n) < 0.5)
        assert out.forecast.shape == (n, HORIZON, NUM_FEATURES)
        assert out.states.shape == (n, cfg.state_width)
        assert out.forecast.dtype == out.states.dtype == np.float32
    assert predictor.trace_count == 8


def test_rows_do_not_depend_on_batching(carry_model: keras.Model, batch: Batch) -> None:
    """Chunked, padded and single-row runs agree: rows never mix, padding is cut off."""
    cfg = make_cfg((8, 16), "carry")
    window, truth = batch(11)
    whole = Predictor(carry_model, cfg, max_batch=16).predict(window, truth)
    chunked = Predictor(carry_model, cfg, max_batch=4).predict(window, truth)  # 4 + 4 + 3
    single = Predictor(carry_model, cfg, max_batch=1)
    rows = [single.predict(window[i : i + 1], truth[i : i + 1]) for i in (0, 5, 10)]
    np.testing.assert_allclose(chunked.forecast, whole.forecast, rtol=0, atol=1e-5)
    np.testing.assert_allclose(chunked.states, whole.states, rtol=0, atol=1e-5)
    for i, row in zip((0, 5, 10), rows, strict=True):
        np.testing.assert_allclose(row.forecast[0], whole.forecast[i], rtol=0, atol=1e-5)


def test_jit_modes_agree_and_auto_follows_the_device(
    carry_model: keras.Model, batch: Batch
) -> None:
    cfg = make_cfg((8, 16), "carry")
    window, truth = batch(5)
    on = Predictor(carry_model, cfg, max_batch=8, jit_compile="on")
    off = Predictor(carry_model, cfg, max_batch=8, jit_compile="off")
    auto = Predictor(carry_model, cfg, max_batch=8)
    assert (on.jit, off.jit) == (True, False)
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    assert auto.device == ("GPU:0" if on_gpu else "CPU:0")
    assert auto.jit is (not on_gpu)
    np.testing.assert_allclose(
        on.predict(window, truth).forecast, off.predict(window, truth).forecast, atol=1e-5
    )


def test_carry_rows_are_chosen_per_row(
    carry_model: keras.Model, batch: Batch, rng: np.random.Generator
) -> None:
    cfg = make_cfg((8, 16), "carry")
    predictor = Predictor(carry_model, cfg, max_batch=8)
    window, truth = batch(4)
    carry = rng.standard_normal((4, cfg.state_width)).astype(np.float32)
    seeded = predictor.predict(window, truth)
    all_carried = predictor.predict(window, truth, carry)  # has_carry defaults to every row
    mixed = predictor.predict(window, truth, carry, np.array([True, False, False, True]))
    np.testing.assert_array_equal(
        all_carried.forecast, predictor.predict(window, truth, carry, np.ones(4, bool)).forecast
    )
    np.testing.assert_allclose(mixed.forecast[[0, 3]], all_carried.forecast[[0, 3]], atol=1e-6)
    np.testing.assert_allclose(mixed.forecast[[1, 2]], seeded.forecast[[1, 2]], atol=1e-6)
    assert np.abs(all_carried.forecast[1] - seeded.forecast[1]).max() > 1e-3


def test_truth_mode_ignores_carry(batch: Batch, rng: np.random.Generator) -> None:
    cfg = make_cfg((8, 8), "truth")
    predictor = Predictor(build_forecaster(cfg), cfg, max_batch=4)
    window, truth = batch(3)
    carry = rng.standard_normal((3, cfg.state_width)).astype(np.float32)
    np.testing.assert_array_equal(
        predictor.predict(window, truth, carry).forecast, predictor.predict(window, truth).forecast
    )


def test_bad_inputs_are_refused_with_their_shapes(carry_model: keras.Model, batch: Batch) -> None:
    cfg = make_cfg((8, 16), "carry")
    predictor = Predictor(carry_model, cfg, max_batch=4)
    window, truth = batch(3)
    with pytest.raises(ValueError, match=r"window must be \(n>=1, 12, 2\), got \(3, 11, 2\)"):
        predictor.predict(window[:, :-1], truth)
    with pytest.raises(ValueError, match="window"):
        predictor.predict(window[:0], truth[:0])
    with pytest.raises(ValueError, match=r"truth must be \(3, 2\)"):
        predictor.predict(window, truth[:2])
    with pytest.raises(StateShapeError, match=r"expected shape \(3, 48\), received \(3, 16\)"):
        predictor.predict(window, truth, np.zeros((3, 16), np.float32))
    with pytest.raises(ValueError, match="has_carry must be"):
        predictor.predict(window, truth, np.zeros((3, 48), np.float32), np.ones(2, bool))
    with pytest.raises(ValueError, match="no carry"):
        predictor.predict(window, truth, None, np.ones(3, bool))
    with pytest.raises(ValueError, match="jit_compile"):
        Predictor(carry_model, cfg, jit_compile="maybe")  # type: ignore[arg-type]


def test_seed_mode_needs_a_seeder() -> None:
    zeros_model = build_forecaster(make_cfg((8, 8), "zeros"))
    with pytest.raises(ValueError, match="needs a seeder"):
        Predictor(zeros_model, make_cfg((8, 8), "truth"))
    with pytest.raises(ValueError, match="units"):
        Predictor(zeros_model, make_cfg((8, 16), "zeros"))
