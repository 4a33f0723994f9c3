"""The chaos scenarios: each builds a lab, forms a cluster, runs a workload through a fault,
and checks what it recorded. Shared by ``test_chaos.py`` (one short run of each, in
``make test``) and ``run_chaos.py`` (many runs of each, ``make chaos``).

Every scenario returns a :class:`RunResult`; a violation of a guarantee is counted there
(linearizability, lost acknowledged writes, an unexpected API answer, a forged member, a
write acknowledged by a resumed old leader that did not survive, replicas that disagree)
and ``ok`` is False. Every wait is a bounded poll; every fault is undone by the lab's
``close()`` whatever happens.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos_proxy import RaftProxy, replay_session
from chaos_workload import Reply, Workload, request
from chaoslab import (
    API_PORT,
    BACKOFF_MAX_S,
    ELECTION_TIMEOUT_MS,
    RAFT_PORT,
    ChaosCluster,
    ChaosLab,
    netem_available,
)
from chaoslab import TLS as DEFAULT_TLS
from harness import wait_for

from hafleet_agent import ca
from hafleet_agent.sim.linearizability import Op
from hafleet_agent.wal import PREALLOC_BYTES

HERE = Path(__file__).resolve().parent
#: After a heal the whole cluster must serve again within the election timeout range
#: [T, 2T) plus the time the transport needs to find a link again ("discovery" of the
#: healed path), plus one second of slack for a busy 2-core machine. A dial that was under
#: way when the link was cut waits for the kernel's SYN retransmissions (1 s, 3 s) up to
#: the transport's 5 s connect timeout, then backs off up to BACKOFF_MAX_S: a healed link
#: is back within RECONNECT_S.
RECONNECT_S = 2.0 + BACKOFF_MAX_S
RECOVERY_BOUND_S = 2 * ELECTION_TIMEOUT_MS / 1000 + RECONNECT_S + 1.0
FORM_TIMEOUT = 40.0
#: A node that hit a storage failure must have exited (code 1) within this.
EXIT_BOUND_S = 10.0
SERVE_TIMEOUT = 20.0
LOAD_OPS = 12  # acknowledged writes to wait for in each phase of a short run


@dataclass
class RunResult:
    scenario: str
    seed: int
    ok: bool = True
    seconds: float = 0.0
    ops: int = 0
    acked_writes: int = 0
    indeterminate: int = 0
    failed: int = 0
    violations: int = 0  # linearizability violations (0 or 1 per run: the first key)
    check_timed_out: bool = False
    lost_acked: int = 0
    failover_s: list[float] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    slow_recoveries: int = 0
    slow_exits: int = 0  # a failed node that had not exited within EXIT_BOUND_S
    forwarded_503: int = 0  # 503 "leader unreachable" answers to forwarded writes
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""

    def problem(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Run:
    """One scenario run: the lab, the cluster, the workload and the result."""

    def __init__(
        self, name: str, seed: int, base_dir: Path, nodes: int, long: bool, tls: bool = DEFAULT_TLS
    ) -> None:
        self.name = name
        self.tls = tls
        self.seed = seed
        self.long = long
        self.result = RunResult(name, seed)
        self.base_dir = base_dir
        self.lab = ChaosLab(nodes)
        self.cluster: ChaosCluster | None = None
        self.workload: Workload | None = None
        self.probe_seq = 0
        self.load_ops = LOAD_OPS * (3 if long else 1)

    # ---- set-up --------------------------------------------------------------------------
    @property
    def c(self) -> ChaosCluster:
        assert self.cluster is not None
        return self.cluster

    def form(self, n: int, election_timeout_ms: int | None = None, **kwargs: Any) -> str:
        """Start ``n`` agents on lab nodes 1..n, wait until they agree; returns the leader."""
        self.cluster = self.lab.cluster(
            self.base_dir / "cluster", f"hfch-{self.seed}", tls=self.tls
        )
        if election_timeout_ms is not None:
            self.c.election_timeout_ms = election_timeout_ms
        self.c.add_many(n, **kwargs)
        self.c.wait_agreed(timeout=FORM_TIMEOUT)
        return self.c.leader()

    @property
    def ctx(self) -> ssl.SSLContext | None:
        """The clients' TLS context (the cluster CA) under TLS, else None (plain HTTP)."""
        return self.c.ssl_context

    def health(self, host: str) -> Reply:
        return request(host, API_PORT, "GET", "/v1/health", None, timeout=0.5, context=self.ctx)

    def addr(self, node: str) -> tuple[str, int]:
        return (self.c.node(node).host, API_PORT)

    def start_load(self, nodes: list[str] | None = None, **kw: Any) -> Workload:
        ids = nodes or list(self.c.nodes)
        self.workload = Workload(
            [self.addr(n) for n in ids],
            self.c.token,
            seed=self.seed,
            tag=f"s{self.seed}",
            context=self.ctx,
            **kw,
        ).start()
        return self.workload

    def idx(self, node: str) -> int:
        return self.c.node(node).index

    # ---- waits and probes ------------------------------------------------------------------
    def wait_acks(self, count: int | None = None, timeout: float = 30.0) -> None:
        """Let the workload get ``count`` more acknowledged writes (bounded)."""
        w = self.workload
        assert w is not None
        target = w.stats.acked_writes + (count or self.load_ops)
        wait_for(lambda: w.stats.acked_writes >= target, timeout, f"{target} acked writes")

    def probe(self, node: str, timeout: float = 1.0) -> Reply:
        """One put of a unique value to the probe key through ``node``, recorded."""
        assert self.workload is not None
        self.probe_seq += 1
        key = f"{self.workload.tag}/probe"
        value = f"probe-{self.probe_seq}"
        t0 = time.monotonic()
        rep = request(
            *self.addr(node),
            "PUT",
            f"/v1/kv/{key}",
            self.c.token,
            {"value": value},
            timeout=timeout,
            context=self.ctx,
        )
        t1 = time.monotonic()
        if rep.status == 200:
            op = Op(client=-2, kind="put", key=key, value=value, call=t0, ret=t1)
        elif rep.status == 503 or (rep.status is None and not rep.sent):
            op = Op(client=-2, kind="put", key=key, value=value, call=t0, ret=t1, ok=False)
        else:
            op = Op(client=-2, kind="put", key=key, value=value, call=t0, ret=None)
        self.workload.record_external(op)
        return rep

    def wait_serving(self, nodes: list[str], since: float, what: str) -> float:
        """Poll probe writes through ``nodes`` (in turn) until one is acknowledged; returns
        the seconds since ``since``."""
        turn = [0]

        def served() -> bool:
            node = nodes[turn[0] % len(nodes)]
            turn[0] += 1
            return self.probe(node).status == 200

        wait_for(served, SERVE_TIMEOUT, what, interval=0.02)
        return time.monotonic() - since

    def failover(self, nodes: list[str], since: float, exclude: str | None = None) -> float:
        """A leader among ``nodes`` (not ``exclude``) acknowledges a write: the seconds since
        ``since`` (the fault), recorded as a failover time."""
        lead = self.leader_among(nodes, exclude=exclude)
        took = self.wait_serving([lead], since, f"{lead} to serve")
        self.result.failover_s.append(round(took, 3))
        return took

    def wait_whole(self, since: float, nodes: list[str] | None = None) -> float:
        """All running nodes agree on one leader and members, and a write goes through each
        of them; returns seconds since ``since`` (the recovery time), checks the bound."""
        ids = nodes or [n.id for n in self.c.running()]
        self.c.wait_agreed(ids, timeout=SERVE_TIMEOUT)
        agreed = time.monotonic() - since
        for nid in ids:
            self.wait_serving([nid], since, f"a write through {nid}")
        took = time.monotonic() - since
        self.result.notes.append(f"recovery: agreed after {agreed:.2f}s, served after {took:.2f}s")
        self.result.recovery_s.append(round(took, 3))
        if took > RECOVERY_BOUND_S:
            self.result.slow_recoveries += 1
        return took

    def expect_failstop(self, node: str, since: float, reason: str) -> None:
        """``node`` hit a storage failure: it must stop serving at once, say why in its log,
        and exit with code 1 within EXIT_BOUND_S (with a linearizable read in flight too:
        that once took aiohttp's 60 s shutdown timeout, fixed in eff697a)."""
        n = self.c.node(node)
        assert n.proc is not None

        def stopped_serving() -> bool:
            return n.proc.poll() is not None or (
                "stopping:" in n.log() and self.health(n.host).status is None
            )

        self.c.expect_exit(node)
        wait_for(stopped_serving, SERVE_TIMEOUT, f"{node} to stop serving")
        self.result.notes.append(f"{node} stopped serving after {time.monotonic() - since:.2f}s")
        try:
            code = n.proc.wait(timeout=max(0.1, since + EXIT_BOUND_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.result.slow_exits += 1
            self.result.problem(
                f"{node} stopped serving but had not exited {EXIT_BOUND_S:g}s after the "
                "storage failure: killed"
            )
            n.expect_running = True
            # The agent writes every thread's stack to its log on SIGUSR1 (faulthandler):
            # what it was stuck on goes into the run's logs before the kill.
            with contextlib.suppress(ProcessLookupError):
                os.kill(n.proc.pid, signal.SIGUSR1)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(timeout=1.0)
            if n.proc.poll() is None:
                self.c.kill9(node)
            else:
                n.exit_codes.append(n.proc.returncode)
        else:
            n.exit_codes.append(code)
            if code != 1:
                self.result.problem(f"{node} exited with {code} after a storage failure, not 1")
        log = n.log()
        if reason not in log or "stopping: storage failed" not in log:
            self.result.problem(f"{node} did not say why it stopped: {log[-600:]}")

    def restart(self, node: str) -> float:
        """Start ``node`` again on its data dir; returns the time its API first answered
        (recovery is measured from there: the agent's own start-up is not part of it)."""
        self.c.restart(node)
        n = self.c.node(node)
        wait_for(
            # 200 or 503: the API answers (/v1/health is 200 only once the node has a leader
            # and has caught up, which is part of the recovery measured from here)
            lambda: self.health(n.host).status in (200, 503),
            FORM_TIMEOUT,
            f"{node} to start",
            check=self.c.check_alive,
        )
        return time.monotonic()

    def leader_among(self, nodes: list[str], exclude: str | None = None) -> str:
        def found() -> str | None:
            for nid in nodes:
                st = self.c.status(nid)
                if st and st["state"] == "leader" and nid != exclude:
                    return nid
            return None

        return wait_for(found, SERVE_TIMEOUT, f"a leader among {nodes}")

    # ---- the end ---------------------------------------------------------------------------
    def finish(self, nodes: list[str] | None = None) -> None:
        """Stop the load, let the nodes converge, read everything back, check the history
        and that the replicas hold the same data."""
        w = self.workload
        assert w is not None
        w.stop()
        ids = nodes or [n.id for n in self.c.running()]
        self.c.wait_agreed(ids, timeout=SERVE_TIMEOUT)
        lead = self.c.leader(ids)
        lost, lost_keys = w.final_reads(self.addr(lead))
        r = self.result
        r.lost_acked += lost
        if lost:
            r.problem(f"{lost} acknowledged ledger writes lost: {lost_keys[:5]}")
        check = w.check()
        r.ops = len(w.ops)
        r.acked_writes = w.stats.acked_writes
        r.indeterminate = sum(1 for op in w.ops if op.ret is None)
        r.failed = sum(1 for op in w.ops if not op.ok)
        r.forwarded_503 = w.stats.forwarded_503
        if check.timed_out:
            r.check_timed_out = True
            r.notes.append(f"linearizability check ran out of budget on {check.key!r}")
        elif not check.ok:
            r.violations += 1
            why = [
                f"value {op.output!r} read by client {op.client} was written by an operation "
                f"answered as not applied: {w.explain_value(op.output)}"
                for op in check.unexplained or []
                if op.kind == "get" and w.explain_value(op.output) is not None
            ]
            r.problem("NOT linearizable:\n" + check.explain() + "".join("\n" + x for x in why))
        if w.stats.unexpected:
            r.problem(f"unexpected API answers: {w.stats.unexpected[:5]}")
        self.compare_replicas(ids, lead)

    def compare_replicas(self, ids: list[str], lead: str) -> None:
        """Every node's local (stale) view of the register keys and of some ledger keys, as
        (value, modify_index), equals the leader's once its applied index reached the
        leader's. An indeterminate write of the workload may still be applied after the
        workload stopped (a forwarded request outlives the client's timeout), so a
        difference counts only if it persists (bounded retries)."""
        w = self.workload
        assert w is not None
        keys = w.keys + sorted(w.ledger)[:20]

        def view(nid: str) -> dict[str, Any]:
            out = {}
            for key in keys:
                code, body = self.c.api(nid, "GET", f"/v1/kv/{key}?stale=1")
                out[key] = (body["value"], body["modify_index"]) if code == 200 else None
            return out

        diffs: dict[str, Any] = {}
        deadline = time.monotonic() + SERVE_TIMEOUT
        while True:
            st = self.c.status(lead)
            assert st is not None
            target = st["applied_index"]
            for nid in ids:
                self.c.wait_for(
                    lambda nid=nid, target=target: (
                        (s := self.c.status(nid)) and s["applied_index"] >= target
                    ),
                    SERVE_TIMEOUT,
                    f"{nid} to apply up to {target}",
                )
            views = {nid: view(nid) for nid in ids}
            first = views[lead]
            diffs = {
                nid: {k: (first.get(k), v.get(k)) for k in keys if first.get(k) != v.get(k)}
                for nid, v in views.items()
                if v != first
            }
            if not diffs or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # poll interval of this bounded retry loop
        for nid, diff in diffs.items():
            self.result.problem(f"replica {nid} differs from the leader {lead}: {diff}")

    def close(self) -> None:
        if self.workload is not None and self.workload.running():
            with contextlib.suppress(Exception):
                self.workload.stop()
        self.lab.close()


# ---- the scenarios -------------------------------------------------------------------------


def leader_isolated(run: Run) -> None:
    """Cut the leader off from every other node (both ways), keep the clients on every node
    (the old leader included), heal. The majority elects a new leader and serves; the old
    leader must acknowledge nothing while cut off (it cannot commit)."""
    lead = run.form(3)
    others = [n for n in run.c.nodes if n != lead]
    run.start_load()
    run.wait_acks()
    t = time.monotonic()
    run.lab.isolate(run.idx(lead))
    run.failover(others, t)
    run.wait_acks()
    t = time.monotonic()
    run.lab.heal()
    run.wait_whole(t)
    run.wait_acks()
    run.finish()


def split_heal(run: Run) -> None:
    """Five nodes split 2 | 3 with the leader on the minority side, then heal."""
    lead = run.form(5)
    rest = [n for n in run.c.nodes if n != lead]
    minority = [lead, rest[run.seed % len(rest)]]
    majority = [n for n in run.c.nodes if n not in minority]
    run.start_load()
    run.wait_acks()
    t = time.monotonic()
    run.lab.partition([run.idx(n) for n in minority], [run.idx(n) for n in majority])
    run.failover(majority, t)
    run.wait_acks()
    t = time.monotonic()
    run.lab.heal()
    run.wait_whole(t)
    run.wait_acks()
    run.finish()


def oneway(run: Run) -> None:
    """A one-way cut at the leader: even seeds drop what it sends, odd seeds what it
    receives; then heal."""
    lead = run.form(3)
    others = [n for n in run.c.nodes if n != lead]
    run.start_load()
    run.wait_acks()
    t = time.monotonic()
    if run.seed % 2 == 0:
        run.lab.block([run.idx(lead)], [run.idx(n) for n in others], oneway=True)
        run.result.notes.append("leader -> others dropped")
    else:
        run.lab.block([run.idx(n) for n in others], [run.idx(lead)], oneway=True)
        run.result.notes.append("others -> leader dropped")
    run.failover(others, t)
    run.wait_acks()
    t = time.monotonic()
    run.lab.heal()
    run.wait_whole(t)
    run.finish()


def lossy_links(run: Run) -> None:
    """Frames dropped at random on every link (nftables numgen; netem is not available
    here): 10 % for even seeds, 20 % for odd ones, under load for a bounded time, then clean
    links. Safety must hold whatever the loss; progress under loss is recorded, not
    required (with T = 300 ms and TCP retransmitting lost segments after >= 200 ms,
    elections churn at 20 %), and the cluster must recover after the heal."""
    pct = 10 if run.seed % 2 == 0 else 20
    run.form(3)
    w = run.start_load()
    run.wait_acks()
    run.lab.loss(pct)
    t = time.monotonic()
    before = w.stats.acked_writes
    with contextlib.suppress(AssertionError):  # progress is measured here, not required
        wait_for(
            lambda: w.stats.acked_writes >= before + run.load_ops,
            20 if run.long else 8,
            "acked writes under loss",
            interval=0.1,
        )
    took = time.monotonic() - t
    run.result.notes.append(
        f"{pct} % loss: {w.stats.acked_writes - before} acked writes in {took:.1f}s"
    )
    t = time.monotonic()
    run.lab.heal()
    run.wait_whole(t)
    run.finish()


def latency(run: Run) -> None:
    """Links with 40 ms +- 20 ms of delay (tc netem), where the kernel has netem."""
    if not netem_available(run.lab.port(1)):
        run.result.skipped = "tc netem is not available in this kernel (no sch_netem)"
        return
    run.form(3)
    for i in range(1, 4):
        for dev, ns in ((run.lab.port(i), None), ("eth0", run.lab.netlab.ns(i))):
            argv = ["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "40ms", "20ms"]
            subprocess.run((["ip", "netns", "exec", ns] if ns else []) + argv, check=True)
    run.start_load()
    run.wait_acks()
    run.finish()


def rolling_restart(run: Run) -> None:
    """kill -9 every node in turn (the leader last) and start it again on its data dir;
    each must come back and catch up while the others serve."""
    lead = run.form(3)
    order = [n for n in run.c.nodes if n != lead] + [lead]
    run.start_load()
    run.wait_acks()
    for nid in order:
        others = [n for n in run.c.nodes if n != nid]
        t = time.monotonic()
        run.c.kill9(nid)
        run.failover(others, t)
        run.wait_acks(max(3, run.load_ops // 3))
        run.wait_whole(run.restart(nid))
    run.wait_acks()
    run.finish()


def paused_leader(run: Run) -> None:
    """SIGSTOP the leader until another is elected; meanwhile send it writes (they wait in
    its socket backlog); SIGCONT. Whatever it acknowledges after resuming must be a write
    the new leader committed: it must never acknowledge one on its own stale authority."""
    lead = run.form(3)
    others = [n for n in run.c.nodes if n != lead]
    w = run.start_load()
    run.wait_acks()
    t = time.monotonic()
    run.c.pause(lead)
    run.failover(others, t, exclude=lead)
    new = run.leader_among(others, exclude=lead)
    run.result.notes.append(f"{lead} paused, {new} elected")
    # writes sent to the paused old leader: they are read only after SIGCONT
    answers: dict[str, Reply] = {}

    def send(i: int) -> None:
        key = f"{w.tag}/paused/{i}"
        value = f"paused-{i}"
        t0 = time.monotonic()
        rep = request(
            *run.addr(lead),
            "PUT",
            f"/v1/kv/{key}",
            run.c.token,
            {"value": value},
            timeout=15.0,
            context=run.ctx,
        )
        t1 = time.monotonic()
        answers[value] = rep
        if rep.status == 200:
            op = Op(client=-3, kind="put", key=key, value=value, call=t0, ret=t1)
        elif rep.status == 503:
            op = Op(client=-3, kind="put", key=key, value=value, call=t0, ret=t1, ok=False)
        else:
            op = Op(client=-3, kind="put", key=key, value=value, call=t0, ret=None)
        w.record_external(op)

    senders = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for s in senders:
        s.start()
    run.wait_acks()  # the new leader serves meanwhile, moving the term on
    t = time.monotonic()
    run.c.resume(lead)
    for s in senders:
        s.join(timeout=30)
    run.wait_whole(t)
    run.result.notes.append(
        "old leader answered: "
        + ", ".join(f"{v}={rep.status}" for v, rep in sorted(answers.items()))
    )
    run.finish()
    # each write the old leader acknowledged must be there, read through the new leader
    for i in range(len(senders)):
        value = f"paused-{i}"
        if answers.get(value) is not None and answers[value].status == 200:
            final = request(
                *run.addr(new), "GET", f"/v1/kv/{w.tag}/paused/{i}", run.c.token, context=run.ctx
            )
            if final.status != 200 or final.body["value"] != value:
                run.result.lost_acked += 1
                run.result.problem(
                    f"old leader {lead} acknowledged {value} ({answers[value].body}) after "
                    f"resuming, but the cluster holds {final.status} {final.body!r}"
                )
    log = run.c.node(lead).log()
    run.result.notes.append(
        f"old leader log mentions new leader: {('leader is now ' + new) in log}"
    )


def disk_full(run: Run) -> None:
    """A node's data dir (a 16 MiB tmpfs) fills up: the agent must stop (exit 1) and say why
    while the others go on; with space again it restarts and catches up. Even seeds fill
    the leader, odd seeds a follower. Its raft.log is kept preallocated ahead of its end
    (wal.PREALLOC_BYTES): writes go on into that reserve until it is used up (or a compaction
    needs a new file); a few large values, written through another member, use it up."""
    size = 16 << 20
    run.form(3, per_node={i: {"data_tmpfs": size} for i in (1, 2, 3)})
    lead = run.c.leader()
    target = lead if run.seed % 2 == 0 else next(n for n in run.c.nodes if n != lead)
    others = [n for n in run.c.nodes if n != target]
    run.start_load()
    run.wait_acks()
    t = time.monotonic()
    run.c.fill_disk(target)
    w = run.workload
    assert w is not None
    big = "x" * (PREALLOC_BYTES // 3)
    for i in range(4):  # 4/3 of the reserve, recorded in the history like every write
        w.put(1000 + i, run.addr(others[i % len(others)]), f"{w.tag}/big{i}", f"{i}{big}")
    run.expect_failstop(target, t, "No space left on device")
    run.failover(others, t)
    run.wait_acks()
    (run.c.node(target).data_dir / "FILLER").unlink()
    run.wait_whole(run.restart(target))
    run.finish()


def fsync_error(run: Run) -> None:
    """Every fsync of one node starts failing with EIO: it must stop (exit 1) naming the
    storage failure while the others go on; restarted with a good disk it catches up."""
    target_i = 1 + run.seed % 3
    run.form(3, per_node={target_i: {"fsync_fail": True}})
    target = f"n{target_i}"
    others = [n for n in run.c.nodes if n != target]
    run.result.notes.append(f"{target} was {'leader' if run.c.leader() == target else 'follower'}")
    run.start_load()
    run.wait_acks()
    t = time.monotonic()
    run.c.fail_fsync(target)
    run.expect_failstop(target, t, "injected fsync failure")
    run.failover(others, t)
    run.wait_acks()
    run.c.fsync_triggers[target].unlink()
    run.wait_whole(run.restart(target))
    run.finish()


def forged_peer(run: Run) -> None:
    """A process on the bridge announces itself over mDNS with the cluster's name (and its
    cluster id, and as a fresh node) but has no key; it asks to join every node and speaks
    to them without the key. It must never appear in /v1/members.

    Under TLS it also has no certificate of the cluster CA: it dials with one of another CA
    (trusting the cluster CA, so its own side accepts the agents) and must be refused at the
    TLS handshake, which the refusing agent logs; ``forged_peer_plain`` is the same without
    TLS (the HMAC handshake alone refuses it)."""
    run.form(3, mdns=True)
    st = run.c.status("n1")
    assert st is not None
    run.start_load()
    forger_addr = run.lab.netlab.addr(4)
    tls_args: list[str] = []
    if run.c.tls_dir is not None:
        foreign = run.base_dir / "foreign-ca"
        ca.init_ca(foreign)
        ca.issue(foreign, "forged", [forger_addr])
        (foreign / "trust.crt").write_text(
            (foreign / "ca.crt").read_text() + (run.c.tls_dir / "ca.crt").read_text()
        )
        tls_args = ["--tls-dir", str(foreign)]
    proc = run.lab.netlab.run_in(
        4,
        [
            sys.executable,
            str(HERE / "chaos_forger.py"),
            "--cluster",
            run.c.name,
            "--cluster-id",
            st["cluster_id"] if run.seed % 2 == 0 else "",
            "--bind",
            forger_addr,
            "--targets",
            ",".join(n.raft_addr for n in run.c.nodes.values()),
            "--apis",
            ",".join(n.api_addr for n in run.c.nodes.values()),
            "--seconds",
            "6" if run.long else "4",
            *tls_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen_forged = []
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        for nid in run.c.nodes:
            members = run.c.member_ids(nid)
            if members - set(run.c.nodes):
                seen_forged.append((nid, sorted(members)))
        run.wait_acks(2)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    run.result.notes.append(f"forger: {report}")
    if seen_forged:
        run.result.problem(f"forged peer listed as a member: {seen_forged[:3]}")
    if not report.get("announced"):
        run.result.problem(f"the forger did not announce itself: {err[-500:]}")
    if report.get("joined_any"):
        run.result.problem(f"the forger got past a handshake: {report}")
    if any(code != 401 for code in report.get("api_status", [])):
        run.result.problem(f"the forger's API calls were not all refused: {report}")
    failures = sum(_metric(run, nid, "hafleet_transport_auth_failures") for nid in run.c.nodes)
    if failures < 1:
        run.result.problem("no node counted the forger's failed handshakes")
    run.result.notes.append(f"auth failures counted: {failures}")
    if tls_args:
        logs = "\n".join(n.log() for n in run.c.nodes.values())
        refused = f"closing connection from {forger_addr}"
        lines = [x for x in logs.splitlines() if refused in x and "TLS handshake failed" in x]
        if not lines:
            run.result.problem(f"no node logged the forger's refused TLS handshake ({refused})")
        else:
            run.result.notes.append(f"refusal: {lines[0][-160:]}")
    run.finish()


def replay_tamper(run: Run) -> None:
    """n3 is reached through a raw TCP proxy that records the Raft frames sent to it. The
    proxy replays a frame, flips a bit in one, swaps two, moves one into another connection,
    and replays a whole recorded session on a new connection. n3 must close each such
    connection and apply nothing of it; the cluster stays consistent.

    Under TLS the proxy sees TLS records, not frames, and makes the same manipulations on
    them: TLS itself must refuse each (n3 logs the TLS error) before the HMAC layer sees
    anything; ``replay_tamper_plain`` runs the attacks on the HMAC frames (no TLS)."""
    bridge = run.lab.netlab.bridge_addr
    tls = run.tls
    proxy = RaftProxy(
        listen=(bridge, RAFT_PORT),
        api_listen=(bridge, API_PORT),
        target_host=run.lab.netlab.addr(3),
        tls=tls,
        peers={run.lab.netlab.addr(i): f"n{i}" for i in (1, 2)},
    )
    proxy.start()
    try:
        join = [
            f"{run.lab.netlab.addr(1)}:{RAFT_PORT}",
            f"{run.lab.netlab.addr(2)}:{RAFT_PORT}",
            f"{bridge}:{RAFT_PORT}",
        ]
        run.form(3, join=join, per_node={3: {"config": {"advertise": bridge}}})
        if run.c.leader() == "n3":
            run.c.ok("n3", "POST", "/v1/leadership/transfer", {"to": "n1"})
            run.c.wait_for(lambda: run.c.leader() != "n3", SERVE_TIMEOUT, "leadership moved")
        run.start_load()
        run.wait_acks()
        before = _metric(run, "n3", "hafleet_transport_auth_failures")
        attacks = ["replay", "tamper", "reorder", "cross"]
        results = {}
        for attack in attacks:
            results[attack] = proxy.attack(attack, SERVE_TIMEOUT, node=run.c.leader())
            run.wait_acks(3)
        results["session-replay"] = replay_session(
            proxy.recorded_session(), (run.lab.netlab.addr(3), RAFT_PORT), timeout=10, tls=tls
        )
        run.result.notes.append(f"attacks: {results}")
        for attack, outcome in results.items():
            if outcome != "closed":
                run.result.problem(f"{attack}: connection not closed by n3 ({outcome})")
        # Without TLS each attack fails the HMAC layer (five authentication failures); under
        # TLS a bad record after the handshake is a TLS error of an authenticated connection
        # (logged, not counted as such), and only the session replay fails a handshake.
        want = 1 if tls else 5
        after = run.c.wait_for(
            lambda: (
                (v := _metric(run, "n3", "hafleet_transport_auth_failures")) >= before + want and v
            ),
            10,
            f"n3 to count {want} authentication failures",
        )
        run.result.notes.append(f"n3 auth failures {before} -> {after}")
        log = run.c.node("n3").log()
        texts = (
            ("): TLS: decryption failed or bad record mac",)  # an accepted peer's bad record
            if tls
            else (
                "replayed or reordered frame",
                "frame failed authentication",
                "failed to prove the cluster key",
            )
        )
        for text in texts:
            if text not in log:
                run.result.problem(f"n3's log does not say {text!r}")
        if tls:
            lines = [x for x in log.splitlines() if "closing connection from" in x and "TLS" in x]
            run.result.notes.append("n3 refused: " + " | ".join(x[-120:] for x in lines[:4]))
        t = time.monotonic()
        run.wait_whole(t)
        run.finish()
    finally:
        proxy.stop()


def api_abuse(run: Run) -> None:
    """Clients without a token, with a wrong one, with oversized or malformed bodies, on
    the leader and on a follower: each gets its documented error and nothing is applied."""
    lead = run.form(3)
    follower = next(n for n in run.c.nodes if n != lead)
    run.start_load()
    auth = {"Authorization": f"Bearer {run.c.token}"}
    kv = "/v1/kv/abuse/a"
    one = b'{"value": 1}'
    member = b'{"id": "evil", "raft_addr": "10.81.0.99:7400", "api_addr": "10.81.0.99:7480"}'
    # (what, method, path, headers, body, expected status)
    cases: list[tuple[str, str, str, dict[str, str], bytes | None, int]] = [
        ("no token", "PUT", kv, {}, one, 401),
        ("wrong token", "PUT", kv, {"Authorization": "Bearer " + "x" * 64}, one, 401),
        ("token prefix", "PUT", kv, {"Authorization": "Bearer " + run.c.token[:-1]}, one, 401),
        ("basic auth", "PUT", kv, {"Authorization": "Basic " + run.c.token}, one, 401),
        ("empty bearer", "GET", "/v1/status", {"Authorization": "Bearer "}, None, 401),
        ("no token, add member", "POST", "/v1/members", {}, member, 401),
        ("no token, remove member", "DELETE", f"/v1/members/{follower}", {}, None, 401),
        ("oversized body", "PUT", kv, auth, b'{"value": "' + b"x" * (1 << 20) + b'"}', 413),
        ("oversized value", "PUT", kv, auth, b'{"value": "' + b"y" * (600 << 10) + b'"}', 413),
        ("malformed json", "PUT", kv, auth, b'{"value": ', 400),
        ("not utf-8", "PUT", kv, auth, b'{"value": "\xff\xfe"}', 400),
        ("not an object", "PUT", kv, auth, b"[1, 2]", 400),
        ("unknown field", "PUT", kv, auth, b'{"value": 1, "evil": 2}', 400),
        ("missing value", "PUT", kv, auth, b"{}", 400),
        ("no body", "PUT", kv, auth, None, 400),
        ("NaN", "PUT", kv, auth, b'{"value": NaN}', 400),
        ("negative cas", "PUT", kv + "?cas=-1", auth, one, 400),
        ("cas not an integer", "PUT", kv + "?cas=x", auth, one, 400),
        ("control character in key", "PUT", "/v1/kv/abuse/%01", auth, one, 400),
        ("key too long", "PUT", "/v1/kv/" + "k" * 600, auth, one, 400),
        ("bad member body", "POST", "/v1/members", auth, b'{"id": 5}', 400),
        ("bad watch wait", "GET", "/v1/watch?index=0&wait=forever", auth, None, 400),
    ]
    for node in (lead, follower):
        for name, method, path, headers, body, want in cases:
            code, answer = _raw_request(run.c.node(node).host, method, path, headers, body, run.ctx)
            if code != want:
                run.result.problem(f"{name} on {node}: {method} {path} -> {code}, want {want}")
            elif not (isinstance(answer, dict) and "error" in answer):
                run.result.problem(
                    f"{name} on {node}: error body is not JSON {{error}}: {answer!r}"
                )
        # nothing of it was applied
        code, _ = run.c.api(lead, "GET", "/v1/kv/abuse/a")
        if code != 404:
            run.result.problem(f"abuse/a exists after refused writes ({code})")
        if "evil" in run.c.member_ids(node):
            run.result.problem("a member was added without a token")
    # a slow client that sends a header and stops must not hold the node up
    with open_api(run.c.node(lead).host, run.ctx) as s:
        s.sendall(b"PUT /v1/kv/abuse/slow HTTP/1.1\r\nContent-Length: 100\r\n")
        run.wait_acks(3)
    if run.ctx is not None:  # under TLS: a client that opens and never says hello
        with socket.create_connection((run.c.node(lead).host, API_PORT), timeout=5):
            run.wait_acks(3)
    if len(run.c.member_ids(lead)) != 3:
        run.result.problem("membership changed")
    run.wait_acks()
    run.finish()


# ---- helpers -------------------------------------------------------------------------------


def open_api(host: str, context: ssl.SSLContext | None, timeout: float = 5.0) -> socket.socket:
    """A raw connection to a node's API, TLS-wrapped (the CA checked) when ``context``."""
    sock = socket.create_connection((host, API_PORT), timeout=timeout)
    if context is None:
        return sock
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def _raw_request(
    host: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    context: ssl.SSLContext | None = None,
) -> tuple[int | None, Any]:
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(host, API_PORT, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(host, API_PORT, timeout=10)
    try:
        hdrs = {"Content-Type": "application/json", **headers}
        try:
            conn.request(method, path, body=body, headers=hdrs)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (413) before the whole body was read
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(payload)
    except ValueError:
        return resp.status, payload[:200]


_METRIC_RE = re.compile(r"^(\w+)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", re.M)


def _metric(run: Run, node: str, name: str) -> float:
    code, text = run.c.api(node, "GET", "/metrics")
    assert code == 200, text
    total = 0.0
    for m in _METRIC_RE.finditer(text):
        if m.group(1) in (name, name + "_total"):
            total += float(m.group(2))
    return total


Scenario = Callable[[Run], None]

#: name -> (function, lab nodes, runs in make test)
SCENARIOS: dict[str, tuple[Scenario, int]] = {
    "leader_isolated": (leader_isolated, 3),
    "split_heal": (split_heal, 5),
    "oneway": (oneway, 3),
    "lossy_links": (lossy_links, 3),
    "latency": (latency, 3),
    "rolling_restart": (rolling_restart, 3),
    "paused_leader": (paused_leader, 3),
    "disk_full": (disk_full, 3),
    "fsync_error": (fsync_error, 3),
    "forged_peer": (forged_peer, 4),
    "replay_tamper": (replay_tamper, 3),
    "api_abuse": (api_abuse, 3),
    "forged_peer_plain": (forged_peer, 4),
    "replay_tamper_plain": (replay_tamper, 3),
}
#: Scenarios that run without TLS whatever CHAOS_TLS says: the attacks on the HMAC layer
#: (the key, the frames' tags and counters) that TLS would stop first. ``make chaos`` runs
#: them; ``make test`` leaves them out (test_chaos.py), and with CHAOS_TLS=0 they are the
#: same as their namesakes, so they are skipped.
PLAIN_ONLY = ("forged_peer_plain", "replay_tamper_plain")


def run_scenario(name: str, seed: int, base_dir: Path, *, long: bool = False) -> RunResult:
    """Run one scenario start to end; never raises for a scenario failure (it is in the
    result), always cleans up."""
    fn, nodes = SCENARIOS[name]
    t0 = time.monotonic()
    if name in PLAIN_ONLY and not DEFAULT_TLS:
        result = RunResult(name, seed)
        result.skipped = f"CHAOS_TLS=0: the same as {name.removesuffix('_plain')}"
        return result
    run = Run(name, seed, base_dir, nodes, long, tls=DEFAULT_TLS and name not in PLAIN_ONLY)
    try:
        with run.lab:
            try:
                fn(run)
            finally:
                run.close_logs = run.cluster.logs_tail(30) if run.cluster else ""  # type: ignore[attr-defined]
                run.close()
    except Exception as exc:
        run.result.problem(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
        logs = getattr(run, "close_logs", "")
        if logs:
            run.result.notes.append("agent logs:\n" + logs)
    run.result.seconds = round(time.monotonic() - t0, 2)
    return run.result
