"""The core's side of writing off the driver's thread (node/driver.py's writer thread): inputs
fed while a batch is being written, a leader that sends its appends before its own write is
durable and counts itself toward the commit quorum only once it is (Raft thesis 10.2.1, etcd
raft's async storage writes)."""

from __future__ import annotations

import random

from hafleet_agent.raft.core import Config
from hafleet_agent.raft.rawnode import RawNode, Ready
from hafleet_agent.raft.ready import EARLY_TYPES, ReadyEffects, begin_ready, drain, finish_ready
from hafleet_agent.raft.types import Entry, Message, MessageType, StateType

MT = MessageType
IDS = ("n1", "n2", "n3")


class Net:
    """Nodes with in-memory disks on a network that delivers when told."""

    def __init__(self, ids: tuple[str, ...] = IDS) -> None:
        self.nodes: dict[str, RawNode] = {}
        self.disk: dict[str, dict[int, Entry]] = {}
        self.applied: dict[str, list[int]] = {}
        self.queue: list[Message] = []
        for k, nid in enumerate(ids):
            raw = RawNode(Config(nid, random.Random(k)))
            raw.bootstrap([(i, b"") for i in ids])
            self.nodes[nid] = raw
            self.disk[nid] = {}
            self.applied[nid] = []

    def fx(self, nid: str) -> ReadyEffects:
        def persist(rd: Ready) -> None:
            disk = self.disk[nid]
            if rd.entries:
                first = rd.entries[0].index
                for i in [i for i in disk if i >= first]:
                    del disk[i]
            disk.update((e.index, e) for e in rd.entries)

        return ReadyEffects(
            persist=persist,
            send=self.queue.append,
            restore=lambda s: None,
            apply=lambda e: self.applied[nid].append(e.index),
        )

    def deliver(self, to: str | None = None) -> None:
        keep, out = [], []
        for m in self.queue:
            (out if to is None or m.to == to else keep).append(m)
        self.queue = keep
        for m in out:
            if m.to in self.nodes:
                self.nodes[m.to].step(m)

    def settle(self) -> None:
        for _ in range(100):
            for nid, raw in self.nodes.items():
                drain(raw, self.fx(nid))
            if not self.queue:
                return
            self.deliver()
        raise AssertionError("the network does not settle")

    def elect(self, nid: str = "n1") -> RawNode:
        self.settle()
        self.nodes[nid].campaign()
        self.settle()
        assert self.nodes[nid].raft.state is StateType.LEADER
        return self.nodes[nid]


def test_a_leader_sends_its_appends_before_its_write_and_counts_itself_after_it() -> None:
    net = Net()
    lead = net.elect()
    _, index = lead.propose(b"x")
    rd = lead.ready()
    assert [e.index for e in rd.entries] == [index]
    later = begin_ready(rd, net.fx("n1"))
    apps = [m for m in net.queue if m.type is MT.APP and m.entries]
    assert sorted(m.to for m in apps) == ["n2", "n3"], "the appends go before the write"
    assert index not in net.disk["n1"]
    assert all(m.type not in EARLY_TYPES for m in later)
    # Both followers write it and answer, while the leader's own write is still under way.
    for f in ("n2", "n3"):
        net.deliver(f)
        drain(net.nodes[f], net.fx(f))
        assert index in net.disk[f]
    net.deliver("n1")
    # Two durable copies of three: committed without the leader's own, which it does not
    # count yet; nothing is applied (nor answered) before the leader's batch is finished.
    assert lead.raft.log.committed == index
    assert lead.raft.prs["n1"].match < index
    assert index not in net.applied["n1"]
    net.fx("n1").persist(rd)
    finish_ready(lead, rd, later, net.fx("n1"))
    assert lead.raft.prs["n1"].match == index
    drain(lead, net.fx("n1"))
    assert index in net.applied["n1"]


def test_a_leader_alone_with_its_write_commits_once_it_is_durable() -> None:
    """One follower's answer plus the leader's unwritten copy is no majority of three: if the
    leader crashed, one copy would be left."""
    net = Net()
    lead = net.elect()
    _, index = lead.propose(b"x")
    rd = lead.ready()
    later = begin_ready(rd, net.fx("n1"))
    net.deliver("n2")
    drain(net.nodes["n2"], net.fx("n2"))
    net.deliver("n1")
    assert lead.raft.prs["n2"].match == index
    assert lead.raft.log.committed < index
    net.fx("n1").persist(rd)
    finish_ready(lead, rd, later, net.fx("n1"))
    assert lead.raft.log.committed == index


