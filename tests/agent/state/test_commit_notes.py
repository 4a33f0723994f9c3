"""A leader's commit notices (empty COMMIT_ONLY appends) wait a moment for an append to carry
them (node/commitnotes.py): dropped when a covering append goes first, sent when the time is
up, never held past it, and nothing else is ever held or reordered."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from hafleet_agent.node.commitnotes import CommitNotes
from hafleet_agent.raft.types import COMMIT_ONLY, Entry, Message, MessageType

MT = MessageType


def notice(to: str, index: int, commit: int, term: int = 2) -> Message:
    return Message(MT.APP, to=to, frm="n1", term=term, index=index, log_term=term,
                   commit=commit, context=COMMIT_ONLY)  # fmt: skip


def append(to: str, index: int, n: int, commit: int, term: int = 2) -> Message:
    entries = tuple(Entry(term, index + 1 + i) for i in range(n))
    return Message(MT.APP, to=to, frm="n1", term=term, index=index, log_term=term,
                   entries=entries, commit=commit)  # fmt: skip


class Wire:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.flushes = 0
        self.got = asyncio.Event()

    def send(self, m: Message) -> None:
        self.sent.append(m)
        self.got.set()

    def flush(self) -> None:
        self.flushes += 1


def test_an_append_that_follows_carries_the_notice() -> None:
    async def go() -> None:
        wire = Wire()
        notes = CommitNotes(wire.send, wire.flush, delay_s=60)
        notes.send(notice("n2", 10, 10))
        notes.send(notice("n3", 10, 10))
        assert wire.sent == []
        a2 = append("n2", 10, 1, 10)
        notes.send(a2)
        assert wire.sent == [a2] and notes.dropped == 1
        notes.release()  # n3's is still held: no append went to n3
        assert [m.to for m in wire.sent] == ["n2", "n3"] and wire.sent[1].context == COMMIT_ONLY
        assert wire.flushes == 1
        notes.release()  # nothing held: nothing sent, no flush
        assert len(wire.sent) == 2 and wire.flushes == 1

    asyncio.run(go())


def test_a_notice_nothing_carries_goes_when_the_time_is_up() -> None:
    async def go() -> None:
        wire = Wire()
        notes = CommitNotes(wire.send, wire.flush, delay_s=0.002)
        notes.send(notice("n2", 10, 9))
        notes.send(notice("n2", 10, 10))  # the newer one says more: it alone goes
        await asyncio.wait_for(wire.got.wait(), 5)
        assert wire.sent == [notice("n2", 10, 10)] and wire.flushes == 1

    asyncio.run(go())


def test_each_notice_is_held_its_own_time() -> None:
    """A notice held just before the timer of an earlier one (which an append carried) ends
    waits out its own time: before, one timer sent everything held when it fired, and at
    one client writing every ~2 ms about half the notices went out 0-0.5 ms after they were
    held (0.85 notices a write at the leader, 0.05 with each notice on its own deadline)."""

    async def go() -> None:
        loop = asyncio.get_running_loop()
        delay = 0.2
        wire = Wire()
        notes = CommitNotes(wire.send, wire.flush, delay_s=delay)
        notes.send(notice("n2", 10, 10))
        await asyncio.sleep(delay * 0.75)  # the time between two writes' commits
        carrier = append("n2", 10, 1, 10)
        notes.send(carrier)  # carries the first notice
        second, held_at = notice("n2", 11, 11), loop.time()
        notes.send(second)
        wire.got.clear()
        await asyncio.wait_for(wire.got.wait(), 5)
        assert wire.sent == [carrier, second] and notes.dropped == 1
        assert loop.time() - held_at >= delay - 0.0001
        notes.close()

    asyncio.run(go())


def test_what_does_not_cover_the_notice_leaves_it_held() -> None:
    async def go() -> None:
        wire = Wire()
        notes = CommitNotes(wire.send, wire.flush, delay_s=60)
        held = notice("n2", 10, 10)
        others = [
            append("n2", 5, 2, 10),  # a probe that ends before the notice's index
            append("n2", 10, 1, 9),  # a lower commit index
            append("n2", 10, 1, 12, term=3),  # another term
            Message(MT.HEARTBEAT, to="n2", frm="n1", term=2, commit=10),
            append("n3", 10, 1, 10),  # another follower
        ]
        notes.send(held)
        for m in others:
            notes.send(m)
        assert wire.sent == others and notes.dropped == 0
        notes.close()
        notes.release()
        assert wire.sent == others  # closed: what was held is dropped

    asyncio.run(go())


def test_only_empty_commit_notices_are_held() -> None:
    async def go() -> None:
        wire = Wire()
        notes = CommitNotes(wire.send, wire.flush, delay_s=60)
        ms = [
            append("n2", 10, 1, 10),
            replace(notice("n2", 10, 10), context=b""),  # empty, but not a notice
            replace(append("n2", 10, 1, 10), context=COMMIT_ONLY),  # marked, with an entry
            Message(MT.VOTE, to="n2", frm="n1", term=3),
        ]
        for m in ms:
            notes.send(m)
        assert wire.sent == ms
        notes.close()

    asyncio.run(go())
