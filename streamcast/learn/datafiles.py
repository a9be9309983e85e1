"""Reading sensor history from files: rows ``sensor,ts,v1[,v2...]`` in any order.

CSV (``.gz`` for gzipped) or Parquet (``.parquet``/``.pq``), chosen by file name. A
malformed row raises ValueError naming the file and line (CSV) or row (Parquet), so a bad
export is fixed at its source instead of training on a silently shortened series; with
``skip_bad=True`` such rows are skipped and counted instead, for exports that cannot be fixed.

Rows are handled a chunk at a time as columns (numpy, or Arrow for Parquet), so files of
millions of rows read quickly and with bounded overhead; only a chunk that holds a bad row
is looked at row by row, to name it.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import numpy as np

from streamcast.learn.examples import split_at_gaps, warn_irregular

_CHUNK = 1 << 16  # rows per vectorised step: amortises per-call overhead, bounds memory
_MAX_SKIPS = 5  # reasons kept for the summary of a skip_bad read
# Common spellings of a missing cell, turned into "nan" so the fast path can parse them.
_MISSING = dict.fromkeys(("", "nan", "NaN", "na", "NA", "null", "NULL", "Null"), "nan")
_PARQUET_SUFFIXES = (".parquet", ".pq")


class MissingDependencyError(ImportError, ValueError):
    """An optional package a file format needs is not installed.

    Also a ValueError so callers that report unreadable data files (``streamcast train``)
    print the install hint instead of a traceback.
    """


@dataclass(frozen=True)
class SensorData:
    """A history file's readings per sensor, and how much of the file was used.

    ``series`` maps sensor -> (ts, values): ts sorted float64 epoch seconds, values
    (n, num_features) float64 with NaN for missing readings. ``rows`` counts the data rows
    read (good and bad), ``skipped`` the bad ones left out (only with ``skip_bad``), and
    ``first_skips`` the first few reasons in file order, each naming its line or row.
    """

    series: dict[str, tuple[np.ndarray, np.ndarray]]
    rows: int
    skipped: int
    first_skips: list[str]
    num_features: int
    path: str


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
        return _read_parquet(p, skip_bad)
    try:
        with _open_text(p, gz=name.endswith(".gz")) as fh:
            return _read_csv(p, fh, skip_bad)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not UTF-8 text: {exc}") from None


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


# --- collecting rows ------------------------------------------------------------------


class _Collector:
    """Good rows as column chunks in file order, plus the count and first reasons of bad ones.

    Rows are located by ``where``: the physical line (CSV) or 1-based data row (Parquet).
    """

    def __init__(self, path: Path, unit: str, num_features: int, skip_bad: bool) -> None:
        self.path = path
        self.unit = unit
        self.num_features = num_features
        self.skip_bad = skip_bad
        self.ids: dict[str, int] = {}  # sensor -> code, in order of first appearance
        self.rows = 0
        self.skipped = 0
        self.skips: list[tuple[int, str]] = []  # (where, reason), first few in file order
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def error(self, where: int, problem: str) -> ValueError:
        if self.unit == "line":
            return ValueError(f"{self.path}:{where}: {problem}")
        return ValueError(f"{self.path}: {self.unit} {where}: {problem}")

    def add(
        self,
        codes: np.ndarray,
        ts: np.ndarray,
        values: np.ndarray,
        where: np.ndarray,
        bad: np.ndarray | None = None,
        reason_at: Callable[[int], str] | None = None,
        extra: Sequence[tuple[int, str]] = (),
    ) -> None:
        """Take a chunk; ``bad`` marks rows ``reason_at(i)`` explains, ``extra`` holds bad
        rows that never made it into the columns (wrong field count)."""
        self.rows += len(codes) + len(extra)
        nbad = len(extra) + (int(np.count_nonzero(bad)) if bad is not None else 0)
        if nbad == 0:
            self._parts.append((codes, ts, values, where))
            return
        assert bad is not None and reason_at is not None
        found = [(int(where[i]), reason_at(int(i))) for i in np.flatnonzero(bad)[:_MAX_SKIPS]]
        found = sorted([*found, *extra[:_MAX_SKIPS]])
        if not self.skip_bad:
            first, problem = found[0]
            keep = ~bad & (where < first)
            self._parts.append((codes[keep], ts[keep], values[keep], where[keep]))
            self._columns()  # a duplicate before the bad row is the first error
            raise self.error(first, problem)
        self.skipped += nbad
        self.skips.extend(found[: _MAX_SKIPS - len(self.skips)])
        keep = ~bad
        self._parts.append((codes[keep], ts[keep], values[keep], where[keep]))

    def _columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All good rows sorted by (sensor, ts); a later duplicate is dropped or raised."""
        parts, self._parts = self._parts, []
        if len(parts) == 1:
            codes, ts, values, where = parts[0]
        else:
            codes, ts, values, where = (
                np.concatenate([part[k] for part in parts]) for k in range(4)
            )
        del parts  # the chunks are not needed again: free them before sorting copies
        values = values.reshape(len(codes), self.num_features)
        # Stable sorts, so equal (sensor, ts) stay in file order; timsort is quick on the
        # usual time-ordered export, and narrow codes get a radix sort.
        order = np.argsort(ts, kind="stable")
        narrow = codes.astype(np.min_scalar_type(max(len(self.ids), 1)))
        order = order[np.argsort(narrow[order], kind="stable")]
        codes, ts, where = codes[order], ts[order], where[order]
        same = np.zeros(len(codes), dtype=bool)
        same[1:] = (codes[1:] == codes[:-1]) & (ts[1:] == ts[:-1])
        if same.any():
            positions = np.arange(len(codes))
            run_start = np.maximum.accumulate(np.where(same, 0, positions))
            dups = np.flatnonzero(same)
            dups = dups[np.argsort(where[dups], kind="stable")]
            names = list(self.ids)
            found = [
                (
                    int(where[i]),
                    f"sensor {names[codes[i]]!r} has two readings at ts={float(ts[i])!r} "
                    f"(first at {self.unit} {int(where[run_start[i]])})",
                )
                for i in dups[:_MAX_SKIPS]
            ]
            if not self.skip_bad:
                raise self.error(*found[0])
            self.skipped += len(dups)
            self.skips = sorted([*self.skips, *found])[:_MAX_SKIPS]
            keep = ~same
            order, codes, ts, where = order[keep], codes[keep], ts[keep], where[keep]
        return codes, ts, values[order], where

    def result(self) -> SensorData:
        if self._parts:
            codes, ts, values, _ = self._columns()
        else:
            codes, ts = np.zeros(0, np.int64), np.zeros(0)
            values = np.zeros((0, self.num_features))
        if len(codes) == 0:
            if self.rows == 0:
                raise ValueError(f"{self.path}: no data rows")
            where, problem = self.skips[0]
            raise ValueError(
                f"{self.path}: no good data rows: all {self.rows} were bad, "
                f"first at {self.unit} {where}: {problem}"
            )
        names = list(self.ids)
        cuts = np.flatnonzero(np.diff(codes)) + 1
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), len(codes)]
        series = {
            names[codes[a]]: (ts[a:b], values[a:b]) for a, b in zip(starts, ends, strict=True)
        }
        return SensorData(
            series=series,
            rows=self.rows,
            skipped=self.skipped,
            first_skips=[f"{self.unit} {w}: {problem}" for w, problem in self.skips],
            num_features=self.num_features,
            path=str(self.path),
        )


