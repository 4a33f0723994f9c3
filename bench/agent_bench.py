"""``make bench-agent``: failover, join, write throughput/latency and idle cost of real agents.

Every agent is a real ``hafleet-agent run`` process on its own loopback address
(127.0.N.x), started with the default timeouts unless ``--heartbeat-ms`` /
``--election-timeout-ms`` say otherwise. Prints a table and writes
``bench/results/agent.json``. Bounded in time: every wait has a deadline.

    python bench/agent_bench.py [--trials 20] [--sizes 3,5,7] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

AGENT = [sys.executable, "-m", "hafleet_agent"]
ROOT = Path(__file__).resolve().parent


class Cluster:
    def __init__(self, n: int, net: int, extra: list[str], workdir: Path) -> None:
        self.n = n
        self.net = net
        self.extra = extra
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.key = self.dir / "key"
        self.token_file = self.dir / "token"
        for f in (self.key, self.token_file):
            f.write_text(secrets.token_hex(32))
            f.chmod(0o600)
        self.token = self.token_file.read_text().strip()
        self.ids = [f"n{i}" for i in range(1, n + 1)]

    def addr(self, nid: str) -> str:
        return f"127.0.{self.net}.{int(nid[1:])}"

    def start(self, nid: str, join: list[str] | None = None, expect: int | None = None) -> None:
        d = self.dir / nid
        d.mkdir(exist_ok=True)
        joins = join if join is not None else [f"{self.addr(i)}:7400" for i in self.ids]
        argv = AGENT + [
            "run",
            "--node-id",
            nid,
            "--cluster",
            f"bench{self.net}",
            "--bind",
            self.addr(nid),
            "--data-dir",
            str(d / "data"),
            "--key-file",
            str(self.key),
            "--token-file",
            str(self.token_file),
            "--join",
            ",".join(joins),
            "--no-mdns",
            *self.extra,
        ]
        if expect:
            argv += ["--bootstrap-expect", str(expect)]
        log = open(d / "log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[nid] = subprocess.Popen(argv, stdout=log, stderr=log)

    def start_all(self) -> None:
        for nid in self.ids:
            self.start(nid, expect=self.n)

    def api(self, nid: str, method: str, path: str, body: object = None, timeout: float = 2.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://{self.addr(nid)}:7480{path}", data=data, method=method
        )
        req.add_header("Authorization", f"Bearer {self.token}")
        if data:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def status(self, nid: str) -> dict | None:
        try:
            return self.api(nid, "GET", "/v1/status", timeout=0.5)
        except Exception:
            return None

    def alive(self) -> list[str]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def leader(self, among: list[str] | None = None) -> str | None:
        """The leader a majority of the live nodes agree on."""
        votes: dict[str, int] = {}
        nodes = among or self.alive()
        for nid in nodes:
            st = self.status(nid)
            if st and st.get("leader_id"):
                votes[st["leader_id"]] = votes.get(st["leader_id"], 0) + 1
        for lid, v in votes.items():
            if v >= len(self.ids) // 2 + 1 and lid in self.alive():
                return lid
        return None

    def wait(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(0.01)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            p.wait(timeout=10)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def bench_failover(n: int, trials: int, net: int, extra: list[str], work: Path) -> dict:
    c = Cluster(n, net, extra, work / f"failover{n}")
    c.dir.mkdir(parents=True, exist_ok=True)
    c.start_all()
    times = []
    try:
        c.wait(lambda: c.leader(), 30, "a leader")
        for _ in range(trials):
            lead = c.wait(lambda: c.leader(), 30, "a leader")
            # all nodes agree and are caught up before each trial
            c.wait(lambda: all(c.status(i) for i in c.ids), 30, "every node up")
            others = [i for i in c.ids if i != lead]
            t0 = time.monotonic()
            c.procs[lead].send_signal(signal.SIGKILL)
            c.procs[lead].wait()

            def new_leader(others: list[str] = others, lead: str = lead) -> str | None:
                for i in others:
                    st = c.status(i)
                    if st and st.get("leader_id") not in (None, lead):
                        return st["leader_id"]
                return None

            c.wait(new_leader, 30, "a new leader")
            times.append(time.monotonic() - t0)
            c.start(lead)
            c.wait(
                lambda lead=lead: (c.status(lead) or {}).get("leader_id") not in (None, lead),
                30,
                f"{lead} back",
            )
    finally:
        c.stop()
    return {
        "nodes": n,
        "trials": len(times),
        "median_s": statistics.median(times),
        "p99_s": pct(times, 99),
        "min_s": min(times),
        "max_s": max(times),
    }


def bench_join(net: int, extra: list[str], work: Path, trials: int = 5) -> dict:
    c = Cluster(3, net, extra, work / "join")
    c.dir.mkdir(parents=True, exist_ok=True)
    c.start_all()
    times = []
    try:
        c.wait(lambda: c.leader(), 30, "a leader")
        for k in range(trials):
            nid = f"n{10 + k}"
            t0 = time.monotonic()
            c.start(nid, join=[f"{c.addr('n1')}:7400"])

            def voter(nid: str = nid) -> bool:
                try:
                    ms = c.api("n1", "GET", "/v1/members", timeout=0.5)
                except Exception:
                    return False
                return any(m["id"] == nid and m["role"] in ("voter", "leader") for m in ms)

            c.wait(voter, 30, f"{nid} a voter")
            times.append(time.monotonic() - t0)
    finally:
        c.stop()
    return {"trials": len(times), "median_s": statistics.median(times), "max_s": max(times)}


async def _writes(c: Cluster, lead: str, clients: int, duration: float) -> dict:
    import aiohttp

    url = f"http://{c.addr(lead)}:7480/v1/kv/"
    headers = {"Authorization": f"Bearer {c.token}"}
    lat: list[float] = []
    errors = 0
    stop_at = time.monotonic() + duration
    value = "x" * 100

    async def worker(w: int, s: aiohttp.ClientSession) -> None:
        nonlocal errors
        k = 0
        while time.monotonic() < stop_at:
            k += 1
            t = time.monotonic()
            async with s.put(f"{url}w{w}-{k}", json={"value": value}, headers=headers) as r:
                await r.read()
                if r.status == 200:
                    lat.append(time.monotonic() - t)
                else:
                    errors += 1

    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(worker(w, s) for w in range(clients)))
    wall = time.monotonic() - t0
    return {
        "clients": clients,
        "writes": len(lat),
        "errors": errors,
        "writes_per_s": len(lat) / wall,
        "p50_ms": pct(lat, 50) * 1000,
        "p99_ms": pct(lat, 99) * 1000,
    }


def bench_writes(net: int, extra: list[str], work: Path, duration: float) -> list[dict]:
    c = Cluster(3, net, extra, work / "writes")
    c.dir.mkdir(parents=True, exist_ok=True)
    c.start_all()
    try:
        lead = c.wait(lambda: c.leader(), 30, "a leader")
        return [asyncio.run(_writes(c, lead, k, duration)) for k in (1, 16)]
    finally:
        c.stop()


def bench_idle(net: int, extra: list[str], work: Path, seconds: float) -> dict:
    c = Cluster(7, net, extra, work / "idle")
    c.dir.mkdir(parents=True, exist_ok=True)
    c.start_all()
    try:
        c.wait(lambda: c.leader(), 30, "a leader")
        time.sleep(3)  # settle: the measurement window starts after start-up work
        procs = {i: psutil.Process(p.pid) for i, p in c.procs.items()}
        lead = c.leader()
        cpu0 = {i: sum(p.cpu_times()[:2]) for i, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - t0
        cpu = {i: (sum(p.cpu_times()[:2]) - cpu0[i]) / wall * 100 for i, p in procs.items()}
        rss = {i: p.memory_info().rss / 2**20 for i, p in procs.items()}
    finally:
        c.stop()
    return {
        "nodes": 7,
        "seconds": seconds,
        "leader": lead,
        "cpu_percent_leader": cpu[lead] if lead else None,
        "cpu_percent_follower_median": statistics.median(v for i, v in cpu.items() if i != lead),
        "cpu_percent_max": max(cpu.values()),
        "rss_mib_median": statistics.median(rss.values()),
        "rss_mib_max": max(rss.values()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--sizes", default="3,5,7")
    ap.add_argument("--write-seconds", type=float, default=10.0)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="5 trials, 3 nodes, short runs")
    ap.add_argument("--heartbeat-ms", type=int)
    ap.add_argument("--election-timeout-ms", type=int)
    ap.add_argument("--out", default=str(ROOT / "results" / "agent.json"))
    a = ap.parse_args()
    if a.quick:
        a.trials, a.sizes, a.write_seconds, a.idle_seconds = 5, "3", 3.0, 5.0
    extra: list[str] = []
    if a.heartbeat_ms:
        extra += ["--heartbeat-ms", str(a.heartbeat_ms)]
    if a.election_timeout_ms:
        extra += ["--election-timeout-ms", str(a.election_timeout_ms)]
    work = Path(tempfile.mkdtemp(prefix="hafleet-bench-"))
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    net = 200 + (os.getpid() % 50)
    try:
        results["failover"] = [
            bench_failover(int(n), a.trials, net, extra, work) for n in a.sizes.split(",")
        ]
        results["join"] = bench_join(net, extra, work)
        results["writes"] = bench_writes(net, extra, work, a.write_seconds)
        results["idle"] = bench_idle(net, extra, work, a.idle_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print("failover after kill -9 of the leader (target: median <= 0.5 s, p99 <= 1 s)")
    for f in results["failover"]:
        print(
            f"  {f['nodes']} nodes: median {f['median_s']:.3f}s  p99 {f['p99_s']:.3f}s  "
            f"min {f['min_s']:.3f}s  max {f['max_s']:.3f}s  ({f['trials']} trials)"
        )
    j = results["join"]
    print(f"new agent to voter (target <= 3 s): median {j['median_s']:.2f}s max {j['max_s']:.2f}s")
    for w in results["writes"]:
        print(
            f"writes, {w['clients']:2d} clients: {w['writes_per_s']:7.1f}/s  p50 "
            f"{w['p50_ms']:.1f} ms  p99 {w['p99_ms']:.1f} ms  errors {w['errors']}"
        )
    i = results["idle"]
    print(
        f"idle at 7 nodes (target RSS <= 40 MB, CPU <= 1%): RSS median {i['rss_mib_median']:.1f}"
        f" MiB max {i['rss_mib_max']:.1f}; CPU leader {i['cpu_percent_leader']:.2f}% follower "
        f"median {i['cpu_percent_follower_median']:.2f}%"
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
