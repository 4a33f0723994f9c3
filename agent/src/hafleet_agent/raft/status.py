"""A read-only view of the core for the driver, the API and the simulator (etcd's
``BasicStatus``/``Status``): the term, role, leader, log indexes, configuration and, on the
leader, each member's progress. Nothing outside ``raft/`` reads the core's own attributes;
they ask :meth:`RawNode.basic_status` or :meth:`RawNode.progress` (a layering test checks).

The views are copies: holding one does not keep the core from moving on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .progress import ProgressState
from .types import NodeId, StateType

if TYPE_CHECKING:
    from .core import Raft


@dataclass(frozen=True, slots=True)
class BasicStatus:
    id: NodeId
    term: int
    vote: NodeId | None
    state: StateType
    lead: NodeId | None
    commit: int
    applied: int
    first_index: int  # the first index still in the log (the snapshot's + 1)
    last_index: int
    snapshot_index: int  # the index the log was last compacted to
    voters: frozenset[NodeId]
    learners: frozenset[NodeId]
    pending_conf_index: int  # a leader's last proposed configuration change (0: none)
    lead_transferee: NodeId | None  # a leadership transfer under way, to this node

    @property
    def is_leader(self) -> bool:
        return self.state is StateType.LEADER

    def in_config(self, nid: NodeId) -> bool:
        """A voter or a learner."""
        return nid in self.voters or nid in self.learners


@dataclass(frozen=True, slots=True)
class PeerProgress:
    """What a leader knows of one member's log."""

    match: int
    next: int
    state: ProgressState
    recent_active: bool
    learner: bool


def basic_status(r: Raft) -> BasicStatus:
    return BasicStatus(
        id=r.id,
        term=r.term,
        vote=r.vote,
        state=r.state,
        lead=r.lead,
        commit=r.log.committed,
        applied=r.log.applied,
        first_index=r.log.first_index(),
        last_index=r.log.last_index(),
        snapshot_index=r.log.offset,
        voters=frozenset(r.voters),
        learners=frozenset(r.learners),
        pending_conf_index=r.pending_conf_index,
        lead_transferee=r.lead_transferee,
    )


def progress(r: Raft) -> Mapping[NodeId, PeerProgress]:
    """Each member's progress as the leader tracks it; empty on any other role (a follower's
    table is stale)."""
    if r.state is not StateType.LEADER:
        return {}
    return {
        nid: PeerProgress(pr.match, pr.next, pr.state, pr.recent_active, pr.learner)
        for nid, pr in r.prs.items()
    }
