"""Property tests of the decoder: whatever arrives, every record comes out exactly once,
as a reading or as a dead letter that a producer accepts, and nothing is raised."""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamcast.stream import decoding
from streamcast.stream.decoding import decode_records

from .test_messages import Rec

F = 2
MAX_BYTES = 2_048
MAX_TS = 2_000_000_000.0

numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([3.4028235e38, -3.4028235e38, 3.5e38, 1e-45, 0.0, -0.0, 1e308]),
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
sensors = st.one_of(st.sampled_from(["a", "pump-7", "é", "x" * 200]), st.text(max_size=20))
readings = st.fixed_dictionaries(
    {"sensor": sensors, "ts": numbers, "values": st.lists(numbers, min_size=F, max_size=F)},
    optional={"extra": json_values},
)
# Mostly almost-valid readings, with arbitrary JSON and arbitrary bytes mixed in.
documents = st.one_of(
    readings.map(orjson.dumps),
    readings.map(lambda d: orjson.dumps(d)[: max(1, len(orjson.dumps(d)) // 2)]),
    json_values.map(lambda v: orjson.dumps(v)),
    st.binary(max_size=64),
    st.binary(min_size=MAX_BYTES + 1, max_size=MAX_BYTES + 64),
    st.none(),
)


@st.composite
def records(draw: Any) -> Rec:
    value = draw(documents)
    key: bytes | None
    if value is not None and draw(st.booleans()):
        try:
            key = orjson.loads(value)["sensor"].encode()  # usually the right key
        except Exception:
            key = draw(st.one_of(st.none(), st.binary(max_size=8)))
    else:
        key = draw(st.one_of(st.none(), st.binary(max_size=8)))
    offset = draw(st.integers(0, 10**9))
    return Rec("readings", draw(st.integers(0, 5)), offset, 1_764_320_400_000, key, value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), max_size=30))
def test_every_record_is_a_reading_or_a_dead_letter_exactly_once(batch: list[Rec]) -> None:
    good, letters = decode_records(batch, F, MAX_BYTES, max_ts=MAX_TS)
    assert len(good) + len(letters) == len(batch)
    index = good.record_index.tolist()
    assert index == sorted(set(index)) and all(0 <= i < len(batch) for i in index)
    dead_offsets = sorted((dl.partition, dl.offset) for dl in letters)
    good_offsets = sorted(zip(good.partitions.tolist(), good.offsets.tolist(), strict=True))
    assert sorted(dead_offsets + good_offsets) == sorted((r.partition, r.offset) for r in batch)
    assert np.isfinite(good.values).all() and good.values.dtype == np.float32
    assert (good.ts <= MAX_TS).all()
    for i, sensor in zip(good.record_index.tolist(), good.sensors, strict=True):
        source = batch[i]
        doc = orjson.loads(source.value or b"")
        assert doc["sensor"] == sensor and sensor
        assert source.key is None or source.key == sensor.encode()
    for dl in letters:
        assert dl.reason and dl.detail
        key, value, headers = dl.record(1_000)
        assert value is not None and len(key or b"") + len(value) <= 1_000
        assert all(isinstance(v, bytes) for _, v in headers)
        if dl.value is not None and len(dl.value) + len(dl.key or b"") <= 1_000:
            assert (key, value) == (dl.key, dl.value)  # byte for byte when it fits


@st.composite
def readings_records(draw: Any) -> Rec:
    """Well-formed readings (with edge values: empty sensors, numbers past float32,
    far-future ts, a wrong key now and then): the polls the whole-poll path takes."""
    doc = draw(readings)
    right = doc["sensor"].encode()
    key = draw(st.one_of(st.just(right), st.none())) if draw(st.integers(0, 19)) else b"?"
    offset = draw(st.integers(0, 10**9))
    return Rec(
        "readings", draw(st.integers(0, 5)), offset, 1_764_320_400_000, key, orjson.dumps(doc)
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(records(), max_size=30), st.lists(readings_records(), max_size=30)))
def test_the_whole_poll_path_decodes_as_the_record_by_record_path(batch: list[Rec]) -> None:
    """A poll of good readings is parsed in one typed pass; any bad record sends the
    poll record by record. Both must read every record the same way."""
    fast, fast_letters = decode_records(batch, F, MAX_BYTES, max_ts=MAX_TS)
    with mock.patch.object(decoding, "_parse_all", return_value=None):
        slow, slow_letters = decode_records(batch, F, MAX_BYTES, max_ts=MAX_TS)
    assert fast.sensors == slow.sensors
    for name in ("ts", "values", "partitions", "offsets", "log_ts", "record_index"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert [(d.offset, d.reason) for d in fast_letters] == [
        (d.offset, d.reason) for d in slow_letters
    ]
