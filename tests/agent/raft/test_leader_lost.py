"""``RawNode.report_leader_lost`` (the driver saw its leader's connection end): a follower
campaigns at one of its next LOST_LEADER_CAMPAIGN_TICKS ticks whatever the draw, and grants
votes at once; a learner, a report about another peer and a core with the option off wait
out the election timeout as before (testdata/leader_lost.txt traces the elections)."""

from __future__ import annotations

import pytest
from test_ticker import _follower_of_n2, _node

from hafleet_agent.raft.core import LOST_LEADER_CAMPAIGN_TICKS
from hafleet_agent.raft.rawnode import RawNode
from hafleet_agent.raft.types import Message, MessageType, StateType

MT = MessageType


def _follower(seed: int, *, option: bool = True, learner: bool = False) -> RawNode:
    raw = _node("n1", seed)  # election timeout 10 ticks
    raw.raft.cfg.campaign_on_leader_loss = option  # read when a report comes
    if learner:  # as a learner would be once its configuration says so
        raw.raft.voters.discard("n1")
        raw.raft.learners.add("n1")
        assert not raw.raft.promotable()
    _follower_of_n2(raw)
    assert raw.lead == "n2"
    return raw


def _ticks_to_campaign(raw: RawNode, limit: int = 40) -> int:
    for k in range(1, limit + 1):
        raw.tick()
        if raw.raft.state is not StateType.FOLLOWER:
            return k
    return limit + 1


@pytest.mark.parametrize("seed", range(40))
def test_a_follower_campaigns_within_the_next_ticks(seed: int) -> None:
    raw = _follower(seed)
    raw.tick()  # some ticks since the heartbeat, fewer than the timeout
    raw.report_leader_lost("n2")
    assert raw.lead is None
    assert raw.ticks_until_due() <= LOST_LEADER_CAMPAIGN_TICKS
    assert 1 <= _ticks_to_campaign(raw) <= LOST_LEADER_CAMPAIGN_TICKS


def test_the_draw_spreads_the_campaigns() -> None:
    waits = set()
    for seed in range(40):
        raw = _follower(seed)
        raw.report_leader_lost("n2")
        waits.add(_ticks_to_campaign(raw))
    assert waits == set(range(1, LOST_LEADER_CAMPAIGN_TICKS + 1))


def test_it_grants_a_pre_vote_at_once() -> None:
    raw = _follower(1)
    pre_vote = Message(MT.PRE_VOTE, to="n1", frm="n3", term=3, index=3, log_term=1)
    raw.step(pre_vote)
    assert not raw.raft.msgs  # in the leader's lease: ignored
    raw.report_leader_lost("n2")
    raw.step(pre_vote)
    assert [(m.type, m.reject) for m in raw.raft.msgs] == [(MT.PRE_VOTE_RESP, False)]


@pytest.mark.parametrize("case", ["other peer", "option off", "learner"])
def test_otherwise_the_timer_alone(case: str) -> None:
    raw = _follower(3, option=case != "option off", learner=case == "learner")
    raw.report_leader_lost("n3" if case == "other peer" else "n2")
    assert raw.lead == "n2"
    expected = 41 if case == "learner" else raw.raft.randomized_election_timeout
    assert _ticks_to_campaign(raw) == expected


def test_a_heartbeat_before_the_campaign_keeps_the_leader() -> None:
    raw = _follower(2)
    raw.report_leader_lost("n2")
    raw.step(Message(MT.HEARTBEAT, to="n1", frm="n2", term=2, commit=3))
    assert raw.lead == "n2"
    assert _ticks_to_campaign(raw) >= 10  # a full election timeout again
