"""No input kills the group (issue 13): bad member ids, unappliable committed entries, hostile
API requests and idle connections, against real ``hafleet-agent run`` processes.

The bad inputs of the issue: ``POST /v1/members`` with id ``web 1`` made each leader exit
within seconds, an id over 255 bytes crashed it at once and again at every restart (the entry
replays), an id with a newline forged a log line, a non-UTF-8 Authorization header and a
deeply nested body answered 500 with a traceback.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    API_PORT,
    RAFT_PORT,
    Cluster,
    agent_command,
    founded_cluster,
    holds_for,
    refused_idle_connections,
    wait_for,
)

from hafleet_agent.ids import MEMBER_ID_PATTERN

MakeCluster = Callable[..., Cluster]

BAD_IDS: list[Any] = [
    "web 1",
    "x" * 300,
    "a\nINFO hafleet.agent: forged line",
    "-web",
    "web/1",
    "é",
    "",
    7,
    None,
]
FORGED = re.compile(r"^INFO hafleet\.agent: forged line", re.MULTILINE)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with founded_cluster(tmp_path_factory.mktemp("bad-input")) as c:
        yield c


def _members(c: Cluster) -> list[str]:
    return sorted(m["id"] for m in c.ok(c.leader(), "GET", "/v1/members"))


def _no_traceback_nor_forgery(c: Cluster) -> None:
    for node in c.nodes.values():
        text = node.log()
        assert "Traceback" not in text, f"{node.id} logged a traceback:\n{text[-3000:]}"
        assert not FORGED.search(text), f"{node.id} logged a forged line"


def _raw_request(host: str, request: bytes, timeout: float = 10.0) -> tuple[int, Any]:
    """Send bytes as they are (http.client would refuse or re-encode some); the status and
    the JSON body of the answer."""
    with socket.create_connection((host, API_PORT), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None


# ---- member ids -----------------------------------------------------------------------------


def test_bad_member_ids_are_400_with_the_rule_and_nothing_is_proposed(cluster: Cluster) -> None:
    c = cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)
    before = _members(c)
    spare = c.host(12)
    for nid in (lead, follower):
        for bad in BAD_IDS:
            body = {"id": bad, "raft_addr": f"{spare}:{RAFT_PORT}", "api_addr": f"{spare}:7480"}
            status, payload = c.api(nid, "POST", "/v1/members", body)
            assert status == 400, (nid, bad, status, payload)
            assert MEMBER_ID_PATTERN in payload["error"], payload
            if bad is not None:  # null means "any voter" for a transfer
                status, payload = c.api(nid, "POST", "/v1/leadership/transfer", {"to": bad})
                assert status == 400, (nid, bad, status, payload)
                assert MEMBER_ID_PATTERN in payload["error"], payload
            if isinstance(bad, str) and bad:
                path = "/v1/members/" + urllib.parse.quote(bad, safe="")
                status, payload = c.api(nid, "DELETE", path)
                assert status == 400, (nid, bad, status, payload)
                assert MEMBER_ID_PATTERN in payload["error"], payload
    # Nothing was proposed: every agent stays up, with the same members and leader.
    holds_for(lambda: all(n.running() for n in c.nodes.values()), 3.0, "every agent running")
    assert _members(c) == before
    assert c.leader() == lead
    _no_traceback_nor_forgery(c)


def test_a_bad_node_id_is_refused_at_startup_with_the_rule(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    node = c.add("n1", start=False)
    for bad in ["web 1", "x" * 300, "-web", "web\n1"]:
        argv = list(node.argv)
        at = argv.index("--node-id")
        argv[at : at + 2] = [f"--node-id={bad}"]  # (a value may start with '-')
        result = c.cli(*argv[len(agent_command()) :], timeout=60)
        assert result.returncode == 2, (bad, result.returncode, result.stderr)
        assert MEMBER_ID_PATTERN in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not node.data_dir.exists()


# ---- hostile requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [b"Bearer \xff\xfe\xfd", b"Bearer \xc3", b"\xff\xff \xff", b"Bearer " + b"\xe9" * 64],
    ids=["ff-fe", "truncated-utf8", "scheme", "latin1-token"],
)
def test_an_undecodable_authorization_header_is_401_json(cluster: Cluster, auth: bytes) -> None:
    c = cluster
    for nid in c.nodes:
        host = c.node(nid).host
        for method, path in [("GET", "/v1/status"), ("PUT", "/v1/kv/auth-bytes")]:
            body = b'{"value": 1}' if method == "PUT" else b""
            request = (
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
                + b"Authorization: "
                + auth
                + b"\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            status, payload = _raw_request(host, request)
            assert status == 401, (nid, auth, status, payload)
            assert "token" in payload["error"]
    assert c.get(c.leader(), "auth-bytes")[0] == 404
    _no_traceback_nor_forgery(c)


@pytest.mark.parametrize("depth", [65, 1000, 200_000])
def test_a_deeply_nested_body_is_400(cluster: Cluster, depth: int) -> None:
    c = cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)
    nested = "[" * depth + "]" * depth
    cases = [
        ("PUT", "/v1/kv/deep", f'{{"value": {nested}}}'),
        ("POST", "/v1/members", f'{{"id": {nested}, "raft_addr": "h:1", "api_addr": "h:2"}}'),
        ("POST", "/v1/leadership/transfer", f'{{"to": {nested}}}'),
    ]
    for nid in (lead, follower):
        for method, path, raw in cases:
            status, payload = c.api(nid, method, path, raw=raw.encode())
            expect = 413 if len(raw) > (1 << 20) else 400
            assert status == expect, (nid, method, path, depth, status, payload)
            assert payload["error"]
    assert c.get(lead, "deep")[0] == 404
    # 64 levels are fine
    ok = "[" * 63 + "1" + "]" * 63
    assert c.ok(follower, "PUT", "/v1/kv/deep", raw=f'{{"value": {ok}}}'.encode())["key"] == "deep"
    c.ok(lead, "DELETE", "/v1/kv/deep")
    _no_traceback_nor_forgery(c)


def test_unknown_routes_and_methods_answer_json(cluster: Cluster) -> None:
    c = cluster
    lead = c.leader()
    for method, path, want in [
        ("GET", "/v1/nothing-here", 404),
        ("PATCH", "/v1/kv/x", 405),
        ("GET", "/v1/watch?index=abc", 400),
        ("GET", "/v1/watch?wait=forever", 400),
        ("DELETE", "/v1/members/%ff%fe", 400),
    ]:
        status, payload = c.api(lead, method, path)
        assert status == want, (method, path, status, payload)
        assert isinstance(payload, dict) and payload["error"], payload
    _no_traceback_nor_forgery(c)


# ---- committed entries the state cannot apply -----------------------------------------------

INJECT = Path(__file__).with_name("inject_agent.py")


def test_unappliable_entries_are_noops_and_every_member_survives_a_restart(
    make_cluster: MakeCluster,
) -> None:
    c = make_cluster()
    nodes = c.add_many(3, bootstrap_expect=3, start=False)
    normal_argv = list(nodes[0].argv)
    nodes[0].argv = [sys.executable, str(INJECT)] + normal_argv[len(agent_command()) :]
    for n in nodes:
        c.start(n)
    c.wait_agreed()
    lead = c.leader()
    if lead != "n1":
        c.ok(lead, "POST", "/v1/leadership/transfer", {"to": "n1"})

    def injected() -> Any:
        for nid in c.nodes:
            status, item = c.get(nid, "inject/done", stale=True)
            if status == 200:
                return item["value"]
        return None

    results = c.wait_for(injected, 90, "the injected entries to be applied")
    from inject_agent import BAD_ENTRIES

    assert sorted(results) == sorted(name for name, _, _ in BAD_ENTRIES)
    for name, (index, status) in results.items():
        assert status == 400 and index > 0, (name, index, status)
    # Every member applied them (one log line each, the data escaped) and stays up.
    for node in nodes:
        log = node.log()
        assert log.count("applied as a no-op") >= len(BAD_ENTRIES), node.id
    holds_for(lambda: all(n.running() for n in nodes), 3.0, "every agent running")
    assert _members(c) == ["n1", "n2", "n3"]
    # and keeps serving writes, through any member
    for n in nodes:
        assert c.put(n.id, f"after/{n.id}", n.id)["value"] == n.id
    _no_traceback_nor_forgery(c)

    # Restart every member: each replays the bad entries from its log (or a snapshot).
    for n in nodes:
        c.term(n)
    for n in nodes:
        assert c.wait_exit(n, timeout=30) == 0, c.logs_tail()
    nodes[0].argv = normal_argv
    for n in nodes:
        c.restart(n)
    c.wait_agreed()
    for n in nodes:
        c.wait_for(
            lambda n=n: c.get(n.id, "after/n3", stale=True)[0] == 200,
            30,
            f"{n.id} to have applied its log again",
        )
        assert c.put(n.id, f"again/{n.id}", 1)["value"] == 1
    holds_for(lambda: all(n.running() for n in nodes), 3.0, "every agent running")
    assert _members(c) == ["n1", "n2", "n3"]
    assert c.get(c.leader(), "deep")[0] == 404
    _no_traceback_nor_forgery(c)


# ---- idle connections -----------------------------------------------------------------------


def test_idle_connections_do_not_eat_every_descriptor(make_cluster: MakeCluster) -> None:
    """300 idle connections to an agent limited to 256 descriptors: the connections over the
    cap are answered 503 and closed, the agent stays up, and it answers /v1/health and takes
    writes once they are gone."""
    c = make_cluster()
    node = c.add("n1", bootstrap_expect=1, start=False)
    node.argv = ["prlimit", "--nofile=256"] + node.argv
    c.start(node)
    c.wait_agreed()
    # The agent answers those over the cap (a quarter of 256) with a 503 and closes them, one
    # after the other; the ones within the cap stay open and idle.
    socks, answered, refusals = refused_idle_connections(
        node.host, API_PORT, 300, 64, 30, check=c.check_alive
    )
    try:
        assert all(a.startswith(b"HTTP/1.1 503") for a in answered.values()), set(answered.values())
        holds_for(node.running, 2.0, "the agent running with 300 connections open")
        refusals()
        assert len(answered) == 300 - 64, len(answered)  # the 64 within the cap: no answer
    finally:
        for s in socks:
            s.close()
    wait_for(
        lambda: c.api(node, "GET", "/v1/health", token=None)[0] == 200,
        20,
        "/v1/health once the idle connections closed",
        check=c.check_alive,
    )
    assert c.put(node.id, "fd/after", 1)["value"] == 1
    assert "Too many open files" not in node.log()
    _, metrics = c.api(node, "GET", "/metrics")
    gauges = dict(
        line.split() for line in metrics.splitlines() if line.startswith("hafleet_api_connections")
    )
    assert float(gauges["hafleet_api_connections_max"]) == 64  # a quarter of 256
    assert float(gauges["hafleet_api_connections_refused_total"]) >= 300 - 64
    assert float(gauges["hafleet_api_connections"]) <= 2  # the closed ones were counted out
    _no_traceback_nor_forgery(c)


def test_limits_are_reported_in_metrics(cluster: Cluster) -> None:
    status, text = cluster.api(cluster.leader(), "GET", "/metrics")
    assert status == 200
    max_line = re.search(r"^hafleet_api_connections_max (\S+)$", text, re.MULTILINE)
    assert max_line and float(max_line.group(1)) >= 8, text[-2000:]
    assert re.search(r"^hafleet_api_connections \d", text, re.MULTILINE)


def test_the_refusal_is_well_formed() -> None:
    from hafleet_agent.server.conn import _REFUSAL

    head, _, body = _REFUSAL.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert length == len(body) and json.loads(body)["error"]


def test_an_idle_connection_is_closed_after_the_keepalive_timeout(cluster: Cluster) -> None:
    """aiohttp's default keeps an idle connection for an hour; the agent closes it after
    KEEPALIVE_S (30 s), whether it sent a request or nothing at all."""
    from hafleet_agent.server.conn import KEEPALIVE_S

    host = cluster.node(cluster.leader()).host
    with (
        socket.create_connection((host, API_PORT), timeout=KEEPALIVE_S + 15) as silent,
        socket.create_connection((host, API_PORT), timeout=KEEPALIVE_S + 15) as used,
    ):
        used.sendall(f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        opened = time.monotonic()
        assert used.recv(65536).startswith(b"HTTP/1.1 200")
        assert silent.recv(1) == b""  # closed by the agent (a timeout raises instead)
        assert used.recv(1) == b""
        took = time.monotonic() - opened
    assert KEEPALIVE_S - 1 <= took <= KEEPALIVE_S + 10, took


def test_a_bug_in_a_handler_is_one_log_line_and_a_json_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In-process: a handler that raises answers ``{"error": "internal error (...)"}`` with
    500 and logs one line, with the path escaped; no traceback reaches the client."""
    import asyncio
    import logging
    from types import SimpleNamespace

    import aiohttp

    from hafleet_agent.server import build_app
    from hafleet_agent.server.conn import serve

    token = "t" * 40
    agent = SimpleNamespace(cfg=SimpleNamespace(max_body_bytes=1 << 20), token=token.encode())

    async def boom(request: Any) -> Any:
        raise RuntimeError("a bug\nINFO hafleet.agent: forged line")

    async def main() -> tuple[int, Any, str]:
        app, _ = build_app(agent)  # type: ignore[arg-type]
        app.router.add_get("/v1/boom/{x}", boom)
        runner = await serve(app, "127.0.0.1", 0)
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"http://127.0.0.1:{runner.port}/v1/boom/a%0Ab",
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp,
            ):
                return resp.status, await resp.json(), resp.headers.get("Content-Type", "")
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.INFO, logger="hafleet.api"):
        status, body, ctype = asyncio.run(main())
    assert (status, body) == (500, {"error": "internal error (RuntimeError)"})
    assert ctype.startswith("application/json")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    line = errors[0].getMessage()
    assert "\n" not in line and "RuntimeError" in line and "forged" in line


