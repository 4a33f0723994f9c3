"""The Raft consensus core: a pure state machine in the shape of etcd-io/raft.

Messages, ticks and proposals go in through :meth:`Raft.step` and :meth:`Raft.tick`;
what must be persisted, sent and applied comes out through :class:`RawNode.ready`
(see ``rawnode.py``). No I/O, no clock, no threads: time is the number of ticks the
driver delivers and randomness is the ``rng`` object the driver passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from .log import CompactedError, RaftLog
from .progress import Progress, ProgressState
from .quorum import majority, quorum_index
from .types import (
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
_VOTE_TYPES = frozenset({MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP})


class Rng(Protocol):
    def randrange(self, start: int, stop: int) -> int: ...


class ProposalDropped(Exception):
    """The proposal was not appended (no leader here, a transfer under way, a pending change)."""


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

    def validate(self) -> None:
        if not self.id:
            raise ValueError("node id must not be empty")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat_tick must be > 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick")
        if self.max_inflight <= 0 or self.max_entries_per_msg <= 0:
            raise ValueError("max_inflight and max_entries_per_msg must be > 0")


@dataclass
class _ReadRequest:
    index: int
    frm: NodeId | None
    context: bytes
    round: int  # the heartbeat round that confirms this read (and every later one)


_MAX_ROUND_DIGITS = 19


def _round_context(rnd: int) -> bytes:
    """A ReadIndex round as a heartbeat carries it (followers echo it back untouched)."""
    return str(rnd).encode()


def _parse_round(ctx: bytes) -> int | None:
    if not ctx or len(ctx) > _MAX_ROUND_DIGITS or not ctx.isdigit():
        return None
    return int(ctx)


class Raft:
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
        self.read_queue: list[_ReadRequest] = []
        self.pending_read_index: list[Message] = []
        # ReadIndex rounds: the leader numbers them (never reused by this object; a round of an
        # earlier term cannot be answered since the answers carry that term), and remembers
        # the newest round each node has answered in this term.
        self.read_round = 0
        self.read_acks: dict[NodeId, int] = {}
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
            self.prs[self.id].match = max(self.prs[self.id].match, last)

    def send(self, m: Message) -> None:
        """Queue a message from us. Vote messages carry the term their sender chose."""
        if m.type in _VOTE_TYPES:
            self.msgs.append(replace(m, frm=self.id))
        else:
            self.msgs.append(replace(m, frm=self.id, term=self.term))

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
                fresh.match = last
            self.prs[nid] = fresh
        self.pending_conf_index = 0
        self.read_queue = []
        self.pending_read_index = []
        self.read_acks = {}

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

    # ---- step ----------------------------------------------------------------------------
    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum
                    and self.lead is not None
                    and self.election_elapsed < self.election_timeout
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
        if self._poll(self.id, True) == "won":
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self.become_leader()
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
        if m.index < self.log.committed:
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
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

    # ---- leader --------------------------------------------------------------------------
    def _append(self, entries: Sequence[Entry]) -> None:
        last = self.log.last_index()
        stamped = [Entry(self.term, last + i + 1, e.type, e.data) for i, e in enumerate(entries)]
        self.log.append(stamped)
        self.prs[self.id].maybe_update(self.log.last_index())
        self._maybe_commit()

    def _maybe_commit(self) -> bool:
        mci = quorum_index({nid: pr.match for nid, pr in self.prs.items()}, self.voters)
        # Section 5.4.2: only entries of the current term are committed by counting replicas.
        if mci > self.log.committed and self._may_commit_by_counting(mci):
            self.log.commit_to(mci)
            if self.pending_read_index and self._committed_in_term():
                pending, self.pending_read_index = self.pending_read_index, []
                for rm in pending:
                    self._start_read_index(rm)
            return True
        return False

    def _may_commit_by_counting(self, index: int) -> bool:
        """Section 5.4.2: only an entry of the current term is committed by counting replicas;
        earlier ones are committed with it, by the log matching property."""
        return self.log.term(index) == self.term

    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _send_append(self, to: NodeId, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        try:
            prev_term = self.log.term(pr.next - 1)
            entries = self.log.slice(
                pr.next, self.log.last_index() + 1, self.cfg.max_entries_per_msg
            )
        except CompactedError:
            return self._send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self.send(
            Message(
                MT.APP,
                to=to,
                index=pr.next - 1,
                log_term=prev_term,
                entries=tuple(entries),
                commit=self.log.committed,
            )
        )
        if pr.state is ProgressState.REPLICATE:
            if entries:
                pr.optimistic_update(entries[-1].index)
                pr.inflights.add(entries[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # no snapshot to a follower we have not heard from lately
        snap = self.log.snapshot
        if snap.empty:
            raise AssertionError("log compacted but no snapshot available")
        self._event(f"sending snapshot at {snap.meta.index} to {to}")
        self.send(Message(MT.SNAP, to=to, snapshot=snap))
        pr.become_snapshot(snap.meta.index)
        return True

    def _bcast_append(self) -> None:
        for nid in sorted(self.prs):
            if nid != self.id:
                self._send_append(nid)

    def _bcast_heartbeat(self, ctx: bytes = b"") -> None:
        for nid in sorted(self.prs):
            if nid == self.id:
                continue
            commit = min(self.prs[nid].match, self.log.committed)
            self.send(Message(MT.HEARTBEAT, to=nid, commit=commit, context=ctx))

    def _quorum_active(self) -> bool:
        active = 0
        for nid in self.voters:
            pr = self.prs.get(nid)
            if nid == self.id or (pr is not None and pr.recent_active):
                active += 1
        for nid, pr in self.prs.items():
            if nid != self.id:
                pr.recent_active = False
        return active >= self.quorum()

    def _step_leader(self, m: Message) -> None:
        if m.type is MT.BEAT:
            # While reads wait, every heartbeat carries the newest round: if the heartbeats of
            # a read's own round were lost, the answers to these confirm it (and all before).
            self._bcast_heartbeat(_round_context(self.read_round) if self.read_queue else b"")
            return
        if m.type is MT.CHECK_QUORUM:
            if not self._quorum_active():
                self._event("stepping down: no quorum heard within the election timeout")
                self.become_follower(self.term, None)
            return
        if m.type is MT.PROP:
            self._propose(m)
            return
        if m.type is MT.READ_INDEX:
            if self.quorum() == 1 and self.id in self.voters:
                self._answer_read(m.frm, self.log.committed, m.context)
            elif not self._committed_in_term():
                self.pending_read_index.append(m)
            else:
                self._start_read_index(m)
            return
        if m.type is MT.TRANSFER_LEADER:
            self._transfer(m.frm)
            return
        pr = self.prs.get(m.frm) if m.frm is not None else None
        if pr is None:
            return
        if m.type is MT.APP_RESP:
            pr.recent_active = True
            self._on_append_resp(m, pr)
        elif m.type is MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                # Appends were lost (or the follower restarted): free a slot so that the next
                # append goes out, is rejected if need be, and replication backs off from there.
                pr.inflights.free_first()
            # A follower behind gets what it misses; a probing one gets an append even when it
            # is caught up (then empty), whose answer puts it back into replicate at once.
            # (A follower in snapshot state is paused: nothing is sent to it.)
            if pr.match < self.log.last_index() or pr.state is ProgressState.PROBE:
                self._send_append(m.frm)
            if m.context:
                self._ack_read(m.frm, m.context)
        elif m.type is MT.SNAP_STATUS:
            if pr.state is ProgressState.SNAPSHOT:
                if m.reject:
                    pr.pending_snapshot = 0
                pr.become_probe()
                pr.probe_sent = True  # wait for a heartbeat response before probing again
        elif m.type is MT.UNREACHABLE:
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()

    def _propose(self, m: Message) -> None:
        if not m.entries:
            raise ProposalDropped("empty proposal")
        if self.id not in self.prs:
            raise ProposalDropped("this node was removed from the group")
        if self.lead_transferee is not None:
            raise ProposalDropped(f"leadership is being transferred to {self.lead_transferee}")
        for e in m.entries:
            if e.type is EntryType.CONF_CHANGE:
                if self.pending_conf_index > self.log.applied:
                    raise ProposalDropped(
                        "a configuration change is pending (or this term's first entry "
                        "is not applied yet)"
                    )
                self.pending_conf_index = self.log.last_index() + 1
        self._append(m.entries)
        self._bcast_append()

    def _on_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject:
            probe = m.reject_hint
            if m.log_term > 0:
                probe = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        updated = pr.maybe_update(m.index)
        if not updated and not (pr.match == m.index and pr.state is ProgressState.PROBE):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._bcast_append()
        elif was_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._event(f"{m.frm} caught up: sending TimeoutNow")
            self.send(Message(MT.TIMEOUT_NOW, to=m.frm))

    def _transfer(self, transferee: NodeId | None) -> None:
        if transferee is None:
            return
        pr = self.prs.get(transferee)
        if pr is None or pr.learner:
            self._event(f"ignoring transfer to {transferee}: not a voter")
            return
        if self.lead_transferee is not None:
            if self.lead_transferee == transferee:
                return
            self._event(f"transfer to {self.lead_transferee} aborted for one to {transferee}")
            self.abort_leader_transfer()
        if transferee == self.id:
            return  # we lead already; a pending transfer was cancelled just above
        self.election_elapsed = 0  # the transfer must finish within an election timeout
        self.lead_transferee = transferee
        self._event(f"transferring leadership to {transferee}")
        if pr.match == self.log.last_index():
            self.send(Message(MT.TIMEOUT_NOW, to=transferee))
        else:
            self._send_append(transferee)

    # ---- linearizable reads (ReadIndex) --------------------------------------------------
    def _start_read_index(self, m: Message) -> None:
        # A new round: its heartbeats leave after the read arrived, so a quorum answering them
        # (or any later round) shows that we still led after the read arrived. The round, not
        # the caller's context, ties the answers to the reads: contexts may repeat (a retry).
        self.read_round += 1
        self.read_queue.append(_ReadRequest(self.log.committed, m.frm, m.context, self.read_round))
        self._bcast_heartbeat(_round_context(self.read_round))

    def _ack_read(self, frm: NodeId, ctx: bytes) -> None:
        rnd = _parse_round(ctx)
        if rnd is None or rnd > self.read_round or not self.read_queue:
            return  # not a round of ours, or nothing waits for one
        if rnd <= self.read_acks.get(frm, 0):
            return
        self.read_acks[frm] = rnd
        # The newest round that a quorum of voters has answered (we answer each one ourselves).
        confirmed = quorum_index({**self.read_acks, self.id: self.read_round}, self.voters)
        n = 0
        while n < len(self.read_queue) and self.read_queue[n].round <= confirmed:
            n += 1
        done, self.read_queue = self.read_queue[:n], self.read_queue[n:]
        for r in done:
            self._answer_read(r.frm, r.index, r.context)

    def _answer_read(self, frm: NodeId | None, index: int, ctx: bytes) -> None:
        if frm is None or frm == self.id:
            self.read_states.append(ReadState(index, ctx))
        else:
            self.send(Message(MT.READ_INDEX_RESP, to=frm, index=index, context=ctx))

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
                    self._bcast_append()
                elif cc.type is not ConfChangeType.REMOVE and nid != self.id:
                    self._send_append(nid)
        return self.conf_state()
