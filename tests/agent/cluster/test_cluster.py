"""Clusters of real ``hafleet-agent run`` processes on loopback addresses (issue 4).

Every test that changes membership or kills nodes builds its own cluster on its own
127.0.X.0/24 (harness.py); the API checks that change nothing share one module-wide
cluster. Timings are small (heartbeat 50 ms, election timeout 300 ms) and every wait is
bounded but generous, since the machine may be busy.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from harness import (
    ELECT_TIMEOUT,
    FORM_TIMEOUT,
    RAFT_PORT,
    Cluster,
    agent_command,
    founded_cluster,
    holds_for,
    run_cli,
    write_secret,
)

import hafleet_agent

MakeCluster = Callable[..., Cluster]


def found(make_cluster: MakeCluster, n: int, **kwargs: Any) -> tuple[Cluster, dict[str, dict]]:
    """A cluster of ``n`` agents founded with ``--bootstrap-expect n`` and static ``--join``."""
    cluster = make_cluster(**kwargs)
    cluster.add_many(n, bootstrap_expect=n)
    return cluster, cluster.wait_agreed()


def assert_one_cluster(cluster: Cluster, statuses: dict[str, dict], ids: list[str]) -> str:
    """Exactly one cluster with exactly ``ids`` as voters, one leader; returns the id."""
    assert sorted(statuses) == sorted(ids)
    cids = {st["cluster_id"] for st in statuses.values()}
    assert len(cids) == 1 and None not in cids, cids
    cid = cids.pop()
    assert all(st["cluster"] == cluster.name for st in statuses.values())
    leaders = [nid for nid, st in statuses.items() if st["state"] == "leader"]
    assert len(leaders) == 1, statuses
    for nid, st in statuses.items():
        assert st["leader_id"] == leaders[0]
        assert sorted(m["id"] for m in st["members"]) == sorted(ids), (nid, st["members"])
        for m in st["members"]:
            node = cluster.node(m["id"])
            assert m["raft_addr"] == node.raft_addr and m["api_addr"] == node.api_addr
        # the cluster id is persisted next to the Raft state (docs/agent.md)
        meta = json.loads((cluster.node(nid).data_dir / "agent.json").read_text())
        assert meta["cluster_id"] == cid
    return cid


def since_last_start(log: str) -> str:
    return log.rsplit("===== harness: start", 1)[-1]


# --- founding -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 7])
def test_agents_found_one_cluster_with_bootstrap_expect_and_static_join(
    make_cluster: MakeCluster, n: int
) -> None:
    cluster, statuses = found(make_cluster, n)
    assert_one_cluster(cluster, statuses, [f"n{i}" for i in range(1, n + 1)])
    # /v1/members agrees with /v1/status everywhere
    lead = cluster.leader()
    for nid in cluster.nodes:
        roles = {m["id"]: m["role"] for m in cluster.ok(nid, "GET", "/v1/members")}
        assert roles == {m: ("leader" if m == lead else "voter") for m in cluster.nodes}


def test_three_agents_found_one_cluster_over_mdns(make_cluster: MakeCluster) -> None:
    """No --join: the agents find each other over mDNS bound to their own 127.0.X.Y."""
    cluster = make_cluster()
    cluster.add_many(3, bootstrap_expect=3, mdns=True)
    statuses = cluster.wait_agreed()
    assert_one_cluster(cluster, statuses, ["n1", "n2", "n3"])
    for node in cluster.nodes.values():
        assert "--join" not in node.argv
        assert "mDNS discovery could not start" not in node.log()


def test_late_agent_joins_the_running_cluster_over_mdns(make_cluster: MakeCluster) -> None:
    """A fresh agent with the same flags that comes later sees (in the TXT records) that the
    cluster runs, and joins it instead of founding or waiting for fresh peers."""
    cluster = make_cluster()
    cluster.add_many(3, bootstrap_expect=3, mdns=True)
    cid = assert_one_cluster(cluster, cluster.wait_agreed(), ["n1", "n2", "n3"])
    cluster.add("n4", bootstrap_expect=3, mdns=True)
    statuses = cluster.wait_agreed(timeout=FORM_TIMEOUT)
    assert assert_one_cluster(cluster, statuses, ["n1", "n2", "n3", "n4"]) == cid


# --- failures and restarts ------------------------------------------------------------------


def test_kill9_leader_keeps_acknowledged_writes_and_the_node_rejoins(
    make_cluster: MakeCluster,
) -> None:
    cluster, statuses = found(make_cluster, 3)
    cid = assert_one_cluster(cluster, statuses, ["n1", "n2", "n3"])
    ids = list(cluster.nodes)
    old = cluster.leader()
    acked = {}
    for i in range(50):  # through every node: followers forward to the leader
        item = cluster.put(ids[i % 3], f"before/{i:02d}", {"i": i})
        acked[item["key"]] = item
    term = cluster.status(old)["term"]

    cluster.kill9(old)
    rest = [nid for nid in ids if nid != old]
    new = cluster.leader(rest)
    assert new != old
    assert cluster.status(new)["term"] > term
    # the survivors heard the killed leader's connections end (docs/raft.md, Leader lost)
    lost = f"the connection of leader {old!r} ended"
    assert any(lost in since_last_start(cluster.node(nid).log()) for nid in rest)
    for key, item in acked.items():
        for nid in rest:
            code, got = cluster.get(nid, key)
            assert code == 200, (nid, key, got)
            assert (got["value"], got["modify_index"]) == (item["value"], item["modify_index"])
    for i in range(10):  # written while the old leader is down
        item = cluster.put(rest[i % 2], f"during/{i}", i)
        acked[item["key"]] = item

    cluster.restart(old)
    statuses = cluster.wait_agreed(ids)
    assert assert_one_cluster(cluster, statuses, ids) == cid
    assert "restarting from" in since_last_start(cluster.node(old).log())
    commit = cluster.status(cluster.leader())["commit_index"]
    cluster.wait_for(
        lambda: (cluster.status(old) or {}).get("applied_index", -1) >= commit,
        FORM_TIMEOUT,
        f"{old} catch up",
    )
    for key, item in acked.items():
        code, got = cluster.get(old, key, stale=True)
        assert code == 200 and got["value"] == item["value"], (key, got)


def test_restarted_node_catches_up_through_a_snapshot(make_cluster: MakeCluster) -> None:
    cluster, _ = found(make_cluster, 3, config={"snapshot_entries": 20})
    lead = cluster.leader()
    victim = next(nid for nid in cluster.nodes if nid != lead)
    cluster.put(lead, "first", 0)
    cluster.wait_for(
        lambda: cluster.get(victim, "first", stale=True)[0] == 200, 10, "first on the victim"
    )
    behind = cluster.status(victim)["applied_index"]
    cluster.kill9(victim)

    # One write at a time: each is an append of its own to the dead victim, so the leader's
    # window of unacknowledged appends (max_inflight, 64) fills and it stops sending; what the
    # transport queued for the victim meanwhile (it keeps a down peer's frames and sends them
    # on reconnect) cannot cover the gap, and the compacted rest must come as a snapshot.
    # (Concurrent writes are batched into a few appends that the queue holds whole: the
    # victim then catches up without one, and this test would not test the snapshot path.)
    items = [cluster.put(lead, f"snap/{i:03d}", i) for i in range(300)]
    assert len(items) == 300
    snapshots = [int(i) for i in re.findall(r"snapshot at index (\d+)", cluster.node(lead).log())]
    assert snapshots and max(snapshots) > behind, "the leader has compacted what the node lacks"

    cluster.restart(victim)
    cluster.wait_for(
        lambda: "installed a snapshot at index" in since_last_start(cluster.node(victim).log()),
        FORM_TIMEOUT,
        f"{victim} to install a snapshot",
    )
    commit = cluster.status(lead)["commit_index"]
    cluster.wait_for(
        lambda: (cluster.status(victim) or {}).get("applied_index", -1) >= commit,
        FORM_TIMEOUT,
        "catch up",
    )
    for i in range(300):
        code, got = cluster.get(victim, f"snap/{i:03d}", stale=True)
        assert code == 200 and got["value"] == i, got
    cluster.wait_agreed()
    # it serves as a full member again: a write through it, read back linearizably
    cluster.put(victim, "after", "ok")
    assert cluster.get(lead, "after")[1]["value"] == "ok"


def test_sigterm_on_the_leader_hands_over_without_an_election_gap(
    make_cluster: MakeCluster,
) -> None:
    """Without a hand-over, the followers would wait at least one election timeout (1 s
    here) before they even campaign; with it, they know the new leader much sooner."""
    cluster, _ = found(make_cluster, 3, heartbeat_ms=100, election_timeout_ms=1000)
    old = cluster.leader()
    rest = [nid for nid in cluster.nodes if nid != old]

    def moved() -> str | None:
        leads = {(cluster.status(nid) or {}).get("leader_id") for nid in rest}
        lead = leads.pop() if len(leads) == 1 else None
        return lead if lead not in (None, old) else None

    sent = cluster.term(old)
    new = cluster.wait_for(moved, ELECT_TIMEOUT, "the others to know a new leader")
    gap_ms = (time.monotonic() - sent) * 1000
    assert gap_ms < cluster.election_timeout_ms, f"new leader {new} known after {gap_ms:.0f} ms"
    assert f"handing leadership over to {new}" in cluster.node(old).log()
    assert cluster.wait_exit(old) == 0
    assert cluster.node(old).log().rstrip().endswith("stopped")

    # it stays a member: started again, it rejoins from its data dir
    cluster.restart(old)
    cluster.wait_agreed()


# --- membership -----------------------------------------------------------------------------


def test_new_agent_joins_as_learner_then_voter_and_delete_removes_it(
    make_cluster: MakeCluster,
) -> None:
    cluster, _ = found(make_cluster, 3)
    founders = list(cluster.nodes)
    lead = cluster.leader()
    index = cluster.status(lead)["applied_index"]
    roles: list[str | None] = []
    done = threading.Event()

    def watch() -> None:
        """Every state change the leader makes, via /v1/watch: n4's role in each."""
        at = index
        while not done.is_set():
            w = cluster.ok(lead, "GET", f"/v1/watch?index={at}&wait=1s")
            at = w["index"]
            role = next((m["role"] for m in w["members"] if m["id"] == "n4"), None)
            if not roles or roles[-1] != role:
                roles.append(role)

    with ThreadPoolExecutor(1) as pool:
        watcher = pool.submit(watch)
        try:
            cluster.add("n4", join=[cluster.node(nid).raft_addr for nid in founders])
            statuses = cluster.wait_agreed(timeout=FORM_TIMEOUT)
        finally:
            done.set()
        watcher.result(timeout=15)
    assert_one_cluster(cluster, statuses, founders + ["n4"])
    seen = [r for r in roles if r is not None]
    assert seen[:1] == ["learner"] and seen[-1] in ("voter", "leader"), roles

    # DELETE (sent to a follower, forwarded) removes it, and the removed agent stops: exit 0
    follower = next(nid for nid in founders if nid != cluster.leader())
    cluster.expect_exit("n4")
    body = cluster.ok(follower, "DELETE", "/v1/members/n4")
    assert body["id"] == "n4" and body["removed"] is True
    cluster.wait_for(
        lambda: all(cluster.member_ids(nid) == set(founders) for nid in founders),
        FORM_TIMEOUT,
        "n4 gone from every member table",
    )
    assert cluster.wait_exit("n4") == 0
    cluster.wait_agreed(founders)

    # It comes back under the same id with an empty data dir (scale in, then out again):
    # catching up it replays its own old removal, but the re-add is the last word, so it
    # stays, votes and keeps running.
    shutil.rmtree(cluster.node("n4").data_dir)
    cluster.start("n4")
    statuses = cluster.wait_agreed(timeout=FORM_TIMEOUT)
    assert_one_cluster(cluster, statuses, founders + ["n4"])
    assert "this node was added again" in cluster.node("n4").log()
    holds_for(
        lambda: (
            cluster.node("n4").running()
            and cluster.status("n4") is not None
            and "n4" in cluster.member_ids(cluster.leader())
        ),
        3 * cluster.election_timeout_ms / 1000,
        "n4 running as a member after it came back",
    )


