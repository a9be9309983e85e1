"""The synthetic fleet: reproducible, shaped as documented, and realistically varied."""

from __future__ import annotations

import numpy as np
import pytest

from streamcast.sim.fleet import DEFAULT_START_TS, SensorFleet, fleet_series

DAY = 96  # steps per day at the default 15-minute step


def _daily_profile(values: np.ndarray) -> np.ndarray:
    """Mean reading per time of day: (sensors, 96) for feature 0 over whole days."""
    days = values.shape[1] // DAY
    return values[:, : days * DAY, 0].reshape(values.shape[0], days, DAY).mean(axis=1)


def test_same_seed_same_numbers_other_seed_other_numbers() -> None:
    ts_a, a = SensorFleet(4, seed=7).series(300)
    ts_b, b = SensorFleet(4, seed=7).series(300)
    _, c = SensorFleet(4, seed=8).series(300)
    np.testing.assert_array_equal(ts_a, ts_b)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0


def test_step_by_step_equals_series() -> None:
    bulk_ts, bulk = SensorFleet(3, seed=1).series(50)
    fleet = SensorFleet(3, seed=1)
    steps = [fleet.step() for _ in range(50)]
    np.testing.assert_array_equal(bulk_ts, [t for t, _ in steps])
    np.testing.assert_allclose(bulk, np.stack([v for _, v in steps], axis=1), rtol=0, atol=1e-12)


def test_shapes_ids_and_timestamps() -> None:
    fleet = SensorFleet(5, seed=0, step_s=600.0, num_features=3)
    assert fleet.sensor_ids == [f"sensor-{i:03d}" for i in range(5)]
    assert fleet.step_s == 600.0
    ts, values = fleet.series(10)
    assert ts.shape == (10,)
    assert values.shape == (5, 10, 3)
    assert values.dtype == np.float64
    assert ts[0] == DEFAULT_START_TS
    np.testing.assert_allclose(np.diff(ts), 600.0)
    t, v = fleet.step()
    assert t == ts[-1] + 600.0
    assert v.shape == (5, 3)
    assert np.isfinite(values).all()


def test_fleet_series_matches_fleet() -> None:
    out = fleet_series(3, 40, seed=5)
    _, values = SensorFleet(3, seed=5).series(40)
    assert len(out) == 3
    for i, s in enumerate(out):
        assert s.shape == (40, 2)
        np.testing.assert_array_equal(s, values[i])


def test_daily_cycle_with_sensor_specific_phase_and_amplitude() -> None:
    _, values = SensorFleet(10, seed=3).series(14 * DAY)
    profile = _daily_profile(values)
    amplitude = profile.max(axis=1) - profile.min(axis=1)
    peak_hour = profile.argmax(axis=1) // 4
    assert len(set(peak_hour.tolist())) >= 5, peak_hour
    assert amplitude.max() / amplitude.min() > 2.0
    # The daily cycle is a real part of the signal: it explains much of each sensor's spread.
    explained = profile.std(axis=1) / values[:, :, 0].std(axis=1)
    assert (explained > 0.5).all(), explained


def test_noise_has_an_ar1_part_and_a_white_part() -> None:
    _, values = SensorFleet(6, seed=4).series(28 * DAY)
    days = values.shape[1] // DAY
    profile = np.tile(_daily_profile(values), days)
    resid = values[:, :, 0] - profile
    resid = resid - resid.mean(axis=1, keepdims=True)
    amplitude = np.ptp(_daily_profile(values), axis=1)
    assert (resid.std(axis=1) > 0.05 * amplitude).all()
    lag1 = np.array([np.corrcoef(r[:-1], r[1:])[0, 1] for r in resid])
    # AR(1) makes neighbours correlated; white noise keeps the correlation clearly below 1.
    assert (lag1 > 0.5).all(), lag1
    assert (lag1 < 0.99).all(), lag1
    # Persistence cannot be perfect: the one-step change is a visible share of the spread.
    step_change = np.diff(values[:, :, 0], axis=1).std(axis=1)
    assert (step_change > 0.02 * values[:, :, 0].std(axis=1)).all()


def test_second_feature_follows_the_first_with_a_lag() -> None:
    _, values = SensorFleet(6, seed=2).series(14 * DAY)
    for s in range(6):
        x, y = values[s, :, 0], values[s, :, 1]
        corr = [np.corrcoef(x[: len(x) - lag], y[lag:])[0, 1] for lag in range(0, 24)]
        assert max(corr) > 0.8, (s, corr)
        assert int(np.argmax(corr)) >= 1, (s, corr)  # the load responds after the signal
        assert np.abs(y - x).mean() > 0.01 * np.abs(x).mean()  # a related signal, not a copy


def test_regime_change_shifts_only_that_sensor_and_lasts() -> None:
    plain, changed = SensorFleet(4, seed=9), SensorFleet(4, seed=9)
    plain.series(3 * DAY)
    changed.series(3 * DAY)
    changed.regime_change(2)
    _, before = SensorFleet(4, seed=9).series(3 * DAY)
    _, a = plain.series(7 * DAY)
    _, b = changed.series(7 * DAY)
    for s in (0, 1, 3):
        np.testing.assert_array_equal(a[s], b[s])
    amplitude = np.ptp(_daily_profile(before)[2])
    diff = b[2, :, 0] - a[2, :, 0]
    first_day, last_day = np.abs(diff[:DAY]).mean(), np.abs(diff[-DAY:]).mean()
    assert first_day > 0.15 * amplitude, (first_day, amplitude)
    assert last_day > 0.15 * amplitude, (last_day, amplitude)
    # The load follows the shifted signal.
    assert np.abs(b[2, -DAY:, 1] - a[2, -DAY:, 1]).mean() > 0


def test_regime_change_for_all_sensors() -> None:
    plain, changed = SensorFleet(5, seed=1), SensorFleet(5, seed=1)
    changed.regime_change()
    _, a = plain.series(2 * DAY)
    _, b = changed.series(2 * DAY)
    assert (np.abs(b - a)[:, :, 0].mean(axis=1) > 0).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SensorFleet(0)
    with pytest.raises(ValueError):
        SensorFleet(2, num_features=0)
    with pytest.raises(ValueError):
        SensorFleet(2, step_s=0)
    with pytest.raises(IndexError):
        SensorFleet(2).regime_change(5)
