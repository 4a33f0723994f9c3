"""The byte format of ``raft.log``, the append-only log of a node's durable Raft state.

Encoding, and the decoding that tells a torn last write from corruption; no I/O:
:mod:`hafleet_agent.wal` (``DiskStorage``) owns the files, the fsyncs and what ``open()`` does
with a damaged log (its docstring: how the files are written, replaced and recovered).
:mod:`hafleet_agent.snapfile` is the format of ``snapshot.bin``. Only the standard library is
used.

Format (version 1)
==================

All integers are little-endian.

``raft.log`` starts with a 12-byte header, ``magic "HAFLRLOG" | version u32``, followed by
records::

    length u32 | crc u32 | type u8 | payload (length bytes)

``crc`` is the CRC-32 (zlib) of the type byte followed by the payload; ``length`` is at most
64 MiB, so a garbage length field is detected. Record types:

=====  ==========  ============================================================================
type   name        payload
=====  ==========  ============================================================================
1      HARD_STATE  term u64 | commit u64 | vote length u16 | vote utf-8 (length 0: no vote)
2      ENTRY       term u64 | index u64 | entry type u8 | data (the rest of the payload)
3      BATCH       nbytes u64: the records of this batch, which follow, take exactly nbytes
=====  ==========  ============================================================================

Every save (:meth:`hafleet_agent.wal.DiskStorage.save`) appends exactly one *batch* with
one ``write()`` followed by one ``fsync()``: a BATCH record, then one ENTRY record per entry,
then a HARD_STATE record if the hard state changed. A batch is all-or-nothing on recovery. An
ENTRY whose index is not past the last one supersedes: it replaces that index and drops
everything after it (how a follower's conflicting tail is overwritten by a new leader). The
last HARD_STATE wins. Entries are written before the hard state, so a commit index on disk
never points past the entries of its own batch.

The file may go on past its last batch with zero bytes: the space the agent preallocates
(:mod:`hafleet_agent.wal`, Writing). A record header never starts with a run of zeros that
passes its CRC (the CRC of a zero type byte and an empty payload is not 0), so zeros from a
batch boundary to the end of the file are the clean end of the log, not a torn write.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .raft.types import EMPTY_HARD_STATE, Entry, EntryType, HardState, SnapshotMeta

__all__ = [
    "FORMAT_VERSION",
    "MAX_RECORD_BYTES",
    "LogScan",
    "PreparedBatch",
    "RecoveryReport",
    "StorageError",
    "encode_batch",
    "encode_log",
    "scan_log",
    "trim_to_snapshot",
]

LOG_MAGIC = b"HAFLRLOG"
FORMAT_VERSION = 1
"""The version of both files, ``raft.log`` and ``snapshot.bin``."""
MAX_RECORD_BYTES = 64 * 1024 * 1024

REC_HARD_STATE = 1
REC_ENTRY = 2
REC_BATCH = 3

_U64_MAX = 2**64 - 1
_LOG_HEADER = struct.Struct("<8sI")  # magic, version
_REC_HEADER = struct.Struct("<IIB")  # payload length, crc32(type + payload), type
_BATCH = struct.Struct("<Q")  # byte length of the batch's records after the BATCH record
_HARD_STATE = struct.Struct("<QQH")  # term, commit, vote length (vote bytes follow)
_ENTRY = struct.Struct("<QQB")  # term, index, entry type (data follows)
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

_BATCH_NEEDLE = U32.pack(_BATCH.size)  # how a BATCH record starts: its length field


class StorageError(Exception):
    """Storage cannot be trusted or used; the message names the file concerned."""


class _BadRecordError(Exception):
    """A record that cannot be read: torn, too long, or with a bad CRC."""


# ---- encoding ------------------------------------------------------------------------------


def _record(rtype: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(bytes((rtype,))))
    return _REC_HEADER.pack(len(payload), crc, rtype) + payload


def check_u64(what: str, value: int) -> None:
    """ValueError unless ``value`` fits a u64 field."""
    if not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise ValueError(f"{what} must be an integer in [0, 2**64), not {value!r}")


def encode_name(what: str, name: str) -> bytes:
    """A node id as ``length u16 | utf-8``; ValueError for an empty or too long one."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, not {name!r}")
    raw = name.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"{what} is too long ({len(raw)} bytes)")
    return U16.pack(len(raw)) + raw


def _hard_state_record(hs: HardState) -> bytes:
    check_u64("hard state term", hs.term)
    check_u64("hard state commit", hs.commit)
    vote = b"" if hs.vote is None else encode_name("hard state vote", hs.vote)[2:]
    return _record(REC_HARD_STATE, _HARD_STATE.pack(hs.term, hs.commit, len(vote)) + vote)


