"""The first model: with an empty registry, gather history from the stream and train
version 1 in a spawned process, or wait for the trainer's (``training.online: false``,
or another replica holds the registry's lease and trains it).

Until version 1 exists nothing can be forecast, so the daemon's readiness and its
systemd status say what it waits for and how far it got (examples gathered of those
needed, from how many sensors). Training pauses the input, so the gathered history is
what version 1 learns from and the consumer keeps polling (and its group membership)
meanwhile; the input resumes once version 1 is served. A daemon that only serves leaves
version 1 to ``streamcast train --follow`` and holds its input paused until that
version is served, so no reading goes by unforecast and nothing is committed meanwhile.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TypedDict

from streamcast.config import Settings
from streamcast.learn.cpus import available_cpus
from streamcast.learn.examples import split_sizes
from streamcast.learn.history import History
from streamcast.learn.job import TrainingJob
from streamcast.learn.registry import ModelRegistry
from streamcast.stream.messages import Readings

logger = logging.getLogger(__name__)

GATHERING = "gathering history for the first model"
TRAINING = "training the first model"
LOADING = "loading the first model"
WAITING = "a first model version from the trainer"
# Progress changes with almost every poll: said at most this often (sd_notify, /readyz).
PROGRESS_EVERY_S = 1.0

#: (what readiness waits for, its progress) or (None, None) once it waits no more.
Waiting = Callable[[str | None, Mapping[str, int] | None], None]


class Reports(TypedDict):
    """What the first model asks of the daemon and tells it (the keyword arguments of
    ``Bootstrap`` and ``AwaitingTrainer``)."""

    pause_input: Callable[[], None]
    resume_input: Callable[[], None]
    status: Callable[[str, str], None]
    waiting: Waiting


@dataclass(frozen=True)
class Progress:
    """How far gathering got: training examples gathered, needed, and sensors heard."""

    examples: int
    needed: int
    sensors: int

    def line(self) -> str:
        return f"{GATHERING}: {self.examples} of {self.needed} examples from {self.sensors} sensors"

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Bootstrap:
    """Gathers the first model's history, then trains version 1 in its own process.

    ``status(phase, line)`` and ``waiting(reason, progress)`` report what it waits for;
    ``pause_input`` / ``resume_input`` hold the input from training until ``finish``.
    """

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        *,
        pause_input: Callable[[], None],
        resume_input: Callable[[], None],
        status: Callable[[str, str], None],
        waiting: Waiting,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.spec = settings.model
        self.registry = registry
        span = self.spec.span
        training = settings.training
        #: Readings kept per sensor: enough for a chronological validation part of its own.
        self.per_sensor = math.ceil(2 * span / training.validation_fraction)
        self.history = History(
            self.spec.num_features,
            max_per_sensor=self.per_sensor,
            max_bytes=training.history_bytes,
            span=span,
            gap_factor=settings.window.gap_factor,
        )
        self.job: TrainingJob | None = None
        self.trained: int | None = None  # version 1, once it is in the registry
        self._pause_input = pause_input
        self._resume_input = resume_input
        self._status = status
        self._waiting = waiting
        self._clock = clock
        self._shown: Progress | None = None
        self._shown_at = -math.inf

    def begin(self) -> None:
        logger.info(
            "registry %s is empty: gathering %d training examples from the stream",
            self.registry.path,
            self.settings.training.bootstrap_windows,
        )
        self._show(self.progress(), force=True)

    def observe(self, readings: Readings) -> None:
        """Accepted readings, kept until version 1 trains on them."""
        if len(readings):
            self.history.add(readings)

    def progress(self) -> Progress:
        train, _ = self._split()
        return Progress(train, self.settings.training.bootstrap_windows, len(self.history))

    def advance(self) -> int | None:
        """Version 1 once it is in the registry; None while gathering or training.

        Raises RuntimeError when training failed: there is nothing to serve.
        """
        if self.trained is not None:
            return self.trained
        if self.job is None:
            self._gather()
            return None
        if not self.job.done():
            return None
        job, self.job = self.job, None
        first = self.registry.current() or self.registry.latest()
        if not job.ok or first is None:
            raise RuntimeError(
                f"training the first model failed (exit code {job.process.exitcode})"
            )
        self.trained = first
        self._status("loading", f"{LOADING} (version {first})")
        self._waiting(LOADING, None)
        return first

    def finish(self) -> None:
        """Version 1 is served: the input flows again and the history is let go."""
        self.history.clear()
        self._waiting(None, None)
        self._resume_input()

    def stop(self) -> None:
        if self.job is not None:
            self.job.stop()

    def _split(self) -> tuple[int, int]:
        """(training, validation) examples the history holds, as training would split it."""
        return split_sizes(
            self.history.lengths(),
            self.spec.num_steps,
            self.spec.horizon,
            self.settings.training.validation_fraction,
        )

    def _gather(self) -> None:
        """Start training once the history holds enough examples; else say how far it got."""
        training = self.settings.training
        train, val = self._split()
        if train < training.bootstrap_windows or val == 0:
            self._show(Progress(train, training.bootstrap_windows, len(self.history)))
            return
        logger.info("training model version 1 examples=%d", train)
        self._status("training", f"{TRAINING} on {train} examples")
        self._waiting(TRAINING, {"examples": train})
        self._pause_input()
        # Nothing is forecast until version 1 exists, so its training may use every
        # core; later retraining keeps to training.threads and leaves inference a core.
        first = training.model_copy(update={"threads": max(training.threads, available_cpus())})
        self.job = TrainingJob(
            self.spec,
            first,
            self.registry.path,
            self.history.series(),
            self.history.timestamps(),
        ).start()

    def _show(self, progress: Progress, *, force: bool = False) -> None:
        now = self._clock()
        if not force and (progress == self._shown or now - self._shown_at < PROGRESS_EVERY_S):
            return
        self._shown, self._shown_at = progress, now
        self._status("bootstrap", progress.line())
        self._waiting(GATHERING, progress.as_dict())


class AwaitingTrainer:
    """A daemon that only serves waits for the trainer's first version, input paused.

    ``Serving`` checks the registry every few seconds as it always does and loads what
    appears there off the loop; this says what readiness waits for (``waiting``,
    ``loading``) and holds the input from ``begin`` until ``finish``.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        pause_input: Callable[[], None],
        resume_input: Callable[[], None],
        status: Callable[[str, str], None],
        waiting: Waiting,
    ) -> None:
        self.registry = registry
        self._pause_input = pause_input
        self._resume_input = resume_input
        self._status = status
        self._waiting = waiting

    def begin(self, unusable: list[str]) -> None:
        """Pause the input and say so; ``unusable``: why the versions there are skipped."""
        logger.info(
            "registry %s holds no usable model version%s: waiting for the trainer's first "
            "(training.online is false, or another replica holds the registry's lease), "
            "input paused",
            self.registry.path,
            f" ({'; '.join(unusable)})" if unusable else "",
        )
        self._pause_input()
        self.waiting()

    def waiting(self) -> None:
        """Say what readiness waits for. Said again at every registry check: start-up's
        READY line carries a status of its own, and a failed load said ``loading``."""
        self._status("waiting", WAITING)
        self._waiting(WAITING, None)

    def loading(self, version: int) -> None:
        self._status("loading", f"{LOADING} (version {version})")
        self._waiting(LOADING, None)

    def checked(self, loading: int | None) -> None:
        """After each registry check: a version loading, or still none."""
        if loading is None:
            self.waiting()
        else:
            self.loading(loading)

    def finish(self) -> None:
        """The first version is served: the input flows again from where it stopped."""
        logger.info("no longer waiting for the trainer's first version: input resumed")
        self._waiting(None, None)
        self._resume_input()