def test_leave_on_the_leader_removes_it_and_it_exits_0(make_cluster: MakeCluster) -> None:
    cluster, _ = found(make_cluster, 3)
    lead = cluster.leader()
    rest = [nid for nid in cluster.nodes if nid != lead]
    cluster.expect_exit(lead)
    node = cluster.node(lead)
    result = cluster.cli("leave", "--api", node.api_url, "--token-file", str(cluster.token_file))
    assert result.returncode == 0, result.stderr
    assert lead in result.stdout
    assert cluster.wait_exit(lead) == 0
    statuses = cluster.wait_agreed(rest)
    assert_one_cluster(cluster, statuses, rest)


def test_a_follower_that_left_exits_0_again_when_started_again(make_cluster: MakeCluster) -> None:
    # A host rebooted with the service enabled after `leave`: the member learns from its own
    # log that it left. The commit index that covered its removal was not on disk (a batch
    # that only moves it is not fsync'd): it restarted a voter nobody answers, forever.
    cluster, _ = found(make_cluster, 3)
    follower = cluster.followers()[0]
    node = cluster.node(follower)
    cluster.expect_exit(follower)
    result = cluster.cli("leave", "--api", node.api_url, "--token-file", str(cluster.token_file))
    assert result.returncode == 0, result.stderr
    assert cluster.wait_exit(follower) == 0
    cluster.start(follower)
    assert cluster.wait_exit(follower, timeout=30) == 0
    again = node.log().rsplit("===== harness: start #2", 1)[1]
    assert "this node was removed from the group" in again, again[-3000:]


