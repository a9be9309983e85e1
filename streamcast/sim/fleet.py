"""Synthetic sensor fleet: seasonal readings with honest noise, for the demo, simulator and tests.

Each sensor has its own level, amplitude and phase, a daily cycle plus a second harmonic and a
weekly component, a slow trend, and noise made of an AR(1) part (slow wander a forecaster can
partly exploit) and white measurement noise (which nothing can predict). Every further feature is
a "load" that follows the first with a first-order lag, its own gain and its own noise. The noise
levels are drawn per sensor and are not tuned to flatter any model.

Three independent random streams (parameters, step noise, regime changes) come from one seed,
so stepping one reading at a time or asking for a whole series gives the same numbers, and a
regime change does not disturb the noise that follows it.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
DEFAULT_START_TS = 1_704_067_200.0  # 2024-01-01T00:00:00Z: fixed so runs are reproducible
_TWO_PI = 2.0 * math.pi


class SensorFleet:
    """A deterministic (per seed) fleet of sensors advancing in lock step.

    ``step()`` and ``series(n)`` both advance the fleet; they draw from the same random
    stream in the same order, so ``series(n)`` equals ``n`` calls of ``step()``.
    """

    def __init__(
        self,
        sensors: int,
        seed: int = 0,
        step_s: float = 900.0,
        start_ts: float = DEFAULT_START_TS,
        num_features: int = 2,
    ) -> None:
        if sensors < 1:
            raise ValueError(f"sensors must be >= 1, got {sensors}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if step_s <= 0:
            raise ValueError(f"step_s must be > 0, got {step_s}")
        self.sensors = sensors
        self.num_features = num_features
        self.step_s = float(step_s)
        self.start_ts = float(start_ts)
        self.sensor_ids = [f"sensor-{i:03d}" for i in range(sensors)]
        params_ss, noise_ss, regime_ss = np.random.SeedSequence(seed).spawn(3)
        self._noise = np.random.default_rng(noise_ss)
        self._regime = np.random.default_rng(regime_ss)
        self._draw_parameters(np.random.default_rng(params_ss))
        self._k = 0

    def _draw_parameters(self, rng: np.random.Generator) -> None:
        s, extra = self.sensors, self.num_features - 1
        # Feature 0: the measured signal.
        self.level = np.exp(rng.uniform(math.log(10.0), math.log(200.0), s))
        self.amplitude = self.level * rng.uniform(0.1, 0.4, s)
        self.phase = rng.uniform(0.0, _TWO_PI, s)
        self.period_s = np.full(s, DAY_S)  # the main cycle; a regime change may move it
        self.harm2 = self.amplitude * rng.uniform(0.1, 0.4, s)
        self.harm2_phase = rng.uniform(0.0, _TWO_PI, s)
        self.weekly = self.amplitude * rng.uniform(0.05, 0.3, s)
        self.weekly_phase = rng.uniform(0.0, _TWO_PI, s)
        self.trend_per_day = self.level * rng.uniform(-0.003, 0.003, s)
        self.ar_phi = rng.uniform(0.85, 0.97, s)
        ar_std = self.amplitude * rng.uniform(0.08, 0.2, s)
        self.ar_sigma = ar_std * np.sqrt(1.0 - self.ar_phi**2)
        self.white = self.amplitude * rng.uniform(0.03, 0.1, s)
        self._ar = ar_std * rng.standard_normal(s)
        # Features 1..F-1: loads that follow the signal with a lag (first-order response).
        self.load_gain = rng.uniform(0.5, 2.0, (s, extra))
        self.load_offset = self.level[:, None] * rng.uniform(-0.5, 0.5, (s, extra))
        self.load_alpha = rng.uniform(0.1, 0.4, (s, extra))  # lag of about 1/alpha steps
        self.load_phi = rng.uniform(0.7, 0.9, (s, extra))
        load_ar_std = self.load_gain * self.amplitude[:, None] * rng.uniform(0.05, 0.12, (s, extra))
        self.load_sigma = load_ar_std * np.sqrt(1.0 - self.load_phi**2)
        self.load_white = (
            self.load_gain * self.amplitude[:, None] * rng.uniform(0.03, 0.08, (s, extra))
        )
        self._load_ar = load_ar_std * rng.standard_normal((s, extra))
        self._load = np.repeat(self._clean(np.array([self.start_ts]))[0][:, None], extra, axis=1)

    def _clean(self, ts: np.ndarray) -> np.ndarray:
        """The noise-free part of feature 0 at times ``ts``: shape (len(ts), sensors)."""
        t = ts[:, None]
        days = (t - self.start_ts) / DAY_S
        daily = _TWO_PI * t / self.period_s
        clean: np.ndarray = (
            self.level
            + self.trend_per_day * days
            + self.amplitude * np.sin(daily + self.phase)
            + self.harm2 * np.sin(2.0 * daily + self.harm2_phase)
            + self.weekly * np.sin(_TWO_PI * t / WEEK_S + self.weekly_phase)
        )
        return clean

    @property
    def next_ts(self) -> float:
        """Timestamp the next ``step()`` will report."""
        return self.start_ts + self._k * self.step_s

    def _advance(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        s, extra = self.sensors, self.num_features - 1
        ts = self.start_ts + (self._k + np.arange(n, dtype=np.float64)) * self.step_s
        clean = self._clean(ts)
        # One block of normals per step, in C order, so bulk and single steps draw alike.
        z = self._noise.standard_normal((n, s, 2 + 2 * extra))
        out = np.empty((s, n, self.num_features), dtype=np.float64)
        for i in range(n):
            self._ar = self.ar_phi * self._ar + self.ar_sigma * z[i, :, 0]
            signal = clean[i] + self._ar
            out[:, i, 0] = signal + self.white * z[i, :, 1]
            if extra:
                self._load += self.load_alpha * (signal[:, None] - self._load)
                self._load_ar = (
                    self.load_phi * self._load_ar + self.load_sigma * z[i, :, 2 : 2 + extra]
                )
                out[:, i, 1:] = (
                    self.load_offset
                    + self.load_gain * self._load
                    + self._load_ar
                    + self.load_white * z[i, :, 2 + extra :]
                )
        self._k += n
        return ts, out

    def step(self) -> tuple[float, np.ndarray]:
        """Advance every sensor one step: (ts of this step, values (sensors, F))."""
        ts, values = self._advance(1)
        return float(ts[0]), values[:, 0, :]

    def series(self, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Advance ``n_steps``: (ts (n_steps,), values (sensors, n_steps, F))."""
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        return self._advance(n_steps)

    def regime_change(self, sensor: int | None = None, *, period_factor: float = 1.0) -> None:
        """Shift level, amplitude and phase for one sensor (or all) from now on, and
        scale the main cycle's period by ``period_factor``.

        Drawn from its own random stream, so the noise after the change is the same as it
        would have been without it; only the underlying pattern moves.
        """
        if period_factor <= 0:
            raise ValueError(f"period_factor must be > 0, got {period_factor}")
        idx = np.arange(self.sensors) if sensor is None else np.array([sensor])
        if sensor is not None and not 0 <= sensor < self.sensors:
            raise IndexError(f"sensor {sensor} out of range 0..{self.sensors - 1}")
        n = len(idx)
        sign = self._regime.choice(np.array([-1.0, 1.0]), n)
        self.level[idx] += sign * self.amplitude[idx] * self._regime.uniform(0.5, 1.5, n)
        self.amplitude[idx] *= self._regime.uniform(0.6, 1.6, n)
        self.phase[idx] += self._regime.uniform(-math.pi / 4, math.pi / 4, n)
        self.period_s[idx] *= period_factor
        logger.info("regime change sensors=%s", [self.sensor_ids[i] for i in idx])


def fleet_series(
    sensors: int, steps: int, seed: int = 0, num_features: int = 2
) -> list[np.ndarray]:
    """``steps`` readings for each of ``sensors`` sensors: a list of (steps, F) arrays."""
    _, values = SensorFleet(sensors, seed=seed, num_features=num_features).series(steps)
    return [values[i] for i in range(sensors)]
