"""Forwarding a write that reached a follower to the leader, and relaying its answer.

The leader gets the path and query as they came, still encoded (never parsed and
normalized again on the way). A forwarded request carries FORWARDED (the sender's id) and is
not forwarded again. A connect error means the request was never sent (503, not proposed);
no answer after it was sent means it may be applied (504). With TLS on, the leader is
reached over HTTPS and its certificate checked against the cluster CA (and its address).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from yarl import URL

from ..node.errors import NoLeader, Unknown

if TYPE_CHECKING:
    from ..node.verbs import NodeVerbs

FORWARDED = "X-Hafleet-Forwarded"


class Forwarder:
    """The API's way to the leader: one client session, made on the first forward."""

    def __init__(self, agent: NodeVerbs) -> None:
        self.agent = agent
        self.session: aiohttp.ClientSession | None = None

    async def forward(
        self, request: web.Request, body: bytes | None = None, handed_over: bool = False
    ) -> web.Response:
        """Send a write to the leader and relay its answer. A forwarded request is not
        forwarded again (no loops), unless this node just handed leadership over for it."""
        if request.headers.get(FORWARDED) and not handed_over:
            raise NoLeader("forwarded to a node that is not the leader; no leader known here")
        api = self.agent.leader_api()
        if api is None:
            raise NoLeader("no leader known; the write was not proposed")
        if self.session is None:
            # aiohttp retries an idempotent request (PUT, DELETE) once on a new connection
            # when the first one breaks; a failed connect on that retry would turn a write the
            # leader may have applied into a 503 "not proposed". No retries and a fresh
            # connection per forward: a connect error then means the request was never sent.
            tls = self.agent.cfg.tls
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    force_close=True, ssl=tls.api_client if tls is not None else True
                )
            )
            self.session._retry_connection = False  # no public switch for it in aiohttp 3.x
        # The path as it came, still encoded: a string would be parsed again and normalized
        # (dot segments resolved, %2F decoded), and the leader would write another key.
        scheme = "https" if self.agent.cfg.tls is not None else "http"
        url = URL(f"{scheme}://{api}{request.rel_url.raw_path_qs}", encoded=True)
        headers = {
            "Authorization": request.headers.get("Authorization", ""),
            FORWARDED: self.agent.id,
            "Content-Type": "application/json",
        }
        data = (
            body if body is not None else (await request.read() if request.can_read_body else None)
        )
        timeout = aiohttp.ClientTimeout(total=self.agent.write_timeout() + 5)
        try:
            async with self.session.request(
                request.method, url, data=data, headers=headers, timeout=timeout
            ) as resp:
                payload = await resp.read()
                return web.Response(
                    body=payload, status=resp.status, content_type="application/json"
                )
        except aiohttp.ClientConnectorError as exc:
            raise NoLeader(f"the leader at {api} is unreachable ({exc}); not proposed") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unknown(
                f"forwarded to the leader at {api}, no answer ({exc!r}); it may be applied"
            ) from None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
