"""The handlers' side of the API's own HTTP server: requests, responses, the router.

A small subset of aiohttp's ``web`` namespace, with the same names and meanings, so that the
handlers read as aiohttp handlers do: ``request.match_info``, ``.query``, ``.headers``
(case-insensitive), ``await request.read()`` / ``.json()``, ``request.remote``; and
``json_response``, ``Response``, ``StreamResponse``, the ``HTTP...`` exceptions, an
:class:`Application` with its router and middlewares. The connection side (parsing, keep-alive,
writing the answer) is :mod:`.http`; the listener (cap, TLS) is :mod:`.conn`.

The server buffers each request's body (at most ``client_max_size``) before the handler runs:
a body over the limit is not read, and ``read()`` raises :class:`HTTPRequestEntityTooLarge`
(413, as aiohttp did).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

Handler = Callable[["Request"], Awaitable["StreamResponse"]]
_REASONS = {s.value: s.phrase for s in HTTPStatus}


def reason_of(status: int) -> str:
    return _REASONS.get(status, "Unknown")


class Headers:
    """A case-insensitive mapping of header names to values that keeps the names as given
    (one value a name; a request's repeated headers are joined with ``, ``)."""

    __slots__ = ("_d",)

    def __init__(self, items: Any = None) -> None:
        self._d: dict[str, tuple[str, str]] = {}
        if items:
            for k, v in items.items() if hasattr(items, "items") else items:
                self[k] = v

    def __getitem__(self, name: str) -> str:
        return self._d[name.lower()][1]

    def __setitem__(self, name: str, value: str) -> None:
        self._d[name.lower()] = (name, str(value))

    def __delitem__(self, name: str) -> None:
        del self._d[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._d

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._d.values())

    def __len__(self) -> int:
        return len(self._d)

    def get(self, name: str, default: Any = None) -> Any:
        item = self._d.get(name.lower())
        return default if item is None else item[1]

    def getall(self, name: str, default: Any = None) -> list[str]:
        item = self._d.get(name.lower())
        return default if item is None else [item[1]]

    def pop(self, name: str, default: Any = None) -> Any:
        item = self._d.pop(name.lower(), None)
        return default if item is None else item[1]

    def setdefault(self, name: str, value: str) -> str:
        if name.lower() not in self._d:
            self[name] = value
        return self[name]

    def update(self, other: Any) -> None:
        for k, v in other.items():
            self[k] = v

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self._d.values())

    def keys(self) -> list[str]:
        return list(self)

    def values(self) -> list[str]:
        return [v for _, v in self._d.values()]

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


def RequestKey(name: str, _type: Any = None) -> str:  # noqa: N802 (aiohttp's name)
    """A key of a request's own mapping (``request[key]``)."""
    return name


