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

from streamcast.stream.appended import Appended
from streamcast.stream.cadence import on_stride
from streamcast.stream.messages import Readings
from streamcast.stream.windows import WindowStore

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
    since: list[int] = field(default_factory=list)  # batch indices since the (re)start


@dataclass
class RefWindow:
    index: int
    window: np.ndarray
    truth: np.ndarray
    lags: np.ndarray  # (horizon, F), or (0, F) without a season
    known: bool


def reference(
    batch: Readings,
    num_steps: int,
    stride: int = 1,
    gap_factor: float = 3.0,
    seasonal_lag: int = 0,
    horizon: int = 0,
) -> tuple[list[RefWindow], list[tuple[int, str]], int]:
    """A window per ready reading, (index, reason) per rejection, restarts.

    With ``seasonal_lag`` P a window's lags are the sensor's own readings since its
    (re)start P - h before the newest, h = 1..horizon, known once it has P of them.
    """
    state: dict[str, RefSensor] = {}
    ready = []
    rejected = []
    restarts = 0
    length = num_steps + 1
    width = horizon if seasonal_lag else 0
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
            s.since = []
            restarts += 1
        elif s.count == 1:
            s.step = diff
        elif s.count >= 2:
            clipped = min(max(diff, s.step / 2), s.step * 2)
            s.step = s.step + 0.1 * (clipped - s.step)
        s.rows.append(batch.values[i])
        s.rows = s.rows[-length:]
        s.since.append(i)
        s.count += 1
        s.last_ts = t
        on = stride == 1 or bool(on_stride(np.array([t]), np.array([s.step]), stride)[0])
        if s.count >= length and on:
            known = bool(seasonal_lag) and len(s.since) >= seasonal_lag
            lags = np.zeros((width, F), np.float32)
            if known:
                last = len(s.since) - 1
                at = [s.since[last + h - seasonal_lag] for h in range(1, horizon + 1)]
                lags = batch.values[at]
            ready.append(RefWindow(i, np.stack(s.rows[1:]), s.rows[0], lags, known))
    return ready, rejected, restarts


def check_against_reference(
    out: Appended,
    batch: Readings,
    num_steps: int,
    stride: int = 1,
    gap_factor: float = 3.0,
    seasonal_lag: int = 0,
    horizon: int = 0,
) -> None:
    ready, rejected, restarts = reference(
        batch, num_steps, stride, gap_factor, seasonal_lag, horizon
    )
    assert out.ready.tolist() == [w.index for w in ready]
    assert out.rejected.tolist() == [i for i, _ in rejected]
    assert out.reasons == [r for _, r in rejected]
    assert out.restarts == restarts
    assert out.windows.shape == (len(ready), num_steps, F)
    assert out.truths.shape == (len(ready), F)
    assert out.lags.shape == (len(ready), horizon if seasonal_lag else 0, F)
    assert out.lags.dtype == np.float32
    assert out.lags_known.shape == (len(ready),) and out.lags_known.dtype == np.bool_
    assert out.lags_known.tolist() == [w.known for w in ready]
    for k, w in enumerate(ready):
        np.testing.assert_array_equal(out.windows[k], w.window)
        np.testing.assert_array_equal(out.truths[k], w.truth)
        np.testing.assert_array_equal(out.lags[k], w.lags, err_msg=f"window {k}")


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
        lags=np.concatenate([p.lags for p in parts]),
        lags_known=np.concatenate([p.lags_known for p in parts]),
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
    season=st.sampled_from([(0, 0), (2, 2), (4, 2), (7, 3)]),  # (seasonal_lag, horizon)
)
def test_interleavings_match_per_sensor_reference(
    series: list[tuple[int, float]], cuts: list[int], stride: int, season: tuple[int, int]
) -> None:
    clocks = [100.0] * 4
    names, ts = [], []
    for sensor, inc in series:
        clocks[sensor] += inc
        names.append(f"s{sensor}")
        ts.append(clocks[sensor])
    values = np.stack([np.arange(len(ts)), np.asarray(ts)], axis=1)
    batch = readings(names, ts, values)
    lag, horizon = season
    store = WindowStore(4, 3, F, stride=stride, seasonal_lag=lag, horizon=horizon)
    out = concat_appends(store, batch, [c for c in cuts if c <= len(batch)])
    check_against_reference(out, batch, 3, stride, seasonal_lag=lag, horizon=horizon)
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


# -- seasonal lags ---------------------------------------------------------------------


