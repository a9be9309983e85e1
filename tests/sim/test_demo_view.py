"""The demo's scoring of forecasts against what happened, in either arrival order."""

from __future__ import annotations

import pytest

from streamcast.sim.demo import _View


def _reading(ts: float, v: float) -> dict[str, object]:
    return {"sensor": "s", "ts": ts, "values": [v, 0.0]}


def _forecast(ts: float, values: list[float]) -> dict[str, object]:
    return {"sensor": "s", "ts": ts, "values": [[v, 0.0] for v in values]}


@pytest.mark.parametrize("forecast_first", [True, False])
def test_next_step_and_whole_horizon_are_scored_with_baselines(forecast_first: bool) -> None:
    view = _View(horizon=2)
    for ts, v in [(1, 10.0), (2, 12.0)]:  # history: seasonal naive repeats [10, 12]
        view.on_reading(_reading(ts, v))
    later = [(3, 13.0), (4, 11.0)]
    if forecast_first:
        view.on_forecast(_forecast(2, [14.0, 11.0]))
    for ts, v in later:
        view.on_reading(_reading(ts, v))
    if not forecast_first:
        view.on_forecast(_forecast(2, [14.0, 11.0]))
    assert view.checked["s"] == (14.0, 13.0)
    assert view.mean("next_model") == 1.0  # |14 - 13|
    assert view.mean("next_persistence") == 1.0  # |12 - 13|
    assert view.mean("model") == pytest.approx((1.0 + 0.0) / 2)  # [14, 11] vs [13, 11]
    assert view.mean("persistence") == pytest.approx((1.0 + 1.0) / 2)  # [12, 12]
    assert view.mean("seasonal") == pytest.approx((3.0 + 1.0) / 2)  # [10, 12]
    assert view.count("model") == 1


def test_forecast_for_an_unseen_window_is_ignored() -> None:
    view = _View(horizon=2)
    view.on_forecast(_forecast(7, [1.0, 2.0]))
    assert view.count("next_model") == 0 and view.forecasts == 1
