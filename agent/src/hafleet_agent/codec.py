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
                int      0 <= n < 2**64
    entries     array    at most MAX_ENTRIES entries, each [term, index, type, data]
                         (type an EntryType, data bin)
    reject      bool
    snapshot    nil | [index, term, voters, learners, data]
                         voters and learners are arrays of node ids, no duplicates,
                         no id in both; data is bin
    context     bin

:func:`encode_message` and :func:`decode_message` check the same rules, so whatever one
accepts the other does too, and ``decode_message(encode_message(m)) == m``. Decoding
hostile input raises :class:`CodecError` and nothing else: msgpack runs with limits on
every length (strings, bins, arrays; maps and extension types are never valid), the
total number of arrays is capped so a small input cannot expand into a large heap, and
the structure is checked field by field. Changing this layout changes the transport's
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
# A valid message holds at most: itself, its entry list, the entries, the snapshot and its
# two member lists. Anything with more arrays is refused while it is being unpacked.
_MAX_ARRAYS = MAX_ENTRIES + 5


class CodecError(ValueError):
    """The bytes (or the message) are not a valid wire message."""


def encode_message(m: Message) -> bytes:
    """Return the msgpack bytes of ``m``; :class:`CodecError` if it cannot go on the wire."""
    return msgpack.packb(message_to_wire(m), use_bin_type=True)


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Parse bytes made by :func:`encode_message`; :class:`CodecError` for anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    arrays = 0

    def count_array(items: list[Any]) -> list[Any]:
        nonlocal arrays
        arrays += 1
        if arrays > _MAX_ARRAYS:
            raise CodecError("too many arrays")
        return items

    try:
        unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            use_list=True,
            list_hook=count_array,
            max_buffer_size=max(len(data), 1),
            max_str_len=MAX_ID_BYTES,
            max_bin_len=len(data),
            max_array_len=MAX_ENTRIES,
            max_map_len=0,
            max_ext_len=0,
        )
        unpacker.feed(data)
        obj = unpacker.unpack()
        extra = len(data) - unpacker.tell()
    except CodecError:
        raise
    except Exception as e:  # msgpack raises many types (ValueError, StackError, ...)
        raise CodecError(f"not valid msgpack: {type(e).__name__}: {e}") from None
    if extra:
        raise CodecError(f"{extra} bytes after the message")
    return message_from_wire(obj)


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
                term=_u64(raw[0], "entry term"),
                index=_u64(raw[1], "entry index"),
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
                index=_u64(s_index, "snapshot index"),
                term=_u64(s_term, "snapshot term"),
                conf_state=ConfState(voters=voters_t, learners=learners_t),
            ),
            data=_bin(s_data, "snapshot data"),
        )
    return Message(
        type=_WIRE_TYPE_BY_INT[mtype],
        to=_id(to, "to"),
        frm=_id(frm, "frm"),
        term=_u64(term, "term"),
        log_term=_u64(log_term, "log_term"),
        index=_u64(index, "index"),
        entries=tuple(entries),
        commit=_u64(commit, "commit"),
        reject=_bool(reject, "reject"),
        reject_hint=_u64(hint, "reject_hint"),
        snapshot=snapshot,
        context=_bin(ctx, "context"),
    )


# ---- field checks (shared by both directions) ----------------------------------------------


def _u64(v: object, what: str) -> int:
    # bool is an int subclass: refuse it explicitly, it is never a valid number here
    if not isinstance(v, int) or isinstance(v, bool):
        raise CodecError(f"{what}: expected an integer, got {type(v).__name__}")
    if not 0 <= v <= MAX_U64:
        raise CodecError(f"{what}: {v} is out of range")
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
