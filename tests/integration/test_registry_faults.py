"""A running daemon and a version copied into its registry by hand, the way ``cp -r`` or
``rsync`` do it: the directory first, then a half-written model, then the whole thing.

With a ``current`` pointer (any registry streamcast wrote) the copy is not served until
``streamcast models promote N``, which refuses it while it is incomplete. A registry
without a pointer (made by hand, or by an older streamcast) serves its newest version:
the daemon keeps forecasting with version 1 throughout and serves version 2 once whole."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from streamcast.cli import main
from streamcast.learn.registry import META_FILE, MODEL_FILE, POINTER_FILE, ModelRegistry
from streamcast.sim.broker import EmbeddedBroker
from streamcast.stream import serving as serving_module

from ..waiting import wait_for
from .conftest import (
    Topics,
    consume,
    fleet_readings,
    forecasts_of,
    produce_readings,
    settings_for,
)

pytestmark = pytest.mark.integration

# Versions come and go here: uncompiled inference loads each in about a second
# (the compiled path has tests of its own).
UNCOMPILED = {"max_batch": 64, "max_wait_ms": 20, "jit_compile": "off"}


def _staged_copy_source(registry: Path, tmp_path: Path) -> Path:
    """The version to copy in, finished elsewhere."""
    v1 = ModelRegistry(registry).load(1)
    staged = ModelRegistry(tmp_path / "staged")
    return staged.version_path(staged.save(v1.model, v1.cfg, metrics={}, data_range={}))


def test_hand_copied_version_is_served_after_promote(
    broker: EmbeddedBroker,
    topics: Topics,
    registry: Path,
    start_daemon,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(serving_module, "REGISTRY_CHECK_S", 0.2)
    for name in [n for n in os.environ if n.startswith("STREAMCAST_")]:
        monkeypatch.delenv(name)
    source = _staged_copy_source(registry, tmp_path)
    assert ModelRegistry(registry).current() == 1

    readings = fleet_readings(2, 97 + 30, seed=22)
    first, later = readings[: 2 * 100], readings[2 * 100 :]
    produce_readings(broker, topics.readings, first)
    running = start_daemon(settings_for(broker, topics, registry, inference=UNCOMPILED))
    serving = running.daemon.serving
    got = consume(broker, topics.forecasts, until=lambda r: len(r) >= 2 * 4)
    assert {d["model_version"] for d in forecasts_of(got)} == {1}

    def promote() -> tuple[int, str, str]:
        code = main(["models", "promote", "2", "--registry", str(registry)])
        out, err = capsys.readouterr()
        return code, out, err

    # Copied half-way: not the current version, so the daemon does not even look at it,
    # and promoting it is refused, naming why.
    target = ModelRegistry(registry).version_path(2)
    target.mkdir()
    shutil.copy2(source / META_FILE, target / META_FILE)
    data = (source / MODEL_FILE).read_bytes()
    (target / MODEL_FILE).write_bytes(data[: len(data) // 2])
    code, out, err = promote()
    assert (code, out) == (1, "")
    assert "truncated" in err and len(err.splitlines()) == 1
    time.sleep(1.0)  # several registry checks
    assert serving.version == 1
    assert serving.candidates.rejected_version == 0 and not serving.candidates.incomplete

    # The copy finishes; promoting it now works, and the daemon follows the pointer.
    (target / MODEL_FILE).write_bytes(data)
    code, out, err = promote()
    assert (code, out, err) == (0, "current: model version 2 (was 1)\n", "")
    wait_for(lambda: serving.version == 2, 60, "version 2 to be served")
    produce_readings(broker, topics.readings, later)
    records = consume(broker, topics.forecasts, until=lambda r: len(r) >= 2 * 31)
    assert running.stop() == 0
    later_keys = {(s, ts) for s, ts, _ in later}
    docs = [d for d in forecasts_of(records) if (d["sensor"], d["ts"]) in later_keys]
    assert docs and {d["model_version"] for d in docs} == {2}
    sample = running.daemon.metrics.registry.get_sample_value
    assert sample("streamcast_model_info", {"version": "2"}) == 1


def test_hand_copied_version_is_served_once_complete_without_a_pointer(
    broker: EmbeddedBroker,
    topics: Topics,
    registry: Path,
    start_daemon,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(serving_module, "REGISTRY_CHECK_S", 0.2)
    caplog.set_level(logging.INFO, logger=serving_module.__name__)
    source = _staged_copy_source(registry, tmp_path)
    (registry / POINTER_FILE).unlink()  # a registry made by hand

    readings = fleet_readings(2, 97 + 30, seed=21)
    first, later = readings[: 2 * 100], readings[2 * 100 :]
    produce_readings(broker, topics.readings, first)
    running = start_daemon(settings_for(broker, topics, registry, inference=UNCOMPILED))
    serving = running.daemon.serving
    got = consume(broker, topics.forecasts, until=lambda r: len(r) >= 2 * 4)
    assert {d["model_version"] for d in forecasts_of(got)} == {1}

    # 1. The directory, no files yet: waited for, not rejected.
    target = ModelRegistry(registry).version_path(2)
    target.mkdir()
    wait_for(lambda: 2 in serving.candidates.incomplete, 30, "version 2 to be waited for")
    time.sleep(1.0)  # several more checks
    assert serving.candidates.rejected_version == 0
    assert serving.version == 1

    # 2. meta.json and half of model.keras: rejected (once), version 1 keeps serving.
    shutil.copy2(source / META_FILE, target / META_FILE)
    data = (source / MODEL_FILE).read_bytes()
    (target / MODEL_FILE).write_bytes(data[: len(data) // 2])
    wait_for(lambda: serving.candidates.rejected_version == 2, 30, "version 2 to be rejected")
    time.sleep(1.0)
    assert serving.version == 1
    rejections = [
        r for r in caplog.records if r.levelno == logging.ERROR and "rejected" in r.getMessage()
    ]
    assert len(rejections) == 1
    assert "truncated" in rejections[0].getMessage()

    # 3. The copy finishes: version 2 is served, and forecasts say so.
    (target / MODEL_FILE).write_bytes(data)
    wait_for(lambda: serving.version == 2, 60, "version 2 to be served")
    produce_readings(broker, topics.readings, later)
    records = consume(broker, topics.forecasts, until=lambda r: len(r) >= 2 * 31)
    assert running.stop() == 0
    later_keys = {(s, ts) for s, ts, _ in later}
    docs = [d for d in forecasts_of(records) if (d["sensor"], d["ts"]) in later_keys]
    assert docs and {d["model_version"] for d in docs} == {2}
    sample = running.daemon.metrics.registry.get_sample_value
    assert sample("streamcast_model_info", {"version": "2"}) == 1
    assert not (registry / POINTER_FILE).exists()  # the daemon only reads the registry
