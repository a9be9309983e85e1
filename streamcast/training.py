"""Offline training: examples from series, honest baselines, scaled metrics, the train command.

Every error here is measured in units of each series' own training standard deviation
(per feature), so a sensor reading in the hundreds does not drown one reading in tens, and a
number like 0.3 means "a third of that sensor's usual spread". The model is judged against two
baselines on data it never trained on: persistence (the last reading, held) and seasonal naive
(the last ``horizon`` readings, repeated).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from streamcast.config import ModelConfig, TrainingSettings
from streamcast.model import build_forecaster
from streamcast.registry import ModelRegistry
from streamcast.simulate import DAY_S, SensorFleet

logger = logging.getLogger(__name__)

SCALE_NOTE = "errors in units of each series' training std (per feature)"
_BUCKET_EDGES = (6, 24, 48)  # then doubling: 96, 192, ...


# ---------------------------------------------------------------------------------------------
# Examples


@dataclass(frozen=True)
class Examples:
    """Aligned supervised examples cut from one or more series.

    ``truth`` is the reading just before the window (what the model seeds its state from),
    ``target`` the ``horizon`` readings right after the window; ``source`` says which series
    each example came from, so errors can be scaled per series.
    """

    window: np.ndarray  # (k, num_steps, F) float32
    truth: np.ndarray  # (k, F) float32
    target: np.ndarray  # (k, horizon, F) float32
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # (k,)

    def __len__(self) -> int:
        return int(self.window.shape[0])

    def inputs(self) -> dict[str, np.ndarray]:
        """The model's named inputs."""
        return {"window": self.window, "truth": self.truth}


def make_examples(
    series: np.ndarray, num_steps: int, horizon: int, stride: int = 1, source: int = 0
) -> Examples:
    """Cut (truth, window, target) examples from one (n, F) series with a strided view.

    Example ``i`` starts at ``i * stride``: truth = series[s], window = series[s+1 : s+1+num_steps],
    target = the ``horizon`` readings after the window. Examples with a non-finite value are
    dropped rather than fed to the model.
    """
    arr = np.asarray(series, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"series must be (n, F), got shape {arr.shape}")
    if num_steps < 1 or horizon < 1 or stride < 1:
        raise ValueError("num_steps, horizon and stride must all be >= 1")
    n, f = arr.shape
    span = 1 + num_steps + horizon
    if n < span:
        return _empty(num_steps, horizon, f)
    view = np.lib.stride_tricks.sliding_window_view(arr, span, axis=0)[::stride]  # (k, F, span)
    view = view.transpose(0, 2, 1)  # (k, span, F), still a view
    finite = np.isfinite(view).all(axis=(1, 2))
    if not finite.all():
        view = view[finite]
    k = view.shape[0]
    return Examples(
        window=np.ascontiguousarray(view[:, 1 : 1 + num_steps], dtype=np.float32),
        truth=np.ascontiguousarray(view[:, 0], dtype=np.float32),
        target=np.ascontiguousarray(view[:, 1 + num_steps :], dtype=np.float32),
        source=np.full(k, source, dtype=np.int32),
    )


def make_examples_many(
    series: Sequence[np.ndarray], num_steps: int, horizon: int, stride: int = 1
) -> Examples:
    """``make_examples`` over several series, concatenated; ``source`` is the series index."""
    parts = [make_examples(s, num_steps, horizon, stride, source=i) for i, s in enumerate(series)]
    if not parts:
        return _empty(num_steps, horizon, 1)
    return Examples(
        window=np.concatenate([p.window for p in parts]),
        truth=np.concatenate([p.truth for p in parts]),
        target=np.concatenate([p.target for p in parts]),
        source=np.concatenate([p.source for p in parts]),
    )


def _empty(num_steps: int, horizon: int, f: int) -> Examples:
    return Examples(
        window=np.zeros((0, num_steps, f), np.float32),
        truth=np.zeros((0, f), np.float32),
        target=np.zeros((0, horizon, f), np.float32),
        source=np.zeros(0, np.int32),
    )


