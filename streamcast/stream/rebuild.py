"""Refill the windows of a newly assigned partition from its recent past.

After a restart or a rebalance, every sensor of a partition needs a full window before
its next forecast. How far back that lies depends on how many sensors share the
partition and how often each reports, which no fixed record count gets right: 50,000
records hold 97 readings of only 515 sensors. So the partition is read *backwards*
from its committed offset, in chunks that double, until every sensor seen either holds
``need`` readings or has been quiet for longer than the gap after which serving
restarts its window anyway. Only the newest ``need`` readings of each sensor are kept,
and they are handed over oldest first.

The reading is done by a consumer of its own outside the group (plain ``assign``), so
the group's consumer keeps its membership and its position at the committed offset:
nothing read here is forecast or dead-lettered again (both happened before the commit).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from streamcast.config import KafkaSettings
from streamcast.stream.clients import connect
from streamcast.stream.messages import Readings

logger = logging.getLogger(__name__)

Decode = Callable[[Sequence[Any]], Readings]

_FIRST_CHUNK = 8_192
_MAX_CHUNK = 524_288
_POLL_MS = 500
_STALL_S = 10.0  # no record for this long while some are known to exist: give up


@dataclass
class Rebuilt:
    """What one partition's read-back found and kept."""

    partition: int
    readings: Readings  # oldest first; at most ``need`` per sensor
    records: int  # records read
    sensors: int  # sensors seen
    cold: int  # sensors still short of a full window (history too short or cut off)
    seconds: float
    complete: bool  # False when a bound (records, time, an error) cut it short


class _Tally:
    """Per-sensor counts over the chunks read so far, newest chunk first."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []
        self.count = np.zeros(0, np.int64)
        self.newest = np.zeros(0, np.float64)
        self.oldest = np.zeros(0, np.float64)

    def encode(self, sensors: list[str]) -> npt.NDArray[np.int64]:
        """Sensor codes; each name is kept once (readings share the interned string)."""
        codes, names = self.codes, self.names
        out = np.empty(len(sensors), np.int64)
        for i, s in enumerate(sensors):
            c = codes.get(s)
            if c is None:
                c = codes[s] = len(names)
                names.append(s)
            out[i] = c
        grow = len(names) - len(self.count)
        if grow > 0:
            self.count = np.concatenate([self.count, np.zeros(grow, np.int64)])
            self.newest = np.concatenate([self.newest, np.full(grow, -np.inf)])
            self.oldest = np.concatenate([self.oldest, np.full(grow, np.inf)])
        return out

    def add(self, codes: npt.NDArray[np.int64], ts: npt.NDArray[np.float64]) -> None:
        n = len(self.names)
        self.count += np.bincount(codes, minlength=n)
        np.maximum.at(self.newest, codes, ts)
        np.minimum.at(self.oldest, codes, ts)

    def satisfied(self, need: int, gap_factor: float) -> npt.NDArray[np.bool_]:
        """Sensors that need nothing older: a full window, or quiet for longer than a
        window restart's gap (their next reading starts a new window anyway)."""
        if not len(self.count):
            return np.zeros(0, np.bool_)
        now = float(np.median(self.newest))  # the partition's clock, robust to odd stamps
        several = self.count >= 2
        step = np.where(several, (self.newest - self.oldest) / np.maximum(self.count - 1, 1), 0)
        quiet = several & (self.newest < now - gap_factor * step)
        return (self.count >= need) | quiet


def _newest_per_sensor(codes: npt.NDArray[np.int64], room: npt.NDArray[np.int64]) -> Any:
    """Mask of the readings to keep: the last ``room[code]`` of each sensor, in order."""
    n = len(codes)
    backwards = codes[::-1]
    order = np.argsort(backwards, kind="stable")
    grouped = backwards[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, sizes)  # 0 = the newest of its sensor
    return (rank < room[backwards])[::-1]


def _concat(parts: list[Readings], num_features: int) -> Readings:
    if not parts:
        return Readings.empty(num_features)
    if len(parts) == 1:
        return parts[0]
    return Readings(
        sensors=[s for p in parts for s in p.sensors],
        ts=np.concatenate([p.ts for p in parts]),
        values=np.concatenate([p.values for p in parts]),
        partitions=np.concatenate([p.partitions for p in parts]),
        offsets=np.concatenate([p.offsets for p in parts]),
        log_ts=np.concatenate([p.log_ts for p in parts]),
        record_index=np.concatenate([p.record_index for p in parts]),
    )


