"""The ``streamcast`` command: run, demo, broker, simulate, train, models, config."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import yaml

from streamcast import __version__
from streamcast.errors import RegistryError, StreamcastError
from streamcast.signals import StopSignals

if TYPE_CHECKING:
    from streamcast.learn.registry import ModelRegistry

logger = logging.getLogger("streamcast")

EXIT_STARTUP = 3


def _settings(path: str | None) -> Any:
    """The validated settings, or None after printing the one line that says why not."""
    from streamcast.config import load_settings

    try:
        return load_settings(path)
    except StreamcastError as exc:
        print(f"streamcast: startup failed: {exc}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from streamcast.ops.logs import setup_logging

    settings = _settings(args.config)
    if settings is None:
        return EXIT_STARTUP
    setup_logging(settings.log.level, settings.log.format)
    from streamcast.stream.daemon import Daemon

    daemon = Daemon(settings)
    with StopSignals(daemon.stop, grace_s=settings.shutdown_timeout_s + 5):
        code = daemon.run()
    if code == EXIT_STARTUP:
        print("streamcast: startup failed (see the log line above)", file=sys.stderr)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from streamcast.sim.demo import run_demo

    return run_demo(
        duration_s=args.duration,
        sensors=args.sensors,
        rate=args.rate,
        registry=args.registry,
        log_level=args.log_level,
        train_seconds=args.train_seconds,
    )


def cmd_broker(args: argparse.Namespace) -> int:
    from streamcast.ops.logs import setup_logging
    from streamcast.sim.broker import EmbeddedBroker

    setup_logging("INFO")
    stop = threading.Event()
    try:
        embedded = EmbeddedBroker(host=args.host, port=args.port, advertise=args.advertise)
    except ValueError as exc:
        print(f"streamcast broker: --advertise: {exc}", file=sys.stderr)
        return 2
    with StopSignals(stop), embedded as broker:
        where = broker.bootstrap
        if broker.advertised != broker.bootstrap:
            where += f", advertised as {broker.advertised}"
        print(f"broker listening on {where} (Ctrl-C stops it; data is in memory only)", flush=True)
        while not stop.wait(0.5):
            if not broker.running():
                print("streamcast: the broker exited", file=sys.stderr)
                return 1
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from streamcast.ops.logs import setup_logging
    from streamcast.sim.producer import FleetProducer

    setup_logging("INFO")
    stop = threading.Event()
    pub = FleetProducer(
        args.bootstrap,
        topic=args.topic,
        sensors=args.sensors,
        rate=args.rate,
        seed=args.seed,
        malformed_share=args.malformed,
        regime_change_at=args.regime_change_at,
        history_steps=args.history,
    )
    with StopSignals(stop):
        try:
            sent = pub.run(count=args.count, duration_s=args.duration, stop=stop)
        finally:
            pub.close()
    print(f"sent {sent} readings ({pub.malformed} malformed) to {args.topic}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from streamcast.config import load_settings
    from streamcast.ops.logs import setup_logging

    setup_logging("INFO")
    settings = load_settings(args.config)
    overrides: dict[str, Any] = {}
    if args.max_seconds is not None:
        overrides["max_seconds"] = args.max_seconds
    # Offline training has the machine to itself (the daemon's trainer keeps to
    # training.threads so inference keeps a core).
    overrides["threads"] = args.threads
    training = settings.training.model_copy(update=overrides)
    spec = settings.model
    if args.simulated:
        from streamcast.sim.fleet import DAY_S, SensorFleet

        fleet = SensorFleet(args.sensors, seed=args.seed, num_features=spec.num_features)
        ts, values = fleet.series(round(args.days * DAY_S / fleet.step_s))
        timestamps = [ts] * args.sensors
        series = [values[i] for i in range(args.sensors)]
        source = f"simulated fleet ({args.sensors} sensors, {args.days} days, seed {args.seed})"
    else:
        from streamcast.learn.datafiles import load_series

        try:
            timestamps, series, source = load_series(args.data, settings.window.gap_factor)
        except (OSError, ValueError) as exc:
            print(f"streamcast train: {exc}", file=sys.stderr)
            return 1
    print(f"data: {source}", flush=True)
    from streamcast.learn.fit import train_and_save

    try:
        train_and_save(
            spec, series, training, args.registry or settings.registry.path, timestamps=timestamps
        )
    except ValueError as exc:  # data that cannot train this model: say why, no traceback
        print(f"streamcast train: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``streamcast models [list | show V | promote V | rollback]``; errors: one line, exit 1."""
    from streamcast.config import load_settings
    from streamcast.learn.registry import ModelRegistry

    action = args.models_command or "list"
    try:
        settings = load_settings(args.config)
        path = args.registry or settings.registry.path
        registry = ModelRegistry(path, keep=settings.registry.keep)
        text, data = _MODEL_ACTIONS[action](registry, args)
    except (StreamcastError, OSError, ValueError) as exc:
        print(f"streamcast models {action}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, sort_keys=True) if args.json else text)
    return 0


#: What a ``models`` action prints: (the text, the object ``--json`` prints instead).
_Report = tuple[str, dict[str, Any]]


def _models_list(registry: ModelRegistry, args: argparse.Namespace) -> _Report:
    from streamcast.learn.lease import RegistryLease

    pointer = registry.pointer()
    current = pointer.current if pointer is not None else None
    lease = RegistryLease(registry.path, "streamcast models", ttl_s=1.0).holder()
    rows: list[dict[str, Any]] = []
    for v in registry.versions():
        row: dict[str, Any] = {"version": v, "current": v == current}
        try:
            meta = registry.meta(v)
        except RegistryError as exc:
            row["error"] = str(exc)
            rows.append(row)
            continue
        cfg = meta.get("model_config") or {}
        mae = _val_mae(meta.get("metrics") or {})
        row.update(
            created=meta.get("created"),
            units=cfg.get("units"),
            horizon=cfg.get("horizon"),
            val_mae=None if mae is None else {"model": mae[0], "best_baseline": mae[1]},
        )
        rows.append(row)
    data = {
        "registry": str(registry.path),
        "current": current,
        "previous": list(pointer.previous) if pointer is not None else [],
        "lease": asdict(lease) if lease is not None else None,
        "versions": rows,
    }
    if not rows:
        return f"no model versions in {registry.path}", data
    lines = [
        f"  {'version':>7}  {'created':<25}  {'units':<12}  {'horizon':>7}"
        "  val MAE (model / best baseline)"
    ]
    for row in rows:
        mark = "*" if row["current"] else " "
        if "error" in row:
            lines.append(f"{mark} {row['version']:>7}  unreadable: {row['error']}")
            continue
        mae = row["val_mae"]
        shown = "?" if mae is None else f"{mae['model']:.4f} / {mae['best_baseline']:.4f}"
        lines.append(
            f"{mark} {row['version']:>7}  {row['created'] or '?':<25}  {row['units']!s:<12}  "
            f"{row['horizon'] if row['horizon'] is not None else '?':>7}  {shown}"
        )
    if pointer is None:
        lines.append("no current pointer: daemons serve the newest usable version")
    else:
        back = ", then ".join(str(v) for v in pointer.previous) or "nothing"
        lines.append(f"* current: version {pointer.current} (rollback goes to {back})")
    if lease is not None:
        lines.append(
            f"lease: held by {lease.holder} on {lease.host} (pid {lease.pid}) "
            f"for another {max(0.0, lease.remaining()):.0f}s"
        )
    return "\n".join(lines), data


def _models_show(registry: ModelRegistry, args: argparse.Namespace) -> _Report:
    version = _version_arg(args.version)
    meta = registry.meta(version)
    try:
        registry.verify(version)
        check = "ok"
    except RegistryError as exc:
        check = str(exc)
    current = registry.current() == version
    data = {
        "version": version,
        "current": current,
        "path": str(registry.version_path(version)),
        "check": check,
        "meta": meta,
    }
    head = f"model version {version}{' (current)' if current else ''}: {data['path']}"
    text = f"{head}\ncheck: {check}\n{json.dumps(meta, indent=2, sort_keys=True)}"
    return text, data


def _models_promote(registry: ModelRegistry, args: argparse.Namespace) -> _Report:
    version = _version_arg(args.version)
    done = registry.promote(version)
    data = {
        "action": "promote",
        "current": done.current,
        "previous": done.previous,
        "removed": list(done.removed),
    }
    if done.previous == done.current:
        return f"model version {version} is already current", data
    was = "no pointer before" if done.previous is None else f"was {done.previous}"
    text = f"current: model version {done.current} ({was})"
    if done.removed:
        text += "\nretention removed versions " + ", ".join(str(v) for v in done.removed)
    return text, data


def _models_rollback(registry: ModelRegistry, args: argparse.Namespace) -> _Report:
    before = registry.current()
    version = registry.rollback()
    data = {"action": "rollback", "current": version, "previous": before}
    return f"current: model version {version} (rolled back from {before})", data


_MODEL_ACTIONS = {
    "list": _models_list,
    "show": _models_show,
    "promote": _models_promote,
    "rollback": _models_rollback,
}


def _version_arg(text: str) -> int:
    """``5``, ``v5`` and ``v000005`` all name version 5."""
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit() or int(digits) < 1:
        raise ValueError(f"not a model version: {text!r} (expected e.g. 5 or v000005)")
    return int(digits)


def _val_mae(metrics: dict[str, Any]) -> tuple[float, float] | None:
    """(the model's validation MAE, the best baseline's), when the metrics have them."""
    try:
        scores = metrics["scores"]
        model = float(scores["model"]["mean"]["mae"])
        best = min(float(v["mean"]["mae"]) for k, v in scores.items() if k != "model")
        return model, best
    except (KeyError, TypeError, ValueError):
        return None


def cmd_config_show(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if settings is None:
        return EXIT_STARTUP
    sys.stdout.write(yaml.safe_dump(settings.masked(), sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamcast",
        description="Streaming forecaster: Kafka readings in, LSTM forecasts out.",
    )
    parser.add_argument("--version", action="version", version=f"streamcast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("--config", help="YAML config file (STREAMCAST_* env vars override it)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="embedded broker + simulated sensors + the daemon, live view")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument("--sensors", type=int, default=20)
    p.add_argument("--rate", type=float, default=200.0, help="readings per second, all sensors")
    p.add_argument("--registry", default=None, help="model registry (default: a temporary dir)")
    p.add_argument(
        "--train-seconds",
        type=float,
        default=25.0,
        help="time budget for training the first model from the stream",
    )
    p.add_argument("--log-level", default="WARNING")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker in the foreground")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        default=None,
        help="address given to clients in metadata (default: where it listens), "
        "e.g. a TCP proxy in front of the broker",
    )
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("simulate", help="publish simulated sensor readings")
    p.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    p.add_argument("--topic", default="streamcast.readings")
    p.add_argument("--sensors", type=int, default=10)
    p.add_argument("--rate", type=float, default=100.0, help="readings per second, all sensors")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--count", type=int, default=None, help="stop after N readings")
    stop.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--history", type=int, default=0, help="backfill N steps first, unpaced")
    p.add_argument("--malformed", type=float, default=0.0, help="share of malformed messages")
    p.add_argument("--regime-change-at", type=int, default=None, metavar="STEP")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("train", help="train a model version from a CSV or simulated data")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="CSV with header sensor,ts,v1,v2 (one row per reading)")
    src.add_argument("--simulated", action="store_true", help="train on the simulated fleet")
    p.add_argument("--registry", help="model registry directory (default: registry.path)")
    p.add_argument("--config", help="YAML config file for the model shape and training")
    p.add_argument("--sensors", type=int, default=24, help="simulated sensors")
    p.add_argument("--days", type=int, default=28, help="simulated days")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=None, help="training time budget")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "models",
        help="list, show, promote or roll back model versions (default: list)",
        description="The model registry: which version daemons serve (current) and the "
        "others. Running daemons follow a promotion or rollback within seconds.",
    )
    _models_options(p, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _models_options(common, top=False)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.add_parser("list", parents=[common], help="list versions, marking the current one")
    m = msub.add_parser("show", parents=[common], help="print a version's meta.json")
    m.add_argument("version", help="e.g. 5 or v000005")
    m = msub.add_parser("promote", parents=[common], help="make a version current (it must verify)")
    m.add_argument("version", help="e.g. 5 or v000005")
    msub.add_parser(
        "rollback", parents=[common], help="make the version served before current again"
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = csub.add_parser("show", help="print the effective configuration, secrets masked")
    show.add_argument("--config", help="YAML config file")
    show.set_defaults(func=cmd_config_show)
    return parser


def _models_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--registry``, ``--config`` and ``--json``, accepted before or after the action.

    After it they default to SUPPRESS, so they do not overwrite values given before it.
    """
    unset: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--registry", metavar="DIR", help="model registry (default: registry.path)", **unset
    )
    parser.add_argument("--config", help="YAML config file (for registry.path, .keep)", **unset)
    parser.add_argument("--json", action="store_true", help="print one JSON object", **unset)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StreamcastError as exc:
        print(f"streamcast: {exc}", file=sys.stderr)
        return EXIT_STARTUP if args.command in ("run", "train", "config") else 1


if __name__ == "__main__":
    sys.exit(main())
