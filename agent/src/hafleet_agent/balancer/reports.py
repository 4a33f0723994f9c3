"""The balancer's side of the KV protocol with the agents (docs/balancer.md, "The protocol
with the agents").

The syncer tells the agents what HAProxy has done through a few replicated KV keys
(:mod:`hafleet_agent.keys`): ``balancer/registered`` once it has checked HAProxy and has a
view (from then on a removal waits for the member's drain), ``balancer/drained/<id>`` when a
draining member has no session left on its server (or the drain timeout passed, or it has
no server). :class:`DrainReports` writes them once each, deletes the mark of a member that
left, and the stale mark of a member that is in service again (it would let the member's
next removal skip the drain). A write that does not take is tried again on a later round:
each is a whole value, safe to repeat.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..keys import (
    DRAINED_PREFIX,
    REGISTERED_KEY,
    REGISTERED_PREFIX,
    REGISTRATION_TTL_S,
    drained_key,
)
from ..registrations import finite_number
from .plan import Plan, Want

log = logging.getLogger("hafleet.balancer")


@dataclass
class DrainReports:
    """The KV reports of one syncer; ``write(key, value=None, delete=False)`` and
    ``get_stale(key)`` reach the agents (:meth:`.syncer.Balancer.write`, ``get_stale``)."""

    write: Callable[..., Awaitable[bool]]
    get_stale: Callable[[str], Awaitable[Any]]
    backend: str
    strategy: str
    drain_timeout: float
    balancer_id: str = "balancer"
    registered: bool = False
    reported: dict[str, bool] = field(default_factory=dict)  # id -> reported (timed out?)
    # The legacy single keys (``balancer/registered``, ``balancer/drained/<id>``) for the
    # agents of the previous version: this syncer writes the drained one only while the
    # registration is its own (docs/balancer.md, "Several balancers").
    legacy_registered: bool = False
    legacy_own: bool = False
    own_registered_at: float = 0.0  # time.monotonic() of the last refresh of our own key
    checked_stale_key: set[str] = field(default_factory=set)
    to_forget: set[str] = field(default_factory=set)
    # More fields of the registration, asked at each write (the VIP: ``vip.VIPCheck.fields``).
    extra: Callable[[], Mapping[str, Any]] | None = None

    def forget(self, member_id: str) -> None:
        """The server of ``member_id`` is deleted: its drained mark goes too (once it has
        left the group)."""
        self.to_forget.add(member_id)

    def _registration(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "strategy": self.strategy,
            "drain_timeout_s": self.drain_timeout,
            "at": time.time(),
            "balancer_id": self.balancer_id,
            "ttl_s": REGISTRATION_TTL_S,
            **(self.extra() if self.extra is not None else {}),
        }

    async def _register_legacy(self) -> None:
        """``balancer/registered`` (what agents of the previous version wait on): written
        when absent, or when its holder (a syncer of this version) is gone; a value without
        ``balancer_id`` is a previous version's syncer's, left alone."""
        item = await self.get_stale(REGISTERED_KEY)
        value = item.get("value") if item else None
        holder = value.get("balancer_id") if isinstance(value, dict) else None
        if item is not None and holder != self.balancer_id:
            if holder is None or await self._alive(str(holder)):
                self.legacy_registered, self.legacy_own = True, False
                return
        if item is not None and holder == self.balancer_id:
            self.legacy_registered = self.legacy_own = True
            return
        if await self.write(REGISTERED_KEY, self._registration()):
            self.legacy_registered = self.legacy_own = True

    async def _alive(self, balancer_id: str) -> bool:
        item = await self.get_stale(f"{REGISTERED_PREFIX}{balancer_id}")
        value = item.get("value") if item else None
        if not isinstance(value, dict):
            return False
        at, ttl = finite_number(value.get("at")), finite_number(value.get("ttl_s"))
        if at is None or ttl is None:
            return False  # (an integer too large for a float raised OverflowError here)
        return time.time() - at <= 3 * ttl  # (the clocks of two hosts: a wide margin)

    async def refresh(self) -> None:
        """Write our registration again (the syncer's own task, every
        ``REGISTRATION_REFRESH_S``: not in the rounds, which a KV call to an agent that is cut
        off would hold up), and look at the legacy one again."""
        if not self.registered:
            return
        if await self.write(f"{REGISTERED_PREFIX}{self.balancer_id}", self._registration()):
            self.own_registered_at = time.monotonic()
        await self._register_legacy()

    async def deregister(self) -> None:
        """On a clean stop: our registration goes (and the legacy one, if ours), so that no
        removal waits for us."""
        if await self.write(f"{REGISTERED_PREFIX}{self.balancer_id}", delete=True):
            log.info("deregistered %s", self.balancer_id)
        if self.legacy_own:
            item = await self.get_stale(REGISTERED_KEY)
            value = item.get("value") if item else None
            if isinstance(value, dict) and value.get("balancer_id") == self.balancer_id:
                await self.write(REGISTERED_KEY, delete=True)

    async def report(self, view: Mapping[str, Any], wants: Mapping[str, Want], p: Plan) -> None:
        """One round's reports: register, mark the members HAProxy is done draining, delete
        the marks of members that left or came back."""
        if not self.legacy_registered:
            await self._register_legacy()
        if not self.own_registered_at:
            if await self.write(f"{REGISTERED_PREFIX}{self.balancer_id}", self._registration()):
                self.own_registered_at = time.monotonic()
        if not self.registered and self.legacy_registered and self.own_registered_at:
            self.registered = True
            log.info(
                "registered as %s: removals now wait for this balancer to drain",
                self.balancer_id,
            )
        members = {str(m["id"]): m for m in view.get("members") or [] if m.get("id")}
        # Draining members HAProxy is done with; members with no server at all have nothing
        # to drain.
        done = dict(p.drained)
        for mid, m in members.items():
            if m.get("draining") and mid not in wants:
                done.setdefault(mid, {"sessions": 0, "timed_out": False, "no_server": True})
        for mid, detail in sorted(done.items()):
            if mid in self.reported:
                continue
            value = {
                "backend": self.backend,
                "balancer_id": self.balancer_id,
                "at": time.time(),
                **detail,
            }
            # The legacy mark first (while the legacy registration is ours): the agent that
            # removes the member may go on as soon as our own mark commits.
            if self.legacy_own and not await self.write(f"{DRAINED_PREFIX}{mid}", value):
                continue
            if await self.write(drained_key(self.balancer_id, mid), value):
                self.reported[mid] = bool(detail.get("timed_out"))
                log.info(
                    "reported %s drained%s",
                    mid,
                    " (drain timeout passed)" if detail.get("timed_out") else "",
                )
        # Forget the reports of members that left (and whose server is gone) ...
        for mid in list(self.reported):
            if mid not in members:
                self.to_forget.add(mid)
                del self.reported[mid]
        for mid in sorted(self.to_forget):
            if mid in members:
                self.to_forget.discard(mid)
                continue
            if await self.write(
                drained_key(self.balancer_id, mid), delete=True
            ) and await self.write(f"{DRAINED_PREFIX}{mid}", delete=True):
                self.to_forget.discard(mid)
        # ... and a stale report of a member that is in service (left once, came back with
        # the same id): it would let its next removal skip the drain.
        for mid, m in members.items():
            if m.get("draining"):
                self.checked_stale_key.discard(mid)
                continue
            self.reported.pop(mid, None)
            if mid in self.checked_stale_key:
                continue
            stale_ok = True
            for key in (f"{DRAINED_PREFIX}{mid}", drained_key(self.balancer_id, mid)):
                if await self.get_stale(key) is not None:
                    if not await self.write(key, delete=True):
                        stale_ok = False
                        continue
                    log.info("deleted a stale drained report %s (in service)", key)
            if stale_ok:
                self.checked_stale_key.add(mid)
