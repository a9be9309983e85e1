"""Readings/s of ``streamcast run`` next to raw kafka-python ceilings and the Quix Streams peer.

One embedded broker, one filled readings topic per case (6 partitions, ``--sensors``
simulated sensors keyed by id, JSON readings), and every contestant reads that same
topic from the start with a consumer group of its own:

1. ceiling, consume + decode: a kafka-python consumer with the daemon's consumer
   settings (``max_poll_records``, default fetch sizes), ``orjson.loads`` per record;
2. ceiling, consume + decode + produce: the same, plus one forecast-sized message
   (a real ``encode_forecasts`` value) for every reading that yields a forecast at the
   case's stride, sent with the daemon's producer settings (idempotent, ``acks=all``,
   ``linger_ms``, lz4, batch size), flushed at the end;
3. streamcast: ``python -m streamcast run`` as a subprocess configured through
   ``STREAMCAST_*`` variables, the default model (``ModelSpec()``, trained for a moment:
   it only needs weights), ``window.stride`` set per case, every other setting at its
   default (online retraining included: with the default topics a retraining is due
   at ``training.every_examples``, 1,000,000, midway through stride 96; the JSON says
   whether one started and the CPU its process used; ``--serving-only`` turns it off);
4. the Quix Streams peer (``quix_peer.py`` in ``--quix-dir``), ``--mode sink-batch``,
   commit interval 1 s, run with the Python of its own virtualenv (``--quix-venv``).

The ceilings are timed from their first record to their last (and the flush). streamcast
and the peer are timed the same way as each other, by their group's committed offsets,
polled every 0.25 s: readings/s between 10 % and 90 % of the topic committed (the peer
bench's measure) and from the first commit to the last. Neither includes start-up
(imports, model load, compile, group join). A process's CPU is from /proc, in cores.

The peer's virtualenv stays outside the project's dependencies; without it the peer is
reported as not run:

    python3 -m venv .venv-quix && .venv-quix/bin/pip install -r bench/requirements-quix.txt

The daemon reads stride 96 about five times as fast as stride 1, so that case has
more readings per sensor: each gives the daemon some 20 s of work between commits
once a second.

Topics are created with explicit ``retention.ms`` and ``retention.bytes``: the embedded
broker describes only configs set at creation, and Quix derives its changelog topics'
configs from the input topic's and fails without them.

    python -m bench.throughput [--sensors 1000] [--cases 1,96] [--steps-1 300]
                               [--steps-96 2000] [--quix-venv .venv-quix]
                               [--quix-dir ../shared/peers/quix] [--serving-only]
                               [--timeout 600] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from bench.common import stop_process, train_registry
from bench.pipeline import _produce
from bench.results import iso_minutes, write_json
from bench.retrain import _machine_jiffies, _trainer_pid
from bench.soak import _cpu_seconds, _scrape
from streamcast.config import KafkaSettings, ModelSpec, WindowSettings
from streamcast.signals import child_command
from streamcast.sim.broker import EmbeddedBroker, create_topics, free_port
from streamcast.sim.fleet import SensorFleet
from streamcast.stream.messages import encode_forecasts

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 6
SEED = 3  # bench.pipeline._produce's fleet: the payloads below come from the same sensors
POLL_S = 0.25
MIN_COMMITS = 5  # between 10 % and 90 % committed; fewer and the rate is mostly rounding
# Quix reads these from the input topic to configure its changelog topics.
TOPIC_CONFIGS = {"retention.ms": "604800000", "retention.bytes": "-1"}
INSTALL_QUIX = (
    "python3 -m venv .venv-quix && .venv-quix/bin/pip install -r bench/requirements-quix.txt"
)
# stride -> (streamcast / peer at least, the ceiling it is held to, streamcast / that at least)
TARGETS: dict[int, tuple[float, str, float]] = {
    1: (2.5, "consume_produce", 0.6),
    96: (3.0, "consume", 0.9),
}
CEILING_NAMES = {"consume": "consume + decode", "consume_produce": "consume + decode + produce"}


@dataclass
class Case:
    stride: int
    steps: int
    sensors: int
    topic: str
    readings: int = 0
    forecasts: int = 0  # readings that yield a forecast at this stride
    fill_s: float = 0.0


@dataclass
class Ceiling:
    readings: int
    produced: int
    seconds: float
    readings_s: float


@dataclass
class Sample:
    t_s: float  # since the process was started
    committed: int
    app_cpu_s: float | None
    broker_cpu_s: float | None
    machine: tuple[int, int]  # (busy, total) jiffies


@dataclass
class Run:
    """One streamcast or peer run, measured by its group's committed offsets."""

    name: str
    total: int
    samples: list[Sample] = field(default_factory=list)
    exit_code: int | None = None
    error: str | None = None
    forecasts_out: int | None = None
    forecast_bytes_mean: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def _first(self, at_least: float) -> Sample | None:
        return next((s for s in self.samples if s.committed >= at_least and s.committed), None)

    def span(self, lo: Sample | None, hi: Sample | None) -> dict[str, Any] | None:
        if lo is None or hi is None or hi.t_s <= lo.t_s:
            return None
        dt = hi.t_s - lo.t_s
        busy = hi.machine[0] - lo.machine[0]
        out: dict[str, Any] = {
            "readings_s": round((hi.committed - lo.committed) / dt),
            "seconds": round(dt, 2),
            "from_s": round(lo.t_s, 2),
            "machine_busy": round(busy / max(1, hi.machine[1] - lo.machine[1]), 3),
        }
        for key in ("app_cpu_s", "broker_cpu_s"):
            a, b = getattr(lo, key), getattr(hi, key)
            if a is not None and b is not None:
                out[key.replace("_s", "_cores")] = round((b - a) / dt, 2)
        return out

    def summary(self) -> dict[str, Any]:
        first, last = self._first(1), self._first(self.total)
        p10, p90 = self._first(0.1 * self.total), self._first(0.9 * self.total)
        commits = self.commits()
        steps = None
        if p10 is not None and p90 is not None:
            steps = sum(1 for t, _ in commits if p10.t_s < t <= p90.t_s)
        return {
            "name": self.name,
            "readings": self.total,
            "committed": self.samples[-1].committed if self.samples else 0,
            "exit_code": self.exit_code,
            "error": self.error,
            "p10_p90": self.span(p10, p90),
            "commits_10_90": steps,
            "first_to_last": self.span(first, last),
            "first_commit_s": None if first is None else round(first.t_s, 1),
            "all_committed_s": None if last is None else round(last.t_s, 1),
            "forecasts_out": self.forecasts_out,
            "forecast_bytes_mean": self.forecast_bytes_mean,
            **self.extra,
            "commits": commits,
        }

    def commits(self) -> list[tuple[float, int]]:
        """(seconds since start, readings committed) at each sample where it moved."""
        out: list[tuple[float, int]] = []
        for s in self.samples:
            if s.committed and (not out or s.committed != out[-1][1]):
                out.append((round(s.t_s, 2), s.committed))
        return out


