"""Data-driven interaction tests for the Raft core (in the spirit of etcd-io/raft's testdata).

A test file is a script of commands, each followed by ``----`` and the exact output it must
produce; a blank line ends the output. Lines starting with ``#`` outside an output block are
comments::

    # n1 asks for pre-votes.
    campaign 1
    ----
    n1 became pre-candidate at term 1

    stabilize
    ----
    > n1 handling Ready
      Lead:- State:pre-candidate
      Messages:
        n1->n2 PRE_VOTE term=2 log_term=1 index=3
    ...

A trace shows each ready a node handles (soft and hard state, entries to persist, snapshot,
committed entries, messages sent, read states, the configuration after applying a change),
each message a node receives (one line a message: ``n1->n2 APP term=2 log_term=1 index=3
commit=3 entries=[2/4 EntryNormal ""]``), messages lost to a partition or a crash, and every
change of a node's role or term (``n2 became follower at term 2``) right after the input that
caused it.

The interpreter drives real :class:`RawNode` instances exactly as the agent does, through the
one Ready loop (``raft/ready.py``: persist the ready batch, send its messages, apply its
committed entries, advance) over an in-memory network and an in-memory storage model that keeps
only what a ready handed over for persistence - so a ``crash`` loses precisely what was never
persisted. Node ids are ``n1``, ``n2``, ...; commands
take ``1`` or ``n1``.

Commands
========

``add-nodes N [prevote=true] [checkquorum=true] [election=3] [heartbeat=1] [max-inflight=64]
[max-entries=64] [timeout-offset=0]``
    Create N fresh, empty nodes (the next free ids). ``timeout-offset`` fixes the random part of
    the election timeout (the core draws it from the rng; ours returns this offset).
``bootstrap [ID...]``
    Found a group with exactly these nodes (default: all nodes that exist).
``campaign ID`` / ``tick ID N`` / ``tick-election ID`` / ``tick-heartbeat ID``
    Campaign now; tick N times; tick ``election`` / ``heartbeat`` times.
``propose ID DATA`` / ``propose-conf-change ID add-learner|add-voter|remove NODE``
    Propose on ID; prints ``ok index=I term=T`` or ``ProposalDropped: reason``.
``transfer-leader FROM TO``
    Ask node FROM (normally the leader; a follower forwards it) to hand leadership to TO.
``read-index ID CTX``
    Ask ID for a linearizable read point; the answer shows up as a read state in a ready.
``process-ready ID...`` / ``deliver-msgs ID...`` / ``stabilize [ID...]``
    Handle one ready; deliver every queued message addressed to ID; or alternate both over
    all (or the given) nodes until nothing is left to do.
``drop-msgs FROM TO [type=APP] [ctx=C]`` / ``isolate ID...`` / ``heal``
    Drop queued messages (``*`` matches any node; optionally only of one type or context);
    cut nodes off the network (queued and future messages to or from them are dropped at
    delivery); reconnect everyone.
``report-unreachable ID PEER`` / ``report-snapshot ID PEER ok|fail`` /
``report-leader-lost ID PEER`` (the connection from PEER ended)
    What a driver tells the leader ID about PEER: a send failed; a snapshot was (not)
    delivered.
``compact ID INDEX``
    Snapshot ID's state machine at INDEX (<= applied) and compact its log up to there.
``crash ID`` / ``restart ID [applied=N]``
    Stop ID, losing everything it had not persisted; start it again from its storage. The
    state machine is rebuilt from the snapshot, or - with ``applied`` - it is taken to have
    persisted itself up to N, which is passed to the RawNode.
``status ID`` / ``log ID`` / ``storage ID`` / ``applied ID`` / ``raft-state`` / ``network``
    Show a node's status (with the leader's progress), its log, what its storage holds, its
    state machine, every node's role, or the messages in flight.

``quiet=true`` on any command hides its output (for set-up steps; errors still show).

Run ``python interaction.py [--rewrite] FILE...`` to check files, or to regenerate their
expected output (``REWRITE=1`` does the latter under pytest). A regenerated trace is a claim
about correct Raft behaviour: read it before committing it.
"""

from __future__ import annotations

import difflib
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hafleet_agent.raft.core import Config, ProposalDropped
from hafleet_agent.raft.rawnode import RawNode, Ready
from hafleet_agent.raft.ready import ReadyEffects, handle_ready
from hafleet_agent.raft.types import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    Snapshot,
)

