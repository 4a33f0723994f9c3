"""``python -m hafleet_agent.sim``: run seeds of the deterministic simulator.

    python -m hafleet_agent.sim --seeds 1..1000 --nodes 5 --faults all
    python -m hafleet_agent.sim --seed 42 --nodes 5 --trace     # replay one seed, every event

Exit 0 only when every seed passes. The last line is always the summary
``seeds=N passed=N failed=F events=E sim_seconds=T``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from .config import ALL_FAULTS, SeedResult, SimConfig, parse_faults
from .simulator import Simulation


def parse_seeds(text: str) -> range:
    try:
        if ".." in text:
            lo, hi = text.split("..", 1)
            a, b = int(lo), int(hi)
        else:
            a = b = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds must look like 1..100 or 7, not {text!r}"
        ) from None
    if a < 0 or b < a:
        raise argparse.ArgumentTypeError(f"empty or negative seed range {text!r}")
    return range(a, b + 1)


def _run_one(args: tuple[int, int, int, frozenset[str]]) -> SeedResult:
    seed, nodes, steps, faults = args
    return Simulation(SimConfig(seed=seed, nodes=nodes, steps=steps, faults=faults)).run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m hafleet_agent.sim",
        description="Drive N Raft cores over a simulated network and disk from seeds; check "
        "safety after every event, linearizability and liveness at the end.",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=parse_seeds, default=None, help="A..B (inclusive)")
    g.add_argument("--seed", type=int, default=None, help="one seed (use with --trace)")
    p.add_argument("--nodes", type=int, default=5, help="group size (1..9, default 5)")
    p.add_argument("--steps", type=int, default=3000, help="events of faults per seed")
    p.add_argument(
        "--faults",
        default="all",
        help="all, none, or a comma list of: " + ", ".join(ALL_FAULTS),
    )
    p.add_argument("--trace", action="store_true", help="print every event of the run")
    p.add_argument("--stats", action="store_true", help="print what the seeds exercised")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    a = p.parse_args(argv)
    try:
        faults = parse_faults(a.faults)
    except ValueError as exc:
        p.error(str(exc))
    if not 1 <= a.nodes <= 9:
        p.error("--nodes must be between 1 and 9")
    if a.steps < 1:
        p.error("--steps must be positive")
    seeds = range(a.seed, a.seed + 1) if a.seed is not None else (a.seeds or range(1, 2))

    started = time.monotonic()
    results: list[SeedResult] = []
    if a.trace or a.jobs <= 1 or len(seeds) == 1:
        for s in seeds:
            sim = Simulation(
                SimConfig(seed=s, nodes=a.nodes, steps=a.steps, faults=faults, trace=a.trace),
                out=print if a.trace else None,
            )
            results.append(_report(sim.run(), a, faults))
    else:
        work = [(s, a.nodes, a.steps, faults) for s in seeds]
        with ProcessPoolExecutor(max_workers=a.jobs) as pool:
            for res in pool.map(_run_one, work, chunksize=8):
                results.append(_report(res, a, faults))
    failed = [r for r in results if not r.ok]
    events = sum(r.events for r in results)
    sim_s = sum(r.sim_ms for r in results) / 1000.0
    wall = time.monotonic() - started
    if a.stats:
        total: Counter[str] = Counter()
        for r in results:
            total.update(r.stats)
        for name, count in sorted(total.items()):
            print(f"  {name:40} {count}")
    print(f"wall_seconds={wall:.1f}", file=sys.stderr)
    print(
        f"seeds={len(results)} passed={len(results) - len(failed)} failed={len(failed)} "
        f"events={events} sim_seconds={sim_s:.1f}"
    )
    return 1 if failed else 0


def _report(res: SeedResult, a: argparse.Namespace, faults: frozenset[str]) -> SeedResult:
    if not res.ok:
        assert res.violation is not None
        fl = "all" if faults == frozenset(ALL_FAULTS) else (",".join(sorted(faults)) or "none")
        print(f"FAIL seed={res.seed} property={res.violation.prop}")
        print(f"  {res.violation.detail}")
        print("  last events:")
        for line in res.trace_tail[-60:]:
            print(f"    {line}")
        print(
            f"  replay: python -m hafleet_agent.sim --seed {res.seed} --nodes {a.nodes} "
            f"--steps {a.steps} --faults {fl} --trace"
        )
    return res


if __name__ == "__main__":
    sys.exit(main())
