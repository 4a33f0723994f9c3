"""A deterministic, seeded simulation of a Raft group under faults.

One ``random.Random(seed)`` decides everything: message delays, losses, partitions,
crashes, client operations. The same seed replays the same run event for event, so a
failing seed is a reproducible bug report (``--seed X --trace``).

The simulated node (``node.py``) is the real core (``RawNode``) driven by the agent's own
Ready loop (``raft/ready.py``): persist the ready batch (to a simulated disk that keeps only
what was "fsync'd"), send its messages (over ``network.py``), apply its committed entries,
advance. After every event the invariant checker looks at every node (``checkers.py``); at
the end the client history goes through the linearizability checker and a liveness check.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from ..raft.core import Config, ProposalDropped
from ..raft.types import ConfChange, ConfChangeType, Entry, Message, NodeId
from .checkers import InvariantChecker, Violation
from .config import SeedResult, SimConfig
from .linearizability import Op, check_kv_history
from .model import encode_command
from .network import SimNetwork
from .node import SimNode


@dataclass
class _OpRecord:
    client: int
    kind: str
    key: str
    value: object
    expected: object
    call: float
    ret: float | None = None
    output: object = None
    ok: bool = True
    done: bool = False


class Simulation:
    def __init__(self, cfg: SimConfig, out: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.faults = cfg.faults
        self.rng = random.Random(cfg.seed)
        self.out = out
        self.now = 0.0
        self.queue: list[tuple[float, int, str, tuple[object, ...]]] = []
        self.seq = 0
        self.events = 0
        self.trace: deque[str] = deque(maxlen=400)
        self.nodes: dict[NodeId, SimNode] = {}
        self.next_node = cfg.nodes + 1
        self.net = SimNetwork(self.rng, lambda delay, m: self.at(delay, "deliver", m))
        self.phase = "chaos"
        self.heal_started = 0.0
        self.heal_writes_done: set[int] = set()
        self.ops: dict[str, _OpRecord] = {}
        self.reads: dict[bytes, str] = {}
        self.client_seq = [0] * cfg.clients
        self.last_seen: dict[str, object] = {}
        self.checker = InvariantChecker()
        self.max_inflight = self.rng.choice([1, 4, 64])
        self.max_entries_per_msg = self.rng.choice([1, 8, 64])
        snap_fault = "snapshot" in self.faults
        self.compact_every = self.rng.randrange(8, 40) if snap_fault else 500
        self.stats: Counter[str] = Counter()
        self.conf_seen: set[int] = set()

    # ---- plumbing --------------------------------------------------------------------------
    def log(self, text: str) -> None:
        line = f"{self.now:10.1f} {text}"
        self.trace.append(line)
        if self.out is not None:
            self.out(line)

    def core_event(self, text: str) -> None:
        if self.out is not None or self.trace.maxlen:
            self.log(f"  core {text}")

    def at(self, delay: float, kind: str, *args: object) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (self.now + delay, self.seq, kind, args))

    def node_config(self, nid: NodeId, incarnation: int) -> Config:
        """The core's configuration of a node's incarnation (its rng is seeded by both)."""
        return Config(
            nid,
            random.Random(f"{self.cfg.seed}/{nid}/{incarnation}"),
            election_tick=self.cfg.election_tick,
            heartbeat_tick=self.cfg.heartbeat_tick,
            max_inflight=self.max_inflight,
            max_entries_per_msg=self.max_entries_per_msg,
        )

    def alive_nodes(self) -> list[SimNode]:
        return [n for _, n in sorted(self.nodes.items()) if n.alive]

    def leader(self) -> SimNode | None:
        best: SimNode | None = None
        best_term = -1
        for n in self.alive_nodes():
            assert n.raw is not None
            st = n.raw.basic_status()
            if st.is_leader and (best is None or st.term > best_term):
                best, best_term = n, st.term
        return best

    # ---- run -------------------------------------------------------------------------------
    def run(self) -> SeedResult:
        cfg = self.cfg
        ids = [f"n{i}" for i in range(1, cfg.nodes + 1)]
        for nid in ids:
            node = SimNode(self, nid)
            self.nodes[nid] = node
            node.start()
            assert node.raw is not None
            node.raw.bootstrap([(i, b"") for i in ids])
            self.at(self.rng.uniform(0, cfg.tick_ms), "tick", nid, node.incarnation)
            node.process()
        for c in range(cfg.clients):
            self.at(self.rng.uniform(0, 50), "client", c)
        self.schedule_faults()
        try:
            while self.queue:
                t, _, kind, args = heapq.heappop(self.queue)
                self.now = t
                self.events += 1
                self.dispatch(kind, args)
                self.checker.check_nodes(self.now, self.nodes.values())
                if self.phase == "chaos" and self.events >= cfg.steps:
                    self.heal()
                elif self.phase == "heal":
                    if self.liveness_reached():
                        break
                    if self.now - self.heal_started > cfg.heal_ms:
                        raise Violation(
                            "liveness",
                            f"no leader with committed writes {cfg.heal_ms:.0f} ms after "
                            f"faults healed ({self.liveness_report()})",
                        )
            self.check_history()
        except Violation as v:
            return self._failed(v)
        except Exception as exc:  # a crash of the core is a failure of the seed, with its trace
            if self.out is not None:
                import traceback

                self.out(traceback.format_exc())
            return self._failed(Violation("crash", f"{type(exc).__name__}: {exc}"))
        return SeedResult(
            cfg.seed, True, self.events, self.now, ops=len(self.ops), stats=self.stats
        )

    def _failed(self, v: Violation) -> SeedResult:
        self.log(f"VIOLATION {v.prop}: {v.detail}")
        return SeedResult(
            self.cfg.seed,
            False,
            self.events,
            self.now,
            v,
            list(self.trace),
            len(self.ops),
            self.stats,
        )

    def dispatch(self, kind: str, args: tuple[object, ...]) -> None:
        if kind == "tick":
            nid, inc = args
            node = self.nodes[nid]  # type: ignore[index]
            if node.alive and node.incarnation == inc:
                assert node.raw is not None
                if node.paused_until <= self.now:  # a frozen process misses its ticks
                    node.raw.tick()
                    node.process()
                self.at(self.cfg.tick_ms, "tick", nid, inc)
        elif kind == "deliver":
            (m,) = args
            assert isinstance(m, Message)
            node = self.nodes.get(m.to)  # type: ignore[arg-type]
            if node is None or not node.alive:
                return
            if self.net.cuts(m.frm, m.to):
                return  # the partition came up while the message was in flight
            if node.paused_until > self.now:
                self.at(node.paused_until - self.now, "deliver", m)  # waits in the socket
                return
            assert node.raw is not None
            node.raw.step(m)
            node.process()
        elif kind == "write_done":
            nid, inc = args
            node = self.nodes[nid]  # type: ignore[index]
            if node.alive and node.incarnation == inc and node.writing is not None:
                if node.paused_until > self.now:  # the writer thread is frozen too
                    self.at(node.paused_until - self.now, "write_done", nid, inc)
                else:
                    node.write_done()
        elif kind == "client":
            (c,) = args
            self.client_op(c)  # type: ignore[arg-type]
        elif kind == "op_timeout":
            (op_id,) = args
            rec = self.ops[op_id]  # type: ignore[index]
            if not rec.done:
                rec.done = True
                rec.ret = None  # indeterminate
                self.stats["ops indeterminate"] += 1
                self.log(f"client {rec.client}: {op_id} timed out (indeterminate)")
                self.at(self.rng.uniform(0, 20), "client", rec.client)
        elif kind == "fault":
            (name,) = args
            if self.phase == "chaos":
                getattr(self, f"fault_{name}")()
                self.at(self.fault_interval(name), "fault", name)
        elif kind == "crash_node":
            nid, inc = args
            node = self.nodes[nid]  # type: ignore[index]
            if node.alive and node.incarnation == inc and self.phase == "chaos":
                self.crash(node)
                self.at(self.rng.uniform(5, 300), "restart", node.id)
        elif kind == "conn_lost":
            nid, inc, peer = args
            node = self.nodes[nid]  # type: ignore[index]
            if node.alive and node.incarnation == inc:
                if node.paused_until > self.now:  # read when the process runs again
                    self.at(node.paused_until - self.now, "conn_lost", nid, inc, peer)
                    return
                assert node.raw is not None
                node.raw.report_leader_lost(peer)  # type: ignore[arg-type]
                node.process()
        elif kind == "client_exec":
            op_id, nid = args
            self.client_exec(op_id, self.nodes[nid])  # type: ignore[arg-type,index]
        elif kind == "isolate":
            (nid,) = args
            if self.phase == "chaos":
                self.net.isolate(nid, sorted(self.nodes))  # type: ignore[arg-type]
                self.log(f"network: {nid} isolated")
                self.stats["network: young leader isolated"] += 1
        elif kind == "restart":
            (nid,) = args
            node = self.nodes[nid]  # type: ignore[index]
            if not node.alive and not node.removed:
                self.restart(node)
        elif kind == "destroy":
            (nid,) = args
            node = self.nodes[nid]  # type: ignore[index]
            node.alive = False
            self.log(f"{nid} destroyed (removed from the group)")
            self.connections_end(node.id)
        else:
            raise AssertionError(kind)

    # ---- the network -----------------------------------------------------------------------
    def send(self, m: Message) -> None:
        self.net.send(m)

    # ---- crashes ---------------------------------------------------------------------------
    def crash(self, node: SimNode) -> None:
        self.stats["torn-write crashes" if node.torn_crash_armed else "crashes"] += 1
        node.alive = False
        node.raw = None
        node.torn_crash_armed = False
        node.paused_until = 0.0
        self.log(f"{node.id} crashed")
        self.connections_end(node.id)

    def connections_end(self, nid: NodeId, to: list[SimNode] | None = None) -> None:
        """The connections of ``nid`` end (its process exited, or they were reset): each
        other live node (or each of ``to``) the network still reaches hears of it, as the
        agent's transport does when a connection closes (``RawNode.report_leader_lost``)."""
        for other in self.alive_nodes() if to is None else to:
            if other.id != nid and not self.net.cuts(nid, other.id):
                delay = self.rng.uniform(0.05, 2.0)
                self.at(delay, "conn_lost", other.id, other.incarnation, nid)

    def restart(self, node: SimNode) -> None:
        node.incarnation += 1
        node.start()
        self.log(
            f"{node.id} restarted: term={node.disk.hard_state.term} "
            f"snapshot={node.disk.snapshot.meta.index} entries={len(node.disk.entries)}"
        )
        self.at(self.rng.uniform(0, self.cfg.tick_ms), "tick", node.id, node.incarnation)
        node.process()

    # ---- clients ---------------------------------------------------------------------------
    def pick_node(self) -> SimNode | None:
        alive = self.alive_nodes()
        if not alive:
            return None
        lead = self.leader()
        if lead is not None and self.rng.random() < 0.6:
            return lead
        return self.rng.choice(alive)

    def client_op(self, c: int) -> None:
        node = self.pick_node()
        if node is None:
            self.at(self.rng.uniform(20, 100), "client", c)
            return
        assert node.raw is not None
        self.client_seq[c] += 1
        op_id = f"c{c}-{self.client_seq[c]}"
        key = f"k{self.rng.randrange(self.cfg.keys)}"
        if self.phase == "heal":
            kind = "put"
        else:
            kind = self.rng.choices(["put", "get", "cas", "del"], [35, 35, 20, 10])[0]
        value: object = None
        expected: object = None
        if kind in ("put", "cas"):
            value = c * 1_000_000 + self.client_seq[c]
        if kind == "cas":
            expected = self.last_seen.get(key) if self.rng.random() < 0.7 else None
        rec = _OpRecord(c, kind, key, value, expected, self.now)
        self.ops[op_id] = rec
        self.at(self.cfg.op_timeout_ms, "op_timeout", op_id)
        if node.paused_until > self.now:
            # The request sits in a frozen process's socket until it resumes.
            self.at(node.paused_until - self.now, "client_exec", op_id, node.id)
        else:
            self.client_exec(op_id, node)

    def client_exec(self, op_id: str, node: SimNode) -> None:
        rec = self.ops[op_id]
        c, kind, key, value, expected = rec.client, rec.kind, rec.key, rec.value, rec.expected
        if rec.done:
            return
        if not node.alive or node.raw is None:
            rec.ok = False  # connection refused: never reached a node
            rec.done = True
            rec.ret = self.now
            self.at(self.rng.uniform(5, 30), "client", c)
            return
        if kind == "get":
            ctx = op_id.encode()
            self.reads[ctx] = op_id
            node.raw.read_index(ctx)
            self.log(f"client {c}: {op_id} get {key} via {node.id}")
            node.process()
        else:
            data = encode_command(op_id, kind, key, value, expected)
            try:
                term, index = node.raw.propose(data)
            except ProposalDropped as exc:
                rec.ok = False
                rec.done = True
                rec.ret = self.now
                self.stats["ops refused"] += 1
                self.log(f"client {c}: {op_id} {kind} refused by {node.id}: {exc}")
                self.at(self.rng.uniform(5, 30), "client", c)
                return
            node.pending_ops[index] = (term, op_id)
            self.log(
                f"client {c}: {op_id} {kind} {key}={value} exp={expected} "
                f"at {node.id} {term}/{index}"
            )
            node.process()

    def complete(self, op_id: str, output: object, ok: bool = True) -> None:
        rec = self.ops[op_id]
        if rec.done:
            return
        rec.done = True
        rec.ret = self.now
        rec.output = output
        rec.ok = ok
        self.stats[f"{rec.kind} ok" if ok else "ops failed"] += 1
        if ok:
            if rec.kind == "put" or (rec.kind == "cas" and output is True):
                self.last_seen[rec.key] = rec.value
            elif rec.kind == "get":
                self.last_seen[rec.key] = output
            if self.phase == "heal" and rec.kind == "put" and rec.call >= self.heal_started:
                self.heal_writes_done.add(rec.client)
        self.log(f"client {rec.client}: {op_id} -> {output!r}{'' if ok else ' (failed)'}")
        self.at(self.rng.uniform(0, 20), "client", rec.client)

    def resolve_write(self, node: SimNode, e: Entry, op_id: str | None, result: object) -> None:
        pending = node.pending_ops.pop(e.index, None)
        if pending is None:
            return
        term, want = pending
        if e.term == term and op_id == want:
            self.complete(want, result)
        else:
            # Another entry took our index: ours can never be applied (log matching).
            self.complete(want, None, ok=False)

    def read_done(self, node: SimNode, ctx: bytes) -> None:
        """A read that ``node`` confirmed has its index applied there: answer it."""
        op_id = self.reads.get(ctx)
        if op_id is not None and not self.ops[op_id].done:
            self.complete(op_id, node.sm.get(self.ops[op_id].key))

    def check_history(self) -> None:
        ops = [
            Op(
                client=r.client,
                kind=r.kind,
                key=r.key,
                value=r.value,
                expected=r.expected,
                call=r.call,
                ret=r.ret,
                output=r.output,
                ok=r.ok,
            )
            for r in self.ops.values()
        ]
        res = check_kv_history(ops)
        if not res.ok:
            raise Violation("linearizability", res.explain())

    # ---- faults ----------------------------------------------------------------------------
    def fault_interval(self, name: str) -> float:
        base = {
            "crash": (300, 1500),
            "net": (200, 1200),
            "membership": (200, 900),
            "transfer": (600, 2000),
        }[name]
        return self.rng.uniform(*base)

    def schedule_faults(self) -> None:
        f = self.faults
        if f & {"crash", "torn", "pause"}:
            self.at(self.fault_interval("crash"), "fault", "crash")
        if f & {"partition", "asym", "loss", "dup", "reorder", "delay"}:
            self.at(self.fault_interval("net"), "fault", "net")
        if "membership" in f:
            self.at(self.fault_interval("membership"), "fault", "membership")
        if "transfer" in f:
            self.at(self.fault_interval("transfer"), "fault", "transfer")

    def fault_crash(self) -> None:
        alive = [n for n in self.alive_nodes() if not n.removed]
        down = [n for _, n in sorted(self.nodes.items()) if not n.alive and not n.removed]
        if down and (not alive or self.rng.random() < 0.5):
            node = self.rng.choice(down)
            self.at(self.rng.uniform(0, 200), "restart", node.id)
            return
        if not alive:
            return
        lead = self.leader()
        node = lead if lead is not None and self.rng.random() < 0.3 else self.rng.choice(alive)
        if "pause" in self.faults and (
            not self.faults & {"crash", "torn"} or self.rng.random() < 0.3
        ):
            if lead is not None and self.rng.random() < 0.7:
                node = lead
            node.paused_until = self.now + self.rng.uniform(100, 1200)
            self.stats["pauses"] += 1
            self.log(f"{node.id} paused until {node.paused_until:.1f}")
        elif not self.faults & {"crash", "torn"}:
            return
        elif "torn" in self.faults and ("crash" not in self.faults or self.rng.random() < 0.5):
            node.torn_crash_armed = True  # crashes during its next write
            self.log(f"{node.id} will crash during its next write")
        else:
            self.crash(node)

    def fault_net(self) -> None:
        lead = self.leader()
        alive = [n.id for n in self.alive_nodes()]
        what = self.net.fault(self.faults, lead and lead.id, alive, sorted(self.nodes))
        self.stats[f"network: {what}"] += 1
        self.log(f"network: {what} {self.net.describe()}")
        if lead is not None and self.rng.random() < 0.25:
            # A live leader's connections end (reset, redialled): some followers hear of it
            # and campaign soon; PreVote and the others' leases must keep the leader.
            others = [n for n in self.alive_nodes() if n is not lead]
            to = [n for n in others if self.rng.random() < 0.6]
            self.stats["network: live leader's connections reset"] += 1
            self.log(f"network: the connections of live leader {lead.id} reset")
            self.connections_end(lead.id, to)

    def fault_transfer(self) -> None:
        lead = self.leader()
        if lead is None or lead.paused_until > self.now:
            return
        assert lead.raw is not None
        others = sorted(v for v in lead.raw.basic_status().voters if v != lead.id)
        if others:
            to = self.rng.choice(others)
            self.log(f"transfer leadership {lead.id} -> {to}")
            self.stats["transfers requested"] += 1
            lead.raw.transfer_leadership(to)
            lead.process()

    def fault_membership(self) -> None:
        lead = self.leader()
        if lead is None or lead.paused_until > self.now:
            return
        raw = lead.raw
        assert raw is not None
        r = raw.basic_status()
        cc: ConfChange | None = None
        if r.learners:
            nid = sorted(r.learners)[0]
            pr = raw.progress().get(nid)
            if pr is not None and pr.match >= r.commit:
                cc = ConfChange(ConfChangeType.ADD_VOTER, nid)
            elif self.rng.random() < 0.1:
                cc = ConfChange(ConfChangeType.REMOVE, nid)  # give up on a learner that lags
        else:
            n_members = len(r.voters) + len(r.learners)
            can_remove = len(r.voters) > max(2, self.cfg.nodes - 2)
            if can_remove and (n_members >= self.cfg.nodes or self.rng.random() < 0.3):
                nid = self.rng.choice(sorted(r.voters))
                cc = ConfChange(ConfChangeType.REMOVE, nid)
            elif n_members < self.cfg.nodes:
                nid = f"n{self.next_node}"
                self.next_node += 1
                node = SimNode(self, nid)
                self.nodes[nid] = node
                node.start()
                self.at(self.rng.uniform(0, self.cfg.tick_ms), "tick", nid, node.incarnation)
                cc = ConfChange(ConfChangeType.ADD_LEARNER, nid)
        if cc is None:
            return
        try:
            raw.propose_conf_change(cc)
            self.log(f"membership: {lead.id} proposes {cc.type.name} {cc.node_id}")
        except ProposalDropped as exc:
            self.log(f"membership: {cc.type.name} {cc.node_id} dropped: {exc}")
        lead.process()

    def on_conf_applied(self, node: SimNode, cc: ConfChange) -> None:
        if cc.type is ConfChangeType.REMOVE:
            target = self.nodes.get(cc.node_id)
            if target is not None and not target.removed:
                target.removed = True
                self.log(f"{cc.node_id} removal committed (seen at {node.id})")
                self.at(self.rng.uniform(50, 300), "destroy", cc.node_id)

    # ---- liveness --------------------------------------------------------------------------
    def heal(self) -> None:
        self.phase = "heal"
        self.heal_started = self.now
        self.net.heal()
        self.log("=== faults healed: every node restarts, the network is whole ===")
        for node in list(self.nodes.values()):
            node.torn_crash_armed = False
            node.paused_until = min(node.paused_until, self.now)
            if not node.alive and not node.removed:
                self.restart(node)

    def liveness_reached(self) -> bool:
        lead = self.leader()
        if lead is None or len(self.heal_writes_done) < self.cfg.clients:
            return False
        assert lead.raw is not None
        ls = lead.raw.basic_status()
        for v in ls.voters:
            n = self.nodes.get(v)
            if n is None or not n.alive or n.raw is None:
                return False
            st = n.raw.basic_status()
            if st.lead != lead.id or st.commit < ls.commit:
                return False
        return True

    def liveness_report(self) -> str:
        parts = []
        for n in self.alive_nodes():
            assert n.raw is not None
            r = n.raw.basic_status()
            parts.append(f"{n.id}:{r.state.value} t{r.term} lead={r.lead} commit={r.commit}")
        parts.append(f"clients with a committed write: {sorted(self.heal_writes_done)}")
        return "; ".join(parts)
