"""Does seeding the LSTM states from the latest truth help? ``truth`` vs ``zeros`` vs ``carry``.

``model.seeding`` decides the LSTM layers' initial (h, c) before every window: ``truth``
(the default) projects the reading just before the 96-step window through a learned
layer; ``zeros`` starts from zeros (no seeder at all); ``carry`` starts each sensor from
the final states of its previous window and falls back to the truth seed where there is
none (a sensor's first window, after a gap). This bench measures the three on the same
data, budget and random seeds.

Data sets (``bench/data/README.md`` gives their sources, licences and conversion):

- ``sim``: the simulator (``SensorFleet``: 16 sensors, fleet seed 7, 15-minute steps,
  35 days), horizon 96 (a day);
- ``cycling``: one bike ride's power meter (v1, W) and speed (v2, m/s) every second,
  73 minutes, horizon 30 (half a minute);
- ``glucose``: a continuous glucose monitor every 5 minutes, 52 days (v1 the sensor
  current isig, nA; v2 glucose, mg/dL), in gap-free pieces of hours to 3 days as the
  sensors were changed, horizon 12 (an hour);
- ``daily``: Seattle daily maximum and minimum temperature, 2012-2015 (°C), horizon 14.

Every data set is cut in time at ``--train-fraction`` (0.75) of its readings. The
models train on the part before the cut (``streamcast.learn.fit.train``: its own
chronological 80/20 split for early stopping, patience 8, ``threads`` 1, ``max_seconds``
the budget); ``streamcast.stream.backtest.run_backtest`` then scores every forecast
issued at or after the cut, at ``--stride`` (1; carry continues each sensor's states
one reading at a time there), with the readings before it as context, in the
data's units, against persistence and seasonal naive (period ``min(horizon, 96)``).
The window is 96 steps and the model the project default (units 16, 16; dropout 0.2)
without the calendar (``model.calendar`` off): how the states are seeded is measured alone.

``truth`` and ``carry`` train the same graph (in carry mode the seeder is the cold-start
seed; carried states replace it only at inference, ``streamcast.model.graph``), so by
default (``--carry-fit shared``) one fit per seed is saved twice, once as ``truth`` and
once as ``carry``: the two differ only in how the states are seeded when the model runs,
which is what is being measured, and the budget goes to longer fits.
``--carry-fit own`` fits carry separately with the same seed instead.

Budget: ``--max-seconds`` per fit (default 55) x 2 fits per seed and data set
(``truth``/``carry`` and ``zeros``) x 3 seeds x 4 data sets, 22 minutes of fitting at
most; with the early stops and the backtests (1-6 s each) the defaults ran in 17.7
minutes on one thread of a shared 2-core machine.

Prints a markdown table: per data set, each mode's MAE as mean ± std over the seeds
(overall and per horizon bucket), persistence and seasonal naive alongside, each mode's
MAE relative to persistence (comparable across data sets) and skill = 1 - that ratio,
and each mode's MAE against truth's, paired by seed. It also probes every seeded fit
directly: the same weights run 512 of the backtest's windows from the truth seed, from
zero states and from random states, and the forecasts' mean absolute change (over the
backtest MAE) says how much the initial states can matter at all after 96 steps.
``--out`` gets everything as JSON,
written again after every backtest so an interrupted run keeps what it measured.

    python -m bench.seeding [--seeds 3] [--max-seconds 55] [--datasets sim,cycling,glucose,daily]
                            [--out results.json] [--carry-fit shared|own]
    python -m bench.seeding --report results.json   # the tables of a saved run again
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # numpy too: every fit is budgeted on one core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import logging
import math
import platform
import shutil
import statistics
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
from streamcast.config import SEEDING_MODES, ModelSpec, TrainingSettings
from streamcast.learn.datafiles import load_csv
from streamcast.learn.examples import make_examples, split_at_gaps
from streamcast.sim.fleet import SensorFleet

DATA_DIR = Path(__file__).resolve().parent / "data"
NUM_STEPS = 96  # the mission's window
CALENDAR = False  # the seeding alone: no calendar inputs (``model.calendar``)
MODES: tuple[str, ...] = ("truth", "zeros", "carry")
SIM_SEED = 7
SIM_SENSORS = 16
SIM_DAYS = 35
SIM_STEP_S = 900.0

Data = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DataSet:
    name: str
    horizon: int
    units: str  # the values' units, for the table
    describe: str
    load: Callable[[], Data]


def _sim() -> Data:
    fleet = SensorFleet(SIM_SENSORS, seed=SIM_SEED, step_s=SIM_STEP_S)
    ts, values = fleet.series(SIM_DAYS * int(86_400 / SIM_STEP_S))
    return {sid: (ts.copy(), values[i]) for i, sid in enumerate(fleet.sensor_ids)}


def _file(name: str) -> Callable[[], Data]:
    return lambda: load_csv(DATA_DIR / name)


DATASETS: dict[str, DataSet] = {
    d.name: d
    for d in (
        DataSet(
            "sim",
            96,
            "simulated",
            f"SensorFleet: {SIM_SENSORS} sensors, 15 min, {SIM_DAYS} days",
            _sim,
        ),
        DataSet(
            "cycling",
            30,
            "v1 W, v2 m/s",
            "one bike ride: power (v1) / speed (v2), every second, 73 minutes",
            _file("cycling_1s.csv"),
        ),
        DataSet(
            "glucose",
            12,
            "v1 nA, v2 mg/dL",
            "CGM isig (v1) / glucose (v2), 5 min, 52 days, many gaps",
            _file("glucose_cgm.csv"),
        ),
        DataSet(
            "daily",
            14,
            "°C",
            "Seattle daily max (v1) / min (v2) temperature, 2012-2015",
            _file("seattle_daily.csv"),
        ),
    )
}


# --------------------------------------------------------------------------- data


def cut_time(data: Data, fraction: float) -> float:
    """The time before which ``fraction`` of all readings lie: the train/backtest cut."""
    ts = np.sort(np.concatenate([t for t, _ in data.values()]))
    return float(ts[min(len(ts) - 1, int(len(ts) * fraction))])


def training_series(
    data: Data, cut: float, gap_factor: float = 3.0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(values, timestamps) of every gap-free piece before ``cut`` (as ``streamcast train``)."""
    series, stamps = [], []
    for name in sorted(data):
        ts, values = data[name]
        keep = ts < cut
        for t, v in split_at_gaps(ts[keep], values[keep], gap_factor):
            series.append(v)
            stamps.append(t)
    return series, stamps


