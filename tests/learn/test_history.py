"""History: bounded, ordered, duplicate-proof per-sensor series."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamcast.learn.history import History
from streamcast.stream.messages import Readings

F = 2


def batch(sensors: list[str], ts: list[float]) -> Readings:
    t = np.asarray(ts, np.float64)
    return Readings(sensors, t, np.stack([t, -t], axis=1).astype(np.float32))


def test_series_in_ts_order_per_sensor() -> None:
    h = History(F, 100)
    h.add(batch(["a", "b", "a", "b", "a"], [1, 10, 2, 11, 3]))
    h.add(batch(["b", "a"], [12, 4]))
    assert len(h) == 2 and h.num_readings == 7
    by_name = dict(zip(h.sensors(), h.series(), strict=True))
    np.testing.assert_array_equal(by_name["a"][:, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(by_name["b"][:, 1], [-10, -11, -12])
    assert all(s.dtype == np.float32 and s.shape[1] == F for s in h.series())
    assert h.time_range() == (1.0, 12.0)


def test_bounded_keeps_the_newest() -> None:
    h = History(F, 50)
    for start in range(0, 1_000, 37):  # odd batch sizes: grow, then wrap many times
        h.add(batch(["a"] * 37, [float(t) for t in range(start, start + 37)]))
    (series,) = h.series()
    np.testing.assert_array_equal(series[:, 0], np.arange(1_036 - 50, 1_036))
    h.add(batch(["a"] * 120, [float(t) for t in range(2_000, 2_120)]))  # one batch > bound
    (series,) = h.series()
    np.testing.assert_array_equal(series[:, 0], np.arange(2_070, 2_120))
    assert h.nbytes <= 50 * (8 + 4 * F)


def test_replayed_and_older_readings_are_skipped() -> None:
    h = History(F, 100)
    assert h.add(batch(["a"] * 3, [1, 2, 3])) == 3
    assert h.add(batch(["a"] * 4, [2, 3, 4, 4])) == 1
    (series,) = h.series()
    np.testing.assert_array_equal(series[:, 0], [1, 2, 3, 4])


def test_examples_count() -> None:
    h = History(F, 1_000)
    h.add(batch(["a"] * 10 + ["b"] * 3, [float(t) for t in range(10)] + [1.0, 2.0, 3.0]))
    # a: 10 - (3 + 1 + 2) + 1 = 5; b: too short.
    assert h.examples(num_steps=3, horizon=2) == 5
    assert h.examples(num_steps=9, horizon=1) == 0


def test_max_sensors_forgets_least_recently_updated() -> None:
    h = History(F, 10, max_sensors=2)
    h.add(batch(["a", "b"], [1, 1]))
    h.add(batch(["a"], [2]))
    h.add(batch(["c"], [1]))
    assert sorted(h.sensors()) == ["a", "c"]


def test_empty_and_validation() -> None:
    h = History(F, 10)
    first, last = h.time_range()
    assert math.isnan(first) and math.isnan(last)
    assert h.series() == [] and h.examples(3, 2) == 0
    assert h.add(Readings.empty(F)) == 0
    with pytest.raises(ValueError):
        h.add(Readings(["a"], np.array([1.0]), np.zeros((1, 3), np.float32)))
    with pytest.raises(ValueError):
        History(F, 0)
    h.add(batch(["a"], [5]))
    h.clear()
    assert len(h) == 0
