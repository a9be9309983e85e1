"""Soak: the daemon as operators run it, fed at a steady rate for a long time.

Starts the embedded broker, a small trained model in a temporary registry, a simulated
fleet publishing at ``--rate`` readings/s in a thread, and ``python -m streamcast run``
as a subprocess (configured through ``STREAMCAST_*`` variables, /metrics on a free
port). Every ``--every`` seconds it samples the daemon's resident memory (VmRSS from
/proc), its CPU share, consumer lag (streamcast_consumer_lag, summed over partitions),
dead letters and forecasts. At the end it prints the samples as a table, the RSS slope
over the second half of the run (least squares, MiB per hour: the first half is the
warm-up), and a JSON summary.

    python -m bench.soak [--minutes 30] [--sensors 200] [--rate 500] [--replay-mib 2]

The daemon's trainer keeps a replay buffer of recent readings that grows until its
budget (``training.replay_bytes``, 64 MiB: about 2.3 hours at 500 readings/s) and then
stays; ``--replay-mib`` sets a smaller budget so the plateau shows within the run.

The simulated fleet's clock runs ahead of the wall clock (one 15-minute step per
``sensors / rate`` seconds), so ``window.max_future_s`` is raised here (``--max-future-s``)
or the daemon would dead-letter every reading as ``ts_in_future`` after the first
~96 live steps.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.common import train_registry
from streamcast.sim.broker import EmbeddedBroker, create_topics, free_port
from streamcast.sim.producer import FleetProducer

PARTITIONS = 4
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    t_s: float
    rss_mib: float | None
    cpu_pct: float | None  # of one core, over the interval before the sample
    lag: int | None
    dead_letters: int | None
    forecasts: int | None
    readings_ok: int | None
    sent: int


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def _cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def _scrape(port: int) -> dict[str, float] | None:
    """Sums per metric name (lag over partitions, dead letters over reasons, ...)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return None
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        # A labelled counter has no sample before its first label: it counts 0 so far.
        sums[f"{family.name}_total" if family.type == "counter" else family.name] = 0.0
        for s in family.samples:
            if s.name == "streamcast_readings_total":
                key = f"streamcast_readings_total:{s.labels.get('outcome')}"
                sums[key] = sums.get(key, 0.0) + s.value
            sums[s.name] = sums.get(s.name, 0.0) + s.value
    return sums


def _int(metrics: dict[str, float] | None, name: str) -> int | None:
    if metrics is None or name not in metrics:
        return None
    return int(metrics[name])


def _slope_mib_per_h(samples: list[Sample], from_s: float) -> float | None:
    pts = [(s.t_s, s.rss_mib) for s in samples if s.t_s >= from_s and s.rss_mib is not None]
    if len(pts) < 3:
        return None
    t, y = np.array(pts, dtype=np.float64).T
    slope_per_s = np.polyfit(t, y, 1)[0]
    return float(slope_per_s * 3600)


