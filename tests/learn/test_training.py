"""Examples, baselines, metrics, CSV input, the train command, and the model's quality bar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamcast.learn.training import (
    Examples,
    Metrics,
    baselines,
    evaluate,
    format_metrics,
    horizon_buckets,
    load_csv,
    make_examples,
    make_examples_many,
    run_train,
    score_model,
    split_at_gaps,
    split_series,
    split_sizes,
    train,
)

from streamcast.config import ModelSpec, TrainingSettings
from streamcast.learn.registry import ModelRegistry
from streamcast.sim.fleet import fleet_series


def _arange_series(n: int) -> np.ndarray:
    """Feature 0 is the index, feature 1 the index + 1000: alignment is readable off values."""
    i = np.arange(n, dtype=np.float64)
    return np.stack([i, 1000 + i], axis=1)


def test_examples_alignment_truth_before_window_target_after() -> None:
    ex = make_examples(_arange_series(30), num_steps=5, horizon=3)
    assert len(ex) == 30 - (1 + 5 + 3) + 1
    assert ex.window.shape == (22, 5, 2) and ex.window.dtype == np.float32
    assert ex.truth.shape == (22, 2) and ex.target.shape == (22, 3, 2)
    for i in range(len(ex)):
        np.testing.assert_array_equal(ex.truth[i], [i, 1000 + i])
        np.testing.assert_array_equal(ex.window[i, :, 0], np.arange(i + 1, i + 6))
        np.testing.assert_array_equal(ex.target[i, :, 0], np.arange(i + 6, i + 9))
        np.testing.assert_array_equal(ex.target[i, :, 1], 1000 + np.arange(i + 6, i + 9))
    # The last example's target ends on the last reading.
    assert ex.target[-1, -1, 0] == 29


def test_examples_stride_short_series_and_non_finite() -> None:
    strided = make_examples(_arange_series(30), num_steps=5, horizon=3, stride=4)
    np.testing.assert_array_equal(strided.truth[:, 0], np.arange(0, 22, 4))
    short = make_examples(_arange_series(8), num_steps=5, horizon=3)
    assert len(short) == 0 and short.window.shape == (0, 5, 2) and short.target.shape == (0, 3, 2)
    gappy = _arange_series(30)
    gappy[15, 1] = np.nan
    ex = make_examples(gappy, num_steps=5, horizon=3)
    starts = ex.truth[:, 0].astype(int)
    assert len(ex) == 22 - 9  # every example whose span covers reading 15 is dropped
    assert not ((starts >= 15 - 8) & (starts <= 15)).any()
    assert np.isfinite(ex.window).all() and np.isfinite(ex.target).all()


def test_examples_many_concatenates_with_sources() -> None:
    ex = make_examples_many([_arange_series(12), 5 * _arange_series(14)], 3, 2)
    assert len(ex) == (12 - 5) + (14 - 5)
    np.testing.assert_array_equal(ex.source, [0] * 7 + [1] * 9)
    np.testing.assert_array_equal(ex.truth[7], [0, 5000])


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


def test_format_metrics_table() -> None:
    target = np.zeros((3, 8, 2))
    m = evaluate({"model": target + 0.5, "persistence": target + 1.0}, target)
    text = format_metrics(m)
    lines = text.splitlines()
    assert "model MAE" in lines[0] and "persistence RMSE" in lines[0]
    assert lines[1].split()[0] == "1-6" and lines[2].split()[0] == "7-8"
    assert lines[3].split() == ["mean", "0.5000", "0.5000", "1.0000", "1.0000"]
    assert "3 examples" in lines[-1]


def test_chronological_split_has_no_target_leakage() -> None:
    series = _arange_series(200)
    split = split_series([series], num_steps=10, horizon=5, validation_fraction=0.25)
    last_train_target = split.train.target[:, :, 0].max()
    first_val_target = split.val.target[:, :, 0].min()
    assert last_train_target == 149 and first_val_target == 150
    assert split.val.target[:, -1, 0].max() == 199
    np.testing.assert_allclose(split.scale[0], series[:150].std(axis=0))


def test_split_sizes_match_the_split() -> None:
    lengths = [200, 60, 31, 10]
    split = split_series(
        [_arange_series(n) for n in lengths], num_steps=10, horizon=5, validation_fraction=0.25
    )
    assert split_sizes(lengths, 10, 5, 0.25) == (len(split.train), len(split.val))
    assert split_sizes([10], 10, 5, 0.25) == (0, 0)


def test_load_csv_sorts_and_groups(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(
        "sensor,ts,v1,v2,v3\n"
        "b,300,3,30,300\n"
        "a,200,2,20,200\n"
        "b,100,1,10,100\n"
        "a,100,1,10,100\n"
        "\n"
        "b,200,2,20,200\n"
    )
    data = load_csv(path)
    assert sorted(data) == ["a", "b"]
    ts, values = data["b"]
    np.testing.assert_array_equal(ts, [100, 200, 300])
    np.testing.assert_array_equal(values, [[1, 10, 100], [2, 20, 200], [3, 30, 300]])
    assert data["a"][1].shape == (2, 3)


def test_load_csv_takes_iso_times_and_keeps_empty_cells_as_gaps(tmp_path: Path) -> None:
    path = tmp_path / "real.csv"
    path.write_text(
        "sensor,ts,v1,v2\n"
        "p,2026-01-01T00:15:00Z,1.5,\n"
        "p,2026-01-01T00:00:00,1.0,2.0\n"
        "p,1767227400,2.0,nan\n"
    )
    ts, values = load_csv(path)["p"]
    assert ts.tolist() == [1767225600.0, 1767226500.0, 1767227400.0]
    assert values[0].tolist() == [1.0, 2.0]
    assert np.isnan(values[1, 1]) and values[1, 0] == 1.5


def test_split_at_gaps_cuts_where_readings_stop() -> None:
    ts = np.array([0, 900, 1800, 2700, 9000, 9900, 10800], dtype=np.float64)
    values = np.arange(14, dtype=np.float64).reshape(7, 2)
    pieces = split_at_gaps(ts, values)
    assert [p[0].tolist() for p in pieces] == [[0, 900, 1800, 2700], [9000, 9900, 10800]]
    assert pieces[1][1][0].tolist() == [8.0, 9.0]


@pytest.mark.parametrize(
    ("body", "line", "what"),
    [
        ("a,1,2,3\na,2,x,3\n", 3, "not a number"),
        ("a,1,2,3\na,2,3\n", 3, "fields"),
        ("a,1,2,3\n,2,3,4\n", 3, "sensor"),
        ("a,1,2,3\na,2,inf,4\n", 3, "not finite"),
        ("a,1,2,3\na,yesterday,3,4\n", 3, "ISO 8601"),
    ],
)
def test_load_csv_names_file_and_line(tmp_path: Path, body: str, line: int, what: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("sensor,ts,v1,v2\n" + body)
    with pytest.raises(ValueError, match=what) as info:
        load_csv(path)
    assert f"{path}:{line}:" in str(info.value)


def test_load_csv_rejects_bad_header_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("sensor,time,v1\na,1,2\n")
    with pytest.raises(ValueError, match=r":1: header"):
        load_csv(path)
    path.write_text("sensor,ts,v1\na,1,2\na,1,3\n")
    with pytest.raises(ValueError, match="two readings"):
        load_csv(path)


def test_run_train_saves_a_version_and_prints_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ModelSpec(num_steps=16, num_features=2, units=(8,), horizon=8)
    settings = TrainingSettings(max_seconds=3.0, max_epochs=50, threads=2)
    version = run_train(
        cfg=cfg,
        settings=settings,
        registry_path=tmp_path / "reg",
        data=None,
        simulated=True,
        sensors=3,
        days=3,
        seed=1,
    )
    out = capsys.readouterr().out
    assert version == 1
    assert "epoch   1/50" in out and "val_loss" in out
    assert "persistence MAE" in out and "seasonal RMSE" in out
    assert "saved model version 1" in out
    loaded = ModelRegistry(tmp_path / "reg").load(expect=cfg)
    dr = loaded.meta["data_range"]
    assert dr["sensors"] == 3 and dr["readings"] == 3 * 3 * 96
    assert dr["first"].startswith("2024-01-01T00:00:00")
    assert dr["last_ts"] - dr["first_ts"] == (3 * 96 - 1) * 900
    assert loaded.meta["metrics"]["scores"]["model"]["mean"]["mae"] > 0
    json.dumps(loaded.meta)  # the whole meta is plain JSON


def test_run_train_from_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = fleet_series(2, 200, seed=4, num_features=1)
    path = tmp_path / "in.csv"
    rows = [
        f"s{s},{1000 + 60 * i},{float(series[s][i, 0])!r}" for s in range(2) for i in range(200)
    ]
    path.write_text("sensor,ts,v1\n" + "\n".join(reversed(rows)) + "\n")
    cfg = ModelSpec(num_steps=8, num_features=1, units=(4,), horizon=4)
    version = run_train(
        cfg=cfg,
        settings=TrainingSettings(max_seconds=2.0, max_epochs=2),
        registry_path=tmp_path / "reg",
        data=path,
        simulated=False,
        sensors=0,
        days=0,
        seed=0,
    )
    assert version == 1
    meta = ModelRegistry(tmp_path / "reg").meta(1)
    assert meta["data_range"]["first_ts"] == 1000 and meta["data_range"]["sensors"] == 2
    assert "in.csv (2 sensors)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="num_features"):
        run_train(
            cfg=cfg.model_copy(update={"num_features": 2}),
            settings=TrainingSettings(max_seconds=1.0),
            registry_path=tmp_path / "reg",
            data=path,
            simulated=False,
            sensors=0,
            days=0,
            seed=0,
        )


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


def _assert_beats_baselines(m: Metrics, label: str) -> None:
    for row in m.rows:
        model, persistence = m.score("model", row).mae, m.score("persistence", row).mae
        assert model <= PERSISTENCE_MARGIN * persistence, (label, row, model, persistence)
    mean = m.score("model").mae
    assert mean <= SEASONAL_MARGIN * m.score("seasonal").mae, (label, format_metrics(m))
    assert m.score("model").rmse < m.score("seasonal").rmse, (label, format_metrics(m))
    assert m.score("model").rmse < m.score("persistence").rmse, (label, format_metrics(m))


@pytest.mark.slow
def test_default_model_beats_baselines_on_unseen_data() -> None:
    cfg = ModelSpec()
    assert (cfg.num_steps, cfg.horizon, cfg.num_features) == (96, 96, 2)
    settings = TrainingSettings(max_seconds=45.0, threads=2, seed=0)
    series = fleet_series(QUALITY_SENSORS, QUALITY_DAYS * 96, seed=QUALITY_SEED)
    result = train(cfg, series, settings, progress=True)
    assert result.seconds <= 50.0
    print(format_metrics(result.metrics))
    _assert_beats_baselines(result.metrics, "validation")

    fresh = fleet_series(FRESH_SENSORS, FRESH_DAYS * 96, seed=FRESH_SEED)
    ex = make_examples_many(fresh, cfg.num_steps, cfg.horizon, stride=6)
    scale = np.stack([s.std(axis=0) for s in fresh])
    fresh_metrics = score_model(result.model, ex, scale)
    print(format_metrics(fresh_metrics))
    _assert_beats_baselines(fresh_metrics, "fresh fleet")
