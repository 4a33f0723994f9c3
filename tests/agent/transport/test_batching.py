"""Batching (docs/transport.md "Batches"): the messages one loop cycle queues for a peer leave
in one write and, when both hellos list the ``batch`` capability, in one sealed frame; an
older peer (no ``caps`` in its hello, or one that does not batch) gets one frame a message,
and understands what it gets. A batch is sealed as one frame, so its replay and tamper
protection are the frame's; a malformed batch closes the connection with none of it
delivered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from test_transport import KEY, Inbox, RawClient, addr, hello, make, run, wait_until

from hafleet_agent import wire
from hafleet_agent.transport import Transport


def count_seals(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the frames sealed from now on (hellos included)."""
    sealed = [0]
    real = wire.Session.seal

    def seal(self: wire.Session, payload: bytes) -> bytes:
        sealed[0] += 1
        return real(self, payload)

    monkeypatch.setattr(wire.Session, "seal", seal)
    return sealed


async def connected(a: Transport, b: Transport, ib: Inbox) -> None:
    """``a`` has an idle, authenticated connection to ``b`` (a first frame went through)."""
    assert a.send(addr(b), "first")
    await ib.wait_for(1)
    await wait_until(lambda: a.queued(addr(b)) == 0, "the first frame written")
    await asyncio.sleep(0)  # the writer task is back waiting


