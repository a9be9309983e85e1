"""Kafka clients built one way: the shared options, and one error for an unreachable broker."""

from __future__ import annotations

from typing import Any

from kafka.errors import KafkaError

from streamcast.config import KafkaSettings
from streamcast.errors import StartupError


def connect(client_class: Any, kafka: KafkaSettings, **options: Any) -> Any:
    """A kafka-python client with the settings' connection and security options.

    A broker that does not answer within ``startup_timeout_s`` is a StartupError.
    """
    try:
        return client_class(
            **kafka.client_options(),
            bootstrap_timeout_ms=int(kafka.startup_timeout_s * 1000),
            **options,
        )
    except KafkaError as exc:
        raise StartupError.broker_unreachable(
            kafka.bootstrap_servers, kafka.startup_timeout_s, exc
        ) from exc
