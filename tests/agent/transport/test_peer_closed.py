"""``on_peer_closed``: the transport tells its owner when an accepted, authenticated
connection ends (the node's follower campaigns soon when its leader's connection ends, as
it does when the leader's process exits). Not for a connection that never authenticated,
not for one closed because a frame failed its tag (whoever tampered with it, the peer may be
alive), not when the transport itself stops; a callback that raises is counted and logged."""

from __future__ import annotations

import asyncio

import pytest
from test_transport import HOST, Inbox, RawClient, addr, make, run, wait_until

from hafleet_agent.transport import PeerInfo


@pytest.mark.parametrize("protocol", [True, False])
def test_the_end_of_a_peers_connection_is_told_once(protocol: bool) -> None:
    async def main() -> None:
        closed: list[PeerInfo] = []
        inbox = Inbox()
        a, b = make("a"), make("b", inbox, on_peer_closed=closed.append)
        b.inbound_protocol = protocol
        await a.start()
        await b.start()
        try:
            a.send(addr(b), {"i": 0})
            await inbox.wait_for(1)
            assert closed == []
            await a.stop()  # a's process "exits": its connections close
            await wait_until(lambda: len(closed) == 1, "b heard that a's connection ended")
            assert closed[0].node_id == "a" and not closed[0].outbound
        finally:
            await a.stop()
            await b.stop()
        assert len(closed) == 1  # b's own stop does not count

    run(main())


def test_no_word_for_an_unauthenticated_connection_or_our_own_stop() -> None:
    async def main() -> None:
        closed: list[PeerInfo] = []
        inbox = Inbox()
        a, b = make("a"), make("b", inbox, on_peer_closed=closed.append)
        await a.start()
        await b.start()
        try:
            # a stranger connects and leaves before any hello
            _, w = await asyncio.open_connection(HOST, b.port)
            w.close()
            await w.wait_closed()
            await wait_until(lambda: b.stats.inbound_accepted == 0 and not b._inbound, "gone")
            a.send(addr(b), {"i": 0})
            await inbox.wait_for(1)
        finally:
            await b.stop()  # b stops first: a's connection to it is ours to end
            await a.stop()
        assert closed == []

    run(main())


def test_a_failing_callback_is_counted() -> None:
    async def main() -> None:
        def fail(peer: PeerInfo) -> None:
            raise RuntimeError("the owner's hook fails")

        inbox = Inbox()
        a, b = make("a"), make("b", inbox, on_peer_closed=fail)
        await a.start()
        await b.start()
        try:
            a.send(addr(b), {"i": 0})
            await inbox.wait_for(1)
            await a.close_peer(addr(b))
            await wait_until(lambda: b.stats.callback_errors == 1, "the failure counted")
            a.send(addr(b), {"i": 1})  # a new connection is served as before
            await inbox.wait_for(2)
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_a_tampered_frame_closes_without_word_a_clean_end_with() -> None:
    async def main() -> None:
        closed: list[PeerInfo] = []
        b = make("b", Inbox(), on_peer_closed=closed.append)
        await b.start()
        try:
            tampered = await RawClient.connect(b.port)
            await tampered.login("raw1")
            sealed = bytearray(tampered.seal(b"\x80"))  # an empty map, its tag then broken
            sealed[-1] ^= 1
            tampered.write(bytes(sealed))
            assert await tampered.closed_by_peer()
            await wait_until(lambda: b.stats.auth_failures >= 1, "the bad tag counted")
            clean = await RawClient.connect(b.port)
            await clean.login("raw2")
            await clean.close()
            await wait_until(lambda: len(closed) == 1, "the clean end told")
            assert closed[0].node_id == "raw2"
        finally:
            await b.stop()

    run(main())