def test_a_member_an_older_version_let_in_can_still_be_removed(tmp_path: Path) -> None:
    """In-process: an id outside the grammar in the Raft configuration, with no record in
    the member table (what a snapshot of an older version can leave), is removed by DELETE;
    the same id that is not in the configuration is a 400."""
    import asyncio

    import aiohttp
    from harness import lease_subnet

    from hafleet_agent.config import AgentConfig
    from hafleet_agent.node.node import Node
    from hafleet_agent.raft.types import ConfChange, ConfChangeType
    from hafleet_agent.run import serve_api

    lease = lease_subnet(1)
    host = f"127.0.{lease.x}.1"
    token = "t" * 40
    cfg = AgentConfig(
        node_id="n1",
        cluster="legacy",
        bind=host,
        data_dir=str(tmp_path / "n1"),
        bootstrap_expect=1,
        mdns=False,
        heartbeat_ms=50,
        election_timeout_ms=300,
    )
    agent = Node(cfg, b"k" * 40, token.encode())

    async def main() -> None:
        await agent.start(serve=serve_api(agent))
        try:
            r = agent.raw.raft
            for _ in range(400):
                # A new leader's own entry holds conf changes back until it applies (a DELETE
                # sent earlier is a 503 "a configuration change is pending").
                if (
                    agent.is_leader()
                    and agent.state.member("n1")
                    and r.pending_conf_index <= r.log.applied
                ):
                    break
                await asyncio.sleep(0.05)
            assert agent.is_leader()
            assert r.pending_conf_index <= r.log.applied
            agent.raw.raft.apply_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "web 1"))
            auth = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession() as http:
                url = f"http://{host}:{API_PORT}/v1/members/"
                async with http.delete(url + "web%202", headers=auth) as r:
                    assert r.status == 400, await r.text()
                # The leader's chores may have a configuration change of their own in flight
                # (a 503 "a configuration change is pending", retried as a client would).
                deadline = asyncio.get_running_loop().time() + 10
                while True:
                    async with http.delete(url + "web%201", headers=auth) as r:
                        text = await r.text()
                        pending = r.status == 503 and "pending" in text
                        if not pending or asyncio.get_running_loop().time() > deadline:
                            assert r.status == 200, text
                            assert (await r.json())["removed"] is True
                            break
                    await asyncio.sleep(0.1)
            assert "web 1" not in agent.raw.raft.learners
            assert [m["id"] for m in agent.state.members()] == ["n1"]
        finally:
            await agent.stop(handover=False)

    try:
        asyncio.run(main())
    finally:
        lease.release()


