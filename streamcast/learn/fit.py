"""The fit loop: train a forecaster on series within a time budget, score it, save it.

The loss sees errors divided by each series' training std, so big sensors do not
dominate the gradient; the model itself stays in original units.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from streamcast.config import ModelSpec, TrainingSettings
from streamcast.learn.evaluation import Evaluation, baselines, evaluate, format_evaluation
from streamcast.learn.examples import Examples, chain_index, split_series
from streamcast.learn.registry import ModelRegistry
from streamcast.model import build_chain_trainer, build_forecaster, extra_shapes
from streamcast.model.runtime import keras

logger = logging.getLogger(__name__)

#: Carry mode trains on chains of this many consecutive windows (fewer where the data
#: has no run this long), a batch of ``batch_size // CHAIN_BATCH_DIVISOR`` chains per step.
CHAIN_LINKS = 32
CHAIN_BATCH_DIVISOR = 8


@dataclass(frozen=True)
class DataRange:
    """What a model was trained on; stored with the model version."""

    sensors: int
    readings: int
    train_examples: int
    val_examples: int
    first_ts: float | None = None
    last_ts: float | None = None

    def as_dict(self) -> dict[str, Any]:
        def iso(ts: float | None) -> str | None:
            if ts is None:
                return None
            return datetime.fromtimestamp(ts, UTC).isoformat()

        return {
            "sensors": self.sensors,
            "readings": self.readings,
            "examples": self.train_examples + self.val_examples,
            "train_examples": self.train_examples,
            "val_examples": self.val_examples,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "first": iso(self.first_ts),
            "last": iso(self.last_ts),
        }


@dataclass
class TrainResult:
    model: keras.Model
    metrics: Evaluation
    data_range: DataRange
    epochs: int
    seconds: float
    best_epoch: int
    stopped_by: str  # "time budget", "early stopping" or "max epochs"
    history: dict[str, list[float]]


def limit_threads(threads: int) -> bool:
    """Cap TensorFlow's CPU threads so training leaves the inference loop a core.

    Only possible before TensorFlow runs its first op; afterwards this logs and returns False.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    threading = tf.config.threading
    if (
        threading.get_intra_op_parallelism_threads() == threads
        and threading.get_inter_op_parallelism_threads() == 1
    ):
        return True
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        logger.warning(
            "tensorflow already initialised; thread limit not applied threads=%d current=%d",
            threads,
            threading.get_intra_op_parallelism_threads(),
        )
        return False
    return True


class _TimeBudget(keras.callbacks.Callback):  # type: ignore[misc]
    """Stops training (mid-epoch if need be) so that ``fit`` ends within ``max_seconds``.

    Keras still validates the interrupted epoch, so the stop comes early by the duration of
    the last validation pass; the budget then covers the whole ``fit``, not only the steps.
    """

    def __init__(self, max_seconds: float) -> None:
        super().__init__()
        self.max_seconds = max_seconds
        self.start = time.monotonic()
        self.val_started = self.start
        self.val_seconds = 0.0
        self.hit = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.start = time.monotonic()

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.val_started = time.monotonic()

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        self.val_seconds = time.monotonic() - self.val_started

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if time.monotonic() - self.start + self.val_seconds >= self.max_seconds:
            self.hit = True
            self.model.stop_training = True


