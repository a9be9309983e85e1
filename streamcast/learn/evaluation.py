"""Scoring forecasts: honest baselines, horizon buckets and scaled errors.

Every error here can be measured in units of each series' own training standard
deviation (per feature), so a sensor reading in the hundreds does not drown one
reading in tens, and a number like 0.3 means "a third of that sensor's usual spread".
A model is judged against two baselines on data it never trained on: persistence
(the last reading, held) and seasonal naive (the last ``horizon`` readings, repeated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamcast.learn.examples import Examples

SCALE_NOTE = "errors in units of each series' training std (per feature)"
_BUCKET_EDGES = (6, 24, 48)  # then doubling: 96, 192, ...


def baselines(ex: Examples, horizon: int | None = None) -> dict[str, np.ndarray]:
    """Forecasts a model must beat to be worth running: persistence and seasonal naive.

    Seasonal naive repeats the last ``min(horizon, num_steps)`` readings of the window; with
    the default 96-step window and horizon at 15-minute steps that is "same time yesterday".
    """
    h = ex.target.shape[1] if horizon is None else horizon
    return baseline_forecasts(ex.window, h)


def baseline_forecasts(
    window: np.ndarray, horizon: int, season: int | None = None
) -> dict[str, np.ndarray]:
    """Persistence and seasonal naive from windows (n, num_steps, F): (n, horizon, F) each.

    ``season`` (steps, at most the window's length) defaults to ``min(horizon, num_steps)``.
    """
    num_steps = window.shape[1]
    period = min(horizon, num_steps) if season is None else season
    if not 1 <= period <= num_steps:
        raise ValueError(f"season {period} must be between 1 and the window's {num_steps} steps")
    persistence = np.repeat(window[:, -1:, :], horizon, axis=1)
    idx = num_steps - period + np.arange(horizon) % period
    return {"persistence": persistence, "seasonal": window[:, idx, :]}


def horizon_buckets(horizon: int) -> list[tuple[int, int]]:
    """1-based inclusive step ranges: 1-6, 7-24, 25-48, 49-96, 97-192, ... cut at ``horizon``."""
    edges: list[int] = []
    for e in _BUCKET_EDGES:
        if e < horizon:
            edges.append(e)
    e = 96
    while e < horizon:
        edges.append(e)
        e *= 2
    edges.append(horizon)
    out, lo = [], 1
    for hi in edges:
        out.append((lo, hi))
        lo = hi + 1
    return out


@dataclass(frozen=True)
class Score:
    """MAE and RMSE (scaled or in the data's units) and sMAPE (always scale-free, in %)."""

    mae: float
    rmse: float
    smape: float = math.nan


@dataclass(frozen=True)
class Evaluation:
    """Scores per horizon bucket, over the whole horizon and per feature, per forecaster."""

    buckets: tuple[tuple[int, int], ...]
    scores: dict[str, dict[str, Score]]  # forecaster -> row label -> score
    examples: int
    units: str = SCALE_NOTE
    by_feature: dict[str, list[Score]] = field(default_factory=dict)  # forecaster -> [v1, ...]

    @property
    def rows(self) -> list[str]:
        return [bucket_label(b) for b in self.buckets] + ["mean"]

    def score(self, forecaster: str, row: str = "mean") -> Score:
        return self.scores[forecaster][row]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, as stored in a registry version's meta.json."""
        return {
            "units": self.units,
            "examples": self.examples,
            "buckets": [list(b) for b in self.buckets],
            "scores": {
                name: {row: _score_dict(s) for row, s in rows.items()}
                for name, rows in self.scores.items()
            },
            "by_feature": {
                name: [_score_dict(s) for s in scores] for name, scores in self.by_feature.items()
            },
        }


def _score_dict(s: Score) -> dict[str, float | None]:
    return {"mae": _finite(s.mae), "rmse": _finite(s.rmse), "smape": _finite(s.smape)}


def _finite(x: float) -> float | None:
    """JSON has no NaN: a score with nothing behind it is null."""
    return x if math.isfinite(x) else None


def bucket_label(bucket: tuple[int, int]) -> str:
    lo, hi = bucket
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def smape_terms(forecast: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """200 |f - y| / (|f| + |y|) per value (0 where both are 0): sMAPE in %, 0 to 200."""
    # A broken forecast (inf, NaN) scores NaN, which the gate reads as broken: no warning.
    with np.errstate(invalid="ignore", over="ignore"):
        den = np.abs(forecast) + np.abs(truth)
        num = 200.0 * np.abs(forecast - truth)
        shape = np.broadcast(num, den).shape
        out: np.ndarray = np.divide(num, den, out=np.zeros(shape), where=den > 0)
        out[~np.isfinite(den)] = np.nan
    return out


def reading_errors(forecast: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|forecast - truth| averaged over features, one error per reading (live accuracy's unit)."""
    err: np.ndarray = np.abs(forecast - truth).mean(axis=-1, dtype=np.float64)
    return err


class ErrorTotals:
    """Running error sums per (forecaster, horizon step, feature), in bounded memory.

    The one scorer behind ``train``'s validation table, ``streamcast backtest`` and the
    daemon's live accuracy: forecasts are added as they are made (a backtest over a
    long file never holds them all) and any summary is read off the sums. A missing
    truth (NaN) is left out of every forecaster's sums alike, so all are scored on the
    same readings.
    """

    def __init__(self, names: Sequence[str], horizon: int, num_features: int) -> None:
        if horizon < 1 or num_features < 1:
            raise ValueError("horizon and num_features must be >= 1")
        self.names = list(names)
        self.horizon = horizon
        self.num_features = num_features
        shape = (len(self.names), horizon, num_features)
        self._abs = np.zeros(shape)
        self._sq = np.zeros(shape)
        self._smape = np.zeros(shape)
        self._count = np.zeros((horizon, num_features), np.int64)
        self.examples = 0

    def add(
        self,
        forecasts: Mapping[str, np.ndarray],
        truth: np.ndarray,
        scale: np.ndarray | None = None,
    ) -> None:
        """Score (n, horizon, F) forecasts of every forecaster against ``truth`` (NaN: unknown).

        ``scale`` (n, F) divides the absolute and squared errors (sMAPE is scale-free).
        """
        truth = np.asarray(truth, np.float64)
        n = truth.shape[0]
        if truth.shape != (n, self.horizon, self.num_features):
            raise ValueError(
                f"truth shape {truth.shape}; expected (n, {self.horizon}, {self.num_features})"
            )
        if set(forecasts) != set(self.names):
            raise ValueError(f"forecasters {sorted(forecasts)}; expected {sorted(self.names)}")
        known = np.isfinite(truth)
        y = np.where(known, truth, 0.0)
        inv = None if scale is None else 1.0 / np.asarray(scale, np.float64)[:, None, :]
        for i, name in enumerate(self.names):
            fc = np.asarray(forecasts[name], np.float64)
            if fc.shape != truth.shape:
                raise ValueError(f"forecast {name!r} has shape {fc.shape}, truth {truth.shape}")
            err = np.where(known, fc - y, 0.0)
            pct = np.where(known, smape_terms(fc, y), 0.0)
            if inv is not None:
                err = err * inv
            self._abs[i] += np.abs(err).sum(axis=0)
            self._sq[i] += np.square(err).sum(axis=0)
            self._smape[i] += pct.sum(axis=0)
        self._count += known.sum(axis=0)
        self.examples += n

    def evaluation(
        self, buckets: Sequence[tuple[int, int]] | None = None, units: str = SCALE_NOTE
    ) -> Evaluation:
        """Scores per horizon bucket, overall ("mean") and per feature, per forecaster."""
        h = self.horizon
        chosen = list(buckets) if buckets is not None else horizon_buckets(h)
        for lo, hi in chosen:
            if not 1 <= lo <= hi <= h:
                raise ValueError(f"bucket {lo}-{hi} outside the horizon 1-{h}")
        scores: dict[str, dict[str, Score]] = {}
        by_feature: dict[str, list[Score]] = {}
        for i, name in enumerate(self.names):
            rows = {
                bucket_label((lo, hi)): self._score(i, slice(lo - 1, hi), slice(None))
                for lo, hi in chosen
            }
            rows["mean"] = self._score(i, slice(None), slice(None))
            scores[name] = rows
            by_feature[name] = [
                self._score(i, slice(None), slice(f, f + 1)) for f in range(self.num_features)
            ]
        return Evaluation(tuple(chosen), scores, self.examples, units, by_feature)

    def step_mae(self, name: str) -> np.ndarray:
        """MAE at each horizon step (NaN where nothing was scored), for error-by-horizon plots."""
        i = self.names.index(name)
        count = self._count.sum(axis=1)
        out: np.ndarray = np.full(self.horizon, np.nan)
        np.divide(self._abs[i].sum(axis=1), count, out=out, where=count > 0)
        return out

    def _score(self, i: int, steps: slice, features: slice) -> Score:
        n = int(self._count[steps, features].sum())
        if n == 0:
            return Score(math.nan, math.nan, math.nan)
        return Score(
            float(self._abs[i, steps, features].sum()) / n,
            math.sqrt(float(self._sq[i, steps, features].sum()) / n),
            float(self._smape[i, steps, features].sum()) / n,
        )


def evaluate(
    forecast: np.ndarray | Mapping[str, np.ndarray],
    target: np.ndarray,
    buckets: Sequence[tuple[int, int]] | None = None,
    scale: np.ndarray | None = None,
) -> Evaluation:
    """Score one forecast (named "model") or several, per horizon bucket and over the horizon.

    ``scale`` (k, F) divides each example's errors (use each series' training std); without
    it errors stay in original units. RMSE per bucket is the root of the bucket's mean square.
    """
    forecasts = {"model": forecast} if isinstance(forecast, np.ndarray) else dict(forecast)
    target = np.asarray(target, dtype=np.float64)
    _, h, f = target.shape
    totals = ErrorTotals(list(forecasts), h, f)
    totals.add(forecasts, target, scale)
    return totals.evaluation(buckets, _units(scale))


def _units(scale: np.ndarray | None) -> str:
    return SCALE_NOTE if scale is not None else "errors in original units"


def format_evaluation(metrics: Evaluation) -> str:
    """A fixed-width table: one row per horizon bucket plus the mean, MAE and RMSE columns."""
    names = list(metrics.scores)
    head = ["horizon"] + [f"{n} {m}" for n in names for m in ("MAE", "RMSE")]
    widths = [max(8, len(h)) for h in head]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    for row in metrics.rows:
        cells = [row]
        for n in names:
            s = metrics.scores[n][row]
            cells += [f"{s.mae:.4f}", f"{s.rmse:.4f}"]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    lines.append(f"({metrics.units}; {metrics.examples} examples)")
    return "\n".join(lines)


def score_held_out(
    forecasts: Mapping[str, np.ndarray], held_out: Examples, scale: np.ndarray | None = None
) -> Evaluation:
    """Named forecasts and the baselines on ``held_out`` examples, errors scaled per source.

    ``scale`` is (sources, F), indexed by each example's ``source`` (use each series'
    training std); without it errors stay in original units. The baselines' names are
    reserved, so a model can never be scored as one.
    """
    reserved = {"persistence", "seasonal"} & set(forecasts)
    if reserved:
        raise ValueError(f"forecast names {sorted(reserved)} are the baselines' own")
    per_example = None if scale is None else np.asarray(scale)[held_out.source]
    return evaluate({**forecasts, **baselines(held_out)}, held_out.target, scale=per_example)
