"""The API's HTTP/1.1 server: one :class:`HttpProtocol` per connection (asyncio protocols,
no streams), and :class:`HttpServer`, which knows the connections and shuts them down.

What a connection does, in order: it reads a request's head (the request line and each
header line at most MAX_LINE bytes, at most MAX_HEADERS headers, MAX_HEAD in all), then its
body (by Content-Length or chunked, :mod:`.chunked`; at most the app's ``client_max_size``,
else the handler's ``read()`` is a 413 and the connection closes after the answer), then
runs the app's handler, one request at a time in the order they came (pipelined requests
wait in the buffer; reading pauses while it is full), and writes the answer. Each byte is
parsed once however the reads cut it (a head is searched from where the last read ended).
Keep-alive is HTTP/1.1's default (HTTP/1.0: only when asked); a connection with no request
under way is closed after ``keepalive_s``, counted from when it became idle, so a client
that sends nothing, or a head byte by byte (slowloris), holds it no longer. A request that
is not HTTP as RFC 9112 says is answered by ``malformed`` (a JSON 400) and the connection
closed, as soon as it can tell: a line that ends with a bare LF, a request line without an
HTTP version (HTTP/0.9), an HTTP/1.1 request without Host. Empty lines before a request
line are skipped (RFC 9112 §2.2).

When the client half-closes (plain TCP: it sent its last byte), the request under way and
the whole ones already in the buffer are answered in order, then the connection is closed
(an incomplete one is dropped); once the client half-closed or the connection is lost, a
handler still running HALF_CLOSE_GRACE_S later (a long-poll: ``/v1/watch``) is cancelled
and the connection closed, so that it gives its slot back.

:mod:`.httphead` parses a head once it has come (the request line, the headers, their
limits); :mod:`.web` is the handlers' side (requests, responses, the router); :mod:`.conn`
the listener (the connection cap, TLS).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .chunked import ChunkedDecoder, ChunkError
from .httphead import (
    EMPTY_LINES,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
    BadRequest,
    ExpectationFailed,
    Head,
    check_start,
    parse_headers,
    request_line,
)
from .web import Application, Headers, HTTPException, Request, Response, StreamResponse

log = logging.getLogger("hafleet.api")

#: Unread bytes a connection buffers (pipelined requests) before it stops reading.
MAX_BUFFER = 256 * 1024
#: After a 413 the rest of the body is read and dropped for this long (at most
#: MAX_BUFFER * 64 bytes) before the connection closes: a close with unread bytes would be
#: a reset, which can reach the client before the answer does.
LINGER_S = 2.0
#: Once the client half-closed (or the connection is lost) while a handler runs, what is
#: still running this long after is cancelled and the connection closed: a short request
#: (and those pipelined before the close) is answered, a long-poll does not hold its slot.
HALF_CLOSE_GRACE_S = 5.0

#: The answer to a malformed request: (the source address, the status, what is wrong).
Malformed = Callable[[str | None, int, str], Response]


def _default_malformed(remote: str | None, status: int, what: str) -> Response:
    from .web import json_response

    return json_response({"error": f"malformed HTTP request: {what[:200]}"}, status=status)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _http_date(t: float) -> str:
    g = time.gmtime(t)
    return (
        f"{_DAYS[g.tm_wday]}, {g.tm_mday:02d} {_MONTHS[g.tm_mon - 1]} {g.tm_year:04d} "
        f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} GMT"
    )


class _Date:
    """The Date header's value, formatted once a second."""

    second = -1
    text = ""

    @classmethod
    def now(cls) -> str:
        t = int(time.time())
        if t != cls.second:
            cls.second, cls.text = t, _http_date(t)
        return cls.text


class HttpServer:
    """Runs ``app`` on the connections it is given (:meth:`protocol` makes one) and shuts
    them down: idle ones at once, busy ones after their answer or ``shutdown_timeout``."""

    def __init__(
        self,
        app: Application,
        *,
        keepalive_s: float = 30.0,
        malformed: Malformed | None = None,
    ) -> None:
        self.app = app
        self.keepalive_s = keepalive_s
        self.malformed = malformed or _default_malformed
        self.connections: set[HttpProtocol] = set()
        self.closing = False

    def protocol(self, on_close: Callable[[], None] | None = None) -> HttpProtocol:
        return HttpProtocol(self, on_close)

    async def shutdown(self, timeout: float) -> None:
        """Close every connection: at once when idle; a busy one after its answer, or when
        ``timeout`` has passed (its handler cancelled)."""
        self.closing = True
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        busy = [c.task for c in self.connections if c.task is not None]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for conn in list(self.connections):
            conn.close()


