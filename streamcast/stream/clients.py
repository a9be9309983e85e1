"""Kafka clients built one way: the shared options, one start-up deadline, and one
error for an unreachable broker.

Start-up talks to the broker several times (the producer's and the consumer's
bootstrap, the topic checks, the input topic's metadata). ``kafka.startup_timeout_s``
bounds all of it together, not each step: ``startup_deadline`` opens one
``Deadline`` and every client built inside it gets only the time that is left.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from kafka.errors import KafkaError
from kafka.net.compat import KafkaNetClient

from streamcast.config import KafkaSettings
from streamcast.errors import StartupError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Deadline:
    """A point in time (monotonic clock) that start-up must not pass."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - time.monotonic())

    def remaining_ms(self, floor_ms: int = 1) -> int:
        return max(floor_ms, int(self.remaining() * 1000))

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at


_current: ContextVar[Deadline | None] = ContextVar("streamcast_startup_deadline", default=None)


@contextlib.contextmanager
def startup_deadline(seconds: float) -> Iterator[Deadline]:
    """One deadline for every client built (``connect``) inside the block."""
    deadline = Deadline(seconds)
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)


def current_deadline(kafka: KafkaSettings) -> Deadline:
    """The open start-up deadline, or a fresh one of ``kafka.startup_timeout_s``."""
    return _current.get() or Deadline(kafka.startup_timeout_s)


def out_of_time(kafka: KafkaSettings, step: str) -> StartupError:
    return StartupError(
        f"start-up did not finish within kafka.startup_timeout_s={kafka.startup_timeout_s:g}s "
        f"(broker {kafka.bootstrap_servers}; ran out of time {step})"
    )


def connect(
    client_class: Any, kafka: KafkaSettings, *, deadline: Deadline | None = None, **options: Any
) -> Any:
    """A kafka-python client with the settings' connection and security options.

    Its bootstrap may take what is left of ``deadline`` (default: the open start-up
    deadline); a broker that does not answer by then is a StartupError.
    """
    deadline = deadline or current_deadline(kafka)
    if deadline.expired:
        raise out_of_time(kafka, f"before connecting a {client_class.__name__}")
    made: list[Any] = []

    def network_client(*args: Any, **kw: Any) -> Any:  # kafka-python's documented hook
        client = KafkaNetClient(*args, **kw)
        made.append(client)
        return client

    with kafka_chatter_at_debug() as chatter:
        chatter.last_error = None
        try:
            return client_class(
                **kafka.client_options(),
                bootstrap_timeout_ms=deadline.remaining_ms(),
                kafka_client=network_client,
                **options,
            )
        except Exception as exc:
            # The constructor failed after starting its network client (an IO thread,
            # sockets) and nothing else can reach it any more: stop it here.
            for client in made:
                _stop_network_client(client)
            if not isinstance(exc, KafkaError):
                raise
            error = StartupError.broker_unreachable(
                kafka.bootstrap_servers, kafka.startup_timeout_s, exc
            )
            if chatter.last_error:
                error = StartupError(f"{error}; last error: {chatter.last_error}")
            raise error from exc


def _stop_network_client(client: Any) -> None:
    with contextlib.suppress(Exception):
        client._net.stop(timeout_ms=2000)
    with contextlib.suppress(Exception):
        client.close()


class KafkaChatter(logging.Filter):
    """kafka-python logs every refused connection attempt and every dropped connection
    at ERROR or WARNING, from its IO threads. While start-up runs, those lines go to
    DEBUG instead: start-up ends in one line that says why it failed (with the last
    error kept here: a refused port, a TLS handshake, a timeout), not in a flood."""

    def __init__(self) -> None:
        super().__init__()
        self.last_error: str | None = None
        self.loggers: list[logging.Logger] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if record.levelno >= logging.ERROR and not message.startswith("Bootstrap failed"):
            self.last_error = re.sub(r"^<[^>]*>: ", "", message)  # drop the connection's repr
        logger.debug("kafka-python %s %s: %s", record.levelname.lower(), record.name, message)
        return False


_chatter_lock = threading.Lock()
_chatter: KafkaChatter | None = None
_chatter_users = 0


@contextlib.contextmanager
def kafka_chatter_at_debug() -> Iterator[KafkaChatter]:
    """Demote kafka-python's warnings and errors to DEBUG inside the block (re-entrant)."""
    global _chatter, _chatter_users
    with _chatter_lock:
        if _chatter is None:
            _chatter = KafkaChatter()
            manager = logging.Logger.manager
            _chatter.loggers = [logging.getLogger("kafka")] + [
                item
                for name, item in list(manager.loggerDict.items())
                if name.startswith("kafka.") and isinstance(item, logging.Logger)
            ]
            for log in _chatter.loggers:
                log.addFilter(_chatter)
        chatter = _chatter
        _chatter_users += 1
    try:
        yield chatter
    finally:
        with _chatter_lock:
            _chatter_users -= 1
            if _chatter_users == 0 and _chatter is not None:
                for log in _chatter.loggers:
                    log.removeFilter(_chatter)
                _chatter = None


def bounded(call: Callable[[], T], timeout_s: float, what: str) -> T:
    """``call()`` on a helper thread, given up after ``timeout_s`` (TimeoutError).

    For the few kafka-python calls that wait for the broker without a timeout of
    their own (e.g. ``KafkaConsumer.topics()``). They only block on the client's IO
    thread, which is safe from any thread; one given up on ends when the client
    is closed.
    """
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, call()))
        except BaseException as exc:  # handed to the caller below
            box.append((False, exc))

    worker = threading.Thread(target=run, name=f"streamcast-{what}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not box:
        raise TimeoutError(f"{what} did not answer within {timeout_s:.1f}s")
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def close_producer(close: Callable[[], None], producer: Any) -> None:
    """Run ``close`` (which closes ``producer``), and finish the job if it gives up.

    kafka-python 3.0's ``KafkaProducer.close`` flushes first and raises when records
    are still unacknowledged at its timeout (the broker is away), leaving the sender
    thread running and the producer open, so its ``__del__`` tries again and prints a
    traceback at exit. Those records were never acknowledged, so their offsets were
    never committed: a restart redoes them. Here the failure is one warning and the
    sender is stopped.
    """
    try:
        close()
    except KafkaError as exc:
        logger.warning("producer closed with records unacknowledged (not committed): %s", exc)
        sender = getattr(producer, "_sender", None)
        if sender is not None and sender.is_alive():
            sender.force_close()
        if hasattr(producer, "_closed"):
            producer._closed = True