class Request:
    """One HTTP request, its head parsed and its body read (see the module's docstring)."""

    def __init__(
        self,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        headers: Headers,
        body: bytes,
        *,
        remote: str | None = None,
        transport: Any = None,
        too_large: int = 0,
        app: Application | None = None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path  # the path and query as sent, still encoded
        self.version = version
        self.headers = headers
        self.remote = remote
        self.transport = transport
        self.app = app
        self.match_info: dict[str, str] = {}
        self._body = body
        self._too_large = too_large  # the body's length when over the limit (not read)
        self._query: dict[str, str] | None = None
        self._state: dict[Any, Any] = {}
        self._stream: Any = None  # set by the connection: what a StreamResponse writes to
        self.answered: StreamResponse | None = None  # sent by answer_now, before the return
        raw, _, self.query_string = raw_path.partition("?")
        self.raw_path_only = raw
        self.path = unquote(raw, errors="surrogateescape") if "%" in raw else raw

    # the request's own mapping (the middleware's scope, the audit's subject)
    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def __contains__(self, key: Any) -> bool:
        return key in self._state

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)

    @property
    def query(self) -> dict[str, str]:
        """The query's parameters (the first value of each name). A query whose bytes are
        not UTF-8 once percent-decoded is a 400 (``%ff`` is no character: read as U+FFFD it
        would name another prefix than the one sent)."""
        if self._query is None:
            q: dict[str, str] = {}
            try:
                pairs = parse_qsl(self.query_string, keep_blank_values=True, errors="strict")
            except UnicodeDecodeError:
                raise HTTPBadRequest(reason="the query is not UTF-8 once percent-decoded") from None
            for k, v in pairs:
                q.setdefault(k, v)
            self._query = q
        return self._query

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip()

    @property
    def content_length(self) -> int | None:
        return self._too_large or len(self._body) if self.can_read_body else None

    @property
    def can_read_body(self) -> bool:
        return bool(self._body) or self._too_large > 0

    @property
    def body_exists(self) -> bool:
        return self.can_read_body

    @property
    def secure(self) -> bool:
        transport = self.transport
        return transport is not None and transport.get_extra_info("sslcontext") is not None

    @property
    def scheme(self) -> str:
        return "https" if self.secure else "http"

    @property
    def host(self) -> str:
        return str(self.headers.get("Host", ""))

    def answer_now(self, resp: StreamResponse) -> bool:
        """Send ``resp`` as this request's answer now, while the handler still runs (a
        write's answer from its apply: server/http.py's ``HttpProtocol.answer_now``); the
        handler then returns this same response (``answered``), which is not sent again.
        False when it was not sent (no connection, closed, or answered already): the
        handler's return answers as usual."""
        stream = self._stream
        return stream is not None and stream.answer_now(self, resp)

    async def read(self) -> bytes:
        if self._too_large:
            limit = self.app.client_max_size if self.app is not None else 0
            raise HTTPRequestEntityTooLarge(max_size=limit, actual_size=self._too_large)
        return self._body

    async def text(self) -> str:
        return (await self.read()).decode("utf-8")

    async def json(self, *, loads: Callable[[str], Any] = json.loads) -> Any:
        return loads(await self.text())


class StreamResponse:
    """A response whose body is written in parts: ``await prepare(request)`` sends the head,
    ``await write(data)`` a chunk, ``await write_eof()`` the end."""

    def __init__(
        self, *, status: int = 200, reason: str | None = None, headers: Any = None
    ) -> None:
        self.status = status
        self.reason = reason or reason_of(status)
        self.headers = Headers(headers)
        self.keep_alive: bool | None = None
        self.prepared = False
        self._stream: Any = None

    def set_status(self, status: int, reason: str | None = None) -> None:
        self.status, self.reason = status, reason or reason_of(status)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "application/octet-stream").split(";")[0]

    @content_type.setter
    def content_type(self, value: str) -> None:
        self.headers["Content-Type"] = value

    @property
    def content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        return int(raw) if raw is not None else None

    @content_length.setter
    def content_length(self, value: int | None) -> None:
        if value is None:
            self.headers.pop("Content-Length")
        else:
            self.headers["Content-Length"] = str(int(value))

    def force_close(self) -> None:
        self.keep_alive = False

    async def prepare(self, request: Request) -> None:
        if not self.prepared:
            self.prepared = True
            self._stream = request._stream
            self._stream.start(request, self)

    async def write(self, data: bytes) -> None:
        if not self.prepared:
            raise RuntimeError("write() before prepare()")
        await self._stream.write(data)

    async def drain(self) -> None:
        await self._stream.write(b"")

    async def write_eof(self, data: bytes = b"") -> None:
        if data:
            await self.write(data)
        if self._stream is not None:
            self._stream.end()


