"""Stopping: the first SIGINT/SIGTERM asks for a clean stop, a second one ends the process
at once, and no child (the embedded broker, the trainer) outlives streamcast, however it
ends. Real processes throughout; children are found through /proc (Linux)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from streamcast.signals import EXIT_FORCED, EXIT_OVERRUN
from streamcast.sim.broker import free_port, wait_for_port

from ..waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and prctl"),
]

ROOT = Path(__file__).resolve().parents[2]


# -- processes through /proc ---------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return out


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks), or None once the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[19])


class Proc:
    """One process, told apart from a later one that reuses its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        stat = _stat(pid)
        self.started = stat[1] if stat else -1
        self.cmdline = " ".join(_cmdline(pid))

    def alive(self) -> bool:
        stat = _stat(self.pid)
        # A zombie has ended; only its reaping (by whoever inherited it) is left.
        return stat is not None and stat[1] == self.started and stat[0] != "Z"

    def __repr__(self) -> str:
        return f"{self.pid} ({self.cmdline[:120]})"


def _is_broker(proc: Proc) -> bool:
    return " broker " in f" {proc.cmdline} " and "--listener-url" in proc.cmdline


def _broker_child(pid: int) -> Proc | None:
    return next((p for p in map(Proc, _children(pid)) if _is_broker(p)), None)


def _assert_all_end(procs: list[Proc], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        time.sleep(0.05)
    left = [p for p in procs if p.alive()]
    assert not left, f"orphaned: {left}"


def _streamcast(*args: str, out: IO[bytes], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamcast", *args],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a signal for it reaches it alone, as with `kill PID`
        **kwargs,
    )


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    """Processes a test started (Popen) or found (Proc), killed should it fail half-way."""
    procs: list[Any] = []
    yield procs
    for p in procs:
        if isinstance(p, subprocess.Popen):
            if p.poll() is None:
                p.kill()
            p.wait()
        elif p.alive():
            os.kill(p.pid, signal.SIGKILL)


# -- the demo ------------------------------------------------------------------------------


def _start_demo(tmp_path: Path, cleanup: list[Any]) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = _streamcast("demo", "--duration", "120", "--sensors", "2", "--rate", "20", out=out)
    cleanup.append(proc)
    return proc, log


_VIEW_LINE = re.compile(r"^\[ *\d+\.\ds\] ", re.MULTILINE)  # "[   2.4s] bootstrap ..."


def _wait_demo_running(proc: subprocess.Popen[bytes], log: Path) -> Proc:
    """Its broker child, once the daemon and the live view are running."""
    broker = wait_for(lambda: proc.poll() is None and _broker_child(proc.pid), 60, "the broker")
    wait_for(
        lambda: _VIEW_LINE.search(log.read_text()) or proc.poll() is not None, 60, "the live view"
    )
    assert proc.poll() is None, log.read_text()[-3000:]
    assert broker.alive()
    return broker


def _exit_code(proc: subprocess.Popen[bytes], log: Path, timeout: float = 10) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running:\n{log.read_text()[-3000:]}") from None


def test_two_interrupts_end_the_demo_and_its_broker(tmp_path: Path, cleanup: list[Any]) -> None:
    proc, log = _start_demo(tmp_path, cleanup)
    broker = _wait_demo_running(proc, log)
    family = [Proc(pid) for pid in _descendants(proc.pid)]
    cleanup.extend(family)
    assert broker.pid in {p.pid for p in family}

    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # Ctrl-C, then Ctrl-C again
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    code = _exit_code(proc, log)
    # Forced out (130), or the clean stop was done first (0); a second signal that lands
    # while the interpreter is already tearing down ends it the default way (-SIGINT).
    assert code in (0, EXIT_FORCED, -signal.SIGINT), (code, log.read_text()[-3000:])
    _assert_all_end(family)


def test_forced_exit_mid_stop_leaves_no_orphans(tmp_path: Path, cleanup: list[Any]) -> None:
    """With the broker frozen the clean stop cannot finish: the second signal must end the
    demo at once, skipping every cleanup, and the broker still goes (parent-death signal)."""
    proc, log = _start_demo(tmp_path, cleanup)
    broker = _wait_demo_running(proc, log)
    family = [Proc(pid) for pid in _descendants(proc.pid)]
    cleanup.extend(family)
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # the clean stop is now stuck on the frozen broker
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGINT)
        assert _exit_code(proc, log) == EXIT_FORCED, log.read_text()[-3000:]
    finally:
        if broker.alive():
            os.kill(broker.pid, signal.SIGCONT)  # the pending SIGTERM is delivered now
    assert "second signal: exiting now" in log.read_text()
    _assert_all_end(family)


