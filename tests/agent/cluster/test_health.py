"""``/v1/health`` means the member can serve (issue 20; server/health.py, docs/monitoring.md).

Unit tests of the rule on a fake node, then the acceptance over real agents: with 1 of 3
``--bootstrap-expect 3`` members up it answers 503 and says why; with all 3, 200 on each;
once the other two are gone, the one left answers 503 again (no leader)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from harness import FORM_TIMEOUT, Cluster, holds_for

from hafleet_agent.config import DEFAULT_HEALTH_MAX_APPLY_LAG, AgentConfig, ConfigError, validate
from hafleet_agent.raft.status import BasicStatus
from hafleet_agent.raft.types import StateType
from hafleet_agent.server.health import check


def fake(
    *,
    started: bool = True,
    voters: frozenset[str] = frozenset({"n1", "n2", "n3"}),
    learners: frozenset[str] = frozenset(),
    lead: str | None = "n2",
    state: StateType = StateType.FOLLOWER,
    commit: int = 50,
    applied: int = 50,
    bound: int | None = None,
    silence: float | None = 0.05,
) -> Any:
    status = BasicStatus(
        id="n1",
        term=4,
        vote=None,
        state=state,
        lead=lead,
        commit=commit,
        applied=applied,
        first_index=1,
        last_index=commit,
        snapshot_index=0,
        voters=voters,
        learners=learners,
        pending_conf_index=0,
        lead_transferee=None,
    )
    cfg = AgentConfig() if bound is None else AgentConfig(health_max_apply_lag=bound)
    return SimpleNamespace(
        id="n1",
        cfg=cfg,
        state=SimpleNamespace(index=applied),
        raft_status=lambda: status if started else None,
        leader_silence=lambda: None if lead in (None, "n1") else silence,
    )


def test_a_member_that_has_not_heard_its_leader_for_two_election_timeouts_is_unhealthy() -> None:
    """A learner cut off from the group never campaigns, so it keeps naming its old leader:
    the silence says it is cut off (AgentConfig: election timeout 300 ms, bound 0.6 s)."""
    learner = dict(voters=frozenset({"n2", "n3"}), learners=frozenset({"n1"}))
    assert check(fake(silence=0.5, **learner)) == (200, {"ok": True})
    code, body = check(fake(silence=5.0, **learner))
    assert code == 503 and "nothing heard from the leader n2 for 5.0 s" in body["reason"]
    assert check(fake(silence=5.0))[0] == 503  # a follower too
    assert check(fake(lead="n1", state=StateType.LEADER, silence=5.0)) == (200, {"ok": True})


def test_a_member_with_a_leader_that_has_applied_its_log_is_healthy() -> None:
    assert check(fake()) == (200, {"ok": True})
    assert check(fake(lead="n1", state=StateType.LEADER)) == (200, {"ok": True})
    learner = fake(voters=frozenset({"n2", "n3"}), learners=frozenset({"n1"}))
    assert check(learner) == (200, {"ok": True})


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        (fake(started=False), "the Raft core has not started"),
        (fake(voters=frozenset(), lead=None), "not in a group yet"),
        (fake(voters=frozenset({"n2", "n3"})), "not a member of the group's configuration"),
        (
            fake(lead=None, state=StateType.PRE_CANDIDATE),
            "no leader known (term 4, this member is a pre-candidate)",
        ),
        (fake(lead=None, state=StateType.CANDIDATE), "this member is a candidate"),
        (
            fake(commit=5000, applied=3999),
            "applied index 3999 is 1001 entries behind the commit index 5000 "
            f"(health_max_apply_lag {DEFAULT_HEALTH_MAX_APPLY_LAG})",
        ),
        (fake(commit=60, applied=50, bound=9), "10 entries behind"),
    ],
    ids=["not-started", "no-group", "not-in-config", "pre-candidate", "candidate", "lag", "bound"],
)
def test_otherwise_503_says_why(node: Any, reason: str) -> None:
    status, body = check(node)
    assert status == 503
    assert body["ok"] is False and set(body) == {"ok", "reason"}
    assert reason in body["reason"], body


def test_the_lag_bound_is_inclusive_and_configurable() -> None:
    assert check(fake(commit=1050, applied=50))[0] == 200  # exactly the default bound
    assert check(fake(commit=60, applied=50, bound=10))[0] == 200
    assert check(fake(commit=51, applied=50, bound=0))[0] == 503
    with pytest.raises(ConfigError, match="health_max_apply_lag must be >= 0"):
        validate(AgentConfig(node_id="n1", mdns=False, health_max_apply_lag=-1))


# ---- over real agents ------------------------------------------------------------------------


def health(cluster: Cluster, nid: str) -> tuple[int, Any]:
    return cluster.api(nid, "GET", "/v1/health", token=None)


def test_health_follows_the_group_1_of_3_then_3_of_3_then_1_again(make_cluster: Any) -> None:
    c: Cluster = make_cluster()
    nodes = c.add_many(3, bootstrap_expect=3, start=False)
    c.start(nodes[0])
    # The API answers before the group forms: 503, with the reason.
    status, body = c.wait_for(lambda: health(c, "n1"), FORM_TIMEOUT, "n1's API answers")
    assert status == 503, body
    assert body["ok"] is False and "not in a group yet" in body["reason"], body
    holds_for(lambda: health(c, "n1")[0] == 503, 1.0, "503 while 1 of 3 is up")
    for node in nodes[1:]:
        c.start(node)
    c.wait_for(
        lambda: all(health(c, nid) == (200, {"ok": True}) for nid in c.nodes),
        FORM_TIMEOUT,
        "200 on each of the 3",
    )
    # Without its two peers the one left has no leader (CheckQuorum, then elections).
    lead = c.leader()
    rest = [nid for nid in c.nodes if nid != lead]
    c.kill9(lead)
    c.kill9(rest[0])
    last: dict[str, Any] = {}

    def alone_503() -> bool:
        status, last["body"] = health(c, rest[1])
        return status == 503

    c.wait_for(alone_503, FORM_TIMEOUT, "503 on the member left alone")
    assert "no leader known" in last["body"]["reason"], last