def test_a_batch_that_only_moves_the_commit_index_needs_no_fsync() -> None:
    """Applying (and answering) a committed write waits for no fsync of the new commit
    index (etcd's MustSync): the entries are durable already."""
    net = Net()
    lead = net.elect()
    _, index = lead.propose(b"x")
    rd = lead.ready()
    assert rd.must_fsync
    later = begin_ready(rd, net.fx("n1"))
    net.fx("n1").persist(rd)
    finish_ready(lead, rd, later, net.fx("n1"))
    net.deliver("n2")
    drain(net.nodes["n2"], net.fx("n2"))
    net.deliver("n1")
    rd = lead.ready()
    assert [e.index for e in rd.committed_entries] == [index]
    assert rd.hard_state is not None and rd.hard_state.commit == index
    assert rd.must_sync and not rd.must_fsync and not rd.vote_changed


def test_a_single_node_commits_after_its_write() -> None:
    net = Net(("n1",))
    lead = net.elect()
    _, index = lead.propose(b"x")
    rd = lead.ready()
    assert lead.raft.log.committed < index and not rd.committed_entries
    net.fx("n1").persist(rd)
    lead.advance(rd)
    assert lead.raft.log.committed == index
    assert [e.index for e in lead.ready().committed_entries] == [index]


def test_inputs_fed_while_a_batch_is_written_come_out_in_the_next_one() -> None:
    net = Net()
    lead = net.elect()
    _, first = lead.propose(b"a")
    rd = lead.ready()
    later = begin_ready(rd, net.fx("n1"))
    # While the batch is being written: more proposals, a tick, answers from followers.
    _, second = lead.propose(b"b")
    _, third = lead.propose(b"c")
    lead.tick()
    net.deliver("n2")
    drain(net.nodes["n2"], net.fx("n2"))
    net.deliver("n1")
    net.fx("n1").persist(rd)
    finish_ready(lead, rd, later, net.fx("n1"))
    nxt = lead.ready()
    assert [e.index for e in nxt.entries] == [second, third], "one write for both (group commit)"
    assert lead.raft.log.committed == first


def test_a_follower_whose_batch_is_replaced_while_written_writes_the_new_entries() -> None:
    """A new leader overwrites an uncommitted entry while the old one is being written: the
    old write completes but marks nothing stable; the next batch holds the new entry, and
    the answer for it goes only after that batch."""
    net = Net()
    net.elect("n1")
    f = net.nodes["n2"]
    last = f.raft.log.last_index()
    term = f.raft.term
    f.step(
        Message(
            MT.APP,
            to="n2",
            frm="n1",
            term=term,
            log_term=term,
            index=last,
            entries=(Entry(term, last + 1, data=b"old"),),
            commit=last,
        )
    )
    rd = f.ready()
    later = begin_ready(rd, net.fx("n2"))
    assert [m.type for m in later] == [MT.APP_RESP], "the answer waits for the write"
    # Meanwhile n3, leader of the next term, replaces it.
    f.step(
        Message(
            MT.APP,
            to="n2",
            frm="n3",
            term=term + 1,
            log_term=term,
            index=last,
            entries=(Entry(term + 1, last + 1, data=b"new"),),
            commit=last,
        )
    )
    net.fx("n2").persist(rd)
    finish_ready(f, rd, later, net.fx("n2"))
    assert f.raft.log.stable_index == last, "the replaced entry is not stable"
    nxt = f.ready()
    assert [(e.index, e.term, e.data) for e in nxt.entries] == [(last + 1, term + 1, b"new")]
    assert nxt.hard_state is not None and nxt.hard_state.term == term + 1
    assert not [m for m in nxt.messages if m.type in EARLY_TYPES]


def test_a_candidate_asks_for_votes_before_its_write_and_counts_itself_after_it() -> None:
    """No avoidable fsync on an election's path: the vote requests leave with the write of
    the candidate's term and vote, not after it; its own vote counts once that is durable."""
    net = Net()
    net.settle()
    cand = net.nodes["n1"]
    cand.raft._campaign(pre=False, transfer=False)
    rd = cand.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == "n1"
    later = begin_ready(rd, net.fx("n1"))
    assert sorted(m.to for m in net.queue if m.type is MT.VOTE) == ["n2", "n3"]
    assert "n1" not in cand.raft.votes, "its own vote counted before it is durable"
    # One grant arrives while the write is under way: not a majority without its own vote.
    net.deliver("n2")
    drain(net.nodes["n2"], net.fx("n2"))  # the voter's grant waits for its own fsync
    net.deliver("n1")
    assert cand.raft.state is StateType.CANDIDATE
    net.fx("n1").persist(rd)
    finish_ready(cand, rd, later, net.fx("n1"))
    assert cand.raft.state is StateType.LEADER


def test_a_single_voter_leads_once_its_vote_is_durable() -> None:
    net = Net(("n1",))
    net.settle()
    raw = net.nodes["n1"]
    raw.campaign()
    assert raw.raft.state is StateType.CANDIDATE
    drain(raw, net.fx("n1"))
    assert raw.raft.state is StateType.LEADER
