"""The model registry: atomic numbered versions, checksums, shape checks on load."""

from __future__ import annotations

import hashlib
import json
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import keras
import numpy as np
import pytest

import streamcast
from streamcast.config import ModelSpec
from streamcast.errors import ModelMismatchError, RegistryError
from streamcast.learn import registry as registry_module
from streamcast.learn.registry import META_FILE, MODEL_FILE, IncompleteVersionError, ModelRegistry
from streamcast.model import build_forecaster

CFG = ModelSpec(num_steps=8, num_features=2, units=(8,), horizon=4, dropout=0.0, calendar=False)


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


# -- each defect of a version is named ---------------------------------------------------


def _never_deserialise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the registry tries to deserialise a model."""

    def refuse(path: Path) -> None:
        raise AssertionError(f"deserialised {path}")

    monkeypatch.setattr(registry_module, "_load_keras", refuse)


@pytest.fixture
def saved(tmp_path: Path, model: keras.Model) -> tuple[ModelRegistry, Path]:
    """A registry holding one good version (1); returns it and the version's directory."""
    reg = ModelRegistry(tmp_path / "reg")
    version = reg.save(model, CFG)
    return reg, reg.version_path(version)


def test_version_without_meta_json_says_the_copy_is_incomplete(
    saved: tuple[ModelRegistry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, vdir = saved
    _never_deserialise(monkeypatch)
    (vdir / META_FILE).unlink()
    with pytest.raises(IncompleteVersionError) as info:
        reg.load(1)
    assert "version 1 has no meta.json (copy incomplete?)" in str(info.value)
    # An empty directory (the first moment of a `cp -r`) says the same.
    (vdir / MODEL_FILE).unlink()
    with pytest.raises(IncompleteVersionError, match=r"version 1 has no meta\.json"):
        reg.load(1)
    # ... and an empty meta.json (created, not yet written).
    (vdir / META_FILE).write_text("")
    with pytest.raises(IncompleteVersionError, match=r"meta\.json is empty \(copy incomplete"):
        reg.load(1)


def test_missing_version_is_not_called_incomplete(saved: tuple[ModelRegistry, Path]) -> None:
    reg, _ = saved
    with pytest.raises(RegistryError, match="no model version 7") as info:
        reg.load(7)
    assert not isinstance(info.value, IncompleteVersionError)


def test_meta_json_that_is_not_json_is_named(
    saved: tuple[ModelRegistry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, vdir = saved
    _never_deserialise(monkeypatch)
    (vdir / META_FILE).write_text('{"version": 1, "model_con')
    with pytest.raises(RegistryError) as info:
        reg.load(1)
    assert not isinstance(info.value, IncompleteVersionError)
    message = str(info.value)
    assert "model version 1" in message
    assert str(vdir / META_FILE) in message
    assert "is not valid JSON" in message
    (vdir / META_FILE).write_text("[1, 2]")
    with pytest.raises(RegistryError, match="does not hold a JSON object"):
        reg.load(1)


def test_version_without_model_keras_says_the_copy_is_incomplete(
    saved: tuple[ModelRegistry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, vdir = saved
    _never_deserialise(monkeypatch)
    (vdir / MODEL_FILE).unlink()
    with pytest.raises(IncompleteVersionError) as info:
        reg.load(1)
    assert "version 1 has no model.keras (copy incomplete?)" in str(info.value)


def test_truncated_model_keras_is_named(
    saved: tuple[ModelRegistry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, vdir = saved
    _never_deserialise(monkeypatch)
    path = vdir / MODEL_FILE
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(RegistryError) as info:
            reg.load(1)
        assert not isinstance(info.value, IncompleteVersionError)
        message = str(info.value)
        assert "is not a Keras archive" in message
        assert "truncated" in message
        assert f"({cut} bytes)" in message
        assert str(path) in message
    path.write_bytes(b"")
    with pytest.raises(RegistryError, match=r"is empty \(truncated copy\?\)"):
        reg.load(1)


def test_zip_that_is_not_a_keras_archive_is_named(
    saved: tuple[ModelRegistry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, vdir = saved
    _never_deserialise(monkeypatch)
    path = vdir / MODEL_FILE
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")
    with pytest.raises(RegistryError, match=r"zip archive but not a Keras one \(no config\.json"):
        reg.load(1)
    path.write_bytes(b"PK\x03\x04 but no more of a zip than that" * 10)
    with pytest.raises(RegistryError, match="is not a Keras archive"):
        reg.load(1)


def test_checksum_mismatch_is_named_and_refused_before_loading(
    saved: tuple[ModelRegistry, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, vdir = saved
    _never_deserialise(monkeypatch)
    meta = json.loads((vdir / META_FILE).read_text())
    meta["sha256"] = "0" * 64
    (vdir / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(RegistryError) as info:
        reg.load(1)
    message = str(info.value)
    assert "model version 1: checksum mismatch" in message
    assert str(vdir / MODEL_FILE) in message
    assert "meta.json records " + "0" * 64 in message


@pytest.mark.parametrize("recorded", [None, "", "not-a-digest", 12])
def test_version_without_a_recorded_checksum_is_refused(
    saved: tuple[ModelRegistry, Path], monkeypatch: pytest.MonkeyPatch, recorded: object
) -> None:
    reg, vdir = saved
    _never_deserialise(monkeypatch)
    meta = json.loads((vdir / META_FILE).read_text())
    if recorded is None:
        del meta["sha256"]
    else:
        meta["sha256"] = recorded
    (vdir / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="records no valid sha256"):
        reg.load(1)


def test_fingerprint_follows_the_files(saved: tuple[ModelRegistry, Path]) -> None:
    reg, vdir = saved
    whole = reg.fingerprint(1)
    assert [name for name, _, _ in whole] == [META_FILE, MODEL_FILE]
    assert dict((n, size) for n, size, _ in whole)[MODEL_FILE] == (vdir / MODEL_FILE).stat().st_size
    assert reg.fingerprint(1) == whole  # stable while nothing changes
    data = (vdir / MODEL_FILE).read_bytes()
    (vdir / MODEL_FILE).write_bytes(data[:100])
    truncated = reg.fingerprint(1)
    assert truncated != whole
    (vdir / MODEL_FILE).unlink()
    assert [name for name, _, _ in reg.fingerprint(1)] == [META_FILE]
    assert reg.fingerprint(99) == ()


def test_a_version_saved_before_the_calendar_setting_loads_without_one(
    tmp_path: Path, model: keras.Model
) -> None:
    """The calendar is on by default for new models; a version whose meta.json predates
    the setting has no calendar layers and must be read as calendar off, and served."""
    reg = ModelRegistry(tmp_path)
    version = reg.save(model, CFG)
    meta_path = reg.version_path(version) / META_FILE
    meta = json.loads(meta_path.read_text())
    del meta["model_config"]["calendar"]
    meta_path.write_text(json.dumps(meta))
    assert ModelSpec(**meta["model_config"]).calendar  # what the default alone would say
    loaded = reg.load(version)
    assert loaded.cfg.calendar is False
    from streamcast.model.predictor import Predictor

    inputs = _inputs()
    got = Predictor(loaded.model, loaded.cfg, max_batch=8).predict(
        inputs["window"], inputs["truth"]
    )
    np.testing.assert_allclose(got.forecast, model.predict(inputs, verbose=0), rtol=1e-5, atol=1e-5)
