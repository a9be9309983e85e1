"""Per-sensor sliding windows for every sensor in a handful of preallocated numpy arrays.

A dict of deques costs a Python object per reading and a Python loop per window;
at tens of thousands of readings per second that is the whole CPU budget. Here a
sensor is a slot index into fixed arrays, and a poll's readings are applied in
*rounds* (round r = the r-th reading of each sensor in the batch), each round one
set of vectorised numpy operations. Sensors are independent, so applying rounds
in order is exactly the same as applying readings one by one in arrival order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from streamcast.config import Settings
from streamcast.stream.appended import Appended, IntArray, concat_appended
from streamcast.stream.cadence import STEP_ALPHA, STEP_CLIP, on_stride
from streamcast.stream.capacity import EvictionWarnings
from streamcast.stream.carry import CarriedStates
from streamcast.stream.messages import Readings
from streamcast.stream.slots import SensorSlots

logger = logging.getLogger(__name__)

_MAX_TABLE_LENGTH = 1024  # window gather table: at most 1024 x 1023 int32 (4 MiB)


class WindowStore:
    """The last ``num_steps`` readings (+ the truth before them) of up to ``capacity`` sensors.

    A window is ready when a sensor has at least ``num_steps + 1`` readings since
    it (re)started and its newest reading falls on the stride (``on_stride``: the
    cadence follows ``ts``, so restarts and rebalances do not move it). Readings not
    newer than the sensor's last one are rejected (``duplicate`` / ``out_of_order``);
    a gap longer than ``gap_factor`` x the step estimate restarts the window; a new
    sensor in a full store evicts the sensor touched least recently.

    With a ``seasonal_lag`` P the store keeps max(num_steps + 1, P) readings per sensor
    and gives every window the reading P steps before each of its ``horizon`` forecast
    steps; they are known once the sensor has P readings since its window (re)started.
    """

    def __init__(
        self,
        capacity: int,
        num_steps: int,
        num_features: int,
        *,
        stride: int = 1,
        gap_factor: float = 3.0,
        state_width: int = 0,
        seasonal_lag: int = 0,
        horizon: int = 0,
    ) -> None:
        if capacity < 1 or num_steps < 1 or num_features < 1 or stride < 1:
            raise ValueError("capacity, num_steps, num_features and stride must be >= 1")
        if gap_factor <= 1.0:
            raise ValueError(f"gap_factor {gap_factor} must be > 1")
        if seasonal_lag and not 1 <= horizon <= seasonal_lag:
            raise ValueError(f"horizon {horizon} must be in 1..seasonal_lag ({seasonal_lag})")
        self.capacity = capacity
        self.num_steps = num_steps
        self.num_features = num_features
        self.stride = stride
        self.gap_factor = float(gap_factor)
        self.state_width = state_width
        self.seasonal_lag = seasonal_lag
        self.horizon = horizon if seasonal_lag else 0
        length = max(num_steps + 1, seasonal_lag)
        self._length = length
        self._ring = np.zeros((capacity, length, num_features), np.float32)
        self._pos = np.zeros(capacity, np.int32)  # next write position in the ring
        self._count = np.zeros(capacity, np.int64)  # readings since (re)start
        self._last_ts = np.full(capacity, -np.inf, np.float64)
        self._step = np.zeros(capacity, np.float64)  # 0 = unknown yet
        self.slots = SensorSlots(capacity)
        self._generation = self.slots.generation
        # The ring seen as one opaque record per reading, for fast 1-D gathers.
        record = np.dtype((np.void, 4 * num_features))
        self._rows: npt.NDArray[np.void] = self._ring.reshape(-1, num_features).view(record)[:, 0]
        self.carried = CarriedStates(self._generation, state_width)
        # Row p: ring columns of the window when the next write goes to p (the newest
        # reading is at p - 1, the truth at p - num_steps - 1). A lookup table is ~3x
        # faster than wrapping arithmetic; it grows as length * num_steps, so long rings
        # wrap arithmetically instead.
        self._after_oldest = np.arange(length - num_steps, length, dtype=np.int64)
        self._truth_offset = length - num_steps - 1
        # Offsets of the lags from p: the reading P - h before the newest, h = 1..horizon.
        self._lag_offsets = np.arange(
            length - seasonal_lag, length - seasonal_lag + self.horizon, dtype=np.int64
        )
        self._window_cols: npt.NDArray[np.int32] | None = None
        if length <= _MAX_TABLE_LENGTH:
            cols = np.arange(length)[:, None] + self._after_oldest[None, :]
            self._window_cols = (cols % length).astype(np.int32)
        self.evicted_total = 0
        self.restarts_total = 0
        shared = self._after_oldest.nbytes + (
            0 if self._window_cols is None else self._window_cols.nbytes
        )
        self.eviction_warnings = EvictionWarnings(capacity, (self.nbytes - shared) // capacity)

    @classmethod
    def for_settings(cls, settings: Settings) -> WindowStore:
        """The store a daemon (or a backtest) with these settings keeps."""
        spec = settings.model
        return cls(
            settings.window.capacity,
            spec.num_steps,
            spec.num_features,
            stride=settings.window.stride,
            gap_factor=settings.window.gap_factor,
            state_width=spec.state_width if spec.seeding == "carry" else 0,
            seasonal_lag=spec.seasonal_lag,
            horizon=spec.horizon,
        )

    # -- introspection -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.slots)

    def __contains__(self, sensor: object) -> bool:
        return sensor in self.slots

    @property
    def nbytes(self) -> int:
        """Bytes held by the numpy arrays (the dict of sensor ids comes on top)."""
        arrays = (
            self._ring,
            self._pos,
            self._count,
            self._last_ts,
            self._step,
            self._after_oldest,
        )
        table = 0 if self._window_cols is None else self._window_cols.nbytes
        extra = self.slots.nbytes + self.carried.nbytes
        return table + extra + sum(a.nbytes for a in arrays)

    def sensor_of(self, slot: int) -> str:
        return self.slots.sensor_of(slot)

    def slot_of(self, sensor: str) -> int | None:
        return self.slots.get(sensor)

    def window_of(self, sensor: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The sensor's current (window, truth), oldest first; valid when its count is full."""
        slot = self.slots.get(sensor)
        if slot is None:
            raise KeyError(sensor)
        window, truth, _, _ = self._gather(np.array([slot], np.int64))
        return window[0], truth[0]

    # -- updates -------------------------------------------------------------------------

    def append(self, readings: Readings, *, emit: bool = True) -> Appended:
        """Apply readings in arrival order; gather every window they complete (if ``emit``)."""
        n = len(readings)
        if n == 0:
            return self._empty()
        if readings.values.shape[1] != self.num_features:
            raise ValueError(
                f"readings have {readings.values.shape[1]} features, store {self.num_features}"
            )
        sensors = readings.sensors
        slots = self.slots.lookup(sensors)
        evicted = 0
        missing = np.flatnonzero(slots < 0)
        if len(missing):
            miss = missing.tolist()
            new_names = list(dict.fromkeys([sensors[i] for i in miss]))
            known = np.unique(slots[slots >= 0])
            if len(known) + len(new_names) > self.capacity:
                # More sensors in one batch than slots: split so each part fits, keeping order.
                half = n // 2
                first = self.append(readings.take(np.arange(half)), emit=emit)
                second = self.append(readings.take(np.arange(half, n)), emit=emit)
                return concat_appended(first, second, half)
            evicted = self._make_room(len(new_names), known)
            claimed = {name: self._claim(name) for name in new_names}
            slots[missing] = [claimed[sensors[i]] for i in miss]
        return self._apply(readings, slots, emit, evicted)

    def _make_room(self, needed: int, keep: IntArray) -> int:
        """Free slots for ``needed`` new sensors by evicting the idlest, never one in ``keep``."""
        victims = self.slots.victims(needed, keep)
        for v in victims:
            self._release(v)
        self.evicted_total += len(victims)
        if victims:
            logger.debug("evicted idle sensors count=%d", len(victims))
            self.eviction_warnings.record(len(victims))
        return len(victims)

    def _claim(self, name: str) -> int:
        slot = self.slots.claim(name)
        self._pos[slot] = 0
        self._count[slot] = 0
        self._last_ts[slot] = -np.inf
        self._step[slot] = 0.0
        return slot

    def _release(self, slot: int) -> None:
        self.slots.release(slot)
        self._count[slot] = 0

    def _apply(self, readings: Readings, slots: IntArray, emit: bool, evicted: int) -> Appended:
        n = len(slots)
        # Group readings by slot (stable: arrival order within a sensor).
        by_slot = np.argsort(slots, kind="stable")
        ordered = slots[by_slot]
        head = np.empty(n, np.bool_)
        head[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=head[1:])
        starts = np.flatnonzero(head)
        counts = np.diff(np.append(starts, n))
        last_pos = by_slot[starts + counts - 1]
        uniq = ordered[starts]
        # Recency at reading granularity, for eviction; partition of the newest reading.
        self.slots.touch(uniq, last_pos, readings.partitions[last_pos], n)
        rounds = int(counts.max())
        if rounds == 1:
            order = np.arange(n)
            bounds = [0, n]
        else:
            # Round of a reading = its rank among its sensor's readings in this batch.
            rank = np.empty(n, np.int64)
            rank[by_slot] = np.arange(n) - np.repeat(starts, counts)
            order = np.argsort(rank, kind="stable")  # by round, then arrival
            bounds = [0, *np.cumsum(np.bincount(rank, minlength=rounds)).tolist()]

        ts_all = readings.ts
        values_all = readings.values
        rejected: list[IntArray] = []
        rejected_dup: list[npt.NDArray[np.bool_]] = []
        ready_parts: list[IntArray] = []
        slot_parts: list[IntArray] = []
        gen_parts: list[IntArray] = []
        count_parts: list[IntArray] = []
        step_parts: list[npt.NDArray[np.float64]] = []
        window_parts: list[npt.NDArray[np.float32]] = []
        truth_parts: list[npt.NDArray[np.float32]] = []
        lag_parts: list[npt.NDArray[np.float32]] = []
        known_parts: list[npt.NDArray[np.bool_]] = []
        restarts = 0
        length = self._length
        full = self.num_steps + 1
        gap_factor = self.gap_factor
        stride = self.stride
        for r in range(rounds):
            idx = order[bounds[r] : bounds[r + 1]]
            s = slots[idx]
            t = ts_all[idx]
            last = self._last_ts[s]
            bad = t <= last
            if bad.any():
                rejected.append(idx[bad])
                rejected_dup.append(t[bad] == last[bad])
                good = ~bad
                idx, s, t, last = idx[good], s[good], t[good], last[good]
                if len(idx) == 0:
                    continue
            cnt = self._count[s]
            step = self._step[s]
            diff = t - last
            gap = (cnt >= 2) & (diff > gap_factor * step)
            # The first gap after a (re)start seeds the step; later ones move it slowly.
            clipped = np.clip(diff, step / STEP_CLIP, step * STEP_CLIP)
            moved = np.where(gap | (cnt == 0), step, step + STEP_ALPHA * (clipped - step))
            new_step = np.where(cnt == 1, diff, moved)
            self._step[s] = new_step
            new_cnt = np.where(gap, 1, cnt + 1)
            if gap.any():
                g = s[gap]
                self._generation[g] += 1
                restarts += len(g)
            pos = self._pos[s]
            self._ring[s, pos] = values_all[idx]
            pos += 1
            pos[pos == length] = 0
            self._pos[s] = pos
            self._count[s] = new_cnt
            self._last_ts[s] = t
            if emit:
                done = new_cnt >= full
                if stride > 1:
                    done &= on_stride(t, new_step, stride)
                if done.any():
                    sr = s[done]
                    ready_parts.append(idx[done])
                    slot_parts.append(sr)
                    gen_parts.append(self._generation[sr])
                    count_parts.append(new_cnt[done])
                    step_parts.append(new_step[done])
                    # Gather now: a later round of this batch may overwrite the ring.
                    window, truth, lags, known = self._gather(sr, pos[done], new_cnt[done])
                    window_parts.append(window)
                    truth_parts.append(truth)
                    lag_parts.append(lags)
                    known_parts.append(known)

        self.restarts_total += restarts
        if restarts:
            logger.debug("window restarts after gaps count=%d", restarts)
        out = self._empty()
        out.restarts = restarts
        out.evicted = evicted
        if rejected:
            rej = np.concatenate(rejected)
            dup = np.concatenate(rejected_dup)
            o = np.argsort(rej, kind="stable")
            out.rejected = rej[o]
            out.reasons = ["duplicate" if d else "out_of_order" for d in dup[o].tolist()]
        if len(ready_parts) == 1:  # one round: already in arrival order, no copies
            out.ready, out.slots, out.generations = ready_parts[0], slot_parts[0], gen_parts[0]
            out.counts = count_parts[0]
            out.step_s, out.windows, out.truths = step_parts[0], window_parts[0], truth_parts[0]
            out.lags, out.lags_known = lag_parts[0], known_parts[0]
        elif ready_parts:
            # Gathered round by round; readers want arrival order.
            ready = np.concatenate(ready_parts)
            o = np.argsort(ready, kind="stable")
            out.ready = ready[o]
            out.slots = np.concatenate(slot_parts)[o]
            out.generations = np.concatenate(gen_parts)[o]
            out.counts = np.concatenate(count_parts)[o]
            out.step_s = np.concatenate(step_parts)[o]
            out.windows = np.concatenate(window_parts)[o]
            out.truths = np.concatenate(truth_parts)[o]
            out.lags = np.concatenate(lag_parts)[o]
            out.lags_known = np.concatenate(known_parts)[o]
        return out

    def _gather(
        self,
        slots: IntArray,
        pos: npt.NDArray[np.int32] | None = None,
        counts: IntArray | None = None,
    ) -> tuple[
        npt.NDArray[np.float32],
        npt.NDArray[np.float32],
        npt.NDArray[np.float32],
        npt.NDArray[np.bool_],
    ]:
        """(window (k, num_steps, F), truth (k, F), lags (k, horizon, F), lags known (k,)),
        oldest first, for rings whose next write goes to ``pos``.

        Rows are taken as opaque F x 4-byte records from a flat view of the ring:
        one 1-D ``take`` is several times faster than 2-D fancy indexing here.
        """
        if pos is None:
            pos = self._pos[slots]
        if counts is None:
            counts = self._count[slots]
        length = self._length
        base = slots * length
        if self._window_cols is not None:
            rows = self._window_cols[pos] + base[:, None]  # (k, num_steps)
        else:
            rows = np.add.outer(pos.astype(np.int64), self._after_oldest)
            rows[rows >= length] -= length
            rows += base[:, None]
        k, f = len(slots), self.num_features
        window = self._rows.take(rows.ravel()).view(np.float32).reshape(k, self.num_steps, f)
        at = pos.astype(np.int64) + self._truth_offset
        at[at >= length] -= length
        truth = self._rows.take(base + at).view(np.float32).reshape(k, f)
        known = counts >= self.seasonal_lag if self.seasonal_lag else np.zeros(k, np.bool_)
        if not self.horizon:
            return window, truth, np.zeros((k, 0, f), np.float32), known
        lag_rows = np.add.outer(pos.astype(np.int64), self._lag_offsets)
        lag_rows[lag_rows >= length] -= length
        lag_rows += base[:, None]
        lags = self._rows.take(lag_rows.ravel()).view(np.float32).reshape(k, self.horizon, f)
        lags[~known] = 0.0  # a ring not yet full holds an earlier sensor's readings
        return window, truth, lags, known

    def _empty(self) -> Appended:
        f = self.num_features
        return Appended(
            rejected=np.empty(0, np.int64),
            reasons=[],
            ready=np.empty(0, np.int64),
            windows=np.empty((0, self.num_steps, f), np.float32),
            truths=np.empty((0, f), np.float32),
            lags=np.empty((0, self.horizon, f), np.float32),
            lags_known=np.empty(0, np.bool_),
            slots=np.empty(0, np.int64),
            generations=np.empty(0, np.int64),
            counts=np.empty(0, np.int64),
            step_s=np.empty(0, np.float64),
        )

    # -- rebalancing ---------------------------------------------------------------------

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget every sensor of revoked partitions; their new owner rebuilds them."""
        drop = self.slots.of_partitions(partitions)
        for slot in drop:
            self._release(slot)
        if drop:
            logger.info("dropped sensors of revoked partitions sensors=%d", len(drop))
        return len(drop)

    def clear(self) -> None:
        """Forget every sensor (e.g. after losing all partitions)."""
        for slot in np.flatnonzero(self.slots.used()).tolist():
            self._release(slot)
