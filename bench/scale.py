"""Scale, memory and latency of ``streamcast run`` on the embedded broker.

Each sensor count gets its own broker and daemon (``python -m streamcast run``, a
subprocess configured by ``STREAMCAST_*`` variables, /metrics on a free port), so its
RSS is the daemon's alone and it shares no interpreter with the load generator. The
model is ``ModelSpec()`` (units 16, 16), trained for a few seconds: only its shape
matters here. ``training.online`` is off (what a retraining costs is bench.retrain's
subject, and its replay buffer, at most ``training.replay_bytes``, is not per sensor).

1. Scale curve: the readings topic (6 partitions, keyed by sensor) first gets 97
   readings of every sensor (a full window: 96 steps and the truth), which the daemon
   consumes before anything is timed; then a backlog of further readings, every one of
   which completes a window (stride 1), ``--repeats`` times. A backlog's rate is
   forecasts acknowledged per second (one per reading) while the count went from 10 %
   to 90 % of it, read from the daemon's own counters; a point's is the median of its
   backlogs (the machine may be shared). Target: from 100 sensors up, the slowest
   point is within 20 % of the fastest.
2. Memory: the daemon's VmRSS once it serves with no sensor (model loaded, partitions
   assigned), when every window is one reading short of full (the state alone, no
   output yet) and when every window is full (its first forecast acknowledged); per
   sensor above the first, at the largest count. Target: at most twice the raw window
   (96 x 2 x 4 B = 768 B). The window store alone (a ``WindowStore`` filled the same
   way in this process, under tracemalloc) tells its share from the rest.
3. Latency: at ``--latency-sensors``, after the curve's point there, a thread sends
   readings at 50 % of that point's rate in batches every 10 ms, and a consumer reads
   the forecasts; per reading, latency is from its send (librdkafka stamps the record
   then; linger 1 ms) to its forecast's arrival at that consumer, which follows the
   broker's ack (this broker keeps the producers' timestamps: it has no log-append
   time). The same pace is then sent to a topic the daemon does not read, to a
   kafka-python consumer set up like the daemon's (the transport alone: the daemon's
   ``kafka.fetch_max_wait_ms``), and again with the client's default of 500 ms. Also
   the p99 of one full batch (``inference.max_batch`` windows) through ``Predictor``,
   in this process with no daemon running. Target: p99 <= ``inference.max_wait_ms`` + 3 x that.

A timed backlog has ``--steady-readings`` readings, at least one per sensor.
100,000 sensors need 9.7 million warm-up readings; they go through the topic and the
daemon like any others (a few minutes of the run).

    python -m bench.scale [--sensors-list 1,10,100,1000,10000,100000]
                          [--steady-readings 30000] [--repeats 3] [--latency-sensors 1000]
                          [--latency-seconds 20] [--inference-calls 300] [--quick]
                          [--plot scale.png] [--out FILE]

Prints a table, each target with its verdict, and a JSON object (also to ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.common import stop_process, train_registry
from bench.results import write_json
from streamcast.config import (
    InferenceSettings,
    KafkaSettings,
    ModelSpec,
    WindowSettings,
)
from streamcast.sim.broker import EmbeddedBroker, create_topics, free_port
from streamcast.sim.fleet import SensorFleet
from streamcast.stream.messages import Readings, encode_reading

PARTITIONS = 6
SPEC = ModelSpec()
WINDOW_READINGS = SPEC.num_steps + 1  # a full window: num_steps readings and the truth
RAW_WINDOW_BYTES = SPEC.num_steps * SPEC.num_features * 4
MAX_BATCH = InferenceSettings().max_batch
MAX_WAIT_MS = InferenceSettings().max_wait_ms
FETCH_WAIT_MS = KafkaSettings().fetch_max_wait_ms  # the daemon's consumer's
CAPACITY = WindowSettings().capacity
SCALE_FROM = 100  # the flatness target covers this many sensors and more
SCALE_SPREAD = 0.20
FLOOD_CHUNK = 1_000_000  # readings simulated at a time: bounds a 100k-sensor warm-up's memory


# -- machine and model ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures depend on; this kind of machine is shared, so the load too."""
    return {
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


# -- readings ---------------------------------------------------------------------------


class Feed:
    """A simulated fleet, step by step, encoded as producers send readings."""

    def __init__(self, sensors: int, seed: int = 3) -> None:
        self.fleet = SensorFleet(sensors, seed=seed)
        self.ids = self.fleet.sensor_ids
        self.keys = [s.encode() for s in self.ids]
        self.checked = False

    def steps(self, n: int) -> Iterator[tuple[float, list[bytes]]]:
        """The next ``n`` steps: (ts, one encoded reading per sensor), in chunks of steps."""
        per_chunk = max(1, FLOOD_CHUNK // len(self.ids))
        done = 0
        while done < n:
            ts, values = self.fleet.series(min(per_chunk, n - done))
            for k in range(len(ts)):
                yield float(ts[k]), self.encode(float(ts[k]), values[:, k])
            done += len(ts)

    def encode(self, ts: float, values: np.ndarray) -> list[bytes]:
        """``encode_reading`` for a whole step without its per-call numpy work (the same
        bytes: checked against it once)."""
        rows = values.tolist()
        dumps = orjson.dumps
        out = [
            dumps({"sensor": s, "ts": ts, "values": v}) for s, v in zip(self.ids, rows, strict=True)
        ]
        if not self.checked:
            if out[0] != encode_reading(self.ids[0], ts, values[0]):
                raise RuntimeError("the step encoding differs from encode_reading")
            self.checked = True
        return out


def producer(bootstrap: str, linger_ms: int = 20) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": linger_ms,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",  # the Java client's (and kafka-python's)
            "queue.buffering.max.messages": 1_000_000,
            "batch.size": 1_000_000,
        }
    )


