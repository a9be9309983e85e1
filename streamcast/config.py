"""Typed, validated settings: one YAML file plus ``STREAMCAST_`` environment overrides.

Everything the daemon does is decided here, once, at start-up: a bad value stops
start-up with the field's dotted name and its environment variable, instead of
failing later deep inside the loop. The file is passed in explicitly and the
environment is read as a mapping, so nothing here depends on process-wide state
other than what the caller hands over.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from streamcast.errors import ConfigError

ENV_PREFIX = "STREAMCAST_"
ENV_NESTED = "__"

Seeding = Literal["truth", "carry", "zeros"]
SEEDING_MODES: tuple[Seeding, ...] = ("truth", "carry", "zeros")


def _int_list(value: Any) -> Any:
    """Accept ``[8, 16]``, ``"[8, 16]"`` and ``"8,16"`` (the form people type in env files)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(BaseModel):
    """The forecaster's shape: the ``model`` settings section, saved with every model
    version and checked when one is loaded.

    ``num_steps`` is the window length, set through ``window.num_steps``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_steps: int = Field(96, ge=2, le=10_000)
    num_features: int = Field(2, ge=1, le=1_000)
    units: tuple[int, ...] = Field((16, 16), min_length=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    horizon: int = Field(96, ge=1, le=10_000)
    seeding: Seeding = "truth"
    calendar: bool = Field(
        False,
        description="tell the model the time of day and the day of the week of every "
        "forecast step (from ts); versions saved without it have none",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_seed_name(cls, data: Any) -> Any:
        # Versions saved before the state-seeding mode had its own name call it "seed".
        if isinstance(data, dict) and "seed" in data and "seeding" not in data:
            data = {**data, "seeding": data["seed"]}
            del data["seed"]
        return data

    @field_validator("units", mode="before")
    @classmethod
    def _parse_units(cls, value: Any) -> Any:
        return _int_list(value)

    @field_validator("units")
    @classmethod
    def _positive_units(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(u < 1 for u in value):
            raise ValueError("every layer needs at least one unit")
        return value

    @property
    def state_width(self) -> int:
        """Floats per sensor in the flattened state layout [h_0, c_0, h_1, c_1, ...]."""
        return 2 * sum(self.units)


class KafkaSettings(_Section):
    bootstrap_servers: str = "localhost:9092"
    input_topic: str = "streamcast.readings"
    output_topic: str = "streamcast.forecasts"
    dlq_topic: str = "streamcast.readings.dlq"
    group_id: str = "streamcast"
    client_id: str = "streamcast"
    session_timeout_ms: int = Field(10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    max_poll_records: int = Field(2_000, ge=1)
    fetch_max_wait_ms: int = Field(
        20,
        ge=0,
        le=60_000,
        description="longest the broker may hold a fetch for more data; it bounds how "
        "long a reading can wait at the broker before the daemon sees it (the client's "
        "own default, 500, adds up to half a second on brokers that hold fetches)",
    )
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    compression_type: Literal["none", "gzip", "lz4", "snappy", "zstd"] = "lz4"
    linger_ms: int = Field(5, ge=0)
    producer_batch_bytes: int = Field(524_288, ge=1_024)
    delivery_timeout_s: float = Field(30.0, gt=0)
    commit_interval_ms: int = Field(
        1_000,
        ge=0,
        description="at-least-once: how often the loop waits for the broker's acks and "
        "commits (0: after every poll); a crash redoes at most this much work. "
        "Exactly-once commits a transaction after every poll",
    )
    max_pending_bytes: int = Field(
        16 * 1_048_576,
        ge=65_536,
        description="output sent but not yet acknowledged beyond which the loop stops "
        "fetching and waits for the broker (backpressure)",
    )
    startup_timeout_s: float = Field(
        30.0,
        gt=0,
        description="one deadline for everything start-up asks of the broker (connect, "
        "create/check topics, input metadata); model loading is not counted",
    )
    output_partitions: int | None = Field(
        None,
        ge=1,
        description="partitions of the forecast topic if start-up creates it; "
        "default: as many as the input topic has (1 if that does not exist yet)",
    )
    dlq_partitions: int = Field(
        1, ge=1, description="partitions of the dead-letter topic if start-up creates it"
    )
    replication_factor: int = Field(
        1, description="replicas of the topics start-up creates; -1: the broker's default"
    )
    exactly_once: bool = Field(
        False,
        description="one Kafka transaction per delivery cycle: forecasts, dead letters and "
        "the input offsets they cover commit together (read them with read_committed)",
    )
    transactional_id: str | None = Field(
        None,
        min_length=1,
        description="exactly-once only: the producer's transactional.id; must be unique per "
        "running replica and stable across its restarts (e.g. a StatefulSet pod name). "
        "Default: CLIENT_ID.GROUP_ID.HOSTNAME.PID.RANDOM, unique per process",
    )
    max_message_bytes: int = Field(65_536, ge=64)
    # Security settings are passed through to the Kafka clients unchanged.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",")]
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected HOST:PORT[,HOST:PORT...], got {server!r}")
        return ",".join(servers)

    @field_validator("replication_factor")
    @classmethod
    def _replicas(cls, value: int) -> int:
        if value < 1 and value != -1:
            raise ValueError("expected a replica count >= 1, or -1 for the broker's default")
        return value

    def client_options(self) -> dict[str, Any]:
        """Options shared by every Kafka client, secrets revealed only here."""
        opts: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",")],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": (
                self.sasl_plain_password.get_secret_value() if self.sasl_plain_password else None
            ),
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_password": self.ssl_password.get_secret_value() if self.ssl_password else None,
        }
        opts.update({k: v for k, v in optional.items() if v is not None})
        if self.security_protocol in ("SSL", "SASL_SSL"):
            opts["ssl_check_hostname"] = self.ssl_check_hostname
        return opts


class WindowSettings(_Section):
    num_steps: int = Field(96, ge=2, le=10_000)
    stride: int = Field(1, ge=1)
    gap_factor: float = Field(
        3.0, gt=1.0, description="a gap longer than this many steps restarts a sensor's window"
    )
    capacity: int = Field(
        100_000, ge=1, description="sensors tracked at once; the idlest is evicted"
    )
    rebuild_records: int = Field(
        2_000_000,
        ge=0,
        description="the most records read back per newly assigned partition to refill "
        "its sensors' windows (0: they start cold)",
    )
    max_future_s: float = Field(
        86_400.0,
        gt=0,
        description="readings stamped further ahead of the wall clock are dead-lettered",
    )


class InferenceSettings(_Section):
    max_batch: int = Field(256, ge=1, le=65_536)
    max_wait_ms: int = Field(50, ge=0)
    jit_compile: Literal["auto", "on", "off"] = "auto"
    freeze_heap: bool = Field(
        True,
        description="once a version is put into service, collect the garbage and exempt "
        "what is left (TensorFlow, the model) from Python's cyclic collector: no "
        "full-collection pauses mid-stream, for one full collection per version change",
    )


class TrainingSettings(_Section):
    bootstrap_windows: int = Field(2_000, ge=10)
    max_seconds: float = Field(60.0, gt=0)
    max_epochs: int = Field(200, ge=1)
    batch_size: int = Field(64, ge=1)
    patience: int = Field(8, ge=1)
    validation_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    learning_rate: float = Field(3e-3, gt=0.0)
    random_seed: int = Field(0, description="seeds weight initialisation and shuffling")
    threads: int = Field(
        1, ge=1, description="CPU threads the trainer may use (capped by the CPUs available)"
    )
    online: bool = Field(
        True,
        description="retrain while serving (one replica per registry, by its lease); "
        "false when `streamcast train --follow` does the training",
    )
    interval_s: float = Field(
        3_600.0, gt=0, description="seconds between retrainings once a model is served"
    )
    every_examples: int = Field(
        1_000_000,
        ge=1,
        description="retrain sooner than interval_s once this many new examples have arrived",
    )
    min_improvement: float = Field(
        0.02,
        ge=0.0,
        lt=1.0,
        description="a retrained model replaces the served one only if its held-out MAE is "
        "lower by this fraction (and lower than persistence's)",
    )
    holdout_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=0.9,
        description="most recent share of each sensor's examples held out to judge a "
        "retrained model, never trained on",
    )
    timeout_s: float = Field(
        900.0, gt=0, description="a retraining still running after this long is stopped"
    )
    history_bytes: int = Field(
        64 * 2**20,
        ge=2**20,
        description="memory for the readings gathered to train the first model",
    )
    replay_bytes: int = Field(
        64 * 2**20,
        ge=2**20,
        description="memory for the recent readings that retraining replays",
    )


class RegistrySettings(_Section):
    path: Path = Path("registry")
    keep: int = Field(
        10,
        ge=2,
        description="versions kept after each promotion (newest first); the current one "
        "and the ones a rollback returns to are never removed",
    )


class HttpSettings(_Section):
    # Loopback unless configured: /metrics and the probes are unauthenticated. The
    # deploy/ configs set 0.0.0.0 where Prometheus or the kubelet scrape from outside.
    host: str = Field("127.0.0.1", description="address /metrics, /healthz, /readyz bind to")
    port: int = Field(9464, ge=0, le=65_535)
    enabled: bool = True
    heartbeat_timeout_s: float = Field(30.0, gt=0, description="/healthz fails past this")


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(BaseModel):
    """The daemon's whole configuration."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    window: WindowSettings = Field(default_factory=WindowSettings)
    model: ModelSpec = Field(default_factory=ModelSpec)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    shutdown_timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _window_sets_the_model_length(cls, data: Any) -> Any:
        """The model's ``num_steps`` is the window's: one value, set in ``window``."""
        if not isinstance(data, dict):
            return data
        window, model = data.get("window"), data.get("model")
        if not isinstance(model, (dict, ModelSpec)):
            model = {}
        if isinstance(model, ModelSpec):
            model = model.model_dump()
        steps: Any = WindowSettings.model_fields["num_steps"].default
        if isinstance(window, WindowSettings):
            steps = window.num_steps
        elif isinstance(window, dict) and "num_steps" in window:
            steps = window["num_steps"]
        try:
            steps = int(steps)
        except (TypeError, ValueError):
            return data  # window.num_steps itself is reported
        given = model.get("num_steps")
        if given is not None and str(given) != str(steps):
            raise ValueError(
                f"model.num_steps ({given}) differs from window.num_steps ({steps}); "
                "set window.num_steps only"
            )
        return {**data, "model": {**model, "num_steps": steps}}

    @model_validator(mode="after")
    def _carry_needs_overlapping_windows(self) -> Settings:
        """Carry mode steps a sensor's states through the readings since its previous
        window, which the window must still hold: with a stride longer than the window,
        the readings between two windows would never reach the states."""
        steps, stride = self.window.num_steps, self.window.stride
        if self.model.seeding == "carry" and stride > steps:
            raise ValueError(
                f"model.seeding 'carry' needs window.stride at most window.num_steps "
                f"({steps}), but window.stride is {stride}: the readings between two "
                "windows would never reach the carried states. Set window.stride to at "
                f"most {steps}, or model.seeding to 'truth' or 'zeros'"
            )
        return self

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, every secret masked."""
        return self.model_dump(mode="json")


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable that sets the field at ``loc`` (e.g. ``("window", "stride")``)."""
    return ENV_PREFIX + ENV_NESTED.join(str(p).upper() for p in loc)