class _Progress(keras.callbacks.Callback):  # type: ignore[misc]
    """One line per epoch: epoch, loss, val_loss, elapsed seconds."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.start = time.monotonic()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        print(
            f"epoch {epoch + 1:>3}/{self.epochs}  loss {logs.get('loss', float('nan')):.4f}  "
            f"val_loss {logs.get('val_loss', float('nan')):.4f}  "
            f"elapsed {time.monotonic() - self.start:6.1f}s",
            flush=True,
        )


def _training_model(model: keras.Model, cfg: ModelSpec) -> keras.Model:
    """Wrap the forecaster so the loss sees errors divided by each series' training std.

    The forecaster itself stays in original units (that is what the daemon publishes); the
    wrapper shares its weights and only rescales, so big sensors do not dominate the gradient.
    """
    inputs = {
        "window": keras.Input((cfg.num_steps, cfg.num_features), name="window"),
        "truth": keras.Input((cfg.num_features,), name="truth"),
        **{name: keras.Input(shape, name=name) for name, shape in extra_shapes(cfg).items()},
    }
    inv_scale = keras.Input((cfg.num_features,), name="inv_scale")
    forecast = model(inputs)
    scaled = keras.ops.multiply(forecast, keras.ops.expand_dims(inv_scale, 1))
    return keras.Model({**inputs, "inv_scale": inv_scale}, scaled)


def _chain_training_model(model: keras.Model, cfg: ModelSpec, links: int) -> keras.Model:
    """``_training_model`` for carry mode: chains of windows with carried states."""
    chain = build_chain_trainer(model, cfg, links)
    inputs = {
        "windows": keras.Input((links, cfg.num_steps, cfg.num_features), name="windows"),
        "truth": keras.Input((cfg.num_features,), name="truth"),
        **{
            name: keras.Input((links, *shape), name=name)
            for name, shape in extra_shapes(cfg).items()
        },
    }
    inv_scale = keras.Input((cfg.num_features,), name="inv_scale")
    scale = keras.ops.reshape(inv_scale, (-1, 1, 1, cfg.num_features))
    scaled = keras.ops.multiply(chain(inputs), scale)
    return keras.Model({**inputs, "inv_scale": inv_scale}, scaled)


def _chain_links(*parts: Examples) -> int:
    """The chain length every part can give at least one chain of (at most CHAIN_LINKS)."""
    links = CHAIN_LINKS
    while links > 1 and any(len(chain_index(p, links)) == 0 for p in parts):
        links //= 2
    return links


def _chain_inputs(
    ex: Examples, scale: np.ndarray, links: int, cfg: ModelSpec
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    idx = chain_index(ex, links)
    inv = (1.0 / scale[ex.source[idx[:, 0]]]).astype(np.float32)
    inputs = {"windows": ex.window[idx], "truth": ex.truth[idx[:, 0]], "inv_scale": inv}
    given = ex.inputs()
    for name in extra_shapes(cfg):
        inputs[name] = given[name][idx]
    return inputs, ex.target[idx] * inv[:, None, None, :]


def _warm_start(model: keras.Model, initial: keras.Model) -> None:
    """Start from ``initial``'s weights, layer by layer (by name, where shapes agree), so a
    served model without the calendar still warm-starts one with it."""
    names = {layer.name for layer in initial.layers}
    for layer in model.layers:
        if not layer.weights or layer.name not in names:
            continue
        weights = initial.get_layer(layer.name).get_weights()
        if [w.shape for w in weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(weights)


def _model_inputs(model: keras.Model, ex: Examples) -> dict[str, np.ndarray]:
    """The example arrays this model takes (a model without the calendar does not)."""
    given = ex.inputs()
    wanted = model.input if isinstance(model.input, dict) else {}
    return {name: given[name] for name in given if name in wanted} or given


def _scaled_inputs(
    model: keras.Model, ex: Examples, scale: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    inv = (1.0 / scale[ex.source]).astype(np.float32)
    inputs = {**_model_inputs(model, ex), "inv_scale": inv}
    return inputs, ex.target * inv[:, None, :]


def predict(model: keras.Model, ex: Examples, batch_size: int = 1024) -> np.ndarray:
    """The model's forecasts for every example, in original units."""
    if len(ex) == 0:
        return np.zeros(ex.target.shape, np.float32)
    inputs = _model_inputs(model, ex)
    return np.asarray(model.predict(inputs, batch_size=batch_size, verbose=0))


def score_model(
    model: keras.Model, ex: Examples, scale: np.ndarray, horizon: int | None = None
) -> Evaluation:
    """Model vs persistence vs seasonal naive on ``ex``, errors scaled by ``scale[source]``."""
    forecasts = {"model": predict(model, ex), **baselines(ex, horizon)}
    return evaluate(forecasts, ex.target, scale=scale[ex.source])


