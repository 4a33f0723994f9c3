"""A bounded HTTP load through HAProxy: a fixed request rate until a deadline or a stop file.

    python tests/agent/collection/loadgen.py --url http://127.0.0.1:8080/ --rate 100 \
        --duration 60 [--stop-file F] [--slow-every 10 --slow-ms 300] [--out result.json] \
        [--ready-file F]

Every request must answer 200 with an ``X-Node`` header (the demo service's); anything else
counts as failed. The load stops at ``--duration`` seconds at the latest (or earlier when the
stop file appears), waits for the requests in flight, and prints (and writes) a JSON summary:
sent, ok, failed, the failures' reasons, requests per node, latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter

import aiohttp


async def run(args: argparse.Namespace) -> dict:
    counts: Counter[str] = Counter()
    by_node: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    latencies: list[float] = []
    inflight: set[asyncio.Task] = set()
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=not args.keepalive)

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        url = args.url
        if args.slow_every and n % args.slow_every == 0:
            url = args.url.rstrip("/") + f"/slow?ms={args.slow_ms}"
        began = time.monotonic()
        try:
            async with session.get(url) as resp:
                await resp.read()
                node = resp.headers.get("X-Node")
                if resp.status == 200 and node:
                    counts["ok"] += 1
                    by_node[node] += 1
                    if args.ready_file and counts["ok"] == 1:
                        with open(args.ready_file, "w") as f:
                            f.write(f"{node}\n")
                else:
                    counts["failed"] += 1
                    failures[f"HTTP {resp.status}"] += 1
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            counts["failed"] += 1
            failures[type(exc).__name__] += 1
        latencies.append(time.monotonic() - began)

    start = time.monotonic()
    deadline = start + args.duration
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        n = 0
        while time.monotonic() < deadline:
            if args.stop_file and os.path.exists(args.stop_file):
                break
            n += 1
            counts["sent"] += 1
            task = asyncio.create_task(one(session, n))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            next_at = start + n / args.rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if inflight:
            await asyncio.wait(inflight, timeout=args.timeout + 5)
    elapsed = time.monotonic() - start
    latencies.sort()

    def pct(p: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1)

    return {
        "url": args.url,
        "seconds": round(elapsed, 1),
        "rate": args.rate,
        "sent": counts["sent"],
        "ok": counts["ok"],
        "failed": counts["failed"],
        "failures": dict(failures),
        "by_node": dict(sorted(by_node.items())),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, default=100.0, help="requests per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds, at most")
    p.add_argument("--stop-file", help="stop early when this file exists")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--slow-every", type=int, default=0, help="every Nth request is slow")
    p.add_argument("--slow-ms", type=int, default=300)
    p.add_argument("--keepalive", action="store_true", help="reuse connections")
    p.add_argument("--out", help="also write the summary here")
    p.add_argument("--ready-file", help="written when the first request has succeeded")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        p.error("--rate and --duration must be positive")
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if result["failed"] == 0 and result["ok"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
