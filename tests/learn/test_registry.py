"""The model registry: atomic numbered versions, checksums, shape checks on load."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from pathlib import Path

import keras
import numpy as np
import pytest

import streamcast
from streamcast.config import ModelSpec
from streamcast.errors import ModelMismatchError, RegistryError
from streamcast.learn.registry import META_FILE, MODEL_FILE, ModelRegistry
from streamcast.model import build_forecaster

CFG = ModelSpec(num_steps=8, num_features=2, units=(8,), horizon=4, dropout=0.0)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return build_forecaster(CFG)


def _inputs(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "window": (10 + rng.standard_normal((n, CFG.num_steps, CFG.num_features))).astype(
            np.float32
        ),
        "truth": (10 + rng.standard_normal((n, CFG.num_features))).astype(np.float32),
    }


def test_round_trip_keeps_predictions_and_meta(tmp_path: Path, model: keras.Model) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    metrics = {"scores": {"model": {"mean": {"mae": 0.25, "rmse": 0.3}}}}
    data_range = {"first_ts": 1.0, "last_ts": 2.0, "sensors": 3, "examples": 40}
    version = reg.save(model, CFG, metrics=metrics, data_range=data_range)
    assert version == 1
    loaded = reg.load(expect=CFG)
    assert loaded.version == 1
    assert loaded.cfg == CFG
    assert loaded.path == tmp_path / "reg" / "v000001"
    x = _inputs()
    np.testing.assert_allclose(
        loaded.model.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-5
    )
    meta = loaded.meta
    assert meta["version"] == 1
    assert meta["streamcast_version"] == streamcast.__version__
    assert meta["model_config"] == CFG.model_dump(mode="json")
    assert meta["metrics"] == metrics
    assert meta["data_range"] == data_range
    created = datetime.fromisoformat(meta["created"])
    assert created.utcoffset() == timedelta(0)
    digest = hashlib.sha256((loaded.path / MODEL_FILE).read_bytes()).hexdigest()
    assert meta["sha256"] == digest
    assert json.loads((loaded.path / META_FILE).read_text()) == meta


def test_versions_increment_and_latest_is_loaded(tmp_path: Path, model: keras.Model) -> None:
    reg = ModelRegistry(tmp_path)
    assert reg.versions() == []
    assert reg.latest() is None
    assert [reg.save(model, CFG), reg.save(model, CFG), reg.save(model, CFG)] == [1, 2, 3]
    assert reg.versions() == [1, 2, 3]
    assert reg.latest() == 3
    assert reg.load().version == 3
    assert reg.load(2).version == 2
    # Leftovers of a writer that died mid-save are not versions.
    (tmp_path / ".tmp-dead").mkdir()
    (tmp_path / "notes").mkdir()
    assert reg.versions() == [1, 2, 3]


def test_racing_writer_takes_the_next_number(
    tmp_path: Path, model: keras.Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = ModelRegistry(tmp_path)
    assert reg.save(model, CFG) == 1
    # A second writer that listed the directory before the first one renamed: it aims at 1.
    other = ModelRegistry(tmp_path)
    real_latest = other.latest
    calls = {"n": 0}

    def stale_latest() -> int | None:
        calls["n"] += 1
        return None if calls["n"] == 1 else real_latest()

    monkeypatch.setattr(other, "latest", stale_latest)
    assert other.save(model, CFG) == 2
    assert reg.versions() == [1, 2]
    assert reg.load(2).meta["version"] == 2
    assert reg.load(1).meta["version"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_tampered_model_file_is_refused(tmp_path: Path, model: keras.Model) -> None:
    reg = ModelRegistry(tmp_path)
    version = reg.save(model, CFG)
    path = reg.version_path(version) / MODEL_FILE
    with path.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(RegistryError, match="checksum") as info:
        reg.load(version)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"), [("num_steps", 16), ("num_features", 3), ("horizon", 6)]
)
def test_shape_mismatch_names_both_values(
    tmp_path: Path, model: keras.Model, field: str, value: int
) -> None:
    reg = ModelRegistry(tmp_path)
    reg.save(model, CFG)
    expect = CFG.model_copy(update={field: value})
    with pytest.raises(ModelMismatchError) as info:
        reg.load(expect=expect)
    message = str(info.value)
    assert f"{field}={getattr(CFG, field)}" in message
    assert f"{field}={value}" in message


def test_units_may_differ_from_expectation(tmp_path: Path, model: keras.Model) -> None:
    # Only the data contract (steps, features, horizon) must match; capacity may change.
    reg = ModelRegistry(tmp_path)
    reg.save(model, CFG)
    loaded = reg.load(expect=CFG.model_copy(update={"units": (16, 16)}))
    assert loaded.cfg.units == (8,)


def test_empty_or_missing_registry(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "nothing-here")
    assert reg.versions() == []
    assert reg.latest() is None
    with pytest.raises(RegistryError, match="no model versions"):
        reg.load()
    with pytest.raises(RegistryError, match="no model version 4"):
        ModelRegistry(tmp_path).load(4)


def test_corrupt_meta_is_a_registry_error(tmp_path: Path, model: keras.Model) -> None:
    reg = ModelRegistry(tmp_path)
    version = reg.save(model, CFG)
    (reg.version_path(version) / META_FILE).write_text("{not json")
    with pytest.raises(RegistryError, match=META_FILE):
        reg.load(version)
