"""The daemon: startup → main loop → shutdown.

The main loop reads like the data flow:
poll → decode → window → batch → seed states → infer → publish → flush → commit.
Offsets move only after the broker acknowledged every forecast and dead letter
derived from the readings below them (at-least-once).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamcast import __version__
from streamcast.batcher import Batcher, Ready
from streamcast.config import Settings
from streamcast.errors import DeliveryError, ModelMismatchError, RegistryError, StartupError
from streamcast.history import History
from streamcast.http import Health, HttpServer
from streamcast.messages import DeadLetter, Readings, decode_records, encode_forecasts
from streamcast.metrics import Metrics
from streamcast.model import state_width
from streamcast.notify import Notifier
from streamcast.registry import ModelRegistry
from streamcast.sink import KafkaSink
from streamcast.source import KafkaSource
from streamcast.trainer import TrainingJob
from streamcast.training import split_sizes
from streamcast.windows import WindowStore

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_STARTUP = 3

_IDLE_POLL_S = 0.5
_REGISTRY_CHECK_S = 5.0
_BOOTSTRAP_MAX_SENSORS = 2_000  # bounds the history kept to train the first model


@dataclass
class Served:
    """The model currently answering: its version and compiled predictor."""

    version: int
    predictor: Any  # streamcast.inference.Predictor (imported lazily: TensorFlow is heavy)


class Daemon:
    """One inference process. ``stop`` is the only way to ask it to exit."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        stop: threading.Event | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.spec = settings.model_spec()
        self.metrics = metrics if metrics is not None else Metrics()
        self.stop = stop if stop is not None else threading.Event()
        self.notifier = notifier if notifier is not None else Notifier()
        self.health = Health(heartbeat_timeout_s=settings.http.heartbeat_timeout_s)
        self.registry = ModelRegistry(settings.registry.path)
        self.served: Served | None = None
        self.store = WindowStore(
            settings.window.capacity,
            self.spec.num_steps,
            self.spec.num_features,
            stride=settings.window.stride,
            gap_factor=settings.window.gap_factor,
            state_width=state_width(self.spec) if self.spec.seed == "carry" else 0,
        )
        self.batcher = Batcher(settings.inference.max_batch, settings.inference.max_wait_ms / 1000)
        self.history: History | None = None
        self.training: TrainingJob | None = None
        #: partition → next offset processed live (commits never go past pending windows).
        self.processed: dict[int, int] = {}
        self._unacked_log_ts: list[np.ndarray] = []
        self._dirty = False
        self._ready_sent = False
        self._next_registry_check = 0.0
        self._rejected_version = 0
        self._warned: dict[str, float] = {}
        #: Called at the top of every loop iteration; tests use it to stall the loop.
        self.loop_hook: Callable[[], None] | None = None
        self._resources = contextlib.ExitStack()
        self.source: KafkaSource
        self.sink: KafkaSink
        self.http: HttpServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.startup()
        except StartupError as exc:
            logger.error("startup failed: %s", exc)
            self._resources.close()
            return EXIT_STARTUP
        code = EXIT_OK
        try:
            self.main_loop()
        except DeliveryError as exc:
            logger.error(
                "delivery failed, offsets left uncommitted: %s", exc, extra={"ctx": self._ctx()}
            )
            code = EXIT_FATAL
        except Exception:
            logger.exception("main loop failed", extra={"ctx": self._ctx()})
            code = EXIT_FATAL
        self.shutdown(drain=code == EXIT_OK)
        return code

    def startup(self) -> None:
        s = self.settings
        logger.info(
            "streamcast %s starting group=%s topic=%s",
            __version__,
            s.kafka.group_id,
            s.kafka.input_topic,
        )
        self.notifier.status("starting")
        if s.http.enabled:
            self.http = HttpServer(s.http.host, s.http.port, self.metrics.registry, self.health)
            self.http.start()
            self._resources.callback(self.http.close)
        if self.registry.latest() is not None:
            try:
                self._load_model(self.registry.latest())
            except (RegistryError, ModelMismatchError) as exc:
                raise StartupError(str(exc)) from exc
        else:
            logger.info(
                "registry %s is empty: gathering %d training examples from the stream",
                s.registry.path,
                s.training.bootstrap_windows,
            )
            span = self.spec.num_steps + 1 + self.spec.horizon
            self.history = History(
                self.spec.num_features,
                # enough for a chronological validation part of its own per sensor
                max_per_sensor=math.ceil(2 * span / s.training.validation_fraction),
                max_sensors=_BOOTSTRAP_MAX_SENSORS,
            )
            self.health.phase = "bootstrap"
            self.notifier.status("gathering history to train the first model")
        self.sink = KafkaSink(s.kafka)
        self._resources.callback(self.sink.close)
        self.source = KafkaSource(
            s.kafka,
            rebuild_records=s.window.rebuild_records,
            on_assigned=self._on_assigned,
            on_revoked=self._on_revoked,
        )
        self._resources.callback(self.source.close)
        self.health.broker_reachable = self.source.broker_reachable
        self.metrics.set_lag_source(self.source.lag)
        self.metrics.sensors.set_function(lambda: len(self.store))
        self.source.wait_for_topic(min(5.0, s.kafka.startup_timeout_s))
        self.health.beat()

    def should_exit(self) -> bool:
        return self.stop.is_set()

    def main_loop(self) -> None:
        while not self.should_exit():
            if self.loop_hook is not None:
                self.loop_hook()
            records = self.source.poll(self._poll_timeout_ms())  # poll
            if records:
                self.consume(records)  # decode → window → batch
            while self.batcher.due(time.monotonic()):
                self.forecast(self.batcher.take(time.monotonic()))  # seed → infer → publish
            self.deliver()  # flush → commit
            self.maintain()  # first model, hot swap, readiness
            self.heartbeat()

    def shutdown(self, *, drain: bool = True) -> None:
        """Finish the batch in flight, flush, commit and close, within the bound."""
        self.notifier.stopping()
        self.health.phase = "stopping"
        self.metrics.ready.set(0)
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        if drain and hasattr(self, "source"):
            try:
                while len(self.batcher) and self.served is not None:
                    self.forecast(self.batcher.take(time.monotonic()))
                self.deliver(timeout_s=max(0.5, deadline - time.monotonic() - 1.0))
            except Exception:
                logger.exception(
                    "could not finish the last batch; its readings stay uncommitted",
                    extra={"ctx": self._ctx()},
                )
        if self.training is not None:
            self.training.stop()
        self._resources.close()
        self.notifier.close()
        logger.info("streamcast stopped")

    # -- the data flow -----------------------------------------------------------------------

    def consume(self, records: Sequence[Any]) -> None:
        """Decode, update windows, queue ready windows, dead-letter the rest."""
        replay, live = self._split_replay(records)
        if replay:
            readings, _ = decode_records(
                replay, self.spec.num_features, self.settings.kafka.max_message_bytes
            )
            self.store.append(readings, emit=False)
        if not live:
            return
        readings, letters = decode_records(
            live, self.spec.num_features, self.settings.kafka.max_message_bytes
        )
        emit = self.served is not None
        appended = self.store.append(readings, emit=emit)
        if len(appended.rejected):
            letters.extend(self._rejections(live, readings, appended.rejected, appended.reasons))
        m = self.metrics
        m.readings.labels("ok").inc(len(readings) - len(appended.rejected))
        m.readings.labels("dead_letter").inc(len(letters) - len(appended.rejected))
        for reason in appended.reasons:
            m.readings.labels(reason).inc()
        if appended.evicted:
            m.evicted.inc(appended.evicted)
        if appended.restarts:
            m.restarts.inc(appended.restarts)
        if letters:
            self.publish_dead_letters(letters)
        if self.history is not None:
            keep = np.ones(len(readings), bool)
            keep[appended.rejected] = False
            self.history.add(readings.take(keep))
        if emit and len(appended):
            self.batcher.add(self._ready(readings, appended), time.monotonic())
        for rec in live:  # in offset order per partition: the last one wins
            self.processed[rec.partition] = rec.offset + 1
        self._dirty = True

    def forecast(self, batch: Ready) -> None:
        """Seed states, run the batch through the model, publish the forecasts."""
        assert self.served is not None
        started = time.perf_counter()
        if self.spec.seed == "carry":
            forecast = self._infer_carried(batch)
        else:
            forecast = self.served.predictor.predict(batch.windows, batch.truths).forecast
        self.metrics.inference.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(batch))
        values = encode_forecasts(
            batch.sensors,
            batch.ts,
            batch.step_s,
            forecast,
            issued_at=time.time(),
            model_version=self.served.version,
            seed=self.spec.seed,
        )
        self.sink.send_forecasts([s.encode() for s in batch.sensors], values)
        self._unacked_log_ts.append(batch.log_ts)
        self._dirty = True

    def _infer_carried(self, batch: Ready) -> np.ndarray:
        """Carry mode: each window starts from its sensor's states after the previous one.

        A batch may hold several windows of one sensor (a burst, a catch-up); the
        k-th of them runs in round k, after round k-1 stored the states it needs.
        """
        assert self.served is not None
        order = np.argsort(batch.slots, kind="stable")
        sorted_slots = batch.slots[order]
        starts = np.r_[True, sorted_slots[1:] != sorted_slots[:-1]]
        first_of_group = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order)) - first_of_group
        forecast = np.empty((len(batch), self.spec.horizon, self.spec.num_features), np.float32)
        for r in range(int(rank.max()) + 1 if len(rank) else 0):
            rows = np.flatnonzero(rank == r)
            slots, generations = batch.slots[rows], batch.generations[rows]
            carry, has_carry = self.store.carry(slots, generations)
            prediction = self.served.predictor.predict(
                batch.windows[rows], batch.truths[rows], carry, has_carry
            )
            self.store.store_carry(slots, generations, prediction.states)
            forecast[rows] = prediction.forecast
        return forecast

    def publish_dead_letters(self, letters: list[DeadLetter]) -> None:
        self.sink.send_dead_letters(letters)
        for dl in letters:
            self.metrics.dead_letters.labels(dl.reason).inc()
            # Bad input is data, not an incident: one warning per reason per minute,
            # with its context; every one is counted in the metrics.
            now = time.monotonic()
            if now - self._warned.get(dl.reason, -math.inf) >= 60.0:
                self._warned[dl.reason] = now
                logger.warning(
                    "dead letter (further ones with this reason are counted, not logged, "
                    "for a minute): %s",
                    dl.detail,
                    extra={
                        "ctx": {
                            "reason": dl.reason,
                            "topic": dl.topic,
                            "partition": dl.partition,
                            "offset": dl.offset,
                            "sensor": (dl.key or b"").decode("utf-8", "replace"),
                        }
                    },
                )

    def deliver(self, timeout_s: float | None = None) -> None:
        """Wait for the broker's acks, then commit what they cover."""
        if not self._dirty:
            return
        acked_at = self.sink.flush(timeout_s)
        if self._unacked_log_ts:
            log_ts = np.concatenate(self._unacked_log_ts)
            self._unacked_log_ts = []
            self.metrics.forecasts.inc(len(log_ts))
            observe = self.metrics.end_to_end.observe
            for latency in (acked_at - log_ts).tolist():
                observe(max(0.0, latency))
        if self.served is None:
            self._dirty = False
            return  # no commits while gathering history: those readings train version 1
        offsets = dict(self.processed)
        for p, first_pending in self.batcher.first_offsets().items():
            offsets[p] = min(offsets.get(p, first_pending), first_pending)
        try:
            self.source.commit(offsets)
            self.metrics.commits.labels("ok").inc()
            self._dirty = False
        except Exception as exc:  # a rebalance in progress; the next commit covers it
            self.metrics.commits.labels("failed").inc()
            logger.warning(
                "commit failed: %s", exc, extra={"ctx": {**self._ctx(), "offsets": offsets}}
            )

    # -- models ------------------------------------------------------------------------------

    def maintain(self) -> None:
        now = time.monotonic()
        if self.served is None:
            self._maybe_bootstrap()
        elif now >= self._next_registry_check:
            self._next_registry_check = now + _REGISTRY_CHECK_S
            latest = self.registry.latest()
            if latest is not None and latest > max(self.served.version, self._rejected_version):
                self._swap_to(latest)
        ready = self.served is not None and self.health.partitions > 0
        self.metrics.ready.set(1 if ready else 0)
        if ready and not self._ready_sent:
            self._ready_sent = True
            self.health.phase = "forecasting"
            assert self.served is not None
            self.notifier.ready(f"forecasting with model version {self.served.version}")

    def _maybe_bootstrap(self) -> None:
        if self.training is None:
            assert self.history is not None
            train, val = split_sizes(
                self.history.lengths(),
                self.spec.num_steps,
                self.spec.horizon,
                self.settings.training.validation_fraction,
            )
            if train < self.settings.training.bootstrap_windows or val == 0:
                return
            have = train
            logger.info("training model version 1 examples=%d", have)
            self.notifier.status(f"training the first model on {have} examples")
            self.health.phase = "training"
            self.deliver()
            self.source.pause()
            # Nothing is forecast until version 1 exists, so its training may use every
            # core; later retraining keeps to training.threads and leaves inference a core.
            first = self.settings.training.model_copy(
                update={"threads": max(self.settings.training.threads, os.cpu_count() or 1)}
            )
            self.training = TrainingJob(
                self.spec,
                first,
                self.settings.registry.path,
                self.history.series(),
                self.history.timestamps(),
            ).start()
            return
        if not self.training.done():
            return
        job, self.training = self.training, None
        if not job.ok or self.registry.latest() is None:
            raise RuntimeError(
                f"training the first model failed (exit code {job.process.exitcode})"
            )
        self.history = None
        self._load_model(self.registry.latest())  # a failure here is fatal: nothing to serve
        self.source.resume()
        self._dirty = True

    def _load_model(self, version: int | None) -> None:
        """Load, check, compile and warm a version, then swap it in between batches.

        Raises RegistryError / ModelMismatchError; the caller decides whether that
        stops start-up or only skips a bad new version.
        """
        from streamcast.inference import Predictor

        started = time.perf_counter()
        loaded = self.registry.load(version, expect=self.spec)
        stored = loaded.cfg
        if stored.seed != self.spec.seed or (
            self.spec.seed == "carry" and stored.units != self.spec.units
        ):
            raise ModelMismatchError(
                f"model version {loaded.version} was built for seed={stored.seed} "
                f"units={list(stored.units)} but the configuration asks for "
                f"seed={self.spec.seed} units={list(self.spec.units)}"
            )
        inference = self.settings.inference
        # The model's own shape (its units may differ from the config's, which only
        # decide the shape of models trained from now on).
        predictor = Predictor(
            loaded.model, stored, max_batch=inference.max_batch, jit_compile=inference.jit_compile
        )
        predictor.warmup()
        if self.served is not None and self.spec.seed == "carry":
            self.store.clear_carry()  # a new model's states mean something else
        self.served = Served(loaded.version, predictor)
        seconds = time.perf_counter() - started
        self.metrics.set_model(loaded.version, seconds)
        self.health.model_version = loaded.version
        logger.info(
            "serving model version=%d load_seconds=%.2f device=%s",
            loaded.version,
            seconds,
            predictor.device,
        )

    def _swap_to(self, version: int) -> None:
        """Hot swap; a bad new version is logged and skipped, the current one keeps serving."""
        try:
            self._load_model(version)
        except (RegistryError, ModelMismatchError) as exc:
            self._rejected_version = version
            assert self.served is not None
            logger.error(
                "model version %d rejected, still serving version %d: %s",
                version,
                self.served.version,
                exc,
                extra={"ctx": {"model_version": version}},
            )

    # -- rebalance callbacks (run inside poll) -----------------------------------------------

    def _on_revoked(self, partitions: set[int]) -> None:
        """Forget what belongs to partitions that moved away.

        Runs on the client's IO thread, so it only touches local state. Windows
        still waiting for inference are dropped, not forecast: their offsets are
        uncommitted, so the partitions' new owner forecasts them (at-least-once).
        """
        self.batcher.drop_partitions(partitions)
        self.store.drop_partitions(partitions)
        for p in partitions:
            self.processed.pop(p, None)
        self.health.partitions = max(0, self.health.partitions - len(partitions))

    def _on_assigned(self, partitions: set[int]) -> None:
        self.metrics.rebalances.inc()
        self.health.partitions = len(partitions)

    # -- helpers -----------------------------------------------------------------------------

    def _ctx(self) -> dict[str, Any]:
        """What every error line names: where the daemon reads, writes, and what serves."""
        return {
            "topic": self.settings.kafka.input_topic,
            "group": self.settings.kafka.group_id,
            "partitions": sorted(self.processed),
            "model_version": self.served.version if self.served else None,
        }

    def heartbeat(self) -> None:
        self.health.beat()
        self.notifier.watchdog()

    def _poll_timeout_ms(self) -> int:
        return int(1000 * self.batcher.wait_s(time.monotonic(), _IDLE_POLL_S))

    def _split_replay(self, records: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        if not self.source.replay_until:
            return [], list(records)
        replay: list[Any] = []
        live: list[Any] = []
        is_replay = self.source.is_replay
        for rec in records:
            (replay if is_replay(rec.partition, rec.offset) else live).append(rec)
        return replay, live

    @staticmethod
    def _rejections(
        records: Sequence[Any], readings: Readings, rejected: np.ndarray, reasons: list[str]
    ) -> list[DeadLetter]:
        out = []
        for i, reason in zip(rejected.tolist(), reasons, strict=True):
            rec = records[int(readings.record_index[i])]
            detail = f"ts {readings.ts[i]!r} is not newer than the sensor's last reading"
            out.append(
                DeadLetter(rec.key, rec.value, reason, detail, rec.topic, rec.partition, rec.offset)
            )
        return out

    def _ready(self, readings: Readings, appended: Any) -> Ready:
        idx = appended.ready
        sensors = readings.sensors
        return Ready(
            sensors=[sensors[i] for i in idx.tolist()],
            windows=appended.windows,
            truths=appended.truths,
            slots=appended.slots,
            generations=appended.generations,
            step_s=appended.step_s,
            ts=readings.ts[idx],
            log_ts=readings.log_ts[idx],
            partitions=readings.partitions[idx],
            offsets=readings.offsets[idx],
        )
