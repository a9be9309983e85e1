"""The ``streamcast`` command: run, demo, broker, simulate, train, models (``models_cli``),
backtest and replay (``data_cli``), config."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from streamcast import __version__
from streamcast.data_cli import add_parsers as add_data_parsers
from streamcast.errors import StreamcastError
from streamcast.models_cli import add_parser as add_models_parser
from streamcast.signals import StopSignals

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
    if daemon.serving.load_running():
        # A model still compiling on a worker thread would abort the interpreter's exit
        # (native threads cut mid-call): leave now, with the daemon's own exit code.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
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

    if args.follow:
        return _train_follow(args)

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
        from streamcast.learn.datafiles import load_series, parse_ts

        try:
            until = parse_ts(args.until) if args.until is not None else None
            timestamps, series, source = load_series(
                args.data, settings.window.gap_factor, skip_bad=args.skip_bad, until=until
            )
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


def _train_follow(args: argparse.Namespace) -> int:
    """The trainer as its own process: reads the stream, retrains, promotes."""
    from streamcast.ops.logs import setup_logging

    settings = _settings(args.config)
    if settings is None:
        return EXIT_STARTUP
    if args.registry:
        registry = settings.registry.model_copy(update={"path": Path(args.registry)})
        settings = settings.model_copy(update={"registry": registry})
    setup_logging(settings.log.level, settings.log.format)
    from streamcast.stream.trainer import Trainer

    trainer = Trainer(settings)
    with StopSignals(trainer.stop, grace_s=settings.shutdown_timeout_s + 5):
        return trainer.run()


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

    p = sub.add_parser(
        "train",
        help="train a model version from a CSV or simulated data, or follow the stream",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--follow",
        action="store_true",
        help="run the trainer on its own: read the readings topic, retrain and promote "
        "periodically (daemons then set training.online: false)",
    )
    src.add_argument(
        "--data", help="CSV or Parquet with columns sensor,ts,v1,v2 (one row per reading)"
    )
    src.add_argument("--simulated", action="store_true", help="train on the simulated fleet")
    p.add_argument("--registry", help="model registry directory (default: registry.path)")
    p.add_argument("--config", help="YAML config file for the model shape and training")
    p.add_argument("--sensors", type=int, default=24, help="simulated sensors")
    p.add_argument("--days", type=int, default=28, help="simulated days")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--until",
        metavar="TS",
        help="train only on readings before TS (epoch seconds or ISO 8601); "
        "backtest the rest with --start TS",
    )
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed rows")
    p.add_argument("--max-seconds", type=float, default=None, help="training time budget")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
    p.set_defaults(func=cmd_train)

    add_models_parser(sub)
    add_data_parsers(sub)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = csub.add_parser("show", help="print the effective configuration, secrets masked")
    show.add_argument("--config", help="YAML config file")
    show.set_defaults(func=cmd_config_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StreamcastError as exc:
        print(f"streamcast: {exc}", file=sys.stderr)
        return EXIT_STARTUP if args.command in ("run", "train", "config") else 1


if __name__ == "__main__":
    sys.exit(main())
