"""``streamcast demo``: the whole product on one machine, with a live view.

Embedded broker → simulated sensors → the daemon (which trains its first model
from the stream, exactly as in production with an empty registry) → forecasts,
shown next to what actually happened once it is known.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from streamcast.cli import StopSignals
from streamcast.config import load_settings
from streamcast.daemon import Daemon
from streamcast.embedded import EmbeddedBroker, create_topics, free_port
from streamcast.logs import setup_logging
from streamcast.metrics import Metrics
from streamcast.publisher import Publisher

logger = logging.getLogger(__name__)

_PARTITIONS = 4
_HISTORY_STEPS = 400  # ~4 simulated days per sensor, published before the live stream
_VIEW_EVERY_S = 2.0
_WATCH = 3  # sensors shown in the live view


@dataclass
class _View:
    """Each forecast's first step checked against the sensor's next reading.

    The view reads both topics, so a forecast may arrive before or after the reading
    it predicts; both orders are matched.
    """

    recent: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    pending: dict[str, deque[tuple[float, float, float]]] = field(default_factory=dict)
    checked: dict[str, tuple[float, float]] = field(default_factory=dict)
    errors: deque[float] = field(default_factory=lambda: deque(maxlen=5_000))
    persistence_errors: deque[float] = field(default_factory=lambda: deque(maxlen=5_000))
    forecasts: int = 0
    readings: int = 0

    def on_forecast(self, doc: dict[str, Any]) -> None:
        self.forecasts += 1
        sensor, ts = doc["sensor"], float(doc["ts"])
        predicted = float(doc["values"][0][0])
        recent = self.recent.get(sensor, ())
        last = next((v for t, v in recent if t == ts), None)
        if last is None:
            return  # the window's last reading was not seen by the view
        after = next(((t, v) for t, v in recent if t > ts), None)
        if after is not None:
            self._check(sensor, predicted, last, after[1])
        else:
            self.pending.setdefault(sensor, deque(maxlen=200)).append((ts, predicted, last))

    def on_reading(self, doc: dict[str, Any]) -> None:
        self.readings += 1
        sensor, ts, value = doc["sensor"], float(doc["ts"]), float(doc["values"][0])
        waiting = self.pending.get(sensor)
        while waiting and waiting[0][0] < ts:
            _, predicted, last = waiting.popleft()
            self._check(sensor, predicted, last, value)
        self.recent.setdefault(sensor, deque(maxlen=400)).append((ts, value))

    def _check(self, sensor: str, predicted: float, last: float, actual: float) -> None:
        self.errors.append(abs(predicted - actual))
        self.persistence_errors.append(abs(last - actual))
        self.checked[sensor] = (predicted, actual)


def _mean(values: deque[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def run_demo(
    *,
    duration_s: float | None = None,
    sensors: int = 20,
    rate: float = 200.0,
    registry: str | None = None,
    log_level: str = "WARNING",
    train_seconds: float = 25.0,
) -> int:
    setup_logging(log_level)
    stop = threading.Event()
    tmp = tempfile.TemporaryDirectory(prefix="streamcast-demo-")
    registry_path = registry or f"{tmp.name}/registry"
    started = time.monotonic()
    print("streamcast demo: starting the embedded broker ...", flush=True)
    with StopSignals(stop), EmbeddedBroker() as broker:
        topics = ("streamcast.readings", "streamcast.forecasts", "streamcast.readings.dlq")
        create_topics(
            broker.bootstrap, {topics[0]: _PARTITIONS, topics[1]: _PARTITIONS, topics[2]: 1}
        )
        http_port = free_port()
        settings = load_settings(
            kafka={
                "bootstrap_servers": broker.bootstrap,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 2000,
            },
            # ~100 examples per sensor: the published history holds enough for that.
            training={
                "bootstrap_windows": max(100, min(2_000, 100 * sensors)),
                "max_seconds": train_seconds,
                "threads": 1,
            },
            registry={"path": registry_path},
            http={"host": "127.0.0.1", "port": http_port},
        )
        metrics = Metrics()
        daemon = Daemon(settings, metrics=metrics, stop=stop)
        publisher = Publisher(
            broker.bootstrap,
            sensors=sensors,
            rate=rate,
            history_steps=_HISTORY_STEPS,
            malformed_share=0.002,
        )
        print(
            f"  broker {broker.bootstrap} | {sensors} simulated sensors, {rate:g} readings/s | "
            f"metrics http://127.0.0.1:{http_port}/metrics",
            flush=True,
        )
        print(
            f"  publishing {_HISTORY_STEPS} steps of history per sensor; the daemon trains its "
            "first model from the stream, then forecasts every new reading",
            flush=True,
        )
        code: list[int] = []
        threads = [
            threading.Thread(target=lambda: code.append(daemon.run()), name="daemon"),
            threading.Thread(target=publisher.run, kwargs={"stop": stop}, name="publisher"),
        ]
        for t in threads:
            t.start()
        view = _View()
        try:
            _watch(
                broker.bootstrap,
                view,
                daemon,
                metrics,
                stop,
                started,
                duration_s,
                alive=threads[0].is_alive,
            )
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=settings.shutdown_timeout_s + 5)
            publisher.close()
        _summary(view, metrics, daemon, time.monotonic() - started)
    tmp.cleanup()
    return code[0] if code else 1


def _watch(
    bootstrap: str,
    view: _View,
    daemon: Daemon,
    metrics: Metrics,
    stop: threading.Event,
    started: float,
    duration_s: float | None,
    alive: Callable[[], bool],
) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, client_id="streamcast-demo-view", enable_auto_commit=False
    )
    tps = [
        TopicPartition(t, p)
        for t in ("streamcast.readings", "streamcast.forecasts")
        for p in range(_PARTITIONS)
    ]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    last_view = time.monotonic()
    last_counts = (0, 0)
    last_batches = (0.0, 0.0)
    try:
        while not stop.is_set():
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            if not alive():
                print("the daemon stopped; see the log lines above", flush=True)
                break
            for tp, records in consumer.poll(timeout_ms=200).items():
                handler = view.on_forecast if tp.topic.endswith("forecasts") else view.on_reading
                for rec in records:
                    # the simulator's deliberately malformed readings are skipped
                    with contextlib.suppress(
                        orjson.JSONDecodeError, KeyError, TypeError, IndexError
                    ):
                        handler(orjson.loads(rec.value))
            now = time.monotonic()
            if now - last_view >= _VIEW_EVERY_S:
                counts = (view.readings, view.forecasts)
                rps = (counts[0] - last_counts[0]) / (now - last_view)
                fps = (counts[1] - last_counts[1]) / (now - last_view)
                batches = (
                    _sample(metrics, "streamcast_batch_size_count"),
                    _sample(metrics, "streamcast_batch_size_sum"),
                )
                n = batches[0] - last_batches[0]
                avg_batch = (batches[1] - last_batches[1]) / n if n else 0.0
                last_view, last_counts, last_batches = now, counts, batches
                _print_view(view, daemon, now - started, rps, fps, avg_batch, _dl(metrics))
    finally:
        consumer.close()


def _sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return float(value) if value is not None else 0.0


def _print_view(
    view: _View,
    daemon: Daemon,
    elapsed: float,
    rps: float,
    fps: float,
    avg_batch: float,
    dead_letters: int,
) -> None:
    version = daemon.served.version if daemon.served else "-"
    print(
        f"[{elapsed:6.1f}s] {daemon.health.phase:<11} model v{version}  readings/s {rps:7.1f}  "
        f"forecasts/s {fps:7.1f}  batch {avg_batch:5.1f}  dead letters {dead_letters}",
        flush=True,
    )
    for sensor in sorted(view.checked)[:_WATCH]:
        predicted, actual = view.checked[sensor]
        print(
            f"           {sensor}: latest next-reading forecast {predicted:9.3f}  "
            f"actual {actual:9.3f}  error {actual - predicted:+8.3f}",
            flush=True,
        )


def _dl(metrics: Metrics) -> int:
    value = metrics.registry.get_sample_value(
        "streamcast_readings_total", {"outcome": "dead_letter"}
    )
    return int(value or 0)


def _summary(view: _View, metrics: Metrics, daemon: Daemon, elapsed: float) -> None:
    forecasts = int(_sample(metrics, "streamcast_forecasts_total"))
    inference = _sample(metrics, "streamcast_inference_seconds_sum")
    print("\nsummary")
    print(f"  ran {elapsed:.0f}s; model version {daemon.health.model_version}")
    print(
        f"  readings seen {view.readings}, forecasts published {forecasts}, "
        f"dead letters {_dl(metrics)}"
    )
    if inference > 0:
        print(f"  inference throughput {forecasts / inference:,.0f} windows/s of model time")
    if view.errors:
        print(
            f"  next-reading MAE: model {_mean(view.errors):.3f} vs persistence "
            f"{_mean(view.persistence_errors):.3f} over {len(view.errors)} checked forecasts"
        )
