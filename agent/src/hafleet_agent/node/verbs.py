"""The node as the HTTP API sees it: the verbs it calls and the read-only parts it shows.

``server/`` types its node with :class:`NodeVerbs` and imports nothing else of the node (a
layering test checks), and the node imports nothing of the server: ``run.py`` starts the API
with the node (``node.node.Node`` implements this protocol), the API calls its verbs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import AgentConfig
    from ..metrics import HostMetrics
    from ..raft.status import BasicStatus
    from ..snapxfer import SnapshotReceiver, SnapshotSender
    from ..state import StateMachine
    from ..transport import Transport


class NodeVerbs(Protocol):
    id: str
    cfg: AgentConfig
    token: str
    started_at: float  # time.monotonic() at start
    state: StateMachine  # the applied state (reads of the local copy)
    metrics: HostMetrics | None
    transport: Transport | None
    snap_sender: SnapshotSender | None
    snap_receiver: SnapshotReceiver | None

    # ---- views ---------------------------------------------------------------------------
    def raft_status(self) -> BasicStatus | None:
        """The Raft core's term, role, leader and indexes (None before the core starts)."""
        ...

    def status(self) -> dict[str, Any]: ...

    def members_view(self) -> list[dict[str, Any]]: ...

    def is_leader(self) -> bool: ...

    def leader_id(self) -> str | None: ...

    def leader_api(self) -> str | None:
        """The leader's API address, if known."""
        ...

    def in_config(self, node_id: str) -> bool:
        """A voter or a learner of the Raft configuration."""
        ...

    def leader_silence(self) -> float | None:
        """Seconds since a Raft message from the leader this member knows was last stepped
        (since the start when none was); None when it leads or knows no leader."""
        ...

    def write_timeout(self) -> float: ...

    # ---- verbs ---------------------------------------------------------------------------
    async def write(
        self, data: bytes, on_applied: Callable[[Any], None] | None = None
    ) -> dict[str, Any]:
        """Propose an encoded command on the leader; the applied result. ``on_applied`` is
        called with the apply's result as soon as it is known, before this returns (the API
        answers from there: node/proposals.py)."""
        ...

    async def read_barrier(self) -> None:
        """Return once the local state is at least as new as the leader's commit (ReadIndex)."""
        ...

    async def wait_index(self, index: int, timeout: float) -> int: ...

    async def hand_over(self, to: str | None = None, timeout: float = 2.0) -> str | None: ...

    async def hand_over_to_remove_self(self) -> None:
        """On the leader, before its own removal: hand over and wait for the new leader."""
        ...

    async def add_member(
        self, mid: str, raft_addr: str, api_addr: str, service_addr: str | None
    ) -> dict[str, Any]: ...

    async def remove_member(
        self, mid: str, drain_timeout: float | None = None
    ) -> dict[str, Any]: ...
