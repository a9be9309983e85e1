"""Hostile input through the real daemon: generated records on the embedded broker, counted.

Valid readings of a small fleet are mixed with records made to break things: cut and
bit-flipped JSON, wrong types, values at and beyond the float32 limit, tombstones,
payloads over a megabyte, keys that lie, clocks years ahead, replays of the past. The
daemon must read every record, forecast or dead-letter each one, and keep running.

    python -m bench.fuzz [--inputs 100000] [--seed 1]

Prints a table and JSON: inputs, forecasts, dead letters by reason, crashes (target 0).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import orjson
from confluent_kafka import Producer
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from bench.common import train_registry
from streamcast.config import ModelSpec, load_settings
from streamcast.ops.metrics import Metrics
from streamcast.sim.broker import EmbeddedBroker, create_topics
from streamcast.sim.fleet import SensorFleet
from streamcast.stream.daemon import Daemon
from streamcast.stream.messages import encode_reading

PARTITIONS = 4
Record = tuple[bytes | None, bytes | None]


def _valid(sensors: int, steps: int) -> list[Record]:
    fleet = SensorFleet(sensors, seed=5)
    ts, values = fleet.series(steps)
    return [
        (sid.encode(), encode_reading(sid, ts[k], values[i, k]))
        for k in range(steps)
        for i, sid in enumerate(fleet.sensor_ids)
    ]


def _hostile(rng: np.random.Generator, valid: list[Record], sent: list[int]) -> Iterator[Record]:
    """An endless stream of records that should each become a dead letter or a reading,
    each made from a valid record already sent (``sent[0]`` of them so far)."""
    far = time.time() + 10 * 365 * 86_400
    makers = [
        lambda k, v: (k, v[: int(rng.integers(0, max(1, len(v))))]),  # cut short
        lambda k, v: (k, _flip(v, rng)),  # a flipped byte
        lambda k, v: (None, None),  # a tombstone
        lambda k, v: (k, None),  # a compaction tombstone
        lambda k, v: (k, b'{"sensor": "x", "pad": "' + b"y" * 1_100_000 + b'"}'),  # over 1 MB
        lambda k, v: (k, _edit(v, values=[3.4028235e38, -3.4028235e38])),  # the float32 limit
        lambda k, v: (k, _edit(v, values=[1e39, 1.0])),  # beyond it
        lambda k, v: (k, _edit(v, values=[1e-45, 0.0])),  # subnormal
        lambda k, v: (k, _edit(v, values=["1", 2])),
        lambda k, v: (k, _edit(v, values=[True, 2])),
        lambda k, v: (k, _edit(v, values=[1.0])),
        lambda k, v: (k, _edit(v, ts="yesterday")),
        lambda k, v: (k, _edit(v, ts=far)),  # a clock years ahead
        lambda k, v: (k, _edit(v, ts=1.0)),  # the distant past: out of order
        lambda k, v: (k, _edit(v, sensor="")),
        lambda k, v: (b"someone-else", v),  # a key that lies
        lambda k, v: (k, _edit(v, sensor="s" * 10_000)),
        lambda k, v: (k, b"[1, 2, 3]"),
        lambda k, v: (k, b"\xff\xfe\x00garbage"),
        lambda k, v: (k, b'{"sensor": "x", "ts": 1, "values": [NaN, 1]}'),
        lambda k, v: (k, orjson.dumps({"sensor": {"nested": [1, {"a": None}]}})),
        lambda k, v: (k, v),  # a replay of a valid record: duplicate
    ]
    while True:
        key, value = valid[int(rng.integers(sent[0]))]
        assert value is not None
        maker = makers[int(rng.integers(len(makers)))]
        if maker is makers[4] and rng.random() > 0.01:
            continue  # keep the megabyte records rare
        yield maker(key, value)


def _flip(value: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(value)
    b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
    return bytes(b)


def _edit(value: bytes, **fields: object) -> bytes:
    doc = orjson.loads(value)
    doc.update(fields)
    return orjson.dumps(doc)


def _produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "message.max.bytes": 4 << 20, "linger.ms": 20}
    )
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(120):
        raise RuntimeError("the fuzz records were not all acknowledged")


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The fetch high watermark of each partition (the broker's ListOffsets under-reports)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends: dict[int, int] = {}
    while len(ends) < PARTITIONS:
        consumer.poll(timeout_ms=500, max_records=1)
        for tp in tps:
            high = consumer.highwater(tp)
            if high is not None:
                ends[tp.partition] = high
    consumer.close()
    return ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sensors", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    steps = max(200, args.inputs // (2 * args.sensors))
    valid = _valid(args.sensors, steps)
    sent = [0]
    hostile = _hostile(rng, valid, sent)
    records: list[Record] = []
    for record in valid:
        records.append(record)
        sent[0] += 1
        while rng.random() < 0.5 and len(records) < args.inputs:
            records.append(next(hostile))
        if len(records) >= args.inputs:
            break

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        spec = ModelSpec(units=(8, 8))
        train_registry(tmp, spec.units)
        topic = f"fuzz-{uuid.uuid4().hex[:6]}"
        create_topics(broker.bootstrap, {topic: PARTITIONS})
        _produce(broker.bootstrap, topic, records)
        ends = _end_offsets(broker.bootstrap, topic)

        settings = load_settings(
            environ={},
            kafka={
                "bootstrap_servers": broker.bootstrap,
                "input_topic": topic,
                "output_topic": f"{topic}.forecasts",
                "dlq_topic": f"{topic}.dlq",
                "group_id": f"fuzz-{uuid.uuid4().hex[:6]}",
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 2000,
            },
            model={"units": [8, 8]},
            registry={"path": tmp},
            http={"enabled": False},
        )
        metrics = Metrics(process=False)
        daemon = Daemon(settings, metrics=metrics)
        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
        started = time.perf_counter()
        thread.start()
        deadline = time.monotonic() + 900
        while thread.is_alive() and time.monotonic() < deadline:
            done = all(daemon.offsets.processed.get(p, 0) >= end for p, end in ends.items())
            if done and not daemon.offsets.dirty:
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        alive = thread.is_alive()
        daemon.stop.set()
        thread.join(60)

    sample = metrics.registry.get_sample_value
    reasons = Counter(
        {
            s.labels["reason"]: int(s.value)
            for family in metrics.registry.collect()
            if family.name == "streamcast_dead_letters"
            for s in family.samples
            if s.name.endswith("_total")
        }
    )
    forecasts = int(sample("streamcast_forecasts_total") or 0)
    ok = int(sample("streamcast_readings_total", {"outcome": "ok"}) or 0)
    crashes = 0 if alive and codes == [0] else 1
    result = {
        "inputs": len(records),
        "valid_readings_accepted": ok,
        "forecasts": forecasts,
        "dead_letters": sum(reasons.values()),
        "dead_letters_by_reason": dict(sorted(reasons.items())),
        "accounted_for": ok
        + sum(reasons.values())
        - reasons.get("inference_failed", 0)
        - reasons.get("non_finite_forecast", 0),
        "crashes": crashes,
        "exit_code": codes[0] if codes else None,
        "seconds": round(elapsed, 1),
    }
    print(f"{len(records)} inputs through the daemon in {elapsed:.0f}s")
    print(f"  readings accepted {ok:>8}   forecasts {forecasts:>8}")
    for reason, n in sorted(reasons.items()):
        print(f"  dead letter {reason:<24} {n:>8}")
    print(f"  crashes {crashes}   (every input accounted for: {result['accounted_for']})")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