SEPARATOR = "----"
MAX_STABILIZE_ROUNDS = 1000

# ---------------------------------------------------------------------------------------------
# The datadriven file format
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One command of a test file, with the text (comments, blank lines) that precedes it."""

    line: int  # 1-based line number of the command
    command: str
    expected: list[str]
    preamble: list[str] = field(default_factory=list)


@dataclass
class TestFile:
    cases: list[Case]
    trailer: list[str]  # comments and blank lines after the last case


def parse_file(text: str, name: str = "<script>") -> TestFile:
    lines = text.splitlines()
    cases: list[Case] = []
    pending: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            pending.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != SEPARATOR:
            raise ValueError(f"{name}:{i + 1}: command {line!r} is not followed by {SEPARATOR!r}")
        j = i + 2
        expected: list[str] = []
        while j < len(lines) and lines[j].strip():
            expected.append(lines[j])
            j += 1
        cases.append(Case(i + 1, line, expected, pending))
        pending = []
        i = j + 1 if j < len(lines) else j  # the blank line that ends the block
    return TestFile(cases, pending)


def render_file(tf: TestFile, outputs: Sequence[list[str]]) -> str:
    out: list[str] = []
    for case, lines in zip(tf.cases, outputs, strict=True):
        out.extend(case.preamble)
        out.append(case.command)
        out.append(SEPARATOR)
        out.extend(lines)
        out.append("")
    out.extend(tf.trailer)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Formatting of the core's values
# ---------------------------------------------------------------------------------------------

_CC_NAMES = {
    ConfChangeType.ADD_LEARNER: "add-learner",
    ConfChangeType.ADD_VOTER: "add-voter",
    ConfChangeType.REMOVE: "remove",
}
_CC_BY_NAME = {v: k for k, v in _CC_NAMES.items()}


def fmt_bytes(b: bytes) -> str:
    return json.dumps(b.decode("utf-8", "backslashreplace"))


def fmt_ids(ids: Sequence[NodeId]) -> str:
    return "(" + ",".join(sorted(ids, key=_id_key)) + ")"


def _id_key(nid: NodeId) -> tuple[int, str]:
    digits = nid.lstrip("n")
    return (int(digits), nid) if digits.isdigit() else (1 << 30, nid)


def fmt_entry(e: Entry) -> str:
    if e.type is EntryType.CONF_CHANGE:
        try:
            cc = ConfChange.decode(e.data)
            what = f"{_CC_NAMES[cc.type]} {cc.node_id}"
            if cc.context:
                what += f" ctx={fmt_bytes(cc.context)}"
        except ValueError as exc:
            what = f"<undecodable: {exc}>"
        return f"{e.term}/{e.index} EntryConfChange {what}"
    return f"{e.term}/{e.index} EntryNormal {fmt_bytes(e.data)}"


def fmt_snapshot(s: Snapshot) -> str:
    cs = s.meta.conf_state
    return (
        f"index={s.meta.index} term={s.meta.term} voters={fmt_ids(cs.voters)} "
        f"learners={fmt_ids(cs.learners)} data={fmt_bytes(s.data)}"
    )


def fmt_hard_state(hs: HardState) -> str:
    return f"term={hs.term} vote={hs.vote or '-'} commit={hs.commit}"


_DEFAULT_MSG = Message(MessageType.HUP)


def fmt_message(sender: NodeId, m: Message) -> str:
    """One line a message: the fields that matter for its type, then any other non-default."""
    t = m.type
    parts = [f"{sender}->{m.to} {t.name}"]
    shown: set[str] = {"type", "to", "frm"}

    def show(name: str, label: str | None = None, value: object = None) -> None:
        shown.add(name)
        v = getattr(m, name) if value is None else value
        parts.append(f"{label or name}={v}")

    if t is MessageType.TRANSFER_LEADER:
        show("frm", "transferee")
    else:
        show("term")
    if t in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
        show("log_term")
        show("index")
    if t is MessageType.APP:
        show("commit")
    if t is MessageType.APP_RESP:
        show("index")
        if m.reject:
            parts.append("rejected")
            show("reject_hint", "hint")
            show("log_term", "hint_term")
            shown.add("reject")
    if t is MessageType.HEARTBEAT:
        show("commit")
    if t is MessageType.READ_INDEX_RESP:
        show("index")
    if t in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP) and m.reject:
        parts.append("rejected")
        shown.add("reject")
    if t in (MessageType.VOTE, MessageType.PRE_VOTE) and m.context:
        parts.append(f"ctx={fmt_bytes(m.context)}")
        shown.add("context")
    # Everything else that is set is shown too: a stray field must not hide in a trace.
    for name in ("log_term", "index", "commit", "reject", "reject_hint", "context"):
        if name in shown:
            continue
        v = getattr(m, name)
        if v != getattr(_DEFAULT_MSG, name):
            if name == "reject":
                parts.append("rejected")
            elif name == "context":
                parts.append(f"ctx={fmt_bytes(v)}")
            else:
                parts.append(f"{name}={v}")
    if m.entries:
        parts.append("entries=[" + ", ".join(fmt_entry(e) for e in m.entries) + "]")
    if m.snapshot is not None:
        parts.append(f"snapshot=[{fmt_snapshot(m.snapshot)}]")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# Storage and nodes
# ---------------------------------------------------------------------------------------------


class MemoryStorage:
    """What a node made durable: only what a ready handed over (or a local snapshot)."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []

    def save(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.apply_snapshot(rd.snapshot)
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def apply_snapshot(self, snap: Snapshot) -> None:
        idx = snap.meta.index
        if self.snapshot is not None and idx <= self.snapshot.meta.index:
            return  # not newer than what we hold
        keep = [e for e in self.entries if e.index > idx]
        if not any(e.index == idx and e.term == snap.meta.term for e in self.entries):
            keep = []  # our log does not contain the snapshot's entry: it replaces the log
        self.snapshot = snap
        self.entries = keep

    def describe(self) -> list[str]:
        out = [f"HardState {fmt_hard_state(self.hard_state)}"]
        if self.snapshot is not None:
            out.append(f"Snapshot {fmt_snapshot(self.snapshot)}")
        if self.entries:
            out.append(f"Entries {self.entries[0].index}..{self.entries[-1].index}:")
            out.extend(f"  {fmt_entry(e)}" for e in self.entries)
        else:
            out.append("Entries: none")
        return out


class FixedRng:
    """The election timeout's random part, fixed by the script (deterministic traces)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def randrange(self, start: int, stop: int) -> int:
        return max(start, min(start + self.offset, stop - 1))


@dataclass
class NodeOptions:
    election: int = 3
    heartbeat: int = 1
    max_inflight: int = 64
    max_entries: int = 64
    pre_vote: bool = True
    check_quorum: bool = True
    timeout_offset: int = 0

    def config(self, nid: NodeId) -> Config:
        return Config(
            id=nid,
            rng=FixedRng(self.timeout_offset),
            election_tick=self.election,
            heartbeat_tick=self.heartbeat,
            max_inflight=self.max_inflight,
            max_entries_per_msg=self.max_entries,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
        )


@dataclass
class Node:
    id: NodeId
    options: NodeOptions
    storage: MemoryStorage
    raw: RawNode | None  # None while crashed
    applied: list[tuple[int, str]] = field(default_factory=list)  # the state machine
    snapshot_index: int = 0  # the state machine's snapshot base

    def restore(self, snap: Snapshot) -> None:
        self.applied = [(snap.meta.index, d) for d in json.loads(snap.data)]
        self.snapshot_index = snap.meta.index

    def apply(self, e: Entry) -> None:
        if e.type is EntryType.NORMAL and e.data:
            self.applied.append((e.index, e.data.decode()))


# ---------------------------------------------------------------------------------------------
# The environment
# ---------------------------------------------------------------------------------------------


class CommandError(Exception):
    pass


class Env:
    def __init__(self) -> None:
        self.nodes: dict[NodeId, Node] = {}
        self.net: list[tuple[NodeId, Message]] = []  # (sender, message), in send order
        self.isolated: set[NodeId] = set()
        self.out: list[str] = []
        self._indent = ""

    # ---- output helpers -----------------------------------------------------------------
    def emit(self, line: str) -> None:
        self.out.append(self._indent + line)

    def _role(self, nid: NodeId) -> tuple[str, int] | None:
        raw = self.nodes[nid].raw
        if raw is None:
            return None
        st = raw.status()
        return (str(st["state"]), int(st["term"]))  # type: ignore[call-overload]

    def _watch(self, nid: NodeId, fn: Callable[[], object]) -> object:
        """Run an input on a node and report the role change it causes, if any."""
        before = self._role(nid)
        try:
            return fn()
        finally:
            after = self._role(nid)
            if after is not None and after != before:
                self.emit(f"{nid} became {after[0]} at term {after[1]}")

    # ---- argument helpers ---------------------------------------------------------------
    def nid(self, text: str) -> NodeId:
        nid = text if text.startswith("n") else f"n{text}"
        if nid not in self.nodes:
            raise CommandError(f"no node {nid}")
        return nid

    def up(self, text: str) -> Node:
        node = self.nodes[self.nid(text)]
        if node.raw is None:
            raise CommandError(f"{node.id} is down")
        return node

    # ---- dispatch -----------------------------------------------------------------------
    def run(self, command: str) -> list[str]:
        self.out = []
        words = shlex.split(command)
        name, args = words[0], words[1:]
        kwargs = dict(a.split("=", 1) for a in args if "=" in a)
        pos = [a for a in args if "=" not in a]
        handler = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if handler is None:
            raise CommandError(f"unknown command {name!r}")
        quiet = kwargs.pop("quiet", "false").lower() in ("true", "1", "yes")
        try:
            handler(pos, kwargs)
        except ProposalDropped as exc:
            self.emit(f"ProposalDropped: {exc}")
        except CommandError:
            raise
        except Exception as exc:  # a core failure is part of the trace: it must be seen
            self.emit(f"error: {type(exc).__name__}: {exc}")
        finally:
            self._indent = ""
        if quiet and not any(line.startswith("error:") for line in self.out):
            self.out = []
        return self.out or ["ok"]

    # ---- commands: set-up ---------------------------------------------------------------
    def cmd_add_nodes(self, pos: list[str], kw: dict[str, str]) -> None:
        count = int(pos[0])

        def flag(name: str, default: bool) -> bool:
            return kw.get(name, str(default)).lower() in ("true", "1", "yes")

        opts = NodeOptions(
            election=int(kw.get("election", 3)),
            heartbeat=int(kw.get("heartbeat", 1)),
            max_inflight=int(kw.get("max-inflight", 64)),
            max_entries=int(kw.get("max-entries", 64)),
            pre_vote=flag("prevote", True),
            check_quorum=flag("checkquorum", True),
            timeout_offset=int(kw.get("timeout-offset", 0)),
        )
        first = len(self.nodes) + 1
        for i in range(first, first + count):
            nid = f"n{i}"
            storage = MemoryStorage()
            self.nodes[nid] = Node(nid, opts, storage, RawNode(opts.config(nid)))
        self.emit(
            f"added {', '.join(f'n{i}' for i in range(first, first + count))}: "
            f"election={opts.election} heartbeat={opts.heartbeat} prevote={opts.pre_vote} "
            f"checkquorum={opts.check_quorum} max-inflight={opts.max_inflight} "
            f"max-entries={opts.max_entries}"
        )

    def cmd_bootstrap(self, pos: list[str], kw: dict[str, str]) -> None:
        ids = [self.nid(p) for p in pos] if pos else list(self.nodes)
        for nid in ids:
            node = self.up(nid)
            assert node.raw is not None
            node.raw.bootstrap([(v, b"") for v in ids])
        self.emit(f"bootstrapped {fmt_ids(ids)}")

    # ---- commands: inputs ---------------------------------------------------------------
    def cmd_campaign(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        self._watch(node.id, node.raw.campaign)

    def _tick(self, node: Node, n: int) -> None:
        raw = node.raw
        assert raw is not None
        for _ in range(n):
            self._watch(node.id, raw.tick)

    def cmd_tick(self, pos: list[str], kw: dict[str, str]) -> None:
        self._tick(self.up(pos[0]), int(pos[1]))

    def cmd_tick_election(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        self._tick(node, node.options.election)

    def cmd_tick_heartbeat(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        self._tick(node, node.options.heartbeat)

    def cmd_propose(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        raw = node.raw
        term, index = self._watch(node.id, lambda: raw.propose(pos[1].encode()))  # type: ignore[misc]
        self.emit(f"ok index={index} term={term}")

    def cmd_propose_conf_change(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        raw = node.raw
        kind = _CC_BY_NAME.get(pos[1])
        if kind is None:
            raise CommandError(f"unknown conf change {pos[1]!r}")
        target = pos[2] if pos[2].startswith("n") else f"n{pos[2]}"
        cc = ConfChange(kind, target)
        term, index = self._watch(node.id, lambda: raw.propose_conf_change(cc))  # type: ignore[misc]
        self.emit(f"ok index={index} term={term}")

    def cmd_transfer_leader(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        raw = node.raw
        target = pos[1] if pos[1].startswith("n") else f"n{pos[1]}"
        self._watch(node.id, lambda: raw.transfer_leadership(target))

    def cmd_read_index(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        raw = node.raw
        self._watch(node.id, lambda: raw.read_index(pos[1].encode()))

    def cmd_report_unreachable(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        raw = node.raw
        self._watch(node.id, lambda: raw.report_unreachable(self.nid(pos[1])))

    def cmd_report_leader_lost(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        raw = node.raw
        self._watch(node.id, lambda: raw.report_leader_lost(self.nid(pos[1])))

    def cmd_report_snapshot(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        raw = node.raw
        ok = {"ok": True, "fail": False}[pos[2]]
        self._watch(node.id, lambda: raw.report_snapshot(self.nid(pos[1]), ok))

    def cmd_compact(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        index = int(pos[1])
        data = self._sm_data(node, index)
        snap = node.raw.compact(index, data)
        if snap is not None:
            node.storage.apply_snapshot(snap)
        # What the log looks like afterwards (not what compact returned): a compaction that has
        # nothing to do must leave it as it was.
        log = node.raw.raft.log
        self.emit(f"{node.id} log now {log.first_index()}..{log.last_index()}")
        if not log.snapshot.empty:
            self.emit(f"{node.id} snapshot {fmt_snapshot(log.snapshot)}")

    # ---- commands: the driver loop and the network -------------------------------------
    def _sm_data(self, node: Node, index: int) -> bytes:
        if index < node.snapshot_index:
            return b"<below the state machine's snapshot>"  # the core must not use it
        items = [d for i, d in node.applied if i <= index]
        return json.dumps(items, separators=(",", ":")).encode()

    def process_ready(self, node: Node) -> bool:
        raw = node.raw
        if raw is None or not raw.has_ready():
            return False
        rd = raw.ready()
        self.emit(f"> {node.id} handling Ready")
        self._indent = "  "
        if rd.soft_state is not None:
            ss = rd.soft_state
            self.emit(f"Lead:{ss.lead or '-'} State:{ss.state.value}")
        if rd.hard_state is not None:
            self.emit(f"HardState {fmt_hard_state(rd.hard_state)}")
        if rd.snapshot is not None:
            self.emit(f"Snapshot {fmt_snapshot(rd.snapshot)}")
        if rd.entries:
            self.emit("Entries:")
            for e in rd.entries:
                self.emit(f"  {fmt_entry(e)}")
        if rd.committed_entries:
            self.emit("CommittedEntries:")
            for e in rd.committed_entries:
                self.emit(f"  {fmt_entry(e)}")
        if rd.messages:
            self.emit("Messages:")
            for m in rd.messages:
                self.emit(f"  {fmt_message(node.id, m)}")
        if rd.read_states:
            self.emit("ReadStates:")
            for rs in rd.read_states:
                self.emit(f"  index={rs.index} ctx={fmt_bytes(rs.context)}")
        # The driver loop, the agent's own (raft/ready.py): persist, send, apply, advance.
        fx = ReadyEffects(
            persist=node.storage.save,
            send=lambda m: self.net.append((node.id, m)),
            restore=node.restore,
            apply=node.apply,
        )
        self._watch(node.id, lambda: handle_ready(raw, rd, fx))
        conf = any(e.type is EntryType.CONF_CHANGE for e in rd.committed_entries)
        if conf:
            st = raw.status()
            self.emit(
                f"{node.id} config: voters={fmt_ids(st['voters'])} "  # type: ignore[arg-type]
                f"learners={fmt_ids(st['learners'])}"  # type: ignore[arg-type]
            )
        self._indent = ""
        return True

    def _partitioned(self, a: NodeId, b: NodeId) -> bool:
        return a != b and (a in self.isolated or b in self.isolated)

    def deliver(self, nid: NodeId) -> bool:
        node = self.nodes[nid]
        mine = [(s, m) for s, m in self.net if m.to == nid]
        if not mine:
            return False
        self.net = [(s, m) for s, m in self.net if m.to != nid]
        lost = [node.raw is None or self._partitioned(s, nid) for s, _ in mine]
        dropped = [sm for sm, x in zip(mine, lost, strict=True) if x]
        todo = [sm for sm, x in zip(mine, lost, strict=True) if not x]
        if dropped:
            why = "down" if node.raw is None else "partitioned"
            self.emit(f"> dropping messages to {nid} ({why})")
            for s, m in dropped:
                self.emit(f"  {fmt_message(s, m)}")
        if todo:
            self.emit(f"> {nid} receiving messages")
            self._indent = "  "
            raw = node.raw
            assert raw is not None
            for s, m in todo:
                self.emit(fmt_message(s, m))
                try:
                    self._watch(nid, lambda m=m: raw.step(m))
                except ProposalDropped as exc:
                    self.emit(f"ProposalDropped: {exc}")
            self._indent = ""
        return True

    def cmd_process_ready(self, pos: list[str], kw: dict[str, str]) -> None:
        for p in pos:
            if not self.process_ready(self.up(p)):
                self.emit(f"{self.nid(p)}: no ready")

    def cmd_deliver_msgs(self, pos: list[str], kw: dict[str, str]) -> None:
        for p in pos:
            if not self.deliver(self.nid(p)):
                self.emit(f"{self.nid(p)}: no messages")

    def cmd_stabilize(self, pos: list[str], kw: dict[str, str]) -> None:
        ids = [self.nid(p) for p in pos] if pos else list(self.nodes)
        for _ in range(MAX_STABILIZE_ROUNDS):
            busy = False
            for nid in ids:
                busy = self.process_ready(self.nodes[nid]) or busy
            for nid in ids:
                busy = self.deliver(nid) or busy
            if not busy:
                return
        self.emit(f"stabilize: still busy after {MAX_STABILIZE_ROUNDS} rounds")

    def cmd_drop_msgs(self, pos: list[str], kw: dict[str, str]) -> None:
        frm = "*" if pos[0] == "*" else self.nid(pos[0])
        to = "*" if pos[1] == "*" else self.nid(pos[1])

        kind = kw.get("type")
        ctx = kw.get("ctx")

        def hit(s: NodeId, m: Message) -> bool:
            return (
                frm in ("*", s)
                and to in ("*", m.to)
                and (kind is None or m.type.name == kind)
                and (ctx is None or m.context == ctx.encode())
            )

        gone = [(s, m) for s, m in self.net if hit(s, m)]
        self.net = [(s, m) for s, m in self.net if not hit(s, m)]
        for s, m in gone:
            self.emit(f"dropped: {fmt_message(s, m)}")
        if not gone:
            self.emit("no messages dropped")

    def cmd_isolate(self, pos: list[str], kw: dict[str, str]) -> None:
        for p in pos:
            self.isolated.add(self.nid(p))
        self.emit(f"isolated {fmt_ids(sorted(self.isolated))}")

    def cmd_heal(self, pos: list[str], kw: dict[str, str]) -> None:
        self.isolated.clear()

    def cmd_crash(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        st = node.raw.status()
        node.raw = None
        self.emit(
            f"{node.id} crashed (in memory it had term={st['term']} commit={st['commit']} "
            f"last={st['last_index']}); its storage holds:"
        )
        for line in node.storage.describe():
            self.emit("  " + line)

    def cmd_restart(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.nodes[self.nid(pos[0])]
        if node.raw is not None:
            raise CommandError(f"{node.id} is running")
        s = node.storage
        applied = int(kw["applied"]) if "applied" in kw else None
        node.raw = RawNode(
            node.options.config(node.id), s.hard_state, s.snapshot, s.entries, applied=applied
        )
        if applied is not None:
            # The state machine persisted itself up to ``applied``: it keeps that much.
            node.applied = [(i, d) for i, d in node.applied if i <= applied]
        elif s.snapshot is not None:
            node.applied = [(s.snapshot.meta.index, d) for d in json.loads(s.snapshot.data)]
            node.snapshot_index = s.snapshot.meta.index
        else:
            node.applied = []
            node.snapshot_index = 0
        st = node.raw.status()
        self.emit(
            f"{node.id} restarted: {st['state']} term={st['term']} vote={st['vote'] or '-'} "
            f"commit={st['commit']} applied={st['applied']} log={st['first_index']}.."
            f"{st['last_index']}"
        )

    # ---- commands: inspection -----------------------------------------------------------
    def cmd_status(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        st = node.raw.status()
        self.emit(
            f"{node.id} {st['state']} term={st['term']} vote={st['vote'] or '-'} "
            f"lead={st['lead'] or '-'} commit={st['commit']} applied={st['applied']} "
            f"log={st['first_index']}..{st['last_index']} "
            f"voters={fmt_ids(st['voters'])} learners={fmt_ids(st['learners'])}"  # type: ignore[arg-type]
        )
        progress = st.get("progress")
        if isinstance(progress, dict):
            prs = node.raw.raft.prs
            for pid in sorted(progress, key=_id_key):
                p = progress[pid]
                extra = ""
                pr = prs.get(pid)
                if pr is not None and pid != node.id:
                    extra = f" inflight={len(pr.inflights)}"
                    if pr.is_paused():
                        extra += " paused"
                    if pr.learner:
                        extra += " learner"
                self.emit(f"  {pid}: {p['state']} match={p['match']} next={p['next']}{extra}")

    def cmd_log(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.up(pos[0])
        assert node.raw is not None
        log = node.raw.raft.log
        self.emit(
            f"{node.id} log: first={log.first_index()} last={log.last_index()} "
            f"commit={log.committed} applied={log.applied}"
        )
        if not log.snapshot.empty:
            self.emit(f"  snapshot {fmt_snapshot(log.snapshot)}")
        for e in log.slice(log.first_index(), log.last_index() + 1):
            self.emit(f"  {fmt_entry(e)}")

    def cmd_storage(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.nodes[self.nid(pos[0])]
        self.emit(f"{node.id} storage:")
        for line in node.storage.describe():
            self.emit("  " + line)

    def cmd_applied(self, pos: list[str], kw: dict[str, str]) -> None:
        node = self.nodes[self.nid(pos[0])]
        self.emit(f"{node.id} state machine: {json.dumps([d for _, d in node.applied])}")

    def cmd_raft_state(self, pos: list[str], kw: dict[str, str]) -> None:
        for nid, node in self.nodes.items():
            if node.raw is None:
                self.emit(f"{nid}: down")
                continue
            st = node.raw.status()
            member = (
                "voter"
                if nid in st["voters"]  # type: ignore[operator]
                else "learner"
                if nid in st["learners"]  # type: ignore[operator]
                else "not a member"
            )
            cut = " (isolated)" if nid in self.isolated else ""
            self.emit(
                f"{nid}: {st['state']} ({member}) term={st['term']} lead={st['lead'] or '-'}{cut}"
            )

    def cmd_network(self, pos: list[str], kw: dict[str, str]) -> None:
        for s, m in self.net:
            self.emit(fmt_message(s, m))
        if not self.net:
            self.emit("no messages in flight")


# ---------------------------------------------------------------------------------------------
# Running files
# ---------------------------------------------------------------------------------------------


def run_file(path: Path) -> tuple[TestFile, list[list[str]]]:
    tf = parse_file(path.read_text(), str(path))
    env = Env()
    outputs = []
    for case in tf.cases:
        try:
            outputs.append(env.run(case.command))
        except CommandError as exc:
            raise CommandError(f"{path}:{case.line}: {case.command}: {exc}") from None
    return tf, outputs


def check_file(path: Path, rewrite: bool = False) -> str | None:
    """Run a file; return a readable diff if its output differs (None when it matches).

    With ``rewrite`` the file's expected output is replaced by the actual one instead."""
    tf, outputs = run_file(path)
    actual = render_file(tf, outputs)
    expected = path.read_text()
    if actual == expected:
        return None
    if rewrite:
        path.write_text(actual)
        return None
    diff = difflib.unified_diff(
        expected.splitlines(),
        actual.splitlines(),
        fromfile=f"{path.name} (expected)",
        tofile=f"{path.name} (actual)",
        lineterm="",
    )
    return "\n".join(diff)


def main(argv: Sequence[str]) -> int:
    rewrite = "--rewrite" in argv
    paths = [Path(a) for a in argv if a != "--rewrite"]
    failed = 0
    for p in paths:
        diff = check_file(p, rewrite)
        if diff:
            failed += 1
            print(diff)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
