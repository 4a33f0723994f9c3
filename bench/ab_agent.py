"""Two agent source trees side by side: writes (3 members) and idle cost (5 members).

    git worktree add /tmp/before <commit>
    bench/.venv/bin/python bench/ab_agent.py /tmp/before/agent/src agent/src [--rounds 3]

Each round runs every tree in turn (the order reversed every other round, so a drift of a
shared machine's load does not favour one), each agent under ``PYTHONPATH=<tree>``: a fresh
3-member cluster takes ``--seconds`` of writes from 1 then 16 clients (agent_bench.py's
``_writes``: 100-byte values to the leader), then a fresh 5-member cluster idles as long.
Per tree it prints the medians over the rounds: writes/s and p50, the CPU (user + system,
psutil) per committed write of the leader and of a follower, the Raft messages they sent per
write (``hafleet_transport_frames_sent_total`` from /metrics), and the idle CPU of the leader
and of the median follower. ``--json`` writes every round's figures; ``--only idle`` (or
``writes``) runs one part; ``--clients 1`` (say) writes from that one client count only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_bench as ab  # noqa: E402

FRAMES = re.compile(r"^hafleet_transport_frames_sent(?:_total)? ([0-9.e+]+)$", re.M)


def frames_sent(c: ab.Cluster, nid: str) -> float:
    req = urllib.request.Request(f"http://{c.addr(nid)}:7480/metrics")
    req.add_header("Authorization", f"Bearer {c.token}")
    with urllib.request.urlopen(req, timeout=5) as r:
        m = FRAMES.search(r.read().decode())
    return float(m.group(1)) if m else float("nan")


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return {i: sum(p.cpu_times()[:2]) for i, p in procs.items()}


def one(
    src: str, mode: str, seconds: float, net: int, work: Path, clients: tuple[int, ...] = (1, 16)
) -> dict:
    os.environ["PYTHONPATH"] = str(Path(src).resolve())
    shutil.rmtree(work, ignore_errors=True)
    c = ab.Cluster(3 if mode == "writes" else 5, net, [], work)
    c.start_all()
    try:
        lead = c.wait(lambda: c.leader(), 60, "a leader")
        time.sleep(2)  # settle
        fol = next(i for i in c.ids if i != lead)
        procs = {i: psutil.Process(p.pid) for i, p in c.procs.items()}
        f0 = {n: frames_sent(c, n) for n in (lead, fol)} if mode == "writes" else {}
        cpu0, t0 = cpu_seconds(procs), time.monotonic()
        out: dict = {}
        if mode == "writes":
            for k in clients:
                out[f"w{k}"] = asyncio.run(ab._writes(c, lead, k, seconds))
        else:
            time.sleep(seconds)
        wall = time.monotonic() - t0
        cpu = {i: v - cpu0[i] for i, v in cpu_seconds(procs).items()}
        followers = [v for i, v in cpu.items() if i != lead]
        if mode == "writes":
            n = sum(out[f"w{k}"]["writes"] for k in clients)
            out["leader_cpu_ms_per_write"] = cpu[lead] * 1000 / n
            out["follower_cpu_ms_per_write"] = statistics.median(followers) * 1000 / n
            out["leader_msgs_per_write"] = (frames_sent(c, lead) - f0[lead]) / n
            out["follower_msgs_per_write"] = (frames_sent(c, fol) - f0[fol]) / n
        else:
            out["idle_leader_cpu_pct"] = cpu[lead] / wall * 100
            out["idle_follower_cpu_pct"] = statistics.median(followers) / wall * 100
        return out
    finally:
        c.stop()


def flat(d: dict) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[f"{k}.writes_per_s"] = v["writes_per_s"]
            out[f"{k}.p50_ms"] = v["p50_ms"]
        else:
            out[k] = v
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="+", help="agent source directories (…/agent/src)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--only", choices=("writes", "idle"), help="one part only (default: writes, then idle)"
    )
    ap.add_argument(
        "--clients", default="1,16", help="writes: the client counts, in turn (default 1,16)"
    )
    a = ap.parse_args()
    clients = tuple(int(k) for k in a.clients.split(","))
    modes = [a.only] if a.only else ["writes", "idle"]
    net = ab.free_nets(1)[0]
    rows: dict[str, list[dict[str, float]]] = {t: [] for t in a.trees}
    with tempfile.TemporaryDirectory(prefix="ab-agent-") as tmp:
        for r in range(a.rounds):
            order = a.trees if r % 2 == 0 else a.trees[::-1]
            for t in order:
                res: dict = {}
                for mode in modes:
                    res.update(one(t, mode, a.seconds, net, Path(tmp) / mode, clients))
                rows[t].append(flat(res))
                print(f"round {r + 1} {t}: {json.dumps(rows[t][-1])}", flush=True)
    for t, rs in rows.items():
        med = {k: round(statistics.median(x[k] for x in rs), 2) for k in rs[0]}
        print(f"median of {len(rs)} rounds, {t}: {json.dumps(med)}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
