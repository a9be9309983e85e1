"""Typed, validated settings: one YAML file plus ``STREAMCAST_`` environment overrides.

Everything the daemon does is decided here, once, at start-up: a bad value stops
start-up with the field's dotted name and its environment variable, instead of
failing later deep inside the loop. The file is passed in explicitly and the
environment is read as a mapping, so nothing here depends on process-wide state
other than what the caller hands over.

The sections are in ``sections`` (``kafka`` on its own), the whole configuration
and its cross-section checks in ``settings``, and reading a file and the
environment in ``loading``; import the names from here.
"""

from __future__ import annotations

from streamcast.config.kafka import KafkaSettings
from streamcast.config.loading import ENV_NESTED, ENV_PREFIX, env_name, load_settings
from streamcast.config.sections import (
    SEEDING_MODES,
    HttpSettings,
    InferenceSettings,
    LogSettings,
    ModelSpec,
    RegistrySettings,
    Seeding,
    TrainingSettings,
    WindowSettings,
)
from streamcast.config.settings import Settings

__all__ = [
    "ENV_NESTED",
    "ENV_PREFIX",
    "SEEDING_MODES",
    "HttpSettings",
    "InferenceSettings",
    "KafkaSettings",
    "LogSettings",
    "ModelSpec",
    "RegistrySettings",
    "Seeding",
    "Settings",
    "TrainingSettings",
    "WindowSettings",
    "env_name",
    "load_settings",
]