def lags_of(
    series: np.ndarray, last: npt.ArrayLike, horizon: int, period: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each index ``last`` of a sensor's series since its (re)start: its readings
    ``period - h`` before, h = 1..horizon, and whether all lie in the series (else zeros)."""
    last = np.asarray(last, np.int64)
    lags = np.zeros((len(last), horizon, series.shape[1]), np.float32)
    known = last + 1 >= period
    for k in np.flatnonzero(known):
        lags[k] = series[last[k] + 1 - period : last[k] + 1 - period + horizon]
    return lags, known


def interleaved(
    rng: np.random.Generator, per_sensor: int, steps: tuple[float, ...]
) -> tuple[Readings, list[int]]:
    """Sensors with their own steps, arriving interleaved in random order, cut into polls
    of assorted sizes (several readings of a sensor in most): (readings, cuts)."""
    order = rng.permutation(np.repeat(np.arange(len(steps)), per_sensor))
    seen = np.zeros(len(steps), np.int64)
    names, ts = [], []
    for j in order.tolist():
        names.append(f"s{j}")
        ts.append(1_000.0 + j + steps[j] * seen[j])
        seen[j] += 1
    values = rng.normal(size=(len(ts), F)) * 10
    cuts = np.cumsum(rng.integers(1, 40, size=len(ts)))
    return readings(names, ts, values), [int(c) for c in cuts if c < len(ts)]


@pytest.mark.parametrize(
    ("num_steps", "horizon", "lag", "stride"),
    [
        (5, 3, 9, 1),  # the ring grows to the season
        (5, 3, 4, 1),  # a season inside the window: the ring stays num_steps + 1
        (5, 3, 6, 1),  # exactly num_steps + 1
        (5, 3, 3, 1),  # the season is the horizon: the last lag is the newest reading
        (5, 3, 9, 2),
        (5, 4, 1_030, 1),  # a ring too long for the gather table
    ],
)
def test_seasonal_lags_in_polls_of_assorted_sizes(
    num_steps: int, horizon: int, lag: int, stride: int
) -> None:
    rng = np.random.default_rng(lag + stride)
    per = max(3 * lag, 40) if lag < 100 else lag + 60
    batch, cuts = interleaved(rng, per, (10.0, 15.0, 60.0, 7.0))
    seasonal = WindowStore(4, num_steps, F, stride=stride, seasonal_lag=lag, horizon=horizon)
    plain = WindowStore(4, num_steps, F, stride=stride)
    out = concat_appends(seasonal, batch, cuts)
    check_against_reference(out, batch, num_steps, stride, seasonal_lag=lag, horizon=horizon)
    assert out.restarts == 0 and out.evicted == 0
    # Known exactly when the sensor has a season of readings since it started.
    np.testing.assert_array_equal(out.lags_known, out.counts >= lag)
    if lag > num_steps + 1:  # the first windows come before a season of readings
        assert 0 < out.lags_known.sum() < len(out)
    else:
        assert out.lags_known.all()
    assert not out.lags[~out.lags_known].any()
    # The season changes nothing else.
    base = concat_appends(plain, batch, cuts)
    for name in ("ready", "windows", "truths", "slots", "generations", "counts", "step_s"):
        np.testing.assert_array_equal(getattr(out, name), getattr(base, name), err_msg=name)
    assert base.lags.shape == (len(base), 0, F) and not base.lags_known.any()
    # Per sensor, against its own series (no restarts: the series is the segment).
    for j in range(4):
        mine = np.flatnonzero(np.asarray(batch.sensors) == f"s{j}")
        rows = np.flatnonzero(np.isin(out.ready, mine))
        last = np.searchsorted(mine, out.ready[rows])
        lags, known = lags_of(batch.values[mine], last, horizon, lag)
        np.testing.assert_array_equal(out.lags[rows], lags)
        np.testing.assert_array_equal(out.lags_known[rows], known)


def test_a_gap_makes_the_lags_unknown_until_a_season_of_new_readings() -> None:
    num_steps, horizon, lag = 4, 2, 7
    rng = np.random.default_rng(11)
    a_ts = [10.0 * i for i in range(20)] + [1_190.0 + 10.0 * i for i in range(14)]
    b_ts = [10.0 * i + 3.0 for i in range(34)]  # steady all along
    names = ["a"] * len(a_ts) + ["b"] * len(b_ts)
    ts = np.array(a_ts + b_ts)
    order = np.argsort(ts, kind="stable")
    values = rng.normal(size=(len(ts), F)).astype(np.float32) + 50
    batch = readings([names[i] for i in order], ts[order].tolist(), values[order])
    store = WindowStore(2, num_steps, F, gap_factor=3.0, seasonal_lag=lag, horizon=horizon)
    out = concat_appends(store, batch, [5, 9, 30, 31, 44, 50, 63])
    assert out.restarts == 1
    check_against_reference(out, batch, num_steps, seasonal_lag=lag, horizon=horizon)
    is_a = np.asarray(batch.sensors) == "a"
    mine = np.flatnonzero(is_a)
    after = mine[20:]  # a's readings since the gap
    rows = np.flatnonzero(np.isin(out.ready, after))
    last = np.searchsorted(after, out.ready[rows])
    assert last.tolist() == list(range(num_steps, 14))  # a whole window again first
    lags, known = lags_of(batch.values[after], last, horizon, lag)
    assert known.tolist() == [n + 1 >= lag for n in last.tolist()]
    np.testing.assert_array_equal(out.lags_known[rows], known)
    np.testing.assert_array_equal(out.lags[rows], lags)
    # Just before the gap a's lags were known; b's stay known throughout.
    before = np.flatnonzero(np.isin(out.ready, mine[:20]))
    assert out.lags_known[before][-1]
    b_rows = np.flatnonzero(np.isin(out.ready, np.flatnonzero(~is_a)))
    assert out.lags_known[b_rows][lag - 1 - num_steps :].all()


@pytest.mark.parametrize("leaves", ["evicted", "dropped"])
def test_a_returning_sensor_starts_with_unknown_lags_not_stale_readings(leaves: str) -> None:
    num_steps, horizon, lag = 3, 2, 8
    store = WindowStore(1, num_steps, F, seasonal_lag=lag, horizon=horizon)

    def feed(name: str, first: int, n: int, part: int) -> tuple[Appended, np.ndarray]:
        ts = [10.0 * i for i in range(first, first + n)]
        values = np.stack([np.arange(first, first + n) + 100.0 * (name == "a") + 1.0] * F, 1)
        return store.append(readings([name] * n, ts, values, partition=part)), values

    first, _ = feed("a", 0, 12, part=0)  # fills the ring with a's readings
    assert first.lags_known.any() and first.lags.any()
    if leaves == "dropped":
        assert store.drop_partitions([0]) == 1
    # b takes a's slot, whose ring still holds a's readings: b has no season yet.
    b, _ = feed("b", 0, lag - 1, part=1)
    assert store.slot_of("b") == int(first.slots[0])
    assert len(b) == lag - 1 - num_steps and not b.lags_known.any() and not b.lags.any()
    if leaves == "dropped":
        assert store.drop_partitions([1]) == 1
    # a comes back: a new start, in polls of assorted sizes.
    parts = [feed("a", 20 + lo, n, part=0) for lo, n in ((0, 3), (3, 4), (7, 1), (8, 4))]
    assert (store.evicted_total == 2) == (leaves == "evicted")
    out = [p for p, _ in parts]
    series = np.concatenate([v for _, v in parts])
    got_lags = np.concatenate([p.lags for p in out])
    got_known = np.concatenate([p.lags_known for p in out])
    last = np.concatenate([p.counts for p in out]) - 1
    assert last.tolist() == list(range(num_steps, len(series)))
    lags, known = lags_of(series, last, horizon, lag)
    assert 0 < known.sum() < len(known)
    np.testing.assert_array_equal(got_known, known)
    np.testing.assert_array_equal(got_lags, lags)


def test_more_sensors_in_one_batch_than_capacity_keep_their_own_lags() -> None:
    """A batch split to fit the store: each window's lags are its sensor's readings since
    it last (re)started, none of the sensors that held its slot before."""
    num_steps, horizon, lag, burst = 3, 2, 9, 12
    names = [f"s{b % 5}" for b in range(15) for _ in range(burst)]  # 5 sensors, 3 slots
    ts = [float(i) for i in range(len(names))]
    values = np.random.default_rng(4).normal(size=(len(names), F)) + 10
    batch = readings(names, ts, values)
    store = WindowStore(3, num_steps, F, seasonal_lag=lag, horizon=horizon)
    out = store.append(batch)
    assert out.evicted >= 12 and len(store) == 3
    # Every burst starts its sensor afresh (evicted since its last burst).
    assert out.counts.tolist() == list(range(num_steps + 1, burst + 1)) * 15
    who = np.asarray(names)
    for k, i in enumerate(out.ready.tolist()):
        segment = np.flatnonzero(who[: i + 1] == names[i])[-int(out.counts[k]) :]
        lags, known = lags_of(batch.values[segment], [len(segment) - 1], horizon, lag)
        assert out.lags_known[k] == known[0]
        np.testing.assert_array_equal(out.lags[k], lags[0])
    assert 0 < out.lags_known.sum() < len(out)


@pytest.mark.parametrize("seeding", ["truth", "carry"])
@pytest.mark.parametrize("lag", [0, 5, 7, 20, 1_100])
def test_for_settings_builds_the_store_the_settings_describe(seeding: str, lag: int) -> None:
    from streamcast.config import Settings

    def settings(lag: int, capacity: int) -> Settings:
        return Settings(
            window={"num_steps": 6, "capacity": capacity, "stride": 2, "gap_factor": 4.5},
            model={
                "num_features": 3,
                "horizon": 4 if lag else 9,
                "units": [5, 3],
                "seeding": seeding,
                "seasonal_lag": lag,
            },
        )

    s = settings(lag, 8)
    spec = s.model
    store = WindowStore.for_settings(s)
    assert (store.capacity, store.num_steps, store.num_features) == (8, 6, 3)
    assert (store.stride, store.gap_factor) == (2, 4.5)
    assert store.seasonal_lag == lag and store.horizon == (spec.horizon if lag else 0)
    assert store.state_width == (spec.state_width if seeding == "carry" else 0)
    assert spec.context == max(spec.num_steps + 1, lag)

    def per_sensor(lag: int) -> int:
        """Bytes the arrays grow by with one more slot (shared tables cancel out)."""
        small = WindowStore.for_settings(settings(lag, 8))
        large = WindowStore.for_settings(settings(lag, 9))
        assert small.eviction_warnings.bytes_per_sensor == large.nbytes - small.nbytes
        return large.nbytes - small.nbytes

    ring = spec.context * spec.num_features * 4
    assert per_sensor(lag) - per_sensor(0) == ring - (spec.num_steps + 1) * spec.num_features * 4
    # The store keeps ``context`` readings: the lags are known from the season's reading.
    n = spec.context + 3
    values = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    one = Readings(["a"] * n, 60.0 * np.arange(n), values, partitions=np.zeros(n, np.int32))
    out = store.append(one)
    assert len(out) and out.lags.shape == (len(out), store.horizon, 3)
    if lag:
        lags, known = lags_of(values, out.ready, spec.horizon, lag)
        assert known.any()
        np.testing.assert_array_equal(out.lags_known, known)
        np.testing.assert_array_equal(out.lags, lags)
    else:
        assert not out.lags_known.any()


@pytest.mark.parametrize("lag", [4, 6, 9, 13])
def test_the_stores_lags_are_the_training_lags(lag: int) -> None:
    """Serving and training must give a model the same inputs for the same window."""
    from streamcast.learn.examples import make_examples, seasonal_lags

    num_steps, horizon = 5, 3
    rng = np.random.default_rng(lag)
    batch, cuts = interleaved(rng, 60, (30.0, 45.0))
    store = WindowStore(2, num_steps, F, seasonal_lag=lag, horizon=horizon)
    out = concat_appends(store, batch, cuts)
    for name in ("s0", "s1"):
        mine = np.flatnonzero(np.asarray(batch.sensors) == name)
        series = batch.values[mine]  # float32, as the store keeps them
        rows = np.flatnonzero(np.isin(out.ready, mine))
        last = np.searchsorted(mine, out.ready[rows])
        assert last.tolist() == list(range(num_steps, len(series)))
        lags, known = seasonal_lags(series, last, horizon, lag)
        assert known.shape == (len(rows), 1)
        np.testing.assert_array_equal(out.lags[rows], lags)
        np.testing.assert_array_equal(out.lags_known[rows], known[:, 0] == 1.0)
        assert known.all() if lag <= num_steps + 1 else 0 < known.sum() < len(known)
        # The training examples of the same windows: every input alike.
        ex = make_examples(series, num_steps, horizon, seasonal_lag=lag)
        assert ex.start is not None and ex.lags is not None and ex.lags_known is not None
        at = np.searchsorted(last, ex.start + num_steps)
        assert len(at) == len(series) - num_steps - horizon
        assert (last[at] == ex.start + num_steps).all()
        np.testing.assert_array_equal(out.windows[rows][at], ex.window)
        np.testing.assert_array_equal(out.truths[rows][at], ex.truth)
        np.testing.assert_array_equal(out.lags[rows][at], ex.lags)
        np.testing.assert_array_equal(out.lags_known[rows][at], ex.lags_known[:, 0] == 1.0)
