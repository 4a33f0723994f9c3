"""Maintenance never takes the last member in service out of rotation by accident (review
finding: ``maintenance on n1``, ``n2``, ``n3`` each exited 0, and HAProxy then answered 503 to
every request). ``PUT /v1/members/{id}/maintenance`` answers 409 when no other member would
stay in service — in maintenance, pinned to weight 0, its service check failing, or
unreachable — on a follower as on the leader, unless ``?force=true`` (``hafleet-agent
maintenance on ID --force``); a member already in maintenance stays a 200 without a change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import Cluster

MakeCluster = Callable[..., Cluster]
PATH = "/v1/members/{}/maintenance"


def _members(cluster: Cluster, node: str) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in cluster.ok(node, "GET", "/v1/members")}


def test_the_last_member_in_service_goes_into_maintenance_only_with_force(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster()
    cluster.add_many(3, bootstrap_expect=3)
    cluster.wait_agreed()
    lead = cluster.leader()
    f1, f2 = sorted(nid for nid in cluster.nodes if nid != lead)
    cluster.wait_for(
        lambda: all((m["weight"] or 0) > 0 for m in _members(cluster, lead).values()),
        20,
        "every member planned a weight above 0",
    )
    cli = ["--api", cluster.node(f2).api_url, "--token-file", str(cluster.token_file)]

    # f1 goes into maintenance; lead is pinned to weight 0: f2 is the last one in service
    out = cluster.cli("maintenance", "on", f1, *cli)
    assert out.returncode == 0, out.stderr
    cluster.put(f2, f"weights/override/{lead}", 0)
    cluster.wait_for(
        lambda: _members(cluster, f2)[lead]["weight"] == 0, 20, f"{lead} planned to weight 0"
    )
    for node in (lead, f1, f2):
        code, body = cluster.api(node, "PUT", PATH.format(f2), {"reason": "patch"})
        assert code == 409, (node, code, body)
        error = body["error"]
        assert error.startswith("this would leave no member in service: "), error
        assert f"{f1} in maintenance" in error and f"{lead} weight 0" in error, error
        assert "force" in error, error
    out = cluster.cli("maintenance", "on", f2, *cli)
    assert out.returncode != 0 and "no member in service" in out.stderr, (out.returncode, out)
    assert not _members(cluster, lead)[f2]["maintenance"]
    # a member already in maintenance: still a 200 that changes nothing
    body = cluster.ok(f2, "PUT", PATH.format(f1))
    assert body["maintenance"] is True and body["changed"] is False, body
    code, body = cluster.api(f2, "PUT", PATH.format(f2) + "?force=maybe")
    assert code == 400 and "force must be true or false" in body["error"], (code, body)
    # force: it is done, and a second PUT without force changes nothing
    out = cluster.cli("maintenance", "on", f2, "--force", *cli)
    assert out.returncode == 0 and f"{f2} is now in maintenance" in out.stdout, out
    body = cluster.ok(f1, "PUT", PATH.format(f2))
    assert body["maintenance"] is True and body["changed"] is False, body
    for mid in (f1, f2):
        cluster.ok(lead, "DELETE", PATH.format(mid))
    cluster.ok(lead, "DELETE", f"/v1/kv/weights/override/{lead}")

    # An unreachable member is not in service either.
    cluster.kill9(f1)
    cluster.wait_for(
        lambda: not _members(cluster, lead)[f1]["reachable"], 20, f"{f1} marked unreachable"
    )
    cluster.ok(lead, "PUT", PATH.format(f2))  # lead stays in service
    code, body = cluster.api(f2, "PUT", PATH.format(lead))
    assert code == 409 and f"{f1} unreachable" in body["error"], (code, body)
    assert cluster.ok(lead, "PUT", PATH.format(lead) + "?force=true")["changed"] is True
