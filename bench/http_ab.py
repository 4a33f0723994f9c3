"""Two versions of the agent's HTTP API side by side (docs/benchmarks.md, "The API's HTTP
server"): each from its own tree, alternating with the order rotated every round, medians.

    git archive 16bb4f1^ | tar -x -C /tmp/old; git archive 16bb4f1 | tar -x -C /tmp/new
    python bench/http_ab.py agents --a /tmp/old --b /tmp/new [--rounds 4] [--seconds 6]
    python bench/http_ab.py bare --a /tmp/old --b /tmp/new [--rounds 6]

``agents``: real agents (``agent_bench.Cluster``, each run with ``PYTHONPATH=<tree>/agent/src``):
bench/agent_bench.py's write phase (3 members, 1 then 16 clients, 100-byte values), then 16
clients of ``GET /v1/weights`` (the member's CPU per request), then 5 members idle (RSS per
member, the leader's CPU). ``bare``: the tree's web server alone in its own process
(aiohttp's ``web`` when ``server/web.py`` is absent), one handler answering ``GET
/v1/kv/{key}`` with a 150-byte JSON body through one pass-through middleware; the server
process's CPU per request and its RSS, with 1 and 16 keep-alive connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

REQUEST = b"GET /v1/kv/some/key HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer " + b"x" * 40


def serve_bare(tree: str, port: int) -> None:
    """The ``bare`` server of ``tree`` on 127.0.0.1:port (prints ``ready``)."""
    own = (Path(tree) / "agent/src/hafleet_agent/server/web.py").exists()
    if own:
        sys.path.insert(0, f"{tree}/agent/src")
        from hafleet_agent.server import web  # type: ignore[import-not-found]
        from hafleet_agent.server.conn import serve  # type: ignore[import-not-found]
    else:
        from aiohttp import web  # type: ignore[no-redef]

    @web.middleware
    async def passthrough(request: Any, handler: Any) -> Any:
        return await handler(request)

    async def get(request: Any) -> Any:
        key = request.match_info["key"]
        return web.json_response({"key": key, "value": "x" * 100, "modify_index": 12345})

    async def main() -> None:
        app = web.Application(middlewares=[passthrough])
        app.router.add_get("/v1/kv/{key:.+}", get)
        if own:
            await serve(app, "127.0.0.1", port)
        else:
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _keepalive_gets(port: int, conns: int, seconds: float) -> int:
    done = 0
    stop = time.monotonic() + seconds
    request = REQUEST + b"\r\n\r\n"

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            at = head.find(b"content-length:") + 15
            await reader.readexactly(int(head[at : head.find(b"\r\n", at)]))
            done += 1
        writer.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return done


def bare_round(tree: str, port: int, seconds: float) -> dict[str, float]:
    argv = [sys.executable, __file__, "serve-bare", tree, str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        ps = psutil.Process(proc.pid)
        out = {"rss_mib": ps.memory_info().rss / 2**20}
        for conns in (1, 16):
            cpu0, t0 = sum(ps.cpu_times()[:2]), time.monotonic()
            n = asyncio.run(_keepalive_gets(port, conns, seconds))
            wall, cpu = time.monotonic() - t0, sum(ps.cpu_times()[:2]) - cpu0
            out[f"req_per_s_{conns}"] = n / wall
            out[f"cpu_us_per_req_{conns}"] = cpu / max(n, 1) * 1e6
        return out
    finally:
        proc.kill()
        proc.wait()


async def _gets(c: Any, nid: str, clients: int, seconds: float) -> dict[str, float]:
    import aiohttp

    url = f"http://{c.addr(nid)}:7480/v1/weights"
    headers = {"Authorization": f"Bearer {c.token}"}
    n = 0
    stop = time.monotonic() + seconds

    async def worker(s: aiohttp.ClientSession) -> None:
        nonlocal n
        while time.monotonic() < stop:
            async with s.get(url, headers=headers) as r:
                await r.read()
                n += r.status == 200

    ps = psutil.Process(c.procs[nid].pid)
    cpu0, t0 = sum(ps.cpu_times()[:2]), time.monotonic()
    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(worker(s) for _ in range(clients)))
    wall, cpu = time.monotonic() - t0, sum(ps.cpu_times()[:2]) - cpu0
    return {"gets_per_s": n / wall, "cpu_us_per_get": cpu / max(n, 1) * 1e6}


def agents_round(tree: str, nets: list[int], work: Path, seconds: float) -> dict[str, Any]:
    import agent_bench as ab

    os.environ["PYTHONPATH"] = f"{tree}/agent/src"  # the agents' interpreter takes it
    out: dict[str, Any] = {}
    c = ab.Cluster(3, nets[0], [], work / "writes")
    c.start_all()
    try:
        lead = c.wait(lambda: c.leader(), 30, "a leader")
        ps = psutil.Process(c.procs[lead].pid)
        for k in (1, 16):
            cpu0 = sum(ps.cpu_times()[:2])
            r = asyncio.run(ab._writes(c, lead, k, seconds))
            cpu = sum(ps.cpu_times()[:2]) - cpu0
            r["leader_cpu_us_per_write"] = cpu / max(r["writes"], 1) * 1e6
            out[f"writes_{k}"] = r
        out["gets_16"] = asyncio.run(_gets(c, lead, 16, seconds / 2))
    finally:
        c.stop()
    c = ab.Cluster(5, nets[1], [], work / "idle")
    c.start_all()
    try:
        c.wait(lambda: c.leader(), 30, "a leader")
        time.sleep(3)  # settle
        procs = {i: psutil.Process(p.pid) for i, p in c.procs.items()}
        lead = c.leader()
        cpu0 = {i: sum(p.cpu_times()[:2]) for i, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(8)
        wall = time.monotonic() - t0
        cpu = {i: (sum(p.cpu_times()[:2]) - cpu0[i]) / wall * 100 for i, p in procs.items()}
        rss = [p.memory_info().rss / 2**20 for p in procs.values()]
        out["idle"] = {
            "rss_mib_median": statistics.median(rss),
            "leader_cpu_percent": cpu[lead] if lead else None,
        }
    finally:
        c.stop()
    return out


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_leaves(v, f"{prefix}{k}."))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            flat[prefix + k] = float(v)
    return flat


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["agents", "bare", "serve-bare"])
    p.add_argument("--a", help="tree A (e.g. the older commit)")
    p.add_argument("--b", help="tree B")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--out", default=str(BENCH / "results" / "http_ab.json"))
    p.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.what == "serve-bare":
        serve_bare(a.args[0], int(a.args[1]))
        return 0
    import agent_bench as ab

    trees = {"a": a.a, "b": a.b}
    results: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    nets = ab.free_nets(2)
    for rnd in range(a.rounds):
        for mode in ("a", "b") if rnd % 2 == 0 else ("b", "a"):
            if a.what == "bare":
                r = bare_round(trees[mode], 18000 + 2 * rnd + (mode == "b"), a.seconds / 2)
            else:
                work = Path(f"/tmp/http_ab/{mode}{rnd}")
                r = agents_round(trees[mode], nets, work, a.seconds)
            results[mode].append(r)
            print(rnd, mode, json.dumps(r), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"trees": trees, "results": results}, indent=1))
    flat = {m: [_leaves(r) for r in rs] for m, rs in results.items()}
    print(f"| figure | A {a.a} | B {a.b} | B/A |\n| --- | --- | --- | --- |")
    for key in flat["a"][0]:
        va = statistics.median(r[key] for r in flat["a"] if key in r)
        vb = statistics.median(r[key] for r in flat["b"] if key in r)
        print(f"| {key} | {va:,.1f} | {vb:,.1f} | {vb / va if va else float('nan'):.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
