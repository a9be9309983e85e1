"""What the forecaster adds to its normalised forecast beyond the window: the calendar and
the seasonal lags, and the inputs each takes.

Each effect is a small branch over the top LSTM's final output and its own inputs,
added where the head's forecast is still on the window's scale, so a sensor of any
level and amplitude shares it. Kept apart from ``graph``, which wires them into every
graph the forecaster is built as.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from streamcast.config import ModelSpec
from streamcast.learn.calendar import CALENDAR_WIDTH
from streamcast.model.calendar import CalendarFeatures
from streamcast.model.layers import LagBlend, LagFeatures
from streamcast.model.runtime import keras


class _Effect:
    """An effect's layers, named in ``_NAMES`` (the first one marks that a model has it)."""

    _NAMES: ClassVar[tuple[str, ...]]

    @classmethod
    def of(cls, model: keras.Model) -> Self | None:
        """The effect's layers in a built model, or None if it was built without it."""
        names = {layer.name for layer in model.layers}
        if cls._NAMES[0] not in names:
            return None
        return cls(*(model.get_layer(name) for name in cls._NAMES))


@dataclass
class CalendarEffect(_Effect):
    """The calendar effect: f(step's calendar harmonics, final LSTM output), per step."""

    features: Any
    repeat: Any
    concat: Any
    hidden: Any
    out: Any
    add: Any

    _NAMES = ("calendar_features", "calendar_context", "calendar_input", "calendar_hidden",
              "calendar_out", "calendar_add")  # fmt: skip

    @classmethod
    def fresh(cls, cfg: ModelSpec) -> CalendarEffect:
        return cls(
            features=CalendarFeatures(cfg.horizon, name="calendar_features"),
            repeat=keras.layers.RepeatVector(cfg.horizon, name="calendar_context"),
            concat=keras.layers.Concatenate(name="calendar_input"),
            hidden=keras.layers.Dense(16, activation="tanh", name="calendar_hidden"),
            # Zero at first: a model starts as the plain forecaster and learns the calendar.
            out=keras.layers.Dense(
                cfg.num_features, kernel_initializer="zeros", name="calendar_out"
            ),
            add=keras.layers.Add(name="calendar_add"),
        )

    def __call__(self, normalised: Any, top: Any, calendar: Any) -> Any:
        context = self.concat([self.features(calendar), self.repeat(top)])
        return self.add([normalised, self.out(self.hidden(context))])


@dataclass
class SeasonEffect(_Effect):
    """The seasonal-lag effect: f(each step's reading a season earlier, final LSTM output).

    It moves each step of the normalised forecast towards its lag by a learned share
    (5 % at first, so a new model starts near the plain one) and adds a correction; the
    state says how closely this sensor repeats its last season, the lags say what that
    season did at each step.
    """

    features: Any
    repeat: Any
    concat: Any
    hidden: Any
    joined: Any
    gate: Any
    blend: Any
    out: Any
    add: Any

    _NAMES = ("lag_features", "lag_context", "lag_input", "lag_hidden", "lag_joined",
              "lag_gate", "lag_blend", "lag_out", "lag_add")  # fmt: skip

    @classmethod
    def fresh(cls, cfg: ModelSpec) -> SeasonEffect:
        return cls(
            features=LagFeatures(cfg.horizon, name="lag_features"),
            repeat=keras.layers.RepeatVector(cfg.horizon, name="lag_context"),
            concat=keras.layers.Concatenate(name="lag_input"),
            hidden=keras.layers.Dense(16, activation="tanh", name="lag_hidden"),
            joined=keras.layers.Concatenate(name="lag_joined"),
            # A share of sigmoid(-3) = 5 % at first: the model starts near the plain one.
            gate=keras.layers.Dense(
                cfg.num_features,
                kernel_initializer="zeros",
                bias_initializer=keras.initializers.Constant(-3.0),
                name="lag_gate",
            ),
            blend=LagBlend(name="lag_blend"),
            out=keras.layers.Dense(cfg.num_features, kernel_initializer="zeros", name="lag_out"),
            add=keras.layers.Add(name="lag_add"),
        )

    def __call__(
        self, normalised: Any, top: Any, lags: Any, known: Any, mean: Any, std: Any
    ) -> Any:
        features = self.features([lags, known, mean, std])
        hidden = self.hidden(self.concat([features, self.repeat(top)]))
        joined = self.joined([features, hidden])
        blended = self.blend([normalised, features, self.gate(joined)])
        return self.add([blended, self.out(joined)])


def extra_shapes(cfg: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The per-row shapes of the inputs beyond window and truth/carry this model takes:
    ``calendar`` (``model.calendar``), ``lags`` and ``lags_known`` (``model.seasonal_lag``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.calendar:
        shapes["calendar"] = (CALENDAR_WIDTH,)
    if cfg.seasonal_lag:
        shapes["lags"] = (cfg.horizon, cfg.num_features)
        shapes["lags_known"] = (1,)
    return shapes


def extra_inputs(
    cfg: ModelSpec, *, batch: int | None = None, links: int | None = None
) -> dict[str, Any]:
    """Keras inputs for ``extra_shapes`` (per chain link with ``links``, of a fixed batch
    with ``batch``)."""
    out = {}
    for name, shape in extra_shapes(cfg).items():
        full = shape if links is None else (links, *shape)
        if batch is None:
            out[name] = keras.Input(full, name=name)
        else:
            out[name] = keras.Input(batch_shape=(batch, *full), name=name)
    return out
