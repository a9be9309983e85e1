"""The promotion gate: the held-out split by time, and each verdict with its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamcast.learn.examples import Examples, make_examples
from streamcast.learn.gate import REASONS, judge, split_held_out
from streamcast.learn.history import Segment

NUM_STEPS, HORIZON = 4, 2
SPAN = NUM_STEPS + 1 + HORIZON


def run(sensor: str, first: int, n: int) -> Segment:
    """Readings whose values are their ts, so each one can be recognised anywhere."""
    ts = np.arange(first, first + n, dtype=np.float64)
    return Segment(sensor, ts, np.stack([ts, 2 * ts], axis=1).astype(np.float32))


def readings_of(ex: Examples, rows: np.ndarray) -> set[float]:
    parts = [ex.truth[rows, None, 0], ex.window[rows, :, 0], ex.target[rows, :, 0]]
    return {float(v) for p in parts for v in p.ravel()}


def test_held_out_is_the_most_recent_slice_and_shares_no_reading() -> None:
    segments = [
        run("a", 0, 100),
        run("b", 0, 30),
        run("b", 200, 12),  # b's newest run: its 6 examples are b's held-out ones, and 2 more
        run("c", 0, 5),  # too short for an example
    ]
    split = split_held_out(segments, NUM_STEPS, HORIZON, holdout_fraction=0.2)
    assert split.sensors == ["a", "b", "c"]
    a, b = 0, 1
    held = split.held_out
    # a: 94 examples -> 19 held out; b: 24 + 6 = 30 -> 6 held out
    assert np.count_nonzero(held.source == a) == round(94 * 0.2)
    assert np.count_nonzero(held.source == b) == round(30 * 0.2)
    for index, sensor in ((a, "a"), (b, "b")):
        held_readings = readings_of(held, np.flatnonzero(held.source == index))
        trained = {float(v) for s in split.train if s.sensor == sensor for v in s.values[:, 0]}
        assert not held_readings & trained  # no window, truth or horizon in both
        assert max(trained) < min(held_readings)  # and the held-out slice is the newest
    # a loses only the readings of its held-out examples; b's older run is untouched.
    a_train = [s for s in split.train if s.sensor == "a"]
    assert [len(s.ts) for s in a_train] == [100 - (19 + SPAN - 1)]
    assert [len(s.ts) for s in split.train if s.sensor == "b"] == [30]
    assert [len(s.ts) for s in split.train if s.sensor == "c"] == [5]
    np.testing.assert_allclose(split.scale[a], np.std(a_train[0].values, axis=0), rtol=1e-5)
    assert split.scale.shape == (3, 2)


def test_held_out_spans_several_runs_and_drops_newer_short_ones() -> None:
    segments = [run("a", 0, 40), run("a", 100, SPAN + 1), run("a", 200, 3)]
    split = split_held_out(segments, NUM_STEPS, HORIZON, holdout_fraction=0.2)
    # 34 + 2 = 36 examples -> 7 held out: the newest run's 2 and 5 from the first.
    assert len(split.held_out) == 7
    assert [(s.ts[0], len(s.ts)) for s in split.train] == [(0.0, 40 - (5 + SPAN - 1))]
    assert max(split.train[0].ts) < min(readings_of(split.held_out, np.arange(7)))


def test_split_validates_and_handles_nothing() -> None:
    with pytest.raises(ValueError):
        split_held_out([run("a", 0, 50)], NUM_STEPS, HORIZON, holdout_fraction=1.0)
    empty = split_held_out([], NUM_STEPS, HORIZON, holdout_fraction=0.2)
    assert len(empty.held_out) == 0 and empty.train == []


def test_held_out_lags_are_read_from_the_readings_before_them() -> None:
    """With a seasonal lag the held-out examples are the same, and each one's lags are the
    readings of its own run one period before its target steps: the training part's
    included (inputs only), another run's never, a missing one making all unknown."""
    period = 9
    a = run("a", 0, 100)
    a.values[72, 1] = np.nan  # in a's training part, read only as a lag
    segments = [a, run("b", 0, 30), run("b", 200, 12)]
    split = split_held_out(segments, NUM_STEPS, HORIZON, 0.2, seasonal_lag=period)
    plain = split_held_out(segments, NUM_STEPS, HORIZON, 0.2)
    held = split.held_out
    for name in ("window", "truth", "target", "source", "calendar"):
        np.testing.assert_array_equal(getattr(held, name), getattr(plain.held_out, name))
    assert [(s.sensor, len(s.ts)) for s in split.train] == [
        (s.sensor, len(s.ts)) for s in plain.train
    ]
    assert held.lags is not None and held.lags_known is not None
    assert held.lags.shape == (len(held), HORIZON, 2) and held.lags_known.shape == (len(held), 1)
    for i in range(len(held)):
        sensor = split.sensors[held.source[i]]
        last = float(held.window[i, -1, 0])  # values are their ts
        (own,) = [s for s in segments if s.sensor == sensor and s.ts[0] <= last <= s.ts[-1]]
        want = last + np.arange(1, HORIZON + 1) - period
        rows = (want - own.ts[0]).astype(int)
        if rows[0] >= 0 and np.isfinite(own.values[rows]).all():
            assert held.lags_known[i, 0] == 1.0, (sensor, last)
            np.testing.assert_array_equal(held.lags[i], np.stack([want, 2 * want], axis=1))
        else:
            assert held.lags_known[i, 0] == 0.0, (sensor, last)
            assert np.all(held.lags[i] == 0.0)
    known = held.lags_known[:, 0] == 1
    from_a = held.source == split.sensors.index("a")
    assert np.count_nonzero(from_a & ~known) == 2  # the two whose lags read reading 72
    trained = {float(v) for s in split.train if s.sensor == "a" for v in s.values[:, 0]}
    assert {float(v) for v in held.lags[from_a & known, :, 0].ravel()} & trained
    # b's newest run (ts 200-211): only origins 208 and 209 have a season inside it.
    from_b = held.source == split.sensors.index("b")
    assert sorted(held.window[from_b & known, -1, 0].tolist()) == [208.0, 209.0]
    assert np.count_nonzero(from_b & ~known) == 4
    empty = split_held_out([], NUM_STEPS, HORIZON, 0.2, seasonal_lag=period)
    assert empty.held_out.lags is not None and empty.held_out.lags.shape == (0, HORIZON, 1)


