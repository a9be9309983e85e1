"""What online retraining costs the serving loop: forecasts/s with and without one running.

Starts the embedded broker, trains a small model into a template registry and fills one
readings topic with a fixed backlog. Then ``python -m streamcast run`` reads that backlog
from the start (a fresh group, fresh output and dead-letter topics, a fresh copy of the
registry, so version 1 serves every run) twice per round, side by side:

A. ``training.online: false``: serving only;
B. ``training.online: true``, set to start a retraining as soon as the replay buffer can
   feed a fit (``interval_s`` 1, ``threads`` 1, ``holdout_fraction`` 0.1,
   ``validation_fraction`` 0.34, ``bootstrap_windows`` from the trainer's own split, see
   ``_first_fit``) and to keep it training through the rest of the backlog
   (``max_seconds`` = the first A's span, no early stop). A retraining that ends while
   the backlog lasts is followed by the next one a second later.

Every 50 ms the bench scrapes /metrics and looks for the daemon's trainer process (a
child started by multiprocessing's ``spawn``). B/A is given twice: over the whole
backlog, and over only the forecasts B issued while a trainer was alive, against the
time A took for the same forecasts (the same slice of the backlog: the windows' warm-up
weighs on neither side). After the backlog, B runs on until its first retraining has an
outcome (and a promoted version is swapped in); that one's wall time
(``streamcast_retrain_seconds``) over the examples it was handed (its ``retraining
started`` log line) gives seconds per 10k examples. ``stall`` is the longest span with
no new forecast; ``start stall``, the one around each trainer's start. CPU: the
daemon's own (100 = one core) and the whole machine's (100 = every core, other tenants
included). Rounds alternate A, B, A, B to show drift.

A retraining can fit only once each sensor has ~520 readings in the buffer (two
horizons of 96 and a window of 96 for the held-out, validation and training slices), so
the default backlog has fewer sensors with longer histories: a trainer process is then
alive over about four fifths of B.

    python -m bench.retrain [--sensors 100] [--readings 1500] [--rounds 2]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import orjson

from bench.common import train_registry
from bench.pipeline import _produce
from bench.soak import _cpu_seconds, _daemon_env, _scrape
from streamcast.learn.examples import split_sizes
from streamcast.learn.gate import split_held_out
from streamcast.learn.history import Segment
from streamcast.sim.broker import EmbeddedBroker, create_topics, free_port

PARTITIONS = 4
NUM_STEPS = 96  # window.num_steps (the default): a sensor's first forecast needs 97 readings
HORIZON = 96  # model.horizon (the default)
# With the defaults (0.2, 0.2) a retraining can fit once a sensor has ~790 readings in the
# buffer; with these, ~520.
HOLDOUT = 0.1
VALIDATION = 0.34
_SAMPLE_S = 0.05
_STARTED = re.compile(r"retraining started champion=\S+ examples=(\d+)")
_FINISHED = re.compile(r"retraining (promoted|rejected reason=(\S+))")
_FIT = re.compile(r"trained epochs=(\d+) best_epoch=\S+ stopped_by='([^']*)' seconds=([\d.]+)")


@dataclass
class Point:
    t_s: float  # since the daemon was started
    forecasts: int
    readings_ok: int
    trainer: int | None  # pid of a live trainer process, if any


@dataclass
class Run:
    case: str  # "A" or "B"
    points: list[Point] = field(default_factory=list)
    start_s: float = 0.0  # first reading accepted
    end_s: float = 0.0  # every forecast counted
    exit_code: int | None = None
    cpu_s: float | None = None  # the daemon's own CPU over the measured span
    machine_busy: float | None = None  # share of all cores busy over the measured span
    metrics: dict[str, float] = field(default_factory=dict)  # the last scrape
    log: str = ""
    trainer_cpu_s: dict[int, float] = field(default_factory=dict)  # pid -> last CPU seen

    @property
    def span_s(self) -> float:
        return self.end_s - self.start_s

    def rate(self, forecasts: int) -> float:
        return forecasts / self.span_s

    def measured(self) -> list[Point]:
        return [p for p in self.points if self.start_s <= p.t_s <= self.end_s]

    def longest_stall(self) -> tuple[float, float]:
        """(seconds, when) of the longest span without a new forecast while measuring:
        between two samples that saw the count move (so ~0.1 s is the sampling's floor)."""
        pts = self.measured()
        best, at = 0.0, 0.0
        since = pts[0]
        for p in pts[1:]:
            if p.forecasts > since.forecasts:
                if p.t_s - since.t_s > best:
                    best, at = p.t_s - since.t_s, since.t_s - self.start_s
                since = p
        return best, at

    def start_stalls(self) -> list[float]:
        """For each trainer first seen while measuring: the span without a new forecast
        around that moment (from the last new forecast before to the first after)."""
        pts = self.measured()
        stalls, seen = [], set()
        for i, p in enumerate(pts):
            if p.trainer is None or p.trainer in seen:
                continue
            seen.add(p.trainer)
            j = i
            while j > 0 and pts[j - 1].forecasts == pts[i].forecasts:
                j -= 1
            k = next((k for k in range(i + 1, len(pts)) if pts[k].forecasts > p.forecasts), None)
            if j > 0 and k is not None:
                stalls.append(pts[k].t_s - pts[j].t_s)
        return stalls


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _trainer_pid(daemon_pid: int) -> int | None:
    """The daemon's live retraining process (spawned: ``--multiprocessing-fork``)."""
    for children in Path(f"/proc/{daemon_pid}/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"--multiprocessing-fork" in cmd and b"resource_tracker" not in cmd:
                return int(pid)
    return None


def _first_fit(sensors: int) -> tuple[int, int]:
    """(readings per sensor, training.bootstrap_windows) for a first retraining that fits.

    The daemon's check before a retraining (``Retraining._enough``) cuts the held-out
    share off each sensor's readings, while the trainer (``split_held_out``) cuts it off
    the examples and also drops the ``span - 1`` readings that straddle the cut: a buffer
    can pass the check and leave the fit nothing to train on (``training_failed``). So
    the threshold is found with the trainer's own functions, and ``bootstrap_windows``
    is what the daemon's check counts once every sensor has that many readings.
    """
    span = NUM_STEPS + 1 + HORIZON
    for n in range(span, 100 * span):
        seg = Segment("s", np.arange(n, dtype=np.float64), np.zeros((n, 2), np.float32))
        kept = [len(r.ts) for r in split_held_out([seg], NUM_STEPS, HORIZON, HOLDOUT).train]
        train, val = split_sizes(kept, NUM_STEPS, HORIZON, VALIDATION)
        if train > 0 and val > 0:
            checked = n - math.ceil(n * HOLDOUT)  # as Retraining._enough counts
            estimate, _ = split_sizes([checked], NUM_STEPS, HORIZON, VALIDATION)
            return n, max(10, sensors * estimate)
    raise AssertionError("no buffer length feeds a fit")


def _training_env(seconds: float, bootstrap_windows: int) -> dict[str, str]:
    return {
        "STREAMCAST_TRAINING__ONLINE": "true",
        "STREAMCAST_TRAINING__INTERVAL_S": "1",
        "STREAMCAST_TRAINING__BOOTSTRAP_WINDOWS": str(bootstrap_windows),
        "STREAMCAST_TRAINING__HOLDOUT_FRACTION": str(HOLDOUT),
        "STREAMCAST_TRAINING__VALIDATION_FRACTION": str(VALIDATION),
        "STREAMCAST_TRAINING__THREADS": "1",
        "STREAMCAST_TRAINING__MAX_SECONDS": f"{seconds:.0f}",
        "STREAMCAST_TRAINING__MAX_EPOCHS": "100000",
        "STREAMCAST_TRAINING__PATIENCE": "100000",  # only the time budget stops the fit
        "STREAMCAST_TRAINING__TIMEOUT_S": f"{seconds + 600:.0f}",
    }


@dataclass(frozen=True)
class Case:
    bootstrap: str
    topic: str
    template: Path
    work: Path
    units: str
    expected: int
    bootstrap_windows: int
    keep_logs: Path | None


def _b_done(run: Run, log_path: Path, waited_s: float, train_seconds: float) -> bool:
    """Whether B, past its backlog, may stop: its first retraining has an outcome and,
    if it was promoted, the new version is swapped in (stopping the daemon while a load
    still compiles can abort it), or nothing more is coming."""
    m = run.metrics
    if not run.trainer_cpu_s:
        return waited_s > 15.0
    if m.get("streamcast_retrain_seconds_count", 0) < 1:
        return waited_s > train_seconds + 120
    if m.get("streamcast_model_swaps_total", 0) >= 1:
        return True
    promoted = "retraining promoted" in log_path.read_text(errors="replace")
    return not promoted or waited_s > train_seconds + 150


def _run(case: str, c: Case, train_seconds: float) -> Run:
    tag = f"{case.lower()}-{uuid.uuid4().hex[:6]}"
    registry = c.work / f"registry-{tag}"
    shutil.copytree(c.template, registry)
    out, dlq = f"{c.topic}.{tag}.forecasts", f"{c.topic}.{tag}.dlq"
    create_topics(c.bootstrap, {out: PARTITIONS, dlq: 1})
    port = free_port()
    env = _daemon_env(c.bootstrap, c.topic, registry, port, c.units, 86_400.0)
    env.update({"STREAMCAST_KAFKA__OUTPUT_TOPIC": out, "STREAMCAST_KAFKA__DLQ_TOPIC": dlq})
    if case == "B":
        env.update(_training_env(train_seconds, c.bootstrap_windows))
    else:
        env["STREAMCAST_TRAINING__ONLINE"] = "false"
    log_path = c.work / f"daemon-{tag}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamcast", "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    run = Run(case)
    t0 = time.monotonic()
    cpu0: float | None = None
    jiffies0 = (0, 0)
    finished_at: float | None = None
    try:
        while proc.poll() is None:
            now = time.monotonic() - t0
            m = _scrape(port)
            trainer = _trainer_pid(proc.pid)
            if trainer is not None and (cpu := _cpu_seconds(trainer)) is not None:
                run.trainer_cpu_s[trainer] = cpu
            if m is None:
                if now > 180:
                    raise RuntimeError(f"no /metrics from the daemon after 180 s ({log_path})")
                time.sleep(_SAMPLE_S)
                continue
            run.metrics = m
            forecasts = int(m.get("streamcast_forecasts_total", 0))
            ok = int(m.get("streamcast_readings_total:ok", 0))
            run.points.append(Point(now, forecasts, ok, trainer))
            if ok > 0 and cpu0 is None:
                run.start_s, cpu0, jiffies0 = now, _cpu_seconds(proc.pid), _machine_jiffies()
            if forecasts >= c.expected and finished_at is None:
                run.end_s = finished_at = now
                cpu1, (busy1, total1) = _cpu_seconds(proc.pid), _machine_jiffies()
                if cpu0 is not None and cpu1 is not None:
                    run.cpu_s = cpu1 - cpu0
                run.machine_busy = (busy1 - jiffies0[0]) / max(1, total1 - jiffies0[1])
            if finished_at is not None and (
                case == "A" or _b_done(run, log_path, now - finished_at, train_seconds)
            ):
                break
            time.sleep(_SAMPLE_S)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        run.exit_code = proc.returncode
        run.log = log_path.read_text(errors="replace")
        if c.keep_logs is not None:
            c.keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(log_path, c.keep_logs / log_path.name)
    if finished_at is None:
        print(run.log[-4000:], file=sys.stderr)
        raise RuntimeError(f"run {case} ended before it forecast the whole backlog")
    return run


def _overlap(a: Run, b: Run) -> tuple[int, float, float]:
    """(forecasts B issued while a trainer was alive, B's seconds, A's seconds for them)."""
    a_pts = a.measured()
    a_t = np.array([p.t_s for p in a_pts])
    a_f = np.array([p.forecasts for p in a_pts], dtype=np.float64)
    forecasts, b_s, a_s = 0, 0.0, 0.0
    for p, q in itertools.pairwise(b.measured()):
        if p.trainer is None or q.trainer is None:
            continue
        forecasts += q.forecasts - p.forecasts
        b_s += q.t_s - p.t_s
        a_s += float(np.interp(q.forecasts, a_f, a_t) - np.interp(p.forecasts, a_f, a_t))
    return forecasts, b_s, a_s


def _case(run: Run, expected: int) -> dict[str, Any]:
    stall, stall_at = run.longest_stall()
    return {
        "forecasts_s": round(run.rate(expected)),
        "readings_s": round(run.rate(run.measured()[-1].readings_ok)),
        "span_s": round(run.span_s, 2),
        "daemon_cpu_pct": None if run.cpu_s is None else round(100 * run.cpu_s / run.span_s),
        "machine_busy_pct": None if run.machine_busy is None else round(100 * run.machine_busy),
        "longest_stall_s": round(stall, 2),
        "longest_stall_at_s": round(stall_at, 2),
        "exit_code": run.exit_code,
    }


def _retraining(a: Run, b: Run) -> dict[str, Any]:
    forecasts, b_s, a_s = _overlap(a, b)
    started = [int(x) for x in _STARTED.findall(b.log)]
    outcomes = [reason or "promoted" for _, reason in _FINISHED.findall(b.log)]
    m = b.metrics
    finished = int(m.get("streamcast_retrain_seconds_count", 0))
    seconds = m.get("streamcast_retrain_seconds_sum", 0.0)
    examples = sum(started[:finished])
    fits = [(int(e), why, float(sec)) for e, why, sec in _FIT.findall(b.log)]
    alive = [p.t_s - b.start_s for p in b.measured() if p.trainer is not None]
    return {
        "while_training_forecasts_s": round(forecasts / b_s) if b_s else None,
        "a_same_forecasts_s": round(forecasts / a_s) if a_s else None,
        "ratio_while_training": round(a_s / b_s, 3) if b_s else None,
        "overlap_fraction": round(b_s / b.span_s, 3),
        "trainer_first_seen_at_s": round(alive[0], 2) if alive else None,
        "start_stalls_s": [round(s, 2) for s in b.start_stalls()],
        "retrainings_started": len(started),
        "retrainings_finished": finished,
        "outcomes": outcomes,
        "examples_handed": started,
        "retrain_seconds": round(seconds, 1),
        "retrain_seconds_per_10k_examples": (
            round(10_000 * seconds / examples, 2) if finished and examples else None
        ),
        # the trainer's own log line: epochs (the last one may be cut short), why it
        # stopped, seconds in fit; the rest of retrain_seconds is spawn, imports, load,
        # judging and saving
        "fits": [{"epochs": e, "stopped_by": why, "seconds": sec} for e, why, sec in fits],
        "trainer_cpu_s": [round(v, 1) for v in b.trainer_cpu_s.values()],
        "replay_bytes": int(m.get("streamcast_replay_bytes", 0)),
        "replay_examples": int(m.get("streamcast_replay_examples", 0)),
        "model_swaps": int(m.get("streamcast_model_swaps_total", 0)),
    }


def _cell(v: Any, fmt: str, width: int) -> str:
    return "-".rjust(width) if v is None else format(v, f">{width}{fmt}")


def _print_tables(rounds: list[dict[str, Any]]) -> None:
    print(
        f"{'round':>5} {'case':>4} {'fc/s':>7} {'readings/s':>10} {'span s':>7} "
        f"{'daemon CPU%':>11} {'machine%':>8} {'stall s':>7} {'at s':>6}"
    )
    for i, row in enumerate(rounds, 1):
        for case in ("A", "B"):
            r = row[case]
            print(
                f"{i:>5} {case:>4} {r['forecasts_s']:>7,} {r['readings_s']:>10,} "
                f"{r['span_s']:>7.1f} {_cell(r['daemon_cpu_pct'], 'd', 11)} "
                f"{_cell(r['machine_busy_pct'], 'd', 8)} {r['longest_stall_s']:>7.2f} "
                f"{r['longest_stall_at_s']:>6.1f}"
            )
    print()
    print(
        f"{'round':>5} {'B/A':>6} {'B fc/s tr':>9} {'A fc/s same':>11} {'B/A tr':>7} "
        f"{'overlap':>7} {'start stall s':>13} {'retrain s':>9} {'examples':>8} "
        f"{'s/10k ex':>8} {'fit':>9} {'replay MiB':>10} {'replay ex':>9}  outcomes"
    )
    for i, row in enumerate(rounds, 1):
        b = row["B"]
        examples = b["examples_handed"][0] if b["examples_handed"] else None
        stalls = ",".join(f"{s:.2f}" for s in b["start_stalls_s"]) or "-"
        fit = f"{b['fits'][0]['seconds']:.0f}s/{b['fits'][0]['epochs']}ep" if b["fits"] else "-"
        print(
            f"{i:>5} {row['ratio_whole_backlog']:>6.3f} "
            f"{_cell(b['while_training_forecasts_s'], ',', 9)} "
            f"{_cell(b['a_same_forecasts_s'], ',', 11)} "
            f"{_cell(b['ratio_while_training'], '.3f', 7)} {b['overlap_fraction']:>7.2f} "
            f"{stalls:>13} {b['retrain_seconds']:>9.1f} {_cell(examples, ',', 8)} "
            f"{_cell(b['retrain_seconds_per_10k_examples'], '.2f', 8)} {fit:>9} "
            f"{b['replay_bytes'] / 2**20:>10.2f} {b['replay_examples']:>9,}  "
            f"{','.join(b['outcomes']) or '-'}"
        )
    print(
        "B fc/s tr: B's forecasts/s while a trainer process was alive; A fc/s same: A's "
        "forecasts/s over the same forecasts; B/A tr: their ratio (target >= 0.7); "
        "retrain s / examples: the first retraining (wall time, examples handed to it); "
        "fit: its seconds and epochs in fit"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=100)
    parser.add_argument(
        "--readings", type=int, default=1500, help="readings per sensor in the backlog"
    )
    parser.add_argument("--rounds", type=int, default=2, help="A, B pairs, run alternately")
    parser.add_argument("--units", default="8,8")
    parser.add_argument(
        "--train-seconds",
        type=float,
        help="training.max_seconds in B (default: the first A's measured span)",
    )
    parser.add_argument("--logs", type=Path, help="keep the daemons' logs in this folder")
    args = parser.parse_args()
    fit_from, bootstrap_windows = _first_fit(args.sensors)
    if args.readings <= fit_from:
        parser.error(f"--readings must exceed {fit_from} for a retraining to fit in B")
    units = tuple(int(u) for u in args.units.split(","))
    expected = args.sensors * (args.readings - NUM_STEPS)
    runs: list[tuple[Run, Run]] = []

    with tempfile.TemporaryDirectory(prefix="streamcast-bench-") as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        print("training a small model ...", flush=True)
        train_registry(work / "template", units)
        topic = f"retrain-{uuid.uuid4().hex[:6]}"
        create_topics(broker.bootstrap, {topic: PARTITIONS})
        produced_at = time.perf_counter()
        n = _produce(broker.bootstrap, topic, args.sensors, args.readings)
        print(f"{n:,} readings produced in {time.perf_counter() - produced_at:.1f} s", flush=True)
        case = Case(
            broker.bootstrap,
            topic,
            work / "template",
            work,
            args.units,
            expected,
            bootstrap_windows,
            args.logs,
        )
        train_seconds = args.train_seconds
        for r in range(args.rounds):
            a = _run("A", case, train_seconds or 0.0)
            train_seconds = train_seconds or max(10.0, round(a.span_s))
            print(f"round {r + 1} A: {a.rate(expected):,.0f} forecasts/s", flush=True)
            b = _run("B", case, train_seconds)
            print(f"round {r + 1} B: {b.rate(expected):,.0f} forecasts/s", flush=True)
            runs.append((a, b))

    rounds = [
        {
            "A": _case(a, expected),
            "B": {**_case(b, expected), **_retraining(a, b)},
            "ratio_whole_backlog": round(b.rate(expected) / a.rate(expected), 3),
        }
        for a, b in runs
    ]
    print()
    print(
        f"{n:,} readings ({args.sensors} sensors x {args.readings}), {expected:,} forecasts, "
        f"stride 1, units {list(units)}; B: training.max_seconds {train_seconds:.0f}, "
        f"threads 1, bootstrap_windows {bootstrap_windows} (~{fit_from} readings per sensor)"
    )
    _print_tables(rounds)
    summary = {
        "readings": n,
        "sensors": args.sensors,
        "readings_per_sensor": args.readings,
        "forecasts": expected,
        "units": list(units),
        "train_max_seconds": train_seconds,
        "bootstrap_windows": bootstrap_windows,
        "first_fit_readings_per_sensor": fit_from,
        "cpus": os.cpu_count(),
        "rounds": rounds,
    }
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
