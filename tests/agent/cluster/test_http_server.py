"""The API's own HTTP/1.1 server (``server/http.py``, ``conn.py``, ``web.py``), in-process
on loopback: keep-alive, pipelining in order, HEAD, chunked and Content-Length bodies, the
body limit, 100-continue, malformed heads, idle and slowloris connections, the connection
cap, streamed answers, an answer sent while its handler runs, graceful shutdown, a client
that half-closes (pipelined requests, long-polls); and ``httpclient.py`` (the forwarder's
client)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from http_answers import responses

from hafleet_agent.server import httpclient, web
from hafleet_agent.server.conn import Runner, serve


def make_app(max_body: int = 1024) -> tuple[web.Application, dict[str, Any]]:
    seen: dict[str, Any] = {
        "order": [],
        "started": asyncio.Event(),
        "release": None,
        "answer_now": [],
        "polls": [],
    }
    app = web.Application(client_max_size=max_body)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen["order"].append(request.match_info.get("n", request.path))
        return web.json_response(
            {
                "method": request.method,
                "n": request.match_info.get("n"),
                "q": dict(request.query),
                "len": len(body),
                "body": body.decode("utf-8", "replace"),
                "agent": request.headers.get("x-AGENT"),
            }
        )

    async def slow(request: web.Request) -> web.Response:
        seen["started"].set()
        await seen["release"].wait()
        seen["order"].append("slow")
        return web.json_response({"slow": True})

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def raises(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def early(request: web.Request) -> web.Response:
        resp = web.json_response({"early": True})
        seen["answer_now"].append(request.answer_now(resp))
        seen["answer_now"].append(request.answer_now(web.json_response({"twice": True})))
        seen["started"].set()
        await seen["release"].wait()
        seen["order"].append("early")
        return resp

    async def poll(request: web.Request) -> web.Response:
        """A long-poll, as /v1/watch: waits much longer than any test."""
        seen["polls"].append("started")
        try:
            await asyncio.sleep(300)
        except asyncio.CancelledError:
            seen["polls"].append("cancelled")
            raise
        return web.json_response({"poll": True})

    app.router.add_route("*", "/echo/{n}", echo)
    app.router.add_get("/poll", poll)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stream", stream)
    app.router.add_get("/redirect", raises)
    app.router.add_get("/early", early)
    return app, seen


def run(main: Callable[[Runner, dict[str, Any]], Awaitable[None]], **kw: Any) -> None:
    async def wrapper() -> None:
        app, seen = make_app()
        seen["release"] = asyncio.Event()
        runner = await serve(app, "127.0.0.1", 0, **kw)
        try:
            await asyncio.wait_for(main(runner, seen), 30)
        finally:
            await runner.cleanup(shutdown_timeout=1.0)

    asyncio.run(wrapper())


async def exchange(port: int, data: bytes, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await reader.read(1 << 20) if not until_close else await reader.read(-1)
    finally:
        writer.close()


def test_pipelined_requests_are_answered_one_at_a_time_in_order() -> None:
    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        reqs = b"".join(
            b"POST /echo/%d?a=%d&a=x&b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n%02d"
            % (i, i, i)
            for i in range(5)
        )
        reqs += b"GET /echo/last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        got = responses(await exchange(runner.port, reqs))
        assert [s for s, _, _ in got] == [200] * 6
        answers = [json.loads(b) for _, _, b in got]
        assert [a["n"] for a in answers] == ["0", "1", "2", "3", "4", "last"]
        assert answers[3] == {
            "method": "POST",
            "n": "3",
            "q": {"a": "3", "b": ""},
            "len": 2,
            "body": "03",
            "agent": None,
        }
        assert got[-1][1]["connection"] == "close" and "connection" not in got[0][1]
        assert seen["order"] == ["0", "1", "2", "3", "4", "last"]

    run(main)


def test_a_slow_request_holds_the_next_one_back() -> None:
    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /echo/after HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        await seen["started"].wait()
        await asyncio.sleep(0.05)  # the second request is in the buffer, not running
        assert seen["order"] == []
        seen["release"].set()
        data = b""
        while data.count(b"HTTP/1.1 200") < 2:
            data += await reader.read(65536)
        writer.close()
        assert seen["order"] == ["slow", "after"]

    run(main)


def test_an_answer_sent_while_its_handler_runs_goes_once_and_the_next_request_waits() -> None:
    """``Request.answer_now`` (a write's answer from its apply, server/api.py): the client
    reads the answer while the handler still runs; the handler's return sends nothing more;
    a second answer_now is refused; a pipelined request starts once the handler returned."""

    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        writer.write(
            b"GET /early HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET /echo/after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(responses(head)[0][1]["content-length"])
        first = head + await reader.readexactly(length)
        assert responses(first)[0][2] == b'{"early": true}'
        assert seen["answer_now"] == [True, False]
        assert seen["order"] == []  # the handler has not returned; "after" waits for it
        seen["release"].set()
        rest = await reader.read(-1)  # the second answer, then the close it asked for
        writer.close()
        got = responses(first + rest)
        assert [s for s, _, _ in got] == [200, 200]
        assert json.loads(got[0][2]) == {"early": True} and json.loads(got[1][2])["n"] == "after"
        assert seen["order"] == ["early", "after"]

    run(main)


def test_head_chunked_bodies_100_continue_and_http_1_0() -> None:
    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        port = runner.port
        head = responses(
            await exchange(port, b"HEAD /echo/1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        )
        # HEAD: the GET's headers, no body (the parser above reads Content-Length bytes: none)
        raw = await exchange(port, b"HEAD /echo/1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert raw.endswith(b"\r\n\r\n") and int(head[0][1]["content-length"]) > 0
        chunked = (
            b"PUT /echo/c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
            b"3\r\nabc\r\n5;ext=1\r\ndefgh\r\n0\r\n\r\n"
        )
        [(status, _, body)] = responses(await exchange(port, chunked))
        assert status == 200 and json.loads(body)["body"] == "abcdefgh"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"PUT /echo/e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"body")
        head_line = await reader.readuntil(b"\r\n")
        assert head_line.startswith(b"HTTP/1.1 200")
        writer.close()
        raw = await exchange(port, b"GET /echo/old HTTP/1.0\r\n\r\n")  # closed after it
        assert raw.startswith(b"HTTP/1.0 200") and b"Connection: close" in raw
        raw = await exchange(port, b"GET /stream HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        [(status, fields, body)] = responses(raw)
        assert (status, body, fields["transfer-encoding"]) == (200, b"one two three", "chunked")
        [(status, fields, _)] = responses(
            await exchange(port, b"GET /redirect HTTP/1.1\r\nHost: h\r\n\r\n", until_close=False)
        )
        assert (status, fields["location"]) == (302, "/elsewhere")
        for bad in (
            b"GET /nope HTTP/1.1\r\nHost: h\r\n\r\n",
            b"PATCH /slow HTTP/1.1\r\nHost: h\r\n\r\n",
        ):
            [(status, _, _)] = responses(await exchange(port, bad, until_close=False))
            assert status in (404, 405)

    run(main)


def test_a_body_over_the_limit_is_413_and_the_connection_closes() -> None:
    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        for framing in (b"Content-Length: 5000\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\n"):
            data = b"PUT /echo/big HTTP/1.1\r\nHost: h\r\n" + framing
            data += b"x" * 5000 if b"Length" in framing else b"1388\r\n" + b"x" * 5000
            raw = await exchange(runner.port, data)
            [(status, fields, body)] = responses(raw)
            assert (status, fields["connection"]) == (413, "close"), raw[:200]
            assert b"Maximum request body size 1024 exceeded" in body
        # a client still sending a large body gets the answer, not a reset: the rest is read
        # and dropped (LINGER_S) after the answer
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        writer.write(b"PUT /echo/big HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (8 << 20))
        for _ in range(8):
            writer.write(b"x" * (1 << 20))
            await writer.drain()
        writer.write_eof()
        [(status, fields, _)] = responses(await reader.read())
        assert (status, fields["connection"]) == (413, "close")
        writer.close()

    run(main)


def test_over_tls_a_client_still_sending_a_large_body_gets_its_413(tmp_path) -> None:
    """TLS has no half close: after the 413 the server keeps reading and dropping the body
    (LINGER_S) instead of closing at once, so the client's send completes and it reads the
    answer (it was an SSLEOFError in the middle of its send: the chaos scenario api_abuse)."""
    from hafleet_agent import ca

    ca.init_ca(tmp_path)
    ca.issue(tmp_path, "srv", ["127.0.0.1"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))

    def client(port: int) -> bytes:  # as http.client sends: one blocking sendall
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            body = b"x" * (8 << 20)  # past the socket buffers, under the linger cap
            sock.sendall(
                b"PUT /echo/big HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            sock.sendall(body)
            return sock.recv(65536)

    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        answer = await asyncio.get_running_loop().run_in_executor(None, client, runner.port)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    run(main, ssl_context=server_ctx)


@pytest.mark.parametrize(
    "data",
    [
        b"GET /echo/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"GET /echo/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n",
        b"GET /echo/1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET /echo/1 HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        b"GET /echo/1 HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
        b"GET /echo/1 HTTP/2.0\r\n\r\n",
        b"GET  /echo/1 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /echo/1 HTTP/1.1\r\nHost: h\r\n folded: x\r\n\r\n",
        b"GET /" + b"a" * 9000,  # no end of line yet, already too long
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS: no end of head ever comes
        b"\x00\x01\x02 not http",
    ],
)
def test_a_malformed_head_is_a_json_400_and_a_close(data: bytes) -> None:
    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        [(status, fields, body)] = responses(await exchange(runner.port, data))
        assert (status, fields["connection"]) == (400, "close")
        assert json.loads(body)["error"].startswith("malformed HTTP request: ")
        assert seen["order"] == []

    run(main)


def test_idle_and_slowloris_connections_are_closed_after_the_keepalive_time() -> None:
    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        opened = time.monotonic()
        silent = await asyncio.open_connection("127.0.0.1", runner.port)
        slow = await asyncio.open_connection("127.0.0.1", runner.port)
        for (
            byte
        ) in b"GET /echo/1 HTTP/1.1\r\nHost: h\r\nX-A: ":  # a byte every 20 ms, never the end
            slow[1].write(bytes([byte]))
            await asyncio.sleep(0.02)
            if slow[0].at_eof():
                break
        assert await silent[0].read() == b"" and await slow[0].read() == b""
        took = time.monotonic() - opened
        assert 0.4 <= took < 2.0, took
        assert seen["order"] == []

    run(main, keepalive_s=0.5)


def test_accepted_connections_have_tcp_nodelay() -> None:
    import socket

    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        writer.write(b"GET /echo/1 HTTP/1.1\r\nHost: h\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        [conn] = runner.http.connections
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writer.close()

    run(main)


def test_the_cap_refuses_connections_over_it_with_503() -> None:
    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        conns = [await asyncio.open_connection("127.0.0.1", runner.port) for _ in range(3)]
        deadline = time.monotonic() + 5
        while runner.cap.open + runner.cap.refused < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        third = await conns[2][0].read()
        assert third.startswith(b"HTTP/1.1 503") and runner.cap.refused == 1
        conns[0][1].write(b"GET /echo/ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (await conns[0][0].read()).startswith(b"HTTP/1.1 200")
        for _, w in conns:
            w.close()

    run(main, limit=2)


def test_shutdown_waits_for_a_request_under_way_and_closes_idle_ones() -> None:
    async def main() -> None:
        app, seen = make_app()
        seen["release"] = asyncio.Event()
        runner = await serve(app, "127.0.0.1", 0)
        idle = await asyncio.open_connection("127.0.0.1", runner.port)
        busy = await asyncio.open_connection("127.0.0.1", runner.port)
        busy[1].write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        await seen["started"].wait()
        cleanup = asyncio.create_task(runner.cleanup(shutdown_timeout=5.0))
        assert await asyncio.wait_for(idle[0].read(), 2) == b""
        assert not cleanup.done()
        seen["release"].set()
        answer = await asyncio.wait_for(busy[0].read(), 2)
        assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer
        await asyncio.wait_for(cleanup, 2)

        # a handler past the timeout is cancelled
        app, seen = make_app()
        seen["release"] = asyncio.Event()
        runner = await serve(app, "127.0.0.1", 0)
        busy = await asyncio.open_connection("127.0.0.1", runner.port)
        busy[1].write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        await seen["started"].wait()
        started = time.monotonic()
        await runner.cleanup(shutdown_timeout=0.3)
        assert time.monotonic() - started < 2 and await busy[0].read() == b""
        assert seen["order"] == []

    asyncio.run(main())


def test_the_client_reads_answers_and_tells_a_failed_connect_apart() -> None:
    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        addr = f"127.0.0.1:{runner.port}"
        status, body = await httpclient.request(
            addr, "PUT", "/echo/a%2Fb?x=1", {"X-Agent": "me"}, b'{"v": 1}'
        )
        answer = json.loads(body)
        assert (status, answer["n"], answer["agent"], answer["body"]) == (
            200,
            "a/b",
            "me",
            '{"v": 1}',
        )
        status, body = await httpclient.request(addr, "GET", "/stream", {}, None)
        assert (status, body) == (200, b"one two three")
        runner.sock.close()
        with pytest.raises(httpclient.ConnectFailed):
            await httpclient.request(addr, "GET", "/echo/x", {}, None)

    run(main)


def test_the_agent_process_does_not_load_aiohttp() -> None:
    """The agent serves and forwards with its own HTTP code: aiohttp (~17 MiB of RSS with
    its dependencies) is never imported by ``hafleet-agent run`` and what it loads."""
    import subprocess
    import sys

    code = (
        "import sys, hafleet_agent.cli, hafleet_agent.run, hafleet_agent.server.api\n"
        "import hafleet_agent.node.node\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'aiohttp', 'yarl', 'multidict', 'aiosignal', 'frozenlist'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ---- a client that half-closes (review: pipelined requests dropped, long-polls held) -------


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def half_close(port: int, data: bytes) -> bytes:
    """Send ``data``, then the client's FIN (``shutdown(SHUT_WR)``, as ``nc -N``); all
    that comes back until the server closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()


def test_pipelined_requests_before_a_half_close_are_all_answered_in_order() -> None:
    """5 pipelined GETs, or PUTs, then the client's FIN: 5 answers, every PUT executed (it
    was 2 answers, or 1 PUT executed: the connection was closed with whole requests still
    in the buffer); an incomplete request after them is dropped and the connection closed."""

    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        gets = b"".join(b"GET /echo/g%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5))
        got = responses(await half_close(runner.port, gets))
        assert [(s, json.loads(b)["n"]) for s, _, b in got] == [(200, f"g{i}") for i in range(5)]
        puts = b"".join(
            b"PUT /echo/p%d HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n%d" % (i, i)
            for i in range(5)
        )
        incomplete = b"PUT /echo/cut HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nab"
        got = responses(await half_close(runner.port, puts + incomplete))
        assert [(s, json.loads(b)["body"]) for s, _, b in got] == [(200, str(i)) for i in range(5)]
        assert seen["order"] == [f"g{i}" for i in range(5)] + [f"p{i}" for i in range(5)]

    run(main)


def test_a_half_closed_long_poll_gives_its_connection_slot_back(monkeypatch) -> None:
    """A long-poll (``/v1/watch?wait=300s``) whose client sends its FIN: the handler is
    cancelled HALF_CLOSE_GRACE_S later and the connection closed, its slot free again (it
    was held until the wait ended: 1024 such connections and every request was a 503). A
    short request answered before the grace ends is answered as before (``nc -N``)."""
    from hafleet_agent.server import http

    monkeypatch.setattr(http, "HALF_CLOSE_GRACE_S", 0.3, raising=False)

    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        started = time.monotonic()
        answer = await half_close(runner.port, b"GET /poll HTTP/1.1\r\nHost: h\r\n\r\n")
        assert answer == b"" and seen["polls"] == ["started", "cancelled"]
        assert time.monotonic() - started < 3
        await until(lambda: runner.cap.open == 0 and not runner.http.connections)
        # a handler that answers within the grace: the half-closed client gets its answer
        task = asyncio.create_task(
            half_close(runner.port, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        )
        await seen["started"].wait()
        seen["release"].set()
        [(status, _, body)] = responses(await task)
        assert (status, json.loads(body)) == (200, {"slow": True})
        await until(lambda: runner.cap.open == 0)

    run(main, limit=2)


def test_a_long_poll_whose_client_reset_is_cancelled_too(monkeypatch) -> None:
    """The client resets the connection (RST) during a long-poll: the slot was given back
    at once already; the handler no longer waits out its ``wait`` either."""
    from hafleet_agent.server import http

    monkeypatch.setattr(http, "HALF_CLOSE_GRACE_S", 0.1, raising=False)

    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        sock = socket.create_connection(("127.0.0.1", runner.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.sendall(b"GET /poll HTTP/1.1\r\nHost: h\r\n\r\n")
        await until(lambda: seen["polls"] == ["started"])
        sock.close()  # SO_LINGER 0: a reset
        await until(lambda: seen["polls"] == ["started", "cancelled"])
        await until(lambda: runner.cap.open == 0)

    run(main)


def test_a_413_to_a_client_already_gone_closes_without_an_error(caplog) -> None:
    """After a 413 the server half-closes (``write_eof``); when the client is gone already
    that raised ``OSError: [Errno 107] Transport endpoint is not connected`` out of the
    connection's task ("Task exception was never retrieved", a traceback in the log)."""
    import errno
    import gc

    async def main(runner: Runner, seen: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        await until(lambda: len(runner.http.connections) == 1)
        [conn] = runner.http.connections

        def write_eof() -> None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

        conn.transport.write_eof = write_eof
        writer.write(b"PUT /echo/big HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n")
        [(status, _, _)] = responses(await asyncio.wait_for(reader.read(-1), 5))
        writer.close()
        assert status == 413
        await until(lambda: not runner.http.connections)
        gc.collect()
        assert errors == []

    run(main)