class Response(StreamResponse):
    """A response with its whole body (``body`` bytes, or ``text`` in ``charset``)."""

    def __init__(
        self,
        *,
        body: bytes | str | None = None,
        status: int = 200,
        reason: str | None = None,
        text: str | None = None,
        headers: Any = None,
        content_type: str | None = None,
        charset: str | None = None,
    ) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        if text is not None:
            self.charset = charset or "utf-8"
            self._body = text.encode(self.charset)
            ctype = content_type or "text/plain"
        else:
            self.charset = charset
            self._body = body.encode(charset or "utf-8") if isinstance(body, str) else body or b""
            ctype = content_type or ("application/octet-stream" if body is not None else "")
        if ctype and "Content-Type" not in self.headers:
            full = f"{ctype}; charset={self.charset}" if self.charset else ctype
            self.headers["Content-Type"] = full

    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value

    @property
    def text(self) -> str:
        return self._body.decode(self.charset or "utf-8", "replace")

    @text.setter
    def text(self, value: str) -> None:
        self._body = value.encode(self.charset or "utf-8")


def json_response(
    data: Any = None,
    *,
    text: str | None = None,
    body: bytes | None = None,
    status: int = 200,
    reason: str | None = None,
    headers: Any = None,
    content_type: str = "application/json",
    dumps: Callable[[Any], str] = json.dumps,
) -> Response:
    if body is None and text is None:
        text = dumps(data)
    return Response(
        text=text,
        body=body,
        status=status,
        reason=reason,
        headers=headers,
        content_type=content_type,
    )


class HTTPException(Response, Exception):
    """An answer raised instead of returned (aiohttp's): its ``status``, ``reason``, ``text``."""

    status_code = 500

    def __init__(
        self,
        *,
        headers: Any = None,
        reason: str | None = None,
        body: bytes | None = None,
        text: str | None = None,
        content_type: str | None = None,
    ) -> None:
        status = self.status_code
        if body is None and text is None:
            text = f"{status}: {reason or reason_of(status)}"
        Response.__init__(
            self,
            status=status,
            reason=reason,
            headers=headers,
            body=body,
            text=text,
            content_type=content_type,
        )
        Exception.__init__(self, self.reason)

    def __str__(self) -> str:
        return self.reason

    __hash__ = object.__hash__


def _http(name: str, status: int, base: type = HTTPException) -> type:
    return type(name, (base,), {"status_code": status, "__module__": __name__})


