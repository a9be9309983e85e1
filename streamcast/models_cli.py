"""``streamcast models``: list, show, promote or roll back the registry's model versions.

Kept apart from ``cli``, which registers it, as the one command with actions and reports
of its own. Like the other light commands it imports no backend: the registry checks a
version without deserialising it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from streamcast.errors import RegistryError, StreamcastError

if TYPE_CHECKING:
    from streamcast.learn.registry import ModelRegistry


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``models`` and its actions on the top-level subcommands."""
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
    version = version_arg(args.version)
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
    version = version_arg(args.version)
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


def version_arg(text: str) -> int:
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
