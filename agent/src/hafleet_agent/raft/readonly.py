"""The leader's linearizable reads (ReadIndex, thesis §6.4), as etcd's ``read_only.go``.

A read asked of the leader is answered with the commit index as it stood when the read came
in -- once a quorum has shown that this node still led *after* the read arrived. The leader
numbers rounds of heartbeats: a read joins a new round, the round's number rides on the
heartbeats (followers echo it back untouched), and when a quorum of voters has answered a
round, that read and every earlier one are confirmed. The round, not the caller's context,
ties the answers to the reads: contexts may repeat (a retry). A read that arrives before the
leader has committed an entry of its own term waits in :attr:`ReadOnly.pending` (the commit
index may still be behind the previous leader's).

:class:`ReadOnly` is the bookkeeping; the core (``leader.py``) sends the heartbeats and
hands out the answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .quorum import quorum_index
from .types import Message, NodeId

_MAX_ROUND_DIGITS = 19


@dataclass
class ReadRequest:
    index: int
    frm: NodeId | None
    context: bytes
    round: int  # the heartbeat round that confirms this read (and every later one)


def round_context(rnd: int) -> bytes:
    """A ReadIndex round as a heartbeat carries it (followers echo it back untouched)."""
    return str(rnd).encode()


def parse_round(ctx: bytes) -> int | None:
    if not ctx or len(ctx) > _MAX_ROUND_DIGITS or not ctx.isdigit():
        return None
    return int(ctx)


class ReadOnly:
    def __init__(self) -> None:
        self.queue: list[ReadRequest] = []
        self.pending: list[Message] = []  # reads waiting for an entry of the leader's term
        # Rounds are never reused by this object (a round of an earlier term cannot be
        # answered, since the answers carry that term); acks: the newest round each node has
        # answered in this term.
        self.round = 0
        self.acks: dict[NodeId, int] = {}

    def reset(self) -> None:
        """A new term: the reads waiting are dropped (their callers time out and retry)."""
        self.queue = []
        self.pending = []
        self.acks = {}

    def heartbeat_context(self) -> bytes:
        """What a heartbeat carries: while reads wait, the newest round -- if the heartbeats
        of a read's own round were lost, the answers to these confirm it (and all before)."""
        return round_context(self.round) if self.queue else b""

    def add(self, index: int, frm: NodeId | None, context: bytes) -> bytes:
        """Queue a read at ``index`` in a new round; returns the round's heartbeat context.
        Its heartbeats leave after the read arrived, so a quorum answering them (or any
        later round) shows that we still led after the read arrived."""
        self.round += 1
        self.queue.append(ReadRequest(index, frm, context, self.round))
        return round_context(self.round)

    def ack(self, frm: NodeId, ctx: bytes, me: NodeId, voters: set[NodeId]) -> list[ReadRequest]:
        """``frm`` answered a heartbeat carrying ``ctx``: the reads this confirms, in order."""
        rnd = parse_round(ctx)
        if rnd is None or rnd > self.round or not self.queue:
            return []  # not a round of ours, or nothing waits for one
        if rnd <= self.acks.get(frm, 0):
            return []
        self.acks[frm] = rnd
        # The newest round that a quorum of voters has answered (we answer each one ourselves).
        confirmed = quorum_index({**self.acks, me: self.round}, voters)
        n = 0
        while n < len(self.queue) and self.queue[n].round <= confirmed:
            n += 1
        done, self.queue = self.queue[:n], self.queue[n:]
        return done
