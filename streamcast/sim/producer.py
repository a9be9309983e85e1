"""Publish a simulated sensor fleet's readings to Kafka (``streamcast simulate``, the demo)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from kafka import KafkaProducer

from streamcast.sim.fleet import SensorFleet
from streamcast.stream.messages import encode_reading

logger = logging.getLogger(__name__)

_YEAR_STEPS = 365 * 96  # 15-minute steps in a year

# Malformed payloads injected on request; each maps to one dead-letter reason.
_MALFORMED: tuple[bytes, ...] = (
    b"not json at all",
    b'{"sensor": "x", "ts": 1.0}',
    b'{"sensor": "x", "ts": 1.0, "values": [1.0]}',
    b'{"sensor": "x", "ts": 1.0, "values": [1e400, 1.0]}',
    b"[1, 2, 3]",
)


@dataclass
class FleetProducer:
    """Sends one reading per sensor per simulated step, paced to ``rate`` readings/s."""

    bootstrap: str
    topic: str = "streamcast.readings"
    sensors: int = 10
    rate: float = 100.0
    seed: int = 0
    malformed_share: float = 0.0
    regime_change_at: int | None = None
    history_steps: int = 0
    sent: int = 0
    malformed: int = 0

    _limit: int | None = None

    def __post_init__(self) -> None:
        # Simulated time: the backfilled history ends about now, then runs accelerated.
        # Simulated time runs thousands of times faster than the wall clock once the
        # history is sent: start a year back, so the readings stay in the past (a daemon
        # dead-letters readings stamped ahead of its clock) for a long run.
        step_s = 900.0
        start = (time.time() // step_s - self.history_steps - _YEAR_STEPS) * step_s
        self.fleet = SensorFleet(self.sensors, seed=self.seed, step_s=step_s, start_ts=start)
        self._keys = [s.encode() for s in self.fleet.sensor_ids]
        self._rng = np.random.default_rng(self.seed + 1)
        self.producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=5,
            compression_type="lz4",
            client_id="streamcast-simulate",
        )

    def _send_step(self, step: int) -> None:
        ts, values = self.fleet.step()
        if self.regime_change_at is not None and step == self.regime_change_at:
            self.fleet.regime_change()
            logger.info("regime change injected step=%d", step)
        send = self.producer.send
        for key, sensor, row in zip(self._keys, self.fleet.sensor_ids, values, strict=True):
            if self._limit is not None and self.sent >= self._limit:
                return
            if self.malformed_share and self._rng.random() < self.malformed_share:
                bad = _MALFORMED[int(self._rng.integers(len(_MALFORMED)))]
                send(self.topic, key=key, value=bad)
                self.malformed += 1
            send(self.topic, key=key, value=encode_reading(sensor, ts, row))
            self.sent += 1

    def run(
        self,
        *,
        count: int | None = None,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Backfill ``history_steps`` as fast as possible, then stream at ``rate``."""
        stop = stop or threading.Event()
        self._limit = count
        step = 0
        for _ in range(self.history_steps):
            if stop.is_set():
                break
            self._send_step(step)
            step += 1
        self.producer.flush()
        started = time.monotonic()
        per_step_s = self.sensors / self.rate if self.rate > 0 else 0.0
        while not stop.is_set():
            if count is not None and self.sent >= count:
                break
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            self._send_step(step)
            step += 1
            wait = started + (step - self.history_steps) * per_step_s - time.monotonic()
            if wait > 0:
                stop.wait(wait)
        self.producer.flush()
        return self.sent

    def close(self) -> None:
        self.producer.close(timeout=5)
