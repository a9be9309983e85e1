"""Retraining for real: a challenger trained in its own process, judged, promoted or not.

The served model (version 1) learnt a fleet before a regime change; the replay buffer
holds readings from after it. A retraining must promote version 2 through the registry's
pointer. A retraining set up to diverge must be rejected with its reason, and the pointer
must not move. The registry's lease makes one of two contenders the trainer.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from streamcast.config import ModelSpec, Settings, TrainingSettings, load_settings
from streamcast.learn.fit import train
from streamcast.learn.gate import REASONS
from streamcast.learn.registry import ModelRegistry
from streamcast.ops.metrics import Metrics
from streamcast.sim.fleet import SensorFleet
from streamcast.stream.messages import Readings
from streamcast.stream.retraining import Retraining

SPEC = ModelSpec(num_steps=24, num_features=2, units=(8, 8), horizon=8, seeding="truth")
SENSORS = 12


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _settings(registry: Path, **training: object) -> Settings:
    return load_settings(
        window={"num_steps": SPEC.num_steps},
        model={"units": list(SPEC.units), "horizon": SPEC.horizon, "seeding": "truth"},
        registry={"path": str(registry)},
        training={
            "interval_s": 60,
            "bootstrap_windows": 200,
            "max_seconds": 8,
            "max_epochs": 30,
            "batch_size": 64,
            **training,
        },
    )


@pytest.fixture(scope="module")
def fleet_and_registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Readings]:
    """Version 1 trained before a regime change; readings from after it."""
    fleet = SensorFleet(SENSORS, seed=11)
    _, before = fleet.series(400)
    model = train(
        SPEC,
        [v.astype(np.float32) for v in before],
        # A short fit: the served model is usable, and clearly improvable on the new regime.
        TrainingSettings(max_seconds=4, max_epochs=2, batch_size=64, random_seed=0),
        progress=False,
    ).model
    registry = tmp_path_factory.mktemp("registry")
    ModelRegistry(registry).save(model, SPEC)
    fleet.regime_change()
    ts, after = fleet.series(300)
    sensors = [fleet.sensor_ids[s] for k in range(len(ts)) for s in range(SENSORS)]
    readings = Readings(
        sensors=sensors,
        ts=np.repeat(ts, SENSORS).astype(np.float64),
        values=after.transpose(1, 0, 2).reshape(-1, 2).astype(np.float32),
    )
    return registry, readings


def _copy(registry: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "registry"
    shutil.copytree(registry, dest)
    return dest


def _run_one(retraining: Retraining, clock: Clock, timeout: float = 120) -> None:
    retraining.maintain()  # takes the lease
    assert retraining.trainer
    clock.now += 61  # the interval has passed
    retraining.maintain()
    assert retraining.job is not None, "no retraining started"
    deadline = time.monotonic() + timeout
    while retraining.job is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        retraining.maintain()
    assert retraining.job is None, "the retraining did not finish"


def test_a_regime_change_promotes_a_new_version(
    fleet_and_registry: tuple[Path, Readings], tmp_path: Path
) -> None:
    registry, readings = fleet_and_registry
    path = _copy(registry, tmp_path)
    clock = Clock()
    metrics = Metrics(process=False)
    retraining = Retraining(_settings(path), metrics, lambda: 1, clock=clock)
    try:
        retraining.maintain()
        retraining.observe(readings)
        assert retraining.buffer.examples() > 200
        _run_one(retraining, clock)
    finally:
        retraining.stop()
    outcome = retraining.last
    assert outcome is not None
    print(f"\nregime change: {outcome}")
    assert outcome.outcome == "promoted", outcome
    assert outcome.version == 2
    assert ModelRegistry(path).current() == 2
    scores = outcome.scores
    assert scores["challenger"] is not None and scores["champion"] is not None
    assert scores["challenger"] < scores["champion"]
    meta = ModelRegistry(path).meta(2)
    assert meta["metrics"]["gate"]["promoted"] is True
    assert metrics.retrains.labels("promoted")._value.get() == 1


def test_a_diverging_retraining_is_rejected_and_nothing_changes(
    fleet_and_registry: tuple[Path, Readings], tmp_path: Path
) -> None:
    registry, readings = fleet_and_registry
    path = _copy(registry, tmp_path)
    clock = Clock()
    metrics = Metrics(process=False)
    sabotage = {"learning_rate": 1e4, "max_epochs": 3}  # steps that throw the weights away
    retraining = Retraining(_settings(path, **sabotage), metrics, lambda: 1, clock=clock)
    try:
        retraining.maintain()
        retraining.observe(readings)
        _run_one(retraining, clock)
    finally:
        retraining.stop()
    outcome = retraining.last
    assert outcome is not None
    print(f"\nsabotage: {outcome}")
    assert outcome.outcome in REASONS, outcome
    assert ModelRegistry(path).current() == 1
    assert ModelRegistry(path).versions() == [1]
    assert metrics.retrains.labels(outcome.outcome)._value.get() == 1


def test_one_trainer_per_registry(
    fleet_and_registry: tuple[Path, Readings], tmp_path: Path
) -> None:
    registry, readings = fleet_and_registry
    path = _copy(registry, tmp_path)
    a = Retraining(_settings(path), Metrics(process=False), lambda: 1)
    b = Retraining(_settings(path), Metrics(process=False), lambda: 1)
    try:
        a.maintain()
        b.maintain()
        assert [a.trainer, b.trainer] == [True, False]
        b.observe(readings)  # not the trainer: it keeps nothing
        assert b.buffer.nbytes == 0 or b.buffer.examples() == 0
        a.stop()  # the trainer leaves: the other takes over at its next look
        b._lease_at = 0.0
        b.maintain()
        assert b.trainer
    finally:
        a.stop()
        b.stop()


def test_online_false_never_trains(tmp_path: Path) -> None:
    retraining = Retraining(
        _settings(tmp_path / "r", online=False), Metrics(process=False), lambda: 1
    )
    retraining.maintain()
    assert not retraining.trainer
    assert not (tmp_path / "r" / "lease.json").exists()
