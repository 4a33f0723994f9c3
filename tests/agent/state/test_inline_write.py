"""A log write whose writeback starts at once (walfile.start_writeback: sync_file_range), and a
follower's write on the loop with its answers queued meanwhile (walwriter.write_inline): the
answers leave only once the sync returned, and are taken back when it fails."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from hafleet_agent import wal, walfile
from hafleet_agent.node import walwriter
from hafleet_agent.raft.types import Entry, EntryType, HardState
from hafleet_agent.wal import DiskStorage, StorageError

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range")


def ent(index: int, size: int = 100) -> Entry:
    return Entry(1, index, EntryType.NORMAL, bytes([index % 251]) * size)


class Record:
    """What happened, in order: the log's writes and syncs, the writebacks started, the
    answers queued and taken back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple] = []
        self.fail_sync = False
        real_pwrite = wal.pwrite_all
        real_start = walfile.start_writeback

        def pwrite(fd: int, data: bytes, offset: int) -> None:
            self.events.append(("write", offset, len(data)))
            real_pwrite(fd, data, offset)

        def start(fd: int, offset: int, length: int) -> bool:
            self.events.append(("writeback", offset, length))
            return real_start(fd, offset, length)

        monkeypatch.setattr(wal, "pwrite_all", pwrite)
        monkeypatch.setattr(wal, "start_writeback", start)

    def sync(self, fd: int) -> None:
        self.events.append(("sync",))
        if self.fail_sync:
            raise OSError(errno.EIO, "injected")
        os.fdatasync(fd)

    def ahead(self):  # noqa: ANN201
        self.events.append(("queued",))
        return lambda: self.events.append(("taken back",))

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]


def open_log(path: Path, rec: Record, prealloc: int = 1 << 20) -> DiskStorage:
    return DiskStorage.open(path, fsync_fn=rec.sync, prealloc_bytes=prealloc)


def save(st: DiskStorage, *entries: Entry) -> None:
    batch = st.prepare_save(HardState(1, None, 0), list(entries))
    assert batch is not None
    walwriter.write_inline(st, batch, lambda: lambda: None)
    st.finish_save(batch)


@LINUX
def test_the_writeback_of_a_real_log_write_starts() -> None:
    wb = walfile._Writeback()
    path = Path("/var/tmp") / f"hafleet-writeback-{os.getpid()}"  # a disk, not a tmpfs
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"x" * 300, 0)
        assert wb.start(fd, 0, 300)
        assert wb.start(fd, 300, 0) is False  # nothing to write back
        os.fdatasync(fd)
        assert os.pread(fd, 300, 0) == b"x" * 300
    finally:
        os.close(fd)
        path.unlink()


@LINUX
def test_a_writeback_that_fails_is_never_tried_again() -> None:
    wb = walfile._Writeback()
    assert wb.start(-1, 0, 10) is False  # EBADF
    assert wb._call is None and wb._tried
    assert wb.start(-1, 0, 10) is False


def test_without_sync_file_range_the_writeback_is_left_to_the_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(walfile.sys, "platform", "darwin")
    wb = walfile._Writeback()
    assert wb.start(0, 0, 10) is False
    assert wb._call is None


def test_a_follower_queues_its_answers_between_the_write_and_the_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch is written, its writeback started at its own offset and length, the answers
    queued, and only then synced (with an injected sync function too)."""
    rec = Record(monkeypatch)
    with open_log(tmp_path, rec) as st:
        save(st, ent(1))
        rec.events.clear()
        size = st._log_size
        batch = st.prepare_save(HardState(1, None, 1), [ent(2), ent(3)])
        assert batch is not None
        walwriter.write_inline(st, batch, rec.ahead)
        st.finish_save(batch)
        assert rec.events == [
            ("write", size, len(batch.data)),
            ("writeback", size, len(batch.data)),
            ("queued",),
            ("sync",),
        ]
        assert st.last_index() == 3
    with DiskStorage.open(tmp_path) as again:
        assert [e.index for e in again.entries] == [1, 2, 3]


def test_a_failed_sync_takes_the_queued_answers_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Record(monkeypatch)
    with open_log(tmp_path, rec) as st:
        save(st, ent(1))
        rec.events.clear()
        rec.fail_sync = True
        batch = st.prepare_save(HardState(1, None, 1), [ent(2)])
        assert batch is not None
        with pytest.raises(StorageError, match="fdatasync failed"):
            walwriter.write_inline(st, batch, rec.ahead)
        assert rec.kinds() == ["write", "writeback", "queued", "sync", "taken back"]
        assert not batch.durable
        with pytest.raises(StorageError):  # fail-stop: nothing is written any more
            st.prepare_save(HardState(1, None, 1), [ent(2)])


def test_a_batch_that_grows_the_log_queues_its_answers_after_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch past the allocation is written and fsync'd in one (the file grows): its
    answers are queued once it is durable."""
    rec = Record(monkeypatch)
    with open_log(tmp_path, rec, prealloc=4096) as st:
        save(st, ent(1))
        rec.events.clear()
        batch = st.prepare_save(HardState(1, None, 1), [ent(2, size=8000)])
        assert batch is not None
        walwriter.write_inline(st, batch, rec.ahead)
        st.finish_save(batch)
        assert rec.kinds() == ["write", "sync", "queued"]
        assert batch.durable


def test_a_leaders_write_starts_its_writeback_before_the_aio_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_unsynced (a leader's, synced through Linux AIO) starts the writeback of the
    batch it wrote; with an injected sync function only an inline write is split."""
    rec = Record(monkeypatch)
    with DiskStorage.open(tmp_path, prealloc_bytes=1 << 20) as st:
        batch = st.prepare_save(HardState(1, None, 0), [ent(1)])
        assert batch is not None
        end, n = st._log_size, len(batch.data)  # (after the log's header)
        assert st.write_unsynced(batch) is not None
        assert rec.events == [("write", end, n), ("writeback", end, n)]
        st.sync_written(batch)
        st.finish_save(batch)
    with open_log(tmp_path / "x", rec) as st:
        batch = st.prepare_save(HardState(1, None, 0), [ent(1)])
        assert batch is not None
        assert st.write_unsynced(batch) is None  # the injected function: the thread's way
        assert st.write_unsynced(batch, inline=True) is not None