# --- CSV ------------------------------------------------------------------------------


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
        out = _Collector(p, "line", nvals, skip_bad)
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


def _csv_chunk(out: _Collector, rows: list[list[str]], lines: np.ndarray) -> None:
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
        parsed = {text: _ts_or_nan(text) for text in dict.fromkeys(texts)}
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


def _ts_or_nan(text: str) -> float:
    try:
        return parse_ts(text)
    except ValueError:
        return math.nan


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


def parse_ts(text: str) -> float:
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


# --- Parquet --------------------------------------------------------------------------


def _pyarrow() -> tuple[ModuleType, ModuleType, ModuleType]:
    """pyarrow, pyarrow.compute, pyarrow.parquet: imported only when a Parquet file is read."""
    try:
        return (
            importlib.import_module("pyarrow"),
            importlib.import_module("pyarrow.compute"),
            importlib.import_module("pyarrow.parquet"),
        )
    except ImportError as exc:
        raise MissingDependencyError(
            "reading Parquet needs pyarrow: pip install 'streamcast[parquet]'"
        ) from exc


def _read_parquet(p: Path, skip_bad: bool) -> SensorData:
    pa, pc, pq = _pyarrow()
    with p.open("rb") as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:  # pyarrow's errors do not name the file
            raise ValueError(f"{p}: not a readable Parquet file: {exc}") from None
        nvals = _check_columns(p, pa, pf.schema_arrow)
        out = _Collector(p, "row", nvals, skip_bad)
        columns = ["sensor", "ts"] + [f"v{j}" for j in range(1, nvals + 1)]
        offset = 0
        # Batch by batch (within row groups): memory holds one decoded batch at a time
        # besides the numeric columns collected so far.
        for batch in pf.iter_batches(batch_size=_CHUNK, columns=columns):
            n = batch.num_rows
            codes = _arrow_codes(pa, pc, batch.column(0), out.ids)
            bad = codes == out.ids[""]
            ts = _arrow_ts(pa, pc, batch.column(1))
            bad |= ~np.isfinite(ts)
            values = np.empty((n, nvals))
            for j in range(nvals):
                col = pc.cast(_decoded(pa, batch.column(2 + j)), pa.float64(), safe=False)
                values[:, j] = col.fill_null(math.nan).to_numpy(zero_copy_only=False)
            bad |= np.isinf(values).any(axis=1)
            where = np.arange(offset + 1, offset + n + 1, dtype=np.int64)

            def reason_at(i: int, batch: Any = batch) -> str:
                return _arrow_row_problem([col[i].as_py() for col in batch.columns])

            out.add(codes, ts, values, where, bad, reason_at)
            offset += n
    return out.result()


