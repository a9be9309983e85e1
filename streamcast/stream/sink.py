"""KafkaSink: forecasts and dead letters out, acknowledged before offsets move.

The producer is idempotent with ``acks=all``. ``flush()`` waits for every
acknowledgement and reports any failure as ``DeliveryError``, so the caller
commits consumer offsets only for output the broker really holds (at-least-once).

Exactly-once (``kafka.exactly_once``) makes the producer transactional. A
transaction opens with the first record of a delivery cycle; ``commit()`` flushes
it, adds the input offsets the cycle covers (``send_offsets_to_transaction`` with
the consumer's group metadata, so the broker can fence a stale member, KIP-447)
and commits it: forecasts, dead letters and offsets become visible together, or
not at all. Anything that stops that is a ``DeliveryError`` and the transaction is
aborted; a restart redoes the work from the last committed offsets.

Rebalances happen only inside the consumer's poll, and the loop commits each
transaction before it polls again, so partitions are never revoked under an open
transaction. Should it happen anyway, the transaction is aborted before anything
else is sent: the revoked partitions were dropped (windows, batcher, offsets) and
are re-read from their committed offsets by their next owner, so output derived
from them must not become visible. (If partitions kept across that rebalance had
output in it too, that is a DeliveryError: their offsets would skip it.)

The transactional id (see ``transactional_id``) is, by default, unique per
process: ``CLIENT_ID.GROUP_ID.HOSTNAME.PID.RANDOM``. Two live replicas can then
never fence each other, and stale members are fenced through the group
generation instead. The price: a process that dies mid-transaction leaves it open
until the broker's transaction timeout (``transaction_timeout_ms``, 60 s) aborts
it, and read_committed consumers of the partitions it wrote wait that long. A
stable ``kafka.transactional_id`` per replica (unique among the running ones)
lets the next start of that replica abort it at once.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from streamcast.config import KafkaSettings
from streamcast.errors import DeliveryError, StartupError
from streamcast.stream.clients import Deadline, bounded, close_producer, connect, current_deadline
from streamcast.stream.messages import DeadLetter
from streamcast.stream.offsets import Offsets

logger = logging.getLogger(__name__)


def transactional_id(kafka: KafkaSettings) -> str:
    """``kafka.transactional_id``, or ``CLIENT_ID.GROUP_ID.HOSTNAME.PID.RANDOM``.

    The random part keeps it unique per process where host name and pid repeat
    (a restarted container is pid 1 on the same host name again).
    """
    if kafka.transactional_id:
        return kafka.transactional_id
    host = socket.gethostname() or "host"
    return f"{kafka.client_id}.{kafka.group_id}.{host}.{os.getpid()}.{secrets.token_hex(4)}"


class KafkaSink:
    def __init__(self, kafka: KafkaSettings, *, offsets: Offsets | None = None) -> None:
        self.forecast_topic = kafka.output_topic
        self.dlq_topic = kafka.dlq_topic
        self.delivery_timeout_s = kafka.delivery_timeout_s
        max_request = max(1_048_576, 4 * kafka.max_message_bytes)
        # Room for the record's framing and headers: a dead letter must always fit.
        self.max_dead_letter_bytes = max_request - 64 * 1024
        #: The producer's transactional id in exactly-once mode, else None.
        self.transactional_id = transactional_id(kafka) if kafka.exactly_once else None
        extra: dict[str, Any] = {}
        if self.transactional_id is not None:
            extra["transactional_id"] = self.transactional_id
        self.producer = connect(
            KafkaProducer,
            kafka,
            acks="all",
            enable_idempotence=True,
            linger_ms=kafka.linger_ms,
            compression_type=None if kafka.compression_type == "none" else kafka.compression_type,
            max_request_size=max_request,
            # Forecasts are ~2.5 KB each and come in bursts of a batch: big
            # producer batches compress better and need far fewer requests.
            batch_size=kafka.producer_batch_bytes,
            **extra,
        )
        self._pending: list[Any] = []
        #: Bytes of keys and values sent since the last flush (what backpressure bounds).
        self.pending_bytes = 0
        # Exactly-once state: the open transaction, and the revocation count it began under.
        self._offsets = offsets
        self._in_transaction = False
        self._began_at_revocation = 0
        #: Transactions aborted because their partitions were revoked (a rebalance).
        self.rebalance_aborts = 0
        if self.transactional_id is not None:
            self._init_transactions(kafka)

    @property
    def transactional(self) -> bool:
        """Exactly-once mode: deliver with ``commit()``, not ``flush()`` and a consumer commit."""
        return self.transactional_id is not None

    def _init_transactions(self, kafka: KafkaSettings) -> None:
        """Register the transactional id (fencing an earlier producer with the same id and
        aborting its open transaction), within what is left of the start-up deadline."""
        deadline = current_deadline(kafka)
        try:
            bounded(self.producer.init_transactions, deadline.remaining(), "init_transactions")
        except (KafkaError, TimeoutError) as exc:
            close_producer(functools.partial(self.producer.close, timeout=1.0), self.producer)
            raise StartupError(
                f"kafka.exactly_once: could not initialise transactions for transactional_id "
                f"{self.transactional_id!r} within kafka.startup_timeout_s="
                f"{kafka.startup_timeout_s:g}s (broker {kafka.bootstrap_servers}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        logger.info("exactly-once delivery: transactional_id=%s", self.transactional_id)

    # -- sending ---------------------------------------------------------------------------------

    def send_forecasts(self, keys: Sequence[bytes], values: Sequence[bytes]) -> Any:
        """Send; return the last record's future (None when there were none)."""
        if self.transactional_id is not None:
            self._open_transaction()
        send = self.producer.send
        topic = self.forecast_topic
        futures = [send(topic, key=k, value=v) for k, v in zip(keys, values, strict=True)]
        self._pending.extend(futures)
        self.pending_bytes += sum(map(len, keys)) + sum(map(len, values))
        return futures[-1] if futures else None

    def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if self.transactional_id is not None and letters:
            self._open_transaction()
        send, topic, limit = self.producer.send, self.dlq_topic, self.max_dead_letter_bytes
        for dl in letters:
            key, value, headers = dl.record(limit)
            self._pending.append(send(topic, key=key, value=value, headers=headers))
            self.pending_bytes += len(key or b"") + len(value or b"")

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self, timeout_s: float | None = None) -> float:
        """Wait for every acknowledgement; return the time they were all in.

        Raises DeliveryError when any record was refused or timed out: the caller
        must then not commit.
        """
        futures, self._pending = self._pending, []
        self.pending_bytes = 0
        if futures:
            timeout = self.delivery_timeout_s if timeout_s is None else timeout_s
            try:
                self.producer.flush(timeout=timeout)
            except KafkaError as exc:
                raise DeliveryError(f"producer flush failed: {exc}") from exc
            failed = [f for f in futures if not f.is_done or f.failed()]
            if failed:
                first = failed[0].exception if failed[0].is_done else "not acknowledged in time"
                raise DeliveryError(
                    f"{len(failed)} of {len(futures)} records not acknowledged: {first}"
                )
        return time.time()

    # -- exactly-once ----------------------------------------------------------------------------

    def commit(
        self,
        topic: str,
        offsets: Mapping[int, int],
        group_metadata: Any,
        timeout_s: float | None = None,
    ) -> float:
        """Commit the open transaction with ``offsets`` (``partition → next offset`` of
        ``topic``) for the consumer group in ``group_metadata``; return when it was done.

        Raises DeliveryError when the transaction could not be committed; it is aborted
        then (best effort), so nothing of it becomes visible and no offset moves.
        """
        self._abort_if_revoked()
        if not self._in_transaction and not offsets:
            return time.time()  # nothing sent, nothing to commit
        self._open_transaction()
        deadline = Deadline(self.delivery_timeout_s if timeout_s is None else timeout_s)
        try:
            self.flush(deadline.remaining())
            if offsets:
                committed = {
                    TopicPartition(topic, p): OffsetAndMetadata(o, "", -1)
                    for p, o in offsets.items()
                }
                send_offsets = functools.partial(
                    self.producer.send_offsets_to_transaction, committed, group_metadata
                )
                bounded(send_offsets, deadline.remaining(), "send_offsets_to_transaction")
            bounded(self.producer.commit_transaction, deadline.remaining(), "commit_transaction")
        except (KafkaError, TimeoutError, DeliveryError) as exc:
            self._abandon(exc)
            raise DeliveryError(f"transaction not committed (aborted): {exc}") from exc
        self._in_transaction = False
        return time.time()

    def _open_transaction(self) -> None:
        self._abort_if_revoked()
        if self._in_transaction:
            return
        try:
            self.producer.begin_transaction()
        except KafkaError as exc:
            raise DeliveryError(f"cannot begin a transaction: {exc}") from exc
        self._in_transaction = True
        self._began_at_revocation = self._revocations()

    def _revocations(self) -> int:
        return self._offsets.revocations if self._offsets is not None else 0

    def _abort_if_revoked(self) -> None:
        """Abort the open transaction if partitions were revoked since it began.

        Its records derive from readings of the revoked partitions, whose offsets
        were never committed: their next owner forecasts them again from the
        committed offsets, so these records must never become visible. A partition
        kept across the rebalance with processed work would lose output (its offsets
        would move past forecasts that were aborted), so that is a DeliveryError.
        """
        if not self._in_transaction or self._revocations() == self._began_at_revocation:
            return
        retained = self._offsets.retained if self._offsets is not None else frozenset()
        if retained:
            self._abandon(RuntimeError("rebalance"))
            raise DeliveryError(
                f"partitions {sorted(retained)} were kept across a rebalance, but the "
                "transaction holding their output had to be aborted"
            )
        records = len(self._pending)
        self._pending = []
        self.pending_bytes = 0
        self._in_transaction = False
        try:
            bounded(self.producer.abort_transaction, self.delivery_timeout_s, "abort_transaction")
        except (KafkaError, TimeoutError) as exc:
            raise DeliveryError(f"cannot abort the transaction after a rebalance: {exc}") from exc
        self.rebalance_aborts += 1
        logger.info(
            "partitions revoked while a transaction was open: aborted it (%d records); "
            "the partitions are read again from their committed offsets",
            records,
        )

    def _abandon(self, why: BaseException, timeout_s: float = 5.0) -> None:
        """Abort the open transaction, best effort (its producer may be fenced or gone)."""
        self._pending = []
        self.pending_bytes = 0
        if not self._in_transaction:
            return
        self._in_transaction = False
        try:
            bounded(self.producer.abort_transaction, timeout_s, "abort_transaction")
        except (KafkaError, TimeoutError) as exc:
            logger.warning(
                "could not abort the transaction (%s): %s; the broker aborts it when it "
                "times out, or when this transactional_id starts again",
                why,
                exc,
            )

    def close(self, timeout_s: float = 5.0) -> None:
        if self._in_transaction:  # never committed: do not leave it to the broker's timeout
            self._abandon(RuntimeError("closing"), timeout_s)
        self.producer.close(timeout=timeout_s)