def _daemon_env(
    bootstrap: str, topic: str, registry: Path, port: int, units: str, max_future_s: float
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAST_")}
    env.update(
        {
            "STREAMCAST_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "STREAMCAST_KAFKA__INPUT_TOPIC": topic,
            "STREAMCAST_KAFKA__OUTPUT_TOPIC": f"{topic}.forecasts",
            "STREAMCAST_KAFKA__DLQ_TOPIC": f"{topic}.dlq",
            "STREAMCAST_KAFKA__GROUP_ID": f"soak-{uuid.uuid4().hex[:6]}",
            "STREAMCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "STREAMCAST_KAFKA__HEARTBEAT_INTERVAL_MS": "2000",
            "STREAMCAST_MODEL__UNITS": units,
            "STREAMCAST_WINDOW__MAX_FUTURE_S": str(max_future_s),
            "STREAMCAST_REGISTRY__PATH": str(registry),
            "STREAMCAST_HTTP__HOST": "127.0.0.1",
            "STREAMCAST_HTTP__PORT": str(port),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    return env


def _print_table(samples: list[Sample]) -> None:
    def cell(v: float | int | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    print(
        f"{'t (s)':>7} {'RSS MiB':>8} {'CPU %':>6} {'lag':>7} {'dead':>6} "
        f"{'forecasts':>10} {'fc/s':>7} {'sent':>9}"
    )
    prev: Sample | None = None
    for s in samples:
        rate = None
        if prev is not None and s.forecasts is not None and prev.forecasts is not None:
            rate = (s.forecasts - prev.forecasts) / max(1e-9, s.t_s - prev.t_s)
        print(
            f"{s.t_s:7.0f} {cell(s.rss_mib, '8.1f')} {cell(s.cpu_pct, '6.0f')} "
            f"{cell(s.lag, '7d')} {cell(s.dead_letters, '6d')} {cell(s.forecasts, '10d')} "
            f"{cell(rate, '7.0f')} {s.sent:9d}"
        )
        prev = s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--rate", type=float, default=500.0, help="readings/s, steady")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--history", type=int, default=120, help="steps backfilled per sensor")
    parser.add_argument("--units", default="8,8")
    parser.add_argument(
        "--max-future-s",
        type=float,
        default=10 * 365 * 86_400.0,
        help="window.max_future_s for the daemon (the simulated clock runs ahead)",
    )
    parser.add_argument(
        "--replay-mib",
        type=float,
        default=None,
        help="training.replay_bytes in MiB (default: the daemon's, 64). The replay buffer "
        "grows to this budget (16 bytes per reading), then stays: a small one makes the "
        "plateau show within a short run",
    )
    parser.add_argument("--log", type=Path, help="keep the daemon's log here")
    args = parser.parse_args()
    duration_s = args.minutes * 60
    units = tuple(int(u) for u in args.units.split(","))

    with tempfile.TemporaryDirectory(prefix="streamcast-soak-") as tmp, EmbeddedBroker() as broker:
        registry = Path(tmp) / "registry"
        print("training a small model ...", flush=True)
        train_registry(registry, units)
        topic = f"soak-{uuid.uuid4().hex[:6]}"
        create_topics(
            broker.bootstrap,
            {topic: PARTITIONS, f"{topic}.forecasts": PARTITIONS, f"{topic}.dlq": 1},
        )
        port = free_port()
        log_path = args.log or Path(tmp) / "daemon.log"
        env = _daemon_env(broker.bootstrap, topic, registry, port, args.units, args.max_future_s)
        if args.replay_mib is not None:
            env["STREAMCAST_TRAINING__REPLAY_BYTES"] = str(int(args.replay_mib * 2**20))
        with log_path.open("ab") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "streamcast", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        stop = threading.Event()
        producer = FleetProducer(
            broker.bootstrap,
            topic=topic,
            sensors=args.sensors,
            rate=args.rate,
            history_steps=args.history,
        )
        feeder = threading.Thread(target=producer.run, kwargs={"stop": stop}, daemon=True)
        print(
            f"soak: {args.minutes:g} min, {args.sensors} sensors, {args.rate:g} readings/s, "
            f"daemon pid {daemon.pid}, metrics http://127.0.0.1:{port}/metrics, log {log_path}",
            flush=True,
        )
        started = time.monotonic()
        feeder.start()
        samples: list[Sample] = []
        last_cpu: tuple[float, float] | None = None
        exit_code: int | None = None
        try:
            k = 0
            while True:  # one sample every --every seconds, on a fixed grid
                now = time.monotonic() - started
                cpu = _cpu_seconds(daemon.pid)
                cpu_pct = None
                if cpu is not None and last_cpu is not None:
                    cpu_pct = 100 * (cpu - last_cpu[1]) / max(1e-9, now - last_cpu[0])
                if cpu is not None:
                    last_cpu = (now, cpu)
                m = _scrape(port)
                samples.append(
                    Sample(
                        t_s=round(now, 1),
                        rss_mib=_rss_mib(daemon.pid),
                        cpu_pct=None if cpu_pct is None else round(cpu_pct, 1),
                        lag=_int(m, "streamcast_consumer_lag"),
                        dead_letters=_int(m, "streamcast_dead_letters_total"),
                        forecasts=_int(m, "streamcast_forecasts_total"),
                        readings_ok=_int(m, "streamcast_readings_total:ok"),
                        sent=producer.sent,
                    )
                )
                if daemon.poll() is not None:
                    print(f"the daemon exited early with {daemon.returncode}", file=sys.stderr)
                    break
                if now >= duration_s:
                    break
                k += 1
                time.sleep(max(0.0, started + k * args.every - time.monotonic()))
        finally:
            stop.set()
            feeder.join(timeout=30)
            producer.close()
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    exit_code = daemon.wait(60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    exit_code = daemon.wait()
            else:
                exit_code = daemon.returncode
        if exit_code != 0:
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)

    _print_table(samples)
    elapsed = samples[-1].t_s if samples else 0.0
    slope = _slope_mib_per_h(samples, elapsed / 2)
    rss = [s.rss_mib for s in samples if s.rss_mib is not None]
    lags = [s.lag for s in samples if s.lag is not None]
    late = [s for s in samples if s.t_s >= elapsed / 2 and s.forecasts is not None]
    steady_fc_s = None
    if len(late) >= 2:
        first_fc, last_fc = late[0].forecasts or 0, late[-1].forecasts or 0
        steady_fc_s = (last_fc - first_fc) / max(1e-9, late[-1].t_s - late[0].t_s)
    last = samples[-1] if samples else None
    summary = {
        "minutes": args.minutes,
        "sensors": args.sensors,
        "rate": args.rate,
        "samples": len(samples),
        "daemon_exit_code": exit_code,
        "readings_sent": producer.sent,
        "readings_ok": last.readings_ok if last else None,
        "forecasts": last.forecasts if last else None,
        "forecasts_per_s_second_half": None if steady_fc_s is None else round(steady_fc_s, 1),
        "dead_letters": last.dead_letters if last else None,
        "rss_mib_first": round(rss[0], 1) if rss else None,
        "rss_mib_peak": round(max(rss), 1) if rss else None,
        "rss_mib_last": round(rss[-1], 1) if rss else None,
        "rss_slope_mib_per_h_second_half": None if slope is None else round(slope, 2),
        "lag_max": max(lags) if lags else None,
        "lag_last": lags[-1] if lags else None,
        "lag_max_second_half": max(
            (s.lag for s in samples if s.t_s >= elapsed / 2 and s.lag is not None), default=None
        ),
    }
    slope_text = "n/a (too few samples)" if slope is None else f"{slope:+.1f} MiB/h"
    print(f"RSS slope over the second half ({elapsed / 2:.0f}-{elapsed:.0f} s): {slope_text}")
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
