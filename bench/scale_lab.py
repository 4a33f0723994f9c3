"""``make bench``'s scale section: ``playbooks/scale.yml`` on a lab of its own, timed, with a
bounded load through HAProxy counting failed requests.

    .venv/bin/python bench/scale_lab.py --out bench/results/scale.json [--rounds 1]

Runs with the project's .venv (ansible-playbook; the helpers of the collection's
integration tests, ``tests/agent/collection/labtest.py`` and ``loadgen.py``). The lab never
touches ``make lab``'s or the tests': bridge ``hfbn0``, namespaces ``hfbn-node1``..,
subnet 10.79.8.0/24, cluster ``hfbn``, HAProxy on a free 127.0.0.1 port, root under /tmp.
Root is needed (network namespaces). It is destroyed at the end, also on failure
(``destroy.yml``, then leftovers by PID and by exact name).

Steps: nothing → 7 nodes (no load: there is no HAProxy yet), 7 → 7 (no change), then
``--rounds`` times 7 → 3 and 3 → 7, each of those under a load of ``--rate`` requests/s
through HAProxy (loadgen.py: every answer must be 200 from a node), stopped when the
playbook ends.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "agent" / "collection"), str(REPO / "tests" / "support")]

from labtest import Load, TestLab, free_port  # noqa: E402


class BenchLab(TestLab):
    __test__ = False

    def address(self, i: int) -> str:
        return f"10.79.8.{10 + i}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=1, help="7 -> 3 -> 7 rounds under load")
    ap.add_argument("--rate", type=float, default=50.0, help="requests/s through HAProxy")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per playbook run")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("scale_lab: the lab needs root", file=sys.stderr)
        return 2

    def on_term(*_: object) -> None:
        raise SystemExit(143)  # unwinds through the finally below: the lab is destroyed

    signal.signal(signal.SIGTERM, on_term)
    cache = REPO / "build" / "bench-scale"
    cache.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="hfbn-", dir="/tmp"))
    root.rmdir()  # the playbook makes it
    lab = BenchLab(
        root=root,
        cache=cache,
        port=free_port(),
        bridge="hfbn0",
        subnet="10.79.8.0/24",
        prefix="hfbn-node",
        veth="hfbn-v",
        cluster="hfbn",
    )
    steps: list[dict] = []
    out = {"steps": steps, "rate": a.rate, "subnet": lab.subnet}

    def step(name: str, nodes: int, load: bool) -> bool:
        ld = Load(lab.url, root.parent / f"{root.name}-{len(steps)}.json", rate=a.rate,
                  max_seconds=a.timeout) if load else None  # fmt: skip
        began = time.monotonic()
        try:
            run = lab.playbook("scale.yml", extra={"nodes": nodes}, timeout=a.timeout)
        finally:
            res = ld.stop() if ld else None
        rec = {
            "step": name,
            "nodes": nodes,
            "rc": run.rc,
            "seconds": round(time.monotonic() - began, 1),
            "changed": run.changed(),
        }
        if res:
            rec["load"] = {k: res.get(k) for k in ("sent", "ok", "failed", "failures",
                                                   "latency_ms", "by_node")}  # fmt: skip
        if run.rc != 0:
            rec["tail"] = run.out[-3000:]
        steps.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "tail"}), flush=True)
        return run.rc == 0

    try:
        ok = step("nothing -> 7", 7, load=False) and step("7 -> 7", 7, load=True)
        for r in range(a.rounds):
            ok = ok and step(f"7 -> 3 (round {r + 1})", 3, load=True)
            ok = ok and step(f"3 -> 7 (round {r + 1})", 7, load=True)
    finally:
        out["cleanup_problems"] = lab.cleanup()
        Path(a.out).write_text(json.dumps(out, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
