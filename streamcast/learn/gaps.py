"""Where serving restarts a sensor's window, so training cuts its data at the same readings.

Serving restarts a sensor's window after a gap longer than ``gap_factor`` x its step
estimate (``WindowStore``). Training runs the same rule, with the same constants
(``streamcast.stream.cadence``), so no training example bridges an outage that the
live model never sees bridged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from streamcast.stream.cadence import STEP_ALPHA, STEP_CLIP

FloatArray = npt.NDArray[np.float64]
ValueArray = npt.NDArray[np.float32]


def advance(
    ts: Sequence[float], state: tuple[int, float, float], gap_factor: float, span: int
) -> tuple[list[int], int, tuple[int, float, float]]:
    """``WindowStore``'s gap rule over one sensor's new readings (each newer than the last).

    ``state`` is (readings since the window restarted, step estimate, last ts). Returns
    (positions in ``ts`` where the window restarts, readings that complete a ``span``
    since the restart, the new state). Python floats give the same IEEE results as the
    store's float64 arrays, so both restart at exactly the same reading.
    """
    count, step, last = state
    restarts: list[int] = []
    completed = 0
    for i, t in enumerate(ts):
        diff = t - last
        if count >= 2 and diff > gap_factor * step:
            restarts.append(i)
            count = 1
        elif count == 1:  # the first gap after a (re)start seeds the step
            step = diff
            count = 2
        elif count == 0:
            count = 1
        else:
            clipped = min(max(diff, step / STEP_CLIP), step * STEP_CLIP)
            step = step + STEP_ALPHA * (clipped - step)
            count += 1
        last = t
        if count >= span:
            completed += 1
    return restarts, completed, (count, step, last)


def window_restarts(ts: npt.ArrayLike, gap_factor: float = 3.0) -> npt.NDArray[np.int64]:
    """Indices into a sensor's increasing ``ts`` where ``WindowStore`` restarts its window."""
    arr = np.asarray(ts, np.float64)
    restarts, _, _ = advance(arr.tolist(), (0, 0.0, -math.inf), gap_factor, 1)
    return np.asarray(restarts, np.int64)


def split_at_restarts(
    ts: FloatArray, values: ValueArray, gap_factor: float = 3.0
) -> list[tuple[FloatArray, ValueArray]]:
    """A sensor's (ts, values) cut into the runs serving keeps one window going over."""
    cuts = window_restarts(ts, gap_factor)
    return list(zip(np.split(ts, cuts), np.split(values, cuts), strict=True))