# ---- numbers and addresses past what the agent can hold (a hostile review) -------------------


def test_integers_past_pythons_digit_limit_are_400(cluster: Cluster) -> None:
    # json.loads raises a plain ValueError (not JSONDecodeError) past 4300 digits: it was a
    # 500 "internal error (ValueError)" on every route with a JSON body.
    c = cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)
    for nid in (lead, follower):
        raw = b'{"value": 1' + b"0" * 5000 + b"}"
        status, payload = c.api(nid, "PUT", "/v1/kv/digits", raw=raw)
        assert status == 400, (nid, status, payload)
        assert "more than 4300 digits" in payload["error"], payload
    assert c.get(lead, "digits")[0] == 404
    _no_traceback_nor_forgery(c)


def test_a_registration_with_a_huge_number_breaks_neither_status_nor_removal(
    cluster: Cluster,
) -> None:
    # float(10**400) raised OverflowError: /v1/status answered 500 on every member, and a
    # removal (which reads the registrations' ttl_s) failed.
    c = cluster
    lead = c.leader()
    key = "balancer/registered/huge"
    huge = 10**400
    c.ok(lead, "PUT", f"/v1/kv/{key}", {"value": {"at": huge, "ttl_s": huge, "host": "h"}})
    try:
        for nid in c.nodes:

            def shown(n: str = nid) -> list[dict[str, Any]]:
                st = c.status(n)  # None while it answers 500
                return [b for b in (st or {}).get("balancers", []) if b["id"] == "huge"]

            view = wait_for(shown, 10, f"{nid}'s status showing the registration")
            assert view[0]["last_seen_s"] is None and view[0]["fresh"] is False, view
        spare = c.host(13)
        c.ok(
            lead,
            "POST",
            "/v1/members",
            {"id": "huge-spare", "raft_addr": f"{spare}:{RAFT_PORT}", "api_addr": f"{spare}:7480"},
        )
        removed = c.ok(lead, "DELETE", "/v1/members/huge-spare?drain_timeout=0s")
        assert removed["removed"] is True, removed
    finally:
        c.ok(lead, "DELETE", f"/v1/kv/{key}")
    _no_traceback_nor_forgery(c)


