"""A group that lost its quorum and got it back: reads and writes answer again at once
(start.yml brings one of two stopped members back and reads through the member it started)."""

from __future__ import annotations

import time

import pytest


@pytest.mark.timeout(120)
@pytest.mark.parametrize("via", ["n1", "n2"])
def test_reads_answer_once_a_stopped_member_brings_the_quorum_back(make_cluster, via):
    c = make_cluster(election_timeout_ms=2000)
    c.add_many(3, bootstrap_expect=3)
    c.wait_agreed(["n1", "n2", "n3"])
    c.put("n1", "app/k", 1)
    for node in ("n2", "n3"):
        c.term(node)
        assert c.wait_exit(node) == 0
    c.wait_for(lambda: (c.status("n1") or {}).get("leader_id") is None, 30, "n1 without a leader")
    c.start("n2")
    c.wait_for(lambda: c.api("n2", "GET", "/v1/health", token=None)[0] == 200, 60, "n2 healthy")
    c.wait_for(lambda: (c.status(via) or {}).get("leader_id"), 30, f"{via} knows the leader")
    began = time.monotonic()
    status, body = c.get(via, "app/k")
    took = time.monotonic() - began
    assert status == 200 and body["value"] == 1, (status, body, took)
    assert c.put(via, "app/k", 2)["value"] == 2
