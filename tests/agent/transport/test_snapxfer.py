"""Snapshots larger than a frame, sent in chunks (snapxfer.py) between two real transports
on 127.0.0.1 whose ``max_frame`` is far below the snapshot's size.

Each test runs its own event loop under an overall timeout; every wait is a bounded wait
for a condition.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import pytest
from agents import wait_until as wait_until_within

from hafleet_agent.codec import MAX_INDEX, MAX_TERM, encode_message
from hafleet_agent.raft.types import ConfState, Message, MessageType, Snapshot, SnapshotMeta
from hafleet_agent.snapxfer import (
    ACK_KIND,
    CHUNK_KIND,
    PART_FILE,
    SnapshotReceiver,
    SnapshotSender,
)
from hafleet_agent.transport import FRAME_OVERHEAD, PeerInfo, Transport
from hafleet_agent.wal import RECEIVED_SUFFIX, SNAPSHOT_FILE, DiskStorage

KEY = b"correct horse battery staple, 32+ bytes long"
HOST = "127.0.0.1"
WAIT = 10.0
MAX_FRAME = 256 << 10
CHUNK = 64 << 10


def run(coro: Awaitable[None], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


wait_until = partial(wait_until_within, timeout=WAIT)  # the shared poll, this file's bound


def snap_message(size: int, index: int = 40) -> Message:
    data = os.urandom(size)
    meta = SnapshotMeta(index, 3, ConfState(("f", "l"), ("g",)))
    return Message(MessageType.SNAP, to="f", frm="l", term=5, snapshot=Snapshot(meta, data))


class Proxy:
    """The sender's view of its transport; ``mangle(frame)`` may change a chunk or return
    None to lose it (it then never reaches the wire, as if the connection dropped it)."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.max_frame = transport.max_frame
        self.mangle: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda f: f
        self.queued_at_send: list[int] = []

    def queued_bytes(self, addr: str) -> int:
        return self.t.queued_bytes(addr)

    def send(self, addr: str, frame: dict[str, Any]) -> bool:
        self.queued_at_send.append(self.t.queued_bytes(addr))
        out = self.mangle(dict(frame))
        return True if out is None else self.t.send(addr, out)


