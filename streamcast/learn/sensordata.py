"""What both history-file formats share: the collector they fill and what it yields.

The CSV and Parquet readers (``csvfile``, ``parquetfile``) turn their rows into column
chunks; ``Collector`` checks and counts them the same way for both, so a bad row, a
duplicate reading or ``skip_bad`` reads the same whatever the file's format. ``parse_ts``
lives here because both formats accept ISO 8601 text times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

_MAX_SKIPS = 5  # reasons kept for the summary of a skip_bad read


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


class Collector:
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


def ts_or_nan(text: str) -> float:
    """``parse_ts``, or NaN for a bad time, so a column parses without raising."""
    try:
        return parse_ts(text)
    except ValueError:
        return math.nan
