"""RawNode: the driver-facing face of the core (etcd's rawnode.go).

The driver loop is always the same, whatever runs it (asyncio, the simulator):

1. feed inputs: ``tick()``, ``step(msg)``, ``propose(data)``, ``read_index(ctx)`` ...
2. ``rd = node.ready()`` when ``node.has_ready()``
3. persist ``rd.snapshot``, ``rd.entries`` and ``rd.hard_state`` -- durably (fsync)
4. send ``rd.messages`` (a leader's appends and heartbeats may go before step 3: ready.py)
5. apply ``rd.snapshot`` (if any) then ``rd.committed_entries`` to the state machine;
   serve ``rd.read_states`` once applied reaches their index
6. ``node.advance(rd)``

``ready()`` is never called again before the ``advance()`` of the batch it returned. Inputs
may be fed between the two (the agent steps the core while a batch is being written in a
writer thread): what they produce comes out in the next batch, and ``advance`` only marks
as stable what the batch held and still matches the log. A leader counts itself toward the
commit quorum only for entries made stable by ``advance`` (its self-ack), so it may send its
appends before its own write is durable. ``ready.py`` writes this loop once
(``drain(node, effects)``; ``begin_ready`` / ``finish_ready`` for a driver that writes off
its thread), and every driver uses it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .core import Config, ProposalDropped, Raft
from .status import BasicStatus, PeerProgress, basic_status, progress
from .types import (
    LOCAL_MESSAGES,
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
    SnapshotMeta,
    SoftState,
    StateType,
)


@dataclass
class Ready:
    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    vote_changed: bool = False
    """``hard_state`` changes the term or the vote, not only the commit index."""

    @property
    def must_sync(self) -> bool:
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None

    @property
    def must_fsync(self) -> bool:
        """Whether the write must be durable before the rest of the batch (etcd's MustSync):
        not when only the commit index changed -- a commit index lost in a crash is learned
        again from the leader, and the entries it covers are durable already."""
        return bool(self.entries) or self.snapshot is not None or self.vote_changed


class RawNode:
    def __init__(
        self,
        config: Config,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        applied: int | None = None,
        on_event: Callable[[str], None] | None = None,
        check_conf_change: Callable[[ConfChange], str | None] | None = None,
    ) -> None:
        """Start from what storage recovered. ``applied``: the state machine's applied index
        (by default the snapshot's: committed entries after it are handed out again).

        A committed configuration change is applied to the core when it is reached, unless
        it cannot be decoded or ``check_conf_change`` (the driver's rule for node ids, which
        its state machine applies too) returns a reason: then it changes nothing, and the
        reason goes to ``on_event``. A committed entry never stops the core."""
        self.check_conf_change = check_conf_change
        # Lazy ticks: a driver that does not tick at every interval gives here the number
        # of ticks due since it last asked (it counts them as fed); they are fed before any
        # other input, so the core's counters are those of a node ticked on time.
        self.clock: Callable[[], int] | None = None
        self.raft = Raft(config, hard_state, snapshot, entries, on_event)
        snap = snapshot or Snapshot()
        # The configuration as of each applied conf change since the snapshot, so that a new
        # snapshot records the membership of its own index, not of a later one.
        self._conf_history: list[tuple[int, ConfState]] = [(snap.meta.index, snap.meta.conf_state)]
        self._bootstrap_applied = 0
        if applied is not None and applied > snap.meta.index:
            log = self.raft.log
            if applied > log.committed:
                raise ValueError(f"applied {applied} is beyond the commit index {log.committed}")
            for e in log.slice(snap.meta.index + 1, applied + 1):
                log.applied_to(e.index)
                if e.type is EntryType.CONF_CHANGE:
                    self._apply_conf(e)
        self._prev_hs = self.raft.hard_state()
        self._prev_ss = self.raft.soft_state()
        self.max_committed_per_ready = 256

    # ---- bootstrap -------------------------------------------------------------------------
    def bootstrap(self, voters: Sequence[tuple[NodeId, bytes]]) -> None:
        """Found a new group. Every founder must call this with the same list, so that all
        start with identical logs: one ADD_VOTER entry a founder, in term 1, committed."""
        r = self.raft
        if r.log.last_index() != 0 or r.term != 0:
            raise ValueError("bootstrap needs an empty node")
        ids = [nid for nid, _ in voters]
        if len(set(ids)) != len(ids) or not ids:
            raise ValueError("bootstrap needs distinct node ids")
        entries = [
            Entry(
                1,
                i + 1,
                EntryType.CONF_CHANGE,
                ConfChange(ConfChangeType.ADD_VOTER, nid, ctx).encode(),
            )
            for i, (nid, ctx) in enumerate(sorted(voters))
        ]
        r.log.append(entries)  # unstable: the first ready persists them
        r.become_follower(1, None)
        r.log.commit_to(len(entries))
        # Apply the founding configuration now so the node can campaign; the entries are still
        # handed out as committed so the state machine learns the members too.
        for e in entries:
            self._apply_conf(e)
        r.pending_conf_index = 0
        self._bootstrap_applied = len(entries)
        self._prev_hs = HardState()

    # ---- inputs ----------------------------------------------------------------------------
    def tick(self) -> None:
        self.raft.tick()

    def catch_up(self) -> None:
        """Feed the ticks due by ``clock`` (none without one)."""
        if self.clock is not None:
            for _ in range(self.clock()):
                self.raft.tick()

    def ticks_until_due(self) -> int:
        """Ticks from now until one acts (``Raft.ticks_until_due``)."""
        return self.raft.ticks_until_due()

    def _input(self, m: Message) -> None:
        if self.clock is not None:
            self.catch_up()
        self.raft.step(m)

    def campaign(self) -> None:
        self._input(Message(MessageType.HUP, frm=self.raft.id))

    def step(self, m: Message) -> None:
        """A message from the network. Local message types are refused."""
        if m.type in LOCAL_MESSAGES:
            raise ValueError(f"{m.type.name} is a local message; it cannot come from the network")
        if m.frm is None:
            raise ValueError("message without a sender")
        self._input(m)

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append ``data`` if we are the leader; returns (term, index) of the new entry."""
        return self._propose(Entry(0, 0, EntryType.NORMAL, data))

    def propose_many(self, data: Sequence[bytes]) -> tuple[int, int]:
        """Append each of ``data`` in order, in one proposal (one broadcast); returns the term
        and the index of the last one (the first is ``len(data) - 1`` before it)."""
        return self._propose(*(Entry(0, 0, EntryType.NORMAL, d) for d in data))

    def propose_conf_change(self, cc: ConfChange) -> tuple[int, int]:
        return self._propose(Entry(0, 0, EntryType.CONF_CHANGE, cc.encode()))

    def _propose(self, *entries: Entry) -> tuple[int, int]:
        r = self.raft
        if self.clock is not None:
            self.catch_up()  # (a tick may end the leadership: the role is looked at after it)
        if r.state is not StateType.LEADER:
            raise ProposalDropped("not the leader" if r.lead != r.id else "no leader")
        r.step(Message(MessageType.PROP, frm=r.id, entries=entries))
        return r.term, r.log.last_index()

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; the answer arrives as a ReadState in a ready."""
        if not context:
            raise ValueError("a read needs a unique, non-empty context")
        self._input(Message(MessageType.READ_INDEX, frm=self.raft.id, context=context))

    def transfer_leadership(self, to: NodeId) -> None:
        self._input(Message(MessageType.TRANSFER_LEADER, frm=to))

    def report_unreachable(self, nid: NodeId) -> None:
        self._input(Message(MessageType.UNREACHABLE, frm=nid))

    def report_leader_lost(self, nid: NodeId) -> None:
        """The connection from ``nid`` ended (``Raft.leader_lost``: a follower of ``nid``
        campaigns soon)."""
        self.catch_up()
        self.raft.leader_lost(nid)

    def report_snapshot(self, nid: NodeId, ok: bool) -> None:
        self._input(Message(MessageType.SNAP_STATUS, frm=nid, reject=not ok))

    def compact(self, index: int, data: bytes) -> Snapshot | None:
        """Record a snapshot of the state machine at applied ``index`` and drop the log up to
        it. Returns the snapshot, which the driver must persist, or None when the log is
        already compacted that far."""
        log = self.raft.log
        if index > log.applied:
            raise ValueError(f"cannot snapshot at {index}: applied is only {log.applied}")
        if index <= log.offset:
            return None
        conf = self.conf_state_at(index)
        snap = Snapshot(SnapshotMeta(index, log.term(index), conf), data)
        log.compact(snap)
        # Keep the configuration in force at the snapshot and every later one.
        keep = [c for c in self._conf_history if c[0] > index]
        self._conf_history = [(index, conf)] + keep
        return snap

    def conf_state_at(self, index: int) -> ConfState:
        """The membership as of applied ``index`` (at or after the last snapshot)."""
        conf = self._conf_history[0][1]
        for at, cs in self._conf_history:
            if at > index:
                break
            conf = cs
        return conf

    def _apply_conf(self, e: Entry) -> None:
        try:
            cc = ConfChange.decode(e.data)
            refused = self.check_conf_change(cc) if self.check_conf_change else None
        except ValueError as exc:
            refused = f"undecodable: {exc}"
        if refused:
            self.raft._event(f"ignored the configuration change at index {e.index}: {refused}")
            cs = self.raft.conf_state()
        else:
            cs = self.raft.apply_conf_change(cc)
        self._conf_history.append((e.index, cs))

    # ---- outputs ---------------------------------------------------------------------------
    def has_ready(self) -> bool:
        # Asked several times a pump: compares fields rather than building the states.
        r, log, hs, ss = self.raft, self.raft.log, self._prev_hs, self._prev_ss
        return bool(
            r.msgs
            or r.read_states
            or log.stable_index < log.last_index()
            or log.pending_snapshot is not None
            or log.committed > log.applied
            or log.committed != hs.commit
            or r.term != hs.term
            or r.vote != hs.vote
            or r.lead != ss.lead
            or r.state is not ss.state
        )

    def has_unstable(self) -> bool:
        """Whether the next ready batch holds entries or a snapshot to write."""
        log = self.raft.log
        return log.stable_index < log.last_index() or log.pending_snapshot is not None

    def ready(self) -> Ready:
        r = self.raft
        rd = Ready(
            entries=r.log.unstable_entries(),
            snapshot=r.log.pending_snapshot,
            committed_entries=r.log.next_committed(self.max_committed_per_ready),
            messages=r.msgs,
            read_states=r.read_states,
        )
        r.msgs = []
        r.read_states = []
        hs = r.hard_state()
        if hs != self._prev_hs:
            rd.hard_state = hs
            rd.vote_changed = hs.term != self._prev_hs.term or hs.vote != self._prev_hs.vote
        ss = r.soft_state()
        if ss != self._prev_ss:
            rd.soft_state = ss
        return rd

    def advance(self, rd: Ready) -> None:
        r = self.raft
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.soft_state is not None:
            self._prev_ss = rd.soft_state
        if rd.snapshot is not None:
            if r.log.pending_snapshot is rd.snapshot:
                r.log.pending_snapshot = None
            meta = rd.snapshot.meta
            self._conf_history = [(meta.index, meta.conf_state)]
        if rd.entries:
            last = rd.entries[-1]
            if r.log.match_term(last.index, last.term):
                r.log.stable_to(last.index)
                r.self_durable()
        if rd.committed_entries:
            for e in rd.committed_entries:
                if e.index <= r.log.applied:
                    # A snapshot from the leader was restored while this batch was being
                    # written: the log and the configuration are past these entries.
                    continue
                r.log.applied_to(e.index)
                if e.type is EntryType.CONF_CHANGE and e.index > self._bootstrap_applied:
                    self._apply_conf(e)
        if rd.hard_state is not None:
            r.self_vote_durable(rd.hard_state)

    # ---- introspection ---------------------------------------------------------------------
    # The ones the driver asks most (every frame, request, batch): cheap, no view built.
    @property
    def first_index(self) -> int:
        return self.raft.log.first_index()

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def lead(self) -> NodeId | None:
        return self.raft.lead

    @property
    def is_leader(self) -> bool:
        return self.raft.state is StateType.LEADER

    def basic_status(self) -> BasicStatus:
        """Term, role, leader, log indexes and configuration (status.py)."""
        return basic_status(self.raft)

    def progress(self) -> Mapping[NodeId, PeerProgress]:
        """Each member's progress on a leader; empty on any other role."""
        return progress(self.raft)

    def term_at(self, index: int) -> int:
        """The term of the entry at ``index`` (0 past the end); raises CompactedError for an
        index before the last snapshot's."""
        return self.raft.log.term(index)

    def pending_snapshot_meta(self) -> SnapshotMeta | None:
        """The meta of a snapshot the core took from the leader and the next ready hands out
        to persist (None when there is none)."""
        snap = self.raft.log.pending_snapshot
        return snap.meta if snap is not None else None

    def status(self) -> dict[str, object]:
        r = self.raft
        st: dict[str, object] = {
            "id": r.id,
            "state": r.state.value,
            "term": r.term,
            "vote": r.vote,
            "lead": r.lead,
            "commit": r.log.committed,
            "applied": r.log.applied,
            "last_index": r.log.last_index(),
            "first_index": r.log.first_index(),
            "voters": sorted(r.voters),
            "learners": sorted(r.learners),
        }
        if r.state is StateType.LEADER:
            st["progress"] = {
                nid: {"match": pr.match, "next": pr.next, "state": pr.state.value}
                for nid, pr in sorted(r.prs.items())
            }
        return st

    def status_json(self) -> str:
        return json.dumps(self.status(), sort_keys=True)
