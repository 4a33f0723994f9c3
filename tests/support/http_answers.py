"""The answers in a raw HTTP/1.1 byte stream, for the tests that talk to the API's server
over raw sockets (pipelining, half-close, malformed heads)."""

from __future__ import annotations


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream into (status, headers with lower-case names, body) by
    Content-Length or chunks."""
    out = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if fields.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, raw = raw.partition(b"\r\n")
                size = int(size_line, 16)
                body, raw = body + raw[:size], raw[size + 2 :]
                if size == 0:
                    break
        else:
            n = int(fields.get("content-length", "0"))
            body, raw = raw[:n], raw[n:]
        out.append((int(lines[0].split()[1]), fields, body))
    return out
