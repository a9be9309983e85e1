"""Replay: a history file's readings sent to Kafka in time order, keyed by sensor.

The way to see what the daemon makes of a data set end to end, and the check that a
backtest says what serving would have said: the daemon fed by a replay publishes,
for every (sensor, ts), the forecast the backtest of the same file computed.

Readings go out as producers should send them (``encode_reading``), keyed by sensor
so each sensor keeps to one partition, in order. The producer is idempotent, so a
retried send can neither duplicate nor reorder a sensor's readings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from kafka import KafkaProducer

from streamcast.stream.messages import encode_reading

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayResult:
    sent: int
    skipped: int  # readings with a missing value: no producer could send them
    failed: int  # sends the broker did not acknowledge
    seconds: float


def replay(
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    bootstrap: str,
    topic: str,
    *,
    speed: float | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    client_id: str = "streamcast-replay",
) -> ReplayResult:
    """Send every reading of ``data`` (sensor -> (ts, values)) in time order.

    ``speed``: event time runs this many times faster than the wall clock (2.0: an hour
    of readings in half an hour); None sends as fast as the broker takes them.
    """
    if speed is not None and not speed > 0:
        raise ValueError(f"speed {speed} must be > 0")
    stop = stop or threading.Event()
    names = sorted(data)
    ts_parts, value_parts, sensor_parts = [], [], []
    for i, name in enumerate(names):
        ts, values = data[name]
        values = np.asarray(values, np.float64).reshape(len(ts), -1)
        ts_parts.append(np.asarray(ts, np.float64))
        value_parts.append(values)
        sensor_parts.append(np.full(len(ts), i, np.int64))
    if not ts_parts:
        return ReplayResult(0, 0, 0, 0.0)
    ts_all = np.concatenate(ts_parts)
    values_all = np.concatenate(value_parts)
    sensor_all = np.concatenate(sensor_parts)
    good = np.isfinite(values_all).all(axis=1) & np.isfinite(ts_all)
    order = np.lexsort((sensor_all, ts_all))  # by time, ties by sensor (as backtest walks)
    order = order[good[order]]
    skipped = int((~good).sum())
    keys = [n.encode() for n in names]
    failures = [0]

    def failed(exc: BaseException) -> None:
        failures[0] += 1
        if failures[0] <= 5:
            logger.error("replay send failed: %s", exc)

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        compression_type="lz4",
        client_id=client_id,
    )
    started = time.monotonic()
    sent = 0
    total = len(order)
    try:
        t0 = float(ts_all[order[0]]) if total else 0.0
        for i, row in enumerate(order.tolist()):
            if stop.is_set():
                break
            t = float(ts_all[row])
            if speed is not None:
                wait = started + (t - t0) / speed - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    break
            s = int(sensor_all[row])
            value = encode_reading(names[s], t, values_all[row])
            producer.send(topic, key=keys[s], value=value).add_errback(failed)
            sent += 1
            if progress is not None and (i + 1) % 10_000 == 0:
                progress(i + 1, total)
        producer.flush()
    finally:
        producer.close(timeout=10)
    if progress is not None:
        progress(sent, total)
    return ReplayResult(sent - failures[0], skipped, failures[0], time.monotonic() - started)
