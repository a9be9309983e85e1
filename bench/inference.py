"""Windows per second: ``model.predict`` vs ``predict_on_batch`` vs the compiled Predictor.

The three run side by side in one process, repetitions interleaved so that a noisy
neighbour or a CPU frequency change hits them alike; each figure is the median of
the repetitions. Every method gets the whole batch at once (``predict`` is given
``batch_size=n``, its most favourable setting). A second table sets carry mode's
graphs side by side, for the default model at a full batch: a window seeded from its
truth (96 LSTM steps) against one continuing a carried state through the readings since
the sensor's last window (1 step at stride 1, 96 at stride 96). The first table's models
have no calendar (``model.calendar`` off: the three methods get the same window and
truth); the second's is the default model, calendar included.

    python bench/inference.py [--json-only] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import streamcast  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np

from streamcast.config import ModelSpec
from streamcast.learn.calendar import calendar_inputs
from streamcast.model import build_forecaster
from streamcast.model.predictor import Predictor

logger = logging.getLogger(__name__)

NUM_STEPS = 96
NUM_FEATURES = 2
HORIZON = 96
STACKS = [(8, 8), (8, 16, 32)]
BATCHES = [10, 256, 1024]
METHODS = ["predict", "predict_on_batch", "predictor"]


def rate(fn: Callable[[], object], n: int, min_seconds: float) -> float:
    """Windows/s over as many calls as fit in ``min_seconds`` (at least one)."""
    calls = 0
    start = time.perf_counter()
    elapsed = 0.0
    while calls == 0 or elapsed < min_seconds:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
    return n * calls / elapsed


def interleaved(
    runners: dict[str, Callable[[], object]], n: int, reps: int, min_seconds: float
) -> dict[str, float]:
    """Median windows/s of each runner, repetitions interleaved (compiled outside the clock)."""
    for fn in runners.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(reps):
        for name, fn in runners.items():
            samples[name].append(rate(fn, n, min_seconds))
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(units: tuple[int, ...], reps: int, min_seconds: float) -> list[dict[str, Any]]:
    cfg = ModelSpec(
        num_steps=NUM_STEPS,
        num_features=NUM_FEATURES,
        units=units,
        horizon=HORIZON,
        seeding="truth",
        calendar=False,
    )
    model = build_forecaster(cfg)
    predictor = Predictor(model, cfg)
    rng = np.random.default_rng(0)
    rows = []
    for n in BATCHES:
        window = rng.standard_normal((n, NUM_STEPS, NUM_FEATURES)).astype(np.float32)
        truth = rng.standard_normal((n, NUM_FEATURES)).astype(np.float32)
        feed = {"window": window, "truth": truth}
        runners: dict[str, Callable[[], object]] = {
            "predict": partial(model.predict, feed, batch_size=n, verbose=0),
            "predict_on_batch": partial(model.predict_on_batch, feed),
            "predictor": partial(predictor.predict, window, truth),
        }
        med = interleaved(runners, n, reps, min_seconds)
        rows.append(
            {
                "units": list(units),
                "batch": n,
                **{f"{name}_wps": round(med[name], 1) for name in METHODS},
                "predictor_vs_predict": round(med["predictor"] / med["predict"], 2),
                "predictor_vs_predict_on_batch": round(
                    med["predictor"] / med["predict_on_batch"], 2
                ),
            }
        )
    return rows


def measure_carry(reps: int, min_seconds: float, n: int = 256) -> list[dict[str, Any]]:
    """Carry mode, default model: seeded windows vs carried ones at strides 1 and 96."""
    cfg = ModelSpec(seeding="carry")
    model = build_forecaster(cfg)
    rng = np.random.default_rng(0)
    window = rng.standard_normal((n, cfg.num_steps, cfg.num_features)).astype(np.float32)
    truth = rng.standard_normal((n, cfg.num_features)).astype(np.float32)
    carry = rng.standard_normal((n, cfg.state_width)).astype(np.float32)
    # Each window's time, 15-minute steps (the default model has the calendar).
    ends = 1_704_067_200.0 + 900.0 * rng.integers(0, 96 * 7, n)
    calendar = calendar_inputs(ends, 900.0)
    by_stride = {s: Predictor(model, cfg, max_batch=n, carried_steps=s) for s in (1, 96)}
    runners: dict[str, Callable[[], object]] = {
        "seeded": partial(by_stride[1].predict, window, truth, calendar=calendar),
        **{
            f"carried_stride_{s}": partial(p.predict, window, truth, carry, calendar=calendar)
            for s, p in by_stride.items()
        },
    }
    med = interleaved(runners, n, reps, min_seconds)
    return [
        {
            "graph": name,
            "units": list(cfg.units),
            "batch": n,
            "wps": round(wps, 1),
            "vs_seeded": round(wps / med["seeded"], 2),
        }
        for name, wps in med.items()
    ]


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'units':<10} {'batch':>5} {'predict':>10} {'on_batch':>10} {'Predictor':>10} "
        f"{'x predict':>10} {'x on_batch':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{'x'.join(map(str, r['units'])):<10} {r['batch']:>5} {r['predict_wps']:>10.0f} "
            f"{r['predict_on_batch_wps']:>10.0f} {r['predictor_wps']:>10.0f} "
            f"{r['predictor_vs_predict']:>10.1f} {r['predictor_vs_predict_on_batch']:>10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json-only", action="store_true", help="print only the JSON summary")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    args = parser.parse_args(argv)
    reps, min_seconds = (3, 0.1) if args.quick else (7, 0.3)
    logging.basicConfig(level=logging.WARNING if args.json_only else logging.INFO)

    rows: list[dict[str, Any]] = []
    for units in STACKS:
        rows.extend(measure(units, reps, min_seconds))
    carry = measure_carry(reps, min_seconds)
    probe = Predictor(build_forecaster(ModelSpec(units=(8,))), ModelSpec(units=(8,)), 1)
    summary = {
        "backend": keras.backend.backend(),
        "device": probe.device,
        "jit": probe.jit,
        "cpus": os.cpu_count(),
        "num_steps": NUM_STEPS,
        "num_features": NUM_FEATURES,
        "horizon": HORIZON,
        "max_batch": 256,
        "repetitions": reps,
        "statistic": "median windows/s",
        "results": rows,
        "carry": carry,
    }
    if not args.json_only:
        print(f"windows/s, median of {reps} interleaved repetitions, device={probe.device}")
        print(table(rows))
        print()
        print("carry mode, units 16x16, batch 256: windows/s and the ratio to seeded windows")
        for r in carry:
            print(f"{r['graph']:<18} {r['wps']:>10.0f} {r['vs_seeded']:>6.2f}")
        print()
    print(json.dumps(summary, indent=None if args.json_only else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
