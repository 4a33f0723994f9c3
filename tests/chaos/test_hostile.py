"""No input kills the group (issue 13): one real 3-member group on loopback takes every
hostile input of the table below, one case after the other, while a background writer puts
keys through every member and records each write the group acknowledged.

After each case: the answer was a 4xx (or the frame was dropped, or the connection closed),
every member still runs, and the group takes a write through every member. At the end:
every acknowledged write reads back with its value, and after every member was killed
(SIGKILL) and started again the group has a leader within RESTART_BOUND_S and serves writes.

The group: harness.Cluster (tests/support/harness.py) on a leased 127.0.X.0/24, n3
started under ``prlimit --nofile=256`` (its API connection cap is then 64), every member with
``quota_bytes = QUOTA``. A forged mDNS record is the one input not repeated here:
tests/agent/cluster/test_forged_mdns.py founds fresh groups next to a forger on loopback.
docs/reliability.md ("Hostile input") is this table with what each case observed.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hostile import (
    API_PORT,
    RAFT_PORT,
    Cluster,
    Flood,
    KeyHolder,
    PeerClosed,
    Writer,
    holds_for,
    log_lines,
    memory,
    new_log,
    raw_http,
    refused_idle_connections,
    wait_for,
)

from hafleet_agent.codec import encode_message
from hafleet_agent.ids import MEMBER_ID_PATTERN
from hafleet_agent.raft.types import Entry, Message, MessageType

pytestmark = pytest.mark.timeout(240)

NOFILE = 256  # n3's descriptor limit: its API takes at most a quarter, 64 connections
API_CAP = NOFILE // 4
QUOTA = 2_000_000  # quota_bytes of every member
MiB = 1 << 20
RSS_BOUND = 200 * MiB  # what one hostile frame may add to a member's peak memory
WARNINGS_BOUND = 200  # warning lines all members together may log during the flood
RESTART_BOUND_S = 20.0  # from the last member started again to an agreed leader
WAIT = 20.0  # bound of the other waits


@dataclass
class Group:
    cluster: Cluster
    key: bytes
    cid: str
    writer: Writer

    def holder(self, target: str, name: str, **kw: Any) -> KeyHolder:
        """An authenticated peer ``name`` (it proves the cluster key) connected to
        ``target``; it advertises an address of the lease where nothing listens."""
        c = self.cluster
        return KeyHolder(
            c.node(target).host,
            self.key,
            node_id=name,
            cluster=c.name,
            cluster_id=self.cid,
            advertise=f"{c.host(13)}:{RAFT_PORT}",
            **kw,
        )

    def lead_and_follower(self) -> tuple[str, str]:
        lead = self.cluster.leader()
        return lead, next(nid for nid in self.cluster.nodes if nid != lead)

    def members(self) -> list[str]:
        c = self.cluster
        return sorted(m["id"] for m in c.ok(c.leader(), "GET", "/v1/members"))

    def terms(self) -> dict[str, int]:
        return {nid: self.cluster.status(nid)["term"] for nid in self.cluster.nodes}


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    c = Cluster(tmp_path_factory.mktemp("hostile"), config={"quota_bytes": QUOTA})
    writer = Writer(c)
    try:
        nodes = c.add_many(3, bootstrap_expect=3, start=False)
        nodes[2].argv = ["prlimit", f"--nofile={NOFILE}"] + nodes[2].argv
        for node in nodes:
            c.start(node)
        statuses = c.wait_agreed()
        cid = next(iter(statuses.values()))["cluster_id"]
        writer.start()
        yield Group(c, c.key_file.read_bytes().strip(), cid, writer)
    finally:
        writer.stop.set()
        c.close()


def wait_logged(g: Group, nid: str, since: dict[str, int], pattern: str) -> None:
    """Wait until ``nid`` logged a line matching ``pattern`` after ``since``."""
    rx = re.compile(pattern)
    wait_for(
        lambda: any(rx.search(line) for line in new_log(g.cluster, since)[nid]),
        WAIT,
        f"{nid} to log {pattern!r}",
        check=g.cluster.check_alive,
    )


def assert_no_traceback(g: Group) -> None:
    for node in g.cluster.nodes.values():
        assert "Traceback" not in node.log(), f"{node.id} logged a traceback"


# ---- the cases ------------------------------------------------------------------------------

BAD_IDS: list[Any] = ["web 1", "x" * 300, "a\nINFO hafleet.agent: forged", "-x", "", 7, ["n1"]]


def bad_member_ids(g: Group) -> None:
    """POST /v1/members, DELETE /v1/members/{id}, a transfer to a bad id: 400 with the rule,
    through the leader and through a follower; nothing is proposed."""
    c = g.cluster
    lead, follower = g.lead_and_follower()
    before = g.members()
    spare = c.host(12)
    for nid in (lead, follower):
        for bad in BAD_IDS:
            body = {"id": bad, "raft_addr": f"{spare}:{RAFT_PORT}", "api_addr": f"{spare}:7480"}
            answers = [c.api(nid, "POST", "/v1/members", body)]
            answers.append(c.api(nid, "POST", "/v1/leadership/transfer", {"to": bad}))
            if isinstance(bad, str) and bad:
                path = "/v1/members/" + urllib.parse.quote(bad, safe="")
                answers.append(c.api(nid, "DELETE", path))
            for status, payload in answers:
                assert status == 400, (nid, bad, status, payload)
                assert MEMBER_ID_PATTERN in payload["error"], payload
    assert g.members() == before and c.leader() == lead


def raft_terms_far_ahead(g: Group) -> None:
    """Authenticated Raft messages whose term is 2**64-1 (the codec refuses terms above
    2**62) or 2**40 ahead (more than MAX_TERM_JUMP, 2**32): dropped, no member's term
    moves, the leader stays."""
    c = g.cluster
    lead, follower = g.lead_and_follower()
    terms = g.terms()
    ours = max(terms.values())
    since = log_lines(c)
    for target in (lead, follower):
        name = f"evil-term-{target}"

        def msg(kind: MessageType, **kw: Any) -> dict[str, Any]:
            m = Message(kind, to=target, frm=name, **kw)  # noqa: B023 - used at once
            return {"k": "raft", "cid": g.cid, "m": encode_message(m)}

        with g.holder(target, name) as peer:
            peer.send(msg(MessageType.HEARTBEAT, term=(1 << 64) - 1))
            peer.send(msg(MessageType.VOTE, term=ours + (1 << 40), log_term=ours, index=1 << 30))
            peer.send(msg(MessageType.PRE_VOTE, term=(1 << 64) - 1, log_term=(1 << 64) - 1))
            peer.send(
                msg(
                    MessageType.APP,
                    term=ours,
                    log_term=ours,
                    index=1,
                    entries=(Entry(term=ours + (1 << 40), index=2),),
                )
            )
            wait_logged(g, target, since, rf"frame from {name} .*dropped: undecodable Raft")
            wait_logged(g, target, since, rf"frame from {name} .*dropped: term too far ahead")
            assert not peer.closed_by_peer(0.3)  # dropped frames, not a broken connection
    holds_for(lambda: max(g.terms().values()) < ours + 100, 1.0, "every term near where it was")
    assert c.leader() == lead


UNREACHABLE_KINDS: list[Any] = ["frame", "soft_state", "__init__", "_on_frame", "raft_frame"]
UNREACHABLE_KINDS += ["pump", "stop", "adopt_cluster", "", "x" * 5000, 7, None, ["raft"]]


def frames_of_unreachable_kinds(g: Group) -> None:
    """Frames of kinds no peer sends (the agent's own method names among them), frames
    that are no map, frames of real kinds with fields of the wrong type, a Raft message in
    another member's name: each dropped with a (rate-limited) warning; the connection, the
    leader and the terms stay."""
    c = g.cluster
    lead, follower = g.lead_and_follower()
    terms = g.terms()
    since = log_lines(c)
    for target in (lead, follower):
        name = f"evil-kinds-{target}"
        other = next(nid for nid in c.nodes if nid != target)
        impersonated = Message(MessageType.HEARTBEAT, to=target, frm=other, term=terms[target])
        with g.holder(target, name) as peer:
            for kind in UNREACHABLE_KINDS:
                peer.send({"k": kind, "cid": g.cid, "state": 1, "lead": name, "term": 1 << 60})
            for garbage in ([], "hello", 3, {}, {"cid": g.cid}):
                peer.send(garbage)
            wrong = [
                {"k": "join", "info": "me"},
                {"k": "join", "info": {"id": name, "raft_addr": 7, "api_addr": None}},
                {"k": "hello", "info": {"id": [name]}},
                {"k": "hello", "info": {"id": name, "raft_addr": "no port", "api_addr": "h:1"}},
                {"k": "metrics", "metrics": [1, 2]},
                {"k": "metrics", "metrics": {"cpu_count": "8"}},
                {"k": "metrics", "metrics": {str(i): i for i in range(100)}},
                {"k": "metrics_table", "table": [1]},
                {"k": "join_resp", "ok": "yes"},
                {"k": "raft", "m": "text"},
                {"k": "raft", "m": encode_message(impersonated)},
            ]
            for frame in wrong:
                peer.send({"cid": g.cid, **frame})
            peer.send({"k": "hello", "cid": "a cluster id with spaces"})
            for why in ["unknown kind", "malformed frame", "bad join", "bad hello"]:
                wait_logged(g, target, since, rf"frame from {name} .*dropped: {why}")
            for why in ["bad metrics", "bad metrics_table", "bad join_resp", "bad raft"]:
                wait_logged(g, target, since, rf"frame from {name} .*dropped: {why}")
            wait_logged(g, target, since, rf"frame from {name} .*dropped: Raft message of another")
            assert not peer.closed_by_peer(0.3)
    assert c.leader() == lead
    now = g.terms()
    assert all(now[nid] <= terms[nid] + 2 for nid in terms), (terms, now)  # no jump


def join_with_a_bad_member_id(g: Group) -> None:
    """A key holder asks to join (or says hello) under a member id outside the grammar, in
    the frame or in its transport hello: never proposed, the member list stays."""
    c = g.cluster
    lead, follower = g.lead_and_follower()
    before = g.members()
    since = log_lines(c)
    spare = c.host(12)
    for target in (lead, follower):
        name = f"evil-join-{target}"
        with g.holder(target, name) as peer:
            for bad in ["web 1", "x" * 300, "a\nb", "-x", "", "web/1"]:
                info = {"id": bad, "raft_addr": f"{spare}:{RAFT_PORT}", "api_addr": f"{spare}:1"}
                peer.send({"k": "join", "cid": g.cid, "info": info})
                peer.send({"k": "hello", "cid": g.cid, "info": info})
            wait_logged(g, target, since, rf"frame from {name} .*dropped: bad join")
            wait_logged(g, target, since, rf"frame from {name} .*dropped: bad hello")
        for bad in ["web 1", "-x", "a\nb"]:  # the transport hello's own node id
            with pytest.raises(PeerClosed):
                g.holder(target, bad)
    wait_logged(g, lead, since, r"refusing 'web 1' at \S+: a member id is 1-63 characters")
    holds_for(lambda: g.members() == before, 1.5, "the member list unchanged")


def idle_api_connections(g: Group) -> None:
    """300 idle connections to the API of n3 (256 descriptors): those over its cap of 64
    are answered 503 and closed, n3 stays up and in the group, and answers once they close."""
    c = g.cluster
    node = c.node("n3")
    socks, answered, _ = refused_idle_connections(
        node.host, API_PORT, 300, API_CAP, WAIT, check=c.check_alive
    )
    try:
        assert all(a.startswith(b"HTTP/1.1 503") for a in answered.values()), set(answered.values())
        holds_for(node.running, 1.0, "n3 running with 300 connections open")
    finally:
        for s in socks:
            s.close()
    wait_for(
        lambda: c.api(node, "GET", "/v1/health", token=None)[0] == 200,
        WAIT,
        "n3's /v1/health once the idle connections closed",
        check=c.check_alive,
    )
    _, metrics = c.api(node, "GET", "/metrics")
    assert re.search(rf"^hafleet_api_connections_max {API_CAP}(\.0)?$", metrics, re.M), metrics
    assert "Too many open files" not in node.log()


def hostile_http_requests(g: Group) -> None:
    """Requests that used to answer 500 (or could): each a 4xx with a JSON error where the
    agent's handlers answer, and nothing is written."""
    c = g.cluster
    lead, follower = g.lead_and_follower()
    for nid in (lead, follower):
        host = c.node(nid).host
        for auth in (b"Bearer \xff\xfe\xfd", b"\xff\xff \xff", b"Bearer " + b"\xe9" * 64):
            request = (
                f"PUT /v1/kv/hostile/auth HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                "Content-Type: application/json\r\nContent-Length: 12\r\n".encode()
                + b"Authorization: "
                + auth
                + b'\r\n\r\n{"value": 1}'
            )
            status, payload = raw_http(host, request)
            assert status == 401 and "token" in payload["error"], (nid, auth, status, payload)
        deep = "[" * 100_000 + "]" * 100_000
        cases: list[tuple[str, str, bytes, set[int]]] = [
            ("PUT", "/v1/kv/hostile/deep", f'{{"value": {deep}}}'.encode(), {400}),
            ("POST", "/v1/members", f'{{"id": {deep}}}'.encode(), {400}),
            ("PUT", "/v1/kv/hostile/big", b'{"value": "' + b"x" * (2 * MiB) + b'"}', {413}),
            ("PUT", "/v1/kv/hostile/garbage", b"{not json", {400}),
            ("PUT", "/v1/kv/hostile/garbage", b"\xff\xfe\x00", {400}),
            ("PUT", "/v1/kv/hostile/garbage", b'["value", 1]', {400}),
            ("POST", "/v1/leadership/transfer", b'{"to": "n1", "evil": 1}', {400}),
            ("PUT", "/v1/kv/" + "k" * 600, b'{"value": 1}', {400}),
            ("PUT", "/v1/kv/hostile/nul%00key", b'{"value": 1}', {400}),
            ("PUT", "/v1/kv/hostile/nl%0Akey", b'{"value": 1}', {400, 404}),
            ("GET", "/v1/watch?index=-1", b"", {400}),
        ]
        for method, path, body, want in cases:
            status, payload = c.api(nid, method, path, raw=body or None)
            assert status in want, (nid, method, path[:60], status, str(payload)[:300])
            assert isinstance(payload, dict) and payload["error"], payload
    for key in ("hostile/deep", "hostile/big", "hostile/garbage", "hostile/auth"):
        assert c.get(lead, key)[0] == 404, key


def dot_dot_keys(g: Group) -> None:
    """Dot segments in a key: through the leader and through a follower alike, either
    refused (4xx) or stored under the key as written; never another key, never another
    route."""
    c = g.cluster
    lead, follower = g.lead_and_follower()
    c.ok(lead, "PUT", "/v1/kv/hostile/other", {"value": "untouched"})
    for nid in (lead, follower):
        for path in ("hostile/a/../other", "hostile/a/%2E%2E/other", "hostile/./other", "../x"):
            status, payload = c.api(nid, "PUT", f"/v1/kv/{path}", {"value": nid})
            assert status < 500, (nid, path, status, payload)
            if status == 200:
                assert payload["key"] == urllib.parse.unquote(path), (nid, path, payload)
                assert c.get(lead, payload["key"])[1]["value"] == nid
            else:
                assert 400 <= status < 500 and payload["error"], (nid, path, status, payload)
    assert c.get(lead, "hostile/other")[1]["value"] == "untouched"
    assert g.members() == ["n1", "n2", "n3"]


def malformed_http_requests(g: Group) -> None:
    """Requests aiohttp's own parser refuses, from anyone (no token needed): a request line
    or a header over 8190 bytes, a byte a path may not hold, no HTTP at all. Each is a 400,
    and each costs at most one log line (a traceback a request would let anyone flood
    the log)."""
    c = g.cluster
    lead, follower = g.lead_and_follower()
    requests = [
        b"PUT /v1/kv/" + b"k" * 10_240 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\nHost: h\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /v1/kv/\xff HTTP/1.1\r\nHost: h\r\n\r\n",
        b"\x00\x01\x02 not http\r\n\r\n",
    ]
    for nid in (lead, follower):
        host = c.node(nid).host
        since = log_lines(c)
        for request in requests:
            status, _ = raw_http(host, request)
            assert status == 400, (nid, request[:40], status)
        # (not the audit lines of the writer that runs meanwhile, or of the case before,
        # which reach the log in batches up to 50 ms later: the refused requests have none)
        logged = [line for line in new_log(c, since)[nid] if " hafleet.audit: " not in line]
        assert len(logged) <= len(requests), "\n".join(logged[:40])


def msgpack_bombs(g: Group) -> None:
    """Small frames that claim huge msgpack containers, and 16 MiB of empty maps (about
    75 times its size once built by a plain unpacker): the connection is closed and the
    member's peak memory (VmHWM) grows by less than RSS_BOUND."""
    c = g.cluster
    lead, _ = g.lead_and_follower()
    pid = c.node(lead).pid
    assert pid is not None
    n = 16 * MiB
    payloads = {
        "array32 of 2**31 items": b"\xdd\x80\x00\x00\x00",
        "map32 of 2**32-1 pairs": b"\xdf\xff\xff\xff\xff",
        "bin32 of 4 GiB": b"\xc6\xff\xff\xff\xff" + b"x" * 16,
        "100,000 nested arrays": b"\x91" * 100_000 + b"\xc0",
        "16 MiB of empty maps": b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n,
        "256 KiB of empty maps in a map": b"\xdf"
        + (128 * 1024).to_bytes(4, "big")
        + b"\xa0\x80" * (128 * 1024),
    }
    before = memory(pid)
    for i, (what, payload) in enumerate(payloads.items()):
        with g.holder(lead, f"evil-pack-{i}") as peer:
            peer.send_payload(payload)
            assert peer.closed_by_peer(WAIT), f"{what}: the connection stayed open"
        after = memory(pid)
        grew = after["VmHWM"] - before["VmHWM"]
        assert grew < RSS_BOUND, f"{what}: peak memory grew by {grew >> 20} MiB"
    assert after["VmRSS"] - before["VmRSS"] < RSS_BOUND, (before, after)
    print(
        f"msgpack bombs: {lead} VmRSS {before['VmRSS'] >> 20} -> {after['VmRSS'] >> 20} MiB,"
        f" VmHWM {before['VmHWM'] >> 20} -> {after['VmHWM'] >> 20} MiB"
    )


def raft_port_flood(g: Group) -> None:
    """Garbage and silent connections to every member's Raft port from one address of the
    lease (127.0.X.14), while a follower is killed and started again: the group keeps a
    leader and takes writes, the restarted member connects and catches up, and the
    members together log fewer than WARNINGS_BOUND warning lines. Silent connections are
    closed by the agents (their first-frame timeout)."""
    c = g.cluster
    lead, follower = g.lead_and_follower()
    since = log_lines(c)
    targets = [(node.host, RAFT_PORT) for node in c.nodes.values()]
    with Flood(targets, c.host(14)) as flood:
        wait_for(lambda: flood.connections >= 200, WAIT, "200 flood connections")
        wait_for(
            lambda: flood.silent_closed >= flood.silent,
            WAIT,
            "the agents to close a batch of silent connections",
        )
        c.kill9(follower)
        acks = g.writer.acks()
        c.restart(follower)
        wait_for(lambda: g.writer.acks() > acks + 20, WAIT, "writes during the flood")
        c.wait_agreed(timeout=WAIT)
        lead_commit = c.status(c.leader())["commit_index"]
        wait_for(
            lambda: c.status(follower)["applied_index"] >= lead_commit,
            WAIT,
            f"{follower} to catch up during the flood",
            check=c.check_alive,
        )
        c.put(follower, "hostile/flood", "through the restarted member")
        during = flood.connections
    warnings = sum("WARNING" in line for lines in new_log(c, since).values() for line in lines)
    print(
        f"flood: {during} connections ({flood.silent_closed} silent ones closed by the agents,"
        f" {flood.failed} failed to connect), {warnings} warning lines"
    )
    assert during >= 200
    assert warnings < WARNINGS_BOUND, warnings


def storage_quota(g: Group) -> None:
    """With quota_bytes = QUOTA: puts that would grow the store past it are 413
    quota_exceeded (through the leader and a follower); deletes still work, and a put
    goes through again once there is room."""
    c = g.cluster
    lead, follower = g.lead_and_follower()
    value = "q" * 250_000
    filled: list[str] = []
    refused: tuple[int, Any] | None = None
    for i in range(QUOTA // 250_000 + 2):
        status, body = c.api(follower, "PUT", f"/v1/kv/hostile/fill/{i}", {"value": value})
        if status == 413:
            refused = (status, body)
            break
        assert status == 200, (status, body)
        filled.append(f"hostile/fill/{i}")
    assert refused is not None, "the quota never refused a put"
    assert refused[1]["code"] == "quota_exceeded" and refused[1]["quota_bytes"] == QUOTA
    status, body = c.api(lead, "PUT", "/v1/kv/hostile/one-more", {"value": value})
    assert status == 413 and body["code"] == "quota_exceeded", (status, body)
    assert c.get(lead, "hostile/one-more")[0] == 404
    for key in filled:
        c.ok(follower, "DELETE", f"/v1/kv/{key}")
    c.put(lead, "hostile/one-more", value)
    c.ok(lead, "DELETE", "/v1/kv/hostile/one-more")


@dataclass(frozen=True)
class Case:
    name: str
    who: str
    run: Callable[[Group], None]


TOKEN, KEY_HOLDER, NETWORK = "a holder of the API token", "a holder of the cluster key", "anyone"
CASES = [
    Case("bad_member_ids", TOKEN, bad_member_ids),
    Case("raft_terms_far_ahead", KEY_HOLDER, raft_terms_far_ahead),
    Case("frames_of_unreachable_kinds", KEY_HOLDER, frames_of_unreachable_kinds),
    Case("join_with_a_bad_member_id", KEY_HOLDER, join_with_a_bad_member_id),
    Case("idle_api_connections", NETWORK, idle_api_connections),
    Case("hostile_http_requests", TOKEN, hostile_http_requests),
    Case("dot_dot_keys", TOKEN, dot_dot_keys),
    Case("malformed_http_requests", NETWORK, malformed_http_requests),
    Case("msgpack_bombs", KEY_HOLDER, msgpack_bombs),
    Case("raft_port_flood", NETWORK, raft_port_flood),
    Case("storage_quota", TOKEN, storage_quota),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input(group: Group, case: Case) -> None:
    c = group.cluster
    try:
        case.run(group)
        # The group keeps serving: a write through every member, and the writer's go on.
        acks = group.writer.acks()
        for nid in c.nodes:
            assert c.put(nid, f"after/{case.name}/{nid}", nid)["value"] == nid
        wait_for(lambda: group.writer.acks() > acks, WAIT, "the writer's next acknowledged write")
        c.check_alive()
        assert_no_traceback(group)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{c.logs_tail(25)}") from None


def test_no_acknowledged_write_is_lost_and_the_group_restarts(group: Group) -> None:
    c = group.cluster
    acked = group.writer.finish()
    answers = group.writer.answers
    print(f"writer: {len(acked)} acknowledged writes; answers {answers}")
    assert len(acked) >= 50, answers

    def lost(nid: str, stale: bool = False) -> dict[str, Any]:
        path = "/v1/kv?prefix=w/" + ("&stale=1" if stale else "")
        items = {i["key"]: i["value"] for i in c.ok(nid, "GET", path)["items"]}
        return {k: (v, items.get(k)) for k, v in acked.items() if items.get(k) != v}

    assert lost(c.leader()) == {}
    for node in list(c.nodes.values()):
        c.kill9(node)
    for node in c.nodes.values():
        c.restart(node)
    started = time.monotonic()
    c.wait_agreed(timeout=RESTART_BOUND_S)
    took = time.monotonic() - started
    print(f"restart: an agreed leader {took:.1f} s after the last member started")
    lead = c.leader()
    assert c.put(lead, "after/restart", 1)["value"] == 1
    commit = c.status(lead)["commit_index"]
    for nid in c.nodes:
        wait_for(
            lambda nid=nid: c.status(nid)["applied_index"] >= commit,
            WAIT,
            f"{nid} to apply its log again",
            check=c.check_alive,
        )
        assert lost(nid, stale=True) == {}, nid
        assert c.put(nid, f"after/restart/{nid}", nid)["value"] == nid
    assert_no_traceback(group)
