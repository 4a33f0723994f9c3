"""The log's writer thread (node/walwriter.py): jobs run in order in the thread, each one's
completion (or its error) comes back on the loop, and the thread runs under SCHED_BATCH; a
leader's batch written on the loop and synced through Linux AIO (node/aiosync.py)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hafleet_agent.node.walwriter import WalWriter
from hafleet_agent.raft.types import Entry, EntryType, HardState
from hafleet_agent.wal import PREALLOC_BYTES, DiskStorage, StorageError


def test_jobs_run_in_order_and_complete_on_the_loop() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        writer = WalWriter()
        ran: list[int] = []
        done: list[tuple[int, BaseException | None]] = []
        finished = asyncio.Event()

        def job(i: int) -> None:
            if i == 2:
                raise OSError("disk full")
            ran.append(i)

        def completed(i: int, exc: BaseException | None) -> None:
            assert asyncio.get_running_loop() is loop
            done.append((i, exc))
            if len(done) == 4:
                finished.set()

        for i in range(4):
            writer.submit(loop, job, i, lambda exc, i=i: completed(i, exc))
        await asyncio.wait_for(finished.wait(), 10)
        writer.shutdown()
        assert ran == [0, 1, 3]
        assert [i for i, _ in done] == [0, 1, 2, 3]
        assert isinstance(done[2][1], OSError) and done[0][1] is None

    asyncio.run(go())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
def test_the_thread_runs_under_sched_batch() -> None:
    async def go() -> int:
        loop = asyncio.get_running_loop()
        writer = WalWriter()
        policy: list[int] = []
        got = asyncio.Event()
        writer.submit(loop, lambda _: policy.append(os.sched_getscheduler(0)), None,
                      lambda exc: got.set())  # fmt: skip
        await asyncio.wait_for(got.wait(), 10)
        writer.shutdown()
        return policy[0]

    assert asyncio.run(go()) == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own thread is untouched


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
def test_the_thread_keeps_a_policy_the_service_manager_set() -> None:
    """An agent started under SCHED_IDLE (systemd's CPUSchedulingPolicy=idle): the thread
    inherits it and keeps it, as the main thread does (run.py's cpu_policy)."""
    seen: list[int] = []

    def agent_thread() -> None:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

        async def go() -> None:
            loop = asyncio.get_running_loop()
            writer = WalWriter()
            got = asyncio.Event()
            writer.submit(loop, lambda _: seen.append(os.sched_getscheduler(0)), None,
                          lambda exc: got.set())  # fmt: skip
            await asyncio.wait_for(got.wait(), 10)
            writer.shutdown()

        asyncio.run(go())

    t = threading.Thread(target=agent_thread)
    t.start()
    t.join(20)
    assert seen == [os.SCHED_IDLE]


# --- a leader's batch: the write on the loop, its fdatasync through Linux AIO -----------------

linux_aio = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Linux AIO (node/aiosync.py) is Linux's"
)


def _entries(start: int, n: int) -> list[Entry]:
    return [Entry(1, i, EntryType.NORMAL, b"v%d" % i) for i in range(start, start + n)]


FakeSync = Callable[[int, Callable[[OSError | None], None]], None]


@contextlib.asynccontextmanager
async def _aio_writer(
    path: Path, fdatasync: FakeSync | None = None
) -> AsyncIterator[tuple[asyncio.AbstractEventLoop, WalWriter, DiskStorage]]:
    """A writer whose AIO syncer is open (its ``fdatasync`` replaced by ``fdatasync`` if
    given) and a preallocated storage in ``path``; both closed after."""
    loop = asyncio.get_running_loop()
    writer = WalWriter()
    storage = DiskStorage.open(path, prealloc_bytes=PREALLOC_BYTES)
    try:
        syncer = writer._syncer_on(loop)
        assert syncer is not None
        if fdatasync is not None:
            syncer.fdatasync = fdatasync  # type: ignore[method-assign]
        yield loop, writer, storage
    finally:
        writer.shutdown()
        storage.close()


@linux_aio
def test_a_batch_is_durable_only_at_its_aio_completion_and_reopens(tmp_path: Path) -> None:
    """write_batch writes on the loop, syncs through AIO (no job in the thread), and calls
    done once the sync completed; what it wrote is there after a reopen."""

    async def go() -> list[BaseException | None]:
        results: list[BaseException | None] = []
        async with _aio_writer(tmp_path) as (loop, writer, storage):
            for k in range(5):
                batch = storage.prepare_save(HardState(1, "n1", 0), _entries(1 + 10 * k, 10))
                done = loop.create_future()
                writer.submit = None  # type: ignore[assignment,method-assign]  # never the thread
                writer.write_batch(loop, storage, batch, done.set_result)
                assert not batch.durable  # not before the completion
                results.append(await asyncio.wait_for(done, 10))
                assert batch.durable
                storage.finish_save(batch)
            assert writer._syncer is not None  # the AIO path was taken
        return results

    assert asyncio.run(go()) == [None] * 5
    with DiskStorage.open(tmp_path) as reopened:
        assert [e.index for e in reopened.entries] == list(range(1, 51))


@linux_aio
def test_the_appends_leave_before_the_aio_write_and_after_the_hand_over_to_the_thread(
    tmp_path: Path,
) -> None:
    """``send`` is called once per batch: on the AIO path before the write and its sync's
    submission (which wakes the kernel's worker), on the thread's path after the hand-over."""

    async def go() -> dict[str, list[str]]:
        orders: dict[str, list[str]] = {}
        async with _aio_writer(tmp_path) as (loop, writer, storage):
            for path in ("aio", "thread"):
                order: list[str] = orders.setdefault(path, [])
                syncer = writer._syncer
                assert syncer is not None
                if path == "thread":
                    writer._syncer = None  # as where AIO is not there
                real_write, real_sync = storage.write_unsynced, syncer.fdatasync
                real_submit = writer.submit

                def write(batch, order=order, real=real_write):  # type: ignore[no-untyped-def]
                    order.append("write")
                    return real(batch)

                def sync(fd, done, order=order, real=real_sync):  # type: ignore[no-untyped-def]
                    order.append("sync")
                    real(fd, done)

                def submit(*a, order=order, real=real_submit):  # type: ignore[no-untyped-def]
                    order.append("thread")
                    real(*a)

                storage.write_unsynced = write  # type: ignore[method-assign]
                syncer.fdatasync = sync  # type: ignore[method-assign]
                writer.submit = submit  # type: ignore[method-assign]
                start = 1 if path == "aio" else 4
                batch = storage.prepare_save(HardState(1, "n1", 0), _entries(start, 3))
                done = loop.create_future()
                writer.write_batch(
                    loop, storage, batch, done.set_result, send=lambda o=order: o.append("send")
                )
                assert await asyncio.wait_for(done, 10) is None and batch.durable
                storage.finish_save(batch)
                writer._syncer = syncer
                del storage.write_unsynced, syncer.fdatasync, writer.submit  # the real ones
        return orders

    orders = asyncio.run(go())
    assert orders == {"aio": ["send", "write", "sync"], "thread": ["thread", "send"]}
    with DiskStorage.open(tmp_path) as reopened:
        assert [e.index for e in reopened.entries] == list(range(1, 7))


@linux_aio
def test_a_send_that_raises_still_leaves_the_batch_on_its_way(tmp_path: Path) -> None:
    """The driver waits for ``done``: if the appends' send fails (a bug), the batch is written
    and synced all the same, and the exception still reaches the caller."""

    def send() -> None:
        raise RuntimeError("send failed")

    async def go() -> BaseException | None:
        async with _aio_writer(tmp_path) as (loop, writer, storage):
            batch = storage.prepare_save(HardState(1, "n1", 0), _entries(1, 3))
            done = loop.create_future()
            with pytest.raises(RuntimeError, match="send failed"):
                writer.write_batch(loop, storage, batch, done.set_result, send=send)
            result = await asyncio.wait_for(done, 10)
            assert batch.durable
            storage.finish_save(batch)
            return result

    assert asyncio.run(go()) is None
    with DiskStorage.open(tmp_path) as reopened:
        assert [e.index for e in reopened.entries] == [1, 2, 3]


@linux_aio
def test_a_failed_aio_sync_makes_the_storage_unusable(tmp_path: Path) -> None:
    """A sync whose completion reports an error fails the batch (StorageError to done) and
    the storage refuses every later write (fail-stop), as a failed fdatasync does."""

    def failing(fd: int, done: Callable[[OSError | None], None]) -> None:
        asyncio.get_running_loop().call_soon(done, OSError(errno.EIO, "injected"))

    async def go() -> BaseException | None:
        async with _aio_writer(tmp_path, failing) as (loop, writer, storage):
            batch = storage.prepare_save(HardState(1, "n1", 0), _entries(1, 3))
            done = loop.create_future()
            writer.write_batch(loop, storage, batch, done.set_result)
            exc = await asyncio.wait_for(done, 10)
            assert not batch.durable
            with pytest.raises(StorageError, match="unusable"):
                storage.prepare_save(None, _entries(4, 1))
            return exc

    exc = asyncio.run(go())
    assert isinstance(exc, StorageError) and "fdatasync failed" in str(exc)


@linux_aio
def test_a_refused_aio_sync_goes_to_the_thread_from_then_on(tmp_path: Path) -> None:
    """io_submit refused (a filesystem without AIO sync, say): the batch already written is
    synced in the thread, and later batches go there whole."""

    def refused(fd: int, done: Callable[[OSError | None], None]) -> None:
        raise OSError(errno.EINVAL, "io_submit: Invalid argument")

    async def go() -> None:
        async with _aio_writer(tmp_path, refused) as (loop, writer, storage):
            for k in range(2):
                batch = storage.prepare_save(HardState(1, "n1", 0), _entries(1 + 5 * k, 5))
                done = loop.create_future()
                writer.write_batch(loop, storage, batch, done.set_result)
                assert await asyncio.wait_for(done, 10) is None and batch.durable
                storage.finish_save(batch)
                assert writer._syncer is None  # closed at the refusal

    asyncio.run(go())
    with DiskStorage.open(tmp_path) as reopened:
        assert [e.index for e in reopened.entries] == list(range(1, 11))


def test_an_injected_sync_function_keeps_every_batch_in_the_thread(tmp_path: Path) -> None:
    """The tests' and the chaos suite's fsync_fn sees every sync: write_unsynced declines."""
    seen: list[int] = []

    def fsync(fd: int) -> None:
        seen.append(fd)
        os.fsync(fd)

    with DiskStorage.open(tmp_path, fsync_fn=fsync, prealloc_bytes=PREALLOC_BYTES) as storage:
        batch = storage.prepare_save(HardState(1, "n1", 0), _entries(1, 2))
        assert storage.write_unsynced(batch) is None and not batch.durable
        before = len(seen)
        storage.write_prepared(batch)
        assert batch.durable and len(seen) == before + 1


@linux_aio
def test_a_loop_that_cannot_watch_the_eventfd_gets_the_thread_and_leaks_nothing() -> None:
    """open_syncer on a loop without add_reader (a proactor, say): None, logged, and the AIO
    context and the eventfd it opened are closed again."""
    from hafleet_agent.node.aiosync import open_syncer

    class NoReaders:
        def add_reader(self, fd: int, callback: object) -> None:
            raise NotImplementedError("no add_reader here")

    before = set(os.listdir("/proc/self/fd"))
    assert open_syncer(NoReaders()) is None  # type: ignore[arg-type]
    assert set(os.listdir("/proc/self/fd")) == before


@linux_aio
def test_a_completion_that_cannot_be_read_fails_the_batch(tmp_path: Path) -> None:
    """io_getevents failing (here: a bad system call number, ENOSYS) leaves the sync's result
    unknown: the batch fails (fail-stop) rather than waiting for ever."""

    async def go() -> BaseException | None:
        async with _aio_writer(tmp_path) as (loop, writer, storage):
            syncer = writer._syncer
            assert syncer is not None
            syncer._getevents = -1  # type: ignore[attr-defined]
            batch = storage.prepare_save(HardState(1, "n1", 0), _entries(1, 2))
            done = loop.create_future()
            writer.write_batch(loop, storage, batch, done.set_result)
            exc = await asyncio.wait_for(done, 10)
            assert not batch.durable
            return exc

    exc = asyncio.run(go())
    assert isinstance(exc, StorageError) and "io_getevents" in str(exc)