# --------------------------------------------------------------------------- runs


def fit(
    mode: str,
    horizon: int,
    series: Sequence[np.ndarray],
    stamps: Sequence[np.ndarray],
    seed: int,
    max_seconds: float,
) -> tuple[Any, ModelSpec, dict[str, Any]]:
    from streamcast.learn.fit import train
    from streamcast.model.runtime import keras

    keras.backend.clear_session()
    cfg = ModelSpec(
        num_steps=NUM_STEPS, num_features=2, horizon=horizon, seeding=mode, calendar=CALENDAR
    )
    settings = TrainingSettings(random_seed=seed, max_seconds=max_seconds, threads=1)
    result = train(cfg, series, settings, progress=False, timestamps=stamps)
    info = {
        "seconds": round(result.seconds, 1),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "stopped_by": result.stopped_by,
        "train_examples": result.data_range.train_examples,
        "val_examples": result.data_range.val_examples,
        "val_mae_scaled": result.metrics.score("model").mae,
        "val_persistence_mae_scaled": result.metrics.score("persistence").mae,
    }
    meta = {"metrics": result.metrics.as_dict(), "data_range": result.data_range.as_dict()}
    return result.model, cfg, info | {"_meta": meta}


def save(model: Any, cfg: ModelSpec, meta: Mapping[str, Any], path: Path) -> None:
    from streamcast.learn.registry import ModelRegistry

    ModelRegistry(path).save(model, cfg, metrics=meta["metrics"], data_range=meta["data_range"])


def backtest(data: Data, registry: Path, start: float, stride: int) -> tuple[dict[str, Any], float]:
    from streamcast.stream.backtest import run_backtest

    began = time.monotonic()
    report = run_backtest(data, registry, stride=stride, start=start)
    return report.as_dict(), time.monotonic() - began


