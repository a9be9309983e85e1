"""Ready windows waiting for inference: one batch forms at ``max_batch`` rows or
after ``max_wait_s``, whichever comes first.

Rows are kept as the chunks the window store produced (numpy arrays), and only
concatenated when a batch is taken.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from streamcast.stream.appended import Appended
from streamcast.stream.messages import Readings


@dataclass
class Ready:
    """Windows that are ready for a forecast, with where they came from."""

    sensors: list[str]
    windows: np.ndarray  # (n, num_steps, F) float32
    truths: np.ndarray  # (n, F)
    lags: np.ndarray  # (n, horizon, F): each step's reading a season earlier; (n, 0, F) if none
    lags_known: np.ndarray  # (n,) bool
    slots: np.ndarray
    generations: np.ndarray
    counts: np.ndarray  # readings since the window (re)started (carry mode's step count)
    step_s: np.ndarray
    ts: np.ndarray  # ts of the last reading in each window
    log_ts: np.ndarray  # when that reading was appended to the log (s)
    partitions: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, readings: Readings, appended: Appended) -> Ready:
        """The windows ``appended`` completed, with the readings that completed them."""
        idx = appended.ready
        sensors = readings.sensors
        return cls(
            sensors=[sensors[i] for i in idx.tolist()],
            windows=appended.windows,
            truths=appended.truths,
            lags=appended.lags,
            lags_known=appended.lags_known,
            slots=appended.slots,
            generations=appended.generations,
            counts=appended.counts,
            step_s=appended.step_s,
            ts=readings.ts[idx],
            log_ts=readings.log_ts[idx],
            partitions=readings.partitions[idx],
            offsets=readings.offsets[idx],
        )

    def __len__(self) -> int:
        return len(self.sensors)

    def slice(self, start: int, stop: int) -> Ready:
        parts = {f.name: getattr(self, f.name)[start:stop] for f in fields(self)}
        return Ready(**parts)

    def select(self, index: np.ndarray) -> Ready:
        parts: dict[str, Any] = {
            f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "sensors"
        }
        parts["sensors"] = [self.sensors[i] for i in index.tolist()]
        return Ready(**parts)

    @staticmethod
    def concat(parts: list[Ready]) -> Ready:
        if len(parts) == 1:
            return parts[0]
        out: dict[str, Any] = {}
        for f in fields(Ready):
            if f.name == "sensors":
                out[f.name] = [s for p in parts for s in p.sensors]
            else:
                out[f.name] = np.concatenate([getattr(p, f.name) for p in parts])
        return Ready(**out)


class Batcher:
    def __init__(self, max_batch: int, max_wait_s: float) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._parts: list[Ready] = []
        self._rows = 0
        self._oldest: float | None = None

    def __len__(self) -> int:
        return self._rows

    def add(self, ready: Ready, now: float) -> None:
        if len(ready) == 0:
            return
        self._parts.append(ready)
        self._rows += len(ready)
        if self._oldest is None:
            self._oldest = now

    def due(self, now: float) -> bool:
        if self._rows == 0:
            return False
        assert self._oldest is not None
        return self._rows >= self.max_batch or now - self._oldest >= self.max_wait_s

    def wait_s(self, now: float, idle_s: float) -> float:
        """How long the next poll may block without missing a batch deadline."""
        if self._oldest is None:
            return idle_s
        return max(0.0, min(idle_s, self._oldest + self.max_wait_s - now))

    def take(self, now: float) -> Ready:
        """Up to ``max_batch`` rows, oldest first; the rest keeps waiting.

        Only the parts the batch needs are touched (the last one split), so draining a
        large backlog costs O(backlog), not O(backlog² / max_batch).
        """
        needed = self.max_batch
        used = 0
        rows = 0
        while used < len(self._parts) and rows < needed:
            rows += len(self._parts[used])
            used += 1
        head = self._parts[:used]
        rest = self._parts[used:]
        over = rows - needed
        if over > 0:
            last = head[-1]
            cut = len(last) - over
            head[-1] = last.slice(0, cut)
            rest.insert(0, last.slice(cut, len(last)))
            rows = needed
        self._parts = rest
        self._rows -= rows
        self._oldest = now if self._rows else None
        return Ready.concat(head)

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget rows of partitions this process no longer owns."""
        if not partitions:
            return
        kept = []
        for part in self._parts:
            keep = ~np.isin(part.partitions, list(partitions))
            if keep.all():
                kept.append(part)
            elif keep.any():
                kept.append(part.select(np.flatnonzero(keep)))
        self._parts = kept
        self._rows = sum(len(p) for p in kept)
        if not self._rows:
            self._oldest = None

    def first_offsets(self) -> dict[int, int]:
        """Per partition, the lowest source offset still waiting: commits stop there."""
        out: dict[int, int] = {}
        for part in self._parts:
            for p in np.unique(part.partitions):
                lowest = int(part.offsets[part.partitions == p].min())
                out[int(p)] = min(out.get(int(p), lowest), lowest)
        return out
