"""The API's HTTP parser against a hostile client (review of ``server/http.py``): chunked
bodies decoded incrementally (``server/chunked.py``) with a cap on their chunks, size lines,
extensions and trailers, strict chunk sizes, and request heads answered at once when they
cannot be HTTP/1.1 (a bare LF, no version, no Host).

Before: a body of many small chunks was parsed again from its first chunk at every read
(1.1 million one-byte chunks kept the agent busy 7-12 s, its leader lost leadership); a
trailer section was buffered without limit (159 MB on one connection); ``0_c`` or `` c `` was
a chunk size; a 4000-digit chunk size was a 500; a bare-LF or HTTP/0.9 request waited 30 s
for its end.

In-process on loopback, raw sockets; the decoder also on its own (sans-IO).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hafleet_agent.server import web
from hafleet_agent.server.chunked import (
    MAX_EXTENSIONS,
    MAX_SIZE_LINE,
    MAX_TRAILER_FIELDS,
    MAX_TRAILERS,
    ChunkedDecoder,
    ChunkError,
    max_chunks,
)
from hafleet_agent.server.conn import Runner, serve

LIMIT = 1 << 20  # max_body_bytes' default
HEAD = b"PUT /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"


def run(main: Callable[[Runner], Awaitable[None]], limit: int = LIMIT) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"len": len(body), "body": body[:64].decode("ascii", "replace")})

    async def wrapper() -> None:
        app = web.Application(client_max_size=limit)
        app.router.add_route("*", "/echo", echo)
        runner = await serve(app, "127.0.0.1", 0)  # keep-alive 30 s: a wait is a failure
        try:
            await asyncio.wait_for(main(runner), 30)
        finally:
            await runner.cleanup(shutdown_timeout=1.0)

    asyncio.run(wrapper())


async def exchange(port: int, data: bytes, close: bool = False) -> tuple[int, Any]:
    """Send ``data`` (then the client's FIN when ``close``) and read until the server
    closes, at most 5 s (the keep-alive time is 30 s: an answer that waits for it fails);
    the first answer's status and body (JSON when it parses)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if close:
            writer.write_eof()
        raw = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    try:
        return status, json.loads(body[:length])
    except ValueError:
        return status, body[:length]


def malformed(answer: Any) -> str:
    assert isinstance(answer, dict) and answer["error"].startswith("malformed HTTP request: ")
    return str(answer["error"])


# ---- the decoder on its own -----------------------------------------------------------------


class Counted(bytearray):
    """A buffer that counts the bytes searched (``find``, ``count``) and copied (slices),
    and those added to it (``received``)."""

    looked = 0
    received = 0

    def __iadd__(self, data: Any) -> Counted:  # type: ignore[override,misc]
        self.received += len(data)
        return super().__iadd__(data)  # type: ignore[return-value]

    def _count(self, start: int, end: int | None, found: int = -1, sub: int = 0) -> None:
        stop = len(self) if end is None else min(end, len(self))
        self.looked += max((found + sub if found >= 0 else stop) - start, 0)

    def find(self, sub: Any, start: Any = 0, end: Any = None) -> int:  # type: ignore[override]
        found = super().find(sub, start, end)
        self._count(start, end, found, len(sub))
        return found

    def count(self, sub: Any, start: Any = 0, end: Any = None) -> int:  # type: ignore[override]
        self._count(start, end)
        return super().count(sub, start, end)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            start, stop, _ = key.indices(len(self))
            self.looked += max(stop - start, 0)
        return super().__getitem__(key)


def test_the_decoder_looks_at_each_byte_once_however_the_reads_cut_it() -> None:
    """5000 one-byte chunks and a few larger ones, fed 7 bytes at a time: what it has
    decoded is consumed at once (at most a line's start is left for the next read), and
    the bytes searched and copied are a small multiple of the body's, not its square."""
    data = b"1\r\nx\r\n" * 5000 + b"10;e=1\r\n" + b"y" * 16 + b"\r\n" + b"0\r\nT: 1\r\n\r\nGET"
    decoder = ChunkedDecoder(LIMIT)
    buf = Counted()
    for i in range(0, len(data), 7):
        buf += data[i : i + 7]
        used = decoder.feed(buf)
        del buf[:used]
        if decoder.done:
            break
        assert len(buf) < 8, (i, bytes(buf))
    assert decoder.done and decoder.body == b"x" * 5000 + b"y" * 16
    assert bytes(buf) + data[i + 7 :] == b"GET"  # the next request's, not consumed
    assert decoder.chunks == 5001 and decoder.too_large == 0
    assert buf.looked < 4 * len(data), buf.looked


@given(
    st.lists(st.binary(min_size=1, max_size=40), max_size=30),
    st.lists(st.integers(1, 50), min_size=1, max_size=20),
    st.sampled_from([b"", b";a=1", b' ; b="x"']),
    st.sampled_from([b"", b"T: 1\r\n", b"A: b\r\nC:\r\n"]),
)
@settings(max_examples=200, deadline=None)
def test_the_decoder_gives_the_same_body_however_the_reads_cut_it(
    chunks: list[bytes], cuts: list[int], ext: bytes, trailers: bytes
) -> None:
    data = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks)
    data += b"0\r\n" + trailers + b"\r\nNEXT"
    decoder, buf, i = ChunkedDecoder(LIMIT), bytearray(), 0
    while not decoder.done:
        step = cuts[i % len(cuts)]
        buf += data[i : i + step]
        i += step
        del buf[: decoder.feed(buf)]
    assert decoder.body == b"".join(chunks) and decoder.chunks == len(chunks)
    assert bytes(buf) + data[i:] == b"NEXT"


