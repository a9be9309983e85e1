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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamcast.stream.cadence import STEP_ALPHA, STEP_CLIP, on_stride
from streamcast.stream.capacity import EvictionWarnings
from streamcast.stream.carry import CarriedStates
from streamcast.stream.messages import DeadLetter, Readings, RecordLike
from streamcast.stream.slots import SensorSlots

logger = logging.getLogger(__name__)

_MAX_TABLE_LENGTH = 1024  # window gather table: at most 1024 x 1023 int32 (4 MiB)

IntArray = npt.NDArray[np.int64]


@dataclass
class Appended:
    """What one ``append`` did: rejections, the windows it completed, restarts and evictions."""

    rejected: IntArray
    reasons: list[str]
    ready: IntArray
    windows: npt.NDArray[np.float32]
    truths: npt.NDArray[np.float32]
    slots: IntArray
    generations: IntArray
    counts: IntArray  # readings in the slot since its window (re)started, this one included
    step_s: npt.NDArray[np.float64]
    restarts: int = 0
    evicted: int = 0

    def __len__(self) -> int:
        return len(self.ready)

    def accepted(self, n: int) -> npt.NDArray[np.bool_]:
        """Which of the ``n`` readings given to ``append`` were taken (not rejected)."""
        keep = np.ones(n, np.bool_)
        keep[self.rejected] = False
        return keep

    def dead_letters(self, records: Sequence[RecordLike], readings: Readings) -> list[DeadLetter]:
        """The rejected readings' records as dead letters (``readings`` decoded from them)."""
        out = []
        for i, reason in zip(self.rejected.tolist(), self.reasons, strict=True):
            record = records[int(readings.record_index[i])]
            detail = f"ts {float(readings.ts[i])!r} is not newer than the sensor's last reading"
            out.append(DeadLetter.of(record, reason, detail))
        return out


class WindowStore:
    """The last ``num_steps`` readings (+ the truth before them) of up to ``capacity`` sensors.

    A window is ready when a sensor has at least ``num_steps + 1`` readings since
    it (re)started and its newest reading falls on the stride (``on_stride``: the
    cadence follows ``ts``, so restarts and rebalances do not move it). Readings not
    newer than the sensor's last one are rejected (``duplicate`` / ``out_of_order``);
    a gap longer than ``gap_factor`` x the step estimate restarts the window; a new
    sensor in a full store evicts the sensor touched least recently.
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
    ) -> None:
        if capacity < 1 or num_steps < 1 or num_features < 1 or stride < 1:
            raise ValueError("capacity, num_steps, num_features and stride must be >= 1")
        if gap_factor <= 1.0:
            raise ValueError(f"gap_factor {gap_factor} must be > 1")
        self.capacity = capacity
        self.num_steps = num_steps
        self.num_features = num_features
        self.stride = stride
        self.gap_factor = float(gap_factor)
        self.state_width = state_width
        length = num_steps + 1
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
        # Row p: ring columns of the window when the oldest reading (the truth) is at p.
        # A lookup table is ~3x faster than wrapping arithmetic; it grows as length**2,
        # so long windows wrap arithmetically instead.
        self._after_oldest = np.arange(1, length, dtype=np.int64)
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
        window, truth = self._gather(np.array([slot], np.int64))
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
                return _concat(first, second, half)
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
        restarts = 0
        length = self._length
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
                done = new_cnt >= length
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
                    window, truth = self._gather(sr, pos[done])
                    window_parts.append(window)
                    truth_parts.append(truth)

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
        return out

    def _gather(
        self, slots: IntArray, pos: npt.NDArray[np.int32] | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(window (k, num_steps, F), truth (k, F)), oldest first, from the write position on.

        Rows are taken as opaque F x 4-byte records from a flat view of the ring:
        one 1-D ``take`` is several times faster than 2-D fancy indexing here.
        """
        if pos is None:
            pos = self._pos[slots]
        base = slots * self._length
        if self._window_cols is not None:
            rows = self._window_cols[pos] + base[:, None]  # (k, num_steps)
        else:
            rows = np.add.outer(pos.astype(np.int64), self._after_oldest)
            rows[rows >= self._length] -= self._length
            rows += base[:, None]
        k, f = len(slots), self.num_features
        window = self._rows.take(rows.ravel()).view(np.float32).reshape(k, self.num_steps, f)
        truth = self._rows.take(base + pos).view(np.float32).reshape(k, f)
        return window, truth

    def _empty(self) -> Appended:
        f = self.num_features
        return Appended(
            rejected=np.empty(0, np.int64),
            reasons=[],
            ready=np.empty(0, np.int64),
            windows=np.empty((0, self.num_steps, f), np.float32),
            truths=np.empty((0, f), np.float32),
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


def _concat(a: Appended, b: Appended, shift: int) -> Appended:
    """Results of two consecutive appends as one (indices of ``b`` shifted by ``shift``)."""
    return Appended(
        rejected=np.concatenate([a.rejected, b.rejected + shift]),
        reasons=a.reasons + b.reasons,
        ready=np.concatenate([a.ready, b.ready + shift]),
        windows=np.concatenate([a.windows, b.windows]),
        truths=np.concatenate([a.truths, b.truths]),
        slots=np.concatenate([a.slots, b.slots]),
        generations=np.concatenate([a.generations, b.generations]),
        counts=np.concatenate([a.counts, b.counts]),
        step_s=np.concatenate([a.step_s, b.step_s]),
        restarts=a.restarts + b.restarts,
        evicted=a.evicted + b.evicted,
    )
