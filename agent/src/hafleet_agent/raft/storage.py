"""Durable storage of one Raft node: term/vote/commit, log entries and the latest snapshot.

The core hands the driver what to persist (``Ready.hard_state``, ``Ready.entries``,
``Ready.snapshot``); the driver calls :meth:`DiskStorage.save` /
:meth:`DiskStorage.save_snapshot`, which return only once the data is durable, and only then
sends messages or acknowledges anything. On start :meth:`DiskStorage.open` recovers what was
made durable. Only the standard library is used. Not thread-safe: one driver owns it.

On-disk format (version 1)
==========================

A data directory (created with mode 0700 when missing) holds::

    raft.log       term/vote/commit and the log entries, append-only between compactions
    snapshot.bin   the latest snapshot (absent until the first one is saved)
    LOCK           flock()ed while a DiskStorage has the directory open
    *.tmp          leftovers of an interrupted atomic replace; deleted on open

All integers are little-endian. Files are created with mode 0600.

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

Every :meth:`~DiskStorage.save` appends exactly one *batch* with one ``write()`` followed
by one ``fsync()``: a BATCH record, then one ENTRY record per entry, then a HARD_STATE
record if the hard state changed. A batch is all-or-nothing on recovery. An ENTRY whose
index is not past the last one supersedes: it replaces that index and drops everything
after it (how a follower's conflicting tail is overwritten by a new leader). The last
HARD_STATE wins. Entries are written before the hard state, so a commit index on disk
never points past the entries of its own batch.

``snapshot.bin``::

    magic "HAFLSNAP" | version u32 | crc u32 (CRC-32 of body) | body length u64 | body
    body: index u64 | term u64
          | voter count u32 | per voter: length u16, utf-8
          | learner count u32 | per learner: length u16, utf-8
          | data length u64 | data

It is replaced atomically: written to ``snapshot.bin.tmp``, fsync'd, renamed over
``snapshot.bin``, then the directory is fsync'd. Afterwards the log is compacted the same
way (``raft.log.tmp`` holding one batch with the entries after the snapshot and the latest
hard state, fsync, rename, fsync of the directory). Entries after the snapshot are kept only
if the log holds the snapshot's own index with the snapshot's term (a snapshot taken
locally, or a leader's snapshot that matches our log); otherwise - the snapshot is past our
last entry, or our entry at its index has another term - every entry is dropped. A snapshot
not newer than the current one is ignored. A crash between the two renames is finished on
the next open.

A compaction may also write its snapshot ahead, in a worker thread, to ``snapshot.bin.next``
(a follower the snapshot it received from the leader: ``snapshot.bin.received-INDEX-TERM``)
(:meth:`DiskStorage.prepare_snapshot`: encode, write, fsync - the costly part for a large
state) and put it in force later from the owner's thread
(:meth:`DiskStorage.install_prepared_snapshot`: rename over ``snapshot.bin``, directory
fsync, log compaction as above). A prepared file is never read back on open: it is removed,
like a ``.tmp`` file.

Recovery
========

``open()`` reads the snapshot first: a snapshot with a bad magic, a bad CRC, a wrong length
or a malformed body raises :class:`CorruptSnapshotError`, never falls back silently. Then it
reads the log batch by batch. A log without the right magic or version raises
:class:`StorageError` (it is never truncated). A bad record - torn header, a length beyond
the 64 MiB limit or running past the end of the file, a CRC mismatch - or a batch that ends
early is handled as follows:

* If nothing but the rest of that batch follows, it is the tail of the one write that was in
  flight when the node stopped: that write was never fsync'd, hence never acknowledged. The
  file is cut at the start of the batch (``ftruncate`` + ``fsync``), the cut is described in
  :attr:`DiskStorage.report` and logged as a warning on ``hafleet.raft.storage``. Valid
  records of that same batch are dropped with it (batches are atomic).
* If more data follows - the damaged batch's declared end lies before the end of the file,
  or (when the BATCH record itself is damaged, so its length is unknown) a valid BATCH
  record can be found after it - then a later write happened, which only happens after the
  damaged one was fsync'd and acknowledged. That is real disk corruption of acknowledged
  data, not a torn write: ``open()`` raises :class:`StorageError` naming the file and the
  offset instead of silently dropping acknowledged state. An operator must decide (restore
  the node from its peers).

A record that passes its CRC but makes no sense (unknown type, a gap in the indexes, a batch
not starting with a BATCH record) is a bug or a foreign file: :class:`StorageError`.

Failures
========

Any ``OSError`` while writing or syncing (including from the injectable ``fsync_fn``)
raises :class:`StorageError` and makes the object unusable: every later call raises too
(``close()`` excepted). After a failed fsync the kernel may have dropped the dirty pages and
cleared the error, so retrying could "succeed" without the data ever reaching the disk (the
PostgreSQL fsync lesson); the agent must stop and recover from what is really on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from .types import (
    EMPTY_HARD_STATE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMeta,
)

__all__ = [
    "FORMAT_VERSION",
    "LOG_FILE",
    "MAX_RECORD_BYTES",
    "SNAPSHOT_FILE",
    "CorruptSnapshotError",
    "DiskStorage",
    "RecoveryReport",
    "StorageError",
]

logger = logging.getLogger("hafleet.raft.storage")

LOG_FILE = "raft.log"
SNAPSHOT_FILE = "snapshot.bin"
LOCK_FILE = "LOCK"
TMP_SUFFIX = ".tmp"
PREPARED_SUFFIX = ".next"
"""A snapshot written ahead by :meth:`DiskStorage.prepare_snapshot`, not yet in force."""
RECEIVED_SUFFIX = ".received"
"""The same for a snapshot received from the leader (a compaction may run meanwhile)."""

LOG_MAGIC = b"HAFLRLOG"
SNAP_MAGIC = b"HAFLSNAP"
FORMAT_VERSION = 1
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
_SNAP_HEADER = struct.Struct("<8sIIQ")  # magic, version, crc32(body), body length
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SNAP_META = struct.Struct("<QQ")  # index, term

_BATCH_NEEDLE = _U32.pack(_BATCH.size)  # how a BATCH record starts: its length field

FsyncFn = Callable[[int], None]


class StorageError(Exception):
    """Storage cannot be trusted or used; the message names the file concerned."""


class CorruptSnapshotError(StorageError):
    """The snapshot file exists but is damaged; it is refused, never silently ignored."""


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


class _BadRecordError(Exception):
    """A record that cannot be read: torn, too long, or with a bad CRC."""


# ---- encoding ------------------------------------------------------------------------------


def _record(rtype: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(bytes((rtype,))))
    return _REC_HEADER.pack(len(payload), crc, rtype) + payload


def _check_u64(what: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise ValueError(f"{what} must be an integer in [0, 2**64), not {value!r}")


def _encode_name(what: str, name: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, not {name!r}")
    raw = name.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"{what} is too long ({len(raw)} bytes)")
    return _U16.pack(len(raw)) + raw


def _hard_state_record(hs: HardState) -> bytes:
    _check_u64("hard state term", hs.term)
    _check_u64("hard state commit", hs.commit)
    vote = b"" if hs.vote is None else _encode_name("hard state vote", hs.vote)[2:]
    return _record(REC_HARD_STATE, _HARD_STATE.pack(hs.term, hs.commit, len(vote)) + vote)


def _entry_record(e: Entry) -> bytes:
    _check_u64("entry term", e.term)
    _check_u64("entry index", e.index)
    etype = EntryType(e.type)  # ValueError for an unknown type
    data = bytes(e.data)
    if _ENTRY.size + len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"entry {e.index} is too large ({len(data)} bytes of data)")
    return _record(REC_ENTRY, _ENTRY.pack(e.term, e.index, etype) + data)


def _batch(records: Sequence[bytes]) -> bytes:
    body = b"".join(records)
    return _record(REC_BATCH, _BATCH.pack(len(body))) + body


def _encode_snapshot(snap: Snapshot) -> bytes:
    meta = snap.meta
    _check_u64("snapshot index", meta.index)
    _check_u64("snapshot term", meta.term)
    parts = [_SNAP_META.pack(meta.index, meta.term)]
    for what, names in (("voter", meta.conf_state.voters), ("learner", meta.conf_state.learners)):
        parts.append(_U32.pack(len(names)))
        parts.extend(_encode_name(f"snapshot {what}", n) for n in names)
    data = bytes(snap.data)
    parts.append(_U64.pack(len(data)))
    parts.append(data)
    body = b"".join(parts)
    return _SNAP_HEADER.pack(SNAP_MAGIC, FORMAT_VERSION, zlib.crc32(body), len(body)) + body


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
class _LogScan:
    hard_state: HardState
    entries: list[Entry]
    size: int  # bytes in the file
    cut_at: int | None = None
    reason: str | None = None


def _scan_log(raw: bytes, path: Path) -> _LogScan:
    """Parse a whole log file; see the module docstring for the recovery rules."""
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
    hard_state = EMPTY_HARD_STATE
    entries: list[Entry] = []
    pos = _LOG_HEADER.size
    while pos < size:
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
            return _LogScan(
                hard_state, entries, size, batch_start, f"{bad} at offset {batch_start}"
            )
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
                if size > batch_end:
                    raise StorageError(
                        f"{path}: {bad} at offset {pos}, inside the batch at offset "
                        f"{batch_start} which ends at {batch_end}, but the file goes on to "
                        f"{size}: acknowledged data in the middle of the log is corrupt "
                        "(disk corruption, not a torn write); refusing to start"
                    ) from None
                return _LogScan(hard_state, entries, size, batch_start, f"{bad} at offset {pos}")
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
    return _LogScan(hard_state, entries, size)


class _SnapReader:
    def __init__(self, body: bytes, path: Path) -> None:
        self.body = body
        self.pos = 0
        self.path = path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise CorruptSnapshotError(f"{self.path}: malformed snapshot body (truncated field)")
        out = self.body[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct) -> tuple[int, ...]:
        return st.unpack(self.take(st.size))

    def names(self) -> tuple[str, ...]:
        (count,) = self.unpack(_U32)
        out = []
        for _ in range(count):
            (n,) = self.unpack(_U16)
            try:
                out.append(self.take(n).decode())
            except UnicodeDecodeError:
                raise CorruptSnapshotError(
                    f"{self.path}: malformed snapshot body (node id is not utf-8)"
                ) from None
        return tuple(out)


def _decode_snapshot(raw: bytes, path: Path) -> Snapshot:
    if len(raw) < _SNAP_HEADER.size:
        raise CorruptSnapshotError(
            f"{path}: snapshot file is truncated ({len(raw)} bytes, the header alone needs "
            f"{_SNAP_HEADER.size})"
        )
    magic, version, crc, length = _SNAP_HEADER.unpack_from(raw)
    if magic != SNAP_MAGIC:
        raise CorruptSnapshotError(f"{path}: not a hafleet snapshot (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise StorageError(
            f"{path}: unsupported snapshot format version {version} (this agent reads "
            f"version {FORMAT_VERSION})"
        )
    body = raw[_SNAP_HEADER.size :]
    if len(body) != length:
        raise CorruptSnapshotError(
            f"{path}: snapshot file is truncated or has trailing garbage: the header says "
            f"{length} body bytes, the file has {len(body)}"
        )
    if zlib.crc32(body) != crc:
        raise CorruptSnapshotError(f"{path}: snapshot crc mismatch (the file is corrupt)")
    r = _SnapReader(body, path)
    index, term = r.unpack(_SNAP_META)
    voters = r.names()
    learners = r.names()
    (n,) = r.unpack(_U64)
    data = r.take(n)
    if r.pos != len(body):
        raise CorruptSnapshotError(f"{path}: malformed snapshot body (trailing bytes)")
    return Snapshot(SnapshotMeta(index, term, ConfState(voters, learners)), data)


def _trim_to_snapshot(entries: list[Entry], meta: SnapshotMeta) -> list[Entry]:
    """The entries that survive a snapshot (see the module docstring)."""
    if not entries or meta.index < entries[0].index:
        return entries
    if meta.index > entries[-1].index:
        return []
    k = meta.index - entries[0].index
    if entries[k].term != meta.term:
        return []
    return entries[k + 1 :]


# ---- file helpers --------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class DiskStorage:
    """The durable state of one Raft node in one data directory. Use :meth:`open`."""

    report: RecoveryReport
    hard_state: HardState
    snapshot: Snapshot
    entries: list[Entry]

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool,
        fsync_fn: FsyncFn,
        lock_fd: int | None,
    ) -> None:
        """Internal: :meth:`open` builds a storage, recovers and fills it in."""
        self.path = path
        self.log_path = path / LOG_FILE
        self.snapshot_path = path / SNAPSHOT_FILE
        self._fsync = fsync
        self._fsync_fn = fsync_fn
        self._lock_fd = lock_fd
        self._log_fd: int | None = None
        self._log_size = 0
        self._failed: str | None = None
        self._closed = False
        self.report = RecoveryReport()
        self.hard_state = EMPTY_HARD_STATE
        self.snapshot = Snapshot()
        self.entries = []

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        fsync: bool = True,
        fsync_fn: FsyncFn = os.fsync,
        lock: bool = True,
    ) -> DiskStorage:
        """Open (creating it if missing, mode 0700) and recover a data directory.

        ``fsync=False`` skips every fsync (simulations, tests: nothing is durable then).
        ``fsync_fn`` is called for every fsync of a file or directory; tests inject failures
        through it. ``lock`` takes an exclusive flock on ``LOCK`` so that two processes never
        share a data directory (a second open, even in the same process, raises until the
        first is closed).
        """
        path = Path(data_dir)
        sync = fsync_fn if fsync else None
        try:
            _make_dirs(path, sync)
        except OSError as exc:
            raise StorageError(f"{path}: cannot create the data directory: {exc}") from exc
        if not path.is_dir():
            raise StorageError(f"{path}: not a directory")
        lock_fd = _lock_dir(path) if lock else None
        storage = cls(path, fsync=fsync, fsync_fn=fsync_fn, lock_fd=lock_fd)
        try:
            storage._recover()
        except BaseException:
            storage.close()
            raise
        return storage

    def _recover(self) -> None:
        leftovers = [self.path / (name + TMP_SUFFIX) for name in (LOG_FILE, SNAPSHOT_FILE)]
        prepared = [self.path / (SNAPSHOT_FILE + PREPARED_SUFFIX)]
        prepared += sorted(self.path.glob(SNAPSHOT_FILE + RECEIVED_SUFFIX + "-*"))
        for tmp in [*leftovers, *prepared]:
            if tmp.exists():
                logger.info("%s: removing the leftover of an interrupted write", tmp)
                tmp.unlink()
        if self.snapshot_path.exists():
            self.snapshot = _decode_snapshot(self._read(self.snapshot_path), self.snapshot_path)
        if not self.log_path.exists():
            if not self.snapshot.empty:
                raise StorageError(
                    f"{self.log_path}: missing, but {self.snapshot_path} exists: the data "
                    "directory is damaged (term and vote would be lost); refusing to start"
                )
            self._rewrite_log()
            return
        scan = _scan_log(self._read(self.log_path), self.log_path)
        try:
            self._log_fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            self._log_size = scan.size
            if scan.cut_at is not None:
                cut = scan.size - scan.cut_at
                os.ftruncate(self._log_fd, scan.cut_at)
                self._sync(self._log_fd)
                self._log_size = scan.cut_at
                self.report.truncated_bytes = cut
                self.report.truncated_at = scan.cut_at
                self.report.reason = scan.reason
                logger.warning(
                    "%s: cut %d bytes of a torn or corrupt tail at offset %d (%s); this write "
                    "was never acknowledged",
                    self.log_path,
                    cut,
                    scan.cut_at,
                    scan.reason,
                )
        except OSError as exc:
            raise StorageError(f"{self.log_path}: cannot recover the log: {exc}") from exc
        entries = scan.entries
        snap_index = self.snapshot.meta.index
        if entries and entries[0].index > snap_index + 1:
            raise StorageError(
                f"{self.log_path}: the log starts at entry {entries[0].index}, but the "
                f"snapshot {self.snapshot_path} ends at {snap_index}: entries are missing"
            )
        kept = _trim_to_snapshot(entries, self.snapshot.meta)
        self.hard_state = scan.hard_state
        self.entries = list(kept)
        if len(kept) != len(entries):
            logger.info(
                "%s: finishing an interrupted compaction to snapshot %d", self.log_path, snap_index
            )
            self._rewrite_log()
        self.report.entries = len(self.entries)

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StorageError(f"{path}: cannot read: {exc}") from exc

    # ---- queries ---------------------------------------------------------------------------
    def first_index(self) -> int:
        """Index of the first entry that may be in :attr:`entries` (snapshot index + 1)."""
        self._check()
        return self.snapshot.meta.index + 1

    def last_index(self) -> int:
        """Index of the last entry (the snapshot's index when there are none after it)."""
        self._check()
        return self.entries[-1].index if self.entries else self.snapshot.meta.index

    def log_bytes(self) -> int:
        """Current size of the log file in bytes (it grows until the next snapshot)."""
        self._check()
        return self._log_size

    # ---- writes ----------------------------------------------------------------------------
    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Append ``entries`` and save ``hard_state`` (if given and changed), durably.

        If ``entries[0].index`` is not past the last entry, the log from that index on is
        replaced. Exactly one write and, with ``fsync=True``, one fsync. Raises ValueError
        for entries that are not contiguous, leave a gap or reach into the snapshot (the
        storage stays usable), StorageError if the disk fails (it becomes unusable).
        """
        self._check()
        entries = list(entries)
        records: list[bytes] = []
        if entries:
            first = entries[0].index
            snap_index = self.snapshot.meta.index
            if first <= snap_index:
                raise ValueError(f"entry {first} is covered by the snapshot at {snap_index}")
            if first > self.last_index() + 1:
                raise ValueError(
                    f"entry {first} would leave a gap after the last entry {self.last_index()}"
                )
            for prev, e in pairwise(entries):
                if e.index != prev.index + 1:
                    raise ValueError(f"entries are not contiguous: {prev.index} then {e.index}")
            records.extend(_entry_record(e) for e in entries)
        if hard_state is not None and hard_state != self.hard_state:
            records.append(_hard_state_record(hard_state))
        else:
            hard_state = None
        if not records:
            return
        batch = _batch(records)
        assert self._log_fd is not None
        try:
            _write_all(self._log_fd, batch)
            self._sync(self._log_fd)
        except OSError as exc:
            self._fail(f"{self.log_path}: write or fsync failed: {exc}", exc)
        self._log_size += len(batch)
        if entries:
            if self.entries:
                del self.entries[entries[0].index - self.entries[0].index :]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def save_snapshot(self, snap: Snapshot) -> None:
        """Replace the snapshot atomically, then compact the log (see the module docstring).

        A snapshot not newer than the current one is ignored.
        """
        self._check()
        if snap.meta.index <= self.snapshot.meta.index:
            return
        content = _encode_snapshot(snap)
        tmp = self.path / (SNAPSHOT_FILE + TMP_SUFFIX)
        try:
            self._write_synced(tmp, content)
            os.replace(tmp, self.snapshot_path)
            self._sync_dir()
        except OSError as exc:
            self._fail(f"{self.snapshot_path}: cannot save the snapshot: {exc}", exc)
        self.snapshot = snap
        self.entries = list(_trim_to_snapshot(self.entries, snap.meta))
        self._rewrite_log()

    def prepare_snapshot(self, snap: Snapshot, suffix: str = PREPARED_SUFFIX) -> Path:
        """Write ``snap`` to a file of its own (``snapshot.bin.next``, or another
        ``suffix``: ``RECEIVED_SUFFIX`` for a snapshot from the leader, then named after its
        index and term too, ``snapshot.bin.received-INDEX-TERM``) and fsync it, touching
        nothing else: the one call of this class that may run in a worker thread, while the
        owner goes on with :meth:`save` (the slow part of a compaction - encoding, writing
        and syncing the whole state - then no longer holds the caller's thread). Put it in
        force with :meth:`install_prepared_snapshot`, from the owner's thread. One prepared
        compaction at a time."""
        if suffix not in (PREPARED_SUFFIX, RECEIVED_SUFFIX):
            raise ValueError(f"unknown suffix {suffix!r}")
        self._check()
        content = _encode_snapshot(snap)
        path = self.path / (SNAPSHOT_FILE + suffix)
        if suffix == RECEIVED_SUFFIX:
            path = path.with_name(f"{path.name}-{snap.meta.index}-{snap.meta.term}")
        try:
            self._write_synced(path, content)
        except OSError as exc:
            self._fail(f"{path}: cannot write the snapshot: {exc}", exc)
        return path

    def _write_synced(self, path: Path, content: bytes) -> None:
        """Create or truncate ``path`` (mode 0600), write ``content`` and fsync it; OSError
        for the caller to turn into a storage failure."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, content)
            self._sync(fd)
        finally:
            os.close(fd)

    def install_prepared_snapshot(self, snap: Snapshot, path: Path) -> bool:
        """Put a snapshot written by :meth:`prepare_snapshot` in force, exactly as
        :meth:`save_snapshot` would (rename, directory fsync, log compaction). False, and the
        file is removed, when it is not newer than the current snapshot (one received from
        the leader meanwhile)."""
        self._check()
        if snap.meta.index <= self.snapshot.meta.index:
            self.discard_prepared_snapshot(path)
            return False
        try:
            os.replace(path, self.snapshot_path)
            self._sync_dir()
        except OSError as exc:
            self._fail(f"{self.snapshot_path}: cannot install the snapshot: {exc}", exc)
        self.snapshot = snap
        self.entries = list(_trim_to_snapshot(self.entries, snap.meta))
        self._rewrite_log()
        return True

    def discard_prepared_snapshot(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def _rewrite_log(self) -> None:
        """Atomically replace the log with one batch: :attr:`entries` + :attr:`hard_state`."""
        records = [_entry_record(e) for e in self.entries]
        if self.hard_state != EMPTY_HARD_STATE:
            records.append(_hard_state_record(self.hard_state))
        content = _LOG_HEADER.pack(LOG_MAGIC, FORMAT_VERSION)
        if records:
            content += _batch(records)
        tmp = self.path / (LOG_FILE + TMP_SUFFIX)
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        fd: int | None = None
        try:
            fd = os.open(tmp, flags, 0o600)
            _write_all(fd, content)
            self._sync(fd)
            os.replace(tmp, self.log_path)
            self._sync_dir()
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            self._fail(f"{self.log_path}: cannot rewrite the log: {exc}", exc)
        if self._log_fd is not None:
            os.close(self._log_fd)
        self._log_fd = fd
        self._log_size = len(content)

    # ---- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Release the files and the lock. Idempotent; works on a failed storage too."""
        self._closed = True
        for attr in ("_log_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                setattr(self, attr, None)
                os.close(fd)

    def __enter__(self) -> DiskStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "failed" if self._failed else "closed" if self._closed else "open"
        return (
            f"<DiskStorage {str(self.path)!r} {state} snapshot={self.snapshot.meta.index} "
            f"entries={len(self.entries)} term={self.hard_state.term}>"
        )

    # ---- internals -------------------------------------------------------------------------
    def _check(self) -> None:
        if self._failed is not None:
            raise StorageError(
                f"{self.path}: storage is unusable after an earlier failure ({self._failed}); "
                "the node must stop and recover from disk"
            )
        if self._closed:
            raise StorageError(f"{self.path}: storage is closed")

    def _fail(self, message: str, exc: OSError) -> NoReturn:
        self._failed = message
        logger.error("%s; storage is now unusable (fail-stop)", message)
        raise StorageError(message) from exc

    def _sync(self, fd: int) -> None:
        if self._fsync:
            self._fsync_fn(fd)

    def _sync_dir(self) -> None:
        if self._fsync:
            _fsync_dir(self.path, self._fsync_fn)


def _fsync_dir(path: Path, fsync_fn: FsyncFn) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync_fn(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path, fsync_fn: FsyncFn | None) -> None:
    """Create ``path`` and missing parents with mode 0700; fsync each new entry's parent."""
    missing: list[Path] = []
    p = path.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # whatever the umask
        if fsync_fn is not None:
            _fsync_dir(d.parent, fsync_fn)


def _lock_dir(path: Path) -> int:
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"{lock_path}: cannot open the lock file: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StorageError(
            f"{path}: the data directory is in use by another storage (lock {lock_path} is "
            f"held): {exc}"
        ) from exc
    return fd
