"""How a model answers: batches through it, states seeded, what fails dead-lettered.

Kept apart from ``stream.serving``, which decides which version answers and when the
next one is swapped in: this is how a loaded version is made ready to run (checked
against the seeding mode, compiled, warmed) and the per-batch work the loop does with
it between swaps. States are seeded as ``model.seeding`` says (carry mode keeps each
sensor's states in the window store). A window the model cannot forecast on its own is
dead-lettered and the rest of its batch goes on: one record must not stop the stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from streamcast.config import Settings
from streamcast.errors import ModelMismatchError
from streamcast.learn.calendar import calendar_inputs
from streamcast.learn.registry import LoadedModel
from streamcast.stream.batcher import Ready
from streamcast.stream.messages import DeadLetter, RebuiltRecord, encode_reading
from streamcast.stream.windows import WindowStore

if TYPE_CHECKING:
    from streamcast.model.predictor import Predictor

#: Runs a batch's windows through a model: (n, horizon, features).
Infer = Callable[[Ready], np.ndarray]


@dataclass
class Served:
    """A model ready to answer: its version and compiled, warmed predictor."""

    version: int
    predictor: Predictor
    load_seconds: float = 0.0


class Forecasts(NamedTuple):
    """A batch's outcome: the windows forecast, their forecasts, the dead letters of the
    windows that could not be, and the version that made every one of them."""

    batch: Ready
    values: np.ndarray
    letters: list[DeadLetter]
    version: int


class BatchInference:
    """Forecasts ready batches with a given served model, on the loop's thread."""

    def __init__(self, settings: Settings, store: WindowStore) -> None:
        self.spec = settings.model
        self.settings = settings.inference
        self.input_topic = settings.kafka.input_topic
        self.stride = settings.window.stride
        self.store = store

    def prepare(self, loaded: LoadedModel, started: float, *, warm: bool = True) -> Served:
        """Check that a loaded version runs with this seeding mode, compile and warm it
        (on the load's worker thread); ``started``: when its load began (perf_counter).
        ``warm=False`` compiles each batch size on first use instead (a backtest).

        Raises ModelMismatchError when the version was built for other states.
        """
        from streamcast.model.predictor import Predictor

        stored = loaded.cfg
        if stored.seeding != self.spec.seeding or (
            self.spec.seeding == "carry" and stored.units != self.spec.units
        ):
            raise ModelMismatchError(
                f"model version {loaded.version} was built for seeding={stored.seeding} "
                f"units={list(stored.units)} but the configuration asks for "
                f"seeding={self.spec.seeding} units={list(self.spec.units)}"
            )
        if stored.seasonal_lag and (
            stored.seasonal_lag != self.spec.seasonal_lag or stored.horizon != self.spec.horizon
        ):
            raise ModelMismatchError(
                f"model version {loaded.version} forecasts from the readings one season of "
                f"{stored.seasonal_lag} steps before each of its {stored.horizon} steps, but "
                f"the window store keeps model.seasonal_lag={self.spec.seasonal_lag} "
                f"(horizon {self.spec.horizon})"
            )
        # The model's own shape (its units may differ from the config's, which only
        # decide the shape of models trained from now on).
        predictor = Predictor(
            loaded.model,
            stored,
            max_batch=self.settings.max_batch,
            jit_compile=self.settings.jit_compile,
            carried_steps=self.stride if stored.seeding == "carry" else None,
        )
        if warm:
            predictor.warmup()
        return Served(loaded.version, predictor, time.perf_counter() - started)

    def forecast(self, served: Served, batch: Ready, *, infer: Infer | None = None) -> Forecasts:
        """Forecast a batch with ``served``, naming its version.

        A window the model cannot forecast on its own (its inference fails, or its
        forecast is not finite) is dead-lettered; the rest of the batch goes on. When
        no window of a batch of several can be forecast, the failure is not tied to a
        record (a broken model, an exhausted device) and is raised. ``infer`` replaces
        ``self.infer`` with ``served`` (the caller's own seam for one inference).
        """
        run = infer if infer is not None else (lambda part: self.infer(served, part))
        rows, forecast, failed = self._bisect(run, batch, np.arange(len(batch)))
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
        return Forecasts(batch.select(rows), forecast, letters, served.version)

    def infer(self, served: Served, batch: Ready) -> np.ndarray:
        """Seed states, run the batch through the model: (n, horizon, features)."""
        if self.spec.seeding == "carry":
            return self._infer_carried(served.predictor, batch)
        calendar = calendar_inputs(batch.ts, batch.step_s)
        return served.predictor.predict(
            batch.windows,
            batch.truths,
            calendar=calendar,
            lags=batch.lags,
            lags_known=batch.lags_known,
        ).forecast

    def _bisect(
        self, infer: Infer, batch: Ready, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, Exception]]]:
        """Forecast ``rows`` of ``batch``; a failing part is halved until the windows
        that fail alone are found: (rows forecast, forecasts, [(row, error)])."""
        try:
            return rows, infer(batch.select(rows) if len(rows) < len(batch) else batch), []
        except Exception as exc:
            if len(rows) == 1:
                none = np.empty((0, self.spec.horizon, self.spec.num_features), np.float32)
                return rows[:0], none, [(int(rows[0]), exc)]
            half = len(rows) // 2
            left = self._bisect(infer, batch, rows[:half])
            right = self._bisect(infer, batch, rows[half:])
            return (
                np.concatenate([left[0], right[0]]),
                np.concatenate([left[1], right[1]]),
                left[2] + right[2],
            )

    def _unforecastable(self, batch: Ready, i: int, reason: str, detail: str) -> DeadLetter:
        """The dead letter of a window's last reading, re-encoded (its bytes are gone by now)."""
        sensor = batch.sensors[i]
        record = RebuiltRecord(
            topic=self.input_topic,
            partition=int(batch.partitions[i]),
            offset=int(batch.offsets[i]),
            timestamp=int(batch.log_ts[i] * 1000),
            key=sensor.encode(),
            value=encode_reading(sensor, float(batch.ts[i]), batch.windows[i, -1]),
        )
        return DeadLetter.of(record, reason, detail)

    def _infer_carried(self, predictor: Predictor, batch: Ready) -> np.ndarray:
        """Carry mode: each window continues its sensor's states after the previous one,
        stepping only the ``stride`` readings since (a window with no such state is seeded).

        A batch may hold several windows of one sensor (a burst, a catch-up); the
        k-th of them runs in round k, after round k-1 stored the states it needs.
        """
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
            counts = batch.counts[rows]
            carry, has_carry = self.store.carried.get(slots, generations, counts, self.stride)
            calendar = calendar_inputs(batch.ts[rows], batch.step_s[rows])
            prediction = predictor.predict(
                batch.windows[rows],
                batch.truths[rows],
                carry,
                has_carry,
                calendar,
                lags=batch.lags[rows],
                lags_known=batch.lags_known[rows],
            )
            self.store.carried.put(slots, generations, counts, prediction.states)
            forecast[rows] = prediction.forecast
        return forecast
