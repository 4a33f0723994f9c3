"""A forged peer for the chaos tests: it knows the cluster's name (and maybe its id) but
not its key. Run inside a lab namespace on the bridge:

    python chaos_forger.py --cluster NAME --cluster-id CID --bind ADDR \
        --targets H:P,... --apis H:P,... --seconds S

For S seconds it announces itself over mDNS as node ``forged`` of that cluster (fresh when
CID is empty), asks every target to let it join through a transport with a random key,
speaks to them without any key (a hello with no handshake, a handshake with a made-up
proof), and calls the API's POST /v1/members without a token and with a made-up one. Then
it prints one JSON line: what it did and whether anything let it in.

With ``--tls-dir DIR`` (a cluster under TLS) it speaks TLS too, as an outsider can: with a
certificate for node ``forged`` of *another* CA (``DIR/forged.crt``, ``DIR/forged.key``) and
trusting the cluster's CA as well as its own (``DIR/trust.crt``: the cluster CA is public), so
its side of the handshake accepts the agents and theirs must refuse it; its API calls go over
HTTPS (the cluster CA checked) without a token or with a made-up one.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import socket
import ssl
import sys
from pathlib import Path

import msgpack

from hafleet_agent.discovery import Discovery
from hafleet_agent.tls import TLSConfig
from hafleet_agent.transport import PROTOCOL, Transport

NODE_ID = "forged"


def api_attempts(apis: list[str], bind: str, context: ssl.SSLContext | None = None) -> list[int]:
    codes = []
    body = json.dumps({"id": NODE_ID, "raft_addr": f"{bind}:7400", "api_addr": f"{bind}:7480"})
    for api in apis:
        host, port = api.rsplit(":", 1)
        for headers in ({}, {"Authorization": "Bearer " + secrets.token_hex(32)}):
            conn: http.client.HTTPConnection
            if context is not None:
                conn = http.client.HTTPSConnection(host, int(port), timeout=5, context=context)
            else:
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                conn.request("POST", "/v1/members", body=body, headers=headers)
                codes.append(conn.getresponse().status)
            except OSError:
                codes.append(-1)
            finally:
                conn.close()
    return codes


def raw_attempts(targets: list[str]) -> int:
    """Talk to each target without the key; count the connections the target closed."""
    closed = 0
    hello = msgpack.packb(
        {"k": "join", "info": {"id": NODE_ID, "raft_addr": "x:1", "api_addr": "x:2"}}
    )
    for target in targets:
        host, port = target.rsplit(":", 1)
        for opening in (
            len(hello).to_bytes(4, "big") + hello,  # a frame without any handshake
            (42).to_bytes(4, "big")
            + PROTOCOL
            + secrets.token_bytes(32)
            + (32).to_bytes(4, "big")
            + secrets.token_bytes(32),  # a made-up proof
        ):
            try:
                with socket.create_connection((host, int(port)), timeout=5) as s:
                    s.sendall(opening)
                    s.settimeout(5)
                    while s.recv(4096):
                        pass
                    closed += 1
            except (ConnectionResetError, BrokenPipeError):
                closed += 1
            except OSError:
                pass
    return closed


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    bind = args.bind
    targets = [t for t in args.targets.split(",") if t]
    cid = args.cluster_id or None
    accepted: list[str] = []
    frames: list[str] = []
    tls = None
    if args.tls_dir:
        d = Path(args.tls_dir)
        tls = TLSConfig.load(str(d / "trust.crt"), str(d / "forged.crt"), str(d / "forged.key"))

    def accept(peer) -> bool:  # type: ignore[no-untyped-def]
        accepted.append(peer.node_id)
        return True

    transport = Transport(
        node_id=NODE_ID,
        cluster=args.cluster,
        key=secrets.token_bytes(32),
        bind_host=bind,
        port=7400,
        advertise=f"{bind}:7400",
        on_frame=lambda peer, obj: frames.append(peer.node_id),
        accept_peer=accept,
        cluster_id=lambda: cid,
        tls=tls,
    )
    await transport.start()
    disc = Discovery(
        node_id=NODE_ID,
        cluster=args.cluster,
        raft_addr=f"{bind}:7400",
        api_addr=f"{bind}:7480",
        interfaces=[bind],
        cluster_id=args.cluster_id,
        fresh=cid is None,
    )
    await disc.start()
    info = {"id": NODE_ID, "raft_addr": f"{bind}:7400", "api_addr": f"{bind}:7480"}
    sends = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + args.seconds
    connected = False
    while loop.time() < end:
        for t in targets:
            transport.send(t, {"k": "join", "cid": cid, "info": info})
            transport.send(t, {"k": "hello", "cid": cid, "info": info, "fresh": cid is None})
            sends += 2
            connected = connected or transport.is_connected(t)
        await asyncio.sleep(0.5)
    seen = sorted(disc.peers)
    await disc.stop()
    await transport.stop()
    return {
        "announced": disc.service_name,
        "saw_agents": seen,
        "sends": sends,
        "joined_any": connected or bool(accepted) or bool(frames),
        "stats": transport.stats.as_dict(),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cluster", required=True)
    p.add_argument("--cluster-id", default="")
    p.add_argument("--bind", required=True)
    p.add_argument("--targets", required=True)
    p.add_argument("--apis", required=True)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--tls-dir", default="", help="speak TLS with DIR/forged.crt (another CA)")
    args = p.parse_args()
    report = asyncio.run(main_async(args))
    context = None
    if args.tls_dir:
        context = ssl.create_default_context(cafile=str(Path(args.tls_dir) / "trust.crt"))
    apis = [a for a in args.apis.split(",") if a]
    report["api_status"] = api_attempts(apis, args.bind, context)
    report["raw_closed"] = raw_attempts([t for t in args.targets.split(",") if t])
    report["pid"] = os.getpid()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
