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

from streamcast.config import load_settings
from streamcast.ops.logs import setup_logging
from streamcast.ops.metrics import Metrics
from streamcast.signals import StopSignals
from streamcast.sim.broker import EmbeddedBroker, create_topics, free_port
from streamcast.sim.producer import FleetProducer
from streamcast.stream.daemon import Daemon

logger = logging.getLogger(__name__)

_PARTITIONS = 4
_HISTORY_STEPS = 400  # ~4 simulated days per sensor, published before the live stream
_VIEW_EVERY_S = 2.0
_WATCH = 3  # sensors shown in the live view
_KEEP = 1_000  # readings per sensor the view keeps to score forecasts


@dataclass
class _SeenReadings:
    """One sensor's recent first-feature readings, addressable by arrival index."""

    base: int = 0
    values: list[float] = field(default_factory=list)
    index: dict[float, int] = field(default_factory=dict)  # ts -> arrival index

    @property
    def end(self) -> int:
        return self.base + len(self.values)

    def add(self, ts: float, value: float) -> None:
        self.index[ts] = self.end
        self.values.append(value)
        if len(self.values) > 4 * _KEEP:  # keep memory flat in a long demo
            drop = len(self.values) - _KEEP
            self.values = self.values[drop:]
            self.base += drop
            self.index = {t: i for t, i in self.index.items() if i >= self.base}

    def span(self, start: int, stop: int) -> list[float] | None:
        if start < self.base or stop > self.end:
            return None
        return self.values[start - self.base : stop - self.base]


@dataclass
class _Waiting:
    i: int  # arrival index of the window's last reading
    forecast: list[float]
    next_scored: bool = False


@dataclass
class _View:
    """Forecasts checked against what happened: the next reading, and the whole horizon
    once it has passed, each next to the persistence and seasonal-naive baselines.

    The view reads both topics, so a forecast may arrive before or after the readings
    it predicts; both orders are matched.
    """

    horizon: int = 96
    series: dict[str, _SeenReadings] = field(default_factory=dict)
    waiting: dict[str, deque[_Waiting]] = field(default_factory=dict)
    checked: dict[str, tuple[float, float]] = field(default_factory=dict)
    errors: dict[str, deque[float]] = field(default_factory=dict)
    forecasts: int = 0
    readings: int = 0

    def on_forecast(self, doc: dict[str, Any]) -> None:
        self.forecasts += 1
        sensor = doc["sensor"]
        s = self.series.get(sensor)
        i = s.index.get(float(doc["ts"])) if s else None
        if s is None or i is None:
            return  # the window's last reading was not seen by the view
        forecast = [float(row[0]) for row in doc["values"]]
        waiting = self.waiting.setdefault(sensor, deque())
        waiting.append(_Waiting(i, forecast))
        self._resolve(sensor, s, waiting)

    def on_reading(self, doc: dict[str, Any]) -> None:
        self.readings += 1
        sensor = doc["sensor"]
        s = self.series.setdefault(sensor, _SeenReadings())
        s.add(float(doc["ts"]), float(doc["values"][0]))
        waiting = self.waiting.get(sensor)
        if waiting:
            self._resolve(sensor, s, waiting)

    def _resolve(self, sensor: str, s: _SeenReadings, waiting: deque[_Waiting]) -> None:
        """Score each forecast's next step once it is known, and its whole horizon once
        that has passed."""
        for entry in reversed(waiting):  # the newest first; older ones are already scored
            if entry.next_scored:
                break
            nxt = s.span(entry.i + 1, entry.i + 2)
            last = s.span(entry.i, entry.i + 1)
            if nxt is None or last is None:
                continue
            entry.next_scored = True
            self.checked[sensor] = (entry.forecast[0], nxt[0])
            self._score("next_model", abs(entry.forecast[0] - nxt[0]))
            self._score("next_persistence", abs(last[0] - nxt[0]))
        h = self.horizon
        while waiting and waiting[0].i + h < s.end:
            entry = waiting.popleft()
            actual = s.span(entry.i + 1, entry.i + 1 + h)
            history = s.span(entry.i + 1 - h, entry.i + 1)
            if actual is None or history is None:
                continue
            self._score("model", _mae(entry.forecast, actual))
            self._score("persistence", _mae([history[-1]] * h, actual))
            self._score("seasonal", _mae(history, actual))

    def _score(self, name: str, error: float) -> None:
        self.errors.setdefault(name, deque(maxlen=5_000)).append(error)

    def mean(self, name: str) -> float:
        values = self.errors.get(name)
        return sum(values) / len(values) if values else float("nan")

    def count(self, name: str) -> int:
        return len(self.errors.get(name, ()))


def _mae(forecast: list[float], actual: list[float]) -> float:
    return sum(abs(f - a) for f, a in zip(forecast, actual, strict=True)) / len(actual)


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
            # Simulated time outruns the clock (ten steps a second at the defaults).
            window={"max_future_s": 10 * 365 * 86_400},
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
        publisher = FleetProducer(
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
    announced: int | None = None
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
                served = daemon.serving.served
                if served is not None and served.version != announced:
                    announced = served.version
                    print(
                        f"  model version {served.version} serving on {served.predictor.device}",
                        flush=True,
                    )
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
    version = daemon.serving.version or "-"
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
    if view.count("next_model"):
        print(
            f"  next reading, MAE: model {view.mean('next_model'):.3f}, persistence "
            f"{view.mean('next_persistence'):.3f} ({view.count('next_model')} forecasts)"
        )
    if view.count("model"):
        print(
            f"  whole {view.horizon}-step horizon, MAE: model {view.mean('model'):.3f}, "
            f"persistence {view.mean('persistence'):.3f}, seasonal naive "
            f"{view.mean('seasonal'):.3f} ({view.count('model')} forecasts)"
        )
    else:
        print(f"  (no forecast's {view.horizon}-step horizon has passed yet to score it)")
