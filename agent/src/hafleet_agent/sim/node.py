"""A simulated node: the real core (``RawNode``) over a simulated disk, driven by the one
Ready loop (``raft/ready.py``) exactly as the agent drives it -- with the simulator's faults
inside the loop: a crash in the middle of a write (a torn write keeps a prefix of the batch),
and a young leader scheduled to die or to be cut off.

As in the agent (node/driver.py's writer thread), a batch's write takes time: the messages
that may leave before it (a leader's appends and heartbeats) leave at once, the write
completes after a random fsync time (``write_done``), and only then do the answers leave,
the committed entries apply and the core advance; meanwhile the node steps every input
that comes (into the next batch). A crash before ``write_done`` loses the whole batch. A
batch that only moves the commit index is not written: its hard state goes with the next
batch that is (a crash may lose it: the node restarts with an older commit index)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Protocol

from ..raft.core import Config
from ..raft.rawnode import RawNode, Ready
from ..raft.ready import PendingReads, ReadyEffects, begin_ready, finish_ready
from ..raft.types import (
    ConfChange,
    Entry,
    EntryType,
    HardState,
    Message,
    NodeId,
    ReadState,
    Snapshot,
    SoftState,
    StateType,
)
from .checkers import InvariantChecker
from .model import KVStateMachine


class World(Protocol):
    """What a simulated node uses of the simulation it runs in (``Simulation``)."""

    rng: random.Random
    faults: frozenset[str]
    phase: str  # "chaos", then "heal"
    stats: Counter[str]
    checker: InvariantChecker
    compact_every: int
    conf_seen: set[int]

    def node_config(self, nid: NodeId, incarnation: int) -> Config: ...
    def core_event(self, text: str) -> None: ...
    def log(self, text: str) -> None: ...
    def at(self, delay: float, kind: str, *args: object) -> None: ...
    def send(self, m: Message) -> None: ...
    def crash(self, node: SimNode) -> None: ...
    def resolve_write(self, node: SimNode, e: Entry, op_id: str | None, result: object) -> None: ...
    def read_done(self, node: SimNode, ctx: bytes) -> None: ...
    def on_conf_applied(self, node: SimNode, cc: ConfChange) -> None: ...


class SimDisk:
    """What survives a crash: exactly what was saved (fsync'd) before it."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot = Snapshot()
        self.entries: list[Entry] = []

    def save(self, hs: HardState | None, entries: list[Entry]) -> None:
        if entries:
            first = entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(entries)
        if hs is not None:
            self.hard_state = hs

    def save_snapshot(self, snap: Snapshot) -> None:
        idx, term = snap.meta.index, snap.meta.term
        if idx <= self.snapshot.meta.index:
            return
        keep = any(e.index == idx and e.term == term for e in self.entries)
        self.entries = [e for e in self.entries if e.index > idx] if keep else []
        self.snapshot = snap


class CrashedMidWrite(Exception):
    """The simulated process died in the middle of a write: the disk keeps what reached it."""


class SimNode:
    """One simulated process: the real core, driven by the one Ready loop (raft/ready.py)
    over a simulated disk and network."""

    def __init__(self, sim: World, nid: NodeId) -> None:
        self.sim = sim
        self.id = nid
        self.disk = SimDisk()
        self.incarnation = 0
        self.alive = False
        self.removed = False
        self.raw: RawNode | None = None
        self.sm = KVStateMachine()
        self.pending_ops: dict[int, tuple[int, str]] = {}  # index -> (term, op id)
        self.pending_reads = PendingReads()
        self.torn_crash_armed = False
        self.paused_until = 0.0
        self.writing: tuple[Ready, list[Message]] | None = None  # a batch being written
        self.unsaved_hs: HardState | None = None  # a commit index not written yet
        # persist, send, restore, apply; then the optional hooks
        self.effects = ReadyEffects(
            self._persist,
            sim.send,
            self._restore,
            self._apply,
            on_soft_state=self._on_soft_state,
            on_read_state=self._on_read_state,
            after_advance=self._after_advance,
        )

    def start(self) -> None:
        d = self.disk
        cfg = self.sim.node_config(self.id, self.incarnation)
        self.raw = RawNode(
            cfg, d.hard_state, d.snapshot, list(d.entries), on_event=self.sim.core_event
        )
        self.sm = KVStateMachine.restore(d.snapshot.data, d.snapshot.meta.index)
        self.pending_ops = {}
        self.pending_reads = PendingReads()
        self.alive = True
        self.torn_crash_armed = False
        self.paused_until = 0.0
        self.writing = None
        self.unsaved_hs = None

    # ---- the driver loop, as the agent runs it ---------------------------------------------
    def process(self) -> None:
        """Handle the ready batches the inputs fed so far produced, up to the next one that
        needs a write (handed to the simulated writer: ``write_done`` goes on)."""
        if not self.alive or self.writing is not None:
            return
        raw = self.raw
        assert raw is not None
        while raw.has_ready():
            rd = raw.ready()
            later = begin_ready(rd, self.effects)
            if not rd.must_sync:
                finish_ready(raw, rd, later, self.effects)
                continue
            if not rd.must_fsync:
                # Only the commit index moved: the agent writes it with its next fsync'd batch.
                self.unsaved_hs = rd.hard_state
                finish_ready(raw, rd, later, self.effects)
                continue
            self.writing = (rd, later)
            self.sim.at(self.sim.rng.uniform(0.05, 3.0), "write_done", self.id, self.incarnation)
            return

    def write_done(self) -> None:
        """The batch's write completes (a crash mid-write happens here), then the rest."""
        assert self.writing is not None and self.raw is not None
        rd, later = self.writing
        self.writing = None
        try:
            self._persist(rd)
        except CrashedMidWrite:
            self.sim.crash(self)
            self.sim.at(self.sim.rng.uniform(5, 300), "restart", self.id)
            return
        finish_ready(self.raw, rd, later, self.effects)
        self.process()

    def _persist(self, rd: Ready) -> None:
        sim = self.sim
        hs = rd.hard_state if rd.hard_state is not None else self.unsaved_hs
        self.unsaved_hs = None
        if (
            rd.soft_state is not None
            and rd.soft_state.state is StateType.LEADER
            and "torn" in sim.faults
            and sim.phase == "chaos"
            and sim.rng.random() < 0.3
        ):
            # Die while writing the first entry of a new term (its appends may be out).
            self.torn_crash_armed = True
        if self.torn_crash_armed:
            # The driver writes the snapshot (atomically: all or nothing), then the entries
            # and the hard state as one appended batch, of which a torn write keeps a prefix.
            snap_ok = rd.snapshot is None or sim.rng.random() < 0.5
            if rd.snapshot is not None and snap_ok:
                self.disk.save_snapshot(rd.snapshot)
            cut = sim.rng.randrange(0, len(rd.entries) + 1) if snap_ok else 0
            whole = snap_ok and cut == len(rd.entries) and sim.rng.random() < 0.5
            self.disk.save(hs if whole else None, rd.entries[:cut])
            snap_txt = "-" if rd.snapshot is None else snap_ok
            sim.log(
                f"{self.id} crashed mid-write: snapshot={snap_txt} "
                f"entries={cut}/{len(rd.entries)} hard_state={whole}"
            )
            raise CrashedMidWrite(self.id)
        if rd.snapshot is not None:
            self.disk.save_snapshot(rd.snapshot)
        if rd.entries or hs is not None:
            self.disk.save(hs, rd.entries)
        assert self.raw is not None
        sim.checker.on_persist(self.id, self.raw, rd.entries)

    def _on_soft_state(self, ss: SoftState) -> None:
        sim = self.sim
        if ss.state is not StateType.LEADER:
            return
        sim.stats["leaders elected"] += 1
        if sim.faults & {"crash", "torn"} and sim.phase == "chaos":
            if sim.rng.random() < 0.3:
                # A leader that dies young leaves entries of its term on a minority:
                # the raw material of the paper's figure 8.
                when = sim.rng.uniform(0.5, 8.0)
                sim.at(when, "crash_node", self.id, self.incarnation)
        if "partition" in sim.faults and sim.phase == "chaos":
            if sim.rng.random() < 0.2:
                # Cut a new leader off mid-replication: its entries reach some nodes.
                sim.at(sim.rng.uniform(0.3, 5.0), "isolate", self.id)

    def _restore(self, snap: Snapshot) -> None:
        self.sim.stats["snapshots installed"] += 1
        self.sm = KVStateMachine.restore(snap.data, snap.meta.index)

    def _apply(self, e: Entry) -> None:
        sim = self.sim
        sim.checker.on_apply(self.id, e)
        if e.type is EntryType.NORMAL:
            op_id, result = self.sm.apply(e.index, e.data)
            sim.resolve_write(self, e, op_id, result)
        else:
            self.sm.skip(e.index)
            cc = ConfChange.decode(e.data)
            if e.index not in sim.conf_seen and e.term > 1:
                sim.conf_seen.add(e.index)
                sim.stats[f"conf changes committed ({cc.type.name})"] += 1
            sim.on_conf_applied(self, cc)

    def _on_read_state(self, rs: ReadState) -> None:
        self.pending_reads.add(rs)

    def _after_advance(self) -> None:
        sim, raw = self.sim, self.raw
        assert raw is not None
        for rs in self.pending_reads.due(self.sm.applied):
            sim.read_done(self, rs.context)
        if self.sm.applied - raw.basic_status().first_index >= sim.compact_every:
            snap = raw.compact(self.sm.applied, self.sm.snapshot())
            if snap is not None:
                self.disk.save_snapshot(snap)
                sim.stats["log compactions"] += 1