def send(prod: Producer, topic: str, keys: list[bytes], values: list[bytes]) -> None:
    produce = prod.produce
    for key, value in zip(keys, values, strict=True):
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:  # the local queue is full: let librdkafka send some
                prod.poll(0.05)
    prod.poll(0)


# -- the daemon -------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """The daemon's metrics, flat: ``name`` or ``name{label=value,...}`` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Counts:
    t: float
    readings: float
    forecasts: float
    dead: float


@dataclass
class DaemonProcess:
    """``python -m streamcast run`` on one broker and topic."""

    bootstrap: str
    topic: str
    registry: Path
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAST_")}
        env.update(
            {
                "STREAMCAST_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
                "STREAMCAST_KAFKA__INPUT_TOPIC": self.topic,
                "STREAMCAST_KAFKA__OUTPUT_TOPIC": f"{self.topic}.forecasts",
                "STREAMCAST_KAFKA__DLQ_TOPIC": f"{self.topic}.dlq",
                "STREAMCAST_KAFKA__GROUP_ID": f"scale-{uuid.uuid4().hex[:6]}",
                "STREAMCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
                "STREAMCAST_KAFKA__HEARTBEAT_INTERVAL_MS": "2000",
                "STREAMCAST_REGISTRY__PATH": str(self.registry),
                "STREAMCAST_TRAINING__ONLINE": "false",
                # The simulated clock may run past the wall clock on long single-sensor runs.
                "STREAMCAST_WINDOW__MAX_FUTURE_S": str(10 * 365 * 86_400.0),
                "STREAMCAST_HTTP__HOST": "127.0.0.1",
                "STREAMCAST_HTTP__PORT": str(self.port),
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamcast", "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metrics(self) -> dict[str, float]:
        return scrape(self.port)

    def counts(self) -> Counts:
        m = self.metrics()
        dead = sum(v for k, v in m.items() if k.startswith("streamcast_dead_letters_total"))
        return Counts(
            time.monotonic(),
            m.get("streamcast_readings_total{outcome=ok}", 0.0),
            m.get("streamcast_forecasts_total", 0.0),
            dead,
        )

    def wait(self, what: str, done: Callable[[], bool], timeout_s: float) -> float:
        """Poll ``done`` until true; seconds waited. Raises if the daemon died or timed out."""
        started = time.monotonic()
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.proc.returncode}){self.tail()}")
            try:
                if done():
                    return time.monotonic() - started
            except OSError:
                pass  # /metrics not up yet
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{what}: not done after {timeout_s:.0f} s{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 20) -> str:
        """The end of the daemon's log, for an error message (the log goes with the run)."""
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return "; the daemon's log ends:\n" + "\n".join(text)

    def wait_counts(self, readings: int, forecasts: int, timeout_s: float) -> float:
        def done() -> bool:
            c = self.counts()
            return c.readings >= readings and c.forecasts >= forecasts

        return self.wait(f"{readings} readings, {forecasts} forecasts", done, timeout_s)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_process(self.proc)


