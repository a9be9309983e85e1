"""The read-back's bookkeeping: which readings it keeps and when it may stop."""

from __future__ import annotations

import numpy as np

from streamcast.stream.rebuild import _newest_per_sensor, _Tally


def test_keeps_only_the_newest_readings_each_sensor_still_needs() -> None:
    codes = np.array([0, 1, 0, 2, 0, 1, 0], np.int64)
    room = np.array([2, 5, 0], np.int64)
    keep = _newest_per_sensor(codes, room)
    # sensor 0: its last two (positions 4 and 6); sensor 1: both; sensor 2: none
    assert keep.tolist() == [False, True, False, False, True, True, True]


def test_keeps_everything_when_there_is_room() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 50, 1000).astype(np.int64)
    keep = _newest_per_sensor(codes, np.full(50, 10_000, np.int64))
    assert keep.all()


def _tally(rows: dict[str, list[float]]) -> _Tally:
    tally = _Tally()
    sensors = [s for s, stamps in rows.items() for _ in stamps]
    ts = np.array([t for stamps in rows.values() for t in stamps])
    tally.add(tally.encode(sensors), ts)
    return tally


def test_stops_once_every_sensor_is_full_or_quiet() -> None:
    step = 60.0
    recent = [1000 + step * k for k in range(10)]
    tally = _tally(
        {
            "full": recent,
            "also-full": recent,
            "quiet": [0.0, step, 2 * step],  # silent for far more than 3 steps: restarts anyway
        }
    )
    assert tally.satisfied(need=10, gap_factor=3.0).tolist() == [True, True, True]


def test_a_short_sensor_that_still_reports_keeps_the_scan_going() -> None:
    step = 60.0
    tally = _tally(
        {
            "full": [1000 + step * k for k in range(10)],
            "short": [1000 + step * 7, 1000 + step * 8, 1000 + step * 9],
        }
    )
    assert tally.satisfied(need=10, gap_factor=3.0).tolist() == [True, False]


def test_one_stamp_from_the_future_does_not_make_the_others_look_quiet() -> None:
    step = 60.0
    rows = {f"s{i}": [1000 + step * k for k in range(3)] for i in range(5)}
    rows["odd"] = [1000.0, 1060.0, 1e9]
    tally = _tally(rows)
    assert not tally.satisfied(need=10, gap_factor=3.0)[:5].any()
