"""The TLS listener of `serve`: accepting, capping, timing out and closing connections.

aiohttp's TCPSite hands the socket to the event loop, which accepts without limit and gives
no TLS handshake deadline, so slow or idle clients could hold every file descriptor. Here
the accept loop is ours:

- at most `max_connections` are open (TLS handshakes included); at the cap we stop accepting,
  log it once, and new clients wait in the kernel's listen backlog instead of being reset;
- a TLS handshake gets `handshake_timeout`; a connection gets `idle_timeout` to finish the
  headers of its next request (from its start or from the last answer), else it is closed
  (aiohttp's keepalive timer); the request body has its own deadline in webhook.server;
- after an answer that leaves part of a body unread (413, 415, a timeout) the connection is
  closed at once (lingering_time=0) instead of reading and discarding the rest;
- malformed HTTP is one warning line, at most one per `LOG_INTERVAL`, never a traceback;
- `stop_accepting` accepts what already waits in the backlog before closing the socket (a
  closed listener resets queued connections), and `drain` closes keep-alive connections
  once they have been idle for `IDLE_GRACE`, while busy ones close themselves after their
  answer (webhook.server adds `Connection: close` while draining).

With `reuse_port`, SO_REUSEPORT lets several `serve` processes share one port: the kernel
spreads new connections across them, which is both the multi-core story (one process per
core) and the rolling-restart story (one process drains while the others accept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import ssl
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from webhook.settings import Limits

log = logging.getLogger(__name__)

# A keep-alive connection idle this long after SIGTERM is closed; one that is busier sends
# its next request sooner and gets `Connection: close` with the answer instead.
IDLE_GRACE = 1.0
LOG_INTERVAL = 10.0  # seconds between two lines about malformed HTTP or the cap
# File descriptors kept free for what is not a client: certificate re-reads, the cluster
# cache's watches, logging, DNS.
RESERVED_FDS = 64


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (it is often 1,024 of 1 M); the new
    soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(wanted: int, fd_limit: int) -> int:
    """`wanted`, or fewer when the descriptors left after RESERVED_FDS are fewer."""
    return max(1, min(wanted, fd_limit - RESERVED_FDS))


class _RateLimited:
    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self._interval, self._next, self.suppressed = interval, 0.0, 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self._interval
        return True


class Connection(RequestHandler):
    """aiohttp's connection handler, telling the listener when it is gone and logging
    malformed HTTP as one rate-limited line."""

    def __init__(self, listener: Listener, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, loop=asyncio.get_running_loop(), **kwargs)
        self._listener = listener
        self._last_activity = time.monotonic()
        self.started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.started = True  # the TLS handshake is done; from here connection_lost follows
        super().connection_made(transport)
        self._listener.connected(self)

    def data_received(self, data: bytes) -> None:
        self._last_activity = time.monotonic()
        super().data_received(data)

    async def finish_response(self, request: Any, resp: Any,
                              start_time: float | None) -> tuple[Any, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:  # idle time counts from the answer, not from the request
            self._last_activity = time.monotonic()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._listener.released(self)

    def idle_for(self, now: float) -> float:
        """Seconds without a byte or an answer while waiting for a request; 0 when busy."""
        waiting = self._waiter is not None and not self._waiter.done() and not self._messages
        return now - self._last_activity if waiting else 0.0

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if not isinstance(error, HttpProcessingError):
            super().log_exception(*args, **kwargs)
            return
        limiter = self._listener.malformed_log
        if limiter.ready():
            more, limiter.suppressed = limiter.suppressed, 0
            peer = args[1] if len(args) > 1 else "?"
            log.warning("malformed HTTP request from %s: %s", peer,
                        " ".join(str(error.message).split())[:200],
                        extra={"status": error.code, "suppressed_since_last": more})


class Listener:
    """Accepts TLS connections for an AppRunner (already set up) within `Limits`."""

    def __init__(self, runner: web.AppRunner, ssl_context: ssl.SSLContext, limits: Limits,
                 *, reuse_port: bool = False) -> None:
        assert runner.server is not None, "runner.setup() first"
        self._server = runner.server
        self._ssl = ssl_context
        self._limits = limits
        self._reuse_port = reuse_port
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._connections: set[Connection] = set()
        self._open = 0  # accepted sockets not yet closed: handshaking or connected
        self._slot_free = asyncio.Event()
        self._gone = asyncio.Event()
        self._cap_log = _RateLimited()
        self.malformed_log = _RateLimited()

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    @property
    def open_connections(self) -> int:
        return self._open

    def bind(self, host: str, port: int) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(self._limits.backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def start(self) -> None:
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            while self._open >= self._limits.max_connections:
                if self._cap_log.ready():
                    log.warning("connection cap reached: %d connections open, new ones wait "
                                "in the listen backlog", self._open,
                                extra={"max_connections": self._limits.max_connections})
                self._slot_free.clear()
                await self._slot_free.wait()
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as err:  # EMFILE and friends: back off instead of spinning
                log.warning("accept failed: %s", err.strerror or err)
                await asyncio.sleep(0.1)
                continue
            self._take(conn)

    def _take(self, conn: socket.socket) -> None:
        self._open += 1
        self._gone.clear()
        task = asyncio.get_running_loop().create_task(self._handshake(conn))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        made: list[Connection] = []

        def connection() -> Connection:
            made.append(Connection(self, self._server, keepalive_timeout=self._limits.idle_timeout,
                                   lingering_time=0, access_log=None))
            return made[-1]

        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                connection, conn, ssl=self._ssl,
                ssl_handshake_timeout=self._limits.handshake_timeout)
        except Exception as err:  # a failed or slow handshake is the client's problem
            log.debug("TLS handshake failed: %s", err)
            conn.close()
            if not any(c.started for c in made):  # else connection_lost releases the slot
                self._release_slot()

    def connected(self, connection: Connection) -> None:
        self._connections.add(connection)

    def released(self, connection: Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self._release_slot()

    def _release_slot(self) -> None:
        self._open -= 1
        self._slot_free.set()
        if not self._open:
            self._gone.set()

    async def stop_accepting(self) -> None:
        """Stop the accept loop, take what waits in the backlog, close the socket."""
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        if self._sock is None:
            return
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # BlockingIOError: the backlog is empty
                break
            conn.setblocking(False)
            self._take(conn)
        self._sock.close()

    async def drain(self, timeout: float) -> bool:
        """Close idle keep-alive connections, let the others finish; True when none is left
        within `timeout`."""
        deadline = time.monotonic() + timeout
        while self._open and time.monotonic() < deadline:
            now = time.monotonic()
            for connection in list(self._connections):
                if connection.idle_for(now) >= IDLE_GRACE:
                    connection.force_close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone.wait(), min(0.1, deadline - now))
        return not self._open

    def close_all(self) -> None:
        for task in self._handshakes:
            task.cancel()
        for connection in list(self._connections):
            connection.force_close()
