"""The wire form of Raft messages: compact msgpack arrays, strictly validated.

A :class:`~hafleet_agent.raft.types.Message` travels as one msgpack array of twelve
elements, in the order of the dataclass fields::

    [type, to, frm, term, log_term, index, entries, commit, reject, reject_hint,
     snapshot, context]

    type        int      a wire MessageType (APP .. READ_INDEX_RESP); local messages
                         (HUP, BEAT, PROP, CHECK_QUORUM) and the driver's reports
                         (UNREACHABLE, SNAP_STATUS) never leave a node
    to, frm     str|nil  a node id: 1..255 UTF-8 bytes, or nil for 'nobody'
    term, log_term, index, commit, reject_hint
                int      encoded: 0 <= n < 2**64; decoded: 0 <= n <= MAX_TERM (terms)
                         or MAX_INDEX (indexes), both 2**62
    entries     array    at most MAX_ENTRIES entries, each [term, index, type, data]
                         (type an EntryType, data bin)
    reject      bool
    snapshot    nil | [index, term, voters, learners, data]
                         voters and learners are arrays of node ids, no duplicates,
                         no id in both, at most MAX_ENTRIES together; data is bin
    context     bin

:func:`encode_message` takes any term or index the disk format holds (u64), so the core
can always send what it has; :func:`decode_message` takes terms and indexes only up to
2**62 (:data:`MAX_TERM`, :data:`MAX_INDEX`: why, there), so no peer can push a member to a
term whose successor would not fit. Within those bounds the two check the same rules and
``decode_message(encode_message(m)) == m``.

Decoding hostile input raises :class:`CodecError` and nothing else. The decoder does not
hand the bytes to a generic msgpack unpacker: it reads them item by item in the order of
the layout, checks each type byte before it reads the item, and each length against the
bytes left, so nothing is built that the returned message does not hold (no garbage
structure can expand first and be refused afterwards). What a message of n bytes costs in
memory is therefore the message itself, n bytes of data plus a bounded number of objects
(docs/transport.md has the measured figures). Changing this layout changes the transport's
protocol version (``hafleet/v1``), not this module's behaviour in place.
"""

from __future__ import annotations

from typing import Any

import msgpack

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

__all__ = [
    "MAX_ENTRIES",
    "MAX_ID_BYTES",
    "MAX_INDEX",
    "MAX_TERM",
    "MAX_TERM_JUMP",
    "MAX_U64",
    "WIRE_TYPES",
    "CodecError",
    "decode_message",
    "encode_message",
    "message_from_wire",
    "message_to_wire",
]

MAX_ID_BYTES = 255
"""The longest node id, in UTF-8 bytes."""

MAX_ENTRIES = 1 << 16
"""The most entries in one message, and the most members in one configuration."""

MAX_U64 = (1 << 64) - 1
"""What the encoder takes for a term or an index: anything the disk format (u64) holds."""

MAX_TERM = 1 << 62
"""The largest term a decoded message may carry.

Terms and indexes are u64 on disk (wal.py) and on the wire. A peer that could
hand us 2**64 - 1 would leave no room for the next election's term + 1, which no longer
fits: every member that adopted it would fail at its next campaign, and again at every
restart, since the term is on disk. Decoding stops at 2**62, so a member always keeps
3 * 2**62 local increments before the u64 runs out - more elections than could ever
happen - and the encoder, which still takes the full u64, never fails for a term the core
can reach. No real cluster comes near 2**62: at a thousand elections a second it would
take 146 million years.
"""

MAX_INDEX = 1 << 62
"""The largest log index (also commit, reject hint, snapshot index) a decoded message may
carry; the same reasoning as :data:`MAX_TERM` (an index grows by one per entry)."""

MAX_TERM_JUMP = 1 << 32
"""How far ahead of our own term a peer's term may plausibly be (for the agent's check).

A term grows by one per election; a member that was away, or a fresh one joining, meets a
group that had at most that many elections meanwhile - 2**32 is more than a group that
held an election every second would have in 136 years. A term further ahead than this is
refused by the agent: an authenticated but faulty or hostile peer then needs 2**30 frames
to walk the group up to :data:`MAX_TERM` instead of one.
"""

