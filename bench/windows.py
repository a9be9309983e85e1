"""WindowStore.append vs a per-reading dict-of-deques, side by side in one run.

Both get the same pre-decoded polls (2,000 readings each), both start with every
sensor's window full, and both must hand out one (window, truth) per reading at
stride 1, which is what the model needs. Also prints the memory per sensor.

    python -m bench.windows [--sensors 10000] [--steps 96] [--features 2] [--polls 100]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from streamcast.stream.messages import Readings
from streamcast.stream.windows import WindowStore


class NaiveWindows:
    """What one writes first: a deque per sensor, a Python loop per reading."""

    def __init__(self, num_steps: int, gap_factor: float = 3.0) -> None:
        self.length = num_steps + 1
        self.gap_factor = gap_factor
        self.rows: dict[str, deque[list[float]]] = {}
        self.last: dict[str, float] = {}
        self.step: dict[str, float] = {}

    def append(self, batch: Readings, emit: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for name, t, row in zip(
            batch.sensors, batch.ts.tolist(), batch.values.tolist(), strict=True
        ):
            dq = self.rows.get(name)
            if dq is None:
                dq = self.rows[name] = deque(maxlen=self.length)
                self.last[name] = -float("inf")
                self.step[name] = 0.0
            last = self.last[name]
            if t <= last:
                continue
            step = self.step[name]
            if len(dq) >= 2 and t - last > self.gap_factor * step:
                dq.clear()
            elif step:
                self.step[name] = step + 0.1 * (t - last - step)
            elif last > -float("inf"):
                self.step[name] = t - last
            self.last[name] = t
            dq.append(row)
            if emit and len(dq) == self.length:
                unrolled = np.array(dq, np.float32)
                out.append((unrolled[1:], unrolled[0]))
        return out


def make_polls(sensors: int, features: int, readings: int, poll: int, start: int) -> list[Readings]:
    """Round-robin readings from every sensor, 60 s apart per sensor, cut into polls."""
    rng = np.random.default_rng(start)
    names = [f"sensor-{j:06d}" for j in range(sensors)]
    polls = []
    for first in range(start, start + readings, poll):
        k = np.arange(first, min(first + poll, start + readings))
        sensor = k % sensors
        ts = (k // sensors) * 60.0 + sensor * 1e-3
        polls.append(
            Readings(
                [names[j] for j in sensor.tolist()],
                ts.astype(np.float64),
                rng.normal(size=(len(k), features)).astype(np.float32),
            )
        )
    return polls


def timed(fn: Callable[[Readings], Any], polls: list[Readings]) -> tuple[float, int]:
    gc.collect()
    windows = 0
    t0 = time.perf_counter()
    for p in polls:
        windows += len(fn(p))
    return time.perf_counter() - t0, windows


def memory_per_sensor(build: Callable[[], Any], sensors: int) -> float:
    gc.collect()
    tracemalloc.start()
    obj = build()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del obj
    return current / sensors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sensors", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--features", type=int, default=2)
    ap.add_argument("--polls", type=int, default=100, help="timed polls of --poll readings")
    ap.add_argument("--poll", type=int, default=2_000)
    args = ap.parse_args()
    n, steps, f = args.sensors, args.steps, args.features

    prime = make_polls(n, f, n * (steps + 1), args.poll, 0)
    polls = make_polls(n, f, args.polls * args.poll, args.poll, n * (steps + 1))
    total = sum(len(p) for p in polls)

    store = WindowStore(n, steps, f)
    naive = NaiveWindows(steps)
    for p in prime:
        store.append(p, emit=False)
        naive.append(p, emit=False)

    t_store, w_store = timed(store.append, polls)
    t_naive, w_naive = timed(naive.append, polls)
    assert w_store == w_naive == total, (w_store, w_naive, total)

    # Many readings per sensor in one poll: 100 sensors x 20 readings (20 rounds).
    few = 100
    few_prime = make_polls(few, f, few * (steps + 1), args.poll, 0)
    few_polls = make_polls(few, f, args.polls * args.poll, args.poll, few * (steps + 1))
    store_few = WindowStore(few, steps, f)
    naive_few = NaiveWindows(steps)
    for p in few_prime:
        store_few.append(p, emit=False)
        naive_few.append(p, emit=False)
    t_store_few, _ = timed(store_few.append, few_polls)
    t_naive_few, _ = timed(naive_few.append, few_polls)

    def filled_store() -> WindowStore:
        s = WindowStore(n, steps, f)
        for p in prime:
            s.append(p, emit=False)
        return s

    def filled_naive() -> NaiveWindows:
        s = NaiveWindows(steps)
        for p in prime:
            s.append(p, emit=False)
        return s

    mem_store = memory_per_sensor(filled_store, n)
    mem_naive = memory_per_sensor(filled_naive, n)
    raw = steps * f * 4

    print(f"window store: {n} sensors, num_steps={steps}, features={f}, stride 1;")
    print(f"{len(polls)} polls of {args.poll} readings, every reading completes a window")
    print(f"{'':34}{'WindowStore':>14}{'naive deque':>14}{'ratio':>8}")
    rs, rn = total / t_store, total / t_naive
    print(f"{f'readings/s, {n} sensors x 1/poll':34}{rs:>14,.0f}{rn:>14,.0f}{rs / rn:>7.1f}x")
    rs, rn = total / t_store_few, total / t_naive_few
    print(f"{'readings/s, 100 sensors x 20/poll':34}{rs:>14,.0f}{rn:>14,.0f}{rs / rn:>7.1f}x")
    print(
        f"{'bytes per sensor (tracemalloc)':34}{mem_store:>14,.0f}{mem_naive:>14,.0f}"
        f"{mem_naive / mem_store:>7.1f}x less"
    )
    print(f"  raw window bytes {raw}; store arrays alone {store.nbytes / n:,.0f} B/sensor")


if __name__ == "__main__":
    main()
