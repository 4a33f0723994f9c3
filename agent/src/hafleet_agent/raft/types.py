"""Plain data types shared by the Raft core, its storage and its drivers.

Everything here is an immutable value: the core never mutates an Entry or a
Message after creating it, so drivers may hand them to other threads, encode
them lazily, or keep them in a simulator's trace.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NodeId = str
"""Node ids are short strings (``node1``, ``hafleet-node3``). ``None`` means 'nobody'."""


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before the node answers anyone: term, vote, commit."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()

    def all(self) -> tuple[NodeId, ...]:
        return tuple(sorted(set(self.voters) | set(self.learners)))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    @property
    def empty(self) -> bool:
        return self.meta.index == 0


class ConfChangeType(enum.IntEnum):
    ADD_LEARNER = 0  # add a non-voting member (or demote nothing: a voter stays a voter)
    ADD_VOTER = 1  # add a voter, or promote a learner
    REMOVE = 2  # remove a voter or a learner


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: NodeId
    context: bytes = b""

    def encode(self) -> bytes:
        return (
            bytes([int(self.type)])
            + len(self.node_id.encode()).to_bytes(2, "big")
            + (self.node_id.encode() + self.context)
        )

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if len(data) < 3:
            raise ValueError("conf change too short")
        kind = ConfChangeType(data[0])
        n = int.from_bytes(data[1:3], "big")
        if len(data) < 3 + n:
            raise ValueError("conf change truncated")
        return cls(kind, data[3 : 3 + n].decode(), data[3 + n :])


class MessageType(enum.IntEnum):
    # local messages: never leave the node
    HUP = 0  # campaign now
    BEAT = 1  # leader: send heartbeats now
    PROP = 2  # proposal
    CHECK_QUORUM = 3
    # wire messages
    APP = 10
    APP_RESP = 11
    VOTE = 12
    VOTE_RESP = 13
    PRE_VOTE = 14
    PRE_VOTE_RESP = 15
    SNAP = 16
    HEARTBEAT = 17
    HEARTBEAT_RESP = 18
    TIMEOUT_NOW = 19
    TRANSFER_LEADER = 20
    READ_INDEX = 21
    READ_INDEX_RESP = 22
    # reports from the driver
    UNREACHABLE = 30
    SNAP_STATUS = 31


COMMIT_ONLY = b"commit"
"""The context of a leader's append that only tells a follower in step the new commit index
(it carries no entry, and the leader needs no answer to go on): a follower that takes it
does not answer it; one that rejects it does (the leader backs off from the rejection). An
append with entries is always answered, whatever its context."""

LOCAL_MESSAGES = frozenset(
    {MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM, MessageType.PROP}
)


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    to: NodeId | None = None
    frm: NodeId | None = None
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the applied index reaches ``index``."""

    index: int
    context: bytes


class StateType(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    PRE_CANDIDATE = "pre-candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state a driver may want to show; never persisted."""

    lead: NodeId | None
    state: StateType


EMPTY_HARD_STATE = HardState()
