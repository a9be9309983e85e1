"""Security settings reach both Kafka clients, the HTTP endpoints bind loopback unless
configured, secrets stay out of logs and ``config show``, and a model is deserialised
only from a verified archive, in Keras' safe mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry

from streamcast.cli import main
from streamcast.config import KafkaSettings, ModelSpec, Settings, load_settings
from streamcast.errors import RegistryError
from streamcast.learn.registry import META_FILE, MODEL_FILE, ModelRegistry
from streamcast.model import build_forecaster
from streamcast.ops.probes import Health, HttpServer
from streamcast.sim.broker import free_port
from streamcast.stream.clients import connect

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PASSWORD = "s3cr3t-Pa55-do-not-log"
KEY_PASSWORD = "k3y-Pa55-do-not-log"


# -- Kafka security options ------------------------------------------------------------


class Recorder:
    """Stands in for KafkaConsumer / KafkaProducer: records the keyword arguments."""

    calls: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        Recorder.calls.append(kwargs)


@pytest.fixture(autouse=True)
def _fresh_recorder() -> None:
    Recorder.calls = []


SECURE: dict[str, dict[str, Any]] = {
    "SASL_SSL SCRAM-SHA-512": dict(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="streamcast",
        sasl_plain_password=PASSWORD,
        ssl_cafile="/etc/streamcast/ca.pem",
        ssl_certfile="/etc/streamcast/client.pem",
        ssl_keyfile="/etc/streamcast/client.key",
        ssl_password=KEY_PASSWORD,
        ssl_check_hostname=False,
    ),
    "SASL_SSL SCRAM-SHA-256": dict(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username="streamcast",
        sasl_plain_password=PASSWORD,
        ssl_cafile="/etc/streamcast/ca.pem",
        ssl_check_hostname=True,
    ),
    "SASL_PLAINTEXT PLAIN": dict(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_plain_username="streamcast",
        sasl_plain_password=PASSWORD,
    ),
    "SSL mutual TLS": dict(
        security_protocol="SSL",
        ssl_cafile="/etc/streamcast/ca.pem",
        ssl_certfile="/etc/streamcast/client.pem",
        ssl_keyfile="/etc/streamcast/client.key",
        ssl_password=KEY_PASSWORD,
        ssl_check_hostname=True,
    ),
}


@pytest.mark.parametrize("case", sorted(SECURE))
def test_connect_passes_security_options_to_consumer_and_producer(case: str) -> None:
    options = SECURE[case]
    kafka = KafkaSettings(bootstrap_servers="k1:9093,k2:9093", **options)
    connect(Recorder, kafka, group_id="g", enable_auto_commit=False)  # consumer-like
    connect(Recorder, kafka, acks="all", enable_idempotence=True)  # producer-like
    consumer, producer = Recorder.calls
    for kwargs in (consumer, producer):
        for name, value in options.items():  # as given, secrets revealed
            assert kwargs[name] == value, name
        assert kwargs["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert consumer["group_id"] == "g" and "group_id" not in producer
    assert producer["acks"] == "all" and "acks" not in consumer


@pytest.mark.parametrize("client", [KafkaConsumer, KafkaProducer], ids=lambda c: c.__name__)
def test_every_security_option_is_one_kafka_python_knows(client: type) -> None:
    # A misspelt option would only fail when the real client starts; catch it here.
    kafka = KafkaSettings(**SECURE["SASL_SSL SCRAM-SHA-512"])
    unknown = set(kafka.client_options()) - set(client.DEFAULT_CONFIG)  # type: ignore[attr-defined]
    assert unknown == set()


def test_plaintext_sends_no_tls_or_sasl_options() -> None:
    opts = KafkaSettings().client_options()
    assert opts["security_protocol"] == "PLAINTEXT"
    assert not [k for k in opts if k.startswith(("ssl_", "sasl_"))]


# -- the HTTP endpoints ------------------------------------------------------------------


def test_http_binds_loopback_by_default() -> None:
    host = Settings().http.host
    assert host == "127.0.0.1"
    server = HttpServer(host, 0, CollectorRegistry(), Health()).start()
    try:
        assert server._server.server_address[0] == "127.0.0.1"
    finally:
        server.close()


@pytest.mark.parametrize(
    "config", ["docker/config.yaml", "k8s/base/config.yaml", "systemd/config.yaml"]
)
def test_deploy_configs_listen_where_they_are_scraped_and_probed(config: str) -> None:
    settings = load_settings(DEPLOY / config, environ={})
    assert settings.http.host == "0.0.0.0"
    assert settings.http.port == 9464
    assert settings.http.enabled


def test_container_healthcheck_and_kubernetes_probes_reach_the_port() -> None:
    docker_port = load_settings(DEPLOY / "docker" / "config.yaml", environ={}).http.port
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    # The HEALTHCHECK runs inside the container: loopback reaches a 0.0.0.0 listener.
    assert "http://127.0.0.1:{port}/healthz" in dockerfile
    assert f"STREAMCAST_HTTP__PORT', '{docker_port}'" in dockerfile
    assert f"EXPOSE {docker_port}" in dockerfile

    k8s_port = load_settings(DEPLOY / "k8s" / "base" / "config.yaml", environ={}).http.port
    deployment = yaml.safe_load((DEPLOY / "k8s" / "base" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        target = container[probe]["httpGet"]["port"]
        assert ports.get(target, target) == k8s_port, probe
        assert "host" not in container[probe]["httpGet"]  # the pod IP, not loopback


# -- secrets stay out of logs and config show --------------------------------------------


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAST_")}


def test_config_show_masks_every_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in os.environ if n.startswith("STREAMCAST_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"kafka": {"security_protocol": "SASL_SSL", "sasl_plain_password": PASSWORD}}
        )
    )
    monkeypatch.setenv("STREAMCAST_KAFKA__SSL_PASSWORD", KEY_PASSWORD)
    assert main(["config", "show", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    assert KEY_PASSWORD not in out + err
    shown = yaml.safe_load(out)["kafka"]
    assert shown["sasl_plain_password"] == "**********"
    assert shown["ssl_password"] == "**********"
    # ... and the settings object does not reveal them when logged or printed either.
    settings = load_settings(config)
    for text in (repr(settings), str(settings), json.dumps(settings.masked())):
        assert PASSWORD not in text and KEY_PASSWORD not in text


def test_daemon_start_up_logs_no_secret(tmp_path: Path) -> None:
    """`streamcast run` with SASL credentials, at DEBUG, up to a start-up failure (no broker
    answers): the password appears in none of what it writes."""
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": f"127.0.0.1:{free_port()}",
                    "security_protocol": "SASL_PLAINTEXT",
                    "sasl_mechanism": "SCRAM-SHA-512",
                    "sasl_plain_username": "streamcast",
                    "startup_timeout_s": 1,
                },
                "http": {"port": 0},
                "registry": {"path": str(tmp_path / "registry")},
                "log": {"level": "DEBUG"},
            }
        )
    )
    env = {
        **_clean_environ(),
        "STREAMCAST_KAFKA__SASL_PLAIN_PASSWORD": PASSWORD,
        "STREAMCAST_KAFKA__SSL_PASSWORD": KEY_PASSWORD,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "streamcast", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output
    assert "starting group=streamcast" in output  # the start-up lines were written...
    assert "broker unreachable" in output  # ...up to the failure, with its cause
    assert PASSWORD not in output
    assert KEY_PASSWORD not in output


# -- models: verified archives only, safe mode only ---------------------------------------

CFG = ModelSpec(num_steps=8, num_features=2, units=(8,), horizon=4, dropout=0.0)


@pytest.fixture(scope="module")
def models() -> tuple[keras.Model, keras.Model]:
    keras.utils.set_random_seed(5)
    return build_forecaster(CFG), build_forecaster(CFG)


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call of keras.saving.load_model (passed through), with its arguments."""
    calls: list[dict[str, Any]] = []
    real = keras.saving.load_model

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append({"args": args, **kwargs})
        return real(*args, **kwargs)

    monkeypatch.setattr(keras.saving, "load_model", spy)
    return calls


