"""The codec's caps at their exact values, cheaply: with the caps lowered (the checks read
them at call time), the largest legal count of entries, of members and of id bytes must
pass both ways and one more must be refused, in the byte reader, in the encoder and in
message_from_wire. test_codec.py checks the same at the real caps (65,536), which takes
seconds; make mutation runs these instead (docs/mutation.md)."""

from __future__ import annotations

import msgpack
import pytest

from hafleet_agent import codec
from hafleet_agent.codec import (
    CodecError,
    decode_message,
    encode_message,
    message_from_wire,
    message_to_wire,
)
from hafleet_agent.raft import types as rt
from hafleet_agent.raft.types import ConfState, Entry, Message, MessageType, Snapshot

CAP = 3


@pytest.fixture(autouse=True)
def small_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_ENTRIES", CAP)
    monkeypatch.setattr(codec, "MAX_ID_BYTES", 5)


def app(entries: int = 0, voters: int = 0, learners: int = 0) -> Message:
    snap = None
    if voters or learners:
        conf = ConfState(
            tuple(f"v{i}" for i in range(voters)), tuple(f"l{i}" for i in range(learners))
        )
        snap = Snapshot(rt.SnapshotMeta(9, 2, conf), b"data")
    return Message(
        MessageType.APP,
        to="b",
        frm="a",
        term=2,
        entries=tuple(Entry(2, i + 1, rt.EntryType.NORMAL, b"x") for i in range(entries)),
        snapshot=snap,
    )


def raw(m: Message) -> bytes:
    """The bytes of ``m`` packed without the encoder's checks."""
    return msgpack.packb(to_wire_unchecked(m), use_bin_type=True)


def to_wire_unchecked(m: Message) -> list:
    snap = None
    if m.snapshot is not None:
        cs = m.snapshot.meta.conf_state
        snap = [9, 2, list(cs.voters), list(cs.learners), m.snapshot.data]
    entries = [[e.term, e.index, int(e.type), e.data] for e in m.entries]
    return [int(m.type), m.to, m.frm, m.term, 0, 0, entries, 0, False, 0, snap, b""]


def test_entries_up_to_the_cap_and_not_one_more() -> None:
    full = app(entries=CAP)
    assert decode_message(encode_message(full)) == full
    assert message_from_wire(message_to_wire(full)) == full
    over = app(entries=CAP + 1)
    with pytest.raises(CodecError, match="more than 3 entries"):
        encode_message(over)
    with pytest.raises(CodecError, match="entries"):
        decode_message(raw(over))
    with pytest.raises(CodecError, match="entries must be an array"):
        message_from_wire(to_wire_unchecked(over))


@pytest.mark.parametrize(("voters", "learners"), [(CAP, 0), (0, CAP), (2, 1), (1, 2)])
def test_members_up_to_the_cap(voters: int, learners: int) -> None:
    full = app(voters=voters, learners=learners)
    assert decode_message(encode_message(full)) == full
    assert message_from_wire(message_to_wire(full)) == full


@pytest.mark.parametrize(("voters", "learners"), [(CAP + 1, 0), (0, CAP + 1), (2, 2)])
def test_members_beyond_the_cap_are_refused(voters: int, learners: int) -> None:
    over = app(voters=voters, learners=learners)
    with pytest.raises(CodecError, match="more than 3 members"):
        encode_message(over)
    with pytest.raises(CodecError):
        decode_message(raw(over))
    with pytest.raises(CodecError, match="more than 3 members"):
        message_from_wire(to_wire_unchecked(over))


def test_node_ids_up_to_their_byte_limit() -> None:
    longest = Message(MessageType.HEARTBEAT, to="12345", frm="ééa")  # 5 bytes each
    assert decode_message(encode_message(longest)) == longest
    for to in ("123456", "ééé"):
        m = Message(MessageType.HEARTBEAT, to=to, frm="a")
        with pytest.raises(CodecError, match=r"to: node id must have 1\.\.5 bytes"):
            encode_message(m)
        with pytest.raises(CodecError, match=r"to: node id must have 1\.\.5 bytes"):
            decode_message(raw(m))
    voter = app(voters=1)
    wire = to_wire_unchecked(voter)
    wire[10][2] = ["123456"]
    with pytest.raises(CodecError, match="voter: node id"):
        message_from_wire(wire)
    wire[10][2] = ["12345"]
    assert message_from_wire(wire).snapshot.meta.conf_state.voters == ("12345",)


