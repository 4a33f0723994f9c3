"""The agent-to-agent transport over real sockets on 127.0.0.1.

Every test runs its own event loop (``asyncio.run``) under an overall timeout, and each
network wait is bounded, so a bug fails fast instead of hanging. The hostile cases use
``RawClient``/``RawServer``: the wire protocol written again here from its specification
(the module docstring and docs/transport.md), so the tests check the documented format
rather than the implementation against itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import msgpack
import pytest
from agents import wait_until as wait_until_within

from hafleet_agent.transport import PeerInfo, Transport, parse_addr

KEY = b"correct horse battery staple, 32+ bytes long"
OTHER_KEY = b"another cluster's key, also long enough......"
P = b"hafleet/v1"
HOST = "127.0.0.1"
WAIT = 10.0  # the bound on any single network wait


def run(coro: Awaitable[None], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


wait_until = partial(wait_until_within, timeout=WAIT)  # the shared poll, this file's bound


class Inbox:
    """An on_frame callback that records frames and lets a test wait for a count."""

    def __init__(self) -> None:
        self.frames: list[tuple[PeerInfo, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, peer: PeerInfo, obj: object) -> None:
        self.frames.append((peer, obj))
        self._changed.set()

    def objs(self, node_id: str | None = None) -> list[Any]:
        return [o for p, o in self.frames if node_id is None or p.node_id == node_id]

    async def wait_for(self, n: int, node_id: str | None = None) -> list[Any]:
        async with asyncio.timeout(WAIT):
            while len(self.objs(node_id)) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.objs(node_id)


def make(
    node_id: str, inbox: Callable[[PeerInfo, Any], None] | None = None, **kw: Any
) -> Transport:
    kw.setdefault("key", KEY)
    kw.setdefault("backoff_initial", 0.01)
    kw.setdefault("backoff_max", 0.1)
    return Transport(
        node_id=node_id,
        cluster="lab",
        bind_host=HOST,
        port=kw.pop("port", 0),
        advertise=None,
        on_frame=inbox if inbox is not None else Inbox(),
        **kw,
    )


def addr(t: Transport) -> str:
    return f"{HOST}:{t.port}"


def free_port() -> int:
    """A port with no listener (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---- the protocol, by hand ------------------------------------------------------------------


def mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def hello(node_id: str = "raw", cluster_id: str | None = None, addr: str = "127.0.0.1:9") -> bytes:
    return msgpack.packb(
        {"node_id": node_id, "cluster": "lab", "cluster_id": cluster_id, "addr": addr}
    )


class _RawEnd:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.skey = b""
        self.send_counter = 0
        self.recv_counter = 0
        self.send_dir, self.recv_dir = b"\x01", b"\x02"

    async def read_frame(self) -> bytes:
        async with asyncio.timeout(WAIT):
            n = int.from_bytes(await self.reader.readexactly(4), "big")
            return await self.reader.readexactly(n)

    def seal(self, payload: bytes, counter: int | None = None) -> bytes:
        """An authenticated frame; the counter advances unless one is given."""
        if counter is None:
            counter, self.send_counter = self.send_counter, self.send_counter + 1
        c = counter.to_bytes(8, "big")
        return frame(c + payload + mac(self.skey, self.send_dir, c, payload))

    def open(self, body: bytes) -> object:
        c, payload, tag = body[:8], body[8:-32], body[-32:]
        assert hmac.compare_digest(tag, mac(self.skey, self.recv_dir, c, payload))
        assert int.from_bytes(c, "big") == self.recv_counter
        self.recv_counter += 1
        return msgpack.unpackb(payload)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def closed_by_peer(self) -> bool:
        """True once the other side closes (EOF or reset) within WAIT seconds."""
        try:
            async with asyncio.timeout(WAIT):
                while await self.reader.read(65536):
                    pass
        except ConnectionResetError:
            pass
        return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


class RawClient(_RawEnd):
    @classmethod
    async def connect(cls, port: int) -> RawClient:
        async with asyncio.timeout(WAIT):
            return cls(*await asyncio.open_connection(HOST, port))

    async def handshake(self, key: bytes = KEY, proof_key: bytes | None = None) -> None:
        """Steps 1-3; ``proof_key`` sends a proof made with another key."""
        nonce_c = os.urandom(32)
        self.write(frame(P + nonce_c))
        body = await self.read_frame()
        assert body[:10] == P and len(body) == 10 + 32 + 32
        nonce_s = body[10:42]
        assert hmac.compare_digest(body[42:], mac(key, P, b" server", nonce_c, nonce_s))
        self.write(frame(mac(proof_key or key, P, b" client", nonce_c, nonce_s)))
        self.skey = mac(key, P, nonce_c, nonce_s)

    async def login(self, node_id: str = "raw") -> dict[str, Any]:
        """Handshake and hellos; returns the server's hello."""
        await self.handshake()
        self.write(self.seal(hello(node_id)))
        server_hello = self.open(await self.read_frame())
        assert isinstance(server_hello, dict)
        return server_hello


class RawServer:
    """Accepts one connection, speaks the server side, then reads nothing more."""

    def __init__(self) -> None:
        self.ends: list[_RawEnd] = []
        self.ready = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, HOST, 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        end = _RawEnd(reader, writer)
        end.send_dir, end.recv_dir = b"\x02", b"\x01"
        self.ends.append(end)
        body = await end.read_frame()
        nonce_c, nonce_s = body[10:], os.urandom(32)
        end.write(frame(P + nonce_s + mac(KEY, P, b" server", nonce_c, nonce_s)))
        assert await end.read_frame() == mac(KEY, P, b" client", nonce_c, nonce_s)
        end.skey = mac(KEY, P, nonce_c, nonce_s)
        end.open(await end.read_frame())
        end.write(end.seal(hello("slow")))
        self.ready.set()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for end in self.ends:
            end.writer.transport.abort()
        await self.server.wait_closed()


# ---- exchanging frames ------------------------------------------------------------------------


def test_two_transports_exchange_thousands_of_frames_in_order() -> None:
    async def main() -> None:
        ia, ib = Inbox(), Inbox()
        a, b = make("a", ia), make("b", ib)
        await a.start()
        await b.start()
        n = 3000
        for i in range(n):
            assert a.send(addr(b), {"seq": i, "blob": os.urandom(100)})
            assert b.send(addr(a), {"seq": i, "from": "b"})
        got_b = await ib.wait_for(n)
        got_a = await ia.wait_for(n)
        assert [o["seq"] for o in got_b] == list(range(n))
        assert [o["seq"] for o in got_a] == list(range(n))
        peer = ib.frames[0][0]
        assert (peer.node_id, peer.cluster, peer.addr, peer.outbound) == (
            "a",
            "lab",
            addr(a),
            False,
        )
        assert peer.remote.startswith("127.0.0.1:")
        assert a.stats.frames_sent == b.stats.frames_received == n
        assert a.stats.bytes_sent == b.stats.bytes_received > n * 100
        assert a.stats.connects == 1 and b.stats.inbound_accepted == 1
        assert a.is_connected(addr(b)) and a.queued(addr(b)) == 0
        await a.stop()
        await b.stop()

    run(main())


def test_a_frame_taken_back_before_the_flush_never_leaves() -> None:
    """``send_packed`` queues a packed frame; ``take_back`` unqueues it while it is the last
    one queued for that peer and not written (a follower's answer whose log write failed),
    and leaves anything else alone: an earlier frame, an equal frame that is not the same
    object, a frame already written."""

    async def main() -> None:
        ia, ib = Inbox(), Inbox()
        a, b = make("a", ia), make("b", ib)
        await a.start()
        await b.start()
        assert a.send(addr(b), {"seq": 0})
        await ib.wait_for(1)  # connected, the queue written
        first = msgpack.packb({"seq": 1})
        answer = msgpack.packb({"seq": 2})
        assert a.send_packed(addr(b), first) and a.send_packed(addr(b), answer)
        a.take_back(addr(b), msgpack.packb({"seq": 2}))  # equal bytes, another object: kept
        assert a.queued(addr(b)) == 2
        a.take_back(addr(b), answer)
        a.take_back(addr(b), answer)  # (no longer there: nothing else is taken)
        a.take_back(addr(a), first)  # (no queue to that address)
        assert a.queued(addr(b)) == 1 and a.queued_bytes(addr(b)) == len(first)
        assert a.send(addr(b), {"seq": 3})
        got = await ib.wait_for(3)
        assert [o["seq"] for o in got] == [0, 1, 3]
        written = msgpack.packb({"seq": 4})
        assert a.send_packed(addr(b), written)
        await ib.wait_for(4)
        a.take_back(addr(b), written)  # written already: nothing to take back
        assert a.stats.frames_sent == 4
        await a.stop()
        await b.stop()

    run(main())


def test_three_transports_all_to_all_keep_order_per_sender() -> None:
    async def main() -> None:
        inboxes = {name: Inbox() for name in "xyz"}
        ts = {name: make(name, inboxes[name]) for name in "xyz"}
        for t in ts.values():
            await t.start()
        n = 2000
        for i in range(n):
            for src, t in ts.items():
                for dst, u in ts.items():
                    if src != dst:
                        assert t.send(addr(u), [src, i])
        for dst, inbox in inboxes.items():
            for src in ts:
                if src != dst:
                    got = await inbox.wait_for(n, node_id=src)
                    assert got == [[src, i] for i in range(n)]
        for t in ts.values():
            await t.stop()

    run(main())


def test_payloads_are_any_msgpack_value_and_bytes_stay_bytes() -> None:
    async def main() -> None:
        ib = Inbox()
        a, b = make("a"), make("b", ib)
        await a.start()
        await b.start()
        values = [None, 1, -5, 2.5, "text", b"\x00bytes", [1, [2, [3]]], {"raft": b"\x9c"}]
        for v in values:
            assert a.send(addr(b), v)
        assert await ib.wait_for(len(values)) == values
        await a.stop()
        await b.stop()

    run(main())


def test_frames_up_to_max_frame_pass_and_larger_ones_are_dropped_by_the_sender() -> None:
    async def main() -> None:
        ib = Inbox()
        limit = 256 << 10
        a, b = make("a", max_frame=limit), make("b", ib, max_frame=limit)
        await a.start()
        await b.start()
        # body = counter (8) + payload + tag (32); a bin32 value has a 5-byte header
        largest = os.urandom(limit - 8 - 32 - 5)
        assert a.send(addr(b), largest)
        assert not a.send(addr(b), largest + b"!")
        assert a.send(addr(b), "small")
        assert await ib.wait_for(2) == [largest, "small"]
        assert a.stats.drops_too_large == 1 and b.stats.protocol_errors == 0
        await a.stop()
        await b.stop()

    run(main())


def test_a_failing_on_frame_is_logged_and_the_connection_lives_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        ib = Inbox()

        def on_frame(peer: PeerInfo, obj: object) -> None:
            if obj == "boom":
                raise RuntimeError("handler bug")
            ib(peer, obj)

        a, b = make("a"), make("b", on_frame)
        await a.start()
        await b.start()
        for v in ["one", "boom", "two"]:
            a.send(addr(b), v)
        assert await ib.wait_for(2) == ["one", "two"]
        assert b.stats.callback_errors == 1
        assert b.stats.inbound_accepted == 1
        await a.stop()
        await b.stop()

    caplog.set_level(logging.WARNING, logger="hafleet.transport")
    run(main())
    assert "on_frame failed" in caplog.text


def test_tcp_nodelay_and_the_user_timeout_are_set_on_both_ends() -> None:
    """TCP_USER_TIMEOUT (ms): a cut link's connection is closed after it, not left to TCP's
    retransmissions (docs/transport.md, "Sockets"); None leaves the kernel's default (0)."""

    async def main() -> None:
        ib = Inbox()
        a, b = make("a", user_timeout=1.5), make("b", ib)
        c = make("c", user_timeout=None)
        for t in (a, b, c):
            await t.start()
        a.send(addr(b), 1)
        c.send(addr(b), 2)
        await ib.wait_for(2)
        socks = {
            name: t._outbound[addr(b)].conn.writer.get_extra_info("socket")  # the one place
            for name, t in (("a", a), ("c", c))  # a test looks inside
        }
        socks["b"] = next(iter(b._inbound.values())).get_extra_info("socket")
        for sock in socks.values():
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        timeouts = {
            n: s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) for n, s in socks.items()
        }
        assert timeouts == {"a": 1500, "c": 0, "b": 5000}, timeouts  # b: the default, 5 s
        for t in (a, b, c):
            await t.stop()

    run(main())