def test_the_decoder_counts_chunks_and_stops_at_the_limit() -> None:
    assert max_chunks(1024) == 1024 and max_chunks(LIMIT) == LIMIT // 64
    decoder = ChunkedDecoder(LIMIT, chunks=3)
    with pytest.raises(ChunkError, match="more than 3 chunks"):
        decoder.feed(b"1\r\na\r\n" * 4)
    decoder = ChunkedDecoder(10)
    used = decoder.feed(b"5\r\n12345\r\n6\r\n123456\r\n0\r\n\r\n")
    assert decoder.done and decoder.too_large == 11 and used == len(b"5\r\n12345\r\n6\r\n")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"1;" + b"e" * MAX_SIZE_LINE, "a chunk size line is over"),  # no CRLF needed
        ((b"1;" + b"e" * 4000 + b"\r\nx\r\n") * 17, "chunk extensions over"),
        (b"0\r\nX: " + b"a" * MAX_TRAILERS, "a trailer line is over"),
        (b"0\r\n" + (b"X: " + b"a" * 8000 + b"\r\n") * 9, "the trailer section is over"),
        (b"0\r\n" + b"X: a\r\n" * (MAX_TRAILER_FIELDS + 1), "more than 128 trailer fields"),
        (b"0\r\nno colon\r\n\r\n", "bad trailer line"),
        (b"0\r\nX: a\rb\r\n\r\n", "a control character in trailer"),
        (b"3\r\nabcX\r\n", "does not end with CRLF"),
    ],
)
def test_the_decoder_refuses_what_would_grow_without_limit(data: bytes, error: str) -> None:
    assert MAX_EXTENSIONS < 17 * 4002
    with pytest.raises(ChunkError, match=error):
        ChunkedDecoder(LIMIT).feed(data)


# ---- over a connection ----------------------------------------------------------------------


def test_a_chunked_body_sent_in_many_reads_is_decoded_as_it_comes() -> None:
    """10000 one-byte chunks in 40 writes, each read by the server before the next is
    sent: the buffer holds no more than a line's start after each read, and the bytes the
    connection searched and copied stay a small multiple of the request's (every read
    parsed the body again from its first chunk: 40 reads, 20 times the bytes)."""

    async def main(runner: Runner) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        await until(lambda: len(runner.http.connections) == 1)
        [conn] = runner.http.connections
        conn.buf = buf = Counted()
        writer.write(HEAD)
        sent = len(HEAD)
        part = b"1\r\nx\r\n" * 250
        for _ in range(40):
            writer.write(part)
            sent += len(part)
            # the server read it all, and decoded it: no more than a line's start is left
            await until(lambda n=sent: buf.received == n and len(buf) < 8)
        writer.write(b"0\r\n\r\n")
        sent += 5
        raw = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200") and b'"len": 10000' in raw, raw[:300]
        assert buf.looked < 4 * sent, (buf.looked, sent)

    run(main)


def test_a_head_sent_in_many_reads_is_searched_once() -> None:
    """A head of 60 header lines in 60 writes, each read before the next: the bytes the
    connection searched and copied stay a small multiple of the head's (every read searched
    it again from its first byte)."""

    async def main(runner: Runner) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        await until(lambda: len(runner.http.connections) == 1)
        [conn] = runner.http.connections
        conn.buf = buf = Counted()
        lines = [b"GET /echo HTTP/1.1\r\nHost: h\r\n"]
        lines += [b"X-Header-%02d: %s\r\n" % (i, b"v" * 40) for i in range(60)]
        sent = 0
        for line in lines:
            writer.write(line)
            sent += len(line)
            await until(lambda n=sent: buf.received == n)
        writer.write(b"Connection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200"), raw[:300]
        assert buf.looked < 6 * (sent + 21), (buf.looked, sent)  # (it was 33 times)

    run(main)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_a_body_of_more_chunks_than_the_cap_is_a_400() -> None:
    """At most max(1024, limit / 64) chunks: 16384 with max_body_bytes' default 1 MiB."""
    cap = max_chunks(LIMIT)

    async def main(runner: Runner) -> None:
        status, answer = await exchange(runner.port, HEAD + b"1\r\nx\r\n" * cap + b"0\r\n\r\n")
        assert (status, answer["len"]) == (200, cap), answer
        status, answer = await exchange(runner.port, HEAD + b"1\r\nx\r\n" * (cap + 1))
        assert status == 400 and f"more than {cap} chunks" in malformed(answer)

    run(main)


