"""The first model from a fleet: 3,000 sensors reporting in turn, 70 readings each.

A history capped at 2,000 sensors that forgets the least recently updated one cannot
hold this fleet: with 3,000 sensors in turn, each sensor is forgotten before its next
reading arrives, so it never gathers a training span (33 readings). Every sensor's k-th
reading is sent before anyone's (k+1)-th, as a fleet on a common clock sends them.

The daemon starts on an empty registry with the fleet's first 40 rounds and a third of
the 41st: /readyz must then say it gathers, from all 3,000 sensors, 1,000 of the 2,000
training examples it needs (a sensor's first example comes with its 41st reading). The
rest of the readings make it train version 1, which must be served and forecast every
sensor.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer

from streamcast.learn.registry import ModelRegistry
from streamcast.sim.broker import EmbeddedBroker
from streamcast.stream.bootstrap import GATHERING, TRAINING
from streamcast.stream.messages import encode_reading

from ..waiting import wait_for
from .conftest import STEP_S, RunningDaemon, Topics, settings_for

pytestmark = pytest.mark.integration

SENSORS = 3_000
READINGS = 70  # per sensor
NUM_STEPS, HORIZON = 24, 8
NEEDED = 2_000  # training.bootstrap_windows
T0 = 1_888_890 * STEP_S
VERSION_1_WITHIN_S = 150
NAMES = [f"fleet-{i:04d}" for i in range(SENSORS)]
# Paused after every sensor's 40th reading and the 41st of the first 1,000: with 41
# readings a sensor gives one training example (the last fifth of its readings is held
# out), with 40 none.
PAUSE_AT = 40 * SENSORS + 1_000
WAITING = {"examples": 1_000, "needed": NEEDED, "sensors": SENSORS}


def _produce(bootstrap: str, topic: str, first: int, stop: int) -> None:
    """Readings ``first`` to ``stop`` (exclusive) of the fleet's sequence, in which reading
    ``i`` is sensor ``i % SENSORS``'s reading ``i // SENSORS``: every sensor's k-th reading
    comes before anyone's (k+1)-th."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 500_000}
    )
    phase = np.arange(SENSORS) / 97.0
    for k in range(first // SENSORS, -(-stop // SENSORS)):
        ts = T0 + k * STEP_S
        daily = np.sin(2 * np.pi * (k / 96 + phase))
        values = np.stack([10 + np.arange(SENSORS) % 7 + daily, 5 * np.cos(k / 7 + phase)], 1)
        values = values.astype(np.float32)
        for s in range(max(first - k * SENSORS, 0), min(stop - k * SENSORS, SENSORS)):
            while True:
                try:
                    producer.produce(
                        topic, key=NAMES[s], value=encode_reading(NAMES[s], ts, values[s])
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


def _forecasts_until_every_sensor(bootstrap: str, topic: str, timeout: float) -> list[Any]:
    """Forecast documents from the start of ``topic`` until every sensor has one (each
    record parsed once: the fleet's forecasts run to tens of thousands)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    docs: list[Any] = []
    sensors: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(sensors) < SENSORS and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                docs.extend(orjson.loads(r.value) for r in batch)
                sensors.update(d["sensor"] for d in docs[-len(batch) :])
    finally:
        consumer.close()
    return docs


def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def test_3000_sensors_in_turn_yield_version_1(
    broker: EmbeddedBroker,
    topics: Topics,
    tmp_path: Path,
    start_daemon: Callable[..., RunningDaemon],
) -> None:
    registry = tmp_path / "registry"  # empty: version 1 must come from the stream
    settings = settings_for(
        broker,
        topics,
        registry,
        window={"num_steps": NUM_STEPS},
        model={"units": [8, 8], "horizon": HORIZON, "seeding": "truth"},
        training={"bootstrap_windows": NEEDED, "max_seconds": 10, "max_epochs": 50},
        # Not compiled with XLA: warming up every batch bucket would take seconds each.
        inference={"max_batch": 256, "max_wait_ms": 20, "jit_compile": "off"},
        kafka={"max_poll_records": 5000},
    )
    started = time.monotonic()
    _produce(broker.bootstrap, topics.readings, 0, PAUSE_AT)
    running = start_daemon(settings)
    http = wait_for(lambda: running.daemon.http, 30, "the HTTP server")

    # Gathering: /readyz says what it waits for, and that it holds every sensor.
    said: list[tuple[int, dict[str, Any]]] = []

    def gathered() -> bool:
        assert running.thread.is_alive(), f"daemon exited with {running.exit_codes}"
        said.append(_readyz(http.port))
        return said[-1][1].get("progress") == WAITING

    try:
        wait_for(gathered, 60, f"/readyz to report {WAITING}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it said last {said[-1:]}") from None
    code, body = said[-1]
    assert code == 503 and body["reasons"] == ["no_model"], body
    assert body["waiting_for"] == GATHERING, body
    gathering_s = time.monotonic() - started
    reg = ModelRegistry(registry)
    assert reg.versions() == []

    # The rest of the fleet's readings: enough examples, version 1 trains and is served.
    _produce(broker.bootstrap, topics.readings, PAUSE_AT, SENSORS * READINGS)
    training: list[dict[str, Any]] = []
    deadline = time.monotonic() + VERSION_1_WITHIN_S
    while reg.current() != 1:
        assert running.thread.is_alive(), f"daemon exited with {running.exit_codes}"
        assert time.monotonic() < deadline, (
            f"no version 1 within {VERSION_1_WITHIN_S}s; /readyz said {_readyz(http.port)}"
        )
        code, body = _readyz(http.port)
        if body.get("waiting_for") == TRAINING:
            training.append(body["progress"])
        time.sleep(0.1)
    version_1_s = time.monotonic() - started
    assert training and training[0]["examples"] >= NEEDED, training[:1]
    running.wait_ready(60)
    assert running.daemon.serving.version == 1
    assert reg.versions() == [1]
    data_range = reg.meta(1)["data_range"]
    assert data_range["sensors"] == SENSORS, data_range

    # Forecasts flow for every sensor, from version 1.
    docs = _forecasts_until_every_sensor(broker.bootstrap, topics.forecasts, timeout=60)
    assert {d["sensor"] for d in docs} == set(NAMES), f"{len(docs)} forecasts"
    assert {d["model_version"] for d in docs} == {1}
    assert running.stop() == 0
    print(
        f"\n{SENSORS} sensors x {READINGS} readings: /readyz said {WAITING} after "
        f"{gathering_s:.1f}s, version 1 after {version_1_s:.1f}s, trained on {data_range}; "
        f"{len(docs)} forecasts read"
    )
