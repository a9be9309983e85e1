"""``streamcast backtest`` and its data files, as a user runs them: CSV or Parquet in,
a table, JSON, a PNG or forecast lines out; a bad row named by its line."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from streamcast.cli import main
from streamcast.config import ModelSpec
from streamcast.learn.registry import ModelRegistry

STEPS, H = 8, 6
STEP_S = 300.0
T0 = 1_700_000_400.0  # a multiple of 2 steps: the stride's phase is known


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two versions of a small untrained model (their forecasts differ)."""
    from streamcast.model import build_forecaster
    from streamcast.model.runtime import keras

    path = tmp_path_factory.mktemp("registry")
    spec = ModelSpec(num_steps=STEPS, horizon=H, units=[6, 6], seeding="truth")
    registry = ModelRegistry(path)
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        registry.save(build_forecaster(spec), spec)
    return path


def _rows(sensors: int = 2, n: int = 60) -> list[list[str]]:
    rng = np.random.default_rng(0)
    rows = []
    for s in range(sensors):
        for i in range(n):
            v1 = 20 + 5 * np.sin(i / 6 + s) + rng.normal(0, 0.2)
            v2 = 100 + 10 * np.cos(i / 6) + rng.normal(0, 1)
            rows.append([f"s{s}", repr(T0 + STEP_S * i), f"{v1:.4f}", f"{v2:.3f}"])
    return rows


def _csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sensor", "ts", "v1", "v2"])
        w.writerows(rows)
    return path


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def go(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return go


def test_json_report_has_every_documented_key(run: Run, registry: Path, tmp_path: Path) -> None:
    data = _csv(tmp_path / "h.csv", _rows())
    code, out, err = run("backtest", "--data", data, "--registry", registry, "--json")
    assert code == 0, err
    doc = json.loads(out)
    for method in ("model", "persistence", "seasonal_naive"):
        part = doc[method]
        for key in ("mae", "rmse", "smape"):
            assert isinstance(part[key], float) and part[key] >= 0
        assert [b["steps"] for b in part["by_horizon"]] == ["1-6"]
        assert [f["feature"] for f in part["by_feature"]] == ["v1", "v2"]
        assert all(f["mae"] > 0 for f in part["by_feature"])
    assert doc["model_version"] == 2  # the current one
    assert doc["skill"] == pytest.approx(1 - doc["model"]["mae"] / doc["persistence"]["mae"])
    assert doc["windows"] == 2 * (60 - STEPS - 1)  # the last forecast has no later reading
    code, out, _ = run("backtest", "--data", data, "--registry", registry, "--json",
                       "--version", "v000001")  # fmt: skip
    assert code == 0 and json.loads(out)["model_version"] == 1
    assert json.loads(out)["model"]["mae"] != doc["model"]["mae"]


def test_the_table_start_stride_and_sensors(run: Run, registry: Path, tmp_path: Path) -> None:
    data = _csv(tmp_path / "h.csv", _rows())
    code, out, _ = run("backtest", "--data", data, "--registry", registry)
    assert code == 0
    assert "skill vs persistence" in out and "sMAPE" in out and "seasonal" in out
    start = datetime.fromtimestamp(T0 + 12 * STEP_S, UTC).isoformat()
    code, out, _ = run("backtest", "--data", data, "--registry", registry, "--json",
                       "--start", T0 + 40 * STEP_S, "--stride", 2, "--sensors", "s1")  # fmt: skip
    doc = json.loads(out)
    assert code == 0 and doc["sensors"] == 1 and doc["stride"] == 2
    assert doc["windows"] == 10  # readings 40..58 of s1, every other one
    code, out, _ = run("backtest", "--data", data, "--registry", registry, "--json",
                       "--start", start)  # fmt: skip
    assert code == 0 and json.loads(out)["start"] == T0 + 12 * STEP_S


def test_parquet_gives_the_csv_result(run: Run, registry: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows()
    data = _csv(tmp_path / "h.csv", rows)
    table = pa.table(
        {
            "sensor": [r[0] for r in rows],
            "ts": [float(r[1]) for r in rows],
            "v1": [float(r[2]) for r in rows],
            "v2": [float(r[3]) for r in rows],
        }
    )
    pq.write_table(table, tmp_path / "h.parquet")
    _, from_csv, _ = run("backtest", "--data", data, "--registry", registry, "--json")
    code, from_parquet, err = run(
        "backtest", "--data", tmp_path / "h.parquet", "--registry", registry, "--json"
    )
    assert code == 0, err
    a, b = json.loads(from_csv), json.loads(from_parquet)
    a.pop("data"), b.pop("data")
    assert a == b


def test_a_bad_row_is_named_or_skipped_and_counted(
    run: Run, registry: Path, tmp_path: Path
) -> None:
    rows = _rows()
    rows.insert(10, ["s0", "yesterday", "1.0", "2.0"])
    data = _csv(tmp_path / "bad.csv", rows)
    code, out, err = run("backtest", "--data", data, "--registry", registry)
    assert code == 1 and out == ""
    assert "bad.csv:12" in err and "yesterday" in err  # the header is line 1
    code, out, err = run("backtest", "--data", data, "--registry", registry, "--json",
                         "--skip-bad")  # fmt: skip
    assert code == 0
    assert "skipped 1 malformed rows" in err and "line 12" in err
    assert json.loads(out)["skipped_rows"] == 1


def test_plot_and_forecast_lines(run: Run, registry: Path, tmp_path: Path) -> None:
    data = _csv(tmp_path / "h.csv", _rows())
    png, lines = tmp_path / "b.png", tmp_path / "f.jsonl"
    code, _, err = run("backtest", "--data", data, "--registry", registry,
                       "--plot", png, "--output", lines)  # fmt: skip
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    forecasts = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(forecasts) == 2 * (60 - STEPS)
    assert {f["sensor"] for f in forecasts} == {"s0", "s1"}
    assert all(len(f["values"]) == H and f["model_version"] == 2 for f in forecasts)


def test_errors_are_one_line(run: Run, registry: Path, tmp_path: Path) -> None:
    data = _csv(tmp_path / "h.csv", _rows(n=STEPS))  # too short for any forecast
    code, _, err = run("backtest", "--data", data, "--registry", registry)
    assert code == 1 and "no forecast could be scored" in err
    code, _, err = run("backtest", "--data", tmp_path / "nope.csv", "--registry", registry)
    assert code == 1 and "nope.csv" in err and "Traceback" not in err
    code, _, err = run("backtest", "--data", data, "--registry", tmp_path / "empty")
    assert code == 1 and err.count("\n") == 1
    code, _, err = run("backtest", "--data", data, "--registry", registry, "--start", "soon")
    assert code == 1 and "--start" in err
