"""Two agent source trees idle side by side, at the same time: the CPU of their leaders and
followers, in nanoseconds.

    bench/.venv/bin/python bench/ab_idle.py TREE_A TREE_B [--runs 4] [--windows 8]
        [--seconds 20] [--members 5]

Each run starts one cluster of each tree (``--members`` real ``hafleet-agent run``
processes on loopback, ``agent_bench.Cluster``, each under ``PYTHONPATH=<tree>``) and lets
both idle together, so that whatever else the machine does meanwhile falls on both alike;
then, per window of ``--seconds``, it reads each member's CPU time from the kernel's
per-process CPU clock (``common.cpu_seconds``: nanoseconds, every thread;
``bench/ab_agent.py``'s idle rounds read psutil's 10 ms ticks, a twentieth of an idle
leader's second) and prints the leaders' ratio B/A and the median followers'. Every other
run swaps the places (TREE_B first), because one run carries an offset of its own: two
clusters of the same tree came out 0.952× in one run (B lower in 7 of 8 windows;
docs/benchmarks.md, seventeenth session). The summary gives each
run's median ratio of the trees (TREE_B against TREE_A, whatever their places) and their
geometric mean.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_bench as ab  # noqa: E402
from common import cpu_seconds  # noqa: E402


def one_run(
    trees: list[str], windows: int, seconds: float, members: int, work: Path
) -> tuple[list[float], list[float]]:
    """Per window: (leader B/A, median follower B/A) for ``trees`` = [A, B]."""
    nets = ab.free_nets(2, members=members)
    clusters: list[ab.Cluster] = []
    try:
        for i, tree in enumerate(trees):
            os.environ["PYTHONPATH"] = str(Path(tree).resolve())
            d = work / f"c{i}"
            shutil.rmtree(d, ignore_errors=True)
            c = ab.Cluster(members, nets[i], [], d)
            clusters.append(c)
            c.start_all()
        for c in clusters:
            c.wait(lambda c=c: c.leader(), 60, "a leader")
        time.sleep(5)  # settled: the joins and the first reports are behind
        leaders, followers = [], []
        for w in range(windows):
            pids = [{n: p.pid for n, p in c.procs.items()} for c in clusters]
            before = [{n: cpu_seconds(p) for n, p in ps.items()} for ps in pids]
            t0 = time.monotonic()
            time.sleep(seconds)  # the window measured: both clusters idle meanwhile
            dt = time.monotonic() - t0
            after = [{n: cpu_seconds(p) for n, p in ps.items()} for ps in pids]
            lead, fol = [], []
            for i, c in enumerate(clusters):
                pct = {n: (after[i][n] - before[i][n]) / dt * 100 for n in pids[i]}
                leader = c.leader()
                lead.append(pct[leader])
                fol.append(statistics.median(v for n, v in pct.items() if n != leader))
            leaders.append(lead[1] / lead[0])
            followers.append(fol[1] / fol[0])
            print(
                f"  window {w + 1}: leader A {lead[0]:.3f} % B {lead[1]:.3f} % "
                f"(B/A {leaders[-1]:.3f}), follower A {fol[0]:.3f} % B {fol[1]:.3f} %",
                flush=True,
            )
        return leaders, followers
    finally:
        for c in clusters:
            c.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tree_a")
    p.add_argument("tree_b")
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--members", type=int, default=5)
    a = p.parse_args()
    if a.runs < 1 or a.windows < 1 or a.seconds <= 0 or not 1 <= a.members <= 7:
        p.error("need --runs >= 1, --windows >= 1, --seconds > 0, --members 1..7")
    lead_runs, fol_runs = [], []
    with tempfile.TemporaryDirectory(prefix="hafleet-ab-idle-") as tmp:
        for r in range(a.runs):
            swapped = r % 2 == 1
            trees = [a.tree_b, a.tree_a] if swapped else [a.tree_a, a.tree_b]
            print(f"run {r + 1}: A = {trees[0]}, B = {trees[1]}", flush=True)
            leaders, followers = one_run(trees, a.windows, a.seconds, a.members, Path(tmp))
            lead, fol = statistics.median(leaders), statistics.median(followers)
            if swapped:  # the ratio of TREE_B to TREE_A, whatever their places
                lead, fol = 1 / lead, 1 / fol
            lead_runs.append(lead)
            fol_runs.append(fol)
            print(f"run {r + 1}: TREE_B/TREE_A leader {lead:.3f}, follower {fol:.3f}")
    gmean = lambda xs: math.exp(statistics.fmean(math.log(x) for x in xs))  # noqa: E731
    print(
        f"TREE_B/TREE_A over {a.runs} runs: leader {gmean(lead_runs):.3f} "
        f"({', '.join(f'{x:.3f}' for x in lead_runs)}), follower {gmean(fol_runs):.3f} "
        f"({', '.join(f'{x:.3f}' for x in fol_runs)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
