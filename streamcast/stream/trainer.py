"""The trainer on its own (``streamcast train --follow``): retraining without serving.

An operator who wants inference replicas that only serve runs one of these beside them,
with ``training.online: false`` on the daemons. It reads the readings topic with its own
consumer group (``<kafka.group_id>.trainer``), keeps the same replay buffer, holds the
registry's lease, trains version 1 once enough history has arrived, and then retrains
and promotes exactly as a daemon's trainer does; the daemons follow the registry's
pointer. It serves ``/metrics``, ``/healthz`` and ``/readyz`` like the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kafka import KafkaConsumer

from streamcast.config import Settings
from streamcast.errors import StartupError
from streamcast.learn.registry import ModelRegistry
from streamcast.ops.metrics import Metrics
from streamcast.ops.notify import Notifier
from streamcast.ops.probes import Health, HttpServer
from streamcast.stream.clients import connect, startup_deadline
from streamcast.stream.decoding import decode_records
from streamcast.stream.retraining import Retraining

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_STARTUP = 3
_POLL_MS = 500


class Trainer:
    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        stop: threading.Event | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        # This process trains whatever the daemons' training.online says.
        self.settings = settings.model_copy(
            update={"training": settings.training.model_copy(update={"online": True})}
        )
        self.metrics = metrics if metrics is not None else Metrics()
        self.stop = stop if stop is not None else threading.Event()
        self.notifier = notifier if notifier is not None else Notifier()
        self.health = Health(heartbeat_timeout_s=settings.http.heartbeat_timeout_s)
        self.registry = ModelRegistry(settings.registry.path, keep=settings.registry.keep)
        self.retraining = Retraining(self.settings, self.metrics, self.champion, first_model=True)
        self.http: HttpServer | None = None
        self.consumer: Any = None

    def champion(self) -> int | None:
        """The version daemons serve: the pointer's, or the newest (a registry by hand)."""
        return self.registry.current() or self.registry.latest()

    def run(self) -> int:
        s = self.settings
        try:
            if s.http.enabled:
                self.http = HttpServer(s.http.host, s.http.port, self.metrics.registry, self.health)
                self.http.start()
            with startup_deadline(s.kafka.startup_timeout_s):
                self.consumer = connect(
                    KafkaConsumer,
                    s.kafka,
                    group_id=f"{s.kafka.group_id}.trainer",
                    enable_auto_commit=True,
                    auto_offset_reset="earliest",
                    session_timeout_ms=s.kafka.session_timeout_ms,
                    heartbeat_interval_ms=s.kafka.heartbeat_interval_ms,
                    max_poll_records=s.kafka.max_poll_records,
                    fetch_max_wait_ms=s.kafka.fetch_max_wait_ms,
                )
            self.consumer.subscribe([s.kafka.input_topic])
        except (StartupError, OSError) as exc:
            logger.error("trainer startup failed: %s", exc)
            self._close()
            return EXIT_STARTUP
        self.health.broker_reachable = lambda: bool(self.consumer.bootstrap_connected())
        logger.info(
            "trainer following topic=%s group=%s.trainer registry=%s",
            s.kafka.input_topic,
            s.kafka.group_id,
            s.registry.path,
        )
        self.notifier.ready("following the readings; retraining holds the registry's lease")
        code = EXIT_OK
        try:
            while not self.stop.is_set():
                self.turn()
        except Exception:
            logger.exception("trainer loop failed")
            code = EXIT_FATAL
        self.notifier.stopping()
        self._close()
        return code

    def turn(self) -> None:
        """Poll → decode → buffer → maybe retrain; then say how things stand."""
        s = self.settings
        batches = self.consumer.poll(timeout_ms=_POLL_MS)
        records = [r for batch in batches.values() for r in batch]
        if records:
            readings, _ = decode_records(
                records,
                s.model.num_features,
                s.kafka.max_message_bytes,
                max_ts=time.time() + s.window.max_future_s,
            )
            self.retraining.observe(readings)  # bad records are the daemons' to dead-letter
        self.retraining.maintain()
        self.health.model_version = self.champion()
        self.health.partitions = len(self.consumer.assignment())
        self.health.phase = "retraining" if self.retraining.job is not None else "following"
        self.health.beat()
        self.notifier.watchdog()

    def _close(self) -> None:
        self.retraining.stop()
        if self.consumer is not None:
            self.consumer.close()
        if self.http is not None:
            self.http.close()
        self.notifier.close()
