"""Sensor history from CSV and Parquet files, and ``streamcast train --data`` on one."""

from __future__ import annotations

import gzip
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamcast.config import ModelSpec, TrainingSettings
from streamcast.learn import csvfile, parquetfile
from streamcast.learn.datafiles import SensorData, load_csv, load_readings, load_series
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
    with pytest.raises(ValueError, match=r"h.csv:3: sensor 'a' has two readings at ts=1.0"):
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


# --- load_readings: formats ---------------------------------------------------------

ROWS = [  # sensor, ts, v1, v2 in file order; None is a missing reading
    ("b", 1_767_225_660, 2.5, None),
    ("a", 1_767_225_600, 1.0, -2.0),
    ("b", 1_767_225_600, 0.125, 7.0),
    ("a", 1_767_225_660, None, 3.0e-9),
]


def _csv_text(rows: list[tuple[Any, ...]], header: str = "sensor,ts,v1,v2") -> str:
    cells = [",".join("" if c is None else str(c) for c in row) for row in rows]
    return header + "\n" + "\n".join(cells) + "\n"


def _write_parquet(path: Path, columns: dict[str, Any], **write: Any) -> Path:
    """A Parquet file of the given columns (lists or Arrow arrays)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(columns), path, **write)
    return path


def _parquet_of(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    sensor, ts, v1, v2 = (list(col) for col in zip(*rows, strict=True))
    return _write_parquet(path, {"sensor": sensor, "ts": ts, "v1": v1, "v2": v2})


def _assert_same_series(got: SensorData, want: SensorData) -> None:
    assert list(got.series) == list(want.series)
    for name, (ts, values) in want.series.items():
        np.testing.assert_array_equal(got.series[name][0], ts)
        np.testing.assert_array_equal(got.series[name][1], values)  # NaN == NaN here


def test_csv_gzip_and_parquet_give_identical_series(tmp_path: Path) -> None:
    text = _csv_text(ROWS)
    (tmp_path / "r.csv").write_text(text)
    with gzip.open(tmp_path / "r.csv.gz", "wt") as fh:
        fh.write(text)
    _parquet_of(tmp_path / "r.parquet", ROWS)
    _parquet_of(tmp_path / "r.pq", ROWS)
    want = load_readings(tmp_path / "r.csv")
    assert (want.rows, want.skipped, want.first_skips, want.num_features) == (4, 0, [], 2)
    assert want.path == str(tmp_path / "r.csv")
    assert list(want.series) == ["b", "a"]  # first appearance
    ts, values = want.series["a"]
    assert ts.dtype == np.float64 and ts.tolist() == [1_767_225_600, 1_767_225_660]
    assert values.shape == (2, 2) and values[0].tolist() == [1.0, -2.0]
    assert np.isnan(values[1, 0]) and values[1, 1] == 3.0e-9
    for name in ("r.csv.gz", "r.parquet", "r.pq"):
        got = load_readings(tmp_path / name)
        _assert_same_series(got, want)
        assert (got.rows, got.skipped, got.num_features) == (4, 0, 2)


def test_parquet_takes_timestamps_of_any_unit_and_zone_and_iso_text(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    late, early = datetime(2026, 1, 1, 0, 15, 0, 250_000, UTC), datetime(2026, 1, 1, tzinfo=UTC)
    cases = [  # a zone only labels the instant, which Arrow stores as UTC ticks
        ("ms", None, late, 1767226500.25),
        ("ms", "Europe/Berlin", late, 1767226500.25),
        ("us", "+05:30", late, 1767226500.25),
        ("ns", "UTC", late, 1767226500.25),
        ("s", "UTC", late.replace(microsecond=0), 1767226500.0),
    ]
    for unit, tz, when, want in cases:
        ts = pa.array([when, early], pa.timestamp(unit, tz=tz))
        columns = {"sensor": ["p", "p"], "ts": ts, "v1": [1, 2]}
        got_ts, values = load_readings(_write_parquet(tmp_path / "t.parquet", columns)).series["p"]
        assert got_ts.tolist() == [1767225600.0, want], (unit, tz)
        assert values[:, 0].tolist() == [2.0, 1.0]
    iso = ["2026-01-01T00:15:00.25Z", "2026-01-01T01:00:00+01:00"]  # as the CSV path parses
    csv_rows: list[tuple[Any, ...]] = [("7", iso[0], 1.0), ("7", iso[1], 2.0)]
    (tmp_path / "iso.csv").write_text(_csv_text(csv_rows, "sensor,ts,v1"))
    files = {
        "iso.parquet": {"sensor": [7, 7], "ts": iso, "v1": [1.0, 2.0]},  # integer sensor ids too
        "ns.parquet": {
            "sensor": ["7", "7"],
            "ts": pa.array([late, early], pa.timestamp("ns")),
            "v1": [1.0, 2.0],
        },
        "dict.parquet": {  # dictionary-encoded, as pandas categoricals are written
            "sensor": pa.array(["7", "7"]).dictionary_encode(),
            "ts": pa.array(iso).dictionary_encode(),
            "v1": pa.array([1, 2], pa.int8()),
        },
    }
    want_iso = load_readings(tmp_path / "iso.csv")
    assert want_iso.series["7"][0].tolist() == [1767225600.0, 1767226500.25]
    for name, columns in files.items():
        _assert_same_series(load_readings(_write_parquet(tmp_path / name, columns)), want_iso)


def test_parquet_reads_batch_by_batch_and_counts_rows_across_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parquetfile, "_CHUNK", 4)
    n = 23
    v1 = [float(i) for i in range(n)]
    v1[17] = float("inf")
    columns = {"sensor": ["a", "b"] * 11 + ["a"], "ts": list(range(n)), "v1": v1}
    path = _write_parquet(tmp_path / "many.parquet", columns, row_group_size=7)
    with pytest.raises(ValueError, match=r"many.parquet: row 18: v1: value inf is not finite"):
        load_readings(path)
    data = load_readings(path, skip_bad=True)
    assert (data.rows, data.skipped, data.first_skips) == (
        23,
        1,
        ["row 18: v1: value inf is not finite"],
    )
    assert data.series["a"][0].tolist() == [t for t in range(0, n, 2)]
    assert data.series["b"][0].tolist() == [t for t in range(1, n, 2) if t != 17]


def test_parquet_columns_must_be_sensor_ts_v1_and_so_on(tmp_path: Path) -> None:
    cases = {
        "extra": ({"sensor": ["a"], "ts": [1], "v1": [1.0], "note": ["x"]}, "unexpected 'note'"),
        "missing": ({"sensor": ["a"], "v2": [1.0]}, "missing 'ts', 'v1'"),
        "novalue": ({"sensor": ["a"], "ts": [1]}, "missing 'v1'"),
        "type": ({"sensor": ["a"], "ts": [True], "v1": [1.0]}, "column 'ts' has type bool"),
        "value": ({"sensor": ["a"], "ts": [1], "v1": ["1.5"]}, "column 'v1' has type string"),
    }
    for name, (columns, what) in cases.items():
        path = _write_parquet(tmp_path / f"{name}.parquet", columns)
        with pytest.raises(ValueError, match=what) as info:
            load_readings(path, skip_bad=True)  # the columns are never skippable
        assert str(path) in str(info.value)
    (tmp_path / "junk.parquet").write_text("sensor,ts,v1\n")
    with pytest.raises(ValueError, match=r"junk.parquet: not a readable Parquet file"):
        load_readings(tmp_path / "junk.parquet")


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _parquet_of(tmp_path / "r.parquet", ROWS)
    for module in ("pyarrow", "pyarrow.compute", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'streamcast\[parquet\]'") as info:
        load_readings(path)
    assert "reading Parquet needs pyarrow" in str(info.value)
    assert isinstance(info.value, ValueError)  # so `streamcast train` prints it, no traceback
    (tmp_path / "r.csv").write_text(_csv_text(ROWS))
    assert load_readings(tmp_path / "r.csv").rows == 4  # CSV needs no pyarrow


def test_missing_cells_are_gaps_whether_or_not_their_chunk_has_a_bad_row(tmp_path: Path) -> None:
    missing = ["", "nan", "-nan", " NA ", "null", "Null", "NaN", " "]
    rows = [f"a,{t},{cell},{t}" for t, cell in enumerate(missing)]
    path = tmp_path / "gaps.csv"
    for extra in ([], ["a,99,x,1"]):  # a bad row sends the chunk down the careful path
        path.write_text("sensor,ts,v1,v2\n" + "\n".join(rows + extra) + "\n")
        data = load_readings(path, skip_bad=True)
        ts, values = data.series["a"]
        assert ts.tolist() == list(range(len(missing))) and data.skipped == len(extra)
        assert np.isnan(values[:, 0]).all() and values[:, 1].tolist() == ts.tolist()


# --- load_readings: bad rows ----------------------------------------------------------

GOOD = "a,1,1,1\n"  # line 2, after the header
CSV_BAD = [  # (the bad line 3, what the error says)
    ("a,2,3\n", "3 fields, expected 4"),
    ("a,2,3,4,5\n", "5 fields, expected 4"),
    (" ,2,3,4\n", "empty sensor id"),
    ("a,yesterday,3,4\n", "ts 'yesterday' is neither epoch seconds nor ISO 8601"),
    ("a,nan,3,4\n", "ts 'nan' is not finite"),
    ("a,-inf,3,4\n", "ts '-inf' is not finite"),
    ("a,2,x,4\n", "v1: value 'x' is not a number"),
    ("a,2,3,inf\n", "v2: value 'inf' is not finite"),
    ("a,2,-Infinity,4\n", "v1: value '-Infinity' is not finite"),
    ("a,1,5,6\n", r"sensor 'a' has two readings at ts=1.0 \(first at line 2\)"),
]


@pytest.mark.parametrize(("bad", "what"), CSV_BAD)
def test_csv_bad_rows_raise_or_are_skipped(tmp_path: Path, bad: str, what: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("sensor,ts,v1,v2\n" + GOOD + bad + "b,5,6,\n")
    with pytest.raises(ValueError, match=f"^{path}:3: {what}$"):
        load_readings(path)
    data = load_readings(path, skip_bad=True)
    assert (data.rows, data.skipped) == (3, 1)
    assert data.first_skips == [f"line 3: {what}".replace("\\", "")]
    assert data.series["a"][0].tolist() == [1.0] and data.series["a"][1].tolist() == [[1.0, 1.0]]
    assert data.series["b"][0].tolist() == [5.0] and np.isnan(data.series["b"][1][0, 1])


def test_parquet_bad_rows_name_the_row(tmp_path: Path) -> None:
    nan, inf = float("nan"), float("inf")
    cases = [  # (sensor, ts, v1) of the bad second row, what the error says
        ((None, 2.0, 1.0), "empty sensor id"),
        ((" ", 2.0, 1.0), "empty sensor id"),
        (("a", None, 1.0), "ts is missing"),
        (("a", nan, 1.0), "ts nan is not finite"),
        (("a", inf, 1.0), "ts inf is not finite"),
        (("a", 2.0, -inf), "v1: value -inf is not finite"),
        (("a", 1.0, 2.0), r"sensor 'a' has two readings at ts=1.0 \(first at row 1\)"),
    ]
    for k, (row, what) in enumerate(cases):
        rows = [("a", 1.0, None), row, ("b", 3.0, 4.0)]  # a null value is a missing reading
        sensor, ts, v1 = (list(col) for col in zip(*rows, strict=True))
        path = _write_parquet(tmp_path / f"bad{k}.parquet", {"sensor": sensor, "ts": ts, "v1": v1})
        with pytest.raises(ValueError, match=f"^{path}: row 2: {what}$"):
            load_readings(path)
        data = load_readings(path, skip_bad=True)
        assert (data.rows, data.skipped, len(data.first_skips)) == (3, 1, 1), what
        assert data.first_skips[0].startswith("row 2: ")
        assert data.series["a"][0].tolist() == [1.0] and np.isnan(data.series["a"][1][0, 0])
        assert data.series["b"][1].tolist() == [[4.0]]
    iso = _write_parquet(
        tmp_path / "iso.parquet", {"sensor": ["a", "a"], "ts": ["1", "soon"], "v1": [1, 2]}
    )
    with pytest.raises(ValueError, match="row 2: ts 'soon' is neither epoch seconds nor ISO 8601"):
        load_readings(iso)


def test_duplicates_keep_the_first_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text(
        "sensor,ts,v1\na,2,20\na,1,10\nb,1,-1\na,2,21\na,2,22\na,1970-01-01T00:00:01Z,11\n"
    )
    with pytest.raises(
        ValueError, match=r"dup.csv:5: sensor 'a' has two readings at ts=2.0 \(first at line 2\)"
    ):
        load_readings(path)
    data = load_readings(path, skip_bad=True)
    assert data.series["a"][0].tolist() == [1.0, 2.0]
    assert data.series["a"][1][:, 0].tolist() == [10.0, 20.0]
    assert (data.rows, data.skipped) == (6, 3)
    assert data.first_skips == [
        "line 5: sensor 'a' has two readings at ts=2.0 (first at line 2)",
        "line 6: sensor 'a' has two readings at ts=2.0 (first at line 2)",
        "line 7: sensor 'a' has two readings at ts=1.0 (first at line 3)",
    ]


def test_the_first_bad_row_in_the_file_is_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csvfile, "_CHUNK", 2)  # the duplicate and the bad row in other chunks
    path = tmp_path / "two.csv"
    path.write_text("sensor,ts,v1\na,1,1\nb,1,1\na,1,2\nb,2,x\n")
    with pytest.raises(ValueError, match=r"two.csv:4: sensor 'a' has two readings"):
        load_readings(path)
    path.write_text("sensor,ts,v1\na,1,1\nb,2,x\na,1,2\n")
    with pytest.raises(ValueError, match=r"two.csv:3: v1: value 'x' is not a number"):
        load_readings(path)


def test_csv_lines_count_blank_lines_and_quoted_line_breaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csvfile, "_CHUNK", 3)
    path = tmp_path / "lines.csv"
    body = 'a,1,1\n\n"two\nlines",1,2\n   \na,2,3\n"x\r\ny",2,4\na,3,oops\n'
    path.write_text("sensor,ts,v1\n" + body, newline="")
    with pytest.raises(ValueError, match=r"lines.csv:10: v1: value 'oops' is not a number"):
        load_readings(path)
    data = load_readings(path, skip_bad=True)
    assert (data.rows, data.skipped) == (5, 1)  # blank lines are not rows
    assert list(data.series) == ["a", "two\nlines", "x\r\ny"]


def test_skip_bad_does_not_excuse_a_bad_header_or_a_file_without_good_rows(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    for text, what in [
        ("", r"f.csv:1: empty file"),
        ("sensor,ts\na,1\n", r"f.csv:1: header 'sensor,ts'"),
        ("sensor,ts,v2\na,1,1\n", r"f.csv:1: header"),
        ("sensor,ts,v1\n\n", r"f.csv: no data rows"),
        (
            "sensor,ts,v1\na,x,1\n,1,1\n",
            r"f.csv: no good data rows: all 2 were bad, first at line 2: ts 'x'",
        ),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=what):
            load_readings(path, skip_bad=True)


def test_skip_bad_keeps_the_first_five_reasons_and_counts_all(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    rows = [f"s,{t},{'x' if t % 3 == 0 else t}" for t in range(1, 40)]
    path.write_text("sensor,ts,v1\n" + "\n".join(rows) + "\n")
    data = load_readings(path, skip_bad=True)
    assert (data.rows, data.skipped) == (39, 13)
    assert data.first_skips == [
        f"line {t + 1}: v1: value 'x' is not a number" for t in (3, 6, 9, 12, 15)
    ]
    assert len(data.series["s"][0]) == 26


def test_load_series_says_how_many_rows_it_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("sensor,ts,v1\na,0,1\na,60,x\na,120,3\na,180,4\n")
    with pytest.raises(ValueError, match=r"s.csv:3:"):
        load_series(path)
    timestamps, series, description = load_series(path, skip_bad=True)
    assert [t.tolist() for t in timestamps] == [[0, 120, 180]]
    assert [s[:, 0].tolist() for s in series] == [[1, 3, 4]]
    assert description == (
        f"{path} (1 sensors; skipped 1 of 4 rows as bad, "
        "first line 3: v1: value 'x' is not a number)"
    )


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
