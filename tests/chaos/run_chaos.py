"""``make chaos``: every chaos scenario many times, with totals.

    PYTHONPATH=tests/support python tests/chaos/run_chaos.py [--runs 20] [--scenarios a,b]
        [--seed 1000] [--long] [--json build/chaos-report.json]
    PYTHONPATH=tests/support python tests/chaos/run_chaos.py --markdown build/chaos-report.json

(``--markdown`` prints the table of a saved report and runs nothing.) tests/support holds the
lab network and the agent processes; pytest finds it through pytest.ini, a script through
``PYTHONPATH`` (``make chaos`` sets it).

Each run is one ``chaos_scenarios.run_scenario`` with its own seed (the seed picks the target
node and the variant: even seeds fill the leader's disk, odd a follower's, and so on), in a
fresh lab that is torn down afterwards. The labs use prefix ``hfchc`` and 10.81.1.0/24 (set
HFCH_PREFIX / HFCH_SUBNET to change), so a ``make test`` (``hfch``, 10.81.0.0/24) can run
at the same time. Prints one line per run and a table per scenario: time, operations,
acknowledged writes, indeterminate operations, linearizability violations, lost
acknowledged writes, failover and recovery times (median / max) and recoveries slower than
the bound. Exits 1 if any run had a problem.

The agents run with mutual TLS and the HTTPS API unless CHAOS_TLS=0 (chaoslab.py); the
scenarios of ``chaos_scenarios.PLAIN_ONLY`` run without TLS either way (skipped when
CHAOS_TLS=0: they are then the same as their namesakes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HFCH_PREFIX", "hfchc")
os.environ.setdefault("HFCH_SUBNET", "10.81.1")

import chaoslab  # noqa: E402  (after the defaults above: it reads them when imported)
from chaos_scenarios import RECOVERY_BOUND_S, SCENARIOS, RunResult, run_scenario  # noqa: E402


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f}/{max(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--long", action="store_true", help="three times the load in each phase")
    p.add_argument("--json", type=Path, default=None, help="write every run's result here")
    p.add_argument(
        "--markdown",
        type=Path,
        metavar="JSON",
        help="print a saved --json report as the Markdown table of docs/reliability.md; no run",
    )
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    names = [n for n in args.scenarios.split(",") if n]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        p.error(f"unknown scenarios {unknown}; known: {sorted(SCENARIOS)}")
    if os.geteuid() != 0 or not chaoslab.nft_available():
        print("make chaos needs root and nftables (make system-deps)", file=sys.stderr)
        return 2
    chaoslab.cleanup(chaoslab.PREFIX)  # leftovers of a killed run (exact names only)
    base = Path(tempfile.mkdtemp(prefix="hafleet-chaos-"))
    results: dict[str, list[RunResult]] = {n: [] for n in names}
    started = time.monotonic()
    print(
        f"chaos: {len(names)} scenarios x {args.runs} runs, lab {chaoslab.PREFIX} "
        f"{chaoslab.SUBNET}.0/24, recovery bound {RECOVERY_BOUND_S:.1f}s, TLS "
        + ("on (CHAOS_TLS=0: off)" if chaoslab.TLS else "off (CHAOS_TLS=0)"),
        flush=True,
    )
    try:
        for name in names:
            for i in range(args.runs):
                seed = args.seed + i
                run_dir = base / f"{name}-{seed}"
                r = run_scenario(name, seed, run_dir, long=args.long)
                results[name].append(r)
                state = "skip" if r.skipped else "ok" if r.ok else "FAIL"
                print(
                    f"{name:19} seed {seed:5} {state:4} {r.seconds:6.1f}s ops {r.ops:4} "
                    f"acked {r.acked_writes:4} indet {r.indeterminate:3} viol {r.violations} "
                    f"lost {r.lost_acked} failover {r.failover_s} recovery {r.recovery_s}"
                    + (f" fwd503 {r.forwarded_503}" if r.forwarded_503 else ""),
                    flush=True,
                )
                for problem in r.problems:
                    print("    PROBLEM: " + problem.replace("\n", "\n    "), flush=True)
                if not r.ok:
                    for note in r.notes:
                        print("    note: " + note.replace("\n", "\n    "), flush=True)
                if r.ok:
                    shutil.rmtree(run_dir, ignore_errors=True)
                if r.skipped:
                    break  # the reason does not change from run to run
    finally:
        total = time.monotonic() - started
        bad = report(results, total)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps({n: [r.to_dict() for r in rs] for n, rs in results.items()}, indent=1)
            )
        print(f"logs of failed runs (if any) are under {base}")
    return 1 if bad else 0


def _med_max(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} / {max(values):.2f}"


def _markdown_row(label: str, done: list[dict]) -> str:
    """One row of :func:`markdown`: the sums and medians over ``done`` (saved runs)."""
    keys = ("ops", "acked_writes", "indeterminate", "violations", "lost_acked")
    fo = [x for r in done for x in r["failover_s"]]
    rec = [x for r in done for x in r["recovery_s"]]
    return (
        f"| {label} | {len(done)} | {sum(not r['ok'] for r in done)} | "
        f"{sum(r['seconds'] for r in done):.0f} | "
        + " | ".join(str(sum(r[k] for r in done)) for k in keys)
        + f" | {_med_max(fo)} | {_med_max(rec)} | "
        f"{sum(r['slow_recoveries'] for r in done)} | {sum(r['forwarded_503'] for r in done)} |"
    )


def markdown(saved: dict[str, list[dict]]) -> str:
    """The per-scenario table of a saved report (``--json``), as docs/reliability.md has it."""
    cols = (
        "scenario | runs | failed | time (s) | ops | acked writes | indeterminate | violations "
        "| lost acked | failover med / max (s) | recovery med / max (s) | over bound | fwd 503"
    )
    lines = [f"| {cols} |", "| --- |" + " ---: |" * (cols.count("|"))]
    everything: list[dict] = []
    for name, runs in saved.items():
        done = [r for r in runs if not r["skipped"]]
        if not done:
            reason = runs[0]["skipped"] if runs else "not run"
            lines.append(f"| `{name}` | 0 |" + " |" * 10 + f" skipped: {reason} |")
            continue
        lines.append(_markdown_row(f"`{name}`", done))
        everything += done
    lines.append(_markdown_row("**total**", everything))
    return "\n".join(lines)


def report(results: dict[str, list[RunResult]], total: float) -> int:
    head = (
        f"{'scenario':19} {'runs':>4} {'fail':>4} {'time s':>7} {'ops':>6} {'acked':>6} "
        f"{'indet':>5} {'viol':>4} {'lost':>4} {'failover med/max':>16} "
        f"{'recovery med/max':>16} {'slow':>4}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    sums = dict(runs=0, fail=0, ops=0, acked=0, indet=0, viol=0, lost=0, slow=0)
    all_fail: list[float] = []
    all_rec: list[float] = []
    for name, rs in results.items():
        done = [r for r in rs if not r.skipped]
        if not done:
            reason = rs[0].skipped if rs else "not run"
            print(f"{name:19} skipped: {reason}")
            continue
        fo = [x for r in done for x in r.failover_s]
        rec = [x for r in done for x in r.recovery_s]
        row = dict(
            runs=len(done),
            fail=sum(not r.ok for r in done),
            ops=sum(r.ops for r in done),
            acked=sum(r.acked_writes for r in done),
            indet=sum(r.indeterminate for r in done),
            viol=sum(r.violations for r in done),
            lost=sum(r.lost_acked for r in done),
            slow=sum(r.slow_recoveries for r in done),
        )
        for k, v in row.items():
            sums[k] += v
        all_fail += fo
        all_rec += rec
        secs = sum(r.seconds for r in done)
        print(
            f"{name:19} {row['runs']:4} {row['fail']:4} {secs:7.0f} {row['ops']:6} "
            f"{row['acked']:6} {row['indet']:5} {row['viol']:4} {row['lost']:4} "
            f"{_stats(fo):>16} {_stats(rec):>16} {row['slow']:4}"
        )
        slow_exits = sum(r.slow_exits for r in done)
        if slow_exits:
            sums["slow_exits"] = sums.get("slow_exits", 0) + slow_exits
            print(f"{'':19} a node exited late after a storage failure in {slow_exits} runs")
        f503 = sum(r.forwarded_503 for r in done)
        if f503:
            sums["f503"] = sums.get("f503", 0) + f503
            print(f"{'':19} {f503} forwarded writes answered 503 'leader unreachable'")
        timeouts = sum(r.check_timed_out for r in done)
        if timeouts:
            print(f"{'':19} linearizability check out of budget in {timeouts} runs (unknown)")
    print("-" * len(head))
    print(
        f"{'total':19} {sums['runs']:4} {sums['fail']:4} {total:7.0f} {sums['ops']:6} "
        f"{sums['acked']:6} {sums['indet']:5} {sums['viol']:4} {sums['lost']:4} "
        f"{_stats(all_fail):>16} {_stats(all_rec):>16} {sums['slow']:4}"
    )
    print(
        f"chaos: {sums['runs']} runs in {total / 60:.1f} min; {sums['viol']} linearizability "
        f"violations, {sums['lost']} lost acknowledged writes, {sums['fail']} failed runs, "
        f"{sums['slow']} recoveries over {RECOVERY_BOUND_S:.1f}s, "
        f"{sums.get('slow_exits', 0)} late exits after a storage failure, "
        f"{sums.get('f503', 0)} forwarded writes answered 503 'leader unreachable'"
    )
    return sums["fail"] + sums["viol"] + sums["lost"]


if __name__ == "__main__":
    sys.exit(main())
