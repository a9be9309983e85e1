"""The first model: gathering history from the stream says what it waits for and how far it
got (to the status line and to ``/readyz``), enough history trains version 1 with the input
paused, and the input resumes once version 1 (loaded off the loop) is served. A daemon that
only serves (``training.online: false``) gathers nothing and trains nothing: it waits for
the trainer's first version with the input paused, and serves it once it appears.

The trainer process is replaced by a fake that finishes when told, so these tests run in
seconds; the real one is exercised by the integration tests.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import keras
import numpy as np
import pytest

from streamcast.config import ModelSpec, Settings
from streamcast.learn.examples import split_sizes
from streamcast.learn.registry import ModelRegistry
from streamcast.model import build_forecaster
from streamcast.ops.probes import Health
from streamcast.stream import bootstrap as bootstrap_module
from streamcast.stream.bootstrap import (
    GATHERING,
    PROGRESS_EVERY_S,
    TRAINING,
    WAITING,
    Bootstrap,
)
from streamcast.stream.messages import Readings
from streamcast.stream.serving import REGISTRY_CHECK_S, Serving
from streamcast.stream.windows import WindowStore

CFG = ModelSpec(num_steps=8, num_features=2, units=(8,), horizon=4, dropout=0.0)
NEEDED = 50
STEP_S = 900.0


def _settings(registry: Path, *, online: bool = True) -> Settings:
    return Settings(
        window={"num_steps": CFG.num_steps, "gap_factor": 4.0},
        model={"num_features": 2, "units": [8], "horizon": 4, "dropout": 0.0},
        inference={"max_batch": 2, "jit_compile": "off"},
        training={"bootstrap_windows": NEEDED, "history_bytes": 3 * 2**20, "online": online},
        registry={"path": registry},
    )


def _readings(sensors: int, steps: range) -> Readings:
    """Each sensor's readings at ``steps``, interleaved by time as the stream brings them."""
    names = [f"sensor-{s}" for s in range(sensors) for _ in steps]
    ts = np.array([k * STEP_S for _ in range(sensors) for k in steps])
    order = np.argsort(ts, kind="stable")
    values = np.random.default_rng(0).normal(size=(len(ts), 2)).astype(np.float32)
    return Readings([names[i] for i in order], ts[order], values[order])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeJob:
    """Stands in for the spawned trainer: keeps what it was given, finishes when told."""

    def __init__(self, spec: ModelSpec, settings: Any, path: Any, series: Any, ts: Any) -> None:
        self.settings = settings
        self.series = series
        self.process = SimpleNamespace(exitcode=None)
        self.stopped = False

    def start(self) -> FakeJob:
        return self

    def done(self) -> bool:
        return self.process.exitcode is not None

    @property
    def ok(self) -> bool:
        return self.process.exitcode == 0

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> list[FakeJob]:
    made: list[FakeJob] = []

    def make(*args: Any) -> FakeJob:
        made.append(FakeJob(*args))
        return made[-1]

    monkeypatch.setattr(bootstrap_module, "TrainingJob", make)
    return made


class Reported:
    """What the unit told the daemon: status lines, the pauses, and a real Health."""

    def __init__(self) -> None:
        self.health = Health()
        self.lines: list[tuple[str, str]] = []
        self.input: list[str] = []

    def status(self, phase: str, line: str) -> None:
        self.health.phase = phase
        self.lines.append((phase, line))

    def callbacks(self) -> dict[str, Any]:
        return {
            "pause_input": lambda: self.input.append("pause"),
            "resume_input": lambda: self.input.append("resume"),
            "status": self.status,
            "waiting": self.health.waiting_for,
        }

    def readyz(self) -> dict[str, Any]:
        code, body = self.health.readiness()
        assert code == 503
        return body


def _bootstrap(tmp_path: Path, reported: Reported, clock: Clock) -> Bootstrap:
    settings = _settings(tmp_path / "registry")
    registry = ModelRegistry(settings.registry.path)
    return Bootstrap(settings, registry, clock=clock, **reported.callbacks())


def test_history_is_sized_from_the_settings(tmp_path: Path) -> None:
    b = _bootstrap(tmp_path, Reported(), Clock())
    span = CFG.num_steps + 1 + CFG.horizon
    assert b.history.max_bytes == 3 * 2**20
    assert b.history.span == span
    assert b.history.gap_factor == 4.0
    assert b.history.max_per_sensor == math.ceil(2 * span / 0.2)


