"""Compiled, bucketed batch inference: the hot path between the window store and the sink.

``model.predict`` pays milliseconds of set-up per call and retraces on every new
batch size; here each power-of-two bucket is traced once (``warmup``) with a fixed
signature, and a batch of any size is padded up to the next bucket, so the steady
state never traces again. This is the only TensorFlow-specific module on the model
side; the graph it compiles is the backend-agnostic stepper from ``streamcast.model.graph``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from streamcast.config import ModelSpec
from streamcast.errors import StateShapeError
from streamcast.model.effects import extra_shapes
from streamcast.model.graph import build_stepper
from streamcast.model.runtime import DEVICE, keras

logger = logging.getLogger(__name__)

JitMode = Literal["auto", "on", "off"]
#: The two graphs of carry mode: seeded from the truth, or continuing carried states.
Kind = Literal["seeded", "carried"]


@dataclass(frozen=True)
class Prediction:
    """Forecasts in the sensors' units and, for carry mode, each row's final states."""

    forecast: np.ndarray  # (n, horizon, num_features) float32
    states: np.ndarray  # (n, state_width) float32: [h_0, c_0, h_1, c_1, ...]


def buckets(max_batch: int) -> list[int]:
    """Batch sizes that get a compiled graph: powers of two below ``max_batch``, and it."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = []
    b = 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch)
    return sizes