WIRE_TYPES = (
    frozenset(MessageType)
    - LOCAL_MESSAGES
    - {
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
    }
)
"""The message types that may cross the network."""

_WIRE_TYPE_BY_INT = {int(t): t for t in WIRE_TYPES}
_ENTRY_TYPE_BY_INT = {int(t): t for t in EntryType}
_MESSAGE_FIELDS = 12


class CodecError(ValueError):
    """The bytes (or the message) are not a valid wire message."""


def encode_message(m: Message) -> bytes:
    """Return the msgpack bytes of ``m``; :class:`CodecError` if it cannot go on the wire."""
    return msgpack.packb(message_to_wire(m), use_bin_type=True)


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Parse bytes made by :func:`encode_message`; :class:`CodecError` for anything else.

    The bytes are read field by field against the layout (see :class:`_Reader`): a type
    byte that does not belong where it stands is refused before anything is built, so the
    only objects made are those of the message returned.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    r = _Reader(bytes(data))
    n = r.array("a message", _MESSAGE_FIELDS)
    if n != _MESSAGE_FIELDS:
        raise CodecError(f"a message is an array of {_MESSAGE_FIELDS} elements")
    mtype = r.uint("type", MAX_U64)
    if mtype not in _WIRE_TYPE_BY_INT:
        raise CodecError(f"unknown or local message type {mtype}")
    to = r.node_id("to", optional=True)
    frm = r.node_id("frm", optional=True)
    term = r.uint("term", MAX_TERM)
    log_term = r.uint("log_term", MAX_TERM)
    index = r.uint("index", MAX_INDEX)
    entries = []
    uint, array, read_bin = r.uint, r.array, r.bin  # bound once: the loop may run 65,536 times
    for _ in range(array("entries", MAX_ENTRIES)):
        if array("an entry", 4) != 4:
            raise CodecError("an entry is an array of 4 elements")
        e_term = uint("entry term", MAX_TERM)
        e_index = uint("entry index", MAX_INDEX)
        etype = _ENTRY_TYPE_BY_INT.get(uint("entry type", MAX_U64))
        if etype is None:
            raise CodecError("unknown entry type")
        entries.append(Entry(e_term, e_index, etype, read_bin("entry data")))
    commit = r.uint("commit", MAX_INDEX)
    reject = r.bool("reject")
    hint = r.uint("reject_hint", MAX_INDEX)
    snapshot = None
    if not r.nil():
        if r.array("a snapshot", 5) != 5:
            raise CodecError("a snapshot is nil or an array of 5 elements")
        s_index = r.uint("snapshot index", MAX_INDEX)
        s_term = r.uint("snapshot term", MAX_TERM)
        voters = [r.node_id("voter") for _ in range(r.array("snapshot voters", MAX_ENTRIES))]
        learners = [r.node_id("learner") for _ in range(r.array("snapshot learners", MAX_ENTRIES))]
        voters_t, learners_t = _members(voters, learners)
        conf = ConfState(voters=voters_t, learners=learners_t)
        snapshot = Snapshot(SnapshotMeta(s_index, s_term, conf), data=r.bin("snapshot data"))
    context = r.bin("context")
    if r.pos != len(r.buf):
        raise CodecError(f"{len(r.buf) - r.pos} bytes after the message")
    return Message(
        type=_WIRE_TYPE_BY_INT[mtype],
        to=to,
        frm=frm,
        term=term,
        log_term=log_term,
        index=index,
        entries=tuple(entries),
        commit=commit,
        reject=reject,
        reject_hint=hint,
        snapshot=snapshot,
        context=context,
    )