def test_gathering_says_what_it_waits_for_and_how_far_it_got(tmp_path: Path) -> None:
    reported, clock = Reported(), Clock()
    b = _bootstrap(tmp_path, reported, clock)
    b.begin()
    line = f"{GATHERING}: 0 of {NEEDED} examples from 0 sensors"
    assert reported.lines == [("bootstrap", line)]
    assert reported.readyz() == {
        "status": "not_ready",
        "reasons": ["no_model", "no_partitions", "broker_unreachable"],
        "phase": "bootstrap",
        "waiting_for": "gathering history for the first model",
        "progress": {"examples": 0, "needed": NEEDED, "sensors": 0},
    }

    b.observe(_readings(3, range(30)))
    assert b.advance() is None
    assert len(reported.lines) == 1  # progress is said at most once a PROGRESS_EVERY_S
    clock.now += PROGRESS_EVERY_S
    assert b.advance() is None
    train, _ = split_sizes(b.history.lengths(), CFG.num_steps, CFG.horizon, 0.2)
    assert 0 < train < NEEDED
    line = f"{GATHERING}: {train} of {NEEDED} examples from 3 sensors"
    assert reported.lines[-1] == ("bootstrap", line)
    progress = {"examples": train, "needed": NEEDED, "sensors": 3}
    assert reported.readyz()["progress"] == progress
    clock.now += PROGRESS_EVERY_S
    b.advance()
    assert len(reported.lines) == 2  # nothing new: nothing said
    assert reported.input == []


def test_enough_history_trains_version_1_with_the_input_paused(
    tmp_path: Path, jobs: list[FakeJob]
) -> None:
    reported, clock = Reported(), Clock()
    b = _bootstrap(tmp_path, reported, clock)
    b.begin()
    b.observe(_readings(3, range(60)))
    assert b.advance() is None
    assert len(jobs) == 1 and reported.input == ["pause"]
    assert len(jobs[0].series) == 3  # one gap-free segment per sensor
    phase, line = reported.lines[-1]
    assert phase == "training" and line.startswith("training the first model on ")
    body = reported.readyz()
    assert body["waiting_for"] == TRAINING and body["progress"]["examples"] >= NEEDED
    assert b.advance() is None  # still training

    ModelRegistry(tmp_path / "registry").save(build_forecaster(CFG), CFG)
    jobs[0].process.exitcode = 0
    assert b.advance() == 1
    assert reported.lines[-1] == ("loading", "loading the first model (version 1)")
    assert reported.readyz()["waiting_for"] == "loading the first model"
    assert "progress" not in reported.readyz()
    b.finish()
    assert reported.input == ["pause", "resume"]
    assert "waiting_for" not in reported.readyz()


def test_failed_training_is_fatal(tmp_path: Path, jobs: list[FakeJob]) -> None:
    b = _bootstrap(tmp_path, Reported(), Clock())
    b.observe(_readings(3, range(60)))
    b.advance()
    jobs[0].process.exitcode = 1
    with pytest.raises(RuntimeError, match=r"training the first model failed \(exit code 1\)"):
        b.advance()


def test_serving_trains_version_1_then_loads_it_off_the_loop(
    tmp_path: Path, jobs: list[FakeJob]
) -> None:
    keras.utils.set_random_seed(3)
    reported, loaded = Reported(), []
    settings = _settings(tmp_path / "registry")
    serving = Serving(
        settings,
        WindowStore(4, CFG.num_steps, CFG.num_features),
        on_loaded=lambda version, seconds: loaded.append(version),
        **reported.callbacks(),
    )
    serving.start()
    assert serving.gathering and serving.version is None
    assert reported.readyz()["waiting_for"] == GATHERING
    serving.observe(_readings(3, range(60)))
    serving.maintain()
    assert len(jobs) == 1 and reported.input == ["pause"]

    ModelRegistry(settings.registry.path).save(build_forecaster(CFG), CFG)
    jobs[0].process.exitcode = 0
    serving.maintain()
    load = serving._loading
    assert load is not None and serving.loading == 1  # on its worker thread
    assert serving.gathering and reported.input == ["pause"]  # input held until it serves
    assert load.future.exception(timeout=60) is None
    serving.maintain()
    assert (serving.version, loaded, serving.gathering) == (1, [1], False)
    assert reported.input == ["pause", "resume"]
    assert "waiting_for" not in reported.readyz()
    serving.stop()
    assert not jobs[0].stopped  # finished: nothing to stop


