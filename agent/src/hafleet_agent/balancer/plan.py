"""What the group wants from the backend, and the plan that takes HAProxy there: pure.

:func:`desired` turns a ``/v1/watch`` answer into the servers the backend should hold;
:func:`plan` compares them with HAProxy's ``show servers state`` and ``show stat`` and returns
the Runtime API commands, in order, plus the drains that are done or still in progress.
:func:`server_id` gives each member a stable numeric server id. No I/O here.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..addr import split_host_port
from .haproxy_config import EQUAL_WEIGHT, ServerState

ID_BASE = 1000
ID_LIMIT = 2**31 - 1  # HAProxy's server ids are positive 32-bit integers
ID_SPAN = ID_LIMIT - ID_BASE + 1


def server_id(name: str, taken: Iterable[int] = ()) -> int:
    """A stable numeric server id for member ``name``.

    The first 8 bytes of SHA-256(name), big-endian, modulo the span of ``[1000, 2**31 - 1]``,
    plus 1000: the same member gets the same id on every balancer and after every restart,
    and ids stay clear of the small ones HAProxy numbers configured servers with. If that id
    is already ``taken`` in the backend (two member ids hashing alike: about 1 in 2**31 per
    pair), the next free one is used, wrapping within the range."""
    taken = set(taken)
    digest = hashlib.sha256(name.encode()).digest()
    candidate = ID_BASE + int.from_bytes(digest[:8], "big") % ID_SPAN
    for _ in range(len(taken) + 1):
        if candidate not in taken:
            return candidate
        candidate = ID_BASE + (candidate - ID_BASE + 1) % ID_SPAN
    raise AssertionError("unreachable: more ids taken than there are")


# --- what the group wants -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Want:
    """A member as the backend should hold it."""

    name: str
    host: str
    port: int
    weight: int
    drain: bool
    out: str = ""
    """Why the member is out of service without leaving (it is in maintenance, its service
    check fails, the leader cannot reach it): its server is set to drain, and no drained
    report is made."""


def split_service_addr(addr: str) -> tuple[str, int]:
    try:
        return split_host_port(addr.strip(), what="service address")
    except ValueError:
        raise ValueError(f"bad service address {addr!r}") from None


def desired(view: Mapping[str, Any], strategy: str) -> tuple[dict[str, Want], list[str]]:
    """The servers the backend should have, from a ``/v1/watch`` answer; and the members
    left out (with the reason), for the log.

    ``weighted`` takes each member's weight from the committed table; a member the table
    does not know yet gets the median of the known weights (as the planner does for a
    newcomer), ``EQUAL_WEIGHT`` when nobody has one. The other strategies give every server
    ``EQUAL_WEIGHT``."""
    table = (view.get("weights") or {}).get("weights") or {}
    members = [m for m in view.get("members") or [] if isinstance(m, Mapping) and m.get("id")]
    known = sorted(
        int(w)
        for w in (table.get(str(m["id"])) for m in members)
        if isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= 256
    )
    fallback = known[(len(known) - 1) // 2] if known else EQUAL_WEIGHT
    wants: dict[str, Want] = {}
    skipped: list[str] = []
    for m in members:
        mid = str(m["id"])
        addr = m.get("service_addr")
        if not addr:
            skipped.append(f"{mid}: no service address")
            continue
        try:
            host, port = split_service_addr(str(addr))
        except ValueError as exc:
            skipped.append(f"{mid}: {exc}")
            continue
        if strategy == "weighted":
            w = table.get(mid)
            weight = (
                w if isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= 256 else fallback
            )
        else:
            weight = EQUAL_WEIGHT
        # Fields of a newer agent (an older one has neither: in service).
        out = ""
        if m.get("maintenance") is True:
            out, weight = "it is in maintenance", 0
        elif m.get("service_healthy") is False:
            out, weight = "its service check fails", 0
        elif m.get("reachable") is False:
            out = "the leader cannot reach it"
        wants[mid] = Want(mid, host, port, weight, bool(m.get("draining")), out)
    return wants, skipped


# --- the plan: a pure function of the two states -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    command: str
    server: str
    why: str
    starts_drain: bool = False
    deletes: bool = False


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    drained: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Draining members HAProxy has no session for any more (or whose timeout passed)."""
    waiting: list[str] = field(default_factory=list)
    """What is still in progress (drains), for the log and the polling pace."""