def test_models_load_in_safe_mode(
    tmp_path: Path, models: tuple[keras.Model, keras.Model], load_calls: list[dict[str, Any]]
) -> None:
    reg = ModelRegistry(tmp_path)
    reg.save(models[0], CFG)
    reg.load(1)
    assert len(load_calls) == 1
    assert load_calls[0]["safe_mode"] is True


def test_replaced_model_file_is_refused_before_deserialisation(
    tmp_path: Path, models: tuple[keras.Model, keras.Model], load_calls: list[dict[str, Any]]
) -> None:
    # A different, perfectly valid Keras archive put in place of version 1's model: it passes
    # every structural check, so only the checksum stands between it and the daemon.
    reg = ModelRegistry(tmp_path / "reg")
    other = ModelRegistry(tmp_path / "other")
    reg.save(models[0], CFG)
    other.save(models[1], CFG)
    target = reg.version_path(1) / MODEL_FILE
    target.write_bytes((other.version_path(1) / MODEL_FILE).read_bytes())
    with pytest.raises(RegistryError, match="checksum mismatch"):
        reg.load(1)
    assert load_calls == []


def test_model_that_needs_unsafe_deserialisation_is_refused(tmp_path: Path) -> None:
    # A Lambda layer holds Python bytecode; safe mode refuses to deserialise it even
    # when its checksum is right.
    window = keras.Input((CFG.num_steps, CFG.num_features), name="window")
    truth = keras.Input((CFG.num_features,), name="truth")
    last = keras.layers.Lambda(lambda w: w[:, -1, :])(window)
    out = keras.layers.Reshape((1, CFG.num_features))(keras.layers.Add()([last, truth]))
    model = keras.Model({"window": window, "truth": truth}, out)
    model.predict(
        {"window": np.zeros((1, 8, 2), np.float32), "truth": np.zeros((1, 2), np.float32)},
        verbose=0,
    )
    reg = ModelRegistry(tmp_path)
    reg.save(model, CFG)
    meta = json.loads((reg.version_path(1) / META_FILE).read_text())
    assert len(meta["sha256"]) == 64
    with pytest.raises(RegistryError, match="safe_mode") as info:
        reg.load(1)
    assert "model version 1: cannot load" in str(info.value)
