"""``PUT`` and ``DELETE /v1/members/{id}/maintenance``: take a member out of rotation and
back, without taking it out of the group (docs/api.md, "Maintenance").

A member in maintenance is the replicated key ``maintenance/<id>`` (:mod:`..keys`): the
leader gives it weight 0, every balancer drains its server, and it stays a voter (nothing
about its Raft membership changes). ``PUT`` writes the key (``{"since", "reason"}``) unless it
is there already; ``DELETE`` deletes it unless it is gone. Both answer the member's
maintenance (``{"id", "maintenance", "since", "reason", "changed"}``), on the leader (a
follower forwards them). ``PUT`` needs the member (404 otherwise); ``DELETE`` of a member that
is gone still deletes a key left behind.

``PUT`` of a member not yet in maintenance answers 409 when no other member would stay in
service (:func:`out_of_service`: HAProxy would answer 503 to every request), unless the
request says ``?force=true``. The check and the write hold one lock, so two such requests
at once cannot each count on the other.

The handlers use only the request's ``match_info``, ``query``, ``headers`` and ``read()``, and
``json_response`` of the ``web`` namespace the API hands in (aiohttp's or the server's own).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..ids import has_control, member_id_error, shown
from ..keys import MAINTENANCE_PREFIX, SERVICE_HEALTH_PREFIX, UNREACHABLE_PREFIX
from ..node.errors import AgentError, BadRequest, NotFound, StateErrorResult
from ..state import encode_command

if TYPE_CHECKING:
    from ..node.verbs import NodeVerbs
    from .forward import Forwarder

#: The longest ``reason`` a ``PUT`` may give.
MAX_REASON_CHARS = 200
PATH = "/v1/members/{id}/maintenance"

Handler = Callable[[Any], Awaitable[Any]]


def _member_id(request: Any) -> str:
    mid = request.match_info["id"]
    error = member_id_error(mid, "member id")
    if error is not None:
        raise BadRequest(error)
    return mid


def _reason(raw: bytes) -> str | None:
    """The optional ``{"reason": "..."}`` of a ``PUT`` body (an empty body: none)."""
    if not raw.strip():
        return None
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest('the body must be a JSON object such as {"reason": "..."}') from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - {"reason"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; allowed: ['reason']")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise BadRequest(f"reason must be a string of at most {MAX_REASON_CHARS} characters")
    if reason is not None and has_control(reason):
        raise BadRequest("reason must not hold control or format characters (one line of text)")
    return reason


def _force(request: Any) -> bool:
    """The ``force`` query parameter: ``true``/``1`` or ``false``/``0`` (absent: false)."""
    text = request.query.get("force")
    if text is None or text in ("false", "0"):
        return False
    if text in ("true", "1"):
        return True
    raise BadRequest(f"force must be true or false, got {shown(text)}")


def out_of_service(agent: NodeVerbs, mid: str) -> dict[str, str] | None:
    """None when a member other than ``mid`` is in service: not in maintenance, not being
    removed, its service check not failing (``health/service/<id>``), reachable (no
    ``health/unreachable/<id>``) and a planned weight above 0 (none yet: a newcomer, which
    the balancers give the median weight, counts). Otherwise each other member's reason."""
    state = agent.state
    weights = state.weights()["weights"]
    why: dict[str, str] = {}
    for m in state.members():
        other = str(m["id"])
        if other == mid:
            continue
        weight = weights.get(other)
        if state.kv_get(f"{MAINTENANCE_PREFIX}{other}") is not None:
            why[other] = "in maintenance"
        elif m.get("draining"):
            why[other] = "being removed"
        elif state.kv_get(f"{SERVICE_HEALTH_PREFIX}{other}") is not None:
            why[other] = "its service check fails"
        elif state.kv_get(f"{UNREACHABLE_PREFIX}{other}") is not None:
            why[other] = "unreachable"
        elif weight is not None and not weight > 0:
            why[other] = "weight 0"
        else:
            return None
    return why


def _refusal(mid: str, why: dict[str, str]) -> AgentError:
    listed = [f"{other} {reason}" for other, reason in sorted(why.items())[:8]]
    if len(why) > 8:
        listed.append(f"{len(why) - 8} more")
    others = "; ".join(listed) or f"{mid} is the only member"
    return AgentError(
        f"this would leave no member in service: {others}; HAProxy would answer 503 to every "
        f"request. Use force (?force=true, hafleet-agent maintenance on {mid} --force) to do "
        "it anyway",
        status=409,
    )


def view(item: dict[str, Any] | None, mid: str, changed: bool) -> dict[str, Any]:
    """The answer: the member's maintenance as the key holds it."""
    value = item["value"] if item is not None else None
    value = value if isinstance(value, dict) else {}
    return {
        "id": mid,
        "maintenance": item is not None,
        "since": value.get("since"),
        "reason": value.get("reason"),
        "changed": changed,
    }


def routes(agent: NodeVerbs, forwarder: Forwarder, web: Any) -> list[tuple[str, str, Handler]]:
    """The two routes, bound to the API's node and forwarder; ``web`` gives
    ``json_response``."""

    lock = asyncio.Lock()  # the last-in-service check and the write, one PUT at a time

    async def start(request: Any) -> Any:
        mid = _member_id(request)
        force = _force(request)
        raw = await request.read()
        reason = _reason(raw)
        if not agent.is_leader():
            return await forwarder.forward(request, raw)
        async with lock:
            return await _start(mid, reason, force)

    async def _start(mid: str, reason: str | None, force: bool) -> Any:
        if agent.state.member(mid) is None:
            raise NotFound(f"no member {shown(mid)}")
        key = f"{MAINTENANCE_PREFIX}{mid}"
        item = agent.state.kv_get(key)
        if item is not None:
            return web.json_response(view(item, mid, changed=False))
        why = None if force else out_of_service(agent, mid)
        if why is not None:
            raise _refusal(mid, why)
        value = {"since": round(time.time(), 3), "reason": reason}
        try:
            item = await agent.write(encode_command("kv_put", key=key, value=value, cas=0))
        except StateErrorResult as exc:
            if exc.status != 409:
                raise
            # another PUT was first: the member is in maintenance
            return web.json_response(view(agent.state.kv_get(key), mid, changed=False))
        return web.json_response(view(item, mid, changed=True))

    async def end(request: Any) -> Any:
        mid = _member_id(request)
        if not agent.is_leader():
            return await forwarder.forward(request, b"")
        key = f"{MAINTENANCE_PREFIX}{mid}"
        if agent.state.kv_get(key) is None:
            if agent.state.member(mid) is None:
                raise NotFound(f"no member {shown(mid)}")
            return web.json_response(view(None, mid, changed=False))
        await agent.write(encode_command("kv_del", key=key, cas=None))
        return web.json_response(view(None, mid, changed=True))

    return [("PUT", PATH, start), ("DELETE", PATH, end)]
