"""The daemon: startup → main loop → shutdown.

The main loop reads like the data flow:
poll → decode → window → batch → seed states → infer → publish → flush → commit.
Offsets move only after the broker acknowledged every forecast and dead letter
derived from the readings below them (at-least-once, ``streamcast.stream.offsets``;
how often, and backpressure, ``streamcast.stream.delivery``);
which model answers, and how the next one gets there, is ``streamcast.stream.serving``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from streamcast import __version__
from streamcast.config import Settings
from streamcast.errors import DeliveryError, StartupError
from streamcast.ops.logs import RateLimited
from streamcast.ops.metrics import Metrics
from streamcast.ops.notify import Notifier
from streamcast.ops.probes import Health, HttpServer
from streamcast.stream.accuracy import LiveAccuracy
from streamcast.stream.appended import Appended
from streamcast.stream.batcher import Batcher, Ready
from streamcast.stream.clients import close_producer, kafka_chatter_at_debug, startup_deadline
from streamcast.stream.decoding import decode_records
from streamcast.stream.delivery import Delivery
from streamcast.stream.messages import DeadLetter, Readings, encode_forecasts
from streamcast.stream.offsets import Offsets
from streamcast.stream.rebuild import WindowRebuild
from streamcast.stream.retraining import Retraining
from streamcast.stream.serving import Serving
from streamcast.stream.sink import KafkaSink
from streamcast.stream.source import KafkaSource
from streamcast.stream.topics import ensure_output_topics
from streamcast.stream.windows import WindowStore

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_STARTUP = 3

_IDLE_POLL_S = 0.5
_ACCURACY_EXPORT_S = 5.0


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
        self.spec = settings.model
        self.metrics = metrics if metrics is not None else Metrics()
        self.stop = stop if stop is not None else threading.Event()
        self.notifier = notifier if notifier is not None else Notifier()
        self.health = Health(heartbeat_timeout_s=settings.http.heartbeat_timeout_s)
        self.store = WindowStore.for_settings(settings)
        self.metrics.window_capacity.set(self.store.capacity)
        self.batcher = Batcher(settings.inference.max_batch, settings.inference.max_wait_ms / 1000)
        self.offsets = Offsets()
        self.accuracy = LiveAccuracy(self.spec.horizon, self.spec.num_features)
        self._accuracy_due = 0.0
        self.serving = Serving(
            settings,
            self.store,
            on_loaded=self._model_loaded,
            pause_input=self._pause_for_training,
            resume_input=self._resume_after_training,
            status=self._status,
            on_swapped=self._swapped,
            waiting=self.health.waiting_for,
            claim=lambda: self.retraining.claim(),
        )
        self.retraining = Retraining(settings, self.metrics, self._champion)
        self._forecasting = False
        self._floods = RateLimited(60.0)  # dead letters by reason
        #: Called at the top of every loop iteration; tests use it to stall the loop.
        self.loop_hook: Callable[[], None] | None = None
        self._resources = contextlib.ExitStack()
        self.source: KafkaSource
        self.sink: KafkaSink
        self.delivery: Delivery
        self.http: HttpServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        # Start-up ends in one line that says why it failed: the Kafka client's own
        # retry chatter goes to DEBUG meanwhile, and so does any traceback.
        with kafka_chatter_at_debug():
            try:
                self.startup()
            except Exception as exc:  # whatever stops start-up: exit 3, one line, all closed
                why = str(exc) if isinstance(exc, StartupError) else f"{type(exc).__name__}: {exc}"
                logger.error("startup failed: %s", " ".join(why.split())[:2000])
                logger.debug("startup failure", exc_info=True)
                try:
                    self.serving.stop()
                    self.retraining.stop()
                    self._resources.close()
                except Exception:
                    logger.debug("cleaning up after the failed start-up", exc_info=True)
                self.notifier.close()
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
        try:
            self.shutdown(drain=code == EXIT_OK)
        except Exception as exc:  # a close that failed must not turn into a traceback
            logger.error("shutdown did not finish cleanly: %s: %s", type(exc).__name__, exc)
            logger.debug("shutdown failure", exc_info=True)
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
        # The broker first, all of it within one deadline (kafka.startup_timeout_s), so an
        # unreachable broker fails start-up before any time goes into compiling the model.
        with startup_deadline(s.kafka.startup_timeout_s) as deadline:
            self.sink = KafkaSink(s.kafka, offsets=self.offsets)
            self._resources.callback(close_producer, self.sink.close, self.sink.producer)
            found = ensure_output_topics(s.kafka, deadline)  # before anyone subscribes
            self.source = KafkaSource(
                s.kafka,
                rebuild=self._rebuild if s.window.rebuild_records > 0 else None,
                on_assigned=self._on_assigned,
                on_revoked=self._on_revoked,
            )
            self._resources.callback(self.source.close)
            self.delivery = Delivery(
                s.kafka, self.sink, self.source, self.offsets, self.metrics, self._ctx
            )
            self.rebuild = WindowRebuild(
                s.kafka,
                decode=lambda records: self.decode(records)[0],
                num_features=self.spec.num_features,
                need=self.spec.context,
                gap_factor=s.window.gap_factor,
                max_records=s.window.rebuild_records,
                tick=self.heartbeat,
            )
            self._resources.callback(self.rebuild.close)
            if found.input_partitions is not None:
                self.source.wait_for_topic(min(5.0, deadline.remaining()))
        self.health.broker_reachable = self.source.broker_reachable
        self.metrics.set_lag_source(self.source.lag)
        self.metrics.sensors.set_function(lambda: len(self.store))
        self.serving.start()  # load, compile and warm the model (not counted in the deadline)
        self.health.beat()
        # Started: the loop runs from here on. Not ready to forecast yet (/readyz says what
        # it waits for), but a daemon gathering its first model's history for hours is
        # healthy, and the service manager must not time its start-up out.
        if self.serving.gathering:
            started = "gathering history for the first model"
        elif self.serving.awaiting is not None:
            started = "waiting for a first model version from the trainer"
        else:
            started = "started: waiting for partitions"
        self.notifier.ready(started)

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
            if self.delivery.due():
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
                while len(self.batcher) and self.serving.served is not None:
                    self.forecast(self.batcher.take(time.monotonic()))
                self.deliver(timeout_s=max(0.5, deadline - time.monotonic() - 1.0))
            except Exception:
                logger.exception(
                    "could not finish the last batch; its readings stay uncommitted",
                    extra={"ctx": self._ctx()},
                )
        # A version loading in the background holds native threads that must not be cut
        # at interpreter exit: let it finish within what is left of the bound.
        self.serving.stop(timeout_s=max(1.0, deadline - time.monotonic()))
        self.retraining.stop()
        self._resources.close()
        self.notifier.close()
        logger.info("streamcast stopped")

    # -- the data flow -----------------------------------------------------------------------

    def consume(self, records: Sequence[Any]) -> None:
        """Decode, update windows, queue ready windows, dead-letter the rest."""
        readings, letters = self.decode(records)
        appended = self.store.append(readings, emit=self.serving.served is not None)
        self.accuracy.observed(readings)  # score earlier forecasts these readings cover
        letters += appended.dead_letters(records, readings)
        self._count(readings, letters, appended)
        self.publish_dead_letters(letters)
        if self.serving.gathering or self.retraining.trainer:
            accepted = readings.take(appended.accepted(len(readings)))
            if self.serving.gathering:
                self.serving.observe(accepted)
            self.retraining.observe(accepted)  # the replay buffer, if this one trains
        if len(appended):
            self.batcher.add(Ready.of(readings, appended), time.monotonic())
        self.offsets.processed_up_to(records)

    def decode(self, records: Sequence[Any]) -> tuple[Readings, list[DeadLetter]]:
        return decode_records(
            records,
            self.spec.num_features,
            self.settings.kafka.max_message_bytes,
            max_ts=time.time() + self.settings.window.max_future_s,
        )

    def forecast(self, batch: Ready) -> None:
        """Seed states, run the batch through the model, publish the forecasts.

        A window the model cannot forecast (its inference fails, or its forecast is
        not finite) is dead-lettered on its own; the rest of the batch is published.
        """
        assert self.serving.served is not None
        started = time.perf_counter()
        self.metrics.batch_size.observe(len(batch))
        done = self.serving.forecast_batch(batch)  # one version per batch, named
        batch, forecast, version = done.batch, done.values, done.version
        self.metrics.inference.observe(time.perf_counter() - started)
        self.publish_dead_letters(done.letters)
        if not len(batch):
            return
        values = encode_forecasts(
            batch.sensors,
            batch.ts,
            batch.step_s,
            forecast,
            issued_at=time.time(),
            model_version=version,
            seed=self.spec.seeding,
        )
        last = self.sink.send_forecasts([s.encode() for s in batch.sensors], values)
        self.delivery.sent(batch.log_ts, last)
        self.accuracy.issued(
            batch.sensors, batch.ts, batch.step_s, forecast, batch.windows[:, -1, :], version
        )

    def publish_dead_letters(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        self.sink.send_dead_letters(letters)
        for dl in letters:
            self.metrics.dead_letters.labels(dl.reason).inc()
            # Bad input is data, not an incident: one warning per reason per minute,
            # with its context; every one is counted in the metrics.
            if self._floods.due(dl.reason):
                logger.warning(
                    "dead letter (further ones with this reason are counted, not logged, "
                    "for a minute): %s",
                    dl.detail,
                    extra={"ctx": dl.context()},
                )

    def deliver(self, timeout_s: float | None = None) -> None:
        """Wait for the broker's acks, then commit what they cover (``stream.delivery``)."""
        served = self.serving.served is not None
        self.delivery.deliver(self.batcher.first_offsets() if served else None, timeout_s)

    def maintain(self) -> None:
        """The model's lifecycle (swaps, the first model, retraining), then readiness."""
        self.serving.maintain()
        if not self.stop.is_set():  # no retraining starts once a stop was asked for
            self.retraining.maintain()
        now = time.monotonic()
        if now >= self._accuracy_due:  # from the loop: never while observed() writes
            self.accuracy.export(self.metrics)
            self._accuracy_due = now + _ACCURACY_EXPORT_S
        ready = self.serving.served is not None and self.health.partitions > 0
        self.metrics.ready.set(1 if ready else 0)
        if ready and not self._forecasting:
            self._forecasting = True
            self.health.phase = "forecasting"
            self.notifier.status(f"forecasting with model version {self.serving.version}")

    def heartbeat(self) -> None:
        self.health.beat()
        self.notifier.watchdog()

    # -- what the serving unit reports and asks for ------------------------------------------

    def _model_loaded(self, version: int, seconds: float) -> None:
        self.metrics.set_model(version, seconds)
        self.health.model_version = version

    def _champion(self) -> int | None:
        """What a challenger must beat: the registry's current version (a promotion may
        not be swapped in yet), else the one served (a registry without a pointer)."""
        if self.serving.served is None:
            return None
        return self.serving.registry.current() or self.serving.version

    def _swapped(self, old: int, new: int) -> None:
        self.metrics.model_swaps.inc()
        if self._forecasting:
            self.notifier.status(f"forecasting with model version {new} (was {old})")

    def _status(self, phase: str, status: str) -> None:
        self.health.phase = phase
        self.notifier.status(status)

    def _pause_for_training(self) -> None:
        self.deliver()
        self.source.pause()

    def _resume_after_training(self) -> None:
        self.source.resume()
        self.offsets.dirty = True  # commit what the gathered history covered

    # -- rebalance callbacks (run inside poll) -----------------------------------------------

    def _on_revoked(self, partitions: set[int]) -> None:
        """Forget what belongs to partitions that moved away.

        Runs on the client's IO thread, so it only touches local state. Windows
        still waiting for inference are dropped, not forecast: their offsets are
        uncommitted, so the partitions' new owner forecasts them (at-least-once).
        """
        self.batcher.drop_partitions(partitions)
        self.store.drop_partitions(partitions)
        self.offsets.forget(partitions)
        self.health.partitions = len(self.source.assigned_partitions() - partitions)

    def _rebuild(self, committed: dict[int, int]) -> None:
        """Refill the windows of newly assigned partitions before they fetch (no output)."""
        budget_s = self.settings.kafka.max_poll_interval_ms / 2000  # stay in the group
        # While the first model's history is gathered, the topic's retention supplies it.
        bootstrap = self.serving.bootstrap
        need = bootstrap.per_sensor if bootstrap is not None else None
        for rebuilt in self.rebuild.run(committed, budget_s, need=need):
            self.store.append(rebuilt.readings, emit=False)
            self.serving.observe(rebuilt.readings)  # kept only while gathering

    def _on_assigned(self, partitions: set[int]) -> None:
        """Partitions added to this member (rebalances are incremental: the rest stay)."""
        self.metrics.rebalances.inc()
        self.health.partitions = len(self.source.assigned_partitions())

    # -- helpers -----------------------------------------------------------------------------

    def _ctx(self) -> dict[str, Any]:
        """What every error line names: where the daemon reads, writes, and what serves."""
        return {
            "topic": self.settings.kafka.input_topic,
            "group": self.settings.kafka.group_id,
            "partitions": self.offsets.partitions,
            "model_version": self.serving.version,
        }

    def _poll_timeout_ms(self) -> int:
        return int(1000 * self.batcher.wait_s(time.monotonic(), _IDLE_POLL_S))

    def _count(self, readings: Readings, letters: list[DeadLetter], appended: Appended) -> None:
        refused = len(appended.rejected)
        m = self.metrics
        m.readings.labels("ok").inc(len(readings) - refused)
        m.readings.labels("dead_letter").inc(len(letters) - refused)
        for reason in appended.reasons:
            m.readings.labels(reason).inc()
        if appended.evicted:
            m.evicted.inc(appended.evicted)
        if appended.restarts:
            m.restarts.inc(appended.restarts)
