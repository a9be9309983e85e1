"""Output topics at start-up (``streamcast.stream.topics``) and the start-up deadline
(``streamcast.stream.clients``), against a real embedded broker."""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Iterator

import pytest
from kafka.admin import KafkaAdminClient

from streamcast.config import KafkaSettings, load_settings
from streamcast.errors import ConfigError, StartupError
from streamcast.sim.broker import EmbeddedBroker, free_port
from streamcast.stream.clients import Deadline, bounded, connect, startup_deadline
from streamcast.stream.topics import ensure_output_topics


@pytest.fixture
def refused_sockets() -> Iterator[None]:
    """kafka-python 3.0.12 does not close the socket of a refused connection attempt
    (``kafka.net.inet``); collect those here, where they are expected."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


def _kafka(broker: EmbeddedBroker, *, inp: int | None = 3, **fields: object) -> KafkaSettings:
    """Settings with fresh topic names; the input topic created with ``inp`` partitions."""
    tag = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        input_topic=f"in-{tag}",
        output_topic=f"out-{tag}",
        dlq_topic=f"dlq-{tag}",
        startup_timeout_s=10,
        **fields,  # type: ignore[arg-type]
    )
    if inp is not None:
        _create(broker, {kafka.input_topic: inp})
    return kafka


def _create(broker: EmbeddedBroker, topics: dict[str, int]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics(
            {name: {"num_partitions": n, "replication_factor": 1} for name, n in topics.items()}
        )
    finally:
        admin.close()


def _partitions(broker: EmbeddedBroker, *names: str) -> dict[str, int]:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        return {
            t["name"]: len(t["partitions"])
            for t in admin.describe_topics(list(names))
            if t["error_code"] == 0
        }
    finally:
        admin.close()


@pytest.mark.integration
def test_missing_output_topics_are_created_like_the_input_topic(broker: EmbeddedBroker) -> None:
    kafka = _kafka(broker, inp=3)
    report = ensure_output_topics(kafka)
    assert report.input_partitions == 3
    assert report.partitions == {kafka.output_topic: 3, kafka.dlq_topic: 1}
    assert set(report.created) == {kafka.output_topic, kafka.dlq_topic}
    assert _partitions(broker, kafka.output_topic, kafka.dlq_topic) == report.partitions


@pytest.mark.integration
def test_configured_partition_counts_and_broker_default_replicas(broker: EmbeddedBroker) -> None:
    kafka = _kafka(broker, inp=3, output_partitions=5, dlq_partitions=2, replication_factor=-1)
    report = ensure_output_topics(kafka)
    assert report.partitions == {kafka.output_topic: 5, kafka.dlq_topic: 2}
    assert _partitions(broker, kafka.output_topic, kafka.dlq_topic) == report.partitions


@pytest.mark.integration
def test_without_an_input_topic_the_forecast_topic_gets_one_partition(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = _kafka(broker, inp=None)
    with caplog.at_level(logging.WARNING, logger="streamcast.stream.topics"):
        report = ensure_output_topics(kafka)
    assert report.input_partitions is None
    assert report.partitions == {kafka.output_topic: 1, kafka.dlq_topic: 1}
    assert f"input topic={kafka.input_topic} does not exist yet" in caplog.text


@pytest.mark.integration
def test_existing_topics_are_left_as_they_are_and_logged(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = _kafka(broker, inp=3, dlq_partitions=4)
    _create(broker, {kafka.output_topic: 2, kafka.dlq_topic: 1})
    with caplog.at_level(logging.INFO, logger="streamcast.stream.topics"):
        report = ensure_output_topics(kafka)
        again = ensure_output_topics(kafka)  # a restart: nothing changes
    assert report.created == () == again.created
    assert report.partitions == {kafka.output_topic: 2, kafka.dlq_topic: 1} == again.partitions
    assert _partitions(broker, kafka.output_topic, kafka.dlq_topic) == report.partitions
    assert f"topic={kafka.output_topic} exists partitions=2 (left as it is)" in caplog.text
    # Differs from what start-up would create (as many as the input, 3; dlq_partitions, 4).
    assert f"topic={kafka.output_topic} has 2 partitions, not the 3" in caplog.text
    assert f"topic={kafka.dlq_topic} has 1 partitions, not the 4" in caplog.text


@pytest.mark.integration
def test_a_topic_created_meanwhile_by_another_replica_counts_as_existing(
    broker: EmbeddedBroker,
) -> None:
    kafka = _kafka(broker, inp=2)
    first = ensure_output_topics(kafka)
    second = ensure_output_topics(kafka)
    assert set(first.created) == {kafka.output_topic, kafka.dlq_topic}
    assert second.created == ()
    assert first.partitions == second.partitions == {kafka.output_topic: 2, kafka.dlq_topic: 1}


@pytest.mark.integration
@pytest.mark.usefixtures("refused_sockets")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see the fixture
def test_unreachable_broker_is_a_startup_error_within_the_deadline() -> None:
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", startup_timeout_s=1.5)
    before = set(threading.enumerate())
    started = time.monotonic()
    with pytest.raises(StartupError, match=r"unreachable .* within 1\.5s"):
        ensure_output_topics(kafka)
    assert time.monotonic() - started < 3.5
    left = [t for t in set(threading.enumerate()) - before if t.name.startswith("kafka-io")]
    assert not left, "the half-built client's IO thread still runs"


@pytest.mark.integration
@pytest.mark.usefixtures("refused_sockets")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see the fixture
def test_one_deadline_bounds_every_client_built_inside_it() -> None:
    """The second client gets what the first left, not a fresh startup_timeout_s."""
    from kafka import KafkaProducer

    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", startup_timeout_s=30)
    started = time.monotonic()
    with startup_deadline(1.0):
        with pytest.raises(StartupError, match="unreachable"):
            connect(KafkaProducer, kafka)
        with pytest.raises(StartupError, match="did not finish within"):
            connect(KafkaProducer, kafka)
    assert time.monotonic() - started < 3


def test_deadline_counts_down_and_never_goes_negative() -> None:
    d = Deadline(0.05)
    assert 0 < d.remaining() <= 0.05 and not d.expired
    time.sleep(0.06)
    assert d.remaining() == 0.0 and d.expired
    assert d.remaining_ms(floor_ms=7) == 7


def test_bounded_returns_raises_and_gives_up() -> None:
    assert bounded(lambda: 42, 1.0, "answer") == 42
    with pytest.raises(ZeroDivisionError):
        bounded(lambda: 1 / 0, 1.0, "division")
    with pytest.raises(TimeoutError, match="nap did not answer"):
        bounded(lambda: time.sleep(1.0), 0.05, "nap")


def test_replication_factor_is_a_count_or_minus_one() -> None:
    for replicas in (-1, 1, 3):
        kafka = load_settings(environ={}, kafka={"replication_factor": replicas}).kafka
        assert kafka.replication_factor == replicas
    with pytest.raises(ConfigError, match=r"kafka\.replication_factor"):
        load_settings(environ={}, kafka={"replication_factor": 0})
    with pytest.raises(ConfigError, match=r"kafka\.output_partitions"):
        load_settings(environ={"STREAMCAST_KAFKA__OUTPUT_PARTITIONS": "0"})
