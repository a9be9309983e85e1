"""One retraining, in a process of its own: train a challenger, judge it, promote it or not.

The challenger warm-starts from the served model (the champion) and trains on replayed
history with the newest slice of every sensor held out. Both are scored on that slice,
which neither trained on; the gate (``learn.gate``) decides. Only a winner is saved, and
it is saved before the registry's pointer moves, so a process killed at any moment leaves
``current`` naming a complete version. The outcome is written to a small JSON file that
the parent reads when the process has ended: its exit code alone cannot tell "not
better" from "failed".
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamcast.config import ModelSpec, TrainingSettings
from streamcast.learn.cpus import available_cpus
from streamcast.learn.history import Segment
from streamcast.signals import die_with_parent, start_and_watch

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a retraining ended with: ``promoted`` or the gate's reason for rejecting."""

    outcome: str
    version: int | None = None
    champion: int | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    examples: int = 0  # held-out examples the gate judged on
    seconds: float = 0.0
    detail: str = ""
    trained_on: int = 0  # examples handed to the retraining (before the held-out cut)

    @classmethod
    def read(cls, path: Path) -> Outcome | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)


def retrain(
    cfg: ModelSpec,
    settings: TrainingSettings,
    registry_path: str,
    segments: list[Segment],
    champion: int | None,
    *,
    keep: int = 10,
) -> Outcome:
    """Train, judge and (if it wins) save and promote a challenger; never raises for bad
    data or a diverging fit (those are outcomes)."""
    from streamcast.learn import fit
    from streamcast.learn.gate import judge, split_held_out
    from streamcast.learn.registry import ModelRegistry

    started = time.monotonic()
    fit.limit_threads(settings.threads)
    registry = ModelRegistry(registry_path, keep=keep)
    split = split_held_out(
        segments,
        cfg.num_steps,
        cfg.horizon,
        settings.holdout_fraction,
        seasonal_lag=cfg.seasonal_lag,
    )
    incumbent = None
    if champion is not None:
        loaded = registry.load(champion, expect=cfg)
        # A champion built for another season would be scored on lags it was not made
        # for; serving refuses it under this configuration anyway (stream.inference).
        if loaded.cfg.seasonal_lag in (0, cfg.seasonal_lag):
            incumbent = loaded.model
    series = [s.values for s in split.train]
    stamps = [s.ts for s in split.train]
    try:
        result = fit.train(
            cfg, series, settings, progress=False, timestamps=stamps, initial=incumbent
        )
    except (ValueError, RuntimeError) as exc:  # too little data, or the fit itself failed
        verdict = judge(split.held_out, split.scale, None, failure="training_failed")
        return Outcome(
            verdict.reason or "training_failed",
            champion=champion,
            examples=len(split.held_out),
            seconds=time.monotonic() - started,
            detail=f"{type(exc).__name__}: {exc}",
        )
    losses = result.history.get("loss") or [math.nan]
    challenger = fit.predict(result.model, split.held_out)
    incumbent_forecast = fit.predict(incumbent, split.held_out) if incumbent is not None else None
    verdict = judge(
        split.held_out,
        split.scale,
        challenger,
        incumbent_forecast,
        min_improvement=settings.min_improvement,
        loss=float(losses[-1]),
    )
    outcome = Outcome(
        "promoted" if verdict.promoted else str(verdict.reason),
        champion=champion,
        scores=verdict.scores,
        examples=verdict.examples,
        detail=verdict.detail,
    )
    if verdict.promoted:
        version = registry.save(
            result.model,
            cfg,
            metrics={**result.metrics.as_dict(), "gate": verdict.as_dict()},
            data_range=result.data_range.as_dict(),
            promote=False,
        )
        registry.promote(version, expect=cfg)  # the pointer moves only once it is whole
        outcome.version = version
    outcome.seconds = time.monotonic() - started
    return outcome


def _run(
    cfg_json: str,
    settings_json: str,
    registry_path: str,
    segments: list[tuple[str, np.ndarray, np.ndarray]],
    champion: int | None,
    keep: int,
    result_path: str,
    log_level: int,
    parent_pid: int,
) -> None:
    die_with_parent(parent_pid, signal.SIGKILL)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    outcome = retrain(
        ModelSpec.model_validate_json(cfg_json),
        TrainingSettings.model_validate_json(settings_json),
        registry_path,
        [Segment(*s) for s in segments],
        champion,
        keep=keep,
    )
    outcome.write(Path(result_path))


class RetrainingJob:
    """A retraining in a spawned process, with no more threads than CPUs it may use."""

    def __init__(
        self,
        cfg: ModelSpec,
        settings: TrainingSettings,
        registry_path: str | os.PathLike[str],
        segments: list[Segment],
        champion: int | None,
        result_path: Path,
        *,
        keep: int = 10,
    ) -> None:
        threads = max(1, min(settings.threads, available_cpus()))
        self.settings = settings.model_copy(update={"threads": threads})
        self.result_path = result_path
        result_path.unlink(missing_ok=True)
        self.examples = sum(max(0, len(s.ts) - cfg.num_steps - cfg.horizon) for s in segments)
        self.started = time.monotonic()
        args: tuple[Any, ...] = (
            cfg.model_dump_json(),
            self.settings.model_dump_json(),
            str(registry_path),
            [(s.sensor, s.ts, s.values) for s in segments],
            champion,
            keep,
            str(result_path),
            logging.getLogger().getEffectiveLevel(),
            os.getpid(),
        )
        ctx = multiprocessing.get_context("spawn")
        self.process = ctx.Process(target=_run, args=args, name="streamcast-retrain", daemon=True)
        self._starter = threading.Thread()  # replaced by start()
        self._started = threading.Event()

    def start(self) -> RetrainingJob:
        """Start the process from a helper thread: ``Process.start`` waits until the child
        has read its arguments, a pipe's worth of replayed readings at a time, and the
        loop must not wait with it. The thread then stays until the child ends (see
        ``start_and_watch``)."""
        self._starter, self._started = start_and_watch(self.process, "streamcast-retrain")
        return self

    def done(self) -> bool:
        return not self._starter.is_alive() and not self.process.is_alive()

    def outcome(self) -> Outcome:
        """Once done: the outcome it wrote, or ``training_failed`` if it wrote none."""
        self.process.join(timeout=1)
        found = Outcome.read(self.result_path)
        if found is None:
            found = Outcome(
                "training_failed",
                detail=f"trainer process exited with code {self.process.exitcode}",
            )
        found.seconds = time.monotonic() - self.started
        found.trained_on = self.examples
        return found

    def stop(self) -> None:
        if self._starter.is_alive():
            self._started.wait(timeout=30)  # never cut the arguments' pipe mid-write
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