# -- a daemon that only serves: the trainer's first version -----------------------------------


@pytest.fixture
def no_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gathering history for version 1 fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a daemon that only serves gathered history")

    monkeypatch.setattr(bootstrap_module, "History", refuse)


def _serve_only(tmp_path: Path, reported: Reported, loaded: list[int]) -> Serving:
    serving = Serving(
        _settings(tmp_path / "registry", online=False),
        WindowStore(4, CFG.num_steps, CFG.num_features),
        on_loaded=lambda version, seconds: loaded.append(version),
        **reported.callbacks(),
    )
    serving.clock = Clock()
    return serving


def _settle(serving: Serving) -> None:
    """Let the load in flight finish and be collected, as the loop's next maintain would."""
    while (load := serving._loading) is not None:
        load.future.exception(timeout=60)
        serving.maintain()


def _step(serving: Serving, seconds: float = REGISTRY_CHECK_S) -> None:
    assert isinstance(serving.clock, Clock)
    serving.clock.now += seconds
    serving.maintain()


@pytest.mark.usefixtures("no_history")
def test_serve_only_waits_for_the_trainers_first_version_with_the_input_paused(
    tmp_path: Path, jobs: list[FakeJob]
) -> None:
    keras.utils.set_random_seed(3)
    reported, loaded = Reported(), []
    serving = _serve_only(tmp_path, reported, loaded)
    serving.start()
    assert serving.awaiting is not None
    assert (serving.bootstrap, serving.gathering, serving.version) == (None, False, None)
    assert reported.input == ["pause"]  # nothing is read, so nothing is committed unforecast
    assert reported.lines == [("waiting", WAITING)]
    assert reported.readyz() == {
        "status": "not_ready",
        "reasons": ["no_model", "no_partitions", "broker_unreachable"],
        "phase": "waiting",
        "waiting_for": "a first model version from the trainer",
    }

    serving.observe(_readings(3, range(60)))  # (the paused input brings none; kept nowhere)
    serving.maintain()  # the loop's first turn: a registry check, said again after READY
    for _ in range(3):
        _step(serving)
    assert serving.loading is None and jobs == []
    assert reported.lines[-1] == ("waiting", WAITING) and reported.input == ["pause"]

    ModelRegistry(tmp_path / "registry").save(build_forecaster(CFG), CFG)  # the trainer's
    _step(serving, REGISTRY_CHECK_S / 2)
    assert serving.loading is None  # the next check is not due yet
    _step(serving, REGISTRY_CHECK_S / 2)
    assert serving.loading == 1  # off the loop, as version 1 of the bootstrap is
    assert reported.lines[-1] == ("loading", "loading the first model (version 1)")
    assert reported.readyz()["waiting_for"] == "loading the first model"
    assert reported.input == ["pause"]  # held until it serves
    _settle(serving)
    assert (serving.version, loaded, serving.awaiting) == (1, [1], None)
    assert reported.input == ["pause", "resume"]
    assert "waiting_for" not in reported.readyz()
    assert jobs == []


@pytest.mark.usefixtures("no_history")
def test_serve_only_waits_past_unusable_versions_instead_of_failing_start_up(
    tmp_path: Path, jobs: list[FakeJob]
) -> None:
    reported, loaded = Reported(), []
    registry = ModelRegistry(tmp_path / "registry")
    registry.version_path(1).mkdir(parents=True)  # a copy in progress
    serving = _serve_only(tmp_path, reported, loaded)
    serving.start()  # a serving daemon that trains would stop here (StartupError)
    assert serving.awaiting is not None and reported.input == ["pause"]
    assert reported.readyz()["waiting_for"] == WAITING
    _step(serving)
    assert serving.loading is None  # unchanged since start-up: not tried again yet

    assert registry.save(build_forecaster(CFG), CFG) == 2  # promoted: the pointer names it
    _step(serving)
    _settle(serving)
    assert (serving.version, loaded, reported.input) == (2, [2], ["pause", "resume"])
    assert jobs == []
