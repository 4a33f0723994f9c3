"""Forwarding a write that reached a follower to the leader, and relaying its answer.

The leader gets the path and query as they came, still encoded (never parsed and
normalized again on the way). A forwarded request carries FORWARDED (the sender's id) and is
not forwarded again. A connect error means the request was never sent (503, not proposed);
no answer after it was sent means it may be applied (504). With TLS on, the leader is
reached over HTTPS and its certificate checked against the cluster CA (and its address).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from ..node.errors import NoLeader, Unknown
from . import httpclient, web
from .conn import REFUSAL_BODY as _REFUSAL_BODY

if TYPE_CHECKING:
    from ..node.verbs import NodeVerbs

FORWARDED = "X-Hafleet-Forwarded"


class Forwarder:
    """The API's way to the leader: a fresh connection per forward (:mod:`.httpclient`)."""

    def __init__(self, agent: NodeVerbs) -> None:
        self.agent = agent

    async def forward(
        self, request: web.Request, body: bytes | None = None, handed_over: bool = False
    ) -> web.Response:
        """Send a write to the leader and relay its answer. A forwarded request is not
        forwarded again (no loops), unless this node just handed leadership over for it."""
        if request.headers.get(FORWARDED) and not handed_over:
            lead = self.agent.leader_id()
            raise NoLeader(
                f"a forwarded write reached {self.agent.id}, which is not the leader"
                + (f" ({lead} leads)" if lead else " (no leader known here)")
                + "; it is not forwarded twice, and was not proposed"
            )
        api = self.agent.leader_api()
        if api is None:
            raise NoLeader("no leader known; the write was not proposed")
        # No retry, and a fresh connection per forward: a connect error then means the
        # request was never sent (a retry after a broken connection would turn a write the
        # leader may have applied into a 503 "not proposed").
        tls = self.agent.cfg.tls
        headers = {
            "Authorization": request.headers.get("Authorization", ""),
            FORWARDED: self.agent.id,
            "Content-Type": "application/json",
        }
        data = body if body is not None else await request.read()
        try:
            # The path as it came, still encoded: parsed again and normalized (dot segments
            # resolved, %2F decoded), it would make the leader write another key.
            async with asyncio.timeout(self.agent.write_timeout() + 5):
                status, payload = await httpclient.request(
                    api,
                    request.method,
                    request.raw_path,
                    headers,
                    data,
                    ssl_context=tls.api_client if tls is not None else None,
                )
        except httpclient.ConnectFailed as exc:
            raise NoLeader(f"the leader at {api} is unreachable ({exc}); not proposed") from None
        except (TimeoutError, OSError, httpclient.BadResponse) as exc:
            raise Unknown(
                f"forwarded to the leader at {api}, no answer ({exc!r}); it may be applied"
            ) from None
        if status == 503 and payload == _REFUSAL_BODY:
            # The leader's refusal in its own words ("this agent") would blame this one.
            error = f"the leader at {api} has too many connections; not proposed"
            payload = json.dumps({"error": error}).encode()
        return web.Response(body=payload, status=status, content_type="application/json")

    async def close(self) -> None:
        """Nothing to close: no connection outlives its forward."""
