"""The node's Raft clock (node/ticker.py): one timer for the tick that acts instead of a wake-up
every tick, the skipped ticks fed before any other input (RawNode.clock), so that the core
behaves as one ticked on time: elections, heartbeats, the lease check on votes."""

from __future__ import annotations

import asyncio
import random
import time

from hafleet_agent.node.ticker import Ticker
from hafleet_agent.raft.core import Config
from hafleet_agent.raft.rawnode import RawNode, Ready
from hafleet_agent.raft.ready import ReadyEffects, drain
from hafleet_agent.raft.types import Message, MessageType, StateType

MT = MessageType
IDS = ("n1", "n2", "n3")


def _node(nid: str, seed: int, election: int = 10, beat: int = 2) -> RawNode:
    raw = RawNode(Config(nid, random.Random(seed), election_tick=election, heartbeat_tick=beat))
    raw.bootstrap([(i, b"") for i in IDS])
    return raw


def _drain(raw: RawNode) -> None:
    drain(raw, ReadyEffects(persist=lambda rd: None, send=lambda m: None, restore=lambda s: None,
                            apply=lambda e: None))  # fmt: skip


def _follower_of_n2(raw: RawNode) -> None:
    _drain(raw)
    raw.step(Message(MT.HEARTBEAT, to=raw.raft.id, frm="n2", term=2, commit=3))
    _drain(raw)


def test_ticks_until_due_is_the_tick_that_acts() -> None:
    raw = _node("n1", 1)
    _follower_of_n2(raw)
    k = raw.ticks_until_due()
    assert 10 <= k < 20  # the randomized election timeout, in [election, 2 election)
    for _ in range(k - 1):
        raw.tick()
        assert raw.raft.state is StateType.FOLLOWER
    raw.tick()
    assert raw.raft.state is StateType.PRE_CANDIDATE


def test_skipped_ticks_are_fed_before_a_vote_is_judged() -> None:
    """A follower that heard its leader a tick ago ignores a pre-vote (lease); after an
    election timeout it answers one -- also when those ticks were only counted by the clock,
    not fed one by one."""
    due = [0]

    def clock() -> int:
        n, due[0] = due[0], 0
        return n

    pre_vote = Message(MT.PRE_VOTE, to="n1", frm="n3", term=3, index=3, log_term=1)
    for lazy in (False, True):
        raw = _node("n1", 1)
        _follower_of_n2(raw)
        raw.clock = clock
        raw.step(pre_vote)
        assert not raw.raft.msgs, "inside the lease a pre-vote gets no answer"
        if lazy:
            due[0] = 10
        else:
            for _ in range(10):
                raw.tick()
        raw.step(pre_vote)
        assert [(m.type, m.reject) for m in raw.raft.msgs] == [(MT.PRE_VOTE_RESP, False)]


class _Group:
    """Three cores on one event loop, each with its own Ticker, messages delivered on the next
    loop cycle; a node can be cut off (its messages dropped both ways)."""

    def __init__(self, tick_s: float) -> None:
        self.stop = asyncio.Event()
        self.cut: set[str] = set()
        self.nodes = {nid: _node(nid, k) for k, nid in enumerate(IDS)}
        self.tickers: dict[str, Ticker] = {}
        self.beats: dict[str, int] = dict.fromkeys(IDS, 0)
        for nid, raw in self.nodes.items():
            self.tickers[nid] = Ticker(
                tick_s, raw=lambda raw=raw: raw, counting=lambda: True,
                pump=lambda nid=nid: self.pump(nid), stopping=self.stop,
            )  # fmt: skip

    def fx(self, nid: str) -> ReadyEffects:
        def send(m: Message) -> None:
            if m.type is MT.HEARTBEAT:
                self.beats[nid] += 1
            if nid in self.cut or m.to in self.cut:
                return
            asyncio.get_running_loop().call_soon(self.deliver, m)

        def persist(rd: Ready) -> None:
            pass

        return ReadyEffects(persist=persist, send=send, restore=lambda s: None,
                            apply=lambda e: None)  # fmt: skip

    def deliver(self, m: Message) -> None:
        raw = self.nodes[m.to]
        raw.step(m)
        self.pump(m.to)

    def pump(self, nid: str) -> None:
        drain(self.nodes[nid], self.fx(nid))
        self.tickers[nid].arm()

    def leader(self, among: set[str] | None = None) -> str | None:
        among = among or set(IDS)
        lead = [i for i in among if self.nodes[i].raft.state is StateType.LEADER]
        return lead[0] if len(lead) == 1 else None


async def _until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.005)
    raise AssertionError(f"no {what} within {timeout} s")


def test_group_elects_beats_and_fails_over_with_few_wakeups() -> None:
    tick_s = 0.01  # election 10 ticks (100-200 ms), heartbeat 2 ticks

    async def scenario() -> None:
        g = _Group(tick_s)
        runs = [asyncio.ensure_future(t.run()) for t in g.tickers.values()]
        try:
            lead = await _until(g.leader, 5, "leader")
            term = g.nodes[lead].raft.term
            w0 = {i: t.wakeups for i, t in g.tickers.items()}
            b0 = g.beats[lead]
            t0 = time.monotonic()
            await asyncio.sleep(0.6)  # a window to count in, not a condition
            ticks = (time.monotonic() - t0) / tick_s
            assert g.leader() == lead and g.nodes[lead].raft.term == term, "no new election"
            for i, t in g.tickers.items():
                woke = t.wakeups - w0[i]
                if i == lead:  # one wake-up a heartbeat, not one a tick
                    assert ticks / 2 * 0.5 <= woke <= ticks / 2 * 1.3, (woke, ticks)
                else:  # a follower wakes about once an election timeout
                    assert woke <= ticks / 5, (i, woke, ticks)
            beats = (g.beats[lead] - b0) / 2  # to two followers
            assert ticks / 2 * 0.5 <= beats <= ticks / 2 * 1.3, (beats, ticks)
            # the leader is cut off: the other two elect one of them (their lease has run out)
            g.cut.add(lead)
            rest = set(IDS) - {lead}
            t_cut = time.monotonic()
            new = await _until(lambda: g.leader(rest), 5, "new leader")
            assert g.nodes[new].raft.term > term
            # an election timeout is 100-200 ms; pre-vote then vote: well under a second
            assert time.monotonic() - t_cut < 1.0
        finally:
            g.stop.set()
            await asyncio.gather(*runs)

    asyncio.run(scenario())


def test_a_loop_held_up_does_not_replay_the_missed_ticks() -> None:
    tick_s = 0.01

    async def scenario() -> None:
        stop = asyncio.Event()
        raw = _node("n1", 1)
        _follower_of_n2(raw)
        t = Ticker(tick_s, raw=lambda: raw, counting=lambda: True, pump=lambda: None,
                   stopping=stop)  # fmt: skip
        run = asyncio.ensure_future(t.run())
        await asyncio.sleep(0)
        time.sleep(0.5)  # the loop held up: 50 ticks, past the election timeout
        raw.step(Message(MT.HEARTBEAT, to="n1", frm="n2", term=2, commit=3))
        # the heartbeat read after the stall finds it a follower that did not campaign
        assert [m.type for m in raw.raft.msgs] == [MT.HEARTBEAT_RESP]
        assert raw.raft.state is StateType.FOLLOWER and raw.raft.lead == "n2"
        stop.set()
        await run

    asyncio.run(scenario())
