"""The top-level ``Settings`` model: every section, and the checks that span two.

Cross-section rules live here rather than in a section, so each section stays
valid on its own and the message can name both settings involved.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamcast.config.kafka import KafkaSettings
from streamcast.config.sections import (
    HttpSettings,
    InferenceSettings,
    LogSettings,
    ModelSpec,
    RegistrySettings,
    TrainingSettings,
    WindowSettings,
)


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
