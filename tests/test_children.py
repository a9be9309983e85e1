"""A child started in the background outlives the thread that started it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

from streamcast.signals import die_with_parent, start_and_watch


def _child(parent_pid: int, payload: bytes) -> None:
    die_with_parent(parent_pid, signal.SIGKILL)
    time.sleep(1.0)


def test_a_child_with_big_arguments_is_not_killed_when_its_start_returns() -> None:
    """The parent-death signal fires when the thread that started the child ends; the
    retrainer's start thread used to end with ``start`` and killed children whose
    arguments (the replay buffer) took long enough to read."""
    ctx = multiprocessing.get_context("spawn")
    process = ctx.Process(target=_child, args=(os.getpid(), b"x" * 50_000_000), daemon=True)
    thread, started = start_and_watch(process, "test-start")
    assert started.wait(60)
    process.join(60)
    assert process.exitcode == 0, f"child ended with {process.exitcode}"
    thread.join(5)
    assert not thread.is_alive()