# ---------------------------------------------------------------------------------------------
# Baselines and metrics


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
class Metrics:
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
) -> Metrics:
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
    return Metrics(buckets=tuple(chosen), scores=scores, examples=k, units=_units(scale))


def _units(scale: np.ndarray | None) -> str:
    return SCALE_NOTE if scale is not None else "errors in original units"


def format_metrics(metrics: Metrics) -> str:
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


# ---------------------------------------------------------------------------------------------
# Training


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
    metrics: Metrics
    data_range: DataRange
    epochs: int
    seconds: float
    best_epoch: int
    stopped_by: str  # "time budget", "early stopping" or "max epochs"
    history: dict[str, list[float]]


@dataclass(frozen=True)
class _Split:
    train: Examples
    val: Examples
    scale: np.ndarray  # (n_series, F): training std per series and feature


def split_series(
    series: Sequence[np.ndarray], num_steps: int, horizon: int, validation_fraction: float
) -> _Split:
    """Chronological split per series: validation targets all lie after every training target.

    Validation windows may read the end of the training part as input (that is what the model
    sees live); no reading is ever a target in both sets. The scale is the training part's std.
    """
    train, val, scales = [], [], []
    for i, s in enumerate(series):
        arr = np.asarray(s, dtype=np.float64)
        cut = _cut(len(arr), validation_fraction)
        std = np.nanstd(arr[:cut], axis=0) if cut > 1 else np.ones(arr.shape[1])
        scales.append(np.where(np.isfinite(std) & (std > 1e-12), std, 1.0))
        train.append(make_examples(arr[:cut], num_steps, horizon, source=i))
        val.append(make_examples(arr[max(0, cut - num_steps - 1) :], num_steps, horizon, source=i))
    return _Split(_concat(train), _concat(val), np.stack(scales))


def _cut(n: int, validation_fraction: float) -> int:
    """Index of a series' first validation reading (shared by the split and its sizes)."""
    return round(n * (1.0 - validation_fraction))


def split_sizes(
    lengths: Sequence[int], num_steps: int, horizon: int, validation_fraction: float
) -> tuple[int, int]:
    """(training, validation) example counts ``split_series`` gives for series of ``lengths``.

    Cheap (no arrays), so a caller can wait until there is enough data before training.
    Counts assume finite readings; examples touching a NaN are dropped by the real split.
    """
    span = 1 + num_steps + horizon
    train = val = 0
    for n in lengths:
        cut = _cut(n, validation_fraction)
        train += max(0, cut - span + 1)
        val += max(0, n - max(0, cut - num_steps - 1) - span + 1)
    return train, val


def _concat(parts: list[Examples]) -> Examples:
    return Examples(
        window=np.concatenate([p.window for p in parts]),
        truth=np.concatenate([p.truth for p in parts]),
        target=np.concatenate([p.target for p in parts]),
        source=np.concatenate([p.source for p in parts]),
    )


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


def _training_model(model: keras.Model, cfg: ModelConfig) -> keras.Model:
    """Wrap the forecaster so the loss sees errors divided by each series' training std.

    The forecaster itself stays in original units (that is what the daemon publishes); the
    wrapper shares its weights and only rescales, so big sensors do not dominate the gradient.
    """
    window = keras.Input((cfg.num_steps, cfg.num_features), name="window")
    truth = keras.Input((cfg.num_features,), name="truth")
    inv_scale = keras.Input((cfg.num_features,), name="inv_scale")
    forecast = model({"window": window, "truth": truth})
    scaled = keras.ops.multiply(forecast, keras.ops.expand_dims(inv_scale, 1))
    return keras.Model({"window": window, "truth": truth, "inv_scale": inv_scale}, scaled)


