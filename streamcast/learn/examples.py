"""Supervised examples cut from sensor series: the (truth, window, target) triples the
model trains on, the chronological split, and the cut at outages.

numpy only: the daemon sizes its first model's history with ``split_sizes`` without
importing TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from streamcast.learn.calendar import CALENDAR_WIDTH, calendar_inputs, median_step

logger = logging.getLogger(__name__)


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
    # (k, CALENDAR_WIDTH) float32: the origin's phases (``learn.calendar``); zeros if unknown.
    calendar: np.ndarray | None = None
    # (k,) int64: where each example starts in its series; -1 where unknown.
    start: np.ndarray | None = None
    # (k, horizon, F) float32: each target step's reading one season earlier
    # (``model.seasonal_lag``); (k, 0, F) when the examples were cut without a season.
    lags: np.ndarray | None = None
    # (k, 1) float32: 1 where every lag was observed, else 0 (and those lags are 0).
    lags_known: np.ndarray | None = None

    def __post_init__(self) -> None:
        k = len(self)
        if len(self.source) != k:  # not given: one series
            object.__setattr__(self, "source", np.zeros(k, np.int32))
        if self.calendar is None:
            object.__setattr__(self, "calendar", np.zeros((k, CALENDAR_WIDTH), np.float32))
        if self.start is None:
            object.__setattr__(self, "start", np.full(k, -1, np.int64))
        if self.lags is None:
            f = self.window.shape[2]
            object.__setattr__(self, "lags", np.zeros((k, 0, f), np.float32))
        if self.lags_known is None:
            object.__setattr__(self, "lags_known", np.zeros((k, 1), np.float32))

    def __len__(self) -> int:
        return int(self.window.shape[0])

    def inputs(self) -> dict[str, np.ndarray]:
        """The model's named inputs (``calendar`` and the lags are read only by a model
        that has them)."""
        assert self.calendar is not None and self.lags is not None
        assert self.lags_known is not None
        return {
            "window": self.window,
            "truth": self.truth,
            "calendar": self.calendar,
            "lags": self.lags,
            "lags_known": self.lags_known,
        }

    def take(self, idx: np.ndarray) -> Examples:
        """The examples at ``idx``, every field alike."""
        return Examples(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def make_examples(
    series: np.ndarray,
    num_steps: int,
    horizon: int,
    stride: int = 1,
    source: int = 0,
    ts: np.ndarray | None = None,
    *,
    seasonal_lag: int = 0,
    first: int = 0,
) -> Examples:
    """Cut (truth, window, target) examples from one (n, F) series with a strided view.

    Example ``i`` starts at ``s = first + i * stride``: truth = series[s], window =
    series[s+1 : s+1+num_steps], target = the ``horizon`` readings after the window.
    Examples with a non-finite value are dropped rather than fed to the model. With the
    series' ``ts`` each example gets its calendar inputs (the window's last reading is
    the origin; the step is the median). With ``seasonal_lag`` P each gets, per target
    step, the reading P steps before it; readings before ``first`` serve as such lags.
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
    first = max(0, int(first))
    if n - first < span:
        return _empty(num_steps, horizon, f, seasonal_lag)
    view = np.lib.stride_tricks.sliding_window_view(arr[first:], span, axis=0)[::stride]
    view = view.transpose(0, 2, 1)  # (k, span, F), still a view
    calendar = None
    if ts is not None:
        stamps = np.asarray(ts, np.float64)
        if stamps.shape != (n,):
            raise ValueError(f"ts has shape {stamps.shape}; the series has {n} readings")
        origins = stamps[first + num_steps : n - horizon : stride]  # each window's last reading
        calendar = calendar_inputs(origins, median_step(stamps))
    finite = np.isfinite(view).all(axis=(1, 2))
    start = first + np.arange(view.shape[0], dtype=np.int64) * stride
    if not finite.all():
        view = view[finite]
        calendar = None if calendar is None else calendar[finite]
        start = start[finite]
    k = view.shape[0]
    lags = lags_known = None
    if seasonal_lag:
        lags, lags_known = seasonal_lags(arr, start + num_steps, horizon, seasonal_lag)
    return Examples(
        window=np.ascontiguousarray(view[:, 1 : 1 + num_steps], dtype=np.float32),
        truth=np.ascontiguousarray(view[:, 0], dtype=np.float32),
        target=np.ascontiguousarray(view[:, 1 + num_steps :], dtype=np.float32),
        source=np.full(k, source, dtype=np.int32),
        calendar=calendar,
        start=start,
        lags=lags,
        lags_known=lags_known,
    )


