"""The fit loop, ``streamcast train --simulated``, and the model's quality bar."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from streamcast.config import ModelSpec, TrainingSettings
from streamcast.learn.evaluation import Evaluation, format_evaluation
from streamcast.learn.examples import make_examples_many
from streamcast.learn.fit import score_model, train, train_and_save
from streamcast.learn.registry import ModelRegistry
from streamcast.sim.fleet import SensorFleet, fleet_series

TrainCommand = Callable[..., int]
WriteConfig = Callable[..., Path]


def test_train_command_on_simulated_data_saves_a_version_and_prints_the_evaluation(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    train_command: TrainCommand,
    write_config: WriteConfig,
) -> None:
    cfg = ModelSpec(num_steps=16, num_features=2, units=(8,), horizon=8)
    config = write_config(num_steps=16, num_features=2, units=[8], horizon=8, max_epochs=50)
    registry = ModelRegistry(tmp_path / "reg")
    code = train_command(
        "--simulated",
        "--sensors",
        3,
        "--days",
        3,
        "--seed",
        1,
        "--registry",
        registry.path,
        "--config",
        config,
        "--max-seconds",
        3,
        "--threads",
        2,
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "data: simulated fleet (3 sensors, 3 days, seed 1)" in out
    assert "budget 3s" in out
    assert "epoch   1/50" in out and "val_loss" in out
    assert "persistence MAE" in out and "seasonal RMSE" in out
    assert f"saved model version 1 to {registry.version_path(1)}" in out
    assert registry.versions() == [1]
    loaded = registry.load(expect=cfg)
    dr = loaded.meta["data_range"]
    assert dr["sensors"] == 3 and dr["readings"] == 3 * 3 * 96
    assert dr["first"].startswith("2024-01-01T00:00:00")
    assert dr["last_ts"] - dr["first_ts"] == (3 * 96 - 1) * 900
    assert loaded.meta["metrics"]["scores"]["model"]["mean"]["mae"] > 0
    json.dumps(loaded.meta)  # the whole meta is plain JSON


def test_train_and_save_numbers_versions_and_prints_where_it_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ModelSpec(num_steps=8, num_features=1, units=(4,), horizon=4)
    series = fleet_series(2, 120, seed=5, num_features=1)
    settings = TrainingSettings(max_seconds=30.0, max_epochs=1)
    registry = ModelRegistry(tmp_path / "reg")
    assert train_and_save(cfg, series, settings, registry.path) == 1
    assert train_and_save(cfg, series, settings, registry.path) == 2
    out = capsys.readouterr().out
    assert "1 epochs in" in out and "stopped by max epochs" in out
    assert "model MAE" in out and "persistence RMSE" in out
    assert f"saved model version 2 to {registry.version_path(2)}" in out
    assert registry.versions() == [1, 2]
    dr = registry.meta(2)["data_range"]
    assert dr["sensors"] == 2 and dr["readings"] == 2 * 120
    assert dr["first_ts"] is None and dr["last_ts"] is None  # no timestamps given


def test_train_stops_on_its_time_budget() -> None:
    cfg = ModelSpec(num_steps=16, num_features=2, units=(8,), horizon=8)
    series = fleet_series(3, 10 * 96, seed=2)
    result = train(cfg, series, TrainingSettings(max_seconds=4.0, max_epochs=500), progress=False)
    assert result.stopped_by == "time budget"
    assert result.seconds < 4.0 + 2.0
    assert 1 <= result.best_epoch <= result.epochs < 500
    assert len(result.history["val_loss"]) == result.epochs


def test_train_refuses_too_little_data() -> None:
    cfg = ModelSpec(num_steps=16, num_features=2, units=(8,), horizon=8)
    with pytest.raises(ValueError, match="too little data"):
        train(cfg, fleet_series(2, 30, seed=0), TrainingSettings(), progress=False)
    with pytest.raises(ValueError, match="expected"):
        train(cfg, [np.zeros((100, 3))], TrainingSettings(), progress=False)


# ---------------------------------------------------------------------------------------------
# The quality bar: the default model must earn its keep against both baselines.

QUALITY_SENSORS, QUALITY_DAYS, QUALITY_SEED = 8, 30, 1
FRESH_SENSORS, FRESH_DAYS, FRESH_SEED = 24, 14, 2024
# Required margins, set from measurements of this exact setup (45 s, 2 threads, 5-7 epochs):
# model/persistence MAE <= 0.63 in every bucket; model/seasonal mean MAE 0.88-0.90 on the
# validation part and 0.90-0.92 on the fresh fleet over training seeds 0 and 3 (0.86-0.92 over
# twelve smaller fresh fleets). Stopped after a single epoch, as on a badly overloaded machine,
# it is still 0.93 (validation) and 0.96 (fresh), so a 3% win is demanded, not a tie.
PERSISTENCE_MARGIN = 0.85  # model MAE <= 85% of persistence MAE in every horizon bucket
SEASONAL_MARGIN = 0.97  # model mean MAE <= 97% of seasonal naive's


def _assert_beats_baselines(m: Evaluation, label: str) -> None:
    for row in m.rows:
        model, persistence = m.score("model", row).mae, m.score("persistence", row).mae
        assert model <= PERSISTENCE_MARGIN * persistence, (label, row, model, persistence)
    mean = m.score("model").mae
    assert mean <= SEASONAL_MARGIN * m.score("seasonal").mae, (label, format_evaluation(m))
    assert m.score("model").rmse < m.score("seasonal").rmse, (label, format_evaluation(m))
    assert m.score("model").rmse < m.score("persistence").rmse, (label, format_evaluation(m))


def _timed_fleet(sensors: int, steps: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``fleet_series`` with each series' timestamps: (series, timestamps)."""
    ts, values = SensorFleet(sensors, seed=seed).series(steps)
    return [values[i] for i in range(sensors)], [ts] * sensors


