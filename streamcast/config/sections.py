"""The settings sections other than ``kafka``: the model's shape, windows, inference,
training, the registry, the HTTP endpoints and logging.

Each is its own pydantic model so that a bad value is reported under its section's
dotted name, and so that modules needing one section (the trainer, the model) take
just that one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

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


class Section(BaseModel):
    """Base of the settings sections: an unknown key is an error (a typo must not be
    ignored), and assignments are validated like loaded values."""

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
        True,
        description="tell the model the time of day and the day of the week of every "
        "forecast step (from ts); versions saved without it have none",
    )
    seasonal_lag: int = Field(
        0,
        ge=0,
        le=100_000,
        description="a seasonal period in steps (168: a week of hourly readings, 672: of "
        "15-minute ones): the model is also given, for every forecast step, the reading "
        "one period before it, and the window store keeps max(num_steps + 1, seasonal_lag) "
        "readings per sensor; 0: off",
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

    @field_validator("seasonal_lag")
    @classmethod
    def _lag_covers_horizon(cls, value: int, info: ValidationInfo) -> int:
        horizon = info.data.get("horizon")
        if horizon is not None and 0 < value < horizon:
            raise ValueError(
                f"must be 0 or at least model.horizon ({horizon}): a lag of {value} steps "
                "names readings not yet seen"
            )
        return value

    @property
    def context(self) -> int:
        """Readings the window store keeps per sensor: the window, its truth, the lags."""
        return max(self.num_steps + 1, self.seasonal_lag)

    @property
    def span(self) -> int:
        """Readings one training example covers with everything it is given: the window,
        its truth, the lags and the horizon."""
        return self.context + self.horizon

    @property
    def state_width(self) -> int:
        """Floats per sensor in the flattened state layout [h_0, c_0, h_1, c_1, ...]."""
        return 2 * sum(self.units)


class WindowSettings(Section):
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


class InferenceSettings(Section):
    max_batch: int = Field(256, ge=1, le=65_536)
    max_wait_ms: int = Field(50, ge=0)
    jit_compile: Literal["auto", "on", "off"] = "auto"
    freeze_heap: bool = Field(
        True,
        description="once a version is put into service, collect the garbage and exempt "
        "what is left (TensorFlow, the model) from Python's cyclic collector: no "
        "full-collection pauses mid-stream, for one full collection per version change",
    )


class TrainingSettings(Section):
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


class RegistrySettings(Section):
    path: Path = Path("registry")
    keep: int = Field(
        10,
        ge=2,
        description="versions kept after each promotion (newest first); the current one "
        "and the ones a rollback returns to are never removed",
    )


class HttpSettings(Section):
    # Loopback unless configured: /metrics and the probes are unauthenticated. The
    # deploy/ configs set 0.0.0.0 where Prometheus or the kubelet scrape from outside.
    host: str = Field("127.0.0.1", description="address /metrics, /healthz, /readyz bind to")
    port: int = Field(9464, ge=0, le=65_535)
    enabled: bool = True
    heartbeat_timeout_s: float = Field(30.0, gt=0, description="/healthz fails past this")


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
