"""Exactly-once mode (``kafka.exactly_once``) against real ``streamcast run`` processes:
SIGKILL twice while forecasting, restart, and every forecast is committed once.

What a read_committed consumer sees is checked twice:

- through the log itself: every record batch with its transaction markers, applied as
  a broker's aborted-transaction index would (``TransactionLog``): committed records
  count, aborted ones and ones still open do not. This is the exactly-once claim;
- through kafka-python's own ``KafkaConsumer(isolation_level="read_committed")``. The
  embedded broker (Tansu 0.6) withholds open transactions from it (the last stable
  offset works) but sends no aborted-transaction list with its fetches, so it also
  returns records of aborted transactions; nothing else. The test checks exactly that
  (nothing missing, and nothing beyond the committed and the aborted records), so a
  broker that filters aborted records passes it with zero duplicates.

Tansu has no transaction timeout either: a transaction left open by a killed process
stays open, holding read_committed consumers at the last stable offset, until a
producer with the same transactional id starts. So these runs use a stable
``kafka.transactional_id``, as one replica restarted by systemd or Kubernetes would
be configured; with the default (unique per process) a Kafka broker aborts the
orphan after ``transaction_timeout_ms`` instead.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer
from kafka.net.compat import KafkaNetClient
from kafka.protocol.consumer.fetch import FetchRequest
from kafka.record import MemoryRecords

from streamcast.sim.broker import EmbeddedBroker

from .conftest import (
    SPEC,
    Topics,
    fleet_readings,
    fresh_topics,
    produce_readings,
    settings_for,
    spawn_run,
)
from .proxy import TcpProxy

pytestmark = pytest.mark.integration

SENSORS = 6
STEPS = SPEC.num_steps + 1 + 500  # 501 forecasts per sensor
EXACTLY_ONCE = {"STREAMCAST_KAFKA__EXACTLY_ONCE": "true"}
# The proxy holds each AddOffsetsToTxn request (API key 25) this long. The daemon sends it
# after its records were acknowledged and before it asks for the commit, so every
# transaction stays open with its records for a while: a kill in that time lands
# mid-transaction, whatever the machine's speed, and the transaction must be aborted.
ADD_OFFSETS_TO_TXN = 25
HOLD_S = 0.2

Key = tuple[str, float]  # (sensor, ts): one forecast


@dataclass
class TransactionLog:
    """A topic's record batches read raw (read_uncommitted, control batches included),
    with every transaction marker applied: what read_committed means.

    Reads on from where it stopped at each ``refresh``. Uses kafka-python's network
    client and record parser directly, because its consumer hides control batches.
    """

    bootstrap: str
    topic: str
    partitions: list[int]
    committed: list[Key] = field(default_factory=list)
    aborted: list[Key] = field(default_factory=list)
    _next: dict[int, int] = field(default_factory=dict)
    _open: dict[tuple[int, int], list[Key]] = field(default_factory=dict)
    _client: Any = None

    def open_records(self) -> int:
        """Records of transactions with no marker yet."""
        return sum(len(v) for v in self._open.values())

    def refresh(self) -> TransactionLog:
        if self._client is None:
            self._client = KafkaNetClient(bootstrap_servers=[self.bootstrap])
            self._client.check_version()
        (broker,) = self._client.cluster.brokers()  # the embedded broker is one node
        for p in self.partitions:
            while self._fetch(broker.node_id, p):
                pass
        return self

    def _fetch(self, node: int, partition: int) -> bool:
        offset = self._next.get(partition, 0)
        request = FetchRequest(
            version=4,
            replica_id=-1,
            max_wait_ms=50,  # the embedded broker answers max_wait_ms=0 with no data at all
            min_bytes=1,
            max_bytes=512 << 10,  # kafka-python's network client refuses frames over 1 MiB
            isolation_level=0,  # read_uncommitted: everything, open transactions too
            topics=[
                FetchRequest.FetchTopic(
                    topic=self.topic,
                    partitions=[
                        FetchRequest.FetchTopic.FetchPartition(
                            partition=partition, fetch_offset=offset, partition_max_bytes=512 << 10
                        )
                    ],
                )
            ],
        )
        response = self._client.send_and_receive(node, request)
        data = [pd for t in response.responses for pd in t.partitions]
        if not data or not data[0].records:
            return False  # nothing (yet) at this offset
        records = MemoryRecords(data[0].records)
        while (batch := records.next_batch()) is not None:
            self._next[partition] = batch.next_offset
            txn = (partition, batch.producer_id)
            if batch.is_control_batch:
                (record,) = list(batch)
                _version, kind = struct.unpack(">hh", record.key)  # 0 abort, 1 commit
                done = self._open.pop(txn, [])
                (self.committed if kind == 1 else self.aborted).extend(done)
                continue
            keys = [_key(r.value) for r in batch]
            if batch.is_transactional:
                self._open.setdefault(txn, []).extend(keys)
            else:
                self.committed.extend(keys)
        return self._next.get(partition, 0) < data[0].high_watermark  # more to read

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _key(value: bytes) -> Key:
    doc = orjson.loads(value)
    return (doc["sensor"], doc["ts"])


def _read_committed(
    bootstrap: str, topic: str, until: Callable[[list[Key]], bool]
) -> tuple[list[Key], dict[int, tuple[int, int | None]]]:
    """The forecasts topic through kafka-python's read_committed consumer; and where it
    stopped, per partition: (position, high watermark)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
    )
    keys: list[Key] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and not until(keys):
            for batch in consumer.poll(timeout_ms=200).values():
                keys.extend(_key(r.value) for r in batch)
        where = {
            tp.partition: (consumer.position(tp), consumer.highwater(tp))
            for tp in consumer.assignment()
        }
    finally:
        consumer.close()
    return keys, where


