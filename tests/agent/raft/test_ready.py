"""The one Ready-handling helper (raft/ready.py): the order of the effects, and the rule that
makes a crash safe -- nothing leaves the node, and nothing is applied, before what it depends on
is durable."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from hafleet_agent.raft.core import Config
from hafleet_agent.raft.rawnode import RawNode, Ready
from hafleet_agent.raft.ready import Handled, PendingReads, ReadyEffects, drain, handle_ready
from hafleet_agent.raft.types import (
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SnapshotMeta,
    SoftState,
    StateType,
)

MT = MessageType
IDS = ("n1", "n2", "n3")


class DiskFull(Exception):
    pass


class Driver:
    """A node with an in-memory disk that keeps only what ``persist`` was handed, recording
    every effect in order."""

    def __init__(self, nid: str = "n2", ids: tuple[str, ...] = IDS) -> None:
        self.raw = RawNode(Config(nid, random.Random(1)))
        self.raw.bootstrap([(i, b"") for i in ids])
        self.hard_state = HardState()
        self.disk: dict[int, Entry] = {}
        self.sent: list[Message] = []
        self.applied: list[int] = []
        self.events: list[str] = []
        self.fail_writes = False
        self.check_send: Callable[[Message], None] | None = None  # looks at what goes out
        self.fx = ReadyEffects(
            persist=self.persist,
            send=self.send,
            restore=self.restore,
            apply=self.apply,
            on_soft_state=lambda ss: self.events.append(f"soft {ss.state.value}"),
            on_read_state=lambda rs: self.events.append(f"read {rs.index}"),
            after_advance=lambda: self.events.append("after"),
        )

    def persist(self, rd: Ready) -> None:
        if self.fail_writes:
            raise DiskFull("no space left on device")
        if rd.entries:
            first = rd.entries[0].index
            self.disk = {i: x for i, x in self.disk.items() if i < first}
        self.disk.update((e.index, e) for e in rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        self.events.append("persist")

    def send(self, m: Message) -> None:
        if self.check_send is not None:
            self.check_send(m)
        self.sent.append(m)
        self.events.append(f"send {m.type.name}")

    def restore(self, snap: Snapshot) -> None:
        self.events.append(f"restore {snap.meta.index}")

    def apply(self, e: Entry) -> None:
        self.applied.append(e.index)
        self.events.append(f"apply {e.index}")


def _append_from_leader(term: int = 2) -> Message:
    """An append from n1, leader of ``term``, with one new entry after the founding three."""
    return Message(
        MT.APP,
        to="n2",
        frm="n1",
        term=term,
        log_term=1,
        index=3,
        entries=(Entry(term, 4, data=b"x"),),
        commit=3,
    )


# ---- the order of the effects ----------------------------------------------------------------
class _RecordingNode:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def advance(self, rd: Ready) -> None:
        self.events.append("advance")


def test_effects_run_in_the_contracts_order() -> None:
    events: list[str] = []
    fx = ReadyEffects(
        persist=lambda rd: events.append("persist"),
        send=lambda m: events.append(f"send {m.to}"),
        restore=lambda s: events.append(f"restore {s.meta.index}"),
        apply=lambda e: events.append(f"apply {e.index}"),
        on_soft_state=lambda ss: events.append(f"soft {ss.state.value}"),
        on_read_state=lambda rs: events.append(f"read {rs.context.decode()}"),
        after_advance=lambda: events.append("after"),
        flush=lambda: events.append("flush"),
    )
    rd = Ready(
        soft_state=SoftState("n1", StateType.LEADER),
        hard_state=HardState(2, "n1", 7),
        entries=[Entry(2, 8)],
        snapshot=Snapshot(SnapshotMeta(5, 1, ConfState(("n1",)))),
        committed_entries=[Entry(1, 6), Entry(2, 7)],
        messages=[
            Message(MT.APP_RESP, to="n4"),
            Message(MT.APP, to="n2"),
            Message(MT.VOTE_RESP, to="n5"),
            Message(MT.APP, to="n3"),
        ],
        read_states=[ReadState(7, b"r1"), ReadState(7, b"r2")],
    )
    done = handle_ready(_RecordingNode(events), rd, fx)  # type: ignore[arg-type]
    # A leader's appends go before the write (the thesis' 10.2.1); the answers that vouch
    # for what the batch holds (an append acknowledged, a vote granted) only once durable.
    # The early sends are put on the wire (flush) before the write is made; the answers are
    # put on it once it is durable, before the applies (they gate another member's progress).
    assert events == [
        "send n2",
        "send n3",
        "flush",
        "persist",
        "soft leader",
        "send n4",
        "send n5",
        "flush",
        "restore 5",
        "apply 6",
        "apply 7",
        "read r1",
        "read r2",
        "advance",
        "after",
    ]
    assert done == Handled(batches=1, snapshots=1, entries=2, messages=4)
    assert done.changed


def test_a_batch_that_only_commits_applies_before_it_tells_the_followers() -> None:
    """A leader's commit index moved (no entry, no vote to make durable): its writers are
    answered (apply) before its appends carry the commit index to the followers; answers
    still go before the applies, and at once; nothing is sent early (no write to wait for)."""
    events: list[str] = []
    fx = ReadyEffects(
        persist=lambda rd: events.append("persist"),
        send=lambda m: events.append(f"send {m.type.name} {m.to}"),
        restore=lambda s: events.append("restore"),
        apply=lambda e: events.append(f"apply {e.index}"),
        flush=lambda: events.append("flush"),
    )
    rd = Ready(
        hard_state=HardState(2, "n1", 7),
        committed_entries=[Entry(2, 7)],
        messages=[
            Message(MT.APP, to="n2"),
            Message(MT.READ_INDEX_RESP, to="n3"),
            Message(MT.APP, to="n3"),
        ],
    )
    assert not rd.must_fsync
    handle_ready(_RecordingNode(events), rd, fx)  # type: ignore[arg-type]
    assert events == [
        "persist",
        "send READ_INDEX_RESP n3",
        "flush",
        "apply 7",
        "send APP n2",
        "send APP n3",
        "advance",
    ]


def test_nothing_to_make_durable_is_not_persisted() -> None:
    events: list[str] = []
    fx = ReadyEffects(
        persist=lambda rd: events.append("persist"),
        send=lambda m: events.append("send"),
        restore=lambda s: events.append("restore"),
        apply=lambda e: events.append("apply"),
    )
    rd = Ready(soft_state=SoftState("n1", StateType.FOLLOWER), messages=[Message(MT.HEARTBEAT)])
    done = handle_ready(_RecordingNode(events), rd, fx)  # type: ignore[arg-type]
    assert events == ["send", "advance"]  # the optional hooks may be left out
    assert not done.changed
    assert done.messages == 1


# ---- crash safety, on a real node ------------------------------------------------------------
def test_a_failed_write_sends_nothing_applies_nothing_and_does_not_advance() -> None:
    d = Driver()
    d.fail_writes = True
    with pytest.raises(DiskFull):
        drain(d.raw, d.fx)  # the founding entries cannot be written
    assert d.sent == [] and d.applied == [] and d.events == []
    assert d.raw.basic_status().applied == 0
    # Not advanced: the same batch is handed out again, and goes through once the disk works.
    d.fail_writes = False
    rd = d.raw.ready()
    assert [e.index for e in rd.entries] == [1, 2, 3]
    handle_ready(d.raw, rd, d.fx)
    assert sorted(d.disk) == [1, 2, 3] and d.applied == [1, 2, 3]

    d.raw.step(_append_from_leader())
    d.events.clear()
    d.fail_writes = True
    with pytest.raises(DiskFull):
        drain(d.raw, d.fx)
    assert d.sent == [], "an append was acknowledged that was never written"
    assert d.events == []


def _claims_only_what_is_on_disk(d: Driver, m: Message) -> None:
    """A message may speak only of what is durable: its term, an entry it acknowledges, a vote
    it grants."""
    assert d.hard_state.term >= m.term, f"{m.type.name} of term {m.term}, disk has {d.hard_state}"
    if m.type is MT.APP_RESP and not m.reject:
        assert m.index in d.disk, f"acknowledged {m.index}, disk holds {sorted(d.disk)}"
    if m.type is MT.VOTE_RESP and not m.reject:
        assert d.hard_state.vote == m.to, f"granted {m.to}, disk has {d.hard_state}"


@pytest.mark.parametrize(
    ("incoming", "answer"),
    [
        (_append_from_leader(), "APP_RESP"),
        # n3 campaigns for term 2 with a log as long as n2's (3 entries of term 1)
        (Message(MT.VOTE, to="n2", frm="n3", term=2, log_term=1, index=3), "VOTE_RESP"),
    ],
    ids=["append", "vote"],
)
def test_an_answer_leaves_only_once_what_it_claims_is_on_disk(
    incoming: Message, answer: str
) -> None:
    d = Driver()
    drain(d.raw, d.fx)
    d.check_send = lambda m: _claims_only_what_is_on_disk(d, m)
    d.raw.step(incoming)
    d.events.clear()
    done = drain(d.raw, d.fx)
    assert [m.type.name for m in d.sent] == [answer] and not d.sent[0].reject
    assert d.events.index("persist") < d.events.index(f"send {answer}")
    assert done.batches == 1 and done.messages == 1


# ---- several batches -------------------------------------------------------------------------
def test_drain_advances_each_batch_before_after_advance_and_not_before_apply() -> None:
    d = Driver("n1", ("n1",))
    d.raw.max_committed_per_ready = 1
    seen: list[tuple[str, int, int]] = []

    def apply(e: Entry) -> None:
        seen.append(("apply", e.index, d.raw.basic_status().applied))
        d.apply(e)

    def after() -> None:
        seen.append(("after", d.applied[-1] if d.applied else 0, d.raw.basic_status().applied))

    fx = ReadyEffects(d.persist, d.send, d.restore, apply, after_advance=after)
    done = drain(d.raw, fx)
    assert not d.raw.has_ready()
    assert done == Handled(batches=1, entries=1)  # the founding entry
    d.raw.campaign()
    drain(d.raw, fx)  # a single voter wins at once; its no-op entry commits
    for i in range(3):
        d.raw.propose(f"w{i}".encode())
    seen.clear()
    done = drain(d.raw, fx)
    assert d.applied[-3:] == [3, 4, 5]
    # one entry a batch: applied while the node is still behind it, then advanced past it
    assert seen[-6:] == [
        ("apply", 3, 2),
        ("after", 3, 3),
        ("apply", 4, 3),
        ("after", 4, 4),
        ("apply", 5, 4),
        ("after", 5, 5),
    ]
    assert done.entries == 3 and done.batches >= 3


def test_read_states_reach_the_driver() -> None:
    d = Driver("n1", ("n1",))
    drain(d.raw, d.fx)
    d.raw.campaign()
    drain(d.raw, d.fx)
    d.raw.read_index(b"ctx")
    d.events.clear()
    drain(d.raw, d.fx)
    assert d.events == ["read 2", "after"]


# ---- pending reads ---------------------------------------------------------------------------
def test_pending_reads_come_due_in_order_once_applied_reaches_them() -> None:
    reads = PendingReads()
    assert reads.due(100) == []
    for index, ctx in [(5, b"a"), (3, b"b"), (7, b"c"), (5, b"d")]:
        reads.add(ReadState(index, ctx))
    assert reads.due(2) == [] and len(reads) == 4
    assert [r.context for r in reads.due(5)] == [b"a", b"b", b"d"]
    assert len(reads) == 1
    assert reads.due(6) == []
    assert [r.context for r in reads.due(7)] == [b"c"]
    assert len(reads) == 0
