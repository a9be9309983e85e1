"""Graph builders: the trainable forecaster, its inference stepper and a stateful twin.

Only ``keras.layers`` and ``keras.ops`` appear here, so the same model runs on the
TensorFlow, JAX and PyTorch backends; backend-specific compilation lives in
``streamcast.model.predictor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streamcast.config import ModelSpec
from streamcast.model.effects import CalendarEffect, SeasonEffect, extra_inputs, extra_shapes
from streamcast.model.layers import (
    CarrySlice,
    Denormalize,
    LastSteps,
    Standardize,
    WindowNormalization,
)
from streamcast.model.runtime import keras
from streamcast.model.states import StatePair, lstm_layers

ops = keras.ops


@dataclass
class _Stack:
    """The layers of one forecaster: fresh ones, or those of a built model found by name."""

    norm: Any
    truth_norm: Any
    seeders: list[tuple[Any, Any]]
    lstms: list[Any]
    dropouts: list[Any]
    flatten: Any
    concat: Any
    head: Any
    reshape: Any
    denorm: Any
    calendar: CalendarEffect | None = None
    season: SeasonEffect | None = None


def _fresh_stack(cfg: ModelSpec, *, seeded: bool, stateful: bool = False) -> _Stack:
    top = len(cfg.units) - 1
    return _Stack(
        norm=WindowNormalization(name="window_norm"),
        truth_norm=Standardize(name="truth_norm"),
        seeders=[
            (
                keras.layers.Dense(u, activation="tanh", name=f"seeder_h_{k}"),
                keras.layers.Dense(u, name=f"seeder_c_{k}"),
            )
            for k, u in enumerate(cfg.units)
        ]
        if seeded
        else [],
        lstms=[
            keras.layers.LSTM(
                u,
                return_sequences=k < top,
                return_state=True,
                stateful=stateful,
                name=f"lstm_{k}",
            )
            for k, u in enumerate(cfg.units)
        ],
        dropouts=[keras.layers.Dropout(cfg.dropout, name=f"dropout_{k}") for k in range(top + 1)],
        flatten=keras.layers.Flatten(name="window_flat"),
        concat=keras.layers.Concatenate(name="head_input"),
        head=keras.layers.Dense(cfg.horizon * cfg.num_features, name="head"),
        reshape=keras.layers.Reshape((cfg.horizon, cfg.num_features), name="head_reshape"),
        denorm=Denormalize(name="forecast"),
        calendar=CalendarEffect.fresh(cfg) if cfg.calendar else None,
        season=SeasonEffect.fresh(cfg) if cfg.seasonal_lag else None,
    )


def _stack_of(model: keras.Model) -> _Stack:
    names = {layer.name for layer in model.layers}
    lstms = lstm_layers(model)
    seeded = all(f"seeder_h_{k}" in names and f"seeder_c_{k}" in names for k in range(len(lstms)))
    return _Stack(
        norm=model.get_layer("window_norm"),
        truth_norm=model.get_layer("truth_norm") if seeded else None,
        seeders=[
            (model.get_layer(f"seeder_h_{k}"), model.get_layer(f"seeder_c_{k}"))
            for k in range(len(lstms))
        ]
        if seeded
        else [],
        lstms=lstms,
        dropouts=[model.get_layer(f"dropout_{k}") for k in range(len(lstms))],
        flatten=model.get_layer("window_flat"),
        concat=model.get_layer("head_input"),
        head=model.get_layer("head"),
        reshape=model.get_layer("head_reshape"),
        denorm=model.get_layer("forecast"),
        calendar=CalendarEffect.of(model),
        season=SeasonEffect.of(model),
    )


def _seed(stack: _Stack, norm_truth: Any) -> list[list[Any]]:
    return [[h(norm_truth), c(norm_truth)] for h, c in stack.seeders]


def _run(
    stack: _Stack,
    z: Any,
    mean: Any,
    std: Any,
    initial: list[list[Any]] | None,
    extra: dict[str, Any],
    steps: Any = None,
) -> tuple[Any, list[StatePair]]:
    """LSTM stack plus direct head; the skip over the window carries seasonal structure,
    the calendar and seasonal-lag effects (if the model has them) what it cannot show.

    ``steps``: a layer that picks the steps the LSTMs run (a carried state's new
    readings); the whole window by default. The head always sees the whole window.
    """
    x = z if steps is None else steps(z)
    finals: list[StatePair] = []
    for k, lstm in enumerate(stack.lstms):
        if initial is None:
            out, h, c = lstm(x)
        else:
            out, h, c = lstm(x, initial_state=initial[k])
        finals.append((h, c))
        x = stack.dropouts[k](out)
    return _head(stack, x, z, mean, std, extra), finals


def _head(stack: _Stack, top: Any, z: Any, mean: Any, std: Any, extra: dict[str, Any]) -> Any:
    """The forecast from the top LSTM's output, the window it ran on and ``extra``
    (``calendar``; ``lags`` and ``lags_known``) where the model takes them."""
    y = stack.reshape(stack.head(stack.concat([top, stack.flatten(z)])))
    if stack.calendar is not None:
        y = stack.calendar(y, top, extra["calendar"])
    if stack.season is not None:
        y = stack.season(y, top, extra["lags"], extra["lags_known"], mean, std)
    return stack.denorm([y, mean, std])


def _inputs(cfg: ModelSpec) -> tuple[Any, Any]:
    window = keras.Input((cfg.num_steps, cfg.num_features), name="window")
    truth = keras.Input((cfg.num_features,), name="truth")
    return window, truth


def _check_extras(stack: _Stack, cfg: ModelSpec) -> None:
    if (stack.calendar is not None) != cfg.calendar:
        has = "has" if stack.calendar is not None else "has no"
        raise ValueError(f"model {has} calendar inputs, config says calendar={cfg.calendar}")
    if (stack.season is not None) != bool(cfg.seasonal_lag):
        has = "has" if stack.season is not None else "has no"
        raise ValueError(
            f"model {has} seasonal-lag inputs, config says seasonal_lag={cfg.seasonal_lag}"
        )


def build_forecaster(cfg: ModelSpec) -> keras.Model:
    """The trainable model: ``{"window", "truth"}`` in, (batch, horizon, features) out.

    In carry mode the seeder is trained as the cold-start seed; carried states only
    replace it at inference (``build_stepper`` with ``carried_steps``).
    """
    window, truth = _inputs(cfg)
    extra = extra_inputs(cfg)
    stack = _fresh_stack(cfg, seeded=cfg.seeding != "zeros")
    z, mean, std = stack.norm(window)
    initial = None
    if stack.seeders:
        initial = _seed(stack, stack.truth_norm([truth, mean, std]))
    forecast, _ = _run(stack, z, mean, std, initial, extra)
    inputs = {"window": window, "truth": truth, **extra}
    return keras.Model(inputs, forecast, name="forecaster")


def build_stepper(
    model: keras.Model, cfg: ModelSpec, *, carried_steps: int | None = None
) -> keras.Model:
    """The inference graph over the trained model's own layers (weights shared, not copied).

    Without ``carried_steps``: inputs ``window`` and ``truth``; each layer starts from
    the seeder's states for the truth (zeros in zeros mode) and runs the whole window.
    With ``carried_steps`` (carry mode): inputs ``window`` and ``carry`` (batch,
    state_width); each layer starts from its carried state and runs only the window's
    last ``carried_steps`` readings, the ones the state has not seen; the window still
    sets the normalisation and feeds the head. Both also take ``calendar`` if the model
    has it, and output ``forecast`` and the flattened final ``states``.
    """
    stack = _stack_of(model)
    if len(stack.lstms) != len(cfg.units) or any(
        lstm.units != u for lstm, u in zip(stack.lstms, cfg.units, strict=True)
    ):
        raise ValueError(
            f"model has LSTM units {[lstm.units for lstm in stack.lstms]}, config says "
            f"{list(cfg.units)}"
        )
    _check_extras(stack, cfg)
    window, truth = _inputs(cfg)
    extra = extra_inputs(cfg)
    z, mean, std = stack.norm(window)
    initial = None
    steps = None
    if carried_steps is not None:
        if cfg.seeding != "carry":
            raise ValueError(f"carried states need seeding 'carry', not {cfg.seeding!r}")
        if not 1 <= carried_steps <= cfg.num_steps:
            raise ValueError(f"carried_steps {carried_steps} must be in 1..{cfg.num_steps}")
        carry = keras.Input((cfg.state_width,), name="carry")
        inputs: dict[str, Any] = {"window": window, "carry": carry, **extra}
        initial, offset = [], 0
        for k, u in enumerate(cfg.units):
            pair = []
            for s in "hc":
                pair.append(CarrySlice(offset, u, name=f"carry_{s}_{k}")(carry))
                offset += u
            initial.append(pair)
        steps = LastSteps(carried_steps, name="carried_steps")
    else:
        inputs = {"window": window, "truth": truth, **extra}
        if cfg.seeding != "zeros":
            if not stack.seeders:
                raise ValueError(
                    f"seed mode {cfg.seeding!r} needs a seeder; this model was built without"
                )
            initial = _seed(stack, stack.truth_norm([truth, mean, std]))
    forecast, finals = _run(stack, z, mean, std, initial, extra, steps)
    states = keras.layers.Concatenate(name="states")([t for pair in finals for t in pair])
    name = "stepper" if carried_steps is None else "carried_stepper"
    return keras.Model(inputs, {"forecast": forecast, "states": states}, name=name)


def build_stateful_twin(
    model: keras.Model, cfg: ModelSpec, batch_size: int, *, steps: int | None = None
) -> keras.Model:
    """The textbook mechanism with a copy of the same weights: ``stateful=True`` LSTMs.

    Takes only ``window`` (and the model's ``extra_shapes`` inputs); each layer starts from
    whatever ``assign_states`` put in its state variables and keeps its final state,
    so consecutive calls continue the sequence. With ``steps`` the LSTMs run only the
    window's last ``steps`` readings (the normalisation and the head see all of it):
    a window that moved on by ``steps`` readings continues where the last one ended.
    """
    window = keras.Input(batch_shape=(batch_size, cfg.num_steps, cfg.num_features), name="window")
    stack = _fresh_stack(cfg, seeded=False, stateful=True)
    z, mean, std = stack.norm(window)
    extra = extra_inputs(cfg, batch=batch_size)
    last = None if steps is None else LastSteps(steps, name="carried_steps")
    forecast, _ = _run(stack, z, mean, std, None, extra, last)
    inputs = window if not extra else {"window": window, **extra}
    twin = keras.Model(inputs, forecast, name="stateful_twin")
    for layer in twin.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return twin


def build_chain_trainer(model: keras.Model, cfg: ModelSpec, links: int) -> keras.Model:
    """Carry mode trained the way it serves (truncated backpropagation through time).

    Over the forecaster's own layers: ``links`` consecutive windows of one sensor, each
    one reading after the last. The first is seeded from its truth and runs its whole
    window; each later one continues the states the one before left, through its one
    new reading, normalised with its own window's statistics, as the daemon steps a
    carried state. Every window is forecast, so the loss covers cold starts and carried
    states alike, and gradients flow back through the chain.

    Inputs ``windows`` (batch, links, num_steps, F), ``truth`` (batch, F) and the
    model's ``extra_shapes`` inputs per link (batch, links, ...); output
    (batch, links, horizon, F).
    """
    if cfg.seeding != "carry":
        raise ValueError(f"chains train carry mode, not seeding {cfg.seeding!r}")
    if links < 1:
        raise ValueError(f"links {links} must be >= 1")
    stack = _stack_of(model)
    t, f, top = cfg.num_steps, cfg.num_features, len(stack.lstms) - 1
    windows = keras.Input((links, t, f), name="windows")
    truth = keras.Input((f,), name="truth")
    linked = extra_inputs(cfg, links=links)
    inputs: dict[str, Any] = {"windows": windows, "truth": truth, **linked}
    shapes = extra_shapes(cfg)
    extra = {name: ops.reshape(x, (-1, *shapes[name])) for name, x in linked.items()}
    z, mean, std = stack.norm(ops.reshape(windows, (-1, t, f)))  # every window, (batch*links)
    z_chain = ops.reshape(z, (-1, links, t, f))
    per_window = (-1, links, f)
    first_mean, first_std = ops.reshape(mean, per_window)[:, 0], ops.reshape(std, per_window)[:, 0]
    initial = _seed(stack, stack.truth_norm([truth, first_mean, first_std]))
    x, states = z_chain[:, 0], []
    for k, lstm in enumerate(stack.lstms):
        out, h, c = lstm(x, initial_state=initial[k])
        states.append([h, c])
        x = stack.dropouts[k](out)
    tops = ops.expand_dims(x, 1)  # (batch, 1, units)
    if links > 1:
        x = z_chain[:, 1:, -1, :]  # each later window's new reading, in its own scale
        for k, lstm in enumerate(stack.lstms):
            if k < top:
                out, _, _ = lstm(x, initial_state=states[k])
            else:  # the top layer's output after every step, from the same cell
                sequence = keras.layers.RNN(lstm.cell, return_sequences=True, name="chain_top")
                out = sequence(x, initial_state=states[k])
            x = stack.dropouts[k](out)
        tops = ops.concatenate([tops, x], axis=1)  # (batch, links, units)
    forecast = _head(stack, ops.reshape(tops, (-1, cfg.units[-1])), z, mean, std, extra)
    out = ops.reshape(forecast, (-1, links, cfg.horizon, f))
    return keras.Model(inputs, out, name="chain_trainer")


def seed_states(
    model: keras.Model, window: np.ndarray, truth: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The initial (h, c) per layer this model gives a batch: the seeder's, or zeros."""
    stack = _stack_of(model)
    _, mean, std = stack.norm(ops.convert_to_tensor(window, dtype="float32"))
    if not stack.seeders:
        n = int(np.shape(window)[0])
        return [
            (np.zeros((n, lstm.units), np.float32), np.zeros((n, lstm.units), np.float32))
            for lstm in stack.lstms
        ]
    norm_truth = stack.truth_norm([ops.convert_to_tensor(truth, dtype="float32"), mean, std])
    return [
        (np.asarray(ops.convert_to_numpy(h)), np.asarray(ops.convert_to_numpy(c)))
        for h, c in _seed(stack, norm_truth)
    ]
