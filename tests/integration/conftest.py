"""Integration fixtures: one embedded broker per session, unique topics per test,
a small trained model in a registry, and a daemon runner (in-process or as a
real ``streamcast run`` subprocess)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from streamcast.config import ModelSpec, Settings, TrainingSettings, load_settings
from streamcast.learn.registry import ModelRegistry
from streamcast.ops.metrics import Metrics
from streamcast.sim.broker import EmbeddedBroker, free_port
from streamcast.sim.fleet import SensorFleet
from streamcast.stream.daemon import Daemon
from streamcast.stream.messages import encode_reading

from .proxy import TcpProxy

pytestmark = pytest.mark.integration

SPEC = ModelSpec(num_steps=96, num_features=2, units=(8, 8), horizon=96, seeding="truth")
STEP_S = 900.0


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def proxied() -> Iterator[tuple[EmbeddedBroker, TcpProxy]]:
    """A broker of its own that tells every client to connect through the proxy."""
    port = free_port()
    with (
        TcpProxy(("127.0.0.1", port)) as proxy,
        EmbeddedBroker(port=port, advertise=proxy.address) as broker,
    ):
        yield broker, proxy


@dataclass
class Topics:
    readings: str
    forecasts: str
    dlq: str
    group: str


@contextlib.contextmanager
def fresh_topics(broker: EmbeddedBroker, partitions: int = 3) -> Iterator[Topics]:
    """Readings and forecast topics of ``partitions`` partitions, a dead-letter topic and a
    group name, all unique; deleted afterwards."""
    tag = uuid.uuid4().hex[:8]
    t = Topics(f"readings-{tag}", f"forecasts-{tag}", f"dlq-{tag}", f"group-{tag}")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics(
        [
            NewTopic(t.readings, num_partitions=partitions, replication_factor=1),
            NewTopic(t.forecasts, num_partitions=partitions, replication_factor=1),
            NewTopic(t.dlq, num_partitions=1, replication_factor=1),
        ]
    )
    try:
        yield t
    finally:
        try:
            admin.delete_topics([t.readings, t.forecasts, t.dlq])
        finally:
            admin.close()


@pytest.fixture
def topics(broker: EmbeddedBroker) -> Iterator[Topics]:
    with fresh_topics(broker) as t:
        yield t


def train_registry(path: Path, spec: ModelSpec) -> Path:
    from streamcast.learn.fit import train

    fleet = SensorFleet(6, seed=3)
    _, values = fleet.series(96 * 6)
    result = train(
        spec,
        [v.astype(np.float32) for v in values],
        TrainingSettings(max_seconds=4, max_epochs=3, batch_size=128, random_seed=0),
        progress=False,
    )
    # Open the forget gates wide: the seeded states then survive all 96 steps, so a test
    # can see at the output which reading seeded them. (A freshly trained small model
    # forgets its initial state within the window, which would hide a wrong seed.)
    from streamcast.model import lstm_layers

    for layer in lstm_layers(result.model):
        bias = layer.cell.bias.numpy()
        units = bias.shape[0] // 4
        bias[units : 2 * units] = 8.0
        layer.cell.bias.assign(bias)
    ModelRegistry(path).save(
        result.model, spec, metrics=result.metrics.as_dict(), data_range=result.data_range.as_dict()
    )
    return path


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding version 1 of a small model (trained once per session)."""
    return train_registry(tmp_path_factory.mktemp("registry-truth"), SPEC)


@pytest.fixture
def registry(trained_registry: Path, tmp_path: Path) -> Path:
    """A private copy, so a test may add versions without touching others."""
    dest = tmp_path / "registry"
    shutil.copytree(trained_registry, dest)
    return dest


def settings_for(
    broker: EmbeddedBroker, topics: Topics, registry: Path, **sections: dict[str, Any]
) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap,
            "input_topic": topics.readings,
            "output_topic": topics.forecasts,
            "dlq_topic": topics.dlq,
            "group_id": topics.group,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 2000,
            "startup_timeout_s": 10,
        },
        "model": {"units": [8, 8], "seeding": "truth"},
        "inference": {"max_batch": 64, "max_wait_ms": 20},
        "registry": {"path": str(registry)},
        "http": {"host": "127.0.0.1", "port": 0},
        "shutdown_timeout_s": 10,
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_settings(**base)


@dataclass
class RunningDaemon:
    daemon: Daemon
    thread: threading.Thread
    exit_codes: list[int] = field(default_factory=list)

    def stop(self, timeout: float = 30) -> int:
        self.daemon.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "daemon did not stop in time"
        return self.exit_codes[0]

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon.health.readiness()[0] == 200:
                return
            if not self.thread.is_alive():
                raise AssertionError(f"daemon exited with {self.exit_codes}")
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready: {self.daemon.health.readiness()}")


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., RunningDaemon]]:
    running: list[RunningDaemon] = []

    def start(settings: Settings, metrics: Metrics | None = None) -> RunningDaemon:
        daemon = Daemon(settings, metrics=metrics or Metrics(process=False))
        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
        r = RunningDaemon(daemon, thread, codes)
        thread.start()
        running.append(r)
        return r

    yield start
    for r in running:
        if r.thread.is_alive():
            r.stop()


# -- producing and consuming -------------------------------------------------------------------


def fleet_readings(sensors: int, steps: int, seed: int = 0) -> list[tuple[str, float, np.ndarray]]:
    """Readings of a simulated fleet, interleaved by time as sensors would send them."""
    fleet = SensorFleet(sensors, seed=seed, step_s=STEP_S)
    ts, values = fleet.series(steps)
    return [
        (fleet.sensor_ids[s], float(ts[k]), values[s, k])
        for k in range(steps)
        for s in range(sensors)
    ]


def produce(broker: EmbeddedBroker, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    try:
        for key, value in items:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def produce_readings(
    broker: EmbeddedBroker, topic: str, readings: list[tuple[str, float, np.ndarray]]
) -> None:
    produce(broker, topic, [(s.encode(), encode_reading(s, ts, v)) for s, ts, v in readings])


def consume(
    broker: EmbeddedBroker,
    topic: str,
    *,
    until: Callable[[list[Any]], bool],
    timeout: float = 60,
) -> list[Any]:
    """Read ``topic`` from the beginning with a plain consumer until ``until(records)``."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(records):
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def forecasts_of(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


def streamcast_env(settings: Settings) -> dict[str, str]:
    """The environment that configures a ``streamcast run`` subprocess like ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAST_")}
    flat = settings.model_dump(mode="json")
    for section, values in flat.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if value is None or (section, key) == ("model", "num_steps"):
                    continue  # model.num_steps follows window.num_steps
                name = f"STREAMCAST_{section.upper()}__{key.upper()}"
                env[name] = orjson.dumps(value).decode() if isinstance(value, list) else str(value)
        else:
            env[f"STREAMCAST_{section.upper()}"] = str(values)
    return env


def spawn_run(
    settings: Settings, log: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "streamcast", "run"],
            env={**streamcast_env(settings), **(extra_env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
