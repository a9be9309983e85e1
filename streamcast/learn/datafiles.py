"""Reading sensor history from files: rows ``sensor,ts,v1[,v2...]`` in any order.

CSV (``.gz`` for gzipped) or Parquet (``.parquet``/``.pq``), chosen by file name. A
malformed row raises ValueError naming the file and line (CSV) or row (Parquet), so a bad
export is fixed at its source instead of training on a silently shortened series; with
``skip_bad=True`` such rows are skipped and counted instead, for exports that cannot be fixed.

Rows are handled a chunk at a time as columns (numpy, or Arrow for Parquet), so files of
millions of rows read quickly and with bounded overhead; only a chunk that holds a bad row
is looked at row by row, to name it. This module is the entry point and picks the format;
``csvfile`` and ``parquetfile`` read one each into the ``readings`` collector they share.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from streamcast.learn.csvfile import read_csv
from streamcast.learn.examples import split_at_gaps, warn_irregular
from streamcast.learn.parquetfile import read_parquet
from streamcast.learn.sensordata import MissingDependencyError, SensorData, parse_ts

__all__ = [
    "MissingDependencyError",
    "SensorData",
    "load_csv",
    "load_readings",
    "load_series",
    "parse_ts",
]

_PARQUET_SUFFIXES = (".parquet", ".pq")


def load_readings(path: str | os.PathLike[str], *, skip_bad: bool = False) -> SensorData:
    """Read a history file: CSV, gzipped CSV (``.gz``) or Parquet (``.parquet``/``.pq``).

    Bad rows (wrong field count, empty sensor, bad or non-finite ts, a non-number or
    infinite value, a second reading of a sensor at the same ts) raise ValueError naming the
    first one, or with ``skip_bad`` are skipped and counted (of duplicates, the first in
    file order is kept). Empty, nan, na and null cells are missing readings (NaN), not bad.
    A bad header or a file without good rows is always an error.
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return read_parquet(p, skip_bad=skip_bad)
    return read_csv(p, gz=name.endswith(".gz"), skip_bad=skip_bad)


def load_csv(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sensor -> (ts sorted, values (n, F)) of a history file; any bad row is an error."""
    return load_readings(path).series


def load_series(
    path: str | os.PathLike[str],
    gap_factor: float = 3.0,
    *,
    skip_bad: bool = False,
    until: float | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(timestamps, values, description) per gap-free piece of every sensor in a file.

    ``until`` (epoch seconds) keeps only readings before it, so a model can be trained on
    the past of a file and backtested on the rest. The description names the file and,
    when ``skip_bad`` left rows out, how many and why the first was bad, so a training log
    shows what the model did not see.
    """
    data = load_readings(path, skip_bad=skip_bad)
    loaded = data.series
    if until is not None:
        loaded = {name: (ts[ts < until], v[ts < until]) for name, (ts, v) in loaded.items()}
        loaded = {name: part for name, part in loaded.items() if len(part[0])}
        if not loaded:
            raise ValueError(f"{path}: no readings before {until}")
    names, timestamps, series = [], [], []
    for name in sorted(loaded):
        for ts, values in split_at_gaps(*loaded[name], gap_factor):
            names.append(name)
            timestamps.append(ts)
            series.append(values)
    warn_irregular(names, timestamps)
    pieces = f", {len(series)} gap-free pieces" if len(series) > len(loaded) else ""
    skips = ""
    if data.skipped:
        skips = f"; skipped {data.skipped} of {data.rows} rows as bad, first {data.first_skips[0]}"
    before = "" if until is None else f", readings before {until:.0f}"
    return timestamps, series, f"{path} ({len(loaded)} sensors{before}{pieces}{skips})"
