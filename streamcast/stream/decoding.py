"""Decoding a poll: records in, valid readings (numpy columns) and dead letters out.

Bad records are values, not exceptions: ``decode_records`` returns the good
readings plus one ``DeadLetter`` per bad record, carrying the original bytes and a
machine-readable reason, so one broken producer can never stall the loop. Per-record
Python work is the budget of the whole daemon, so the decoder does the least it can
per record and builds the arrays once at the end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from itertools import chain
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import orjson

from streamcast.stream.messages import DeadLetter, Readings, RecordLike

logger = logging.getLogger(__name__)

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
