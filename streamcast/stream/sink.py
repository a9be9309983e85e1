"""KafkaSink: forecasts and dead letters out, acknowledged before offsets move.

The producer is idempotent with ``acks=all``. ``flush()`` waits for every
acknowledgement and reports any failure as ``DeliveryError``, so the caller
commits consumer offsets only for output the broker really holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from streamcast.config import KafkaSettings
from streamcast.errors import DeliveryError
from streamcast.stream.clients import connect
from streamcast.stream.messages import DeadLetter

logger = logging.getLogger(__name__)


class KafkaSink:
    def __init__(self, kafka: KafkaSettings) -> None:
        self.forecast_topic = kafka.output_topic
        self.dlq_topic = kafka.dlq_topic
        self.delivery_timeout_s = kafka.delivery_timeout_s
        max_request = max(1_048_576, 4 * kafka.max_message_bytes)
        # Room for the record's framing and headers: a dead letter must always fit.
        self.max_dead_letter_bytes = max_request - 64 * 1024
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
        )
        self._pending: list[Any] = []

    def send_forecasts(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        send = self.producer.send
        topic = self.forecast_topic
        self._pending.extend(send(topic, key=k, value=v) for k, v in zip(keys, values, strict=True))

    def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        send, topic, limit = self.producer.send, self.dlq_topic, self.max_dead_letter_bytes
        for dl in letters:
            key, value, headers = dl.record(limit)
            self._pending.append(send(topic, key=key, value=value, headers=headers))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self, timeout_s: float | None = None) -> float:
        """Wait for every acknowledgement; return the time they were all in.

        Raises DeliveryError when any record was refused or timed out: the caller
        must then not commit.
        """
        futures, self._pending = self._pending, []
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

    def close(self, timeout_s: float = 5.0) -> None:
        self.producer.close(timeout=timeout_s)
