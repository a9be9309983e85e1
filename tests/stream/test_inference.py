"""Batch inference with seasonal lags: a version is served only with the lags it was
built for, and a version without lags is served whatever the configuration's season."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamcast.config import ModelSpec, Settings
from streamcast.errors import ModelMismatchError, StartupError
from streamcast.learn.examples import seasonal_lags
from streamcast.learn.registry import ModelRegistry
from streamcast.stream.batcher import Ready
from streamcast.stream.inference import BatchInference
from streamcast.stream.messages import Readings
from streamcast.stream.serving import Serving
from streamcast.stream.windows import WindowStore

STEPS, H, F, LAG = 8, 4, 2, 12


def _spec(seasonal_lag: int) -> ModelSpec:
    return ModelSpec(
        num_steps=STEPS,
        horizon=H,
        units=(8,),
        seasonal_lag=seasonal_lag,
        dropout=0.0,
        calendar=False,
    )


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """seasonal_lag -> a registry whose one version is a model with that season (0: none)."""
    from streamcast.model import build_forecaster
    from streamcast.model.runtime import keras

    out = {}
    for lag in (0, LAG):
        keras.utils.set_random_seed(5)
        model = build_forecaster(_spec(lag))
        if lag:  # the lag branch's output starts at zero: make the lags matter
            layer = model.get_layer("lag_out")
            rng = np.random.default_rng(6)
            layer.set_weights([rng.normal(0, 0.5, w.shape) for w in layer.get_weights()])
        registry = ModelRegistry(tmp_path_factory.mktemp(f"registry-{lag}"))
        registry.save(model, _spec(lag))
        out[lag] = registry.path
    return out


def _settings(registry: Path, seasonal_lag: int, horizon: int = H) -> Settings:
    return Settings(
        window={"num_steps": STEPS, "capacity": 4},
        model={
            "num_features": F,
            "units": [8],
            "horizon": horizon,
            "dropout": 0.0,
            "seasonal_lag": seasonal_lag,
        },
        inference={"max_batch": 8, "jit_compile": "off"},
        registry={"path": registry},
    )


def _serving(settings: Settings) -> Serving:
    return Serving(
        settings,
        WindowStore.for_settings(settings),
        on_loaded=lambda version, seconds: None,
        pause_input=lambda: None,
        resume_input=lambda: None,
        status=lambda phase, status: None,
    )


@pytest.mark.parametrize(("seasonal_lag", "horizon"), [(0, H), (16, H), (LAG, 6)])
def test_prepare_refuses_a_lag_model_built_for_another_season(
    registries: dict[int, Path], seasonal_lag: int, horizon: int
) -> None:
    settings = _settings(registries[LAG], seasonal_lag, horizon)
    loaded = ModelRegistry(registries[LAG]).load()
    inference = BatchInference(settings, WindowStore.for_settings(settings))
    with pytest.raises(ModelMismatchError, match=rf"seasonal_lag={seasonal_lag}\b") as info:
        inference.prepare(loaded, 0.0, warm=False)
    assert f"season of {LAG} steps" in str(info.value)


def test_start_up_stops_on_a_lag_model_built_for_another_season(
    registries: dict[int, Path],
) -> None:
    serving = _serving(_settings(registries[LAG], LAG + 4))
    with pytest.raises(StartupError, match=rf"seasonal_lag={LAG + 4}\b"):
        serving.start()
    assert serving.version is None


@pytest.mark.parametrize("model_lag", [0, LAG], ids=["plain-model", "lag-model"])
def test_a_lag_configuration_serves_its_lag_model_and_one_without_lags(
    registries: dict[int, Path], model_lag: int
) -> None:
    settings = _settings(registries[model_lag], LAG)
    serving = _serving(settings)
    serving.start()
    assert serving.version == 1 and serving.served is not None
    # A sensor's windows, several per batch, through the daemon's own store and batch.
    rng = np.random.default_rng(8)
    n = 30
    values = (np.sin(np.arange(n) / 3.0)[:, None] * [4.0, 9.0] + [20.0, 70.0]).astype(np.float32)
    values += rng.normal(0, 0.2, values.shape).astype(np.float32)
    readings = Readings(["a"] * n, 900.0 * np.arange(n), values, partitions=np.zeros(n, np.int32))
    appended = serving.store.append(readings)
    batch = Ready.of(readings, appended)
    last = np.arange(STEPS, n)
    assert batch.lags.shape == (len(last), H, F)
    done = serving.inference.forecast(serving.served, batch)
    assert not done.letters and done.batch.ts.tolist() == (900.0 * last).tolist()
    lags, known = seasonal_lags(values, last, H, LAG)
    assert 0 < known.sum() < len(known)
    inputs = {
        "window": np.stack([values[i - STEPS + 1 : i + 1] for i in last]),
        "truth": values[last - STEPS],
    }
    model = ModelRegistry(registries[model_lag]).load().model
    if model_lag:
        inputs |= {"lags": lags, "lags_known": known}
    want = model.predict(inputs, verbose=0)
    np.testing.assert_allclose(done.values, want, rtol=1e-5, atol=1e-5)
    if model_lag:  # the lags reached the model
        zeroed = model.predict({**inputs, "lags": np.zeros_like(lags)}, verbose=0)
        assert np.abs(done.values - zeroed).max() > 1e-3
