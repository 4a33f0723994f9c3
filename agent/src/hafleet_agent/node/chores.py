"""The leader's chores (every 0.25 s while leading) and the tables they keep: promote
learners that caught up, mark members healthy or not, remove dead ones (autopilot), share
the metrics table, plan the load-balancer weights.

The chores see the node through what is passed in: the Raft node (its status and progress,
one conf change proposal), the applied state, and callables to propose a command or a
configuration change, to send a frame and to wake the driver."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import AgentConfig
from ..keys import OVERRIDE_PREFIX
from ..metrics import HostMetrics
from ..raft.core import ProposalDropped
from ..raft.quorum import has_majority
from ..raft.rawnode import RawNode
from ..raft.types import ConfChange, ConfChangeType
from ..state import StateMachine, encode_command
from ..weights import MemberInput, WeightParams, WeightPlanner
from .errors import AgentError

log = logging.getLogger("hafleet.agent")

REPORT_INTERVAL = 1.0


class LeaderChores:
    def __init__(
        self,
        node_id: str,
        cfg: AgentConfig,
        state: StateMachine,
        *,
        raw: Callable[[], RawNode | None],
        leader_since: Callable[[], float | None],
        propose_cmd: Callable[[bytes], Awaitable[Any]],
        propose_conf: Callable[[ConfChange], Awaitable[Any]],
        send: Callable[..., Any],
        wake: Callable[[], None],
    ) -> None:
        self.id = node_id
        self.cfg = cfg
        self.state = state
        self._raw = raw
        self._leader_since = leader_since
        self._propose_cmd = propose_cmd
        self._propose_conf = propose_conf
        self._send = send
        self._wake = wake
        self.reports: dict[str, tuple[float, dict[str, Any]]] = {}  # leader: id -> (t, metrics)
        self.metrics_table: dict[str, dict[str, Any]] = {}  # what the leader last broadcast
        self.health_seen: dict[str, float] = {}
        self.joined_at: dict[str, float] = {}
        self.planner = WeightPlanner(WeightParams())
        self.planner_term = -1
        self._last_table_push = 0.0
        self._last_plan = 0.0

    # ---- the tables ------------------------------------------------------------------------
    def forget_non_members(self, now: float, expire_s: float) -> None:
        """Drop the reports and health of ids that are not members, and when an id that is
        none joined, once that is ``expire_s`` old."""
        for table in (self.reports, self.health_seen):
            for nid in [nid for nid in table if not self.state.has_member(nid)]:
                del table[nid]
        for nid, since in list(self.joined_at.items()):
            if now - since > expire_s and not self.state.has_member(nid):
                del self.joined_at[nid]

    def member_changed(self, node_id: str) -> None:
        """A configuration change of ``node_id`` applied while we run: when it joined, for
        the autopilot (the first change we see; those of the log replayed at start are old)."""
        if node_id not in self.joined_at:
            self.joined_at[node_id] = time.monotonic()

    def view_table(self, leading: bool) -> dict[str, dict[str, Any]]:
        """Each member's last metrics: the leader's own reports, or what it last shared."""
        if leading:
            return {mid: body for mid, (_, body) in self.reports.items()}
        return self.metrics_table

    # ---- the chores ------------------------------------------------------------------------
    async def run_once(self) -> None:
        raw = self._raw()
        assert raw is not None
        st, prs = raw.basic_status(), raw.progress()
        now = time.monotonic()
        # promote learners that caught up
        for nid in sorted(st.learners):
            pr = prs.get(nid)
            if pr is not None and pr.match >= st.commit and st.pending_conf_index <= st.applied:
                log.info("promoting %s to voter (caught up at %d)", nid, pr.match)
                try:
                    raw.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, nid))
                    self._wake()
                except ProposalDropped as exc:
                    log.debug("promotion of %s postponed: %s", nid, exc)
                break
        members = self.state.members()
        # health: heard from it (any frame) within 3 election timeouts, or a recent report
        dead_after = max(3.0, 3 * self.cfg.election_timeout_ms / 1000)
        leader_since = self._leader_since()
        for m in members:
            mid = str(m["id"])
            if mid == self.id:
                seen = now
            else:
                seen = max(self.health_seen.get(mid, 0.0), self.reports.get(mid, (0.0,))[0])
            if leader_since is not None:
                seen = max(seen, leader_since)  # grace after taking over
            healthy = now - seen < dead_after
            if bool(m.get("healthy", True)) != healthy:
                log.warning("member %s is %s", mid, "healthy again" if healthy else "unhealthy")
                await self._propose_cmd(encode_command("member_health", id=mid, healthy=healthy))
            if (
                not healthy
                and self.cfg.autopilot_cleanup_dead
                and now - seen > self.cfg.autopilot_dead_after_s
                and self.removal_keeps_quorum(mid)
            ):
                log.warning("autopilot: removing dead member %s", mid)
                with contextlib.suppress(AgentError):
                    await self._propose_conf(ConfChange(ConfChangeType.REMOVE, mid))
        # share the metrics table
        if now - self._last_table_push >= REPORT_INTERVAL:
            self._last_table_push = now
            table = {mid: {"t_age": now - t, **body} for mid, (t, body) in self.reports.items()}
            self.metrics_table = table
            for m in members:
                if m["id"] != self.id and m.get("raft_addr"):
                    self._send(str(m["raft_addr"]), "metrics_table", table=table)
        # weights
        if now - self._last_plan >= REPORT_INTERVAL:
            self._last_plan = now
            await self.plan_weights(now, members)

    def removal_keeps_quorum(self, mid: str) -> bool:
        """Whether the voters without ``mid`` still hold a majority of healthy members."""
        raw = self._raw()
        st = raw.basic_status() if raw is not None else None
        if st is None or mid not in st.voters:
            return st is not None
        healthy = {str(m["id"]) for m in self.state.members() if m.get("healthy", True)}
        return has_majority(st.voters - {mid}, healthy)

    def override(self, mid: str) -> int | None:
        """A pinned weight: the replicated KV key ``weights/override/<id>`` (0..256; 0 drains)
        wins over the leader's ``weight_overrides`` config, so a pin survives a change of
        leader."""
        item = self.state.kv_get(f"{OVERRIDE_PREFIX}{mid}")
        if item is not None:
            v = item["value"]
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 256:
                return v
            log.warning("ignoring %s%s = %r: not an integer in 0..256", OVERRIDE_PREFIX, mid, v)
        return self.cfg.weight_overrides.get(mid)

    async def plan_weights(self, now: float, members: list[dict[str, Any]]) -> None:
        raw = self._raw()
        assert raw is not None
        term = raw.basic_status().term
        if self.planner_term != term:
            self.planner = WeightPlanner(WeightParams())
            self.planner_term = term
        leader_since = self._leader_since()
        inputs: dict[str, MemberInput] = {}
        for m in members:
            mid = str(m["id"])
            rep = self.reports.get(mid)
            metrics = None
            if rep is not None:
                with contextlib.suppress(Exception):
                    metrics = HostMetrics.from_dict(rep[1])
            pin = self.override(mid)
            inputs[mid] = MemberInput(
                metrics=metrics,
                last_report_time=rep[0] if rep else None,
                joined_at=self.joined_at.get(mid, 0.0),
                listening_since=leader_since or 0.0,
                healthy=bool(m.get("healthy", True)),
                draining=bool(m.get("draining", False)) or pin == 0,
                override=pin or None,
            )
        current = self.state.weights()["weights"]
        decision = self.planner.plan(now, inputs, current)
        if decision.commit and decision.table != current:
            log.info("weights: %s (%s)", decision.table, decision.reason)
            await self._propose_cmd(
                encode_command("weights_set", weights=decision.table, reason=decision.reason)
            )
