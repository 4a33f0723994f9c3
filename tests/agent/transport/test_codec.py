"""The Raft message codec: exact round trips, and nothing but CodecError on bad input."""

from __future__ import annotations

import contextlib
import gc
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafleet_agent.codec import (
    MAX_ENTRIES,
    MAX_ID_BYTES,
    MAX_INDEX,
    MAX_TERM,
    MAX_U64,
    WIRE_TYPES,
    CodecError,
    decode_message,
    encode_message,
    message_from_wire,
    message_to_wire,
)
from hafleet_agent.raft.types import (
    LOCAL_MESSAGES,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

# What decodes: terms and indexes up to 2**62 (MAX_TERM == MAX_INDEX); the encoder takes more.
BOUNDED = st.integers(min_value=0, max_value=MAX_TERM)
SMALL = st.integers(min_value=0, max_value=1000)
NUMS = st.one_of(SMALL, BOUNDED, st.sampled_from([MAX_TERM - 1, MAX_TERM]))
IDS = st.text(min_size=1, max_size=20).filter(
    lambda s: (
        len(s.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
    )
)
BLOBS = st.binary(max_size=64)

entries = st.builds(Entry, term=NUMS, index=NUMS, type=st.sampled_from(EntryType), data=BLOBS)


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    ids = draw(st.lists(IDS, unique=True, max_size=7))
    split = draw(st.integers(0, len(ids)))
    return ConfState(voters=tuple(ids[:split]), learners=tuple(ids[split:]))


snapshots = st.builds(
    Snapshot,
    meta=st.builds(SnapshotMeta, index=NUMS, term=NUMS, conf_state=conf_states()),
    data=BLOBS,
)

messages = st.builds(
    Message,
    type=st.sampled_from(sorted(WIRE_TYPES)),
    to=st.none() | IDS,
    frm=st.none() | IDS,
    term=NUMS,
    log_term=NUMS,
    index=NUMS,
    entries=st.lists(entries, max_size=5).map(tuple),
    commit=NUMS,
    reject=st.booleans(),
    reject_hint=NUMS,
    snapshot=st.none() | snapshots,
    context=BLOBS,
)

# Anything msgpack can carry, nested a few levels: the shapes a hostile peer might send.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=13) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def reference_decode(data: bytes) -> Message | None:
    """The decoder of the previous commit: a generic msgpack unpack, then the structure."""
    try:
        return message_from_wire(msgpack.unpackb(data, raw=False, strict_map_key=True))
    except CodecError:
        return None
    except Exception:  # msgpack's own errors: not one valid msgpack value
        return None


def decode_or_codec_error(data: bytes) -> Message | None:
    """Decode; a CodecError is an accepted outcome, any other exception fails the test.

    The strict reader must agree with the reference: msgpack.unpackb followed by
    message_from_wire (the decoder before the reader, with the 2**62 bounds), so every
    frame the previous decoder took within the bounds still decodes, to the same message.
    """
    try:
        m = decode_message(data)
    except CodecError:
        assert reference_decode(data) is None, "the reader refuses what the reference takes"
        return None
    # whatever is accepted must be a faithful, canonical message
    assert isinstance(m, Message)
    assert decode_message(encode_message(m)) == m
    assert reference_decode(data) == m
    return m


@given(messages)
@settings(deadline=None, max_examples=400)
def test_round_trip(m: Message) -> None:
    data = encode_message(m)
    assert isinstance(data, bytes)
    assert decode_message(data) == m
    # the embeddable array form round-trips too, also through msgpack
    assert message_from_wire(msgpack.unpackb(msgpack.packb(message_to_wire(m)))) == m


def test_round_trip_of_every_field_at_its_limits() -> None:
    big = MAX_TERM
    assert MAX_INDEX == MAX_TERM
    m = Message(
        type=MessageType.APP,
        to="n" * MAX_ID_BYTES,
        frm="é" * (MAX_ID_BYTES // 2),
        term=big,
        log_term=big - 1,
        index=big - 2,
        entries=(Entry(1, 2, EntryType.CONF_CHANGE, b"\x00" * 1000), Entry(1, 3)),
        commit=big,
        reject=True,
        reject_hint=big,
        snapshot=Snapshot(SnapshotMeta(9, 8, ConfState(("a", "b"), ("c",))), b"state"),
        context=b"\xff" * 300,
    )
    assert decode_message(encode_message(m)) == m
    heartbeat = Message(MessageType.HEARTBEAT, to="b", frm="a", term=3, commit=7)
    assert len(encode_message(heartbeat)) <= 16


def test_the_layout_is_the_documented_one() -> None:
    m = Message(
        MessageType.APP,
        to="b",
        frm="a",
        term=3,
        log_term=2,
        index=5,
        entries=(Entry(3, 6, EntryType.NORMAL, b"x"),),
        commit=4,
        reject=False,
        reject_hint=1,
        snapshot=Snapshot(SnapshotMeta(3, 2, ConfState(("a",), ("c",))), b"s"),
        context=b"c",
    )
    assert msgpack.unpackb(encode_message(m)) == [
        10,
        "b",
        "a",
        3,
        2,
        5,
        [[3, 6, 0, b"x"]],
        4,
        False,
        1,
        [3, 2, ["a"], ["c"], b"s"],
        b"c",
    ]


@given(st.binary(max_size=200))
@settings(deadline=None, max_examples=2000)
def test_random_bytes_only_raise_codec_error(data: bytes) -> None:
    decode_or_codec_error(data)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_message(draw(messages)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 9))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@given(mutated_encodings())
@settings(deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_encodings_only_raise_codec_error(data: bytes) -> None:
    decode_or_codec_error(data)


@st.composite
def field_swaps(draw: st.DrawFn) -> list[object]:
    """A valid array with one field, entry field or snapshot field replaced by anything."""
    wire = message_to_wire(draw(messages))
    value = draw(msgpack_values)
    where = draw(st.sampled_from(["message", "entries", "entry", "snapshot", "member"]))
    if where == "entries" and wire[6]:
        wire[6][draw(st.integers(0, len(wire[6]) - 1))] = value
    elif where == "entry" and wire[6]:
        entry = wire[6][draw(st.integers(0, len(wire[6]) - 1))]
        entry[draw(st.integers(0, 3))] = value
    elif where == "snapshot" and wire[10] is not None:
        wire[10][draw(st.integers(0, 4))] = value
    elif where == "member" and wire[10] is not None and wire[10][2]:
        wire[10][2][0] = value
    else:
        wire[draw(st.integers(0, len(wire) - 1))] = value
    return wire


@given(field_swaps())
@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_any_field_replaced_by_any_value_only_raises_codec_error(wire: list[object]) -> None:
    decode_or_codec_error(msgpack.packb(wire))
    try:
        message_from_wire(wire)
    except CodecError:
        pass


@given(msgpack_values)
@settings(deadline=None, max_examples=400)
def test_arbitrary_msgpack_values_only_raise_codec_error(value: object) -> None:
    assert decode_or_codec_error(msgpack.packb(value)) is None


def valid_wire() -> list[object]:
    return message_to_wire(
        Message(
            MessageType.APP,
            to="b",
            frm="a",
            entries=(Entry(1, 1),),
            snapshot=Snapshot(SnapshotMeta(1, 1, ConfState(("a",), ("c",)))),
        )
    )


def with_field(i: int, value: object) -> bytes:
    wire = valid_wire()
    wire[i] = value
    return msgpack.packb(wire)


def with_entry_field(i: int, value: object) -> bytes:
    wire = valid_wire()
    wire[6][0][i] = value
    return msgpack.packb(wire)


def with_snapshot_field(i: int, value: object) -> bytes:
    wire = valid_wire()
    wire[10][i] = value
    return msgpack.packb(wire)


MALFORMED = {
    "the valid base, with a trailing byte": msgpack.packb(valid_wire()) + b"\xc0",
    "empty input": b"",
    "not an array": msgpack.packb({"type": 10}),
    "a map key that is not a string": msgpack.packb([{1: 2}] * 12, strict_types=False),
    "too few fields": msgpack.packb(valid_wire()[:11]),
    "too many fields": msgpack.packb([*valid_wire(), None]),
    "unknown message type": with_field(0, 9),
    "huge message type": with_field(0, 1 << 40),
    "local message type HUP": with_field(0, int(MessageType.HUP)),
    "local message type PROP": with_field(0, int(MessageType.PROP)),
    "driver report UNREACHABLE": with_field(0, int(MessageType.UNREACHABLE)),
    "type as a string": with_field(0, "APP"),
    "type as a bool": with_field(0, True),
    "negative term": with_field(3, -1),
    "term as a float": with_field(3, 1.0),
    "term as a bool": with_field(3, False),
    "term as bytes": with_field(3, b"\x01"),
    "negative commit": with_field(7, -5),
    "negative reject_hint": with_field(9, -(1 << 63)),
    "reject as an int": with_field(8, 1),
    "to as an int": with_field(1, 7),
    "to as bytes": with_field(1, b"b"),
    "empty to": with_field(1, ""),
    "frm too long": with_field(2, "x" * (MAX_ID_BYTES + 1)),
    "context as a string": with_field(11, "ctx"),
    "context as nil": with_field(11, None),
    "entries as a map": with_field(6, {"a": 1}),
    "entries as nil": with_field(6, None),
    "an entry too short": with_field(6, [[1, 1, 0]]),
    "an entry as a map": with_field(6, [{"term": 1}]),
    "entry type unknown": with_entry_field(2, 7),
    "entry data as a string": with_entry_field(3, "x"),
    "negative entry index": with_entry_field(1, -1),
    "snapshot as bytes": with_field(10, b"snap"),
    "snapshot too short": with_field(10, [1, 1, [], []]),
    "snapshot voters not an array": with_snapshot_field(2, "a"),
    "snapshot voter not a string": with_snapshot_field(2, [1]),
    "duplicate voter": with_snapshot_field(2, ["a", "a"]),
    "a voter that is also a learner": with_snapshot_field(2, ["c"]),
    "snapshot data as nil": with_snapshot_field(4, None),
    "deep nesting": b"\x91" * 5000 + b"\xc0",
    "moderate nesting in a field": with_field(1, [[[[[[[["b"]]]]]]]]),
    "an extension type": with_field(11, msgpack.ExtType(5, b"abc")),
    "a timestamp": with_field(3, msgpack.Timestamp(1, 0)),
    "an empty timestamp ext as context": b"\x9c"
    + msgpack.packb(valid_wire()[:11])[1:]
    + b"\xc7\x00\xff",
    "invalid utf-8 id": msgpack.packb(valid_wire()).replace(b"\xa1b", b"\xa1\xff", 1),
    "str length beyond the input": b"\x9c\xdb\xff\xff\xff\xff",
    "array length beyond the limit": b"\xdd\xff\xff\xff\xff",
    "bin length beyond the input": b"\xc6\x7f\xff\xff\xff",
    "reserved byte 0xc1": b"\xc1",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_raises_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_message(data)


def test_the_malformed_cases_differ_from_a_valid_message_in_one_place_only() -> None:
    # guards the table above: its base really decodes, so each case fails for its own reason
    assert decode_message(msgpack.packb(valid_wire())).entries == (Entry(1, 1),)


@pytest.mark.parametrize("value", [None, "text", 12, [1, 2], object()])
def test_non_bytes_input_raises_codec_error(value: object) -> None:
    with pytest.raises(CodecError):
        decode_message(value)  # type: ignore[arg-type]


def test_memoryview_and_bytearray_inputs_decode() -> None:
    m = Message(MessageType.VOTE, to="b", frm="a", term=4, log_term=3, index=9)
    data = encode_message(m)
    assert decode_message(bytearray(data)) == m
    assert decode_message(memoryview(data)) == m


UNENCODABLE = {
    "local message": Message(MessageType.HUP, frm="a"),
    "driver report": Message(MessageType.SNAP_STATUS, frm="a"),
    "negative term": Message(MessageType.APP, term=-1),
    "too large index": Message(MessageType.APP, index=MAX_U64 + 1),
    "bool commit": Message(MessageType.APP, commit=True),
    "empty id": Message(MessageType.APP, to=""),
    "id as bytes": Message(MessageType.APP, to=b"b"),  # type: ignore[arg-type]
    "lone surrogate id": Message(MessageType.APP, to="\udc80"),
    "str context": Message(MessageType.APP, context="x"),  # type: ignore[arg-type]
    "entries as a list": Message(MessageType.APP, entries=[Entry(1, 1)]),  # type: ignore[arg-type]
    "entry with str data": Message(MessageType.APP, entries=(Entry(1, 1, data="x"),)),  # type: ignore[arg-type]
    "duplicate learner": Message(
        MessageType.SNAP, snapshot=Snapshot(SnapshotMeta(1, 1, ConfState((), ("c", "c"))))
    ),
    "not a message": object(),
}


@pytest.mark.parametrize("m", UNENCODABLE.values(), ids=UNENCODABLE.keys())
def test_encoding_refuses_what_decoding_would_refuse(m: Message) -> None:
    with pytest.raises(CodecError):
        encode_message(m)


def test_wire_types_are_the_network_messages_only() -> None:
    assert {int(t) for t in WIRE_TYPES} == set(range(10, 23))
    assert not WIRE_TYPES & LOCAL_MESSAGES


# ---- terms and indexes: bounded where they are decoded -------------------------------------

# (field position in the wire array, or a path into it) for every term and index on the wire
BOUNDED_FIELDS = {
    "term": (3,),
    "log_term": (4,),
    "index": (5,),
    "commit": (7,),
    "reject_hint": (9,),
    "entry term": (6, 0, 0),
    "entry index": (6, 0, 1),
    "snapshot index": (10, 0),
    "snapshot term": (10, 1),
}


def with_path(path: tuple[int, ...], value: int) -> bytes:
    wire = valid_wire()
    target: list[object] = wire
    for i in path[:-1]:
        target = target[i]  # type: ignore[assignment]
    target[path[-1]] = value
    return msgpack.packb(wire)


@pytest.mark.parametrize("path", BOUNDED_FIELDS.values(), ids=BOUNDED_FIELDS.keys())
def test_decoding_refuses_a_term_or_index_beyond_2_62(path: tuple[int, ...]) -> None:
    assert MAX_TERM == MAX_INDEX == 1 << 62
    assert decode_message(with_path(path, MAX_TERM)) is not None  # the bound itself is fine
    for value in (MAX_TERM + 1, MAX_U64):
        with pytest.raises(CodecError, match="out of range"):
            decode_message(with_path(path, value))
        assert reference_decode(with_path(path, value)) is None
    with pytest.raises(CodecError):
        message_from_wire(msgpack.unpackb(with_path(path, MAX_TERM + 1)))


def test_a_term_of_2_64_minus_1_from_a_peer_is_refused() -> None:
    """The finding: one such frame made every member's next election term unencodable."""
    vote = Message(MessageType.VOTE, to="b", frm="a", term=MAX_U64, log_term=1, index=1)
    data = encode_message(vote)  # a hostile peer can build it: the encoder takes any u64
    with pytest.raises(CodecError, match="term"):
        decode_message(data)


@pytest.mark.parametrize("term", [MAX_TERM, MAX_TERM + 1, MAX_TERM + 1000, MAX_U64])
def test_encoding_never_fails_for_a_term_the_core_can_reach(term: int) -> None:
    # a member that took MAX_TERM from a peer campaigns at MAX_TERM + 1 (and pre-votes with
    # it): what it sends must encode; peers refuse it, which costs liveness, never a crash
    for m in (
        Message(MessageType.PRE_VOTE, to="b", frm="a", term=term, log_term=term, index=term),
        Message(
            MessageType.APP,
            to="b",
            frm="a",
            term=term,
            entries=(Entry(term, term),),
            commit=term,
            snapshot=Snapshot(SnapshotMeta(term, term, ConfState(("a",)))),
        ),
    ):
        assert msgpack.unpackb(encode_message(m))[3] == term


# ---- the largest legal message, exactly ----------------------------------------------------


def test_the_largest_legal_message_decodes_and_one_more_does_not() -> None:
    voters = tuple(f"v{i}" for i in range(MAX_ENTRIES // 2))
    learners = tuple(f"l{i}" for i in range(MAX_ENTRIES - len(voters)))
    largest = Message(
        MessageType.APP,
        to="t" * MAX_ID_BYTES,
        frm="f" * MAX_ID_BYTES,
        term=MAX_TERM,
        log_term=MAX_TERM,
        index=MAX_INDEX,
        entries=tuple(
            Entry(MAX_TERM, MAX_INDEX, EntryType.CONF_CHANGE) for _ in range(MAX_ENTRIES)
        ),
        commit=MAX_INDEX,
        reject_hint=MAX_INDEX,
        snapshot=Snapshot(SnapshotMeta(MAX_INDEX, MAX_TERM, ConfState(voters, learners)), b"s"),
        context=b"c",
    )
    data = encode_message(largest)
    assert decode_message(data) == largest
    wire = message_to_wire(largest)
    wire[6].append([1, 1, 0, b""])  # MAX_ENTRIES + 1 entries
    with pytest.raises(CodecError, match="entries"):
        decode_message(msgpack.packb(wire))
    wire = message_to_wire(largest)
    wire[10][3].append("one-too-many")  # MAX_ENTRIES + 1 members
    with pytest.raises(CodecError, match="members"):
        decode_message(msgpack.packb(wire))
    wire = message_to_wire(largest)
    wire[1] = "t" * (MAX_ID_BYTES + 1)
    with pytest.raises(CodecError, match="node id"):
        decode_message(msgpack.packb(wire))


def test_every_msgpack_spelling_of_a_field_decodes_as_before() -> None:
    """Wire compatibility: a peer's msgpack may pick wider formats than ours does."""
    base = msgpack.unpackb(encode_message(Message(MessageType.HEARTBEAT, to="b", frm="a")))
    spellings = [
        # term 3 as uint8, uint16, uint32, uint64 and int8..int64
        *(b"\xcc\x03", b"\xcd\x00\x03", b"\xce\x00\x00\x00\x03", b"\xcf" + (3).to_bytes(8, "big")),
        *(b"\xd0\x03", b"\xd1\x00\x03", b"\xd2\x00\x00\x00\x03", b"\xd3" + (3).to_bytes(8, "big")),
    ]
    head = b"\x9c" + msgpack.packb(base[0]) + b"\xd9\x01b" + b"\xda\x00\x01a"  # str8, str16 ids
    tail = b"".join(msgpack.packb(v) for v in base[4:6])
    tail += b"\xdc\x00\x00"  # entries as array16
    tail += b"".join(msgpack.packb(v) for v in base[7:11])
    tail += b"\xc6\x00\x00\x00\x01x"  # context as bin32
    for term in spellings:
        data = head + term + tail
        m = decode_message(data)
        assert (m.to, m.frm, m.term, m.context) == ("b", "a", 3, b"x")
        assert reference_decode(data) == m


# ---- memory: nothing is built that the message does not hold --------------------------------


def peak_bytes(data: bytes) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        with contextlib.suppress(CodecError):
            decode_message(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


HOSTILE = {
    # each of these made the previous decoder build 40-70 bytes of objects per input byte
    "65,536 empty arrays as entries": msgpack.packb(
        [10, "b", "a", 0, 0, 0, [[] for _ in range(MAX_ENTRIES)], 0, False, 0, None, b""]
    ),
    "an array of 65,535 uncached small ints": b"\x9c\xdc\xff\xff" + b"\xe0" * 0xFFFF,
    "65,535 one-character strings as entries": msgpack.packb(
        [10, "b", "a", 0, 0, 0, ["ā"] * 0xFFFF, 0, False, 0, None, b""]
    ),
    "nested arrays of small ints": (b"\x9c" + b"\xdc\x10\x00" + b"\xe0" * 0xFFF) * 16,
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_message_costs_no_more_than_its_bytes(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_message(data)
    # the reader refuses at the first misplaced item; it never builds the garbage first
    assert peak_bytes(data) < 16 << 10, f"{len(data)} bytes of input"


def test_the_costliest_valid_message_stays_within_the_documented_bound() -> None:
    # 65,536 members of one 2-byte character each: 8.7 MB for 263 KB (docs/transport.md)
    ids = tuple(
        chr(0x100 + i) if not 0xD800 <= 0x100 + i < 0xE000 else chr(0x10000 + i)
        for i in range(MAX_ENTRIES)
    )
    m = Message(
        MessageType.SNAP, to="b", frm="a", snapshot=Snapshot(SnapshotMeta(1, 1, ConfState(ids)))
    )
    data = encode_message(m)
    assert peak_bytes(data) < 10 << 20
