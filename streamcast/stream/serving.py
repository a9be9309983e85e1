"""The model lifecycle inside the daemon: load, warm, hot swap, and the first model.

With a model in the registry the daemon serves the version its ``current`` pointer
names and checks the pointer every few seconds; when it names another version (a
promotion, or a rollback to an older one) that version is loaded, compiled and warmed,
then swapped in between batches. A bad version is logged and skipped until its files
change (a hand copy that finished), and one whose files are still missing is waited for
quietly (``INCOMPLETE_GRACE_S``). If the current version is unusable at start-up the
daemon serves the best one that is (``serving_order``) and exits only when none is. A
registry without a pointer is served as before pointers existed: its newest usable
version, swapping to any newer one. With an empty registry it gathers history from the
stream and trains version 1 in a spawned process while the loop keeps polling.

TensorFlow is imported here only when a model is loaded, through
``streamcast.model``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamcast.config import Settings
from streamcast.errors import ModelMismatchError, RegistryError, StartupError
from streamcast.learn.cpus import available_cpus
from streamcast.learn.examples import split_sizes
from streamcast.learn.history import History
from streamcast.learn.job import TrainingJob
from streamcast.learn.registry import (
    Fingerprint,
    IncompleteVersionError,
    ModelRegistry,
    Pointer,
    serving_order,
)
from streamcast.stream.batcher import Ready
from streamcast.stream.messages import DeadLetter, Readings, RebuiltRecord, encode_reading
from streamcast.stream.windows import WindowStore

if TYPE_CHECKING:
    from streamcast.model.predictor import Predictor

logger = logging.getLogger(__name__)

REGISTRY_CHECK_S = 5.0
# A version directory without its meta.json / model.keras (a cp -r or rsync in progress)
# is waited for this long without progress before it is rejected as an error.
INCOMPLETE_GRACE_S = 120.0


@dataclass
class Served:
    """The model currently answering: its version and compiled predictor."""

    version: int
    predictor: Predictor


class Serving:
    """Which model version answers, and how the next one gets there.

    ``on_loaded(version, seconds, device)`` reports every model put into service;
    ``pause_input`` / ``resume_input`` hold the input while version 1 trains.
    """

    def __init__(
        self,
        settings: Settings,
        store: WindowStore,
        *,
        on_loaded: Callable[[int, float], None],
        pause_input: Callable[[], None],
        resume_input: Callable[[], None],
        status: Callable[[str, str], None],
    ) -> None:
        self.settings = settings
        self.spec = settings.model
        self.store = store
        self.registry = ModelRegistry(settings.registry.path, keep=settings.registry.keep)
        self.served: Served | None = None
        self.history: History | None = None
        self.training: TrainingJob | None = None
        self._on_loaded = on_loaded
        self._pause_input = pause_input
        self._resume_input = resume_input
        self._status = status
        self._next_check = 0.0
        self._rejected_version = 0  # the newest version rejected so far (0: none)
        # version -> its files' fingerprint when rejected: tried again once they change
        self._rejected: dict[int, Fingerprint] = {}
        # version -> (fingerprint, since): incomplete, waited for while its files change
        self._incomplete: dict[int, tuple[Fingerprint, float]] = {}
        self._pointer_error = ""  # the last unreadable-pointer error logged (once each)
        #: Monotonic seconds; tests replace it to step through the registry checks.
        self.clock: Callable[[], float] = time.monotonic

    @property
    def gathering(self) -> bool:
        """True while history for the first model is being gathered."""
        return self.history is not None

    @property
    def version(self) -> int | None:
        return self.served.version if self.served is not None else None

    # -- start-up ------------------------------------------------------------------------

    def start(self) -> None:
        """Serve the current version (or the best usable one), or start gathering history
        for the first one. Raises StartupError when versions exist but none is usable."""
        versions = self.registry.versions()
        if versions:
            self._serve_first_usable(versions)
            return
        s = self.settings
        logger.info(
            "registry %s is empty: gathering %d training examples from the stream",
            s.registry.path,
            s.training.bootstrap_windows,
        )
        span = self.spec.num_steps + 1 + self.spec.horizon
        self.history = History(
            self.spec.num_features,
            # enough for a chronological validation part of its own per sensor
            max_per_sensor=math.ceil(2 * span / s.training.validation_fraction),
            max_bytes=s.training.history_bytes,
            span=span,
            gap_factor=s.window.gap_factor,
        )
        self._status("bootstrap", "gathering history to train the first model")

    def _serve_first_usable(self, versions: list[int]) -> None:
        """Try the versions in ``serving_order``; the first that loads is served.

        A version that is incomplete or fails the registry's checks is logged and the next
        one tried (and remembered, so the registry check does not retry it until its files
        change); a version that does not fit the configuration stops start-up, as does
        any other failure: a configuration mistake must not be hidden by an older model.
        """
        try:
            pointer = self.registry.pointer()
        except RegistryError as exc:
            logger.error("%s; serving the newest usable version instead", exc)
            pointer = None
        failures: list[str] = []
        now = self.clock()
        for version in serving_order(pointer, versions):
            fingerprint = self.registry.fingerprint(version)
            try:
                self.load(version)
            except ModelMismatchError as exc:
                raise StartupError(str(exc)) from exc
            except RegistryError as exc:
                level = logging.ERROR
                if isinstance(exc, IncompleteVersionError):
                    self._incomplete[version] = (fingerprint, now)
                    level = logging.WARNING  # a copy in progress, most likely
                else:
                    self._rejected[version] = fingerprint
                    self._rejected_version = max(self._rejected_version, version)
                failures.append(str(exc))
                logger.log(
                    level,
                    "model version %d skipped at start-up: %s",
                    version,
                    exc,
                    extra={"ctx": {"model_version": version}},
                )
                continue
            if pointer is not None and version != pointer.current:
                logger.warning(
                    "serving model version %d instead of the current version %d, which is "
                    "unusable (%s); it is tried again when its files change",
                    version,
                    pointer.current,
                    failures[0],
                    extra={"ctx": {"model_version": version}},
                )
            return
        raise StartupError(
            f"no usable model version in {self.registry.path}: " + "; ".join(failures)
        )

    # -- the loop's calls ----------------------------------------------------------------

    def observe(self, readings: Readings) -> None:
        """Accepted readings, kept while the first model's history is gathered."""
        if self.history is not None and len(readings):
            self.history.add(readings)

    def maintain(self) -> None:
        """Advance the first model's training, or swap in a newer version."""
        if self.served is None:
            self._bootstrap()
            return
        now = self.clock()
        if now < self._next_check:
            return
        self._next_check = now + REGISTRY_CHECK_S
        self._check_registry(now)

    def forecast(self, batch: Ready) -> tuple[Ready, np.ndarray, list[DeadLetter]]:
        """(windows forecast, their forecasts, dead letters of windows that could not be).

        A window the model cannot forecast on its own (its inference fails, or its
        forecast is not finite) is dead-lettered; the rest of the batch goes on. When
        no window of a batch of several can be forecast, the failure is not tied to a
        record (a broken model, an exhausted device) and is raised.
        """
        rows, forecast, failed = self._bisect(batch, np.arange(len(batch)))
        if failed and not len(rows) and len(batch) > 1:
            raise failed[0][1]
        letters = [
            self._unforecastable(batch, i, "inference_failed", f"{type(e).__name__}: {e}")
            for i, e in failed
        ]
        finite = np.isfinite(forecast).all(axis=(1, 2))
        for i in rows[~finite].tolist():
            letters.append(self._unforecastable(batch, i, "non_finite_forecast", "not finite"))
        rows, forecast = rows[finite], forecast[finite]
        return batch.select(rows), forecast, letters

    def _bisect(
        self, batch: Ready, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, Exception]]]:
        """Forecast ``rows`` of ``batch``; a failing part is halved until the windows
        that fail alone are found: (rows forecast, forecasts, [(row, error)])."""
        try:
            return rows, self.infer(batch.select(rows) if len(rows) < len(batch) else batch), []
        except Exception as exc:
            if len(rows) == 1:
                none = np.empty((0, self.spec.horizon, self.spec.num_features), np.float32)
                return rows[:0], none, [(int(rows[0]), exc)]
            half = len(rows) // 2
            left, right = self._bisect(batch, rows[:half]), self._bisect(batch, rows[half:])
            return (
                np.concatenate([left[0], right[0]]),
                np.concatenate([left[1], right[1]]),
                left[2] + right[2],
            )

    def _unforecastable(self, batch: Ready, i: int, reason: str, detail: str) -> DeadLetter:
        """The dead letter of a window's last reading, re-encoded (its bytes are gone by now)."""
        sensor = batch.sensors[i]
        record = RebuiltRecord(
            topic=self.settings.kafka.input_topic,
            partition=int(batch.partitions[i]),
            offset=int(batch.offsets[i]),
            timestamp=int(batch.log_ts[i] * 1000),
            key=sensor.encode(),
            value=encode_reading(sensor, float(batch.ts[i]), batch.windows[i, -1]),
        )
        return DeadLetter.of(record, reason, detail)

    def infer(self, batch: Ready) -> np.ndarray:
        """Seed states, run the batch through the serving model: (n, horizon, features)."""
        assert self.served is not None
        if self.spec.seeding == "carry":
            return self._infer_carried(batch)
        return self.served.predictor.predict(batch.windows, batch.truths).forecast

    def stop(self) -> None:
        if self.training is not None:
            self.training.stop()

    # -- carry mode ----------------------------------------------------------------------

    def _infer_carried(self, batch: Ready) -> np.ndarray:
        """Carry mode: each window starts from its sensor's states after the previous one.

        A batch may hold several windows of one sensor (a burst, a catch-up); the
        k-th of them runs in round k, after round k-1 stored the states it needs.
        """
        assert self.served is not None
        order = np.argsort(batch.slots, kind="stable")
        sorted_slots = batch.slots[order]
        starts = np.r_[True, sorted_slots[1:] != sorted_slots[:-1]]
        first_of_group = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order)) - first_of_group
        forecast = np.empty((len(batch), self.spec.horizon, self.spec.num_features), np.float32)
        for r in range(int(rank.max()) + 1 if len(rank) else 0):
            rows = np.flatnonzero(rank == r)
            slots, generations = batch.slots[rows], batch.generations[rows]
            carry, has_carry = self.store.carried.get(slots, generations)
            prediction = self.served.predictor.predict(
                batch.windows[rows], batch.truths[rows], carry, has_carry
            )
            self.store.carried.put(slots, generations, prediction.states)
            forecast[rows] = prediction.forecast
        return forecast

    # -- loading and swapping ------------------------------------------------------------

    def load(self, version: int) -> None:
        """Load, check, compile and warm a version, then put it into service.

        Raises RegistryError / ModelMismatchError; the caller decides whether that
        stops start-up or only skips a bad new version.
        """
        from streamcast.model.predictor import Predictor

        started = time.perf_counter()
        loaded = self.registry.load(version, expect=self.spec)
        stored = loaded.cfg
        if stored.seeding != self.spec.seeding or (
            self.spec.seeding == "carry" and stored.units != self.spec.units
        ):
            raise ModelMismatchError(
                f"model version {loaded.version} was built for seeding={stored.seeding} "
                f"units={list(stored.units)} but the configuration asks for "
                f"seeding={self.spec.seeding} units={list(self.spec.units)}"
            )
        inference = self.settings.inference
        # The model's own shape (its units may differ from the config's, which only
        # decide the shape of models trained from now on).
        predictor = Predictor(
            loaded.model, stored, max_batch=inference.max_batch, jit_compile=inference.jit_compile
        )
        predictor.warmup()
        if self.served is not None and self.spec.seeding == "carry":
            self.store.carried.clear()  # a new model's states mean something else
        self.served = Served(loaded.version, predictor)
        seconds = time.perf_counter() - started
        self._on_loaded(loaded.version, seconds)
        logger.info(
            "serving model version=%d load_seconds=%.2f device=%s",
            loaded.version,
            seconds,
            predictor.device,
        )

    def _check_registry(self, now: float) -> None:
        """Swap to the version the pointer names, if it is another one and can be tried now.

        Without a pointer: the newest version above the served one that can be tried now.
        Skipped: versions rejected whose files have not changed since (a fingerprint of
        names, sizes and mtimes), and versions still missing files within the grace
        period (without a pointer, in favour of the next older one). At most one model
        load per check. An unreadable pointer is logged once and keeps the served model.
        """
        assert self.served is not None
        served = self.served.version
        try:
            pointer = self.registry.pointer()
        except RegistryError as exc:
            if str(exc) != self._pointer_error:
                self._pointer_error = str(exc)
                logger.error("%s; still serving version %d", exc, served)
            return
        self._pointer_error = ""
        versions = self.registry.versions()
        for version in self._wanted(pointer, versions, served):
            fingerprint = self.registry.fingerprint(version)
            if self._rejected.get(version) == fingerprint:
                continue
            if version in self._rejected:
                logger.info("model version %d changed since it was rejected: trying again", version)
                del self._rejected[version]
            if self._swap_to(version, fingerprint, now):
                break
        # Forget versions that are gone (retention), except the one the pointer names.
        keep = set(versions) | ({pointer.current} if pointer is not None else set())
        for table in (self._rejected, self._incomplete):
            for version in [v for v in table if v not in keep]:
                del table[version]

    @staticmethod
    def _wanted(pointer: Pointer | None, versions: list[int], served: int) -> list[int]:
        """The versions to try swapping to, first choice first."""
        if pointer is not None:
            return [pointer.current] if pointer.current != served else []
        return [v for v in reversed(versions) if v > served]

    def _swap_to(
        self, version: int, fingerprint: Fingerprint | None = None, now: float | None = None
    ) -> bool:
        """Hot swap; a bad new version is logged and skipped, the current one keeps serving.

        False only while the version waits for its missing files (within the grace
        period, which restarts whenever its files change); True once it was tried.
        """
        if fingerprint is None:
            fingerprint = self.registry.fingerprint(version)
        now = self.clock() if now is None else now
        try:
            self.load(version)
        except IncompleteVersionError as exc:
            seen, since = self._incomplete.get(version, (None, now))
            if seen != fingerprint:
                since = now  # files arrived or changed: the copy is making progress
            if now - since < INCOMPLETE_GRACE_S:
                if version not in self._incomplete:
                    logger.info(
                        "model version %d is not complete yet, waiting up to %.0fs for its "
                        "files: %s",
                        version,
                        INCOMPLETE_GRACE_S,
                        exc,
                        extra={"ctx": {"model_version": version}},
                    )
                self._incomplete[version] = (fingerprint, since)
                return False
            self._incomplete.pop(version, None)
            self._reject(version, fingerprint, exc)
        except (RegistryError, ModelMismatchError) as exc:
            self._incomplete.pop(version, None)
            self._reject(version, fingerprint, exc)
        return True

    def _reject(self, version: int, fingerprint: Fingerprint, exc: Exception) -> None:
        """Log a bad version once; it is tried again when its files change."""
        self._rejected[version] = fingerprint
        self._rejected_version = max(self._rejected_version, version)
        logger.error(
            "model version %d rejected, still serving version %s (tried again if its files "
            "change): %s",
            version,
            self.version,
            exc,
            extra={"ctx": {"model_version": version}},
        )

    # -- the first model -----------------------------------------------------------------

    def _bootstrap(self) -> None:
        if self.training is None:
            self._maybe_start_training()
            return
        if not self.training.done():
            return
        job, self.training = self.training, None
        first = self.registry.current() or self.registry.latest()
        if not job.ok or first is None:
            raise RuntimeError(
                f"training the first model failed (exit code {job.process.exitcode})"
            )
        self.history = None
        self.load(first)  # a failure here is fatal: nothing to serve
        self._resume_input()

    def _maybe_start_training(self) -> None:
        assert self.history is not None
        training = self.settings.training
        train, val = split_sizes(
            self.history.lengths(),
            self.spec.num_steps,
            self.spec.horizon,
            training.validation_fraction,
        )
        if train < training.bootstrap_windows or val == 0:
            return
        logger.info("training model version 1 examples=%d", train)
        self._status("training", f"training the first model on {train} examples")
        self._pause_input()
        # Nothing is forecast until version 1 exists, so its training may use every
        # core; later retraining keeps to training.threads and leaves inference a core.
        first = training.model_copy(update={"threads": max(training.threads, available_cpus())})
        self.training = TrainingJob(
            self.spec,
            first,
            self.settings.registry.path,
            self.history.series(),
            self.history.timestamps(),
        ).start()
