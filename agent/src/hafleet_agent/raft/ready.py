"""The Ready contract, written once: what a driver does with each ready batch, and in which order.

Every driver of a :class:`RawNode` -- the agent on asyncio, the simulator, the tests -- handles
a ready batch the same way (etcd-io/raft's ``Ready`` contract, with persisting made strict):

0. **send** the messages that need nothing of this batch durable (:data:`EARLY_TYPES`: a
   leader's appends, heartbeats and snapshots, a follower's heartbeat answers), before the
   write, when the batch has one to wait for (``rd.must_fsync``; Raft thesis 10.2.1, as etcd
   does): the leader's own write and its followers' run in parallel. A leader counts itself
   toward the commit quorum only once ``advance`` marks its entries stable
   (``RawNode.advance``), so nothing commits on a leader's unwritten entries.
1. **persist** the snapshot, the entries and the hard state, durably, when there are any
   (``rd.must_sync``). Nothing below happens before that returns: a vote granted, an append
   acknowledged, a client's write applied (and answered) must never outlive a crash that
   loses its reason. A failing write raises; then nothing more is sent or applied and the
   node is not advanced, so the driver can stop (fail-stop) with the core in the state its
   disk says.
2. **on_soft_state**: the role or leader changed (for logs and metrics; never persisted).
3. **send** the answers among the other messages (:data:`ANSWER_TYPES`: append, vote and
   pre-vote answers, heartbeat and read-index answers), in order, and put them on the wire
   (``flush``) at once: each gates another member's commit or election, so it waits neither
   for this member's state machine nor for the rest of its loop cycle.
4. **restore** the snapshot into the state machine, then **apply** each committed entry (in
   order; a configuration change is applied to the core by ``advance``).
5. **send** the rest (in order): a leader's appends and heartbeats not sent at step 0 (the
   commit index told to the followers comes after the applies, so that the writers these
   answer go first), vote and pre-vote requests (a candidate's own vote is durable first; a
   pre-vote changes nothing to persist), forwarded reads.
6. **on_read_state**: a linearizable read may be served once the applied index reaches its
   index (:class:`PendingReads` keeps them until then).
7. ``advance`` the node; then **after_advance** (serve the reads now due, compact the log).

The side effects come in as callables (:class:`ReadyEffects`), so this module does no I/O of
its own and the ordering lives here only. :func:`drain` handles batches until the node has no
more; :func:`handle_ready` handles one batch that the caller took (to show it first, say). A
driver that writes in another thread splits the batch around its write: :func:`begin_ready`
(step 0), its own write (step 1), then :func:`finish_ready` (steps 2-7) once it is durable;
it may feed inputs to the node meanwhile, but takes no other batch until then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .rawnode import RawNode, Ready
from .types import Entry, Message, MessageType, ReadState, Snapshot, SoftState

EARLY_TYPES = frozenset(
    {
        MessageType.APP,
        MessageType.HEARTBEAT,
        MessageType.SNAP,
        MessageType.HEARTBEAT_RESP,
        MessageType.VOTE,
        MessageType.PRE_VOTE,
    }
)
"""Messages sent before their batch is durable: none of them answers for anything in it (a
leader's appends carry entries it counts for itself only once written; a candidate's vote
requests, a vote it counts for itself only once its term and vote are written; a heartbeat
answer and a pre-vote request carry no vote and acknowledge no entry)."""

ANSWER_TYPES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.READ_INDEX_RESP,
    }
)
"""Answers: sent after the batch is durable but before its applies (step 3)."""


@dataclass(frozen=True, slots=True)
class ReadyEffects:
    """What a driver does with a ready batch; :func:`handle_ready` calls these in order."""

    persist: Callable[[Ready], None]
    """Make ``rd.snapshot``, ``rd.entries`` (replacing any persisted entry at or after the
    first one's index) and ``rd.hard_state`` durable; called only when ``rd.must_sync``."""
    send: Callable[[Message], None]
    restore: Callable[[Snapshot], None]
    """Replace the state machine with a snapshot from the leader (already persisted)."""
    apply: Callable[[Entry], None]
    on_soft_state: Callable[[SoftState], None] | None = None
    on_read_state: Callable[[ReadState], None] | None = None
    after_advance: Callable[[], None] | None = None
    flush: Callable[[], None] | None = None
    """Put the messages sent so far on the wire now (a transport that batches a loop
    cycle's frames): called after the early sends, so that a leader's appends do not wait
    for its own write to be prepared and handed over."""
    send_rest: Callable[[list[Message]], None] | None = None
    """Take step 5's messages (in order) to send them: a driver may send them once the
    callbacks its applies scheduled have run (the writers they answer go first). When
    None, each is handed to ``send`` at once."""


@dataclass(frozen=True, slots=True)
class Handled:
    """What handling ready batches did."""

    batches: int = 0
    snapshots: int = 0  # snapshots restored into the state machine
    entries: int = 0  # committed entries applied
    messages: int = 0  # messages handed to send

    @property
    def changed(self) -> bool:
        """Whether the state machine moved (someone waiting on it may look again)."""
        return bool(self.snapshots or self.entries)

    def __add__(self, other: Handled) -> Handled:
        return Handled(
            self.batches + other.batches,
            self.snapshots + other.snapshots,
            self.entries + other.entries,
            self.messages + other.messages,
        )


def handle_ready(node: RawNode, rd: Ready, fx: ReadyEffects) -> Handled:
    """Handle ``rd``, which ``node.ready()`` just returned, and advance the node past it. An
    exception from an effect propagates and leaves the node not advanced."""
    later = begin_ready(rd, fx)
    if rd.must_sync:
        fx.persist(rd)
    return finish_ready(node, rd, later, fx)


def begin_ready(rd: Ready, fx: ReadyEffects, flush: bool = True) -> list[Message]:
    """Step 0: send what may go before ``rd`` is durable; returns the messages that wait.
    ``flush=False``: the caller puts them on the wire itself (``fx.flush``), once it has
    handed its write over (a write thread then runs while the frames are being sent)."""
    if not rd.must_fsync:
        return rd.messages  # nothing to wait for: all in steps 3 and 5
    later: list[Message] = []
    sent = False
    for m in rd.messages:
        if m.type in EARLY_TYPES:
            fx.send(m)
            sent = True
        else:
            later.append(m)
    if sent and flush and fx.flush is not None:
        fx.flush()
    return later


def finish_ready(node: RawNode, rd: Ready, later: list[Message], fx: ReadyEffects) -> Handled:
    """Steps 2-7, once ``rd`` is durable: ``later`` is what :func:`begin_ready` returned."""
    if rd.soft_state is not None and fx.on_soft_state is not None:
        fx.on_soft_state(rd.soft_state)
    rest: list[Message] = []
    answered = False
    for m in later:
        if m.type in ANSWER_TYPES:
            fx.send(m)
            answered = True
        else:
            rest.append(m)
    if answered and fx.flush is not None:
        fx.flush()
    if rd.snapshot is not None:
        fx.restore(rd.snapshot)
    for e in rd.committed_entries:
        fx.apply(e)
    if rest:
        if fx.send_rest is not None:
            fx.send_rest(rest)
        else:
            for m in rest:
                fx.send(m)
    if fx.on_read_state is not None:
        for rs in rd.read_states:
            fx.on_read_state(rs)
    node.advance(rd)
    if fx.after_advance is not None:
        fx.after_advance()
    return Handled(1, int(rd.snapshot is not None), len(rd.committed_entries), len(rd.messages))


def drain(node: RawNode, fx: ReadyEffects) -> Handled:
    """Handle ready batches until the node has none left; returns what they held in all. Each
    batch ends with an advance, so the loop ends once the inputs fed before it are handled
    (the core hands out at most ``max_committed_per_ready`` committed entries a batch)."""
    done = Handled()
    while node.has_ready():
        done += handle_ready(node, node.ready(), fx)
    return done


class PendingReads:
    """Read states waiting for the state machine to reach their index, in arrival order."""

    def __init__(self) -> None:
        self._waiting: list[ReadState] = []

    def add(self, rs: ReadState) -> None:
        self._waiting.append(rs)

    def due(self, applied: int) -> list[ReadState]:
        """Take out, in order, every read whose index ``applied`` has reached."""
        if not self._waiting:
            return []
        due = [rs for rs in self._waiting if rs.index <= applied]
        if due:
            self._waiting = [rs for rs in self._waiting if rs.index > applied]
        return due

    def __len__(self) -> int:
        return len(self._waiting)