# Kubernetes gives every pod ``<SERVICE>_SERVICE_HOST``, ``<SERVICE>_PORT`` and friends for
# each Service in its namespace; a Service named "streamcast" must not break start-up.
_SERVICE_LINK = re.compile(
    r"^STREAMCAST_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$"
)


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """``STREAMCAST_SECTION__KEY=value`` variables as nested data (values stay strings).

    A variable that names no setting is an error naming it: a typo must not be
    silently ignored.
    """
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or _SERVICE_LINK.match(name):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED)
        if not _is_setting(parts):
            unknown.append(name)
            continue
        if len(parts) == 1:
            out[parts[0]] = value
        else:
            out.setdefault(parts[0], {})[parts[1]] = value
    if unknown:
        raise ConfigError(
            "invalid configuration: unknown environment variable(s) "
            + ", ".join(sorted(unknown))
            + f" (settings are {ENV_PREFIX}<SECTION>{ENV_NESTED}<KEY>; `streamcast config show`"
            " lists them)"
        )
    return out


def _is_setting(parts: list[str]) -> bool:
    field = Settings.model_fields.get(parts[0])
    if field is None:
        return False
    section = field.annotation
    is_section = isinstance(section, type) and issubclass(section, BaseModel)
    if len(parts) == 1:
        return not is_section
    return len(parts) == 2 and is_section and parts[1] in section.model_fields  # type: ignore[union-attr]


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, section by section."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        import yaml

        data = yaml.safe_load(p.read_text()) or {}
    except Exception as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    return data


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """The settings from a YAML file (optional), then the environment, then ``overrides``.

    ``environ`` defaults to ``os.environ``. Raises ConfigError naming each bad field.
    """
    data = _read_file(path) if path is not None else {}
    data = _merge(data, _from_environment(os.environ if environ is None else environ))
    data = _merge(data, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if not loc:  # a check across sections: its message names the settings
                problems.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            field = ".".join(str(p) for p in loc)
            problems.append(f"{field} (env {env_name(loc)}): {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc
