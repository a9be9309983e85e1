"""Which sensor lives in which slot of the window store's arrays, and who goes when it is full.

A sensor id maps to a slot index; the per-slot arrays here say how recently the
slot was touched (for evicting the idlest), which partition its newest reading
came from (for dropping revoked partitions) and its generation, which moves on
every claim, release and restart so that work computed for an older occupant
(a carried state, a queued window) is recognised as stale.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

FREE = np.iinfo(np.int64).max  # ``touched`` of a free slot
IntArray = npt.NDArray[np.int64]


class SensorSlots:
    """Slot bookkeeping for up to ``capacity`` sensors."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.touched = np.full(capacity, FREE, np.int64)
        self.partition = np.full(capacity, -1, np.int32)
        self.generation = np.zeros(capacity, np.int64)
        self._slot_of: dict[str, int] = {}
        self._sensor_of: list[str | None] = [None] * capacity
        self._free: list[int] = list(range(capacity - 1, -1, -1))  # pop() gives slot 0 first
        self._seq = 0

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, sensor: object) -> bool:
        return sensor in self._slot_of

    @property
    def nbytes(self) -> int:
        return self.touched.nbytes + self.partition.nbytes + self.generation.nbytes

    def used(self) -> npt.NDArray[np.bool_]:
        used: npt.NDArray[np.bool_] = self.touched != FREE
        return used

    def get(self, sensor: str) -> int | None:
        return self._slot_of.get(sensor)

    def sensor_of(self, slot: int) -> str:
        name = self._sensor_of[slot]
        if name is None:
            raise KeyError(f"slot {slot} is free")
        return name

    def lookup(self, sensors: Sequence[str]) -> IntArray:
        """Slot of each sensor, -1 where it has none."""
        n = len(sensors)
        return np.fromiter(map(self._slot_of.get, sensors, repeat(-1, n)), np.int64, count=n)

    def claim(self, name: str) -> int:
        slot = self._free.pop()
        self._slot_of[name] = slot
        self._sensor_of[slot] = name
        self.generation[slot] += 1
        return slot

    def release(self, slot: int) -> None:
        name = self._sensor_of[slot]
        if name is not None:
            del self._slot_of[name]
        self._sensor_of[slot] = None
        self.touched[slot] = FREE
        self.partition[slot] = -1
        self.generation[slot] += 1
        self._free.append(slot)

    def victims(self, needed: int, keep: IntArray) -> list[int]:
        """Slots to free for ``needed`` new sensors: the idlest, never one in ``keep``."""
        need = needed - len(self._free)
        if need <= 0:
            return []
        candidates = self.touched.copy()
        candidates[keep] = FREE
        return np.argpartition(candidates, need - 1)[:need].tolist()  # type: ignore[no-any-return]

    def touch(
        self, slots: IntArray, positions: IntArray, partitions: npt.ArrayLike, n: int
    ) -> None:
        """Recency at reading granularity (``positions`` within a batch of ``n``)."""
        self.touched[slots] = self._seq + positions
        self.partition[slots] = partitions
        self._seq += n

    def of_partitions(self, partitions: Iterable[int]) -> list[int]:
        parts = np.fromiter(partitions, np.int64)
        if len(parts) == 0:
            return []
        return np.flatnonzero(self.used() & np.isin(self.partition, parts)).tolist()  # type: ignore[no-any-return]
