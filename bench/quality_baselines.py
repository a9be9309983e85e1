"""The strong baselines of ``bench/quality.py``, run in their own virtualenv.

Not run by hand: ``python -m bench.quality`` writes one data set to an ``.npz`` and runs

    .venv-quality/bin/python bench/quality_baselines.py IN.npz OUT.npz [--only lightgbm,nhits]

with the interpreter of a virtualenv that has ``bench/requirements-quality.txt`` (the
project's own environment never gets mlforecast, LightGBM, neuralforecast or torch).
This file imports nothing from ``streamcast``.

IN.npz: ``ts`` (n,) epoch s shared by every sensor, ``values`` (sensors, n, F),
``sensors``, ``origins`` (indices into ts, every one with a full horizon behind it, at
``stride`` steps, the last at n - 1 - horizon), ``horizon``, ``season`` (a day in steps),
``week``, ``step_s``, ``seconds`` (N-HiTS' training budget), ``seed``, ``threads``.

Both models see each (sensor, feature) as one series of a global model and forecast
``horizon`` steps from every origin with the readings up to it, trained once on the
readings up to the first origin (their ``cross_validation`` with ``refit=False``):

- ``lightgbm``: mlforecast + LightGBM, recursive; lags 1, 2, 3, a quarter, half and a
  whole day, two days and a week, a one-day rolling mean of lag 1; calendar features
  time of day and day of week; each series standardised (``LocalStandardScaler``) and its
  feature index as a static feature; 500 trees, learning rate 0.05, 63 leaves.
- ``nhits``: neuralforecast's N-HiTS, MAE loss, robust scaling per window; input a week
  when that is at most 336 steps, else four days; at most 1,500 steps and ``seconds``
  of training (Lightning's ``max_time``), whichever comes first.

OUT.npz: ``<name>`` (sensors, origins, horizon, F) forecasts and ``<name>_seconds``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np


def _frame(inp: dict[str, np.ndarray]):  # -> pd.DataFrame
    import pandas as pd

    ts, values = inp["ts"], inp["values"]
    sensors = [str(s) for s in inp["sensors"]]
    ds = pd.to_datetime(ts, unit="s")
    parts = []
    for i, s in enumerate(sensors):
        for f in range(values.shape[2]):
            parts.append(
                pd.DataFrame({"unique_id": f"{s}|{f}", "ds": ds, "y": values[i, :, f], "kind": f})
            )
    return pd.concat(parts, ignore_index=True)


def _freq(step_s: float):
    import pandas as pd
    from pandas.tseries.frequencies import to_offset

    return to_offset(pd.Timedelta(seconds=float(step_s)))


def _collect(cv, inp: dict[str, np.ndarray], column: str) -> np.ndarray:
    """cross_validation's long frame -> (sensors, origins, horizon, F) at our origins."""
    import pandas as pd

    ts, origins, h = inp["ts"], inp["origins"], int(inp["horizon"])
    sensors = [str(s) for s in inp["sensors"]]
    F = inp["values"].shape[2]
    out = np.full((len(sensors), len(origins), h, F), np.nan)
    cutoff_s = (pd.to_datetime(cv["cutoff"]).astype("int64") // 10**9).to_numpy()
    ds_s = (pd.to_datetime(cv["ds"]).astype("int64") // 10**9).to_numpy()
    where = {float(ts[o]): k for k, o in enumerate(origins)}
    step = float(inp["step_s"])
    uid = cv["unique_id"].astype(str).to_numpy()
    yhat = cv[column].to_numpy(dtype=float)
    index = {s: i for i, s in enumerate(sensors)}
    for r in range(len(cv)):
        k = where.get(float(cutoff_s[r]))
        if k is None:
            continue
        s, f = uid[r].rsplit("|", 1)
        step_no = round((ds_s[r] - cutoff_s[r]) / step) - 1
        if 0 <= step_no < h:
            out[index[s], k, step_no, int(f)] = yhat[r]
    return out


def run_lightgbm(inp: dict[str, np.ndarray], threads: int) -> np.ndarray:
    import lightgbm as lgb
    from mlforecast import MLForecast
    from mlforecast.lag_transforms import RollingMean
    from mlforecast.target_transforms import LocalStandardScaler

    S, W, h = int(inp["season"]), int(inp["week"]), int(inp["horizon"])
    lags = sorted({1, 2, 3, max(1, S // 4), max(1, S // 2), S, 2 * S, W})

    def time_of_day(dates):  # minutes since midnight
        return dates.hour * 60 + dates.minute

    model = lgb.LGBMRegressor(
        n_estimators=500,
        learning_rate=0.05,
        num_leaves=63,
        n_jobs=threads,
        random_state=int(inp["seed"]),
        verbose=-1,
    )
    fcst = MLForecast(
        models={"lightgbm": model},
        freq=_freq(float(inp["step_s"])),
        lags=lags,
        lag_transforms={1: [RollingMean(window_size=S)]},
        date_features=[time_of_day, "dayofweek"],
        target_transforms=[LocalStandardScaler()],
        num_threads=1,
    )
    df = _frame(inp)
    origins = inp["origins"]
    stride = int(origins[1] - origins[0]) if len(origins) > 1 else 1
    cv = fcst.cross_validation(
        df, n_windows=len(origins), h=h, step_size=stride, refit=False, static_features=["kind"]
    )
    return _collect(cv, inp, "lightgbm")


def run_nhits(inp: dict[str, np.ndarray], threads: int) -> np.ndarray:
    import logging

    import torch
    from neuralforecast import NeuralForecast
    from neuralforecast.models import NHITS

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    S, W, h = int(inp["season"]), int(inp["week"]), int(inp["horizon"])
    input_size = W if W <= 336 else 4 * S
    seconds = max(1, int(inp["seconds"]))
    model = NHITS(
        h=h,
        input_size=input_size,
        max_steps=1500,
        scaler_type="robust",
        random_seed=int(inp["seed"]) + 1,
        batch_size=32,
        windows_batch_size=256,
        inference_windows_batch_size=256,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        accelerator="cpu",
        max_time={"seconds": seconds},
    )
    nf = NeuralForecast(models=[model], freq=_freq(float(inp["step_s"])))
    origins = inp["origins"]
    stride = int(origins[1] - origins[0]) if len(origins) > 1 else 1
    df = _frame(inp).drop(columns=["kind"])
    cv = nf.cross_validation(df, n_windows=len(origins), step_size=stride, refit=False)
    return _collect(cv, inp, "NHITS")


RUNNERS = {"lightgbm": run_lightgbm, "nhits": run_nhits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inp")
    parser.add_argument("out")
    parser.add_argument("--only", default="lightgbm,nhits")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    with np.load(args.inp, allow_pickle=False) as z:
        inp = {k: z[k] for k in z.files}
    threads = int(inp.get("threads", 2))
    result: dict[str, np.ndarray] = {}
    for name in [n for n in args.only.split(",") if n]:
        began = time.monotonic()
        result[name] = RUNNERS[name](inp, threads)
        result[f"{name}_seconds"] = np.array(time.monotonic() - began)
        missing = int(np.isnan(result[name]).sum())
        print(
            f"{name}: {result[f'{name}_seconds']:.1f} s, {missing} missing values",
            file=sys.stderr,
            flush=True,
        )
    np.savez(args.out, **result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
