"""Readings in, forecasts out, through the embedded broker: counts, shapes, alignment,
seeding, dead letters."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.structs import TopicPartition

from streamcast.learn.calendar import calendar_inputs
from streamcast.learn.registry import ModelRegistry
from streamcast.model.graph import seed_states
from streamcast.model.predictor import Predictor
from streamcast.sim.broker import EmbeddedBroker

from .conftest import (
    SPEC,
    STEP_S,
    ModelCall,
    Topics,
    calls_by_window,
    consume,
    fleet_readings,
    forecasts_of,
    produce,
    produce_readings,
    settings_for,
    state_gap,
    state_scale,
)

pytestmark = pytest.mark.integration

SENSORS = 4
STEPS = 96 + 1 + 40  # a full window + truth, then 40 more readings
# The daemon's compiled predictor and the plain one here differ in the last bits.
SEED_RTOL, SEED_ATOL = 1e-4, 1e-4


_MARK = b"test-end-marker"


def _ends_of(broker: EmbeddedBroker, topic: str, count: int) -> dict[int, int]:
    """Per partition, the offset after the last of the ``count`` records in ``topic``.

    Read off the records themselves: the embedded broker's ListOffsets answer (end
    offsets, the high watermark) counts a batch of records as one.
    """
    records = consume(broker, topic, until=lambda r: len(r) >= count)
    assert len(records) == count
    ends: dict[int, int] = {}
    for rec in records:
        ends[rec.partition] = max(ends.get(rec.partition, 0), rec.offset + 1)
    return ends


def _wait_all_read(broker: EmbeddedBroker, topics: Topics, count: int, timeout: float = 60) -> None:
    """Until the daemon's group has committed all ``count`` readings of the input topic.

    Offsets are committed only after the broker acknowledged every forecast and dead
    letter derived from the readings below them, so from then on (with no new input)
    the output topics hold all they will ever hold.
    """
    ends = _ends_of(broker, topics.readings, count)
    wanted = [TopicPartition(topics.readings, p) for p in ends]
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        deadline = time.monotonic() + timeout
        while True:
            found = admin.list_group_offsets({topics.group: wanted})[topics.group]
            committed = {tp.partition: meta.offset for tp, meta in found.items()}
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"group committed {committed}; the readings end at {ends}")
            time.sleep(0.1)
    finally:
        admin.close()


def _consume_final(broker: EmbeddedBroker, topic: str) -> list[Any]:
    """Every record of a topic nothing writes to any more (see ``_wait_all_read``): a
    marker is appended to each partition, and everything before the markers is read."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        partitions = producer.partitions_for(topic)
        for p in partitions:
            producer.send(topic, key=_MARK, value=_MARK, partition=p)
        producer.flush()
    finally:
        producer.close()
    records = consume(
        broker, topic, until=lambda r: {x.partition for x in r if x.key == _MARK} >= partitions
    )
    assert {x.partition for x in records if x.key == _MARK} == partitions
    return [x for x in records if x.key != _MARK]


def _by_sensor(
    readings: list[tuple[str, float, np.ndarray]],
) -> dict[str, list[tuple[float, np.ndarray]]]:
    out: dict[str, list[tuple[float, np.ndarray]]] = defaultdict(list)
    for sensor, ts, values in readings:
        out[sensor].append((ts, values))
    return out


def test_stride_1_forecasts_every_reading_with_a_full_window(
    broker: EmbeddedBroker, topics: Topics, registry, start_daemon
) -> None:
    readings = fleet_readings(SENSORS, STEPS, seed=1)
    produce_readings(broker, topics.readings, readings)
    daemon = start_daemon(settings_for(broker, topics, registry))
    per_sensor_expected = STEPS - (SPEC.num_steps + 1) + 1
    want = SENSORS * per_sensor_expected
    _wait_all_read(broker, topics, len(readings))  # no forecast is still on its way
    records = _consume_final(broker, topics.forecasts)
    assert daemon.stop() == 0
    docs = forecasts_of(records)
    assert len(docs) == want
    counts = Counter(d["sensor"] for d in docs)
    assert counts == {s: per_sensor_expected for s in _by_sensor(readings)}

    series = _by_sensor(readings)
    for rec, doc in zip(records, docs, strict=True):
        assert rec.key.decode() == doc["sensor"]
        assert doc["model_version"] == 1
        assert doc["seed"] == "truth"
        assert doc["horizon"] == SPEC.horizon
        values = np.asarray(doc["values"])
        assert values.shape == (SPEC.horizon, SPEC.num_features)
        assert np.isfinite(values).all()
        assert doc["step_s"] == pytest.approx(STEP_S, rel=1e-6)
        assert doc["issued_at"] > 0
    # ts alignment: the forecasts of a sensor carry the ts of the readings that completed
    # each window, which are exactly its readings from the 97th on, in order.
    for sensor, rows in series.items():
        got = [d["ts"] for d in docs if d["sensor"] == sensor]
        assert got == [ts for ts, _ in rows[SPEC.num_steps :]]


