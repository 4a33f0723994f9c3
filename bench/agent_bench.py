"""``make bench-agent``: failover, join, write throughput/latency and idle cost of real agents.

Every agent is a real ``hafleet-agent run`` process on its own loopback address
(127.0.N.x), started with the default timeouts unless ``--heartbeat-ms`` /
``--election-timeout-ms`` say otherwise. Prints a table and writes
``bench/results/agent.json``. Bounded in time: every wait has a deadline.

    python bench/agent_bench.py [--trials 20] [--sizes 3,5,7] [--quick]
    python bench/agent_bench.py --tls-cost [--quick] [--tls-rounds 3]

``--tls-cost`` measures the cost of TLS alone (:func:`tls_cost`; ``make bench`` runs it too,
section ``tls`` of bench/compare.py): a plain cluster and a TLS cluster (``hafleet-agent ca``,
``--tls-*``, the HTTPS API) side by side in one run, each measurement interleaved between
the two modes with the order rotated every round; it writes ``bench/results/tls.json`` and
prints the table of docs/benchmarks.md "The cost of TLS" with the ratios TLS/plain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
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
    def __init__(
        self, n: int, net: int, extra: list[str], workdir: Path, tls: bool = False
    ) -> None:
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
        self.tls_dir: Path | None = None
        self.ssl: ssl.SSLContext | None = None
        if tls:  # a cluster CA and, per node, a certificate naming its address
            self.tls_dir = self.dir / "tls"
            subprocess.run(
                AGENT + ["ca", "init", "--dir", str(self.tls_dir)], check=True, capture_output=True
            )
            self.ssl = ssl.create_default_context(cafile=str(self.tls_dir / "ca.crt"))

    @property
    def scheme(self) -> str:
        return "https" if self.ssl else "http"

    def tls_args(self, nid: str) -> list[str]:
        if self.tls_dir is None:
            return []
        d = self.tls_dir
        if not (d / f"{nid}.crt").exists():
            subprocess.run(
                AGENT
                + ["ca", "issue", "--dir", str(d), "--node-id", nid, "--address", self.addr(nid)],
                check=True,
                capture_output=True,
            )
        return ["--tls-ca-file", str(d / "ca.crt"), "--tls-cert-file", str(d / f"{nid}.crt"),
                "--tls-key-file", str(d / f"{nid}.key")]  # fmt: skip

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
            *self.tls_args(nid),
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
            f"{self.scheme}://{self.addr(nid)}:7480{path}", data=data, method=method
        )
        req.add_header("Authorization", f"Bearer {self.token}")
        if data:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout, context=self.ssl) as r:
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


def failover_trial(c: Cluster) -> float:
    """kill -9 of the leader: the seconds until a survivor names a new leader; the old one
    is started again and back as a follower before this returns."""
    lead = c.wait(lambda: c.leader(), 30, "a leader")
    # all nodes agree and are caught up before each trial
    c.wait(lambda: all(c.status(i) for i in c.ids), 30, "every node up")
    others = [i for i in c.ids if i != lead]
    t0 = time.monotonic()
    c.procs[lead].send_signal(signal.SIGKILL)
    c.procs[lead].wait()

    def new_leader() -> str | None:
        for i in others:
            st = c.status(i)
            if st and st.get("leader_id") not in (None, lead):
                return st["leader_id"]
        return None

    c.wait(new_leader, 30, "a new leader")
    took = time.monotonic() - t0
    c.start(lead)
    c.wait(lambda: (c.status(lead) or {}).get("leader_id") not in (None, lead), 30, f"{lead} back")
    return took


def bench_failover(n: int, trials: int, net: int, extra: list[str], work: Path) -> dict:
    c = Cluster(n, net, extra, work / f"failover{n}")
    c.dir.mkdir(parents=True, exist_ok=True)
    c.start_all()
    times = []
    try:
        c.wait(lambda: c.leader(), 30, "a leader")
        for _ in range(trials):
            times.append(failover_trial(c))
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

    url = f"{c.scheme}://{c.addr(lead)}:7480/v1/kv/"
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
            async with s.put(
                f"{url}w{w}-{k}", json={"value": value}, headers=headers, ssl=c.ssl or True
            ) as r:
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


# ---- the cost of TLS ------------------------------------------------------------------------

MODES = ("plain", "tls")


def free_nets(count: int, lo: int = 50, hi: int = 99, members: int = 7) -> list[int]:
    """``count`` values of N in lo..hi whose 127.0.N.1..members take a bind on 7400 and 7480
    now (bench/compare.py's range; the cluster tests lease 100..254)."""
    found: list[int] = []
    for net in random.sample(range(lo, hi + 1), hi - lo + 1):
        try:
            for i in range(1, members + 1):
                for port in (7400, 7480):
                    with socket.socket() as sk:
                        sk.bind((f"127.0.{net}.{i}", port))
        except OSError:
            continue
        found.append(net)
        if len(found) == count:
            return found
    raise RuntimeError(f"no {count} free 127.0.N.0/24 in {lo}..{hi}")


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _pair(c: dict[str, Cluster]) -> None:
    for x in c.values():
        x.start_all()
    for x in c.values():
        x.wait(lambda x=x: x.leader(), 60, f"a leader ({x.dir.name})")


def tls_cost(
    work: Path,
    extra: list[str],
    *,
    rounds: int = 3,
    trials: int = 10,
    write_seconds: float = 5.0,
    idle_windows: int = 3,
    idle_seconds: float = 10.0,
    log=print,  # noqa: ANN001 - a progress callable
) -> dict:
    """Plain and TLS side by side, in one run: committed 100-byte writes at 3 members (16
    and 1 clients, aiohttp keeping its connections as in :func:`_writes`), failover after
    kill -9 of the leader at 3 members, and idle leader CPU and RSS per member at 7
    members. Both clusters of a measurement run at the same time; the load and the kills
    alternate between them, the order rotated every round; the idle windows measure both
    clusters over the same seconds. Returns per-mode samples, medians and TLS/plain ratios."""
    out: dict = {"rounds": rounds, "modes": list(MODES)}
    samples: dict = {
        m: {"writes": {"16": [], "1": []}, "failover_s": [], "idle": []} for m in MODES
    }
    nets = free_nets(2)

    def order(r: int) -> tuple[str, ...]:
        return MODES if r % 2 == 0 else MODES[::-1]

    # writes at 3 members
    c = {m: Cluster(3, net, extra, work / f"tls-writes-{m}", tls=m == "tls")
         for m, net in zip(MODES, nets, strict=True)}  # fmt: skip
    try:
        _pair(c)
        for r in range(rounds):
            for m in order(r):
                lead = c[m].wait(lambda m=m: c[m].leader(), 30, "a leader")
                for k in (16, 1):
                    w = asyncio.run(_writes(c[m], lead, k, write_seconds))
                    samples[m]["writes"][str(k)].append(w)
                    log(f"tls-cost writes round {r} {m:5} {k:2} clients: {w['writes_per_s']:.0f}/s")
    finally:
        for x in c.values():
            x.stop()
    # failover at 3 members
    c = {m: Cluster(3, net, extra, work / f"tls-failover-{m}", tls=m == "tls")
         for m, net in zip(MODES, nets, strict=True)}  # fmt: skip
    try:
        _pair(c)
        for t in range(trials):
            for m in order(t):
                samples[m]["failover_s"].append(failover_trial(c[m]))
        log("tls-cost failover: " + ", ".join(
            f"{m} median {_med(samples[m]['failover_s']):.3f}s" for m in MODES))  # fmt: skip
    finally:
        for x in c.values():
            x.stop()
    # idle at 7 members, both clusters over the same windows
    nets7 = free_nets(2, members=7)
    c = {m: Cluster(7, net, extra, work / f"tls-idle-{m}", tls=m == "tls")
         for m, net in zip(MODES, nets7, strict=True)}  # fmt: skip
    try:
        _pair(c)
        time.sleep(3)  # settle: the measurement window starts after start-up work
        procs = {m: {i: psutil.Process(p.pid) for i, p in c[m].procs.items()} for m in MODES}
        for _ in range(idle_windows):
            leads = {m: c[m].leader() for m in MODES}
            cpu0 = {m: {i: sum(p.cpu_times()[:2]) for i, p in procs[m].items()} for m in MODES}
            t0 = time.monotonic()
            time.sleep(idle_seconds)
            wall = time.monotonic() - t0
            for m in MODES:
                cpu = {
                    i: (sum(p.cpu_times()[:2]) - cpu0[m][i]) / wall * 100
                    for i, p in procs[m].items()
                }
                rss = {i: p.memory_info().rss / 2**20 for i, p in procs[m].items()}
                lead = leads[m]
                samples[m]["idle"].append(
                    {
                        "leader_cpu_percent": cpu[lead] if lead else None,
                        "follower_cpu_percent_median": _med(
                            [v for i, v in cpu.items() if i != lead]
                        ),
                        "rss_mib_median": _med(list(rss.values())),
                        "rss_mib_max": max(rss.values()),
                    }
                )
        last = {m: samples[m]["idle"][-1]["leader_cpu_percent"] for m in MODES}
        log("tls-cost idle: " + ", ".join(f"{m} leader CPU {v:.2f}%" for m, v in last.items()))
    finally:
        for x in c.values():
            x.stop()
    out["samples"] = samples
    summary: dict = {}
    for m in MODES:
        sm = samples[m]
        row = {}
        for k in ("16", "1"):
            ws = sm["writes"][k]
            row[f"writes{k}_per_s"] = _med([w["writes_per_s"] for w in ws])
            row[f"writes{k}_p50_ms"] = _med([w["p50_ms"] for w in ws])
            row[f"writes{k}_p99_ms"] = _med([w["p99_ms"] for w in ws])
            row[f"writes{k}_errors"] = sum(w["errors"] for w in ws)
        fo = sm["failover_s"]
        row["failover_median_s"] = _med(fo)
        row["failover_max_s"] = max(fo) if fo else float("nan")
        idle = sm["idle"]
        row["idle_leader_cpu_percent"] = _med(
            [x["leader_cpu_percent"] for x in idle if x["leader_cpu_percent"] is not None]
        )
        row["idle_follower_cpu_percent"] = _med([x["follower_cpu_percent_median"] for x in idle])
        row["idle_rss_mib_median"] = _med([x["rss_mib_median"] for x in idle])
        row["idle_rss_mib_max"] = _med([x["rss_mib_max"] for x in idle])
        summary[m] = row
    summary["ratio"] = {
        k: (summary["tls"][k] / summary["plain"][k]) if summary["plain"][k] else float("nan")
        for k in summary["plain"]
        if not k.endswith("_errors")
    }
    out["summary"] = summary
    out["setup"] = {
        "write_seconds": write_seconds,
        "failover_trials": trials,
        "idle_windows": idle_windows,
        "idle_seconds": idle_seconds,
        "extra": extra,
    }
    return out


TLS_ROWS = (
    ("committed writes, 16 clients (writes/s)", "writes16_per_s", "{:.0f}"),
    ("  p50 / p99 latency (ms)", ("writes16_p50_ms", "writes16_p99_ms"), "{:.1f}"),
    ("committed writes, 1 client (writes/s)", "writes1_per_s", "{:.0f}"),
    ("  p50 / p99 latency (ms)", ("writes1_p50_ms", "writes1_p99_ms"), "{:.1f}"),
    ("failover after kill -9 of the leader, 3 members, median (s)", "failover_median_s", "{:.3f}"),
    ("  max (s)", "failover_max_s", "{:.3f}"),
    ("idle leader CPU, 7 members (%)", "idle_leader_cpu_percent", "{:.2f}"),
    ("idle follower CPU, median (%)", "idle_follower_cpu_percent", "{:.2f}"),
    ("RSS per member, median (MiB)", "idle_rss_mib_median", "{:.1f}"),
    ("RSS per member, max (MiB)", "idle_rss_mib_max", "{:.1f}"),
)


def tls_markdown(res: dict) -> str:
    """The table of docs/benchmarks.md "The cost of TLS" (also bench/report.py's)."""
    s = res["summary"]
    lines = ["| | plain | TLS | TLS / plain |", "| --- | ---: | ---: | ---: |"]
    for label, key, fmt in TLS_ROWS:
        keys = key if isinstance(key, tuple) else (key,)
        cells = [" / ".join(fmt.format(s[m][k]) for k in keys) for m in MODES]
        ratio = " / ".join(f"{s['ratio'][k]:.2f}" for k in keys)
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")
    errors = sum(s[m][f"writes{k}_errors"] for m in MODES for k in ("16", "1"))
    lines.append("")
    lines.append(
        f"{res['rounds']} rounds of {res['setup']['write_seconds']:g} s per mode and client "
        f"count (write errors: {errors}); {res['setup']['failover_trials']} kills per mode; "
        f"{res['setup']['idle_windows']} idle windows of {res['setup']['idle_seconds']:g} s, "
        "both modes measured over the same seconds. Medians over rounds; the ratio compares "
        "the medians."
    )
    return "\n".join(lines)


def main_tls(a: argparse.Namespace, extra: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="hafleet-bench-tls-"))
    kw = (
        dict(rounds=2, trials=5, write_seconds=3.0, idle_windows=2, idle_seconds=5.0)
        if a.quick
        else dict(rounds=3, trials=10, write_seconds=5.0, idle_windows=3, idle_seconds=10.0)
    )
    if a.tls_rounds:
        kw["rounds"] = a.tls_rounds
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.monotonic()
    try:
        res = tls_cost(work, extra, **kw)  # type: ignore[arg-type]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["started"], res["seconds"] = started, round(time.monotonic() - t0)
    res["load_before"], res["load_after"] = load_before, os.getloadavg()
    res["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    res["quick"] = a.quick
    out = Path(a.out if a.out != DEFAULT_OUT else ROOT / "results" / "tls.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(tls_markdown(res))
    print(f"started {started}, {res['seconds']} s; load average before {load_before}, after "
          f"{res['load_after']}")  # fmt: skip
    print(f"results: {out}")
    return 0


DEFAULT_OUT = str(ROOT / "results" / "agent.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--sizes", default="3,5,7")
    ap.add_argument("--write-seconds", type=float, default=10.0)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="5 trials, 3 nodes, short runs")
    ap.add_argument("--heartbeat-ms", type=int)
    ap.add_argument("--election-timeout-ms", type=int)
    ap.add_argument("--out", default=DEFAULT_OUT, help="(--tls-cost: bench/results/tls.json)")
    ap.add_argument(
        "--tls-cost", action="store_true", help="only plain vs TLS side by side (tls_cost)"
    )
    ap.add_argument("--tls-rounds", type=int, help="--tls-cost: rounds of writes (default 3)")
    a = ap.parse_args()
    if a.quick:
        a.trials, a.sizes, a.write_seconds, a.idle_seconds = 5, "3", 3.0, 5.0
    extra: list[str] = []
    if a.heartbeat_ms:
        extra += ["--heartbeat-ms", str(a.heartbeat_ms)]
    if a.election_timeout_ms:
        extra += ["--election-timeout-ms", str(a.election_timeout_ms)]
    if a.tls_cost:
        return main_tls(a, extra)
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
