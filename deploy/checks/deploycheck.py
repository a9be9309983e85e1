#!/usr/bin/env python3
"""Checks of deploy/ that no stock linter does; run by scripts/check-deploy.

    deploycheck.py alerts   RULES TESTS
    deploycheck.py grafana  DASHBOARD --promtool PROMTOOL
    deploycheck.py k8s      K8S_DIR --kustomize CMD [--kube-version V ...]
    deploycheck.py systemd  SYSTEMD_DIR [--max-exposure X]

Each prints what it checked and one line per problem, and exits 1 if it found any.
Needs PyYAML, jsonschema and kubernetes-validate (the project's `test` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

# Every metric the daemon exports (plus histogram/counter sample suffixes).
# A name used in alerts.yml or the dashboard that is not here is a typo.
STREAMCAST_METRICS = {
    "streamcast_readings_total",
    "streamcast_dead_letters_total",
    "streamcast_sensors",
    "streamcast_sensors_evicted_total",
    "streamcast_window_capacity",
    "streamcast_window_restarts_total",
    "streamcast_forecasts_total",
    "streamcast_batch_size",
    "streamcast_inference_seconds",
    "streamcast_end_to_end_seconds",
    "streamcast_consumer_lag",
    "streamcast_commits_total",
    "streamcast_model_info",
    "streamcast_model_load_seconds",
    "streamcast_rebalances_total",
    "streamcast_ready",
    "streamcast_up",
    "streamcast_model_swaps_total",
    "streamcast_retrains_total",
    "streamcast_retrain_seconds",
    "streamcast_replay_examples",
    "streamcast_replay_bytes",
    "streamcast_forecast_mae",
}
HISTOGRAMS = {
    "streamcast_batch_size",
    "streamcast_inference_seconds",
    "streamcast_end_to_end_seconds",
    "streamcast_retrain_seconds",
}
PROCESS_METRICS = {
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
}
# Sample names a query may use: a classic histogram has no series of its own name.
KNOWN_METRICS = (
    (STREAMCAST_METRICS - HISTOGRAMS)
    | PROCESS_METRICS
    | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
)
METRIC_RE = re.compile(r"\b((?:streamcast|process)_[a-zA-Z0-9_]+)\b")
# Prometheus jobs: the daemons, and the optional standalone trainer (its own job, so
# that its reads stay out of the daemons' throughput and lag).
JOBS = ("streamcast", "streamcast-trainer")
JOB_MATCHER_RE = re.compile(r'\bjob\s*(=~|!=|!~|=)\s*"([^"]*)"')

# Custom resources kubernetes-validate has no schema for, and the schema we
# check them against instead. kubernetes-validate only warns about a kind it
# does not know (it has no flag that turns that into an error; --no-warn merely
# hides it), so any other unknown kind is reported as a problem here.
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "servicemonitor.schema.json"
}


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def finish(self, what: str) -> int:
        for item in self.items:
            print(f"ERROR {item}")
        if self.items:
            print(f"{what}: {len(self.items)} problem(s)")
            return 1
        print(f"{what}: OK")
        return 0


def unknown_metrics(expr: str) -> list[str]:
    return sorted({m for m in METRIC_RE.findall(expr) if m not in KNOWN_METRICS})


# --- alerts -----------------------------------------------------------------------


def job_problems(expr: str) -> list[str]:
    """An alert selects streamcast's jobs by name: job="streamcast", job="streamcast-trainer",
    or job=~ an alternation of them, never some other job or a pattern."""
    matchers = JOB_MATCHER_RE.findall(expr)
    if not matchers:
        return ['expression does not select job="streamcast"']
    out = []
    for op, value in matchers:
        names = value.split("|") if op == "=~" else [value]
        if op not in ("=", "=~") or not set(names) <= set(JOBS):
            out.append(f'job{op}"{value}" selects other jobs than {", ".join(JOBS)}')
    return out


def check_alerts(rules_file: Path, tests_file: Path) -> int:
    problems = Problems()
    rules = yaml.safe_load(rules_file.read_text())
    tests = yaml.safe_load(tests_file.read_text())
    alerts: dict[str, dict[str, Any]] = {}
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" not in rule:
                continue
            name = rule["alert"]
            where = f"{rules_file}: {name}"
            if name in alerts:
                problems.add(where, "alert defined twice")
            alerts[name] = rule
            if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                problems.add(where, "labels.severity must be critical, warning or info")
            missing = {"summary", "description", "runbook"} - set(rule.get("annotations", {}))
            if missing:
                problems.add(where, f"missing annotations: {', '.join(sorted(missing))}")
            for problem in job_problems(rule["expr"]):
                problems.add(where, problem)
            for metric in unknown_metrics(rule["expr"]):
                problems.add(where, f"unknown metric {metric}")

    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests.get("tests", []):
        for art in case.get("alert_rule_test", []):
            (firing if art.get("exp_alerts") else quiet).add(art["alertname"])
            if art["alertname"] not in alerts:
                problems.add(
                    str(tests_file), f"tests an alert that does not exist: {art['alertname']}"
                )
    for name in sorted(alerts):
        if name not in firing:
            problems.add(str(tests_file), f"no test case where {name} fires")
        if name not in quiet:
            problems.add(str(tests_file), f"no test case where {name} stays quiet")
    print(
        f"{len(alerts)} alerts; each with severity, summary/description/runbook, "
        f"known metrics, a firing and a quiet test case"
    )
    return problems.finish("alerts")


# --- grafana ----------------------------------------------------------------------


def walk_panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${__rate_interval}": "5m",
    "${__interval}": "1m",
    "${__range}": "1h",
}


def check_grafana(dashboard_file: Path, promtool: str) -> int:
    problems = Problems()
    where = str(dashboard_file)
    try:
        dash = json.loads(dashboard_file.read_text())
    except json.JSONDecodeError as exc:
        problems.add(where, f"not valid JSON: {exc}")
        return problems.finish("grafana")
    for key in ("uid", "title"):
        if not isinstance(dash.get(key), str) or not dash.get(key):
            problems.add(where, f"{key} must be a non-empty string")
    if not isinstance(dash.get("schemaVersion"), int):
        problems.add(where, "schemaVersion must be set (an integer)")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds_var = variables.get("datasource")
    if not ds_var or ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        problems.add(where, "needs a datasource variable named 'datasource' of type prometheus")

    exprs: list[tuple[str, str]] = []
    seen_ids: dict[int, str] = {}
    panels = list(walk_panels(dash.get("panels", [])))
    for panel in panels:
        title = panel.get("title", "?")
        pid = panel.get("id")
        pwhere = f"{where}: panel {pid} {title!r}"
        if not isinstance(pid, int):
            problems.add(pwhere, "id must be an integer")
        elif pid in seen_ids:
            problems.add(pwhere, f"id {pid} also used by {seen_ids[pid]!r}")
        else:
            seen_ids[pid] = title
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            problems.add(pwhere, "gridPos needs integer h, w, x, y")
        elif grid["x"] + grid["w"] > 24:
            problems.add(pwhere, "gridPos runs past the 24-column width")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.add(pwhere, "datasource must be the ${datasource} variable")
        targets = panel.get("targets", [])
        if not targets:
            problems.add(pwhere, "has no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problems.add(pwhere, "query refIds must be set and unique")
        for t in targets:
            if t.get("datasource", {}).get("uid") != "${datasource}":
                problems.add(pwhere, f"query {t.get('refId')}: datasource must be ${{datasource}}")
            expr = t.get("expr", "")
            if not expr.strip():
                problems.add(pwhere, f"query {t.get('refId')}: empty expr")
                continue
            exprs.append((f"{pwhere} query {t.get('refId')}", expr))
    for ann in dash.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            exprs.append((f"{where}: annotation {ann.get('name')!r}", ann["expr"]))
    for var in variables.values():
        query = var.get("query")
        if var.get("type") == "query":
            text = query.get("query", "") if isinstance(query, dict) else str(query)
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", text)
            if inner:
                exprs.append((f"{where}: variable {var.get('name')}", inner.group(1)))

    for label, expr in exprs:
        for metric in unknown_metrics(expr):
            problems.add(label, f"unknown metric {metric}")
    problems.items.extend(promql_problems(exprs, promtool))
    print(f"{len(panels)} panels, {len(exprs)} PromQL expressions checked with promtool")
    return problems.finish("grafana")


def promql_problems(exprs: list[tuple[str, str]], promtool: str) -> list[str]:
    """Parse every expression with promtool, as recording rules in a scratch file."""
    if not exprs:
        return []

    def concrete(expr: str) -> str:
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        return expr

    def promtool_errors(batch: list[tuple[str, str]], tmp: str) -> str | None:
        rules = [
            {"record": f"dashboard:expr_{i}", "expr": concrete(e)} for i, (_, e) in enumerate(batch)
        ]
        rule_file = Path(tmp) / "dashboard-exprs.yml"
        rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        proc = subprocess.run(
            [promtool, "check", "rules", str(rule_file)], capture_output=True, text=True
        )
        return None if proc.returncode == 0 else " ".join((proc.stdout + proc.stderr).split())

    with tempfile.TemporaryDirectory() as tmp:
        detail = promtool_errors(exprs, tmp)
        if detail is None:
            return []
        # promtool names each bad rule: '..., rule 3, "dashboard:expr_2": could not parse ...'
        out = []
        for m in re.finditer(r'"dashboard:expr_(\d+)": (.*?)(?= \S+: \d+:\d+: group|$)', detail):
            label, expr = exprs[int(m.group(1))]
            out.append(f"{label}: promtool rejects {expr!r}: {m.group(2)}")
        return out or [f"promtool rejected the dashboard expressions: {detail}"]


# --- systemd ----------------------------------------------------------------------

# Where deploy/README.md installs the console script; verify needs an executable there.
UNIT_EXECUTABLE = "opt/streamcast/venv/bin/streamcast"
# The install line each drop-in documents, e.g. /etc/systemd/system/streamcast.service.d/gpu.conf
DROPIN_RE = re.compile(r"/etc/systemd/system/([\w@.-]+\.service)\.d/([\w.-]+\.conf)\b")


def dropin_targets(systemd_dir: Path, problems: Problems) -> dict[str, list[Path]]:
    """unit name -> the drop-ins whose comments say to install them for that unit."""
    out: dict[str, list[Path]] = {}
    for conf in sorted(systemd_dir.glob("*.conf")):
        named = [(u, f) for u, f in DROPIN_RE.findall(conf.read_text()) if f == conf.name]
        if not named:
            problems.add(
                str(conf),
                f"names no unit to install into (/etc/systemd/system/UNIT.d/{conf.name})",
            )
        for unit, _ in named:
            if not (systemd_dir / unit).is_file():
                problems.add(str(conf), f"is installed for {unit}, which deploy/ does not ship")
            out.setdefault(unit, []).append(conf)
    return out


def check_systemd(systemd_dir: Path, max_exposure: float) -> int:
    """systemd-analyze verify every unit, alone and with all its drop-ins, in a scratch
    root with the host's unit directory and a stub at the documented ExecStart; any
    output fails (verify only warns about unknown keys and bad values). Then each unit
    must score at most max_exposure in `systemd-analyze security --offline`."""
    problems = Problems()
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("MISSING TOOL: systemd-analyze not found. Install it: apt-get install -y systemd")
        return 1
    host_units = next(
        (
            d
            for d in ("/usr/lib/systemd/system", "/lib/systemd/system")
            if Path(d, "sysinit.target").is_file()
        ),
        None,
    )
    if host_units is None:
        print(
            "MISSING: no system unit directory with sysinit.target. "
            "Install it: apt-get install -y systemd"
        )
        return 1
    units = sorted(systemd_dir.glob("*.service"))
    if not units:
        problems.add(str(systemd_dir), "no .service unit found")
    dropins = dropin_targets(systemd_dir, problems)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
        stub = root / UNIT_EXECUTABLE
        stub.parent.mkdir(parents=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        etc = root / "etc/systemd/system"
        etc.mkdir(parents=True)
        for unit in units:
            target = etc / unit.name
            shutil.copy(unit, target)
            combos: list[list[Path]] = [[]]
            if dropins.get(unit.name):
                combos.append(dropins[unit.name])
            for confs in combos:
                dropdir = etc / f"{unit.name}.d"
                shutil.rmtree(dropdir, ignore_errors=True)
                for conf in confs:
                    dropdir.mkdir(exist_ok=True)
                    shutil.copy(conf, dropdir / conf.name)
                label = " + ".join([unit.name, *(c.name for c in confs)])
                print(f"$ systemd-analyze verify --man=no --root=SCRATCH {label}")
                proc = subprocess.run(
                    [analyze, "verify", "--man=no", f"--root={root}", str(target)],
                    capture_output=True,
                    text=True,
                )
                out = (proc.stdout + proc.stderr).replace(str(root), "").strip()
                if out or proc.returncode != 0:
                    print(out)
                    problems.add(label, f"systemd-analyze verify: {out or proc.returncode}")
                else:
                    print("  (no findings)")
            shutil.rmtree(etc / f"{unit.name}.d", ignore_errors=True)
            threshold = int(max_exposure * 10)
            print(f"$ systemd-analyze security --offline=yes --threshold={threshold} {unit.name}")
            proc = subprocess.run(
                [
                    analyze,
                    "security",
                    "--offline=yes",
                    f"--threshold={threshold}",
                    f"--root={root}",
                    str(target),
                ],
                capture_output=True,
                text=True,
            )
            overall = [ln for ln in proc.stdout.splitlines() if "Overall exposure" in ln]
            print("\n".join(overall) or proc.stdout + proc.stderr)
            if proc.returncode != 0 or not overall:
                problems.add(
                    unit.name, f"exposure above {max_exposure}: {' '.join(overall) or 'no score'}"
                )
    return problems.finish("systemd")


# --- kubernetes -------------------------------------------------------------------


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def kustomization_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("kustomization.yaml"))


def check_kustomization(kdir: Path, problems: Problems) -> tuple[list[Path], dict[str, Any]]:
    """Everything a kustomization.yaml refers to exists. Returns its manifest files."""
    kfile = kdir / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    expected = {
        "Kustomization": "kustomize.config.k8s.io/v1beta1",
        "Component": "kustomize.config.k8s.io/v1alpha1",
    }
    if expected.get(k.get("kind")) != k.get("apiVersion"):
        problems.add(
            str(kfile), "kind/apiVersion must be Kustomization v1beta1 or Component v1alpha1"
        )
    for dep in ("commonLabels", "patchesStrategicMerge", "patchesJson6902", "bases", "vars"):
        if dep in k:
            problems.add(str(kfile), f"{dep} is deprecated in kustomize v5")
    manifests: list[Path] = []
    for entry in k.get("resources", []):
        path = kdir / entry
        if path.is_dir():
            if not (path / "kustomization.yaml").is_file():
                problems.add(
                    str(kfile), f"resource {entry} is a directory without kustomization.yaml"
                )
        elif path.is_file():
            manifests.append(path)
        else:
            problems.add(str(kfile), f"resource {entry} does not exist")
    for entry in k.get("components", []):
        comp = kdir / entry / "kustomization.yaml"
        if not comp.is_file() or yaml.safe_load(comp.read_text()).get("kind") != "Component":
            problems.add(str(kfile), f"component {entry} is not a directory with a Component")
    for patch in k.get("patches", []):
        if "path" in patch and not (kdir / patch["path"]).is_file():
            problems.add(str(kfile), f"patch {patch['path']} does not exist")
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for entry in gen.get("files", []):
            source = entry.split("=", 1)[-1]
            if not (kdir / source).is_file():
                problems.add(
                    str(kfile), f"generator {gen.get('name')}: file {source} does not exist"
                )
    return manifests, k


def run_kubernetes_validate(
    files: list[Path], versions: list[str], problems: Problems, label: str, cwd: Path | None = None
) -> None:
    """kubernetes-validate --strict on files; prints its output, minus the expected
    warnings about custom kinds that validate_custom checks instead."""
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet"]
    for v in versions:
        cmd += ["-k", v]
    names = [str(f.relative_to(cwd)) if cwd else str(f) for f in files]
    count = sum(len(load_docs(f.read_text())) for f in files)
    print(
        f"$ kubernetes-validate --strict --quiet {' '.join('-k ' + v for v in versions)} "
        f"{' '.join(names)}"
    )
    proc = subprocess.run(cmd + names, capture_output=True, text=True, cwd=cwd)
    before = len(problems.items)
    custom: dict[str, int] = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.search(r"kind (\S+) with api version (\S+)", line)
        if line.startswith("WARN") and m and (m.group(2), m.group(1)) in CUSTOM_SCHEMAS:
            custom[m.group(1)] = custom.get(m.group(1), 0) + 1
            continue
        print(line)
        if line.startswith(("WARN", "ERROR", "FATAL", "Couldn't")):
            problems.add(label, f"kubernetes-validate: {line}")
    if proc.returncode != 0 and len(problems.items) == before:
        problems.add(label, f"kubernetes-validate exited {proc.returncode}")
    for kind, n in custom.items():
        schema = CUSTOM_SCHEMAS[next(k for k in CUSTOM_SCHEMAS if k[1] == kind)]
        print(
            f"  ({n} warnings: no {kind} schema in kubernetes-validate; "
            f"checked against {schema.name} instead)"
        )
    print(f"  {count} resources in {len(files)} {label}, against Kubernetes {', '.join(versions)}")


def validate_custom(doc: dict[str, Any], where: str, problems: Problems) -> None:
    import jsonschema

    schema_file = CUSTOM_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
    if schema_file is None:
        return
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in err.path) or "(root)"
        problems.add(
            where, f"{doc['kind']}/{doc.get('metadata', {}).get('name')}: {path}: {err.message}"
        )


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def check_rendered(
    docs: list[dict[str, Any]], where: str, problems: Problems, overlay: bool
) -> None:
    """Cross-references and the pod hardening every workload must keep."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    for d in docs:
        validate_custom(d, where, problems)

    pods = []
    for kind in WORKLOADS:
        for name, w in by_kind.get(kind, {}).items():
            pods.append((f"{kind}/{name}", w["spec"]["template"]))
            sel = w["spec"].get("selector", {}).get("matchLabels", {})
            if kind != "Job" and not selects(
                sel, w["spec"]["template"]["metadata"].get("labels", {})
            ):
                problems.add(
                    where, f"{kind}/{name}: selector does not match its pod template labels"
                )
    for wname, template in pods:
        spec = template["spec"]
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            problems.add(where, f"{wname}: pod securityContext.runAsNonRoot must be true")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.add(where, f"{wname}: pod seccompProfile must be RuntimeDefault")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in by_kind.get("PersistentVolumeClaim", {}):
                problems.add(where, f"{wname}: volume {v['name']} uses missing PVC {claim}")
            cm = v.get("configMap", {}).get("name")
            if cm and cm not in by_kind.get("ConfigMap", {}):
                problems.add(where, f"{wname}: volume {v['name']} uses missing ConfigMap {cm}")
        sa = spec.get("serviceAccountName")
        if sa and sa not in by_kind.get("ServiceAccount", {}):
            problems.add(where, f"{wname}: missing ServiceAccount {sa}")
        for c in spec.get("containers", []):
            cwhere = f"{wname} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.add(where, f"{cwhere}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.add(where, f"{cwhere}: readOnlyRootFilesystem must be true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.add(where, f"{cwhere}: capabilities must drop ALL")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(part, {})):
                    problems.add(where, f"{cwhere}: resources.{part} needs cpu and memory")
            ports = {p.get("name") for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                p = c.get(probe)
                if p is None:
                    problems.add(where, f"{cwhere}: no {probe}")
                elif (
                    isinstance(p.get("httpGet", {}).get("port"), str)
                    and p["httpGet"]["port"] not in ports
                ):
                    problems.add(
                        where, f"{cwhere}: {probe} uses unknown port {p['httpGet']['port']}"
                    )
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problems.add(where, f"{cwhere}: mount of undefined volume {m['name']}")
            if sc.get("readOnlyRootFilesystem") and "/tmp" not in {
                m["mountPath"] for m in c.get("volumeMounts", [])
            }:
                problems.add(where, f"{cwhere}: read-only root file system without a /tmp mount")
            image = c.get("image", "")
            if overlay and (":" not in image.rsplit("/", 1)[-1] or "/" not in image):
                problems.add(where, f"{cwhere}: image {image!r} has no registry or tag")

    # A claim that several pods mount (replicas, or the trainer next to them) must be
    # ReadWriteMany, or every pod after the first waits for a node it cannot share.
    mounts: dict[str, int] = {}
    for kind in WORKLOADS:
        for w in by_kind.get(kind, {}).values():
            replicas = w["spec"].get("replicas", 1)
            replicas = replicas if isinstance(replicas, int) else 1  # kubernetes-validate says why
            for v in w["spec"]["template"]["spec"].get("volumes", []):
                claim = v.get("persistentVolumeClaim", {}).get("claimName")
                if claim:
                    mounts[claim] = mounts.get(claim, 0) + replicas
    for claim, pods_using in mounts.items():
        pvc = by_kind.get("PersistentVolumeClaim", {}).get(claim)
        if pvc and pods_using > 1 and "ReadWriteMany" not in pvc["spec"].get("accessModes", []):
            problems.add(
                where,
                f"PersistentVolumeClaim/{claim}: mounted by {pods_using} pods, "
                "so accessModes needs ReadWriteMany",
            )

    pod_labels = [t["metadata"].get("labels", {}) for _, t in pods]
    pod_ports = {
        p.get("name") for _, t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])
    }
    for name, svc in by_kind.get("Service", {}).items():
        if not any(selects(svc["spec"].get("selector", {}), lbl) for lbl in pod_labels):
            problems.add(where, f"Service/{name}: selector matches no pod template")
        for port in svc["spec"].get("ports", []):
            tp = port.get("targetPort")
            if isinstance(tp, str) and tp not in pod_ports:
                problems.add(where, f"Service/{name}: targetPort {tp} is no container port")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        if not any(
            selects(pdb["spec"]["selector"].get("matchLabels", {}), lbl) for lbl in pod_labels
        ):
            problems.add(where, f"PodDisruptionBudget/{name}: selector matches no pod template")
    for name, sm in by_kind.get("ServiceMonitor", {}).items():
        services = [
            s
            for s in by_kind.get("Service", {}).values()
            if selects(
                sm["spec"]["selector"].get("matchLabels", {}), s["metadata"].get("labels", {})
            )
        ]
        if not services:
            problems.add(where, f"ServiceMonitor/{name}: selector matches no Service")
        port_names = {p.get("name") for s in services for p in s["spec"].get("ports", [])}
        for ep in sm["spec"].get("endpoints", []):
            if ep.get("port") and ep["port"] not in port_names:
                problems.add(
                    where, f"ServiceMonitor/{name}: endpoint port {ep['port']} is no Service port"
                )
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["name"] not in by_kind.get(ref["kind"], {}):
            problems.add(
                where, f"HorizontalPodAutoscaler/{name}: target {ref['kind']}/{ref['name']} missing"
            )


