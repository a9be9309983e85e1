"""No single record can stop the daemon: each stage's failure dead-letters its record and
the rest of the batch is published (decode, window, inference, encode, dead-letter send)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from streamcast.sim.broker import EmbeddedBroker
from streamcast.stream.messages import encode_reading

from .conftest import SPEC, Topics, consume, fleet_readings, forecasts_of, settings_for

pytestmark = pytest.mark.integration

SENSORS, STEPS = 4, SPEC.num_steps + 1 + 10


def test_hostile_records_are_dead_lettered_and_everything_else_is_forecast(
    broker: EmbeddedBroker, topics: Topics, registry: Path, start_daemon: Any
) -> None:
    running = start_daemon(settings_for(broker, topics, registry))
    real_infer = running.daemon.serving.infer

    def infer(batch: Any) -> Any:  # one sensor's windows fail inside the model
        if "sensor-003" in batch.sensors:
            raise RuntimeError("this window breaks the model")
        return real_infer(batch)

    running.daemon.serving.infer = infer
    running.wait_ready(60)

    readings = fleet_readings(SENSORS, STEPS, seed=21)
    items: list[tuple[bytes | None, bytes | None]] = []
    for i, (sensor, ts, values) in enumerate(readings):
        if sensor == "sensor-001" and i // SENSORS == SPEC.num_steps + 3:
            values = values.copy()
            values[0] = 1e38  # within the contract, near the float32 limit
        items.append((sensor.encode(), encode_reading(sensor, ts, values)))
        if i == 60 * SENSORS:
            items.append((None, None))  # a tombstone
            items.append((b"sensor-000", b'{"sensor": "sensor-000", "pad": "' + b"x" * 1_100_000))
            far = encode_reading("sensor-002", ts + 10 * 365 * 86_400, values)
            items.append((b"sensor-002", far))  # a clock ten years ahead
    # librdkafka sends a record with neither key nor value; kafka-python refuses to.
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 4 << 20})
    for key, value in items:
        producer.produce(topics.readings, key=key, value=value)
    assert producer.flush(30) == 0
    del producer

    expected = {(s, ts) for i, (s, ts, _) in enumerate(readings) if i // SENSORS >= SPEC.num_steps}
    want_letters = 3 + (STEPS - SPEC.num_steps)  # + every window of sensor-003

    def done(records: list[Any]) -> bool:
        return len(records) >= len(expected) - (STEPS - SPEC.num_steps)

    forecasts = consume(broker, topics.forecasts, until=done, timeout=90)
    letters = consume(broker, topics.dlq, until=lambda r: len(r) >= want_letters, timeout=60)
    assert running.daemon.stop.is_set() is False and running.thread.is_alive()
    sample = running.daemon.metrics.registry.get_sample_value
    assert running.stop() == 0

    docs = forecasts_of(forecasts)
    published = Counter((d["sensor"], d["ts"]) for d in docs)
    assert max(published.values()) == 1
    reasons = Counter(dict(r.headers)["streamcast.reason"].decode() for r in letters)
    assert reasons == {
        "tombstone": 1,
        "too_large": 1,
        "ts_in_future": 1,
        "inference_failed": STEPS - SPEC.num_steps,
    }, reasons
    failed = {
        (orjson.loads(r.value)["sensor"], orjson.loads(r.value)["ts"])
        for r in letters
        if dict(r.headers)["streamcast.reason"] == b"inference_failed"
    }
    # Every window was either forecast or dead-lettered, never lost, never both.
    assert set(published) | failed == expected
    assert not set(published) & failed
    huge = [d for d in docs if d["sensor"] == "sensor-001"]
    assert len(huge) == STEPS - SPEC.num_steps
    for doc in docs:
        assert all(abs(v) < 3.5e38 for row in doc["values"] for v in row)  # JSON has no inf
    big = next(r for r in letters if dict(r.headers)["streamcast.reason"] == b"too_large")
    assert dict(big.headers)["streamcast.truncated"] == f"key=10 value={1_100_000 + 33}".encode()
    assert big.value.startswith(b'{"sensor": "sensor-000", "pad": "xxx')
    assert sample("streamcast_dead_letters_total", {"reason": "inference_failed"}) == (
        STEPS - SPEC.num_steps
    )
