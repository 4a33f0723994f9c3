"""The leader's chores (every 0.25 s while leading) and the tables they keep: promote
learners that caught up, mark members healthy or not, remove dead ones (autopilot), share
the metrics table, plan the load-balancer weights.

The chores see the node through what is passed in: the Raft node (its status and progress,
one conf change proposal), the applied state, and callables to propose a command or a
configuration change, to send a frame and to wake the driver."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import AgentConfig
from ..ids import shown
from ..keys import (
    DRAINED_PREFIX,
    MAINTENANCE_PREFIX,
    OVERRIDE_PREFIX,
    OVERRIDE_RULE,
    REGISTERED_KEY,
    REGISTERED_PREFIX,
    REGISTRATION_TTL_S,
    SERVICE_HEALTH_PREFIX,
    UNREACHABLE_PREFIX,
    drained_key,
    valid_override,
)
from ..metrics import HostMetrics
from ..raft.core import ProposalDropped
from ..raft.quorum import has_majority
from ..raft.rawnode import RawNode
from ..raft.types import ConfChange, ConfChangeType
from ..registrations import finite_number
from ..state import StateMachine, encode_command
from ..weights import MemberInput, WeightParams, WeightPlanner
from .errors import AgentError

log = logging.getLogger("hafleet.agent")

REPORT_INTERVAL = 1.0


def ride_within(cfg: AgentConfig) -> float:
    """How long a member's report and the leader's shared table may wait for the next Raft
    frame to their peer, to leave in its write (``Transport.send``'s ``within``): two
    heartbeats (a leader sends one each ``heartbeat_ms``, a follower answers it), at most
    half a report interval. An idle leader of five read four reports a second, each its own
    wake-up, and wrote four tables, each its own write."""
    return min(REPORT_INTERVAL / 2, 2 * cfg.heartbeat_ms / 1000)


HEALTH_INTERVAL = 0.1  # the pace of the fast health chores (service checks, eviction)
HEALTH_PACE_MAX = 0.25  # ... at most, when no member can pass its silence limit sooner
STALL_S = 0.3  # the fast chores ran this late: this node stalled, not its peers
SERVICE_REPORT_STALE_S = 10.0  # a member heard from but silent about its service this long:
# its check is off (restarted without it, or an older version): its service mark goes


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
        # The service check results (id -> (t, ok, detail)) and the fast chores' bookkeeping.
        self.service_reports: dict[str, tuple[float, bool, str]] = {}
        self.silent_since: dict[str, float] = {}  # id -> when it last was silent too long
        self.health_wake = asyncio.Event()
        self._service_sig: tuple[str, ...] = ()
        self._last_health = 0.0
        self._health_due: float | None = None  # when the loop meant to run them next
        self._stalled_at = 0.0
        # balancer/registered/<bid> -> (modify_index, when this leader saw it change): a
        # registration is fresh while it was written within its ttl_s (our clock, not its).
        self.reg_seen: dict[str, tuple[int, float]] = {}
        # weights/override/<id> -> the modify_index of the bad value last warned about
        self.override_warned: dict[str, int] = {}

    # ---- the tables ------------------------------------------------------------------------
    def forget_non_members(self, now: float, expire_s: float) -> None:
        """Drop the reports and health of ids that are not members, and when an id that is
        none joined, once that is ``expire_s`` old."""
        for table in (self.reports, self.health_seen, self.service_reports, self.silent_since):
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
        # (ids and single fields: the records are copied only for the weights, once a second)
        ids, field = self.state.member_ids(), self.state.member_field
        # health: heard from it (any frame) within 3 election timeouts, or a recent report
        dead_after = max(3.0, 3 * self.cfg.election_timeout_ms / 1000)
        leader_since = self._leader_since()
        for mid in ids:
            if mid == self.id:
                seen = now
            else:
                seen = max(self.health_seen.get(mid, 0.0), self.reports.get(mid, (0.0,))[0])
            if leader_since is not None:
                seen = max(seen, leader_since)  # grace after taking over
            healthy = now - seen < dead_after
            marked = field(mid, "healthy")  # (absent: healthy)
            if (marked is None or bool(marked)) != healthy:
                log.warning("member %s is %s", mid, "healthy again" if healthy else "unhealthy")
                await self._propose_cmd(encode_command("member_health", id=mid, healthy=healthy))
            if (
                not healthy
                and self.cfg.autopilot_cleanup_dead
                and now - seen > self.cfg.autopilot_dead_after_s
                and self.removal_keeps_quorum(mid)
                # a member in maintenance is down on purpose (playbooks/stop.yml): kept
                and self.state.kv_get(f"{MAINTENANCE_PREFIX}{mid}") is None
            ):
                log.warning("autopilot: removing dead member %s", mid)
                with contextlib.suppress(AgentError):
                    await self._propose_conf(ConfChange(ConfChangeType.REMOVE, mid))
        # share the metrics table
        if now - self._last_table_push >= REPORT_INTERVAL:
            self._last_table_push = now
            table = {mid: {"t_age": now - t, **body} for mid, (t, body) in self.reports.items()}
            self.metrics_table = table
            ride = ride_within(self.cfg)
            for mid in ids:
                addr = field(mid, "raft_addr")
                if mid != self.id and addr:
                    # (rides on the next heartbeat to it)
                    self._send(str(addr), "metrics_table", table=table, within=ride)
        # weights
        if now - self._last_plan >= REPORT_INTERVAL:
            self._last_plan = now
            await self.plan_weights(now, self.state.members())

    # ---- the fast health chores: service checks and eviction (every HEALTH_INTERVAL) --------
    def wake_service(self) -> None:
        self.health_wake.set()

    async def run_health(self) -> None:
        """Keep ``health/service/<id>`` and ``health/unreachable/<id>`` in step with what the
        leader knows. Plain KV writes: an agent of an older version stores them and ignores
        them."""
        now = time.monotonic()
        self._note_registrations(now)
        leader_since = self._leader_since() or now
        # This loop was held up (a stalled event loop, a paused process): the frames that came
        # meanwhile are not read yet, so everybody would look silent. Count from now.
        due = self._health_due if self._health_due is not None else self._last_health
        self._health_due = None
        if now - max(due, self._last_health + HEALTH_INTERVAL) > STALL_S - HEALTH_INTERVAL:
            self._stalled_at = now
        self._last_health = now
        leader_since = max(leader_since, self._stalled_at)
        for mid in self.state.member_ids():
            await self._sync_service(now, mid, leader_since)
            await self._sync_reachable(now, mid, leader_since)
        self._last_health = time.monotonic()  # (the writes above may have taken a while)
        sig = tuple(sorted(self.state.kv_keys(SERVICE_HEALTH_PREFIX)))
        sig += tuple(sorted(self.state.kv_keys(MAINTENANCE_PREFIX)))
        if sig != self._service_sig:
            # A service failed or came back, a member went in or out of maintenance: plan
            # the weights now, not on the next tick.
            self._service_sig = sig
            self._last_plan = 0.0

    def health_pace(self) -> float:
        """Seconds until the fast chores could change a mark (the leader's health loop
        sleeps that long unless a service check result wakes it): until the first member
        not heard from passes ``unreachable_after_ms`` of silence, at most HEALTH_PACE_MAX
        (service reports go stale in seconds; a marked member comes back after seconds).
        Ten runs a second were one in ten of an idle leader's CPU samples."""
        now = time.monotonic()
        pace = HEALTH_PACE_MAX
        after = self.cfg.unreachable_after_ms / 1000
        if after > 0:
            leader_since = max(self._leader_since() or now, self._stalled_at)
            for mid in self.state.member_ids():
                if mid == self.id:
                    continue
                limit = self._heard(mid, leader_since) + after
                if limit > now:
                    pace = min(pace, limit - now + 0.001)  # (just past it: silent > after)
                elif self.silent_since.get(mid, 0.0) < limit:
                    pace = min(pace, HEALTH_INTERVAL)  # silent too long, not seen so yet
        pace = max(0.005, pace)
        self._health_due = now + pace
        return pace

    def _heard(self, mid: str, leader_since: float) -> float:
        if mid == self.id:
            return time.monotonic()
        # (a member that just joined was no member when it was last heard: count from then)
        return max(self.health_seen.get(mid, 0.0), leader_since, self.joined_at.get(mid, 0.0))

    async def _put_or_del(self, key: str, value: Any | None) -> None:
        cmd = (
            encode_command("kv_del", key=key, cas=None)
            if value is None
            else encode_command("kv_put", key=key, value=value, cas=None)
        )
        try:
            await self._propose_cmd(cmd)
        except AgentError as exc:
            log.debug("%s postponed: %s", key, exc.message)

    async def _sync_service(self, now: float, mid: str, leader_since: float) -> None:
        key = f"{SERVICE_HEALTH_PREFIX}{mid}"
        marked = self.state.kv_get(key) is not None
        rep = self.service_reports.get(mid)
        if rep is None or now - rep[0] > SERVICE_REPORT_STALE_S:
            heard = self._heard(mid, leader_since)
            quiet_for = now - max(rep[0] if rep else 0.0, leader_since)
            if marked and now - heard < 1.0 and quiet_for > SERVICE_REPORT_STALE_S:
                log.warning("member %s no longer checks its service: its mark goes", mid)
                await self._put_or_del(key, None)
            return
        _, ok, detail = rep
        if not ok and not marked:
            log.warning("member %s: its service fails (%s): weight 0, drained", mid, detail)
            await self._put_or_del(key, {"ok": False, "detail": detail, "since": time.time()})
        elif ok and marked:
            log.warning("member %s: its service is ok again", mid)
            await self._put_or_del(key, None)

    async def _sync_reachable(self, now: float, mid: str, leader_since: float) -> None:
        after = self.cfg.unreachable_after_ms / 1000
        key = f"{UNREACHABLE_PREFIX}{mid}"
        marked = self.state.kv_get(key) is not None
        if after <= 0:
            if marked:
                await self._put_or_del(key, None)
            return
        silent = now - self._heard(mid, leader_since)
        if silent > after:
            self.silent_since[mid] = now
            if not marked:
                log.warning(
                    "member %s: not heard from for %.0f ms: unreachable", mid, silent * 1000
                )
                await self._put_or_del(
                    key, {"since": time.time() - silent, "silent_ms": round(silent * 1000)}
                )
        elif marked:
            # Hysteresis: back only once it has answered for reachable_after_ms.
            last_silent = self.silent_since.get(mid, leader_since)
            if now - last_silent >= self.cfg.reachable_after_ms / 1000:
                log.warning("member %s answers again: reachable", mid)
                await self._put_or_del(key, None)

    # ---- the balancers' drain handshake (docs/balancer.md, "Several balancers") ------------
    def _note_registrations(self, now: float) -> None:
        keys = set(self.state.kv_keys(REGISTERED_PREFIX))
        for key in list(self.reg_seen):
            if key not in keys:
                del self.reg_seen[key]
        for key in keys:
            item = self.state.kv_get(key)
            index = int(item["modify_index"]) if item else 0  # type: ignore[arg-type]
            seen = self.reg_seen.get(key)
            if seen is None or seen[0] != index:
                self.reg_seen[key] = (index, now)

    def drain_waits(self, mid: str) -> list[str]:
        """The drained marks a removal of ``mid`` still waits for: one of every balancer
        whose registration is fresh, and the legacy ``balancer/drained/<mid>`` while a
        syncer of the previous version is registered (``balancer/registered`` without a
        ``balancer_id``)."""
        now = time.monotonic()
        self._note_registrations(now)
        waits: list[str] = []
        for key, (_, seen) in sorted(self.reg_seen.items()):
            bid = key[len(REGISTERED_PREFIX) :]
            if "/" in bid:
                continue
            item = self.state.kv_get(key)
            value = item["value"] if item else None
            ttl = finite_number(value.get("ttl_s")) if isinstance(value, dict) else None
            if ttl is None:
                ttl = REGISTRATION_TTL_S
            if now - seen > max(1.0, min(ttl, 300.0)):
                continue  # gone without deregistering: it does not hold removals up
            if self.state.kv_get(drained_key(bid, mid)) is None:
                waits.append(drained_key(bid, mid))
        legacy = self.state.kv_get(REGISTERED_KEY)
        if legacy is not None:
            value = legacy["value"]
            if not (isinstance(value, dict) and value.get("balancer_id")):
                if self.state.kv_get(f"{DRAINED_PREFIX}{mid}") is None:
                    waits.append(f"{DRAINED_PREFIX}{mid}")
        return waits

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
        key = f"{OVERRIDE_PREFIX}{mid}"
        item = self.state.kv_get(key)
        if item is not None and valid_override(item["value"]):
            self.override_warned.pop(key, None)
            return item["value"]  # type: ignore[return-value]
        if item is None:
            self.override_warned.pop(key, None)
        elif self.override_warned.get(key) != item["modify_index"]:
            # (stored by an older version or a restore: the API refuses it now) once per
            # write of the key, not every planning round, and the value cut short
            self.override_warned[key] = int(item["modify_index"])  # type: ignore[arg-type]
            log.warning("ignoring %s = %s: %s", key, shown(item["value"]), OVERRIDE_RULE)
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
                draining=bool(m.get("draining", False))
                or pin == 0
                or self.state.kv_get(f"{SERVICE_HEALTH_PREFIX}{mid}") is not None
                or self.state.kv_get(f"{MAINTENANCE_PREFIX}{mid}") is not None,
                override=pin or None,
            )
        current = self.state.weights()["weights"]
        decision = self.planner.plan(now, inputs, current)
        if decision.commit and decision.table != current:
            log.info("weights: %s (%s)", decision.table, decision.reason)
            await self._propose_cmd(
                encode_command("weights_set", weights=decision.table, reason=decision.reason)
            )