def test_a_user_timeout_must_be_above_0_and_fit_the_socket_option() -> None:
    for bad in (0, -1.0, float("nan"), float("inf"), 2**31 / 1000):
        with pytest.raises(ValueError, match="user_timeout must be above 0 and at most"):
            make("a", user_timeout=bad)
    make("a", user_timeout=(2**31 - 1) / 1000)  # the largest the kernel takes


# ---- authentication and admission -------------------------------------------------------------


def test_a_peer_with_the_wrong_key_is_refused_both_ways(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        ia, ib = Inbox(), Inbox()
        a, b = make("a", ia), make("b", ib, key=OTHER_KEY)
        await a.start()
        await b.start()
        for i in range(5):
            a.send(addr(b), i)
            b.send(addr(a), i)
        await wait_until(
            lambda: a.stats.connect_failures >= 2 and b.stats.connect_failures >= 2,
            "both sides retried and failed",
        )
        assert a.stats.auth_failures >= 2 and b.stats.auth_failures >= 2
        assert ia.frames == [] and ib.frames == []
        assert not a.is_connected(addr(b)) and not b.is_connected(addr(a))
        assert a.stats.inbound_accepted == b.stats.inbound_accepted == 0
        await a.stop()
        await b.stop()

    caplog.set_level(logging.DEBUG, logger="hafleet.transport")
    run(main())
    assert "the server failed to prove the cluster key" in caplog.text
    # Both sides say what to look at (the accepting side said only "connection closed by
    # the peer while reading the client's proof").
    assert "its key differs from ours (compare the key files" in caplog.text
    assert "closed the connection instead of proving the cluster key" in caplog.text
    for secret in (KEY, OTHER_KEY):
        assert secret.decode() not in caplog.text
        assert secret.hex() not in caplog.text


def test_accept_peer_false_on_the_listener_closes_and_delivers_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        seen: list[PeerInfo] = []

        def accept(peer: PeerInfo) -> bool:
            seen.append(peer)
            return peer.cluster_id == "cluster-1"

        ib = Inbox()
        a = make("a", cluster_id=lambda: "cluster-2")
        b = make("b", ib, accept_peer=accept)
        await a.start()
        await b.start()
        a.send(addr(b), "hello?")
        await wait_until(lambda: b.stats.peers_refused >= 1, "b refused a")
        await wait_until(lambda: a.stats.connect_failures >= 1, "a saw the refusal")
        assert ib.frames == []
        assert seen[0].node_id == "a" and seen[0].cluster_id == "cluster-2"
        assert not seen[0].outbound
        await a.stop()
        await b.stop()

    caplog.set_level(logging.WARNING, logger="hafleet.transport")
    run(main())
    assert "accept_peer refused node 'a'" in caplog.text
    assert "cluster id 'cluster-2'" in caplog.text


def test_accept_peer_false_on_the_dialer_closes_and_discards_the_queue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        ib = Inbox()
        a = make("a", accept_peer=lambda peer: peer.node_id != "b")
        b = make("b", ib, cluster_id=lambda: "cid")
        await a.start()
        await b.start()
        for i in range(10):
            assert a.send(addr(b), i)
        # The refusal is counted during the handshake, the discard once the dial has closed
        # its socket (an await later): wait for both.
        await wait_until(
            lambda: a.stats.peers_refused >= 1 and a.stats.drops_discarded >= 10, "a refused b"
        )
        assert a.stats.drops_discarded == 10 and a.queued(addr(b)) == 0
        assert not a.is_connected(addr(b))
        assert ib.frames == []
        await a.stop()
        await b.stop()

    caplog.set_level(logging.WARNING, logger="hafleet.transport")
    run(main())
    assert "refusing 127.0.0.1:" in caplog.text and "discarded 10 queued frames" in caplog.text


def test_a_peer_claiming_our_own_node_id_is_refused() -> None:
    async def main() -> None:
        ib = Inbox()
        b = make("b", ib)
        await b.start()
        raw = await RawClient.connect(b.port)
        await raw.handshake()
        raw.write(raw.seal(hello(node_id="b")))
        assert await raw.closed_by_peer()
        assert b.stats.peers_refused == 1 and ib.frames == []
        await raw.close()
        await b.stop()

    run(main())


# ---- hostile and broken connections ------------------------------------------------------------


async def attack_tampered_payload(raw: RawClient) -> None:
    await raw.login()
    f = bytearray(raw.seal(msgpack.packb("evil")))
    f[4 + 8] ^= 0x01  # first payload byte
    raw.write(bytes(f))


async def attack_tampered_tag(raw: RawClient) -> None:
    await raw.login()
    f = bytearray(raw.seal(msgpack.packb("evil")))
    f[-1] ^= 0x80
    raw.write(bytes(f))


async def attack_tampered_counter(raw: RawClient) -> None:
    await raw.login()
    f = bytearray(raw.seal(msgpack.packb("evil")))
    f[4 + 7] ^= 0x02  # counter 1 -> 3, tag unchanged
    raw.write(bytes(f))


async def attack_replayed_frame(raw: RawClient) -> None:
    await raw.login()
    f = raw.seal(msgpack.packb("once"))
    raw.write(f + f)


async def attack_reordered_frames(raw: RawClient) -> None:
    await raw.login()
    first, second = raw.seal(msgpack.packb("first")), raw.seal(msgpack.packb("second"))
    raw.write(second + first)


async def attack_truncated_frame(raw: RawClient) -> None:
    await raw.login()
    f = raw.seal(msgpack.packb("x" * 200))
    raw.write(f[: len(f) // 2])
    raw.writer.write_eof()


async def attack_garbage_before_handshake(raw: RawClient) -> None:
    raw.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


async def attack_short_garbage_before_handshake(raw: RawClient) -> None:
    raw.write(frame(os.urandom(42)))


async def attack_garbage_after_handshake(raw: RawClient) -> None:
    await raw.login()
    raw.write(frame(os.urandom(80)))


async def attack_oversized_length_before_handshake(raw: RawClient) -> None:
    raw.write(b"\xff\xff\xff\xff")


async def attack_oversized_length_after_handshake(raw: RawClient) -> None:
    await raw.login()
    raw.write((1 << 20).to_bytes(4, "big") + b"\x00" * 100)  # max_frame is 64 KiB here


async def attack_unauthenticated_frame(raw: RawClient) -> None:
    raw.skey = os.urandom(32)
    raw.write(raw.seal(msgpack.packb("let me in")))


async def attack_wrong_key_proof(raw: RawClient) -> None:
    await raw.handshake(proof_key=OTHER_KEY)
    raw.write(raw.seal(hello()))


async def attack_data_before_hello(raw: RawClient) -> None:
    await raw.handshake()
    raw.write(raw.seal(msgpack.packb(["not", "a", "hello"])))


async def attack_malformed_hello(raw: RawClient) -> None:
    await raw.handshake()
    raw.write(raw.seal(msgpack.packb({"node_id": 7, "cluster": "lab", "cluster_id": None})))


async def attack_payload_not_msgpack(raw: RawClient) -> None:
    await raw.login()
    raw.write(raw.seal(b"\xc1\xc1"))


async def attack_silence(raw: RawClient) -> None:
    pass  # connect and say nothing: the handshake timeout (0.3 s here) closes it


ATTACKS: dict[str, tuple[Callable[[RawClient], Awaitable[None]], str]] = {
    # name: (what the raw client does, the reason the listener must log)
    "tampered payload": (attack_tampered_payload, "frame failed authentication"),
    "tampered tag": (attack_tampered_tag, "frame failed authentication"),
    "tampered counter": (attack_tampered_counter, "frame failed authentication"),
    "replayed frame": (attack_replayed_frame, "replayed or reordered frame: counter 1, expected 2"),
    "reordered frames": (attack_reordered_frames, "replayed or reordered frame: counter 2"),
    "truncated frame": (attack_truncated_frame, "truncated frame"),
    "garbage before handshake": (attack_garbage_before_handshake, "exceeds the limit of 128"),
    "short garbage before handshake": (attack_short_garbage_before_handshake, "does not speak"),
    "garbage after handshake": (attack_garbage_after_handshake, "failed authentication"),
    "oversized length before handshake": (
        attack_oversized_length_before_handshake,
        "frame of 4294967295 bytes exceeds the limit of 128",
    ),
    "oversized length after handshake": (
        attack_oversized_length_after_handshake,
        "frame of 1048576 bytes exceeds the limit of 65536",
    ),
    "unauthenticated frame": (attack_unauthenticated_frame, "does not speak hafleet/v1"),
    "wrong key proof": (attack_wrong_key_proof, "the client failed to prove the cluster key"),
    "data before hello": (attack_data_before_hello, "malformed hello"),
    "malformed hello": (attack_malformed_hello, "malformed hello"),
    "payload not msgpack": (attack_payload_not_msgpack, "payload is not one msgpack value"),
    "silence": (attack_silence, "handshake timed out"),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_a_bad_connection_is_closed_with_a_reason_and_others_are_served(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    attack, reason = ATTACKS[name]
    # the one attack that starts with a valid frame: it is delivered once, not twice
    delivered = ["once"] if name == "replayed frame" else []

    async def main() -> None:
        ib = Inbox()
        b = make("b", ib, max_frame=64 << 10, handshake_timeout=0.3)
        good = make("good")
        await b.start()
        await good.start()
        good.send(addr(b), "before")
        await ib.wait_for(1)
        raw = await RawClient.connect(b.port)
        await attack(raw)
        assert await raw.closed_by_peer()
        await raw.close()
        # nothing bad of the attacker's was delivered, and the honest peer is still served
        assert ib.objs("raw") == delivered
        assert ib.objs("good") == ["before"]
        good.send(addr(b), "after")
        assert await ib.wait_for(2, node_id="good") == ["before", "after"]
        assert good.stats.reconnects == 0
        await good.stop()
        await b.stop()

    caplog.set_level(logging.WARNING, logger="hafleet.transport")
    run(main())
    closes = [r.getMessage() for r in caplog.records if "closing connection from" in r.getMessage()]
    assert len(closes) == 1, closes
    assert reason in closes[0]
    assert KEY.decode() not in caplog.text


def test_the_raw_client_is_a_faithful_peer() -> None:
    """The baseline of the attacks: the hand-written client's frames are delivered."""

    async def main() -> None:
        ib = Inbox()
        b = make("b", ib, cluster_id=lambda: "cid-b")
        await b.start()
        raw = await RawClient.connect(b.port)
        server_hello = await raw.login(node_id="raw")
        assert server_hello == {
            "node_id": "b",
            "cluster": "lab",
            "cluster_id": "cid-b",
            "addr": addr(b),
            "caps": ["batch"],  # a peer whose hello lists no caps gets no batches
        }
        for i in range(3):
            raw.write(raw.seal(msgpack.packb({"i": i})))
        big = os.urandom(300 << 10)  # large frames are authenticated another way inside
        raw.write(raw.seal(msgpack.packb(big)))
        assert await ib.wait_for(4) == [{"i": 0}, {"i": 1}, {"i": 2}, big]
        assert ib.frames[0][0].node_id == "raw"
        assert b.stats.auth_failures == b.stats.protocol_errors == 0
        await raw.close()
        await b.stop()

    run(main())


def test_a_frame_from_one_connection_fails_on_another(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        ib = Inbox()
        b = make("b", ib)
        await b.start()
        first, second = await RawClient.connect(b.port), await RawClient.connect(b.port)
        await first.login()
        await second.login()
        captured = first.seal(msgpack.packb("from the first connection"))  # counter 1
        second.write(captured)  # the second connection also expects counter 1
        assert await second.closed_by_peer()
        first.write(captured)  # where it belongs it is fine
        assert await ib.wait_for(1) == ["from the first connection"]
        await first.close()
        await second.close()
        await b.stop()

    caplog.set_level(logging.WARNING, logger="hafleet.transport")
    run(main())
    assert "frame failed authentication (tampered, or from another connection)" in caplog.text


def test_a_recorded_session_replayed_on_a_new_connection_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Capture a real session between two transports with a relay, then replay it verbatim."""

    async def main() -> None:
        ib = Inbox()
        a, b = make("a"), make("b", ib)
        await a.start()
        await b.start()
        recorded = bytearray()
        relays: list[asyncio.Task[None]] = []

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, rec: bool) -> None:
            while data := await src.read(65536):
                if rec:
                    recorded.extend(data)
                dst.write(data)
            dst.close()

        async def relay(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ur, uw = await asyncio.open_connection(HOST, b.port)
            relays.append(asyncio.create_task(pipe(r, uw, True)))
            relays.append(asyncio.create_task(pipe(ur, w, False)))

        proxy = await asyncio.start_server(relay, HOST, 0)
        via = f"{HOST}:{proxy.sockets[0].getsockname()[1]}"
        for i in range(5):
            a.send(via, i)
        assert await ib.wait_for(5) == [0, 1, 2, 3, 4]
        replay = await RawClient.connect(b.port)
        replay.write(bytes(recorded))
        assert await replay.closed_by_peer()
        assert len(ib.frames) == 5
        assert b.stats.auth_failures == 1
        await replay.close()
        await a.stop()
        proxy.close()
        await asyncio.gather(*relays, return_exceptions=True)
        await proxy.wait_closed()
        await b.stop()

    caplog.set_level(logging.WARNING, logger="hafleet.transport")
    run(main())
    assert "the client failed to prove the cluster key" in caplog.text


# ---- queues, back-pressure, reconnection, shutdown ---------------------------------------------


def test_a_full_queue_drops_the_new_frame_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        a = make("a", queue_limit=10, max_frame=4096, queue_bytes=4096)
        await a.start()
        dead = f"{HOST}:{free_port()}"
        assert all(a.send(dead, i) for i in range(10))
        assert not a.send(dead, 10)
        assert a.stats.drops_queue_full == 1 and a.queued(dead) == 10
        other = f"{HOST}:{free_port()}"
        assert all(a.send(other, b"x" * 1000) for _ in range(4))
        assert not a.send(other, b"x" * 1000)  # the byte limit, before the frame limit
        assert not a.send(other, b"x" * 5000)  # larger than max_frame
        assert a.stats.drops_too_large == 1
        await wait_until(lambda: a.stats.connect_failures >= 2, "connects were attempted")
        assert a.queued(dead) == 10  # frames wait for the peer to come back
        assert await a.close_peer(dead) == 10 and a.queued(dead) == 0
        await a.stop()
        assert not a.send(dead, "after stop")

    caplog.set_level(logging.WARNING, logger="hafleet.transport")
    run(main())
    assert "is full: dropping new frames" in caplog.text
    assert "larger than max_frame" in caplog.text
    assert "cannot connect to" in caplog.text


def test_send_contract_errors() -> None:
    async def main() -> None:
        a = make("a")
        with pytest.raises(RuntimeError):
            a.send("127.0.0.1:1", 1)
        await a.start()
        with pytest.raises(TypeError):
            a.send("127.0.0.1:1", object())
        with pytest.raises(ValueError):
            a.send("no-port", 1)
        await a.stop()

    run(main())


def test_a_peer_that_stops_reading_is_cut_off_and_memory_stays_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        slow = RawServer()
        port = await slow.start()
        limit = 1 << 20
        a = make("a", max_frame=256 << 10, queue_bytes=limit, write_timeout=0.3)
        await a.start()
        dest = f"{HOST}:{port}"
        assert a.send(dest, b"first")
        await asyncio.wait_for(slow.ready.wait(), WAIT)
        refused = 0
        async with asyncio.timeout(WAIT):
            while a.stats.protocol_errors == 0:
                if not a.send(dest, os.urandom(64 << 10)):
                    refused += 1
                peer = a._outbound[dest]
                assert peer.queued_bytes <= limit
                await asyncio.sleep(0)
        assert refused > 0  # the caller saw the back-pressure as drops
        assert a.stats.drops_queue_full == refused
        await a.stop()
        await slow.stop()

    caplog.set_level(logging.WARNING, logger="hafleet.transport")
    run(main())
    assert "peer stopped reading: no progress for 0.3s" in caplog.text


def test_queued_frames_reach_a_listener_that_restarts_on_the_same_port() -> None:
    async def main() -> None:
        ib = Inbox()
        a, b = make("a"), make("b", ib)
        await a.start()
        await b.start()
        port = b.port
        for i in range(100):
            a.send(addr(b), i)
        assert await ib.wait_for(100) == list(range(100))
        await b.stop()
        await wait_until(lambda: not a.is_connected(f"{HOST}:{port}"), "a saw b go")
        for i in range(100, 300):
            assert a.send(f"{HOST}:{port}", i)
        await wait_until(lambda: a.stats.connect_failures >= 1, "a retried while b was down")
        assert a.queued(f"{HOST}:{port}") == 200
        ib2 = Inbox()
        b2 = make("b", ib2, port=port)
        await b2.start()
        assert await ib2.wait_for(200) == list(range(100, 300))
        assert a.stats.reconnects == 1 and a.stats.connects == 2
        await a.stop()
        await b2.stop()

    run(main())


def test_stop_leaves_no_task_and_no_socket_behind() -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main() -> None:
        before_fds = open_fds()
        before_tasks = asyncio.all_tasks()
        ia, ib = Inbox(), Inbox()
        a, b = make("a", ia), make("b", ib)
        await a.start()
        await b.start()
        for i in range(50):
            a.send(addr(b), i)
            b.send(addr(a), i)
        await ia.wait_for(50)
        await ib.wait_for(50)
        a.send(f"{HOST}:{free_port()}", "to nobody")  # an outbound in back-off
        half = await RawClient.connect(b.port)  # an inbound stuck in the handshake
        await wait_until(lambda: len(b._inbound) == 2, "b accepted the raw connection")
        assert open_fds() > before_fds
        await a.stop()
        await b.stop()
        await half.close()
        assert asyncio.all_tasks() == before_tasks
        assert open_fds() == before_fds

    run(main())


def test_stop_right_after_connections_arrive() -> None:
    """A connection whose task has not run yet when stop() comes is closed, not leaked."""

    def closed_by_peer(sock: socket.socket) -> bool:
        sock.settimeout(WAIT)
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True

    async def main() -> None:
        before_fds = len(os.listdir("/proc/self/fd"))
        before_tasks = asyncio.all_tasks()
        b = make("b")
        await b.start()
        # A blocking connect completes in the kernel without running the loop; then step the
        # loop one turn at a time until the transport has registered the connection's task
        # but not yet run it (asyncio runs callbacks in order, so that turn is observable).
        sock = socket.create_connection((HOST, b.port), timeout=WAIT)
        caught = False
        for _ in range(100):
            await asyncio.sleep(0)
            states = [inspect.getcoroutinestate(t.get_coro()) for t in b._inbound]
            if inspect.CORO_CREATED in states:
                caught = True
                break
        assert caught, "never saw the connection registered before its task ran"
        await b.stop()
        assert closed_by_peer(sock)
        sock.close()
        assert asyncio.all_tasks() == before_tasks
        assert len(os.listdir("/proc/self/fd")) == before_fds

    run(main())


# ---- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"key": b"short"}, ValueError),
        ({"key": "a str key that is long enough to pass....."}, TypeError),
        ({"max_frame": 100}, ValueError),
        ({"queue_limit": 0}, ValueError),
        ({"max_frame": 1 << 20, "queue_bytes": 1 << 10}, ValueError),
        ({"backoff_initial": 0.0}, ValueError),
    ],
)
def test_bad_configuration_is_refused(kw: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        make("a", **kw)


def test_bad_advertise_address_is_refused() -> None:
    with pytest.raises(ValueError):
        Transport(
            node_id="a",
            cluster="lab",
            key=KEY,
            bind_host=HOST,
            port=0,
            advertise="nowhere",
            on_frame=Inbox(),
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7400", ("127.0.0.1", 7400)),
        ("node1.lab:1", ("node1.lab", 1)),
        ("[::1]:7400", ("::1", 7400)),
    ],
)
def test_parse_addr(text: str, expected: tuple[str, int]) -> None:
    assert parse_addr(text) == expected


@pytest.mark.parametrize("text", ["", "host", ":7400", "host:", "host:0", "host:65536", "::1:7400"])
def test_parse_addr_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_addr(text)


# ---- floods -------------------------------------------------------------------------------------

FLOODER = "127.0.0.2"  # another loopback address: the flood's source, the real peer is on HOST


async def connect_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(WAIT):
        return await asyncio.open_connection(HOST, port, local_addr=(source, 0))


def test_a_flood_from_one_source_does_not_keep_a_real_peer_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """300 half-open connections and a churn of garbage from 127.0.0.2: a real peer on
    127.0.0.1 still gets through at once, and the log gets a few lines, not one a connection.
    (Before: the flood took all 128 handshake slots for 5 s, the peer was refused until they
    timed out, and every refusal and every close logged a warning.)"""
    delays: list[float] = []

    async def main() -> None:
        ib = Inbox()
        b = make("b", ib)  # the default handshake timeout (5 s)
        await b.start()
        loop = asyncio.get_running_loop()
        half_open = [await connect_from(FLOODER, b.port) for _ in range(300)]
        stop = asyncio.Event()

        async def churn() -> None:
            for _ in range(2000):  # garbage connections, until the peer is through
                if stop.is_set():
                    return
                try:
                    _, w = await connect_from(FLOODER, b.port)
                    w.write(frame(b"GET / HTTP/1.0\r\n"))
                    w.close()
                except OSError:
                    pass
                await asyncio.sleep(0.001)

        churning = loop.create_task(churn())
        try:
            await asyncio.sleep(0.2)  # the flood is on
            assert b.stats.handshakes_refused > 200
            good = make("good")
            await good.start()
            for i in range(3):  # three fresh connections in a row, each through at once
                t0 = loop.time()
                good.send(addr(b), i)
                await ib.wait_for(i + 1, node_id="good")
                delays.append(loop.time() - t0)
                await good.close_peer(addr(b))
            await good.stop()
        finally:
            stop.set()
            await churning
            for _, w in half_open:
                w.transport.abort()
        # the flooder's slots come back: once its connections are gone it can log in again
        await wait_until(lambda: b._pending_handshakes == 0, "the flood's handshakes ended")
        r, w = await connect_from(FLOODER, b.port)
        raw = RawClient(r, w)
        await raw.login("later")
        await raw.close()
        await b.stop()

    caplog.set_level(logging.WARNING, logger="hafleet.transport")
    run(main())
    assert max(delays) < 1.0, delays
    flood_lines = [r.getMessage() for r in caplog.records if FLOODER in r.getMessage()]
    assert 1 <= len(flood_lines) <= 4, flood_lines  # one per kind per 10 s interval


def test_a_throttled_warning_says_how_many_were_held_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hafleet_agent import transport

    monkeypatch.setattr(transport, "WARN_INTERVAL", 0.3)

    async def main() -> None:
        b = make("b", handshake_timeout=5.0)
        await b.start()
        for i in range(1, 6):  # five garbage connections in quick succession: one line
            _, w = await connect_from(FLOODER, b.port)
            w.write(frame(b"garbage"))
            await wait_until(lambda n=i: b.stats.auth_failures == n, f"garbage {i} closed")
            w.close()
        await asyncio.sleep(0.35)  # the interval passes: the next line carries the count
        _, w = await connect_from(FLOODER, b.port)
        w.write(frame(b"garbage"))
        await wait_until(lambda: b.stats.auth_failures == 6, "sixth closed")
        w.close()
        assert b.stats.warnings_suppressed == 4
        await b.stop()

    caplog.set_level(logging.WARNING, logger="hafleet.transport")
    run(main())
    lines = [r.getMessage() for r in caplog.records if FLOODER in r.getMessage()]
    assert len(lines) == 2, lines
    assert "does not speak" in lines[0] and "not logged" not in lines[0]
    assert f"(4 more from {FLOODER} in the" in lines[1]


def test_a_silent_connection_holds_its_slot_two_seconds() -> None:
    async def main() -> None:
        b = make("b")  # handshake_timeout 5 s; the first frame is due within FIRST_FRAME_TIMEOUT
        await b.start()
        loop = asyncio.get_running_loop()
        raw = await RawClient.connect(b.port)
        t0 = loop.time()
        assert await raw.closed_by_peer()
        assert 1.8 < loop.time() - t0 < 4.0
        await raw.close()
        await b.stop()

    run(main())
