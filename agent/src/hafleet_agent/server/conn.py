"""The API's listener: the connection cap, TLS, and :func:`serve` (an app on an address).

An idle keep-alive connection is closed after KEEPALIVE_S (:mod:`.http`), and at most
:func:`connection_limit` are open at once (a connection over the cap is answered 503 and
closed at once), so that idle clients cannot take every file descriptor of the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable

from ..throttle import WarnThrottle
from .http import HttpServer, Malformed
from .web import Application

log = logging.getLogger("hafleet.api")

#: An idle keep-alive connection is closed after this long (aiohttp's default was an hour).
KEEPALIVE_S = 30.0
#: At shutdown, a request under way has this long to finish before its handler is cancelled.
SHUTDOWN_TIMEOUT_S = 5.0
#: At most this many API connections at once, and at most a quarter of the process's file
#: descriptor limit (RLIMIT_NOFILE): the rest is for the Raft transport, storage, mDNS.
MAX_CONNECTIONS = 1024
LISTEN_BACKLOG = 128
#: With HTTPS: a connection that has not finished its TLS handshake after this long is closed.
TLS_HANDSHAKE_S = 10.0


def connection_limit(nofile: int | None = None) -> int:
    """MAX_CONNECTIONS, but at most a quarter of the file descriptor limit (and at least 8)."""
    if nofile is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = soft if soft != resource.RLIM_INFINITY else MAX_CONNECTIONS * 4
    return max(8, min(MAX_CONNECTIONS, nofile // 4))


REFUSAL_BODY = b'{"error": "too many connections to this agent"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(REFUSAL_BODY), REFUSAL_BODY)
)


class ConnectionCap:
    """Counts the API's open connections. The listener below accepts one connection at a
    time: within ``limit`` it becomes an HTTP connection (which gives the slot back when it
    ends); over it, the socket is answered 503 and closed before the next accept, so at most
    ``limit`` + 1 descriptors are ever in use."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0
        self._last_warning = 0.0

    def full(self) -> bool:
        return self.open >= self.limit

    def refuse(self, conn: socket.socket) -> None:
        self.refused += 1
        with contextlib.suppress(OSError):
            conn.send(_REFUSAL)  # non-blocking: a fresh socket's buffer takes it whole
        conn.close()
        self.warn(f"{self.open} connections open, the cap: refusing new ones")

    def warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning("API: %s (%d refused so far)", what, self.refused)

    def release(self) -> None:
        self.open -= 1


_PLAIN_HTTP_BODY = b'{"error": "plain HTTP sent to the HTTPS port of this agent: use https://"}'
_PLAIN_HTTP = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)
)


