"""The wire contract: decode readings in bulk, encode forecasts, describe both as JSON Schema.

Bad records are values, not exceptions: ``decode_records`` returns the good
readings as numpy arrays plus one ``DeadLetter`` per bad record, carrying the
original bytes and a machine-readable reason, so one broken producer can never
stall the loop. Per-record Python work is the budget of the whole daemon, so the
decoder does the least it can per record and builds the arrays once at the end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from itertools import chain
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
import orjson

from streamcast.config import SEEDING_MODES

logger = logging.getLogger(__name__)

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

_NUMBER_TYPES = frozenset((int, float))  # exact types: bool is an int subclass and is refused
_partition = attrgetter("partition")
_offset = attrgetter("offset")
_timestamp = attrgetter("timestamp")
_value = attrgetter("value")
_key = attrgetter("key")
_sensor = attrgetter("sensor")
_ts = attrgetter("ts")
_values = attrgetter("values")


class _Reading(msgspec.Struct):
    """A reading's fields, typed: msgspec checks the types while it parses (in C), so a
    whole poll of good readings costs one call per record and no Python checks. Like
    the per-record path, it refuses booleans as numbers and ignores unknown fields."""

    sensor: str
    ts: float
    values: list[float]


_decode_reading = msgspec.json.Decoder(_Reading).decode


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


def _diagnose(
    raw: bytes | None, key: bytes | None, num_features: int, max_bytes: int
) -> tuple[str, str]:
    """Why a record failed the fast check: (reason, detail). Off the hot path."""
    if raw is None:
        return "tombstone", "record has no value (a tombstone)"
    if len(raw) > max_bytes:
        return "too_large", f"{len(raw)} bytes > max {max_bytes}"
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        # orjson refuses numbers beyond float64 (1e400) while parsing; say what it means.
        return ("not_finite" if msg.startswith("number is infinity") else "not_json"), msg
    if type(obj) is not dict:
        return "not_object", f"top-level JSON {type(obj).__name__}, expected object"
    for name in ("sensor", "ts", "values"):
        if obj.get(name) is None:
            return f"missing_field:{name}", f"field {name!r} is missing or null"
    sensor, ts, values = obj["sensor"], obj["ts"], obj["values"]
    if type(sensor) is not str or not sensor:
        return "wrong_type:sensor", "'sensor' must be a non-empty string"
    if type(ts) not in _NUMBER_TYPES:
        return "wrong_type:ts", f"'ts' is {type(ts).__name__}, expected number"
    if type(values) is not list:
        return "wrong_type:values", f"'values' is {type(values).__name__}, expected array"
    if len(values) != num_features:
        return "wrong_length", f"{len(values)} values, expected {num_features}"
    if not _NUMBER_TYPES.issuperset(map(type, values)):
        return "wrong_type:values", "every element of 'values' must be a number"
    if key is not None and key != sensor.encode():
        return "key_mismatch", f"key {key.decode('utf-8', 'replace')!r} != sensor {sensor!r}"
    return "invalid", "record failed validation"  # unreachable while both checks agree


def decode_records(
    records: Sequence[RecordLike],
    num_features: int,
    max_bytes: int,
    max_ts: float = math.inf,
) -> tuple[Readings, list[DeadLetter]]:
    """Split polled records into valid readings (numpy columns) and dead letters.

    One combined check per record on the hot path; a record that fails it is
    examined again by ``_diagnose`` for the exact reason. Finiteness of the
    values as float32, and ``ts`` not beyond ``max_ts`` (a clock far in the future
    would otherwise make every later reading of its sensor look out of order), are
    checked vectorised at the end. Unknown fields are ignored.
    """
    f = num_features
    parsed = _parse_all(records, f, max_bytes)
    if parsed is None:
        parsed = _parse_each(records, f, max_bytes)
    kept, sensors, ts_t, vals_t, ok_records, bad = parsed

    n = len(sensors)
    index = np.array(kept, dtype=np.int64)
    ts_arr = np.fromiter(ts_t, dtype=np.float64, count=n)
    with np.errstate(over="ignore", invalid="ignore"):
        # float64 values beyond the float32 range become inf here and are refused below.
        flat = np.fromiter(chain.from_iterable(vals_t), dtype=np.float64, count=n * f)
        values_arr = flat.reshape(n, f).astype(np.float32)
    partitions = np.fromiter(map(_partition, ok_records), np.int32, count=n)
    offsets = np.fromiter(map(_offset, ok_records), np.int64, count=n)
    log_ts = np.fromiter(map(_timestamp, ok_records), np.float64, count=n) / 1000.0
    finite = np.isfinite(values_arr).all(axis=1)
    timely = ts_arr <= max_ts
    if not (finite.all() and timely.all()):
        for j in np.flatnonzero(~finite).tolist():
            bad.append((kept[j], "not_finite", f"values {vals_t[j]!r} are not finite as float32"))
        for j in np.flatnonzero(finite & ~timely).tolist():
            bad.append((kept[j], "ts_in_future", f"ts {ts_t[j]!r} is after {max_ts!r}"))
        bad.sort()
        keep = np.flatnonzero(finite & timely)
        sensors = [sensors[j] for j in keep.tolist()]
        index, ts_arr, values_arr = index[keep], ts_arr[keep], values_arr[keep]
        partitions, offsets, log_ts = partitions[keep], offsets[keep], log_ts[keep]
    readings = Readings(
        sensors=sensors,
        ts=ts_arr,
        values=values_arr,
        partitions=partitions,
        offsets=offsets,
        log_ts=log_ts,
        record_index=index,
    )
    letters = [DeadLetter.of(records[i], reason, detail) for i, reason, detail in bad]
    if letters:
        logger.debug("decoded records=%d ok=%d dead=%d", len(records), n, len(letters))
    return readings, letters


_Parsed = tuple[
    Sequence[int],
    list[str],
    Sequence[float],
    Sequence[Sequence[float]],
    Sequence[RecordLike],
    list[tuple[int, str, str]],
]


def _parse_all(records: Sequence[RecordLike], f: int, max_bytes: int) -> _Parsed | None:
    """Every record parsed as a reading at once, or None when any one is not a valid
    reading: the caller then goes record by record to say which and why."""
    raws = list(map(_value, records))
    try:
        if raws and max(map(len, raws)) > max_bytes:  # len(None) raises: a tombstone
            return None
        parsed = list(map(_decode_reading, raws))
    except (msgspec.DecodeError, TypeError):
        return None
    sensors = list(map(_sensor, parsed))
    values = list(map(_values, parsed))
    if not all(sensors) or any(len(v) != f for v in values):
        return None
    keys = list(map(_key, records))
    if any(k is not None and k != s.encode() for k, s in zip(keys, sensors, strict=True)):
        return None
    return range(len(records)), sensors, list(map(_ts, parsed)), values, records, []


def _parse_each(records: Sequence[RecordLike], f: int, max_bytes: int) -> _Parsed:
    """Record by record: the good ones, and a (index, reason, detail) per bad one."""
    kept: list[int] = []
    sensors: list[str] = []
    ts_list: list[Any] = []
    values_list: list[Any] = []
    ok_records: list[RecordLike] = []
    bad: list[tuple[int, str, str]] = []
    issuperset = _NUMBER_TYPES.issuperset
    for i, rec in enumerate(records):
        raw = rec.value
        key = rec.key
        try:
            obj = orjson.loads(raw) if raw is not None and len(raw) <= max_bytes else None
        except orjson.JSONDecodeError:
            obj = None
        if (
            type(obj) is dict
            and type(sensor := obj.get("sensor")) is str
            and sensor
            and type(ts := obj.get("ts")) in _NUMBER_TYPES
            and type(values := obj.get("values")) is list
            and len(values) == f
            and issuperset(map(type, values))
            and (key is None or key == sensor.encode())
        ):
            kept.append(i)
            sensors.append(sensor)
            ts_list.append(ts)
            values_list.append(values)
            ok_records.append(rec)
        else:
            bad.append((i, *_diagnose(raw, key, f, max_bytes)))
    return kept, sensors, ts_list, values_list, ok_records, bad


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
