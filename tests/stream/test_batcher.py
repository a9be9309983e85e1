"""The batcher: size or age forms a batch; commits stop at the first pending offset."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcast.stream.batcher import Batcher, Ready


def _lags(offsets: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Lags and whether they are known, told apart by the row's offset."""
    lags = offsets[:, None, None] + 0.25 * np.arange(horizon)[:, None] + 0.125 * np.arange(2)
    return lags.astype(np.float32), offsets % 3 != 0


def _ready(partitions: list[int], offsets: list[int], horizon: int = 0) -> Ready:
    """Rows without a season, or with ``horizon`` lags (``_lags``)."""
    n = len(offsets)
    lags, known = _lags(np.asarray(offsets, np.int64), horizon)
    return Ready(
        sensors=[f"s{i}" for i in range(n)],
        windows=np.zeros((n, 4, 2), np.float32),
        truths=np.zeros((n, 2), np.float32),
        lags=lags,  # (n, 0, 2) without a season
        lags_known=known if horizon else np.zeros(n, np.bool_),
        slots=np.arange(n),
        generations=np.zeros(n, np.int64),
        counts=np.zeros(n, np.int64),
        step_s=np.ones(n),
        ts=np.arange(n, dtype=np.float64),
        log_ts=np.zeros(n),
        partitions=np.asarray(partitions, np.int32),
        offsets=np.asarray(offsets, np.int64),
    )


def test_a_full_batch_is_due_at_once_and_the_rest_waits() -> None:
    b = Batcher(max_batch=4, max_wait_s=10.0)
    b.add(_ready([0, 0, 1], [5, 6, 9]), now=0.0)
    assert not b.due(now=1.0)
    b.add(_ready([1, 1, 0], [10, 11, 7]), now=1.0)
    assert b.due(now=1.0)
    batch = b.take(now=1.0)
    assert batch.offsets.tolist() == [5, 6, 9, 10]
    assert len(b) == 2
    assert b.first_offsets() == {1: 11, 0: 7}


def test_a_partial_batch_is_due_after_max_wait() -> None:
    b = Batcher(max_batch=100, max_wait_s=0.05)
    assert b.wait_s(now=0.0, idle_s=0.5) == 0.5
    b.add(_ready([0], [1]), now=0.0)
    assert b.wait_s(now=0.02, idle_s=0.5) == pytest.approx(0.03)
    assert not b.due(now=0.04)
    assert b.due(now=0.05)
    assert len(b.take(now=0.05)) == 1
    assert len(b) == 0 and b.first_offsets() == {}


def test_rows_of_revoked_partitions_are_dropped() -> None:
    b = Batcher(max_batch=100, max_wait_s=1.0)
    b.add(_ready([0, 1, 2, 1], [1, 2, 3, 4]), now=0.0)
    b.drop_partitions({1})
    assert len(b) == 2
    batch = b.take(now=0.0)
    assert batch.partitions.tolist() == [0, 2]
    assert batch.sensors == ["s0", "s2"]


def test_lags_travel_with_their_rows() -> None:
    b = Batcher(max_batch=2, max_wait_s=10.0)
    b.add(_ready([0, 1, 0, 1, 0], [1, 2, 3, 4, 5], horizon=3), now=0.0)
    b.add(_ready([1, 0, 0], [6, 7, 9], horizon=3), now=0.0)
    b.drop_partitions({1})  # rows are selected
    taken = [b.take(now=1.0) for _ in range(3)]  # parts are split and joined
    assert [t.offsets.tolist() for t in taken] == [[1, 3], [5, 7], [9]]
    for t in taken:
        lags, known = _lags(t.offsets, 3)
        assert t.lags.shape == (len(t), 3, 2) and t.lags_known.dtype == np.bool_
        np.testing.assert_array_equal(t.lags, lags)
        np.testing.assert_array_equal(t.lags_known, known)
    assert [t.lags_known.tolist() for t in taken] == [[True, False], [True, True], [False]]
    plain = Ready.concat([_ready([0], [1]), _ready([0, 0], [2, 3])])
    assert plain.lags.shape == (3, 0, 2) and not plain.lags_known.any()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    max_batch=st.integers(1, 50),
)
def test_taking_drains_every_row_once_in_order_in_full_batches(
    sizes: list[int], max_batch: int
) -> None:
    b = Batcher(max_batch=max_batch, max_wait_s=10.0)
    offset = 0
    for n in sizes:
        b.add(_ready([0] * n, list(range(offset, offset + n))), now=0.0)
        offset += n
    taken: list[int] = []
    batches = []
    while len(b):
        before = len(b)
        batch = b.take(now=1.0)
        assert len(b) == before - len(batch)
        batches.append(len(batch))
        taken += batch.offsets.tolist()
        if len(b):
            assert b.first_offsets() == {0: taken[-1] + 1}
    assert taken == list(range(offset))
    assert all(n == max_batch for n in batches[:-1]) and 0 < batches[-1] <= max_batch
