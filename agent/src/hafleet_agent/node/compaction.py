"""Compacting the Raft log while the node runs (the driver's part of it).

Once ``snapshot_entries`` entries were applied since the last snapshot and the log file holds
``snapshot_log_ratio`` times the state's bytes, or once the log file holds
``snapshot_log_bytes`` (entries of large values), :meth:`maybe_start` takes a copy of
the state (cheap) and a task encodes it and writes the snapshot file in worker threads, so a
large state does not stall the loop (heartbeats, appends and reads go on). The snapshot is
put in force back on the loop by :meth:`install`, which the driver calls between two ready
batches, when no batch is being written (the install rewrites the log file)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ..config import AgentConfig
from ..raft.rawnode import RawNode
from ..raft.types import Snapshot, SnapshotMeta
from ..state import SnapshotParts, StateMachine, encode_snapshot_parts
from ..telemetry import TELEMETRY
from ..wal import DiskStorage, StorageError

log = logging.getLogger("hafleet.agent")

MIN_APPLIED = 10
"""A compaction covers at least this many newly applied entries (the least
``snapshot_entries``), whatever the log's size."""


class Compaction:
    def __init__(
        self,
        cfg: AgentConfig,
        state: StateMachine,
        *,
        spawn: Callable[..., None],
        fail: Callable[[str], None],
        wake: Callable[[], None],
        sending_snapshot: Callable[[], bool],
    ) -> None:
        """``spawn(coro, name)`` runs the writing task; ``fail`` fail-stops the node;
        ``wake`` asks for a pump (to install what was written); ``sending_snapshot``: a
        member catches up through a chunked snapshot (compaction waits a while)."""
        self.cfg, self.state = cfg, state
        self._spawn, self._fail, self._wake = spawn, fail, wake
        self._sending_snapshot = sending_snapshot
        self.busy = False  # a snapshot is being written, or waits to be installed
        self.prepared: tuple[SnapshotMeta, bytes, Path] | None = None  # written, to install

    def maybe_start(self, raw: RawNode, storage: DiskStorage) -> None:
        """Start a compaction when enough entries were applied since the last snapshot."""
        if self.busy:
            return
        behind = self.state.index - raw.first_index
        if behind < MIN_APPLIED:
            return  # a full log of entries not applied yet: no snapshot storm meanwhile
        entries, size = self.cfg.snapshot_entries, self.cfg.snapshot_log_bytes
        log_bytes = storage.log_bytes()
        # A snapshot rewrites the whole state, so its cost grows with the state while the
        # log's grows with the writes: past snapshot_entries, the log waits until it holds
        # snapshot_log_ratio of the state (with 160,000 keys, 28 MB, a snapshot every 8,192
        # writes took a tenth of a write stream's rate: docs/benchmarks.md, fifteenth session).
        due = behind >= entries and log_bytes >= self.cfg.snapshot_log_ratio * self.state.kv_bytes()
        if not due and log_bytes < size:
            return
        if self._sending_snapshot() and behind < 2 * entries and log_bytes < 2 * size:
            # A member catches up through a chunked snapshot: keep the entries after it a
            # while longer (a compaction now would make it need a newer snapshot at once).
            return
        index = self.state.index
        meta = SnapshotMeta(index, raw.term_at(index), raw.conf_state_at(index))
        self.busy = True
        self._spawn(self._write(storage, meta, self.state.snapshot_parts()), "compact")

    async def _write(self, storage: DiskStorage, meta: SnapshotMeta, parts: SnapshotParts) -> None:
        try:
            started = time.perf_counter()
            data = await asyncio.to_thread(encode_snapshot_parts, parts)
            path = await asyncio.to_thread(storage.prepare_snapshot, Snapshot(meta, data))
            TELEMETRY.snapshot_seconds.observe(time.perf_counter() - started)
            TELEMETRY.snapshot_bytes.observe(len(data))
        except StorageError as exc:
            self.busy = False
            self._fail(f"storage failed, state could not be made durable: {exc}")
            return
        except BaseException:
            self.busy = False
            raise
        self.prepared = (meta, data, path)
        self._wake()

    def install(self, raw: RawNode, storage: DiskStorage, stopping: bool) -> None:
        """Put the written snapshot in force (between two ready batches), or discard it when
        it is no longer right for the log (a snapshot from the leader covers it, the entry
        at its index changed, the node stops)."""
        assert self.prepared is not None
        meta, data, path = self.prepared
        self.prepared = None
        try:
            if (
                stopping
                # a snapshot from the leader covers it
                or meta.index <= raw.basic_status().snapshot_index
                or raw.term_at(meta.index) != meta.term
                or raw.conf_state_at(meta.index) != meta.conf_state
            ):
                storage.discard_prepared_snapshot(path)
                return
            snap = raw.compact(meta.index, data)
            if snap is None:
                storage.discard_prepared_snapshot(path)
            elif storage.install_prepared_snapshot(snap, path):
                log.info("snapshot at index %d (%d bytes)", meta.index, len(data))
        finally:
            self.busy = False
