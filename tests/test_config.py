"""Configuration: YAML + environment, validation that names the field, masked secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamcast.config import load_settings
from streamcast.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("STREAMCAST_"):
            monkeypatch.delenv(name)


def test_yaml_file_then_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "kafka:\n  bootstrap_servers: kafka-1:9092,kafka-2:9092\n  group_id: from-file\n"
        "window:\n  stride: 96\nmodel:\n  units: [8, 16, 32]\n"
    )
    monkeypatch.setenv("STREAMCAST_KAFKA__GROUP_ID", "from-env")
    monkeypatch.setenv("STREAMCAST_HTTP__PORT", "9500")
    s = load_settings(path)
    assert s.kafka.group_id == "from-env"
    assert s.kafka.client_options()["bootstrap_servers"] == ["kafka-1:9092", "kafka-2:9092"]
    assert s.window.stride == 96
    assert s.model.units == (8, 16, 32)
    assert s.http.port == 9500


@pytest.mark.parametrize(
    ("env", "value", "field"),
    [
        ("STREAMCAST_KAFKA__BOOTSTRAP_SERVERS", "kafka-without-port", "kafka.bootstrap_servers"),
        ("STREAMCAST_WINDOW__NUM_STEPS", "1", "window.num_steps"),
        ("STREAMCAST_WINDOW__STRIDE", "0", "window.stride"),
        ("STREAMCAST_MODEL__UNITS", "8,0", "model.units"),
        ("STREAMCAST_MODEL__SEEDING", "random", "model.seeding"),
        ("STREAMCAST_TRAINING__RANDOM_SEED", "x", "training.random_seed"),
        ("STREAMCAST_HTTP__PORT", "70000", "http.port"),
        ("STREAMCAST_INFERENCE__JIT_COMPILE", "maybe", "inference.jit_compile"),
        ("STREAMCAST_KAFKA__SECURITY_PROTOCOL", "TLS", "kafka.security_protocol"),
    ],
)
def test_bad_values_name_the_field(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, field: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert field in str(err.value)
    assert env in str(err.value)


def test_unknown_fields_in_the_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("window:\n  num_step: 48\n")
    with pytest.raises(ConfigError, match=r"window\.num_step"):
        load_settings(path)


def test_missing_or_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken)


def test_secrets_pass_through_but_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMCAST_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMCAST_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("STREAMCAST_KAFKA__SASL_PLAIN_USERNAME", "svc")
    monkeypatch.setenv("STREAMCAST_KAFKA__SASL_PLAIN_PASSWORD", "s3cret-value")
    s = load_settings()
    opts = s.kafka.client_options()
    assert opts["sasl_plain_password"] == "s3cret-value"
    assert opts["security_protocol"] == "SASL_SSL"
    assert "s3cret-value" not in repr(s)
    assert "s3cret-value" not in str(s.masked())


def test_the_file_and_the_environment_are_read_as_given(tmp_path: Path) -> None:
    """Two loads with different files and environments in one process do not mix."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("kafka:\n  group_id: from-a\n")
    b.write_text("kafka:\n  group_id: from-b\nwindow:\n  stride: 4\n")
    first = load_settings(a, environ={})
    second = load_settings(b, environ={"STREAMCAST_WINDOW__STRIDE": "8"})
    third = load_settings(environ={})
    assert (first.kafka.group_id, first.window.stride) == ("from-a", 1)
    assert (second.kafka.group_id, second.window.stride) == ("from-b", 8)
    assert third.kafka.group_id == "streamcast"


def test_the_window_sets_the_models_length() -> None:
    s = load_settings(environ={"STREAMCAST_WINDOW__NUM_STEPS": "48"})
    assert s.model.num_steps == s.window.num_steps == 48
    assert load_settings(environ={}, model={"num_steps": 96}).model.num_steps == 96
    with pytest.raises(ConfigError, match=r"model\.num_steps .*window\.num_steps"):
        load_settings(environ={"STREAMCAST_WINDOW__NUM_STEPS": "48"}, model={"num_steps": 96})


