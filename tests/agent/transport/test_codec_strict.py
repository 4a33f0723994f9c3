"""The codec's checks that hostile-input fuzzing reaches only by luck: nil ids, the element
counts of an entry and a snapshot, entry types through message_from_wire, and what the
encoder refuses in a Message built by hand."""

from __future__ import annotations

import msgpack
import pytest

from hafleet_agent.codec import CodecError, decode_message, encode_message, message_from_wire
from hafleet_agent.raft import types as rt
from hafleet_agent.raft.types import ConfState, Entry, Message, MessageType, Snapshot


def wire_of(m: Message) -> list:
    return msgpack.unpackb(encode_message(m))


def test_nil_ids_go_both_ways() -> None:
    m = Message(MessageType.HEARTBEAT, to=None, frm=None, term=3)
    assert decode_message(encode_message(m)) == m
    only_to = Message(MessageType.HEARTBEAT, to="b", frm=None)
    assert decode_message(encode_message(only_to)) == only_to
    only_frm = Message(MessageType.HEARTBEAT, to=None, frm="a")
    assert decode_message(encode_message(only_frm)) == only_frm


def test_an_entry_or_a_snapshot_with_one_element_too_many_is_too_long() -> None:
    base = Message(
        MessageType.APP,
        to="b",
        frm="a",
        entries=(Entry(1, 1),),
        snapshot=Snapshot(rt.SnapshotMeta(1, 1, ConfState(("a",)))),
    )
    wire = wire_of(base)
    wire[6][0].append(b"")
    with pytest.raises(CodecError, match="an entry: array of 5 elements is too long"):
        decode_message(msgpack.packb(wire))
    wire = wire_of(base)
    wire[10].append(b"")
    with pytest.raises(CodecError, match="a snapshot: array of 6 elements is too long"):
        decode_message(msgpack.packb(wire))
    wire = wire_of(base)
    wire[10] = wire[10][:4]
    with pytest.raises(CodecError, match="a snapshot is nil or an array of 5 elements"):
        decode_message(msgpack.packb(wire))


def test_message_from_wire_keeps_the_entry_type() -> None:
    m = Message(MessageType.APP, to="b", frm="a", entries=(Entry(2, 5, rt.EntryType.CONF_CHANGE),))
    decoded = message_from_wire(wire_of(m))
    assert decoded.entries[0].type is rt.EntryType.CONF_CHANGE and decoded == m


@pytest.mark.parametrize(
    "bad",
    [
        Entry(1, 1, 0),  # type: ignore[arg-type]  # an int, not an rt.EntryType
        (1, 1, rt.EntryType.NORMAL, b""),
    ],
)
def test_the_encoder_refuses_what_is_not_an_entry(bad: object) -> None:
    m = Message(MessageType.APP, to="b", frm="a", entries=(bad,))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="not an Entry"):
        encode_message(m)


def test_the_encoder_refuses_a_malformed_snapshot() -> None:
    for snap, match in (
        (Snapshot(meta=(1, 1)), "not a Snapshot"),  # type: ignore[arg-type]
        ((rt.SnapshotMeta(1, 1), b""), "not a Snapshot"),
        (Snapshot(rt.SnapshotMeta(1, 1, ConfState(("a",), None))), "must be sequences"),  # type: ignore[arg-type]
        (Snapshot(rt.SnapshotMeta(1, 1, ConfState(None, ("a",)))), "must be sequences"),  # type: ignore[arg-type]
        (Snapshot(rt.SnapshotMeta(1, 1, ("a",))), "not a ConfState"),  # type: ignore[arg-type]
    ):
        m = Message(MessageType.SNAP, to="b", frm="a", snapshot=snap)  # type: ignore[arg-type]
        with pytest.raises(CodecError, match=match):
            encode_message(m)


def test_entry_data_is_bin_on_the_wire() -> None:
    m = Message(MessageType.APP, to="b", frm="a", entries=(Entry(1, 1, data=b"\xff\x00"),))
    data = encode_message(m)
    assert b"\xc4\x02\xff\x00" in data  # bin 8, not str
    assert msgpack.unpackb(data, raw=False)[6][0][3] == b"\xff\x00"
