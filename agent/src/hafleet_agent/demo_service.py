"""A tiny HTTP service tagged with a node id: the service the lab and the tests balance.

    python -m hafleet_agent.demo_service --bind ADDR --port P --node-id ID [--slow-path /slow]

Every path answers ``{"node": ID}`` (and the header ``X-Node: ID``), except:

- ``GET <slow-path>?ms=N`` (``/slow`` by default) waits N milliseconds (at most ``--max-ms``)
  first and answers ``{"node": ID, "slept_ms": N}``: a request that stays in flight, to test
  draining;
- ``GET /health`` answers ``{"ok": true, "node": ID}``: for HAProxy's ``option httpchk``;
- ``GET /stats`` answers ``{"node", "served", "in_flight"}``.

SIGTERM or SIGINT stops it gracefully: it stops accepting, lets the requests in flight finish
(up to ``--grace`` seconds), then exits 0. It logs one line when ready and one when stopped,
never one per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

DEFAULT_MAX_MS = 60_000


class DemoService:
    def __init__(self, node_id: str, slow_path: str = "/slow", max_ms: int = DEFAULT_MAX_MS):
        self.node_id = node_id
        self.slow_path = slow_path
        self.max_ms = max_ms
        self.served = 0
        self.in_flight = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/health", self.health)
        app.router.add_get("/stats", self.stats)
        app.router.add_get(self.slow_path, self.slow)
        app.router.add_route("*", "/{tail:.*}", self.hello)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler) -> web.StreamResponse:
        self.in_flight += 1
        try:
            response = await handler(request)
        finally:
            self.in_flight -= 1
        self.served += 1
        response.headers["X-Node"] = self.node_id
        return response

    async def hello(self, request: web.Request) -> web.Response:
        return web.json_response({"node": self.node_id})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "node": self.node_id})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"node": self.node_id, "served": self.served, "in_flight": self.in_flight}
        )

    async def slow(self, request: web.Request) -> web.Response:
        raw = request.query.get("ms", "0")
        try:
            ms = int(raw)
        except ValueError:
            return web.json_response({"error": f"ms must be an integer, got {raw!r}"}, status=400)
        if not 0 <= ms <= self.max_ms:
            return web.json_response({"error": f"ms must be in 0..{self.max_ms}"}, status=400)
        await asyncio.sleep(ms / 1000)
        return web.json_response({"node": self.node_id, "slept_ms": ms})


async def serve(args: argparse.Namespace) -> int:
    service = DemoService(args.node_id, args.slow_path, args.max_ms)
    runner = web.AppRunner(
        service.app(), access_log=None, handle_signals=False, shutdown_timeout=args.grace
    )
    await runner.setup()
    site = web.TCPSite(runner, args.bind, args.port, reuse_address=True, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(f"demo_service: cannot listen on {args.bind}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"demo_service: node {args.node_id} listening on {args.bind}:{args.port}", flush=True)
    await stop.wait()
    await runner.cleanup()  # stops accepting, waits for the requests in flight (grace)
    print(f"demo_service: node {args.node_id} stopped after {service.served} requests", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hafleet_agent.demo_service",
        description='A tiny HTTP service answering {"node": ID}: the balanced service of the '
        "lab and the tests.",
    )
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="address to listen on")
    p.add_argument("--port", type=int, required=True, metavar="P", help="port to listen on")
    p.add_argument("--node-id", required=True, metavar="ID", help="the id every answer carries")
    p.add_argument(
        "--slow-path",
        default="/slow",
        metavar="PATH",
        help="path of the slow endpoint: PATH?ms=N answers after N ms (default: %(default)s)",
    )
    p.add_argument(
        "--max-ms",
        type=int,
        default=DEFAULT_MAX_MS,
        metavar="MS",
        help="the longest wait the slow endpoint accepts (default: %(default)s)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="S",
        help="on SIGTERM, how long requests in flight may take to finish (default: %(default)s)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.slow_path.startswith("/"):
        print("demo_service: --slow-path must start with '/'", file=sys.stderr)
        return 2
    if not 1 <= args.port <= 65535:
        print("demo_service: --port must be in 1..65535", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(args))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