def _scaled_inputs(ex: Examples, scale: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    inv = (1.0 / scale[ex.source]).astype(np.float32)
    return {"window": ex.window, "truth": ex.truth, "inv_scale": inv}, ex.target * inv[:, None, :]


def predict(model: keras.Model, ex: Examples, batch_size: int = 1024) -> np.ndarray:
    """The model's forecasts for every example, in original units."""
    if len(ex) == 0:
        return np.zeros(ex.target.shape, np.float32)
    return np.asarray(model.predict(ex.inputs(), batch_size=batch_size, verbose=0))


def score_model(
    model: keras.Model, ex: Examples, scale: np.ndarray, horizon: int | None = None
) -> Metrics:
    """Model vs persistence vs seasonal naive on ``ex``, errors scaled by ``scale[source]``."""
    forecasts = {"model": predict(model, ex), **baselines(ex, horizon)}
    return evaluate(forecasts, ex.target, scale=scale[ex.source])


def train(
    cfg: ModelConfig,
    series: Sequence[np.ndarray],
    settings: TrainingSettings,
    *,
    progress: bool = True,
    timestamps: Sequence[np.ndarray] | None = None,
) -> TrainResult:
    """Train a forecaster on ``series`` (each (n, F)) and score it on their later part."""
    if not series:
        raise ValueError("no series to train on")
    for i, s in enumerate(series):
        if np.ndim(s) != 2 or np.shape(s)[1] != cfg.num_features:
            raise ValueError(
                f"series {i} has shape {np.shape(s)}; expected (n, {cfg.num_features})"
            )
    split = split_series(series, cfg.num_steps, cfg.horizon, settings.validation_fraction)
    if len(split.train) == 0 or len(split.val) == 0:
        need = math.ceil((1 + cfg.num_steps + cfg.horizon) / settings.validation_fraction)
        raise ValueError(
            f"too little data: {len(split.train)} training and {len(split.val)} validation "
            f"examples; each series needs at least about {need} readings"
        )
    limit_threads(settings.threads)
    keras.utils.set_random_seed(settings.seed)
    model = build_forecaster(cfg)
    trainer = _training_model(model, cfg)
    trainer.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="mae")
    x, y = _scaled_inputs(split.train, split.scale)
    vx, vy = _scaled_inputs(split.val, split.scale)
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
        batch_size=settings.batch_size,
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


# ---------------------------------------------------------------------------------------------
# Data in, the train command


