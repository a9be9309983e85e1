"""``streamcast train --follow``: the trainer as a process of its own beside daemons that
only serve. It reads the readings topic with its own group, trains version 1 from the
stream, holds the registry's lease, and a daemon with ``training.online: false`` serves
what it promoted without ever taking the lease."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streamcast.learn.registry import ModelRegistry
from streamcast.model.graph import build_forecaster
from streamcast.sim.broker import EmbeddedBroker

from ..waiting import wait_for
from .conftest import (
    Topics,
    consume,
    fleet_readings,
    forecasts_of,
    produce_readings,
    settings_for,
    streamcast_env,
)

pytestmark = pytest.mark.integration


def test_trainer_on_its_own_trains_version_1_and_daemons_only_serve(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, start_daemon: Any
) -> None:
    registry = tmp_path / "registry"
    sensors = 4
    readings = fleet_readings(sensors, 400, seed=4)
    produce_readings(broker, topics.readings, readings)
    short = {  # a 24-step model: 400 readings per sensor are plenty to train and judge it
        "window": {"num_steps": 24},
        "model": {"units": [8, 8], "horizon": 8, "seeding": "truth"},
        "inference": {"max_batch": 64, "jit_compile": "off"},  # loads in a second
    }
    training = {"bootstrap_windows": 300, "max_seconds": 20, "max_epochs": 40}
    settings = settings_for(broker, topics, registry, training=training, **short)
    log = tmp_path / "trainer.log"
    with log.open("ab") as out:
        trainer = subprocess.Popen(
            [sys.executable, "-m", "streamcast", "train", "--follow", "--registry", str(registry)],
            env=streamcast_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: ModelRegistry(registry).current() == 1, 120, "version 1 from the trainer")
        lease = json.loads((registry / "lease.json").read_text())
        assert lease["pid"] == trainer.pid, lease
        meta = ModelRegistry(registry).meta(1)
        assert meta["metrics"]["gate"]["promoted"] is True  # judged against persistence

        serving = settings_for(broker, topics, registry, training={"online": False}, **short)
        running = start_daemon(serving)
        running.wait_ready(60)
        assert running.daemon.serving.version == 1
        assert not running.daemon.retraining.trainer
        forecasts = consume(broker, topics.forecasts, until=lambda r: len(r) >= 10, timeout=60)
        assert len(forecasts) >= 10
        assert json.loads((registry / "lease.json").read_text())["pid"] == trainer.pid
        assert running.stop() == 0
    finally:
        trainer.send_signal(signal.SIGTERM)
        try:
            code = trainer.wait(30)
        except subprocess.TimeoutExpired:
            trainer.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
    assert not (registry / "lease.json").exists()  # released on a clean stop


def test_serve_only_daemon_waits_for_the_trainers_first_model_and_loses_no_reading(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, start_daemon: Any
) -> None:
    """On an empty registry a daemon that only serves neither gathers nor trains: it stays
    alive, not ready, its input paused, until the trainer's first version appears; then it
    forecasts every reading that arrived meanwhile."""
    registry = tmp_path / "registry"
    sensors, steps = 4, 40
    readings = fleet_readings(sensors, steps, seed=5)
    produce_readings(broker, topics.readings, readings)
    short = {
        "window": {"num_steps": 24},
        "model": {"units": [8], "horizon": 8, "seeding": "truth"},
        "inference": {"max_batch": 64, "jit_compile": "off"},
    }
    settings = settings_for(broker, topics, registry, training={"online": False}, **short)
    running = start_daemon(settings)
    daemon = running.daemon
    wait_for(lambda: daemon.health.partitions == 3, 60, "the readings' partitions")
    turns: list[int] = []
    daemon.loop_hook = lambda: turns.append(1)
    wait_for(lambda: len(turns) >= 5, 30, "the loop to turn while it waits")

    code, body = daemon.health.readiness()
    assert code == 503, body
    assert body["reasons"] == ["no_model"] and body["phase"] == "waiting"
    assert body["waiting_for"] == "a first model version from the trainer"
    assert daemon.health.liveness()[0] == 200 and running.thread.is_alive()
    assert daemon.serving.bootstrap is None and not daemon.retraining.trainer
    assert daemon.source.paused and not daemon.source.positions  # nothing read meanwhile

    spec = settings.model
    assert ModelRegistry(registry).save(build_forecaster(spec), spec) == 1  # the trainer's
    running.wait_ready(60)
    assert daemon.serving.version == 1 and not daemon.source.paused

    expected = {(s, ts) for i, (s, ts, _) in enumerate(readings) if i // sensors >= spec.num_steps}
    assert len(expected) == sensors * (steps - spec.num_steps)
    records = consume(broker, topics.forecasts, until=lambda r: len(r) >= len(expected), timeout=60)
    published = Counter((d["sensor"], d["ts"]) for d in forecasts_of(records))
    assert set(published) == expected
    assert max(published.values()) == 1
    assert {d["model_version"] for d in forecasts_of(records)} == {1}
    assert running.stop() == 0
