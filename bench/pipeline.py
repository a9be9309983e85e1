"""The whole daemon against the embedded broker, next to a bare consume-and-decode loop.

Both read the same readings topic from the start in one run; the ratio says what
windows, inference, publishing with acks and committing cost on top of reading.
With ``--exactly-once`` the daemon reads it a second time with ``kafka.exactly_once``
(one transaction per delivery cycle) and the two modes are printed side by side.

    python -m bench.pipeline [--sensors 200] [--steps 300] [--stride 1] [--units 8,8]
                             [--exactly-once]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import orjson
from kafka import KafkaConsumer, KafkaProducer

from bench.common import train_registry
from streamcast.config import ModelSpec, load_settings
from streamcast.ops.metrics import Metrics
from streamcast.sim.broker import EmbeddedBroker, create_topics
from streamcast.sim.fleet import SensorFleet
from streamcast.stream.daemon import Daemon
from streamcast.stream.messages import encode_reading


def _produce(bootstrap: str, topic: str, sensors: int, steps: int) -> int:
    fleet = SensorFleet(sensors, seed=3)
    ts, values = fleet.series(steps)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, compression_type="lz4")
    keys = [s.encode() for s in fleet.sensor_ids]
    for k in range(steps):
        for i, key in enumerate(keys):
            producer.send(
                topic, key=key, value=encode_reading(fleet.sensor_ids[i], ts[k], values[i, k])
            )
    producer.flush()
    producer.close()
    return sensors * steps


def _bare_read(bootstrap: str, topic: str, n: int) -> float:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        max_poll_records=2000,
    )
    seen, started = 0, None
    while seen < n:
        for records in consumer.poll(timeout_ms=500).values():
            if started is None:
                started = time.perf_counter()
            for rec in records:
                orjson.loads(rec.value)
            seen += len(records)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return n / elapsed


def _daemon_read(
    bootstrap: str,
    topic: str,
    registry: str,
    stride: int,
    units: tuple[int, ...],
    expected: int,
    *,
    output_topic: str,
    exactly_once: bool = False,
) -> tuple[float, float]:
    settings = load_settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "input_topic": topic,
            "output_topic": output_topic,
            "group_id": f"d-{uuid.uuid4().hex[:6]}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 2000,
            "exactly_once": exactly_once,
        },
        window={"stride": stride},
        model={"units": list(units)},
        registry={"path": registry},
        http={"enabled": False},
    )
    metrics = Metrics(process=False)
    daemon = Daemon(settings, metrics=metrics)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    sample = metrics.registry.get_sample_value
    started = None
    while (sample("streamcast_forecasts_total") or 0) < expected:
        if not thread.is_alive():
            raise RuntimeError("the daemon stopped before it forecast everything (see its log)")
        if started is None and (sample("streamcast_readings_total", {"outcome": "ok"}) or 0) > 0:
            started = time.perf_counter()
        time.sleep(0.01)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    readings = sample("streamcast_readings_total", {"outcome": "ok"}) or 0
    daemon.stop.set()
    thread.join()
    return readings / elapsed, expected / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--units", default="8,8")
    parser.add_argument(
        "--exactly-once",
        action="store_true",
        help="also run the daemon with kafka.exactly_once and compare the two modes",
    )
    args = parser.parse_args()
    units = tuple(int(u) for u in args.units.split(","))

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        spec = ModelSpec(units=units)
        train_registry(tmp, units)
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        outputs = {False: f"{topic}.forecasts", True: f"{topic}.forecasts-eos"}
        create_topics(broker.bootstrap, {topic: 4, **{name: 4 for name in outputs.values()}})
        n = _produce(broker.bootstrap, topic, args.sensors, args.steps)
        per_sensor = max(0, (args.steps - (spec.num_steps + 1)) // args.stride + 1)
        expected = args.sensors * per_sensor
        bare = _bare_read(broker.bootstrap, topic, n)
        readings_s, forecasts_s = _daemon_read(
            broker.bootstrap, topic, tmp, args.stride, units, expected, output_topic=outputs[False]
        )
        eos: tuple[float, float] | None = None
        if args.exactly_once:
            eos = _daemon_read(
                broker.bootstrap,
                topic,
                tmp,
                args.stride,
                units,
                expected,
                output_topic=outputs[True],
                exactly_once=True,
            )
    result = {
        "readings": n,
        "forecasts": expected,
        "stride": args.stride,
        "units": list(units),
        "bare_consume_decode_readings_s": round(bare),
        "daemon_readings_s": round(readings_s),
        "daemon_forecasts_s": round(forecasts_s),
        "daemon_vs_bare": round(readings_s / bare, 3),
    }
    print(f"{n} readings, {args.sensors} sensors, stride {args.stride}, units {list(units)}")
    print(f"  bare consume + decode : {bare:10,.0f} readings/s")
    print(
        f"  daemon (end to end)   : {readings_s:10,.0f} readings/s, {forecasts_s:,.0f} forecasts/s"
    )
    print(f"  ratio daemon / bare   : {readings_s / bare:10.3f}")
    if eos is not None:
        eos_readings_s, eos_forecasts_s = eos
        result.update(
            {
                "exactly_once_readings_s": round(eos_readings_s),
                "exactly_once_forecasts_s": round(eos_forecasts_s),
                "exactly_once_vs_at_least_once": round(eos_readings_s / readings_s, 3),
            }
        )
        print(
            f"  daemon, exactly-once  : {eos_readings_s:10,.0f} readings/s, "
            f"{eos_forecasts_s:,.0f} forecasts/s"
        )
        print(f"  ratio exactly-once / at-least-once: {eos_readings_s / readings_s:.3f}")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
