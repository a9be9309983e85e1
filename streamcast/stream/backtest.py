"""Backtest: a model version walked forward through history exactly as the daemon serves.

The readings go, in time order, through the daemon's own stages: the window store
(stride, gap restarts), the batch inference with its seeding mode (carry mode carries
each sensor's states through the history), and the same predictor. So a backtest's
forecast for (sensor, ts) is the one the daemon fed the same readings publishes, and
its scores say what serving this version on that history would have been worth.

Each forecast is scored against the readings that followed it, matched by time as
live accuracy matches them (the horizon step nearest to each reading), next to
persistence and seasonal naive made from the same window. The scores accumulate as
the walk goes, so a long file never holds its forecasts in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamcast.config import ModelSpec, Settings
from streamcast.learn.evaluation import (
    ErrorTotals,
    Evaluation,
    Score,
    baseline_forecasts,
    bucket_label,
)
from streamcast.learn.registry import LoadedModel, ModelRegistry
from streamcast.stream.batcher import Ready
from streamcast.stream.inference import BatchInference, Forecasts
from streamcast.stream.messages import Readings
from streamcast.stream.windows import WindowStore

logger = logging.getLogger(__name__)

#: Names in a report (JSON keys) of the forecasters scored, in order.
METHODS = ("model", "persistence", "seasonal_naive")
_CHUNK = 8192  # readings appended to the window store at a time

#: Called with each batch's forecasts as they are made: (forecasts, model version).
OnForecasts = Callable[[Forecasts], None]
#: Called as the walk goes: (readings done, readings in all).
OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class BacktestReport:
    """What a backtest measured, in the data's own units (sMAPE in %)."""

    evaluation: Evaluation  # forecasters "model", "persistence", "seasonal_naive"
    step_mae: dict[str, list[float]]  # forecaster -> MAE at each horizon step (NaN: none)
    model_version: int
    seeding: str
    horizon: int
    num_steps: int
    stride: int
    season: int
    start: float | None
    sensors: int
    readings: int
    forecasts: int  # issued, scored or not
    windows: int  # scored: forecasts with at least one later reading to score against
    unforecastable: int  # windows the daemon would have dead-lettered
    feature_names: tuple[str, ...]

    @property
    def skill(self) -> float:
        """1 - MAE_model / MAE_persistence: above 0, the model beats holding the last value."""
        model = self.evaluation.score("model").mae
        persistence = self.evaluation.score("persistence").mae
        return 1.0 - model / persistence if persistence > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        ev = self.evaluation
        out: dict[str, Any] = {}
        for name in METHODS:
            mean = ev.score(name)
            out[name] = {
                **_score(mean),
                "by_horizon": [
                    {"steps": bucket_label(b), "first": b[0], "last": b[1]}
                    | _score(ev.score(name, bucket_label(b)))
                    for b in ev.buckets
                ],
                "by_feature": [
                    {"feature": feature} | _score(s)
                    for feature, s in zip(self.feature_names, ev.by_feature[name], strict=True)
                ],
                "by_step_mae": [_finite(x) for x in self.step_mae[name]],
            }
        out.update(
            skill=_finite(self.skill),
            windows=self.windows,
            model_version=self.model_version,
            seeding=self.seeding,
            horizon=self.horizon,
            num_steps=self.num_steps,
            stride=self.stride,
            season=self.season,
            start=self.start,
            sensors=self.sensors,
            readings=self.readings,
            forecasts=self.forecasts,
            unforecastable=self.unforecastable,
            units="the data's units; smape in percent",
        )
        return out


def _score(s: Score) -> dict[str, float | None]:
    return {"mae": _finite(s.mae), "rmse": _finite(s.rmse), "smape": _finite(s.smape)}


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


