"""No input kills the group (issue 13), the API's share: KV keys with dot or empty segments,
forwarding that keeps the path as it came, and requests the HTTP parser refuses.

Before: ``PUT /v1/kv/h/a/../other`` stored ``h/a/../other`` through the leader and
``h/other`` through a follower (the forwarded URL was a string, parsed and normalized again);
a request line over 8190 bytes, a ``\\xff`` in a path or bytes that are not HTTP logged an
ERROR with a ten-line traceback on ``aiohttp.server``, per request, from anyone.

In-process: the API of ``server/api.py`` over stub agents (no Raft); the real group is in
tests/chaos/test_hostile.py (``dot_dot_keys``, ``malformed_http_requests``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from harness import API_PORT, lease_subnet
from hypothesis import given, settings
from hypothesis import strategies as st

from hafleet_agent.ids import MEMBER_ID_PATTERN
from hafleet_agent.keys import DRAINED_PREFIX, OVERRIDE_PREFIX, REGISTERED_KEY
from hafleet_agent.server import build_app, start_api, web
from hafleet_agent.server.api import KEY_RULE, key_segment_error
from hafleet_agent.server.conn import Runner, serve
from hafleet_agent.state import StateMachine, encode_command, validate_key
from hafleet_agent.throttle import WarnThrottle

TOKEN = "t" * 40
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


# ---- the key rule ---------------------------------------------------------------------------

GOOD_KEYS = ["a", "a/b", "a.b/c..d/...", ".a/b.", "a b/ç", "balancer/drained/n1", "x" * 512]
BAD_KEYS = ["a/../b", "../x", "..", ".", "./a", "a/.", "a/..", "a//b", "/a", "a/", "/", "a/./b"]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_keys_without_dot_or_empty_segments_fit(key: str) -> None:
    assert key_segment_error(key) is None


@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_dot_dot_dot_or_empty_segment_is_refused_with_the_rule(key: str) -> None:
    error = key_segment_error(key)
    assert error is not None and error.endswith(KEY_RULE) and repr(key) in error


@given(st.from_regex(MEMBER_ID_PATTERN, fullmatch=True))
@settings(max_examples=300, deadline=None)
def test_the_keys_the_agent_and_the_balancer_write_fit_the_rule(member_id: str) -> None:
    """``balancer/registered``, ``balancer/drained/<id>``, ``weights/override/<id>``: a
    member id starts with a letter or digit, so it is never ``.`` or ``..``."""
    for key in (REGISTERED_KEY, DRAINED_PREFIX + member_id, OVERRIDE_PREFIX + member_id):
        assert validate_key(key) == key
        assert key_segment_error(key) is None, key


def test_the_override_prefix_is_the_agents() -> None:
    from hafleet_agent.node import chores

    assert chores.OVERRIDE_PREFIX == OVERRIDE_PREFIX


# ---- in-process API -------------------------------------------------------------------------


class Stub:
    """What server/api.py uses of an Agent for the KV routes: a real StateMachine, no Raft."""

    def __init__(self, *, leader_api: str | None = None, bind: str = "127.0.0.1") -> None:
        self.cfg = SimpleNamespace(
            max_body_bytes=1 << 20, quota_bytes=0, bind=bind, api_port=API_PORT, tls=None
        )
        self.token = TOKEN.encode()
        self.id = "n2"
        self.state = StateMachine()
        self._leader_api = leader_api
        self.leader_asked = 0

    def store(self, key: str, value: Any) -> None:
        """A key as an older version may have stored it (no check of the API's)."""
        res = self.state.apply(self.state.index + 1, encode_command("kv_put", key=key, value=value))
        assert res.ok, res.error

    def is_leader(self) -> bool:
        return self._leader_api is None

    def raft_status(self) -> Any:
        """Enough of a BasicStatus for /v1/health (server/health.py): a leader known."""
        return SimpleNamespace(
            voters={self.id},
            learners=set(),
            lead=self.id,
            term=1,
            commit=self.state.index,
            in_config=lambda nid: nid == self.id,
        )

    def leader_silence(self) -> float | None:
        return None  # it leads (raft_status above)

    def leader_api(self) -> str | None:
        self.leader_asked += 1
        return self._leader_api

    def write_timeout(self) -> float:
        return 2.0

    async def write(self, data: bytes, on_applied: Any = None) -> dict[str, Any]:
        res = self.state.apply(self.state.index + 1, data)
        assert res.ok, res.error
        if on_applied is not None:  # as the driver does: at the apply, before the return
            on_applied(res)
        return res.result or {}

    async def read_barrier(self) -> None:
        return None


async def raw(host: str, port: int, request: bytes, source: str | None = None) -> tuple[int, Any]:
    """Send bytes as they are (an HTTP client would normalize ``..`` or refuse ``\\xff``);
    the status and the body (JSON when it parses)."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def request(method: str, path: bytes, body: bytes | None = None) -> bytes:
    head = method.encode() + b" " + path + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n" + AUTH
    if body is None:
        return head + b"\r\n"
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


async def serving(app: web.Application, host: str = "127.0.0.1") -> tuple[Runner, int]:
    runner = await serve(app, host, 0)
    return runner, runner.port


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())


BAD_PATHS = [
    b"/v1/kv/h/a/../other",
    b"/v1/kv/h/a/%2E%2E/other",
    b"/v1/kv/h/./other",
    b"/v1/kv/../x",
    b"/v1/kv/h//other",
    b"/v1/kv/h/other/",
    b"/v1/kv/h%2F..%2Fother",  # one segment for the router, '..' once decoded
]


def test_a_follower_refuses_dot_segments_before_forwarding() -> None:
    """Through a follower, a put, get or delete of a key with a dot or empty segment is a
    400 stating the rule; the leader is not even looked up, nothing is stored."""
    follower = Stub(leader_api="127.0.0.1:9")  # nobody listens: a forward would be a 503

    async def main() -> None:
        app, _ = build_app(follower)  # type: ignore[arg-type]
        runner, port = await serving(app)
        try:
            for path in BAD_PATHS:
                for method, body in (("PUT", b'{"value": 1}'), ("GET", None), ("DELETE", None)):
                    status, answer = await raw("127.0.0.1", port, request(method, path, body))
                    assert status == 400, (method, path, status, answer)
                    assert answer["error"].endswith(KEY_RULE), answer
        finally:
            await runner.cleanup()

    run(main)
    assert follower.leader_asked == 0
    assert follower.state.kv_keys("") == []


def test_the_leader_refuses_them_too_and_stores_the_others_as_written() -> None:
    leader = Stub()

    async def main() -> None:
        app, _ = build_app(leader)  # type: ignore[arg-type]
        runner, port = await serving(app)
        try:
            for path in BAD_PATHS:
                status, answer = await raw("127.0.0.1", port, request("PUT", path, b'{"value":1}'))
                assert status == 400 and answer["error"].endswith(KEY_RULE), (path, answer)
            status, answer = await raw(
                "127.0.0.1", port, request("PUT", b"/v1/kv/h/a.b/..c", b'{"value": 2}')
            )
            assert (status, answer["key"]) == (200, "h/a.b/..c"), answer
        finally:
            await runner.cleanup()

    run(main)
    assert leader.state.kv_keys("") == ["h/a.b/..c"]


def test_a_method_the_path_does_not_take_is_405_with_allow() -> None:
    """RFC 9110: a 405 names the methods the path takes (review h9: the JSON error had no
    Allow header)."""
    leader = Stub()

    async def main() -> None:
        app, _ = build_app(leader)  # type: ignore[arg-type]
        runner, port = await serving(app)
        try:
            for method, path in (("PATCH", b"/v1/status"), ("OPTIONS", b"/ui/")):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request(method, path))
                data = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                head = data.partition(b"\r\n\r\n")[0].decode().lower()
                assert head.startswith("http/1.1 405"), head
                allow = next(h for h in head.split("\r\n") if h.startswith("allow:"))
                assert "get" in allow, head
        finally:
            await runner.cleanup()

    run(main)


@pytest.mark.parametrize("text", ["\u202eevil:80", "a\u200bb:80", "x\ny:80", "web\x1b[2J:80"])
def test_addresses_and_reasons_with_control_or_format_characters_are_refused(text: str) -> None:
    """Review h9: a bidi override or an escape in a member's address or a maintenance reason
    reached ``hafleet-agent status`` and ``members`` raw; the API refuses them (400)."""
    leader = Stub()

    async def main() -> None:
        app, _ = build_app(leader)  # type: ignore[arg-type]
        runner, port = await serving(app)
        try:
            for field in ("service_addr", "api_addr", "raft_addr"):
                body = {"id": "n9", "raft_addr": "10.0.0.9:7400", "api_addr": "10.0.0.9:7480"}
                body[field] = text
                status, answer = await raw(
                    "127.0.0.1", port, request("POST", b"/v1/members", json.dumps(body).encode())
                )
                assert status == 400 and "control or format" in answer["error"], (field, answer)
            reason = json.dumps({"reason": text}).encode()
            status, answer = await raw(
                "127.0.0.1", port, request("PUT", b"/v1/members/n2/maintenance", reason)
            )
            assert status == 400 and "control or format" in answer["error"], answer
        finally:
            await runner.cleanup()

    run(main)


def test_a_follower_forwards_the_path_as_it_came() -> None:
    """The forwarded URL is the raw, still encoded path and query: ``%2F`` stays in the
    segment, and a key an older version stored with ``..`` in it is deleted under that key
    (the path used to be parsed again, and ``old/../key`` became ``key``)."""
    seen: list[str] = []

    async def leader_handler(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"key": request.match_info["key"], "ok": True})

    leader_app = web.Application()
    leader_app.router.add_route("*", "/v1/kv/{key:.+}", leader_handler)

    async def main() -> None:
        lrunner, lport = await serving(leader_app)
        follower = Stub(leader_api=f"127.0.0.1:{lport}")
        follower.store("old/../key", "legacy")
        app, _ = build_app(follower)  # type: ignore[arg-type]
        frunner, fport = await serving(app)
        try:
            status, answer = await raw("127.0.0.1", fport, request("GET", b"/v1/kv/old/../key"))
            assert (status, answer["value"]) == (200, "legacy"), answer
            status, answer = await raw("127.0.0.1", fport, request("DELETE", b"/v1/kv/old/../key"))
            assert (status, answer["key"]) == (200, "old/../key"), answer
            status, answer = await raw(
                "127.0.0.1", fport, request("PUT", b"/v1/kv/a%2Fb%20c?cas=0", b'{"value": 1}')
            )
            assert (status, answer["key"]) == (200, "a/b c"), answer
        finally:
            await frunner.cleanup()
            await lrunner.cleanup()

    run(main)
    assert seen == ["/v1/kv/old/../key", "/v1/kv/a%2Fb%20c?cas=0"]


# ---- requests the HTTP parser refuses -------------------------------------------------------

MALFORMED = [
    b"PUT /v1/kv/" + b"k" * 10_240 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\nHost: h\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /v1/kv/\xff HTTP/1.1\r\nHost: h\r\n\r\n",
    b"\x00\x01\x02 not http\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\nHost: h\r\nBad\x01Header: x\r\n\r\n",
]


def test_malformed_requests_are_a_json_400_and_one_log_line_per_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three rounds of every malformed request from one address, then one from a second
    address: each is answered ``400 {"error": "malformed HTTP request: ..."}`` and the
    connection closed; the API logs one warning line per address (no traceback, nothing
    on ``aiohttp.server``), and still serves."""
    lease = lease_subnet(2)
    host, other = f"127.0.{lease.x}.1", f"127.0.{lease.x}.2"
    agent = Stub(bind=host)

    async def main() -> None:
        runner = await start_api(agent)  # type: ignore[arg-type]
        try:
            for _ in range(3):
                for data in MALFORMED:
                    status, answer = await raw(host, API_PORT, data, source=host)
                    assert status == 400, (data[:40], status, answer)
                    assert answer["error"].startswith("malformed HTTP request: "), answer
                    assert len(answer["error"]) < 260, answer
            status, answer = await raw(host, API_PORT, MALFORMED[3], source=other)
            assert status == 400, answer
            status, answer = await raw(host, API_PORT, request("GET", b"/v1/health"))
            assert status == 200, answer
        finally:
            await runner.cleanup()

    try:
        with caplog.at_level(logging.DEBUG):
            run(main)
    finally:
        lease.release()
    assert not [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= 30]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    lines = [r.getMessage() for r in caplog.records if r.name == "hafleet.api"]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"API: malformed HTTP request from {host}, answered 400: ")
    assert lines[1].startswith(f"API: malformed HTTP request from {other}, answered 400: ")
    assert all("\n" not in line and len(line) < 300 for line in lines), lines


