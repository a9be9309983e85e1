"""sd_notify over a real datagram socket; JSON and text log lines."""

from __future__ import annotations

import io
import logging
import os
import socket
from pathlib import Path

import orjson

from streamcast.ops.logs import JsonFormatter, TextFormatter
from streamcast.ops.notify import Notifier


def _socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock, path


def test_ready_watchdog_and_stopping_reach_the_notify_socket(tmp_path: Path) -> None:
    sock, path = _socket(tmp_path)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier(env)
    assert n.enabled
    assert n.watchdog_interval_s == 1.0  # half of WatchdogSec
    n.ready("forecasting with model version 1")
    assert sock.recv(512) == b"READY=1\nSTATUS=forecasting with model version 1"
    n.watchdog()
    assert sock.recv(512) == b"WATCHDOG=1"
    n.watchdog()  # within half the interval: no second ping
    n.stopping()
    assert sock.recv(512) == b"STOPPING=1"
    n.close()
    sock.close()


def test_watchdog_for_another_process_and_no_socket_are_no_ops(tmp_path: Path) -> None:
    n = Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert not n.enabled
    assert n.watchdog_interval_s is None
    assert n.send("READY=1") is False


def _record(msg: str, *args: object, ctx: dict[str, object] | None = None) -> logging.LogRecord:
    record = logging.LogRecord(
        "streamcast.stream.daemon", logging.ERROR, __file__, 1, msg, args, None
    )
    if ctx is not None:
        record.ctx = ctx
    return record


def test_json_log_lines_carry_their_context() -> None:
    line = JsonFormatter().format(
        _record("delivery failed: %s", "timeout", ctx={"topic": "t", "partition": 2, "offset": 7})
    )
    doc = orjson.loads(line)
    assert doc["level"] == "error"
    assert doc["msg"] == "delivery failed: timeout"
    assert (doc["topic"], doc["partition"], doc["offset"]) == ("t", 2, 7)


def test_text_log_lines_append_context_as_key_value() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.emit(_record("model rejected", ctx={"model_version": 3}))
    assert stream.getvalue().rstrip().endswith("model rejected model_version=3")


def test_a_receiver_that_does_not_read_never_blocks_the_sender(tmp_path: Path) -> None:
    sock, path = _socket(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path})
    sent = [n.send(f"STATUS={i}") for i in range(500)]  # far past the datagram queue
    assert sent[0] is True
    assert sent[-1] is False  # dropped, not waited for
    n.close()
    sock.close()
