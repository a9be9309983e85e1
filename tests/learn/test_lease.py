"""The registry lease: one holder at a time, renewals, takeover of an expired lease, and
real processes racing for it (spawned, so nothing of this process is inherited)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from streamcast.learn.lease import LEASE_FILE, RegistryLease

from ..waiting import wait_for

CONTENDERS = 6


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _write_lease(path: Path, holder: str, expires: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    doc = {"holder": holder, "host": "elsewhere", "pid": 1, "acquired": expires - 10}
    doc.update(expires=expires, token=f"token-{holder}")
    (path / LEASE_FILE).write_text(json.dumps(doc))


def test_one_holder_at_a_time_and_release_frees_it(tmp_path: Path) -> None:
    a = RegistryLease(tmp_path, "trainer-a", ttl_s=30)
    b = RegistryLease(tmp_path, "trainer-b", ttl_s=30)
    assert b.holder() is None
    assert a.acquire()
    assert a.held
    assert not b.acquire()
    info = b.holder()
    assert info is not None
    assert (info.holder, info.pid) == ("trainer-a", os.getpid())
    assert 29 < info.remaining() <= 30
    assert a.acquire()  # holding it already: a renewal
    a.release()
    assert not a.held
    assert not (tmp_path / LEASE_FILE).exists()
    assert b.acquire()
    assert b.holder() is not None and b.holder().holder == "trainer-b"  # type: ignore[union-attr]


def test_renew_moves_the_expiry_and_a_lost_lease_says_so(tmp_path: Path) -> None:
    clock = Clock()
    a = RegistryLease(tmp_path, "a", ttl_s=10, clock=clock)
    b = RegistryLease(tmp_path, "b", ttl_s=10, clock=clock)
    assert a.acquire()
    clock.now += 5
    assert a.renew()
    clock.now += 8  # 13 s after acquiring, 8 after renewing: still held
    assert not b.acquire()
    assert a.renew()
    clock.now += 11  # a stopped renewing: expired
    assert b.holder() is None
    assert b.acquire()
    assert not a.renew()  # taken over: a knows
    assert not a.held
    a.release()  # must not remove b's lease
    assert b.holder() is not None and b.holder().holder == "b"  # type: ignore[union-attr]


def test_an_expired_lease_of_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    _write_lease(tmp_path, "dead", expires=time.time() - 1)
    lease = RegistryLease(tmp_path, "alive", ttl_s=30)
    assert lease.holder() is None
    assert lease.acquire()
    assert lease.holder().holder == "alive"  # type: ignore[union-attr]
    # Nothing left behind by the takeover.
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEASE_FILE]


def test_a_lease_file_without_contents_is_held_for_one_ttl(tmp_path: Path) -> None:
    # Its creator is writing it, or died between the create and the write.
    (tmp_path / LEASE_FILE).write_bytes(b"")
    clock = Clock()
    lease = RegistryLease(tmp_path, "b", ttl_s=10, clock=clock)
    assert not lease.acquire()
    held = lease.holder()
    assert held is not None and held.holder == "?"
    clock.now += 11
    assert lease.holder() is None
    assert lease.acquire()


def test_a_contender_that_read_a_stale_lease_cannot_remove_its_successor(
    tmp_path: Path,
) -> None:
    """A reads the expired lease; B takes it over first; A's takeover must not touch B's."""
    _write_lease(tmp_path, "dead", expires=time.time() - 1)
    stale = os.stat(tmp_path / LEASE_FILE)
    a = RegistryLease(tmp_path, "a", ttl_s=30)
    b = RegistryLease(tmp_path, "b", ttl_s=30)
    assert b.acquire()
    a._take_over(stale)  # what A does next with what it read
    assert b.holder() is not None and b.holder().holder == "b"  # type: ignore[union-attr]
    assert b.renew()
    assert not a.acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEASE_FILE]


def test_a_takeover_whose_taker_died_half_way_is_completed(tmp_path: Path) -> None:
    _write_lease(tmp_path, "dead", expires=time.time() - 1)
    stale = os.stat(tmp_path / LEASE_FILE)
    # The taker linked the stale file to its takeover name, then died before removing it.
    taken = tmp_path / f".tmp-lease-broken-{stale.st_ino}-{stale.st_mtime_ns}-0"
    os.link(tmp_path / LEASE_FILE, taken)
    clock = Clock()
    lease = RegistryLease(tmp_path, "c", ttl_s=5, clock=clock)
    assert not lease.acquire()  # within a ttl of the link: someone is taking it over
    clock.now += 6
    assert lease.acquire()
    assert lease.holder().holder == "c"  # type: ignore[union-attr]


def test_ttl_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ttl_s must be positive"):
        RegistryLease(tmp_path, "x", ttl_s=0)


# -- real processes ------------------------------------------------------------------------


def _contend(path: str, index: int, rounds: int, barrier: Any, results: Any) -> None:
    """Each round: wait for the start, try once, report, wait for everyone."""
    for r in range(rounds):
        barrier.wait()
        lease = RegistryLease(path, f"contender-{index}", ttl_s=30)
        results.put((r, index, lease.acquire()))
        barrier.wait()


def _hold(path: str, ttl_s: float, ready: Any) -> None:
    lease = RegistryLease(path, "doomed", ttl_s=ttl_s)
    ready.put(lease.acquire())
    time.sleep(600)  # never renews: killed first


def test_processes_racing_for_a_free_or_expired_lease_have_exactly_one_winner(
    tmp_path: Path,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    rounds = 6
    barrier = ctx.Barrier(CONTENDERS + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_contend, args=(str(tmp_path), i, rounds, barrier, results))
        for i in range(CONTENDERS)
    ]
    for p in procs:
        p.start()
    try:
        for r in range(rounds):
            (tmp_path / LEASE_FILE).unlink(missing_ok=True)
            if r % 2:  # every other round a dead holder's expired lease is in the way
                _write_lease(tmp_path, "dead", expires=time.time() - 5)
            barrier.wait(timeout=120)
            barrier.wait(timeout=60)
            got = sorted(results.get(timeout=10) for _ in range(CONTENDERS))
            assert [g[0] for g in got] == [r] * CONTENDERS
            winners = [index for _, index, won in got if won]
            assert len(winners) == 1, (r, got)
            held = RegistryLease(tmp_path, "observer", ttl_s=30).holder()
            assert held is not None and held.holder == f"contender-{winners[0]}"
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * CONTENDERS
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [LEASE_FILE]  # no takeover names or temp files left behind


def test_a_sigkilled_holder_loses_the_lease_once_its_ttl_passes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    ttl_s = 3.0
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ttl_s, ready))
    holder.start()
    try:
        assert ready.get(timeout=60) is True
        info = RegistryLease(tmp_path, "next", ttl_s=ttl_s).holder()
        assert info is not None and (info.holder, info.pid) == ("doomed", holder.pid)
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=30)
        assert holder.exitcode == -signal.SIGKILL
    finally:
        if holder.is_alive():
            holder.kill()
    successor = RegistryLease(tmp_path, "next", ttl_s=ttl_s)
    assert info.remaining() > 0
    assert not successor.acquire()  # the dead holder's lease runs until its expiry
    wait_for(successor.acquire, ttl_s + 10, "the lease to be taken over")
    assert time.time() >= info.expires
    assert successor.holder().holder == "next"  # type: ignore[union-attr]
