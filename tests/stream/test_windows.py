"""WindowStore against a plain per-reading reference built from the raw series."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcast.stream.cadence import on_stride
from streamcast.stream.messages import Readings
from streamcast.stream.windows import Appended, WindowStore

F = 2


def readings(
    sensors: list[str], ts: list[float], values: npt.ArrayLike | None = None, partition: int = 0
) -> Readings:
    n = len(sensors)
    if values is None:
        values = np.stack([np.asarray(ts), -np.asarray(ts)], axis=1) if n else np.zeros((0, F))
    return Readings(
        sensors,
        np.asarray(ts, np.float64),
        np.asarray(values, np.float32).reshape(n, F),
        partitions=np.full(n, partition, np.int32),
    )


@dataclass
class RefSensor:
    """One sensor, one reading at a time: the behaviour the store must match."""

    rows: list[np.ndarray] = field(default_factory=list)
    last_ts: float = -math.inf
    step: float = 0.0
    count: int = 0


def reference(
    batch: Readings, num_steps: int, stride: int = 1, gap_factor: float = 3.0
) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], list[tuple[int, str]], int]:
    """(index, window, truth) per ready reading, (index, reason) per rejection, restarts."""
    state: dict[str, RefSensor] = {}
    ready = []
    rejected = []
    restarts = 0
    length = num_steps + 1
    for i, name in enumerate(batch.sensors):
        s = state.setdefault(name, RefSensor())
        t = float(batch.ts[i])
        if t <= s.last_ts:
            rejected.append((i, "duplicate" if t == s.last_ts else "out_of_order"))
            continue
        diff = t - s.last_ts
        if s.count >= 2 and diff > gap_factor * s.step:
            s.count = 0
            s.rows = []
            restarts += 1
        elif s.count == 1:
            s.step = diff
        elif s.count >= 2:
            clipped = min(max(diff, s.step / 2), s.step * 2)
            s.step = s.step + 0.1 * (clipped - s.step)
        s.rows.append(batch.values[i])
        s.rows = s.rows[-length:]
        s.count += 1
        s.last_ts = t
        on = stride == 1 or bool(on_stride(np.array([t]), np.array([s.step]), stride)[0])
        if s.count >= length and on:
            ready.append((i, np.stack(s.rows[1:]), s.rows[0]))
    return ready, rejected, restarts


def check_against_reference(
    out: Appended, batch: Readings, num_steps: int, stride: int = 1, gap_factor: float = 3.0
) -> None:
    ready, rejected, restarts = reference(batch, num_steps, stride, gap_factor)
    assert out.ready.tolist() == [i for i, _, _ in ready]
    assert out.rejected.tolist() == [i for i, _ in rejected]
    assert out.reasons == [r for _, r in rejected]
    assert out.restarts == restarts
    assert out.windows.shape == (len(ready), num_steps, F)
    assert out.truths.shape == (len(ready), F)
    for k, (_, window, truth) in enumerate(ready):
        np.testing.assert_array_equal(out.windows[k], window)
        np.testing.assert_array_equal(out.truths[k], truth)


def concat_appends(
    store: WindowStore, batch: Readings, cuts: list[int], emit: bool = True
) -> Appended:
    parts = []
    bounds = [0, *sorted(cuts), len(batch)]
    for a, b in itertools.pairwise(bounds):
        out = store.append(batch.take(np.arange(a, b)), emit=emit)
        out.ready = out.ready + a
        out.rejected = out.rejected + a
        parts.append(out)
    return Appended(
        rejected=np.concatenate([p.rejected for p in parts]),
        reasons=[r for p in parts for r in p.reasons],
        ready=np.concatenate([p.ready for p in parts]),
        windows=np.concatenate([p.windows for p in parts]),
        truths=np.concatenate([p.truths for p in parts]),
        slots=np.concatenate([p.slots for p in parts]),
        generations=np.concatenate([p.generations for p in parts]),
        counts=np.concatenate([p.counts for p in parts]),
        step_s=np.concatenate([p.step_s for p in parts]),
        restarts=sum(p.restarts for p in parts),
        evicted=sum(p.evicted for p in parts),
    )


def test_ring_wraps_to_exact_last_readings() -> None:
    num_steps = 4
    ts = [float(10 * i) for i in range(23)]
    batch = readings(["a"] * 23, ts)
    one_by_one = WindowStore(4, num_steps, F)
    outs = [one_by_one.append(batch.take([i])) for i in range(23)]
    for i, out in enumerate(outs):
        if i < num_steps:
            assert len(out) == 0
            continue
        np.testing.assert_array_equal(out.truths[0], [ts[i - 4], -ts[i - 4]])
        np.testing.assert_array_equal(out.windows[0][:, 0], ts[i - 3 : i + 1])
        assert out.step_s[0] == pytest.approx(10.0)
    whole = WindowStore(4, num_steps, F).append(batch)
    check_against_reference(whole, batch, num_steps)
    assert len(whole) == 23 - num_steps
    window, truth = one_by_one.window_of("a")
    np.testing.assert_array_equal(window[:, 0], ts[-4:])
    assert truth[0] == ts[-5]


@pytest.mark.parametrize(("stride", "n", "expected"), [(1, 300, 204), (96, 300, 3), (96, 96, 0)])
def test_ready_counts_by_stride(stride: int, n: int, expected: int) -> None:
    store = WindowStore(8, 96, F, stride=stride)
    batch = readings(["a"] * n, [60.0 * i for i in range(n)])
    out = store.append(batch)
    assert len(out) == expected
    check_against_reference(out, batch, 96, stride)
    if stride == 96 and expected:
        # Windows 97, 193, 289 readings in: consecutive windows do not overlap.
        assert out.ready.tolist() == [96, 192, 288]


def test_many_readings_per_sensor_each_yield_a_window() -> None:
    sensors = [f"s{j}" for j in range(100)]
    num_steps = 5
    per = 20
    names = [s for _ in range(per) for s in sensors]
    ts = [100.0 * r + j * 0.01 for r in range(per) for j in range(100)]
    batch = readings(names, ts)
    store = WindowStore(200, num_steps, F)
    out = store.append(batch)
    assert len(out) == 100 * (per - num_steps)
    assert np.all(np.diff(out.ready) > 0)
    check_against_reference(out, batch, num_steps)
    assert len(store) == 100


def test_duplicates_and_out_of_order_within_and_across_batches() -> None:
    store = WindowStore(4, 3, F)
    first = store.append(readings(["a", "a", "a", "b", "a"], [10, 20, 20, 5, 15]))
    assert first.rejected.tolist() == [2, 4]
    assert first.reasons == ["duplicate", "out_of_order"]
    second = store.append(readings(["a", "b", "a"], [20, 5, 30]))
    assert second.rejected.tolist() == [0, 1]
    assert second.reasons == ["duplicate", "duplicate"]
    third = store.append(readings(["a", "a"], [40, 50]))
    assert third.ready.tolist() == [0, 1]
    np.testing.assert_array_equal(third.windows[1][:, 0], [30, 40, 50])
    assert third.truths[1][0] == 20


def test_gap_restarts_window_and_clears_carry() -> None:
    store = WindowStore(4, 3, F, gap_factor=3.0, state_width=2)
    out = store.append(readings(["a"] * 5, [0, 10, 20, 30, 40]))
    assert len(out) == 2
    gen, count = int(out.generations[-1]), out.counts[-1:]
    store.carried.put(out.slots[-1:], out.generations[-1:], count, np.ones((1, 2), np.float32))
    assert store.carried.get(out.slots[-1:], out.generations[-1:], count + 1, 1)[1].tolist() == [
        True
    ]
    # 30 s is not more than 3 x 10 s: no restart; 100 s is.
    out = store.append(readings(["a", "a"], [70, 170]))
    assert out.restarts == 1 and store.restarts_total == 1
    assert len(out) == 1  # the 70 s reading still completed a window
    slot = store.slot_of("a")
    assert slot is not None
    states, has = store.carried.get(np.array([slot]), np.array([gen]), count + 2, 2)
    assert not has.any() and not states.any()
    # After the restart a full window + truth is needed again; the new step is re-learnt.
    out = store.append(readings(["a"] * 4, [230, 290, 350, 410]))
    assert out.ready.tolist() == [2, 3]
    assert out.generations[0] == gen + 1
    np.testing.assert_array_equal(out.windows[0][:, 0], [230, 290, 350])
    assert out.truths[0][0] == 170
    assert out.step_s[-1] == pytest.approx(60.0)


def test_jitter_does_not_restart() -> None:
    rng = np.random.default_rng(1)
    ts = np.cumsum(rng.uniform(5, 15, size=2_000))
    store = WindowStore(1, 10, F)
    out = store.append(readings(["a"] * len(ts), ts.tolist()))
    assert out.restarts == 0
    assert 7 < out.step_s[-1] < 13


def test_evicts_the_idlest_sensor() -> None:
    store = WindowStore(3, 2, F)
    store.append(readings(["a", "b", "c"], [1, 1, 1]))
    store.append(readings(["a", "c"], [2, 2]))  # b is now the idlest
    out = store.append(readings(["d"], [3]))
    assert out.evicted == 1 and store.evicted_total == 1
    assert "b" not in store and {"a", "c", "d"} == {store.sensor_of(i) for i in range(3)}
    out = store.append(readings(["e", "a"], [4, 3]))  # c idlest; a is in the batch
    assert out.evicted == 1 and "c" not in store and "a" in store
    assert len(store) == 3 and store.evicted_total == 2


def test_more_sensors_in_one_batch_than_capacity() -> None:
    names = [f"s{j % 7}" for j in range(70)]
    ts = [float(j) for j in range(70)]
    batch = readings(names, ts)
    store = WindowStore(3, 2, F)
    out = store.append(batch)
    assert len(store) == 3 and out.evicted > 0
    assert out.evicted == store.evicted_total
    assert len(out.rejected) == 0


def test_carry_round_trip_and_generation_invalidation() -> None:
    store = WindowStore(2, 2, F, state_width=3)
    out = store.append(readings(["a", "b"] * 3, [1, 1, 2, 2, 3, 3]))
    assert len(out) == 2
    assert out.counts.tolist() == [3, 3]  # readings since each window's start
    nxt = out.counts + 1  # the next windows, one reading on
    states, has = store.carried.get(out.slots, out.generations, nxt, 1)
    assert states.shape == (2, 3) and not has.any()
    new = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    assert store.carried.put(out.slots, out.generations, out.counts, new) == 2
    states, has = store.carried.get(out.slots, out.generations, nxt, 1)
    assert has.all()
    np.testing.assert_array_equal(states, new)
    # A state continues only the window exactly ``steps`` readings on, no other.
    assert not store.carried.get(out.slots, out.generations, nxt + 1, 1)[1].any()
    assert store.carried.get(out.slots, out.generations, nxt + 1, 2)[1].all()
    # a is evicted by c; its slot is reused: the old generation must not see c's states.
    store.append(readings(["b"], [4]))
    store.append(readings(["c"], [1]))
    states, has = store.carried.get(out.slots, out.generations, nxt, 1)
    assert has.tolist() == [False, True]
    assert store.carried.put(out.slots, out.generations, out.counts, new * 2) == 1
    slot_c = store.slot_of("c")
    assert slot_c == int(out.slots[0])
    gen_c = store._generation[slot_c]
    assert not store.carried.get(np.array([slot_c]), np.array([gen_c]), np.array([1]), 1)[1].any()
    with pytest.raises(ValueError):
        store.carried.put(out.slots, out.generations, out.counts, np.zeros((2, 4), np.float32))


def test_store_carry_keeps_newest_row_per_sensor() -> None:
    store = WindowStore(2, 2, F, state_width=1)
    out = store.append(readings(["a"] * 5, [1, 2, 3, 4, 5]))
    assert len(out) == 3
    assert out.counts.tolist() == [3, 4, 5]
    store.carried.put(out.slots, out.generations, out.counts, np.array([[1], [2], [3]], np.float32))
    assert store.carried.get(out.slots[:1], out.generations[:1], np.array([6]), 1)[0].tolist() == [
        [3.0]
    ]


def test_drop_partitions() -> None:
    store = WindowStore(8, 2, F)
    store.append(readings(["a", "b"], [1, 1], partition=0))
    store.append(readings(["c"], [1], partition=1))
    store.append(readings(["d"], [1], partition=2))
    assert store.drop_partitions([0, 2, 9]) == 3
    assert len(store) == 1 and "c" in store
    assert store.drop_partitions([]) == 0
    out = store.append(readings(["a", "a", "a"], [5, 6, 7], partition=3))
    assert len(out) == 1  # rebuilt from scratch: no stale readings
    np.testing.assert_array_equal(out.windows[0][:, 0], [6, 7])


def test_emit_false_replay_equals_emit_true_state() -> None:
    rng = np.random.default_rng(7)
    names = [f"s{j}" for j in rng.integers(0, 12, size=600)]
    ts = (np.arange(600) * 3.0 + rng.uniform(0, 1, 600)).tolist()
    ts[100] += 500.0  # one gap restart
    batch = readings(names, ts, rng.normal(size=(600, F)))
    live = WindowStore(16, 6, F, stride=2, state_width=1)
    replay = WindowStore(16, 6, F, stride=2, state_width=1)
    out_live = live.append(batch)
    out_replay = replay.append(batch, emit=False)
    assert len(out_live) > 0 and len(out_replay) == 0
    assert out_replay.windows.shape == (0, 6, F)
    assert out_replay.restarts == out_live.restarts
    assert out_replay.rejected.tolist() == out_live.rejected.tolist()
    for name in ("_ring", "_pos", "_count", "_last_ts", "_step", "_generation"):
        np.testing.assert_array_equal(getattr(live, name), getattr(replay, name), err_msg=name)
    np.testing.assert_array_equal(live.slots.partition, replay.slots.partition)
    assert live.slots._slot_of == replay.slots._slot_of
    nxt = readings(sorted(set(names)), [10_000.0] * len(set(names)))
    a, b = live.append(nxt), replay.append(nxt)
    np.testing.assert_array_equal(a.ready, b.ready)
    np.testing.assert_array_equal(a.windows, b.windows)


def test_memory_per_sensor_close_to_raw_window() -> None:
    store = WindowStore(10_000, 96, 2)
    per_sensor = store.nbytes / 10_000
    raw = 96 * 2 * 4
    assert raw < per_sensor < raw + 100


def test_long_windows_gather_without_table() -> None:
    num_steps = 1_500  # longer than the gather table covers
    store = WindowStore(2, num_steps, F, stride=400)
    n = 2 * 2_401  # windows on the stride's grid: at ts 1,600, 2,000 and 2,400
    batch = readings(["a", "b"] * (n // 2), [float(i // 2) + (i % 2) * 0.25 for i in range(n)])
    out = store.append(batch)
    assert sorted(out.ready.tolist()) == [3200, 3201, 4000, 4001, 4800, 4801]
    check_against_reference(out, batch, num_steps, stride=400)


def test_empty_append_and_feature_check() -> None:
    store = WindowStore(2, 3, F)
    out = store.append(Readings.empty(F))
    assert len(out) == 0 and out.windows.shape == (0, 3, F)
    with pytest.raises(ValueError):
        store.append(Readings(["a"], np.array([1.0]), np.zeros((1, 3), np.float32)))


series_strategy = st.lists(
    st.tuples(
        st.integers(0, 3),  # sensor
        st.sampled_from([0.0, 1.0, 1.0, 1.0, 1.5, 0.5, -2.0, 9.0]),  # ts increment
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(
    series=series_strategy,
    cuts=st.lists(st.integers(0, 120), max_size=4),
    stride=st.sampled_from([1, 2, 3]),
)
def test_interleavings_match_per_sensor_reference(
    series: list[tuple[int, float]], cuts: list[int], stride: int
) -> None:
    clocks = [100.0] * 4
    names, ts = [], []
    for sensor, inc in series:
        clocks[sensor] += inc
        names.append(f"s{sensor}")
        ts.append(clocks[sensor])
    values = np.stack([np.arange(len(ts)), np.asarray(ts)], axis=1)
    batch = readings(names, ts, values)
    store = WindowStore(4, 3, F, stride=stride)
    out = concat_appends(store, batch, [c for c in cuts if c <= len(batch)])
    check_against_reference(out, batch, 3, stride)
    assert out.evicted == 0


def test_stride_cadence_follows_ts_across_a_restart() -> None:
    """A store rebuilt from a later point forecasts the same readings as one that saw all."""
    ts = [1_704_067_200.0 + 900.0 * i + (7.0 if i % 5 == 0 else 0.0) for i in range(700)]
    batch = readings(["a"] * len(ts), ts)
    whole = WindowStore(2, 96, F, stride=96).append(batch)
    assert len(whole) >= 5
    for start in (13, 150, 301):
        later = WindowStore(2, 96, F, stride=96).append(batch.take(np.arange(start, len(ts))))
        after = [i for i in whole.ready.tolist() if i >= start + 96]
        assert (later.ready + start).tolist() == after
    assert np.diff(whole.ready).tolist() == [96] * (len(whole) - 1)
    # Midnight UTC, daily: 2024-01-01T00:00 + k days.
    assert all((ts[i] - 7.0 * (i % 5 == 0)) % 86_400 == 0 for i in whole.ready.tolist())


@pytest.mark.parametrize(
    ("estimate", "grid"),
    [
        (899.83, 900.0),
        (900.59, 900.0),
        (59.2, 60.0),
        (0.98, 1.0),
        (1_234.0, 1_200.0),
        (5_000.0, 5_000.0),
        (137.0, 140.0),
    ],
)
def test_the_grid_step_absorbs_the_estimates_drift(estimate: float, grid: float) -> None:
    from streamcast.stream.cadence import grid_step

    assert grid_step(np.array([estimate]))[0] == pytest.approx(grid)
