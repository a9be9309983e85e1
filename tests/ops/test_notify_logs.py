"""sd_notify over a real datagram socket; JSON and text log lines."""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamcast.ops.logs import JsonFormatter, TextFormatter
from streamcast.ops.notify import Notifier


def _socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock, path


def _assignments(datagram: bytes) -> dict[str, str]:
    """An sd_notify datagram: newline-separated KEY=VALUE assignments, in any order."""
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_ready_watchdog_and_stopping_reach_the_notify_socket(tmp_path: Path) -> None:
    sock, path = _socket(tmp_path)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier(env)
    assert n.enabled
    assert n.watchdog_interval_s == 1.0  # half of WatchdogSec
    n.ready("forecasting with model version 1")
    assert _assignments(sock.recv(512)) == {
        "READY": "1",
        "STATUS": "forecasting with model version 1",
    }
    n.watchdog()
    assert _assignments(sock.recv(512)) == {"WATCHDOG": "1"}
    n.watchdog()  # within half the interval: no second ping ...
    n.stopping()
    assert _assignments(sock.recv(512)) == {"STOPPING": "1"}  # ... so this comes next
    n.close()
    sock.close()


def test_watchdog_for_another_process_and_no_socket_are_no_ops(tmp_path: Path) -> None:
    n = Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert not n.enabled
    assert n.watchdog_interval_s is None
    assert n.send("READY=1") is False


def _record(msg: str, *args: object, ctx: object = None, exc_info: Any = None) -> logging.LogRecord:
    record = logging.LogRecord(
        "streamcast.stream.daemon", logging.ERROR, __file__, 1, msg, args, exc_info
    )
    if ctx is not None:
        record.ctx = ctx
    return record


CTX = {"topic": "readings", "partition": 2, "offset": 7, "model_version": None}


def test_json_log_lines_carry_their_context_as_fields() -> None:
    record = _record("delivery failed: %s", "timeout", ctx=CTX)
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one record, one line
    doc = orjson.loads(line)
    assert doc["level"] == "error"
    assert doc["logger"] == "streamcast.stream.daemon"
    assert doc["msg"] == record.getMessage()
    assert doc["ts"] == pytest.approx(record.created, abs=1e-3)
    assert {key: doc[key] for key in CTX} == CTX  # fields, with their JSON types


def test_json_log_lines_stay_json_with_odd_context_and_a_traceback() -> None:
    try:
        raise ValueError("bad offset")
    except ValueError:
        exc_info = sys.exc_info()
    ctx = {"path": Path("/var/lib/streamcast"), "partitions": {1}}
    doc = orjson.loads(JsonFormatter().format(_record("failed", ctx=ctx, exc_info=exc_info)))
    assert doc["path"] == "/var/lib/streamcast"
    assert doc["partitions"] == "{1}"  # not JSON-native: written as its str()
    assert "ValueError: bad offset" in doc["exc"]
    # A ctx that is not a mapping is ignored rather than breaking the line.
    doc = orjson.loads(JsonFormatter().format(_record("plain", ctx=["not", "a", "dict"])))
    assert set(doc) == {"ts", "level", "logger", "msg"}


def _text_line(record: logging.LogRecord) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.emit(record)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_text_log_lines_name_level_logger_and_each_context_pair() -> None:
    line = _text_line(_record("model rejected: %s", "checksum", ctx=CTX))
    head, _, tail = line.partition(": ")
    assert head.split()[-2:] == ["ERROR", "streamcast.stream.daemon"]
    assert tail.startswith("model rejected: checksum")
    pairs = tail.removeprefix("model rejected: checksum").split()
    assert sorted(pairs) == sorted(f"{key}={value}" for key, value in CTX.items())


def test_text_log_lines_without_context_end_with_the_message() -> None:
    for ctx in (None, {}):
        line = _text_line(_record("consumer group joined", ctx=ctx))
        assert line.partition(": ")[2] == "consumer group joined"


def test_a_receiver_that_does_not_read_never_blocks_the_sender(tmp_path: Path) -> None:
    sock, path = _socket(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path})
    sent = [n.send(f"STATUS={i}") for i in range(500)]  # far past the datagram queue
    assert sent[0] is True
    assert sent[-1] is False  # dropped, not waited for
    n.close()
    sock.close()
