"""The broker goes away under a running daemon: a TCP proxy between them cuts every
connection (``proxy.py``), with a broker of its own advertised at the proxy's address.

Only the daemon's connections are cut (its Kafka client id is ``streamcast``); the
test's own producer and consumer keep reaching the broker through the same proxy,
so readings keep arriving while the daemon cannot fetch them.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient
from kafka.structs import TopicPartition

from streamcast.config import Settings
from streamcast.sim.broker import EmbeddedBroker, free_port, wait_for_port

from .conftest import (
    SPEC,
    Topics,
    fleet_readings,
    produce_readings,
    settings_for,
    spawn_run,
)
from .proxy import PRODUCE, Mode, TcpProxy

pytestmark = pytest.mark.integration

CUT_S = 20.0
DAEMON = "streamcast"  # the daemon's client id: what the proxy cuts


def _topics(broker: EmbeddedBroker) -> Topics:
    tag = uuid.uuid4().hex[:8]
    t = Topics(f"readings-{tag}", f"forecasts-{tag}", f"dlq-{tag}", f"group-{tag}")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics(
            {
                t.readings: {"num_partitions": 3, "replication_factor": 1},
                t.forecasts: {"num_partitions": 3, "replication_factor": 1},
                t.dlq: {"num_partitions": 1, "replication_factor": 1},
            }
        )
    finally:
        admin.close()
    return t


def _settings(
    broker: EmbeddedBroker, t: Topics, registry: Path, proxy: TcpProxy, **kafka: Any
) -> Settings:
    """The daemon reaches the broker only through the proxy. Small, uncompiled (no XLA)
    inference buckets: the model loads in seconds, which is all these tests need of it."""
    return settings_for(
        broker,
        t,
        registry,
        kafka={"bootstrap_servers": proxy.address, **kafka},
        inference={"max_batch": 16, "jit_compile": "off"},
    )


def _expected(readings: list[tuple[str, float, Any]], sensors: int) -> set[tuple[str, float]]:
    """(sensor, ts) of every reading that completes a window (a sensor's 97th on)."""
    return {(s, ts) for i, (s, ts, _) in enumerate(readings) if i // sensors >= SPEC.num_steps}


class Forecasts:
    """Reads the forecast topic from the start on a thread, noting when each arrived."""

    def __init__(self, broker: EmbeddedBroker, topic: str) -> None:
        self.arrived: dict[tuple[str, float], float] = {}
        self.count = 0
        self._consumer = KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for batch in self._consumer.poll(timeout_ms=100).values():
                now = time.monotonic()
                for record in batch:
                    doc = orjson.loads(record.value)
                    self.arrived.setdefault((doc["sensor"], doc["ts"]), now)
                    self.count += 1

    def wait_for(self, want: set[tuple[str, float]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not want <= self.arrived.keys():
            time.sleep(0.1)
        missing = want - self.arrived.keys()
        assert not missing, f"{len(missing)} forecasts missing, e.g. {sorted(missing)[:3]}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_daemon_rides_out_a_broker_outage_and_loses_nothing(
    proxied: tuple[EmbeddedBroker, TcpProxy], registry: Path, start_daemon: Any, mode: Mode
) -> None:
    """Connections closed, new ones refused (a broker restart) or left unanswered (a
    network partition) for 20 s: the daemon keeps running, says it is not ready, and
    forecasts every reading that waited once the broker is back."""
    broker, proxy = proxied
    t = _topics(broker)
    sensors, before, during = 4, SPEC.num_steps + 1 + 10, 30
    readings = fleet_readings(sensors, before + during, seed=21)
    split = sensors * before
    want_before = _expected(readings[:split], sensors)
    want_after = _expected(readings, sensors) - want_before
    produce_readings(broker, t.readings, readings[:split])
    settings = _settings(broker, t, registry, proxy)
    running = start_daemon(settings)
    daemon = running.daemon
    forecasts = Forecasts(broker, t.forecasts)
    try:
        running.wait_ready(60)
        forecasts.wait_for(want_before, 60)
        time.sleep(1.0)  # the commit that follows the acks

        proxy.cut(clients=DAEMON, mode=mode)
        cut_at = time.monotonic()
        produce_readings(broker, t.readings, readings[split:])  # they wait in the broker
        unready_at = None
        while (elapsed := time.monotonic() - cut_at) < CUT_S:
            assert running.thread.is_alive(), f"daemon exited: {running.exit_codes}"
            if unready_at is None and daemon.health.readiness()[0] == 503:
                unready_at = elapsed
            time.sleep(0.1)
        assert unready_at is not None, f"/readyz stayed 200 during the cut: {daemon.health}"
        assert not want_after & forecasts.arrived.keys(), "a forecast got out during the cut"
        assert proxy.refused > 0, "the daemon never tried to reconnect"

        proxy.restore()
        restored_at = time.monotonic()
        forecasts.wait_for(want_after, 60)
        recovery = min(forecasts.arrived[k] for k in want_after) - restored_at
        deadline = time.monotonic() + 30
        while daemon.health.readiness()[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.health.readiness()[0] == 200, daemon.health.readiness()
        ready_again = time.monotonic() - restored_at
        assert running.thread.is_alive()
        print(
            f"\noutage {CUT_S:.0f}s ({mode}): /readyz 503 after {unready_at:.1f}s; "
            f"after the cut ended, first new forecast in {recovery:.1f}s, "
            f"/readyz 200 within {ready_again:.1f}s; "
            f"{len(want_before | want_after)} forecasts expected, {forecasts.count} received"
        )
    finally:
        forecasts.close()
    assert running.stop() == 0
    assert want_before | want_after <= forecasts.arrived.keys()


def _committed(broker: EmbeddedBroker, group: str) -> dict[int, int]:
    """partition → committed offset of ``group`` (asked by the test's own admin client)."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        offsets: dict[TopicPartition, Any] = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: int(om.offset) for tp, om in offsets.items() if om.offset >= 0}


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_unacknowledged_forecasts_exit_1_uncommitted_and_a_restart_redoes_them(
    proxied: tuple[EmbeddedBroker, TcpProxy], registry: Path, tmp_path: Path
) -> None:
    """The connection dies while the daemon's forecasts are on their way (the proxy
    drops its Produce request and cuts it off): flush fails within
    ``kafka.delivery_timeout_s``, the daemon exits 1 and its committed offsets stay where
    they were; after the network is back, a restart forecasts every reading again."""
    broker, proxy = proxied
    t = _topics(broker)
    sensors, before, after = 4, SPEC.num_steps + 1 + 5, 20
    readings = fleet_readings(sensors, before + after, seed=22)
    split = sensors * before
    want_before = _expected(readings[:split], sensors)
    want_after = _expected(readings, sensors) - want_before
    produce_readings(broker, t.readings, readings[:split])
    settings = _settings(broker, t, registry, proxy, delivery_timeout_s=2.5)
    log = tmp_path / "daemon.log"
    forecasts = Forecasts(broker, t.forecasts)
    proc = spawn_run(settings, log)
    try:
        forecasts.wait_for(want_before, 75)
        _wait(lambda: sum(_committed(broker, t.group).values()) == split, 20, "the commit")
        committed = _committed(broker, t.group)

        proxy.cut_on(PRODUCE, clients=DAEMON)  # the daemon's next Produce request dies
        produce_readings(broker, t.readings, readings[split:])
        assert proxy.cut_event.wait(30), "the daemon sent no forecasts"
        cut_at = time.monotonic()
        code = proc.wait(30)
        exited_after = time.monotonic() - cut_at
        assert code == 1, log.read_text()[-3000:]
        text = log.read_text()
        assert "delivery failed, offsets left uncommitted" in text, text[-3000:]
        # kafka-python may log its own tracebacks while connections die; none of ours.
        ours = re.compile(
            r'File "[^"]*/streamcast/(stream|model|learn|ops|sim)/|streamcast/\w+\.py"'
        )
        assert not ours.search("".join(text.split("Traceback")[1:])), text[-3000:]
        assert _committed(broker, t.group) == committed, "offsets moved past unacked work"
        assert not want_after & forecasts.arrived.keys()

        proxy.restore()
        proc = spawn_run(settings, log)
        forecasts.wait_for(want_after, 75)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
        print(
            f"\ndelivery failure: exit 1 {exited_after:.1f}s after the cut "
            f"(delivery_timeout_s={settings.kafka.delivery_timeout_s}); after the restart "
            f"all {len(want_after)} forecasts of the unacknowledged readings arrived"
        )
    finally:
        forecasts.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert want_before | want_after <= forecasts.arrived.keys()


def test_broker_command_advertises_another_address() -> None:
    """``streamcast broker --advertise``: clients bootstrap where it listens and are sent
    to the advertised address (here a proxy) for everything after."""
    port = free_port()
    with TcpProxy(("127.0.0.1", port)) as proxy:
        command = ["broker", "--port", str(port), "--advertise", proxy.address]
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamcast", *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert wait_for_port("127.0.0.1", port, 20)
            metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(
                timeout=10
            )
            assert [(b.host, b.port) for b in metadata.brokers.values()] == [
                ("127.0.0.1", proxy.port)
            ]
            produce_readings(EmbeddedBroker(port=port), "advertised", fleet_readings(1, 3, seed=1))
            # The producer followed the metadata to the proxy.
            assert any(c.startswith("kafka-python-producer") for c in proxy.client_ids)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 0
            assert proc.stdout is not None
            assert f"advertised as {proxy.address}" in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    done = subprocess.run(
        [sys.executable, "-m", "streamcast", "broker", "--advertise", "no-port"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "expected HOST:PORT, got 'no-port'" in done.stderr


def test_a_slow_broker_shows_as_lag_not_as_memory(
    proxied: tuple[EmbeddedBroker, TcpProxy], registry: Path, start_daemon: Any
) -> None:
    """Every Produce request waits 0.2 s at the proxy: the broker takes forecasts more
    slowly than the daemon makes them. The output waiting for acks must stay within
    ``kafka.max_pending_bytes`` plus one loop turn's worth (the loop stops fetching and
    waits for the broker; without that bound it would hold all 5 MB of forecasts); the
    readings wait in the broker as lag, and none is lost."""
    broker, proxy = proxied
    t = _topics(broker)
    sensors, steps = 30, SPEC.num_steps + 1 + 60
    readings = fleet_readings(sensors, steps, seed=5)
    produce_readings(broker, t.readings, readings)
    limit, per_poll = 262_144, 20
    settings = _settings(
        broker,
        t,
        registry,
        proxy,
        max_pending_bytes=limit,
        max_poll_records=per_poll,
        commit_interval_ms=600_000,  # only backpressure makes the loop wait for acks
    )
    proxy.delay = (PRODUCE, 0.2)
    running = start_daemon(settings)
    daemon = running.daemon
    pending: list[int] = []  # output waiting for acks, each time the loop waits for them
    lag: list[int] = []

    def sample() -> None:
        sink = daemon.sink
        if not pending:  # first turn: watch every wait for acks from now on
            flush = sink.flush

            def watched(timeout_s: float | None = None) -> float:
                pending.append(sink.pending_bytes)
                return flush(timeout_s)

            sink.flush = watched  # type: ignore[method-assign]
            pending.append(0)
        lag.append(sum(daemon.source.lag().values()))

    daemon.loop_hook = sample
    forecasts = Forecasts(broker, t.forecasts)
    try:
        running.wait_ready(60)
        want = _expected(readings, sensors)
        deadline = time.monotonic() + 20
        while len(forecasts.arrived) < len(want) // 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(forecasts.arrived) >= len(want) // 4, "forecasts did not flow"
        # One turn of the loop adds at most a poll's readings and a batch left from the
        # turn before, each at most one forecast of under 4 KiB (96 x 2 float32 values).
        bound = limit + (per_poll + settings.inference.max_batch) * 4096
        assert max(pending) <= bound, f"pending output grew to {max(pending)} bytes"
        assert max(pending) >= limit // 2, "the test did not make output wait"
        assert max(lag) > per_poll * 4, "the readings did not wait in the broker"
        proxy.delay = None
        forecasts.wait_for(want, 60)
    finally:
        forecasts.close()
    assert running.stop() == 0
    print(
        f"\nslow broker: pending output at most {max(pending)} bytes "
        f"(limit {limit}), lag up to {max(lag)} readings"
    )