def message_to_wire(m: Message) -> list[Any]:
    """The msgpack-able array for ``m`` (to embed in a larger frame); validates ``m``."""
    if not isinstance(m, Message):
        raise CodecError(f"expected a Message, got {type(m).__name__}")
    if not isinstance(m.type, MessageType) or m.type not in WIRE_TYPES:
        raise CodecError(f"message type {m.type!r} does not go on the wire")
    if not isinstance(m.entries, tuple):
        raise CodecError("entries must be a tuple")
    if len(m.entries) > MAX_ENTRIES:
        raise CodecError(f"more than {MAX_ENTRIES} entries")
    entries = []
    for e in m.entries:
        if not isinstance(e, Entry) or not isinstance(e.type, EntryType):
            raise CodecError(f"not an Entry: {e!r}")
        term, index = _u64(e.term, "entry term"), _u64(e.index, "entry index")
        entries.append([term, index, int(e.type), _bin(e.data, "entry data")])
    snap = None
    if m.snapshot is not None:
        s = m.snapshot
        if not isinstance(s, Snapshot) or not isinstance(s.meta, SnapshotMeta):
            raise CodecError(f"not a Snapshot: {s!r}")
        cs = s.meta.conf_state
        if not isinstance(cs, ConfState):
            raise CodecError(f"not a ConfState: {cs!r}")
        voters, learners = _members(cs.voters, cs.learners)
        snap = [
            _u64(s.meta.index, "snapshot index"),
            _u64(s.meta.term, "snapshot term"),
            list(voters),
            list(learners),
            _bin(s.data, "snapshot data"),
        ]
    return [
        int(m.type),
        _id(m.to, "to"),
        _id(m.frm, "frm"),
        _u64(m.term, "term"),
        _u64(m.log_term, "log_term"),
        _u64(m.index, "index"),
        entries,
        _u64(m.commit, "commit"),
        _bool(m.reject, "reject"),
        _u64(m.reject_hint, "reject_hint"),
        snap,
        _bin(m.context, "context"),
    ]


def message_from_wire(obj: object) -> Message:
    """Build a Message from a decoded array (see the module docstring); strict."""
    if not isinstance(obj, list) or len(obj) != _MESSAGE_FIELDS:
        raise CodecError(f"a message is an array of {_MESSAGE_FIELDS} elements")
    (mtype, to, frm, term, log_term, index, raw_entries, commit, reject, hint, raw_snap, ctx) = obj
    mtype = _u64(mtype, "type")
    if mtype not in _WIRE_TYPE_BY_INT:
        raise CodecError(f"unknown or local message type {mtype}")
    if not isinstance(raw_entries, list) or len(raw_entries) > MAX_ENTRIES:
        raise CodecError("entries must be an array")
    entries = []
    for raw in raw_entries:
        if not isinstance(raw, list) or len(raw) != 4:
            raise CodecError("an entry is an array of 4 elements")
        etype = _u64(raw[2], "entry type")
        if etype not in _ENTRY_TYPE_BY_INT:
            raise CodecError(f"unknown entry type {etype}")
        entries.append(
            Entry(
                term=_u64(raw[0], "entry term", MAX_TERM),
                index=_u64(raw[1], "entry index", MAX_INDEX),
                type=_ENTRY_TYPE_BY_INT[etype],
                data=_bin(raw[3], "entry data"),
            )
        )
    snapshot = None
    if raw_snap is not None:
        if not isinstance(raw_snap, list) or len(raw_snap) != 5:
            raise CodecError("a snapshot is nil or an array of 5 elements")
        s_index, s_term, voters, learners, s_data = raw_snap
        if not isinstance(voters, list) or not isinstance(learners, list):
            raise CodecError("snapshot voters and learners must be arrays")
        voters_t, learners_t = _members(voters, learners)
        snapshot = Snapshot(
            SnapshotMeta(
                index=_u64(s_index, "snapshot index", MAX_INDEX),
                term=_u64(s_term, "snapshot term", MAX_TERM),
                conf_state=ConfState(voters=voters_t, learners=learners_t),
            ),
            data=_bin(s_data, "snapshot data"),
        )
    return Message(
        type=_WIRE_TYPE_BY_INT[mtype],
        to=_id(to, "to"),
        frm=_id(frm, "frm"),
        term=_u64(term, "term", MAX_TERM),
        log_term=_u64(log_term, "log_term", MAX_TERM),
        index=_u64(index, "index", MAX_INDEX),
        entries=tuple(entries),
        commit=_u64(commit, "commit", MAX_INDEX),
        reject=_bool(reject, "reject"),
        reject_hint=_u64(hint, "reject_hint", MAX_INDEX),
        snapshot=snapshot,
        context=_bin(ctx, "context"),
    )