def _entry_record(e: Entry) -> bytes:
    check_u64("entry term", e.term)
    check_u64("entry index", e.index)
    etype = EntryType(e.type)  # ValueError for an unknown type
    data = bytes(e.data)
    if _ENTRY.size + len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"entry {e.index} is too large ({len(data)} bytes of data)")
    return _record(REC_ENTRY, _ENTRY.pack(e.term, e.index, etype) + data)


def encode_batch(entries: Sequence[Entry], hard_state: HardState | None) -> bytes:
    """One batch (what one save appends): a BATCH record, an ENTRY record per entry, then a
    HARD_STATE record when ``hard_state`` is given; ``b""`` when there is nothing to write.
    ValueError for a value the format cannot hold."""
    records = [_entry_record(e) for e in entries]
    if hard_state is not None:
        records.append(_hard_state_record(hard_state))
    if not records:
        return b""
    body = b"".join(records)
    return _record(REC_BATCH, _BATCH.pack(len(body))) + body


def encode_log(entries: Sequence[Entry], hard_state: HardState) -> bytes:
    """A whole log file: the header, then one batch with ``entries`` and ``hard_state`` (no
    HARD_STATE record for the empty one, no batch at all when both are empty)."""
    header = _LOG_HEADER.pack(LOG_MAGIC, FORMAT_VERSION)
    return header + encode_batch(entries, None if hard_state == EMPTY_HARD_STATE else hard_state)


# ---- decoding ------------------------------------------------------------------------------


def _read_record(data: memoryview, pos: int) -> tuple[int, memoryview, int]:
    """Read the record at ``pos``: (type, payload, end offset); _BadRecordError if unreadable."""
    size = len(data)
    if pos + _REC_HEADER.size > size:
        raise _BadRecordError(f"torn record header ({size - pos} of {_REC_HEADER.size} bytes)")
    length, crc, rtype = _REC_HEADER.unpack_from(data, pos)
    if length > MAX_RECORD_BYTES:
        raise _BadRecordError(f"record length {length} over the {MAX_RECORD_BYTES}-byte limit")
    start = pos + _REC_HEADER.size
    end = start + length
    if end > size:
        raise _BadRecordError(f"record of {length} bytes runs past end of file")
    payload = data[start:end]
    if zlib.crc32(payload, zlib.crc32(bytes((rtype,)))) != crc:
        raise _BadRecordError("crc mismatch")
    return rtype, payload, end


def _find_valid_batch(data: memoryview, raw: bytes, start: int) -> int | None:
    """Offset of the first CRC-valid BATCH record at or after ``start``, if any."""
    pos = raw.find(_BATCH_NEEDLE, start)
    while pos != -1:
        if pos + _REC_HEADER.size < len(raw) and raw[pos + 8] == REC_BATCH:
            try:
                _read_record(data, pos)
            except _BadRecordError:
                pass
            else:
                return pos
        pos = raw.find(_BATCH_NEEDLE, pos + 1)
    return None


def _decode_hard_state(payload: memoryview) -> HardState:
    if len(payload) < _HARD_STATE.size:
        raise ValueError("hard state record too short")
    term, commit, n = _HARD_STATE.unpack_from(payload)
    if len(payload) != _HARD_STATE.size + n:
        raise ValueError("hard state record has a wrong vote length")
    vote = bytes(payload[_HARD_STATE.size :]).decode() if n else None
    return HardState(term=term, vote=vote, commit=commit)


def _decode_entry(payload: memoryview) -> Entry:
    if len(payload) < _ENTRY.size:
        raise ValueError("entry record too short")
    term, index, etype = _ENTRY.unpack_from(payload)
    return Entry(term, index, EntryType(etype), bytes(payload[_ENTRY.size :]))


@dataclass
class LogScan:
    hard_state: HardState
    entries: list[Entry]
    size: int  # where the log ends: the file's size, or where its zero tail starts
    cut_at: int | None = None
    reason: str | None = None


