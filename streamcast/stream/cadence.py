"""The stride's cadence: which readings get a forecast when not every one does.

It follows each reading's ``ts`` alone, not a count since the process started, so a
restart or a rebalance never moves it. The step estimate's constants live here too:
serving's windows and training's gap rule both read them, so the two cut a sensor's
readings at exactly the same places.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Step estimate: EWMA of the gaps between readings, each gap clipped to [1/2, 2] x the
# estimate, so jitter and a single missed reading barely move it.
STEP_ALPHA = 0.1
STEP_CLIP = 2.0

# Sampling intervals sensors are set to (seconds); an estimated step within 10 % of one
# is taken to be it, so the estimate's drift never moves the stride's grid.
_COMMON_STEPS = np.array(
    [
        *(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 20, 30),
        *(60, 120, 180, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600, 43200, 86400),
    ],
    np.float64,
)


def grid_step(step: FloatArray) -> FloatArray:
    """The sampling interval behind an estimated step: the common interval within 10 %,
    else the estimate rounded to two significant digits."""
    safe = np.where(step > 0, step, 1.0)
    nearest = np.abs(np.log(safe[..., None] / _COMMON_STEPS)).argmin(axis=-1)
    common = _COMMON_STEPS[nearest]
    quantum = 10.0 ** (np.floor(np.log10(safe)) - 1)
    rounded = np.rint(safe / quantum) * quantum
    snapped: FloatArray = np.where(np.abs(safe / common - 1.0) <= 0.1, common, rounded)
    return snapped


def on_stride(ts: FloatArray, step: FloatArray, stride: int) -> npt.NDArray[np.bool_]:
    """Whether each reading is one the stride forecasts: its index on its sensor's time
    grid (``ts / grid_step(step)``) is a multiple of ``stride``.

    The cadence then follows ``ts`` alone, so forecasts land on the same readings
    whatever happened to the process (at stride 96 and a 15-minute step: at midnight
    UTC every day).
    """
    index = np.rint(ts / grid_step(step))
    ready: npt.NDArray[np.bool_] = (np.fmod(index, stride) == 0) & (step > 0)
    return ready
