"""A Raft message that comes again the same (a heartbeat and its answer, while nothing is
written) is encoded once by its sender and decoded once by its receiver (node/outbox.py,
node/inbox.py): the bytes and the message are kept per peer. What a fresh decoding would
check still holds for a kept one: its sender, the bound on its term."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from test_agent_guards import peer_info, run_agent

import hafleet_agent.node.inbox as inbox_mod
import hafleet_agent.node.outbox as outbox_mod
from hafleet_agent.codec import MAX_TERM_JUMP, CodecError, decode_message, encode_message
from hafleet_agent.node.node import Node
from hafleet_agent.node.outbox import Outbox
from hafleet_agent.node.peers import Peer
from hafleet_agent.raft.types import Entry, EntryType, Message, MessageType
from hafleet_agent.state import StateMachine


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls = [0]
    real = getattr(module, name)

    def wrapper(*args: Any) -> Any:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_the_same_bytes_again_are_decoded_once_and_checked_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = counting(monkeypatch, inbox_mod, "decode_message")

    async def body(agent: Node) -> None:
        assert agent.raw is not None
        cid, me, term = agent.cluster_id, agent.id, agent.raw.term
        stepped: list[Message] = []
        real_step = agent.raw.step
        monkeypatch.setattr(agent.raw, "step", lambda m: (stepped.append(m), real_step(m)))

        def frame(m: Message) -> dict[str, Any]:
            return {"k": "raft", "cid": cid, "m": encode_message(m)}

        answer = Message(type=MessageType.HEARTBEAT_RESP, to=me, frm="p2", term=term)
        for _ in range(3):
            agent.inbox.on_frame(peer_info("p2", cid), frame(answer))
        assert decodes[0] == 1 and stepped == [answer] * 3
        # the same bytes from another peer: its own decoding, and refused (not its sender)
        agent.inbox.on_frame(peer_info("p3", cid), frame(answer))
        assert decodes[0] == 2 and len(stepped) == 3
        assert agent.frames_dropped.get("Raft message of another sender") == 1
        # a term past the bound is refused when kept as when fresh
        too_far = term + MAX_TERM_JUMP + 1
        far = Message(type=MessageType.HEARTBEAT_RESP, to=me, frm="p2", term=too_far)
        for _ in range(2):
            agent.inbox.on_frame(peer_info("p2", cid), frame(far))
        assert decodes[0] == 3 and agent.frames_dropped.get("term too far ahead") == 2
        # bytes that differ are decoded afresh; a long message is not kept
        entries = tuple(Entry(term, i, EntryType.NORMAL, b"x" * 100) for i in (1, 2))
        long = Message(type=MessageType.APP_RESP, to=me, frm="p2", term=term, entries=entries)
        for _ in range(2):
            agent.inbox.on_frame(peer_info("p2", cid), frame(long))
        assert decodes[0] == 5
        assert agent.is_leader() and not agent._stop.is_set()

    run_agent(tmp_path, body)


class Sent:
    """The transport's ``send`` and ``send_packed``, recorded; ``take_back`` too."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, Any]] = []
        self.packed: list[bytes] = []
        self.taken_back: list[tuple[str, bytes]] = []

    def send(self, addr: str, obj: Any, *, within: float | None = None) -> bool:
        self.frames.append((addr, obj))
        return True

    def send_packed(self, addr: str, payload: bytes, *, within: float | None = None) -> bool:
        self.packed.append(payload)
        return self.send(addr, msgpack.unpackb(payload))

    def take_back(self, addr: str, payload: bytes) -> None:
        self.taken_back.append((addr, payload))


def test_the_same_message_again_is_encoded_once_per_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    encodes = counting(monkeypatch, outbox_mod, "encode_message")
    peers = {n: Peer(n, f"127.0.0.9:{port}") for n, port in (("n2", 7402), ("n3", 7403))}
    box = Outbox(StateMachine(), peers, raw=lambda: None, cluster_id=lambda: "cid")
    sent = Sent()
    box.start(sent, None)  # type: ignore[arg-type]
    beat = {n: Message(type=MessageType.HEARTBEAT, to=n, frm="n1", term=4, commit=9) for n in peers}
    for _ in range(3):
        for n in peers:
            box.send_raft(beat[n])
    assert encodes[0] == 2  # once per peer
    later = Message(type=MessageType.HEARTBEAT, to="n2", frm="n1", term=4, commit=10)
    box.send_raft(later)
    box.send_raft(beat["n2"])  # the one before is kept no more
    entry = (Entry(4, 10, EntryType.NORMAL, b"v"),)
    append = Message(type=MessageType.APP, to="n2", frm="n1", term=4, index=9, entries=entry)
    box.send_raft(append)
    box.send_raft(append)  # a message with entries is encoded every time
    assert encodes[0] == 6
    got = [(addr, decode_message(obj["m"])) for addr, obj in sent.frames]
    want = [(peers[n].raft_addr, beat[n]) for _ in range(3) for n in peers]
    want += [("127.0.0.9:7402", m) for m in (later, beat["n2"], append, append)]
    assert got == want
    assert all(obj["k"] == "raft" and obj["cid"] == "cid" for _, obj in sent.frames)


def test_answers_sent_ahead_are_queued_now_and_taken_back_in_reverse() -> None:
    """``send_ahead`` (a follower's answers while its log write is under way) queues them
    as ``send_raft`` would; what it returns takes back exactly those frames, the last first
    (node/walwriter.py's ``write_inline`` calls it when the sync fails)."""
    peers = {n: Peer(n, f"127.0.0.9:{port}") for n, port in (("n1", 7401), ("n3", 7403))}
    box = Outbox(StateMachine(), peers, raw=lambda: None, cluster_id=lambda: "cid")
    sent = Sent()
    box.start(sent, None)  # type: ignore[arg-type]
    answers = [
        Message(type=MessageType.APP_RESP, to="n1", frm="n2", term=4, index=10),
        Message(type=MessageType.VOTE_RESP, to="n3", frm="n2", term=5),
        Message(type=MessageType.APP_RESP, to="n9", frm="n2", term=4, index=10),  # no address
    ]
    take_back = box.send_ahead(answers)
    assert [(addr, decode_message(obj["m"])) for addr, obj in sent.frames] == [
        ("127.0.0.9:7401", answers[0]),
        ("127.0.0.9:7403", answers[1]),
    ]
    assert sent.taken_back == []
    take_back()
    assert sent.taken_back == [
        ("127.0.0.9:7403", sent.packed[1]),
        ("127.0.0.9:7401", sent.packed[0]),
    ]


def test_answers_sent_ahead_before_a_failing_one_are_taken_back() -> None:
    peers = {"n1": Peer("n1", "127.0.0.9:7401")}
    box = Outbox(StateMachine(), peers, raw=lambda: None, cluster_id=lambda: "cid")
    sent = Sent()
    box.start(sent, None)  # type: ignore[arg-type]
    good = Message(type=MessageType.APP_RESP, to="n1", frm="n2", term=4, index=10)
    bad = Message(type=MessageType.APP_RESP, to="n1", frm="n2", term=-1, index=10)
    with pytest.raises(CodecError, match="term"):
        box.send_ahead([good, bad])
    assert sent.taken_back == [("127.0.0.9:7401", sent.packed[0])]
