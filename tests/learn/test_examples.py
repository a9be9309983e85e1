"""Examples cut from series: alignment, strides, gaps, the chronological split and its sizes."""

from __future__ import annotations

import itertools

import numpy as np

from streamcast.learn.examples import (
    chain_index,
    concat_examples,
    make_examples,
    make_examples_many,
    seasonal_lags,
    split_at_gaps,
    split_series,
    split_sizes,
)


def _arange_series(n: int) -> np.ndarray:
    """Feature 0 is the index, feature 1 the index + 1000: alignment is readable off values."""
    i = np.arange(n, dtype=np.float64)
    return np.stack([i, 1000 + i], axis=1)


def test_examples_alignment_truth_before_window_target_after() -> None:
    ex = make_examples(_arange_series(30), num_steps=5, horizon=3)
    assert len(ex) == 30 - (1 + 5 + 3) + 1
    assert ex.window.shape == (22, 5, 2) and ex.window.dtype == np.float32
    assert ex.truth.shape == (22, 2) and ex.target.shape == (22, 3, 2)
    for i in range(len(ex)):
        np.testing.assert_array_equal(ex.truth[i], [i, 1000 + i])
        np.testing.assert_array_equal(ex.window[i, :, 0], np.arange(i + 1, i + 6))
        np.testing.assert_array_equal(ex.target[i, :, 0], np.arange(i + 6, i + 9))
        np.testing.assert_array_equal(ex.target[i, :, 1], 1000 + np.arange(i + 6, i + 9))
    # The last example's target ends on the last reading.
    assert ex.target[-1, -1, 0] == 29


def test_examples_stride_short_series_and_non_finite() -> None:
    strided = make_examples(_arange_series(30), num_steps=5, horizon=3, stride=4)
    np.testing.assert_array_equal(strided.truth[:, 0], np.arange(0, 22, 4))
    short = make_examples(_arange_series(8), num_steps=5, horizon=3)
    assert len(short) == 0 and short.window.shape == (0, 5, 2) and short.target.shape == (0, 3, 2)
    gappy = _arange_series(30)
    gappy[15, 1] = np.nan
    ex = make_examples(gappy, num_steps=5, horizon=3)
    starts = ex.truth[:, 0].astype(int)
    assert len(ex) == 22 - 9  # every example whose span covers reading 15 is dropped
    assert not ((starts >= 15 - 8) & (starts <= 15)).any()
    assert np.isfinite(ex.window).all() and np.isfinite(ex.target).all()


def test_examples_many_concatenates_with_sources() -> None:
    ex = make_examples_many([_arange_series(12), 5 * _arange_series(14)], 3, 2)
    assert len(ex) == (12 - 5) + (14 - 5)
    np.testing.assert_array_equal(ex.source, [0] * 7 + [1] * 9)
    np.testing.assert_array_equal(ex.truth[7], [0, 5000])


def test_chronological_split_has_no_target_leakage() -> None:
    series = _arange_series(200)
    split = split_series([series], num_steps=10, horizon=5, validation_fraction=0.25)
    last_train_target = split.train.target[:, :, 0].max()
    first_val_target = split.val.target[:, :, 0].min()
    assert last_train_target == 149 and first_val_target == 150
    assert split.val.target[:, -1, 0].max() == 199
    np.testing.assert_allclose(split.scale[0], series[:150].std(axis=0))


def test_split_sizes_match_the_split() -> None:
    lengths = [200, 60, 31, 10]
    split = split_series(
        [_arange_series(n) for n in lengths], num_steps=10, horizon=5, validation_fraction=0.25
    )
    assert split_sizes(lengths, 10, 5, 0.25) == (len(split.train), len(split.val))
    assert split_sizes([10], 10, 5, 0.25) == (0, 0)


def test_split_at_gaps_cuts_where_readings_stop() -> None:
    ts = np.array([0, 900, 1800, 2700, 9000, 9900, 10800], dtype=np.float64)
    values = np.arange(14, dtype=np.float64).reshape(7, 2)
    pieces = split_at_gaps(ts, values)
    assert [p[0].tolist() for p in pieces] == [[0, 900, 1800, 2700], [9000, 9900, 10800]]
    assert pieces[1][1][0].tolist() == [8.0, 9.0]