def load_csv(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read ``sensor,ts,v1[,v2...]`` rows (any order): sensor -> (ts sorted, values (n, F)).

    A malformed row raises ValueError naming the file and line, so a bad export is fixed at
    its source instead of training on a silently shortened series.
    """
    p = Path(path)
    rows: dict[str, list[tuple[float, list[float]]]] = {}
    with p.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{p}:1: empty file; expected header sensor,ts,v1,...")
        header = [h.strip() for h in header]
        nvals = len(header) - 2
        expected = ["sensor", "ts"] + [f"v{i}" for i in range(1, nvals + 1)]
        if nvals < 1 or header != expected:
            raise ValueError(f"{p}:1: header {','.join(header)!r}; expected 'sensor,ts,v1[,v2...]'")
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise ValueError(f"{p}:{line}: {len(row)} fields, expected {len(header)}")
            sensor = row[0].strip()
            if not sensor:
                raise ValueError(f"{p}:{line}: empty sensor id")
            try:
                when = _parse_ts(row[1])
                nums = [_parse_value(c) for c in row[2:]]
            except ValueError as exc:
                raise ValueError(f"{p}:{line}: {exc}") from None
            rows.setdefault(sensor, []).append((when, nums))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for sensor, items in rows.items():
        ts = np.array([t for t, _ in items], dtype=np.float64)
        values = np.array([v for _, v in items], dtype=np.float64).reshape(len(items), nvals)
        order = np.argsort(ts, kind="stable")
        ts, values = ts[order], values[order]
        dup = np.flatnonzero(np.diff(ts) == 0)
        if dup.size:
            raise ValueError(f"{p}: sensor {sensor!r} has two readings at ts={ts[dup[0]]}")
        out[sensor] = (ts, values)
    if not out:
        raise ValueError(f"{p}: no data rows")
    return out


def _parse_ts(text: str) -> float:
    """Epoch seconds, or an ISO 8601 time (no zone means UTC) as real exports often have."""
    text = text.strip()
    try:
        ts = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"ts {text!r} is neither epoch seconds nor ISO 8601") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ts = when.timestamp()
    if not math.isfinite(ts):
        raise ValueError(f"ts {text!r} is not finite")
    return ts


def _parse_value(text: str) -> float:
    """A number; an empty cell (or nan) is a missing reading, kept as a gap."""
    text = text.strip()
    if not text or text.lower() in ("nan", "na", "null"):
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"value {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"value {text!r} is not finite")
    return value


def split_at_gaps(
    ts: np.ndarray, values: np.ndarray, gap_factor: float = 3.0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut a series where readings are missing for longer than ``gap_factor`` steps.

    A window must not bridge an outage, as the daemon restarts a window after one;
    training examples are therefore made from each gap-free piece separately.
    """
    if len(ts) < 3:
        return [(ts, values)]
    d = np.diff(ts)
    step = float(np.median(d))
    cuts = np.flatnonzero(d > gap_factor * step) + 1
    return [
        (t, v) for t, v in zip(np.split(ts, cuts), np.split(values, cuts), strict=True) if len(t)
    ]


def run_train(
    *,
    cfg: ModelConfig,
    settings: TrainingSettings,
    registry_path: str | os.PathLike[str],
    data: str | os.PathLike[str] | None,
    simulated: bool,
    sensors: int,
    days: int,
    seed: int,
) -> int:
    """Body of ``streamcast train``: load or simulate, train, save a version, print metrics."""
    if data is not None and simulated:
        raise ValueError("give either a CSV file or simulated=True, not both")
    if data is not None:
        loaded = load_csv(data)
        names, timestamps, series = [], [], []
        for name in sorted(loaded):
            for ts, values in split_at_gaps(*loaded[name]):
                names.append(name)
                timestamps.append(ts)
                series.append(values)
        _warn_irregular(names, timestamps)
        pieces = f", {len(series)} gap-free pieces" if len(series) > len(loaded) else ""
        source = f"{data} ({len(loaded)} sensors{pieces})"
    elif simulated:
        fleet = SensorFleet(sensors, seed=seed, num_features=cfg.num_features)
        ts, values = fleet.series(round(days * DAY_S / fleet.step_s))
        timestamps = [ts] * sensors
        series = [values[i] for i in range(sensors)]
        source = f"simulated fleet ({sensors} sensors, {days} days, seed {seed})"
    else:
        raise ValueError("nothing to train on: give a CSV file or simulated=True")
    for i, s in enumerate(series):
        if s.shape[1] != cfg.num_features:
            raise ValueError(
                f"series {i} has {s.shape[1]} value columns; the model expects "
                f"num_features={cfg.num_features}"
            )
    print(f"data: {source}", flush=True)
    result = train(cfg, series, settings, progress=True, timestamps=timestamps)
    registry = ModelRegistry(registry_path)
    version = registry.save(
        result.model, cfg, metrics=result.metrics.as_dict(), data_range=result.data_range.as_dict()
    )
    print(
        f"{result.epochs} epochs in {result.seconds:.1f}s (stopped by {result.stopped_by}; "
        f"best epoch {result.best_epoch})"
    )
    print(format_metrics(result.metrics))
    print(f"saved model version {version} to {registry.version_path(version)}", flush=True)
    return version


def _warn_irregular(names: Sequence[str], timestamps: Sequence[np.ndarray]) -> None:
    """Examples assume evenly spaced readings; say so when a sensor's spacing varies."""
    for name, ts in zip(names, timestamps, strict=True):
        if len(ts) < 3:
            continue
        d = np.diff(ts)
        step = float(np.median(d))
        odd = int(np.count_nonzero(~np.isclose(d, step, rtol=1e-3)))
        if odd:
            logger.warning(
                "irregular spacing sensor=%s step_s=%.0f irregular_gaps=%d", name, step, odd
            )
