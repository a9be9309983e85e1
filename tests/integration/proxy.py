"""A small threaded TCP proxy in front of the broker, for injecting network faults.

Start a broker advertised at the proxy's address (``EmbeddedBroker(advertise=...)``)
and every client talks to the broker through the proxy after its bootstrap. Then:

- ``cut()`` closes every live connection and refuses (accepts, then closes) or
  blackholes (accepts, then never answers) new ones until ``restore()``; in
  ``freeze`` mode live connections stay open but nothing passes either way any more
  (a partition: requests time out, nobody hangs up);
- ``cut(clients="streamcast")`` does that only to connections whose Kafka client id
  starts with the prefix (read from the first request's header), so a test's own
  producer still reaches the broker while the daemon cannot;
- ``cut_on(api_key)`` arms a cut that fires the moment a matching client sends a
  request with that API key (0 = Produce), dropping the request: the broker never
  sees it and the client never gets its answer.

Only the client→broker direction is framed (4-byte size, then the request); the
broker→client direction is piped as raw bytes.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["refuse", "blackhole", "freeze"]

PRODUCE = 0
_MAX_FRAME = 200 * 1024 * 1024


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return bytes(buf)


def _read_frame(sock: socket.socket) -> bytes:
    """One Kafka request, size prefix included."""
    head = _recv_exact(sock, 4)
    (size,) = struct.unpack(">i", head)
    if not 0 <= size <= _MAX_FRAME:
        raise ConnectionError(f"not a Kafka request frame (size {size})")
    return head + _recv_exact(sock, size)


def _api_key(frame: bytes) -> int:
    return int(struct.unpack_from(">h", frame, 4)[0]) if len(frame) >= 6 else -1


def _client_id(frame: bytes) -> str:
    """The request header's client id (v1+: after api_key, api_version, correlation_id)."""
    if len(frame) < 14:
        return ""
    (length,) = struct.unpack_from(">h", frame, 12)
    if length < 0:
        return ""
    return frame[14 : 14 + length].decode("utf-8", "replace")


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    client_id: str
    upstream: socket.socket | None = None
    closed: bool = False
    frozen: bool = False  # open, but every byte either way is dropped
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@dataclass
class _Cut:
    clients: str  # client-id prefix; "" matches every client
    mode: Mode

    def matches(self, client_id: str) -> bool:
        return client_id.startswith(self.clients)


class TcpProxy:
    """Accepts on ``host:port`` (a free port by default) and pipes to ``target``."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._cut: _Cut | None = None
        self._armed: tuple[int, _Cut] | None = None
        self._closing = threading.Event()
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        #: Set whenever a cut takes effect (by ``cut`` or by an armed trigger).
        self.cut_event = threading.Event()
        self.accepted = 0
        #: Kafka client id of every connection, in order of arrival.
        self.client_ids: list[str] = []
        self.refused = 0
        self.dropped_requests = 0
        #: (api key, seconds): requests with that key wait this long before they go on.
        self.delay: tuple[int, float] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._cut is not None

    def start(self) -> TcpProxy:
        self._accept_thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._accept_thread.join(5)
        self._listener.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            conn.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults ----------------------------------------------------------------------------

    def cut(self, clients: str = "", mode: Mode = "refuse") -> None:
        """Close (freeze) live connections of matching clients; refuse or blackhole new ones."""
        cut = _Cut(clients, mode)
        with self._lock:
            self._cut = cut
            self._armed = None
            victims = [c for c in self._conns if cut.matches(c.client_id)]
        for conn in victims:
            if mode == "freeze":
                conn.frozen = True
            else:
                conn.close()
        self.cut_event.set()

    def cut_on(self, api_key: int, clients: str = "", mode: Mode = "refuse") -> None:
        """Cut (as ``cut``) when a matching client sends a request with ``api_key``."""
        with self._lock:
            self._armed = (api_key, _Cut(clients, mode))
        self.cut_event.clear()

    def restore(self) -> None:
        """Let connections through again. Blackholed and frozen ones are closed (bytes
        were dropped, so their streams are broken): the clients reconnect."""
        with self._lock:
            self._cut = None
            self._armed = None
            held = [c for c in self._conns if c.upstream is None or c.frozen]
        for conn in held:
            conn.close()
        self.cut_event.clear()

    def live_connections(self, clients: str = "") -> int:
        with self._lock:
            return sum(
                1
                for c in self._conns
                if c.upstream is not None and not c.closed and c.client_id.startswith(clients)
            )

    # -- plumbing --------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            self.accepted += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            first = _read_frame(client)
        except OSError:
            client.close()
            return
        conn = _Conn(client, _client_id(first))
        self.client_ids.append(conn.client_id)
        with self._lock:
            cut = self._cut
            refuse = cut is not None and cut.matches(conn.client_id)
            if not refuse:
                self._conns.add(conn)
        if refuse:
            assert cut is not None
            self.refused += 1
            if cut.mode == "refuse":
                conn.close()
            else:  # blackhole or freeze: a new connection gets no answer
                self._blackhole(conn)
            return
        try:
            conn.upstream = socket.create_connection(self.target, timeout=5)
            conn.upstream.settimeout(None)
        except OSError:
            self._drop(conn)
            return
        threading.Thread(target=self._pipe_back, args=(conn,), daemon=True).start()
        frame: bytes | None = first
        try:
            while frame is not None:
                if self._triggered(conn, frame):  # dropped; the cut closed or froze us
                    if conn.closed:
                        return
                elif not conn.frozen:
                    delay = self.delay
                    if delay is not None and _api_key(frame) == delay[0]:
                        time.sleep(delay[1])  # a broker slow to take this kind of request
                    conn.upstream.sendall(frame)
                frame = _read_frame(client)
        except OSError:
            pass
        finally:
            self._drop(conn)

    def _triggered(self, conn: _Conn, frame: bytes) -> bool:
        with self._lock:
            armed = self._armed
        if armed is None or _api_key(frame) != armed[0] or not armed[1].matches(conn.client_id):
            return False
        self.dropped_requests += 1
        self.cut(armed[1].clients, armed[1].mode)
        return True

    def _blackhole(self, conn: _Conn) -> None:
        """Hold the connection, read and discard what comes, answer nothing."""
        with self._lock:
            self._conns.add(conn)
        try:
            while conn.client.recv(65536):
                pass
        except OSError:
            pass
        finally:
            self._drop(conn)

    def _pipe_back(self, conn: _Conn) -> None:
        assert conn.upstream is not None
        try:
            while chunk := conn.upstream.recv(65536):
                if not conn.frozen:
                    conn.client.sendall(chunk)
        except OSError:
            pass
        finally:
            self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        conn.close()
        with self._lock:
            self._conns.discard(conn)
