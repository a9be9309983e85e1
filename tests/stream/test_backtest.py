"""Backtest: the daemon's forecasts, recomputed independently, and scores checked by hand."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from streamcast.config import ModelSpec
from streamcast.learn.registry import LoadedModel, ModelRegistry
from streamcast.stream.backtest import run_backtest
from streamcast.stream.inference import Forecasts

STEPS, H, F = 8, 4, 2
STEP_S = 60.0


def _model(tmp_path, seeding: str = "truth", calendar: bool = False) -> LoadedModel:  # type: ignore[no-untyped-def]
    from streamcast.model import build_forecaster
    from streamcast.model.runtime import keras

    keras.utils.set_random_seed(seeding.__len__())
    spec = ModelSpec(
        num_steps=STEPS, horizon=H, num_features=F, units=[6, 5], seeding=seeding,
        calendar=calendar,
    )  # fmt: skip
    model = build_forecaster(spec)
    for layer in model.layers:  # the calendar effect starts at zero: make it visible
        if layer.name == "calendar_out":
            layer.set_weights([np.full_like(w, 0.5) for w in layer.get_weights()])
    # A model whose output depends on its seed, its window and its position in time.
    registry = ModelRegistry(tmp_path / f"registry-{seeding}-{calendar}")
    registry.save(model, spec)
    return registry.load()


def _series(n: int, seed: int, t0: float = 1_700_000_000.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = t0 + STEP_S * np.arange(n)
    phase = np.arange(n) / 12.0
    values = np.stack([10 + 3 * np.sin(phase), 50 + 5 * np.cos(phase)], axis=1)
    return ts, values + rng.normal(0, 0.3, values.shape)


def _collect(into: list[Forecasts]):  # type: ignore[no-untyped-def]
    return into.append


def _by_key(done: list[Forecasts]) -> dict[tuple[str, float], np.ndarray]:
    out = {}
    for f in done:
        for i, s in enumerate(f.batch.sensors):
            out[(s, float(f.batch.ts[i]))] = f.values[i]
    return out


@pytest.mark.parametrize("calendar", [False, True], ids=["plain", "calendar"])
def test_forecasts_are_the_predictors_on_each_window_and_its_truth(tmp_path, calendar) -> None:  # type: ignore[no-untyped-def]
    from streamcast.learn.calendar import calendar_inputs
    from streamcast.model.predictor import Predictor

    loaded = _model(tmp_path, calendar=calendar)
    data = {"a": _series(40, 1), "b": _series(33, 2, t0=1_700_000_030.0)}
    done: list[Forecasts] = []
    report = run_backtest(
        data, loaded, stride=1, max_batch=16, jit_compile="off", on_forecasts=_collect(done)
    )
    got = _by_key(done)
    predictor = Predictor(loaded.model, loaded.cfg, max_batch=16, jit_compile="off")
    expected = 0
    for name, (ts, values) in data.items():
        for i in range(STEPS, len(ts)):  # a window needs STEPS readings and the truth before
            window = values[i - STEPS + 1 : i + 1].astype(np.float32)
            truth = values[i - STEPS].astype(np.float32)
            when = calendar_inputs([ts[i]], STEP_S)
            want = predictor.predict(window[None], truth[None], calendar=when).forecast[0]
            np.testing.assert_allclose(got[(name, float(ts[i]))], want, rtol=1e-5, atol=1e-5)
            expected += 1
    assert len(got) == expected == report.forecasts
    assert report.unforecastable == 0


def test_scores_match_a_hand_computation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    loaded = _model(tmp_path)
    data = {"a": _series(60, 3), "b": _series(50, 4)}
    start = float(data["a"][0][20])
    done: list[Forecasts] = []
    report = run_backtest(
        data,
        loaded,
        stride=2,
        start=start,
        season=3,
        max_batch=16,
        jit_compile="off",
        on_forecasts=_collect(done),
    )
    errors = {"model": [], "persistence": [], "seasonal_naive": []}  # type: ignore[var-annotated]
    smape = []
    windows = 0
    for (name, t), fc in _by_key(done).items():
        if t < start:
            continue
        ts, values = data[name]
        i = int(np.flatnonzero(ts == t)[0])
        future = values[i + 1 : i + 1 + H]
        if not len(future):
            continue
        windows += 1
        k = len(future)
        window = values[i - STEPS + 1 : i + 1]
        seasonal = window[STEPS - 3 + np.arange(H) % 3][:k]
        errors["model"].append(np.abs(fc[:k] - future))
        errors["persistence"].append(np.abs(window[-1] - future))
        errors["seasonal_naive"].append(np.abs(seasonal - future))
        smape.append(200 * np.abs(fc[:k] - future) / (np.abs(fc[:k]) + np.abs(future)))
    assert windows == report.windows > 0
    doc = report.as_dict()
    for name, errs in errors.items():
        flat = np.concatenate([e.ravel() for e in errs])
        assert doc[name]["mae"] == pytest.approx(flat.mean(), rel=1e-5)
        per_feature = np.concatenate(errs).mean(axis=0)
        assert [f["mae"] for f in doc[name]["by_feature"]] == pytest.approx(per_feature, rel=1e-5)
    assert doc["model"]["smape"] == pytest.approx(
        np.concatenate([s.ravel() for s in smape]).mean(), rel=1e-4
    )
    assert doc["skill"] == pytest.approx(1 - doc["model"]["mae"] / doc["persistence"]["mae"])
    # Only every other reading is forecast (the stride follows ts, as the daemon's does).
    assert all((t - data[s][0][0]) % (2 * STEP_S) in (0.0, STEP_S) for s, t in _by_key(done))
    assert len({t % (2 * STEP_S) for s, t in _by_key(done) if s == "a"}) == 1


def test_truth_is_matched_by_time_so_a_missing_reading_is_not_scored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    loaded = _model(tmp_path)
    ts, values = _series(30, 5)
    gap = 20  # the reading at row 20 never arrived
    holed = {"a": (np.delete(ts, gap), np.delete(values, gap, axis=0))}
    done: list[Forecasts] = []
    report = run_backtest(
        holed,
        loaded,
        start=float(ts[18]),
        max_batch=8,
        jit_compile="off",
        on_forecasts=_collect(done),
    )
    at = dict(zip(holed["a"][0].tolist(), holed["a"][1], strict=True))
    model_err, persist_err = [], []
    for (_, t), fc in _by_key(done).items():
        for k in range(1, H + 1):
            truth = at.get(t + k * STEP_S)
            if truth is not None:  # row 20's time has none: that step is not scored
                model_err.append(np.abs(fc[k - 1] - truth))
                persist_err.append(np.abs(at[t] - truth))
    assert report.evaluation.score("model").mae == pytest.approx(np.mean(model_err), rel=1e-5)
    assert report.evaluation.score("persistence").mae == pytest.approx(
        np.mean(persist_err), rel=1e-5
    )
    # Issued at row 19: step 1 (row 20) is missing, and step 2 is row 21, not row 20's slot.
    assert report.windows == len({t for _, t in _by_key(done)}) - 1  # the last has no future


@pytest.mark.parametrize("stride", [1, STEPS])
def test_carry_mode_carries_states_through_the_history_before_start(tmp_path, stride) -> None:  # type: ignore[no-untyped-def]
    loaded = _model(tmp_path, "carry")
    data = {"a": _series(40, 6)}
    start = float(data["a"][0][27])  # a forecast of either stride's (at 8: rows 11, 19, 27, 35)
    with pytest.raises(ValueError, match=r"seeding 'carry'.* at most the window's 8"):
        run_backtest(data, loaded, stride=STEPS + 1)
    whole: list[Forecasts] = []
    run = functools.partial(run_backtest, stride=stride, max_batch=8, jit_compile="off")
    run(data, loaded, on_forecasts=_collect(whole))
    later: list[Forecasts] = []
    run(data, loaded, start=start, on_forecasts=_collect(later))
    a, b = _by_key(whole), _by_key(later)
    for key, fc in b.items():
        if key[1] >= start:
            np.testing.assert_allclose(fc, a[key], rtol=1e-5, atol=1e-5)
    # Starting cold at ``start`` (no history) gives other forecasts: the carry mattered.
    ts, values = data["a"]
    cold: list[Forecasts] = []
    cut = 17  # the window and truth of row 27's forecast, and one reading to spare
    run({"a": (ts[cut:], values[cut:])}, loaded, on_forecasts=_collect(cold))
    first = ("a", start)
    assert np.abs(_by_key(cold)[first] - a[first]).max() > 1e-4


def test_a_sensor_filter_and_bad_arguments(tmp_path) -> None:  # type: ignore[no-untyped-def]
    loaded = _model(tmp_path)
    data = {"a": _series(30, 1), "b": _series(30, 2)}
    report = run_backtest(data, loaded, sensors=["b"], max_batch=8, jit_compile="off")
    assert report.sensors == 1
    with pytest.raises(ValueError, match="not in the data: zz"):
        run_backtest(data, loaded, sensors=["zz"])
    with pytest.raises(ValueError, match="season 9"):
        run_backtest(data, loaded, season=9)


LAG = 12  # seasonal_lag of the lag models: longer than the window and its truth


def _lag_model(tmp_path, seeding: str = "truth") -> LoadedModel:  # type: ignore[no-untyped-def]
    """A model that reads its lags: the lag branch's output layer starts at zero, so it is
    given random weights (its hidden layer already has them)."""
    from streamcast.model import build_forecaster
    from streamcast.model.runtime import keras

    keras.utils.set_random_seed(11)
    spec = ModelSpec(
        num_steps=STEPS,
        horizon=H,
        units=(8,),
        seasonal_lag=LAG,
        dropout=0.0,
        seeding=seeding,
        calendar=False,
    )
    model = build_forecaster(spec)
    out = model.get_layer("lag_out")
    rng = np.random.default_rng(12)
    out.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in out.get_weights()])
    registry = ModelRegistry(tmp_path / f"registry-lag-{seeding}")
    registry.save(model, spec)
    return registry.load()


def _inputs(values: np.ndarray, last: np.ndarray) -> dict[str, np.ndarray]:
    """The model's inputs for the windows ending at ``last``, straight from the series."""
    from streamcast.learn.examples import seasonal_lags

    lags, known = seasonal_lags(values, last, H, LAG)
    return {
        "window": np.stack([values[i - STEPS + 1 : i + 1] for i in last]).astype(np.float32),
        "truth": values[last - STEPS].astype(np.float32),
        "lags": lags,
        "lags_known": known,
    }