def test_message_from_wire_takes_lists_only() -> None:
    good = to_wire_unchecked(app(entries=1, voters=1))
    assert message_from_wire(good) == app(entries=1, voters=1)
    with pytest.raises(CodecError, match="array of 12"):
        message_from_wire(tuple(good))
    with pytest.raises(CodecError, match="array of 12"):
        message_from_wire(good[:11])
    for index, bad in (
        (6, tuple(good[6])),  # entries as a tuple
        (10, tuple(good[10])),  # the snapshot as a tuple
        (10, good[10][:4]),  # a snapshot of four elements
    ):
        wire = list(good)
        wire[index] = bad
        with pytest.raises(CodecError):
            message_from_wire(wire)
    for entry in (tuple(good[6][0]), good[6][0][:3], [*good[6][0], b""]):
        wire = list(good)
        wire[6] = [entry]
        with pytest.raises(CodecError, match="an entry is an array of 4"):
            message_from_wire(wire)
    wire = list(good)
    wire[10] = [9, 2, ("v0",), [], b""]
    with pytest.raises(CodecError, match="voters and learners must be arrays"):
        message_from_wire(wire)
    wire[10] = [9, 2, [], ("l0",), b""]
    with pytest.raises(CodecError, match="voters and learners must be arrays"):
        message_from_wire(wire)
    wire = list(good)
    wire[6] = [[2, 1, 7, b"x"]]
    with pytest.raises(CodecError, match="unknown entry type 7"):
        message_from_wire(wire)


def test_an_array_count_may_equal_the_bytes_left_but_not_exceed_them() -> None:
    # entries as array16 of 3, each entry a fixarray: the count is checked against the input
    m = app(entries=CAP)
    data = raw(m)
    assert decode_message(data) == m
    head = msgpack.packb(to_wire_unchecked(m)[:6], use_bin_type=True)[1:]  # without 0x9c
    body = b"\x9c" + head + b"\xdc\x00\x04"  # 4 entries announced, the input ends
    with pytest.raises(CodecError, match="too long"):
        decode_message(body)


FIELDS = {3: "term", 4: "log_term", 5: "index", 7: "commit", 9: "reject_hint"}


@pytest.mark.parametrize("position", sorted(FIELDS))
def test_message_from_wire_bounds_each_number_as_decoding_does(position: int) -> None:
    wire = to_wire_unchecked(app(entries=1, voters=1))
    wire[position] = codec.MAX_TERM  # MAX_TERM == MAX_INDEX
    assert getattr(message_from_wire(wire), FIELDS[position]) == codec.MAX_TERM
    assert getattr(decode_message(msgpack.packb(wire)), FIELDS[position]) == codec.MAX_TERM
    wire[position] = codec.MAX_TERM + 1
    with pytest.raises(CodecError, match=f"{FIELDS[position]}: .* out of range"):
        message_from_wire(wire)
    with pytest.raises(CodecError, match=f"{FIELDS[position]}: .* out of range"):
        decode_message(msgpack.packb(wire))
    wire[position] = True
    with pytest.raises(CodecError, match="expected an integer"):
        message_from_wire(wire)


@pytest.mark.parametrize(
    ("path", "what"),
    [((6, 0, 0), "entry term"), ((6, 0, 1), "entry index"), ((10, 0), "snapshot index"),
     ((10, 1), "snapshot term")],
)  # fmt: skip
def test_message_from_wire_bounds_nested_numbers(path: tuple[int, ...], what: str) -> None:
    wire = to_wire_unchecked(app(entries=1, voters=1))
    *outer, last = path
    holder = wire
    for i in outer:
        holder = holder[i]
    holder[last] = codec.MAX_TERM
    message_from_wire(wire)
    decode_message(msgpack.packb(wire))
    holder[last] = codec.MAX_TERM + 1
    with pytest.raises(CodecError, match=f"{what}: .* out of range"):
        message_from_wire(wire)
    with pytest.raises(CodecError, match=f"{what}: .* out of range"):
        decode_message(msgpack.packb(wire))


def test_message_from_wire_checks_the_other_fields() -> None:
    good = to_wire_unchecked(app(entries=1, voters=1))
    m = message_from_wire(good)
    assert (m.type, m.to, m.frm, m.reject, m.context) == (MessageType.APP, "b", "a", False, b"")
    assert m.entries == (Entry(2, 1, rt.EntryType.NORMAL, b"x"),)
    assert m.snapshot == Snapshot(rt.SnapshotMeta(9, 2, ConfState(("v0",), ())), b"data")
    for position, bad, match in (
        (0, int(MessageType.HUP), "unknown or local message type"),
        (0, 9999, "unknown or local message type"),
        (1, b"b", "to: expected a node id"),
        (2, "", "frm: node id must have"),
        (8, 0, "reject: expected a bool"),
        (11, "c", "context: expected bytes"),
        (11, bytearray(b"c"), "context: expected bytes"),
    ):
        wire = list(good)
        wire[position] = bad
        with pytest.raises(CodecError, match=match):
            message_from_wire(wire)
    wire = list(good)
    wire[1] = wire[2] = None
    wire[8] = True
    wire[11] = b"ctx"
    m = message_from_wire(wire)
    assert (m.to, m.frm, m.reject, m.context) == (None, None, True, b"ctx")
    wire = list(good)
    wire[6] = [[2, 1, 0, "x"]]
    with pytest.raises(CodecError, match="entry data: expected bytes"):
        message_from_wire(wire)
    wire = list(good)
    wire[10] = [9, 2, ["v0"], ["v0"], b""]
    with pytest.raises(CodecError, match="duplicate member"):
        message_from_wire(wire)
    wire[10] = [9, 2, ["v0"], [], "data"]
    with pytest.raises(CodecError, match="snapshot data: expected bytes"):
        message_from_wire(wire)