def patch_targets(kdir: Path, k: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(patch, kind, name) for each patch in a kustomization."""
    out = []
    for patch in k.get("patches", []):
        label = patch.get("path", "inline patch")
        target = patch.get("target")
        if target:
            out.append((label, target.get("kind", ""), target.get("name", "")))
        elif "path" in patch:
            for doc in load_docs((kdir / patch["path"]).read_text()):
                out.append((label, doc.get("kind", ""), doc.get("metadata", {}).get("name", "")))
    return out


def check_k8s(k8s_dir: Path, kustomize: list[str], versions: list[str]) -> int:
    problems = Problems()
    kdirs = kustomization_dirs(k8s_dir)
    if not kdirs:
        problems.add(str(k8s_dir), "no kustomization.yaml found")
        return problems.finish("k8s")
    manifests: list[Path] = []
    kustomizations: dict[Path, dict[str, Any]] = {}
    for kdir in kdirs:
        files, k = check_kustomization(kdir, problems)
        manifests += files
        kustomizations[kdir] = k
    print(f"{len(kdirs)} kustomizations: " + ", ".join(str(d.relative_to(k8s_dir)) for d in kdirs))

    run_kubernetes_validate(manifests, versions, problems, "manifest files")
    for f in manifests:
        for doc in load_docs(f.read_text()):
            validate_custom(doc, str(f), problems)

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "k8s"
        shutil.copytree(k8s_dir, copy)
        renders: list[tuple[str, Path, dict[str, Any], bool]] = []
        for kdir, k in kustomizations.items():
            rel = kdir.relative_to(k8s_dir)
            if k.get("kind") == "Kustomization":
                renders.append((str(rel), copy / rel, k, rel.parts[:1] == ("overlays",)))
        overlays = [r for r in renders if r[3]]
        for kdir, k in kustomizations.items():
            if k.get("kind") != "Component":
                continue
            rel = kdir.relative_to(k8s_dir)
            # As deploy/README.md says to use a component: listed in an overlay's
            # own `components:`, so that the overlay's images and patches apply to
            # what the component adds.
            for name, odir, ok, _ in overlays:
                combo = odir.parent / f"_check-{odir.name}-{kdir.name}"
                shutil.copytree(odir, combo)
                combo_k = {**ok}
                component = os.path.relpath(copy / rel, combo)
                combo_k["components"] = [*ok.get("components", []), component]
                (combo / "kustomization.yaml").write_text(yaml.safe_dump(combo_k))
                renders.append((f"{name} + {rel}", combo, {**ok}, True))

        rendered_files: list[Path] = []
        out_dir = Path(tmp) / "rendered"
        out_dir.mkdir()
        for name, rdir, k, overlay in renders:
            cmd = [*kustomize, str(rdir)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                problems.add(name, f"kustomize build failed: {proc.stderr.strip()}")
                continue
            out = out_dir / (re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".yaml")
            out.write_text(proc.stdout)
            rendered_files.append(out)
            docs = load_docs(proc.stdout)
            kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
            print(f"rendered {name}: {', '.join(kinds)}")
            check_rendered(docs, f"rendered {name}", problems, overlay)
            names = {(d["kind"], d["metadata"]["name"]) for d in docs}
            src = k8s_dir / rdir.relative_to(copy)
            for patch, kind, pname in patch_targets(src, k) if src.is_dir() else []:
                if (kind, pname) not in names:
                    problems.add(
                        name, f"patch {patch} targets {kind}/{pname}, which does not exist"
                    )
            images = {
                c.get("image", "")
                for d in docs
                if d["kind"] in WORKLOADS
                for c in d["spec"]["template"]["spec"].get("containers", [])
            }
            for img in k.get("images", []):
                want = (
                    f"{img.get('newName', img['name'])}:{img['newTag']}"
                    if "newTag" in img
                    else None
                )
                if want and want not in images:
                    problems.add(
                        name, f"images entry {img['name']} -> {want} changed no container image"
                    )
        if rendered_files:
            run_kubernetes_validate(
                rendered_files, versions, problems, "rendered kustomizations", out_dir
            )
    return problems.finish("k8s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="check", required=True)
    a = sub.add_parser("alerts")
    a.add_argument("rules", type=Path)
    a.add_argument("tests", type=Path)
    g = sub.add_parser("grafana")
    g.add_argument("dashboard", type=Path)
    g.add_argument("--promtool", default="promtool")
    k = sub.add_parser("k8s")
    k.add_argument("k8s_dir", type=Path)
    k.add_argument("--kustomize", required=True, help='render command, e.g. "kubectl kustomize"')
    k.add_argument("--kube-version", action="append", dest="versions")
    s = sub.add_parser("systemd")
    s.add_argument("systemd_dir", type=Path)
    s.add_argument("--max-exposure", type=float, default=2.5)
    args = parser.parse_args(argv)
    if args.check == "systemd":
        return check_systemd(args.systemd_dir, args.max_exposure)
    if args.check == "alerts":
        return check_alerts(args.rules, args.tests)
    if args.check == "grafana":
        return check_grafana(args.dashboard, args.promtool)
    return check_k8s(args.k8s_dir, shlex.split(args.kustomize), args.versions or ["1.30", "1.37"])


if __name__ == "__main__":
    sys.exit(main())
