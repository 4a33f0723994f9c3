"""The leader's half of the Raft core: appending and committing, replication (batched,
pipelined, with fast back-off and snapshots), heartbeats, CheckQuorum, proposals, leadership
transfer and the ReadIndex rounds (their bookkeeping is ``readonly.py``).

:class:`LeaderRole` is mixed into :class:`~.core.Raft`, which owns the state it works on and
the rest of the protocol (elections, the follower, role changes, ticks, membership).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .log import CompactedError, RaftLog
from .progress import Progress, ProgressState
from .quorum import quorum_index
from .readonly import ReadOnly
from .types import (
    COMMIT_ONLY,
    Entry,
    EntryType,
    Message,
    MessageType,
    NodeId,
    ReadState,
    StateType,
)

MT = MessageType


class ProposalDropped(Exception):
    """The proposal was not appended (no leader here, a transfer under way, a pending change)."""


class _Limits(Protocol):
    max_entries_per_msg: int


class LeaderRole:
    """The leader's steps. The state is :class:`~.core.Raft`'s, set up by its ``__init__``;
    so are ``send``, ``quorum``, ``become_follower``, ``abort_leader_transfer`` and
    ``_event``, which these steps call."""

    id: NodeId
    term: int
    state: StateType
    cfg: _Limits
    log: RaftLog
    prs: dict[NodeId, Progress]
    voters: set[NodeId]
    lead_transferee: NodeId | None
    pending_conf_index: int
    election_elapsed: int
    read_states: list[ReadState]
    reads: ReadOnly

    def _append(self, entries: Sequence[Entry]) -> None:
        last = self.log.last_index()
        stamped = [Entry(self.term, last + i + 1, e.type, e.data) for i, e in enumerate(entries)]
        self.log.append(stamped)
        # The leader counts itself toward the commit quorum only once its own write is
        # durable (``self_durable``, from ``RawNode.advance``): it sends these entries to
        # its followers before its own fsync completes (Raft thesis 10.2.1).

    def self_durable(self) -> None:
        """The driver made the log durable up to ``log.stable_index``: a leader now counts
        itself for those entries (etcd raft's self-ack after the storage append)."""
        if self.state is not StateType.LEADER or self.id not in self.prs:
            return
        if self.prs[self.id].maybe_update(self.log.stable_index) and self._maybe_commit():
            self._bcast_append(commit_only=True)

    def _maybe_commit(self) -> bool:
        mci = quorum_index({nid: pr.match for nid, pr in self.prs.items()}, self.voters)
        # Section 5.4.2: only entries of the current term are committed by counting replicas.
        if mci > self.log.committed and self._may_commit_by_counting(mci):
            self.log.commit_to(mci)
            if self.reads.pending and self._committed_in_term():
                pending, self.reads.pending = self.reads.pending, []
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

    def _send_append(
        self, to: NodeId, send_if_empty: bool = True, commit_only: bool = False
    ) -> bool:
        """Send ``to`` what it misses (an empty append if nothing and ``send_if_empty``);
        whether a message went. ``commit_only``: the append is sent for the new commit index;
        if it carries no entry and the follower is in step (replicate), it is marked
        ``COMMIT_ONLY`` and the follower answers it only if it rejects it."""
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
        quiet = commit_only and not entries and pr.state is ProgressState.REPLICATE
        self.send(
            Message(
                MT.APP,
                to=to,
                index=pr.next - 1,
                log_term=prev_term,
                entries=tuple(entries),
                commit=self.log.committed,
                context=COMMIT_ONLY if quiet else b"",
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

    def _bcast_append(self, commit_only: bool = False) -> None:
        """Send every follower what it misses. ``commit_only``: the commit index moved
        (etcd's bcastAppend after maybeCommit); a follower in step then gets an unanswered
        ``COMMIT_ONLY`` append: the answer would only repeat what its answers to the entries
        said (per write, one frame less each way a follower; a lost acknowledgement is made
        up by the append a heartbeat answer triggers, which is answered)."""
        for nid in sorted(self.prs):
            if nid != self.id:
                self._send_append(nid, commit_only=commit_only)

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
            self._bcast_heartbeat(self.reads.heartbeat_context())
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
                self.reads.pending.append(m)
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
            self._bcast_append(commit_only=True)
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
        self._bcast_heartbeat(self.reads.add(self.log.committed, m.frm, m.context))

    def _ack_read(self, frm: NodeId, ctx: bytes) -> None:
        for r in self.reads.ack(frm, ctx, self.id, self.voters):
            self._answer_read(r.frm, r.index, r.context)

    def _answer_read(self, frm: NodeId | None, index: int, ctx: bytes) -> None:
        if frm is None or frm == self.id:
            self.read_states.append(ReadState(index, ctx))
        else:
            self.send(Message(MT.READ_INDEX_RESP, to=frm, index=index, context=ctx))
