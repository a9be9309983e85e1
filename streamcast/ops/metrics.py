"""Every Prometheus metric streamcast exports, defined once, on an injected registry.

Tests build a fresh ``CollectorRegistry`` and read values with ``get_sample_value``.
Values that are cheap to compute when scraped (tracked sensors, consumer lag,
readiness) come from callbacks, so the hot loop never updates them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamcast import __version__

READING_OUTCOMES = ("ok", "dead_letter", "out_of_order", "duplicate")
LagSource = Callable[[], Mapping[tuple[str, int], int]]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_INFER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_E2E_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _LagCollector(Collector):
    """Consumer lag per partition, computed at scrape time from the fetch high watermark."""

    def __init__(self) -> None:
        self.source: LagSource | None = None

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "streamcast_consumer_lag",
            "Records in the input topic not yet consumed, per partition.",
            labels=["topic", "partition"],
        )
        if self.source is not None:
            for (topic, partition), lag in sorted(self.source().items()):
                family.add_metric([topic, str(partition)], float(lag))
        yield family


#: Every value of streamcast_retrains_total's outcome label.
RETRAIN_OUTCOMES = (
    "promoted",
    "not_better",
    "worse_than_persistence",
    "non_finite_loss",
    "training_failed",
    "timed_out",
)


class Metrics:
    """The daemon's metrics. One instance per daemon, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        # ``*_created`` series double the exposition and no dashboard or alert reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.up = Gauge(
            "streamcast_up", "Build information; 1 while the daemon runs.", ["version"], registry=r
        )
        self.up.labels(__version__).set(1)
        self.readings = Counter(
            "streamcast_readings", "Readings consumed, by outcome.", ["outcome"], registry=r
        )
        for outcome in READING_OUTCOMES:
            self.readings.labels(outcome)
        self.dead_letters = Counter(
            "streamcast_dead_letters",
            "Messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.sensors = Gauge("streamcast_sensors", "Sensors whose windows are tracked.", registry=r)
        self.evicted = Counter(
            "streamcast_sensors_evicted",
            "Sensors evicted because the window store was full.",
            registry=r,
        )
        self.window_capacity = Gauge(
            "streamcast_window_capacity",
            "Sensors the window store can track (window.capacity); a new sensor beyond it "
            "evicts the idlest.",
            registry=r,
        )
        self.restarts = Counter(
            "streamcast_window_restarts",
            "Sensor windows restarted after a gap in the readings.",
            registry=r,
        )
        self.forecasts = Counter(
            "streamcast_forecasts", "Forecasts acknowledged by the broker.", registry=r
        )
        self.batch_size = Histogram(
            "streamcast_batch_size",
            "Windows per inference batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "streamcast_inference_seconds",
            "Time to run one inference batch.",
            buckets=_INFER_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "streamcast_end_to_end_seconds",
            "From a reading's append to the log to its forecast's acknowledgement.",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.commits = Counter(
            "streamcast_commits", "Offset commits, by outcome.", ["outcome"], registry=r
        )
        for outcome in ("ok", "failed"):
            self.commits.labels(outcome)
        self.model_info = Gauge(
            "streamcast_model_info", "The model version serving forecasts.", ["version"], registry=r
        )
        self.model_load = Gauge(
            "streamcast_model_load_seconds",
            "Seconds the last model load (and warm-up) took.",
            registry=r,
        )
        self.rebalances = Counter(
            "streamcast_rebalances", "Partition assignments received from the group.", registry=r
        )
        self.ready = Gauge(
            "streamcast_ready", "1 when the daemon is ready to forecast.", registry=r
        )
        # The model's lifecycle: swaps, retraining and what the served model scores live.
        self.model_swaps = Counter(
            "streamcast_model_swaps",
            "Model versions swapped in while running (promotions and rollbacks).",
            registry=r,
        )
        self.retrains = Counter(
            "streamcast_retrains",
            "Retrainings by outcome: promoted, or the reason the challenger was rejected.",
            ["outcome"],
            registry=r,
        )
        for outcome in RETRAIN_OUTCOMES:
            self.retrains.labels(outcome)
        self.retrain_seconds = Histogram(
            "streamcast_retrain_seconds",
            "Wall time of a retraining, from start to verdict.",
            buckets=(10, 30, 60, 120, 300, 600, 900, 1800, 3600),
            registry=r,
        )
        self.replay_examples = Gauge(
            "streamcast_replay_examples",
            "Training examples the replay buffer holds for the next retraining.",
            registry=r,
        )
        self.replay_bytes = Gauge(
            "streamcast_replay_bytes", "Memory the replay buffer holds.", registry=r
        )
        self.forecast_mae = Gauge(
            "streamcast_forecast_mae",
            "Live MAE of scored forecasts over a recent sample, by horizon bucket and "
            "forecaster (the served model, and persistence on the same readings).",
            ["horizon_bucket", "forecaster"],
            registry=r,
        )
        self._lag = _LagCollector()
        r.register(self._lag)

    def set_lag_source(self, source: LagSource | None) -> None:
        self._lag.source = source

    def set_model(self, version: int, load_seconds: float) -> None:
        self.model_info.clear()
        self.model_info.labels(str(version)).set(1)
        self.model_load.set(load_seconds)
