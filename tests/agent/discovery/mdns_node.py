"""One mDNS participant for the discovery tests, run inside a network namespace.

    ip netns exec NS python tests/agent/discovery/mdns_node.py discovery --node-id n1 ...
    ip netns exec NS python tests/agent/discovery/mdns_node.py raw --interface A [--spec JSON]

It speaks JSON lines: events on stdout, commands on stdin. Every event has ``"event"``:

- ``ready``    {"bound": [...], "name": our service name or null}
- ``peers``    {"peers": {id: PeerAnnouncement.to_dict()}, "ignored": {name: reason}}
               (discovery mode; sent at start and on every change of either)
- ``names``    {"names": [service names seen]} (raw mode; at start and on every change)
- ``result``   {"cmd": ..., "ok": bool, ...} the answer to a command
- ``error``    {"error": "..."} then exit 1
- ``closed``   {"started": bool, "leftover_tasks": [...]} after Discovery.stop() (discovery mode)
- ``stopped``  after a clean stop, then exit 0

With HFDT_ZEROCONF_DEBUG=1 in the environment zeroconf logs every packet to stderr.

Commands: {"cmd": "update", "cluster_id": ..., "fresh": ...},
{"cmd": "wait_for_peers", "n": N, "timeout": S, "fresh": ..., "cluster_id": ...},
{"cmd": "resolve", "name": FULL_NAME, "timeout": S} -> {"found": bool} (raw mode),
{"cmd": "stop"}. End of stdin or SIGTERM also stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from zeroconf import IPVersion, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

from hafleet_agent.discovery import SERVICE_TYPE, Discovery


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}, sort_keys=True) + "\n")
    sys.stdout.flush()


async def commands() -> asyncio.Queue[dict[str, Any] | None]:
    """A queue of the commands read from stdin; None at end of input or on SIGTERM."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def pump() -> None:
        while line := await reader.readline():
            queue.put_nowait(json.loads(line))
        queue.put_nowait(None)

    loop.add_signal_handler(signal.SIGTERM, queue.put_nowait, None)
    tasks.add(loop.create_task(pump()))
    return queue


tasks: set[asyncio.Task[None]] = set()


async def serve(handle: Callable[[dict[str, Any]], Any]) -> None:
    queue = await commands()
    while (command := await queue.get()) is not None and command["cmd"] != "stop":
        try:
            emit("result", cmd=command["cmd"], ok=True, **(await handle(command) or {}))
        except Exception as exc:  # report, keep serving
            emit("result", cmd=command["cmd"], ok=False, error=f"{type(exc).__name__}: {exc}")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def leftover_tasks() -> list[str]:
    """The tasks still pending besides the caller: what a clean stop must not leave."""
    current = asyncio.current_task()
    return sorted(repr(t) for t in asyncio.all_tasks() if t is not current and not t.done())


async def run_discovery(args: argparse.Namespace) -> None:
    def report(*_args: object) -> None:
        emit(
            "peers",
            peers={k: v.to_dict() for k, v in discovery.peers.items()},
            ignored=discovery.ignored,
        )

    discovery = Discovery(
        node_id=args.node_id,
        cluster=args.cluster,
        cluster_id=args.cluster_id,
        raft_addr=args.raft,
        api_addr=args.api,
        fresh=args.fresh == "1",
        interfaces=args.interface,
        on_change=report,
        on_ignore=report,
    )

    async def handle(command: dict[str, Any]) -> dict[str, Any] | None:
        if command["cmd"] == "update":
            changed = await discovery.update(
                cluster_id=command.get("cluster_id"), fresh=command.get("fresh")
            )
            return {"changed": changed}
        if command["cmd"] == "wait_for_peers":
            peers = await discovery.wait_for_peers(
                command["n"],
                command["timeout"],
                fresh=command.get("fresh"),
                cluster_id=command.get("cluster_id"),
            )
            return {"peers": sorted(peers)}
        raise ValueError(f"unknown command {command['cmd']!r}")

    await discovery.start()
    emit("ready", bound=list(discovery.bound_addresses), name=discovery.service_name)
    report()
    try:
        await serve(handle)
    finally:
        await discovery.stop()
    emit("closed", started=discovery.started, leftover_tasks=leftover_tasks())


async def run_raw(args: argparse.Namespace) -> None:
    """Register services exactly as specified (any TXT bytes, nothing validated) and report
    every service name of the type that this plain zeroconf browser sees."""
    zc = AsyncZeroconf(interfaces=args.interface, ip_version=IPVersion.V4Only)
    names: set[str] = set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        before = set(names)
        if state_change is ServiceStateChange.Removed:
            names.discard(name)
        else:
            names.add(name)
        if names != before:
            emit("names", names=sorted(names))

    browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        infos = [
            ServiceInfo(
                SERVICE_TYPE,
                f"{spec['instance']}.{SERVICE_TYPE}",
                port=spec.get("port", 7400),
                properties=bytes.fromhex(spec["txt_hex"]),
                server=f"{spec['instance']}-raw.local.",
                parsed_addresses=list(args.interface),
            )
            for spec in json.loads(args.spec)
        ]
        await zc.zeroconf.async_wait_for_start()
        # Probe all at once (each registration probes for about 1.2 s).
        pending = await asyncio.gather(*(zc.async_register_service(info) for info in infos))
        await asyncio.gather(*pending)
        emit("ready", bound=list(args.interface), name=None)
        emit("names", names=sorted(names))

        async def handle(command: dict[str, Any]) -> dict[str, Any]:
            if command["cmd"] == "resolve":
                info = await zc.async_get_service_info(
                    SERVICE_TYPE, command["name"], timeout=int(command["timeout"] * 1000)
                )
                return {"found": info is not None}
            raise ValueError(f"unknown command {command['cmd']!r}")

        await serve(handle)
    finally:
        await browser.async_cancel()
        await zc.async_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    disc = sub.add_parser("discovery")
    disc.add_argument("--node-id", required=True)
    disc.add_argument("--cluster", required=True)
    disc.add_argument("--cluster-id", default="")
    disc.add_argument("--raft", required=True)
    disc.add_argument("--api", required=True)
    disc.add_argument("--fresh", choices=["0", "1"], default="1")
    raw = sub.add_parser("raw")
    raw.add_argument("--spec", default="[]", help='[{"instance": ..., "txt_hex": ...}, ...]')
    for p in (disc, raw):
        p.add_argument("--interface", action="append", required=True)
        p.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.debug:
        logging.getLogger("hafleet_agent").setLevel(logging.DEBUG)
    if os.environ.get("HFDT_ZEROCONF_DEBUG"):
        logging.getLogger("zeroconf").setLevel(logging.DEBUG)
    runner = {"discovery": run_discovery, "raw": run_raw}[args.mode]
    try:
        asyncio.run(runner(args))
    except Exception as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}")
        return 1
    emit("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