# -- 1. scale curve (and 2. memory) -----------------------------------------------------


@dataclass
class Point:
    sensors: int
    steady_readings: int  # per timed backlog
    rates: list[float]  # readings/s of each timed backlog
    warmup_readings: int
    warmup_s: float
    rss_idle: int  # up, model loaded, no sensor
    rss_short: int  # every window one reading short of full: the state, no output yet
    rss_full: int  # every window full, its first forecast acknowledged
    rss_steady: int  # after the steady backlog
    dead_letters: int
    latency: dict[str, Any] | None = None

    @property
    def readings_s(self) -> float:
        """The median backlog's: the machine is shared, and one slow backlog is noise."""
        return float(np.median(self.rates))

    @property
    def rss_per_sensor(self) -> float:
        return (self.rss_full - self.rss_idle) / self.sensors

    def row(self) -> dict[str, Any]:
        return {
            "sensors": self.sensors,
            "readings_s": round(self.readings_s),
            "readings_s_each": [round(r) for r in self.rates],
            "steady_readings": self.steady_readings,
            "warmup_readings": self.warmup_readings,
            "warmup_s": round(self.warmup_s, 1),
            "rss_idle_mib": round(self.rss_idle / 2**20, 1),
            "rss_short_mib": round(self.rss_short / 2**20, 1),
            "rss_full_mib": round(self.rss_full / 2**20, 1),
            "rss_steady_mib": round(self.rss_steady / 2**20, 1),
            "rss_bytes_per_sensor_short": round((self.rss_short - self.rss_idle) / self.sensors),
            "rss_bytes_per_sensor": round(self.rss_per_sensor),
            "dead_letters": self.dead_letters,
        }


def steady_rate(samples: list[Counts], base: float, total: int) -> float:
    """Forecasts/s while the count went from 10 % to 90 % of ``total`` (past ``base``),
    the crossing times interpolated between samples."""
    t = np.array([s.t for s in samples])
    done = np.array([s.forecasts for s in samples]) - base
    lo, hi = 0.1 * total, 0.9 * total
    t_lo = float(np.interp(lo, done, t))
    t_hi = float(np.interp(hi, done, t))
    return (hi - lo) / max(t_hi - t_lo, 1e-9)


def timed_backlog(
    daemon: DaemonProcess, prod: Producer, topic: str, feed: Feed, per_sensor: int
) -> float:
    """The next ``per_sensor`` readings of every sensor, sent at once: forecasts/s."""
    steady = [v for _, step in feed.steps(per_sensor) for v in step]
    keys = feed.keys * per_sensor
    base = daemon.counts()
    samples = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(daemon.counts())
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    send(prod, topic, keys, steady)
    prod.flush()
    try:
        daemon.wait_counts(
            int(base.readings) + len(steady), int(base.forecasts) + len(steady), timeout_s=1800
        )
    finally:
        stop.set()
        sampler.join()
    samples.append(daemon.counts())
    return steady_rate(samples, base.forecasts, len(steady))


