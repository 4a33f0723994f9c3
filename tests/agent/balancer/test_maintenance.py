"""Maintenance (issue 19's acceptance) with real agents, a real HAProxy and real backends on
loopback: under a steady load through HAProxy,

- ``hafleet-agent maintenance on n2``: n2 gets weight 0, its server is drained, and once
  HAProxy has taken it out no request reaches it; it stays a voter and still votes (it wins
  the leadership handed to it, which takes a majority of votes, its own among them);
- the API: idempotent ``PUT``, forwarded from a follower, 404 for no such member, 400 for a
  bad id; ``/v1/members``, ``/metrics`` and ``hafleet-agent status`` show the maintenance;
- ``maintenance off``: n2 is back in rotation and gets its share again;
- 0 failed requests throughout.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from balancer_lab import LoadGen, burst, shares

FORM = 40.0
CONVERGE = 20.0


def member(lab, node: str, mid: str) -> dict:
    return next(m for m in lab.cluster.ok(node, "GET", "/v1/members") if m["id"] == mid)


@pytest.mark.timeout(150)
def test_a_member_in_maintenance_gets_no_requests_and_still_votes(make_lab) -> None:
    lab = make_lab()
    lab.add_agents(3)
    lab.cluster.wait_agreed(timeout=FORM)
    hp = lab.haproxy("roundrobin")
    lab.syncer(hp)
    ids = {"n1", "n2", "n3"}
    lab.wait_for(lambda: hp.serving() == ids, CONVERGE, "3 servers in service")
    cli = ["--api", lab.cluster.node("n1").api_url, "--token-file", str(lab.cluster.token_file)]

    # (long enough for a busy machine; stopped once the checks below are done)
    load = LoadGen(hp.url, rate=100, duration=90, slow_every=10, slow_ms=300).start()
    lab.wait_for(lambda: len(load.results) > 50, 10, "load under way")

    # In: through n1's API (a follower or the leader: either way the leader writes it).
    out = lab.cluster.cli("maintenance", "on", "n2", "--reason", "kernel update", *cli)
    assert out.returncode == 0, out.stderr
    assert "n2 is now in maintenance (kernel update)" in out.stdout
    lab.wait_for(
        lambda: "n2" not in hp.ready_weights() and hp.servers()["n2"].drain,
        CONVERGE,
        "n2 drained from HAProxy",
    )
    out_at = time.monotonic()
    lab.wait_for(lambda: member(lab, "n3", "n2")["weight"] == 0, CONVERGE, "n2's weight 0")
    row = member(lab, "n3", "n2")
    assert row["maintenance"] is True and row["role"] in ("voter", "leader"), row
    assert not member(lab, "n3", "n1")["maintenance"]
    metrics = lab.cluster.api("n3", "GET", "/metrics")[1]
    assert 'hafleet_member_maintenance{node="n2"} 1.0' in metrics, metrics[-2000:]
    assert 'hafleet_member_maintenance{node="n1"} 0.0' in metrics

    # The API, while n2 is in: idempotent, forwarded, checked.
    again = lab.cluster.ok("n3", "PUT", "/v1/members/n2/maintenance", {"reason": "other"})
    assert again["maintenance"] is True and again["changed"] is False
    assert again["reason"] == "kernel update"
    assert lab.cluster.api("n3", "PUT", "/v1/members/n9/maintenance")[0] == 404
    assert lab.cluster.api("n3", "PUT", "/v1/members/-bad/maintenance")[0] == 400
    status = lab.cluster.cli("status", *cli)
    assert status.returncode == 0, status.stderr
    assert any(
        line.startswith("n2 ") and "(maintenance)" in line for line in status.stdout.splitlines()
    ), status.stdout

    # It still votes: leadership handed to n2 takes a majority of votes, its own included.
    lead = lab.cluster.leader()
    lab.cluster.ok(lead, "POST", "/v1/leadership/transfer", {"to": "n2"})
    lab.wait_for(lambda: lab.cluster.leader() == "n2", 10, "n2 leads")
    lab.cluster.ok("n2", "POST", "/v1/leadership/transfer", {"to": "n1"})
    lab.wait_for(lambda: lab.cluster.leader() == "n1", 10, "n1 leads again")
    assert "n2" not in hp.ready_weights()  # a leader change does not bring it back

    # Enough requests while it is in (the steps above may be quick): 50 answered since.
    lab.wait_for(
        lambda: sum(1 for r in list(load.results) if r.start > out_at) > 50,
        10,
        "50 requests answered while n2 is in maintenance",
    )
    # Out.
    off_at = time.monotonic()  # (n2 may take requests from here on)
    off = lab.cluster.cli("maintenance", "off", "n2", *cli)
    assert off.returncode == 0, off.stderr
    assert "n2 is out of maintenance" in off.stdout
    lab.wait_for(lambda: set(hp.ready_weights()) == ids, CONVERGE, "n2 back in HAProxy")
    assert member(lab, "n1", "n2")["maintenance"] is False

    load.stop()
    results = load.join()
    failed = [r for r in results if not r.ok]
    assert not failed, failed[:5]
    during = [r for r in results if out_at < r.start and r.end < off_at]
    assert len(during) > 50, len(during)
    assert not [r for r in during if r.node == "n2"], "n2 served requests in maintenance"
    assert lab.cluster.ok("n1", "DELETE", "/v1/members/n2/maintenance")["changed"] is False

    # Its share again (roundrobin: a third each).
    share = shares(asyncio.run(burst(hp.url, 600, concurrency=10)))
    assert abs(share.get("n2", 0.0) - 1 / 3) < 0.05, share
