"""CSV history files (``.gz`` for gzipped): rows ``sensor,ts,v1[,v2...]`` under that header.

Rows are parsed a chunk at a time into numpy columns, so millions of rows read quickly;
only a chunk holding a bad row is looked at row by row, to name its physical line (blank
lines and line breaks inside quoted fields counted), as an editor would show it.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from streamcast.learn.sensordata import Collector, SensorData, parse_ts, ts_or_nan

_CHUNK = 1 << 16  # rows per vectorised step: amortises per-call overhead, bounds memory
# Common spellings of a missing cell, turned into "nan" so the fast path can parse them.
_MISSING = dict.fromkeys(("", "nan", "NaN", "na", "NA", "null", "NULL", "Null"), "nan")


def read_csv(p: Path, *, gz: bool, skip_bad: bool) -> SensorData:
    """The readings of a CSV file; a bad row raises ValueError naming ``file:line``."""
    try:
        with _open_text(p, gz=gz) as fh:
            return _read_csv(p, fh, skip_bad)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not UTF-8 text: {exc}") from None


def _open_text(p: Path, *, gz: bool) -> IO[str]:
    # utf-8-sig: spreadsheet exports often start with a byte-order mark.
    if gz:
        return gzip.open(p, "rt", newline="", encoding="utf-8-sig")
    return p.open(newline="", encoding="utf-8-sig")


def _read_csv(p: Path, fh: IO[str], skip_bad: bool) -> SensorData:
    reader = csv.reader(fh)
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{p}:1: empty file; expected header sensor,ts,v1,...")
        header = [h.strip() for h in header]
        nvals = len(header) - 2
        expected = ["sensor", "ts"] + [f"v{i}" for i in range(1, nvals + 1)]
        if nvals < 1 or header != expected:
            raise ValueError(f"{p}:1: header {','.join(header)!r}; expected 'sensor,ts,v1[,v2...]'")
        out = Collector(p, "line", nvals, skip_bad)
        while True:
            start = reader.line_num
            chunk = list(itertools.islice(reader, _CHUNK))
            if not chunk:
                break
            _csv_chunk(out, chunk, _line_numbers(chunk, start, reader.line_num))
    except csv.Error as exc:
        raise ValueError(f"{p}:{reader.line_num}: {exc}") from None
    return out.result()


def _line_numbers(chunk: list[list[str]], start: int, end: int) -> np.ndarray:
    """The physical line each row ends on (a quoted field may hold line breaks)."""
    if end - start == len(chunk):
        return np.arange(start + 1, end + 1, dtype=np.int64)
    breaks = [sum(f.count("\n") + f.count("\r") - f.count("\r\n") for f in row) for row in chunk]
    return start + np.cumsum(np.asarray(breaks, dtype=np.int64) + 1)


def _csv_chunk(out: Collector, rows: list[list[str]], lines: np.ndarray) -> None:
    width = out.num_features + 2
    extra: list[tuple[int, str]] = []
    if set(map(len, rows)) != {width}:  # blank lines or bad rows: the only per-row loop
        shaped = []
        for i, row in enumerate(rows):
            if len(row) == width:
                shaped.append(i)
            elif len(row) > 1 or (row and row[0].strip()):
                extra.append((int(lines[i]), f"{len(row)} fields, expected {width}"))
        rows = [rows[i] for i in shaped]
        lines = lines[shaped]
    n = len(rows)
    cols: list[tuple[str, ...]] = list(zip(*rows, strict=True)) if n else [()] * width
    ids = out.ids
    lut = {raw: ids.setdefault(raw.strip(), len(ids)) for raw in dict.fromkeys(cols[0])}
    codes = np.fromiter(map(lut.__getitem__, cols[0]), np.int64, n)
    bad = np.zeros(n, dtype=bool)
    if any(not raw.strip() for raw in lut):
        bad |= codes == ids[""]
    ts = _ts_column(cols[1])
    bad |= ~np.isfinite(ts)
    values = np.empty((n, out.num_features))
    for j in range(out.num_features):
        values[:, j] = _value_column(cols[2 + j])
    bad |= np.isinf(values).any(axis=1)

    def reason_at(i: int) -> str:
        if not cols[0][i].strip():
            return "empty sensor id"
        texts = [cols[k][i] for k in range(1, width)]
        return _row_problem(texts)

    out.add(codes, ts, values, lines, bad, reason_at, extra)


def _ts_column(texts: Sequence[str]) -> np.ndarray:
    """Epoch seconds, NaN where a text is not a time (the caller marks those rows bad)."""
    try:
        return np.fromiter(map(float, texts), np.float64, len(texts))
    except ValueError:  # ISO times (parsed once per distinct text), or bad ones
        parsed = {text: ts_or_nan(text) for text in dict.fromkeys(texts)}
        return np.fromiter(map(parsed.__getitem__, texts), np.float64, len(texts))


def _value_column(texts: Sequence[str]) -> np.ndarray:
    """Numbers, NaN for missing cells, inf where a text is bad (the caller marks those)."""
    n = len(texts)
    try:
        return np.fromiter(map(float, texts), np.float64, n)
    except ValueError:  # usually empty cells: swap in "nan", still at C speed
        pass
    try:
        return np.fromiter(map(float, map(_MISSING.get, texts, texts)), np.float64, n)
    except ValueError:
        return np.fromiter(map(_value_or_inf, texts), np.float64, n)


def _value_or_inf(text: str) -> float:
    try:
        return _parse_value(text)
    except ValueError:
        return math.inf


def _row_problem(texts: Sequence[str]) -> str:
    """Why ``ts, v1, ...`` texts make a bad row (the first problem, in column order)."""
    try:
        parse_ts(texts[0])
        for j, text in enumerate(texts[1:], start=1):
            try:
                _parse_value(text)
            except ValueError as exc:
                return f"v{j}: {exc}"
    except ValueError as exc:
        return str(exc)
    return "bad row"  # not reached: the caller only asks about bad rows


def _parse_value(text: str) -> float:
    """A number; an empty cell, na, null or any nan is a missing reading, kept as a gap."""
    text = text.strip()
    if not text or text.lower() in ("na", "null"):
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"value {text!r} is not a number") from None
    if math.isinf(value):
        raise ValueError(f"value {text!r} is not finite")
    return value