def _create_topics(bootstrap: str, names: list[str]) -> None:
    """``names`` with PARTITIONS partitions and the retention configs Quix needs."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(n, PARTITIONS, 1, topic_configs=dict(TOPIC_CONFIGS)) for n in names]
        )
    finally:
        admin.close()


def _yields_forecast(count: int, stride: int, num_steps: int) -> bool:
    """Whether a sensor's ``count``-th reading completes a window at ``stride``."""
    first = num_steps + 1  # the window and the truth before it
    return count >= first and (count - first) % stride == 0


def _forecast_payloads(sensors: int, num_steps: int) -> dict[bytes, bytes]:
    """One real forecast message per sensor key (its own next readings as the values), so
    the ceiling sends what the daemon sends: the same size, and no easier for lz4 (a
    sensor's repeats lie further apart in a batch than lz4's 64 KB window)."""
    fleet = SensorFleet(sensors, seed=SEED)
    ts, values = fleet.series(2 * num_steps)
    encoded = encode_forecasts(
        fleet.sensor_ids,
        ts[num_steps],
        fleet.step_s,
        values[:, num_steps:, :],
        time.time(),
        1,
        "truth",
    )
    return {s.encode(): v for s, v in zip(fleet.sensor_ids, encoded, strict=True)}


def _ceiling(
    bootstrap: str, case: Case, payloads: dict[bytes, bytes] | None, out_topic: str
) -> Ceiling:
    """Read the whole topic like the daemon's consumer does; with ``payloads``, also send
    one forecast per window the daemon would complete, with its producer settings."""
    kafka, num_steps = KafkaSettings(), WindowSettings().num_steps
    consumer = KafkaConsumer(
        case.topic,
        bootstrap_servers=bootstrap,
        group_id=f"ceiling-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        max_poll_records=kafka.max_poll_records,
    )
    producer = None
    if payloads is not None:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=kafka.linger_ms,
            compression_type=kafka.compression_type,
            batch_size=kafka.producer_batch_bytes,
            max_request_size=max(1_048_576, 4 * kafka.max_message_bytes),
        )
    counts: dict[bytes, int] = {}
    seen = produced = 0
    started: float | None = None
    loads, stride = orjson.loads, case.stride
    try:
        while seen < case.readings:
            for records in consumer.poll(timeout_ms=500).values():
                if started is None:
                    started = time.perf_counter()
                for rec in records:
                    loads(rec.value)
                    if producer is not None and payloads is not None:
                        n = counts[rec.key] = counts.get(rec.key, 0) + 1
                        if _yields_forecast(n, stride, num_steps):
                            producer.send(out_topic, key=rec.key, value=payloads[rec.key])
                            produced += 1
                seen += len(records)
        if producer is not None:
            producer.flush()
        elapsed = time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()
        if producer is not None:
            producer.close()
    return Ceiling(seen, produced, round(elapsed, 2), seen / elapsed)


