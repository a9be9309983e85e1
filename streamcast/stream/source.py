"""KafkaSource: the consumer side of the daemon.

It owns the consumer-group membership and manual commits. A newly assigned
partition stays paused until the main thread has refilled its sensors' windows
(``rebuild``, given the partitions' committed offsets); then it fetches from its
committed offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from streamcast.config import KafkaSettings
from streamcast.ops.logs import RateLimited
from streamcast.stream.clients import Deadline, bounded, connect

logger = logging.getLogger(__name__)

PartitionsCallback = Callable[[set[int]], None]
RebuildCallback = Callable[[dict[int, int]], None]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs on the client's IO thread, where no blocking call is allowed: it only
    records what changed and pauses new partitions until the main thread has
    positioned them (see ``KafkaSource.settle``)."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self.source._revoked({tp.partition for tp in revoked})

    def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self.source._assigned(list(assigned))


class _Consumer(KafkaConsumer):  # type: ignore[misc]
    """kafka-python 3.0 lets a lost connection escape ``poll()`` (e.g. a
    KafkaConnectionError from the coordinator look-up while the broker is away).
    For the loop that is a poll with no records: it keeps turning (liveness),
    /readyz says the broker is unreachable, and the client reconnects on its own.
    Only retriable errors are absorbed; anything else still ends the loop."""

    _outage_log = RateLimited(30.0)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None, **kw: Any) -> Any:
        started = time.monotonic()
        try:
            return super().poll(timeout_ms=timeout_ms, max_records=max_records, **kw)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            if self._outage_log.due("poll"):
                logger.warning("broker unavailable, will retry (logged every 30 s): %s", exc)
            # The error may come back at once: wait out the poll's time, as an empty poll would.
            time.sleep(max(0.0, timeout_ms / 1000 - (time.monotonic() - started)))
            return {}


class KafkaSource:
    """Consumes one input topic as part of a consumer group; offsets committed by hand."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        rebuild: RebuildCallback | None,
        on_assigned: PartitionsCallback,
        on_revoked: PartitionsCallback,
    ) -> None:
        self.topic = kafka.input_topic
        self._rebuild = rebuild
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        #: partition → next offset to be consumed, as last polled (read by the lag collector).
        self.positions: dict[int, int] = {}
        self._unsettled: list[TopicPartition] = []
        self.paused = False
        self.consumer = connect(
            _Consumer,
            kafka,
            group_id=kafka.group_id,
            enable_auto_commit=False,
            auto_offset_reset=kafka.auto_offset_reset,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            max_poll_interval_ms=kafka.max_poll_interval_ms,
            max_poll_records=kafka.max_poll_records,
            fetch_max_wait_ms=kafka.fetch_max_wait_ms,
            # Incremental rebalancing (KIP-429): a rebalance revokes only the partitions
            # that move, so the ones that stay keep their windows and queued work.
            partition_assignment_strategy=(CooperativeStickyAssignor,),
            # Exactly-once: skip aborted input, and fetch committed offsets only once no
            # transaction holds pending ones for the group (KIP-447 require_stable).
            isolation_level="read_committed" if kafka.exactly_once else "read_uncommitted",
        )
        self.consumer.subscribe([self.topic], listener=_Listener(self))

    # -- rebalance ---------------------------------------------------------------------------

    def _revoked(self, partitions: set[int]) -> None:
        logger.info("partitions revoked topic=%s partitions=%s", self.topic, sorted(partitions))
        for p in partitions:
            self.positions.pop(p, None)
        self._unsettled = [tp for tp in self._unsettled if tp.partition not in partitions]
        self._on_revoked(partitions)

    def _assigned(self, assigned: list[TopicPartition]) -> None:
        logger.info(
            "partitions assigned topic=%s partitions=%s",
            self.topic,
            sorted(tp.partition for tp in assigned),
        )
        if assigned:
            self.consumer.pause(*assigned)
            self._unsettled.extend(assigned)
        self._on_assigned({tp.partition for tp in assigned})

    def settle(self) -> None:
        """Refill the windows of newly assigned partitions, then let them fetch.

        Runs on the main thread, where the blocking offset look-ups are allowed; the
        partitions fetch from their committed offsets, so nothing is forecast twice.
        """
        if not self._unsettled:
            return
        pending, self._unsettled = self._unsettled, []
        owned = self.consumer.assignment()
        pending = [tp for tp in pending if tp in owned]
        if self._rebuild is not None and pending:
            committed: dict[int, int] = {}
            for tp in pending:
                offset = self.consumer.committed(tp)
                if offset is not None:  # None: a fresh group, auto_offset_reset decides
                    committed[tp.partition] = offset
            if committed:
                self._rebuild(committed)
        if not self.paused:
            self.consumer.resume(*pending)

    # -- the loop's calls --------------------------------------------------------------------

    def poll(self, timeout_ms: int) -> list[Any]:
        self.settle()
        batches = self.consumer.poll(timeout_ms=timeout_ms)
        self.settle()
        if not batches:
            return []
        for tp, records in batches.items():
            self.positions[tp.partition] = records[-1].offset + 1
        if len(batches) == 1:
            return list(next(iter(batches.values())))
        return [r for records in batches.values() for r in records]

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit ``partition → next offset``; raises the client's error on failure."""
        if not offsets:
            return
        self.consumer.commit(
            {
                TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
                for p, o in offsets.items()
            }
        )

    def assigned_partitions(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment()}

    def pause(self) -> None:
        self.paused = True
        self.consumer.pause(*self.consumer.assignment())

    def resume(self) -> None:
        self.paused = False
        self.consumer.resume(*self.consumer.paused())

    def lag(self) -> dict[tuple[str, int], int]:
        """Records behind the fetch high watermark, per partition polled so far.

        Called from the scrape thread: it only reads cached numbers (the client is not
        thread-safe, so no request is made here). The broker's ListOffsets answer is
        not used because some brokers under-report it; the watermark sent with every
        fetch is right.
        """
        out: dict[tuple[str, int], int] = {}
        for partition, position in list(self.positions.items()):
            high = self.consumer.highwater(TopicPartition(self.topic, partition))
            if high is not None:
                out[(self.topic, partition)] = max(0, int(high) - position)
        return out

    def broker_reachable(self) -> bool:
        coordinator = getattr(self.consumer, "_coordinator", None)
        if coordinator is None:
            return bool(self.consumer.bootstrap_connected())
        return not coordinator.coordinator_unknown()

    def wait_for_topic(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for the consumer's metadata to show the input topic.

        False when it does not show up in time (it may not exist yet: the consumer
        picks it up once it is created). Every metadata call is bounded too, so a
        broker that stops answering cannot hold start-up past its deadline.
        """
        deadline = Deadline(timeout_s)
        while not deadline.expired:
            try:
                if self.topic in bounded(self.consumer.topics, deadline.remaining(), "metadata"):
                    return True
            except (KafkaError, TimeoutError) as exc:
                logger.debug("input topic metadata not available yet: %s", exc)
            time.sleep(min(0.2, deadline.remaining()))
        logger.warning("topic=%s not found yet; waiting for it to be created", self.topic)
        return False

    def close(self) -> None:
        self.consumer.close(autocommit=False)