def measure_point(
    sensors: int,
    registry: Path,
    tmp: Path,
    steady_total: int,
    repeats: int,
    latency: LatencyPlan | None,
) -> Point:
    """One sensor count: its own broker and daemon, warm-up, then the timed backlogs."""
    with EmbeddedBroker() as broker:
        topic = f"scale-{uuid.uuid4().hex[:6]}"
        create_topics(
            broker.bootstrap,
            {
                topic: PARTITIONS,
                f"{topic}.forecasts": PARTITIONS,
                f"{topic}.dlq": 1,
                f"{topic}.floor": PARTITIONS,
            },
        )
        daemon = DaemonProcess(broker.bootstrap, topic, registry, tmp / f"daemon-{sensors}.log")
        prod = producer(broker.bootstrap)
        daemon.start()
        try:
            daemon.wait(
                "ready", lambda: daemon.metrics().get("streamcast_ready", 0) == 1, timeout_s=180
            )
            time.sleep(3.0)  # settle: the first scrapes, the consumer's first empty fetches
            rss_idle = rss_bytes(daemon.pid)
            feed = Feed(sensors)
            started = time.monotonic()
            steps = feed.steps(WINDOW_READINGS)
            # All but the last reading of each window first: the state alone, no output yet.
            for _, values in itertools.islice(steps, WINDOW_READINGS - 1):
                send(prod, topic, feed.keys, values)
            prod.flush()
            daemon.wait_counts(sensors * (WINDOW_READINGS - 1), 0, timeout_s=3600)
            time.sleep(2.0)
            rss_short = rss_bytes(daemon.pid)
            # The 97th reading of each sensor completes its first window: one forecast each.
            for _, values in steps:
                send(prod, topic, feed.keys, values)
            prod.flush()
            warm = sensors * WINDOW_READINGS
            daemon.wait_counts(warm, sensors, timeout_s=3600)
            warmup_s = time.monotonic() - started
            time.sleep(2.0)
            rss_full = rss_bytes(daemon.pid)
            per_sensor = max(1, math.ceil(steady_total / sensors))
            rates = [timed_backlog(daemon, prod, topic, feed, per_sensor) for _ in range(repeats)]
            point = Point(
                sensors=sensors,
                steady_readings=sensors * per_sensor,
                rates=rates,
                warmup_readings=warm,
                warmup_s=warmup_s,
                rss_idle=rss_idle,
                rss_short=rss_short,
                rss_full=rss_full,
                rss_steady=rss_bytes(daemon.pid),
                dead_letters=int(daemon.counts().dead),
            )
            if latency is not None:
                point.latency = measure_latency(
                    broker.bootstrap, topic, feed, daemon, 0.5 * point.readings_s, latency.seconds
                )
            return point
        finally:
            daemon.stop()
            prod.close()  # before the broker goes: no reconnect attempts in the output


# -- 3. latency -------------------------------------------------------------------------


@dataclass
class LatencyPlan:
    sensors: int
    seconds: float


class Paced:
    """Readings of the next steps of a feed, sent at a steady pace, and when each went."""

    def __init__(self, feed: Feed, readings: int) -> None:
        sensors = len(feed.ids)
        steps = max(1, math.ceil(readings / sensors))
        stamps: list[float] = []
        self.values: list[bytes] = []
        for ts, step in feed.steps(steps):
            stamps.append(ts)
            self.values.extend(step)
        self.keys = feed.keys * steps
        names = feed.ids * steps
        ts_all = np.repeat(np.array(stamps), sensors).tolist()
        #: (sensor, ts) -> position: forecasts and readings name their reading so.
        self.index = {(s, t): i for i, (s, t) in enumerate(zip(names, ts_all, strict=True))}
        self.sent_at = np.full(len(self.values), np.nan)
        self.seen_at = np.full(len(self.values), np.nan)
        #: The timestamp of the record that named it (a forecast's: when the daemon sent it).
        self.created_at = np.full(len(self.values), np.nan)

    def __len__(self) -> int:
        return len(self.values)

    def send(self, bootstrap: str, topic: str, rate: float, tick_s: float = 0.01) -> float:
        """Send every reading at ``rate``/s in batches every ``tick_s``; seconds it took."""
        prod = producer(bootstrap, linger_ms=1)
        produce, values, keys, sent_at = prod.produce, self.values, self.keys, self.sent_at
        n = len(values)
        per_tick = rate * tick_s
        started = time.monotonic() + 0.05
        i = k = 0
        while i < n:
            delay = started + k * tick_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            k += 1
            upto = min(n, round(k * per_tick))
            while i < upto:
                sent_at[i] = time.time()
                produce(topic, values[i], keys[i])
                i += 1
            prod.poll(0)
        prod.close()  # flushes
        return time.monotonic() - started

    def seen(self, value: bytes, now: float, created: float = math.nan) -> None:
        """A record naming one of these readings arrived at ``now``."""
        obj = orjson.loads(value)
        i = self.index.get((obj["sensor"], obj["ts"]))
        if i is not None and np.isnan(self.seen_at[i]):
            self.seen_at[i] = now
            self.created_at[i] = created

    def missing(self) -> int:
        return int(np.isnan(self.seen_at).sum())

    def worst_by_second(self) -> list[float]:
        """The longest latency (ms) of the readings sent in each second: stalls show here."""
        t = self.sent_at - np.nanmin(self.sent_at)
        lat = self.seen_at - self.sent_at
        out: list[float] = []
        for second in range(int(np.nanmax(t)) + 1):
            part = lat[(t >= second) & (t < second + 1)]
            out.append(round(float(np.nanmax(part)) * 1000) if np.isfinite(part).any() else -1)
        return out

    def latencies(self, skip_s: float, until: np.ndarray | None = None) -> np.ndarray:
        """Seconds from send to seen (or ``until``), past the first ``skip_s`` (while the
        pace settles)."""
        keep = self.sent_at >= np.nanmin(self.sent_at) + skip_s
        lat = ((self.seen_at if until is None else until) - self.sent_at)[keep]
        out: np.ndarray = lat[~np.isnan(lat)]
        return out


