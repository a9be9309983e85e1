"""Models in the running daemon: it follows the registry's ``current`` pointer (a saved
version swaps in between batches, a rollback swaps back, a bad version is skipped), falls
back to the version served before when the current one is corrupt at start-up, and
carries states from one window of a sensor to its next."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from streamcast.config import ModelSpec
from streamcast.learn.calendar import calendar_inputs
from streamcast.learn.registry import MODEL_FILE, POINTER_FILE, ModelRegistry
from streamcast.model.graph import seed_states
from streamcast.model.predictor import Predictor
from streamcast.model.states import split_states
from streamcast.sim.broker import EmbeddedBroker
from streamcast.stream import serving as serving_module

from ..waiting import wait_for
from .conftest import (
    SPEC,
    ModelCall,
    Topics,
    calls_by_window,
    consume,
    fleet_readings,
    forecasts_of,
    produce_readings,
    settings_for,
    state_gap,
    state_scale,
    train_registry,
)

pytestmark = pytest.mark.integration

# Versions come and go here: uncompiled inference loads each in about a second
# (the compiled path has tests of its own).
UNCOMPILED = {"max_batch": 64, "max_wait_ms": 20, "jit_compile": "off"}
# The daemon's compiled predictor and the plain one here differ in the last bits.
CARRY_RTOL, CARRY_ATOL = 1e-4, 1e-3


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


def _point_at(registry: Path, version: int, previous: list[int]) -> None:
    """Name a version current without promote's checks: a pointer edited by hand, or a
    version corrupted after its promotion."""
    tmp = registry / ".tmp-pointer"
    tmp.write_text(json.dumps({"current": version, "previous": previous}))
    os.rename(tmp, registry / POINTER_FILE)


def test_daemon_follows_the_pointer_without_a_restart_and_skips_bad_versions(
    broker: EmbeddedBroker,
    topics: Topics,
    registry: Path,
    start_daemon,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serving_module, "REGISTRY_CHECK_S", 0.2)
    readings = fleet_readings(2, 97 + 30, seed=11)
    first, later = readings[: 2 * 100], readings[2 * 100 :]
    produce_readings(broker, topics.readings, first)
    running = start_daemon(settings_for(broker, topics, registry, inference=UNCOMPILED))
    got = consume(broker, topics.forecasts, until=lambda r: len(r) >= 2 * 4)
    assert {d["model_version"] for d in forecasts_of(got)} == {1}

    # Version 2 is corrupt (its checksum no longer matches). Merely present it is not
    # looked at; named current, it is rejected and version 1 keeps serving.
    serving = running.daemon.serving
    bad = _add_corrupt_version(registry, tmp_path / "scratch")
    time.sleep(1.0)  # several registry checks
    assert serving.candidates.rejected_version == 0
    _point_at(registry, bad, [1])
    rejected = serving.candidates
    wait_for(lambda: rejected.rejected_version == bad, 60, f"version {bad} to be rejected")
    assert serving.served is not None and serving.served.version == 1

    # A version saved with promote=True (the default) swaps in.
    reg = ModelRegistry(registry)
    v1 = reg.load(1)
    good = reg.save(v1.model, v1.cfg, metrics={}, data_range={})
    assert reg.current() == good
    _wait_version(running.daemon, good)
    produce_readings(broker, topics.readings, later)
    records = consume(broker, topics.forecasts, until=lambda r: len(r) >= 2 * 31)
    docs = forecasts_of(records)
    later_keys = {(s, ts) for s, ts, _ in later}
    assert {d["model_version"] for d in docs if (d["sensor"], d["ts"]) in later_keys} == {good}
    sample = running.daemon.metrics.registry.get_sample_value
    assert sample("streamcast_model_info", {"version": str(good)}) == 1
    assert sample("streamcast_model_info", {"version": "1"}) is None

    # A rollback goes back to the version served before that still verifies (not the
    # corrupt one in between), and the daemon swaps back to it: an older version.
    assert reg.rollback() == 1
    _wait_version(running.daemon, 1)
    assert running.stop() == 0
    assert sample("streamcast_model_info", {"version": "1"}) == 1
    assert sample("streamcast_model_info", {"version": str(good)}) is None


def test_corrupt_current_version_at_start_up_falls_back_to_the_one_served_before(
    broker: EmbeddedBroker,
    topics: Topics,
    registry: Path,
    start_daemon,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(serving_module, "REGISTRY_CHECK_S", 0.2)
    caplog.set_level(logging.WARNING, logger=serving_module.__name__)
    reg = ModelRegistry(registry)
    v1 = reg.load(1)
    assert reg.save(v1.model, v1.cfg, metrics={}, data_range={}) == 2  # current, after 1
    assert reg.save(v1.model, v1.cfg, metrics={}, data_range={}, promote=False) == 3
    with (reg.version_path(2) / MODEL_FILE).open("ab") as fh:
        fh.write(b"\0")  # corrupted after its promotion

    produce_readings(broker, topics.readings, fleet_readings(2, 100, seed=13))
    running = start_daemon(settings_for(broker, topics, registry, inference=UNCOMPILED))
    running.wait_ready()
    got = consume(broker, topics.forecasts, until=lambda r: len(r) >= 2 * 4)
    # Version 1, served before the current one, not the newer never-promoted version 3.
    assert {d["model_version"] for d in forecasts_of(got)} == {1}
    assert running.daemon.serving.version == 1
    fallback = [
        r.getMessage() for r in caplog.records if "instead of the current" in r.getMessage()
    ]
    assert len(fallback) == 1
    assert "serving model version 1 instead of the current version 2" in fallback[0]
    assert "checksum mismatch" in fallback[0]
    assert reg.current() == 2  # the daemon reads the pointer, never writes it

    # The registry check keeps working after the fallback: a promotion swaps in.
    reg.promote(3)
    _wait_version(running.daemon, 3)
    assert running.stop() == 0


@pytest.fixture(scope="module")
def carry_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ModelSpec(**{**SPEC.model_dump(), "seeding": "carry"})
    return train_registry(tmp_path_factory.mktemp("registry-carry"), spec)


@pytest.mark.parametrize("stride", [1, 96])
def test_carry_mode_seeds_each_window_with_the_previous_windows_final_states(
    broker: EmbeddedBroker,
    topics: Topics,
    carry_registry: Path,
    start_daemon,
    model_calls: list[ModelCall],
    stride: int,
) -> None:
    """A sensor's first window is seeded from its truth, each later one continues the
    final states of the one before through the ``stride`` readings since, and every
    forecast is the model's own for that seed.

    The model is as trained and forgets its initial states within the 96 steps, so the
    forecast cannot show what seeded it: the carry is read where the daemon hands it to the
    model (``model_calls``), compared exactly with the states the model returned for the
    previous window, and shown to differ from the truth seed it replaced.
    """
    steps = 97 + stride * 2
    readings = fleet_readings(1, steps, seed=12)
    produce_readings(broker, topics.readings, readings)
    settings = settings_for(
        broker, topics, carry_registry, model={"seeding": "carry"}, window={"stride": stride}
    )
    running = start_daemon(settings)
    records = consume(broker, topics.forecasts, until=lambda r: len(r) >= 3)
    assert running.stop() == 0
    given = calls_by_window(list(model_calls))  # the daemon's calls, before any of ours
    docs = forecasts_of(records)
    assert [d["seed"] for d in docs] == ["carry"] * 3

    loaded = ModelRegistry(carry_registry).load()
    predictor = Predictor(
        loaded.model, loaded.cfg, max_batch=4, jit_compile="off", carried_steps=stride
    )
    values = np.stack([v for _, _, v in readings]).astype(np.float32)
    all_ts = [ts for _, ts, _ in readings]
    carry = np.zeros((1, loaded.cfg.state_width), np.float32)
    has = np.array([False])
    daemon_states: np.ndarray | None = None  # what the daemon's model returned last
    for k, doc in enumerate(docs):
        end = 96 + stride * k  # index of the reading that completed this window
        assert doc["ts"] == all_ts[end]
        window = values[end - 95 : end + 1]
        truth = values[end - 96]
        seen = given.get(window.tobytes())
        assert seen and len(seen) == 1, f"window {k} went to the model {len(seen or [])} times"
        call, row = seen[0]
        np.testing.assert_array_equal(call.truths[row], truth)
        assert call.carry is not None and call.has_carry is not None
        assert bool(call.has_carry[row]) == (k > 0), f"window {k}: has_carry {call.has_carry}"
        if k:  # exactly the previous window's final states went in ...
            assert daemon_states is not None
            np.testing.assert_array_equal(call.carry[row], daemon_states)
            # ... and they are not the seed the truth would have given instead.
            carried = split_states(call.carry[row][None], loaded.cfg)
            seeded = seed_states(loaded.model, window[None], truth[None])
            gap = state_gap(carried, seeded)
            assert gap > 10 * (CARRY_ATOL + CARRY_RTOL * state_scale(seeded)), (
                f"window {k}: the carry differs from the truth seed by only {gap:.3g}"
            )
        published = np.asarray(doc["values"], np.float32)
        np.testing.assert_array_equal(call.forecast[row], published)
        daemon_states = call.states[row]

        # The stepper's own run of the chain: same forecast, same states to carry on.
        calendar = calendar_inputs([doc["ts"]], doc["step_s"])
        out = predictor.predict(window[None], truth[None], carry, has, calendar)
        np.testing.assert_allclose(published, out.forecast[0], rtol=CARRY_RTOL, atol=CARRY_ATOL)
        np.testing.assert_allclose(daemon_states, out.states[0], rtol=CARRY_RTOL, atol=CARRY_ATOL)
        carry, has = out.states, np.array([True])
