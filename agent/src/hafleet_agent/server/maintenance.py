"""``PUT`` and ``DELETE /v1/members/{id}/maintenance``: take a member out of rotation and
back, without taking it out of the group (docs/api.md, "Maintenance").

A member in maintenance is the replicated key ``maintenance/<id>`` (:mod:`..keys`): the
leader gives it weight 0, every balancer drains its server, and it stays a voter (nothing
about its Raft membership changes). ``PUT`` writes the key (``{"since", "reason"}``) unless it
is there already; ``DELETE`` deletes it unless it is gone. Both answer the member's
maintenance (``{"id", "maintenance", "since", "reason", "changed"}``), on the leader (a
follower forwards them). ``PUT`` needs the member (404 otherwise); ``DELETE`` of a member that
is gone still deletes a key left behind.

The handlers use only the request's ``match_info``, ``query``, ``headers`` and ``read()``, and
``json_response`` of the ``web`` namespace the API hands in (aiohttp's or the server's own).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..ids import has_control, member_id_error, shown
from ..keys import MAINTENANCE_PREFIX
from ..node.errors import BadRequest, NotFound, StateErrorResult
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

    async def start(request: Any) -> Any:
        mid = _member_id(request)
        raw = await request.read()
        reason = _reason(raw)
        if not agent.is_leader():
            return await forwarder.forward(request, raw)
        if agent.state.member(mid) is None:
            raise NotFound(f"no member {shown(mid)}")
        key = f"{MAINTENANCE_PREFIX}{mid}"
        item = agent.state.kv_get(key)
        if item is not None:
            return web.json_response(view(item, mid, changed=False))
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
