"""A trainer killed with SIGKILL in the middle of a save leaves ``current`` loadable.

A real trainer process builds a small Keras model once, then saves versions as fast as it
can, alternating ``save(promote=True)`` with ``save(promote=False)`` + ``promote(v)``, into
a registry that keeps 3 versions. Each run of the save loop is a child forked from that
process (a fresh interpreter would pay TensorFlow's import, seconds, for every restart; the
forked child trains nothing, it only saves) and is killed with SIGKILL at a random moment
after its first save. After every kill, with no writer left: the pointer reads, names a
version that verifies (checksum and all), and so do the versions it rolls back to; the
first version ``serving_order`` offers is that one; every listed version verifies (a
reader never sees half a model) and the leftover temporary entries stay out of the listing.
At the end the trainer saves once more without being killed: it sweeps the leftovers once
they are old enough, retention is back to its promise, and the current version loads for
real and forecasts.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from streamcast.config import ModelSpec
from streamcast.learn.pointer import TMP_PREFIX, serving_order
from streamcast.learn.registry import ModelRegistry

SPEC = ModelSpec(num_steps=8, num_features=2, units=(4,), horizon=2, calendar=False)
KEEP = 3
KILLS = 15
MAX_DELAY_S = 0.3

# The trainer: build once, then one forked save loop per "run" line on stdin; each child
# says "saved PID VERSION" after every save (and promotion), its parent "reaped PID SIGNAL"
# once the child is gone. "finish" saves twice more in the parent itself and exits.
TRAINER = r"""
import os, sys, tempfile, traceback
from streamcast.config import ModelSpec
from streamcast.learn.registry import ModelRegistry
from streamcast.model.graph import build_forecaster

spec = ModelSpec.model_validate_json(sys.argv[1])
reg = ModelRegistry(sys.argv[2], keep=int(sys.argv[3]))
model = build_forecaster(spec)
with tempfile.TemporaryDirectory() as scratch:  # the first save imports what saving needs
    ModelRegistry(scratch).save(model, spec)

def say(line):
    os.write(1, (line + "\n").encode())

def save_loop():
    i = 0
    while True:
        if i % 2 == 0:
            v = reg.save(model, spec, promote=True)
        else:
            v = reg.save(model, spec, promote=False)
            reg.promote(v)
        say(f"saved {os.getpid()} {v}")
        i += 1

say("ready")
for line in sys.stdin:
    if line.strip() == "run":
        pid = os.fork()
        if pid == 0:
            try:
                save_loop()
            except BaseException:
                say("error " + traceback.format_exc().replace("\n", " | "))
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        say(f"reaped {pid} {os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0}")
    elif line.strip() == "finish":
        reg.save(model, spec, promote=True)
        v = reg.save(model, spec, promote=False)
        reg.promote(v)
        say(f"finished {v}")
        break