class HTTPRedirection(HTTPException):
    def __init__(self, location: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.headers["Location"] = str(location)
        self.location = location


class HTTPMethodNotAllowed(HTTPException):
    status_code = 405

    def __init__(self, method: str, allowed_methods: Any, **kwargs: Any) -> None:
        allowed = sorted(allowed_methods)
        super().__init__(**kwargs)
        self.headers["Allow"] = ",".join(allowed)
        self.method, self.allowed_methods = method, set(allowed)


class HTTPRequestEntityTooLarge(HTTPException):
    status_code = 413

    def __init__(self, max_size: float, actual_size: float, **kwargs: Any) -> None:
        kwargs.setdefault(
            "text",
            f"Maximum request body size {max_size} exceeded, actual body size {actual_size}",
        )
        super().__init__(**kwargs)


HTTPMovedPermanently = _http("HTTPMovedPermanently", 301, HTTPRedirection)
HTTPFound = _http("HTTPFound", 302, HTTPRedirection)
HTTPSeeOther = _http("HTTPSeeOther", 303, HTTPRedirection)
HTTPTemporaryRedirect = _http("HTTPTemporaryRedirect", 307, HTTPRedirection)
HTTPNotModified = _http("HTTPNotModified", 304)
HTTPBadRequest = _http("HTTPBadRequest", 400)
HTTPUnauthorized = _http("HTTPUnauthorized", 401)
HTTPForbidden = _http("HTTPForbidden", 403)
HTTPNotFound = _http("HTTPNotFound", 404)
HTTPConflict = _http("HTTPConflict", 409)
HTTPInternalServerError = _http("HTTPInternalServerError", 500)
HTTPServiceUnavailable = _http("HTTPServiceUnavailable", 503)
HTTPGatewayTimeout = _http("HTTPGatewayTimeout", 504)


def middleware(f: Callable[..., Any]) -> Callable[..., Any]:
    """aiohttp's marker of a new-style middleware ``(request, handler)``: nothing to do."""
    return f


_PARAM = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


def _pattern(path: str) -> re.Pattern[str]:
    """``/v1/kv/{key:.+}`` -> a regex over the raw (still encoded) path."""
    out, pos = [], 0
    for m in _PARAM.finditer(path):
        out.append(re.escape(path[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>{m.group(2) or '[^{}/]+'})")
        pos = m.end()
    out.append(re.escape(path[pos:]))
    return re.compile("".join(out) + r"\Z")


class Router:
    """Routes by method and path: exact paths by a dict lookup, patterns in the order they
    were added (each ``{name}`` one segment, ``{name:regex}`` the regex; the values given to
    the handler as ``match_info``, percent-decoded)."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._patterns: list[tuple[re.Pattern[str], dict[str, Handler]]] = []

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        if "{" not in path:
            table = self._exact.setdefault(path, {})
        else:
            pattern = _pattern(path)
            for p, t in self._patterns:
                if p.pattern == pattern.pattern:
                    table = t
                    break
            else:
                table = {}
                self._patterns.append((pattern, table))
        table[method.upper()] = handler

    def add_get(self, path: str, handler: Handler, *, allow_head: bool = True) -> None:
        self.add_route("GET", path, handler)
        if allow_head:
            self.add_route("HEAD", path, handler)

    def add_post(self, path: str, handler: Handler) -> None:
        self.add_route("POST", path, handler)

    def add_put(self, path: str, handler: Handler) -> None:
        self.add_route("PUT", path, handler)

    def add_delete(self, path: str, handler: Handler) -> None:
        self.add_route("DELETE", path, handler)

    def add_patch(self, path: str, handler: Handler) -> None:
        self.add_route("PATCH", path, handler)

    def resolve(self, request: Request) -> Handler:
        """The handler of ``request`` (its ``match_info`` set), or one that raises 404/405."""
        raw = request.raw_path_only
        table = self._exact.get(raw)
        if table is None:
            for pattern, t in self._patterns:
                m = pattern.match(raw)
                if m is not None:
                    request.match_info = {
                        k: unquote(v, errors="surrogateescape") for k, v in m.groupdict().items()
                    }
                    table = t
                    break
            else:
                return _not_found
        handler = table.get(request.method) or table.get("*")
        if handler is None:
            allowed = set(table)

            async def not_allowed(request: Request) -> StreamResponse:
                raise HTTPMethodNotAllowed(request.method, allowed)

            return not_allowed
        return handler


async def _not_found(request: Request) -> StreamResponse:
    raise HTTPNotFound()


class Application:
    """The routes, the middlewares (``mw(request, handler)``, outermost first), the body
    limit and the cleanup hooks (``on_cleanup``: ``async f(app)``, run at shutdown)."""

    def __init__(
        self,
        *,
        middlewares: Any = (),
        client_max_size: int = 1024**2,
    ) -> None:
        self.router = Router()
        self.middlewares = list(middlewares)
        self.client_max_size = client_max_size
        self.on_startup: list[Callable[[Application], Awaitable[None]]] = []
        self.on_shutdown: list[Callable[[Application], Awaitable[None]]] = []
        self.on_cleanup: list[Callable[[Application], Awaitable[None]]] = []
        self._state: dict[Any, Any] = {}

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)

    async def handle(self, request: Request) -> StreamResponse:
        """The answer of the route, through the middlewares."""
        handler = self.router.resolve(request)
        for mw in reversed(self.middlewares):
            handler = _wrapped(mw, handler)
        return await handler(request)

    async def cleanup(self) -> None:
        for hook in self.on_cleanup:
            await hook(self)


def _wrapped(mw: Callable[..., Any], handler: Handler) -> Handler:
    return lambda request: mw(request, handler)
