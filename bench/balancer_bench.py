"""``make bench-balancer``: HAProxy kept in step by ``hafleet-agent balancer``.

Real agents (``hafleet-agent run``), a real HAProxy (Debian's 2.6) and real demo backends
(``hafleet_agent.demo_service``), all on one leased loopback /24 (127.0.X.0/24; traffic goes
to 127.0.0.0/8 only), put together by ``tests/agent/balancer/balancer_lab.py``. It measures:

1. requests/s through HAProxy with the syncer running and with it stopped (its cost);
2. the time from a weight commit (the leader's ``/v1/watch`` shows the new table) to HAProxy
   having applied it (``show servers state`` polled every 2 ms); commits come from a host
   whose (simulated) load goes up and down;
3. failed requests during scale-out (an agent joins), scale-in (``DELETE /v1/members``) and
   a leader failover (kill -9 of the leader's agent), each under 200 requests/s with a slow
   request (1 s) every 20th. The target is zero.

Prints a table and writes ``bench/results/balancer.json``. Every wait has a deadline.

    python bench/balancer_bench.py [--quick] [--trials N] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent / "tests" / d) for d in ("agent/balancer", "support")]
from balancer_lab import Lab, LoadGen, burst, kill, wait_for  # noqa: E402

FORM = 60.0
CONVERGE = 30.0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def in_step(lab: Lab, hp, members: set[str] | None = None) -> dict[str, int] | None:
    node = next(iter(lab.cluster.running())).id
    table = lab.cluster.ok(node, "GET", "/v1/weights")["weights"]
    if members is not None and set(table) != members:
        return None
    return table if table and hp.ready_weights() == table else None


def start_lab(work: Path, name: str, count: int = 3, **kw) -> tuple[Lab, object, object]:
    lab = Lab(work / name)
    lab.add_agents(count, **kw)
    lab.cluster.wait_agreed(timeout=FORM)
    hp = lab.haproxy("weighted")
    syncer = lab.syncer(hp)
    members = {f"n{i}" for i in range(1, count + 1)}
    lab.wait_for(lambda: in_step(lab, hp, members), CONVERGE, "HAProxy in step")
    return lab, hp, syncer


# --- 1. throughput ----------------------------------------------------------------------------


def bench_throughput(work: Path, trials: int, requests: int) -> dict:
    lab, hp, syncer = start_lab(work, "throughput")
    with_syncer: list[float] = []
    without: list[float] = []
    latencies: dict[str, list[float]] = {"with": [], "without": []}
    try:
        asyncio.run(burst(hp.url, 500, concurrency=50))  # warm up
        for _ in range(trials):
            for mode in ("with", "without"):
                if mode == "without":
                    kill(syncer.proc)
                else:
                    assert syncer.running()
                t0 = time.monotonic()
                results = asyncio.run(burst(hp.url, requests, concurrency=50))
                elapsed = time.monotonic() - t0
                failed = sum(not r.ok for r in results)
                assert failed == 0, f"{failed} requests failed in the throughput run"
                (with_syncer if mode == "with" else without).append(requests / elapsed)
                latencies[mode] += [r.end - r.start for r in results]
                if mode == "without":
                    syncer.start()
                    lab.wait_for(lambda: in_step(lab, hp), CONVERGE, "in step again")
    finally:
        lab.close()
    return {
        "requests_per_trial": requests,
        "concurrency": 50,
        "trials": trials,
        "rps_with_syncer_median": statistics.median(with_syncer),
        "rps_without_syncer_median": statistics.median(without),
        "rps_with_syncer": with_syncer,
        "rps_without_syncer": without,
        "latency_ms_p50_with": 1000 * pct(latencies["with"], 50),
        "latency_ms_p99_with": 1000 * pct(latencies["with"], 99),
        "latency_ms_p50_without": 1000 * pct(latencies["without"], 50),
        "latency_ms_p99_without": 1000 * pct(latencies["without"], 99),
    }


# --- 2. commit -> applied ---------------------------------------------------------------------


def bench_weight_latency(work: Path, seconds: float) -> dict:
    lab, hp, _ = start_lab(work, "weights", fake_load=True)
    samples: list[float] = []
    try:
        leader = lab.cluster.leader()
        index = 0
        version = lab.cluster.ok(leader, "GET", "/v1/weights")["version"]
        busy = False
        next_toggle = time.monotonic()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if time.monotonic() >= next_toggle:
                busy = not busy
                lab.set_load("n3", cpu_percent=100.0 if busy else 5.0, load1=8.0 if busy else 0.2)
                next_toggle = time.monotonic() + 6.0
            view = lab.cluster.ok(leader, "GET", f"/v1/watch?index={index}&wait=1s", timeout=10)
            index = view["index"]
            table = view["weights"]
            if table["version"] == version:
                continue
            t_commit = time.monotonic()
            version = table["version"]
            wait_for(
                lambda table=table: hp.ready_weights() == table["weights"],
                10,
                f"HAProxy to apply weights version {version}",
                interval=0.002,
            )
            samples.append(time.monotonic() - t_commit)
    finally:
        lab.close()
    return {
        "commits": len(samples),
        "median_ms": 1000 * statistics.median(samples) if samples else None,
        "p90_ms": 1000 * pct(samples, 90),
        "max_ms": 1000 * max(samples) if samples else None,
        "samples_ms": [round(1000 * s, 1) for s in samples],
    }


# --- 3. failed requests during membership changes ---------------------------------------------


def _load(hp, seconds: float) -> LoadGen:
    return LoadGen(hp.url, rate=200, duration=seconds, slow_every=20, slow_ms=1000).start()


def _summary(load: LoadGen, **extra: object) -> dict:
    results = load.join()
    failed = [r for r in results if not r.ok]
    return {
        "requests": len(results),
        "failed": len(failed),
        "failures": sorted({r.error or str(r.status) for r in failed})[:5],
        **extra,
    }


def bench_membership(work: Path) -> dict:
    out = {}
    lab, hp, syncer = start_lab(work, "membership")
    try:
        # scale-out: n4 joins through n1; the syncer adds its server
        load = _load(hp, 12)
        wait_for(lambda: len(load.results) > 200, 10, "load under way")
        t0 = time.monotonic()
        lab.add_agents(1, join=[lab.cluster.nodes["n1"].raft_addr])
        lab.wait_for(lambda: "n4" in hp.ready_weights(), CONVERGE, "n4 in HAProxy")
        out["scale_out"] = _summary(load, seconds_to_serve=time.monotonic() - t0)

        # scale-in: a follower is drained and removed
        load = _load(hp, 12)
        wait_for(lambda: len(load.results) > 200, 10, "load under way")
        victim = lab.cluster.followers()[0]
        other = next(n for n in lab.cluster.nodes if n != victim)
        lab.cluster.expect_exit(victim)
        t0 = time.monotonic()
        lab.cluster.ok(other, "DELETE", f"/v1/members/{victim}?drain_timeout=20s", timeout=40)
        t_removed = time.monotonic() - t0
        lab.wait_for(lambda: victim not in hp.servers(), CONVERGE, f"{victim} deleted")
        out["scale_in"] = _summary(
            load,
            member=victim,
            seconds_to_remove=t_removed,
            seconds_to_delete_server=time.monotonic() - t0,
        )
        lab.services.stop(victim)

        # leader failover: kill -9 the leader's agent (its backend keeps serving)
        load = _load(hp, 12)
        wait_for(lambda: len(load.results) > 200, 10, "load under way")
        leader = lab.cluster.leader()
        t0 = time.monotonic()
        lab.cluster.kill9(leader)
        rest = [n.id for n in lab.cluster.running()]
        new = lab.cluster.leader(rest)
        t_elect = time.monotonic() - t0
        lab.wait_for(lambda: in_step(lab, hp), CONVERGE, "in step under the new leader")
        out["leader_failover"] = _summary(
            load, old_leader=leader, new_leader=new, seconds_to_new_leader=t_elect
        )
        syncer.check()
    finally:
        lab.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3, help="throughput trials (default 3)")
    ap.add_argument("--requests", type=int, default=6000, help="requests per throughput trial")
    ap.add_argument("--weight-seconds", type=float, default=40.0, help="weight latency run")
    ap.add_argument("--quick", action="store_true", help="1 trial, 2000 requests, 20 s")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.requests, args.weight_seconds = 1, 2000, 20.0
    work = Path(tempfile.mkdtemp(prefix="hafleet-balancer-bench-"))
    started = time.monotonic()
    results: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "haproxy": shutil.which("haproxy") or "/usr/sbin/haproxy",
        }
    }
    try:
        print("throughput (syncer running vs stopped) ...", flush=True)
        results["throughput"] = bench_throughput(work, args.trials, args.requests)
        print("weight commit -> HAProxy ...", flush=True)
        results["weight_latency"] = bench_weight_latency(work, args.weight_seconds)
        print("scale-out, scale-in, leader failover under load ...", flush=True)
        results["membership"] = bench_membership(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.monotonic() - started

    t = results["throughput"]
    w = results["weight_latency"]
    m = results["membership"]
    rows = [
        ("requests/s through HAProxy, syncer running", f"{t['rps_with_syncer_median']:.0f}"),
        ("requests/s through HAProxy, syncer stopped", f"{t['rps_without_syncer_median']:.0f}"),
        (
            "latency p50 / p99, syncer running (ms)",
            f"{t['latency_ms_p50_with']:.1f} / {t['latency_ms_p99_with']:.1f}",
        ),
        (
            "latency p50 / p99, syncer stopped (ms)",
            f"{t['latency_ms_p50_without']:.1f} / {t['latency_ms_p99_without']:.1f}",
        ),
        ("weight commit -> applied, median (ms)", f"{w['median_ms']:.1f}"),
        ("weight commit -> applied, max (ms)", f"{w['max_ms']:.1f}"),
        ("weight commits measured", str(w["commits"])),
    ]
    for phase in ("scale_out", "scale_in", "leader_failover"):
        r = m[phase]
        rows.append(
            (f"failed requests, {phase.replace('_', ' ')}", f"{r['failed']} / {r['requests']}")
        )
    rows += [
        ("scale-out: agent start -> server ready (s)", f"{m['scale_out']['seconds_to_serve']:.1f}"),
        ("scale-in: DELETE answered (s)", f"{m['scale_in']['seconds_to_remove']:.1f}"),
        (
            "failover: kill -9 -> new leader (s)",
            f"{m['leader_failover']['seconds_to_new_leader']:.1f}",
        ),
    ]
    print()
    for label, value in [("measure", "value"), *rows]:
        print(f"{label:48} {value:>14}")
    out = ROOT / "results" / "balancer.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {out} ({results['seconds']:.0f} s)")
    failed = sum(m[p]["failed"] for p in m)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