"""


class Trainer:
    """The trainer process and the lines it says, read on a thread of their own."""

    def __init__(self, registry: Path, log: Path) -> None:
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", TRAINER, SPEC.model_dump_json(), str(registry), str(KEEP)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log = log
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("eof")

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str | tuple[str, ...], timeout: float) -> list[str]:
        """The next line starting with ``word``, split; fails on an error or an early end."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"trainer said no {word!r} in {timeout}s") from None
            if line.startswith(word):
                return line.split()
            if line.startswith("error") or line == "eof":
                raise AssertionError(f"trainer: {line}\n{self.log.read_text()[-3000:]}")

    def saves_until(self, word: str, timeout: float) -> tuple[list[int], list[str]]:
        """The versions reported saved before the next ``word`` line, and that line."""
        saved = []
        while True:
            parts = self.expect(("saved", word), timeout)
            if parts[0] != "saved":
                return saved, parts
            saved.append(int(parts[2]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.reader.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _temp_entries(reg: ModelRegistry) -> set[str]:
    if not reg.path.exists():  # before the first save
        return set()
    return {name for name in os.listdir(reg.path) if name.startswith(TMP_PREFIX)}


def _killed_in(new: set[str], unpromoted: bool) -> str:
    """Where a kill landed, from what it left behind."""
    if any(n.startswith(TMP_PREFIX + "current-") for n in new):
        return "writing the pointer"
    if any(n.startswith(TMP_PREFIX + "removed-") for n in new):
        return "retention"
    if new:
        return "writing a version"
    if unpromoted:
        return "after a version, before its promotion"
    return "between saves"


def _check_after_kill(reg: ModelRegistry, why: str) -> list[int]:
    """Every promise a reader relies on, with no writer running; returns the versions."""
    names = os.listdir(reg.path)
    versions = reg.versions()
    assert versions == sorted(int(n[1:]) for n in names if n.startswith("v")), (why, names)
    pointer = reg.pointer()  # never half a pointer: it reads, or this raises
    assert pointer is not None, why
    assert reg.current() == pointer.current
    assert pointer.current in versions, f"{why}: retention removed current {pointer.current}"
    for version in versions:  # a version appears whole, or not at all
        reg.verify(version, expect=SPEC)
    assert set(pointer.previous) <= set(versions), f"{why}: rollback history {pointer}"
    order = serving_order(pointer, versions)
    assert order and order[0] == pointer.current, (why, order)
    return versions


@pytest.mark.timeout(120)
def test_sigkill_during_saves_leaves_current_loadable(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    reg = ModelRegistry(tmp_path / "registry", keep=KEEP)
    trainer = Trainer(reg.path, tmp_path / "trainer.log")
    landed: Counter[str] = Counter()
    reported: list[int] = []
    try:
        trainer.expect("ready", 60)
        assert reg.versions() == [] and reg.current() is None
        for kill in range(KILLS):
            why = f"kill {kill + 1} (seed {seed})"
            temp_before = _temp_entries(reg)
            trainer.tell("run")
            first = trainer.expect("saved", 30)
            pid, saved = int(first[1]), [int(first[2])]
            time.sleep(rng.uniform(0, MAX_DELAY_S))
            os.kill(pid, signal.SIGKILL)
            more, reaped = trainer.saves_until("reaped", 30)
            assert reaped[1:] == [str(pid), str(int(signal.SIGKILL))], (why, reaped)
            saved += more
            # Numbers only grow: no version number is ever handed out twice.
            assert not reported or saved[0] > reported[-1], (why, reported[-3:], saved)
            reported += saved

            versions = _check_after_kill(reg, why)
            assert (reg.current() or 0) >= saved[-1], why  # every reported save was promoted
            unpromoted = versions[-1] > (reg.current() or 0)
            landed[_killed_in(_temp_entries(reg) - temp_before, unpromoted)] += 1

        # Leftovers are out of sight, not forgotten: once old enough, the next save sweeps them.
        leftovers = _temp_entries(reg)
        hours_ago = time.time() - 2 * 3600
        for name in leftovers:
            os.utime(reg.path / name, (hours_ago, hours_ago))
        trainer.tell("finish")
        _, done = trainer.saves_until("finished", 60)
        assert trainer.proc.wait(30) == 0
    finally:
        trainer.close()

    last = int(done[1])
    assert _temp_entries(reg) == set()
    versions = _check_after_kill(reg, "after the last save")
    pointer = reg.pointer()
    assert pointer is not None and pointer.current == last == versions[-1]
    # Retention's promise once a promotion completes: the newest KEEP, current, its history.
    assert set(versions) == {*versions[-KEEP:], pointer.current, *pointer.previous}

    loaded = ModelRegistry(reg.path).load(expect=SPEC)
    assert loaded.version == last
    inputs = {
        "window": np.full((3, SPEC.num_steps, SPEC.num_features), 10.0, np.float32),
        "truth": np.full((3, SPEC.num_features), 10.0, np.float32),
    }
    forecast = np.asarray(loaded.model.predict(inputs, verbose=0))
    assert forecast.shape == (3, SPEC.horizon, SPEC.num_features)
    assert np.isfinite(forecast).all()

    inside = KILLS - landed["between saves"]
    print(
        f"\n{KILLS} kills (seed {seed}), {len(reported)} saves reported, {len(leftovers)} "
        f"temporary entries left; kills landed: {dict(landed)}; {inside} inside a save"
    )
    # With kills this close together most land inside a save; if none did, the test
    # would prove nothing.
    assert inside > 0, dict(landed)
