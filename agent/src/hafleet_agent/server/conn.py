"""The API's listener: the connection cap, keep-alive and requests aiohttp's parser refuses.

An idle keep-alive connection is closed after KEEPALIVE_S, and at most
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
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..throttle import WarnThrottle

log = logging.getLogger("hafleet.api")

#: An idle keep-alive connection is closed after this long (aiohttp's default is an hour).
KEEPALIVE_S = 30.0
#: At most this many API connections at once, and at most a quarter of the process's file
#: descriptor limit (RLIMIT_NOFILE): the rest is for the Raft transport, storage, mDNS.
MAX_CONNECTIONS = 1024
LISTEN_BACKLOG = 128
#: With HTTPS: a connection that has not finished its TLS handshake after this long is closed.
TLS_HANDSHAKE_S = 10.0

#: The answer to a request aiohttp's parser refused: (request, status, what the parser said).
Malformed = Callable[[web.BaseRequest, int, HttpProcessingError], web.StreamResponse]


def connection_limit(nofile: int | None = None) -> int:
    """MAX_CONNECTIONS, but at most a quarter of the file descriptor limit (and at least 8)."""
    if nofile is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = soft if soft != resource.RLIM_INFINITY else MAX_CONNECTIONS * 4
    return max(8, min(MAX_CONNECTIONS, nofile // 4))


_REFUSAL_BODY = b'{"error": "too many connections to this agent"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class ConnectionCap:
    """Counts the API's open connections. The site below accepts one connection at a time:
    within ``limit`` it becomes an aiohttp connection (wrapped in :class:`_Counted`, which
    gives the slot back when the connection ends); over it, the socket is answered 503 and
    closed before the next accept, so at most ``limit`` + 1 descriptors are ever in use."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int) -> None:
        self.factory = factory
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

    def protocol(self) -> _Counted:
        """The protocol of a connection whose slot the accept loop took (``open += 1``)."""
        return _Counted(self.factory(), self)


class _Counted(asyncio.Protocol):
    """Passes everything to aiohttp's protocol; gives the slot back when the connection
    ends (or never started)."""

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap) -> None:
        self.inner = inner
        self.cap: ConnectionCap | None = cap

    def release(self) -> None:
        if self.cap is not None:
            self.cap.open -= 1
            self.cap = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class RequestHandler(web.RequestHandler):
    """aiohttp's connection protocol with one change: a request its parser refuses is
    answered by ``malformed`` (``Api.malformed``: a JSON 400, one throttled line per
    source) instead of a text/plain 400 and an ERROR with a traceback on ``aiohttp.server``
    per request.

    aiohttp has no hook for these requests (they never reach the application or its
    middlewares): they come to ``handle_error(request, status, exc, message)``, as of
    aiohttp 3.14. Other errors that come there (a 500 or 504 of aiohttp's own, a bug) keep
    aiohttp's handling."""

    def __init__(self, manager: web.Server, *, malformed: Malformed, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.malformed = malformed

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or not 400 <= status < 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send the 400")
        resp = self.malformed(request, status, exc)
        resp.force_close()
        return resp


class _Listener:
    """What BaseSite.stop() closes: the accept loop and the listening socket."""

    def __init__(self, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self.sock = sock
        self.task = task

    def close(self) -> None:
        self.task.cancel()
        self.sock.close()


def _peer_host(conn: socket.socket) -> str:
    try:
        return str(conn.getpeername()[0])
    except (OSError, IndexError, TypeError):
        return "?"


class CappedSite(web.BaseSite):
    """A TCP site that accepts through a :class:`ConnectionCap` (aiohttp's TCPSite hands the
    listening socket to asyncio, which accepts as fast as connections come, up to the backlog
    at a time, whatever the descriptors left)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        limit: int,
        protocol: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, backlog=LISTEN_BACKLOG, ssl_context=ssl_context)
        self.host, self.port, self.limit = host, port, limit
        self.protocol = protocol
        # A failed TLS handshake (plain HTTP to the HTTPS port, an old client): one line per
        # source address per 10 s.
        self._tls_throttle = WarnThrottle(log, 10.0)
        self.cap: ConnectionCap | None = None
        self._serving: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        self.cap = ConnectionCap(self.protocol, self.limit)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family, backlog=self._backlog)
        sock.setblocking(False)
        task = asyncio.create_task(self._accept(sock, self.cap), name="hafleet-api-accept")
        self._server = _Listener(sock, task)  # type: ignore[assignment]

    async def _accept(self, sock: socket.socket, cap: ConnectionCap) -> None:
        loop = asyncio.get_running_loop()
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
            task = asyncio.create_task(self._serve(loop, conn, cap))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(
        self, loop: asyncio.AbstractEventLoop, conn: socket.socket, cap: ConnectionCap
    ) -> None:
        made: list[_Counted] = []

        def factory() -> _Counted:
            made.append(cap.protocol())
            return made[-1]

        try:
            source = _peer_host(conn)
            await loop.connect_accepted_socket(
                factory,
                conn,
                ssl=self._ssl_context,
                ssl_handshake_timeout=TLS_HANDSHAKE_S if self._ssl_context else None,
            )
        except Exception as exc:  # e.g. a failed TLS handshake: the slot is free again
            if made:
                made[0].release()
            else:
                cap.open -= 1
            conn.close()
            if isinstance(exc, ssl.SSLError | TimeoutError) and self._ssl_context is not None:
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
