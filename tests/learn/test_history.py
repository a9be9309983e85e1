"""History: bounded, ordered, duplicate-proof per-sensor series, fair within a byte budget,
cut where serving restarts a window; the replay buffer built on it."""

from __future__ import annotations

import gc
import math
import tracemalloc

import numpy as np
import pytest

from streamcast.learn.examples import split_sizes
from streamcast.learn.gaps import split_at_restarts, window_restarts
from streamcast.learn.history import SENSOR_OVERHEAD_BYTES, History
from streamcast.learn.replay import ReplayBuffer
from streamcast.stream.messages import Readings
from streamcast.stream.windows import WindowStore

F = 2
MiB = 2**20


def batch(sensors: list[str], ts: list[float]) -> Readings:
    t = np.asarray(ts, np.float64)
    return Readings(sensors, t, np.stack([t, -t], axis=1).astype(np.float32))


def test_series_in_ts_order_per_sensor() -> None:
    h = History(F, 100)
    h.add(batch(["a", "b", "a", "b", "a"], [1, 10, 2, 11, 3]))
    h.add(batch(["b", "a"], [12, 4]))
    assert len(h) == 2 and h.num_readings == 7
    by_name = dict(zip(h.sensors(), h.series(), strict=True))
    np.testing.assert_array_equal(by_name["a"][:, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(by_name["b"][:, 1], [-10, -11, -12])
    assert all(s.dtype == np.float32 and s.shape[1] == F for s in h.series())
    assert h.time_range() == (1.0, 12.0)


def test_bounded_keeps_the_newest() -> None:
    h = History(F, 50)
    for start in range(0, 1_000, 37):  # odd batch sizes: grow, then wrap many times
        h.add(batch(["a"] * 37, [float(t) for t in range(start, start + 37)]))
    (series,) = h.series()
    np.testing.assert_array_equal(series[:, 0], np.arange(1_036 - 50, 1_036))
    h.add(batch(["a"] * 120, [float(t) for t in range(2_000, 2_120)]))  # one batch > bound
    (series,) = h.series()
    np.testing.assert_array_equal(series[:, 0], np.arange(2_070, 2_120))
    assert h.nbytes <= SENSOR_OVERHEAD_BYTES + 50 * (8 + 4 * F)


def test_replayed_and_older_readings_are_skipped() -> None:
    h = History(F, 100)
    assert h.add(batch(["a"] * 3, [1, 2, 3])) == 3
    assert h.add(batch(["a"] * 4, [2, 3, 4, 4])) == 1
    (series,) = h.series()
    np.testing.assert_array_equal(series[:, 0], [1, 2, 3, 4])


def test_examples_count() -> None:
    h = History(F, 1_000)
    h.add(batch(["a"] * 10 + ["b"] * 3, [float(t) for t in range(10)] + [1.0, 2.0, 3.0]))
    # a: 10 - (3 + 1 + 2) + 1 = 5; b: too short.
    assert h.examples(num_steps=3, horizon=2) == 5
    assert h.examples(num_steps=9, horizon=1) == 0


def test_empty_and_validation() -> None:
    h = History(F, 10)
    first, last = h.time_range()
    assert math.isnan(first) and math.isnan(last)
    assert h.series() == [] and h.examples(3, 2) == 0
    assert h.add(Readings.empty(F)) == 0
    with pytest.raises(ValueError):
        h.add(Readings(["a"], np.array([1.0]), np.zeros((1, 3), np.float32)))
    with pytest.raises(ValueError):
        History(F, 0)
    with pytest.raises(ValueError, match="span"):
        History(F, 100, span=50, max_bytes=SENSOR_OVERHEAD_BYTES + 49 * (8 + 4 * F))
    h.add(batch(["a"], [5]))
    h.clear()
    assert len(h) == 0 and h.nbytes == 0 and h.num_readings == 0


# -- the byte budget ----------------------------------------------------------------------


def _in_turn(h: History, sensors: int, steps: int, per_poll: int = 500) -> int:
    """Every sensor reports once per step, in turn, ``per_poll`` readings per add; returns
    the most bytes held after any add."""
    names = [f"sensor-{i:05d}" for i in range(sensors)]
    rng = np.random.default_rng(0)
    most = 0
    for step in range(steps):
        ts = np.full(sensors, 60.0 * step)
        values = rng.normal(size=(sensors, F)).astype(np.float32)
        for lo in range(0, sensors, per_poll):
            h.add(
                Readings(
                    names[lo : lo + per_poll], ts[lo : lo + per_poll], values[lo : lo + per_poll]
                )
            )
            most = max(most, h.nbytes)
    return most


def test_3000_sensors_in_turn_give_the_first_model_enough_examples() -> None:
    num_steps, horizon, validation_fraction = 24, 6, 0.2
    span = num_steps + 1 + horizon
    budget = 4 * MiB
    h = History(F, 10 * span, max_bytes=budget, span=span)
    most = _in_turn(h, sensors=3_000, steps=150)
    assert most <= budget
    assert len(h) == 3_000  # every sensor kept, none evicted by the others
    lengths = h.lengths()
    assert min(lengths) >= span  # each holds a training span at least
    assert max(lengths) - min(lengths) <= 1  # and about the same share
    examples = h.examples(num_steps, horizon)
    assert examples >= 3_000 * 10
    train, val = split_sizes(lengths, num_steps, horizon, validation_fraction)
    assert train >= 2_000 and val > 0  # training.bootstrap_windows' default
    stats = h.stats(num_steps, horizon)
    assert (stats.sensors, stats.readings, stats.examples) == (3_000, sum(lengths), examples)
    assert stats.nbytes == h.nbytes <= stats.max_bytes == budget
    assert "3000 sensors" in str(stats)


def test_nbytes_covers_what_the_history_allocates() -> None:
    names = [f"sensor-{i:05d}" for i in range(300)]
    polls = [
        Readings(names, np.full(300, float(t)), np.ones((300, F), np.float32)) for t in range(60)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        h = History(F, 10_000, max_bytes=400_000, span=20)
        for r in polls:
            h.add(r)
        gc.collect()
        allocated, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert h.trims >= 1
    assert 0.8 * h.nbytes <= allocated <= h.nbytes <= 400_000


def test_trims_the_sensors_holding_the_most_first() -> None:
    span, reading = 10, 8 + 4 * F
    budget = 20 * SENSOR_OVERHEAD_BYTES + 2_000 * reading
    h = History(F, 100_000, max_bytes=budget, span=span)
    h.add(batch(["big"] * 1_500, [float(t) for t in range(1_500)]))
    small = [f"s{i}" for i in range(19)]
    for t in range(30):
        h.add(batch(small, [float(t)] * len(small)))
    lengths = dict(zip(h.sensors(), h.lengths(), strict=True))
    assert all(lengths[s] == 30 for s in small)  # the small ones were not touched
    assert span <= lengths["big"] < 1_500  # the big one gave way, and kept its newest
    assert h.series()[h.sensors().index("big")][-1, 0] == 1_499
    assert h.nbytes <= budget


def test_never_below_a_span_sensors_wait_for_room() -> None:
    span, reading = 10, 8 + 4 * F
    budget = 3 * (SENSOR_OVERHEAD_BYTES + span * reading)  # room for three spans
    h = History(F, 1_000, max_bytes=budget, span=span)
    for t in range(20):
        h.add(batch(["a", "b", "c", "d"], [float(t)] * 4))
    assert h.sensors() == ["a", "b", "c"] and h.lengths() == [span] * 3
    assert h.refused == 20  # every reading of d
    assert h.nbytes <= budget


def test_max_sensors_refuses_newcomers_until_one_goes_silent() -> None:
    h = History(F, 10, max_sensors=2, max_bytes=SENSOR_OVERHEAD_BYTES * 4 + 60 * (8 + 4 * F))
    h.add(batch(["a", "b"], [1, 1]))
    h.add(batch(["a"], [2]))
    h.add(batch(["c"], [1]))
    assert sorted(h.sensors()) == ["a", "b"] and h.refused == 1
    # b stays silent while more readings arrive than the whole budget holds: c replaces it.
    h.add(batch(["a"] * 300, [float(t) for t in range(3, 303)]))
    h.add(batch(["c"], [2]))
    assert sorted(h.sensors()) == ["a", "c"]


# -- gaps: the same cut as WindowStore ----------------------------------------------------


def _irregular_ts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Jitter, missed readings, outages, outages in a row and a change of cadence."""
    step = 60.0
    gaps = []
    for i in range(n):
        if i == n // 2:
            step = 300.0  # a new cadence: one restart, then the estimate re-seeds
        u = rng.random()
        factor = 1.0 + rng.normal(0, 0.05)
        if u < 0.05:
            factor = 2.0  # one missed reading: no restart
        elif u < 0.15:
            factor = rng.uniform(1.8, 3.4)  # around either gap factor: the estimate decides
        elif u < 0.2:
            factor = rng.uniform(4.0, 12.0)  # an outage
        gaps.append(step * factor)
    return 1_000.0 + np.cumsum(np.abs(gaps))


def _store_restarts(
    sensors: list[str], ts: np.ndarray, gap_factor: float
) -> set[tuple[str, float]]:
    """(sensor, ts) of every reading where a real WindowStore restarts the window."""
    store = WindowStore(16, 4, F, gap_factor=gap_factor)
    values = np.zeros((1, F), np.float32)
    out = set()
    for s, t in zip(sensors, ts.tolist(), strict=True):
        done = store.append(Readings([s], np.array([t]), values), emit=False)
        assert len(done.rejected) == 0
        if done.restarts:
            out.add((s, t))
    return out


@pytest.mark.parametrize("gap_factor", [3.0, 2.2])
def test_a_gap_splits_the_series_where_the_window_store_restarts(gap_factor: float) -> None:
    rng = np.random.default_rng(7)
    per_sensor = {f"s{i}": _irregular_ts(rng, 400) for i in range(5)}
    # Interleave the sensors by ts, as a topic would deliver them.
    sensors = [s for s, ts in per_sensor.items() for _ in ts]
    ts = np.concatenate(list(per_sensor.values()))
    order = np.argsort(ts, kind="stable")
    sensors, ts = [sensors[i] for i in order], ts[order]
    expected = _store_restarts(sensors, ts, gap_factor)
    assert len(expected) >= 20  # the data does exercise the rule

    h = History(F, 10_000, gap_factor=gap_factor)
    lo = 0
    for size in rng.integers(1, 60, size=len(ts)):  # odd poll sizes: one reading, several
        h.add(batch(sensors[lo : lo + size], ts[lo : lo + size].tolist()))
        lo += size
        if lo >= len(ts):
            break
    segments = h.segments()
    starts = {(seg.sensor, float(seg.ts[0])) for seg in segments}
    firsts = {(s, float(t[0])) for s, t in per_sensor.items()}
    assert starts - firsts == expected
    assert len(segments) == len(expected) + len(per_sensor)
    for s, t in per_sensor.items():
        mine = {(s, float(t[i])) for i in window_restarts(t, gap_factor)}
        assert mine == {x for x in expected if x[0] == s}
        parts = split_at_restarts(t, np.zeros((len(t), F), np.float32), gap_factor)
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), t)
    # The series the trainer gets are those segments, and no window bridges a gap.
    assert h.lengths() == [len(seg.ts) for seg in segments]
    assert sum(max(0, n - 8 + 1) for n in h.lengths()) == h.examples(4, 3)


def test_segments_survive_trimming() -> None:
    ts = [float(t) for t in range(0, 100)] + [float(t) for t in range(1_000, 1_100)]
    h = History(F, 150)  # keeps the newest 150: 50 before the gap, 100 after
    for lo in range(0, 200, 7):
        h.add(batch(["a"] * len(ts[lo : lo + 7]), ts[lo : lo + 7]))
    assert h.lengths() == [50, 100]
    np.testing.assert_array_equal(h.timestamps()[1], np.arange(1_000, 1_100))
    h.add(batch(["a"] * 60, [float(t) for t in range(1_100, 1_160)]))
    assert h.lengths() == [150]  # the older segment has aged out entirely


# -- replay buffer ------------------------------------------------------------------------


def test_replay_counts_new_examples_and_drains_fairly() -> None:
    num_steps, horizon = 5, 2
    span = num_steps + 1 + horizon
    buf = ReplayBuffer(F, num_steps, horizon, max_bytes=MiB)
    buf.add(batch(["a"] * 200, [float(t) for t in range(200)]))
    buf.add(batch(["b"] * 20, [float(t) for t in range(20)]))
    assert buf.new_examples == (200 - span + 1) + (20 - span + 1)
    assert buf.examples() == buf.new_examples
    runs = buf.drain(max_examples=40)
    assert buf.new_examples == 0
    made = {s: sum(len(r.ts) - span + 1 for r in runs if r.sensor == s) for s in "ab"}
    assert made == {"b": 13, "a": 27}  # b gives all it has, a fills the rest
    a_run = next(r for r in runs if r.sensor == "a")
    np.testing.assert_array_equal(a_run.ts, np.arange(200 - (27 + span - 1), 200))
    assert buf.examples() == 193 + 13  # draining keeps the runs for the next training
    buf.add(batch(["b"] * 3, [20.0, 21.0, 22.0]))
    assert buf.new_examples == 3
    assert buf.nbytes <= buf.max_bytes


def test_replay_stays_within_its_budget() -> None:
    buf = ReplayBuffer(F, 12, 4, max_bytes=MiB)
    most = _in_turn(buf.history, sensors=1_000, steps=120, per_poll=250)
    assert most <= MiB and buf.nbytes <= MiB
    assert min(buf.history.lengths()) >= 12 + 1 + 4
    assert buf.new_examples == buf.history.examples_seen > buf.examples()


def test_replay_gathers_polls_and_holds_what_a_history_fed_poll_by_poll_holds() -> None:
    """Polls reach the history in gathered calls; while the budget does not bind, the
    outcome is the same as adding each poll (stale readings and a gap included). When it
    binds, trims fall at other moments, and the budget and the span still hold."""
    rng = np.random.default_rng(3)
    names = [f"s{i:03d}" for i in range(300)]
    direct = History(F, 400, max_bytes=4 * MiB, span=20)
    buf = ReplayBuffer(F, 12, 7, max_bytes=4 * MiB, max_per_sensor=400)
    tight = ReplayBuffer(F, 12, 7, max_bytes=MiB // 3)
    added = 0
    for step in range(160):
        polled = rng.choice(names, size=150)
        ts = 60.0 * step + np.where(rng.random(150) < 0.05, -120.0, 0.0)  # a few stale ones
        ts[polled == "s007"] += 3_600.0 * (step >= 80)  # one sensor's gap
        readings = Readings(list(polled), ts, rng.normal(size=(150, F)).astype(np.float32))
        direct.add(readings)
        buf.add(readings)
        tight.add(readings)
        added += 150
    assert buf.history.num_readings < direct.num_readings  # part is still gathered
    assert buf.new_examples == direct.examples_seen
    # The same runs; only the order of the sensors (least recently updated first) may
    # differ, at the grain of one gathered call.
    gathered, fed = buf.drain(), direct.segments()
    assert sorted(len(r.ts) for r in gathered) == sorted(len(r.ts) for r in fed)
    by_key = {(r.sensor, r.ts[0]): r for r in fed}
    assert len(by_key) == len(fed) == len(gathered)
    for run in gathered:
        twin = by_key[(run.sensor, run.ts[0])]
        np.testing.assert_array_equal(run.ts, twin.ts)
        np.testing.assert_array_equal(run.values, twin.values)
    assert added > 20_000  # (ring capacities, and so nbytes, grow in other steps)
    assert tight.nbytes <= MiB // 3 and tight.history.trims > 0
    assert min(tight.lengths()) >= 1 and len(tight.history) == 300