@pytest.mark.slow
def test_default_model_beats_baselines_on_unseen_data() -> None:
    """The default model, calendar included: it is given each reading's time, as served."""
    cfg = ModelSpec()
    assert (cfg.num_steps, cfg.horizon, cfg.num_features) == (96, 96, 2)
    assert cfg.calendar
    settings = TrainingSettings(max_seconds=45.0, threads=2, random_seed=0)
    series, stamps = _timed_fleet(QUALITY_SENSORS, QUALITY_DAYS * 96, QUALITY_SEED)
    result = train(cfg, series, settings, progress=True, timestamps=stamps)
    print(format_evaluation(result.metrics))
    _assert_beats_baselines(result.metrics, "validation")

    fresh, fresh_stamps = _timed_fleet(FRESH_SENSORS, FRESH_DAYS * 96, FRESH_SEED)
    ex = make_examples_many(fresh, cfg.num_steps, cfg.horizon, stride=6, timestamps=fresh_stamps)
    scale = np.stack([s.std(axis=0) for s in fresh])
    fresh_metrics = score_model(result.model, ex, scale)
    print(format_evaluation(fresh_metrics))
    _assert_beats_baselines(fresh_metrics, "fresh fleet")


def test_carry_mode_trains_on_chains_and_serves_one_reading_at_a_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A carry model trains on chains of windows with carried states and, served as the
    daemon serves it at stride 1 (seeded once, then one LSTM step per reading), beats
    persistence on series it never saw."""
    from streamcast.model.predictor import Predictor

    cfg = ModelSpec(
        num_steps=16, num_features=2, units=(8, 8), horizon=8, seeding="carry", calendar=False
    )
    settings = TrainingSettings(max_seconds=60.0, max_epochs=8, random_seed=0)  # by epochs
    with caplog.at_level(logging.INFO, logger="streamcast.learn.fit"):
        result = train(cfg, fleet_series(3, 15 * 96, seed=3), settings, progress=False)
    assert "training carry mode on chains links=32" in caplog.text

    predictor = Predictor(result.model, cfg, max_batch=8, carried_steps=1)
    fresh = np.stack(fleet_series(3, 4 * 96, seed=11)).astype(np.float32)  # (3, n, 2)
    errors, naive = [], []
    states = None
    for end in range(cfg.num_steps, fresh.shape[1] - cfg.horizon):  # window ends at ``end``
        window = fresh[:, end - cfg.num_steps + 1 : end + 1]
        truth = fresh[:, end - cfg.num_steps]
        out = predictor.predict(window, truth, carry=states)
        states = out.states
        target = fresh[:, end + 1 : end + 1 + cfg.horizon]
        errors.append(np.abs(out.forecast - target).mean())
        naive.append(np.abs(fresh[:, end : end + 1] - target).mean())
    assert np.mean(errors) < 0.8 * np.mean(naive), (np.mean(errors), np.mean(naive))


# ---------------------------------------------------------------------------------------------
# Seasonal lags (``model.seasonal_lag``).


def _weekly(weeks: int, sensors: int, seed: int) -> list[np.ndarray]:
    """Hourly readings from Monday 00:00, 4 lower on weekends (a few stds of the noise):
    a 48-step window at the end of a Friday cannot see that Saturday drops."""
    rng = np.random.default_rng(seed)
    n = 24 * 7 * weeks
    weekend = ((np.arange(n) // 24) % 7) >= 5
    series = []
    for s in range(sensors):
        v = 10 + 5 * s - 4 * weekend + rng.normal(0, 0.3, n)
        series.append(np.stack([v, 2 * v + rng.normal(0, 0.3, n)], axis=1))
    return series


def test_a_weekly_season_the_window_cannot_show_is_learned_from_the_lags() -> None:
    """Last week's readings at each forecast step tell what the 48-step window cannot.

    Measured (8 weeks of 4 series, 10 epochs, training seeds 0-4 on data seeds 0-4):
    validation MAE 0.42-0.43 without lags, 0.19-0.20 with (ratio 0.44-0.46), 6-8 s a fit
    on two idle cores. Demanded: 30 % lower. No forecast can beat the noise (about 0.14
    in these units), so an MAE far under it would mean the lags leak the target.
    """
    series = _weekly(weeks=8, sensors=4, seed=0)
    settings = TrainingSettings(
        max_epochs=10,
        max_seconds=120,  # the same epochs for both, however loaded the machine
        patience=4,
        batch_size=128,
        learning_rate=6e-3,
        random_seed=0,
        threads=2,
    )
    mae = {}
    for lag in (0, 168):
        cfg = ModelSpec(num_steps=48, horizon=24, units=(8,), seasonal_lag=lag, calendar=False)
        result = train(cfg, series, settings, progress=False)
        assert result.epochs == 10
        mae[lag] = result.metrics.score("model").mae
    assert mae[168] < 0.7 * mae[0], mae
    assert mae[168] > 0.1, mae


def test_carry_mode_with_lags_trains_on_chains_and_serves_finite_forecasts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The chains carry each link's own lags; gradients reach the lag branch (it starts at
    zero), and the carried stepper serves finite forecasts that the lags move."""
    from streamcast.model.predictor import Predictor

    cfg = ModelSpec(
        num_steps=16,
        num_features=2,
        units=(8,),
        horizon=8,
        seeding="carry",
        seasonal_lag=24,
        calendar=False,
    )
    settings = TrainingSettings(max_seconds=60.0, max_epochs=2, random_seed=0, threads=2)
    with caplog.at_level(logging.INFO, logger="streamcast.learn.fit"):
        result = train(cfg, fleet_series(2, 6 * 96, seed=3), settings, progress=False)
    assert "training carry mode on chains links=32" in caplog.text
    assert result.epochs == 2 and np.isfinite(result.history["loss"]).all()
    assert np.isfinite(result.metrics.score("model").mae)
    kernel, _ = result.model.get_layer("lag_out").get_weights()
    assert np.abs(kernel).max() > 0  # trained: the chains' gradients reached it

    predictor = Predictor(result.model, cfg, max_batch=4, carried_steps=1, jit_compile="off")
    fresh = np.stack(fleet_series(2, 96, seed=11)).astype(np.float32)  # (2, n, 2)
    steps = np.arange(1, cfg.horizon + 1)
    states, moved = None, 0.0
    for end in range(cfg.num_steps, 48):  # lags known from end 23 on
        window = fresh[:, end - cfg.num_steps + 1 : end + 1]
        truth = fresh[:, end - cfg.num_steps]
        known = end + 1 - cfg.seasonal_lag >= 0
        lags = fresh[:, end + steps - cfg.seasonal_lag] if known else np.zeros((2, 8, 2))
        flags = np.full(2, float(known))
        out = predictor.predict(window, truth, carry=states, lags=lags, lags_known=flags)
        assert np.isfinite(out.forecast).all() and np.isfinite(out.states).all()
        if known:
            blind = predictor.predict(
                window, truth, carry=states, lags=np.zeros_like(lags), lags_known=0 * flags
            )
            moved = max(moved, float(np.abs(out.forecast - blind.forecast).max()))
        states = out.states
    assert moved > 0.0, moved
