"""Linearizable reads (ReadIndex) for the driver: each read waits, under a context of its
own, until the leader has confirmed its index (a read state from the core) and the state
machine has applied that far, or until its deadline.

``start`` registers a read, asks the core for it (``RawNode.read_index``) and returns the
future to await; ``confirmed`` takes the core's read states (raft/ready.py's
``on_read_state``); ``serve`` answers those the applied index has reached (after each
advance); ``expire`` fails those past their deadline (the node's chores, every 0.25 s);
``release`` fails them all (the node stops).

A ReadIndex that reaches no leader is never answered: a follower forwards it to the leader
it knows, which may have stepped down (a member back from a stop believes, until its
election timeout, the leader a late heartbeat named), and a message may be lost. Such a read
waited for its whole deadline (10 election timeouts) although a leader came meanwhile.
``ask_again`` asks again for the reads not confirmed yet: all of them when a leader becomes
known, and each one asked :data:`ASK_AGAIN_S` ago (etcd's server asks again every 500 ms).
A read answered twice is served once."""

from __future__ import annotations

import asyncio
import secrets
import time

from ..raft.rawnode import RawNode
from ..raft.ready import PendingReads
from ..raft.types import ReadState
from .errors import NoLeader

#: A read not confirmed this long after it was asked is asked again (etcd: 500 ms).
ASK_AGAIN_S = 0.5


class Reads:
    def __init__(self) -> None:
        self.waiting: dict[bytes, tuple[asyncio.Future[int], float]] = {}
        self._confirmed = PendingReads()  # confirmed by the leader, not applied yet
        self._asked: dict[bytes, float] = {}  # not confirmed yet: when last asked

    def __len__(self) -> int:
        return len(self.waiting)

    def start(self, raw: RawNode, timeout: float) -> asyncio.Future[int]:
        """Ask ``raw`` for a read point; the future is its index, once applied."""
        ctx = secrets.token_bytes(12)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        self.waiting[ctx] = (fut, now + timeout)
        self._asked[ctx] = now
        raw.read_index(ctx)
        return fut

    def confirmed(self, rs: ReadState) -> None:
        self._asked.pop(rs.context, None)
        self._confirmed.add(rs)

    def ask_again(self, raw: RawNode | None, every: float | None = None) -> bool:
        """Ask ``raw`` again for the reads not confirmed yet that were last asked at least
        ``every`` seconds ago (None: all of them), when it knows a leader; whether any was."""
        if raw is None or raw.lead is None:
            return False
        now = time.monotonic()
        due = [c for c, at in self._asked.items() if every is None or now - at >= every]
        for ctx in due:
            self._asked[ctx] = now
            raw.read_index(ctx)
        return bool(due)

    def serve(self, applied: int) -> None:
        for rs in self._confirmed.due(applied):
            entry = self.waiting.pop(rs.context, None)
            self._asked.pop(rs.context, None)
            if entry is not None and not entry[0].done():
                entry[0].set_result(rs.index)

    def expire(self, raw: RawNode | None) -> bool:
        """Fail the reads past their deadline, then ask ``raw`` again for those not confirmed
        :data:`ASK_AGAIN_S` after they were asked; whether any was."""
        now = time.monotonic()
        for ctx, (fut, deadline) in list(self.waiting.items()):
            if now > deadline:
                self.waiting.pop(ctx, None)
                self._asked.pop(ctx, None)
                if not fut.done():
                    fut.set_exception(NoLeader("no leader confirmed the read in time"))
        return self.ask_again(raw, ASK_AGAIN_S)

    def release(self) -> None:
        for fut, _ in self.waiting.values():
            if not fut.done():
                fut.set_exception(NoLeader("the agent is stopping; the read was not served"))
        self.waiting.clear()
        self._asked.clear()
