"""A backtest says what serving would have said: the daemon fed by ``streamcast replay``
publishes, for every (sensor, ts), the forecast ``streamcast backtest`` computed."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamcast.cli import main
from streamcast.sim.broker import EmbeddedBroker

from .conftest import STEP_S, RunningDaemon, Topics, consume, fleet_readings, settings_for

pytestmark = pytest.mark.integration

SENSORS = 3
STEPS = 96 + 1 + 30  # a full window and its truth, then 30 more readings


def _write_csv(path: Path, readings: list[tuple[str, float, np.ndarray]]) -> None:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["sensor", "ts", "v1", "v2"])
        for sensor, ts, values in readings:
            out.writerow(
                [sensor, repr(ts), *("" if np.isnan(v) else repr(float(v)) for v in values)]
            )


def test_backtest_and_the_daemon_fed_by_replay_agree(
    broker: EmbeddedBroker,
    topics: Topics,
    registry: Path,
    start_daemon: Callable[..., RunningDaemon],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "history.csv"
    _write_csv(data, fleet_readings(SENSORS, STEPS, seed=11))
    expected = SENSORS * (STEPS - 96)  # one forecast per reading from the 97th on

    out = tmp_path / "forecasts.jsonl"
    code = main(["backtest", "--data", str(data), "--registry", str(registry),
                 "--output", str(out), "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["forecasts"] == expected
    offline = {(d["sensor"], d["ts"]): d for d in map(orjson.loads, out.read_bytes().splitlines())}
    assert len(offline) == expected

    daemon = start_daemon(settings_for(broker, topics, registry))
    daemon.wait_ready()
    code = main(["replay", "--data", str(data), "--bootstrap", broker.bootstrap,
                 "--topic", topics.readings, "--max"])  # fmt: skip
    assert code == 0
    assert f"sent {SENSORS * STEPS} readings" in capsys.readouterr().out
    records = consume(broker, topics.forecasts, until=lambda r: len(r) >= expected, timeout=90)
    served = {(d["sensor"], d["ts"]): d for d in (orjson.loads(r.value) for r in records)}

    assert served.keys() == offline.keys()
    worst = 0.0
    for key, live in served.items():
        assert live["model_version"] == offline[key]["model_version"] == report["model_version"]
        assert live["step_s"] == offline[key]["step_s"] == STEP_S
        a, b = np.asarray(live["values"]), np.asarray(offline[key]["values"])
        worst = max(worst, float(np.abs(a - b).max() / (1.0 + np.abs(b).max())))
    # Both ran the same predictor on the same float32 windows; only the padding of the
    # batches differs, which may move the last float32 digit.
    assert worst < 1e-5, worst


def test_replay_keeps_each_sensors_order_and_its_pace(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "paced.csv"
    rows = [(f"s{k % 2}", 1_700_000_000.0 + 10.0 * k, np.array([k, -k])) for k in range(9)]
    rows.append(("s0", 1_700_000_200.0, np.array([np.nan, 1.0])))  # a missing value
    _write_csv(data, rows[::-1])  # any order in the file
    started = time.monotonic()
    code = main(["replay", "--data", str(data), "--bootstrap", broker.bootstrap,
                 "--topic", topics.readings, "--speed", "40"])  # fmt: skip
    took = time.monotonic() - started
    assert code == 0
    assert "sent 9 readings" in capsys.readouterr().out
    # 80 s of event time at 40x: at least 2 s of wall time (an upper bound would be flaky).
    assert took >= 2.0
    records = consume(broker, topics.readings, until=lambda r: len(r) >= 9)
    by_sensor: dict[bytes, list[float]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        reading = orjson.loads(r.value)
        assert r.key == reading["sensor"].encode()
        by_sensor.setdefault(r.key, []).append(reading["ts"])
    assert {k: len(v) for k, v in by_sensor.items()} == {b"s0": 5, b"s1": 4}
    assert all(ts == sorted(ts) for ts in by_sensor.values())
