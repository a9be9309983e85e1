"""The commands people type: demo, simulate — run as real subprocesses (``broker``, and
stopping each of them, are in test_signals.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import orjson
import pytest
from kafka import KafkaConsumer

from streamcast.sim.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def _streamcast(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamcast", *args]


def test_demo_shows_forecasts_and_stops_by_itself() -> None:
    done = subprocess.run(
        _streamcast(
            "demo", "--duration", "55", "--sensors", "4", "--rate", "40", "--train-seconds", "6"
        ),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "forecasting model v1" in out, out[-3000:]
    number = r" +-?\d+\.\d+"
    assert re.search(rf"sensor-000: latest next-reading forecast{number} +actual{number}", out)
    published = int(re.search(r"forecasts published (\d+)", out).group(1))
    assert published > 0
    assert "next reading, MAE: model" in out
    assert re.search(r"whole 96-step horizon, MAE: model [\d.]+, persistence [\d.]+, seasonal", out)


def test_simulate_publishes_contract_readings_and_malformed_ones() -> None:
    with EmbeddedBroker() as broker:
        done = subprocess.run(
            _streamcast(
                "simulate",
                "--bootstrap",
                broker.bootstrap,
                "--topic",
                "sim",
                "--sensors",
                "3",
                "--rate",
                "1000",
                "--count",
                "59",
                "--malformed",
                "0.2",
                "--seed",
                "4",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        malformed = int(re.search(r"\((\d+) malformed\)", done.stdout).group(1))
        consumer = KafkaConsumer(
            "sim",
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=3000,
        )
        records = list(consumer)
        consumer.close()
    assert len(records) == 59 + malformed  # exactly --count readings, not a whole step more
    good = []
    for rec in records:
        try:
            doc = orjson.loads(rec.value)
        except orjson.JSONDecodeError:
            continue
        valid = isinstance(doc, dict) and len(doc.get("values", [])) == 2 and "ts" in doc
        if valid and all(abs(v) < 1e300 for v in doc["values"]):
            good.append((rec.key.decode(), doc))
    assert len(good) == 59
    for key, doc in good:
        assert key == doc["sensor"]
    per_sensor: dict[str, list[float]] = {}
    for _, doc in good:
        per_sensor.setdefault(doc["sensor"], []).append(doc["ts"])
    assert len(per_sensor) == 3
    assert all(ts == sorted(ts) and len(set(ts)) == len(ts) for ts in per_sensor.values())
