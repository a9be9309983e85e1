"""Reading sensor history from files: CSV rows ``sensor,ts,v1[,v2...]`` in any order.

A malformed row raises ValueError naming the file and line, so a bad export is
fixed at its source instead of training on a silently shortened series.
"""

from __future__ import annotations

import csv
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from streamcast.learn.examples import split_at_gaps, warn_irregular


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


def load_series(
    path: str | os.PathLike[str], gap_factor: float = 3.0
) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(timestamps, values, description) per gap-free piece of every sensor in a CSV."""
    loaded = load_csv(path)
    names, timestamps, series = [], [], []
    for name in sorted(loaded):
        for ts, values in split_at_gaps(*loaded[name], gap_factor):
            names.append(name)
            timestamps.append(ts)
            series.append(values)
    warn_irregular(names, timestamps)
    pieces = f", {len(series)} gap-free pieces" if len(series) > len(loaded) else ""
    return timestamps, series, f"{path} ({len(loaded)} sensors{pieces})"