@pytest.mark.parametrize("stride", [97, 200])
def test_carry_mode_is_refused_when_windows_skip_readings(stride: int) -> None:
    """Carried states step through the readings since the last window, which a window
    longer ago than its own length no longer holds."""
    env = {"STREAMCAST_MODEL__SEEDING": "carry", "STREAMCAST_WINDOW__STRIDE": str(stride)}
    with pytest.raises(ConfigError) as err:
        load_settings(environ=env)
    message = str(err.value)
    assert "model.seeding" in message and "window.stride" in message
    assert f"window.stride is {stride}" in message and "(root)" not in message
    for fine in ("1", "48", "96"):
        env["STREAMCAST_WINDOW__STRIDE"] = fine
        assert load_settings(environ=env).model.seeding == "carry"


@pytest.mark.parametrize(
    "name", ["STREAMCAST_BOGUS", "STREAMCAST_NOSUCH__KEY", "STREAMCAST_KAFKA__NOPE"]
)
def test_unknown_variables_are_refused_by_name(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={name: "1"})
    assert name in str(err.value)


def test_kubernetes_service_links_are_not_settings() -> None:
    links = {
        "STREAMCAST_SERVICE_HOST": "10.0.0.7",
        "STREAMCAST_SERVICE_PORT": "9464",
        "STREAMCAST_SERVICE_PORT_METRICS": "9464",
        "STREAMCAST_PORT": "tcp://10.0.0.7:9464",
        "STREAMCAST_PORT_9464_TCP": "tcp://10.0.0.7:9464",
        "STREAMCAST_PORT_9464_TCP_ADDR": "10.0.0.7",
    }
    assert load_settings(environ=links).http.port == 9464


def test_models_saved_before_the_rename_still_load() -> None:
    from streamcast.config import ModelSpec

    spec = ModelSpec.model_validate({"num_steps": 12, "units": [4], "seed": "carry"})
    assert spec.seeding == "carry"


@pytest.mark.parametrize(("horizon", "lag"), [(4, 1), (4, 3), (96, 95), (96, 48)])
def test_a_seasonal_lag_shorter_than_the_horizon_is_refused(horizon: int, lag: int) -> None:
    """Step h's lag is the reading ``lag - h`` steps before the window's last one: with a
    lag under the horizon, the last steps' lags would be readings not yet seen."""
    from pydantic import ValidationError

    from streamcast.config import ModelSpec

    with pytest.raises(ValidationError, match=rf"horizon \({horizon}\): a lag of {lag} steps"):
        ModelSpec(horizon=horizon, seasonal_lag=lag)
    env = {"STREAMCAST_MODEL__HORIZON": str(horizon), "STREAMCAST_MODEL__SEASONAL_LAG": str(lag)}
    with pytest.raises(
        ConfigError, match=r"model\.seasonal_lag \(env STREAMCAST_MODEL__SEASONAL_LAG\)"
    ):
        load_settings(environ=env)


def test_seasonal_lags_of_the_horizon_or_longer_are_taken() -> None:
    from streamcast.config import ModelSpec

    for horizon, lag in [(4, 0), (4, 4), (4, 5), (96, 96), (24, 168), (96, 672)]:
        spec = ModelSpec(num_steps=48, horizon=horizon, seasonal_lag=lag)
        assert spec.seasonal_lag == lag
        # The store keeps the window, its truth and a season; an example covers the horizon too.
        assert spec.context == max(48 + 1, lag)
        assert spec.span == spec.context + horizon
    assert ModelSpec().seasonal_lag == 0
    s = load_settings(environ={"STREAMCAST_MODEL__SEASONAL_LAG": "672"})
    assert s.model.seasonal_lag == 672
    with pytest.raises(ConfigError, match=r"model\.seasonal_lag"):
        load_settings(environ={"STREAMCAST_MODEL__SEASONAL_LAG": "-1"})
