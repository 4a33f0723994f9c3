"""The API's HTTP server on what the hostile review of the twentieth session left: an
absolute-form request target (RFC 9112 §3.2.2: a server must take it; it was a 404), an
``Expect`` other than ``100-continue`` (417; it was served), the last answer to a client that
half-closed says ``Connection: close`` (it did not), a query that is not UTF-8 once
percent-decoded (a 400; ``%ff`` became U+FFFD and named another prefix), and plain HTTP to
the HTTPS port (a 400 that says to use https://; it got no answer at all).

In-process on loopback, raw sockets (``conn.serve``, ``http.py``, ``web.py``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from http_answers import responses

from hafleet_agent.server import conn, web
from hafleet_agent.server.conn import Runner, serve


def run(main: Callable[[Runner, list[Any]], Awaitable[None]], **kw: Any) -> None:
    seen: list[Any] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.path, request.query_string))
        return web.json_response(
            {"path": request.path, "q": dict(request.query), "body": body.decode()}
        )

    async def wrapper() -> None:
        app = web.Application(client_max_size=1024)
        app.router.add_route("*", "/echo/{n}", echo)
        runner = await serve(app, "127.0.0.1", 0, **kw)
        try:
            await asyncio.wait_for(main(runner, seen), 30)
        finally:
            await runner.cleanup(shutdown_timeout=1.0)

    asyncio.run(wrapper())


async def exchange(port: int, data: bytes, half_close: bool = False) -> bytes:
    """Send ``data`` (then the client's FIN when ``half_close``); all that comes back until
    the server closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"http://127.0.0.1:7480/echo/a", "/echo/a", ""),
        (b"HTTPS://node1.example/echo/b?x=1", "/echo/b", "x=1"),
        (b"http://[::1]:7480/echo/c%20d", "/echo/c d", ""),
    ],
)
def test_an_absolute_form_target_is_served_by_its_path(
    target: bytes, path: str, query: str
) -> None:
    async def main(runner: Runner, seen: list[Any]) -> None:
        data = b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % target
        [(status, _, body)] = responses(await exchange(runner.port, data))
        assert status == 200, body
        assert json.loads(body)["path"] == path
        assert seen == [(path, query)]

    run(main)


@pytest.mark.parametrize(
    "target",
    [b"ftp://h/echo/a", b"http:///echo/a", b"http://?x=1"],
)
def test_an_absolute_target_without_a_host_or_of_another_scheme_is_a_400(target: bytes) -> None:
    async def main(runner: Runner, seen: list[Any]) -> None:
        data = b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target
        [(status, fields, body)] = responses(await exchange(runner.port, data))
        assert (status, fields["connection"]) == (400, "close")
        assert "bad request target" in json.loads(body)["error"]
        assert seen == []

    run(main)


def test_an_expectation_other_than_100_continue_is_a_417_and_nothing_runs() -> None:
    async def main(runner: Runner, seen: list[Any]) -> None:
        data = b"PUT /echo/a HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\nab"
        [(status, fields, body)] = responses(await exchange(runner.port, data))
        assert (status, fields["connection"]) == (417, "close")
        assert "expectation '200-ok'" in json.loads(body)["error"]
        assert seen == []
        # 100-continue is still answered and the body read
        data = (
            b"PUT /echo/b HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        try:
            writer.write(data)
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"ok")
            [(status, _, body)] = responses(await asyncio.wait_for(reader.read(-1), 10))
        finally:
            writer.close()
        assert (status, json.loads(body)["body"]) == (200, "ok")

    run(main)


def test_after_a_half_close_the_last_answer_says_connection_close() -> None:
    async def main(runner: Runner, seen: list[Any]) -> None:
        gets = b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(3))
        got = responses(await exchange(runner.port, gets, half_close=True))
        assert [s for s, _, _ in got] == [200, 200, 200]
        # the last one says the close that follows; those before it may have been written
        # before the FIN was read
        assert got[-1][1].get("connection") == "close"

    run(main)


def test_a_query_that_is_not_utf8_once_decoded_is_a_400() -> None:
    async def main(runner: Runner, seen: list[Any]) -> None:
        for query in (b"prefix=%ff", b"%c3=1", b"a=%e2%82"):
            data = b"GET /echo/a?%s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % query
            [(status, _, body)] = responses(await exchange(runner.port, data))
            assert status == 400, (query, body)
            assert b"not UTF-8" in body
        data = b"GET /echo/a?prefix=%c3%a9 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        [(status, _, body)] = responses(await exchange(runner.port, data))
        assert (status, json.loads(body)["q"]) == (200, {"prefix": "é"})

    run(main)


def _tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from hafleet_agent import ca

    ca.init_ca(tmp_path)
    ca.issue(tmp_path, "srv", ["127.0.0.1"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    return server_ctx, ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))


def test_plain_http_to_the_https_port_is_a_400_that_says_use_https(tmp_path: Path) -> None:
    server_ctx, client_ctx = _tls(tmp_path)

    def https_get(port: int) -> bytes:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET /echo/tls HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := s.recv(4096):
                out += chunk
            return out

    async def main(runner: Runner, seen: list[Any]) -> None:
        data = b"PUT /echo/a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"
        [(status, fields, body)] = responses(await exchange(runner.port, data))
        assert (status, fields["connection"]) == (400, "close")
        assert json.loads(body)["error"] == (
            "plain HTTP sent to the HTTPS port of this agent: use https://"
        )
        assert seen == []
        assert runner.cap.open == 0  # its slot given back
        # a port probe that sends nothing and closes, then HTTPS as ever
        _, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        writer.close()
        raw = await asyncio.get_running_loop().run_in_executor(None, https_get, runner.port)
        [(status, _, body)] = responses(raw)
        assert (status, json.loads(body)["path"]) == (200, "/echo/tls")

    run(main, ssl_context=server_ctx)


def test_a_silent_client_of_the_https_port_is_closed_at_the_handshake_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for the client's first byte counts against TLS_HANDSHAKE_S: a client that
    connects and sends nothing is closed and its slot given back."""
    server_ctx, _ = _tls(tmp_path)
    monkeypatch.setattr(conn, "TLS_HANDSHAKE_S", 0.3)

    async def main(runner: Runner, seen: list[Any]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        try:
            assert await asyncio.wait_for(reader.read(-1), 10) == b""
        finally:
            writer.close()
        assert runner.cap.open == 0

    run(main, ssl_context=server_ctx)
