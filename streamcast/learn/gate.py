"""Whether a retrained model (the challenger) replaces the served one (the champion).

Both are scored on the most recent slice of every sensor's data, which the challenger
never trained on, in units of each sensor's own spread. The challenger must beat the
champion by a margin, so that noise alone does not swap models at every retraining,
and it must beat persistence: a model worse than "nothing changes" is broken,
whatever the champion does. Every rejection names one reason from a fixed set, for
logs, metrics and the version's meta.json.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from streamcast.learn.evaluation import Evaluation, score_held_out
from streamcast.learn.examples import Examples, concat_examples, make_examples
from streamcast.learn.history import Segment

Reason = Literal[
    "non_finite_loss", "training_failed", "timed_out", "not_better", "worse_than_persistence"
]
REASONS: tuple[Reason, ...] = (
    "non_finite_loss",
    "training_failed",
    "timed_out",
    "not_better",
    "worse_than_persistence",
)
Failure = Literal["training_failed", "timed_out"]


@dataclass(frozen=True)
class HeldOutSplit:
    """Runs to train on, and the most recent examples of each sensor, kept apart.

    ``held_out.source`` indexes ``sensors`` and the rows of ``scale`` (each sensor's
    training std per feature, 1 where it is unknown).
    """

    train: list[Segment]
    held_out: Examples
    scale: np.ndarray
    sensors: list[str]


def split_held_out(
    segments: Sequence[Segment],
    num_steps: int,
    horizon: int,
    holdout_fraction: float,
    *,
    seasonal_lag: int = 0,
) -> HeldOutSplit:
    """Hold out the most recent ``holdout_fraction`` of each sensor's examples.

    The held-out readings are cut out of the training runs, so no training example
    (window, truth or horizon) shares a reading with a held-out one; the examples
    that would straddle the cut are lost. A run too short for an example that is newer
    than the cut is dropped, so nothing trained on is newer than the held-out slice.
    With ``seasonal_lag`` the held-out examples take their lags from the readings before
    them, the training part's included: inputs only, as a served window reads them.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction {holdout_fraction} must be in (0, 1)")
    span = num_steps + 1 + horizon
    by_sensor: dict[str, list[Segment]] = {}
    for seg in segments:
        by_sensor.setdefault(seg.sensor, []).append(seg)
    train: list[Segment] = []
    held: list[Examples] = []
    owner: list[int] = []
    scales: list[np.ndarray] = []
    num_features = segments[0].values.shape[1] if segments else 1
    for index, runs in enumerate(by_sensor.values()):
        runs = sorted((r for r in runs if len(r.ts)), key=lambda r: float(r.ts[0]))
        made = [max(0, len(r.ts) - span + 1) for r in runs]
        left = round(sum(made) * holdout_fraction)
        kept: list[Segment] = []
        for run, examples in zip(reversed(runs), reversed(made), strict=True):
            if left == 0:
                kept.append(run)
                continue
            if examples == 0:
                continue  # newer than the cut, and no example of its own
            take = min(left, examples)
            cut = len(run.ts) - (take + span - 1)
            held.append(
                make_examples(
                    run.values,
                    num_steps,
                    horizon,
                    source=len(owner),
                    ts=run.ts,
                    seasonal_lag=seasonal_lag,
                    first=cut,
                )
            )
            owner.append(index)
            left -= take
            if cut > 0:
                kept.append(Segment(run.sensor, run.ts[:cut], run.values[:cut]))
        kept.reverse()
        train.extend(kept)
        scales.append(_scale([r.values for r in kept], num_features))
    if held:
        ex = concat_examples(held)
        held_out = dataclasses.replace(ex, source=np.asarray(owner, np.int32)[ex.source])
    else:
        held_out = Examples(
            window=np.zeros((0, num_steps, num_features), np.float32),
            truth=np.zeros((0, num_features), np.float32),
            target=np.zeros((0, horizon, num_features), np.float32),
            source=np.zeros(0, np.int32),
            lags=np.zeros((0, horizon if seasonal_lag else 0, num_features), np.float32),
        )
    scale = np.stack(scales) if scales else np.ones((0, num_features))
    return HeldOutSplit(train, held_out, scale, list(by_sensor))


