"""Calendar inputs: where each forecast falls in the day and the week, from ``ts``.

A 96-step window at 15-minute steps is one day: it cannot show a weekly pattern, and a
forecast 8 hours ahead falls at a time of day the window saw only once. The time itself
is known for the whole horizon, so the model is told it: per window, the phase of the
day and of the week at the forecast's origin and the step as a fraction of a day
(``model.calendar``); the model derives each horizon step's phases from those three
numbers. Computed in float64 here: epoch seconds in float32 are only good to 2 minutes.

Phases are in UTC, with the week starting on Monday 00:00 UTC.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
_MONDAY = 4 * DAY_S  # 1970-01-01 was a Thursday; 1970-01-05 00:00 UTC a Monday

#: Columns of the model's ``calendar`` input.
CALENDAR_WIDTH = 3


def calendar_inputs(origin_ts: npt.ArrayLike, step_s: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(n, 3): [day phase, week phase, step in days] at each forecast's origin.

    ``origin_ts`` is the time of the window's last reading (the forecast's step 0) and
    ``step_s`` the sensor's step; phases are in [0, 1). A step that is not a positive
    finite number gives 0 (the model then sees one fixed time for the whole horizon).
    """
    ts = np.asarray(origin_ts, np.float64)
    step = np.broadcast_to(np.asarray(step_s, np.float64), ts.shape)
    out = np.zeros((*ts.shape, CALENDAR_WIDTH), np.float32)
    finite = np.isfinite(ts)
    safe = np.where(finite, ts, 0.0)
    out[..., 0] = np.where(finite, np.mod(safe, DAY_S) / DAY_S, 0.0)
    out[..., 1] = np.where(finite, np.mod(safe - _MONDAY, WEEK_S) / WEEK_S, 0.0)
    good = np.isfinite(step) & (step > 0)
    out[..., 2] = np.where(good, np.where(good, step, 0.0) / DAY_S, 0.0)
    return out


def median_step(ts: npt.ArrayLike) -> float:
    """A series' step (the median spacing), as training assumes an even one; 0 if unknown."""
    t = np.asarray(ts, np.float64)
    if len(t) < 2:
        return 0.0
    d = np.diff(t)
    d = d[np.isfinite(d) & (d > 0)]
    return float(np.median(d)) if len(d) else 0.0