# ---- the throttle ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_logs_one_line_per_source_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttle = WarnThrottle(logging.getLogger("test.throttle"), 10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        assert throttle.warn("10.0.0.1", "bad from %s", "10.0.0.1")
        for _ in range(5):
            clock.now += 1
            assert not throttle.warn("10.0.0.1", "bad from %s", "10.0.0.1")
        assert throttle.warn("10.0.0.2", "bad from %s", "10.0.0.2")  # another source
        clock.now += 5.5  # 10.5 s after the first line
        assert throttle.warn("10.0.0.1", "bad from %s", "10.0.0.1")
        clock.now += 10
        assert throttle.warn("10.0.0.1", "bad from %s", "10.0.0.1")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "bad from 10.0.0.1",
        "bad from 10.0.0.2",
        "bad from 10.0.0.1 (5 more from 10.0.0.1 in the 10s before were not logged)",
        "bad from 10.0.0.1",
    ]
    assert throttle.held_total == 5


def test_the_throttle_remembers_a_bounded_number_of_sources(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past max_sources addresses within one interval, the others share one entry: a
    flood from many addresses is still one line per interval for all of them."""
    clock = Clock()
    throttle = WarnThrottle(logging.getLogger("test.throttle"), 10.0, max_sources=4, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        logged = [throttle.warn(f"10.0.1.{i}", "bad") for i in range(100)]
    assert logged.count(True) == 5  # four sources, then "other sources" once
    assert len(throttle._last) == 5 and "other sources" in throttle._last
    clock.now += 10
    assert throttle.warn("10.0.2.1", "bad")  # the stale entries are dropped for a new one
    assert len(throttle._last) == 1