def test_chains_are_consecutive_windows_of_one_series_and_leave_none_out() -> None:
    gappy = _arange_series(40)
    gappy[20, 0] = np.nan  # cuts series 0 into two runs of examples
    ex = make_examples_many([gappy, _arange_series(30) + 5000], num_steps=5, horizon=3)
    np.testing.assert_array_equal(ex.start, ex.truth[:, 0].astype(np.int64) % 5000)
    idx = chain_index(ex, links=4)
    assert idx.shape[1] == 4
    for chain in idx:
        assert len(set(ex.source[chain].tolist())) == 1  # one series
        np.testing.assert_array_equal(np.diff(ex.truth[chain, 0]), 1.0)  # one reading apart
        for a, b in itertools.pairwise(chain):  # each window one step on
            np.testing.assert_array_equal(ex.window[a, 1:], ex.window[b, :-1])
    assert set(idx.ravel().tolist()) == set(range(len(ex)))  # every example is in a chain
    # Runs: 12 examples (starts 0-11), 9 (21-29) and 22 (series 1): 3 + 3 + 6 chains,
    # the last of each run ending on the run's end.
    assert len(idx) == 3 + 3 + 6
    assert ex.truth[idx[2], 0].tolist() == [8.0, 9.0, 10.0, 11.0]
    assert len(chain_index(ex, links=13)) == 2  # only series 1's run of 22: two, overlapping
    unknown = make_examples(_arange_series(20), 5, 3)
    assert len(chain_index(type(unknown)(unknown.window, unknown.truth, unknown.target), 2)) == 0


# ---------------------------------------------------------------------------------------------
# Seasonal lags (``model.seasonal_lag``): per target step, the reading one period before it.


def _reference_lags(
    series: np.ndarray, last: np.ndarray, horizon: int, period: int
) -> tuple[np.ndarray, np.ndarray]:
    """Loop by loop: series[last + h - period] for h = 1..horizon, known where every one
    of those indices is inside the series and every value finite; zeros elsewhere."""
    f = series.shape[1]
    lags = np.zeros((len(last), horizon, f))
    known = np.zeros((len(last), 1))
    for i, end in enumerate(last):
        rows = [int(end) + h - period for h in range(1, horizon + 1)]
        if all(0 <= r < len(series) for r in rows) and all(
            np.isfinite(series[r]).all() for r in rows
        ):
            lags[i] = series[rows]
            known[i] = 1.0
    return lags, known


def test_seasonal_lags_are_the_readings_one_period_before_each_step() -> None:
    series = _arange_series(60)
    series[40, 1] = np.nan  # one feature missing: lags reading row 40 are unknown
    last = np.array([0, 4, 5, 6, 11, 20, 39, 44, 45, 46, 59])
    for horizon, period in [(3, 3), (3, 7), (1, 1), (4, 12)]:
        lags, known = seasonal_lags(series, last, horizon, period)
        assert lags.shape == (len(last), horizon, 2) and lags.dtype == np.float32
        assert known.shape == (len(last), 1) and known.dtype == np.float32
        want_lags, want_known = _reference_lags(series, last, horizon, period)
        np.testing.assert_array_equal(known, want_known)
        np.testing.assert_array_equal(lags, want_lags)
    # Readable off the values: period 7, step h of the origin 20 is reading 20 + h - 7.
    lags, known = seasonal_lags(series, np.array([20, 5]), 3, 7)
    np.testing.assert_array_equal(lags[0, :, 0], [14, 15, 16])
    np.testing.assert_array_equal(lags[0, :, 1], [1014, 1015, 1016])
    assert known[:, 0].tolist() == [1.0, 0.0]  # origin 5 needs reading -1
    assert np.all(lags[1] == 0.0)
    # A period of exactly the horizon: the last step's lag is the window's last reading.
    lags, _ = seasonal_lags(series, np.array([30]), 4, 4)
    np.testing.assert_array_equal(lags[0, :, 0], [27, 28, 29, 30])


def test_examples_carry_the_lags_of_their_own_target_steps() -> None:
    series = _arange_series(80)
    series[50, 0] = np.nan  # drops the examples over it; later lags reading it are unknown
    num_steps, horizon, period = 5, 3, 9
    for stride in (1, 4):
        ex = make_examples(series, num_steps, horizon, stride, seasonal_lag=period)
        plain = make_examples(series, num_steps, horizon, stride)
        for name in ("window", "truth", "target", "start"):  # the lags change nothing else
            np.testing.assert_array_equal(getattr(ex, name), getattr(plain, name))
        assert ex.lags is not None and ex.lags_known is not None
        assert ex.lags.shape == (len(ex), horizon, 2)
        assert ex.lags_known.shape == (len(ex), 1)
        assert plain.lags is not None and plain.lags.shape == (len(plain), 0, 2)
        last = ex.window[:, -1, 0].astype(np.int64)  # the window's last reading, by value
        assert ex.start is not None
        np.testing.assert_array_equal(last, ex.start + num_steps)
        want_lags, want_known = _reference_lags(series, last, horizon, period)
        np.testing.assert_array_equal(ex.lags, want_lags)
        np.testing.assert_array_equal(ex.lags_known, want_known)
        # Known exactly where the first lag is a reading of the series and none is the NaN.
        first_lag = last + 1 - period
        touches_nan = (first_lag <= 50) & (last + horizon - period >= 50)
        np.testing.assert_array_equal(ex.lags_known[:, 0], (first_lag >= 0) & ~touches_nan)
        assert ex.lags_known.any() and not ex.lags_known.all()
        known = ex.lags_known[:, 0] == 1
        np.testing.assert_array_equal(
            ex.lags[known, :, 0], ex.target[known, :, 0] - period
        )  # the same steps, one period earlier