@pytest.mark.parametrize(
    ("sender_batches", "receiver_batches", "frames"),
    [(True, True, 1), (True, False, 200), (False, True, 200), (False, False, 200)],
)
def test_a_cycles_messages_are_one_frame_only_when_both_ends_batch(
    sender_batches: bool, receiver_batches: bool, frames: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        ib = Inbox()
        a = make("a", batching=sender_batches)
        b = make("b", ib, batching=receiver_batches)
        await a.start()
        await b.start()
        await connected(a, b, ib)
        sealed = count_seals(monkeypatch)
        values: list[Any] = [{"k": "raft", "i": i, "m": bytes(i % 50)} for i in range(200)]
        for v in values:  # one loop cycle: nothing is written before the last send
            assert a.send(addr(b), v)
        assert await ib.wait_for(201) == ["first", *values]
        assert sealed[0] == frames
        assert a.stats.frames_sent == b.stats.frames_received == 201
        assert b.stats.protocol_errors == b.stats.auth_failures == 0
        await a.stop()
        await b.stop()

    run(main())


def test_batches_keep_order_across_many_cycles_both_ways() -> None:
    async def main() -> None:
        ia, ib = Inbox(), Inbox()
        a, b = make("a", ia), make("b", ib)
        await a.start()
        await b.start()
        for cycle in range(50):
            for i in range(cycle % 7 + 1):
                assert a.send(addr(b), [cycle, i])
                assert b.send(addr(a), [cycle, i])
            await asyncio.sleep(0)
        want = [[c, i] for c in range(50) for i in range(c % 7 + 1)]
        assert await ib.wait_for(len(want)) == want
        assert await ia.wait_for(len(want)) == want
        await a.stop()
        await b.stop()

    run(main())


def test_a_batch_of_payloads_larger_than_one_frame_is_split_and_the_largest_passes() -> None:
    async def main() -> None:
        ib = Inbox()
        limit = 64 << 10
        a = make("a", max_frame=limit, queue_bytes=4 * limit)
        b = make("b", ib, max_frame=limit)
        await a.start()
        await b.start()
        await connected(a, b, ib)
        largest = b"\x07" * (limit - 8 - 32 - 5)  # bin32: a 5-byte header
        values = [b"x" * 20000, b"y" * 20000, largest, b"z" * 30000, largest, "small"]
        for v in values:
            assert a.send(addr(b), v)
        assert await ib.wait_for(1 + len(values)) == ["first", *values]
        assert b.stats.protocol_errors == 0
        await a.stop()
        await b.stop()

    run(main())


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty batch"),
        (b"\x00\x00", "truncated record header in a batch"),
        (b"\x00\x00\x00\x09\xa1x", "record of 9 bytes overruns its batch"),
        (wire.batch_payload([msgpack.packb("ok"), b"\xc1"]), "payload is not one msgpack value"),
    ],
)
def test_a_malformed_batch_closes_the_connection_and_delivers_none_of_it(
    payload: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        ib = Inbox()
        b = make("b", ib)
        await b.start()
        raw = await RawClient.connect(b.port)
        await raw.handshake()
        raw.write(raw.seal(msgpack.packb({**msgpack.unpackb(hello()), "caps": ["batch"]})))
        server_hello = raw.open(await raw.read_frame())
        assert isinstance(server_hello, dict) and server_hello["caps"] == ["batch"]
        raw.write(raw.seal(wire.batch_payload([msgpack.packb(1), msgpack.packb(2)])))
        assert await ib.wait_for(2) == [1, 2]
        raw.write(raw.seal(payload))
        assert await raw.closed_by_peer()
        await raw.close()
        assert ib.objs() == [1, 2] and b.stats.protocol_errors == 1
        await b.stop()

    with caplog.at_level("WARNING", logger="hafleet.transport"):
        run(main())
    assert reason in caplog.text


def test_a_replayed_batch_is_refused_like_a_replayed_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        ib = Inbox()
        b = make("b", ib)
        await b.start()
        raw = await RawClient.connect(b.port)
        await raw.handshake()
        raw.write(raw.seal(msgpack.packb({**msgpack.unpackb(hello()), "caps": ["batch"]})))
        raw.open(await raw.read_frame())
        batch = raw.seal(wire.batch_payload([msgpack.packb("one"), msgpack.packb("two")]))
        raw.write(batch + batch)
        assert await raw.closed_by_peer()
        await raw.close()
        assert ib.objs() == ["one", "two"] and b.stats.auth_failures == 1
        await b.stop()

    with caplog.at_level("WARNING", logger="hafleet.transport"):
        run(main())
    assert "replayed or reordered frame: counter 1, expected 2" in caplog.text


def test_a_peer_whose_hello_lists_no_caps_gets_one_frame_a_message_and_reads_them() -> None:
    """The previous version's hello has no ``caps``: the raw client stands for it."""

    async def main() -> None:
        ib = Inbox()
        b = make("b", ib)
        await b.start()
        raw = await RawClient.connect(b.port)
        await raw.login()
        for v in ("one", {"two": 2}):  # what it sends is read one frame a message
            raw.write(raw.seal(msgpack.packb(v)))
        assert await ib.wait_for(2) == ["one", {"two": 2}]
        await raw.close()
        await b.stop()

    run(main())


def test_wire_batch_round_trip_and_hello_caps() -> None:
    payloads = [msgpack.packb(v) for v in (1, "two", b"\x00" * 70000, {"k": [None]})]
    records = wire.split_batch(wire.batch_payload(payloads))
    assert [bytes(r) for r in records] == payloads
    h = wire.hello_payload("n1", "lab", None, "127.0.0.1:1", (wire.BATCH_CAP,))
    assert wire.parse_hello_caps(h) == (("n1", "lab", None, "127.0.0.1:1"), {"batch"})
    assert wire.parse_hello(h) == ("n1", "lab", None, "127.0.0.1:1")
    old = wire.hello_payload("n1", "lab", None, "127.0.0.1:1")
    assert "caps" not in msgpack.unpackb(old)
    assert wire.parse_hello_caps(old)[1] == frozenset()
    for odd in ("batch", [1], ["x"] * 33, {"batch": 1}):
        body = msgpack.packb({**msgpack.unpackb(old), "caps": odd})
        assert wire.parse_hello_caps(body)[1] == frozenset()


def test_the_key_and_session_of_a_batch_are_the_frames() -> None:
    """A batch is an ordinary sealed frame: another session cannot open it."""
    s1 = wire.Session.after_handshake(KEY, b"c" * 32, b"s" * 32, client=True)
    s2 = wire.Session.after_handshake(KEY, b"c" * 32, b"t" * 32, client=False)
    body = s1.seal(wire.batch_payload([msgpack.packb("x")]))[4:]
    with pytest.raises(wire.AuthError):
        s2.open(body)


# ---- frames that wait for the next write (send's ``within``) ---------------------------------


@contextlib.asynccontextmanager
async def connected_pair() -> AsyncIterator[tuple[Transport, Transport, Inbox]]:
    """``a`` with an idle connection to ``b``, whose frames go to the inbox; both stopped
    at the end."""
    ib = Inbox()
    a, b = make("a"), make("b", ib)
    await a.start()
    await b.start()
    try:
        await connected(a, b, ib)
        yield a, b, ib
    finally:
        await a.stop()
        await b.stop()


def test_a_frame_sent_within_waits_and_leaves_with_the_next_frame_in_one_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member's report rides on its next heartbeat answer: the report is queued, nothing
    is written for it, and the next frame to the same peer carries both, in order, sealed
    as one frame."""

    async def main() -> None:
        async with connected_pair() as (a, b, ib):
            sealed = count_seals(monkeypatch)
            assert a.send(addr(b), {"k": "metrics", "n": 1}, within=60.0)
            for _ in range(10):  # loop cycles pass: no flush is due, and no timer is near
                await asyncio.sleep(0)
            assert a.queued(addr(b)) == 1 and sealed[0] == 0 and ib.objs() == ["first"]
            assert a.send(addr(b), {"k": "raft", "n": 2})
            want = ["first", {"k": "metrics", "n": 1}, {"k": "raft", "n": 2}]
            assert await ib.wait_for(3) == want
            assert sealed[0] == 1

    run(main())


def test_a_frame_sent_within_leaves_on_its_own_when_nothing_else_is_sent() -> None:
    async def main() -> None:
        async with connected_pair() as (a, b, ib):
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            assert a.send(addr(b), "alone", within=0.05)
            assert await ib.wait_for(2) == ["first", "alone"]
            waited = loop.time() - sent_at
            assert waited >= 0.05 - 0.005, f"written after {waited:.3f} s, before its bound"

    run(main())


def test_each_peer_keeps_its_own_bound_and_a_sooner_one_moves_the_timer() -> None:
    """Three peers: a frame with a long bound, then frames with shorter ones; each leaves at
    its own bound (the timer is set again for the next), a second frame to a waiting peer
    with a sooner bound brings that peer's whole queue forward, and a later one does not
    push it back."""

    async def main() -> None:
        ib, ic, id_ = Inbox(), Inbox(), Inbox()
        a, b, c, d = make("a"), make("b", ib), make("c", ic), make("d", id_)
        for t in (a, b, c, d):
            await t.start()
        for t, inbox in ((b, ib), (c, ic), (d, id_)):
            await connected(a, t, inbox)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert a.send(addr(b), "b-late", within=60.0)
        assert a.send(addr(c), "c-1", within=0.3)
        assert a.send(addr(d), "d-1", within=60.0)
        assert a.send(addr(d), "d-2", within=0.05)  # brings d-1 with it
        assert a.send(addr(c), "c-2", within=60.0)  # does not push c-1 back
        assert await id_.wait_for(3) == ["first", "d-1", "d-2"]
        assert await ic.wait_for(3) == ["first", "c-1", "c-2"]
        assert loop.time() - t0 >= 0.3 - 0.005
        assert ib.objs() == ["first"] and a.queued(addr(b)) == 1
        assert a.send(addr(b), "now")
        assert await ib.wait_for(3) == ["first", "b-late", "now"]
        for t in (a, b, c, d):
            await t.stop()

    run(main())


def test_a_frame_sent_within_to_a_peer_not_yet_connected_goes_when_it_connects() -> None:
    async def main() -> None:
        ib = Inbox()
        a, b = make("a"), make("b", ib)
        await a.start()
        await b.start()
        assert a.send(addr(b), "early", within=60.0)  # dials; the task writes once connected
        assert await ib.wait_for(1) == ["early"]
        await a.stop()
        await b.stop()

    run(main())


def test_stop_with_frames_waiting_discards_them_and_leaves_no_timer() -> None:
    async def main() -> None:
        async with connected_pair() as (a, b, ib):
            assert a.send(addr(b), "waits", within=0.05)
            dropped = a.stats.drops_discarded
            await a.stop()
            assert a.stats.drops_discarded == dropped + 1
            await asyncio.sleep(0.1)  # past the bound: the cancelled timer writes nothing
            assert ib.objs() == ["first"]
            assert not a.send(addr(b), "after", within=0.05)

    run(main())
