"""The daemon as operators run it: ``streamcast run`` subprocesses, SIGTERM, restarts,
start-up failures, and the first model trained from the stream."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from streamcast.learn.registry import ModelRegistry
from streamcast.sim.broker import EmbeddedBroker, free_port

from ..waiting import wait_for
from .conftest import (
    SPEC,
    Topics,
    consume,
    fleet_readings,
    forecasts_of,
    produce_readings,
    settings_for,
    spawn_run,
    streamcast_env,
)

pytestmark = pytest.mark.integration


def _notify_lines(messages: list[str]) -> list[str]:
    """sd_notify datagrams as their KEY=VALUE lines, in arrival order."""
    return [line for m in list(messages) for line in m.split("\n")]


def _watchdogs_after_ready(messages: list[str]) -> int:
    lines = _notify_lines(messages)
    return lines[lines.index("READY=1") :].count("WATCHDOG=1") if "READY=1" in lines else 0


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_sigterm_mid_stream_then_restart_loses_nothing(
    broker: EmbeddedBroker, topics: Topics, registry: Path, tmp_path: Path
) -> None:
    sensors, first, second = 5, 160, 60
    readings = fleet_readings(sensors, first + second, seed=7)
    split = sensors * first
    produce_readings(broker, topics.readings, readings[:split])
    settings = settings_for(
        broker, topics, registry, kafka={"max_poll_records": 50}, inference={"max_batch": 16}
    )
    log = tmp_path / "daemon.log"
    # Run the first daemon as systemd would (Type=notify, WatchdogSec=1).
    notify_dir = tempfile.mkdtemp(prefix="sc-")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(f"{notify_dir}/notify")
    notify.settimeout(0.2)
    messages: list[str] = []
    listening = threading.Event()
    listening.set()

    def listen() -> None:  # as systemd does: read every message as it comes
        while listening.is_set():
            with contextlib.suppress(TimeoutError):
                messages.append(notify.recv(4096).decode())

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    systemd_env = {"NOTIFY_SOCKET": f"{notify_dir}/notify", "WATCHDOG_USEC": "1000000"}

    proc = spawn_run(settings, log, systemd_env)
    got = consume(broker, topics.forecasts, until=lambda r: len(r) >= 40, timeout=90)
    assert len(got) >= 40, log.read_text()[-3000:]
    # Pinged at least twice while forecasting (every half WatchdogSec).
    wait_for(lambda: _watchdogs_after_ready(messages) >= 2, 30, "two watchdog pings")
    proc.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert _wait_exit(proc, 30) == 0, log.read_text()[-3000:]
    assert time.monotonic() - stopped_at < settings.shutdown_timeout_s + 2
    # Sent before the exit, so already queued on the socket: the listener gets it next.
    wait_for(lambda: "STOPPING=1" in _notify_lines(messages), 5, "STOPPING=1")
    listening.clear()
    listener.join()
    notify.close()
    shutil.rmtree(notify_dir)
    lines = _notify_lines(messages)
    assert "READY=1" in lines
    assert _watchdogs_after_ready(messages) >= 2
    assert "STOPPING=1" in lines
    assert any(line.startswith("STATUS=forecasting with model version 1") for line in lines)

    produce_readings(broker, topics.readings, readings[split:])
    proc = spawn_run(settings, log)
    want = {
        (s, ts)
        for i, (s, ts, _) in enumerate(readings)
        if i // sensors >= SPEC.num_steps  # the 97th reading of a sensor completes its window
    }
    records = consume(
        broker,
        topics.forecasts,
        until=lambda r: {(d["sensor"], d["ts"]) for d in forecasts_of(r)} >= want,
        timeout=120,
    )
    proc.send_signal(signal.SIGTERM)
    assert _wait_exit(proc, 30) == 0, log.read_text()[-3000:]

    seen = Counter((d["sensor"], d["ts"]) for d in forecasts_of(records))
    missing = want - set(seen)
    assert not missing, f"{len(missing)} forecasts missing, e.g. {sorted(missing)[:3]}"
    assert set(seen) == want  # nothing forecast that should not be
    duplicates = sum(n - 1 for n in seen.values())
    # A clean SIGTERM commits everything delivered: a restart repeats at most one poll's worth.
    assert duplicates <= settings.kafka.max_poll_records, duplicates
    print(f"restart: {len(want)} forecasts expected, {duplicates} duplicates")


def test_first_model_is_trained_from_the_stream(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, start_daemon
) -> None:
    registry = tmp_path / "empty-registry"
    sensors, steps, extra = 3, 560, 10
    everything = fleet_readings(sensors, steps + extra, seed=8)
    readings = everything[: sensors * steps]
    produce_readings(broker, topics.readings, readings)
    settings = settings_for(
        broker,
        topics,
        registry,
        training={"bootstrap_windows": 200, "max_seconds": 5, "max_epochs": 3},
    )
    daemon = start_daemon(settings)
    assert daemon.daemon.health.readiness()[0] == 503
    daemon.wait_ready(timeout=120)
    assert ModelRegistry(registry).versions() == [1]
    meta = ModelRegistry(registry).meta(1)
    assert meta["metrics"], "version 1 carries its validation metrics"

    more = everything[len(readings) :]
    produce_readings(broker, topics.readings, more)
    records = consume(
        broker,
        topics.forecasts,
        until=lambda r: (
            {(d["sensor"], d["ts"]) for d in forecasts_of(r)} >= {(s, ts) for s, ts, _ in more}
        ),
    )
    assert daemon.stop() == 0
    docs = forecasts_of(records)
    assert {d["model_version"] for d in docs} == {1}
    # Readings gathered before the model existed get no forecast; every later one does:
    # per sensor, the forecast readings are a gap-free suffix of its readings.
    for sensor in {s for s, _, _ in everything}:
        all_ts = [ts for s, ts, _ in everything if s == sensor]
        got = sorted(d["ts"] for d in docs if d["sensor"] == sensor)
        assert got == all_ts[len(all_ts) - len(got) :]
        assert extra <= len(got) < len(all_ts) - SPEC.num_steps


def _run(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamcast", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_config_stops_startup_naming_the_field(
    broker: EmbeddedBroker, topics: Topics, registry: Path
) -> None:
    env = streamcast_env(settings_for(broker, topics, registry))
    env["STREAMCAST_WINDOW__NUM_STEPS"] = "ninety-six"
    done = _run(env)
    assert done.returncode == 3
    assert "window.num_steps" in done.stderr
    assert "STREAMCAST_WINDOW__NUM_STEPS" in done.stderr


def test_unreachable_broker_stops_startup_within_the_bound(
    broker: EmbeddedBroker, topics: Topics, registry: Path
) -> None:
    env = streamcast_env(settings_for(broker, topics, registry))
    env["STREAMCAST_KAFKA__BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"
    env["STREAMCAST_KAFKA__STARTUP_TIMEOUT_S"] = "3"
    started = time.monotonic()
    done = _run(env)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "unreachable" in done.stderr
    assert time.monotonic() - started < 45


def test_model_that_does_not_fit_the_config_stops_startup(
    broker: EmbeddedBroker, topics: Topics, registry: Path
) -> None:
    env = streamcast_env(settings_for(broker, topics, registry))
    env["STREAMCAST_WINDOW__NUM_STEPS"] = "48"
    done = _run(env)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "num_steps" in done.stderr


def test_config_show_prints_effective_values_with_secrets_masked(
    broker: EmbeddedBroker, topics: Topics, registry: Path
) -> None:
    """``config show`` prints the effective config with secrets masked."""
    env = streamcast_env(settings_for(broker, topics, registry))
    env["STREAMCAST_KAFKA__SASL_PLAIN_PASSWORD"] = "hunter2-secret"
    env["STREAMCAST_HTTP__PORT"] = "9999"
    done = subprocess.run(
        [sys.executable, "-m", "streamcast", "config", "show"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "hunter2-secret" not in done.stdout
    assert "port: 9999" in done.stdout
    assert "sasl_plain_password: '**********'" in done.stdout