# ---- the strict reader ----------------------------------------------------------------------

_UINT_WIDTH = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_INT_WIDTH = {**_UINT_WIDTH, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_LEN_WIDTH = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4, 0xDC: 2, 0xDD: 4}


def _kind(b: int) -> str:
    """What msgpack type the type byte ``b`` starts, for error messages."""
    if b <= 0x7F or b >= 0xE0 or 0xCC <= b <= 0xD3:
        return "int"
    if b <= 0x8F or b in (0xDE, 0xDF):
        return "map"
    if b <= 0x9F or b in (0xDC, 0xDD):
        return "array"
    if b <= 0xBF or 0xD9 <= b <= 0xDB:
        return "str"
    return {0xC0: "nil", 0xC1: "reserved byte", 0xC2: "bool", 0xC3: "bool"}.get(
        b, "bin" if b <= 0xC6 else "float" if b in (0xCA, 0xCB) else "ext"
    )


class _Reader:
    """Reads the msgpack items of one message in the order the layout expects them.

    Every read looks at the type byte first and refuses a type that does not belong at that
    place, and every length is checked against the bytes that are left before anything is
    sliced, so hostile input never builds an object that a valid message would not hold.
    Any msgpack spelling of a value is accepted (an int in a wider format than needed, a
    short str in str 8), as ``msgpack.unpackb`` did before.
    """

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def _take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise CodecError(f"{what}: the input ends inside it")
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def _type(self, what: str) -> int:
        if self.pos >= len(self.buf):
            raise CodecError(f"{what}: the input ends before it")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def _length(self, b: int, what: str) -> int:
        return int.from_bytes(self._take(_LEN_WIDTH[b], what), "big")

    def uint(self, what: str, limit: int) -> int:
        buf, pos = self.buf, self.pos
        if pos < len(buf):  # a fixint or an uint 8..64, the usual cases, take the short way
            b = buf[pos]
            if b <= 0x7F and b <= limit:
                self.pos = pos + 1
                return b
            size = _UINT_WIDTH.get(b)
            if size is not None and pos + size < len(buf):
                v = int.from_bytes(buf[pos + 1 : pos + 1 + size], "big")
                if v <= limit:
                    self.pos = pos + 1 + size
                    return v
        b = self._type(what)
        if b <= 0x7F:
            v = b
        elif b in _INT_WIDTH:
            v = int.from_bytes(self._take(_INT_WIDTH[b], what), "big", signed=b >= 0xD0)
        elif b >= 0xE0:
            v = b - 0x100
        else:
            raise CodecError(f"{what}: expected an integer, got {_kind(b)}")
        if not 0 <= v <= limit:
            raise CodecError(f"{what}: {v} is out of range (0..{limit})")
        return v

    def array(self, what: str, limit: int) -> int:
        """The element count of an array header (the elements follow)."""
        pos = self.pos
        if pos < len(self.buf):  # a fixarray, the usual case, takes the short way
            n = self.buf[pos] - 0x90
            if 0 <= n <= 15 and n <= limit and n < len(self.buf) - pos:
                self.pos = pos + 1
                return n
        b = self._type(what)
        if 0x90 <= b <= 0x9F:
            n = b - 0x90
        elif b in (0xDC, 0xDD):
            n = self._length(b, what)
        else:
            raise CodecError(f"{what}: expected an array, got {_kind(b)}")
        # every element takes at least one byte: a count beyond the input is a lie
        if n > limit or n > len(self.buf) - self.pos:
            raise CodecError(f"{what}: array of {n} elements is too long")
        return n

    def bin(self, what: str) -> bytes:
        buf, pos = self.buf, self.pos
        if pos + 1 < len(buf) and buf[pos] == 0xC4:  # bin 8: the usual case, fast
            end = pos + 2 + buf[pos + 1]
            if end <= len(buf):
                self.pos = end
                return buf[pos + 2 : end]
        b = self._type(what)
        if not 0xC4 <= b <= 0xC6:
            raise CodecError(f"{what}: expected bytes, got {_kind(b)}")
        return self._take(self._length(b, what), what)

    def nil(self) -> bool:
        """True (and consumed) if the next item is nil."""
        if self.pos < len(self.buf) and self.buf[self.pos] == 0xC0:
            self.pos += 1
            return True
        return False

    def bool(self, what: str) -> bool:
        b = self._type(what)
        if b not in (0xC2, 0xC3):
            raise CodecError(f"{what}: expected a bool, got {_kind(b)}")
        return b == 0xC3

    def node_id(self, what: str, *, optional: bool = False) -> str | None:
        b = self._type(what)
        if optional and b == 0xC0:
            return None
        if 0xA0 <= b <= 0xBF:
            n = b - 0xA0
        elif 0xD9 <= b <= 0xDB:
            n = self._length(b, what)
        else:
            raise CodecError(f"{what}: expected a node id (str), got {_kind(b)}")
        if not 1 <= n <= MAX_ID_BYTES:
            raise CodecError(f"{what}: node id must have 1..{MAX_ID_BYTES} bytes")
        try:
            return self._take(n, what).decode()
        except UnicodeDecodeError:
            raise CodecError(f"{what}: node id is not valid UTF-8") from None


