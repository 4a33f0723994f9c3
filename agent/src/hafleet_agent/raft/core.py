"""The Raft consensus core: a pure state machine in the shape of etcd-io/raft.

Messages, ticks and proposals go in through :meth:`Raft.step` and :meth:`Raft.tick`;
what must be persisted, sent and applied comes out through :class:`RawNode.ready`
(see ``rawnode.py``). No I/O, no clock, no threads: time is the number of ticks the
driver delivers and randomness is the ``rng`` object the driver passes in.

:class:`Raft` holds the state and the protocol but for the leader's side: elections (PreVote,
CheckQuorum's lease), the follower, role changes, ticks, membership. The leader's steps --
replication, commitment, proposals, heartbeats, transfer, ReadIndex -- are
:class:`~.leader.LeaderRole` (``leader.py``), which it mixes in; the ReadIndex bookkeeping is
``readonly.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from .leader import LeaderRole, ProposalDropped
from .log import LogLost, RaftLog
from .progress import Progress, ProgressState
from .quorum import majority
from .readonly import ReadOnly
from .types import (
    COMMIT_ONLY,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Snapshot,
    SoftState,
    StateType,
)

MT = MessageType
CAMPAIGN_TRANSFER = b"transfer"
#: A follower that lost its leader's connection campaigns at one of this many next ticks,
#: drawn at random (``Raft.leader_lost``): soon, and rarely at the same time as another.
LOST_LEADER_CAMPAIGN_TICKS = 2
_VOTE_TYPES = frozenset({MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP})


class Rng(Protocol):
    def randrange(self, start: int, stop: int) -> int: ...


@dataclass
class Config:
    id: NodeId
    rng: Rng
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_inflight: int = 64
    max_entries_per_msg: int = 64
    pre_vote: bool = True
    check_quorum: bool = True
    campaign_on_leader_loss: bool = True
    """Whether ``Raft.leader_lost`` acts (tests and benchmarks compare with the timer alone)."""

    def validate(self) -> None:
        if not self.id:
            raise ValueError("node id must not be empty")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat_tick must be > 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if self.max_inflight <= 0 or self.max_entries_per_msg <= 0:
            raise ValueError("max_inflight and max_entries_per_msg must be > 0")


class Raft(LeaderRole):
    def __init__(
        self,
        config: Config,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        config.validate()
        self.id = config.id
        self.cfg = config
        self.rng = config.rng
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick
        self.on_event = on_event
        self.log = RaftLog(snapshot, entries)
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote: NodeId | None = hs.vote
        if hs.commit:
            self.log.commit_to(hs.commit)
        snap = snapshot or Snapshot()
        self.voters: set[NodeId] = set(snap.meta.conf_state.voters)
        self.learners: set[NodeId] = set(snap.meta.conf_state.learners)
        self.prs: dict[NodeId, Progress] = {}
        self.state = StateType.FOLLOWER
        self.lead: NodeId | None = None
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.votes: dict[NodeId, bool] = {}
        self.pending_conf_index = 0
        self.lead_transferee: NodeId | None = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout
        self.reads = ReadOnly()  # the leader's ReadIndex rounds (readonly.py)
        self._rebuild_progress()
        self.become_follower(self.term, None)

    # ---- helpers -------------------------------------------------------------------------
    def _event(self, text: str) -> None:
        if self.on_event is not None:
            self.on_event(f"{self.id} t{self.term}: {text}")

    def quorum(self) -> int:
        return majority(len(self.voters))

    def promotable(self) -> bool:
        return self.id in self.voters

    def conf_state(self) -> ConfState:
        return ConfState(tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.state)

    def _rebuild_progress(self) -> None:
        last = self.log.last_index()
        old = self.prs
        self.prs = {}
        for nid in self.voters | self.learners:
            pr = old.get(nid)
            if pr is None:
                pr = Progress(last + 1, self.cfg.max_inflight)
                # A new member counts as recently active until the next CheckQuorum: a check
                # that comes before it could answer must not depose the leader (etcd does
                # the same for a new progress).
                pr.recent_active = True
            pr.learner = nid in self.learners
            self.prs[nid] = pr
        if self.id in self.prs:
            # Only what is durable counts (a leader's self-ack: leader.py self_durable).
            stable = min(self.log.stable_index, last)
            self.prs[self.id].match = max(self.prs[self.id].match, stable)

    def send(self, m: Message) -> None:
        """Queue a message from us. Vote messages carry the term their sender chose."""
        # dataclasses.replace, spelt out: every message passes here (twice as fast)
        self.msgs.append(
            Message(
                m.type,
                m.to,
                self.id,
                m.term if m.type in _VOTE_TYPES else self.term,
                m.log_term,
                m.index,
                m.entries,
                m.commit,
                m.reject,
                m.reject_hint,
                m.snapshot,
                m.context,
            )
        )

    def reset_randomized_election_timeout(self) -> None:
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            0, self.election_timeout
        )

    def reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = None
        self.lead = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.abort_leader_transfer()
        self.votes = {}
        last = self.log.last_index()
        for nid, pr in list(self.prs.items()):
            fresh = Progress(last + 1, self.cfg.max_inflight, learner=pr.learner)
            if nid == self.id:
                # Only what is durable counts (a leader's self-ack: leader.py self_durable).
                fresh.match = min(self.log.stable_index, last)
            self.prs[nid] = fresh
        self.pending_conf_index = 0
        self.reads.reset()

    def abort_leader_transfer(self) -> None:
        self.lead_transferee = None

    # ---- role changes --------------------------------------------------------------------
    def become_follower(self, term: int, lead: NodeId | None) -> None:
        self.reset(term)
        self.lead = lead
        self.state = StateType.FOLLOWER
        self._event(f"follower (leader {lead})")

    def become_pre_candidate(self) -> None:
        if self.state is StateType.LEADER:
            raise AssertionError("leader cannot become pre-candidate")
        # A pre-candidate changes neither term nor vote.
        self.votes = {}
        self.lead = None
        self.state = StateType.PRE_CANDIDATE
        self._event("pre-candidate")

    def become_candidate(self) -> None:
        if self.state is StateType.LEADER:
            raise AssertionError("leader cannot become candidate")
        self.reset(self.term + 1)
        self.vote = self.id
        self.state = StateType.CANDIDATE
        self._event("candidate")

    def become_leader(self) -> None:
        if self.state is StateType.FOLLOWER:
            raise AssertionError("follower cannot become leader directly")
        self.reset(self.term)
        self.lead = self.id
        self.state = StateType.LEADER
        self.prs[self.id].become_replicate()
        # No conf change until the no-op of this term is applied (the single-server change bug).
        self.pending_conf_index = self.log.last_index() + 1
        self._append([Entry(self.term, 0)])
        self._event(f"leader at index {self.log.last_index()}")

    # ---- ticks ---------------------------------------------------------------------------
    def tick(self) -> None:
        if self.state is StateType.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(MT.HUP, frm=self.id))

    def leader_lost(self, nid: NodeId) -> None:
        """The driver saw the connection from ``nid`` end (a process that exits closes its
        connections: the kernel ends them at once). When ``nid`` is our leader, it has most
        likely gone: forget it, so that we no longer refuse votes to keep it in place, and
        campaign at one of the next LOST_LEADER_CAMPAIGN_TICKS ticks instead of waiting out
        the election timeout (ZooKeeper's followers look for a new leader as soon as their
        connection to it breaks). Only liveness depends on this: PreVote still asks a
        quorum first, and the followers that hear from a live leader refuse it (their lease);
        a heartbeat from the leader before the campaign makes us its follower again."""
        if (
            not self.cfg.campaign_on_leader_loss
            or self.state is not StateType.FOLLOWER
            or self.lead != nid
            or not self.promotable()
        ):
            return
        self.lead = None
        wait = 1 + self.rng.randrange(0, LOST_LEADER_CAMPAIGN_TICKS)
        self.election_elapsed = max(self.election_elapsed, self.randomized_election_timeout - wait)
        self._event(f"lost the connection of leader {nid}: campaigning in {wait} tick(s)")

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                self.step(Message(MT.CHECK_QUORUM, frm=self.id))
            if self.state is StateType.LEADER and self.lead_transferee is not None:
                self._event(f"transfer to {self.lead_transferee} timed out")
                self.abort_leader_transfer()
        if self.state is not StateType.LEADER:
            return
        for pr in self.prs.values():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= self.election_timeout:
                    pr.become_probe()  # the snapshot was lost: try again from a probe
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, frm=self.id))

    def ticks_until_due(self) -> int:
        """How many ``tick()`` calls from now until one acts (campaigns, sends heartbeats,
        checks the quorum, retries a snapshot), at least 1: the ticks before it only count.
        A driver may sleep that long instead of ticking at every interval, provided it
        feeds the ticks it skipped before any other input (``RawNode.clock``): the lease
        check on votes reads the counters."""
        if self.state is StateType.LEADER:
            n = min(
                self.heartbeat_timeout - self.heartbeat_elapsed,
                self.election_timeout - self.election_elapsed,
            )
            for pr in self.prs.values():
                if pr.state is ProgressState.SNAPSHOT:
                    n = min(n, self.election_timeout - pr.snapshot_elapsed)
        elif self.promotable():
            n = self.randomized_election_timeout - self.election_elapsed
        else:
            n = self.election_timeout  # nothing to do; looked at again after as many
        return max(1, n)

    # ---- step ----------------------------------------------------------------------------
    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                # The lease is one tick short of the election timeout: the ticks of two
                # nodes are out of phase by up to one, so a candidate that waited its full
                # timeout since the leader's last heartbeat finds the voters that got the
                # same heartbeat at its count or one behind (one behind refused it, and the
                # election waited for the next candidate's timeout).
                in_lease = (
                    self.cfg.check_quorum
                    and self.lead is not None
                    and self.election_elapsed < max(1, self.election_timeout - 1)
                )
                if not force and in_lease:
                    return  # we heard from a leader recently: do not disrupt it
            if m.type is MT.PRE_VOTE:
                pass  # never change term on a pre-vote
            elif m.type is MT.PRE_VOTE_RESP and not m.reject:
                pass  # the term is bumped when the pre-election is won
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, None)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # Tell a stale leader (e.g. back from a partition) that there is a newer term.
                self.send(Message(MT.APP_RESP, to=m.frm))
            elif m.type is MT.PRE_VOTE:
                self.send(Message(MT.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        if m.type is MT.HUP:
            self._hup(transfer=False)
        elif m.type in (MT.VOTE, MT.PRE_VOTE):
            resp = MT.VOTE_RESP if m.type is MT.VOTE else MT.PRE_VOTE_RESP
            if self._can_vote(m) and self.log.is_up_to_date(m.index, m.log_term):
                self.send(Message(resp, to=m.frm, term=m.term))
                if m.type is MT.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
                    self._event(f"voted for {m.frm}")
            else:
                self.send(Message(resp, to=m.frm, term=self.term, reject=True))
        elif self.state is StateType.LEADER:
            self._step_leader(m)
        elif self.state is StateType.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    # ---- elections -----------------------------------------------------------------------
    def _can_vote(self, m: Message) -> bool:
        """One vote per term (a repeat to the same candidate is fine); a pre-vote for a
        later term commits us to nothing."""
        return (
            self.vote == m.frm
            or (self.vote is None and self.lead is None)
            or (m.type is MT.PRE_VOTE and m.term > self.term)
        )

    def _hup(self, transfer: bool) -> None:
        if self.state is StateType.LEADER or not self.promotable():
            return
        if self._has_unapplied_conf_change():
            self._event("not campaigning: a committed configuration change is not applied yet")
            return
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _has_unapplied_conf_change(self) -> bool:
        lo, hi = self.log.applied + 1, self.log.committed + 1
        if lo >= hi:
            return False
        return any(e.type is EntryType.CONF_CHANGE for e in self.log.slice(lo, hi))

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self.become_pre_candidate()
            vote_msg, term = MT.PRE_VOTE, self.term + 1
        else:
            self.become_candidate()
            vote_msg, term = MT.VOTE, self.term
        # A pre-candidate counts its own pre-vote at once (it persists nothing); a candidate
        # counts its own vote only once its term and vote are durable (self_vote_durable),
        # so its vote requests may leave before its fsync.
        if pre and self._poll(self.id, True) == "won":
            self._campaign(pre=False, transfer=transfer)
            return
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for nid in sorted(self.voters):
            if nid == self.id:
                continue
            self.send(
                Message(
                    vote_msg,
                    to=nid,
                    term=term,
                    index=self.log.last_index(),
                    log_term=self.log.last_term(),
                    context=ctx,
                )
            )

    def self_vote_durable(self, hs: HardState) -> None:
        """The driver made ``hs`` durable: a candidate whose vote for itself in this term it
        holds counts it now (and may win: a single voter, or the others' votes came first)."""
        if self.state is not StateType.CANDIDATE or hs.term != self.term or hs.vote != self.id:
            return
        if self.id in self.votes:
            return
        if self._poll(self.id, True) == "won":
            self.become_leader()
            self._bcast_append()

    def _poll(self, nid: NodeId, granted: bool) -> str:
        self.votes.setdefault(nid, granted)
        yes = sum(1 for v, g in self.votes.items() if g and v in self.voters)
        no = sum(1 for v, g in self.votes.items() if not g and v in self.voters)
        if yes >= self.quorum():
            return "won"
        if no > len(self.voters) - self.quorum():
            return "lost"
        return "pending"

    def _step_candidate(self, m: Message) -> None:
        my_resp = MT.PRE_VOTE_RESP if self.state is StateType.PRE_CANDIDATE else MT.VOTE_RESP
        if m.type is MT.PROP:
            raise ProposalDropped("no leader")
        if m.type is MT.APP:
            self.become_follower(m.term, m.frm)
            self._handle_append(m)
        elif m.type is MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif m.type is MT.SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif m.type is my_resp:
            result = self._poll(m.frm, not m.reject)
            if result == "won":
                if self.state is StateType.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self.become_leader()
                    self._bcast_append()
            elif result == "lost":
                self.become_follower(self.term, None)

    # ---- follower ------------------------------------------------------------------------
    def _step_follower(self, m: Message) -> None:
        if m.type is MT.PROP:
            raise ProposalDropped("not the leader")
        if m.type is MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif m.type is MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif m.type is MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif m.type is MT.TRANSFER_LEADER:
            if self.lead is not None:
                # Forwarded as a local message (term 0); ``frm`` stays the transferee.
                self.msgs.append(replace(m, to=self.lead, term=0))
        elif m.type is MT.TIMEOUT_NOW:
            self._event(f"TimeoutNow from {m.frm}: campaigning at once")
            self._hup(transfer=True)
        elif m.type is MT.READ_INDEX:
            if self.lead is None:
                return  # dropped: the caller's read times out and is retried
            self.msgs.append(replace(m, to=self.lead, frm=self.id, term=0))
        elif m.type is MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        quiet = not m.entries and m.context == COMMIT_ONLY  # answered only if rejected
        if m.index < self.log.committed:
            if not quiet:
                self.send(Message(MT.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            if not quiet:
                self.send(Message(MT.APP_RESP, to=m.frm, index=last_new))
            return
        hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self.send(
            Message(
                MT.APP_RESP,
                to=m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=self.log.term(hint),
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        if m.commit > self.log.last_index():
            raise LogLost(m.frm, m.commit, self.log.last_index())
        self.log.commit_to(m.commit)
        self.send(Message(MT.HEARTBEAT_RESP, to=m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        if self._restore(m.snapshot):
            self._event(f"restored snapshot at {m.snapshot.meta.index}")
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.log.last_index()))
        else:
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.log.committed))

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.meta
        if meta.index <= self.log.committed:
            return False
        # A snapshot that does not list us is fine: a node added after the leader's last
        # compaction is caught up with it, and the entries after it make the node a member.
        if self.log.match_term(meta.index, meta.term):
            self.log.commit_to(meta.index)  # we have the entries: just fast-forward the commit
            return False
        self.log.restore(snap)
        self.voters = set(meta.conf_state.voters)
        self.learners = set(meta.conf_state.learners)
        self.prs = {}
        self._rebuild_progress()
        return True

    # ---- configuration -------------------------------------------------------------------
    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        nid = cc.node_id
        if cc.type is ConfChangeType.ADD_LEARNER:
            if nid not in self.voters:
                self.learners.add(nid)
        elif cc.type is ConfChangeType.ADD_VOTER:
            self.learners.discard(nid)
            self.voters.add(nid)
        elif cc.type is ConfChangeType.REMOVE:
            self.voters.discard(nid)
            self.learners.discard(nid)
        self._rebuild_progress()
        self._event(f"applied {cc.type.name} {nid}: voters={sorted(self.voters)}")
        if self.state is StateType.LEADER:
            if self.id not in self.voters:
                self._event("stepping down: removed from the voters")
                self.become_follower(self.term, None)
            else:
                if self.lead_transferee is not None and self.lead_transferee not in self.voters:
                    self.abort_leader_transfer()
                if self._maybe_commit():
                    self._bcast_append(commit_only=True)
                elif cc.type is not ConfChangeType.REMOVE and nid != self.id:
                    self._send_append(nid)
        return self.conf_state()
