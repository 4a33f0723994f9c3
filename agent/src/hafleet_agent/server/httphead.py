"""A request's head, parsed (sans-IO): the request line, the header lines, the limits on
them, and the refusals (:class:`BadRequest`: a 400, or a 417 for an expectation that cannot
be met). :mod:`.http` reads the bytes off a connection and calls these once a line, or the
whole head, has come.
"""

from __future__ import annotations

import re

from .chunked import ChunkedDecoder
from .web import Headers

#: The longest request line or header line (aiohttp's limit).
MAX_LINE = 8190
MAX_HEADERS = 128
#: The longest head: request line, headers and the empty line.
MAX_HEAD = MAX_LINE * 8
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSIONS = {b"HTTP/1.1": (1, 1), b"HTTP/1.0": (1, 0)}
EMPTY_LINES = re.compile(rb"(?:\r\n)+")


class BadRequest(Exception):
    """A request that is not HTTP/1.x as it must be (the connection answers 400, closes)."""

    status = 400


class ExpectationFailed(BadRequest):
    """An ``Expect`` other than ``100-continue`` (answered 417, the connection closed)."""

    status = 417


def check_start(buf: bytearray) -> None:
    """Refuse at once what cannot start a request (a TLS handshake to the plain port, binary
    bytes) rather than wait for a head that will never end."""
    sp = buf.find(b" ", 0, 33)
    method = bytes(buf[:sp] if sp >= 0 else buf[:33])
    if method and not _TOKEN.match(method) or sp < 0 and len(buf) > 32:
        if buf[:1] == b"\x16":
            raise BadRequest("not HTTP: a TLS handshake to the plain HTTP port? (use https://)")
        raise BadRequest(f"not an HTTP request line: {method[:20]!r}")


def request_line(line: bytes) -> tuple[str, str, tuple[int, int]]:
    """(method, target, version) of a request line, or BadRequest."""
    if len(line) > MAX_LINE:
        raise BadRequest(f"the request line is over {MAX_LINE} bytes")
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _TARGET.match(parts[1]):
        why = " (no HTTP version: HTTP/0.9 is not served)" if len(parts) == 2 else ""
        raise BadRequest(f"bad request line {line[:60]!r}{why}")
    version = _VERSIONS.get(parts[2])
    if version is None:
        raise BadRequest(f"unsupported HTTP version {parts[2][:20]!r}")
    target = parts[1].decode("ascii")
    if target[:1] != "/" and "://" in target:
        target = _origin_form(target)
    return parts[0].decode("ascii"), target, version


def _origin_form(target: str) -> str:
    """The path and query of an absolute-form target (``http://host:port/v1/status``, what a
    client sends through a proxy; RFC 9112 §3.2.2: a server must take it). The Host header
    still has to be there (HTTP/1.1); the target's authority is not checked against it."""
    scheme, _, rest = target.partition("://")
    if scheme.lower() not in ("http", "https"):
        raise BadRequest(f"bad request target {target[:60]!r} (only http and https URLs)")
    ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
    cut = min(ends) if ends else len(rest)
    if cut == 0:
        raise BadRequest(f"bad request target {target[:60]!r} (no host)")
    path = rest[cut:]
    return path if path[:1] == "/" else "/" + path


def parse_headers(lines: list[bytes]) -> Headers:
    headers = Headers()
    for line in lines:
        if len(line) > MAX_LINE:
            raise BadRequest(f"a header line is over {MAX_LINE} bytes")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise BadRequest(f"bad header line {line[:40]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise BadRequest(f"a control character in header {name[:40]!r}")
        key, text = name.decode("ascii"), value.decode("utf-8", "surrogateescape")
        if key in headers:
            if key.lower() in ("content-length", "transfer-encoding", "host"):
                raise BadRequest(f"header {key} given twice")
            text = f"{headers[key]}, {text}"
        headers[key] = text
    return headers


class Head:
    """A request's head, parsed; its body to come: ``framing`` is its Content-Length (0
    without one), or the decoder of its chunks."""

    __slots__ = ("method", "target", "version", "headers", "framing")

    def __init__(
        self,
        method: str,
        target: str,
        version: tuple[int, int],
        headers: Headers,
        framing: int | ChunkedDecoder,
    ) -> None:
        self.method, self.target, self.version = method, target, version
        self.headers, self.framing = headers, framing