def _arrow_row_problem(raw: list[Any]) -> str:
    """Why a Parquet row (as Python values) is bad: the first problem, in column order."""
    sensor, ts, *values = raw
    if sensor is None or not str(sensor).strip():
        return "empty sensor id"
    if ts is None:
        return "ts is missing"
    if isinstance(ts, str):
        try:
            parse_ts(ts)
        except ValueError as exc:
            return str(exc)
    elif not isinstance(ts, datetime) and not math.isfinite(float(ts)):
        return f"ts {ts!r} is not finite"
    for j, value in enumerate(values, start=1):
        if value is not None and math.isinf(float(value)):
            return f"v{j}: value {value!r} is not finite"
    return "bad row"  # not reached: the caller only asks about bad rows


def _check_columns(p: Path, pa: Any, schema: Any) -> int:
    """The number of value columns; a wrong set of columns or types is an error."""
    names = list(schema.names)
    nvals = max((int(c[1:]) for c in names if c[:1] == "v" and c[1:].isdigit()), default=1)
    expected = ["sensor", "ts"] + [f"v{j}" for j in range(1, nvals + 1)]
    missing = [c for c in expected if c not in names]
    extra = [c for c in names if c not in expected]
    doubled = sorted({c for c in names if names.count(c) > 1})
    if missing or extra or doubled:
        said = [
            f"{what} {', '.join(map(repr, cols))}"
            for what, cols in (("missing", missing), ("unexpected", extra), ("repeated", doubled))
            if cols
        ]
        raise ValueError(f"{p}: columns {'; '.join(said)}; expected sensor, ts, v1[, v2...]")
    types = pa.types
    for name in expected:
        t = schema.field(name).type
        t = t.value_type if types.is_dictionary(t) else t
        text = types.is_string(t) or types.is_large_string(t) or _is_string_view(types, t)
        number = types.is_integer(t) or types.is_floating(t) or types.is_decimal(t)
        if name == "sensor":
            ok, want = text or types.is_integer(t), "strings or integers"
        elif name == "ts":
            ok = number or text or types.is_timestamp(t)
            want = "epoch seconds, timestamps or ISO 8601 strings"
        else:
            ok, want = number, "numbers"
        if not ok:
            raise ValueError(f"{p}: column {name!r} has type {t}; expected {want}")
    return nvals


def _is_string_view(types: Any, t: Any) -> bool:
    return hasattr(types, "is_string_view") and bool(types.is_string_view(t))  # pyarrow >= 16


def _decoded(pa: Any, arr: Any) -> Any:
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def _distinct(pa: Any, pc: Any, arr: Any) -> tuple[list[Any], np.ndarray]:
    """An Arrow column as (distinct values, index per row; -1 for null), so Python code
    runs once per distinct value, not once per row."""
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    indices = np.asarray(arr.indices.fill_null(-1).to_numpy(zero_copy_only=False), np.int64)
    return arr.dictionary.to_pylist(), indices


def _arrow_codes(pa: Any, pc: Any, arr: Any, ids: dict[str, int]) -> np.ndarray:
    """Sensor codes of a string or integer column; null or blank gets the code of ``""``."""
    distinct, indices = _distinct(pa, pc, arr)
    keys = ["" if v is None else str(v).strip() for v in distinct] + [""]  # [-1]: null
    lut = np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)
    codes: np.ndarray = lut[indices]
    return codes


def _arrow_ts(pa: Any, pc: Any, arr: Any) -> np.ndarray:
    """Epoch seconds of a ts column, NaN where null or not a time (the caller marks those)."""
    types = pa.types
    t = arr.type.value_type if types.is_dictionary(arr.type) else arr.type
    if not (types.is_integer(t) or types.is_floating(t) or types.is_decimal(t)):
        if not types.is_timestamp(t):  # text, parsed as in a CSV
            distinct, indices = _distinct(pa, pc, arr)
            parsed = [math.nan if v is None else _ts_or_nan(v) for v in distinct]
            seconds: np.ndarray = np.array([*parsed, math.nan])[indices]
            return seconds
        arr = _decoded(pa, arr)
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        ticks = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        per_s = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
        if per_s == 1_000_000_000 and not np.any(ticks % 1000):
            ticks, per_s = ticks // 1000, 1_000_000
        if per_s <= 1_000_000:  # exact ticks, one correctly rounded division: as ISO text gives
            seconds = ticks.astype(np.float64) / per_s
        else:
            whole, part = np.divmod(ticks, per_s)
            seconds = whole.astype(np.float64) + part / per_s
        seconds[~valid] = math.nan
        return seconds
    col = pc.cast(_decoded(pa, arr), pa.float64(), safe=False).fill_null(math.nan)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