def test_a_seasonal_lag_model_is_given_each_windows_lags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    loaded = _lag_model(tmp_path)
    data = {"a": _series(40, 7), "b": _series(31, 8, t0=1_700_000_030.0)}
    done: list[Forecasts] = []
    report = run_backtest(
        data, loaded, stride=1, max_batch=16, jit_compile="off", on_forecasts=_collect(done)
    )
    got = _by_key(done)
    assert len(got) == report.forecasts == sum(len(ts) - STEPS for ts, _ in data.values())
    known_rows = 0
    for name, (ts, values) in data.items():
        last = np.arange(STEPS, len(ts))  # a window needs STEPS readings and the truth
        inputs = _inputs(values, last)
        forecast = np.stack([got[(name, float(ts[i]))] for i in last])
        want = loaded.model.predict(inputs, verbose=0)
        np.testing.assert_allclose(forecast, want, rtol=1e-5, atol=1e-5)
        # The lags and whether they are known both move the forecast: a backtest that
        # dropped them, or misjudged which are known, would not have matched.
        known = inputs["lags_known"][:, 0] == 1.0
        assert known[LAG - 1 - STEPS :].all() and not known[: LAG - 1 - STEPS].any()
        known_rows += int(known.sum())
        zeroed = loaded.model.predict({**inputs, "lags": np.zeros_like(inputs["lags"])}, verbose=0)
        assert (np.abs(forecast - zeroed).max(axis=(1, 2))[known] > 1e-3).all()
        flipped = loaded.model.predict(
            {**inputs, "lags_known": 1 - inputs["lags_known"]}, verbose=0
        )
        assert (np.abs(forecast - flipped).max(axis=(1, 2)) > 1e-3).all()
    assert 0 < known_rows < len(got)