class Predictor:
    """Runs one model version; build a new one to hot-swap (it shares the model's weights).

    Not thread-safe: it reuses padding buffers between calls. One inference thread owns it.
    """

    def __init__(
        self,
        model: keras.Model,
        cfg: ModelSpec,
        max_batch: int = 256,
        jit_compile: JitMode = "auto",
        carried_steps: int | None = None,
    ) -> None:
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"Predictor compiles with tf.function; Keras backend is {keras.backend.backend()!r}"
            )
        import tensorflow as tf

        self._tf = tf
        self.cfg = cfg
        self.max_batch = int(max_batch)
        self.buckets = buckets(self.max_batch)
        self.width = cfg.state_width
        self.device = DEVICE
        if jit_compile not in ("auto", "on", "off"):
            raise ValueError(f"jit_compile must be auto, on or off, got {jit_compile!r}")
        # XLA fuses the CPU step loop (about 4x at small batches); on GPU the cuDNN
        # kernel is faster and XLA would rule it out.
        self.jit = jit_compile == "on" or (jit_compile == "auto" and self.device.startswith("CPU"))
        self.trace_count = 0
        self._carry = cfg.seeding == "carry"
        # Inputs beyond window and truth/carry: calendar, seasonal lags.
        self._extra = extra_shapes(cfg)
        # Carry mode: a carried state advances by the readings since it was taken
        # (window.stride), one LSTM step each; rows without one are seeded.
        self.carried_steps = (carried_steps or cfg.num_steps) if self._carry else None
        self._steppers: dict[Kind, keras.Model] = {"seeded": build_stepper(model, cfg)}
        if self.carried_steps is not None:
            self._steppers["carried"] = build_stepper(model, cfg, carried_steps=self.carried_steps)
        # Each graph's inputs, in the order its compiled functions take them.
        self._names: dict[Kind, list[str]] = {
            kind: ["window", "truth" if kind == "seeded" else "carry", *self._extra]
            for kind in self._steppers
        }
        self._fns: dict[tuple[Kind, int], Callable[..., Any]] = {}
        self._pads: dict[tuple[Kind, int], dict[str, np.ndarray]] = {}
        logger.debug("predictor device=%s jit=%s buckets=%s", self.device, self.jit, self.buckets)

    def _compile(self, kind: Kind, batch: int) -> Callable[..., Any]:
        """Trace one graph at one bucket into a concrete function.

        Calling the concrete function skips ``tf.function``'s per-call signature
        matching (about 0.2 ms, a quarter of a batch of 10) and can never retrace.
        """
        tf = self._tf
        shapes = {name: (batch, *shape) for name, shape in self._shapes().items()}
        names = self._names[kind]
        spec = [tf.TensorSpec(shapes[n], tf.float32, n) for n in names]
        stepper = self._steppers[kind]

        def step(*args: Any) -> tuple[Any, Any]:
            self.trace_count += 1  # runs only while tracing
            with tf.device(self.device):
                out = stepper(dict(zip(names, args, strict=True)), training=False)
            return out["forecast"], out["states"]

        fn = tf.function(step, input_signature=spec, jit_compile=self.jit)
        return fn.get_concrete_function()  # type: ignore[no-any-return]

    def warmup(self) -> None:
        """Trace and compile every graph and bucket now, before the first real batch waits."""
        for kind in self._steppers:
            for b in self.buckets:
                zeros = {
                    n: np.zeros((b, *shape), np.float32) for n, shape in self._shapes().items()
                }
                self._call(kind, zeros)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """Every input's shape per row, whichever graph takes it."""
        t, f = self.cfg.num_steps, self.cfg.num_features
        return {"window": (t, f), "truth": (f,), "carry": (self.width,), **self._extra}

    def predict(
        self,
        window: np.ndarray,
        truth: np.ndarray,
        carry: np.ndarray | None = None,
        has_carry: np.ndarray | None = None,
        calendar: np.ndarray | None = None,
        lags: np.ndarray | None = None,
        lags_known: np.ndarray | None = None,
    ) -> Prediction:
        """Forecast ``n`` windows; ``carry`` rows are used only in carry mode and only where
        ``has_carry`` (default: all rows when ``carry`` is given) - the others are seeded.

        A carried row's state must be the one its sensor's window ended with
        ``carried_steps`` readings before this one: only those readings are stepped.
        ``calendar`` (n, 3), from ``streamcast.learn.calendar.calendar_inputs``, is required
        by a model with calendar inputs (``model.calendar``) and ignored by the others;
        ``lags`` (n, horizon, F), each forecast step's reading one season earlier, and
        ``lags_known`` (n,) likewise by a model with seasonal lags (``model.seasonal_lag``).
        """
        window = np.asarray(window, dtype=np.float32)
        truth = np.asarray(truth, dtype=np.float32)
        t, f = self.cfg.num_steps, self.cfg.num_features
        if window.ndim != 3 or window.shape[1:] != (t, f) or window.shape[0] < 1:
            raise ValueError(f"window must be (n>=1, {t}, {f}), got {window.shape}")
        n = window.shape[0]
        if truth.shape != (n, f):
            raise ValueError(f"truth must be ({n}, {f}), got {truth.shape}")
        carry, has_carry = self._carry_inputs(n, carry, has_carry)
        given = {"window": window, "truth": truth, "carry": carry}
        offered = {"calendar": calendar, "lags": lags, "lags_known": lags_known}
        for name, shape in self._extra.items():
            value = offered[name]
            if value is None:
                raise ValueError(f"this model forecasts from {name} inputs: pass {name}")
            arr = np.asarray(value, dtype=np.float32)
            if name == "lags_known" and arr.shape == (n,):
                arr = arr[:, None]
            if arr.shape != (n, *shape):
                raise ValueError(f"{name} must be {(n, *shape)}, got {np.shape(value)}")
            given[name] = arr
        if not self._carry or not has_carry.any():
            return self._run("seeded", given)
        if has_carry.all():
            return self._run("carried", given)
        forecast = np.empty((n, self.cfg.horizon, f), np.float32)
        states = np.empty((n, self.width), np.float32)
        parts: tuple[tuple[Kind, np.ndarray], ...] = (
            ("seeded", ~has_carry),
            ("carried", has_carry),
        )
        for kind, rows in parts:
            part = self._run(kind, {name: a[rows] for name, a in given.items()})
            forecast[rows], states[rows] = part.forecast, part.states
        return Prediction(forecast, states)

    def _run(self, kind: Kind, given: dict[str, np.ndarray]) -> Prediction:
        """All rows through one graph, ``max_batch`` at a time."""
        n = len(given["window"])
        forecasts, states = [], []
        for start in range(0, n, self.max_batch):
            stop = min(start + self.max_batch, n)
            fc, st = self._call(kind, {name: a[start:stop] for name, a in given.items()})
            forecasts.append(fc)
            states.append(st)
        if len(forecasts) == 1:
            return Prediction(forecasts[0], states[0])
        return Prediction(np.concatenate(forecasts), np.concatenate(states))

    def _carry_inputs(
        self, n: int, carry: np.ndarray | None, has_carry: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if carry is None:
            if has_carry is not None and np.any(has_carry):
                raise ValueError("has_carry marks rows but no carry was given")
            return np.zeros((n, self.width), np.float32), np.zeros((n,), bool)
        carry = np.asarray(carry, dtype=np.float32)
        if carry.shape != (n, self.width):
            raise StateShapeError(
                "carry",
                "h, c",
                (n, self.width),
                carry.shape,
                f"flattened [h_0, c_0, ...] for units {list(self.cfg.units)}",
            )
        if has_carry is None:
            has_carry = np.ones((n,), bool)
        has_carry = np.asarray(has_carry, dtype=bool)
        if has_carry.shape != (n,):
            raise ValueError(f"has_carry must be ({n},), got {has_carry.shape}")
        return carry, has_carry

    def _call(self, kind: Kind, given: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        names = self._names[kind]
        m = given["window"].shape[0]
        bucket = next(b for b in self.buckets if b >= m)
        args = [given[name] for name in names]
        if m < bucket:
            pads = self._pads.get((kind, bucket))
            if pads is None:
                pads = self._pads[(kind, bucket)] = {
                    name: np.zeros((bucket, *given[name].shape[1:]), np.float32) for name in names
                }
            padded = []
            for name, arr in zip(names, args, strict=True):
                buf = pads[name]
                buf[:m] = arr  # rows past m keep stale values: rows never mix, they are cut off
                padded.append(buf)
            args = padded
        fn = self._fns.get((kind, bucket))
        if fn is None:
            fn = self._fns[(kind, bucket)] = self._compile(kind, bucket)
        forecast, states = fn(*args)
        return forecast.numpy()[:m], states.numpy()[:m]