def probe_windows(
    data: Data, cut: float, horizon: int, n: int = 512, gap_factor: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` (window, truth) pairs whose window ends at or after ``cut``, drawn with a
    fixed seed from every gap-free piece: the backtest's windows, a sample of them."""
    windows, truths = [], []
    for name in sorted(data):
        for ts, values in split_at_gaps(*data[name], gap_factor):
            ex = make_examples(values, NUM_STEPS, horizon)
            if len(ex) != len(ts) - NUM_STEPS - horizon:
                continue  # a piece with a missing value: its examples no longer line up
            ends = ts[NUM_STEPS : NUM_STEPS + len(ex)]
            keep = ends >= cut
            windows.append(ex.window[keep])
            truths.append(ex.truth[keep])
    window = np.concatenate(windows) if windows else np.zeros((0, NUM_STEPS, 2), np.float32)
    truth = np.concatenate(truths) if truths else np.zeros((0, 2), np.float32)
    if len(window) > n:
        pick = np.sort(np.random.default_rng(0).choice(len(window), n, replace=False))
        window, truth = window[pick], truth[pick]
    return window, truth


def state_sensitivity(
    model: Any, cfg: ModelSpec, window: np.ndarray, truth: np.ndarray
) -> dict[str, float] | None:
    """How far a seeded model's forecasts move when its LSTMs start from other states.

    The same weights run the same windows three ways: seeded from the truth (what
    ``truth`` serves), from zero states, and from random states (N(0, 1) for every h and
    c; the seeds' mean magnitude is about 0.3-0.5); the mean absolute change of the forecast,
    in the data's units, next to the mean absolute forecast. None for ``zeros`` (no
    seeder to replace).
    """
    if cfg.seeding == "zeros" or not len(window):
        return None
    from streamcast.model.predictor import Predictor

    carried = cfg.model_copy(update={"seeding": "carry"})
    predictor = Predictor(model, carried, max_batch=256)
    n, width = len(window), carried.state_width
    everyone = np.ones(n, bool)
    seeded = predictor.predict(window, truth).forecast
    zero = predictor.predict(window, truth, np.zeros((n, width), np.float32), everyone)
    noise = np.random.default_rng(1).standard_normal((n, width)).astype(np.float32)
    random = predictor.predict(window, truth, noise, everyone)
    return {
        "windows": n,
        "mean_abs_forecast": float(np.abs(seeded).mean()),
        "zero_state_change": float(np.abs(seeded - zero.forecast).mean()),
        "random_state_change": float(np.abs(seeded - random.forecast).mean()),
    }


# --------------------------------------------------------------------------- statistics


def _mean_std(xs: Sequence[float]) -> dict[str, float | int | None]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per mode: MAE overall and per horizon bucket, MAE / persistence, skill, each as
    mean/std/min/max over seeds; the baselines (the same for every run) once; and each
    mode's MAE against truth's paired by seed, in percent."""
    done = [r for r in runs if r.get("backtest")]
    if not done:
        return {}
    first = done[0]["backtest"]
    buckets = [b["steps"] for b in first["model"]["by_horizon"]]
    out: dict[str, Any] = {"buckets": buckets, "windows": first.get("windows"), "baselines": {}}
    for base in ("persistence", "seasonal_naive"):
        b = first[base]
        out["baselines"][base] = {
            "mae": b["mae"],
            "rel_mae": b["mae"] / first["persistence"]["mae"],
            "by_horizon": {h["steps"]: h["mae"] for h in b["by_horizon"]},
            "by_feature": {f["feature"]: f["mae"] for f in b["by_feature"]},
        }
    truth_by_seed = {r["seed"]: r["backtest"]["model"]["mae"] for r in done if r["mode"] == "truth"}
    modes: dict[str, Any] = {}
    for mode in MODES:
        mine = [r for r in done if r["mode"] == mode]
        if not mine:
            continue
        maes = [r["backtest"]["model"]["mae"] for r in mine]
        rels = [r["backtest"]["model"]["mae"] / r["backtest"]["persistence"]["mae"] for r in mine]
        modes[mode] = {
            "seeds": [r["seed"] for r in mine],
            "mae": _mean_std(maes),
            "rel_mae": _mean_std(rels),
            "skill": _mean_std([r["backtest"]["skill"] for r in mine]),
            "by_horizon": {
                b: _mean_std(
                    [
                        next(
                            h["mae"]
                            for h in r["backtest"]["model"]["by_horizon"]
                            if h["steps"] == b
                        )
                        for r in mine
                    ]
                )
                for b in buckets
            },
            "by_feature": {
                f["feature"]: _mean_std(
                    [
                        next(
                            g["mae"]
                            for g in r["backtest"]["model"]["by_feature"]
                            if g["feature"] == f["feature"]
                        )
                        for r in mine
                    ]
                )
                for f in first["model"]["by_feature"]
            },
            "vs_truth_pct": _mean_std(
                [
                    100.0 * (r["backtest"]["model"]["mae"] / truth_by_seed[r["seed"]] - 1.0)
                    for r in mine
                    if r["seed"] in truth_by_seed
                ]
            ),
            "epochs": [r["fit"]["epochs"] for r in mine],
            "stopped_by": [r["fit"]["stopped_by"] for r in mine],
            # Forecast change if the seeded states were zeros / random, over model MAE.
            "zero_state_change_rel": _mean_std(
                [
                    r["fit"]["state_sensitivity"]["zero_state_change"]
                    / r["backtest"]["model"]["mae"]
                    for r in mine
                    if r["fit"].get("state_sensitivity")
                ]
            ),
            "random_state_change_rel": _mean_std(
                [
                    r["fit"]["state_sensitivity"]["random_state_change"]
                    / r["backtest"]["model"]["mae"]
                    for r in mine
                    if r["fit"].get("state_sensitivity")
                ]
            ),
        }
    out["modes"] = modes
    ranked = [m for m in modes if modes[m]["mae"]["mean"] is not None]
    if ranked:
        best = min(ranked, key=lambda m: modes[m]["mae"]["mean"])
        out["best"] = best
        # Clear: every seed of the best beats every seed of each other mode.
        out["clear"] = all(
            modes[best]["mae"]["max"] < modes[m]["mae"]["min"] for m in ranked if m != best
        )
    return out


def overall(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Across data sets: each mode's mean MAE / persistence and how often it measured best."""
    out: dict[str, Any] = {}
    for mode in MODES:
        rels = [
            s["modes"][mode]["rel_mae"]["mean"]
            for s in summaries.values()
            if s and mode in s.get("modes", {})
        ]
        out[mode] = {
            "mean_rel_mae": statistics.fmean(rels) if rels else None,
            "lowest_on": [n for n, s in summaries.items() if s and s.get("best") == mode],
            "clearly_best_on": [
                n for n, s in summaries.items() if s and s.get("best") == mode and s.get("clear")
            ],
            "datasets": len(rels),
        }
    scored = [m for m in MODES if out[m]["mean_rel_mae"] is not None]
    if scored:
        out["best"] = min(scored, key=lambda m: out[m]["mean_rel_mae"])
        out["clear"] = bool(out[out["best"]]["clearly_best_on"])
    return out


# --------------------------------------------------------------------------- tables


def _pm(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _best(s: Mapping[str, Any]) -> str:
    """The mode with the lowest mean; "(tie)" unless its seeds all beat every other's."""
    if not s.get("best"):
        return "-"
    return s["best"] if s.get("clear") else f"{s['best']} (tie)"


def _sci(s: Mapping[str, Any] | None) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.1e} ({s['max']:.1e})"


def _g(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_tables(result: Mapping[str, Any]) -> str:
    lines: list[str] = []
    sums = {n: d.get("summary") for n, d in result["datasets"].items()}
    seeds = result["meta"]["seeds"]
    lines += [
        f"MAE relative to persistence (lower is better; < 1 beats persistence), mean ± std "
        f"over {len(seeds)} seed(s); skill = 1 - that ratio. Lowest: the mode with the lowest "
        'mean, "(tie)" unless all its seeds beat all seeds of both other modes.',
        "",
        "| data set | horizon | windows | truth | zeros | carry | seasonal naive | lowest |",
        "| --- | ---: | ---: | --- | --- | --- | ---: | --- |",
    ]
    for name, s in sums.items():
        if not s:
            continue
        ds = result["datasets"][name]
        cells = [_pm(s["modes"].get(m, {}).get("rel_mae")) for m in MODES]
        seas = s["baselines"]["seasonal_naive"]["rel_mae"]
        lines.append(
            f"| {name} | {ds['horizon']} | {s.get('windows') or '-'} | "
            + " | ".join(cells)
            + f" | {_g(seas)} | {_best(s)} |"
        )
    ov = result.get("overall", {})
    if ov:
        lines.append(
            "| **mean over data sets** | | | "
            + " | ".join(_g(ov[m]["mean_rel_mae"]) for m in MODES)
            + f" | | **{_best(ov)}** |"
        )
    lines += [
        "",
        "Each mode's MAE against truth's with the same seed, in % (negative: better than "
        "truth), mean ± std:",
        "",
        "| data set | zeros vs truth | carry vs truth | truth's forecast moved by zero states "
        "| by random states |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, s in sums.items():
        if not s:
            continue
        cells = [_pm(s["modes"].get(m, {}).get("vs_truth_pct"), 1) for m in ("zeros", "carry")]
        truth = s["modes"].get("truth", {})
        cells += [_sci(truth.get(k)) for k in ("zero_state_change_rel", "random_state_change_rel")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The last two columns: the truth models' forecasts run again from zero and from random "
        "(N(0, 1)) initial states instead of the seed, mean absolute change over the model's "
        "backtest MAE (mean over seeds, max in brackets).",
    ]
    for name, s in sums.items():
        if not s:
            continue
        ds = result["datasets"][name]
        base = s["baselines"]
        lines += [
            "",
            f"**{name}**: {ds['describe']}; MAE in the data's units ({ds['units']}), both "
            f"values pooled; {s.get('windows') or '?'} windows from "
            f"{ds['test_from']}; horizon {ds['horizon']} steps.",
            "",
            "| steps | persistence | seasonal naive | truth | zeros | carry |",
            "| --- | ---: | ---: | --- | --- | --- |",
        ]
        rows = [("all", base["persistence"]["mae"], base["seasonal_naive"]["mae"], "mae")]
        rows += [
            (b, base["persistence"]["by_horizon"][b], base["seasonal_naive"]["by_horizon"][b], b)
            for b in s["buckets"]
        ]
        for label, p, q, key in rows:
            cells = []
            for m in MODES:
                mm = s["modes"].get(m)
                cells.append(
                    _pm(mm["mae"] if key == "mae" else mm["by_horizon"][key]) if mm else "-"
                )
            lines.append(f"| {label} | {_g(p)} | {_g(q)} | " + " | ".join(cells) + " |")
        cells = [_pm(s["modes"].get(m, {}).get("skill")) for m in MODES]
        lines.append(
            "| skill | 0 | "
            + _g(1 - base["seasonal_naive"]["rel_mae"])
            + " | "
            + " | ".join(cells)
            + " |"
        )
        fits = []
        for m in MODES:
            mm = s["modes"].get(m)
            if mm:
                fits.append(f"{m} {mm['epochs']} ({', '.join(sorted(set(mm['stopped_by'])))})")
        lines.append("")
        lines.append("Epochs per seed: " + "; ".join(fits) + ".")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="random seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--max-seconds", type=float, default=55.0, help="training budget per fit (default 55)"
    )
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}"
    )
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.75,
        help="share of each data set's readings (the earliest) to train on (default 0.75)",
    )
    parser.add_argument("--stride", type=int, default=1, help="backtest forecast stride")
    parser.add_argument(
        "--carry-fit",
        choices=("shared", "own"),
        default="shared",
        help="carry reuses truth's fit (shared, default) or is fitted on its own",
    )
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="fit and report the fits only, no backtest (to check the training part)",
    )
    parser.add_argument("--keep", type=Path, help="keep the registries under this folder")
    parser.add_argument(
        "--report", type=Path, help="print the tables of an earlier run's --out JSON; run nothing"
    )
    args = parser.parse_args(argv)
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        for d in saved["datasets"].values():
            d["summary"] = summarise(d["runs"])
        saved["overall"] = overall({n: d["summary"] for n, d in saved["datasets"].items()})
        print(format_tables(saved))
        print(f"\nwall time {saved['meta'].get('wall_s', 0) / 60:.1f} min")
        return 0
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        parser.error(f"unknown data set(s) {unknown}; choose from {', '.join(DATASETS)}")
    if not set(MODES) <= set(SEEDING_MODES):
        raise SystemExit(f"this streamcast has seeding modes {SEEDING_MODES}")
    if not args.train_only:
        try:
            import streamcast.stream.backtest  # noqa: F401
        except ImportError as exc:
            raise SystemExit(
                f"streamcast.stream.backtest is missing ({exc}); try --train-only"
            ) from None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # predict's retracing notes

    from streamcast.learn.fit import limit_threads

    limit_threads(1)
    seeds = list(range(args.seeds))
    started = time.monotonic()
    result: dict[str, Any] = {
        "meta": {
            "command": " ".join(["python -m bench.seeding", *(argv or sys.argv[1:])]),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "seeds": seeds,
            "max_seconds": args.max_seconds,
            "train_fraction": args.train_fraction,
            "stride": args.stride,
            "carry_fit": args.carry_fit,
            "num_steps": NUM_STEPS,
            "model": ModelSpec(calendar=CALENDAR).model_dump(
                mode="json", exclude={"horizon", "seeding"}
            ),
            "threads": 1,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        },
        "datasets": {},
    }
    root = args.keep or Path(tempfile.mkdtemp(prefix="seeding-bench-"))
    try:
        loaded: dict[
            str,
            tuple[Data, float, list[np.ndarray], list[np.ndarray], tuple[np.ndarray, np.ndarray]],
        ] = {}
        for name in names:
            ds = DATASETS[name]
            data = ds.load()
            cut = cut_time(data, args.train_fraction)
            series, stamps = training_series(data, cut)
            probe = probe_windows(data, cut, ds.horizon)
            loaded[name] = (data, cut, series, stamps, probe)
            result["datasets"][name] = {
                "describe": ds.describe,
                "units": ds.units,
                "horizon": ds.horizon,
                "sensors": len(data),
                "readings": int(sum(len(t) for t, _ in data.values())),
                "train_readings": int(sum(len(s) for s in series)),
                "train_pieces": len(series),
                "test_from": iso_minutes(cut),
                "runs": [],
            }
            print(
                f"{name}: {result['datasets'][name]['readings']} readings, "
                f"{len(series)} training pieces ({result['datasets'][name]['train_readings']} "
                f"readings) before {iso_minutes(cut)}",
                flush=True,
            )
        for seed in seeds:
            for name in names:
                ds = DATASETS[name]
                data, cut, series, stamps, probe = loaded[name]
                fitted: dict[str, tuple[Any, ModelSpec, dict[str, Any]]] = {}
                for mode in MODES:
                    if mode == "carry" and args.carry_fit == "shared":
                        model, cfg, info = fitted["truth"]
                        cfg = cfg.model_copy(update={"seeding": "carry"})
                        info = {**info, "shared_with": "truth"}
                    else:
                        model, cfg, info = fit(
                            mode, ds.horizon, series, stamps, seed, args.max_seconds
                        )
                        info["state_sensitivity"] = state_sensitivity(model, cfg, *probe)
                        fitted[mode] = (model, cfg, info)
                    meta = info["_meta"]
                    run: dict[str, Any] = {
                        "seed": seed,
                        "mode": mode,
                        "fit": {k: v for k, v in info.items() if k != "_meta"},
                    }
                    line = (
                        f"[{time.monotonic() - started:6.0f}s] {name} seed {seed} {mode}: "
                        f"{info['epochs']} epochs ({info['stopped_by']}, {info['seconds']}s), "
                        f"val MAE {info['val_mae_scaled']:.3f} vs persistence "
                        f"{info['val_persistence_mae_scaled']:.3f} (scaled)"
                    )
                    if not args.train_only:
                        registry = root / name / f"{mode}-seed{seed}"
                        save(model, cfg, meta, registry)
                        report, secs = backtest(data, registry, cut, args.stride)
                        run["backtest"] = report
                        run["backtest_seconds"] = round(secs, 1)
                        line += (
                            f"; backtest {report.get('windows')} windows in {secs:.0f}s: MAE "
                            f"{report['model']['mae']:.4g} vs persistence "
                            f"{report['persistence']['mae']:.4g} (skill {report['skill']:.3f})"
                        )
                    print(line, flush=True)
                    result["datasets"][name]["runs"].append(run)
                    result["datasets"][name]["summary"] = summarise(
                        result["datasets"][name]["runs"]
                    )
                    result["overall"] = overall(
                        {n: d.get("summary", {}) for n, d in result["datasets"].items()}
                    )
                    result["meta"]["wall_s"] = round(time.monotonic() - started, 1)
                    write_json(args.out, result)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    result["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    write_json(args.out, result)
    if not args.train_only:
        print()
        print(format_tables(result))
    print(f"\nwall time {result['meta']['wall_s'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
