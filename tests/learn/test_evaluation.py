"""Scoring forecasts: the baselines, horizon buckets, scaled errors and the printed table."""

from __future__ import annotations

import numpy as np
import pytest

from streamcast.learn.evaluation import (
    baselines,
    evaluate,
    format_evaluation,
    horizon_buckets,
    score_held_out,
)
from streamcast.learn.examples import Examples, make_examples


def _arange_series(n: int) -> np.ndarray:
    """Feature 0 is the index, feature 1 the index + 1000: alignment is readable off values."""
    i = np.arange(n, dtype=np.float64)
    return np.stack([i, 1000 + i], axis=1)


def test_baselines_on_a_hand_series() -> None:
    window = np.array([[[1.0], [2.0], [3.0], [4.0]]], dtype=np.float32)
    ex = Examples(window, window[:, 0], np.zeros((1, 2, 1), np.float32), np.zeros(1, np.int32))
    b = baselines(ex)
    np.testing.assert_array_equal(b["persistence"][0, :, 0], [4, 4])
    np.testing.assert_array_equal(b["seasonal"][0, :, 0], [3, 4])
    long = Examples(window, window[:, 0], np.zeros((1, 6, 1), np.float32), np.zeros(1, np.int32))
    b = baselines(long)
    np.testing.assert_array_equal(b["persistence"][0, :, 0], [4] * 6)
    np.testing.assert_array_equal(b["seasonal"][0, :, 0], [1, 2, 3, 4, 1, 2])


def test_seasonal_naive_is_yesterday_at_the_default_shape() -> None:
    series = _arange_series(400)
    ex = make_examples(series, num_steps=96, horizon=96, stride=50)
    seasonal = baselines(ex)["seasonal"]
    # The forecast for reading t is reading t - 96.
    np.testing.assert_array_equal(seasonal[:, :, 0], ex.target[:, :, 0] - 96)


def test_horizon_buckets() -> None:
    assert horizon_buckets(96) == [(1, 6), (7, 24), (25, 48), (49, 96)]
    assert horizon_buckets(4) == [(1, 4)]
    assert horizon_buckets(6) == [(1, 6)]
    assert horizon_buckets(30) == [(1, 6), (7, 24), (25, 30)]
    assert horizon_buckets(200)[-3:] == [(49, 96), (97, 192), (193, 200)]


def test_evaluate_by_hand() -> None:
    target = np.zeros((2, 4, 1))
    forecast = np.array([[1.0, 1.0, 2.0, 2.0], [1.0, 3.0, 2.0, 6.0]])[:, :, None]
    scale = np.array([[1.0], [2.0]])  # the second series' errors count half
    m = evaluate({"model": forecast}, target, [(1, 2), (3, 4)], scale=scale)
    # scaled errors: row 0 -> 1, 1, 2, 2; row 1 -> 0.5, 1.5, 1, 3
    assert m.score("model", "1-2").mae == pytest.approx((1 + 1 + 0.5 + 1.5) / 4)
    assert m.score("model", "3-4").mae == pytest.approx((2 + 2 + 1 + 3) / 4)
    assert m.score("model", "3-4").rmse == pytest.approx(np.sqrt((4 + 4 + 1 + 9) / 4))
    assert m.score("model").mae == pytest.approx(12 / 8)
    assert m.rows == ["1-2", "3-4", "mean"]
    assert "training std" in m.units
    plain = evaluate(forecast, target)
    assert plain.score("model").mae == pytest.approx((6 + 12) / 8)
    with pytest.raises(ValueError, match="shape"):
        evaluate({"model": forecast[:, :3]}, target)
    with pytest.raises(ValueError, match="outside"):
        evaluate(forecast, target, [(1, 5)])


def test_format_evaluation_table() -> None:
    target = np.zeros((3, 8, 2))
    m = evaluate({"model": target + 0.5, "persistence": target + 1.0}, target)
    text = format_evaluation(m)
    lines = text.splitlines()
    assert "model MAE" in lines[0] and "persistence RMSE" in lines[0]
    assert lines[1].split()[0] == "1-6" and lines[2].split()[0] == "7-8"
    assert lines[3].split() == ["mean", "0.5000", "0.5000", "1.0000", "1.0000"]
    assert "3 examples" in lines[-1]


def test_score_held_out_adds_the_baselines_and_scales_by_source() -> None:
    window = np.array([[[1.0], [2.0]], [[10.0], [20.0]]], dtype=np.float32)
    target = np.array([[[3.0]], [[30.0]]], dtype=np.float32)
    ex = Examples(window, window[:, 0], target, np.array([0, 1], np.int32))
    scale = np.array([[1.0], [10.0]])
    m = score_held_out({"model": target + np.array([1.0, 10.0])[:, None, None]}, ex, scale)
    assert set(m.scores) == {"model", "persistence", "seasonal"}
    assert m.score("model").mae == pytest.approx(1.0)  # 1/1 and 10/10
    assert m.score("persistence").mae == pytest.approx((1.0 + 1.0) / 2)  # |2-3|/1, |20-30|/10
    assert evaluate(target + 1.0, target).score("model").mae == pytest.approx(1.0)
    with pytest.raises(ValueError, match="baselines"):
        score_held_out({"persistence": target}, ex)


def test_error_totals_accumulate_skip_unknown_truth_and_score_per_feature() -> None:
    from streamcast.learn.evaluation import ErrorTotals

    totals = ErrorTotals(["model", "persistence"], horizon=2, num_features=2)
    truth = np.array([[[1.0, 10.0], [2.0, np.nan]]])  # step 2 of feature 2 never arrived
    model = np.array([[[2.0, 10.0], [2.0, 99.0]]])
    persistence = np.array([[[1.0, 12.0], [1.0, 12.0]]])
    # Added in two calls: sums, not means, so the order and split do not matter.
    totals.add({"model": model, "persistence": persistence}, truth)
    totals.add({"model": model, "persistence": persistence}, truth)
    ev = totals.evaluation(units="units")
    assert ev.examples == 2
    assert ev.score("model").mae == pytest.approx((1 + 0 + 0) / 3)  # 99 vs unknown: not scored
    assert ev.score("persistence").rmse == pytest.approx(np.sqrt((0 + 4 + 1) / 3))
    assert ev.score("model").smape == pytest.approx((200 * 1 / 3 + 0 + 0) / 3)
    assert [s.mae for s in ev.by_feature["model"]] == pytest.approx([0.5, 0.0])
    assert [s.mae for s in ev.by_feature["persistence"]] == pytest.approx([0.5, 2.0])
    np.testing.assert_allclose(totals.step_mae("model"), [0.5, 0.0])
    doc = ev.as_dict()
    assert doc["by_feature"]["model"][1] == {"mae": 0.0, "rmse": 0.0, "smape": 0.0}
    with pytest.raises(ValueError, match="forecasters"):
        totals.add({"model": model}, truth)


def test_smape_is_zero_for_two_zeros_and_nan_for_a_broken_forecast() -> None:
    from streamcast.learn.evaluation import smape_terms

    out = smape_terms(np.array([0.0, 1.0, np.inf, -1.0]), np.array([0.0, 3.0, 1.0, 1.0]))
    np.testing.assert_allclose(out[:2], [0.0, 100.0])
    assert np.isnan(out[2]) and out[3] == pytest.approx(200.0)
