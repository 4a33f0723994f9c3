"""The membership verbs (``Membership``): add a member as a learner, drain and remove one,
hand leadership over (also before the leader's own removal). The leader acts on them; the node
(``node.py``) passes the collaborators in and offers the verbs to the API (``NodeVerbs``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import AgentConfig
from ..ids import member_id_error
from ..keys import MAINTENANCE_PREFIX, UNREACHABLE_PREFIX
from ..raft.types import ConfChange, ConfChangeType
from ..state import StateError, StateMachine, encode_command, member_context
from .chores import LeaderChores
from .driver import Driver
from .errors import AgentError, BadRequest, NoLeader, NotFound, StateErrorResult, Unknown
from .peers import PeerTable

log = logging.getLogger("hafleet.agent")


class Membership:
    def __init__(
        self,
        node_id: str,
        cfg: AgentConfig,
        state: StateMachine,
        driver: Driver,
        chores: LeaderChores,
        peer_table: PeerTable,
        *,
        leader_api: Callable[[], str | None],
    ) -> None:
        self.id = node_id
        self.cfg = cfg
        self.state = state
        self.driver = driver
        self.chores = chores
        self.peer_table = peer_table
        self._leader_api = leader_api

    async def add_member(
        self, mid: str, raft_addr: str, api_addr: str, service_addr: str | None
    ) -> dict[str, Any]:
        error = member_id_error(mid)
        if error is not None:  # never proposed (the API and the join frames check it too)
            raise BadRequest(error)
        if not self.driver.is_leader():
            raise NoLeader("not the leader")
        existing = self.state.member(mid)
        if existing is not None:
            if existing.get("raft_addr") == raft_addr and existing.get("api_addr") == api_addr:
                return existing
            raise AgentError(
                f"node id {mid!r} is already a member at {existing.get('raft_addr')}; "
                f"remove it first (DELETE /v1/members/{mid})",
                status=409,
            )
        try:
            ctx = member_context(raft_addr, api_addr, service_addr)
        except StateError as exc:
            raise BadRequest(exc.message) from None
        p = self.peer_table.get_or_add(mid, raft_addr, "api", time.monotonic())
        if p is not None and not p.api_addr:
            p.api_addr, p.service_addr = api_addr, service_addr
        self.chores.joined_at[mid] = time.monotonic()
        res = await self.driver.propose_conf(ConfChange(ConfChangeType.ADD_LEARNER, mid, ctx))
        if not res.ok:
            raise StateErrorResult(res.error)
        log.info("added %s as a learner", mid)
        return res.result or {}

    async def remove_member(self, mid: str, drain_timeout: float | None = None) -> dict[str, Any]:
        """Drain, then remove (the leader only; the API hands over first when mid is us)."""
        if not self.driver.is_leader():
            raise NoLeader("not the leader")
        m = self.state.member(mid)
        if m is None:
            if not self.driver.in_config(mid):
                raise NotFound(f"no member {mid!r}")
            # In the Raft configuration without a record: an id an older version let in,
            # which the member table dropped (state.py). Nothing to drain; remove it.
            m = {"draining": True}
        if not m.get("draining"):
            await self.driver.propose_cmd(encode_command("member_drain", id=mid, draining=True))
        timeout = self.cfg.drain_timeout_s if drain_timeout is None else drain_timeout
        waits = self.chores.drain_waits(mid) if timeout > 0 else []
        if waits:
            # Every registered balancer's drained mark (node/chores.py, drain_waits).
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and (waits := self.chores.drain_waits(mid)):
                await self.driver.wait_index(
                    self.state.index, min(1.0, deadline - time.monotonic())
                )
            if waits:
                log.warning("removing %s without the drained mark(s) %s", mid, ", ".join(waits))
        res = await self.driver.propose_conf(ConfChange(ConfChangeType.REMOVE, mid))
        log.info("removed %s", mid)
        if self.state.kv_get(f"{MAINTENANCE_PREFIX}{mid}") is not None:
            # A node added again under this id starts in service.
            try:
                cmd = encode_command("kv_del", key=f"{MAINTENANCE_PREFIX}{mid}", cas=None)
                await self.driver.propose_cmd(cmd)
            except AgentError as exc:
                log.warning("%s%s left behind: %s", MAINTENANCE_PREFIX, mid, exc.message)
        return {"id": mid, "removed": True, "index": res.index}

    async def hand_over_to_remove_self(self) -> None:
        """Before the leader's own removal: hand leadership over and wait (up to 5 s) until
        the new leader's API address is known, so that the removal can go to it. Raises
        (409) when there is nobody to hand over to."""
        new = await self.hand_over(timeout=self.driver.write_timeout())
        if new is None:
            raise AgentError("the last member cannot remove itself", status=409)
        for _ in range(50):
            if self._leader_api() and self.driver.leader_id() != self.id:
                break
            await self.driver.wait_index(self.state.index, 0.1)

    def _unreachable(self, mid: str) -> bool:
        return self.state.kv_get(f"{UNREACHABLE_PREFIX}{mid}") is not None

    async def hand_over(self, to: str | None = None, timeout: float = 2.0) -> str | None:
        """Transfer leadership (to ``to`` or the most caught-up voter); returns the new
        leader, or None when there is nobody to hand over to. ``to`` naming this node, the
        leader, is done already: its id at once (as etcd's ``move-leader`` to the leader),
        and a transfer to another one still under way is called off."""
        raw = self.driver.raw
        if raw is None or not self.driver.is_leader():
            return self.driver.leader_id()
        voters, prs = raw.basic_status().voters, raw.progress()
        candidates = [v for v in voters if v != self.id]
        # (not a voter marked unreachable, while another one is there to take it)
        candidates = [v for v in candidates if not self._unreachable(v)] or candidates
        if to is not None:
            if to not in voters:
                raise BadRequest(f"{to!r} is not a voter")
            if to == self.id:
                # Nothing to wait for: the core only cancels a transfer under way to another.
                raw.transfer_leadership(to)
                self.driver.wake()
                return to
            if self._unreachable(to):
                # (it waited for the write timeout, then answered 504 "did not finish")
                raise AgentError(
                    f"{to} is unreachable from the leader (not heard from for "
                    f"{self.cfg.unreachable_after_ms} ms or more); leadership stays here",
                    status=409,
                )
            candidates = [to]
        if not candidates:
            return None
        target = max(candidates, key=lambda v: (prs[v].match, v) if v in prs else (-1, v))
        log.info("handing leadership over to %s", target)
        raw.transfer_leadership(target)
        self.driver.wake()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = raw.basic_status().lead
            if lead is not None and lead != self.id:
                return lead
            await self.driver.wait_index(self.state.index, 0.05)
        raise Unknown(f"leadership transfer to {target} did not finish in {timeout:.1f}s")
