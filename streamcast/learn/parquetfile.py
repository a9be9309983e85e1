"""Parquet history files (``.parquet``/``.pq``): columns ``sensor, ts, v1[, v2...]``.

pyarrow is an optional extra, imported only when a Parquet file is read, so reading CSV
never needs it. Batches are turned into numpy columns with Arrow compute, and
Python code runs once per distinct sensor or text time, not once per row; a bad row is
named by its 1-based data row.
"""

from __future__ import annotations

import importlib
import math
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from streamcast.learn.sensordata import (
    Collector,
    MissingDependencyError,
    SensorData,
    parse_ts,
    ts_or_nan,
)

_CHUNK = 1 << 16  # rows per batch: amortises per-call overhead, bounds memory


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


def read_parquet(p: Path, *, skip_bad: bool) -> SensorData:
    """The readings of a Parquet file; a bad row raises ValueError naming its row."""
    pa, pc, pq = _pyarrow()
    with p.open("rb") as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:  # pyarrow's errors do not name the file
            raise ValueError(f"{p}: not a readable Parquet file: {exc}") from None
        nvals = _check_columns(p, pa, pf.schema_arrow)
        out = Collector(p, "row", nvals, skip_bad)
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
            parsed = [math.nan if v is None else ts_or_nan(v) for v in distinct]
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
