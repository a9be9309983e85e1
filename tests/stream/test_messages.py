"""The wire contract: every dead-letter reason, bulk decoding, forecast encoding, schemas."""

from __future__ import annotations

from typing import Any, NamedTuple

import jsonschema
import numpy as np
import orjson
import pytest

from streamcast.stream.decoding import decode_records
from streamcast.stream.messages import (
    DeadLetter,
    Readings,
    encode_forecasts,
    encode_reading,
    load_schema,
)

F = 2
MAX = 1024


class Rec(NamedTuple):
    """The ConsumerRecord attributes the decoder reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


def rec(
    value: bytes | None, key: bytes | None = b"pump-7", offset: int = 0, partition: int = 3
) -> Rec:
    return Rec("readings", partition, offset, 1_764_320_400_500 + offset, key, value)


def js(obj: Any) -> bytes:
    return orjson.dumps(obj)


GOOD = {"sensor": "pump-7", "ts": 1764320400.0, "values": [21.4, 0.53]}


def only_reason(value: bytes | None, key: bytes | None = b"pump-7", max_bytes: int = MAX) -> str:
    readings, dead = decode_records([rec(value, key)], F, max_bytes)
    assert len(readings) == 0
    assert len(dead) == 1
    return dead[0].reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b'{"sensor": "pump-7", "ts": 1, "values": [NaN, 1]}', "not_json"),
        (b"", "not_json"),
        (None, "tombstone"),
        (b"[1, 2]", "not_object"),
        (b'"pump-7"', "not_object"),
        (js({"ts": 1, "values": [1, 2]}), "missing_field:sensor"),
        (js({"sensor": "pump-7", "values": [1, 2]}), "missing_field:ts"),
        (js({"sensor": "pump-7", "ts": 1}), "missing_field:values"),
        (js({"sensor": "pump-7", "ts": 1, "values": None}), "missing_field:values"),
        (js({"sensor": 7, "ts": 1, "values": [1, 2]}), "wrong_type:sensor"),
        (js({"sensor": "", "ts": 1, "values": [1, 2]}), "wrong_type:sensor"),
        (js({"sensor": "pump-7", "ts": "1", "values": [1, 2]}), "wrong_type:ts"),
        (js({"sensor": "pump-7", "ts": True, "values": [1, 2]}), "wrong_type:ts"),
        (js({"sensor": "pump-7", "ts": [1], "values": [1, 2]}), "wrong_type:ts"),
        (js({"sensor": "pump-7", "ts": 1, "values": {"a": 1}}), "wrong_type:values"),
        (js({"sensor": "pump-7", "ts": 1, "values": [1, "2"]}), "wrong_type:values"),
        (js({"sensor": "pump-7", "ts": 1, "values": [1, False]}), "wrong_type:values"),
        (js({"sensor": "pump-7", "ts": 1, "values": [1, None]}), "wrong_type:values"),
        (js({"sensor": "pump-7", "ts": 1, "values": [1, 2, 3]}), "wrong_length"),
        (js({"sensor": "pump-7", "ts": 1, "values": []}), "wrong_length"),
        (b'{"sensor": "pump-7", "ts": 1, "values": [1e39, 1]}', "not_finite"),
        (b'{"sensor": "pump-7", "ts": 1, "values": [1e400, 1]}', "not_finite"),
        (b'{"sensor": "pump-7", "ts": 1, "values": [1, -1e400]}', "not_finite"),
    ],
)
def test_each_reason(value: bytes | None, reason: str) -> None:
    assert only_reason(value) == reason


def test_too_large_is_not_parsed() -> None:
    body = js({**GOOD, "pad": "x" * 200})
    assert only_reason(body, max_bytes=100) == "too_large"
    readings, dead = decode_records([rec(body)], F, len(body))
    assert len(readings) == 1 and not dead


def test_key_mismatch_and_absent_key() -> None:
    assert only_reason(js(GOOD), key=b"pump-8") == "key_mismatch"
    assert only_reason(js(GOOD), key=b"\xff") == "key_mismatch"
    readings, dead = decode_records([rec(js(GOOD), key=None)], F, MAX)
    assert readings.sensors == ["pump-7"] and not dead


def test_dead_letter_keeps_bytes_and_headers() -> None:
    value = b'{"sensor": "pump-7", "ts": "soon", "values": [1, 2]}'
    _, dead = decode_records([rec(value, b"pump-7", offset=42, partition=5)], F, MAX)
    (d,) = dead
    assert d.key == b"pump-7" and d.value == value
    assert (d.topic, d.partition, d.offset) == ("readings", 5, 42)
    headers = dict(d.headers())
    assert headers["streamcast.reason"] == b"wrong_type:ts"
    assert b"str" in headers["streamcast.detail"]
    assert headers["streamcast.source.topic"] == b"readings"
    assert headers["streamcast.source.partition"] == b"5"
    assert headers["streamcast.source.offset"] == b"42"
    assert all(isinstance(v, bytes) for _, v in d.headers())


def test_dead_letter_from_record() -> None:
    r = rec(js(GOOD), offset=9)
    d = DeadLetter.of(r, "out_of_order", "older than 1764320400.0")
    assert d == DeadLetter(b"pump-7", js(GOOD), "out_of_order", d.detail, "readings", 3, 9)


def test_a_tombstone_becomes_a_record_a_producer_accepts() -> None:
    _, dead = decode_records([rec(None, key=None)], F, MAX)
    key, value, headers = dead[0].record(1_000)
    assert key is None and value == b""  # kafka-python refuses neither-key-nor-value
    assert dict(headers)["streamcast.reason"] == b"tombstone"


@pytest.mark.parametrize(("key_size", "value_size"), [(10, 2_000_000), (2_000_000, 10)])
def test_an_oversize_dead_letter_is_cut_to_fit_and_says_so(key_size: int, value_size: int) -> None:
    big = DeadLetter(b"k" * key_size, b"v" * value_size, "too_large", "d" * 5000, "t", 1, 2)
    key, value, headers = big.record(1_000)
    assert len(key or b"") + len(value) <= 1_000
    found = dict(headers)
    assert found["streamcast.truncated"] == f"key={key_size} value={value_size}".encode()
    assert found["streamcast.source.offset"] == b"2"
    assert len(found["streamcast.detail"]) <= 1_024
    small = DeadLetter(b"k", b"v", "not_json", "d", "t", 1, 2)
    assert small.record(1_000) == (b"k", b"v", small.headers())


def test_valid_readings_among_malformed_stay_in_order() -> None:
    recs = []
    expected = []
    for i in range(30):
        sensor = f"s{i % 4}"
        if i % 3 == 1:
            recs.append(rec(b"garbage", key=sensor.encode(), offset=i))
        elif i % 7 == 0:
            recs.append(rec(b'{"sensor":"x","ts":1,"values":[1e39,0]}', key=None, offset=i))
        else:
            recs.append(rec(encode_reading(sensor, 100 + i, [i, -i]), sensor.encode(), offset=i))
            expected.append(i)
    readings, dead = decode_records(recs, F, MAX)
    assert len(readings) + len(dead) == len(recs)
    assert readings.offsets.tolist() == expected
    assert readings.record_index.tolist() == expected
    assert readings.sensors == [f"s{i % 4}" for i in expected]
    np.testing.assert_array_equal(readings.ts, [100.0 + i for i in expected])
    np.testing.assert_array_equal(readings.values, [[i, -i] for i in expected])
    assert readings.values.dtype == np.float32 and readings.values.shape == (len(expected), F)
    assert readings.ts.dtype == np.float64
    assert readings.partitions.dtype == np.int32 and readings.offsets.dtype == np.int64
    np.testing.assert_allclose(readings.log_ts, [1_764_320_400.5 + i / 1000 for i in expected])
    assert [d.offset for d in dead] == sorted(set(range(30)) - set(expected))


def test_extra_fields_ignored_and_int_ts_accepted() -> None:
    body = js({"sensor": "pump-7", "ts": 1764320400, "values": [21, 0.5], "unit": "C", "x": [1]})
    readings, dead = decode_records([rec(body)], F, MAX)
    assert not dead
    assert readings.ts.tolist() == [1764320400.0]
    assert readings.values.tolist() == [[21.0, 0.5]]


def test_empty_batch() -> None:
    readings, dead = decode_records([], F, MAX)
    assert len(readings) == 0 and not dead
    assert readings.values.shape == (0, F)


def test_readings_take() -> None:
    recs = [rec(encode_reading("a", i, [i, i]), b"a", offset=i) for i in range(5)]
    readings, _ = decode_records(recs, F, MAX)
    part = readings.take(np.array([4, 1]))
    assert part.sensors == ["a", "a"]
    assert part.offsets.tolist() == [4, 1] and part.ts.tolist() == [4.0, 1.0]
    assert len(readings.take(readings.ts > 2)) == 2


def test_hand_built_readings_fill_kafka_columns() -> None:
    r = Readings(["a", "b"], np.array([1.0, 2.0]), np.zeros((2, F), np.float32))
    assert r.partitions.tolist() == [0, 0] and r.log_ts.tolist() == [1.0, 2.0]


def test_encode_reading_round_trip() -> None:
    body = encode_reading("pump-7", 1764320400.0, np.array([21.4, 0.53], np.float32))
    readings, dead = decode_records([rec(body)], F, MAX)
    assert not dead
    np.testing.assert_allclose(readings.values[0], [21.4, 0.53], rtol=1e-6)
    with pytest.raises(ValueError):
        encode_reading("pump-7", 1.0, [float("nan"), 0.0])


def _forecasts(n: int = 3, horizon: int = 4) -> list[bytes]:
    fc = np.arange(n * horizon * F, dtype=np.float32).reshape(n, horizon, F) / 10
    return encode_forecasts(
        [f"s{i}" for i in range(n)],
        np.array([100.0, 200.0, 300.0][:n]),
        np.array([10.0, 10.5, 11.0][:n]),
        fc,
        issued_at=1764320401.25,
        model_version=3,
        seed="truth",
    )


def test_encode_forecasts() -> None:
    out = _forecasts()
    assert len(out) == 3
    doc = orjson.loads(out[1])
    assert set(doc) == {
        "schema",
        "sensor",
        "ts",
        "issued_at",
        "horizon",
        "step_s",
        "values",
        "model_version",
        "seed",
    }
    assert doc["sensor"] == "s1" and doc["ts"] == 200.0 and doc["step_s"] == 10.5
    assert doc["horizon"] == 4 and len(doc["values"]) == 4 and len(doc["values"][0]) == F
    assert doc["values"][0] == [0.8, 0.9]  # float32 noise rounded away
    assert doc["model_version"] == 3 and doc["seed"] == "truth" and doc["schema"] == 1


def test_encode_forecasts_scalar_step_and_refusals() -> None:
    fc = np.zeros((2, 3, F), np.float32)
    out = encode_forecasts(["a", "b"], [1.0, 2.0], 900.0, fc, 5.0, 1, "zeros")
    assert [orjson.loads(o)["step_s"] for o in out] == [900.0, 900.0]
    fc[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="'b'"):
        encode_forecasts(["a", "b"], [1.0, 2.0], 900.0, fc, 5.0, 1, "zeros")
    with pytest.raises(ValueError):
        encode_forecasts(["a", "b"], [1.0, 2.0], 900.0, np.zeros((2, 3, F)), 5.0, 1, "warm")
    with pytest.raises(ValueError):
        encode_forecasts(["a"], [1.0], 900.0, np.zeros((2, 3, F)), 5.0, 1, "truth")
    assert encode_forecasts([], [], 1.0, np.zeros((0, 3, F)), 5.0, 1, "truth") == []


@pytest.mark.parametrize("name", ["reading", "forecast"])
def test_schemas_are_valid_and_described(name: str) -> None:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["description"]
    for prop, sub in schema["properties"].items():
        assert sub.get("description"), f"{name}.{prop} has no description"
    validator = jsonschema.Draft202012Validator(schema)
    for example in schema["examples"]:
        validator.validate(example)


def test_unknown_schema() -> None:
    with pytest.raises(ValueError):
        load_schema("nope")


def test_encoded_messages_validate() -> None:
    reading = jsonschema.Draft202012Validator(load_schema("reading"))
    reading.validate(orjson.loads(encode_reading("pump-7", 1764320400, [21.4, 0.53])))
    reading.validate({**GOOD, "unit": "C"})
    for bad in ({**GOOD, "ts": True}, {**GOOD, "ts": "1"}, {"sensor": "a", "ts": 1}):
        assert not reading.is_valid(bad)
    forecast = jsonschema.Draft202012Validator(load_schema("forecast"))
    for body in _forecasts():
        forecast.validate(orjson.loads(body))
    assert not forecast.is_valid({**orjson.loads(_forecasts()[0]), "seed": "warm"})


def test_schema_and_decoder_agree() -> None:
    """What the schema refuses for type reasons, the decoder dead-letters too."""
    reading = jsonschema.Draft202012Validator(load_schema("reading"))
    cases = [
        {**GOOD, "ts": True},
        {**GOOD, "sensor": 7},
        {**GOOD, "values": [1, "x"]},
        {"sensor": "pump-7", "values": [1, 2]},
        [1, 2],
    ]
    for case in cases:
        assert not reading.is_valid(case)
        _, dead = decode_records([rec(js(case))], F, MAX)
        assert len(dead) == 1


def test_forecasts_keep_their_significant_digits_at_every_scale() -> None:
    values = np.array([[[21.4, 1e-9], [3.4e38, -0.000123456]]], np.float32)
    (encoded,) = encode_forecasts(["s"], [1.0], [60.0], values, 2.0, 1, "truth")
    decoded = np.array(orjson.loads(encoded)["values"], np.float32)
    np.testing.assert_array_equal(decoded, values[0])  # exact float32 round trip
    assert b"21.4," in encoded and b"1e-9" in encoded
