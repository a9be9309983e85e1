"""Delivery: the loop's last two steps, the broker's acks and then the commit.

Offsets move only past readings whose every forecast and dead letter the broker
acknowledged (at-least-once; ``streamcast.stream.offsets`` says which). Waiting for
acks after every poll costs a round trip per poll, so at-least-once delivers on an
interval (``kafka.commit_interval_ms``: a crash redoes at most that much work) and at
once when the output waiting for acks reaches ``kafka.max_pending_bytes``: the loop
then waits for the broker instead of fetching more, so a slow broker shows as consumer
lag, not as memory. Exactly-once commits a transaction after every poll, since no
transaction may stay open across a poll, where rebalances happen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from streamcast.config import KafkaSettings
from streamcast.errors import DeliveryError
from streamcast.ops.logs import RateLimited
from streamcast.ops.metrics import Metrics
from streamcast.stream.offsets import Offsets
from streamcast.stream.sink import KafkaSink
from streamcast.stream.source import KafkaSource

logger = logging.getLogger(__name__)


class _Sent:
    """A batch of forecasts sent, counted and timed when the broker acknowledges it."""

    __slots__ = ("log_ts", "metrics")

    def __init__(self, log_ts: np.ndarray, metrics: Metrics) -> None:
        self.log_ts = log_ts
        self.metrics = metrics

    def acknowledged(self, _metadata: Any) -> None:
        """Runs on the producer's IO thread when the batch's last record is acked; the
        delivery that waits for it may come up to kafka.commit_interval_ms later."""
        now = time.time()
        self.metrics.forecasts.inc(len(self.log_ts))
        observe = self.metrics.end_to_end.observe
        for latency in (now - self.log_ts).tolist():
            observe(max(0.0, latency))


class Delivery:
    def __init__(
        self,
        kafka: KafkaSettings,
        sink: KafkaSink,
        source: KafkaSource,
        offsets: Offsets,
        metrics: Metrics,
        context: Callable[[], dict[str, Any]],
    ) -> None:
        self.interval_s = kafka.commit_interval_ms / 1000
        self.max_pending_bytes = kafka.max_pending_bytes
        self.sink = sink
        self.source = source
        self.offsets = offsets
        self.metrics = metrics
        self._context = context
        self._next = 0.0
        self._failures = RateLimited(60.0)

    def sent(self, log_ts: np.ndarray, last: Any) -> None:
        """A batch of forecasts went out; ``last`` is its last record's future."""
        if last is not None:
            last.add_callback(_Sent(log_ts, self.metrics).acknowledged)
        self.offsets.dirty = True

    def due(self) -> bool:
        return (
            self.sink.transactional
            or self.sink.pending_bytes >= self.max_pending_bytes
            or time.monotonic() >= self._next
        )

    def deliver(
        self, first_offsets: Mapping[int, int] | None, timeout_s: float | None = None
    ) -> None:
        """Wait for the broker's acks, then commit what they cover.

        ``first_offsets``: per partition, the first offset still queued for inference
        (nothing at or past it is committed); None commits nothing (the first model's
        history is being gathered, and those readings train it). Exactly-once: the
        output sent since the last delivery and the offsets it covers commit as one
        transaction, or not at all (DeliveryError: the daemon exits without committing).
        """
        self._next = time.monotonic() + self.interval_s
        if not self.offsets.dirty:
            return
        offsets = self.offsets.to_commit(first_offsets) if first_offsets is not None else {}
        if self.sink.transactional:
            group = self.source.consumer.group_metadata()
            try:
                self.sink.commit(self.source.topic, offsets, group, timeout_s)
            except DeliveryError:
                self.metrics.commits.labels("failed").inc()
                raise
        else:
            self.sink.flush(timeout_s)
        if not offsets:
            self.offsets.dirty = False
            return
        try:
            if not self.sink.transactional:
                self.source.commit(offsets)
            self.metrics.commits.labels("ok").inc()
            self.offsets.dirty = False
        except Exception as exc:  # a rebalance in progress; the next commit covers it
            self.metrics.commits.labels("failed").inc()
            if self._failures.due(type(exc).__name__):
                logger.warning(
                    "commit failed (the next one covers it; counted, logged once a minute): %s",
                    exc,
                    extra={"ctx": {**self._context(), "offsets": offsets}},
                )
