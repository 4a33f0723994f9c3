"""``GET /v1/health``: whether this member can serve what the group holds (etcd's ``/health``).

200 ``{"ok": true}`` only when the member is in a group (a voter or a learner of the Raft
configuration it runs), knows a leader and heard from it within two election timeouts, and
has applied its log to within ``health_max_apply_lag`` entries of its commit index; otherwise
503 ``{"ok": false, "reason": "..."}``. No token is needed and nothing more is said
(docs/monitoring.md, "Health").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_HEALTH_MAX_APPLY_LAG

if TYPE_CHECKING:
    from ..node.verbs import NodeVerbs


def check(agent: NodeVerbs) -> tuple[int, dict[str, Any]]:
    """The status and the body of ``/v1/health``."""
    reason = unhealthy_reason(agent)
    if reason is None:
        return 200, {"ok": True}
    return 503, {"ok": False, "reason": reason}


def unhealthy_reason(agent: NodeVerbs) -> str | None:
    """Why this member is not healthy, in words; None when it is."""
    r = agent.raft_status()
    if r is None:
        return "the Raft core has not started"
    if not r.voters and not r.learners:
        return "not in a group yet (waiting to found one with --bootstrap-expect peers, or to join)"
    if not r.in_config(agent.id):
        return "not a member of the group's configuration (removed, or not added yet)"
    if r.lead is None:
        return f"no leader known (term {r.term}, this member is {_role(r.state)})"
    silence = agent.leader_silence()
    bound_s = leader_silence_bound(agent.cfg)
    if silence is not None and silence > bound_s:
        # A voter cut off would campaign and forget its leader; a learner never campaigns,
        # so it would name its old leader for ever.
        return (
            f"nothing heard from the leader {r.lead} for {silence:.1f} s "
            f"(more than {bound_s:g} s: cut off from it?)"
        )
    applied = agent.state.index
    lag = r.commit - applied
    bound = getattr(agent.cfg, "health_max_apply_lag", DEFAULT_HEALTH_MAX_APPLY_LAG)
    if lag > bound:
        return (
            f"applied index {applied} is {lag} entries behind the commit index {r.commit} "
            f"(health_max_apply_lag {bound})"
        )
    return None


def leader_silence_bound(cfg: Any) -> float:
    """How long a follower or learner may hear nothing from its leader and still be healthy:
    two election timeouts (the leader sends every heartbeat interval)."""
    return 2 * getattr(cfg, "election_timeout_ms", 1000) / 1000.0


def _role(state: Any) -> str:
    name = str(getattr(state, "name", state)).lower().replace("_", "-")
    return f"a {name}"
