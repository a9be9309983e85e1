"""One small HTTP server: ``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness).

Liveness means the main loop is turning: it beats on every iteration, and a loop
stuck in a call that never returns stops beating. Readiness means forecasts can
flow: a model is loaded, partitions are assigned and the broker is reachable. While
not ready for a long time (the first model's history is gathered from the stream, then
trained) ``/readyz`` also says what the daemon waits for, and how far it got.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)


@dataclass
class Health:
    """What the probes report; written by the main loop, read by the HTTP threads."""

    heartbeat_timeout_s: float = 30.0
    model_version: int | None = None
    partitions: int = 0
    broker_reachable: Callable[[], bool] = field(default=lambda: False)
    phase: str = "starting"
    _heartbeat: float = field(default_factory=time.monotonic)
    # (what the daemon waits for, its progress): one attribute, so a reader on an HTTP
    # thread never sees the reason of one update with the progress of another.
    _waiting: tuple[str, dict[str, int]] | None = None

    def beat(self) -> None:
        self._heartbeat = time.monotonic()

    def waiting_for(self, reason: str | None, progress: Mapping[str, int] | None = None) -> None:
        """Say what readiness waits for (None: nothing any more), e.g. ``("gathering
        history for the first model", {"examples": 120, "needed": 200, "sensors": 3})``."""
        self._waiting = None if reason is None else (reason, dict(progress or {}))

    def heartbeat_age_s(self) -> float:
        return time.monotonic() - self._heartbeat

    def liveness(self) -> tuple[int, dict[str, Any]]:
        age = round(self.heartbeat_age_s(), 3)
        if age > self.heartbeat_timeout_s:
            return 503, {"status": "stalled", "heartbeat_age_s": age, "phase": self.phase}
        return 200, {"status": "ok", "heartbeat_age_s": age, "phase": self.phase}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        reasons = []
        if self.model_version is None:
            reasons.append("no_model")
        if self.partitions == 0:
            reasons.append("no_partitions")
        try:
            reachable = self.broker_reachable()
        except Exception:  # a probe must answer, whatever the client's internals do
            reachable = False
        if not reachable:
            reasons.append("broker_unreachable")
        if reasons:
            body: dict[str, Any] = {"status": "not_ready", "reasons": reasons, "phase": self.phase}
            waiting = self._waiting
            if waiting is not None:
                body["waiting_for"] = waiting[0]
                if waiting[1]:
                    body["progress"] = waiting[1]
            return 503, body
        return 200, {
            "status": "ready",
            "model_version": self.model_version,
            "partitions": self.partitions,
        }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json(*self.server.health.liveness())
        elif path == "/readyz":
            self._json(*self.server.health.readiness())
        else:
            self._json(404, {"status": "not_found", "paths": ["/metrics", "/healthz", "/readyz"]})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, orjson.dumps(body), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http %s", format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    health: Health


class HttpServer:
    """Serves the probes and metrics from a background thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.registry = registry
        self._server.health = health
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="streamcast-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HttpServer:
        self._thread.start()
        logger.info("http listening port=%d", self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
