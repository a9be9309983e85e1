"""``streamcast backtest`` and ``streamcast replay``: a model tried on the user's own history.

Kept apart from ``cli``, which registers them: both read a history file (CSV or
Parquet, ``sensor,ts,v1,v2``) and report on it, one offline through the daemon's own
stages, one through Kafka to a running daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from streamcast.errors import StreamcastError
from streamcast.models_cli import version_arg
from streamcast.signals import StopSignals

_DATA_HELP = "history file: CSV or Parquet with columns sensor,ts,v1,v2 (one row per reading)"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``backtest`` and ``replay`` on the top-level subcommands."""
    p = sub.add_parser(
        "backtest",
        help="walk a model version through a history file as the daemon would, and score it",
        description="Forecasts every window of the file with the daemon's own window store, "
        "seeding and stride, and scores them against the readings that followed, next to "
        "persistence and seasonal naive: MAE, RMSE and sMAPE per horizon bucket, per "
        "feature and overall, in the data's units.",
    )
    p.add_argument("--data", required=True, metavar="FILE", help=_DATA_HELP)
    p.add_argument("--registry", metavar="DIR", help="model registry (default: registry.path)")
    p.add_argument("--version", type=version_arg, help="model version (default: the current)")
    p.add_argument("--config", help="YAML config file (window.stride, .gap_factor, registry)")
    p.add_argument(
        "--stride", type=int, help="forecast every K-th reading (default: window.stride)"
    )
    p.add_argument(
        "--start",
        metavar="TS",
        help="score only forecasts issued at or after TS (epoch seconds or ISO 8601); "
        "earlier rows serve as history",
    )
    p.add_argument("--sensors", metavar="A,B", help="only these sensors (comma-separated)")
    p.add_argument(
        "--season", type=int, metavar="STEPS", help="seasonal-naive period (default: horizon)"
    )
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed rows")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--plot", metavar="PNG", help="draw truth, forecasts and error by horizon")
    p.add_argument(
        "--output", metavar="FILE", help="write every forecast as JSON lines (the topic's format)"
    )
    p.set_defaults(func=cmd_backtest)

    p = sub.add_parser(
        "replay",
        help="send a history file's readings to Kafka in time order, keyed by sensor",
    )
    p.add_argument("--data", required=True, metavar="FILE", help=_DATA_HELP)
    p.add_argument("--bootstrap", required=True, metavar="HOST:PORT")
    p.add_argument("--topic", default="streamcast.readings")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=float,
        metavar="X",
        help="event time runs X times faster than the wall clock (1: real time)",
    )
    pace.add_argument("--max", action="store_true", help="as fast as possible (the default)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed rows")
    p.set_defaults(func=cmd_replay)


def _load(args: argparse.Namespace, command: str) -> Any:
    """The file's readings, or None after printing why not (one line)."""
    from streamcast.learn.datafiles import load_readings

    try:
        loaded = load_readings(args.data, skip_bad=args.skip_bad)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"streamcast {command}: {exc}", file=sys.stderr)
        return None
    if loaded.skipped:
        print(
            f"streamcast {command}: skipped {loaded.skipped} malformed rows of {args.data} "
            f"(first: {'; '.join(loaded.first_skips[:3])})",
            file=sys.stderr,
        )
    return loaded


