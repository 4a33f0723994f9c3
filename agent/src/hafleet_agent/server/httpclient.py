"""One HTTP/1.1 request over a fresh connection, for :mod:`.forward` (a write to the leader).

A fresh connection per request and no retry: :class:`ConnectFailed` (the connection or its
TLS handshake failed) then means the request was never sent; any later failure, or the
deadline, means it may have been received (the caller cannot tell).
"""

from __future__ import annotations

import asyncio
import ssl

from ..addr import split_host_port

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024


class ConnectFailed(Exception):
    """The connection (or its TLS handshake) failed: nothing was sent."""


class BadResponse(Exception):
    """The answer is not HTTP/1.x as this client reads it."""


async def request(
    address: str,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes | None,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """``method target`` to ``address`` (``HOST:PORT``): (the status, the body). The target
    is sent as given (still encoded). Bound it with ``asyncio.timeout``."""
    host, port = split_host_port(address)
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
        )
    except (OSError, ssl.SSLError, ssl.CertificateError) as exc:
        raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
    try:
        shown_host = f"[{host}]" if ":" in host else host
        head = [f"{method} {target} HTTP/1.1", f"Host: {shown_host}:{port}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body or b'')}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + (body or b""))
        while True:  # a 1xx answer (100 Continue) comes before the real one
            status, fields = await _read_head(reader)
            if status >= 200:
                break
        return status, await _read_body(reader, fields)
    finally:
        writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise BadResponse("the answer's head is too long") from None
    except asyncio.IncompleteReadError:
        raise ConnectionResetError("the connection closed before an answer") from None
    lines = raw[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise BadResponse(f"bad status line {lines[0][:60]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(parts[1]), fields


async def _read_body(reader: asyncio.StreamReader, fields: dict[str, str]) -> bytes:
    try:
        if fields.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers expected
                    return bytes(out)
                if len(out) + size > MAX_BODY:
                    raise BadResponse("the answer's body is too large")
                out += await reader.readexactly(size)
                await reader.readexactly(2)
        if "content-length" in fields:
            return await reader.readexactly(int(fields["content-length"]))
        return await reader.read(MAX_BODY)
    except asyncio.IncompleteReadError:
        raise ConnectionResetError("the connection closed in the middle of the answer") from None
    except ValueError:
        raise BadResponse("bad chunk size or Content-Length") from None
