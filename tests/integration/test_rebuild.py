"""Windows after a restart: 20,000 sensors on 3 partitions, none of them cold.

Each partition holds about 6,700 sensors, so a full window of every sensor lies about
170,000 records back (25 readings each; the window is 24 steps to keep the test short,
which changes nothing in the rebuild's arithmetic). The daemon forecasts the first part
of the stream, stops, and a new daemon in the same group forecasts the rest. Every
forecast due after the restart must be there, and equal what the model gives for the
true window, as an uninterrupted run would give it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer

from streamcast.config import ModelSpec
from streamcast.learn.registry import ModelRegistry
from streamcast.model.graph import build_forecaster
from streamcast.model.predictor import Predictor
from streamcast.sim.broker import EmbeddedBroker
from streamcast.stream.messages import encode_reading

from .conftest import STEP_S, RunningDaemon, Topics, fresh_topics, settings_for

pytestmark = pytest.mark.integration

SENSORS = 20_000
PARTITIONS = 3
STEPS = 24
STRIDE = 6
BEFORE, AFTER = 30, 42  # steps 0..29 before the restart, 30..41 after it
SPEC = ModelSpec(
    num_steps=STEPS, num_features=2, units=(8, 8), horizon=8, seeding="truth", calendar=False
)
# The first step's grid index is a multiple of STRIDE, so forecasts fall on steps 24, 30, 36.
T0 = 1_888_890 * STEP_S
# The daemon's compiled predictor and the plain one here differ in the last bits (1.6e-4
# seen on values near 15); a window one reading off differs by 0.09 (median).
ATOL, RTOL = 1e-3, 1e-4


def _values(steps: range) -> np.ndarray:
    """(sensors, steps, 2): a daily cycle with a phase and level per sensor."""
    k = np.asarray(steps, np.float64)[None, :]
    s = np.arange(SENSORS, dtype=np.float64)[:, None]
    daily = np.sin(2 * np.pi * (k / 96 + s / 97))
    return np.stack([10 + s % 7 + daily, 5 * np.cos(k / 7 + s)], axis=-1).astype(np.float32)


def _produce(bootstrap: str, topic: str, steps: range) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 500_000}
    )
    values = _values(steps)
    names = [f"s{i:05d}" for i in range(SENSORS)]
    for j, k in enumerate(steps):
        ts = T0 + k * STEP_S
        for i, name in enumerate(names):
            while True:
                try:
                    producer.produce(topic, key=name, value=encode_reading(name, ts, values[i, j]))
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


class _Forecasts:
    """Reads the forecast topic as it grows."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        self.docs: list[dict[str, Any]] = []

    def until(self, count: int, timeout: float, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while len(self.docs) < count and time.monotonic() < deadline and alive():
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.docs.extend(orjson.loads(r.value) for r in batch)

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def wide_topics(broker: EmbeddedBroker) -> Iterator[Topics]:
    with fresh_topics(broker, PARTITIONS) as t:
        yield t


def test_a_restart_leaves_none_of_20000_sensors_cold(
    broker: EmbeddedBroker,
    wide_topics: Topics,
    tmp_path: Path,
    start_daemon: Callable[..., RunningDaemon],
) -> None:
    model = build_forecaster(SPEC)
    registry = tmp_path / "registry"
    ModelRegistry(registry).save(model, SPEC)
    settings = settings_for(
        broker,
        wide_topics,
        registry,
        window={"num_steps": STEPS, "stride": STRIDE},
        model={"units": [8, 8], "horizon": SPEC.horizon, "seeding": "truth", "calendar": False},
        inference={"max_batch": 1024, "max_wait_ms": 20},
        kafka={"max_poll_records": 5000},
    )
    forecasts = _Forecasts(broker.bootstrap, wide_topics.forecasts)
    try:
        _produce(broker.bootstrap, wide_topics.readings, range(BEFORE))
        first = start_daemon(settings)
        forecasts.until(SENSORS, 240, first.thread.is_alive)  # step 24 of every sensor
        assert first.stop() == 0
        before = len(forecasts.docs)
        assert before >= SENSORS

        _produce(broker.bootstrap, wide_topics.readings, range(BEFORE, AFTER))
        second = start_daemon(settings)
        forecasts.until(before + 2 * SENSORS, 240, second.thread.is_alive)
        assert second.stop() == 0
    finally:
        forecasts.close()

    after: dict[tuple[str, float], np.ndarray] = {}
    for doc in forecasts.docs[before:]:
        after.setdefault((doc["sensor"], doc["ts"]), np.asarray(doc["values"], np.float32))
    due = [(f"s{i:05d}", T0 + k * STEP_S) for k in (30, 36) for i in range(SENSORS)]
    missing = [key for key in due if key not in after]
    assert not missing, f"{len(missing)} of {len(due)} forecasts missing, e.g. {missing[:3]}"

    # What the model gives for the true windows (24 readings ending at ts, seeded with
    # the reading before them): the windows an uninterrupted run holds.
    values = _values(range(AFTER))
    ends = np.array([30, 36])
    windows = np.concatenate([values[:, e - STEPS + 1 : e + 1] for e in ends])
    truths = np.concatenate([values[:, e - STEPS] for e in ends])
    expected = Predictor(model, SPEC, max_batch=1024, jit_compile="off").predict(windows, truths)
    got = np.stack([after[key] for key in due])
    assert np.allclose(got, expected.forecast, atol=ATOL, rtol=RTOL), np.abs(
        got - expected.forecast
    ).max()
    # A window one reading off would differ by far more than the tolerance.
    shifted = np.concatenate([values[:, e - STEPS : e] for e in ends])
    off = Predictor(model, SPEC, max_batch=1024, jit_compile="off").predict(
        shifted, np.concatenate([values[:, e - STEPS - 1] for e in ends])
    )
    assert not np.allclose(got, off.forecast, atol=ATOL, rtol=RTOL)
