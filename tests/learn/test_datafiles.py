"""Sensor history from CSV files, and ``streamcast train --data`` on one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from streamcast.config import ModelSpec, TrainingSettings
from streamcast.learn.datafiles import load_csv, load_series
from streamcast.learn.fit import train_and_save
from streamcast.learn.registry import ModelRegistry
from streamcast.sim.fleet import fleet_series

TrainCommand = Callable[..., int]
WriteConfig = Callable[..., Path]


def test_load_csv_sorts_and_groups(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(
        "sensor,ts,v1,v2,v3\n"
        "b,300,3,30,300\n"
        "a,200,2,20,200\n"
        "b,100,1,10,100\n"
        "a,100,1,10,100\n"
        "\n"
        "b,200,2,20,200\n"
    )
    data = load_csv(path)
    assert sorted(data) == ["a", "b"]
    ts, values = data["b"]
    np.testing.assert_array_equal(ts, [100, 200, 300])
    np.testing.assert_array_equal(values, [[1, 10, 100], [2, 20, 200], [3, 30, 300]])
    assert data["a"][1].shape == (2, 3)


def test_load_csv_takes_iso_times_and_keeps_empty_cells_as_gaps(tmp_path: Path) -> None:
    path = tmp_path / "real.csv"
    path.write_text(
        "sensor,ts,v1,v2\n"
        "p,2026-01-01T00:15:00Z,1.5,\n"
        "p,2026-01-01T00:00:00,1.0,2.0\n"
        "p,1767227400,2.0,nan\n"
    )
    ts, values = load_csv(path)["p"]
    assert ts.tolist() == [1767225600.0, 1767226500.0, 1767227400.0]
    assert values[0].tolist() == [1.0, 2.0]
    assert np.isnan(values[1, 1]) and values[1, 0] == 1.5


@pytest.mark.parametrize(
    ("body", "line", "what"),
    [
        ("a,1,2,3\na,2,x,3\n", 3, "not a number"),
        ("a,1,2,3\na,2,3\n", 3, "fields"),
        ("a,1,2,3\n,2,3,4\n", 3, "sensor"),
        ("a,1,2,3\na,2,inf,4\n", 3, "not finite"),
        ("a,1,2,3\na,yesterday,3,4\n", 3, "ISO 8601"),
    ],
)
def test_load_csv_names_file_and_line(tmp_path: Path, body: str, line: int, what: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("sensor,ts,v1,v2\n" + body)
    with pytest.raises(ValueError, match=what) as info:
        load_csv(path)
    assert f"{path}:{line}:" in str(info.value)


def test_load_csv_rejects_bad_header_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("sensor,time,v1\na,1,2\n")
    with pytest.raises(ValueError, match=r":1: header"):
        load_csv(path)
    path.write_text("sensor,ts,v1\na,1,2\na,1,3\n")
    with pytest.raises(ValueError, match="two readings"):
        load_csv(path)


def test_load_series_cuts_each_sensor_at_its_gaps(tmp_path: Path) -> None:
    path = tmp_path / "gappy.csv"
    a_ts = [0, 60, 120, 180, 1000, 1060, 1120]
    rows = [f"a,{t},{i}" for i, t in enumerate(a_ts)] + [f"b,{t},{-t}" for t in (0, 60, 120)]
    path.write_text("sensor,ts,v1\n" + "\n".join(reversed(rows)) + "\n")
    timestamps, series, description = load_series(path)
    assert [t.tolist() for t in timestamps] == [[0, 60, 120, 180], [1000, 1060, 1120], [0, 60, 120]]
    assert [s[:, 0].tolist() for s in series] == [[0, 1, 2, 3], [4, 5, 6], [0, -60, -120]]
    assert description == f"{path} (2 sensors, 3 gap-free pieces)"
    # A gap of 820 s is under 20 steps of 60 s: no cut, and the description says so.
    timestamps, series, description = load_series(path, gap_factor=20.0)
    assert [len(t) for t in timestamps] == [7, 3] and [len(s) for s in series] == [7, 3]
    assert description == f"{path} (2 sensors)"


def test_train_command_from_csv(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    train_command: TrainCommand,
    write_config: WriteConfig,
) -> None:
    series = fleet_series(2, 200, seed=4, num_features=1)
    path = tmp_path / "in.csv"
    rows = [
        f"s{s},{1000 + 60 * i},{float(series[s][i, 0])!r}" for s in range(2) for i in range(200)
    ]
    path.write_text("sensor,ts,v1\n" + "\n".join(reversed(rows)) + "\n")
    cfg = ModelSpec(num_steps=8, num_features=1, units=(4,), horizon=4)
    config = write_config(num_steps=8, num_features=1, units=[4], horizon=4, max_epochs=2)
    registry = ModelRegistry(tmp_path / "reg")
    code = train_command(
        "--data",
        path,
        "--registry",
        registry.path,
        "--config",
        config,
        "--max-seconds",
        2,
        "--threads",
        2,
    )
    out = capsys.readouterr().out
    assert code == 0
    assert registry.versions() == [1]
    meta = registry.meta(1)
    assert meta["data_range"]["first_ts"] == 1000 and meta["data_range"]["sensors"] == 2
    assert "in.csv (2 sensors)" in out
    assert "model MAE" in out and "seasonal RMSE" in out
    assert f"saved model version 1 to {registry.version_path(1)}" in out
    registry.load(expect=cfg)  # the shape came from the config file
    timestamps, loaded, _ = load_series(path)
    with pytest.raises(ValueError, match="num_features"):
        train_and_save(
            cfg.model_copy(update={"num_features": 2}),
            loaded,
            TrainingSettings(max_seconds=1.0),
            registry.path,
            timestamps=timestamps,
        )
    assert registry.versions() == [1]


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("sensor,ts,v1,v2\na,1,2,3\na,2,x,3\n", 3, "not a number"),
        ("sensor,time,v1\na,1,2\n", 1, "header"),
    ],
)
def test_train_command_names_the_bad_line_of_a_csv(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    train_command: TrainCommand,
    text: str,
    line: int,
    what: str,
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    registry = ModelRegistry(tmp_path / "reg")
    code = train_command("--data", path, "--registry", registry.path, "--max-seconds", "1")
    captured = capsys.readouterr()
    assert code == 1
    assert f"streamcast train: {path}:{line}:" in captured.err and what in captured.err
    assert "saved model" not in captured.out and registry.versions() == []


def test_train_command_names_a_missing_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], train_command: TrainCommand
) -> None:
    path = tmp_path / "missing.csv"
    registry = ModelRegistry(tmp_path / "reg")
    code = train_command("--data", path, "--registry", registry.path)
    captured = capsys.readouterr()
    assert code == 1
    assert "streamcast train: " in captured.err and str(path) in captured.err
    assert registry.versions() == []
