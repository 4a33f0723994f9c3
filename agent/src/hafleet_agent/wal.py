"""The write-ahead log of one Raft node: term/vote/commit, log entries and the latest
snapshot, durable in one data directory (``DiskStorage``).

The core hands the driver what to persist (``Ready.hard_state``, ``Ready.entries``,
``Ready.snapshot``); the driver calls :meth:`DiskStorage.save` (or its three steps, see
Writing) / :meth:`DiskStorage.save_snapshot`, which return only once the data is durable,
and only then answers for it (an append or a vote acknowledged, an entry applied: see
raft/ready.py; a leader's own appends may go out before). On start
:meth:`DiskStorage.open` recovers what was made durable. Only the standard library is
used. Not thread-safe: one driver owns it (its writer thread runs
:meth:`DiskStorage.write_prepared` or :meth:`DiskStorage.sync_written` only, see Writing).

Data directory
==============

A data directory (created with mode 0700 when missing) holds::

    raft.log       term/vote/commit and the log entries, append-only between compactions
    snapshot.bin   the latest snapshot (absent until the first one is saved)
    LOCK           flock()ed while a DiskStorage has the directory open
    *.tmp          leftovers of an interrupted atomic replace; deleted on open

Files are created with mode 0600. The byte formats (version 1) of ``raft.log`` and
``snapshot.bin`` are specified in :mod:`hafleet_agent.walformat` and
:mod:`hafleet_agent.snapfile`; this module does the file I/O.

Writing
=======

Every :meth:`~DiskStorage.save` appends exactly one batch to ``raft.log`` with one
``pwrite()`` at the log's end followed by one sync. With ``prealloc_bytes`` (the agent:
1 MiB) the file is kept allocated that far past the log's end with zeros (``posix_fallocate``,
etcd's preallocated segments): a batch that lands there changes no file size and is made
durable with ``fdatasync()``, which commits no inode (about a third cheaper here); a batch that
passes the allocation first grows it by another ``prealloc_bytes`` and is ``fsync()``'d. On a
full disk the log is grown only by what the batch needs (the node stops, ENOSPC, only when
that fails); on a filesystem that cannot preallocate it grows by its writes. The zeros after
the last batch are the clean end of the log on recovery. The agent's driver splits a save
(:meth:`~DiskStorage.prepare_save`, the write, :meth:`~DiskStorage.finish_save`) for a group
commit (node/driver.py). The write starts the device's writeback at once
(:meth:`~DiskStorage.write_unsynced`): a leader then hands the ``fdatasync`` to the kernel
(:meth:`~DiskStorage.synced`; node/aiosync.py) or the whole write to its writer thread; a
follower queues its answers, then syncs (node/walwriter.py).

``snapshot.bin`` is replaced atomically: written to ``snapshot.bin.tmp``, fsync'd, renamed
over ``snapshot.bin``, then the directory is fsync'd. Afterwards the log is compacted the same
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
import logging
import os
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import NoReturn

from .raft.types import EMPTY_HARD_STATE, Entry, HardState, Snapshot
from .snapfile import CorruptSnapshotError, decode_snapshot, encode_snapshot
from .walfile import (
    FsyncFn,
    fsync_dir,
    grow_log,
    lock_dir,
    make_dirs,
    preallocate,
    pwrite_all,
    start_writeback,
    write_all,
)
from .walformat import (
    FORMAT_VERSION,
    MAX_RECORD_BYTES,
    PreparedBatch,
    RecoveryReport,
    StorageError,
    encode_batch,
    encode_log,
    scan_log,
    trim_to_snapshot,
)

__all__ = [
    "FORMAT_VERSION",
    "LOG_FILE",
    "MAX_RECORD_BYTES",
    "PREPARED_SUFFIX",
    "PreparedBatch",
    "RECEIVED_SUFFIX",
    "SNAPSHOT_FILE",
    "CorruptSnapshotError",
    "DiskStorage",
    "RecoveryReport",
    "StorageError",
]

# The logger kept its name from when this module was raft/storage.py (log filters and alerts
# that match it keep working).
logger = logging.getLogger("hafleet.raft.storage")

LOG_FILE = "raft.log"
SNAPSHOT_FILE = "snapshot.bin"
LOCK_FILE = "LOCK"
TMP_SUFFIX = ".tmp"
PREPARED_SUFFIX = ".next"
"""A snapshot written ahead by :meth:`DiskStorage.prepare_snapshot`, not yet in force."""
RECEIVED_SUFFIX = ".received"
"""The same for a snapshot received from the leader (a compaction may run meanwhile)."""

PREALLOC_BYTES = 1 << 20
"""How far ahead of its end the agent keeps ``raft.log`` allocated (``prealloc_bytes`` of
:meth:`DiskStorage.open`; see Writing)."""


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
        fdatasync_fn: FsyncFn,
        lock_fd: int | None,
        prealloc_bytes: int = 0,
    ) -> None:
        """Internal: :meth:`open` builds a storage, recovers and fills it in."""
        self.path = path
        self.log_path = path / LOG_FILE
        self.snapshot_path = path / SNAPSHOT_FILE
        self._fsync = fsync
        self._fsync_fn = fsync_fn
        self._fdatasync_fn = fdatasync_fn
        self._lock_fd = lock_fd
        self._prealloc = prealloc_bytes
        self._log_fd: int | None = None
        self._log_size = 0  # where the next batch goes
        self._log_alloc = 0  # the file's size: _log_size, or more when preallocated
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
        fdatasync_fn: FsyncFn | None = None,
        lock: bool = True,
        prealloc_bytes: int = 0,
    ) -> DiskStorage:
        """Open (creating it if missing, mode 0700) and recover a data directory.

        ``fsync=False`` skips every fsync (simulations, tests: nothing is durable then).
        ``fsync_fn`` is called for every fsync of a file or directory; tests inject failures
        through it. ``fdatasync_fn`` syncs a log write that changed no file size (within the
        preallocated space); by default ``os.fdatasync``, or ``fsync_fn`` when one is
        injected (so an injected function sees every sync). ``prealloc_bytes`` > 0 keeps
        ``raft.log`` allocated that far past its end (the agent: :data:`PREALLOC_BYTES`);
        0 lets it grow by its writes, each synced with ``fsync_fn``. ``lock`` takes an
        exclusive flock on ``LOCK`` so that two processes never share a data directory (a
        second open, even in the same process, raises until the first is closed).
        """
        path = Path(data_dir)
        sync = fsync_fn if fsync else None
        try:
            make_dirs(path, sync)
        except OSError as exc:
            raise StorageError(f"{path}: cannot create the data directory: {exc}") from exc
        if not path.is_dir():
            raise StorageError(f"{path}: not a directory")
        lock_fd = lock_dir(path, LOCK_FILE) if lock else None
        if prealloc_bytes < 0:
            raise ValueError(f"prealloc_bytes must be >= 0, not {prealloc_bytes}")
        if fdatasync_fn is None:
            fdatasync_fn = os.fdatasync if fsync_fn is os.fsync else fsync_fn
        storage = cls(
            path,
            fsync=fsync,
            fsync_fn=fsync_fn,
            fdatasync_fn=fdatasync_fn,
            lock_fd=lock_fd,
            prealloc_bytes=prealloc_bytes,
        )
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
            self.snapshot = decode_snapshot(self._read(self.snapshot_path), self.snapshot_path)
        if not self.log_path.exists():
            if not self.snapshot.empty:
                raise StorageError(
                    f"{self.log_path}: missing, but {self.snapshot_path} exists: the data "
                    "directory is damaged (term and vote would be lost); refusing to start"
                )
            self._rewrite_log()
            return
        scan = scan_log(self._read(self.log_path), self.log_path)
        try:
            self._log_fd = os.open(self.log_path, os.O_RDWR | os.O_CLOEXEC)
            self._log_size = scan.size
            self._log_alloc = os.fstat(self._log_fd).st_size
            if scan.cut_at is not None:
                cut = scan.size - scan.cut_at
                os.ftruncate(self._log_fd, scan.cut_at)
                self._sync(self._log_fd)
                self._log_size = self._log_alloc = scan.cut_at
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
        kept = trim_to_snapshot(entries, self.snapshot.meta)
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

        The same in three steps (group commit): :meth:`prepare_save` (checks and encodes, in
        the owner's thread), :meth:`write_prepared` (the one write and fsync: the only part
        that may run in a writer thread, while the owner touches nothing of this storage but
        :meth:`prepare_snapshot`; or :meth:`write_unsynced` and a sync) and
        :meth:`finish_save` (in the owner's thread, once durable: memory follows the disk)."""
        batch = self.prepare_save(hard_state, entries)
        if batch is not None:
            self.write_prepared(batch)
            self.finish_save(batch)

    def prepare_save(
        self, hard_state: HardState | None, entries: Sequence[Entry]
    ) -> PreparedBatch | None:
        """Check and encode one batch for :meth:`write_prepared`; None when there is nothing
        to write (no entries, and no hard state or the same as the saved one). One prepared
        batch at a time: prepare the next only after :meth:`finish_save` of this one."""
        self._check()
        entries = list(entries)
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
        if hard_state == self.hard_state:
            hard_state = None
        data = encode_batch(entries, hard_state)
        if not data:
            return None
        return PreparedBatch(data, hard_state, entries)

    def write_prepared(self, batch: PreparedBatch) -> None:
        """Append the prepared batch with one write and make it durable with one sync (the
        writer thread's part; a failure makes the storage unusable, as in :meth:`save`):
        ``fdatasync`` when it lands in preallocated space, else ``fsync`` (the file grew)."""
        self._check()
        fd = self._log_fd
        assert fd is not None
        end = self._log_size + len(batch.data)
        grew = end > self._log_alloc
        try:
            if grew and self._prealloc:
                self._log_alloc, self._prealloc = grow_log(
                    fd, self._log_alloc, end, self._prealloc, self.log_path
                )
            pwrite_all(fd, batch.data, self._log_size)
            self._log_alloc = max(self._log_alloc, end)
            if grew:
                self._sync(fd)
            elif self._fsync:
                self._fdatasync_fn(fd)
        except OSError as exc:
            self._fail(f"{self.log_path}: write or fsync failed: {exc}", exc)
        batch.durable = True

    def write_unsynced(self, batch: PreparedBatch, *, inline: bool = False) -> int | None:
        """:meth:`write_prepared`'s write, its writeback started (``sync_file_range``), not
        waited for: the fd to ``fdatasync`` through Linux AIO, then :meth:`synced`
        (node/walwriter.py); ``inline``: :meth:`sync_written` in this thread (with an injected
        sync function too). None when the batch grows the file (an ``fsync``), syncs are
        off, or (not ``inline``) a sync function was injected: nothing was written,
        :meth:`write_prepared` does it all."""
        self._check()
        fd = self._log_fd
        assert fd is not None
        custom = self._fdatasync_fn is not os.fdatasync and not inline
        if self._log_size + len(batch.data) > self._log_alloc or not self._fsync or custom:
            return None
        try:
            pwrite_all(fd, batch.data, self._log_size)
        except OSError as exc:
            self._fail(f"{self.log_path}: write failed: {exc}", exc)
        start_writeback(fd, self._log_size, len(batch.data))
        return fd

    def synced(self, batch: PreparedBatch, error: OSError | None) -> None:
        """The ``fdatasync`` of a :meth:`write_unsynced` batch ended: the batch is durable,
        or (``error``) StorageError and the storage is unusable, as after a failed sync."""
        if error is not None:
            self._fail(f"{self.log_path}: fdatasync failed: {error}", error)
        batch.durable = True

    def sync_written(self, batch: PreparedBatch) -> None:  # the sync in the caller's thread
        try:
            self._fdatasync_fn(self._log_fd)  # type: ignore[arg-type]
        except OSError as exc:
            self.synced(batch, exc)  # raises StorageError
        batch.durable = True

    def finish_save(self, batch: PreparedBatch) -> None:
        """The batch is durable: :attr:`entries` and :attr:`hard_state` show it."""
        if not batch.durable:
            raise ValueError("finish_save of a batch that was not written")
        entries = batch.entries
        self._log_size += len(batch.data)
        if entries:
            if self.entries:
                del self.entries[entries[0].index - self.entries[0].index :]
            self.entries.extend(entries)
        if batch.hard_state is not None:
            self.hard_state = batch.hard_state

    def save_snapshot(self, snap: Snapshot) -> None:
        """Replace the snapshot atomically, then compact the log (see the module docstring);
        a snapshot not newer than the current one is ignored."""
        self._check()
        if snap.meta.index <= self.snapshot.meta.index:
            return
        content = encode_snapshot(snap)
        tmp = self.path / (SNAPSHOT_FILE + TMP_SUFFIX)
        try:
            self._write_synced(tmp, content)
        except OSError as exc:
            self._fail(f"{self.snapshot_path}: cannot save the snapshot: {exc}", exc)
        self._put_in_force(snap, tmp, "save")

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
        content = encode_snapshot(snap)
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
            write_all(fd, content)
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
        self._put_in_force(snap, path, "install")
        return True

    def _put_in_force(self, snap: Snapshot, path: Path, verb: str) -> None:
        """Rename the synced snapshot file ``path`` over ``snapshot.bin``, fsync the directory
        and compact the log to the snapshot."""
        try:
            os.replace(path, self.snapshot_path)
            self._sync_dir()
        except OSError as exc:
            self._fail(f"{self.snapshot_path}: cannot {verb} the snapshot: {exc}", exc)
        self.snapshot = snap
        self.entries = list(trim_to_snapshot(self.entries, snap.meta))
        self._rewrite_log()

    def discard_prepared_snapshot(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def _rewrite_log(self) -> None:
        """Atomically replace the log with one batch: :attr:`entries` + :attr:`hard_state`."""
        content = encode_log(self.entries, self.hard_state)
        tmp = self.path / (LOG_FILE + TMP_SUFFIX)
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        fd: int | None = None
        alloc = len(content)
        try:
            fd = os.open(tmp, flags, 0o600)
            write_all(fd, content)
            if self._prealloc:
                try:
                    preallocate(fd, alloc, alloc + self._prealloc)
                    alloc += self._prealloc
                except OSError as exc:  # a full disk: the next write will tell
                    logger.info("%s: not preallocated (%s)", tmp, exc)
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
        self._log_alloc = alloc

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

    def __exit__(self, *exc_info: object) -> None:
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
            fsync_dir(self.path, self._fsync_fn)
