"""The daemon's output topics exist before it says ready.

At start-up, before the consumer subscribes, the forecast and dead-letter topics
are looked up with the admin client: one that exists is left as it is (its
partition count is logged), one that does not is created with
``kafka.output_partitions`` / ``kafka.dlq_partitions`` partitions and
``kafka.replication_factor`` replicas, and start-up waits until the broker's
metadata shows it with a leader for every partition. Consumers that only look for
new topics at their next metadata refresh (librdkafka: every 5 minutes) therefore
see the output topics from the first forecast on.

The forecast topic gets, by default, as many partitions as the input topic: the
key is the sensor id on both, so a sensor's readings and forecasts land on
partitions with the same number. Everything here counts against the start-up
deadline (``kafka.startup_timeout_s``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, for_code

from streamcast.config import KafkaSettings
from streamcast.errors import StartupError
from streamcast.stream.clients import Deadline, bounded, connect, current_deadline, out_of_time

logger = logging.getLogger(__name__)

_UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION
_TOPIC_EXISTS = 36  # TOPIC_ALREADY_EXISTS: another replica created it first


@dataclass(frozen=True)
class TopicsReport:
    """What start-up found: partition counts by topic, and which topics it created."""

    input_partitions: int | None  # None: the input topic does not exist (yet)
    partitions: dict[str, int] = field(default_factory=dict)  # output and dead-letter topics
    created: tuple[str, ...] = ()


def ensure_output_topics(kafka: KafkaSettings, deadline: Deadline | None = None) -> TopicsReport:
    """Create the forecast and dead-letter topics when absent; check them when present.

    Raises StartupError when the broker does not answer in time or refuses to
    create a topic (e.g. not authorized: create it ahead of time, then restart).
    """
    deadline = deadline or current_deadline(kafka)
    admin = connect(
        KafkaAdminClient, kafka, deadline=deadline, request_timeout_ms=deadline.remaining_ms(1000)
    )
    try:
        return _ensure(admin, kafka, deadline)
    except TimeoutError as exc:
        raise out_of_time(kafka, f"checking the output topics: {exc}") from exc
    except KafkaError as exc:
        raise StartupError(
            f"cannot check or create the output topics on {kafka.bootstrap_servers}: {exc}"
        ) from exc
    finally:
        admin.close()


def _ensure(admin: Any, kafka: KafkaSettings, deadline: Deadline) -> TopicsReport:
    inp, out, dlq = kafka.input_topic, kafka.output_topic, kafka.dlq_topic
    found = _describe(admin, [inp, out, dlq], deadline)
    input_partitions = found.get(inp)
    wanted = {
        out: kafka.output_partitions or input_partitions or 1,
        dlq: kafka.dlq_partitions,
    }
    missing = {name: n for name, n in wanted.items() if found.get(name) is None}
    created: list[str] = []
    if missing:
        created = _create(admin, kafka, missing, deadline)
        ms = deadline.remaining_ms()
        bounded(
            lambda: admin.wait_for_topics(list(missing), timeout_ms=ms),
            deadline.remaining(),
            "waiting for the new topics' metadata",
        )
        found.update(_describe(admin, list(missing), deadline))
    partitions: dict[str, int] = {}
    for name in wanted:
        have = found.get(name)
        if have is None:  # wait_for_topics would have raised; keep the report honest anyway
            raise StartupError(f"topic {name!r} still missing after it was created")
        partitions[name] = have
        if name in created:
            logger.info(
                "created topic=%s partitions=%d replication_factor=%s",
                name,
                have,
                "broker default" if kafka.replication_factor == -1 else kafka.replication_factor,
            )
            continue
        logger.info("topic=%s exists partitions=%d (left as it is)", name, have)
        configured = kafka.output_partitions if name == out else kafka.dlq_partitions
        if name == out and configured is None:
            configured = input_partitions
        if configured is not None and configured != have:
            logger.warning(
                "topic=%s has %d partitions, not the %d start-up would create it with; "
                "an existing topic is never changed",
                name,
                have,
                configured,
            )
    if input_partitions is None:
        logger.warning("input topic=%s does not exist yet; waiting for it to be created", inp)
    return TopicsReport(input_partitions, partitions, tuple(created))


def _describe(admin: Any, names: list[str], deadline: Deadline) -> dict[str, int | None]:
    """name → partition count, None for a topic that does not exist."""
    described = bounded(
        lambda: admin.describe_topics(names), deadline.remaining(), "describing topics"
    )
    out: dict[str, int | None] = {name: None for name in names}
    for topic in described:
        code = int(topic.get("error_code") or 0)
        name = topic.get("name")
        if code == _UNKNOWN_TOPIC or name not in out:
            continue
        if code:
            raise for_code(code)(f"describing topic {name!r}")
        out[name] = len(topic.get("partitions") or [])
    return out


def _create(
    admin: Any, kafka: KafkaSettings, topics: dict[str, int], deadline: Deadline
) -> list[str]:
    """Create ``topics`` (name → partitions); the names this call created."""
    request = {
        name: {"num_partitions": n, "replication_factor": kafka.replication_factor}
        for name, n in topics.items()
    }
    ms = deadline.remaining_ms()
    response = bounded(
        lambda: admin.create_topics(request, timeout_ms=ms, raise_errors=False),
        deadline.remaining(),
        "creating topics",
    )
    created = []
    for result in response.get("topics", []):
        name, code = result.get("name"), int(result.get("error_code") or 0)
        if code == 0:
            created.append(name)
        elif code != _TOPIC_EXISTS:
            error = for_code(code).__name__
            detail = result.get("error_message") or ""
            raise StartupError(
                f"cannot create topic {name!r} ({topics[name]} partitions, replication factor "
                f"{kafka.replication_factor}): {error} {detail}".rstrip()
                + "; create it ahead of time or let this client create topics"
            )
    return created
