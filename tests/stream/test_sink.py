"""KafkaSink in exactly-once mode, against a recording producer: one transaction per
delivery cycle, offsets inside it, aborts on failure and on revocation."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from streamcast.config import KafkaSettings
from streamcast.errors import DeliveryError, StartupError
from streamcast.stream import sink as sink_module
from streamcast.stream.messages import DeadLetter
from streamcast.stream.offsets import Offsets
from streamcast.stream.sink import KafkaSink, transactional_id


class _Future:
    is_done = True
    exception = None

    def failed(self) -> bool:
        return False


class FakeProducer:
    """Records every call; ``fail`` names a method that raises KafkaError."""

    instances: list[FakeProducer] = []
    fail: set[str] = set()

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.calls: list[tuple[Any, ...]] = []
        FakeProducer.instances.append(self)

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise KafkaError(f"{name} refused")

    def init_transactions(self) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self._call("begin")

    def send(self, topic: str, key: Any = None, value: Any = None, headers: Any = None) -> _Future:
        self._call("send", topic)
        return _Future()

    def flush(self, timeout: float | None = None) -> None:
        self._call("flush")

    def send_offsets_to_transaction(self, offsets: Any, group: Any) -> None:
        self._call("send_offsets", offsets, group)

    def commit_transaction(self) -> None:
        self._call("commit")

    def abort_transaction(self) -> None:
        self._call("abort")

    def close(self, timeout: float | None = None) -> None:
        self._call("close")

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    monkeypatch.setattr(sink_module, "KafkaProducer", FakeProducer)
    FakeProducer.instances = []
    FakeProducer.fail = set()
    return FakeProducer


def _sink(offsets: Offsets | None = None, **kafka: Any) -> tuple[KafkaSink, FakeProducer]:
    settings = KafkaSettings(exactly_once=True, client_id="sc", group_id="g", **kafka)
    sink = KafkaSink(settings, offsets=offsets)
    return sink, FakeProducer.instances[-1]


def _letter() -> DeadLetter:
    return DeadLetter(b"s1", b"{", "bad_json", "cut", "in", 0, 7)


def test_at_least_once_producer_is_not_transactional(producer: type[FakeProducer]) -> None:
    sink = KafkaSink(KafkaSettings())
    (made,) = producer.instances
    assert not sink.transactional and sink.transactional_id is None
    assert "transactional_id" not in made.options
    assert made.calls == []


def test_transactional_id_is_unique_per_process_unless_configured() -> None:
    first = transactional_id(KafkaSettings(client_id="sc", group_id="g"))
    second = transactional_id(KafkaSettings(client_id="sc", group_id="g"))
    prefix = f"sc.g.{socket.gethostname()}.{os.getpid()}."
    assert first.startswith(prefix) and second.startswith(prefix) and first != second
    assert transactional_id(KafkaSettings(transactional_id="sc-0")) == "sc-0"


def test_start_up_registers_the_transactional_id(producer: type[FakeProducer]) -> None:
    sink, made = _sink(transactional_id="sc-0")
    assert sink.transactional
    assert made.options["transactional_id"] == "sc-0"
    assert made.options["enable_idempotence"] is True and made.options["acks"] == "all"
    assert made.names() == ["init_transactions"]


def test_init_transactions_failing_is_a_startup_error(producer: type[FakeProducer]) -> None:
    producer.fail = {"init_transactions"}
    with pytest.raises(StartupError, match="transactional_id 'sc-0'"):
        _sink(transactional_id="sc-0")
    assert producer.instances[-1].names() == ["init_transactions", "close"]


def test_one_transaction_carries_the_cycle_and_its_offsets(producer: type[FakeProducer]) -> None:
    sink, made = _sink()
    sink.send_forecasts([b"s1", b"s2"], [b"{}", b"{}"])
    sink.send_dead_letters([_letter()])
    sink.commit("in", {0: 5, 2: 9}, "group-metadata")
    assert made.names() == [
        "init_transactions",
        "begin",
        "send",
        "send",
        "send",
        "flush",
        "send_offsets",
        "commit",
    ]
    offsets, group = made.calls[6][1:]
    assert offsets == {
        TopicPartition("in", 0): OffsetAndMetadata(5, "", -1),
        TopicPartition("in", 2): OffsetAndMetadata(9, "", -1),
    }
    assert group == "group-metadata"
    sink.send_forecasts([b"s1"], [b"{}"])  # the next cycle opens the next transaction
    assert made.names()[-2:] == ["begin", "send"]


def test_nothing_sent_and_nothing_to_commit_is_no_transaction(
    producer: type[FakeProducer],
) -> None:
    sink, made = _sink()
    sink.commit("in", {}, "g")
    assert made.names() == ["init_transactions"]
    sink.commit("in", {1: 3}, "g")  # offsets only (readings absorbed without output)
    assert made.names()[1:] == ["begin", "send_offsets", "commit"]


@pytest.mark.parametrize("step", ["flush", "send_offsets", "commit"])
def test_a_transaction_that_cannot_commit_is_aborted(
    producer: type[FakeProducer], step: str
) -> None:
    sink, made = _sink()
    sink.send_forecasts([b"s1"], [b"{}"])
    producer.fail = {step}
    with pytest.raises(DeliveryError, match="not committed"):
        sink.commit("in", {0: 1}, "g")
    assert made.names()[-1] == "abort"
    assert "commit" not in made.names() or step == "commit"
    sink.close()
    assert made.names()[-1] == "close" and made.names().count("abort") == 1


def test_a_commit_that_does_not_answer_in_time_is_a_delivery_error(
    producer: type[FakeProducer], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, made = _sink()
    sink.send_forecasts([b"s1"], [b"{}"])

    monkeypatch.setattr(made, "commit_transaction", lambda: time.sleep(1.0))  # no answer
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="commit_transaction did not answer"):
        sink.commit("in", {0: 1}, "g", timeout_s=0.2)
    assert time.monotonic() - started < 0.9
    assert made.names()[-1] == "abort"


def test_revoked_partitions_abort_the_open_transaction(producer: type[FakeProducer]) -> None:
    offsets = Offsets()
    sink, made = _sink(offsets)
    sink.send_forecasts([b"s1"], [b"{}"])
    offsets.forget({0, 1, 2})  # a rebalance took every partition
    sink.send_forecasts([b"s2"], [b"{}"])
    assert made.names()[1:] == ["begin", "send", "abort", "begin", "send"]
    assert sink.rebalance_aborts == 1
    sink.commit("in", {}, "g")
    assert made.names()[-1] == "commit"


def test_revocation_that_keeps_partitions_with_work_is_a_delivery_error(
    producer: type[FakeProducer],
) -> None:
    offsets = Offsets()
    offsets.processed = {0: 10, 1: 20}
    sink, made = _sink(offsets)
    sink.send_forecasts([b"s1"], [b"{}"])
    offsets.forget({1})  # partition 0 stays, and its output is in the open transaction
    with pytest.raises(DeliveryError, match=r"\[0\] were kept"):
        sink.commit("in", offsets.to_commit({}), "g")
    assert made.names()[-1] == "abort"


def test_close_aborts_a_transaction_left_open(producer: type[FakeProducer]) -> None:
    sink, made = _sink()
    sink.send_forecasts([b"s1"], [b"{}"])
    sink.close()
    assert made.names()[-2:] == ["abort", "close"]


def test_offsets_count_revocations_and_what_stayed() -> None:
    offsets = Offsets()
    offsets.processed = {0: 1, 1: 2, 2: 3}
    offsets.forget(set())
    assert offsets.revocations == 0
    offsets.forget({1})
    assert offsets.revocations == 1 and offsets.retained == {0, 2}
    offsets.forget({0, 2})
    assert offsets.revocations == 2 and offsets.retained == frozenset()