def test_a_killed_demo_takes_its_broker_and_trainer_along(
    tmp_path: Path, cleanup: list[Any]
) -> None:
    """SIGKILL runs no code in the demo at all: the kernel ends its children."""
    proc, log = _start_demo(tmp_path, cleanup)
    _wait_demo_running(proc, log)

    def trainer() -> Proc | None:
        procs = [Proc(pid) for pid in _descendants(proc.pid)]
        return next((p for p in procs if "spawn_main" in p.cmdline), None)

    # With an empty registry the daemon trains version 1 in a spawned process.
    wait_for(lambda: trainer() or proc.poll() is not None, 90, "the trainer")
    family = [Proc(pid) for pid in _descendants(proc.pid)]
    cleanup.extend(family)
    assert proc.poll() is None, log.read_text()[-3000:]
    assert any(_is_broker(p) for p in family) and trainer() is not None, family

    proc.kill()
    assert _exit_code(proc, log) == -signal.SIGKILL
    _assert_all_end(family)


# -- the broker command --------------------------------------------------------------------


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_broker_command_stops_on_one_interrupt(tmp_path: Path, cleanup: list[Any]) -> None:
    port = free_port()
    log = tmp_path / "broker.log"
    with log.open("wb") as out:
        proc = _streamcast("broker", "--port", str(port), out=out)
    cleanup.append(proc)
    assert wait_for_port("127.0.0.1", port, 20), log.read_text()
    broker = wait_for(lambda: _broker_child(proc.pid), 10, "the broker process")
    cleanup.append(broker)
    assert f"--listener-url tcp://127.0.0.1:{port}" in broker.cmdline

    proc.send_signal(signal.SIGINT)
    assert _exit_code(proc, log, timeout=15) == 0, log.read_text()[-3000:]
    assert f"broker listening on 127.0.0.1:{port}" in log.read_text()
    assert not broker.alive()  # stopped, not left behind: the command waits for it
    assert not _port_open(port)


# -- StopSignals on its own ----------------------------------------------------------------

_STOP_SCRIPT = """
import signal, sys, threading, time
from streamcast.signals import StopSignals

hang, grace = sys.argv[1] == "hang", float(sys.argv[2]) if sys.argv[2] != "-" else None
stop = threading.Event()
with StopSignals(stop, grace_s=grace) as signals:
    print("ready", flush=True)
    stop.wait()
    print("stopping on", signals.received, flush=True)
    if hang:
        time.sleep(60)  # a clean stop that never finishes
print("clean exit; handlers restored:", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
"""


def _spawn(script: str, *args: str, cleanup: list[Any]) -> subprocess.Popen[str]:
    """Run ``script`` in its own session; return once it printed ``ready``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    cleanup.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def _stop_script(hang: bool, grace: float | None, cleanup: list[Any]) -> subprocess.Popen[str]:
    return _spawn(_STOP_SCRIPT, "hang" if hang else "-", str(grace or "-"), cleanup=cleanup)


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"still running after {timeout}s:\n{out}") from None
    return proc.returncode, out


def test_first_signal_only_asks_for_a_clean_stop(cleanup: list[Any]) -> None:
    proc = _stop_script(hang=False, grace=None, cleanup=cleanup)
    proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc, 10)
    assert code == 0, out
    assert f"stopping on [{int(signal.SIGTERM)}]" in out
    assert "clean exit; handlers restored: True" in out


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)],
    ids=["TERM-TERM", "INT-TERM"],
)
def test_second_signal_exits_at_once(
    signals: tuple[signal.Signals, signal.Signals], cleanup: list[Any]
) -> None:
    proc = _stop_script(hang=True, grace=None, cleanup=cleanup)
    assert proc.stdout is not None
    proc.send_signal(signals[0])
    assert proc.stdout.readline().startswith("stopping on")  # the first one was seen
    sent = time.monotonic()
    proc.send_signal(signals[1])
    code, out = _finish(proc, 10)
    assert code == EXIT_FORCED, out
    assert time.monotonic() - sent < 3  # the watcher looks every 0.2 s
    assert "second signal: exiting now" in out
    assert "clean exit" not in out


_OTHER_THREAD_SCRIPT = """
import signal, threading, time
from streamcast.signals import StopSignals

def send_twice():  # process-wide signals may land on any thread; these land on this one
    for _ in range(2):
        time.sleep(0.3)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

with StopSignals(threading.Event()):
    print("ready", flush=True)
    threading.Thread(target=send_twice).start()
    time.sleep(60)  # the main thread is stuck in a blocking call and runs no handler
"""


def test_signals_that_land_on_another_thread_still_stop_at_once(cleanup: list[Any]) -> None:
    proc = _spawn(_OTHER_THREAD_SCRIPT, cleanup=cleanup)
    code, out = _finish(proc, 10)
    assert code == EXIT_FORCED, out


def test_a_clean_stop_that_overruns_its_grace_period_is_cut_short(cleanup: list[Any]) -> None:
    proc = _stop_script(hang=True, grace=1.0, cleanup=cleanup)
    assert proc.stdout is not None
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    code, out = _finish(proc, 10)
    assert code == EXIT_OVERRUN, out
    assert 1.0 <= time.monotonic() - sent < 5
    assert "shutdown exceeded" in out