# ---- field checks (shared by both directions) ----------------------------------------------


def _u64(v: object, what: str, limit: int = MAX_U64) -> int:
    # bool is an int subclass: refuse it explicitly, it is never a valid number here
    if not isinstance(v, int) or isinstance(v, bool):
        raise CodecError(f"{what}: expected an integer, got {type(v).__name__}")
    if not 0 <= v <= limit:
        raise CodecError(f"{what}: {v} is out of range (0..{limit})")
    return int(v)


def _bool(v: object, what: str) -> bool:
    if not isinstance(v, bool):
        raise CodecError(f"{what}: expected a bool, got {type(v).__name__}")
    return v


def _bin(v: object, what: str) -> bytes:
    if type(v) is not bytes:
        raise CodecError(f"{what}: expected bytes, got {type(v).__name__}")
    return v


def _node_id(v: object, what: str) -> str:
    if not isinstance(v, str):
        raise CodecError(f"{what}: expected a node id (str), got {type(v).__name__}")
    try:
        n = len(v.encode())
    except UnicodeEncodeError:  # lone surrogates cannot be sent
        raise CodecError(f"{what}: node id is not valid unicode") from None
    if not 1 <= n <= MAX_ID_BYTES:
        raise CodecError(f"{what}: node id must have 1..{MAX_ID_BYTES} bytes")
    return str(v)


def _id(v: object, what: str) -> str | None:
    return None if v is None else _node_id(v, what)


def _members(voters: object, learners: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not isinstance(voters, tuple | list) or not isinstance(learners, tuple | list):
        raise CodecError("voters and learners must be sequences")
    if len(voters) + len(learners) > MAX_ENTRIES:
        raise CodecError(f"more than {MAX_ENTRIES} members")
    v = tuple(_node_id(x, "voter") for x in voters)
    lr = tuple(_node_id(x, "learner") for x in learners)
    if len(set(v)) != len(v) or len(set(lr)) != len(lr) or set(v) & set(lr):
        raise CodecError("duplicate member in the configuration")
    return v, lr
