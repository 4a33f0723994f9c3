"""Where one write's time goes: a time stamp at each step of its path through the leader and
both followers, medians over every write of a run (3 members on loopback, fsync on).

    bench/.venv/bin/python bench/write_trace.py [--clients 1] [--seconds 5] [--runs 3]

The agents are real ``hafleet-agent run`` processes (``agent_bench.Cluster``), each started
through this file (``--agent``): before the agent's command line runs, a few of its methods
are wrapped so that each call appends (CLOCK_MONOTONIC in ns, step) to a list in memory; the
agent writes the list to ``<pid>.trace`` in ``HAFLEET_WRITE_TRACE`` when it gets SIGUSR2.
The agent's code is not changed; a wrapped call costs about a microsecond.

One client's writes are serial, so the leader's receipt of each request opens a window that
holds that write's steps on all three members (CLOCK_MONOTONIC is one clock for the whole
host). Per run it prints the cycle (one request to the next), then every step that occurs in
most windows, in the order of its median time after the request, with the median over the
writes of the time since the same member's step before it (for a frame read, since the send
that brought it; not the difference of two medians, which a skewed step throws off): a
follower's steps are those of the follower that got the append first (``F1``) or second
(``F2``). ``--clients 16`` runs the load the same way, but
its windows mix writes and say little. Nothing is written to ``bench/results``: this is a tool
for finding the next cut (docs/benchmarks.md, "thirteenth session").
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TRACE_ENV = "HAFLEET_WRITE_TRACE"


# ---- in the agent ---------------------------------------------------------------------------
def _install() -> None:
    """Wrap the steps of the write path (in the agent's process, before it starts)."""
    from hafleet_agent import inbound, transport, wal
    from hafleet_agent.node import driver, walwriter
    from hafleet_agent.raft import rawnode
    from hafleet_agent.server import api, http
    from hafleet_agent.state import StateMachine

    events: list[tuple[int, str]] = []
    now = time.monotonic_ns
    out = Path(os.environ[TRACE_ENV]) / f"{os.getpid()}.trace"

    def dump(*_: object) -> None:
        part = out.with_suffix(".part")
        part.write_text("".join(f"{t} {step}\n" for t, step in events))
        part.replace(out)  # whole, or not there yet

    signal.signal(signal.SIGUSR2, dump)

    def wrap(cls: type, name: str, step: str, end: str | None = None, by_type: bool = False):
        orig = getattr(cls, name)

        def traced(*a, **k):  # noqa: ANN002, ANN003, ANN202
            events.append((now(), f"{step} {a[1].type.name}" if by_type else step))
            try:
                return orig(*a, **k)
            finally:
                if end is not None:
                    events.append((now(), end))

        setattr(cls, name, traced)

    wrap(http.HttpProtocol, "data_received", "request in")
    wrap(api.Api, "kv_put", "handler")
    wrap(driver.Driver, "propose_cmd", "proposed")
    wrap(driver.Driver, "_pump", "pump")
    wrap(wal.DiskStorage, "prepare_save", "batch encoded")
    wrap(walwriter.WalWriter, "submit", "to the writer thread")
    wrap(transport.Transport, "_flush", "sends", end="sent")
    wrap(wal.DiskStorage, "write_prepared", "log write", end="log durable")
    wrap(driver.Driver, "_written", "durable seen on the loop")
    wrap(inbound.FrameReader, "data_received", "frame in")
    wrap(rawnode.RawNode, "step", "step", by_type=True)
    wrap(StateMachine, "apply_entry", "apply")
    wrap(http.HttpProtocol, "_send", "answer", end="answer sent")


def _agent(argv: list[str]) -> int:
    _install()
    from hafleet_agent import cli

    return cli.main(argv)


# ---- in the bench ---------------------------------------------------------------------------
def _load(trace_dir: Path, pids: dict[str, int], since: int) -> list[tuple[int, str, str]]:
    events = []
    for nid, pid in pids.items():
        path = trace_dir / f"{pid}.trace"
        for line in path.read_text().splitlines():
            t, step = line.split(" ", 1)
            if int(t) >= since:
                events.append((int(t), nid, step))
    events.sort()
    return events


def analyse(events: list[tuple[int, str, str]], leader: str) -> str:
    """The cycle and the median step times of the writes in ``events`` (see the docstring)."""
    starts = [t for t, nid, step in events if nid == leader and step == "request in"]
    gaps = list(zip(starts, starts[1:], strict=False))  # each request to the next
    windows = []
    for a, b in gaps:
        lo, hi = bisect.bisect_left(events, (a,)), bisect.bisect_left(events, (b,))
        windows.append(events[lo:hi])
    if len(windows) < 10:
        return f"only {len(windows)} writes traced"
    # The follower that read the append first is F1 in that window.
    stamps: dict[str, list[float]] = defaultdict(list)
    last: Counter[bool] = Counter()  # True: the leader's own write was seen after an answer
    per_write: list[dict[str, float]] = []
    for w in windows:
        a = w[0][0]
        order = [nid for _, nid, step in w if nid != leader and step == "frame in"]
        names = {leader: "L"}
        for nid in order:
            names.setdefault(nid, f"F{len(names)}")
        first: dict[str, float] = {}
        for t, nid, step in w:
            if nid in names:
                first.setdefault(f"{names[nid]}: {step}", (t - a) / 1000)
        for key, t in first.items():
            stamps[key].append(t)
        per_write.append(first)
        own, answer = first.get("L: durable seen on the loop"), first.get("L: step APP_RESP")
        if own is not None and answer is not None:
            last[own > answer] += 1
    cycle = statistics.median((b - a) / 1000 for a, b in gaps)
    rows = sorted(
        (statistics.median(v), k, len(v)) for k, v in stamps.items() if len(v) > len(windows) / 2
    )
    lines = [f"{len(windows)} writes, cycle (request to request) median {cycle:.0f} µs"]
    if last:
        late = 100 * last[True] / (last[True] + last[False])
        lines.append(f"the leader's own write done after the first answer in {late:.0f} % of them")
    lines.append(f"{'µs after the request':>22}  {'since':>5}  step (first in the write)")
    previous: dict[str, str] = {}  # member -> its step on the row before
    for med, key, n in rows:
        share = (
            "" if n >= 0.995 * len(windows) else f"  (in {100 * n / len(windows):.0f} % of writes)"
        )
        member = key.split(":")[0]
        if key.endswith(": frame in"):  # from the send that brought it
            before = "F1: sends" if member == "L" else "L: sends"
        else:
            before = previous.get(member, "")
        previous[member] = key
        # The median over the writes of the time between the two steps (the difference of
        # their medians can be far from it when one of them is skewed).
        both = [w[key] - w[before] for w in per_write if key in w and before in w]
        gap = f"{statistics.median(both):5.0f}" if both else "     "
        lines.append(f"{med:22.0f}  {gap}  {key}{share}")
    return "\n".join(lines)


def run_once(clients: int, seconds: float, work: Path) -> str:
    import agent_bench as ab

    trace_dir = work / "trace"
    trace_dir.mkdir(parents=True)
    os.environ[TRACE_ENV] = str(trace_dir)
    ab.AGENT = [sys.executable, str(Path(__file__).resolve()), "--agent"]
    c = ab.Cluster(3, ab.free_nets(1)[0], [], work / "cluster")
    c.start_all()
    try:
        lead = c.wait(lambda: c.leader(), 60, "a leader")
        since = time.monotonic_ns()
        res = asyncio.run(ab._writes(c, lead, clients, seconds))
        pids = {nid: p.pid for nid, p in c.procs.items()}
        for pid in pids.values():
            os.kill(pid, signal.SIGUSR2)
        c.wait(lambda: all((trace_dir / f"{p}.trace").exists() for p in pids.values()), 10,
               "the traces")  # fmt: skip
        head = (
            f"{res['writes_per_s']:.0f} writes/s, p50 {res['p50_ms']:.2f} ms ({clients} client(s))"
        )
        return head + "\n" + analyse(_load(trace_dir, pids, since), lead)
    finally:
        c.stop()


def main() -> int:
    if sys.argv[1:2] == ["--agent"]:
        return _agent(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--tree", type=Path, help="the agent's source tree (…/agent/src) to trace")
    a = ap.parse_args()
    if a.tree is not None:
        os.environ["PYTHONPATH"] = str(a.tree.resolve())
    for r in range(a.runs):
        work = Path(tempfile.mkdtemp(prefix="write-trace-"))
        try:
            print(f"-- run {r + 1}: " + run_once(a.clients, a.seconds, work), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
