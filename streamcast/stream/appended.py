"""What one ``WindowStore.append`` did: the windows it completed and the readings it refused.

Its own module because the batcher and the daemon read it without touching the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamcast.stream.messages import DeadLetter, Readings, RecordLike

IntArray = npt.NDArray[np.int64]


@dataclass
class Appended:
    """What one ``append`` did: rejections, the windows it completed, restarts and evictions."""

    rejected: IntArray
    reasons: list[str]
    ready: IntArray
    windows: npt.NDArray[np.float32]
    truths: npt.NDArray[np.float32]
    # (k, horizon, F): each forecast step's reading one season earlier; (k, 0, F) without
    # a season (``model.seasonal_lag``). ``lags_known``: whether all were observed.
    lags: npt.NDArray[np.float32]
    lags_known: npt.NDArray[np.bool_]
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


def concat_appended(a: Appended, b: Appended, shift: int) -> Appended:
    """Results of two consecutive appends as one (indices of ``b`` shifted by ``shift``)."""
    return Appended(
        rejected=np.concatenate([a.rejected, b.rejected + shift]),
        reasons=a.reasons + b.reasons,
        ready=np.concatenate([a.ready, b.ready + shift]),
        windows=np.concatenate([a.windows, b.windows]),
        truths=np.concatenate([a.truths, b.truths]),
        lags=np.concatenate([a.lags, b.lags]),
        lags_known=np.concatenate([a.lags_known, b.lags_known]),
        slots=np.concatenate([a.slots, b.slots]),
        generations=np.concatenate([a.generations, b.generations]),
        counts=np.concatenate([a.counts, b.counts]),
        step_s=np.concatenate([a.step_s, b.step_s]),
        restarts=a.restarts + b.restarts,
        evicted=a.evicted + b.evicted,
    )
