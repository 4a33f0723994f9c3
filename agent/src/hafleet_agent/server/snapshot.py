"""``GET /v1/snapshot``: a consistent backup of the replicated state (docs/operations.md).

Any member answers it. It first takes a linearizable read point (ReadIndex: the leader
confirms it still leads and names its commit index; this member waits until it has applied
that far), then copies the state at once, with no await in between: the copy is the state
at one applied index, at least as new as every write acknowledged before the request came.
The copy is encoded in a worker thread (the event loop goes on) and answered as one body in
the format of :mod:`hafleet_agent.backupfile` (header, SHA-256, the state's JSON), with
``Content-Length``. The read token may call it (it reads no more than ``GET /v1/kv`` does).

``?stale=1`` skips the read point: the state this member has applied, committed entries only
but maybe not the newest ones, served without a leader. That is the way out when the group
has lost its quorum for good (docs/operations.md): save it from the member that has applied
the most (``applied_index`` in ``/v1/status``) and restore a new group from it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..backupfile import Backup, encode_backup
from ..state import encode_snapshot_parts
from . import web

if TYPE_CHECKING:
    from ..node.verbs import NodeVerbs

CONTENT_TYPE = "application/octet-stream"


async def take_snapshot(agent: NodeVerbs, stale: bool = False) -> Backup:
    """The state at a committed index no older than the request (see the docstring); with
    ``stale``, this member's applied state as it is (no leader needed)."""
    if not stale:
        await agent.read_barrier()
    parts = agent.state.snapshot_parts()  # no await since the barrier: one applied index
    status = agent.raft_status()
    term = status.term if status is not None else 0
    cluster_id = agent.status().get("cluster_id") or ""
    body = await asyncio.to_thread(encode_snapshot_parts, parts)
    return Backup(
        cluster=agent.cfg.cluster,
        cluster_id=str(cluster_id),
        node_id=agent.id,
        index=parts.index,
        term=term,
        created=int(time.time()),
        body=body,
    )


def snapshot_handler(agent: NodeVerbs) -> Callable[[Any], Awaitable[Any]]:
    """The route's handler for ``agent`` (``server/api.py``'s build_app adds it). It answers
    with the response type of the HTTP server api.py runs, and uses nothing of the request."""

    async def snapshot(request: Any) -> Any:  # ?stale=1: no read point (see the docstring)
        stale = request.query.get("stale") not in (None, "0", "false")
        backup = await take_snapshot(agent, stale)
        blob = await asyncio.to_thread(encode_backup, backup)
        end = len(blob) - len(backup.body)
        name = f"hafleet-{backup.cluster}-{backup.index}.snap"
        return web.Response(
            status=200,
            body=blob,
            content_type=CONTENT_TYPE,
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "X-Hafleet-Index": str(backup.index),
                "X-Hafleet-Sha256": blob[end - 32 : end].hex(),
            },
        )

    return snapshot
