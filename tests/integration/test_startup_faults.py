"""Start-up against a broker that is not there, stops answering, or a model that breaks:
exit code 3 within the start-up deadline, one line that says why, nothing left open.
And the output topics exist before the daemon says it is ready."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from kafka.admin import KafkaAdminClient

from streamcast.sim.broker import EmbeddedBroker, free_port

from .conftest import (
    SPEC,
    Topics,
    fleet_readings,
    produce_readings,
    settings_for,
    streamcast_env,
)
from .proxy import TcpProxy

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT_S = 5
CREATE_TOPICS = 19  # the Kafka API key of CreateTopics


def _run(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streamcast", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - started


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line or " CRITICAL " in line]


def _fresh_topics(bootstrap: str, readings_partitions: int = 3) -> Topics:
    """Unique names; only the readings topic is created."""
    tag = uuid.uuid4().hex[:8]
    t = Topics(f"readings-{tag}", f"forecasts-{tag}", f"dlq-{tag}", f"group-{tag}")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {t.readings: {"num_partitions": readings_partitions, "replication_factor": 1}}
        )
    finally:
        admin.close()
    return t


@pytest.mark.parametrize("fault", ["closed port", "no answer", "stops answering midway"])
def test_broker_fault_stops_startup_within_the_deadline_with_one_line(
    broker: EmbeddedBroker,
    topics: Topics,
    proxied: tuple[EmbeddedBroker, TcpProxy],
    tmp_path: Path,
    fault: str,
) -> None:
    """``closed port``: nothing listens. ``no answer``: connections are accepted and never
    answered. ``stops answering midway``: the broker answers the producer's and the admin
    client's bootstrap and the topic look-up, then goes silent at CreateTopics (the
    connections stay open, nothing comes back): what is left of one deadline, not a
    fresh timeout per step, bounds the rest."""
    own_broker, proxy = proxied
    env = streamcast_env(settings_for(broker, topics, tmp_path / "registry"))
    env["STREAMCAST_KAFKA__STARTUP_TIMEOUT_S"] = str(STARTUP_TIMEOUT_S)
    if fault == "closed port":
        bootstrap = f"127.0.0.1:{free_port()}"
    elif fault == "no answer":
        proxy.cut(mode="blackhole")
        bootstrap = proxy.address
    else:
        fresh = _fresh_topics(own_broker.bootstrap)  # output topics missing: start-up creates
        env["STREAMCAST_KAFKA__INPUT_TOPIC"] = fresh.readings
        env["STREAMCAST_KAFKA__OUTPUT_TOPIC"] = fresh.forecasts
        env["STREAMCAST_KAFKA__DLQ_TOPIC"] = fresh.dlq
        proxy.cut_on(CREATE_TOPICS, clients="streamcast", mode="freeze")
        bootstrap = proxy.address
    env["STREAMCAST_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap

    done, elapsed = _run(env)

    assert done.returncode == 3, done.stderr[-3000:]
    assert elapsed < STARTUP_TIMEOUT_S + 5, (elapsed, done.stderr[-3000:])
    errors = _error_lines(done.stderr)
    assert len(errors) == 1, done.stderr[-3000:]
    assert "startup failed" in errors[0] and bootstrap in errors[0], errors
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    if fault == "stops answering midway":
        assert proxy.dropped_requests == 1  # it did get as far as creating the topics
        assert f"within kafka.startup_timeout_s={STARTUP_TIMEOUT_S}s" in errors[0], errors
    print(f"\n{fault}: exit 3 after {elapsed:.1f}s: {errors[0].split(' ERROR ', 1)[1]}")


def _break_model_meta(registry: Path) -> None:
    """meta.json claims layer sizes the archive does not have: the registry's checks pass
    (checksum, shape fields), building the compiled predictor fails with a ValueError."""
    meta_path = registry / "v000001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model_config"]["units"] = [16, 16]
    meta_path.write_text(json.dumps(meta))


def test_any_startup_exception_exits_3_with_one_line(
    broker: EmbeddedBroker, topics: Topics, registry: Path
) -> None:
    _break_model_meta(registry)
    env = streamcast_env(settings_for(broker, topics, registry))
    done, _ = _run(env)
    assert done.returncode == 3, done.stderr[-3000:]
    errors = _error_lines(done.stderr)
    assert len(errors) == 1, done.stderr[-3000:]
    assert "startup failed: ValueError: model has LSTM units [8, 8]" in errors[0], errors
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_failed_startup_closes_the_http_server_and_the_clients(
    broker: EmbeddedBroker, topics: Topics, registry: Path, start_daemon: Any
) -> None:
    """The model fails after the HTTP server and both Kafka clients are open."""
    _break_model_meta(registry)
    before = set(threading.enumerate())
    running = start_daemon(settings_for(broker, topics, registry))
    deadline = time.monotonic() + 60
    while running.daemon.http is None and time.monotonic() < deadline:
        time.sleep(0.01)
    http = running.daemon.http
    assert http is not None
    port = http.port
    running.thread.join(60)
    assert running.exit_codes == [3]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert running.daemon.sink.producer._closed
    assert running.daemon.source.consumer._closed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"threads still running after the failed start-up: {left}"


def test_output_topics_exist_before_ready(
    broker: EmbeddedBroker, registry: Path, start_daemon: Any
) -> None:
    """Only the readings topic exists. Once the daemon is ready, and before any forecast,
    a librdkafka client sees both output topics; one that subscribed then (and would
    otherwise look for new topics only every 5 minutes) gets the first forecasts."""
    t = _fresh_topics(broker.bootstrap, readings_partitions=3)
    running = start_daemon(settings_for(broker, t, registry))
    running.wait_ready(60)

    metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert len(metadata.topics[t.forecasts].partitions) == 3  # as many as the input topic
    assert len(metadata.topics[t.dlq].partitions) == 1
    assert metadata.topics[t.forecasts].error is None

    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"check-{t.forecasts}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 2000,
        }
    )
    consumer.subscribe([t.forecasts])
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.2)
        assert len(consumer.assignment()) == 3, "librdkafka did not see the forecast topic"
        readings = fleet_readings(2, SPEC.num_steps + 1 + 2, seed=31)
        produce_readings(broker, t.readings, readings)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 2 * 3 and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg)
    finally:
        consumer.close()
    assert running.stop() == 0
    assert len(got) == 2 * 3