async def _first_byte(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The first byte the client sent, left in the socket for the TLS handshake (b"" if the
    client closed without a byte)."""
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    try:
        return conn.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return b"\x16"  # nothing after all: the handshake waits for it
    except OSError:
        return b""


def _answer_plain_http(conn: socket.socket) -> None:
    """Answer a plain HTTP request sent to the HTTPS port with a 400 that says so (what Go's
    servers do) instead of a failed handshake the client reports as a reset or an empty
    reply, then close: what the client sent is read first, so that the close is no reset
    that could reach it before the answer."""
    with contextlib.suppress(OSError):
        for _ in range(16):  # at most 16 reads of what is there already
            if len(conn.recv(65536)) < 65536:
                break
        conn.send(_PLAIN_HTTP)  # non-blocking: a fresh socket's buffer takes it whole
        conn.shutdown(socket.SHUT_WR)
    conn.close()


def _peer_host(conn: socket.socket) -> str:
    try:
        return str(conn.getpeername()[0])
    except (OSError, IndexError, TypeError):
        return "?"


class Runner:
    """An app served on one address: the accept loop through a :class:`ConnectionCap`
    (asyncio's own server accepts as fast as connections come, up to the backlog at a time,
    whatever the descriptors left), TLS when given a context, the connections
    (:class:`.http.HttpServer`). ``await cleanup()`` stops it all and runs the app's
    ``on_cleanup`` hooks."""

    def __init__(
        self,
        app: Application,
        sock: socket.socket,
        limit: int,
        ssl_context: ssl.SSLContext | None,
        malformed: Malformed | None,
        keepalive_s: float,
    ) -> None:
        self.app = app
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.cap = ConnectionCap(limit)
        self.http = HttpServer(app, keepalive_s=keepalive_s, malformed=malformed)
        self.ssl_context = ssl_context
        # A failed TLS handshake (plain HTTP to the HTTPS port, an old client): one line per
        # source address per 10 s.
        self._tls_throttle = WarnThrottle(log, 10.0)
        self._serving: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.create_task(self._accept(), name="hafleet-api-accept")

    async def _accept(self) -> None:
        loop, sock, cap = asyncio.get_running_loop(), self.sock, self.cap
        while sock.fileno() != -1:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS...: descriptors short for now
                if sock.fileno() == -1:
                    return
                cap.warn(f"accept failed: {exc.strerror or exc}")
                await asyncio.sleep(0.1)
                continue
            if cap.full():
                cap.refuse(conn)
                continue
            cap.open += 1  # taken now: the connection's task may start after more accepts
            with contextlib.suppress(OSError):
                # asyncio sets TCP_NODELAY only when the socket's proto is IPPROTO_TCP, and
                # create_server's (so accept's) is 0: without it, Nagle holds an answer
                # back while the client delays its ACK of the one before
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._serve(loop, conn))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    def _releaser(self) -> Callable[[], None]:
        """Gives the connection's slot back, once."""
        done = []

        def release() -> None:
            if not done:
                done.append(True)
                self.cap.release()

        return release

    async def _serve(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        release = self._releaser()
        source = _peer_host(conn)
        try:
            handshake_s: float | None = None
            if self.ssl_context is not None:
                started = loop.time()
                first = await asyncio.wait_for(_first_byte(loop, conn), TLS_HANDSHAKE_S)
                if not first:  # closed without a byte (a port probe)
                    release()
                    conn.close()
                    return
                if first.isupper():  # "GET ", "PUT "...: a TLS record starts with 0x16
                    release()
                    _answer_plain_http(conn)
                    self._tls_throttle.warn(
                        source,
                        "refusing an API connection from %s: plain HTTP to the HTTPS port "
                        "(answered 400: use https://)",
                        source,
                        kind="plain-http",
                    )
                    return
                handshake_s = max(TLS_HANDSHAKE_S - (loop.time() - started), 0.1)
            await loop.connect_accepted_socket(
                lambda: self.http.protocol(release),
                conn,
                ssl=self.ssl_context,
                ssl_handshake_timeout=handshake_s,
            )
        except Exception as exc:  # e.g. a failed TLS handshake: the slot is free again
            release()
            conn.close()
            if isinstance(exc, ssl.SSLError | TimeoutError) and self.ssl_context is not None:
                why = exc.reason if isinstance(exc, ssl.SSLError) else None
                self._tls_throttle.warn(
                    source,
                    "refusing an API connection from %s: TLS handshake failed (%s)",
                    source,
                    str(why or type(exc).__name__).replace("_", " ").lower()
                    + (": plain HTTP to the HTTPS port?" if why == "HTTP_REQUEST" else ""),
                    kind=type(exc).__name__,
                )
            else:
                log.debug("API connection dropped before it started: %r", exc)

    async def cleanup(self, shutdown_timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Stop accepting, close the connections (a request under way has
        ``shutdown_timeout`` to finish), run the app's cleanup hooks."""
        self._accepting.cancel()
        self.sock.close()
        for task in list(self._serving):
            task.cancel()
        await self.http.shutdown(shutdown_timeout)
        await self.app.cleanup()


async def serve(
    app: Application,
    host: str,
    port: int,
    *,
    limit: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    malformed: Malformed | None = None,
    keepalive_s: float = KEEPALIVE_S,
) -> Runner:
    """Serve ``app`` on ``host:port`` (port 0: any; ``Runner.port`` says which) with at most
    ``limit`` connections (:func:`connection_limit` by default)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    sock.setblocking(False)
    for hook in app.on_startup:
        await hook(app)
    return Runner(
        app,
        sock,
        connection_limit() if limit is None else limit,
        ssl_context,
        malformed,
        keepalive_s,
    )
