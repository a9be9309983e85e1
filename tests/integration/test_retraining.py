"""A regime change under a running daemon: it retrains, promotes, swaps and does better.

Version 1 learnt a fleet whose main cycle is a day. Then the cycle halves and every
sensor's level, amplitude and phase move. The daemon keeps serving version 1 while its
trainer (short intervals here) retrains on the replay buffer in a process of its own; the
challenger must beat version 1 on the newest held-out slice, be promoted, and be swapped
in without a restart. Forecasts after the swap carry version 2, and the live MAE of
version 2 on the new regime is lower than version 1's just before the swap.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition

from streamcast.config import ModelSpec, Settings, TrainingSettings
from streamcast.learn.fit import train
from streamcast.learn.registry import ModelRegistry
from streamcast.sim.broker import EmbeddedBroker
from streamcast.sim.fleet import SensorFleet
from streamcast.stream.accuracy import LiveAccuracy
from streamcast.stream.messages import encode_reading

from ..waiting import wait_for
from .conftest import Topics, fleet_readings, produce_readings, settings_for

pytestmark = pytest.mark.integration

# The calendar is off: this test is about a regime change the retraining must learn; the
# simulated fleet has no weekly cycle for a calendar to add.
SPEC = ModelSpec(
    num_steps=24, num_features=2, units=(8, 8), horizon=8, seeding="truth", calendar=False
)
SENSORS = 12


FIRST_MODEL = {"bootstrap_windows": 300, "max_seconds": 8, "max_epochs": 10}


def _settings(
    broker: EmbeddedBroker, topics: Topics, registry: Path, training: dict[str, Any]
) -> Settings:
    """The short model, and uncompiled inference: versions load in about a second."""
    return settings_for(
        broker,
        topics,
        registry,
        window={"num_steps": SPEC.num_steps},
        model={"units": [8, 8], "horizon": SPEC.horizon, "seeding": "truth", "calendar": False},
        inference={"max_batch": 64, "jit_compile": "off"},
        training=training,
    )


def _readings(fleet: SensorFleet, ts: np.ndarray, values: np.ndarray) -> list[Any]:
    return [
        (fleet.sensor_ids[s], float(ts[k]), values[s, k])
        for k in range(len(ts))
        for s in range(SENSORS)
    ]


def _model_mae(snapshot: dict[tuple[str, str], float]) -> float:
    scores = [mae for (_, who), mae in snapshot.items() if who == "model"]
    assert scores, snapshot
    return float(np.mean(scores))


def test_a_regime_change_is_learnt_promoted_and_served(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, start_daemon: Any
) -> None:
    fleet = SensorFleet(SENSORS, seed=5)
    ts_a, before = fleet.series(400)
    v1 = train(
        SPEC,
        [before[i].astype(np.float32) for i in range(SENSORS)],
        TrainingSettings(max_seconds=8, max_epochs=15, batch_size=64, random_seed=0),
        progress=False,
        timestamps=[ts_a] * SENSORS,  # the calendar's inputs, as the daemon's training has them
    ).model
    registry = tmp_path / "registry"
    ModelRegistry(registry).save(v1, SPEC)
    fleet.regime_change(period_factor=0.5)
    ts_b, after = fleet.series(400)

    settings = _settings(
        broker,
        topics,
        registry,
        training={  # one retraining, once the backlog is in: then no other until the end
            "interval_s": 3600,
            "every_examples": 6000,
            "bootstrap_windows": 500,
            "max_seconds": 20,
            "max_epochs": 40,
            "batch_size": 64,
        },
    )
    produce_readings(broker, topics.readings, _readings(fleet, ts_a, before))
    produce_readings(broker, topics.readings, _readings(fleet, ts_b[:300], after[:, :300]))
    running = start_daemon(settings)
    daemon = running.daemon
    # Score every forecast (the default samples 1 in 16), before the first one is made.
    daemon.accuracy = LiveAccuracy(SPEC.horizon, SPEC.num_features, sample_every=1)
    running.wait_ready(60)

    outcome = wait_for(lambda: daemon.retraining.last, 150, "a retraining's outcome")
    assert ModelRegistry(registry).current() == 2
    assert outcome is not None and outcome.outcome == "promoted", outcome
    wait_for(lambda: daemon.serving.version == 2, 30, "version 2 swapped in")
    live_v1 = _model_mae(daemon.accuracy.snapshot(model_version=1))

    # The rest as a live stream would bring it, a step at a time: live accuracy scores a
    # forecast with readings that arrive after it.
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    try:
        for k in range(300, len(ts_b)):
            for sensor, ts, values in _readings(fleet, ts_b[k : k + 1], after[:, k : k + 1]):
                producer.send(
                    topics.readings, key=sensor.encode(), value=encode_reading(sensor, ts, values)
                )
            producer.flush()
            time.sleep(0.02)
    finally:
        producer.close()
    last_ts = float(ts_b[-1 - SPEC.horizon])  # a forecast whose horizon is all in the topic
    serving = wait_for(lambda: daemon.serving.version, 5, "the served version")
    assert serving == outcome.version
    wait_for(lambda: daemon.accuracy.snapshot(model_version=serving), 60, "its forecasts scored")
    deadline = time.monotonic() + 120
    docs: list[dict[str, Any]] = []
    consumer = KafkaConsumer(
        topics.forecasts,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    try:
        while time.monotonic() < deadline and not any(
            d["ts"] >= last_ts and d["model_version"] >= 2 for d in docs
        ):
            for batch in consumer.poll(timeout_ms=200).values():
                docs.extend(orjson.loads(r.value) for r in batch)
    finally:
        consumer.close()
    live_now = _model_mae(daemon.accuracy.snapshot(model_version=serving))
    assert running.stop() == 0

    # Per sensor, versions only move forward (swaps are between batches, never back).
    by_sensor: dict[str, list[int]] = {}
    for doc in sorted(docs, key=lambda d: d["ts"]):
        by_sensor.setdefault(doc["sensor"], []).append(doc["model_version"])
    for sensor, versions in by_sensor.items():
        assert versions == sorted(versions), sensor
    assert all(d["model_version"] >= 2 for d in docs if d["ts"] >= float(ts_b[300]))
    assert daemon.metrics.model_swaps._value.get() >= 1
    assert daemon.metrics.retrains.labels("promoted")._value.get() >= 1
    print(
        f"\nregime change: held-out MAE {outcome.scores}; live MAE of the model on the new "
        f"regime: version 1 {live_v1:.3f} just before the swap, version {serving} "
        f"{live_now:.3f} after"
    )
    assert live_now < live_v1


def test_two_replicas_on_an_empty_registry_train_one_version_1(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, start_daemon: Any
) -> None:
    """One of them holds the registry's lease and trains version 1 from its partitions;
    the other waits with its input paused, then serves what the first promoted."""
    registry = tmp_path / "registry"
    produce_readings(broker, topics.readings, fleet_readings(6, 400, seed=8))
    settings = _settings(broker, topics, registry, training=FIRST_MODEL)
    a, b = start_daemon(settings), start_daemon(settings)
    a.wait_ready(150)
    b.wait_ready(150)
    assert ModelRegistry(registry).versions() == [1]
    assert a.daemon.serving.version == b.daemon.serving.version == 1
    assert [a.daemon.retraining.trainer, b.daemon.retraining.trainer].count(True) == 1
    assert a.stop() == 0
    assert b.stop() == 0


def test_the_first_model_learns_from_the_topics_retention(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, start_daemon: Any
) -> None:
    """The group has committed everything already (say the registry was lost): version 1
    is trained from the history the topic still holds, read back from the committed
    offsets, instead of waiting for days of new readings."""
    produce_readings(broker, topics.readings, fleet_readings(6, 400, seed=9))
    # Commit the end of every partition for the daemon's group, without joining it.
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=topics.group, enable_auto_commit=False
    )
    try:
        parts = [
            TopicPartition(topics.readings, p)
            for p in consumer.partitions_for_topic(topics.readings)
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 60
        while sum(ends.values()) < 6 * 400 and time.monotonic() < deadline:
            for tp, batch in consumer.poll(timeout_ms=500).items():
                ends[tp] = batch[-1].offset + 1  # (the broker's end offsets run behind)
        assert sum(ends.values()) == 6 * 400
        consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in ends.items()})
    finally:
        consumer.close()
    settings = _settings(broker, topics, tmp_path / "registry", training=FIRST_MODEL)
    running = start_daemon(settings)
    running.wait_ready(150)  # no reading arrives after the commit: all of it is history
    assert running.daemon.serving.version == 1
    assert running.stop() == 0