def scan_log(raw: bytes, path: Path) -> LogScan:
    """Parse a whole log file: the entries and hard state of its intact batches, and where a
    torn last write starts (``cut_at``); StorageError for corruption of acknowledged data
    (the rules: :mod:`hafleet_agent.wal`, Recovery)."""
    if len(raw) < _LOG_HEADER.size or raw[: len(LOG_MAGIC)] != LOG_MAGIC:
        raise StorageError(
            f"{path}: not a hafleet raft log (bad magic {raw[: len(LOG_MAGIC)]!r}); "
            "refusing to touch it"
        )
    _, version = _LOG_HEADER.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise StorageError(
            f"{path}: unsupported raft log format version {version} (this agent reads "
            f"version {FORMAT_VERSION})"
        )
    data = memoryview(raw)
    size = len(raw)
    # Past ``data_end`` the file holds only zeros (preallocated, never written).
    data_end = len(raw.rstrip(b"\0"))
    hard_state = EMPTY_HARD_STATE
    entries: list[Entry] = []
    pos = _LOG_HEADER.size
    while pos < size:
        if pos >= data_end:  # the preallocated zeros after the last batch
            return LogScan(hard_state, entries, pos)
        batch_start = pos
        try:
            rtype, payload, pos = _read_record(data, pos)
        except _BadRecordError as bad:
            later = _find_valid_batch(data, raw, batch_start + 1)
            if later is not None:
                raise StorageError(
                    f"{path}: {bad} at offset {batch_start}, yet a valid batch follows at "
                    f"offset {later}: acknowledged data in the middle of the log is corrupt "
                    "(disk corruption, not a torn write); refusing to start"
                ) from None
            return LogScan(hard_state, entries, size, batch_start, f"{bad} at offset {batch_start}")
        if rtype != REC_BATCH or len(payload) != _BATCH.size:
            raise StorageError(
                f"{path}: expected a batch record at offset {batch_start}, found a record of "
                f"type {rtype} and {len(payload)} bytes"
            )
        (nbytes,) = _BATCH.unpack(payload)
        batch_end = pos + nbytes
        new_entries: list[tuple[int, Entry]] = []
        new_hs: HardState | None = None
        while pos < batch_end:
            try:
                if pos == size:
                    raise _BadRecordError(
                        f"incomplete batch (file ends after {size - batch_start} of its "
                        f"{batch_end - batch_start} bytes)"
                    )
                rtype, payload, nxt = _read_record(data, pos)
            except _BadRecordError as bad:
                if data_end > batch_end:  # written data after the batch's end
                    raise StorageError(
                        f"{path}: {bad} at offset {pos}, inside the batch at offset "
                        f"{batch_start} which ends at {batch_end}, but the file goes on to "
                        f"{size}: acknowledged data in the middle of the log is corrupt "
                        "(disk corruption, not a torn write); refusing to start"
                    ) from None
                return LogScan(hard_state, entries, size, batch_start, f"{bad} at offset {pos}")
            if nxt > batch_end:
                raise StorageError(
                    f"{path}: record at offset {pos} crosses the end of its batch ({batch_end})"
                )
            try:
                if rtype == REC_ENTRY:
                    new_entries.append((pos, _decode_entry(payload)))
                elif rtype == REC_HARD_STATE:
                    new_hs = _decode_hard_state(payload)
                else:
                    raise ValueError(f"unknown record type {rtype}")
            except ValueError as exc:  # includes UnicodeDecodeError
                raise StorageError(f"{path}: bad record at offset {pos}: {exc}") from None
            pos = nxt
        # the whole batch is intact: apply it
        for offset, e in new_entries:
            if entries:
                first, last = entries[0].index, entries[-1].index
                if e.index > last + 1 or e.index < first:
                    raise StorageError(
                        f"{path}: entry {e.index} at offset {offset} does not fit the log "
                        f"[{first}, {last}]"
                    )
                del entries[e.index - first :]
            entries.append(e)
        if new_hs is not None:
            hard_state = new_hs
    return LogScan(hard_state, entries, size)


@dataclass
class RecoveryReport:
    """What :meth:`DiskStorage.open` found."""

    truncated_bytes: int = 0
    """Bytes cut from a torn or corrupt log tail (0 if the log was clean)."""
    truncated_at: int | None = None
    """File offset where the log was cut (the start of the incomplete batch)."""
    reason: str | None = None
    """Why, e.g. ``"crc mismatch at offset 1234"`` or ``"torn record header ... at offset 9"``."""
    entries: int = 0
    """Entries recovered (after the snapshot)."""


@dataclass
class PreparedBatch:
    """One batch checked and encoded by :meth:`DiskStorage.prepare_save`."""

    data: bytes
    hard_state: HardState | None
    entries: list[Entry]
    durable: bool = False


def trim_to_snapshot(entries: list[Entry], meta: SnapshotMeta) -> list[Entry]:
    """The entries that survive a snapshot (wal.py's module docstring says which)."""
    if not entries or meta.index < entries[0].index:
        return entries
    if meta.index > entries[-1].index:
        return []
    k = meta.index - entries[0].index
    if entries[k].term != meta.term:
        return []
    return entries[k + 1 :]