def _wait_committed(
    log: TransactionLog,
    at_least: int,
    proc: subprocess.Popen[bytes],
    logfile: Path,
    *,
    mid_transaction_until: int = 0,
) -> int:
    """Until ``at_least`` distinct forecasts are committed; up to ``mid_transaction_until``
    also until a transaction is caught open with records in it (the moment to kill)."""
    deadline = time.monotonic() + 90  # model loading and the group join come first
    while time.monotonic() < deadline:
        done = len(set(log.refresh().committed))
        if done >= at_least and (log.open_records() > 0 or done >= mid_transaction_until):
            return done
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}: {logfile.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{done} forecasts committed, waited for {at_least}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_sigkill_twice_then_restart_commits_every_forecast_once(
    proxied: tuple[EmbeddedBroker, TcpProxy], registry: Path, tmp_path: Path
) -> None:
    broker, proxy = proxied
    proxy.delay = (ADD_OFFSETS_TO_TXN, HOLD_S)
    with fresh_topics(broker) as topics:
        _sigkill_twice_then_restart(broker, proxy, topics, registry, tmp_path)


def _sigkill_twice_then_restart(
    broker: EmbeddedBroker, proxy: TcpProxy, topics: Topics, registry: Path, tmp_path: Path
) -> None:
    readings = fleet_readings(SENSORS, STEPS, seed=11)
    produce_readings(broker, topics.readings, readings)
    want = {(s, ts) for i, (s, ts, _) in enumerate(readings) if i // SENSORS >= SPEC.num_steps}
    settings = settings_for(
        broker,
        topics,
        registry,
        kafka={
            "bootstrap_servers": proxy.address,
            "max_poll_records": 200,
            "transactional_id": f"streamcast-eos-{uuid.uuid4().hex[:6]}",
        },
        inference={"max_batch": 16},
    )
    logfile = tmp_path / "daemon.log"
    log = TransactionLog(broker.bootstrap, topics.forecasts, [0, 1, 2])
    started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        kills: list[tuple[int, int]] = []  # (forecasts committed, records left open)
        # SIGKILL while forecasting, once some forecasts are committed: twice, and again
        # (up to five times) until a kill has caught a transaction with records in it.
        for share in (0.15, 0.4, 0.55, 0.7, 0.85):
            if len(kills) >= 2 and any(left_open for _, left_open in kills):
                break
            proc = spawn_run(settings, logfile, EXACTLY_ONCE)
            procs.append(proc)
            at_least = max(int(share * len(want)), len(set(log.committed)) + 1)
            done = _wait_committed(
                log, at_least, proc, logfile, mid_transaction_until=at_least + len(want) // 10
            )
            _kill(proc)
            kills.append((done, log.refresh().open_records()))
            assert done < len(want), "the daemon finished before it could be killed"
        proc = spawn_run(settings, logfile, EXACTLY_ONCE)
        procs.append(proc)
        _wait_committed(log, len(want), proc, logfile)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, logfile.read_text()[-3000:]
        log.refresh()
    finally:
        log.close()
        for p in procs:
            if p.poll() is None:
                _kill(p)
    elapsed = time.monotonic() - started

    seen = Counter(log.committed)
    missing = len(want - set(seen))
    duplicates = sum(n - 1 for n in seen.values())
    unexpected = len(set(seen) - want)
    stock_keys, stopped_at = _read_committed(
        broker.bootstrap, topics.forecasts, lambda k: len(k) >= len(seen) + len(log.aborted)
    )
    stock = Counter(stock_keys)
    stock_missing = len(want - set(stock))
    stock_duplicates = sum(n - 1 for n in stock.values())
    for i, (done, open_records) in enumerate(kills, 1):
        print(
            f"SIGKILL {i}: {done} forecasts committed, {open_records} records in open transactions"
        )
    print(
        f"exactly-once, {len(want)} forecasts expected, {elapsed:.0f} s: read_committed (markers "
        f"applied): {missing} missing, {duplicates} duplicates, {unexpected} unexpected; "
        f"{len(log.aborted)} records aborted, {log.open_records()} still open"
    )
    print(
        f"kafka-python read_committed consumer on the embedded broker: {stock_missing} missing, "
        f"{stock_duplicates} duplicates (the broker does not report aborted transactions)"
    )
    assert any(left_open for _, left_open in kills), "no SIGKILL caught a transaction open"
    assert (missing, duplicates, unexpected) == (0, 0, 0)
    assert log.open_records() == 0, "every transaction ended, committed or aborted"
    assert stock_missing == 0, f"read_committed stopped at {stopped_at}, log ends {log._next}"
    assert stock == Counter(log.committed) + Counter(log.aborted)