def test_stride_96_forecasts_once_per_new_window(
    broker: EmbeddedBroker, topics: Topics, registry, start_daemon
) -> None:
    steps = 97 + 96 * 2 + 10  # first window, two more full windows, then a partial one
    readings = fleet_readings(2, steps, seed=2)
    produce_readings(broker, topics.readings, readings)
    settings = settings_for(
        broker, topics, registry, window={"stride": 96}, kafka={"fetch_max_wait_ms": 30}
    )
    daemon = start_daemon(settings)
    # Every reading committed, so every forecast published: count them exactly.
    _wait_all_read(broker, topics, len(readings))
    # The client's own default (500 ms) would let a reading wait that long at the broker.
    assert daemon.daemon.source.consumer.config["fetch_max_wait_ms"] == 30
    docs = forecasts_of(_consume_final(broker, topics.forecasts))
    assert daemon.stop() == 0
    counts = Counter(d["sensor"] for d in docs)
    assert counts == {"sensor-000": 3, "sensor-001": 3}
    ts = sorted(d["ts"] for d in docs if d["sensor"] == "sensor-000")
    assert np.diff(ts).tolist() == [96 * STEP_S, 96 * STEP_S]


def test_states_are_seeded_from_the_true_previous_reading(
    broker: EmbeddedBroker,
    topics: Topics,
    registry,
    start_daemon,
    model_calls: list[ModelCall],
) -> None:
    """Every window goes into the model with the reading just before it as its truth, and
    the published forecast is what the model gives for that window and truth.

    The model is as trained, and it forgets its seed within the 96 steps: another truth
    moves the forecast by float32 rounding at most, so the forecast cannot show which
    truth seeded it. The truth is compared exactly where the daemon hands it to the model
    (``model_calls``), and the seed it makes is shown to tell the plausible wrong truths
    apart.
    """
    readings = fleet_readings(2, 97 + 3, seed=4)
    produce_readings(broker, topics.readings, readings)
    daemon = start_daemon(settings_for(broker, topics, registry))
    records = consume(broker, topics.forecasts, until=lambda r: len(r) >= 8)
    assert daemon.stop() == 0
    given = calls_by_window(list(model_calls))  # the daemon's calls, before any of ours
    docs = forecasts_of(records)
    assert len(docs) == 8

    model = ModelRegistry(registry).load(expect=SPEC).model
    predictor = Predictor(model, SPEC, max_batch=8, jit_compile="off")
    series = _by_sensor(readings)
    for doc in docs:
        sensor, rows = doc["sensor"], series[doc["sensor"]]
        end = [ts for ts, _ in rows].index(doc["ts"])
        window = np.stack([v for _, v in rows[end - 95 : end + 1]]).astype(np.float32)
        truth = rows[end - 96][1].astype(np.float32)
        seen = given.get(window.tobytes())
        assert seen, f"{sensor} ts={doc['ts']}: the daemon never gave the model this window"
        for call, row in seen:
            np.testing.assert_array_equal(call.truths[row], truth, err_msg=f"{sensor} seed")
        published = np.asarray(doc["values"], np.float32)
        assert any(np.array_equal(call.forecast[row], published) for call, row in seen)
        # The stepper's own forecast for this window and truth (the daemon's is compiled),
        # at the window's time (the default model has the calendar).
        calendar = calendar_inputs([doc["ts"]], doc["step_s"])
        expected = predictor.predict(window[None], truth[None], calendar=calendar).forecast[0]
        np.testing.assert_allclose(published, expected, rtol=SEED_RTOL, atol=SEED_ATOL)

        # What a wrong seed would have been: none, the window's own first reading (a store
        # off by one), the other sensor's reading of the same step. Each must seed states
        # far outside the tolerance above, or the exact truth check proves nothing.
        other = next(s for s in series if s != sensor)
        wrong = {
            "zeros": np.zeros_like(truth),
            "first of the window": window[0],
            "other sensor": series[other][end - 96][1].astype(np.float32),
        }
        seeds = seed_states(model, window[None], truth[None])
        told_apart = 10 * (SEED_ATOL + SEED_RTOL * state_scale(seeds))
        for name, value in wrong.items():
            gap = state_gap(seeds, seed_states(model, window[None], value[None]))
            assert gap > told_apart, f"{sensor}: seeding with {name} differs by only {gap:.3g}"