def _sessions(stats: Mapping[str, Mapping[str, str]], name: str) -> int:
    row = stats.get(name) or {}
    total = 0
    for col in ("scur", "qcur"):
        with contextlib.suppress(ValueError):
            total += int(row.get(col) or 0)
    return total


def plan(
    backend: str,
    wants: Mapping[str, Want],
    servers: Iterable[ServerState],
    stats: Mapping[str, Mapping[str, str]],
    drain_started: Mapping[str, float],
    now: float,
    drain_timeout: float,
    service_back: Iterable[str] = (),
) -> Plan:
    """The commands that take the backend from ``servers`` to ``wants``, in order.

    ``service_back``: members whose service check passes again since the last round; if
    HAProxy's own check still holds their server down, it is set up at once (HAProxy's
    next failing check takes it down again)."""
    service_back = set(service_back)
    p = Plan()
    have = {s.name: s for s in servers}
    taken = {s.id for s in have.values()}

    def add(cmd: str, name: str, why: str, **kw: Any) -> None:
        p.actions.append(Action(cmd, name, why, **kw))

    for name, w in sorted(wants.items()):
        srv = f"{backend}/{name}"
        host = f"[{w.host}]" if ":" in w.host else w.host
        s = have.get(name)
        if s is None:
            sid = server_id(name, taken)
            taken.add(sid)
            add(
                f"add server {srv} {host}:{w.port} id {sid} weight {w.weight} check",
                name,
                "new member",
            )
            add(f"enable health {srv}", name, "new member")
            if w.drain:
                add(f"set server {srv} state drain", name, "member is draining", starts_drain=True)
            elif w.out:
                add(f"set server {srv} state drain", name, w.out)
            else:
                add(f"enable server {srv}", name, "new member")
            continue
        if (s.addr, s.port) != (w.host, w.port):
            add(
                f"set server {srv} addr {w.host} port {w.port}",
                name,
                f"service address {s.addr}:{s.port} -> {w.host}:{w.port}",
            )
        if s.check_disabled:
            add(f"enable health {srv}", name, "health check off")
        if s.uweight != w.weight:
            add(f"set server {srv} weight {w.weight}", name, f"weight {s.uweight} -> {w.weight}")
        if w.drain:
            if s.maint or not s.drain:
                add(f"set server {srv} state drain", name, "member is draining", starts_drain=True)
                continue
            left = _sessions(stats, name)
            since = drain_started.get(name, now)
            if left == 0:
                p.drained[name] = {"sessions": 0, "timed_out": False}
            elif now - since >= drain_timeout:
                p.drained[name] = {"sessions": left, "timed_out": True}
            else:
                p.waiting.append(f"{name}: draining, {left} session(s) left")
        elif w.out:
            if s.maint or not s.drain:
                add(f"set server {srv} state drain", name, w.out)
        else:
            if s.maint or s.drain:
                add(f"set server {srv} state ready", name, "member in service")
            if name in service_back and s.op_state == 0 and s.check_state & s.CHECK_ENABLED:
                add(f"set server {srv} health up", name, "its service check passes again")

    for name, s in sorted(have.items()):
        if name in wants:
            continue
        srv = f"{backend}/{name}"
        if (stats.get(name) or {}).get("bck") == "1":
            continue  # a backup server of the configuration: not the group's
        left = _sessions(stats, name)
        since = drain_started.get(name)
        timed_out = since is not None and now - since >= drain_timeout
        if not s.maint and not s.drain:
            add(f"set server {srv} state drain", name, "member left", starts_drain=True)
            p.waiting.append(f"{name}: left, draining")
            continue
        if left and not timed_out:
            p.waiting.append(f"{name}: left, {left} session(s) left")
            continue
        if not s.maint:
            add(f"set server {srv} state maint", name, "member left, drained")
        if left:
            add(
                f"shutdown sessions server {srv}",
                name,
                f"drain timeout ({drain_timeout:g}s) passed with {left} session(s) left",
            )
        add(f"del server {srv}", name, "member left", deletes=True)
    return p