def seasonal_lags(
    series: np.ndarray, last: np.ndarray, horizon: int, period: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per origin ``last`` (index of a window's last reading in ``series``): the reading
    ``period`` steps before each of the next ``horizon`` steps, (k, horizon, F) float32,
    and (k, 1) float32 1 where all of them were observed (finite, inside the series);
    elsewhere the lags are 0."""
    idx = np.asarray(last, np.int64)[:, None] + np.arange(1 - period, horizon + 1 - period)
    inside = (idx[:, 0] >= 0) & (idx[:, -1] < len(series))
    lags = np.asarray(series, np.float64)[np.clip(idx, 0, max(len(series) - 1, 0))]
    known = inside & np.isfinite(lags).all(axis=(1, 2))
    lags[~known] = 0.0
    return lags.astype(np.float32), known.astype(np.float32)[:, None]


def make_examples_many(
    series: Sequence[np.ndarray],
    num_steps: int,
    horizon: int,
    stride: int = 1,
    timestamps: Sequence[np.ndarray] | None = None,
    *,
    seasonal_lag: int = 0,
) -> Examples:
    """``make_examples`` over several series, concatenated; ``source`` is the series index."""
    stamps = _stamps(series, timestamps)
    parts = [
        make_examples(s, num_steps, horizon, stride, i, stamps[i], seasonal_lag=seasonal_lag)
        for i, s in enumerate(series)
    ]
    if not parts:
        return _empty(num_steps, horizon, 1, seasonal_lag)
    return concat_examples(parts)


def _empty(num_steps: int, horizon: int, f: int, seasonal_lag: int = 0) -> Examples:
    return Examples(
        window=np.zeros((0, num_steps, f), np.float32),
        truth=np.zeros((0, f), np.float32),
        target=np.zeros((0, horizon, f), np.float32),
        source=np.zeros(0, np.int32),
        lags=np.zeros((0, horizon if seasonal_lag else 0, f), np.float32),
    )


@dataclass(frozen=True)
class _Split:
    train: Examples
    val: Examples
    scale: np.ndarray  # (n_series, F): training std per series and feature


def split_series(
    series: Sequence[np.ndarray],
    num_steps: int,
    horizon: int,
    validation_fraction: float,
    timestamps: Sequence[np.ndarray] | None = None,
    *,
    seasonal_lag: int = 0,
) -> _Split:
    """Chronological split per series: validation targets all lie after every training target.

    Validation windows may read the end of the training part as input (that is what the model
    sees live); no reading is ever a target in both sets. The scale is the training part's std.
    With ``timestamps`` the examples carry their calendar inputs.
    """
    stamps = _stamps(series, timestamps)
    train, val, scales = [], [], []
    for i, s in enumerate(series):
        arr = np.asarray(s, dtype=np.float64)
        ts = stamps[i]
        cut = _cut(len(arr), validation_fraction)
        std = np.nanstd(arr[:cut], axis=0) if cut > 1 else np.ones(arr.shape[1])
        scales.append(np.where(np.isfinite(std) & (std > 1e-12), std, 1.0))
        train.append(
            make_examples(
                arr[:cut], num_steps, horizon, 1, i, _part(ts, 0, cut), seasonal_lag=seasonal_lag
            )
        )
        lo = max(0, cut - num_steps - 1)
        val.append(
            make_examples(arr, num_steps, horizon, 1, i, ts, seasonal_lag=seasonal_lag, first=lo)
        )
    return _Split(concat_examples(train), concat_examples(val), np.stack(scales))


def _stamps(
    series: Sequence[np.ndarray], timestamps: Sequence[np.ndarray] | None
) -> list[np.ndarray | None]:
    if timestamps is None:
        return [None] * len(series)
    if len(timestamps) != len(series):
        raise ValueError(f"{len(timestamps)} timestamp arrays for {len(series)} series")
    return list(timestamps)


def _part(ts: np.ndarray | None, lo: int, hi: int | None) -> np.ndarray | None:
    return None if ts is None else np.asarray(ts)[lo:hi]


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


def concat_examples(parts: Sequence[Examples]) -> Examples:
    """Examples of several cuts as one set, every field alike."""
    return Examples(
        **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Examples)}
    )


def chain_index(ex: Examples, links: int) -> np.ndarray:
    """Consecutive examples of one series in chains of ``links``: (chains, links) indices.

    Carry mode trains on such chains (``model.graph.build_chain_trainer``). Each run of
    consecutive examples is cut into chains end to end; the last chain of a run ends at
    the run's end, overlapping the one before, so no example is left out. A run shorter
    than ``links`` (an example dropped for a NaN cuts a run) gives no chain.
    """
    if links < 1:
        raise ValueError(f"links {links} must be >= 1")
    assert ex.start is not None
    if len(ex) == 0 or (ex.start < 0).any():
        return np.zeros((0, links), np.int64)  # where examples start is not known
    sources = ex.source if len(ex.source) == len(ex) else np.zeros(len(ex), np.int32)
    order = np.lexsort((ex.start, sources))
    start, source = ex.start[order], sources[order]
    breaks = np.flatnonzero((np.diff(start) != 1) | (np.diff(source) != 0)) + 1
    chains: list[np.ndarray] = []
    for run in np.split(order, breaks):
        if len(run) < links:
            continue
        firsts = list(range(0, len(run) - links + 1, links))
        if firsts[-1] + links < len(run):
            firsts.append(len(run) - links)
        chains.extend(run[f : f + links] for f in firsts)
    if not chains:
        return np.zeros((0, links), np.int64)
    return np.stack(chains).astype(np.int64)


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


def warn_irregular(names: Sequence[str], timestamps: Sequence[np.ndarray]) -> None:
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