class HttpProtocol(asyncio.Protocol):
    """One connection (see the module's docstring)."""

    def __init__(self, server: HttpServer, on_close: Callable[[], None] | None) -> None:
        self.server = server
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.closed = False
        self.loop = asyncio.get_running_loop()
        self._drain: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._eof = False  # the client sent its last byte: close after the answer
        self._continued = False  # "100 Continue" sent for the request being read
        self._head_only = False  # the streamed answer under way is to a HEAD
        self._lingering = -1  # >= 0 after a 413: the bytes dropped since
        self._tls = False  # TLS has no half close (eof_received's answer is ignored there)
        self._current: Request | None = None  # the request whose handler runs
        self._keep_alive = False  # what its head asked for
        self._pending: Head | None = None  # the head whose body is being read
        self._start: tuple[tuple[str, str, tuple[int, int]], int] | None = None  # its line
        self._scanned = 0  # bytes of the head so far searched for its end
        self._reaper: asyncio.TimerHandle | None = None  # see _gone

    # ---- asyncio's side ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._tls = transport.get_extra_info("ssl_object") is not None
        self.server.connections.add(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._gone()
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("the client closed the connection"))
        if self.on_close is not None:
            self.on_close()
            self.on_close = None

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            self._lingering += len(data)
            if self._lingering > MAX_BUFFER * 64:
                self.close()
            return
        self.buf += data
        if self.task is None:
            self._next()
        elif len(self.buf) > MAX_BUFFER and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self._eof = True
        if self.task is None or self._lingering >= 0:
            self.close()  # (an incomplete request in the buffer is dropped)
        else:
            self._gone()
        # Plain TCP: half-closed, the answer under way is still sent, and those to the whole
        # requests in the buffer, then the close. TLS has no half close: the connection ends
        # here (and asyncio warns of a True).
        return not self._tls

    def _gone(self) -> None:
        """The client sent its last byte, or the connection is lost, while a handler runs:
        what is still running HALF_CLOSE_GRACE_S later is cancelled and the connection
        closed (a long-poll would hold its connection slot until its ``wait`` ends)."""
        if self.task is not None and self._reaper is None:
            self._reaper = self.loop.call_later(HALF_CLOSE_GRACE_S, self._reap)

    def _reap(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.close()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # ---- reading -----------------------------------------------------------------------------
    def _idle(self) -> None:
        """No request under way: the keep-alive clock starts (a next request must arrive
        whole before it runs out)."""
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(self.server.keepalive_s, self.close)

    def _linger(self) -> None:
        """After a 413: end the answer, drop what still comes for LINGER_S, then close (a
        client still sending its body then reads the answer instead of a reset)."""
        transport = self.transport
        assert transport is not None
        self._lingering = 0
        self.buf.clear()
        if transport.can_write_eof():  # plain TCP: half close, the client sees the end
            try:
                transport.write_eof()
            except OSError:  # ENOTCONN: the client is gone already
                self.close()
                return
        # (TLS has no half close: the answer is whole, the connection stays open while the
        # client still sends, at most LINGER_S, then closes)
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(LINGER_S, self.close)
        if self.paused:
            self.paused = False
            transport.resume_reading()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _next(self) -> None:
        """Start the next whole request in the buffer, if there is one."""
        if self.closed or self.server.closing and not self.buf:
            return
        try:
            parsed = self._parse()
        except (BadRequest, ChunkError) as exc:
            self._refuse(str(exc), getattr(exc, "status", 400))
            return
        if parsed is None:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        request, keep_alive = parsed
        self._current, self._keep_alive = request, keep_alive
        self.task = self.loop.create_task(self._run(request, keep_alive))

    def _parse(self) -> tuple[Request, bool] | None:
        """The next request once its head and body are here, else None. Its head is parsed
        once, when its end has come, and dropped from the buffer; its body is then read as
        it comes (a chunked one decoded as it comes): each byte is looked at once."""
        head = self._pending
        if head is None:
            head = self._pending = self._read_head()
            if head is None:
                return None
        expect = head.headers.get("Expect")
        if expect is not None and expect.lower() != "100-continue":
            # RFC 9110 §10.1.1: an expectation other than 100-continue cannot be met
            raise ExpectationFailed(
                f"cannot meet the expectation {expect[:40]!r} (only 100-continue)"
            )
        body, too_large = self._body(head)
        if body is None:  # the body is not all here yet
            if not self._continued and expect is not None:
                self._continued = True  # curl waits a second for it before a large body
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
            return None
        self._pending = None
        self._continued = False
        conn = head.headers.get("Connection", "").lower()
        keep_alive = "close" not in conn if head.version == (1, 1) else "keep-alive" in conn
        if too_large:
            keep_alive = False  # the rest of the body is not read
        request = Request(
            head.method,
            head.target,
            head.version,
            head.headers,
            body,
            remote=self.remote,
            transport=self.transport,
            too_large=too_large,
            app=self.server.app,
        )
        request._stream = self
        return request, keep_alive

    def _read_head(self) -> Head | None:
        """The request's head once it is all here (then dropped from the buffer), else None.
        The bytes are searched once (``_scanned``: how far), the request line checked as
        soon as it ends, a bare LF refused as soon as it comes."""
        buf = self.buf
        empty = EMPTY_LINES.match(buf) if self._start is None else None
        if empty:  # RFC 9112 §2.2: empty lines before a request line are skipped
            del buf[: empty.end()]
            self._scanned = max(self._scanned - empty.end(), 0)
        n, scanned = len(buf), self._scanned
        end = buf.find(b"\r\n\r\n", max(scanned - 3, 0))
        stop = n if end < 0 else end + 4
        if buf.count(b"\n", scanned, stop) != buf.count(b"\r\n", max(scanned - 1, 0), stop):
            raise BadRequest("a line ends with a bare LF (HTTP wants CRLF)")
        if self._start is None:
            first = buf.find(b"\r\n", max(scanned - 1, 0), stop)
            if first >= 0:
                self._start = request_line(bytes(buf[:first])), first
            elif n > MAX_LINE:
                raise BadRequest(f"the request line is over {MAX_LINE} bytes")
            elif buf != b"\r":  # (maybe an empty line's CR)
                check_start(buf)
        self._scanned = stop
        if stop > MAX_HEAD:
            raise BadRequest(f"the header section is over {MAX_HEAD} bytes")
        if end < 0:
            return None
        assert self._start is not None
        (method, target, version), first = self._start
        lines = bytes(buf[first + 2 : end]).split(b"\r\n") if end > first else []
        del buf[: end + 4]
        self._start, self._scanned = None, 0
        if len(lines) > MAX_HEADERS:
            raise BadRequest(f"more than {MAX_HEADERS} headers")
        headers = parse_headers(lines)
        if version == (1, 1) and "Host" not in headers:
            raise BadRequest("no Host header (HTTP/1.1 requires one)")
        return Head(method, target, version, headers, self._framing(headers))

    def _framing(self, headers: Headers) -> int | ChunkedDecoder:
        """How the body comes: its Content-Length, or the decoder of its chunks."""
        te = headers.get("Transfer-Encoding")
        if te is not None:
            if "Content-Length" in headers or te.lower() != "chunked":
                raise BadRequest("bad Transfer-Encoding (only chunked, without Content-Length)")
            return ChunkedDecoder(self.server.app.client_max_size)
        raw = headers.get("Content-Length")
        if raw is None:
            return 0
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
            raise BadRequest(f"bad Content-Length {raw[:20]!r}")
        return int(raw)

    def _body(self, head: Head) -> tuple[bytes | None, int]:
        """(the body, dropped from the buffer, or None when it is not all here; its size
        when it is over the limit: then b"" and the rest is not read)."""
        buf, framing = self.buf, head.framing
        if isinstance(framing, ChunkedDecoder):
            used = framing.feed(buf)
            del buf[:used]
            if framing.too_large:
                return b"", framing.too_large
            return (bytes(framing.body) if framing.done else None), 0
        if framing > self.server.app.client_max_size:
            return b"", framing
        if len(buf) < framing:
            return None, 0
        body = bytes(buf[:framing])
        del buf[:framing]
        return body, 0

    def _refuse(self, what: str, status: int = 400) -> None:
        """Answer a malformed request and close (the server's ``malformed`` says how)."""
        resp = self.server.malformed(self.remote, status, what)
        resp.force_close()
        self.buf.clear()
        self._pending = self._start = None
        self._send(None, resp, keep_alive=False)
        self.close()

    # ---- answering ---------------------------------------------------------------------------
    async def _run(self, request: Request, keep_alive: bool) -> None:
        resp: StreamResponse | None = None
        try:
            try:
                resp = await self.server.app.handle(request)
            except HTTPException as exc:
                resp = exc
            except ConnectionError:  # the client went away while a stream was written
                keep_alive = False
                return
            except Exception as exc:  # a bug outside the middleware's reach
                log.error("internal error in %s: %s: %s", request.method, type(exc).__name__, exc)
                log.debug("internal error", exc_info=exc)
                resp = Response(
                    text='{"error": "internal error"}', status=500, content_type="application/json"
                )
            if not self._may_keep(resp):
                keep_alive = False
            if request.answered is not None:
                pass  # sent by answer_now already; the client has its one answer
            elif not resp.prepared:
                self._send(request, resp, keep_alive)
            elif self._chunked_open:
                self.end()
        except asyncio.CancelledError:
            keep_alive = False
        finally:
            self.task = None
            self._current = None
            if request._too_large and not self.closed and not self._eof:
                self._linger()
            elif not keep_alive or self.closed:
                self.close()
            else:
                if self.paused:
                    self.paused = False
                    self.transport.resume_reading()  # type: ignore[union-attr]
                if self.buf:
                    self._next()  # after EOF too: the whole requests that came before it
                if self.task is None and not self.closed:
                    if self._eof:
                        self.close()  # (an incomplete request is dropped)
                    else:
                        self._idle()

    def answer_now(self, request: Request, resp: StreamResponse) -> bool:
        """Write ``resp`` (a whole response) as the answer to ``request`` while its handler
        still runs (``Request.answer_now``): only for the request being handled, once."""
        if self.closed or request is not self._current or request.answered is not None:
            return False
        if resp.prepared:
            return False  # a streamed answer is written by its own calls
        self._send(request, resp, self._keep_alive and self._may_keep(resp))
        request.answered = resp
        return True

    def _may_keep(self, resp: StreamResponse) -> bool:
        """Whether the connection may stay open after ``resp`` (as far as the response and
        the server are concerned; the request's head has its own say)."""
        return resp.keep_alive is not False and not self.server.closing

    def _head(self, request: Request | None, resp: StreamResponse, keep_alive: bool) -> bytearray:
        version = "HTTP/1.0" if request is not None and request.version == (1, 0) else "HTTP/1.1"
        out = [f"{version} {resp.status} {resp.reason}\r\n"]
        for name, value in resp.headers.items():
            out.append(f"{name}: {value}\r\n")
        out.append(f"Date: {_Date.now()}\r\n")
        if keep_alive and self._eof and b"\r\n\r\n" not in self.buf:
            keep_alive = False  # half-closed: this is the last answer, the close follows
        if not keep_alive:
            out.append("Connection: close\r\n")
        elif version == "HTTP/1.0":
            out.append("Connection: keep-alive\r\n")
        out.append("\r\n")
        return bytearray("".join(out).encode("utf-8"))

    def _send(self, request: Request | None, resp: StreamResponse, keep_alive: bool) -> None:
        if self.closed:
            return
        body = getattr(resp, "body", None) or b""  # an aiohttp Response's too
        resp.headers["Content-Length"] = str(len(body))
        data = self._head(request, resp, keep_alive)
        if request is None or request.method != "HEAD":
            data += body
        self.transport.write(data)  # type: ignore[union-attr]

    # ---- a StreamResponse's writes (its ``_stream`` is this connection) ----------------------
    _chunked_open = False

    def start(self, request: Request, resp: StreamResponse) -> None:
        """Send a streamed response's head: chunked, unless it set a Content-Length."""
        keep_alive = self._may_keep(resp)
        if resp.content_length is None:
            resp.headers["Transfer-Encoding"] = "chunked"
            self._chunked_open = request.method != "HEAD"
        self._head_only = request.method == "HEAD"
        if not self.closed:
            self.transport.write(self._head(request, resp, keep_alive))  # type: ignore[union-attr]
        if not keep_alive:
            resp.keep_alive = False

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        if data and not self._head_only:
            if self._chunked_open:
                data = b"%x\r\n%s\r\n" % (len(data), data)
            self.transport.write(data)  # type: ignore[union-attr]
        if self._writing_paused:
            if self._drain is None:
                self._drain = self.loop.create_future()
            await self._drain

    def end(self) -> None:
        if self._chunked_open:
            self._chunked_open = False
            if not self.closed:
                self.transport.write(b"0\r\n\r\n")  # type: ignore[union-attr]
