"""Hot swap: a new version is loaded and warmed on a worker thread while the loop goes on,
and swapped in between batches by a later ``maintain``; a failed load leaves the old model
serving, and a rollback swaps back the same way. Against a registry written by hand, a
version copied with ``cp -r`` / ``rsync`` appears as an empty directory, then half-copied,
then whole; it is served once whole.

``Serving.maintain`` is driven with a fake clock (``Serving.clock``), one registry check
per call; the models are tiny so each load (Keras load + compile + warm-up) is quick.
"""

from __future__ import annotations

import gc
import logging
import shutil
import threading
import time
import weakref
from pathlib import Path

import keras
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamcast.config import ModelSpec, Settings
from streamcast.errors import StartupError
from streamcast.learn.registry import META_FILE, MODEL_FILE, ModelRegistry
from streamcast.model import build_forecaster
from streamcast.ops.metrics import Metrics
from streamcast.stream.batcher import Ready
from streamcast.stream.candidates import INCOMPLETE_GRACE_S
from streamcast.stream.capacity import EvictionWarnings
from streamcast.stream.daemon import Daemon
from streamcast.stream.messages import Readings
from streamcast.stream.serving import REGISTRY_CHECK_S, Served, Serving
from streamcast.stream.windows import WindowStore

CFG = ModelSpec(num_steps=8, num_features=2, units=(8,), horizon=4, dropout=0.0)
LOGGER = "streamcast.stream"  # serving and the candidates it picks from


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return build_forecaster(CFG)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, model: keras.Model) -> Path:
    """A finished version elsewhere: the source of the hand copies."""
    reg = ModelRegistry(tmp_path_factory.mktemp("staged"))
    return reg.version_path(reg.save(model, CFG))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A Serving on a registry, with what it reported and a clock to step it."""

    def __init__(self, registry: Path) -> None:
        settings = Settings(
            window={"num_steps": CFG.num_steps},
            model={"num_features": 2, "units": [8], "horizon": 4, "dropout": 0.0},
            inference={"max_batch": 2, "jit_compile": "off"},
            registry={"path": registry},
        )
        self.loaded: list[int] = []
        self.swaps: list[tuple[int, int]] = []
        self.serving = Serving(
            settings,
            WindowStore(4, CFG.num_steps, CFG.num_features),
            on_loaded=lambda version, seconds: self.loaded.append(version),
            on_swapped=lambda old, new: self.swaps.append((old, new)),
            pause_input=lambda: None,
            resume_input=lambda: None,
            status=lambda phase, status: None,
        )
        self.clock = Clock()
        self.serving.clock = self.clock

    def check(self, after_s: float = REGISTRY_CHECK_S) -> None:
        """Let ``after_s`` pass, run the loop's maintain (one registry check), then let
        the loads it started finish and be collected by the next maintain calls."""
        self.clock.now += after_s
        self.serving.maintain()
        self.settle()

    def settle(self) -> None:
        while (load := self.serving._loading) is not None:
            load.future.exception(timeout=60)  # waits, whatever the outcome
            self.serving.maintain()

    @property
    def version(self) -> int | None:
        return self.serving.version


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(LOGGER) and r.levelno == level]


@pytest.fixture
def harness(tmp_path: Path, model: keras.Model) -> Harness:
    reg = ModelRegistry(tmp_path / "registry")
    # No current pointer: the registry is served as one made by hand, newest usable first.
    assert reg.save(model, CFG, promote=False) == 1
    h = Harness(reg.path)
    h.serving.start()
    assert h.version == 1
    return h


@pytest.fixture
def pointed(tmp_path: Path, model: keras.Model) -> Harness:
    """Serving version 1 of a registry with a current pointer, as the trainer writes it."""
    reg = ModelRegistry(tmp_path / "registry")
    assert reg.save(model, CFG) == 1  # promoted: the pointer names it
    h = Harness(reg.path)
    h.serving.start()
    assert h.version == 1
    return h


def _batch(n: int = 3) -> Ready:
    """``n`` windows as the batcher hands them over."""
    return Ready(
        sensors=[f"s{i}" for i in range(n)],
        windows=np.ones((n, CFG.num_steps, CFG.num_features), np.float32),
        truths=np.ones((n, CFG.num_features), np.float32),
        lags=np.zeros((n, 0, CFG.num_features), np.float32),  # CFG has no season
        lags_known=np.zeros(n, np.bool_),
        slots=np.arange(n),
        generations=np.zeros(n, np.int64),
        counts=np.zeros(n, np.int64),
        step_s=np.full(n, 900.0),
        ts=np.arange(n, dtype=np.float64),
        log_ts=np.zeros(n),
        partitions=np.zeros(n, np.int32),
        offsets=np.arange(n),
    )


class HeldLoads:
    """Replaces ``Serving._prepare``: each load runs for real, on whatever thread calls it,
    then waits for ``release``; ``threads`` names the threads that ran loads."""

    def __init__(self, serving: Serving) -> None:
        self.release = threading.Event()
        self.threads: list[str] = []
        self._prepare = serving._prepare
        serving._prepare = self  # type: ignore[method-assign]

    def __call__(self, version: int) -> Served:
        self.threads.append(threading.current_thread().name)
        served = self._prepare(version)
        self.release.wait(60)
        return served


def test_new_version_loads_off_the_loop_and_swaps_in_on_a_later_maintain(
    pointed: Harness, model: keras.Model
) -> None:
    h, reg = pointed, pointed.serving.registry
    held = HeldLoads(h.serving)
    assert reg.save(model, CFG) == 2  # promoted: current
    h.clock.now += REGISTRY_CHECK_S
    started = time.perf_counter()
    h.serving.maintain()
    assert time.perf_counter() - started < 0.5  # it started the load, it did not wait
    assert h.serving.loading == 2

    # While version 2 loads the loop goes on: its maintain calls return at once, version 1
    # answers every batch, and no second load starts (version 3 waits for version 2's).
    assert reg.save(model, CFG) == 3
    for _ in range(3):
        h.clock.now += REGISTRY_CHECK_S
        started = time.perf_counter()
        h.serving.maintain()
        assert time.perf_counter() - started < 0.5
        assert h.serving.forecast_batch(_batch()).version == 1
    assert (h.serving.loading, h.version, h.loaded) == (2, 1, [1])

    held.release.set()
    load = h.serving._loading
    assert load is not None and load.future.exception(timeout=60) is None
    # Loaded and warmed, but swapped in only by the loop's next maintain: between batches.
    assert h.serving.forecast_batch(_batch()).version == 1
    h.serving.maintain()
    assert (h.version, h.loaded, h.swaps) == (2, [1, 2], [(1, 2)])
    # The same call went on to the registry check: version 3, promoted meanwhile, loads next.
    assert h.serving.loading == 3
    out = h.serving.forecast_batch(_batch())
    assert out.version == 2 and out.values.shape == (3, CFG.horizon, CFG.num_features)
    h.settle()
    assert (h.version, h.swaps) == (3, [(1, 2), (2, 3)])
    assert held.threads == ["streamcast-load-v2", "streamcast-load-v3"]
    assert threading.current_thread().name not in held.threads


def test_serving_freezes_the_heap_and_a_swapped_out_version_is_still_collected(
    pointed: Harness, model: keras.Model
) -> None:
    """Frozen objects are never walked by the cyclic collector (no full-collection
    pauses mid-stream); a version swapped out must not stay frozen with them."""
    h, reg = pointed, pointed.serving.registry
    assert h.serving.served is not None
    old = weakref.ref(
        h.serving.served.predictor._steppers["seeded"]
    )  # a Keras model: full of cycles
    assert gc.get_freeze_count() > 0
    assert reg.save(model, CFG) == 2
    h.clock.now += REGISTRY_CHECK_S
    h.serving.maintain()
    h.settle()
    assert h.version == 2 and gc.get_freeze_count() > 0
    assert old() is None, "the swapped-out version's model is still alive"


def test_failed_background_load_leaves_the_old_model_serving(
    pointed: Harness, model: keras.Model, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    h, reg = pointed, pointed.serving.registry
    prepare = h.serving._prepare

    def broken(version: int) -> Served:
        if version == 2:
            raise RuntimeError("out of device memory while compiling")
        return prepare(version)

    h.serving._prepare = broken  # type: ignore[method-assign]
    assert reg.save(model, CFG) == 2
    h.check()
    assert (h.version, h.serving.loading, h.swaps) == (1, None, [])
    errors = _records(caplog, logging.ERROR)
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "model version 2 rejected, still serving version 1" in message
    assert "RuntimeError: out of device memory while compiling" in message
    assert h.serving.candidates.rejected_version == 2
    assert h.serving.forecast_batch(_batch()).version == 1
    h.check()
    h.check()
    assert len(_records(caplog, logging.ERROR)) == 1  # same files: not tried again
    assert h.serving.loading is None and h.version == 1


def test_rollback_swaps_back_off_the_loop(pointed: Harness, model: keras.Model) -> None:
    h, reg = pointed, pointed.serving.registry
    assert reg.save(model, CFG) == 2
    h.check()
    assert h.version == 2
    held = HeldLoads(h.serving)
    assert reg.rollback() == 1
    h.clock.now += REGISTRY_CHECK_S
    h.serving.maintain()
    assert (h.serving.loading, h.version) == (1, 2)  # version 2 answers while 1 loads
    assert h.serving.forecast_batch(_batch()).version == 2
    held.release.set()
    h.settle()
    assert (h.version, h.swaps, h.loaded) == (1, [(1, 2), (2, 1)], [1, 2, 1])
    assert held.threads == ["streamcast-load-v1"]


def test_hand_copied_version_is_served_once_its_copy_completes(
    harness: Harness, staged: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    v2 = harness.serving.registry.version_path(2)

    # 1. The directory appears before its files: waited for, quietly.
    v2.mkdir()
    harness.check()
    harness.check()
    assert harness.version == 1
    assert _records(caplog, logging.ERROR) == []
    waiting = [r for r in _records(caplog, logging.INFO) if "not complete" in r.getMessage()]
    assert len(waiting) == 1  # said once, not at every check
    assert "version 2 is not complete yet" in waiting[0].getMessage()
    assert "has no meta.json (copy incomplete?)" in waiting[0].getMessage()

    # 2. Half copied: meta.json whole, model.keras cut short: rejected, once, naming why.
    shutil.copy2(staged / META_FILE, v2 / META_FILE)
    data = (staged / MODEL_FILE).read_bytes()
    (v2 / MODEL_FILE).write_bytes(data[: len(data) // 2])
    harness.check()
    assert harness.version == 1
    errors = _records(caplog, logging.ERROR)
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "model version 2 rejected, still serving version 1" in message
    assert "truncated" in message
    assert errors[0].ctx == {"model_version": 2}  # type: ignore[attr-defined]
    assert harness.serving.candidates.rejected_version == 2
    harness.check()
    harness.check()
    assert len(_records(caplog, logging.ERROR)) == 1  # unchanged files: not tried again

    # 3. The copy completes: the changed files are tried again and served.
    (v2 / MODEL_FILE).write_bytes(data)
    harness.check()
    assert harness.version == 2
    assert harness.loaded == [1, 2]
    assert any("changed since it was rejected" in r.getMessage() for r in caplog.records)
    assert len(_records(caplog, logging.ERROR)) == 1


def test_version_whose_files_never_arrive_is_rejected_after_the_grace_period(
    harness: Harness, staged: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    v2 = harness.serving.registry.version_path(2)
    v2.mkdir()
    harness.check()
    checks = int(INCOMPLETE_GRACE_S // REGISTRY_CHECK_S) - 2
    for _ in range(checks):
        harness.check()
    assert _records(caplog, logging.ERROR) == []
    harness.check(after_s=3 * REGISTRY_CHECK_S)  # past the grace period, nothing arrived
    errors = _records(caplog, logging.ERROR)
    assert len(errors) == 1
    assert "version 2 has no meta.json (copy incomplete?)" in errors[0].getMessage()
    for _ in range(5):
        harness.check()
    assert len(_records(caplog, logging.ERROR)) == 1
    assert harness.version == 1

    # Files that finally arrive change the fingerprint: tried again, served.
    shutil.copy2(staged / MODEL_FILE, v2 / MODEL_FILE)
    shutil.copy2(staged / META_FILE, v2 / META_FILE)
    harness.check()
    assert harness.version == 2


def test_progress_restarts_the_grace_period(
    harness: Harness, staged: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    v2 = harness.serving.registry.version_path(2)
    v2.mkdir()
    harness.check()
    harness.check(after_s=INCOMPLETE_GRACE_S - 1)
    # A slow copy: meta.json arrives just before the grace period ends...
    shutil.copy2(staged / META_FILE, v2 / META_FILE)
    harness.check(after_s=INCOMPLETE_GRACE_S - 1)
    assert _records(caplog, logging.ERROR) == []  # ...so the wait starts over
    shutil.copy2(staged / MODEL_FILE, v2 / MODEL_FILE)
    harness.check()
    assert harness.version == 2
    assert _records(caplog, logging.ERROR) == []


def test_newest_whole_version_is_served_while_a_newer_one_is_copied(
    harness: Harness, staged: Path, model: keras.Model
) -> None:
    reg = harness.serving.registry
    assert reg.save(model, CFG, promote=False) == 2  # still no pointer
    reg.version_path(3).mkdir()  # a hand copy in progress
    harness.check()
    assert harness.version == 2
    for name in (META_FILE, MODEL_FILE):
        shutil.copy2(staged / name, reg.version_path(3) / name)
    harness.check()
    assert harness.version == 3


def test_start_up_skips_a_version_that_is_still_being_copied(
    tmp_path: Path, model: keras.Model
) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    reg.save(model, CFG, promote=False)  # no pointer: newest usable first
    reg.version_path(2).mkdir()
    h = Harness(reg.path)
    h.serving.start()
    assert h.version == 1


def test_start_up_with_only_an_incomplete_version_fails(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    reg.version_path(1).mkdir(parents=True)
    h = Harness(reg.path)
    with pytest.raises(StartupError, match=r"version 1 has no meta\.json \(copy incomplete\?\)"):
        h.serving.start()


# -- the window store it serves from: a full store says so ---------------------------------
# (WindowStore's own tests live in test_windows.py; these cover the operator's side of
# capacity: the warning and the gauge an alert compares streamcast_sensors with.)

WINDOWS_LOGGER = "streamcast.stream.capacity"


def _one_reading(store: WindowStore, sensor: str, ts: float) -> int:
    """Append one reading; the number of windows it completed."""
    out = store.append(
        Readings([sensor], np.array([ts]), np.zeros((1, store.num_features), np.float32))
    )
    return len(out)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == WINDOWS_LOGGER and r.levelno == logging.WARNING]


def test_full_store_warns_once_a_minute_with_evictions_and_capacity(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=WINDOWS_LOGGER)
    clock = Clock()
    store = WindowStore(4, 3, 2)
    per_sensor = store.eviction_warnings.bytes_per_sensor
    assert per_sensor == 4 * 2 * 4 + 48  # (num_steps + 1) x features x float32 + bookkeeping
    store.eviction_warnings = EvictionWarnings(store.capacity, per_sensor, clock=clock)

    # Six sensors reporting in turn, one reading a second, in a store for four: every
    # reading after the first four evicts the idlest sensor, and no window ever fills.
    sensors = [f"s{i}" for i in range(6)]
    evicted_at: list[float] = []
    windows = 0
    for step in range(150):
        before = store.evicted_total
        windows += _one_reading(store, sensors[step % 6], float(step))
        evicted_at += [clock.now] * (store.evicted_total - before)
        clock.now += 1.0
    assert windows == 0
    assert len(evicted_at) == 150 - 4

    warned = _warnings(caplog)
    # The first eviction (at step 4) warns; then once a minute: steps 64 and 124.
    assert len(warned) == 3
    first = warned[0]
    assert first.ctx == {"evicted": 1, "capacity": 4}  # type: ignore[attr-defined]
    # One eviction a second: those of the last 60 s, both ends included.
    for record in warned[1:]:
        assert record.ctx == {"evicted": 61, "capacity": 4}  # type: ignore[attr-defined]
    message = first.getMessage()
    assert "window.capacity=4" in message
    assert "STREAMCAST_WINDOW__CAPACITY" in message
    assert f"{per_sensor} bytes of arrays per sensor" in message


def test_store_within_capacity_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=WINDOWS_LOGGER)
    store = WindowStore(4, 3, 2)
    windows = sum(_one_reading(store, f"s{step % 4}", float(step)) for step in range(40))
    assert windows > 0
    assert store.evicted_total == 0
    assert _warnings(caplog) == []


def test_daemon_exports_the_window_capacity(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry(), process=False)
    Daemon(
        Settings(window={"num_steps": 8, "capacity": 123}, registry={"path": tmp_path}),
        metrics=metrics,
    )
    assert metrics.registry.get_sample_value("streamcast_window_capacity") == 123
