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
from dataclasses import dataclass
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
    num_steps = ex.window.shape[1]
    period = min(h, num_steps)
    persistence = np.repeat(ex.window[:, -1:, :], h, axis=1)
    idx = num_steps - period + np.arange(h) % period
    seasonal = ex.window[:, idx, :]
    return {"persistence": persistence, "seasonal": seasonal}


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
    mae: float
    rmse: float


@dataclass(frozen=True)
class Evaluation:
    """Scaled MAE/RMSE per horizon bucket and over the whole horizon, per forecaster."""

    buckets: tuple[tuple[int, int], ...]
    scores: dict[str, dict[str, Score]]  # forecaster -> row label -> score
    examples: int
    units: str = SCALE_NOTE

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
                name: {row: {"mae": s.mae, "rmse": s.rmse} for row, s in rows.items()}
                for name, rows in self.scores.items()
            },
        }


def bucket_label(bucket: tuple[int, int]) -> str:
    lo, hi = bucket
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


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
    k, h, _ = target.shape
    chosen = list(buckets) if buckets is not None else horizon_buckets(h)
    for lo, hi in chosen:
        if not 1 <= lo <= hi <= h:
            raise ValueError(f"bucket {lo}-{hi} outside the horizon 1-{h}")
    inv = None if scale is None else 1.0 / np.asarray(scale, dtype=np.float64)[:, None, :]
    scores: dict[str, dict[str, Score]] = {}
    for name, fc in forecasts.items():
        fc = np.asarray(fc, dtype=np.float64)
        if fc.shape != target.shape:
            raise ValueError(f"forecast {name!r} has shape {fc.shape}, target {target.shape}")
        err = fc - target
        if inv is not None:
            err = err * inv
        abs_step = np.abs(err).mean(axis=(0, 2))  # (h,)
        sq_step = np.square(err).mean(axis=(0, 2))
        rows: dict[str, Score] = {}
        for lo, hi in chosen:
            sl = slice(lo - 1, hi)
            rows[bucket_label((lo, hi))] = Score(
                float(abs_step[sl].mean()), math.sqrt(float(sq_step[sl].mean()))
            )
        rows["mean"] = Score(float(abs_step.mean()), math.sqrt(float(sq_step.mean())))
        scores[name] = rows
    return Evaluation(buckets=tuple(chosen), scores=scores, examples=k, units=_units(scale))


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