def test_examples_from_first_read_lags_before_it() -> None:
    """``first`` moves where examples start, not what they read: the lags of an example
    are the same as when the series is cut from its beginning."""
    series = _arange_series(70)
    ts = 1_700_000_000.0 + 3600.0 * np.arange(70)
    num_steps, horizon, period = 6, 4, 20
    whole = make_examples(series, num_steps, horizon, ts=ts, seasonal_lag=period)
    for first in (1, 9, 25, 70 - (1 + num_steps + horizon)):
        part = make_examples(series, num_steps, horizon, ts=ts, seasonal_lag=period, first=first)
        assert part.start is not None and whole.start is not None
        assert part.start[0] == first and part.truth[0, 0] == first
        rows = np.flatnonzero(whole.start >= first)
        assert len(part) == len(rows)
        for name in ("window", "truth", "target", "start", "calendar", "lags", "lags_known"):
            np.testing.assert_array_equal(getattr(part, name), getattr(whole.take(rows), name))
        # The first example's lags lie before ``first`` (where the origin allows it).
        assert part.lags_known is not None and part.lags is not None
        if first + num_steps + 1 - period >= 0:
            assert part.lags_known[0, 0] == 1.0 and part.lags[0, 0, 0] < first
    assert len(make_examples(series, num_steps, horizon, seasonal_lag=period, first=65)) == 0


def test_split_gives_validation_examples_known_lags_from_the_training_part() -> None:
    series = _arange_series(300)
    num_steps, horizon, period = 10, 5, 48
    split = split_series([series], num_steps, horizon, 0.25, seasonal_lag=period)
    plain = split_series([series], num_steps, horizon, 0.25)
    for part, other in ((split.train, plain.train), (split.val, plain.val)):
        np.testing.assert_array_equal(part.window, other.window)
        np.testing.assert_array_equal(part.target, other.target)
        assert part.start is not None and part.lags is not None and part.lags_known is not None
        want_lags, want_known = _reference_lags(series, part.start + num_steps, horizon, period)
        np.testing.assert_array_equal(part.lags, want_lags)
        np.testing.assert_array_equal(part.lags_known, want_known)
    cut = 225
    assert split.val.target[:, :, 0].min() == cut  # the split itself is unchanged
    assert split.val.lags_known is not None and split.val.lags is not None
    assert split.val.lags_known.all()  # every validation example has a season behind it
    assert split.val.lags[:, :, 0].min() < cut - period + horizon  # read in the training part
    assert split.train.lags_known is not None
    # Training examples whose season starts before the series have none.
    assert split.train.lags_known[0, 0] == 0.0 and split.train.lags_known[-1, 0] == 1.0
    assert np.count_nonzero(split.train.lags_known == 0) == period - num_steps - 1


def test_concatenated_and_taken_examples_keep_their_lags_aligned() -> None:
    a = make_examples(_arange_series(40), 4, 3, source=0, seasonal_lag=10)
    b = make_examples(5000 + _arange_series(30), 4, 3, source=1, seasonal_lag=10)
    both = concat_examples([a, b])
    assert len(both) == len(a) + len(b)
    assert both.lags is not None and both.lags_known is not None
    for i in range(len(both)):
        part, row = (a, i) if i < len(a) else (b, i - len(a))
        assert part.lags is not None and part.lags_known is not None
        np.testing.assert_array_equal(both.lags[i], part.lags[row])
        np.testing.assert_array_equal(both.lags_known[i], part.lags_known[row])
        np.testing.assert_array_equal(both.window[i], part.window[row])
        assert both.source[i] == (0 if i < len(a) else 1)
        if both.lags_known[i, 0]:  # the lag and the target belong to the same example
            np.testing.assert_array_equal(both.lags[i, :, 0], both.target[i, :, 0] - 10)
    many = make_examples_many(
        [_arange_series(40), 5000 + _arange_series(30)], 4, 3, seasonal_lag=10
    )
    assert many.lags is not None
    np.testing.assert_array_equal(many.lags, both.lags)
    np.testing.assert_array_equal(many.lags_known, both.lags_known)
    order = np.random.default_rng(0).permutation(len(both))
    taken = both.take(order)
    for name in ("window", "truth", "target", "source", "calendar", "start", "lags"):
        np.testing.assert_array_equal(getattr(taken, name), getattr(both, name)[order])
    assert taken.lags_known is not None
    np.testing.assert_array_equal(taken.lags_known, both.lags_known[order])
