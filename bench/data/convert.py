"""Rebuild the CSV files in this folder from the files the source packages ship.

Each output is in the history format ``sensor,ts,v1,v2`` (``streamcast.learn.datafiles``).
The conversions are described in README.md beside this file; this script is them, exactly.
Only the standard library is used. Unpack the three wheels somewhere first, e.g.

    pip download --no-deps vega_datasets==0.9.0 bokeh-sampledata==2026.1 -d /tmp/ds
    cd /tmp/ds && for w in *.whl; do unzip -oq "$w" -d x; done
    python bench/data/convert.py /tmp/ds/x
"""

from __future__ import annotations

import argparse
import csv
import gzip
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The glucose file keeps the CGM's first 52 days: the committed data stay small (< 1 MB).
GLUCOSE_UNTIL = datetime(2010, 5, 15)


def _num(text: str) -> str:
    """The source's own text for a value, once checked to be a number."""
    float(text)
    return text.strip()


def _write(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["sensor", "ts", "v1", "v2"])
        out.writerows(rows)
    print(f"{path.name}: {len(rows)} rows, {path.stat().st_size} bytes")


def cycling(root: Path) -> None:
    """One cycling workout, every second: power, W (v1), and speed, m/s (v2)."""
    path = root / "bokeh_sampledata" / "_data" / "cycling.csv.gz"
    rows: list[tuple[str, str, str, str]] = []
    with gzip.open(path, "rt", newline="") as fh:
        for i, r in enumerate(csv.DictReader(fh)):
            # "0 days 01:13:11": time since the start of the ride, rounded so that it runs
            # 0-1 s ahead of the row number (63 times "t, t+2, t+2"). The rows are one second
            # apart: the distance column grows by the speed times 1 s each row (ratio 1.0001
            # over the ride). So ts is the row number, in seconds from the epoch
            # (1970-01-01T00:00:00Z) standing for the start (the ride's date is not given).
            days, clock = r["time"].split(" days ")
            h, m, s = clock.split(":")
            given = int(days) * 86_400 + int(h) * 3_600 + int(m) * 60 + float(s)
            if not 0 <= given - i <= 1:
                raise ValueError(f"cycling: row {i} stamped {given} s")
            rows.append(("ride", str(i), _num(r["power"]), _num(r["speed"])))
    _write(HERE / "cycling_1s.csv", rows)


def seattle_daily(root: Path) -> None:
    """Seattle daily maximum (v1) and minimum (v2) temperature, °C, 2012-2015."""
    path = root / "vega_datasets" / "_data" / "seattle-weather.csv"
    with path.open(newline="") as fh:
        src = list(csv.DictReader(fh))
    rows = [
        (
            "seattle",
            datetime.strptime(r["date"], "%Y/%m/%d").strftime("%Y-%m-%d"),
            _num(r["temp_max"]),
            _num(r["temp_min"]),
        )
        for r in src
    ]
    _write(HERE / "seattle_daily.csv", rows)


def glucose_cgm(root: Path) -> None:
    """A continuous glucose monitor every 5 minutes: sensor current isig, nA (v1), and the
    glucose reading, mg/dL (v2); the first 52 days (to 2010-05-15 00:00)."""
    path = root / "bokeh_sampledata" / "_data" / "CGM.csv.gz"
    rows: list[tuple[str, str, str, str]] = []
    seen: set[str] = set()
    skipped_nil = skipped_dup = 0
    with gzip.open(path, "rt", newline="") as fh:
        for r in csv.DictReader(fh):
            when = datetime.strptime(r["datetime"], "%Y-%m-%d %H:%M:%S")
            if when >= GLUCOSE_UNTIL:
                continue
            if r["isig"] == "nil" or r["glucose"] == "nil":
                skipped_nil += 1
                continue
            ts = when.strftime("%Y-%m-%dT%H:%M")
            if ts in seen:  # a second reading stamped the same minute: the first is kept
                skipped_dup += 1
                continue
            seen.add(ts)
            rows.append(("cgm", ts, _num(r["isig"]), _num(r["glucose"])))
    rows.sort(key=lambda row: row[1])
    print(f"glucose: dropped {skipped_nil} rows with 'nil', {skipped_dup} repeated timestamps")
    _write(HERE / "glucose_cgm.csv", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder the wheels were unpacked into")
    args = parser.parse_args()
    cycling(args.root)
    seattle_daily(args.root)
    glucose_cgm(args.root)


if __name__ == "__main__":
    main()