def test_a_seasonal_lag_model_in_carry_mode_gets_its_lags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Window after window, the backtest's carried forecasts are the predictor's, stepped
    one reading at a time from the states of the window before, with the series' lags."""
    from streamcast.model.predictor import Predictor

    loaded = _lag_model(tmp_path, "carry")
    ts, values = _series(30, 9)
    done: list[Forecasts] = []
    run_backtest(
        {"a": (ts, values)},
        loaded,
        stride=1,
        max_batch=8,
        jit_compile="off",
        on_forecasts=_collect(done),
    )
    got = _by_key(done)
    last = np.arange(STEPS, len(ts))
    assert sorted(t for _, t in got) == ts[last].tolist()
    inputs = _inputs(values, last)
    predictor = Predictor(loaded.model, loaded.cfg, max_batch=8, jit_compile="off", carried_steps=1)

    def chain(lags: np.ndarray) -> np.ndarray:
        out, states = [], None
        for k in range(len(last)):
            one = {name: a[k : k + 1] for name, a in inputs.items()}
            p = predictor.predict(
                one["window"],
                one["truth"],
                carry=states,
                lags=lags[k : k + 1],
                lags_known=one["lags_known"],
            )
            out.append(p.forecast[0])
            states = p.states
        return np.stack(out)

    forecast = np.stack([got[("a", float(ts[i]))] for i in last])
    np.testing.assert_allclose(forecast, chain(inputs["lags"]), rtol=1e-5, atol=1e-5)
    known = inputs["lags_known"][:, 0] == 1.0
    assert known.any() and not known.all()
    zeroed = chain(np.zeros_like(inputs["lags"]))
    assert (np.abs(forecast - zeroed).max(axis=(1, 2))[known] > 1e-3).all()
