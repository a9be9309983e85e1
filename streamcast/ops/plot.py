"""The backtest picture: a few sensors' truth with forecasts over it, and error by horizon.

matplotlib is an optional extra (``pip install 'streamcast[plot]'``): a daemon never
draws, and a backtest without ``--plot`` does not need it.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from streamcast.stream.backtest import METHODS, BacktestReport
from streamcast.stream.inference import Forecasts

_COLORS = {"model": "tab:red", "persistence": "tab:gray", "seasonal_naive": "tab:blue"}


@dataclass
class _Picked:
    ts: float
    step_s: float
    values: np.ndarray  # (horizon, F)


@dataclass
class ForecastSamples:
    """Keeps, per chosen sensor, the first forecast issued at or after each chosen time.

    Pass ``collect`` as a backtest's ``on_forecasts``: it holds a handful of forecasts,
    whatever the file's length.
    """

    times: dict[str, list[float]]  # sensor -> issue times wanted, ascending
    picked: dict[str, list[_Picked]] = field(default_factory=dict)

    @classmethod
    def spread(
        cls,
        data: Mapping[str, tuple[np.ndarray, np.ndarray]],
        sensors: Sequence[str],
        per_sensor: int = 3,
        start: float | None = None,
        horizon_s: Mapping[str, float] | None = None,
    ) -> ForecastSamples:
        """``per_sensor`` issue times spread over each sensor's scored span."""
        times: dict[str, list[float]] = {}
        for s in sensors:
            ts = np.asarray(data[s][0], np.float64)
            lo = ts[0] if start is None else max(float(ts[0]), start)
            hi = float(ts[-1]) - (horizon_s or {}).get(s, 0.0)
            if hi <= lo:
                hi = float(ts[-1])
            times[s] = list(np.linspace(lo, hi, per_sensor + 2)[1:-1])
        return cls(times)

    def collect(self, done: Forecasts) -> None:
        batch = done.batch
        for i, sensor in enumerate(batch.sensors):
            wanted = self.times.get(sensor)
            if not wanted:
                continue
            got = self.picked.setdefault(sensor, [])
            if len(got) >= len(wanted):
                continue
            t = float(batch.ts[i])
            if t >= wanted[len(got)]:
                got.append(_Picked(t, float(batch.step_s[i]), np.array(done.values[i])))


def plot_backtest(
    path: str | os.PathLike[str],
    report: BacktestReport,
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    samples: ForecastSamples,
) -> None:
    """Write a PNG: per sampled sensor and feature, truth and forecasts; then MAE by step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'streamcast[plot]'") from None
    sensors = [s for s in samples.times if samples.picked.get(s)]
    features = report.feature_names
    rows = max(1, len(sensors))
    fig, axes = plt.subplots(
        rows + 1, len(features), figsize=(6.0 * len(features), 2.6 * (rows + 1)), squeeze=False
    )
    for r, sensor in enumerate(sensors):
        ts, values = data[sensor]
        ts = np.asarray(ts, np.float64)
        picked = samples.picked[sensor]
        lo = picked[0].ts - report.num_steps * picked[0].step_s
        hi = max(p.ts + report.horizon * p.step_s for p in picked)
        a, b = bisect.bisect_left(ts.tolist(), lo), bisect.bisect_right(ts.tolist(), hi)
        when = [_dt(t) for t in ts[a:b]]
        for f, feature in enumerate(features):
            ax = axes[r][f]
            ax.plot(when, np.asarray(values)[a:b, f], color="black", lw=1.0, label="truth")
            for k, p in enumerate(picked):
                due = p.ts + p.step_s * np.arange(1, report.horizon + 1)
                ax.plot(
                    [_dt(t) for t in due],
                    p.values[:, f],
                    color=_COLORS["model"],
                    lw=1.4,
                    label="forecast" if k == 0 else None,
                )
                ax.axvline(_dt(p.ts), color=_COLORS["model"], lw=0.5, ls=":")
            ax.set_title(f"{sensor} · {feature}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.tick_params(axis="x", labelrotation=20)
            if r == 0 and f == 0:
                ax.legend(fontsize=7, loc="upper left")
    steps = np.arange(1, report.horizon + 1)
    for f in range(len(features)):
        ax = axes[rows][f]
        if f == 0:
            for m in METHODS:
                ax.plot(steps, report.step_mae[m], color=_COLORS[m], label=m)
            ax.set_xlabel("horizon step")
            ax.set_ylabel("MAE")
            ax.set_title(
                f"error by horizon, version {report.model_version} "
                f"(skill {report.skill:+.3f}, {report.windows} windows)",
                fontsize=9,
            )
            ax.legend(fontsize=7)
            ax.tick_params(labelsize=7)
        else:
            _feature_bars(ax, report, features)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _feature_bars(ax: object, report: BacktestReport, features: Sequence[str]) -> None:
    """MAE per feature of the three methods, side by side."""
    ev = report.evaluation
    x = np.arange(len(features))
    width = 0.8 / len(METHODS)
    for k, m in enumerate(METHODS):
        maes = [s.mae for s in ev.by_feature[m]]
        ax.bar(x + k * width, maes, width, color=_COLORS[m], label=m)  # type: ignore[attr-defined]
    ax.set_xticks(x + width, list(features))  # type: ignore[attr-defined]
    ax.set_title("MAE per feature", fontsize=9)  # type: ignore[attr-defined]
    ax.tick_params(labelsize=7)  # type: ignore[attr-defined]


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(float(ts), UTC)
