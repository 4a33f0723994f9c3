"""The writes a leader's driver queues for its next pump (node/proposals.py): appended in
one proposal in the order they came, one append per follower for all of them; a write whose
waiter gave up is not proposed; a dropped proposal fails every write in it; the wait's
timeout says whether the write was proposed; a write's ``on_applied`` runs at its apply,
after its waiter has the result, and only for a write proposed with a live waiter."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from hafleet_agent.node.errors import NoLeader, Unknown
from hafleet_agent.node.proposals import Deadlines, Pending, Proposals, wait_answer
from hafleet_agent.raft.core import ProposalDropped
from hafleet_agent.raft.types import MessageType

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "raft"))
from test_async_write import Net  # noqa: E402


class FakeRaw:
    def __init__(self, last: int = 10, drop: str | None = None) -> None:
        self.last, self.drop, self.calls = last, drop, []

    def propose_many(self, data: list[bytes]) -> tuple[int, int]:
        if self.drop:
            raise ProposalDropped(self.drop)
        self.calls.append(list(data))
        self.last += len(data)
        return 3, self.last


def test_queued_writes_are_proposed_at_once_in_order_and_wait_by_index() -> None:
    async def main() -> None:
        p, raw, pending = Proposals(), FakeRaw(), {}
        futs = [p.add(b"a"), p.add(b"b"), p.add(b"c")]
        futs[1].cancel()  # its waiter gave up before the pump: not proposed
        p.feed(raw, pending)
        assert raw.calls == [[b"a", b"c"]] and not p.queued
        assert pending == {11: Pending(3, futs[0]), 12: Pending(3, futs[2])}
        p.feed(raw, pending)  # nothing queued: no proposal
        assert len(raw.calls) == 1

    asyncio.run(main())


def test_a_dropped_proposal_fails_each_of_its_writes_as_not_proposed() -> None:
    async def main() -> None:
        p, pending = Proposals(), {}
        futs = [p.add(b"a"), p.add(b"b")]
        p.feed(FakeRaw(drop="not the leader"), pending)
        assert not pending
        for fut in futs:
            with pytest.raises(NoLeader, match="not proposed: not the leader"):
                fut.result()

    asyncio.run(main())


@pytest.mark.parametrize("proposed", [False, True])
def test_a_timed_out_write_says_whether_it_was_proposed(proposed: bool) -> None:
    async def main() -> None:
        p, pending = Proposals(), {}
        fut = p.add(b"a")
        if proposed:
            p.feed(FakeRaw(), pending)
        err: Any = Unknown if proposed else NoLeader
        with pytest.raises(err, match="proposed at index 11" if proposed else "not proposed"):
            await wait_answer(fut, pending, p, 0.01, Deadlines())
        assert not pending and not p.queued

    asyncio.run(main())


def test_one_timer_times_out_each_write_at_its_own_limit() -> None:
    """Deadlines: the writes that are answered in time keep their answers, each one still
    waiting at its limit gets TimeoutError, one after the other, on one timer."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = Deadlines()
        futs = [loop.create_future() for _ in range(4)]
        started = loop.time()
        for i, fut in enumerate(futs):
            d.add(fut, 0.05)
            if i == 1:
                fut.set_result("answered")
            await asyncio.sleep(0.02)  # the limits 20 ms apart
        await asyncio.wait([futs[0], futs[2], futs[3]], timeout=5)
        assert futs[1].result() == "answered"
        for fut in (futs[0], futs[2], futs[3]):
            assert isinstance(fut.exception(), TimeoutError)
        assert loop.time() - started >= 0.05 + 3 * 0.02 - 0.001  # the last at its own limit
        assert len(d) == 0 and d._handle is None  # nothing left, no timer set

    asyncio.run(main())


def test_many_writes_in_one_proposal_make_one_append_per_follower() -> None:
    net = Net()
    lead = net.elect()
    net.queue.clear()
    term, last = lead.propose_many([b"a", b"b", b"c"])
    apps = [m for m in lead.ready().messages if m.type is MessageType.APP]
    assert sorted(m.to for m in apps) == ["n2", "n3"]
    for m in apps:
        assert [e.data for e in m.entries] == [b"a", b"b", b"c"]
        assert [e.index for e in m.entries] == [last - 2, last - 1, last]
        assert {e.term for e in m.entries} == {term}


def test_on_applied_runs_at_the_apply_after_the_waiter_has_its_result(caplog) -> None:
    async def main() -> None:
        p, pending = Proposals(), {}
        seen: list[Any] = []
        fut = p.add(b"a", lambda res: seen.append((res, fut.result())))
        gone = p.add(b"b", lambda res: seen.append("a write whose waiter gave up"))
        gone.cancel()  # not proposed: its on_applied never runs
        failing = p.add(b"c", lambda res: 1 / 0)
        p.feed(FakeRaw(), pending)
        assert sorted(pending) == [11, 12] and pending[11].on_applied is not None
        pending[11].resolve("r11")
        assert seen == [("r11", "r11")]
        with caplog.at_level("ERROR", logger="hafleet.agent"):
            pending[12].resolve("r12")  # its on_applied raises: logged, the waiter has r12
        assert failing.result() == "r12"
        assert "the answer at the apply failed" in caplog.text
        assert seen == [("r11", "r11")]

    asyncio.run(main())
