"""mDNS for the node (``discovery.py``): announce this node and hand the table of announced
peers to the node (``on_change``). mDNS is a convenience (``--join`` works without it): when
it cannot start, it is tried again in the background (``retry``, supervised); once the node
adopts a cluster id, the announcement says so (``announce``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import AgentConfig
from . import tasks

log = logging.getLogger("hafleet.agent")


class Mdns:
    def __init__(
        self,
        node_id: str,
        cfg: AgentConfig,
        *,
        cluster_id: Callable[[], str | None],
        on_change: Callable[[dict[str, Any]], None],
        supervise: Callable[[Callable[[], Awaitable[None]], str], None],
        proven: Callable[[str], bool] | None = None,
    ) -> None:
        self.id = node_id
        self.cfg = cfg
        self._cluster_id = cluster_id
        self._on_change = on_change
        self._supervise = supervise
        self._proven = proven  # which node ids proved the key (a full mDNS table keeps them)
        self.discovery: Any = None

    async def start(self) -> None:
        """Start mDNS; when it could not start (logged), ``retry`` tries again in the
        background."""
        try:
            await self._new_discovery()
        except Exception as exc:  # mDNS is a convenience: --join still works without it
            log.warning("mDNS discovery could not start on %s: %s", self.cfg.mdns_interface, exc)
            self._supervise(self._retry, "discovery")

    async def _retry(self) -> None:
        await asyncio.sleep(tasks.RESTART_MIN_S)
        await self._new_discovery()  # raises until it starts: the supervisor backs off
        log.info("mDNS discovery started on %s", self.cfg.mdns_interface)

    async def _new_discovery(self) -> None:
        from ..discovery import Discovery

        cluster_id = self._cluster_id()
        discovery = Discovery(
            node_id=self.id,
            cluster=self.cfg.cluster,
            raft_addr=self.cfg.raft_addr,
            api_addr=self.cfg.api_addr,
            interfaces=self.cfg.mdns_interface,
            cluster_id=cluster_id or "",
            fresh=cluster_id is None,
            on_change=self._on_change,
            proven=self._proven,
        )
        await discovery.start()
        self.discovery = discovery
        cluster_id = self._cluster_id()
        if cluster_id is not None and discovery.fresh:  # adopted while it started
            await discovery.update(cluster_id=cluster_id, fresh=False)

    def announce(self, cluster_id: str) -> None:
        """The node adopted ``cluster_id``: announce it (no longer fresh)."""
        if self.discovery is not None:
            discovery = self.discovery

            async def announce() -> None:
                await discovery.update(cluster_id=cluster_id, fresh=False)

            self._supervise(announce, "mdns-update")

    async def stop(self) -> None:
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await self.discovery.stop()
