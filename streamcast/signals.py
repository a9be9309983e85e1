"""Stopping the process: SIGTERM/SIGINT handlers that only set flags, and children that
never outlive streamcast.

The first signal asks for a clean stop (the loops see ``stop`` and wind down); a
second one, or a clean stop that overruns its grace period, makes a watcher thread
exit the process at once. Child processes (the embedded broker, the trainer) are
started so that the kernel ends them when their parent goes, whatever way it goes:
a forced exit, SIGKILL, or the OOM killer.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing.connection
import os
import select
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

EXIT_FORCED = 130
EXIT_OVERRUN = 1
_PR_SET_PDEATHSIG = 1
_TICK_S = 0.2
_STOPPING = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Install the handlers for a ``with`` block; the previous ones come back on exit.

    Signals are counted by the watcher thread from a wakeup pipe that the interpreter's
    C-level handler writes to, not by a Python handler: a process-directed signal may
    land on any thread, and then the Python handler waits until the main thread runs
    bytecode again, which a main thread stuck in a blocking call never does. The
    watcher sees every signal at once, whichever thread took it.
    """

    def __init__(self, stop: threading.Event, grace_s: float | None = None) -> None:
        self.stop = stop
        self.grace_s = grace_s
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}
        self._previous_wakeup = -1
        self._pipe: tuple[int, int] | None = None
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="streamcast-signals", daemon=True)

    @staticmethod
    def _handle(signum: int, frame: FrameType | None) -> None:
        """Installed only so the C-level handler writes to the wakeup pipe."""

    def _signals(self, timeout: float) -> list[int]:
        assert self._pipe is not None
        ready, _, _ = select.select([self._pipe[0]], [], [], timeout)
        if not ready:
            return []
        with contextlib.suppress(BlockingIOError, OSError):
            return [n for n in os.read(self._pipe[0], 512) if n in _STOPPING]
        return []

    def _watch(self) -> None:
        """Count the signals; end the process when a stop must not wait."""
        deadline: float | None = None
        while not self._closed.is_set():
            for signum in self._signals(_TICK_S):
                if self.stop.is_set():
                    logger.warning("second signal: exiting now")
                    _exit_now(EXIT_FORCED)
                self.received.append(signum)
                logger.info("signal %s: stopping", signal.Signals(signum).name)
                self.stop.set()
            if self.stop.is_set() and self.grace_s is not None:
                deadline = deadline or time.monotonic() + self.grace_s
                if time.monotonic() > deadline:
                    logger.error("shutdown exceeded %.0fs: exiting", self.grace_s)
                    _exit_now(EXIT_OVERRUN)

    def __enter__(self) -> StopSignals:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        self._pipe = (read, write)
        for sig in _STOPPING:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._watcher.join(timeout=2 * _TICK_S)
        if self._pipe is not None and not self._watcher.is_alive():
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None


def _exit_now(code: int) -> None:
    """Leave without waiting for anything; children go with us (``die_with_parent``)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux).

    Called first thing in a child; if the parent is already gone, the child exits.
    Elsewhere this is a no-op and children are stopped by their owners as usual.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(EXIT_OVERRUN)


def start_and_watch(process: Any, name: str) -> tuple[threading.Thread, threading.Event]:
    """Start a ``multiprocessing`` process from a new thread that then waits for it.

    For processes whose ``start`` may take a while (the child reads its arguments
    from a pipe) and must not hold up the caller. The thread stays until the child
    ends because the kernel's parent-death signal (``die_with_parent``) belongs to
    the *thread* that started the child: a starter thread that ended once the child
    was up would kill it, as soon as the child had set the signal. The event is set
    once ``start`` has returned (or failed).
    """
    started = threading.Event()

    def run() -> None:
        try:
            process.start()
        finally:
            started.set()
        # Wait on the sentinel, not with join(): the owner reaps the child itself.
        multiprocessing.connection.wait([process.sentinel])

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, started


_EXEC_CHILD = (
    "import os, sys; from streamcast.signals import die_with_parent; "
    "die_with_parent(int(sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])"
)


def child_command(argv: list[str]) -> list[str]:
    """``argv`` wrapped so the program it runs ends when this process ends.

    A tiny Python prologue sets the parent-death signal, then replaces itself with
    the program (the setting survives ``execv``); no ``preexec_fn``, which is unsafe
    in a process with threads.
    """
    return [sys.executable, "-c", _EXEC_CHILD, str(os.getpid()), *argv]
