"""An accepted connection's frames after the handshake are read by a protocol
(inbound.py's FrameReader) rather than by a stream reader's task: the same frames, in the
same order, and the stream protocol it replaced still gets the connection's end (the
transport stops without waiting for a close that never comes). The checks themselves
(tampered, replayed, oversize, truncated frames) are test_transport.py's, which now run
through the protocol."""

from __future__ import annotations

import asyncio

import pytest
from test_transport import Inbox, addr, make, run, wait_until

from hafleet_agent.inbound import FrameReader


@pytest.mark.parametrize("protocol", [True, False])
def test_frames_arrive_in_order_through_either_reader(protocol: bool) -> None:
    async def main() -> None:
        inbox = Inbox()
        a, b = make("a"), make("b", inbox)
        b.inbound_protocol = protocol
        await a.start()
        await b.start()
        try:
            for i in range(300):
                assert a.send(addr(b), {"i": i, "pad": b"x" * (i * 37 % 5000)})
                if i % 50 == 0:
                    await asyncio.sleep(0)  # some frames alone, some in one write
            got = await inbox.wait_for(300)
            assert [o["i"] for o in got] == list(range(300))
            assert b.stats.frames_received == 300
            readers = [w.transport.get_protocol() for w in b._inbound.values()]
            assert len(readers) == 1
            assert isinstance(readers[0], FrameReader) is protocol
        finally:
            await a.stop()
            await b.stop()
        assert not b._inbound  # every reading task ended with the stop

    run(main())


def test_the_peer_closing_ends_the_reader_and_a_new_connection_serves() -> None:
    async def main() -> None:
        inbox = Inbox()
        a, b = make("a"), make("b", inbox)
        await a.start()
        await b.start()
        try:
            a.send(addr(b), {"i": 0})
            await inbox.wait_for(1)
            await a.close_peer(addr(b))  # a's connection closes: b's reader sees the end
            await wait_until(lambda: not b._inbound, "b's reading task ended")
            a.send(addr(b), {"i": 1})
            assert [o["i"] for o in await inbox.wait_for(2)] == [0, 1]
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_on_read_follows_each_read_once_its_frames_are_delivered() -> None:
    """``on_read`` runs after every read of an accepted connection, once all of that read's
    frames reached ``on_frame`` (the Raft driver pumps there); one that raises is logged and
    counted, and the connection goes on."""

    async def main() -> None:
        log: list[object] = []
        inbox = Inbox()

        def on_frame(peer: object, obj: object) -> None:
            log.append(obj["i"])  # type: ignore[index]
            inbox(peer, obj)

        def on_read() -> None:
            log.append("read")
            if len([x for x in log if x == "read"]) == 1:
                raise RuntimeError("the first read's hook fails")

        a, b = make("a"), make("b", on_frame, on_read=on_read)
        await a.start()
        await b.start()
        try:
            for i in range(5):
                assert a.send(addr(b), {"i": i})
            await inbox.wait_for(5)
            await wait_until(lambda: log[-1] == "read", "the last read's hook ran")
            assert b.stats.callback_errors == 1
            assert a.send(addr(b), {"i": 5})
            await inbox.wait_for(6)
            await wait_until(lambda: log[-1] == "read", "the next read's hook ran")
        finally:
            await a.stop()
            await b.stop()
        frames = [x for x in log if x != "read"]
        assert frames == list(range(6))
        assert log[0] == 0 and log.count("read") >= 2  # a hook only after frames
        for k, x in enumerate(log):
            if x == "read":
                assert k > 0 and log[k - 1] != "read"  # never a hook without a frame before it

    run(main())