class _History:
    """Every sensor's readings side by side: sensor by sensor, each in time order."""

    def __init__(self, data: Mapping[str, tuple[np.ndarray, np.ndarray]], num_features: int):
        names, ts_parts, value_parts = [], [], []
        for name in sorted(data):
            ts, values = data[name]
            ts = np.asarray(ts, np.float64)
            values = np.asarray(values, np.float64).reshape(len(ts), -1)
            if values.shape[1] != num_features:
                raise ValueError(
                    f"sensor {name!r} has {values.shape[1]} value columns; "
                    f"the model expects {num_features}"
                )
            order = np.argsort(ts, kind="stable")
            ts, values = ts[order], values[order]
            # The daemon dead-letters a reading with a missing value: it never reaches a
            # window, and it cannot be scored against.
            keep = np.isfinite(values).all(axis=1) & np.isfinite(ts)
            names.append(name)
            ts_parts.append(ts[keep])
            value_parts.append(values[keep])
        self.names = names
        self.skipped = sum(len(data[n][0]) for n in names) - sum(len(t) for t in ts_parts)
        lengths = np.array([len(t) for t in ts_parts], np.int64)
        self.end = np.cumsum(lengths)  # one past each sensor's last row
        self.sensor = np.repeat(np.arange(len(names)), lengths)
        self.ts = np.concatenate(ts_parts) if ts_parts else np.empty(0)
        self.values = np.concatenate(value_parts) if value_parts else np.empty((0, num_features))
        # The order the readings arrive in: by time, ties by sensor.
        self.arrival = np.lexsort((self.sensor, self.ts))

    def __len__(self) -> int:
        return len(self.ts)

    def readings(self, rows: np.ndarray) -> Readings:
        """Rows as the daemon decodes them (float32 values); ``offsets`` carry the row."""
        return Readings(
            sensors=[self.names[s] for s in self.sensor[rows].tolist()],
            ts=self.ts[rows],
            values=self.values[rows].astype(np.float32),
            offsets=rows.astype(np.int64),
        )

    def truth_after(self, rows: np.ndarray, step_s: np.ndarray, horizon: int) -> np.ndarray:
        """(n, horizon, F) readings at each row's ``ts + k * step_s``, k = 1..horizon (NaN:
        none). A reading counts for the step nearest to it, the first one where two do."""
        n = len(rows)
        f = self.values.shape[1]
        out = np.full((n, horizon, f), np.nan)
        if n == 0:
            return out
        # A step's reading lies at most ``horizon`` rows on, unless readings come faster
        # than the estimated step; look twice as far to allow for jitter.
        ahead = np.arange(1, 2 * horizon + 1)
        cand = rows[:, None] + ahead[None, :]
        end = self.end[self.sensor[rows]][:, None]
        inside = cand < end
        cand = np.where(inside, cand, 0)
        k = np.rint((self.ts[cand] - self.ts[rows][:, None]) / step_s[:, None]).astype(np.int64)
        ok = inside & (k >= 1) & (k <= horizon)
        r, c = np.nonzero(ok)
        # Reversed, so that where two readings fall on one step the earlier one is kept.
        r, c = r[::-1], c[::-1]
        out[r, k[r, c] - 1] = self.values[cand[r, c]]
        return out


def run_backtest(
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    registry: str | os.PathLike[str] | LoadedModel,
    *,
    version: int | None = None,
    stride: int = 1,
    start: float | None = None,
    sensors: Sequence[str] | None = None,
    season: int | None = None,
    gap_factor: float = 3.0,
    max_batch: int = 1024,
    jit_compile: str = "auto",
    feature_names: Sequence[str] | None = None,
    on_forecasts: OnForecasts | None = None,
    progress: OnProgress | None = None,
) -> BacktestReport:
    """Walk ``data`` (sensor -> (ts, values (n, F))) forward with a registry's version.

    ``start`` (epoch seconds): only forecasts issued at or after it are scored; the
    readings before it are the windows' (and carried states') history. ``season``: the
    seasonal-naive period in steps (default ``min(horizon, num_steps)``).
    """
    loaded = registry if isinstance(registry, LoadedModel) else _load(registry, version)
    spec: ModelSpec = loaded.cfg
    if sensors is not None:
        unknown = sorted(set(sensors) - set(data))
        if unknown:
            raise ValueError(f"sensors not in the data: {', '.join(unknown[:5])}")
        data = {s: data[s] for s in sensors}
    if not data:
        raise ValueError("no sensors to backtest")
    period = min(spec.horizon, spec.num_steps) if season is None else season
    if not 1 <= period <= spec.num_steps:
        raise ValueError(f"season {period} must be between 1 and the window's {spec.num_steps}")
    if spec.seeding == "carry" and stride > spec.num_steps:
        raise ValueError(
            f"model version {loaded.version} carries states from window to window (seeding "
            f"'carry'), which needs a stride of at most the window's {spec.num_steps} "
            f"readings; the stride is {stride}"
        )
    names = tuple(feature_names or [f"v{i + 1}" for i in range(spec.num_features)])
    history = _History(data, spec.num_features)
    max_batch = max(1, min(max_batch, len(history)))  # no graph for batches never made
    settings = Settings.model_validate(
        {
            "window": {
                "num_steps": spec.num_steps,
                "stride": stride,
                "gap_factor": gap_factor,
                "capacity": max(1, len(history.names)),
            },
            "model": spec.model_dump(),
            "inference": {"max_batch": max_batch, "jit_compile": jit_compile},
        }
    )
    store = WindowStore.for_settings(settings)
    inference = BatchInference(settings, store)
    # Batches come in two sizes (full, and each chunk's rest): compile as they come.
    served = inference.prepare(loaded, 0.0, warm=False)
    totals = ErrorTotals(METHODS, spec.horizon, spec.num_features)
    forecasts = unforecastable = 0
    # Forecasts before ``start`` are only made where they change later ones (carry mode).
    needs_history = spec.seeding == "carry"
    total = len(history)
    for lo in range(0, total, _CHUNK):
        rows = history.arrival[lo : lo + _CHUNK]
        readings = history.readings(rows)
        appended = store.append(readings, emit=True)
        ready = Ready.of(readings, appended)
        if start is not None and not needs_history:
            ready = ready.select(np.flatnonzero(ready.ts >= start))
        for b in range(0, len(ready), max_batch):
            done = inference.forecast(served, ready.slice(b, b + max_batch))
            forecasts += len(done.batch)
            unforecastable += len(done.letters)
            if on_forecasts is not None and len(done.batch):
                on_forecasts(done)
            _score_batch(totals, history, done, start, period)
        if progress is not None:
            progress(min(lo + _CHUNK, total), total)
    evaluation = totals.evaluation(units="the data's units")
    return BacktestReport(
        evaluation=evaluation,
        step_mae={m: totals.step_mae(m).tolist() for m in METHODS},
        model_version=loaded.version,
        seeding=spec.seeding,
        horizon=spec.horizon,
        num_steps=spec.num_steps,
        stride=stride,
        season=period,
        start=start,
        sensors=len(history.names),
        readings=total,
        forecasts=forecasts,
        windows=totals.examples,
        unforecastable=unforecastable,
        feature_names=names,
    )