class WindowRebuild:
    """Reads partitions back for their windows; one reader consumer, reused."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        decode: Decode,
        num_features: int,
        need: int,
        gap_factor: float,
        max_records: int,
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.kafka = kafka
        self.topic = kafka.input_topic
        self.decode = decode
        self.num_features = num_features
        self.need = need
        self.gap_factor = gap_factor
        self.max_records = max_records
        self.tick = tick
        self._reader: Any = None

    def _consumer(self) -> Any:
        if self._reader is None:
            self._reader = connect(
                KafkaConsumer,
                self.kafka,
                group_id=None,
                enable_auto_commit=False,
                max_poll_records=50_000,
                isolation_level=(
                    "read_committed" if self.kafka.exactly_once else "read_uncommitted"
                ),
            )
        return self._reader

    def run(
        self, committed: Mapping[int, int], budget_s: float, *, need: int | None = None
    ) -> Iterator[Rebuilt]:
        """Read back each partition from its committed offset, all within ``budget_s``.

        ``need``: readings per sensor, when more than a window's are wanted (the first
        model's history, read from the topic's retention instead of waited for).
        """
        deadline = time.monotonic() + budget_s
        for partition, end in sorted(committed.items()):
            rebuilt = self.partition(partition, end, deadline, need or self.need)
            log = logger.info if rebuilt.complete else logger.warning
            log(
                "windows rebuilt topic=%s partition=%d records=%d sensors=%d cold=%d "
                "seconds=%.1f%s",
                self.topic,
                partition,
                rebuilt.records,
                rebuilt.sensors,
                rebuilt.cold,
                rebuilt.seconds,
                "" if rebuilt.complete else " (cut short: window.rebuild_records or time)",
            )
            yield rebuilt

    def partition(
        self, partition: int, end: int, deadline: float, need: int | None = None
    ) -> Rebuilt:
        """Read back from ``end`` (exclusive) until every sensor seen is satisfied.

        ``deadline`` (monotonic) bounds the time: past it, what was read is used and
        the rest of the sensors start cold, with a warning.
        """
        started = time.monotonic()
        need = need or self.need
        tp = TopicPartition(self.topic, partition)
        tally = _Tally()
        parts: list[Readings] = []
        read = 0
        complete = True
        try:
            reader = self._consumer()
            reader.assign([tp])
            begin = int(reader.beginning_offsets([tp]).get(tp, 0))
            hi, chunk = end, _FIRST_CHUNK
            while hi > begin:
                if read >= self.max_records or time.monotonic() > deadline:
                    complete = False
                    break
                lo = max(begin, hi - chunk, hi - (self.max_records - read))
                records = self._read(reader, tp, lo, hi, deadline)
                read += len(records)
                self._keep(records, tally, parts, need)
                self.tick()
                if len(records) < hi - lo and time.monotonic() > deadline:
                    complete = False
                    break
                if tally.satisfied(need, self.gap_factor).all():
                    break
                hi, chunk = lo, min(2 * chunk, _MAX_CHUNK)
        except (KafkaError, OSError) as exc:
            logger.warning("window rebuild cut short partition=%d error=%s", partition, exc)
            complete = False
        parts.reverse()  # read newest first, applied oldest first
        cold = int((tally.count < need).sum()) if len(tally.count) else 0
        return Rebuilt(
            partition=partition,
            readings=_concat(parts, self.num_features),
            records=read,
            sensors=len(tally.names),
            cold=cold,
            seconds=time.monotonic() - started,
            complete=complete,
        )

    def _read(
        self, reader: Any, tp: TopicPartition, lo: int, hi: int, deadline: float
    ) -> list[Any]:
        """Records with offsets in [lo, hi), in order (transaction markers take offsets too)."""
        reader.seek(tp, lo)
        out: list[Any] = []
        last_progress = time.monotonic()
        while True:
            batches = reader.poll(timeout_ms=_POLL_MS)
            for records in batches.values():
                if records:
                    last_progress = time.monotonic()
                    if records[-1].offset >= hi:
                        records = [r for r in records if r.offset < hi]
                    out.extend(records)
            if reader.position(tp) >= hi:
                return out
            now = time.monotonic()
            if now > deadline or now - last_progress > _STALL_S:
                return out
            self.tick()

    def _keep(self, records: list[Any], tally: _Tally, parts: list[Readings], need: int) -> None:
        """Decode a chunk and keep, per sensor, the readings its window still needs."""
        if not records:
            return
        readings = self.decode(records)
        if not len(readings):
            return
        codes = tally.encode(readings.sensors)
        room = np.maximum(need - tally.count, 0)
        keep = _newest_per_sensor(codes, room)
        tally.add(codes, readings.ts)
        if keep.any():
            kept = readings.take(keep)
            names = tally.names
            kept.sensors = [names[c] for c in codes[keep].tolist()]
            parts.append(kept)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
