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