def _scale(parts: list[np.ndarray], num_features: int) -> np.ndarray:
    """Per-feature std of a sensor's training readings; 1 where unknown or flat."""
    if sum(len(p) for p in parts) < 2:
        return np.ones(num_features)
    std = np.nanstd(np.concatenate(parts).astype(np.float64), axis=0)
    return np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)


@dataclass(frozen=True)
class Verdict:
    """The gate's decision, with the held-out MAE of each forecaster it compared."""

    promoted: bool
    reason: Reason | None  # None when promoted
    scores: dict[str, float | None]  # challenger / champion / persistence MAE
    examples: int
    min_improvement: float
    detail: str = ""
    evaluation: Evaluation | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (non-finite scores as null), as stored in meta.json."""
        out: dict[str, Any] = {
            "promoted": self.promoted,
            "reason": self.reason,
            "detail": self.detail,
            "examples": self.examples,
            "min_improvement": self.min_improvement,
            "mae": {k: _finite(v) for k, v in self.scores.items()},
        }
        if self.evaluation is not None:
            out["evaluation"] = _json_safe(self.evaluation.as_dict())
        return out


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _json_safe(data: Any) -> Any:
    """``data`` with every non-finite float as None: JSON has no NaN or Infinity."""
    if isinstance(data, dict):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_json_safe(v) for v in data]
    if isinstance(data, float):
        return _finite(data)
    return data


def judge(
    held_out: Examples,
    scale: np.ndarray | None,
    challenger: np.ndarray | None,
    champion: np.ndarray | None = None,
    *,
    min_improvement: float = 0.02,
    failure: Failure | None = None,
    loss: float | None = None,
) -> Verdict:
    """Promote the challenger only if its held-out MAE beats persistence's, and the
    champion's by ``min_improvement`` (relative).

    ``challenger`` / ``champion`` are their forecasts for ``held_out`` (champion None:
    nothing served yet); ``failure`` says the training never produced a model;
    ``loss`` is the challenger's final training loss, if known. A champion whose
    forecasts are not finite counts as infinitely bad.
    """
    if not 0.0 <= min_improvement < 1.0:
        raise ValueError(f"min_improvement {min_improvement} must be in [0, 1)")

    def reject(
        reason: Reason,
        detail: str,
        scores: dict[str, float | None] | None = None,
        evaluation: Evaluation | None = None,
    ) -> Verdict:
        n = len(held_out)
        return Verdict(False, reason, scores or {}, n, min_improvement, detail, evaluation)

    if failure is not None:
        return reject(failure, "training did not produce a model")
    if challenger is None:
        return reject("training_failed", "no forecasts from the retrained model")
    if loss is not None and not math.isfinite(loss):
        return reject("non_finite_loss", f"training loss {loss}")
    if not np.isfinite(challenger).all():
        return reject("non_finite_loss", "the retrained model forecasts non-finite values")
    if len(held_out) == 0:
        return reject("not_better", "no held-out examples to compare on")
    forecasts = {"challenger": challenger}
    if champion is not None:
        forecasts["champion"] = np.where(np.isfinite(champion), champion, np.inf)
    evaluation = score_held_out(forecasts, held_out, scale)
    scores: dict[str, float | None] = {
        name: evaluation.score(name).mae
        for name in ("challenger", "champion", "persistence")
        if name in evaluation.scores
    }
    new, base = evaluation.score("challenger").mae, evaluation.score("persistence").mae
    if not new < base:
        return reject(
            "worse_than_persistence",
            f"held-out MAE {new:.4f} vs persistence {base:.4f}",
            scores,
            evaluation,
        )
    if champion is not None:
        old = evaluation.score("champion").mae
        if not new < old * (1.0 - min_improvement):
            return reject(
                "not_better",
                f"held-out MAE {new:.4f} vs served {old:.4f} (needs {min_improvement:.0%} lower)",
                scores,
                evaluation,
            )
    return Verdict(True, None, scores, len(held_out), min_improvement, "", evaluation)
