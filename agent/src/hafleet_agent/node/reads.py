"""Linearizable reads (ReadIndex) for the driver: each read waits, under a context of its
own, until the leader has confirmed its index (a read state from the core) and the state
machine has applied that far, or until its deadline.

``start`` registers a read and returns its context (for ``RawNode.read_index``) and the
future to await; ``confirmed`` takes the core's read states (raft/ready.py's
``on_read_state``); ``serve`` answers those the applied index has reached (after each
advance); ``expire`` fails those past their deadline (the node's chores); ``release`` fails
them all (the node stops)."""

from __future__ import annotations

import asyncio
import secrets
import time

from ..raft.ready import PendingReads
from ..raft.types import ReadState
from .errors import NoLeader


class Reads:
    def __init__(self) -> None:
        self.waiting: dict[bytes, tuple[asyncio.Future[int], float]] = {}
        self._confirmed = PendingReads()  # confirmed by the leader, not applied yet

    def __len__(self) -> int:
        return len(self.waiting)

    def start(self, timeout: float) -> tuple[bytes, asyncio.Future[int]]:
        ctx = secrets.token_bytes(12)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[ctx] = (fut, time.monotonic() + timeout)
        return ctx, fut

    def confirmed(self, rs: ReadState) -> None:
        self._confirmed.add(rs)

    def serve(self, applied: int) -> None:
        for rs in self._confirmed.due(applied):
            entry = self.waiting.pop(rs.context, None)
            if entry is not None and not entry[0].done():
                entry[0].set_result(rs.index)

    def expire(self) -> None:
        now = time.monotonic()
        for ctx, (fut, deadline) in list(self.waiting.items()):
            if now > deadline:
                self.waiting.pop(ctx, None)
                if not fut.done():
                    fut.set_exception(NoLeader("no leader confirmed the read in time"))

    def release(self) -> None:
        for fut, _ in self.waiting.values():
            if not fut.done():
                fut.set_exception(NoLeader("the agent is stopping; the read was not served"))
        self.waiting.clear()