def train(
    cfg: ModelSpec,
    series: Sequence[np.ndarray],
    settings: TrainingSettings,
    *,
    progress: bool = True,
    timestamps: Sequence[np.ndarray] | None = None,
    initial: keras.Model | None = None,
) -> TrainResult:
    """Train a forecaster on ``series`` (each (n, F)) and score it on their later part.

    ``initial``: a model of the same spec to start from (a retraining warm-starts from
    the served model, so it refines what works instead of starting over).
    """
    if not series:
        raise ValueError("no series to train on")
    for i, s in enumerate(series):
        if np.ndim(s) != 2 or np.shape(s)[1] != cfg.num_features:
            raise ValueError(
                f"series {i} has shape {np.shape(s)}; expected (n, {cfg.num_features})"
            )
    split = split_series(
        series,
        cfg.num_steps,
        cfg.horizon,
        settings.validation_fraction,
        timestamps,
        seasonal_lag=cfg.seasonal_lag,
    )
    if len(split.train) == 0 or len(split.val) == 0:
        need = math.ceil((1 + cfg.num_steps + cfg.horizon) / settings.validation_fraction)
        raise ValueError(
            f"too little data: {len(split.train)} training and {len(split.val)} validation "
            f"examples; each series needs at least about {need} readings"
        )
    limit_threads(settings.threads)
    keras.utils.set_random_seed(settings.random_seed)
    model = build_forecaster(cfg)
    if initial is not None:
        _warm_start(model, initial)
    batch_size = settings.batch_size
    if cfg.seeding == "carry":
        # Trained the way it serves: the first window of a chain seeded, the others
        # continuing the states before them (truncated backpropagation through time).
        links = _chain_links(split.train, split.val)
        trainer = _chain_training_model(model, cfg, links)
        x, y = _chain_inputs(split.train, split.scale, links, cfg)
        vx, vy = _chain_inputs(split.val, split.scale, links, cfg)
        batch_size = max(1, batch_size // CHAIN_BATCH_DIVISOR)
        logger.info("training carry mode on chains links=%d chains=%d", links, len(y))
    else:
        trainer = _training_model(model, cfg)
        x, y = _scaled_inputs(trainer, split.train, split.scale)
        vx, vy = _scaled_inputs(trainer, split.val, split.scale)
    trainer.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="mae")
    budget = _TimeBudget(settings.max_seconds)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=settings.patience, restore_best_weights=True
    )
    callbacks: list[keras.callbacks.Callback] = [budget, stopper]
    if progress:
        callbacks.append(_Progress(settings.max_epochs))
        print(
            f"training on {len(split.train)} examples, validating on {len(split.val)} "
            f"({len(series)} series); budget {settings.max_seconds:.0f}s",
            flush=True,
        )
    started = time.monotonic()
    history = trainer.fit(
        x,
        y,
        validation_data=(vx, vy),
        epochs=settings.max_epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    seconds = time.monotonic() - started
    epochs = len(history.epoch)
    stopped_by = (
        "time budget" if budget.hit else "early stopping" if stopper.stopped_epoch else "max epochs"
    )
    metrics = score_model(model, split.val, split.scale, cfg.horizon)
    first_ts = last_ts = None
    if timestamps is not None and len(timestamps):
        first_ts = float(min(float(t[0]) for t in timestamps if len(t)))
        last_ts = float(max(float(t[-1]) for t in timestamps if len(t)))
    data_range = DataRange(
        sensors=len(series),
        readings=int(sum(len(s) for s in series)),
        train_examples=len(split.train),
        val_examples=len(split.val),
        first_ts=first_ts,
        last_ts=last_ts,
    )
    logger.info(
        "trained epochs=%d best_epoch=%d stopped_by=%r seconds=%.1f",
        epochs,
        stopper.best_epoch + 1,
        stopped_by,
        seconds,
    )
    return TrainResult(
        model=model,
        metrics=metrics,
        data_range=data_range,
        epochs=epochs,
        seconds=seconds,
        best_epoch=stopper.best_epoch + 1,
        stopped_by=stopped_by,
        history={k: [float(v) for v in vals] for k, vals in history.history.items()},
    )


def train_and_save(
    cfg: ModelSpec,
    series: Sequence[np.ndarray],
    settings: TrainingSettings,
    registry_path: str | os.PathLike[str],
    *,
    timestamps: Sequence[np.ndarray] | None = None,
) -> int:
    """Body of ``streamcast train``: train, save a version, print how it did."""
    for i, s in enumerate(series):
        if s.shape[1] != cfg.num_features:
            raise ValueError(
                f"series {i} has {s.shape[1]} value columns; the model expects "
                f"num_features={cfg.num_features}"
            )
    result = train(cfg, series, settings, progress=True, timestamps=timestamps)
    registry = ModelRegistry(registry_path)
    version = registry.save(
        result.model, cfg, metrics=result.metrics.as_dict(), data_range=result.data_range.as_dict()
    )
    print(
        f"{result.epochs} epochs in {result.seconds:.1f}s (stopped by {result.stopped_by}; "
        f"best epoch {result.best_epoch})"
    )
    print(format_evaluation(result.metrics))
    print(f"saved model version {version} to {registry.version_path(version)}", flush=True)
    return version
