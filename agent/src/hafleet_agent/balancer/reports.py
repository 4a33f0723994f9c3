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

from ..keys import DRAINED_PREFIX, REGISTERED_KEY
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
    registered: bool = False
    reported: dict[str, bool] = field(default_factory=dict)  # id -> reported (timed out?)
    checked_stale_key: set[str] = field(default_factory=set)
    to_forget: set[str] = field(default_factory=set)

    def forget(self, member_id: str) -> None:
        """The server of ``member_id`` is deleted: its drained mark goes too (once it has
        left the group)."""
        self.to_forget.add(member_id)

    async def report(self, view: Mapping[str, Any], wants: Mapping[str, Want], p: Plan) -> None:
        """One round's reports: register, mark the members HAProxy is done draining, delete
        the marks of members that left or came back."""
        if not self.registered:
            self.registered = await self.write(
                REGISTERED_KEY,
                {
                    "backend": self.backend,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "strategy": self.strategy,
                    "drain_timeout_s": self.drain_timeout,
                    "at": time.time(),
                },
            )
            if self.registered:
                log.info("registered: removals now wait for this balancer to drain")
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
            value = {"backend": self.backend, "at": time.time(), **detail}
            if await self.write(f"{DRAINED_PREFIX}{mid}", value):
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
            if await self.write(f"{DRAINED_PREFIX}{mid}", delete=True):
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
            if await self.get_stale(f"{DRAINED_PREFIX}{mid}") is not None:
                if not await self.write(f"{DRAINED_PREFIX}{mid}", delete=True):
                    continue
                log.info("deleted a stale drained report of %s (in service)", mid)
            self.checked_stale_key.add(mid)
