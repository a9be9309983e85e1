"""LiveAccuracy: exact scores on hand-built forecasts, jitter, and bounded memory."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry

from streamcast.ops.metrics import Metrics
from streamcast.stream.accuracy import LiveAccuracy
from streamcast.stream.messages import Readings

H = 8  # buckets 1-6 and 7-8
F = 2


def readings(sensors: list[str], ts: list[float], values: npt.ArrayLike) -> Readings:
    return Readings(
        sensors,
        np.asarray(ts, np.float64),
        np.asarray(values, np.float32).reshape(len(sensors), F),
    )


def two_sensors(acc: LiveAccuracy) -> None:
    """Sensor a (step 10 s): forecast k, last 0. Sensor b (step 60 s): forecast 10,
    last (10, 4). Both issued at ts 100, in one batch."""
    steps = np.arange(1, H + 1, dtype=np.float32)
    fc_a = np.repeat(steps[:, None], F, axis=1)
    fc_b = np.full((H, F), 10.0, np.float32)
    taken = acc.issued(
        ["a", "b"],
        np.array([100.0, 100.0]),
        np.array([10.0, 60.0]),
        np.stack([fc_a, fc_b]),
        np.array([[0.0, 0.0], [10.0, 4.0]], np.float32),
        model_version=7,
    )
    assert taken == 2


def truth_a(k: int) -> list[float]:
    return [2.0 * k, 2.0 * k]  # model error k, persistence error 2k


def truth_b(k: int) -> list[float]:
    return [13.0, 13.0]  # model error 3, persistence error (3 + 9) / 2 = 6


def test_exact_mae_per_bucket_for_the_model_and_persistence() -> None:
    acc = LiveAccuracy(H, F, sample_every=1)
    two_sensors(acc)
    # As they would arrive: in time order, interleaved, three readings a batch.
    arrivals = sorted(
        [(100.0 + 60 * k, "b", truth_b(k)) for k in range(1, H + 1)]
        + [(100.0 + 10 * k, "a", truth_a(k)) for k in range(1, H + 1)]
    )
    for i in range(0, len(arrivals), 3):
        ts, sensors, values = zip(*arrivals[i : i + 3], strict=True)
        acc.observed(readings(list(sensors), list(ts), list(values)))
    assert acc.scored == 2 * H
    snap = acc.snapshot()
    # 1-6: model (1+..+6 + 6*3) / 12, persistence (2*(1+..+6) + 6*6) / 12
    # 7-8: model (7+8 + 2*3) / 4,     persistence (2*(7+8) + 2*6) / 4
    assert snap == pytest.approx(
        {
            ("1-6", "model"): 39 / 12,
            ("1-6", "persistence"): 78 / 12,
            ("7-8", "model"): 21 / 4,
            ("7-8", "persistence"): 42 / 4,
        }
    )
    assert acc.snapshot(model_version=7) == snap
    assert acc.snapshot(model_version=8) == {}
    assert len(acc) == 0  # every step scored: both forecasts let go


def test_readings_up_to_half_a_step_off_the_grid_count_for_the_nearest_step() -> None:
    acc = LiveAccuracy(H, F, sample_every=1)
    two_sensors(acc)
    jitter = [0.4, -0.4, 0.0, 0.3, -0.49, 0.2, -0.1, 0.45]
    ts = [100.0 + 10 * (k + j) for k, j in zip(range(1, H + 1), jitter, strict=True)]
    acc.observed(readings(["a"] * H, ts, [truth_a(k) for k in range(1, H + 1)]))
    assert acc.scored == H
    snap = acc.snapshot()
    assert snap[("1-6", "model")] == pytest.approx(21 / 6)
    assert snap[("7-8", "persistence")] == pytest.approx(30 / 2)


def test_a_step_is_scored_once_and_readings_before_the_issue_are_ignored() -> None:
    acc = LiveAccuracy(H, F, sample_every=1)
    two_sensors(acc)
    # Two readings near step 1 in one batch, the same again later, one before the issue.
    acc.observed(readings(["a", "a", "a"], [90.0, 110.0, 111.0], [[0, 0], [2, 2], [50, 50]]))
    acc.observed(readings(["a"], [109.0], [[50.0, 50.0]]))
    assert acc.scored == 1
    assert acc.snapshot()[("1-6", "model")] == pytest.approx(1.0)


def test_a_model_equal_to_the_truth_scores_zero_and_persistence_does_not() -> None:
    acc = LiveAccuracy(H, F, sample_every=1)
    truth = np.stack([np.arange(H) * 1.5 + 3.0, -np.arange(H) * 2.0], axis=1).astype(np.float32)
    acc.issued(["s"], np.array([0.0]), np.array([5.0]), truth[None], np.zeros((1, F)), 1)
    acc.observed(readings(["s"] * H, [5.0 * k for k in range(1, H + 1)], truth))
    snap = acc.snapshot()
    assert snap[("1-6", "model")] == 0.0
    assert snap[("7-8", "model")] == 0.0
    assert snap[("1-6", "persistence")] > 0.0
    assert snap[("7-8", "persistence")] > 0.0


def test_memory_stays_bounded_with_a_hundred_thousand_sensors() -> None:
    acc = LiveAccuracy(96, 4, max_tracked=1000, sample_every=16, seed=1)
    before = acc.nbytes
    fc = np.zeros((1000, 96, 4), np.float32)
    last = np.zeros((1000, 4), np.float32)
    for start in range(0, 100_000, 1000):
        names = [f"sensor-{i}" for i in range(start, start + 1000)]
        acc.issued(names, np.full(1000, 0.0), np.full(1000, 60.0), fc, last, 1)
        assert len(acc) <= 1000
    assert len(acc) == 1000
    assert acc.nbytes == before
    assert before < LiveAccuracy.bound_bytes(96, 4, max_tracked=1000)


def test_sampling_keeps_about_one_forecast_in_sample_every() -> None:
    acc = LiveAccuracy(H, F, max_tracked=100_000, sample_every=16, seed=3)
    n = 16_000
    taken = acc.issued(
        [f"s{i}" for i in range(n)],
        np.zeros(n),
        np.ones(n),
        np.zeros((n, H, F), np.float32),
        np.zeros((n, F), np.float32),
        1,
    )
    assert 800 < taken < 1200


def test_a_forecast_is_let_go_when_a_reading_falls_beyond_its_horizon() -> None:
    acc = LiveAccuracy(H, F, sample_every=1)
    two_sensors(acc)
    acc.observed(readings(["a", "a"], [110.0, 120.0], [truth_a(1), truth_a(2)]))
    assert "a" in acc
    # A gap: the next reading of a is past step 8 (100 + 8*10 + 5).
    acc.observed(readings(["a"], [190.0], [truth_a(9)]))
    assert "a" not in acc
    assert "b" in acc
    assert acc.scored == 2


def test_the_forecasts_of_a_sensor_whose_readings_stop_expire() -> None:
    acc = LiveAccuracy(H, F, sample_every=1, grace_s=0.0)
    two_sensors(acc)
    # a's deadline: 100 + 8.5 * 10 (its horizon) + 8 * 10 (one more) = 265.
    # Only other sensors report from now on.
    acc.observed(readings(["x", "y", "z"], [200.0, 200.0, 200.0], np.zeros((3, F))))
    assert "a" in acc
    acc.observed(readings(["x", "y", "z"], [266.0, 266.0, 1e9], np.zeros((3, F))))
    assert "a" not in acc
    assert "b" in acc  # b's deadline is 100 + 8.5 * 60 + 8 * 60 = 1090
    assert len(acc) == 1


def test_one_sensor_with_a_clock_far_ahead_does_not_expire_the_others() -> None:
    acc = LiveAccuracy(H, F, sample_every=1)
    two_sensors(acc)
    acc.observed(readings(["x", "y", "z"], [150.0, 150.0, 1e9], np.zeros((3, F))))
    assert len(acc) == 2


def test_a_tracked_sensor_keeps_its_forecast_until_the_horizon_passes_or_time_moves_back() -> None:
    acc = LiveAccuracy(H, F, sample_every=1)
    two_sensors(acc)
    fc = np.zeros((1, H, F), np.float32)
    last = np.zeros((1, F), np.float32)
    assert acc.issued(["a"], np.array([110.0]), np.array([10.0]), fc, last, 8) == 0
    # The sensor restarted with an earlier clock: the new forecast replaces the old one.
    assert acc.issued(["a"], np.array([50.0]), np.array([10.0]), fc, last, 8) == 1
    assert len(acc) == 2
    acc.observed(readings(["a"], [60.0], [[3.0, 3.0]]))
    assert acc.snapshot(model_version=8)[("1-6", "model")] == pytest.approx(3.0)


def test_the_window_keeps_the_last_scored_readings_per_bucket() -> None:
    acc = LiveAccuracy(H, F, sample_every=1, window=4)
    truth = np.zeros((H, F), np.float32)
    for sensor, error in (("old", 100.0), ("new", 1.0)):
        fc = np.full((1, H, F), error, np.float32)
        acc.issued([sensor], np.array([0.0]), np.array([1.0]), fc, np.zeros((1, F)), 1)
        acc.observed(readings([sensor] * H, list(range(1, H + 1)), truth))
    snap = acc.snapshot()
    assert snap[("1-6", "model")] == pytest.approx(1.0)  # the last 4 of 12 are all "new"
    assert snap[("7-8", "model")] == pytest.approx((100.0 + 100.0 + 1.0 + 1.0) / 4)


def test_untracked_sensors_leave_everything_as_it_was() -> None:
    acc = LiveAccuracy(H, F, sample_every=1)
    assert acc.observed(readings(["a"], [110.0], [[1.0, 1.0]])) == 0
    two_sensors(acc)
    assert acc.observed(readings(["q", "r"], [110.0, 120.0], np.zeros((2, F)))) == 0
    assert acc.scored == 0
    assert acc.snapshot() == {}
    assert len(acc) == 2


def test_a_full_tracker_takes_nothing_more() -> None:
    acc = LiveAccuracy(H, F, max_tracked=2, sample_every=1)
    two_sensors(acc)
    fc = np.zeros((1, H, F), np.float32)
    assert acc.issued(["c"], np.array([0.0]), np.array([1.0]), fc, np.zeros((1, F)), 1) == 0
    assert "c" not in acc


def test_shapes_that_do_not_fit_are_refused() -> None:
    acc = LiveAccuracy(H, F)
    with pytest.raises(ValueError, match="do not fit"):
        acc.issued(
            ["a"], np.array([0.0]), np.array([1.0]), np.zeros((1, H + 1, F)), np.zeros((1, F)), 1
        )
    with pytest.raises(ValueError, match="grace_s"):
        LiveAccuracy(H, F, grace_s=-1.0)


def test_export_sets_the_gauge_per_bucket_and_forecaster() -> None:
    metrics = Metrics(CollectorRegistry(), process=False)
    acc = LiveAccuracy(H, F, sample_every=1)
    two_sensors(acc)
    acc.observed(readings(["a"], [110.0], [truth_a(1)]))
    acc.export(metrics)
    sample = metrics.registry.get_sample_value
    labels = {"horizon_bucket": "1-6", "forecaster": "model"}
    assert sample("streamcast_forecast_mae", labels) == pytest.approx(1.0)
    labels["forecaster"] = "persistence"
    assert sample("streamcast_forecast_mae", labels) == pytest.approx(2.0)
    assert (
        sample("streamcast_forecast_mae", {"horizon_bucket": "7-8", "forecaster": "model"}) is None
    )
