"""Carry mode's per-sensor LSTM states: each sensor's final (h, c) of every layer after its
previous window, kept outside the model, by window-store slot.

A state belongs to one generation of its slot; a restart after a gap, an eviction
or a new occupant moves the slot's generation on, and the old state silently stops
counting, without a sweep. A state also records how many readings its window had seen
(the slot's count), so it continues only a window exactly ``steps`` readings later:
the readings in between are the ones the model steps. Any other window (one was
skipped, dropped on a rebalance, or dead-lettered) is seeded from its truth again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


class CarriedStates:
    """Flat states ``[h_0, c_0, h_1, c_1, ...]`` of ``width`` floats per slot."""

    def __init__(self, generation: IntArray, width: int) -> None:
        if width < 0:
            raise ValueError(f"state width {width} must be >= 0")
        self.width = width
        self._generation = generation  # the slots' live generation (shared, not copied)
        n = len(generation) if width else 0  # no bookkeeping where nothing is carried
        self._states = np.zeros((n, width), np.float32)
        self._of = np.full(n, -1, np.int64)  # generation each state belongs to
        self._at = np.zeros(n, np.int64)  # the slot's count when it was taken

    @property
    def nbytes(self) -> int:
        return self._states.nbytes + self._of.nbytes + self._at.nbytes

    def get(
        self, slots: IntArray, generations: IntArray, counts: IntArray, steps: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """States for windows of these slot generations and counts; ``has`` is False
        where none continues exactly ``steps`` readings before the window's end."""
        slots = np.asarray(slots, np.int64)
        has: npt.NDArray[np.bool_] = (
            (self._of[slots] == generations)
            & (self._generation[slots] == generations)
            & (np.asarray(counts, np.int64) - self._at[slots] == steps)
        )
        states = self._states[slots]
        states[~has] = 0.0
        return states, has

    def put(
        self,
        slots: IntArray,
        generations: IntArray,
        counts: IntArray,
        states: npt.NDArray[np.floating[Any]],
    ) -> int:
        """Keep each window's final states; rows whose slot moved on since are dropped."""
        slots = np.asarray(slots, np.int64)
        if states.shape != (len(slots), self.width):
            raise ValueError(f"states shape {states.shape}, expected ({len(slots)}, {self.width})")
        rows = np.flatnonzero(self._generation[slots] == generations)
        # Several windows of one sensor in a batch: keep the last row (the newest window).
        _, rfirst = np.unique(slots[rows][::-1], return_index=True)
        rows = rows[len(rows) - 1 - rfirst]
        self._states[slots[rows]] = states[rows]
        self._of[slots[rows]] = generations[rows]
        self._at[slots[rows]] = np.asarray(counts, np.int64)[rows]
        return len(rows)

    def clear(self) -> None:
        """Forget every state (a newly loaded model's states mean something else)."""
        self._of[:] = -1
