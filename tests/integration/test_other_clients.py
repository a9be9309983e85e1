"""Another Kafka client (librdkafka, through confluent-kafka) on both sides of the daemon."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from streamcast.sim.broker import EmbeddedBroker
from streamcast.stream.messages import encode_reading

from .conftest import SPEC, Topics, fleet_readings, settings_for

pytestmark = pytest.mark.integration


def _drain(broker: EmbeddedBroker, topic: str, want: int, timeout: float = 60) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"check-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 2000,
        }
    )
    consumer.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(msg)
    finally:
        consumer.close()
    return out


def test_librdkafka_producer_in_and_consumer_out(
    broker: EmbeddedBroker, topics: Topics, registry: Path, start_daemon
) -> None:
    readings = fleet_readings(3, SPEC.num_steps + 1 + 5, seed=13)
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "zstd",
        }
    )
    for sensor, ts, values in readings:
        producer.produce(
            topics.readings, key=sensor.encode(), value=encode_reading(sensor, ts, values)
        )
    producer.produce(topics.readings, key=b"sensor-000", value=b"\xff\xfe not utf-8 json")
    assert producer.flush(30) == 0

    running = start_daemon(settings_for(broker, topics, registry))
    forecasts = _drain(broker, topics.forecasts, want=3 * 6)
    letters = _drain(broker, topics.dlq, want=1)
    assert running.stop() == 0

    docs = [orjson.loads(m.value()) for m in forecasts]
    assert Counter(d["sensor"] for d in docs) == {"sensor-000": 6, "sensor-001": 6, "sensor-002": 6}
    assert all(m.key().decode() == orjson.loads(m.value())["sensor"] for m in forecasts)
    assert len(letters) == 1
    headers = dict(letters[0].headers())
    assert headers["streamcast.reason"] == b"not_json"
    assert letters[0].value() == b"\xff\xfe not utf-8 json"
    assert letters[0].key() == b"sensor-000"
