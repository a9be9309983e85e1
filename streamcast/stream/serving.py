"""Which model answers, and how the next one gets there: start-up, hot swap, rollback.

The daemon serves the version the registry's ``current`` pointer names (without a pointer:
the newest usable one) and checks the pointer every few seconds. Another version named
there (a promotion, a rollback) is loaded, compiled and warmed on a worker thread while
the loop keeps polling and heartbeating, and swapped in between batches: a batch is
forecast by one version, which it names. One load at a time; a bad version is skipped
until its files change, one still being copied is waited for (``stream.candidates``).
At start-up an unusable current version gives way to the best usable one
(``serving_order``). An empty registry trains version 1 first (``stream.bootstrap``);
a daemon that only serves (``training.online: false``) waits instead, input paused,
until a usable version appears there. Forecasting a batch is ``stream.inference``.

A model is used by one thread at a time: the worker loads and warms it, the loop uses
it once swapped in. TensorFlow is imported only when a model loads (``streamcast.model``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from streamcast.config import Settings
from streamcast.errors import ModelMismatchError, RegistryError, StartupError
from streamcast.learn.registry import (
    Fingerprint,
    IncompleteVersionError,
    ModelRegistry,
    serving_order,
)
from streamcast.ops.heap import settle_heap
from streamcast.stream.batcher import Ready
from streamcast.stream.bootstrap import AwaitingTrainer, Bootstrap, Reports, Waiting
from streamcast.stream.candidates import Candidates
from streamcast.stream.inference import BatchInference, Forecasts, Served
from streamcast.stream.messages import Readings
from streamcast.stream.windows import WindowStore

logger = logging.getLogger(__name__)

REGISTRY_CHECK_S = 5.0


@dataclass
class _Load:
    """A version loading on its worker thread; the loop reads only ``future``."""

    version: int
    fingerprint: Fingerprint
    future: Future[Served]
    thread: threading.Thread


class Serving:
    """Which model version answers, and how the next one gets there.

    ``on_loaded(version, seconds)`` reports every model put into service,
    ``on_swapped(old, new)`` every hot swap while running (promotions and rollbacks);
    ``pause_input`` / ``resume_input``, ``status`` and ``waiting`` serve version 1's
    bootstrap, or the wait for the trainer's (``stream.bootstrap``).
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
        on_swapped: Callable[[int, int], None] | None = None,
        waiting: Waiting | None = None,
        claim: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.spec = settings.model
        self.store = store
        self.registry = ModelRegistry(settings.registry.path, keep=settings.registry.keep)
        self.inference = BatchInference(settings, store)
        self.served: Served | None = None
        self.bootstrap: Bootstrap | None = None
        self.awaiting: AwaitingTrainer | None = None  # serve-only: the trainer's version 1
        self._on_loaded = on_loaded
        self._on_swapped = on_swapped or (lambda old, new: None)
        # Whether this process may train version 1: replicas sharing an empty registry
        # elect one through its lease; the others wait for what it promotes.
        self._claim = claim or (lambda: True)
        self._reports = Reports(
            pause_input=pause_input,
            resume_input=resume_input,
            status=status,
            waiting=waiting or (lambda reason, progress: None),
        )
        self._loading: _Load | None = None  # the one load in flight
        self._next_check = 0.0
        self._settle_due = False  # a version was put into service: settle the heap after
        self.candidates = Candidates(self.registry)
        #: Monotonic seconds; tests replace it to step through the registry checks.
        self.clock: Callable[[], float] = time.monotonic

    @property
    def gathering(self) -> bool:
        """True until version 1, trained from the stream, is served."""
        return self.bootstrap is not None

    @property
    def version(self) -> int | None:
        return self.served.version if self.served is not None else None

    @property
    def loading(self) -> int | None:
        """The version loading in the background, if any."""
        return self._loading.version if self._loading is not None else None

    # -- start-up ------------------------------------------------------------------------

    def start(self) -> None:
        """Serve the current version (or the best usable one); without one, wait for the
        trainer's (``training.online: false``) or start gathering history for version 1.
        Raises StartupError when versions exist but none is usable and this one trains."""
        try:
            self._start()
        finally:
            self._settle()

    def _start(self) -> None:
        versions = self.registry.versions()
        failures = self._serve_first_usable(versions) if versions else []
        if self.served is not None:
            return
        if not self.settings.training.online or (not failures and not self._claim()):
            self.awaiting = AwaitingTrainer(self.registry, **self._reports)
            self.awaiting.begin(failures)
            return
        if failures:
            raise StartupError(
                f"no usable model version in {self.registry.path}: " + "; ".join(failures)
            )
        self.bootstrap = Bootstrap(
            self.settings, self.registry, clock=lambda: self.clock(), **self._reports
        )
        self.bootstrap.begin()

    def _serve_first_usable(self, versions: list[int]) -> list[str]:
        """Try the versions in ``serving_order``; the first that loads is served. Returns
        why each failed when none did.

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
                self.candidates.skipped_at_startup(version, fingerprint, exc, now)
                failures.append(str(exc))
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
            return []
        return failures

    # -- the loop's calls ----------------------------------------------------------------

    def observe(self, readings: Readings) -> None:
        """Accepted readings, kept while the first model's history is gathered."""
        if self.bootstrap is not None:
            self.bootstrap.observe(readings)

    def maintain(self) -> None:
        """Swap in a version whose load finished, advance the first model's bootstrap, or
        check the registry and start loading another version (or, waiting for the
        trainer's, the first). Never waits for a load."""
        self._maintain()
        self._settle()

    def _settle(self) -> None:
        """Once a version was put into service and everything that goes with it is done
        (the input resumed, readiness said): ``settle_heap``."""
        if self._settle_due and self.settings.inference.freeze_heap:
            self._settle_due = False
            logger.info("heap settled after a version change seconds=%.3f", settle_heap())

    def _maintain(self) -> None:
        now = self.clock()
        if self._loading is not None:
            if not self._loading.future.done():
                return
            self._collect(now)
        if self.bootstrap is not None:
            first = self.bootstrap.advance()
            if first is not None and self._loading is None:
                self._load_in_background(first, self.registry.fingerprint(first))
            return
        if self._loading is None and now >= self._next_check:
            self._next_check = now + REGISTRY_CHECK_S
            chosen = self.candidates.next(now, self.version or 0, self._meanwhile())
            if chosen is not None:
                self._load_in_background(*chosen)
            if self.awaiting is not None:  # said at every check: start-up's READY said another
                self.awaiting.checked(self.loading)
                self._take_over_if_alone()

    def _take_over_if_alone(self) -> None:
        """A replica waiting for another's version 1 trains it itself once the registry's
        lease is free again (its holder died before promoting anything)."""
        if (
            self.awaiting is None
            or self._loading is not None
            or not self.settings.training.online
            or self.registry.versions()
            or not self._claim()
        ):
            return
        logger.info("the replica training version 1 is gone: this one takes over")
        self.awaiting.finish()
        self.awaiting = None
        self.bootstrap = Bootstrap(
            self.settings, self.registry, clock=lambda: self.clock(), **self._reports
        )
        self.bootstrap.begin()

    def forecast_batch(self, batch: Ready) -> Forecasts:
        """Forecast a batch with the serving version, naming it; what cannot be forecast
        is dead-lettered (``BatchInference.forecast``). Each part goes through ``infer``."""
        served = self.served
        assert served is not None
        done = self.inference.forecast(served, batch, infer=self.infer)
        assert self.served is served  # swaps happen in maintain(), between batches
        return done

    def infer(self, batch: Ready) -> np.ndarray:
        """Seed states, run the batch through the serving model: (n, horizon, features)."""
        assert self.served is not None
        return self.inference.infer(self.served, batch)

    def load_running(self) -> bool:
        """Whether a background load is still at work (its native threads included)."""
        return self._loading is not None and self._loading.thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop version 1's training; give a load in flight a moment to finish its work."""
        if self.bootstrap is not None:
            self.bootstrap.stop()
        if self._loading is not None:
            self._loading.thread.join(timeout_s)

    # -- loading and swapping ------------------------------------------------------------

    def load(self, version: int) -> None:
        """Load, check, compile and warm a version on this thread, then serve it (start-up).

        Raises RegistryError / ModelMismatchError; the caller decides whether that
        stops start-up or only skips a bad new version.
        """
        self._serve(self._prepare(version))

    def _prepare(self, version: int) -> Served:
        """Load, check, compile and warm a version: the worker thread's whole job."""
        started = time.perf_counter()
        return self.inference.prepare(self.registry.load(version, expect=self.spec), started)

    def _serve(self, served: Served) -> None:
        """Put a warmed model into service (on the loop's thread, between batches)."""
        previous = self.served
        if previous is not None and self.spec.seeding == "carry":
            self.store.carried.clear()  # a new model's states mean something else
        self.served = served
        self._on_loaded(served.version, served.load_seconds)
        if previous is not None:
            self._on_swapped(previous.version, served.version)
        self._settle_due = True
        logger.info(
            "serving model version=%d load_seconds=%.2f device=%s previous=%s",
            served.version,
            served.load_seconds,
            served.predictor.device,
            previous.version if previous is not None else None,
        )

    def _load_in_background(self, version: int, fingerprint: Fingerprint) -> None:
        """``_prepare`` on a worker thread; a later ``maintain`` collects its outcome."""
        future: Future[Served] = Future()

        def work() -> None:
            future.set_running_or_notify_cancel()
            try:
                future.set_result(self._prepare(version))
            except BaseException as exc:  # handed to the loop, which decides
                future.set_exception(exc)

        thread = threading.Thread(target=work, name=f"streamcast-load-v{version}", daemon=True)
        self._loading = _Load(version, fingerprint, future, thread)
        logger.info("loading model version=%d in the background", version)
        thread.start()

    def _collect(self, now: float) -> None:
        """Swap in the version whose load finished, or note why it cannot be served."""
        load, self._loading = self._loading, None
        assert load is not None
        if self.bootstrap is not None:  # version 1: nothing else to serve, so failing is fatal
            self._serve(load.future.result())
            self.bootstrap.finish()
            self.bootstrap = None
            return
        try:
            served = load.future.result()
        except IncompleteVersionError as exc:
            self.candidates.waiting_for(load.version, load.fingerprint, now, str(exc))
            self._next_check = now  # meanwhile an older version may do (without a pointer)
            return
        except Exception as exc:  # whatever the new version does, the served one goes on
            self.candidates.stop_waiting(load.version)
            self.candidates.reject(load.version, load.fingerprint, exc, self._meanwhile())
            return
        self.candidates.stop_waiting(load.version)
        self._serve(served)
        if self.awaiting is not None:  # the trainer's first version: the input flows again
            self.awaiting.finish()
            self.awaiting = None

    def _meanwhile(self) -> str:
        """What goes on while a version cannot be served, for the log."""
        if self.served is None:
            return "still waiting for a usable first version"
        return f"still serving version {self.served.version}"