def _committed(admin: KafkaAdminClient, group: str, topic: str) -> int:
    try:
        offsets = admin.list_group_offsets(group).get(group) or {}
    except Exception:  # the group does not exist yet, or the coordinator is loading
        return 0
    return sum(
        om.offset for tp, om in offsets.items() if tp.topic == topic and om.offset is not None
    )


def _watch(
    run: Run,
    proc: subprocess.Popen[bytes],
    bootstrap: str,
    group: str,
    topic: str,
    broker_pid: int | None,
    timeout_s: float,
    trainers: dict[int, float] | None = None,
) -> None:
    """Sample the group's committed offsets until the whole topic is committed; with
    ``trainers``, also the CPU seconds of every retraining process seen (pid -> seconds)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    t0 = time.monotonic()
    try:
        while True:
            time.sleep(POLL_S)
            if trainers is not None and (pid := _trainer_pid(proc.pid)) is not None:
                trainers[pid] = _cpu_seconds(pid) or trainers.get(pid, 0.0)
            done = max(0, _committed(admin, group, topic))
            run.samples.append(
                Sample(
                    time.monotonic() - t0,
                    done,
                    _cpu_seconds(proc.pid),
                    None if broker_pid is None else _cpu_seconds(broker_pid),
                    _machine_jiffies(),
                )
            )
            if done >= run.total:
                return
            if proc.poll() is not None:
                run.error = f"exited early with code {proc.returncode}"
                return
            if time.monotonic() - t0 > timeout_s:
                run.error = f"not done after {timeout_s:.0f} s"
                return
    finally:
        admin.close()


def _count_output(bootstrap: str, topic: str, expected: int) -> tuple[int, float | None]:
    """(messages, mean value bytes) on ``topic``: that each ran the whole job, and how big
    its forecasts really are. Read to the end, after the measurement."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1_048_576,
    )
    n = size = 0
    deadline = time.monotonic() + 120
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            got = consumer.poll(timeout_ms=500, max_records=50_000)
            for records in got.values():
                n += len(records)
                size += sum(len(r.value or b"") for r in records)
            if got:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > (1.0 if n >= expected else 5.0):
                break
    finally:
        consumer.close()
    return n, (round(size / n, 1) if n else None)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _run_streamcast(
    bootstrap: str,
    case: Case,
    registry: Path,
    work: Path,
    broker_pid: int | None,
    timeout_s: float,
    *,
    online: bool,
) -> Run:
    """``python -m streamcast run`` over the case's topic with a fresh group."""
    tag = f"s{case.stride}-{uuid.uuid4().hex[:6]}"
    group, out = f"streamcast-{tag}", f"{case.topic}.streamcast"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAST_")}
    env.update(
        {
            "STREAMCAST_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "STREAMCAST_KAFKA__INPUT_TOPIC": case.topic,
            "STREAMCAST_KAFKA__OUTPUT_TOPIC": out,
            "STREAMCAST_KAFKA__DLQ_TOPIC": f"{case.topic}.dlq",
            "STREAMCAST_KAFKA__GROUP_ID": group,
            "STREAMCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "STREAMCAST_KAFKA__HEARTBEAT_INTERVAL_MS": "2000",
            "STREAMCAST_WINDOW__STRIDE": str(case.stride),
            "STREAMCAST_TRAINING__ONLINE": str(online).lower(),
            "STREAMCAST_REGISTRY__PATH": str(registry),
            "STREAMCAST_HTTP__HOST": "127.0.0.1",
            "STREAMCAST_HTTP__PORT": str(port),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    log = work / f"streamcast-{tag}.log"
    run = Run("streamcast", case.readings)
    trainers: dict[int, float] = {}
    with log.open("wb") as out_file:
        proc = subprocess.Popen(
            child_command([sys.executable, "-m", "streamcast", "run"]),
            env=env,
            stdout=out_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _watch(run, proc, bootstrap, group, case.topic, broker_pid, timeout_s, trainers)
        metrics = _scrape(port) or {}
        run.extra = {
            "forecasts_total": int(metrics.get("streamcast_forecasts_total", 0)),
            "dead_letters_total": int(metrics.get("streamcast_dead_letters_total", 0)),
        }
    finally:
        run.exit_code = stop_process(proc)
    text = log.read_text(errors="replace")
    run.extra["retraining_started"] = "retraining started" in text
    ended = re.search(r"retraining (promoted|rejected) .*", text)
    run.extra["retraining_outcome"] = ended.group(0) if ended else None
    run.extra["trainer_cpu_s"] = round(sum(trainers.values()), 1)
    if run.error:
        print(f"streamcast, stride {case.stride}: {run.error}\n{_tail(log)}", file=sys.stderr)
    run.forecasts_out, run.forecast_bytes_mean = _count_output(bootstrap, out, case.forecasts)
    return run


def _quix_python(venv: Path) -> Path | None:
    """The peer venv's Python, if it holds quixstreams."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import quixstreams, tensorflow, confluent_kafka"],
        capture_output=True,
        check=False,
    )
    return python if probe.returncode == 0 else None


def _run_peer(
    bootstrap: str,
    case: Case,
    python: Path,
    quix_dir: Path,
    work: Path,
    broker_pid: int | None,
    timeout_s: float,
) -> Run:
    """The Quix Streams peer, micro-batched (``sink-batch``), commit interval 1 s."""
    tag = f"s{case.stride}-{uuid.uuid4().hex[:6]}"
    group, out = f"quix-{tag}", f"{case.topic}.quix"
    _create_topics(bootstrap, [out])
    log = work / f"quix-{tag}.log"
    cmd = [
        str(python),
        str(quix_dir / "quix_peer.py"),
        "--broker",
        bootstrap,
        "--input",
        case.topic,
        "--output",
        out,
        "--group",
        group,
        "--stride",
        str(case.stride),
        "--mode",
        "sink-batch",
        "--state-dir",
        str(work / f"quix-state-{tag}"),
        "--commit-interval",
        "1",
    ]
    run = Run("quix peer", case.readings)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log.open("wb") as out_file:
        proc = subprocess.Popen(
            child_command(cmd),
            env=env,
            cwd=work,
            stdout=out_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _watch(run, proc, bootstrap, group, case.topic, broker_pid, timeout_s)
    finally:
        run.exit_code = stop_process(proc)
    if run.error:
        print(f"quix peer, stride {case.stride}: {run.error}\n{_tail(log)}", file=sys.stderr)
    run.forecasts_out, run.forecast_bytes_mean = _count_output(bootstrap, out, case.forecasts)
    return run


def _rate(run: dict[str, Any] | None, span: str = "p10_p90") -> float | None:
    part = (run or {}).get(span)
    return None if part is None else float(part["readings_s"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def _fmt(v: float | None, spec: str = ",.0f", width: int = 10) -> str:
    return f"{'-':>{width}}" if v is None else f"{format(v, spec):>{width}}"


def _case_result(
    case: Case, ceilings: dict[str, Ceiling], sc: Run, peer: Run | None
) -> dict[str, Any]:
    streamcast, quix = sc.summary(), None if peer is None else peer.summary()
    sc_rate = _rate(streamcast)
    ratios = {
        "streamcast_vs_consume": _ratio(sc_rate, ceilings["consume"].readings_s),
        "streamcast_vs_consume_produce": _ratio(sc_rate, ceilings["consume_produce"].readings_s),
        "streamcast_vs_peer": _ratio(sc_rate, _rate(quix)),
        "streamcast_vs_peer_first_to_last": _ratio(
            _rate(streamcast, "first_to_last"), _rate(quix, "first_to_last")
        ),
    }
    targets: dict[str, Any] = {}
    if case.stride in TARGETS:
        peer_min, ceiling, ceiling_min = TARGETS[case.stride]
        vs_peer, vs_ceiling = ratios["streamcast_vs_peer"], ratios[f"streamcast_vs_{ceiling}"]
        targets = {
            "vs_peer": {
                "at_least": peer_min,
                "ratio": vs_peer,
                "met": None if vs_peer is None else vs_peer >= peer_min,
            },
            f"vs_{ceiling}": {
                "at_least": ceiling_min,
                "ratio": vs_ceiling,
                "met": None if vs_ceiling is None else vs_ceiling >= ceiling_min,
            },
        }
    return {
        **asdict(case),
        "ceilings": {
            k: {**asdict(c), "readings_s": round(c.readings_s)} for k, c in ceilings.items()
        },
        "streamcast": streamcast,
        "quix_peer": quix if quix is not None else "not run",
        "ratios": ratios,
        "targets": targets,
    }


def _print_tables(results: list[dict[str, Any]], payload_bytes: float) -> None:
    print()
    print(
        f"{'stride':>6} {'readings':>9} {'forecasts':>9} {'consume':>10} {'+produce':>10} "
        f"{'streamcast':>10} {'quix peer':>10} {'sc/consume':>10} {'sc/+prod':>10} "
        f"{'sc/peer':>10}"
    )
    for r in results:
        ratios, quix = r["ratios"], r["quix_peer"]
        print(
            f"{r['stride']:>6} {r['readings']:>9,} {r['forecasts']:>9,} "
            f"{_fmt(r['ceilings']['consume']['readings_s'])} "
            f"{_fmt(r['ceilings']['consume_produce']['readings_s'])} "
            f"{_fmt(_rate(r['streamcast']))} "
            f"{_fmt(_rate(quix) if isinstance(quix, dict) else None)} "
            f"{_fmt(ratios['streamcast_vs_consume'], '.3f')} "
            f"{_fmt(ratios['streamcast_vs_consume_produce'], '.3f')} "
            f"{_fmt(ratios['streamcast_vs_peer'], '.3f')}"
        )
    print(
        "readings/s; streamcast and the peer between 10 % and 90 % of the topic committed, "
        f"the ceilings over the whole topic; +produce sends a {payload_bytes:,.0f}-byte "
        "forecast per window."
    )
    print()
    print(
        f"{'stride':>6} {'who':<11} {'10-90 %':>9} {'first-last':>10} {'1st commit':>10} "
        f"{'app cores':>9} {'broker':>7} {'machine':>7} {'forecasts':>9} {'bytes':>6}"
    )
    for r in results:
        for who, run in (("streamcast", r["streamcast"]), ("quix peer", r["quix_peer"])):
            if not isinstance(run, dict):
                print(f"{r['stride']:>6} {who:<11} not run")
                continue
            span = run["p10_p90"] or {}
            print(
                f"{r['stride']:>6} {who:<11} {_fmt(_rate(run), width=9)} "
                f"{_fmt(_rate(run, 'first_to_last'))} "
                f"{_fmt(run['first_commit_s'], '.1f')} "
                f"{_fmt(span.get('app_cpu_cores'), '.2f', 9)} "
                f"{_fmt(span.get('broker_cpu_cores'), '.2f', 7)} "
                f"{_fmt(span.get('machine_busy'), '.0%', 7)} "
                f"{_fmt(run['forecasts_out'], ',.0f', 9)} "
                f"{_fmt(run['forecast_bytes_mean'], ',.0f', 6)}"
                + (f"  ({run['error']})" if run["error"] else "")
            )
    print(
        "1st commit: seconds from start to the first commit (start-up, not measured); cores "
        "and the machine's busy share (both cores, every tenant) over 10-90 %."
    )
    for r in results:
        for who, run in (("streamcast", r["streamcast"]), ("quix peer", r["quix_peer"])):
            if isinstance(run, dict) and (run["commits_10_90"] or 0) < MIN_COMMITS:
                print(
                    f"stride {r['stride']}, {who}: {run['commits_10_90'] or 0} commits between "
                    f"10 % and 90 %, too few for a rate: raise --steps-{r['stride']}"
                )
    print()
    for r in results:
        for name, t in r["targets"].items():
            ceiling = name.removeprefix("vs_")
            what = "the peer" if ceiling == "peer" else f"the {CEILING_NAMES[ceiling]} ceiling"
            verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
            print(
                f"stride {r['stride']}: streamcast / {what}: {_fmt(t['ratio'], '.3f', 0)} "
                f"(target >= {t['at_least']}): {verdict}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--cases", default="1,96", help="strides, from 1 and 96")
    parser.add_argument("--steps-1", type=int, default=300, help="readings per sensor, stride 1")
    parser.add_argument("--steps-96", type=int, default=2000, help="readings per sensor, stride 96")
    parser.add_argument("--quix-venv", type=Path, default=REPO / ".venv-quix")
    parser.add_argument("--quix-dir", type=Path, default=REPO / ".." / "shared/peers/quix")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per daemon run")
    parser.add_argument(
        "--serving-only",
        action="store_true",
        help="run streamcast with training.online false: no replay buffer, no retraining",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON object here")
    args = parser.parse_args()
    strides = [int(s) for s in args.cases.split(",")]
    steps = {1: args.steps_1, 96: args.steps_96}
    if any(s not in steps for s in strides):
        parser.error("--cases takes strides 1 and 96")
    num_steps = WindowSettings().num_steps

    quix_python = _quix_python(args.quix_venv.resolve())
    quix_dir = args.quix_dir.resolve()
    if quix_python is None or not (quix_dir / "quix_peer.py").exists():
        why = (
            f"no quix_peer.py in {quix_dir}"
            if quix_python is not None
            else f"no usable virtualenv at {args.quix_venv}; create it with:\n  {INSTALL_QUIX}"
        )
        print(f"Quix peer not run: {why}", file=sys.stderr)
        quix_python = None

    load_before = os.getloadavg()
    started = time.time()
    results: list[dict[str, Any]] = []
    payloads = _forecast_payloads(args.sensors, num_steps)
    payload_bytes = sum(map(len, payloads.values())) / len(payloads)
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        registry = work / "registry"
        print(f"training the default model {list(ModelSpec().units)} briefly ...", flush=True)
        train_registry(registry, ModelSpec().units)
        proc = getattr(broker, "_proc", None)
        broker_pid = proc.pid if proc is not None else None
        bootstrap = broker.bootstrap
        for stride in strides:
            case = Case(
                stride, steps[stride], args.sensors, f"readings-s{stride}-{uuid.uuid4().hex[:6]}"
            )
            per_sensor = max(0, (case.steps - (num_steps + 1)) // stride + 1)
            case.forecasts = args.sensors * per_sensor
            _create_topics(bootstrap, [case.topic])
            t0 = time.perf_counter()
            case.readings = _produce(bootstrap, case.topic, args.sensors, case.steps)
            case.fill_s = round(time.perf_counter() - t0, 1)
            print(
                f"stride {stride}: {case.readings:,} readings on {case.topic} in {case.fill_s} s",
                flush=True,
            )
            ceilings = {"consume": _ceiling(bootstrap, case, None, "")}
            out = f"{case.topic}.ceiling"
            create_topics(bootstrap, {out: PARTITIONS})
            ceilings["consume_produce"] = _ceiling(bootstrap, case, payloads, out)
            for name, c in ceilings.items():
                print(
                    f"  ceiling {CEILING_NAMES[name]}: {c.readings_s:,.0f} readings/s", flush=True
                )
            sc = _run_streamcast(
                bootstrap,
                case,
                registry,
                work,
                broker_pid,
                args.timeout,
                online=not args.serving_only,
            )
            print(f"  streamcast: {_fmt(_rate(sc.summary()), width=0)} readings/s", flush=True)
            peer = None
            if quix_python is not None:
                peer = _run_peer(
                    bootstrap, case, quix_python, quix_dir, work, broker_pid, args.timeout
                )
                print(f"  quix peer: {_fmt(_rate(peer.summary()), width=0)} readings/s", flush=True)
            results.append(_case_result(case, ceilings, sc, peer))

    _print_tables(results, payload_bytes)
    result = {
        "bench": "throughput",
        "started": iso_minutes(started),
        "seconds": round(time.time() - started),
        "machine": {
            "cpu_count": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "sensors": args.sensors,
        "partitions": PARTITIONS,
        "units": list(ModelSpec().units),
        "training_online": not args.serving_only,
        "forecast_payload_bytes": round(payload_bytes, 1),
        "quix_peer": (
            {
                "python": str(quix_python),
                "dir": str(quix_dir),
                "mode": "sink-batch",
                "commit_interval_s": 1,
            }
            if quix_python is not None
            else f"not run: {INSTALL_QUIX}"
        ),
        "cases": results,
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    write_json(args.out, result)


if __name__ == "__main__":
    main()
