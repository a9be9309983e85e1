"""Examples cut from series: alignment, strides, gaps, the chronological split and its sizes."""

from __future__ import annotations

import itertools

import numpy as np

from streamcast.learn.examples import (
    chain_index,
    make_examples,
    make_examples_many,
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
