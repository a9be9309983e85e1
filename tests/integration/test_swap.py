"""A version promoted while readings flow is loaded and warmed off the loop, then swapped in
between batches: every reading gets exactly one forecast, each sensor's forecasts switch
from version 1 to version 2 once and never back, and the loop kept polling, forecasting
and heartbeating while the new version loaded."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamcast.learn.registry import ModelRegistry
from streamcast.sim.broker import EmbeddedBroker
from streamcast.stream import serving as serving_module
from streamcast.stream.serving import Served

from ..waiting import wait_for
from .conftest import (
    SPEC,
    Topics,
    consume,
    fleet_readings,
    forecasts_of,
    produce_readings,
    settings_for,
)

pytestmark = pytest.mark.integration

SENSORS = 4
BEFORE, DURING, AFTER = 110, 30, 30  # steps produced before, during and after the load
TURNS_WHILE_LOADING = 20


def _second_version(registry: Path) -> int:
    """Version 1 with perturbed weights, saved (and so promoted) as version 2."""
    reg = ModelRegistry(registry)
    v1 = reg.load(1)
    rng = np.random.default_rng(5)
    for weight in v1.model.trainable_weights:
        value = np.asarray(weight.numpy())
        weight.assign(value + rng.normal(0, 0.05, value.shape).astype(value.dtype))
    return reg.save(v1.model, v1.cfg, metrics={}, data_range={})


def test_new_version_swaps_in_mid_stream_while_the_loop_keeps_turning(
    broker: EmbeddedBroker,
    topics: Topics,
    registry: Path,
    start_daemon: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serving_module, "REGISTRY_CHECK_S", 0.2)
    readings = fleet_readings(SENSORS, BEFORE + DURING + AFTER, seed=31)
    before = SENSORS * BEFORE
    during = before + SENSORS * DURING
    produce_readings(broker, topics.readings, readings[:before])
    running = start_daemon(settings_for(broker, topics, registry))
    running.wait_ready(90)
    daemon, serving = running.daemon, running.daemon.serving
    metrics = daemon.metrics.registry
    wait_for(lambda: serving.version == 1, 30, "version 1 to serve")

    # The loop counts its turns while a load is in flight; the load, once loaded and
    # warmed, is held until the loop was seen turning and forecasting meanwhile.
    turns = Counter[str]()
    daemon.loop_hook = lambda: turns.update(["loading" if serving.loading else "idle"])
    release, load_threads = threading.Event(), []
    prepare = serving._prepare

    def held(version: int) -> Served:
        load_threads.append(threading.current_thread().name)
        served = prepare(version)
        release.wait(120)
        return served

    serving._prepare = held
    wait_for(lambda: turns["idle"] > 0, 30, "the loop hook to run")
    assert _second_version(registry) == 2
    wait_for(lambda: serving.loading == 2, 30, "version 2 to start loading")
    acked = metrics.get_sample_value("streamcast_forecasts_total") or 0.0

    # Readings keep flowing while version 2 loads; the test thread watches the heartbeat.
    def trickle() -> None:
        for i in range(before, during, SENSORS * 3):
            produce_readings(broker, topics.readings, readings[i : i + SENSORS * 3])
            time.sleep(0.05)

    producer = threading.Thread(target=trickle)
    producer.start()
    oldest_heartbeat = 0.0

    def loop_kept_turning() -> bool:
        nonlocal oldest_heartbeat
        oldest_heartbeat = max(oldest_heartbeat, daemon.health.heartbeat_age_s())
        flowing = (metrics.get_sample_value("streamcast_forecasts_total") or 0.0) > acked
        return turns["loading"] >= TURNS_WHILE_LOADING and flowing and not producer.is_alive()

    wait_for(loop_kept_turning, 60, "the loop to turn and forecast while version 2 loads")
    producer.join()
    assert serving.version == 1 and serving.loading == 2
    release.set()
    wait_for(lambda: serving.version == 2, 30, "version 2 to be swapped in")
    assert load_threads == ["streamcast-load-v2"]
    assert oldest_heartbeat < 2.0, oldest_heartbeat
    print(
        f"swap: {turns['loading']} loop turns while loading, oldest heartbeat "
        f"{oldest_heartbeat:.2f}s, load {serving.served.load_seconds if serving.served else 0:.1f}s"
    )

    produce_readings(broker, topics.readings, readings[during:])
    want = {(s, ts) for i, (s, ts, _) in enumerate(readings) if i // SENSORS >= SPEC.num_steps}
    records = consume(
        broker,
        topics.forecasts,
        until=lambda r: {(d["sensor"], d["ts"]) for d in forecasts_of(r)} >= want,
        timeout=90,
    )
    assert running.stop() == 0

    docs = forecasts_of(records)
    seen = Counter((d["sensor"], d["ts"]) for d in docs)
    assert set(seen) == want, f"{len(want - set(seen))} forecasts missing"
    assert max(seen.values()) == 1, "duplicates without a restart"
    assert {d["model_version"] for d in docs} == {1, 2}
    after_keys = {(s, ts) for s, ts, _ in readings[during:]}
    assert {d["model_version"] for d in docs if (d["sensor"], d["ts"]) in after_keys} == {2}
    for sensor in {s for s, _, _ in readings}:
        versions = [
            d["model_version"] for d in sorted(docs, key=lambda d: d["ts"]) if d["sensor"] == sensor
        ]
        switch = versions.index(2)
        assert versions == [1] * switch + [2] * (len(versions) - switch), sensor
