"""The storage quota of the replicated state (quota_bytes) on real agents (issue 13)."""

from __future__ import annotations

import re
from collections.abc import Callable

from harness import Cluster

from hafleet_agent.state import kv_record_bytes

MakeCluster = Callable[..., Cluster]


def test_the_quota_refuses_growth_with_413_and_deletes_still_work(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster()
    cluster.add_many(3, bootstrap_expect=3, extra_args=["--quota-bytes", "300000"])
    cluster.wait_agreed()
    lead = cluster.leader()
    follower = next(nid for nid in cluster.nodes if nid != lead)
    value = "x" * 100_000
    for i in range(2):
        cluster.put(follower, f"q/{i}", value)
    for node in (lead, follower):  # a follower forwards; the leader refuses
        code, body = cluster.api(node, "PUT", "/v1/kv/q/2", {"value": value})
        assert code == 413, (code, body)
        assert body["code"] == "quota_exceeded" and body["quota_bytes"] == 300_000
        assert "quota" in body["error"] and body["state_bytes"] > 200_000
    assert cluster.get(lead, "q/2")[0] == 404  # never proposed
    # what does not grow the state passes; deletes always do
    cluster.put(lead, "q/1", "small")
    cluster.ok(follower, "DELETE", "/v1/kv/q/0")
    cluster.put(lead, "q/2", value)
    assert cluster.get(lead, "q/2")[1]["value"] == value
    assert all(n.running() for n in cluster.nodes.values())
    # the size and the quota are in /metrics
    _, text = cluster.api(lead, "GET", "/metrics")
    found = dict(re.findall(r"^(hafleet_kv_(?:quota_)?bytes) (\S+)$", text, re.M))
    assert float(found["hafleet_kv_quota_bytes"]) == 300_000
    expect = kv_record_bytes("q/1", "small") + kv_record_bytes("q/2", value)
    assert float(found["hafleet_kv_bytes"]) == expect