def test_agent_with_the_wrong_key_is_refused(make_cluster: MakeCluster) -> None:
    cluster, _ = found(make_cluster, 3)
    founders = list(cluster.nodes)
    wrong = write_secret(cluster.dir / "wrong-key")
    intruder = cluster.add(
        "n9",
        join=[cluster.node(nid).raft_addr for nid in founders],
        bootstrap_expect=3,
        key_file=wrong,
    )
    refused = re.compile(r"prove the cluster key|refus", re.IGNORECASE)
    cluster.wait_for(
        lambda: (
            any(
                refused.search(line) and intruder.host in line
                for nid in founders
                for line in cluster.node(nid).log().splitlines()
            )
            or refused.search(intruder.log())
        ),
        FORM_TIMEOUT,
        "the handshake of the intruder to fail",
    )
    holds_for(
        lambda: all("n9" not in cluster.member_ids(nid) for nid in founders),
        3.0,
        "n9 stays out of every member table",
    )
    st = cluster.status("n9")
    assert st is not None and st["cluster_id"] is None and st["members"] == []
    cluster.wait_agreed(founders)


# --- the HTTP API on a shared cluster (nothing here changes membership) ----------------------


@pytest.fixture(scope="module")
def api_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with founded_cluster(tmp_path_factory.mktemp("api")) as cluster:
        yield cluster


def _error(payload: Any) -> str:
    assert isinstance(payload, dict) and isinstance(payload.get("error"), str), payload
    assert payload["error"], payload
    return payload["error"]


def _members(cluster: Cluster) -> list[tuple[str, str, str]]:
    lead = cluster.leader()
    return sorted(
        (m["id"], m["raft_addr"], m["api_addr"]) for m in cluster.ok(lead, "GET", "/v1/members")
    )


def test_health_needs_no_token(api_cluster: Cluster) -> None:
    for nid in api_cluster.nodes:
        assert api_cluster.api(nid, "GET", "/v1/health", token=None) == (200, {"ok": True})


@pytest.mark.parametrize(
    "auth",
    [None, "wrong", "scheme"],
    ids=["missing-token", "wrong-token", "not-bearer"],
)
def test_requests_without_the_right_token_are_401_and_change_nothing(
    api_cluster: Cluster, auth: str | None
) -> None:
    c = api_cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)
    before = _members(c)
    headers = {}
    token: Any = None
    if auth == "wrong":
        token = "0" * 64
    elif auth == "scheme":
        headers = {"Authorization": f"Basic {c.token}"}
    requests = [
        ("GET", "/v1/status", None),
        ("GET", "/v1/members", None),
        ("GET", "/v1/kv/auth-probe", None),
        ("PUT", "/v1/kv/auth-probe", {"value": 1}),
        ("DELETE", "/v1/kv/auth-probe", None),
        ("POST", "/v1/members", {"id": "x1", "raft_addr": "127.0.0.9:1", "api_addr": "a:1"}),
        ("DELETE", f"/v1/members/{follower}", None),
        ("POST", "/v1/leadership/transfer", {"to": follower}),
        ("GET", "/v1/watch?index=0&wait=1s", None),
        ("GET", "/metrics", None),
    ]
    for nid in (lead, follower):
        for method, path, body in requests:
            status, payload = c.api(nid, method, path, body, token=token, headers=headers)
            assert status == 401, (nid, method, path, status, payload)
            assert "token" in _error(payload).lower()
    assert c.get(lead, "auth-probe")[0] == 404
    assert _members(c) == before
    assert c.leader() == lead


@pytest.mark.parametrize(
    "raw",
    [b'{"value": 1', b"not json at all", b"\xff\xfe{}", b'["value", 1]', b"42"],
    ids=["truncated", "text", "not-utf8", "array", "number"],
)
def test_malformed_json_is_400_and_changes_nothing(api_cluster: Cluster, raw: bytes) -> None:
    c = api_cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)
    before = _members(c)
    for nid in (lead, follower):
        for method, path in [("PUT", "/v1/kv/malformed"), ("POST", "/v1/members")]:
            status, payload = c.api(nid, method, path, raw=raw)
            assert status == 400, (nid, method, path, status, payload)
            _error(payload)
    assert c.get(lead, "malformed")[0] == 404
    assert _members(c) == before


def test_unknown_fields_are_400_and_change_nothing(api_cluster: Cluster) -> None:
    c = api_cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)
    before = _members(c)
    cases = [
        ("PUT", "/v1/kv/unknown-field", {"value": 1, "ttl": 30}),
        (
            "POST",
            "/v1/members",
            {"id": "x2", "raft_addr": "127.0.0.9:7400", "api_addr": "127.0.0.9:7480", "vote": 1},
        ),
        ("POST", "/v1/leadership/transfer", {"to": follower, "force": True}),
        ("PUT", "/v1/kv/unknown-field", {"val": 1}),  # and the required field is missing
    ]
    for nid in (lead, follower):
        for method, path, body in cases:
            status, payload = c.api(nid, method, path, body)
            assert status == 400, (nid, method, path, status, payload)
            assert re.search(r"unknown|missing", _error(payload)), payload
    assert c.get(lead, "unknown-field")[0] == 404
    assert _members(c) == before
    assert c.leader() == lead


def test_oversized_body_is_413_and_changes_nothing(api_cluster: Cluster) -> None:
    """max_body_bytes (default 1 MiB) bounds the body, whatever it holds: a small value
    padded with JSON whitespace just over the limit is refused, just under it is taken."""
    c = api_cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)

    def padded(size: int) -> bytes:
        head, tail = b'{"value": "small"', b"}"
        return head + b" " * (size - len(head) - len(tail)) + tail

    for nid in (lead, follower):
        status, payload = c.api(nid, "PUT", "/v1/kv/oversized", raw=padded((1 << 20) + 1))
        assert status == 413, (nid, status, payload)
        _error(payload)
        assert c.get(lead, "oversized")[0] == 404
    item = c.ok(follower, "PUT", "/v1/kv/oversized", raw=padded(1 << 20))
    assert item["value"] == "small"
    c.ok(lead, "DELETE", "/v1/kv/oversized")


def test_cas_conflicts_are_409_and_keep_the_value(api_cluster: Cluster) -> None:
    c = api_cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)
    first = c.ok(lead, "PUT", "/v1/kv/cas/k?cas=0", {"value": "a"})  # only if absent: it is
    index = first["modify_index"]
    assert first["value"] == "a" and index > 0
    conflicts = [
        ("PUT", "/v1/kv/cas/k?cas=0", {"value": "b"}),  # not absent any more
        ("PUT", f"/v1/kv/cas/k?cas={index + 1000}", {"value": "b"}),
        ("PUT", f"/v1/kv/cas/k?cas={index - 1}", {"value": "b"}),
        ("DELETE", f"/v1/kv/cas/k?cas={index + 1000}", None),
    ]
    for nid in (lead, follower):
        for method, path, body in conflicts:
            status, payload = c.api(nid, method, path, body)
            assert status == 409, (nid, method, path, status, payload)
            _error(payload)
            code, got = c.get(lead, "cas/k")
            assert code == 200 and (got["value"], got["modify_index"]) == ("a", index), got
    second = c.ok(follower, "PUT", f"/v1/kv/cas/k?cas={index}", {"value": "c"})
    assert second["value"] == "c" and second["modify_index"] > index
    gone = c.ok(lead, "DELETE", f"/v1/kv/cas/k?cas={second['modify_index']}")
    assert gone["key"] == "cas/k"
    assert c.get(lead, "cas/k")[0] == 404


def test_join_with_a_duplicate_id_is_409_and_changes_nothing(api_cluster: Cluster) -> None:
    c = api_cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)
    before = _members(c)
    spare = c.host(9)
    body = {"id": follower, "raft_addr": f"{spare}:{RAFT_PORT}", "api_addr": f"{spare}:7480"}
    for nid in (lead, follower):
        status, payload = c.api(nid, "POST", "/v1/members", body)
        assert status == 409, (nid, status, payload)
        assert follower in _error(payload)
    assert _members(c) == before
    c.wait_agreed()


def test_absent_key_is_404(api_cluster: Cluster) -> None:
    c = api_cluster
    for nid in c.nodes:
        for stale in (False, True):
            status, payload = c.get(nid, "no/such/key", stale=stale)
            assert status == 404, (nid, stale, status, payload)
            _error(payload)


def test_watch_returns_when_the_index_passes_and_times_out_unchanged(
    api_cluster: Cluster,
) -> None:
    c = api_cluster
    lead = c.leader()
    follower = next(nid for nid in c.nodes if nid != lead)
    index = c.status(follower)["applied_index"]
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(c.ok, follower, "GET", f"/v1/watch?index={index}&wait=20s")
        item = c.put(lead, "watch/k", "v")
        w = waiting.result(timeout=30)
    assert time.monotonic() - started < 20
    assert w["changed"] is True and w["index"] > index
    assert w["leader_id"] == lead
    assert {m["id"] for m in w["members"]} == set(c.nodes)
    assert {"version", "weights"} <= set(w["weights"])
    assert item["modify_index"] > index

    far = 10**9
    started = time.monotonic()
    w = c.ok(follower, "GET", f"/v1/watch?index={far}&wait=1s")
    elapsed = time.monotonic() - started
    assert w["changed"] is False and w["index"] < far
    assert 0.9 <= elapsed < 10, elapsed

    status, payload = c.api(follower, "GET", "/v1/watch?index=0&wait=soon")
    assert status == 400, payload
    _error(payload)


def test_writes_on_a_follower_are_forwarded(api_cluster: Cluster) -> None:
    c = api_cluster
    lead = c.leader()
    for nid in c.nodes:
        if nid == lead:
            continue
        item = c.ok(nid, "PUT", f"/v1/kv/fwd/{nid}", {"value": {"from": nid, "n": [1, 2]}})
        assert item["key"] == f"fwd/{nid}" and item["value"] == {"from": nid, "n": [1, 2]}
        code, got = c.get(lead, f"fwd/{nid}")
        assert code == 200 and got == item
        c.ok(nid, "DELETE", f"/v1/kv/fwd/{nid}")
        assert c.get(lead, f"fwd/{nid}")[0] == 404


def test_stale_read_answers_from_the_local_copy(api_cluster: Cluster) -> None:
    c = api_cluster
    lead = c.leader()
    item = c.put(lead, "stale/k", [1, "two"])
    for nid in c.nodes:
        got = c.wait_for(
            lambda nid=nid: (lambda r: r[1] if r[0] == 200 else None)(
                c.get(nid, "stale/k", stale=True)
            ),
            10,
            f"stale/k on {nid}",
        )
        assert got == item
        code, linear = c.get(nid, "stale/k")
        assert code == 200 and linear == item


# --- the command line -----------------------------------------------------------------------


def test_status_and_members_commands_print_a_table_and_json(api_cluster: Cluster) -> None:
    c = api_cluster
    lead = c.leader()
    for nid in c.nodes:
        url = c.node(nid).api_url
        result = c.cli("status", "--api", url, "--token-file", str(c.token_file))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
        columns = lines[header].split()
        assert columns[:3] == ["NODE", "ROLE", "TERM"], columns
        assert {"CPU", "MEM", "LOAD", "WEIGHT"} <= set(columns)
        rows = {line.split()[0]: line.split() for line in lines[header + 1 :] if line.strip()}
        assert set(rows) == set(c.nodes), result.stdout
        assert rows[lead][1] == "leader"
        assert all(rows[n][1] == "voter" for n in c.nodes if n != lead)
        assert lead in "\n".join(lines[:header])  # the summary line names the leader

        result = c.cli("status", "--api", url, "--token-file", str(c.token_file), "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["status"]["node_id"] == nid and doc["status"]["leader_id"] == lead
        assert {m["id"] for m in doc["members"]} == set(c.nodes)

    result = c.cli("members", "--api", url, "--token-file", str(c.token_file))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["NODE", "ROLE"]
    assert {line.split()[0] for line in lines[1:]} == set(c.nodes)
    result = c.cli("members", "--api", url, "--token-file", str(c.token_file), "--json")
    assert result.returncode == 0, result.stderr
    assert {m["id"] for m in json.loads(result.stdout)} == set(c.nodes)

    result = c.cli("status", "--api", c.node(lead).api_url)  # no token
    assert result.returncode != 0 and "token" in result.stderr


def test_kv_commands(api_cluster: Cluster) -> None:
    c = api_cluster
    follower = next(nid for nid in c.nodes if nid != c.leader())
    common = ["--api", c.node(follower).api_url, "--token-file", str(c.token_file)]
    put = c.cli("kv", "put", "cli/k", '{"a": 1}', *common)
    assert put.returncode == 0, put.stderr
    index = json.loads(put.stdout)["modify_index"]
    get = c.cli("kv", "get", "cli/k", *common)
    assert get.returncode == 0 and json.loads(get.stdout) == {"a": 1}, get
    conflict = c.cli("kv", "put", "cli/k", "x", "--cas", str(index + 100), *common)
    assert conflict.returncode == 1 and "409" in conflict.stderr, conflict
    assert json.loads(c.cli("kv", "get", "cli/k", *common).stdout) == {"a": 1}
    assert c.cli("kv", "del", "cli/k", "--cas", str(index), *common).returncode == 0
    absent = c.cli("kv", "get", "cli/k", *common)
    assert absent.returncode == 1 and "no key" in absent.stderr


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"hafleet-agent {hafleet_agent.__version__}"


# --- configuration errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--heartbeat-ms", "abc"], r"--heartbeat-ms.*integer"),
        (["--raft-port", "70000"], r"--raft-port.*65535"),
        (["--bootstrap-expect", "0"], r"--bootstrap-expect.*at least 1"),
        (["--join", "127.0.0.1"], r"--join.*HOST:PORT"),
        (["--heartbeat-ms", "500", "--election-timeout-ms", "300"], r"election_timeout_ms"),
        (["--bind", "not-an-address"], r"bind must be an IP address"),
        (["key-0644"], r"key file .* mode 0644.*0600"),
        (["token-short"], r"token file .* at least 32"),
        (["key-missing"], r"key file .* does not exist"),
        (["config-unknown-key"], r"unknown key\(s\).*heartbeat"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(v).lstrip("-"),
)
def test_bad_configuration_exits_2_with_a_clear_message(
    make_cluster: MakeCluster, change: list[str], message: str
) -> None:
    cluster = make_cluster()
    node = cluster.add("n1", start=False)
    argv = list(node.argv)
    tmp = cluster.dir

    def set_flag(flag: str, value: str) -> None:
        argv[argv.index(flag) + 1] = value

    if change == ["key-0644"]:
        key = write_secret(tmp / "key-0644")
        key.chmod(0o644)
        set_flag("--key-file", str(key))
    elif change == ["token-short"]:
        set_flag("--token-file", str(write_secret(tmp / "short-token", "0123456789abcdef")))
    elif change == ["key-missing"]:
        set_flag("--key-file", str(tmp / "no-such-key"))
    elif change == ["config-unknown-key"]:
        (tmp / "bad.toml").write_text("hearbeat_ms = 50\n")
        argv += ["--config", str(tmp / "bad.toml")]
    else:
        for flag, value in zip(change[::2], change[1::2], strict=True):
            if flag in argv:
                set_flag(flag, value)
            else:
                argv += [flag, value]
    result = cluster.cli(*argv[len(agent_command()) :], timeout=60)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert re.search(message, result.stderr, re.DOTALL), result.stderr
    assert "Traceback" not in result.stderr
    assert not node.data_dir.exists(), "a refused configuration created the data dir"
    assert cluster.token not in result.stderr + result.stdout


def test_a_weight_pin_in_the_kv_store_is_committed_and_survives_a_new_leader(
    make_cluster: MakeCluster,
) -> None:
    from harness import wait_for

    cluster, statuses = found(make_cluster, 3)
    leader = next(nid for nid, st in statuses.items() if st["state"] == "leader")
    pinned = next(nid for nid in statuses if nid != leader)

    def weight_of(node: str) -> Any:
        return cluster.ok(node, "GET", "/v1/weights")["weights"].get(pinned)

    cluster.put(leader, f"weights/override/{pinned}", 7)
    wait_for(lambda: weight_of(leader) == 7, 15, f"{pinned} pinned at 7")
    # a new leader reads the pin from the replicated state, not from its own config
    cluster.term(leader)
    other = pinned
    new = wait_for(
        lambda: next(
            (lid for lid in [(cluster.status(other) or {}).get("leader_id")] if lid != leader),
            None,
        ),
        15,
        "a new leader",
    )
    cluster.put(new, f"weights/override/{pinned}", 9)
    wait_for(lambda: weight_of(new) == 9, 15, f"{pinned} pinned at 9 by the new leader")
    cluster.ok(new, "DELETE", f"/v1/kv/weights/override/{pinned}")


def test_kv_list_by_prefix(api_cluster: Cluster) -> None:
    leader = api_cluster.leader()
    for k in ("lst/a", "lst/b", "lst/c/d", "lsx"):
        api_cluster.put(leader, k, k.upper())
    follower = next(n for n in api_cluster.nodes if n != leader)
    for node, query in ((leader, ""), (follower, ""), (follower, "&stale=1")):
        body = api_cluster.ok(node, "GET", f"/v1/kv?prefix=lst/{query}")
        assert [i["key"] for i in body["items"]] == ["lst/a", "lst/b", "lst/c/d"]
        assert [i["value"] for i in body["items"]] == ["LST/A", "LST/B", "LST/C/D"]
