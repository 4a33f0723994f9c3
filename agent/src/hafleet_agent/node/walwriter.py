"""The one thread that writes the Raft log (``raft-wal``): a job in, its completion back on
the event loop in one hop.

``run_in_executor`` on a one-thread pool did the same with more machinery on the write path:
a pool future wrapped in an asyncio future whose completion is scheduled on the loop, then
the done callback scheduled again (two loop cycles between the fsync and the answers). Here
the thread calls ``loop.call_soon_threadsafe(done, error)`` itself: the driver's completion
runs in the next loop cycle. fsync releases the GIL, so the loop goes on meanwhile.

The thread runs under ``SCHED_BATCH`` (Linux): a job handed to it no longer preempts the
event loop's thread at the hand-over. Under the default policy the kernel switched to the
woken writer on the loop's own core, where it found the GIL held by the loop and slept again
(two context switches per batch, ~8 % of the loop's time under 16 clients). Measured with
``bench/ab_agent.py`` (3 rounds of 10 s): 16 clients 2,605 -> 2,786 writes/s, 1 client 560 ->
573, the leader's CPU per write 0.42 -> 0.38 ms.

On Linux the thread is mostly idle: :meth:`WalWriter.write_batch` writes a batch on the loop
and hands only its ``fdatasync`` to the kernel (node/aiosync.py), which spares the hand-overs
of the interpreter's lock between the loop and this thread. The thread takes the batches
that cannot go that way (one that grows the file; an injected sync function, as the tests
and the chaos suite use) and every batch where Linux AIO is not there."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from ..telemetry import TELEMETRY
from ..wal import DiskStorage, PreparedBatch, StorageError
from .aiosync import AioSyncer, open_syncer

log = logging.getLogger("hafleet.agent")

_STOP = object()


class WalWriter:
    def __init__(self, name: str = "raft-wal") -> None:
        self._jobs: SimpleQueue[Any] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._syncer_tried = False  # open_syncer is tried once, at the first batch
        self._syncer: AioSyncer | None = None  # opened on that batch's loop

    def write_batch(
        self,
        loop: asyncio.AbstractEventLoop,
        storage: DiskStorage,
        batch: PreparedBatch,
        done: Callable[[BaseException | None], None],
        send: Callable[[], None] | None = None,
    ) -> None:
        """Write ``batch`` to ``storage``'s log and make it durable, then ``done(None)`` (or
        ``done(exc)``) on ``loop``: the write here and the sync through Linux AIO where the
        platform and the batch allow (StorageError from the write is raised here), else both
        in the thread. One batch at a time (the driver waits for ``done``).

        ``send`` (a leader's appends) is called once, where the messages that need not wait
        for the batch leave soonest: on the AIO path before the write, since submitting the
        sync wakes the kernel's worker, which took ~40 µs of the loop's core here before the
        appends could go (docs/benchmarks.md, fifteenth session); on the thread's path right
        after the hand-over, so that the thread's write starts first (twelfth session). Should
        ``send`` raise, the batch is on its way all the same (the driver waits for ``done``)
        and the exception goes to the caller after it."""
        syncer = self._syncer_on(loop)
        if syncer is None:
            self._write_in_thread(loop, storage, batch, done)
            if send is not None:
                send()
            return
        try:
            if send is not None:
                send()
        finally:
            self._write_and_sync(loop, syncer, storage, batch, done)

    def _write_and_sync(
        self,
        loop: asyncio.AbstractEventLoop,
        syncer: AioSyncer,
        storage: DiskStorage,
        batch: PreparedBatch,
        done: Callable[[BaseException | None], None],
    ) -> None:
        """``write_batch``'s AIO path: the write here (its writeback started: the kernel's
        worker that runs the sync then finds the data on its way), its sync through
        ``syncer``. Alone on this machine's disk, write and sync p50 123 -> 104 µs; beside
        two processes syncing, 160 -> 138 µs (docs/benchmarks.md, twenty-third session)."""
        started = time.perf_counter()
        fd = storage.write_unsynced(batch)
        if fd is None:
            self._write_in_thread(loop, storage, batch, done)
            return

        def synced(error: OSError | None) -> None:
            TELEMETRY.wal_sync_seconds.observe(time.perf_counter() - started)
            try:
                storage.synced(batch, error)
            except StorageError as exc:
                done(exc)
                return
            done(None)

        try:
            syncer.fdatasync(fd, synced)
        except OSError as exc:  # the kernel refused it (no AIO sync for this filesystem)
            log.warning("log syncs go through the writer thread from now on: %s", exc)
            self._close_syncer()
            self.submit(loop, storage.sync_written, batch, done)  # written already

    def _write_in_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        storage: DiskStorage,
        batch: PreparedBatch,
        done: Callable[[BaseException | None], None],
    ) -> None:
        """The whole batch, its write and its sync, to the thread (timed there)."""
        self.submit(loop, TELEMETRY.wal_sync_seconds.timed(storage.write_prepared), batch, done)

    def _syncer_on(self, loop: asyncio.AbstractEventLoop) -> AioSyncer | None:
        if not self._syncer_tried:
            self._syncer_tried = True
            self._syncer = open_syncer(loop)
        return self._syncer

    def _close_syncer(self) -> None:
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            syncer.close()

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[[Any], None],
        arg: Any,
        done: Callable[[BaseException | None], None],
    ) -> None:
        """Run ``fn(arg)`` in the thread, then ``done(None)`` (or ``done(exc)`` if it raised)
        on ``loop``. Jobs run one at a time, in order."""
        self._jobs.put((loop, fn, arg, done))

    def _run(self) -> None:
        batch_policy()
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            loop, fn, arg, done = job
            error: BaseException | None = None
            try:
                fn(arg)
            except BaseException as exc:  # handed to the loop: the driver fails-stop
                error = exc
            try:
                loop.call_soon_threadsafe(done, error)
            except RuntimeError:
                pass  # the loop is closed: nobody waits for this write any more

    def shutdown(self) -> None:
        """Wait for the jobs submitted so far (a write under way ends, an AIO sync too),
        then stop."""
        self._close_syncer()
        self._jobs.put(_STOP)
        self._thread.join()


def write_inline(
    storage: DiskStorage, batch: PreparedBatch, ahead: Callable[[], Callable[[], None]]
) -> None:
    """Write and sync ``batch`` in the caller's thread (a follower's, on the loop: its answer
    waits for the write anyway, and a hand-over to a thread and back would add two wake-ups).
    StorageError if either fails (the storage is unusable after it). The write goes to the
    page cache and its writeback starts at once (``sync_file_range``); ``ahead`` (the
    follower queues its answers, unwritten: node/outbox.py's ``send_ahead``) runs while the
    device takes the data, and the sync waits for the rest; a failed sync calls what
    ``ahead`` returned (the answers taken back). Where the write cannot be split (the file
    grows, syncs are off), ``ahead`` runs after it. Measured (docs/benchmarks.md,
    twenty-third session): three processes each syncing small writes with 30 µs of work
    before each sync, p50 185 -> 146 µs with the writeback started first."""
    started = time.perf_counter()
    if storage.write_unsynced(batch, inline=True) is None:
        storage.write_prepared(batch)
        TELEMETRY.wal_sync_seconds.observe(time.perf_counter() - started)
        ahead()
        return
    before = time.perf_counter()
    take_back = ahead()
    started += time.perf_counter() - before  # the histogram times the disk's part
    try:
        storage.sync_written(batch)
    except StorageError:
        take_back()
        raise
    TELEMETRY.wal_sync_seconds.observe(time.perf_counter() - started)


def batch_policy() -> str:
    """Put the calling thread under ``SCHED_BATCH`` (same priority, no wake-up preemption)
    when it runs under the default policy; what was done, for the log. A policy the service
    manager or ``chrt`` set is left as it is; where the platform has no ``SCHED_BATCH`` or
    the sandbox refuses either call, the thread runs as it was started. The agent's main
    thread calls it at start (run.py's ``cpu_policy``), the log's writer thread at its own."""
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:
        return "as it was started (no SCHED_BATCH on this platform)"
    try:
        current = os.sched_getscheduler(0)
        if current == batch:
            return "SCHED_BATCH (as it was started)"
        if current != os.SCHED_OTHER:
            return f"left as the service manager set it (policy {current}, not the default)"
        os.sched_setscheduler(0, batch, os.sched_param(0))
    except OSError as exc:  # a system call filter that refuses either call
        return f"as it was started (SCHED_BATCH was refused: {exc.strerror or exc})"
    return "SCHED_BATCH (a wake-up of the agent does not preempt the process that runs)"
