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
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from streamcast.learn.fit import TrainResult

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


# Training stops after a fixed number of epochs, never on the clock: a time budget ends
# after however many epochs the shared CPUs allowed, so the weights would differ from run
# to run. One epoch costs about what the old 4 s budget did (a short fit is mostly
# tracing and compiling); the budget here is only a backstop (see ``train_model``).
TRAINING = TrainingSettings(max_seconds=120, max_epochs=1, batch_size=128, random_seed=0)

# Fits by the graph trained (``build_forecaster``'s JSON): truth and carry mode train the
# same graph (carried states replace the seed only at inference), so one fit serves both.
_FITS: dict[str, TrainResult] = {}


def train_model(spec: ModelSpec) -> TrainResult:
    """``streamcast.learn.fit.train``'s result for ``spec`` on a small simulated fleet,
    as training left it (one fit per training graph and session)."""
    from streamcast.learn.fit import train
    from streamcast.model.graph import build_forecaster

    key = build_forecaster(spec).to_json()
    if key not in _FITS:
        ts, values = SensorFleet(6, seed=3, step_s=STEP_S).series(96 * 6)
        series = [v.astype(np.float32) for v in values]
        # With each reading's time, as ``streamcast train`` gives it: the calendar's inputs.
        result = train(spec, series, TRAINING, progress=False, timestamps=[ts] * len(series))
        assert result.stopped_by == "max epochs", f"training stopped by {result.stopped_by}"
        _FITS[key] = result
    return _FITS[key]


def train_registry(path: Path, spec: ModelSpec) -> Path:
    """A registry whose version 1 is the trained model, saved as ``streamcast train`` saves
    it (``train_and_save``): no weight touched after training."""
    result = train_model(spec)
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
        # A daemon in the test process would freeze and collect the whole test run's heap
        # at each version change (seconds, not the 0.15 s of a daemon's own); the daemons
        # run as processes (``spawn_run``) keep the default.
        inference = settings.inference.model_copy(update={"freeze_heap": False})
        settings = settings.model_copy(update={"inference": inference})
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


@dataclass(frozen=True)
class ModelCall:
    """One ``Predictor.predict`` call: copies of exactly what went in and what came out."""

    windows: np.ndarray
    truths: np.ndarray
    carry: np.ndarray | None
    has_carry: np.ndarray | None
    forecast: np.ndarray
    states: np.ndarray


@pytest.fixture
def model_calls(monkeypatch: pytest.MonkeyPatch) -> list[ModelCall]:
    """Every ``Predictor.predict`` call in this process from now on, in order: the
    in-process daemon's (set up before it starts) and the test's own (take a copy of the
    list before predicting offline).

    The trained model forgets its initial states within a 96-step window (its forget-gate
    biases stay near their initial 1, so each step keeps about sigmoid(1) = 0.73 of the
    cell state), so which truth or carry seeded a window cannot be read off the forecast:
    a test reads it here, where the daemon hands it to the model, and compares it exactly.
    """
    from streamcast.model.predictor import Prediction, Predictor

    calls: list[ModelCall] = []
    real = Predictor.predict

    def predict(
        self: Predictor,
        window: np.ndarray,
        truth: np.ndarray,
        carry: np.ndarray | None = None,
        has_carry: np.ndarray | None = None,
        calendar: np.ndarray | None = None,
        lags: np.ndarray | None = None,
        lags_known: np.ndarray | None = None,
    ) -> Prediction:
        out = real(self, window, truth, carry, has_carry, calendar, lags, lags_known)
        calls.append(
            ModelCall(
                np.array(window, np.float32),
                np.array(truth, np.float32),
                None if carry is None else np.array(carry, np.float32),
                None if has_carry is None else np.array(has_carry, bool),
                out.forecast.copy(),
                out.states.copy(),
            )
        )
        return out

    monkeypatch.setattr(Predictor, "predict", predict)
    return calls


def calls_by_window(calls: list[ModelCall]) -> dict[bytes, list[tuple[ModelCall, int]]]:
    """Each window the model was given (its float32 bytes) -> (call, row) for every time."""
    out: dict[bytes, list[tuple[ModelCall, int]]] = {}
    for call in calls:
        for row in range(len(call.windows)):
            out.setdefault(call.windows[row].tobytes(), []).append((call, row))
    return out


def state_gap(a: list[tuple[Any, Any]], b: list[tuple[Any, Any]]) -> float:
    """Largest difference between two sets of per-layer (h, c) states."""
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for pa, pb in zip(a, b, strict=True)
        for x, y in zip(pa, pb, strict=True)
    )


def state_scale(states: list[tuple[Any, Any]]) -> float:
    """Largest magnitude in per-layer (h, c) states."""
    return max(float(np.max(np.abs(np.asarray(t)))) for pair in states for t in pair)


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
