"""Models in the running daemon: hot swap between batches, a bad new version skipped,
and carried states flowing from one window of a sensor to its next."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from streamcast.config import ModelSpec
from streamcast.learn.registry import ModelRegistry
from streamcast.model.predictor import Predictor
from streamcast.sim.broker import EmbeddedBroker

from ..waiting import wait_for
from .conftest import (
    SPEC,
    Topics,
    consume,
    fleet_readings,
    forecasts_of,
    produce_readings,
    settings_for,
    train_registry,
)

pytestmark = pytest.mark.integration


def _add_corrupt_version(registry: Path, scratch: Path) -> int:
    """A new version whose checksum no longer matches its model file, appearing in the
    registry in one rename as a real version does (never briefly valid)."""
    v1 = ModelRegistry(registry).load(1)
    staged = ModelRegistry(scratch)
    staged_version = staged.save(v1.model, v1.cfg, metrics={}, data_range={})
    version = (ModelRegistry(registry).latest() or 0) + 1
    meta_path = staged.version_path(staged_version) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = version
    meta["sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    tmp = registry / f".tmp-corrupt-{version}"
    shutil.copytree(staged.version_path(staged_version), tmp)
    os.rename(tmp, ModelRegistry(registry).version_path(version))
    return version


def _wait_version(daemon, version: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.serving.served is not None and daemon.serving.served.version == version:
            return
        time.sleep(0.1)
    raise AssertionError(
        f"still serving {daemon.serving.served.version if daemon.serving.served else None}"
    )


def test_new_versions_swap_in_without_a_restart_and_bad_ones_are_skipped(
    broker: EmbeddedBroker, topics: Topics, registry: Path, start_daemon, tmp_path: Path
) -> None:
    readings = fleet_readings(2, 97 + 30, seed=11)
    first, later = readings[: 2 * 100], readings[2 * 100 :]
    produce_readings(broker, topics.readings, first)
    running = start_daemon(settings_for(broker, topics, registry))
    got = consume(broker, topics.forecasts, until=lambda r: len(r) >= 2 * 4)
    assert {d["model_version"] for d in forecasts_of(got)} == {1}

    # Version 2 is corrupt (its checksum no longer matches): it must not be served.
    serving = running.daemon.serving
    bad = _add_corrupt_version(registry, tmp_path / "scratch")
    wait_for(lambda: serving._rejected_version == bad, 60, f"version {bad} to be rejected")
    assert serving.served is not None and serving.served.version == 1

    reg = ModelRegistry(registry)
    v1 = reg.load(1)
    good = reg.save(v1.model, v1.cfg, metrics={}, data_range={})
    _wait_version(running.daemon, good)
    produce_readings(broker, topics.readings, later)
    records = consume(broker, topics.forecasts, until=lambda r: len(r) >= 2 * 31)
    assert running.stop() == 0
    docs = forecasts_of(records)
    later_keys = {(s, ts) for s, ts, _ in later}
    assert {d["model_version"] for d in docs if (d["sensor"], d["ts"]) in later_keys} == {good}
    sample = running.daemon.metrics.registry.get_sample_value
    assert sample("streamcast_model_info", {"version": str(good)}) == 1
    assert sample("streamcast_model_info", {"version": "1"}) is None


@pytest.fixture(scope="module")
def carry_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ModelSpec(**{**SPEC.model_dump(), "seeding": "carry"})
    return train_registry(tmp_path_factory.mktemp("registry-carry"), spec)


def test_carry_mode_seeds_each_window_with_the_previous_windows_final_states(
    broker: EmbeddedBroker, topics: Topics, carry_registry: Path, start_daemon
) -> None:
    steps = 97 + 96 * 2
    readings = fleet_readings(1, steps, seed=12)
    produce_readings(broker, topics.readings, readings)
    settings = settings_for(
        broker, topics, carry_registry, model={"seeding": "carry"}, window={"stride": 96}
    )
    running = start_daemon(settings)
    records = consume(broker, topics.forecasts, until=lambda r: len(r) >= 3)
    assert running.stop() == 0
    docs = forecasts_of(records)
    assert [d["seed"] for d in docs] == ["carry"] * 3

    loaded = ModelRegistry(carry_registry).load()
    predictor = Predictor(loaded.model, loaded.cfg, max_batch=4, jit_compile="off")
    values = np.stack([v for _, _, v in readings]).astype(np.float32)
    carry = np.zeros((1, 2 * sum(loaded.cfg.units)), np.float32)
    has = np.array([False])
    for k, doc in enumerate(docs):
        end = 96 + 96 * k  # index of the reading that completed this window
        window = values[end - 95 : end + 1][None]
        truth = values[end - 96][None]
        out = predictor.predict(window, truth, carry, has)
        np.testing.assert_allclose(np.asarray(doc["values"]), out.forecast[0], rtol=1e-4, atol=1e-3)
        if k:  # a carried state, not the truth seed, made this forecast
            seeded = predictor.predict(window, truth, carry, np.array([False])).forecast[0]
            assert not np.allclose(seeded, out.forecast[0], atol=1e-3)
        carry, has = out.states, np.array([True])