class Pair:
    """A leader ``l`` with a SnapshotSender and a follower ``f`` with a SnapshotReceiver."""

    def __init__(
        self,
        tmp: Path,
        *,
        follower_answers: bool = True,
        prepare: Callable[[Snapshot], Path] | None = None,
        **sender_kw: Any,
    ) -> None:
        self.tmp = tmp
        self.follower_answers = follower_answers
        self.prepare = prepare
        self.prepared: list[Path | None] = []
        self.sender_kw = sender_kw
        self.tasks: list[asyncio.Task[None]] = []
        self.delivered: list[Message] = []
        self.failures: list[str] = []
        self.leader = True
        self.arrivals: list[str] = []  # kinds of the frames f received, in order

    async def __aenter__(self) -> Pair:
        self.lt = Transport(
            node_id="l",
            cluster="lab",
            key=KEY,
            bind_host=HOST,
            port=0,
            advertise=None,
            on_frame=self._on_leader_frame,
            max_frame=MAX_FRAME,
        )
        self.ft = Transport(
            node_id="f",
            cluster="lab",
            key=KEY,
            bind_host=HOST,
            port=0,
            advertise=None,
            on_frame=self._on_follower_frame,
            max_frame=MAX_FRAME,
        )
        await self.lt.start()
        await self.ft.start()
        self.faddr = f"{HOST}:{self.ft.port}"
        self.proxy = Proxy(self.lt)
        kw = {
            "chunk_bytes": CHUNK,
            "inline_max": 32 << 10,
            "stall_timeout": 2.0,
            "ack_timeout": 5.0,
            "retry_backoff": 0.05,
            **self.sender_kw,
        }
        self.sender = SnapshotSender(
            transport=self.proxy,
            cluster_id=lambda: "cid",
            spawn=self.spawn,
            still_leader=lambda to, term: self.leader,
            report_failure=self.failures.append,
            **kw,
        )
        self.receiver = SnapshotReceiver(
            node_id="f",
            data_dir=self.tmp,
            deliver=self._deliver,
            reply=lambda addr, body: self.ft.send(addr, body),
            spawn=self.spawn,
            prepare=self.prepare,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.receiver.close()
        await self.lt.stop()
        await self.ft.stop()

    def _deliver(self, peer: PeerInfo, m: Message, prepared: Path | None) -> None:
        self.delivered.append(m)
        self.prepared.append(prepared)

    def spawn(self, coro: Any, name: str) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    def _on_leader_frame(self, peer: PeerInfo, obj: Any) -> None:
        if obj.get("k") == ACK_KIND:
            self.sender.on_ack(peer.node_id, obj)

    def _on_follower_frame(self, peer: PeerInfo, obj: Any) -> None:
        self.arrivals.append(obj.get("k"))
        if obj.get("k") == CHUNK_KIND and self.follower_answers:
            self.receiver.on_chunk(peer, obj)

    def part_file(self) -> Path:
        return self.tmp / PART_FILE


def test_a_snapshot_many_frames_long_arrives_whole_and_paced(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path) as p:
            m = snap_message(3 << 20)  # 12 times the frame limit
            assert not p.sender.fits_one_frame(m.snapshot)
            assert p.sender.fits_one_frame(snap_message(16 << 10).snapshot)
            assert not p.sender.busy()
            p.sender.send(p.faddr, m)
            assert p.sender.active("f") and p.sender.busy(settle=0)
            # small frames keep flowing to the same peer while the snapshot streams
            beats = 0
            while not p.delivered and beats < 5000:
                assert p.lt.send(p.faddr, {"k": "beat", "n": beats})
                beats += 1
                await asyncio.sleep(0.001)
            await wait_until(lambda: p.delivered, "the snapshot delivered")
            assert p.delivered == [m]  # the very message the core made, rebuilt
            await wait_until(lambda: p.sender.stats["completed"] == 1, "the ack")
            assert not p.sender.active("f") and p.failures == []
            # the leader holds its compaction back a while after a transfer, not for ever
            assert p.sender.busy() and not p.sender.busy(settle=0)
            assert p.sender.stats["chunks_sent"] == (3 << 20) // CHUNK
            assert p.sender.stats["checksums"] == 1
            assert not p.part_file().exists()
            # paced: a chunk is queued only while less than one chunk waits for the peer
            assert max(p.proxy.queued_at_send) < CHUNK + 4096, max(p.proxy.queued_at_send)
            # and interleaved: beats reached f before the last chunk did
            last_chunk = len(p.arrivals) - 1 - p.arrivals[::-1].index(CHUNK_KIND)
            assert "beat" in p.arrivals[:last_chunk], "beats waited for the whole snapshot"
            # the checksum is cached: a second transfer of the same snapshot reuses it
            p.sender.send(p.faddr, m)
            await wait_until(lambda: p.sender.stats["completed"] == 2, "the second ack")
            assert p.sender.stats["checksums"] == 1 and len(p.delivered) == 2

    run(main())


def test_the_same_snapshot_asked_again_while_on_its_way_is_not_sent_again(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with Pair(tmp_path) as p:
            m = snap_message(1 << 20)
            for _ in range(5):
                p.sender.send(p.faddr, m)
            await wait_until(lambda: p.sender.stats["completed"] == 1, "the ack")
            assert p.sender.stats["started"] == 1 and len(p.delivered) == 1
            assert p.sender.stats["chunks_sent"] == (1 << 20) // CHUNK
            # a newer snapshot replaces the one on its way, even one whose task has not run
            # yet (asked in the same loop cycle): nothing of the older one is sent
            p.sender.send(p.faddr, snap_message(1 << 20, index=50))
            p.sender.send(p.faddr, newer := snap_message(1 << 20, index=60))
            await wait_until(lambda: p.sender.stats["completed"] == 2, "the newer one")
            assert p.delivered[-1] == newer
            assert p.sender.stats["chunks_sent"] == 2 * (1 << 20) // CHUNK
            assert [d.snapshot.meta.index for d in p.delivered] == [40, 60]

    run(main())


def test_a_corrupted_chunk_fails_the_checksum_is_reported_and_retried(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path) as p:

            def flip(frame: dict[str, Any]) -> dict[str, Any]:
                if frame["off"] == 2 * CHUNK:
                    data = bytearray(frame["data"])
                    data[100] ^= 1
                    frame["data"] = bytes(data)
                return frame

            p.proxy.mangle = flip
            m = snap_message(1 << 20)
            p.sender.send(p.faddr, m)
            await wait_until(lambda: p.failures, "the failure reported")
            assert p.failures == ["f"] and p.delivered == []
            assert p.receiver.stats["refused"] == 1 and not p.part_file().exists()
            assert not p.sender.active("f")
            # the core asks again: after the back-off the next attempt goes through
            p.proxy.mangle = lambda f: f
            started = p.sender.stats["started"]

            def retried() -> bool:
                p.sender.send(p.faddr, m)
                return p.sender.stats["started"] > started

            await wait_until(retried, "a new attempt after the back-off")
            await wait_until(lambda: p.delivered, "the snapshot delivered")
            assert p.delivered == [m] and p.failures == ["f"]

    run(main())


def test_a_lost_chunk_ends_the_transfer_with_one_refusal(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path) as p:
            p.proxy.mangle = lambda f: None if f["off"] == 3 * CHUNK else f
            p.sender.send(p.faddr, snap_message(1 << 20))
            await wait_until(lambda: p.failures, "the failure reported")
            assert p.delivered == [] and p.failures == ["f"]
            # every later chunk of that transfer is dropped without another answer
            await wait_until(
                lambda: p.arrivals.count(CHUNK_KIND) == (1 << 20) // CHUNK - 1, "all chunks"
            )
            assert p.receiver.stats["refused"] == 1 and not p.part_file().exists()

    run(main())


def test_an_unreachable_peer_is_reported_after_the_stall_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path, stall_timeout=0.3) as p:
            await p.ft.stop()  # nobody listens there any more
            began = time.monotonic()
            p.sender.send(p.faddr, snap_message(1 << 20))
            await wait_until(lambda: p.failures, "the failure reported")
            assert time.monotonic() - began >= 0.3
            assert p.sender.stats["chunks_sent"] <= 2  # it did not pile the state up

    run(main())


def test_no_answer_after_the_last_chunk_is_a_failure(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path, follower_answers=False, ack_timeout=0.3) as p:
            p.sender.send(p.faddr, snap_message(512 << 10))
            await wait_until(lambda: p.failures, "the failure reported")
            assert p.arrivals.count(CHUNK_KIND) == (512 << 10) // CHUNK

    run(main())


def test_a_leader_that_lost_its_term_stops_quietly(tmp_path: Path) -> None:
    async def main() -> None:
        async with Pair(tmp_path) as p:

            def depose(frame: dict[str, Any]) -> dict[str, Any]:
                if frame["off"] == CHUNK:
                    p.leader = False
                return frame

            p.proxy.mangle = depose
            p.sender.send(p.faddr, snap_message(1 << 20))
            await wait_until(lambda: not p.sender.active("f"), "the transfer to end")
            assert p.sender.stats["chunks_sent"] == 2 and p.failures == []
            assert p.delivered == []

    run(main())


def test_the_receiver_refuses_malformed_and_stray_chunks(tmp_path: Path) -> None:
    replies: list[tuple[str, dict[str, Any]]] = []
    delivered: list[Message] = []
    r = SnapshotReceiver(
        node_id="f",
        data_dir=tmp_path,
        deliver=lambda peer, m, prepared: delivered.append(m),
        reply=lambda addr, body: replies.append((addr, body)),
        spawn=lambda coro, name: coro.close(),
    )
    peer = PeerInfo("l", "lab", "cid", "127.0.0.1:7400", "127.0.0.1:5555", False)
    good = {
        "x": "t1",
        "term": 5,
        "index": 9,
        "sterm": 2,
        "total": 10,
        "sum": bytes(32),
        "off": 0,
        "data": b"12345",
        "voters": ["l", "f"],
        "learners": [],
    }
    for bad in (
        {"off": -1},
        {"off": True},
        {"data": "text"},
        {"sum": b"short"},
        {"voters": ["l", "l"]},
        {"x": ""},
        # terms and indexes bounded as in a Raft frame: a term of 2**64-1 would leave the
        # core no term + 1 (see codec.MAX_TERM)
        {"term": (1 << 64) - 1},
        {"term": MAX_TERM + 1},
        {"sterm": MAX_TERM + 1},
        {"index": MAX_INDEX + 1},
    ):
        with pytest.raises((ValueError, TypeError, KeyError)):
            r.on_chunk(peer, {**good, **bad})
    with pytest.raises(KeyError):
        r.on_chunk(peer, {k: v for k, v in good.items() if k != "total"})
    assert replies == []
    # a chunk of no transfer in progress: one refusal per transfer id
    r.on_chunk(peer, {**good, "x": "t0", "off": 5})
    r.on_chunk(peer, {**good, "x": "t0", "off": 10})
    assert [b["x"] for _, b in replies] == ["t0"] and replies[0][1]["ok"] is False
    # a chunk overrunning the total ends the transfer
    r.on_chunk(peer, good)
    assert (tmp_path / PART_FILE).exists()
    r.on_chunk(peer, {**good, "off": 5, "data": b"123456"})
    assert [b["x"] for _, b in replies] == ["t0", "t1"]
    assert "overruns" in replies[-1][1]["reason"]
    assert not (tmp_path / PART_FILE).exists() and delivered == []
    # a leftover part file (a restart mid-transfer) is removed at start
    (tmp_path / PART_FILE).write_bytes(b"partial")
    SnapshotReceiver(
        node_id="f",
        data_dir=tmp_path,
        deliver=lambda peer, m, prepared: None,
        reply=lambda addr, body: None,
        spawn=lambda coro, name: coro.close(),
    )
    assert not (tmp_path / PART_FILE).exists()
    r.close()


def test_what_fits_one_frame_is_what_the_transport_takes_in_one_frame() -> None:
    """The boundary of the single-frame path (the only one an agent of the previous
    version takes): anything fits_one_frame accepts goes through send() as one frame."""

    class Limits:
        max_frame = MAX_FRAME

    sender = SnapshotSender(
        transport=Limits(),
        cluster_id=lambda: None,
        spawn=lambda coro, name: coro.close(),
        still_leader=lambda to, term: True,
        report_failure=lambda to: None,
    )
    ids = tuple(f"node-{i:03d}-" + "x" * 240 for i in range(40))  # long ids count too
    for voters in ((), ids):
        meta = SnapshotMeta(10**12, 10**9, ConfState(voters, ("learner",)))
        room = sender.inline_max - sum(len(n.encode()) + 4 for n in (*voters, "learner"))
        for size, fits in ((room, True), (room + 1, False)):
            m = Message(
                MessageType.SNAP,
                to="f" * 255,
                frm="l" * 255,
                term=10**9,
                snapshot=Snapshot(meta, bytes(size)),
            )
            assert sender.fits_one_frame(m.snapshot) is fits
            frame = {"k": "raft", "cid": "c" * 128, "m": encode_message(m)}
            wire = len(msgpack.packb(frame, use_bin_type=True)) + FRAME_OVERHEAD - 4
            if fits:
                assert wire <= MAX_FRAME, wire - MAX_FRAME


def test_the_receiver_refuses_a_snapshot_the_disk_cannot_hold(tmp_path: Path) -> None:
    replies: list[dict[str, Any]] = []
    free = {"bytes": (64 << 20) + 99}
    r = SnapshotReceiver(
        node_id="f",
        data_dir=tmp_path,
        deliver=lambda peer, m, prepared: None,
        reply=lambda addr, body: replies.append(body),
        spawn=lambda coro, name: coro.close(),
        free_bytes=lambda path: free["bytes"],
    )
    peer = PeerInfo("l", "lab", "cid", "127.0.0.1:7400", "127.0.0.1:5555", False)
    chunk = {
        "term": 5,
        "index": 9,
        "sterm": 2,
        "total": 100,
        "sum": bytes(32),
        "off": 0,
        "data": b"x" * 10,
        "voters": ["l", "f"],
        "learners": [],
    }
    r.on_chunk(peer, {**chunk, "x": "t1"})  # 100 bytes + the 64 MiB reserve > free
    assert [(b["x"], b["ok"]) for b in replies] == [("t1", False)]
    assert "not enough disk space" in replies[0]["reason"]
    assert not (tmp_path / PART_FILE).exists()
    free["bytes"] += 1
    r.on_chunk(peer, {**chunk, "x": "t2"})  # fits exactly
    assert len(replies) == 1 and (tmp_path / PART_FILE).exists()
    r.close()
    assert not (tmp_path / PART_FILE).exists()


def test_the_receiver_has_the_storage_copy_written_off_the_loop(tmp_path: Path) -> None:
    """With ``prepare`` (the agent's DiskStorage.prepare_snapshot), the snapshot file the
    storage will put in force is written in a worker thread before the core gets the
    message; installing it gives what save_snapshot would have."""
    store = DiskStorage.open(tmp_path / "store")
    other = DiskStorage.open(tmp_path / "other")

    async def main() -> None:
        prepare = partial(store.prepare_snapshot, suffix=RECEIVED_SUFFIX)
        async with Pair(tmp_path, prepare=prepare) as p:
            m = snap_message(1 << 20)
            p.sender.send(p.faddr, m)
            await wait_until(lambda: p.delivered, "the snapshot delivered")
            (path,) = p.prepared
            assert path == tmp_path / "store" / f"{SNAPSHOT_FILE}{RECEIVED_SUFFIX}-40-3"
            assert store.install_prepared_snapshot(p.delivered[0].snapshot, path)
            other.save_snapshot(m.snapshot)

    try:
        run(main())
        assert store.snapshot == other.snapshot
        assert (tmp_path / "store" / SNAPSHOT_FILE).read_bytes() == (
            tmp_path / "other" / SNAPSHOT_FILE
        ).read_bytes()
    finally:
        store.close()
        other.close()
