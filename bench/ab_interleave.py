"""Two agent source trees' write rates, interleaved in short windows (3 members each).

    bench/.venv/bin/python bench/ab_interleave.py TREE_A TREE_B [--windows 30] [--seconds 2]
        [--clients 1] [--preload SECONDS] [--json FILE]

``bench/ab_agent.py`` starts a fresh cluster per tree per round and measures rounds of
several seconds one after the other; on this shared machine the rate of one tree moves by
20-30 % from round to round, so a difference of a few percent takes dozens of rounds to
show. Here both trees' clusters run at once for the whole run, and the writes go in short
windows, A then B, then B then A (the order alternates so that neither gains from a drift):
the cluster not measured is stopped (SIGSTOP) meanwhile, so that it takes nothing from the
two cores, and resumed for its turn (a resumed cluster keeps its leader, docs/benchmarks.md,
twelfth session). Each pair of adjacent windows gives a ratio B/A; the summary is the median
of those ratios and their geometric mean with a 95 % interval (two standard errors of the
mean of the logarithms), and how many pairs B won. A window whose writes failed (an
election in the middle of it, say) is reported; its pair still counts.

Windows use ``agent_bench._writes`` (100-byte values to the leader, fresh keys, one client
connection per client) and each tree's agents run with ``PYTHONPATH=<tree>``.

One run is not enough for a difference of a few percent: two clusters of the same tree
differed for a whole run by up to 5.5 % (A against A: 1.055, 0.998, 1.029, then with one
PYTHONHASHSEED for every agent 0.993, 0.988, 0.988), and in the runs of the sixteenth session
place B came out ~1.8 % ahead on average (docs/benchmarks.md), offsets that the interval over
the windows does not show. Run a comparison several times, the trees' places swapped every
other run, and take the runs' geometric mean of the new tree against the old.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_bench as ab  # noqa: E402


def _signal(c: ab.Cluster, sig: signal.Signals) -> None:
    for p in c.procs.values():
        if p.poll() is None:
            os.kill(p.pid, sig)


def _start(tree: str, net: int, work: Path) -> tuple[ab.Cluster, str]:
    os.environ["PYTHONPATH"] = str(Path(tree).resolve())
    c = ab.Cluster(3, net, [], work)
    c.start_all()
    return c, c.wait(lambda: c.leader(), 60, "a leader")


def summary(a: list[float], b: list[float]) -> dict:
    """The ratios B/A of the window pairs: median, geometric mean and its 95 % interval."""
    logs = [math.log(y / x) for x, y in zip(a, b, strict=True) if x > 0 and y > 0]
    mean = statistics.mean(logs)
    half = 2 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("inf")
    return {
        "pairs": len(logs),
        "median_pair": statistics.median(math.exp(v) for v in logs),
        "geomean": math.exp(mean),
        "ci95": [math.exp(mean - half), math.exp(mean + half)],
        "b_higher": sum(v > 0 for v in logs),
        "median_a": statistics.median(a),
        "median_b": statistics.median(b),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="tree A (…/agent/src)")
    ap.add_argument("b", help="tree B (…/agent/src)")
    ap.add_argument("--windows", type=int, default=30, help="window pairs (default 30)")
    ap.add_argument("--seconds", type=float, default=2.0, help="one window (default 2 s)")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write every window's figures here")
    ap.add_argument(
        "--preload",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first write fresh keys at 16 clients this long to each cluster (a large state, "
        "as in make bench's later rounds; default 0)",
    )
    a = ap.parse_args()
    if a.windows < 2 or a.seconds <= 0 or a.clients < 1 or a.preload < 0:
        ap.error(
            "--windows must be at least 2, --seconds and --clients positive, --preload not negative"
        )
    work = Path(tempfile.mkdtemp(prefix="hafleet-abi-"))
    clusters: dict[str, tuple[ab.Cluster, str]] = {}
    rates: dict[str, list[float]] = {"A": [], "B": []}
    errors: dict[str, int] = {"A": 0, "B": 0}
    try:
        nets = ab.free_nets(2)
        for name, tree, net in (("A", a.a, nets[0]), ("B", a.b, nets[1])):
            clusters[name] = _start(tree, net, work / name)
        if a.preload:
            for name, (c, lead) in clusters.items():  # one at a time: the other is stopped
                other = clusters["B" if name == "A" else "A"][0]
                _signal(other, signal.SIGSTOP)
                r = asyncio.run(ab._writes(c, lead, 16, a.preload))
                _signal(other, signal.SIGCONT)
                print(f"preload {name}: {r['writes']} keys", flush=True)
        for c, lead in clusters.values():  # warm up both
            asyncio.run(ab._writes(c, lead, a.clients, 1.0))
        for w in range(a.windows):
            for name in ("A", "B") if w % 2 == 0 else ("B", "A"):
                other = "B" if name == "A" else "A"
                _signal(clusters[other][0], signal.SIGSTOP)
                _signal(clusters[name][0], signal.SIGCONT)
                time.sleep(0.2)  # the resumed cluster's timers catch up before its window
                c, lead = clusters[name]
                r = asyncio.run(ab._writes(c, lead, a.clients, a.seconds))
                rates[name].append(r["writes_per_s"])
                errors[name] += r["errors"]
                if r["errors"]:
                    print(f"window {w} {name}: {r['errors']} writes failed", flush=True)
            ra, rb = rates["A"][-1], rates["B"][-1]
            print(f"window {w}: A {ra:.0f}/s B {rb:.0f}/s, B/A {rb / ra:.3f}", flush=True)
    finally:
        for c, _ in clusters.values():
            _signal(c, signal.SIGCONT)
            c.stop()
        shutil.rmtree(work, ignore_errors=True)
    s = summary(rates["A"], rates["B"])
    print(
        f"B/A over {s['pairs']} pairs of {a.seconds:g} s at {a.clients} client(s): median pair "
        f"{s['median_pair']:.3f}, geometric mean {s['geomean']:.3f} (95 % "
        f"{s['ci95'][0]:.3f}-{s['ci95'][1]:.3f}), B higher in {s['b_higher']}; medians "
        f"A {s['median_a']:.0f}/s, B {s['median_b']:.0f}/s; failed writes A {errors['A']}, "
        f"B {errors['B']}"
    )
    if a.json:
        a.json.write_text(json.dumps({"args": vars(a) | {"json": str(a.json)}, "rates": rates,
                                      "errors": errors, "summary": s}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