def cmd_backtest(args: argparse.Namespace) -> int:
    from streamcast.config import load_settings
    from streamcast.learn.datafiles import parse_ts
    from streamcast.ops.progress import ProgressBar

    settings = load_settings(args.config)
    try:
        start = parse_ts(args.start) if args.start is not None else None
    except ValueError as exc:
        print(f"streamcast backtest: --start: {exc}", file=sys.stderr)
        return 1
    sensors = [s.strip() for s in args.sensors.split(",") if s.strip()] if args.sensors else None
    stride = args.stride if args.stride is not None else settings.window.stride
    if stride < 1:
        print("streamcast backtest: --stride must be >= 1", file=sys.stderr)
        return 1
    loaded = _load(args, "backtest")
    if loaded is None:
        return 1
    from streamcast.stream.backtest import format_report, run_backtest

    data = loaded.series
    plot_samples = None
    if args.plot:
        from streamcast.ops.plot import ForecastSamples

        chosen = sensors or sorted(data)
        plot_samples = ForecastSamples.spread(data, chosen[:3], start=start)
    from streamcast.learn.registry import ModelRegistry

    try:
        model = ModelRegistry(args.registry or settings.registry.path).load(args.version)
    except (StreamcastError, OSError, ValueError) as exc:
        print(f"streamcast backtest: {exc}", file=sys.stderr)
        return 1
    writer = _ForecastWriter(args.output, model.cfg.seeding) if args.output else None

    def on_forecasts(done: Any) -> None:
        if plot_samples is not None:
            plot_samples.collect(done)
        if writer is not None:
            writer.write(done)

    bar = ProgressBar("backtest")
    try:
        report = run_backtest(
            data,
            model,
            stride=stride,
            start=start,
            sensors=sensors,
            season=args.season,
            gap_factor=settings.window.gap_factor,
            on_forecasts=on_forecasts,
            progress=bar,
        )
    except (StreamcastError, OSError, ValueError) as exc:
        bar.close()
        print(f"streamcast backtest: {exc}", file=sys.stderr)
        return 1
    finally:
        if writer is not None:
            writer.close()
    bar.close()
    if report.windows == 0:
        print(
            "streamcast backtest: no forecast could be scored: each sensor needs "
            f"{report.num_steps + 1} readings before a forecast and later readings to score it"
            + (" (is --start past the data?)" if start is not None else ""),
            file=sys.stderr,
        )
        return 1
    if plot_samples is not None:
        from streamcast.ops.plot import plot_backtest

        try:
            plot_backtest(args.plot, report, data, plot_samples)
        except (RuntimeError, OSError) as exc:
            print(f"streamcast backtest: {exc}", file=sys.stderr)
            return 1
    doc = report.as_dict() | {"skipped_rows": loaded.skipped, "data": str(args.data)}
    if args.json:
        print(json.dumps(doc, allow_nan=False))
    else:
        print(format_report(report))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


class _ForecastWriter:
    """Forecasts as JSON lines, each the message the daemon would publish for it."""

    def __init__(self, path: str, seeding: str) -> None:
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by close(), after the walk
        self._seeding = seeding

    def write(self, done: Any) -> None:
        from streamcast.stream.messages import encode_forecasts

        batch = done.batch
        lines = encode_forecasts(
            batch.sensors,
            batch.ts,
            batch.step_s,
            done.values,
            issued_at=time.time(),
            model_version=done.version,
            seed=self._seeding,
        )
        self._fh.write(b"\n".join(lines) + b"\n")

    def close(self) -> None:
        self._fh.close()


def cmd_replay(args: argparse.Namespace) -> int:
    from streamcast.ops.logs import setup_logging
    from streamcast.ops.progress import ProgressBar
    from streamcast.stream.replay import replay

    setup_logging("WARNING")
    if args.speed is not None and not args.speed > 0:
        print("streamcast replay: --speed must be > 0", file=sys.stderr)
        return 1
    loaded = _load(args, "replay")
    if loaded is None:
        return 1
    stop = threading.Event()
    bar = ProgressBar("replay")
    with StopSignals(stop):
        try:
            result = replay(
                loaded.series, args.bootstrap, args.topic, speed=args.speed, stop=stop, progress=bar
            )
        except Exception as exc:  # a broker that cannot be reached: one line, not a trace
            bar.close()
            print(f"streamcast replay: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    bar.close()
    skipped = f", {result.skipped} with a missing value skipped" if result.skipped else ""
    print(
        f"sent {result.sent} readings of {len(loaded.series)} sensors to {args.topic} "
        f"in {result.seconds:.1f} s{skipped}"
    )
    if result.failed:
        print(f"streamcast replay: {result.failed} readings were not acknowledged", file=sys.stderr)
        return 1
    return 0 if not stop.is_set() else 130