def read_forecasts(bootstrap: str, topic: str, paced: Paced, stop: threading.Event) -> None:
    """Mark each forecast's reading as seen when the forecast arrives (librdkafka consumer,
    5 ms fetch wait, positioned at the end of the topic before anything is sent)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"lat-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
            "fetch.min.bytes": 1,
        }
    )
    try:
        consumer.assign(
            [
                TopicPartition(topic, p, consumer.get_watermark_offsets(tp, timeout=10)[1])
                for p in range(PARTITIONS)
                for tp in [TopicPartition(topic, p)]
            ]
        )
        while not stop.is_set():
            msgs = consumer.consume(num_messages=2000, timeout=0.05)
            now = time.time()
            for m in msgs:
                value = m.value()
                if m.error() is None and value is not None:
                    paced.seen(value, now, m.timestamp()[1] / 1000)
    finally:
        consumer.close()


def read_like_the_daemon(
    bootstrap: str,
    topic: str,
    paced: Paced,
    stop: threading.Event,
    ready: threading.Event,
    fetch_max_wait_ms: int | None,
) -> None:
    """The transport alone: a kafka-python consumer with the daemon's fetch settings
    (``max_poll_records`` 2,000, ``fetch_max_wait_ms``; None: the client's default, 500)
    reading the readings themselves."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition as KafkaPartition

    options = {} if fetch_max_wait_ms is None else {"fetch_max_wait_ms": fetch_max_wait_ms}
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=2000,
        **options,
    )
    try:
        parts = [KafkaPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        consumer.seek_to_end()
        for tp in parts:
            consumer.position(tp)
        ready.set()
        while not stop.is_set():
            batches = consumer.poll(timeout_ms=50)
            now = time.time()
            for records in batches.values():
                for r in records:
                    paced.seen(r.value, now)
    finally:
        consumer.close()


def percentiles_ms(lat: np.ndarray) -> dict[str, float]:
    if not len(lat):
        return {"p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}
    p50, p99 = np.percentile(lat, [50, 99]) * 1000
    return {
        "p50_ms": round(float(p50), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(float(lat.max()) * 1000, 1),
    }


def transport_latency(
    bootstrap: str, topic: str, feed: Feed, rate: float, seconds: float, wait_ms: int | None
) -> dict[str, Any]:
    """The same pace on a topic the daemon does not read: send -> reading seen."""
    paced = Paced(feed, round(rate * seconds))
    stop, ready = threading.Event(), threading.Event()
    reader = threading.Thread(
        target=read_like_the_daemon,
        args=(bootstrap, topic, paced, stop, ready, wait_ms),
        daemon=True,
    )
    reader.start()
    ready.wait(30)
    paced.send(bootstrap, topic, rate)
    deadline = time.monotonic() + 10
    while paced.missing() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    reader.join()
    lat = paced.latencies(min(2.0, 0.2 * seconds))
    return {
        "fetch_max_wait_ms": 500 if wait_ms is None else wait_ms,
        "measured": len(lat),
        "missing": paced.missing(),
        **percentiles_ms(lat),
        "worst_by_second_ms": paced.worst_by_second(),
    }


def measure_latency(
    bootstrap: str, topic: str, feed: Feed, daemon: DaemonProcess, rate: float, seconds: float
) -> dict[str, Any]:
    """Paced readings at ``rate``: send -> forecast seen; then the same pace on a topic the
    daemon does not read, send -> reading seen by a consumer like the daemon's."""
    skip_s = min(2.0, 0.2 * seconds)
    paced = Paced(feed, round(rate * seconds))
    stop = threading.Event()
    reader = threading.Thread(
        target=read_forecasts, args=(bootstrap, f"{topic}.forecasts", paced, stop), daemon=True
    )
    reader.start()
    time.sleep(2.0)  # positioned at the end before anything is sent
    base = daemon.counts()
    paced_s = paced.send(bootstrap, topic, rate)
    n = len(paced)
    try:
        daemon.wait_counts(int(base.readings) + n, int(base.forecasts) + n, timeout_s=120)
        deadline = time.monotonic() + 10
        while paced.missing() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        reader.join()
    metrics = daemon.metrics()
    lat = paced.latencies(skip_s)
    missing = paced.missing()

    transport = {
        name: transport_latency(bootstrap, f"{topic}.floor", feed, rate, seconds, wait_ms)
        for name, wait_ms in (("transport", FETCH_WAIT_MS), ("transport_client_default", None))
    }

    def mean(name: str, scale: float = 1.0) -> float | None:
        count = metrics.get(f"{name}_count", 0.0)
        return round(metrics.get(f"{name}_sum", 0.0) / count * scale, 2) if count else None

    return {
        "sensors": len(feed.ids),
        "rate_readings_s": round(rate),
        "achieved_readings_s": round(n / paced_s),
        "readings": n,
        "measured": len(lat),
        "missing": missing,
        **percentiles_ms(lat),
        "to_forecast_record": percentiles_ms(paced.latencies(skip_s, paced.created_at)),
        "worst_by_second_ms": paced.worst_by_second(),
        **transport,
        "daemon_mean_batch": mean("streamcast_batch_size"),
        "daemon_mean_inference_ms": mean("streamcast_inference_seconds", 1000),
    }


def inference_p99(registry: Path, calls: int) -> dict[str, float]:
    """p50 and p99 of one full batch (``inference.max_batch`` windows) through Predictor."""
    from streamcast.learn.calendar import calendar_inputs
    from streamcast.learn.registry import ModelRegistry
    from streamcast.model.predictor import Predictor

    loaded = ModelRegistry(registry).load()
    predictor = Predictor(loaded.model, loaded.cfg, max_batch=MAX_BATCH)
    predictor.warmup()
    fleet = SensorFleet(MAX_BATCH, seed=5)
    ts, values = fleet.series(WINDOW_READINGS)
    windows = values[:, 1:, :].astype(np.float32)
    truths = values[:, 0, :].astype(np.float32)
    calendar = calendar_inputs(np.full(MAX_BATCH, ts[-1]), np.full(MAX_BATCH, fleet.step_s))
    times = []
    for _ in range(calls + 10):
        started = time.perf_counter()
        predictor.predict(windows, truths, calendar=calendar)
        times.append(time.perf_counter() - started)
    t = np.array(times[10:])
    return {
        "batch": MAX_BATCH,
        "calls": calls,
        "p50_ms": round(float(np.percentile(t, 50)) * 1000, 2),
        "p99_ms": round(float(np.percentile(t, 99)) * 1000, 2),
    }


# -- 2. the window store alone ----------------------------------------------------------


def store_bytes(sensors: int) -> dict[str, Any]:
    """The window store's own memory with ``sensors`` full windows, under tracemalloc.

    Its arrays are allocated for ``window.capacity`` slots up front (the pages of a slot
    become resident when it is first used); a sensor also costs its dict entry and id.
    """
    from streamcast.stream.windows import WindowStore

    capacity = max(CAPACITY, sensors)
    fleet = SensorFleet(sensors, seed=3)
    ts, values = fleet.series(WINDOW_READINGS)
    gc.collect()
    tracemalloc.start()
    store = WindowStore(capacity, SPEC.num_steps, SPEC.num_features)
    arrays = tracemalloc.get_traced_memory()[0]
    for k in range(WINDOW_READINGS):
        # Fresh id strings each round, as the decoder makes them; the store keeps one.
        names = [f"sensor-{i:03d}" for i in range(sensors)]
        store.append(
            Readings(names, np.full(sensors, ts[k]), values[:, k].astype(np.float32)),
            emit=False,
        )
        del names
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(store) == sensors
    per_slot = arrays / capacity
    per_sensor = (held - arrays) / sensors
    return {
        "sensors": sensors,
        "capacity": capacity,
        "arrays_bytes": arrays,
        "held_bytes": held,
        "array_bytes_per_slot": round(per_slot),
        "object_bytes_per_sensor": round(per_sensor),
        "bytes_per_sensor": round(per_slot + per_sensor),
        "ring_bytes_per_sensor": WINDOW_READINGS * SPEC.num_features * 4,
    }


# -- output -----------------------------------------------------------------------------


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = [p.sensors for p in points]
    y = [p.readings_s for p in points]
    err = [
        [p.readings_s - min(p.rates) for p in points],
        [max(p.rates) - p.readings_s for p in points],
    ]
    ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, label="readings/s, stride 1 (backlogs' range)")
    band = [p.readings_s for p in points if p.sensors >= SCALE_FROM]
    if band:
        top = max(band)
        ax.axhspan((1 - SCALE_SPREAD) * top, top, color="tab:green", alpha=0.15)
        ax.axhline((1 - SCALE_SPREAD) * top, color="tab:green", lw=1, label="the best point - 20 %")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("sensors")
    ax.set_ylabel("readings/s")
    ax.set_title(f"streamcast run, units {list(SPEC.units)}, {os.cpu_count()} CPUs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sensors-list",
        default="1,10,100,1000,10000,100000",
        help="sensor counts, comma-separated; each gets its own broker and daemon",
    )
    parser.add_argument(
        "--steady-readings",
        type=int,
        default=30_000,
        help="readings per timed backlog, after the warm-up (at least one per sensor)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed backlogs per sensor count (median)"
    )
    parser.add_argument("--latency-sensors", type=int, default=1000, help="0: no latency run")
    parser.add_argument(
        "--latency-seconds", type=float, default=20.0, help="paced sending, per measurement"
    )
    parser.add_argument(
        "--inference-calls", type=int, default=300, help="full batches timed for the p99"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100, 1000 and 10000 sensors, one backlog of 20,000, 8 s of latency",
    )
    parser.add_argument("--plot", type=Path, help="write the curve as a PNG here")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args()
    if args.quick:
        args.sensors_list = "100,1000,10000"
        args.steady_readings = 20_000
        args.repeats = 1
        args.latency_seconds = 8.0
        args.inference_calls = 100
    counts = sorted({int(s) for s in args.sensors_list.split(",")})
    if args.latency_sensors and args.latency_sensors not in counts:
        counts = sorted({*counts, args.latency_sensors})
    began = time.monotonic()
    info = {"start": machine()}
    print(
        f"scale: sensors {counts}, {args.repeats} x {args.steady_readings:,} timed readings each, "
        f"{info['start']['cpus']} CPUs, load {info['start']['loadavg']}",
        flush=True,
    )

    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="streamcast-scale-") as tmp_name:
        tmp = Path(tmp_name)
        registry = tmp / "registry"
        print("training the model (units 16, 16) for a few seconds ...", flush=True)
        train_registry(registry, SPEC.units)
        for n in counts:
            plan = LatencyPlan(n, args.latency_seconds) if n == args.latency_sensors else None
            t0 = time.monotonic()
            point = measure_point(n, registry, tmp, args.steady_readings, args.repeats, plan)
            points.append(point)
            print(
                f"  {n:>7,} sensors: {point.readings_s:9,.0f} readings/s "
                f"(warm-up {point.warmup_readings:,} readings in {point.warmup_s:.0f} s, "
                f"{time.monotonic() - t0:.0f} s in all)",
                flush=True,
            )
        infer = inference_p99(registry, args.inference_calls)
    largest = points[-1]
    store = store_bytes(largest.sensors)
    info["end"] = machine()

    # -- verdicts ---------------------------------------------------------------------
    band = [p.readings_s for p in points if p.sensors >= SCALE_FROM]
    flat = min(band) / max(band) if len(band) > 1 else None
    scale_ok = flat is not None and flat >= 1 - SCALE_SPREAD
    per_sensor = largest.rss_per_sensor
    mem_target = 2 * RAW_WINDOW_BYTES
    mem_ok = per_sensor <= mem_target
    lat = next((p.latency for p in points if p.latency is not None), None)
    lat_target = MAX_WAIT_MS + 3 * infer["p99_ms"]
    lat_ok = lat is not None and lat["p99_ms"] <= lat_target

    print()
    print(
        f"{'sensors':>8} {'readings/s':>11} {'backlogs':>13} {'backlog':>8} {'warm-up':>8} "
        f"{'RSS idle':>9} {'96 each':>9} {'97 each':>9} {'B/sensor':>9} {'after':>9}"
    )
    for p in points:
        spread = f"{min(p.rates):,.0f}-{max(p.rates):,.0f}"
        print(
            f"{p.sensors:8,} {p.readings_s:11,.0f} {spread:>13} {p.steady_readings:8,} "
            f"{p.warmup_s:7.0f}s "
            f"{p.rss_idle / 2**20:8.0f}M {p.rss_short / 2**20:8.0f}M {p.rss_full / 2**20:8.0f}M "
            f"{p.rss_per_sensor:9,.0f} {p.rss_steady / 2**20:8.0f}M"
        )
    print(
        "(readings/s: the median of the timed backlogs, their range next to it; "
        "RSS: idle = up with no sensor; 96 / 97 each = every window one short of full / full, "
        "its first forecast acknowledged; B/sensor = (97 each - idle) / sensors; after = after "
        "the timed readings)"
    )
    print()
    if flat is not None:
        print(
            f"scale: slowest / fastest from {SCALE_FROM:,} sensors up = {flat:.3f} "
            f"(target >= {1 - SCALE_SPREAD:.2f}): {verdict(scale_ok)}"
        )
    print(
        f"memory at {largest.sensors:,} sensors: {per_sensor:,.0f} B/sensor above the idle "
        f"daemon (target <= {mem_target} B, 2 x the raw window): {verdict(mem_ok)}"
        + ("" if largest.sensors >= CAPACITY else " (fixed costs weigh on small counts)")
    )
    print(
        f"  window store alone: {store['bytes_per_sensor']:,} B/sensor = "
        f"{store['array_bytes_per_slot']} B of arrays per slot ({store['capacity']:,} slots; "
        f"the ring {store['ring_bytes_per_sensor']} B) + {store['object_bytes_per_sensor']} B "
        f"of id and dict entry per sensor; the rest of the daemon "
        f"{per_sensor - store['bytes_per_sensor']:,.0f} B/sensor"
    )
    print(
        f"inference: one batch of {MAX_BATCH} windows, p50 {infer['p50_ms']} ms, "
        f"p99 {infer['p99_ms']} ms"
    )
    if lat is not None:
        floor, slow = lat["transport"], lat["transport_client_default"]
        print(
            f"latency at {lat['sensors']:,} sensors, {lat['achieved_readings_s']:,} readings/s "
            f"(50 % of {round(2 * lat['rate_readings_s']):,}), send -> forecast seen: "
            f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms "
            f"({lat['measured']:,} readings; {lat['missing']} without a forecast seen)"
        )
        created = lat["to_forecast_record"]
        print(
            f"  send -> the forecast record's timestamp (the daemon sending it): "
            f"p50 {created['p50_ms']} ms, p99 {created['p99_ms']} ms"
        )
        print(
            f"  transport alone, same pace, a kafka-python consumer as the daemon's reading the "
            f"readings: p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms (fetch_max_wait_ms "
            f"{FETCH_WAIT_MS}, the daemon's); with the client's default, 500: "
            f"p50 {slow['p50_ms']} ms, p99 {slow['p99_ms']} ms"
        )
        print(
            f"  target p99 <= max_wait_ms {MAX_WAIT_MS} + 3 x {infer['p99_ms']} = "
            f"{lat_target:.1f} ms: {verdict(lat_ok)}"
        )
    minutes = (time.monotonic() - began) / 60
    dead = sum(p.dead_letters for p in points)
    if dead:
        print(f"dead letters: {dead} (expected 0: see the daemons' counts in the JSON)")
    print(f"took {minutes:.1f} min; load average at the end {info['end']['loadavg']}")
    if args.plot:
        plot(points, args.plot)
        print(f"curve written to {args.plot}")

    result: dict[str, Any] = {
        "machine": info,
        "model": {"units": list(SPEC.units), "num_steps": SPEC.num_steps},
        "stride": 1,
        "partitions": PARTITIONS,
        "points": [p.row() for p in points],
        "scale": {
            "from_sensors": SCALE_FROM,
            "slowest_over_fastest": None if flat is None else round(flat, 3),
            "target": 1 - SCALE_SPREAD,
            "met": scale_ok,
        },
        "memory": {
            "sensors": largest.sensors,
            "rss_bytes_per_sensor": round(per_sensor),
            "target_bytes_per_sensor": mem_target,
            "met": mem_ok,
            "window_store": store,
        },
        "inference_full_batch": infer,
        "latency": None
        if lat is None
        else {**lat, "target_p99_ms": round(lat_target, 1), "met": lat_ok},
        "minutes": round(minutes, 1),
    }
    write_json(args.out, result)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