@pytest.fixture
def held_out() -> Examples:
    """A sine wave: persistence is poor on it, so a model near the truth beats it."""
    t = np.arange(300, dtype=np.float64)
    series = np.stack([np.sin(t / 5), np.cos(t / 5)], axis=1)
    return make_examples(series, NUM_STEPS, HORIZON)


def test_promoted_when_better_than_both(held_out: Examples) -> None:
    target = held_out.target
    v = judge(held_out, None, target + 0.10, target - 0.20, min_improvement=0.02)
    assert v.promoted and v.reason is None
    assert v.scores["challenger"] == pytest.approx(0.10, abs=1e-6)
    assert v.scores["champion"] == pytest.approx(0.20, abs=1e-6)
    persistence = np.abs(np.repeat(held_out.window[:, -1:], HORIZON, axis=1) - target).mean()
    assert v.scores["persistence"] == pytest.approx(persistence)
    doc = json.loads(json.dumps(v.as_dict(), allow_nan=False))
    assert doc["promoted"] is True and doc["mae"]["champion"] == pytest.approx(0.20, abs=1e-6)
    assert doc["examples"] == len(held_out)


def test_not_better_within_the_margin(held_out: Examples) -> None:
    target = held_out.target
    # 0.099 vs 0.100 is lower, but not by 2 %.
    v = judge(held_out, None, target + 0.099, target + 0.100, min_improvement=0.02)
    assert not v.promoted and v.reason == "not_better"
    assert judge(held_out, None, target + 0.097, target + 0.100).promoted
    assert judge(held_out, None, target + 0.099, target + 0.100, min_improvement=0.0).promoted


def test_worse_than_persistence_even_without_a_champion(held_out: Examples) -> None:
    target = held_out.target
    v = judge(held_out, None, target + 5.0)
    assert v.reason == "worse_than_persistence" and not v.promoted
    assert "champion" not in v.scores and v.scores["challenger"] == pytest.approx(5.0)
    assert judge(held_out, None, target + 0.1).promoted  # the first model: persistence only


def test_scores_are_scaled_per_source(held_out: Examples) -> None:
    target = held_out.target
    # Errors of 0.05 in units of a spread of 10: 0.005.
    v = judge(held_out, np.full((1, 2), 10.0), target + 0.05, target + 0.1)
    unscaled = judge(held_out, None, target + 0.05, target + 0.1)
    assert v.scores["challenger"] == pytest.approx(0.005, abs=1e-7) and v.promoted
    assert v.scores["persistence"] == pytest.approx(unscaled.scores["persistence"] / 10)


def test_failures_and_non_finite(held_out: Examples) -> None:
    target = held_out.target
    assert judge(held_out, None, None, target, failure="timed_out").reason == "timed_out"
    assert judge(held_out, None, None, target).reason == "training_failed"
    assert judge(held_out, None, target, target, loss=float("nan")).reason == "non_finite_loss"
    broken = target.copy()
    broken[0, 0, 0] = np.nan
    assert judge(held_out, None, broken, target).reason == "non_finite_loss"
    # A champion forecasting NaN is beaten by any sane challenger.
    v = judge(held_out, None, target + 0.1, broken)
    assert v.promoted
    json.dumps(v.as_dict(), allow_nan=False)
    nothing = Examples(held_out.window[:0], held_out.truth[:0], target[:0], held_out.source[:0])
    assert judge(nothing, None, target[:0], target[:0]).reason == "not_better"
    with pytest.raises(ValueError):
        judge(held_out, None, target, min_improvement=1.0)


def test_every_reason_is_one_of_the_fixed_set(held_out: Examples) -> None:
    target = held_out.target
    verdicts = [
        judge(held_out, None, None, failure="training_failed"),
        judge(held_out, None, target, loss=float("inf")),
        judge(held_out, None, target + 5.0),
        judge(held_out, None, target + 0.1, target + 0.1),
    ]
    assert {v.reason for v in verdicts} <= set(REASONS)
    assert len({v.reason for v in verdicts}) == 4