def test_the_trailer_section_and_chunk_extensions_are_capped() -> None:
    """A trailer section that never ends, or a size line's extension that never ends, is
    a 400 as soon as it is over its cap (the trailers were buffered without limit);
    trailers and extensions within them are fine (and dropped)."""

    async def main(runner: Runner) -> None:
        port = runner.port
        status, answer = await exchange(port, HEAD + b"0\r\nX-T: " + b"a" * 70_000)
        assert status == 400 and "trailer line is over" in malformed(answer), answer
        many = b"0\r\n" + (b"X-T: " + b"a" * 8000 + b"\r\n") * 10
        status, answer = await exchange(port, HEAD + many)
        assert status == 400 and "trailer section is over" in malformed(answer), answer
        status, answer = await exchange(port, HEAD + b"1;" + b"e" * 5000)
        assert status == 400 and "chunk size line is over" in malformed(answer), answer
        status, answer = await exchange(port, HEAD + b"0\r\nno-colon\r\n\r\n")
        assert status == 400 and "bad trailer line" in malformed(answer), answer
        fine = b'3;a=1 ; b="x y"\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Other: two\r\n\r\n'
        status, answer = await exchange(port, HEAD + fine)
        assert (status, answer["body"]) == (200, "abc"), answer

    run(main)


@pytest.mark.parametrize(
    "size", [b"0_c", b" c", b"c ", b"+c", b"-c", b"0xc", b"c;\x01", b"", b"c\tz", b"\xef\xbc\x91"]
)
def test_a_chunk_size_is_hex_digits_only(size: bytes) -> None:
    """``int(x, 16)`` took ``0_c``, `` c``, ``c ``: a proxy in front may read such a size
    otherwise (request smuggling)."""

    async def main(runner: Runner) -> None:
        body = size + b"\r\n" + b"x" * 12 + b"\r\n0\r\n\r\n"
        status, answer = await exchange(runner.port, HEAD + body)
        assert status == 400 and "bad chunk size" in malformed(answer), answer

    run(main)


def test_a_chunk_size_of_many_digits_is_a_400_or_a_413_never_a_500() -> None:
    """A 4000-digit size was a 500 (its 413 message formatted the size as a decimal of more
    than 4300 digits); leading zeros are no digits of the size."""

    async def main(runner: Runner) -> None:
        port = runner.port
        for digits in (b"f" * 4000, b"1" + b"0" * 16):
            status, answer = await exchange(port, HEAD + digits + b"\r\nx")
            assert status == 400 and "over 16 hex digits" in malformed(answer), answer
        status, answer = await exchange(port, HEAD + b"f" * 16 + b"\r\nx")
        assert status == 413 and str(2**64 - 1).encode() in answer, answer  # (the app's text)
        status, answer = await exchange(
            port, HEAD + b"0" * 40 + b"C\r\n" + b"x" * 12 + b"\r\n0\r\n\r\n"
        )
        assert (status, answer["len"]) == (200, 12), answer

    run(main)


# ---- heads that cannot be HTTP/1.1 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"GET /echo HTTP/1.1\nHost: h\n\n", "bare LF"),
        (b"GET /echo HTTP/1.1\n", "bare LF"),  # known at the request line's end
        (b"GET /echo HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n", "bare LF"),
        (b"GET /echo\r\n", "no HTTP version"),  # HTTP/0.9: no head ever comes
        (b"GET /echo HTTP/1.1\r\nX: 1\r\n\r\n", "no Host header"),
    ],
)
def test_a_head_that_cannot_be_http_1_1_is_a_400_at_once(data: bytes, error: str) -> None:
    """A bare-LF line or an HTTP/0.9 request waited 30 s (the keep-alive time) for a
    head's end, then a close without an answer; HTTP/1.1 without Host was served."""

    async def main(runner: Runner) -> None:
        status, answer = await exchange(runner.port, data)
        assert status == 400 and error in malformed(answer), answer

    run(main)


def test_http_1_0_needs_no_host_and_empty_lines_before_a_request_are_skipped() -> None:
    """RFC 9112 §2.2: an empty line before a request line (after a body, between pipelined
    requests) is ignored; it was answered "bad request line b''"."""

    async def main(runner: Runner) -> None:
        status, answer = await exchange(runner.port, b"GET /echo HTTP/1.0\r\n\r\n")
        assert (status, answer["len"]) == (200, 0), answer
        post = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab\r\n"
        last = (
            b"\r\nPUT /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nConnection: close\r\n\r\nc"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        writer.write(b"\r\n" + post + last)
        raw = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        assert raw.count(b"HTTP/1.1 200") == 2 and b"400" not in raw, raw
        assert b'"body": "ab"' in raw and b'"body": "c"' in raw, raw

    run(main)
