"""The wire contract: record and dead-letter shapes, the readings columns, encoders, schemas.

What crosses Kafka and what the stages hand each other: ``DeadLetter`` keeps a
refused record byte for byte with headers that say why, ``Readings`` holds valid
readings column-wise, and forecasts and readings are encoded to match the shipped
JSON Schemas. Decoding a poll lives in ``streamcast.stream.decoding``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from streamcast.config import SEEDING_MODES

SCHEMA_VERSION = 1
SCHEMA_NAMES = ("reading", "forecast")

# Header names of a dead letter; the reason is a short token dashboards can group by.
HEADER_REASON = "streamcast.reason"
HEADER_DETAIL = "streamcast.detail"
HEADER_TOPIC = "streamcast.source.topic"
HEADER_PARTITION = "streamcast.source.partition"
HEADER_OFFSET = "streamcast.source.offset"
HEADER_TRUNCATED = "streamcast.truncated"  # original key and value sizes, when cut to fit
_MAX_DETAIL = 1_024


class RecordLike(Protocol):
    """What the decoder needs from a kafka-python ``ConsumerRecord`` (tests pass look-alikes)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class RebuiltRecord(NamedTuple):
    """A reading's record put back together by a stage that no longer holds its bytes
    (inference): the same key, the reading re-encoded, where it came from."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that cannot become a reading, kept byte for byte for the dead-letter topic."""

    key: bytes | None
    value: bytes | None
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, record: RecordLike, reason: str, detail: str) -> DeadLetter:
        """The dead letter of a record, at whatever stage it was refused."""
        return cls(
            record.key, record.value, reason, detail, record.topic, record.partition, record.offset
        )

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers that say why and where from, so the record can be replayed later."""
        return [
            (HEADER_REASON, self.reason.encode()),
            (HEADER_DETAIL, self.detail.encode()[:_MAX_DETAIL]),
            (HEADER_TOPIC, self.topic.encode()),
            (HEADER_PARTITION, str(self.partition).encode()),
            (HEADER_OFFSET, str(self.offset).encode()),
        ]

    def context(self) -> dict[str, object]:
        """Where it came from and why, for a log line."""
        return {
            "reason": self.reason,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "sensor": (self.key or b"").decode("utf-8", "replace"),
        }

    def record(self, max_bytes: int) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
        """(key, value, headers) that a producer always accepts.

        A tombstone (no key, no value) gets an empty value, since a record needs one
        of the two; a key and value larger than ``max_bytes`` together are cut to fit,
        and a header keeps their original sizes. The source topic, partition and offset
        in the headers still lead to the whole record.
        """
        key, value = self.key, self.value if self.value is not None else b""
        headers = self.headers()
        size = len(key or b"") + len(value)
        if size > max_bytes:
            headers.append(
                (HEADER_TRUNCATED, f"key={len(key or b'')} value={len(self.value or b'')}".encode())
            )
            if key is not None and len(key) > max_bytes // 2:
                key = key[: max_bytes // 2]
            value = value[: max(0, max_bytes - len(key or b""))]
        return key, value, headers


def _empty_f64() -> npt.NDArray[np.float64]:
    return np.empty(0, np.float64)


def _empty_i32() -> npt.NDArray[np.int32]:
    return np.empty(0, np.int32)


def _empty_i64() -> npt.NDArray[np.int64]:
    return np.empty(0, np.int64)


@dataclass
class Readings:
    """A batch of valid readings, column-wise, in arrival order.

    ``record_index`` maps each reading back to its position in the list given to
    ``decode_records``, so a later stage that rejects a reading can dead-letter
    the original record.
    """

    sensors: list[str]
    ts: npt.NDArray[np.float64]
    values: npt.NDArray[np.float32]
    partitions: npt.NDArray[np.int32] = field(default_factory=_empty_i32)
    offsets: npt.NDArray[np.int64] = field(default_factory=_empty_i64)
    log_ts: npt.NDArray[np.float64] = field(default_factory=_empty_f64)
    record_index: npt.NDArray[np.int64] = field(default_factory=_empty_i64)

    def __post_init__(self) -> None:
        # Readings built by hand (simulator, tests) may leave the Kafka columns out.
        n = len(self.sensors)
        if len(self.partitions) != n:
            self.partitions = np.zeros(n, np.int32)
        if len(self.offsets) != n:
            self.offsets = np.arange(n, dtype=np.int64)
        if len(self.log_ts) != n:
            self.log_ts = np.asarray(self.ts, np.float64).copy()
        if len(self.record_index) != n:
            self.record_index = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sensors)

    @property
    def num_features(self) -> int:
        return int(self.values.shape[1])

    def take(self, index: npt.ArrayLike) -> Readings:
        """The readings at ``index`` (an index array or boolean mask), in that order."""
        idx = np.asarray(index)
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)
        sensors = self.sensors
        return Readings(
            sensors=[sensors[i] for i in idx.tolist()],
            ts=self.ts[idx],
            values=self.values[idx],
            partitions=self.partitions[idx],
            offsets=self.offsets[idx],
            log_ts=self.log_ts[idx],
            record_index=self.record_index[idx],
        )

    @classmethod
    def empty(cls, num_features: int) -> Readings:
        return cls([], _empty_f64(), np.empty((0, num_features), np.float32))


def encode_forecasts(
    sensors: Sequence[str],
    ts: npt.ArrayLike,
    step_s: npt.ArrayLike,
    forecasts: npt.NDArray[np.floating[Any]],
    issued_at: float,
    model_version: int,
    seed: str,
) -> list[bytes]:
    """One JSON value per sensor; ``forecasts`` is (n, horizon, num_features).

    Raises ``ValueError`` on a non-finite forecast: JSON has no NaN, and a model
    that produces one is broken, which must not reach consumers as ``null``.
    """
    n = len(sensors)
    if forecasts.ndim != 3 or forecasts.shape[0] != n:
        raise ValueError(f"forecasts shape {forecasts.shape} does not fit {n} sensors")
    if seed not in SEEDING_MODES:
        raise ValueError(f"seed {seed!r} not one of {SEEDING_MODES}")
    if not np.isfinite(forecasts).all():
        bad = np.flatnonzero(~np.isfinite(forecasts).all(axis=(1, 2)))
        raise ValueError(f"{len(bad)} non-finite forecasts, first for sensor {sensors[bad[0]]!r}")
    horizon = int(forecasts.shape[1])
    ts_list = np.broadcast_to(np.asarray(ts, np.float64), (n,)).tolist()
    step_list = np.broadcast_to(np.asarray(step_s, np.float64), (n,)).tolist()
    # float32, the model's own precision, written as the shortest text that reads back
    # to the same float32 (21.4, 1e-09, 3.4e+38): significant digits are kept at every
    # scale, and no float32 noise (21.399999618530273) is printed. orjson writes each
    # row straight from the array (no per-float Python objects).
    rows = np.ascontiguousarray(forecasts, dtype=np.float32)
    issued = float(issued_at)
    version = int(model_version)
    dumps = orjson.dumps
    opt = orjson.OPT_SERIALIZE_NUMPY
    return [
        dumps(
            {
                "schema": SCHEMA_VERSION,
                "sensor": sensors[i],
                "ts": ts_list[i],
                "issued_at": issued,
                "horizon": horizon,
                "step_s": step_list[i],
                "values": rows[i],
                "model_version": version,
                "seed": seed,
            },
            option=opt,
        )
        for i in range(n)
    ]


def encode_reading(sensor: str, ts: float, values: npt.ArrayLike) -> bytes:
    """A reading as producers should send it (used by the simulator and tests)."""
    vals = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
    if not all(math.isfinite(v) for v in vals) or not math.isfinite(ts):
        raise ValueError(f"reading for {sensor!r} is not finite")
    return orjson.dumps({"sensor": sensor, "ts": float(ts), "values": vals})


def load_schema(name: str) -> dict[str, Any]:
    """The shipped JSON Schema (draft 2020-12) for ``"reading"`` or ``"forecast"``."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; expected one of {SCHEMA_NAMES}")
    text = resources.files("streamcast").joinpath("schemas", f"{name}.schema.json").read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema
