"""A replicated state larger than a transport frame (64 MiB) still reaches a new member: the
leader sends its snapshot in chunks (snapxfer.py), and the group stays calm meanwhile; so
does a lagging voter (issue 13)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from harness import ELECT_TIMEOUT, FORM_TIMEOUT, Cluster, holds_for

MakeCluster = Callable[..., Cluster]

FRAME_LIMIT = 64 << 20  # the transport's max_frame
VALUE_CHARS = 500_000  # a KV value is at most 512 KiB encoded
BIG_VALUES = 150  # 75 MB of values: the snapshot is over the frame limit


def big_value(i: int) -> str:
    return f"{i:04d}:" + "abcdefghij"[i % 10] * VALUE_CHARS


def put(cluster: Cluster, node: str, key: str, value: object) -> None:
    """A put that waits out an election (503: not proposed; 504: maybe applied, and putting
    the same value again is harmless): a compaction of this size stalls an agent's loop for
    about a second, which may cost the group its leader for a moment."""

    def attempt() -> bool:
        code, body = cluster.api(node, "PUT", f"/v1/kv/{key}", {"value": value})
        assert code in (200, 503, 504), (code, body)
        return code == 200

    cluster.wait_for(attempt, ELECT_TIMEOUT, f"PUT {key} on {node}")


def settled(cluster: Cluster, nodes: list[str]) -> tuple[str, int]:
    """(leader, term) once ``nodes`` agree and keep the same leader and term for two election
    timeouts: a compaction of this size stalls an agent's loop for a second or more, and the
    election it may cause must be over before the part under test starts."""
    for _ in range(10):
        statuses = cluster.wait_agreed(nodes)
        lead = cluster.leader(nodes)
        term = statuses[lead]["term"]

        def same(lead: str = lead, term: int = term) -> bool:
            st = cluster.status(lead)
            return st is not None and (st["state"], st["term"]) == ("leader", term)

        try:
            holds_for(same, 2 * cluster.election_timeout_ms / 1000, "leader and term")
        except AssertionError:
            continue
        return lead, term
    raise AssertionError(f"{nodes} did not settle on a leader")


def metric(cluster: Cluster, node: str, name: str) -> float:
    _, text = cluster.api(node, "GET", "/metrics")
    found = re.findall(rf"^{name} (\S+)$", text, re.M)
    assert len(found) == 1, (name, found)
    return float(found[0])


def since_last_start(log: str) -> str:
    return log.rsplit("===== harness: start", 1)[-1]


def snapshot_sizes(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"snapshot at index \d+ \((\d+) bytes\)", log)]


def test_new_and_lagging_agents_catch_up_through_chunked_snapshots_over_the_frame_limit(
    make_cluster: MakeCluster,
) -> None:
    began = time.monotonic()
    # etcd's default timings (100 ms heartbeat, 1 s election timeout): the machine is shared.
    # snapshot_log_ratio 0: a compaction every 100 entries whatever the state's size (below,
    # the leader compacts past a stopped member's log while the state holds 75 MB).
    cluster = make_cluster(
        heartbeat_ms=100,
        election_timeout_ms=1000,
        config={"snapshot_entries": 100, "snapshot_log_ratio": 0},
    )
    cluster.add_many(3, bootstrap_expect=3)
    cluster.wait_agreed()
    lead = cluster.leader()
    with ThreadPoolExecutor(4) as pool:
        items = list(
            pool.map(lambda i: put(cluster, lead, f"big/{i:03d}", big_value(i)), range(BIG_VALUES))
        )
    assert len(items) == BIG_VALUES
    # small writes until every member has compacted into a snapshot over the frame limit
    founders = list(cluster.nodes)

    def largest() -> list[int]:
        return [max(snapshot_sizes(cluster.node(nid).log()) or [0]) for nid in founders]

    for i in range(300):
        if min(largest()) > FRAME_LIMIT:
            break
        put(cluster, founders[i % 3], f"fill/{i:03d}", i)
    assert min(largest()) > FRAME_LIMIT, largest()
    filled = time.monotonic()

    lead, term = settled(cluster, founders)
    cluster.add("n4", join=[cluster.node(nid).raft_addr for nid in founders])
    statuses = cluster.wait_agreed(timeout=FORM_TIMEOUT)
    caught_up = time.monotonic()

    # n4 is a voter, caught up through the chunked snapshot (not a single Raft frame)
    assert statuses["n4"]["state"] == "follower"
    lead_st = cluster.status(lead)
    n4 = cluster.status("n4")
    assert n4["applied_index"] >= lead_st["commit_index"] - 5, (n4, lead_st)
    lead_log, n4_log = cluster.node(lead).log(), cluster.node("n4").log()
    assert re.search(r"sending snapshot \d+ \([\d.]+ MiB\) to n4 in chunks", lead_log)
    assert re.search(r"snapshot \d+ delivered to n4", lead_log)
    assert re.search(r"received snapshot \d+ \([\d.]+ MiB\) from " + lead, n4_log)
    assert "installed a snapshot at index" in n4_log
    assert "larger than max_frame" not in lead_log
    for i in (0, BIG_VALUES // 2, BIG_VALUES - 1):
        code, got = cluster.get("n4", f"big/{i:03d}", stale=True)
        assert code == 200 and got["value"] == big_value(i), (code, str(got)[:80])

    # no election storm: the same leader in the same term all along, on every member
    assert {st["term"] for st in statuses.values()} == {term}, statuses
    assert {st["leader_id"] for st in statuses.values()} == {lead}
    assert metric(cluster, lead, "hafleet_snapshot_sends_completed_total") >= 1
    assert metric(cluster, "n4", "hafleet_snapshot_receives_completed_total") == 1
    assert metric(cluster, "n4", "hafleet_snapshot_bytes_received_total") > FRAME_LIMIT
    # and the group serves writes, through the new member too
    cluster.put("n4", "after", "ok")
    assert cluster.get(lead, "after")[1]["value"] == "ok"

    # A lagging voter as well: stopped while the leader compacts past its log, it comes back
    # and catches up through a chunked snapshot. (Two compactions: the appends the leader had
    # queued for it before it noticed, up to 64 in flight, reach it when it is back.)
    victim = next(nid for nid in founders if nid != lead)
    cluster.kill9(victim)
    compactions = len(snapshot_sizes(cluster.node(lead).log()))
    for i in range(500):
        if len(snapshot_sizes(cluster.node(lead).log())) >= compactions + 2:
            break
        put(cluster, lead, f"more/{i:03d}", i)
    assert len(snapshot_sizes(cluster.node(lead).log())) >= compactions + 2
    rest = [nid for nid in cluster.nodes if nid != victim]
    lead, term = settled(cluster, rest)
    restarted = time.monotonic()
    cluster.restart(victim)
    cluster.wait_for(
        lambda: "received snapshot" in since_last_start(cluster.node(victim).log()),
        FORM_TIMEOUT,
        f"{victim} to receive a snapshot in chunks",
    )
    statuses = cluster.wait_agreed(timeout=FORM_TIMEOUT)
    back = time.monotonic()
    assert {st["term"] for st in statuses.values()} == {term}, statuses
    assert {st["leader_id"] for st in statuses.values()} == {lead}
    commit = cluster.status(lead)["commit_index"]
    cluster.wait_for(
        lambda: (
            (cluster.status(victim) or {}).get("applied_index", -1) >= commit
        ),  # None: no answer yet
        FORM_TIMEOUT,
        "catch up",
    )
    code, got = cluster.get(victim, f"big/{BIG_VALUES - 1:03d}", stale=True)
    assert code == 200 and got["value"] == big_value(BIG_VALUES - 1)
    print(
        f"\nfill {filled - began:.1f}s, join+catch-up {caught_up - filled:.1f}s, "
        f"restart+catch-up {back - restarted:.1f}s, snapshot sizes {largest()}"
    )