@pytest.mark.parametrize(
    "cas", ["1_0", "+0", "%20" + "5", "%D9%A0", "18446744073709551616", "9" * 5000]
)
def test_query_integers_are_ascii_digits_up_to_2_64(cluster: Cluster, cas: str) -> None:
    # int() took underscores, a sign, spaces and other scripts' digits; 2^64 was a 409.
    c = cluster
    status, payload = c.api(c.leader(), "PUT", f"/v1/kv/casq?cas={cas}", {"value": 1})
    assert status == 400, (cas, status, payload)
    assert "cas must be" in payload["error"] and len(payload["error"]) < 300, payload
    assert c.get(c.leader(), "casq")[0] == 404


@pytest.mark.parametrize("drain", ["9" * 400, "3601s", "61m", "1e3", "-1s"])
def test_a_drain_timeout_past_an_hour_is_400(cluster: Cluster, drain: str) -> None:
    # 400 nines parsed to infinity, and a removal waited without end.
    c = cluster
    status, payload = c.api(c.leader(), "DELETE", f"/v1/members/nobody-here?drain_timeout={drain}")
    assert status == 400, (drain, status, payload)
    assert "drain_timeout" in payload["error"] and len(payload["error"]) < 300, payload


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("a" * 100_000 + ":1", "must be HOST:PORT"),
        ("a" * 64 + ".example:7400", "a DNS label over 63 characters in"),
        ("host.example:0", "must be HOST:PORT"),
        ("[not-v6]:7400", "must be HOST:PORT"),
    ],
)
def test_a_member_address_that_no_host_can_have_is_400(
    cluster: Cluster, addr: str, why: str
) -> None:
    # A 100,000-byte address was taken: every member then logged it at each connection try.
    c = cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)
    before = _members(c)
    for nid in (lead, follower):
        body = {"id": "far-away", "raft_addr": addr, "api_addr": f"{c.host(14)}:7480"}
        status, payload = c.api(nid, "POST", "/v1/members", body)
        assert status == 400, (nid, status, str(payload)[:200])
        assert why in payload["error"] and len(payload["error"]) < 400, payload["error"][:400]
    assert _members(c) == before


def test_a_client_sent_forwarded_header_is_told_who_leads(cluster: Cluster) -> None:
    c = cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)
    status, payload = c.api(
        follower, "PUT", "/v1/kv/fwd", {"value": 1}, headers={"X-Hafleet-Forwarded": "evil"}
    )
    assert status == 503, (status, payload)
    assert f"({lead} leads)" in payload["error"] and "not proposed" in payload["error"], payload