def _load(registry: str | os.PathLike[str], version: int | None) -> LoadedModel:
    return ModelRegistry(registry).load(version)


def _score_batch(
    totals: ErrorTotals, history: _History, done: Forecasts, start: float | None, season: int
) -> None:
    """Score a batch's forecasts (those issued at or after ``start``) and the baselines."""
    batch = done.batch
    keep = np.ones(len(batch), bool) if start is None else batch.ts >= start
    if not keep.any():
        return
    rows = batch.offsets[keep]
    truth = history.truth_after(rows, batch.step_s[keep], totals.horizon)
    known = np.isfinite(truth).any(axis=(1, 2))
    if not known.any():
        return
    windows = batch.windows[keep][known]
    base = baseline_forecasts(windows, totals.horizon, season)
    totals.add(
        {
            "model": done.values[keep][known],
            "persistence": base["persistence"],
            "seasonal_naive": base["seasonal"],
        },
        truth[known],
    )


def format_report(report: BacktestReport) -> str:
    """The human table: MAE, RMSE and sMAPE of the three forecasters per horizon bucket,
    overall and per feature, then the skill."""
    ev = report.evaluation
    short = {"model": "model", "persistence": "persist.", "seasonal_naive": "seasonal"}
    metrics = (("MAE", "mae", ""), ("RMSE", "rmse", ""), ("sMAPE", "smape", "%"))
    width = 10

    def line(first: str, cells: Sequence[str]) -> str:
        return first.ljust(9) + " ".join(c.rjust(width) for c in cells) if cells else first

    group = [m.center(width * 3 + 2, " ") for m, _, _ in metrics]
    lines = [line("", group)]
    lines.append(line("horizon", [short[m] for _ in metrics for m in METHODS]))

    def row(label: str, scores: dict[str, Score]) -> str:
        cells = [_fmt(getattr(scores[m], key), unit) for _, key, unit in metrics for m in METHODS]
        return line(label, cells)

    for label in ev.rows:
        lines.append(
            row("all" if label == "mean" else label, {m: ev.score(m, label) for m in METHODS})
        )
    for i, feature in enumerate(report.feature_names):
        lines.append(row(feature, {m: ev.by_feature[m][i] for m in METHODS}))
    lines.append("")
    lines.append(
        f"model version {report.model_version} (seeding={report.seeding}): "
        f"{report.windows} windows scored of {report.forecasts} forecast, "
        f"{report.sensors} sensor{'s' if report.sensors != 1 else ''}, "
        f"{report.readings} readings"
    )
    lines.append(
        f"stride {report.stride}; seasonal naive repeats the last {report.season} steps; "
        "MAE and RMSE in the data's units"
    )
    if report.unforecastable:
        lines.append(f"{report.unforecastable} windows could not be forecast (dead letters)")
    lines.append(f"skill vs persistence (1 - MAE model / MAE persistence): {report.skill:+.3f}")
    return "\n".join(lines)


def _fmt(x: float, unit: str = "") -> str:
    if not np.isfinite(x):
        return "-"
    return f"{x:.4g}{unit}"
