"""Forecast quality against strong baselines: streamcast vs LightGBM, N-HiTS and naives.

Every method forecasts the same ``horizon`` steps from the same origins of the same data
and is scored the same way: MAE in the data's units per value (v1, v2) and pooled.

Methods:

- ``streamcast`` (``calendar`` off, and on, the default): the project's own trainer
  (``streamcast.learn.fit.train``; ``ModelSpec(num_steps=96, units=--units,
  seeding="truth")``, ``TrainingSettings(max_seconds=--max-seconds, threads=2)``), saved
  with ``ModelRegistry`` and run by ``streamcast.stream.backtest.run_backtest`` over the
  whole data at stride 1 from the cut on; its forecasts at the common origins are taken
  from ``on_forecasts``. The backtest's own MAE (every origin) is kept in the JSON too.
- ``lightgbm``: a global LightGBM on lags and calendar features (mlforecast), and
  ``nhits``: N-HiTS (neuralforecast), both in ``bench/quality_baselines.py`` (its
  docstring gives their settings), run as a subprocess with ``--baseline-python``, the
  interpreter of a virtualenv with ``bench/requirements-quality.txt``: those packages
  (and torch) never enter the project's environment. ``--skip-baselines`` leaves them out.
- ``seasonal naive``: the value a day earlier; ``weekly naive``: a week earlier.

Data sets (``bench/data/README.md``: sources, licences, conversion):

- ``sim``: the simulator (``SensorFleet``: 16 sensors, fleet seed 7, 15-minute steps,
  35 days), horizon 96 (a day), origins every 8 steps;
- ``traffic``: hourly westbound I-94 traffic volume (v1, vehicles/h) and air temperature
  (v2, °C) at Minneapolis-St Paul, 2017-04-13 to 07-02 (1,915 hours, no gaps), horizon 24,
  origins every 2 steps;
- ``power``: one household's electricity use near Paris, half-hourly means of active
  power (v1, kW) and voltage (v2, V), 2008-08-31 to 10-25 (2,622 half-hours, no gaps),
  horizon 48, origins every 4 steps.

Each set is cut in time at ``--train-fraction`` (0.75) of its readings. streamcast
trains on the readings before the cut; the common origins are every ``stride``-th step
counted back from the last one with a full horizon of truth behind it, down to the cut.
LightGBM and N-HiTS train once on the readings up to the first origin (at most
``stride`` - 1 steps past the cut) and forecast from every origin with the readings up
to it (``cross_validation(refit=False)``). N-HiTS gets ``--nhits-seconds`` (default: the
same as ``--max-seconds``) of training; LightGBM needs seconds. Everything runs with
2 threads.

Prints a markdown table per data set (each method's MAE per value and pooled, its
training seconds) and one of streamcast's wins: for each of its two variants, each
baseline and each value, its MAE relative to the baseline's (< 1: streamcast better).
``--out`` gets everything as JSON, written again after every data set.

    .venv-quality/bin/pip install -r bench/requirements-quality.txt   # once
    .venv/bin/python -m bench.quality [--datasets sim,traffic,power] [--max-seconds 300]
        [--units 32,32] [--patience 8] [--baseline-python .venv-quality/bin/python]
        [--out q.json]
    .venv/bin/python -m bench.quality --report q.json   # the tables of a saved run again
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import iso_minutes, write_json
from streamcast.config import ModelSpec, TrainingSettings
from streamcast.learn.datafiles import load_csv
from streamcast.sim.fleet import SensorFleet

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"
NUM_STEPS = 96
THREADS = 2
DEFAULT_PYTHON = ".venv-quality/bin/python"
STREAMCAST = (
    "streamcast",
    "streamcast+calendar",
    "streamcast+calendar+daily",
    "streamcast+calendar+weekly",
)
#: --variants: (label, calendar, seasonal lag: none, a day or a week)
VARIANTS = {
    "plain": ("streamcast", False, ""),
    "calendar": ("streamcast+calendar", True, ""),
    "daily": ("streamcast+calendar+daily", True, "day"),
    "weekly": ("streamcast+calendar+weekly", True, "week"),
}
BASELINES = ("lightgbm", "nhits", "seasonal naive", "weekly naive")

Data = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DataSet:
    name: str
    horizon: int
    stride: int
    units: tuple[str, str]
    describe: str
    load: Callable[[], Data]


def _sim() -> Data:
    fleet = SensorFleet(16, seed=7, step_s=900.0)
    ts, values = fleet.series(35 * 96)
    return {sid: (ts.copy(), values[i]) for i, sid in enumerate(fleet.sensor_ids)}


def _file(name: str) -> Callable[[], Data]:
    return lambda: load_csv(DATA_DIR / name)


DATASETS: dict[str, DataSet] = {
    d.name: d
    for d in (
        DataSet("sim", 96, 8, ("sim", "sim"), "SensorFleet: 16 sensors, 15 min, 35 days", _sim),
        DataSet(
            "traffic",
            24,
            2,
            ("vehicles/h", "°C"),
            "I-94 traffic volume (v1) / temperature (v2), hourly, 80 days",
            _file("traffic_hourly.csv"),
        ),
        DataSet(
            "power",
            48,
            4,
            ("kW", "V"),
            "household active power (v1) / voltage (v2), 30 min, 55 days",
            _file("household_power_30min.csv"),
        ),
    )
}


# --------------------------------------------------------------------------- data


@dataclass
class Prepared:
    sensors: list[str]
    ts: np.ndarray  # (n,) shared by every sensor
    values: np.ndarray  # (sensors, n, F)
    step_s: float
    season: int  # a day in steps
    week: int
    cut: float
    origins: np.ndarray  # indices into ts
    truth: np.ndarray  # (sensors, origins, horizon, F)


def prepare(ds: DataSet, fraction: float) -> tuple[Data, Prepared]:
    data = ds.load()
    sensors = sorted(data)
    ts = data[sensors[0]][0]
    for s in sensors:
        if not np.array_equal(data[s][0], ts):
            raise ValueError(f"{ds.name}: sensors do not share timestamps")
    steps = np.diff(ts)
    if not np.allclose(steps, steps[0]):
        raise ValueError(f"{ds.name}: not gap-free")
    step_s = float(steps[0])
    values = np.stack([np.asarray(data[s][1], dtype=np.float64) for s in sensors])
    n, h = len(ts), ds.horizon
    cut = float(ts[min(n - 1, int(n * fraction))])
    season, week = round(86_400 / step_s), round(7 * 86_400 / step_s)
    if h > season:
        raise ValueError("the naive baselines need horizon <= a day")
    first = int(np.searchsorted(ts, cut))
    origins = np.arange(n - 1 - h, first - 1, -ds.stride)[::-1]
    if origins[0] < max(week, NUM_STEPS):
        raise ValueError(f"{ds.name}: too little history before the cut for weekly naive")
    idx = origins[:, None] + np.arange(1, h + 1)[None, :]  # (origins, h)
    truth = values[:, idx, :]
    return data, Prepared(sensors, ts, values, step_s, season, week, cut, origins, truth)


def naive(p: Prepared, lag: int) -> np.ndarray:
    h = p.truth.shape[2]
    idx = p.origins[:, None] + np.arange(1, h + 1)[None, :] - lag
    return p.values[:, idx, :]


def score(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    err = np.abs(pred - truth)
    return {
        "mae": float(np.mean(err)),
        "by_feature": [float(x) for x in err.mean(axis=(0, 1, 2))],
        "by_step": [float(x) for x in err.mean(axis=(0, 1, 3))],
        "missing": int(np.isnan(pred).sum()),
    }


# --------------------------------------------------------------------------- streamcast


def run_streamcast(
    data: Data,
    p: Prepared,
    horizon: int,
    calendar: bool,
    units: tuple[int, ...],
    max_seconds: float,
    seed: int,
    workdir: Path,
    patience: int = 8,
    seasonal_lag: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    from streamcast.learn.fit import train
    from streamcast.learn.registry import ModelRegistry
    from streamcast.model.runtime import keras
    from streamcast.stream.backtest import run_backtest

    keras.backend.clear_session()
    cfg = ModelSpec(
        num_steps=NUM_STEPS,
        num_features=p.values.shape[2],
        horizon=horizon,
        units=units,
        seeding="truth",
        calendar=calendar,
        seasonal_lag=seasonal_lag,
    )
    settings = TrainingSettings(
        random_seed=seed, max_seconds=max_seconds, threads=THREADS, patience=patience
    )
    keep = p.ts < p.cut
    series = [p.values[i][keep] for i in range(len(p.sensors))]
    stamps = [p.ts[keep] for _ in p.sensors]
    began = time.monotonic()
    result = train(cfg, series, settings, progress=False, timestamps=stamps)
    fit_s = time.monotonic() - began
    registry = workdir / f"registry-{int(calendar)}-{seasonal_lag}"
    ModelRegistry(registry).save(
        result.model,
        cfg,
        metrics=result.metrics.as_dict(),
        data_range=result.data_range.as_dict(),
    )
    where = {float(p.ts[o]): k for k, o in enumerate(p.origins)}
    row = {s: i for i, s in enumerate(p.sensors)}
    out = np.full(p.truth.shape, np.nan)

    def collect(fc: Any) -> None:
        for j, (s, t) in enumerate(zip(fc.batch.sensors, fc.batch.ts, strict=True)):
            k = where.get(float(t))
            if k is not None:
                out[row[s], k] = fc.values[j]

    began = time.monotonic()
    report = run_backtest(
        data, registry, start=p.cut, season=min(p.season, NUM_STEPS), on_forecasts=collect
    )
    info = {
        "train_seconds": round(fit_s, 1),
        "backtest_seconds": round(time.monotonic() - began, 1),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "stopped_by": result.stopped_by,
        "train_examples": result.data_range.train_examples,
        "val_examples": result.data_range.val_examples,
        "backtest": report.as_dict(),
    }
    return out, info


# --------------------------------------------------------------------------- baselines


def run_baselines(
    p: Prepared,
    horizon: int,
    seconds: float,
    seed: int,
    python: str,
    workdir: Path,
    only: Sequence[str],
) -> tuple[dict[str, np.ndarray], dict[str, float], str]:
    inp, out = workdir / "baselines-in.npz", workdir / "baselines-out.npz"
    np.savez(
        inp,
        ts=p.ts,
        values=p.values,
        sensors=np.array(p.sensors),
        origins=p.origins,
        horizon=np.array(horizon),
        season=np.array(p.season),
        week=np.array(p.week),
        step_s=np.array(p.step_s),
        seconds=np.array(seconds),
        seed=np.array(seed),
        threads=np.array(THREADS),
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [python, str(HERE / "quality_baselines.py"), str(inp), str(out), "--only", ",".join(only)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    log = proc.stderr[-4000:]
    if proc.returncode != 0:
        raise RuntimeError(f"baseline runner failed ({proc.returncode}):\n{log}")
    preds, secs = {}, {}
    with np.load(out) as z:
        for name in only:
            preds[name] = z[name]
            secs[name] = float(z[f"{name}_seconds"])
    return preds, secs, log


# --------------------------------------------------------------------------- tables


def _g(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def format_tables(result: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for name, ds in result["datasets"].items():
        u1, u2 = ds["units"]
        lines += [
            f"**{name}** ({ds['describe']}): horizon {ds['horizon']}, "
            f"{ds['origins']} origins x {ds['sensors']} sensor(s) from {ds['first_origin']} "
            f"(every {ds['stride']} steps); MAE in the data's units.",
            "",
            f"| method | MAE v1 ({u1}) | MAE v2 ({u2}) | pooled | train s |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for m, s in ds["methods"].items():
            v1, v2 = s["by_feature"]
            lines.append(
                f"| {m} | {_g(v1)} | {_g(v2)} | {_g(s['mae'])} | {_g(s.get('train_seconds'), 3)} |"
            )
        lines.append("")
    # wins
    lines += [
        "streamcast's MAE over each baseline's (< 1: streamcast lower; ✓ lower, ✗ not):",
        "",
    ]
    head = "| data set | variant | " + " | ".join(
        f"{b} {f}" for b in BASELINES for f in ("v1", "v2")
    )
    lines += [head + " |", "| --- | --- |" + " ---: |" * (2 * len(BASELINES))]
    for name, ds in result["datasets"].items():
        methods = ds["methods"]
        for variant in STREAMCAST:
            if variant not in methods:
                continue
            cells = []
            for b in BASELINES:
                for f in range(2):
                    if b not in methods:
                        cells.append("-")
                        continue
                    r = methods[variant]["by_feature"][f] / methods[b]["by_feature"][f]
                    cells.append(f"{r:.3f} {'✓' if r < 1 else '✗'}")
            lines.append(f"| {name} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=300.0, help="streamcast's budget per fit (300)"
    )
    parser.add_argument(
        "--nhits-seconds", type=float, help="N-HiTS' training budget (default --max-seconds)"
    )
    parser.add_argument(
        "--units", default="16,16", help="streamcast's LSTM units (16,16, the default model's)"
    )
    parser.add_argument(
        "--patience", type=int, default=8, help="streamcast's early-stopping patience (8)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-fraction", type=float, default=0.75)
    parser.add_argument("--baseline-python", default=DEFAULT_PYTHON)
    parser.add_argument("--skip-baselines", action="store_true", help="naives and streamcast only")
    parser.add_argument(
        "--variants",
        default="plain,calendar,weekly",
        help="streamcast variants: plain, calendar, daily and weekly (calendar + the seasonal "
        "lags of a day or of a week)",
    )
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    parser.add_argument("--report", type=Path, help="print a saved run's tables and exit")
    args = parser.parse_args(argv)

    if args.report:
        print(format_tables(json.loads(args.report.read_text())))
        return 0
    logging.basicConfig(level=logging.WARNING)
    names = [n for n in args.datasets.split(",") if n]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        parser.error(f"unknown data sets: {', '.join(unknown)}")
    units = tuple(int(u) for u in args.units.split(","))
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(set(variants) - set(VARIANTS)))}")
    nhits_s = args.max_seconds if args.nhits_seconds is None else args.nhits_seconds
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "datasets": {},
    }
    began_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        for name in names:
            ds = DATASETS[name]
            began = time.monotonic()
            data, p = prepare(ds, args.train_fraction)
            work = Path(tmp) / name
            work.mkdir()
            methods: dict[str, dict[str, Any]] = {}
            entry: dict[str, Any] = {
                "describe": ds.describe,
                "units": ds.units,
                "horizon": ds.horizon,
                "stride": ds.stride,
                "sensors": len(p.sensors),
                "readings": int(p.values.shape[0] * p.values.shape[1]),
                "cut": iso_minutes(p.cut),
                "first_origin": iso_minutes(float(p.ts[p.origins[0]])),
                "origins": len(p.origins),
                "season": p.season,
                "week": p.week,
                "methods": methods,
                "streamcast": {},
            }
            result["datasets"][name] = entry
            for variant in variants:
                label, calendar, lag = VARIANTS[variant]
                print(f"[{name}] {label}: training ...", file=sys.stderr, flush=True)
                pred, info = run_streamcast(
                    data,
                    p,
                    ds.horizon,
                    calendar,
                    units,
                    args.max_seconds,
                    args.seed,
                    work,
                    args.patience,
                    seasonal_lag={"day": p.season, "week": p.week}.get(lag, 0),
                )
                methods[label] = score(pred, p.truth) | {"train_seconds": info["train_seconds"]}
                entry["streamcast"][label] = info
                print(
                    f"[{name}] {label}: {info['train_seconds']} s, {info['epochs']} epochs "
                    f"({info['stopped_by']}), MAE {methods[label]['by_feature']}",
                    file=sys.stderr,
                    flush=True,
                )
                write_json(args.out, result)
            if not args.skip_baselines:
                print(f"[{name}] lightgbm, nhits ...", file=sys.stderr, flush=True)
                preds, secs, log = run_baselines(
                    p,
                    ds.horizon,
                    nhits_s,
                    args.seed,
                    args.baseline_python,
                    work,
                    ("lightgbm", "nhits"),
                )
                entry["baseline_log"] = log
                for m, pred in preds.items():
                    methods[m] = score(pred, p.truth) | {"train_seconds": round(secs[m], 1)}
                    print(
                        f"[{name}] {m}: {secs[m]:.1f} s (fit + forecasts), "
                        f"MAE {methods[m]['by_feature']}",
                        file=sys.stderr,
                        flush=True,
                    )
            methods["seasonal naive"] = score(naive(p, p.season), p.truth)
            methods["weekly naive"] = score(naive(p, p.week), p.truth)
            entry["seconds"] = round(time.monotonic() - began, 1)
            write_json(args.out, result)
    result["seconds"] = round(time.monotonic() - began_all, 1)
    write_json(args.out, result)
    print(format_tables(result))
    print(f"\nwall time {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
