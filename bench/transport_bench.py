"""Throughput and latency of hafleet_agent.transport over loopback (not a test).

Two processes, each with its own event loop and Transport, as two agents would be:
the receiver counts data frames and answers pings. The sender measures

- throughput: N frames of a 100-byte payload sent as fast as the queue allows (a full
  queue makes it yield, not drop), timed until the receiver confirms it has them all;
- latency: sequential ping -> pong round trips with a 100-byte payload; one way is
  about half a round trip.

    python bench/transport_bench.py [--frames 200000] [--pings 5000] [--payload 100]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from hafleet_agent.transport import PeerInfo, Transport

HOST = "127.0.0.1"


def quiet() -> None:
    """The sender fills its queue on purpose: its overflow warnings are expected here."""
    logging.getLogger("hafleet.transport").setLevel(logging.ERROR)


def receiver(key: bytes, conn: Connection) -> None:
    quiet()

    async def main() -> None:
        count = 0
        done = asyncio.Event()
        t: Transport

        def on_frame(peer: PeerInfo, obj: Any) -> None:
            nonlocal count
            kind = obj[0]
            if kind == "d":
                count += 1
            elif kind == "ping":
                t.send(peer.addr, ["pong", obj[1], obj[2]])
            elif kind == "count?":
                t.send(peer.addr, ["count", count])
            elif kind == "bye":
                done.set()

        t = Transport(
            node_id="receiver",
            cluster="bench",
            key=key,
            bind_host=HOST,
            port=0,
            advertise=None,
            on_frame=on_frame,
        )
        await t.start()
        conn.send(t.port)
        await done.wait()
        await t.stop()

    asyncio.run(main())


async def sender(key: bytes, port: int, frames: int, pings: int, size: int) -> dict[str, float]:
    replies: asyncio.Queue[Any] = asyncio.Queue()
    t = Transport(
        node_id="sender",
        cluster="bench",
        key=key,
        bind_host=HOST,
        port=0,
        advertise=None,
        on_frame=lambda peer, obj: replies.put_nowait(obj),
    )
    await t.start()
    dest = f"{HOST}:{port}"
    payload = os.urandom(size)

    # warm up: connect both ways
    t.send(dest, ["ping", 0, payload])
    await replies.get()

    start = time.perf_counter()
    sent = 0
    while sent < frames:
        if t.send(dest, ["d", payload]):
            sent += 1
        else:
            await asyncio.sleep(0)  # queue full: let the writer drain it
    t.send(dest, ["count?"])
    reply = await replies.get()
    elapsed = time.perf_counter() - start
    assert reply == ["count", frames], reply

    rtts = []
    for i in range(pings):
        t0 = time.perf_counter()
        t.send(dest, ["ping", i, payload])
        pong = await replies.get()
        rtts.append(time.perf_counter() - t0)
        assert pong[1] == i
    t.send(dest, ["bye"])
    while t.queued(dest):
        await asyncio.sleep(0.01)
    await t.stop()
    rtts.sort()
    return {
        "frames_per_s": frames / elapsed,
        "mbytes_per_s": frames * (size + 44) / elapsed / 1e6,
        "rtt_p50_us": statistics.median(rtts) * 1e6,
        "rtt_p99_us": rtts[int(len(rtts) * 0.99)] * 1e6,
        "rtt_max_us": rtts[-1] * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--pings", type=int, default=5_000)
    ap.add_argument("--payload", type=int, default=100)
    args = ap.parse_args()
    quiet()
    key = os.urandom(32)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=receiver, args=(key, child))
    proc.start()
    try:
        port = parent.recv()
        r = asyncio.run(sender(key, port, args.frames, args.pings, args.payload))
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cpus; {args.payload}-byte payloads over {HOST}, two processes"
    )
    print(
        f"throughput: {r['frames_per_s']:,.0f} frames/s ({r['mbytes_per_s']:.1f} MB/s on the "
        f"wire) for {args.frames:,} frames"
    )
    print(
        f"latency ({args.pings:,} round trips): p50 {r['rtt_p50_us']:.0f} us, "
        f"p99 {r['rtt_p99_us']:.0f} us, max {r['rtt_max_us']:.0f} us"
    )


if __name__ == "__main__":
    sys.exit(main())