MALFORMED: list[tuple[bytes | None, bytes, str]] = [
    (b"sensor-000", b"{not json", "not_json"),
    (b"sensor-000", b"[1, 2]", "not_object"),
    (b"sensor-000", b'{"sensor": "sensor-000", "ts": 1.0}', "missing_field:values"),
    (b"sensor-000", b'{"sensor": "sensor-000", "values": [1, 2]}', "missing_field:ts"),
    (b"sensor-000", b'{"sensor": "sensor-000", "ts": "x", "values": [1, 2]}', "wrong_type:ts"),
    (b"sensor-000", b'{"sensor": "sensor-000", "ts": 1.0, "values": [1]}', "wrong_length"),
    (b"sensor-000", b'{"sensor": "sensor-000", "ts": 1.0, "values": [1e400, 2]}', "not_finite"),
    (
        b"sensor-000",
        b'{"sensor": "sensor-000", "ts": 1.0, "values": [1, 2], "pad": "' + b"x" * 70_000 + b'"}',
        "too_large",
    ),
    (b"other", b'{"sensor": "sensor-000", "ts": 1.0, "values": [1, 2]}', "key_mismatch"),
]


def test_malformed_readings_go_to_the_dead_letter_topic_and_valid_ones_all_get_forecasts(
    broker: EmbeddedBroker, topics: Topics, registry, start_daemon
) -> None:
    readings = fleet_readings(1, 97 + 20, seed=5)
    items: list[tuple[bytes | None, bytes]] = []
    from streamcast.stream.messages import encode_reading

    for i, (sensor, ts, values) in enumerate(readings):
        items.append((sensor.encode(), encode_reading(sensor, ts, values)))
        if i >= 90 and i - 90 < len(MALFORMED):  # malformed among the valid ones
            key, value, _ = MALFORMED[i - 90]
            items.append((key, value))
    # Replays of the past: one duplicate ts, one older ts.
    items.append((b"sensor-000", encode_reading("sensor-000", readings[-1][1], readings[-1][2])))
    items.append((b"sensor-000", encode_reading("sensor-000", readings[50][1], readings[50][2])))
    produce(broker, topics.readings, items)
    # One partition only for this test: order across malformed and valid is then total.
    daemon = start_daemon(settings_for(broker, topics, registry))
    want_dl = len(MALFORMED) + 2
    _wait_all_read(broker, topics, len(items))  # every dead letter and forecast acknowledged
    letters = _consume_final(broker, topics.dlq)
    forecasts = _consume_final(broker, topics.forecasts)
    assert len(letters) == want_dl
    metrics = daemon.daemon.metrics
    assert daemon.stop() == 0

    reasons = Counter(dict(r.headers)["streamcast.reason"].decode() for r in letters)
    expected = Counter(reason for _, _, reason in MALFORMED)
    expected.update({"duplicate": 1, "out_of_order": 1})
    assert reasons == expected
    originals = {bytes(v) for _, v, _ in MALFORMED}
    for rec in letters:
        headers = dict(rec.headers)
        assert headers["streamcast.source.topic"].decode() == topics.readings
        assert int(headers["streamcast.source.offset"]) >= 0
        assert headers["streamcast.detail"]
        if headers["streamcast.reason"] not in (b"duplicate", b"out_of_order"):
            assert rec.value in originals  # the bytes, unchanged
    assert len(forecasts_of(forecasts)) == 21  # every valid reading past the first window
    for reason, n in expected.items():
        assert (
            metrics.registry.get_sample_value("streamcast_dead_letters_total", {"reason": reason})
            == n
        )
    assert metrics.registry.get_sample_value("streamcast_readings_total", {"outcome": "ok"}) == len(
        readings
    )
    assert orjson.loads(forecasts[0].value)["sensor"] == "sensor-000"
