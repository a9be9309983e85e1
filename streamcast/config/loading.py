"""Reading the settings: one YAML file, then ``STREAMCAST_`` environment variables,
then explicit overrides, validated once into ``Settings``.

The file is passed in explicitly and the environment is read as a mapping, so
nothing here depends on process-wide state other than what the caller hands over;
a bad value becomes one ConfigError naming each field and its environment variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from streamcast.config.settings import Settings
from streamcast.errors import ConfigError

ENV_PREFIX = "STREAMCAST_"
ENV_NESTED = "__"


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
