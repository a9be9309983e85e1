"""When to retrain, who retrains, and what came of it.

The loop hands every accepted reading to ``observe`` and calls ``maintain`` once per
turn; the training itself runs in a process of its own (``learn.retrain``), so the loop
keeps polling, forecasting and committing meanwhile. A retraining starts every
``training.interval_s``, or sooner once ``training.every_examples`` new examples have
arrived, whichever comes first, from a bounded replay buffer of recent readings.

Replicas sharing a registry elect one trainer through the registry's lease: only the
holder buffers readings and trains; the others serve what it promotes, and one of them
takes over once a dead holder's lease expires. ``training.online: false`` leaves the
training to ``streamcast train --follow``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from streamcast.config import Settings
from streamcast.learn.examples import split_sizes
from streamcast.learn.history import Readings
from streamcast.learn.lease import RegistryLease
from streamcast.learn.replay import ReplayBuffer
from streamcast.learn.retrain import Outcome, RetrainingJob
from streamcast.ops.metrics import Metrics

logger = logging.getLogger(__name__)

LEASE_TTL_S = 120.0
_LEASE_CHECK_S = 10.0
_GAUGES_S = 5.0  # how often a replica that is not the trainer asks for the lease
_COUNT_S = 1.0  # how often the new examples are counted (the count flushes the replay buffer)


def holder_name() -> str:
    """Who holds the lease: host, process and a random part (pids repeat in containers)."""
    return f"{socket.gethostname() or 'host'}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Retraining:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        champion: Callable[[], int | None],
        *,
        first_model: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        #: Train version 1 too (the trainer on its own); a daemon bootstraps it instead.
        self.first_model = first_model
        self.training = settings.training
        self.metrics = metrics
        self.champion = champion
        self.clock = clock
        spec = settings.model
        self.buffer = ReplayBuffer(
            spec.num_features,
            spec.num_steps,
            spec.horizon,
            max_bytes=self.training.replay_bytes,
            gap_factor=settings.window.gap_factor,
            seasonal_lag=spec.seasonal_lag,
        )
        self.lease = RegistryLease(settings.registry.path, holder_name(), ttl_s=LEASE_TTL_S)
        self.job: RetrainingJob | None = None
        self.last: Outcome | None = None
        self._next_at = clock() + (0.0 if first_model else self.training.interval_s)
        self._lease_at = 0.0
        self._gauges_at = 0.0
        self._count_at = 0.0
        self._workdir: Path | None = None  # where a retraining writes its outcome

    @property
    def trainer(self) -> bool:
        """Whether this process is the registry's trainer now."""
        return self.training.online and self.lease.held

    def claim(self) -> bool:
        """Take (or keep) the registry's lease now: whether this process may train,
        version 1 included. False when training.online is false."""
        if not self.training.online:
            return False
        self._keep_lease(self.clock())
        return self.lease.held

    def observe(self, readings: Readings) -> None:
        if self.trainer and len(readings):
            self.buffer.add(readings)

    def maintain(self) -> None:
        """Keep the lease, finish a retraining that ended, or start one that is due."""
        if not self.training.online:
            return
        now = self.clock()
        if now >= self._lease_at:
            self._keep_lease(now)
        if now >= self._gauges_at:  # examples() walks every sensor: not on every turn
            self._gauges_at = now + _GAUGES_S
            self.metrics.replay_examples.set(self.buffer.examples())
            self.metrics.replay_bytes.set(self.buffer.nbytes)
        if self.job is not None:
            self._watch(now)
        elif self.trainer and self._due(now):
            self._start(now)

    def _keep_lease(self, now: float) -> None:
        held = self.lease.held
        try:
            ok = self.lease.renew() if held else self.lease.acquire()
        except OSError as exc:  # the registry's filesystem is away: try again later
            logger.warning("registry lease not renewed: %s", exc)
            ok = False
        if ok and not held:
            logger.info("this process is the registry's trainer holder=%s", self.lease.name)
        elif held and not ok:
            logger.warning("the registry's trainer lease was lost; another process trains")
            if self.job is not None:
                self.job.stop()
                self.job = None
        self._lease_at = now + (LEASE_TTL_S / 4 if self.lease.held else _LEASE_CHECK_S)

    def _due(self, now: float) -> bool:
        champion = self.champion()
        if champion is None and not self.first_model:
            return False  # version 1 comes from the daemon's bootstrap
        fresh = False
        if champion is not None and now >= self._count_at:
            self._count_at = now + _COUNT_S
            fresh = self.buffer.new_examples >= self.training.every_examples
        if now < self._next_at and not fresh:
            return False
        if not self._enough():
            self._next_at = now + (5.0 if champion is None else min(self.training.interval_s, 60.0))
            return False
        return True

    def _enough(self) -> bool:
        """Whether the buffer holds enough for a fit once the held-out slice is cut off
        (``learn.gate.split_held_out``: the newest examples of each run and the readings
        they share with older ones): a job that could only fail for want of data is not
        started."""
        t, spec = self.training, self.settings.model
        span = spec.num_steps + 1 + spec.horizon
        kept = []
        for n in self.buffer.lengths():
            made = max(0, n - span + 1)
            held = round(made * t.holdout_fraction)
            kept.append(n - held - span + 1 if held else n)
        train, val = split_sizes(kept, spec.num_steps, spec.horizon, t.validation_fraction)
        return train >= t.bootstrap_windows and val > 0

    def _start(self, now: float) -> None:
        champion = self.champion()
        segments = self.buffer.drain()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="streamcast-retrain-"))
        self.job = RetrainingJob(
            self.settings.model,
            self.training,
            self.settings.registry.path,
            segments,
            champion,
            self._workdir / "outcome.json",
            keep=self.settings.registry.keep,
        ).start()
        # Version 1 is worth another try soon; later ones wait the interval.
        wait = self.training.interval_s if champion is not None else 300.0
        self._next_at = now + min(self.training.interval_s, wait)
        logger.info("retraining started champion=%s examples=%d", champion, self.job.examples)

    def _watch(self, now: float) -> None:
        job = self.job
        assert job is not None
        if now - job.started > self.training.timeout_s:
            job.stop()
            self._finish(
                Outcome(
                    "timed_out",
                    champion=self.champion(),
                    seconds=now - job.started,
                    detail=f"still training after training.timeout_s={self.training.timeout_s:g}s",
                )
            )
        elif job.done():
            self._finish(job.outcome())

    def _finish(self, outcome: Outcome) -> None:
        self.job = None
        self.last = outcome
        self.metrics.retrains.labels(outcome.outcome).inc()
        self.metrics.retrain_seconds.observe(outcome.seconds)
        scores = " ".join(f"{k}={v:.4g}" for k, v in outcome.scores.items() if v is not None)
        if outcome.outcome == "promoted":
            logger.info(
                "retraining promoted version=%s over=%s %s seconds=%.0f",
                outcome.version,
                outcome.champion,
                scores,
                outcome.seconds,
            )
        else:
            logger.warning(
                "retraining rejected reason=%s %s seconds=%.0f %s",
                outcome.outcome,
                scores,
                outcome.seconds,
                outcome.detail,
            )

    def stop(self) -> None:
        if self.job is not None:
            self.job.stop()
            self.job = None
        if self.lease.held:
            self.lease.release()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
