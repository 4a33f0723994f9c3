"""raft.log kept preallocated past its end (DiskStorage.open(prealloc_bytes=...), the agent's
default): fdatasync inside the allocation, fsync when it grows, zeros as the clean end, torn
writes inside the allocation, compaction, a full disk, a filesystem that cannot preallocate."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hafleet_agent import walfile
from hafleet_agent.raft.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from hafleet_agent.wal import LOG_FILE, PREALLOC_BYTES, DiskStorage, StorageError

CHUNK = 64 * 1024


def ent(index: int, term: int = 1, size: int = 100) -> Entry:
    return Entry(term, index, EntryType.NORMAL, bytes([index % 251]) * size)


class Syncs:
    """Counts the syncs of one kind (fsync_fn or fdatasync_fn)."""

    def __init__(self, real) -> None:
        self.calls = 0
        self.real = real

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.real(fd)


def open_counted(path: Path, prealloc: int = CHUNK) -> tuple[DiskStorage, Syncs, Syncs]:
    full, data = Syncs(os.fsync), Syncs(os.fdatasync)
    s = DiskStorage.open(path, fsync_fn=full, fdatasync_fn=data, prealloc_bytes=prealloc)
    return s, full, data


def test_the_agent_preallocates() -> None:
    assert PREALLOC_BYTES >= CHUNK


def test_writes_inside_the_allocation_use_fdatasync(tmp_path: Path) -> None:
    s, full, data = open_counted(tmp_path)
    s.save(HardState(1, "n1", 0), [ent(1)])
    size = (tmp_path / LOG_FILE).stat().st_size
    assert size == 12 + CHUNK, "the new log (its 12-byte header) was allocated a chunk ahead"
    full_before = full.calls
    for i in range(2, 40):
        s.save(HardState(1, "n1", i - 1), [ent(i)])
    assert full.calls == full_before, "no fsync while the batches fit the allocation"
    assert data.calls == 39, "every batch, the first one included, fdatasync'd"
    assert (tmp_path / LOG_FILE).stat().st_size == size, "no write changed the file size"
    end = s.log_bytes()
    s.close()
    s, _, _ = open_counted(tmp_path)
    assert [e.index for e in s.entries] == list(range(1, 40))
    assert s.hard_state == HardState(1, "n1", 38)
    assert s.report.truncated_bytes == 0 and s.log_bytes() == end
    s.close()


def test_a_batch_past_the_allocation_grows_it_with_fsync(tmp_path: Path) -> None:
    s, full, data = open_counted(tmp_path)
    s.save(None, [ent(1)])
    full_before, data_before = full.calls, data.calls
    s.save(None, [ent(i, size=1000) for i in range(2, 2 + (CHUNK // 1000) + 5)])  # > a chunk
    assert (full.calls, data.calls) == (full_before + 1, data_before)
    assert (tmp_path / LOG_FILE).stat().st_size == s.log_bytes() + CHUNK
    s.close()


def test_a_torn_write_inside_the_allocation_is_cut(tmp_path: Path) -> None:
    """The last batch reached the disk only in part (the rest of the preallocated space still
    zeros): it was never acknowledged; the log ends before it, and later writes go there."""
    s, _, _ = open_counted(tmp_path)
    s.save(HardState(1, "n1", 1), [ent(1), ent(2)])
    start = s.log_bytes()
    s.save(None, [ent(3, size=3000), ent(4, size=3000)])
    end = s.log_bytes()
    s.close()
    with (tmp_path / LOG_FILE).open("r+b") as f:  # keep the first 1000 bytes of the batch
        f.seek(start + 1000)
        f.write(bytes(end - start - 1000))
    s, _, _ = open_counted(tmp_path)
    assert [e.index for e in s.entries] == [1, 2]
    assert s.report.truncated_at == start and s.log_bytes() == start
    s.save(None, [ent(3)])
    s.close()
    s, _, _ = open_counted(tmp_path)
    assert [e.index for e in s.entries] == [1, 2, 3] and s.report.truncated_bytes == 0
    s.close()


def test_compaction_keeps_the_log_preallocated(tmp_path: Path) -> None:
    s, full, data = open_counted(tmp_path)
    for i in range(1, 21):
        s.save(HardState(1, "n1", i), [ent(i)])
    s.save_snapshot(Snapshot(SnapshotMeta(15, 1, ConfState(("n1",), ())), b"state"))
    assert (tmp_path / LOG_FILE).stat().st_size == s.log_bytes() + CHUNK
    full_before = full.calls
    s.save(None, [ent(21)])
    assert full.calls == full_before, "the compacted log's next write fits its allocation"
    s.close()
    s, _, _ = open_counted(tmp_path)
    assert [e.index for e in s.entries] == list(range(16, 22))
    s.close()


def test_an_unpreallocated_log_is_read_and_then_preallocated(tmp_path: Path) -> None:
    """A log written without preallocation (an older agent) opens as it is and is grown by a
    chunk at its next write."""
    s = DiskStorage.open(tmp_path)
    s.save(None, [ent(1), ent(2)])
    assert (tmp_path / LOG_FILE).stat().st_size == s.log_bytes()
    s.close()
    s, full, _ = open_counted(tmp_path)
    assert [e.index for e in s.entries] == [1, 2]
    s.save(None, [ent(3)])
    assert full.calls == 1
    assert (tmp_path / LOG_FILE).stat().st_size == s.log_bytes() + CHUNK
    s.close()


def _fallocate_failing(err: int, only_over: int | None = None):
    real = os.posix_fallocate

    def fallocate(fd: int, offset: int, length: int) -> None:
        if only_over is None or length > only_over:
            raise OSError(err, os.strerror(err))
        real(fd, offset, length)

    return fallocate


def test_a_full_disk_allocates_only_what_the_batch_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _, _ = open_counted(tmp_path)
    s.save(None, [ent(1)])
    monkeypatch.setattr(walfile.os, "posix_fallocate", _fallocate_failing(errno.ENOSPC, CHUNK))
    s.save(None, [ent(i, size=1000) for i in range(2, 2 + (CHUNK // 1000) + 5)])
    assert (tmp_path / LOG_FILE).stat().st_size == s.log_bytes(), "grown by the batch only"
    monkeypatch.setattr(walfile.os, "posix_fallocate", _fallocate_failing(errno.ENOSPC))
    with pytest.raises(StorageError, match="No space left"):
        s.save(None, [ent(s.last_index() + 1)])  # past the allocation, and the disk is full
    with pytest.raises(StorageError, match="unusable"):
        s.save(None, [ent(s.last_index() + 1)])
    s.close()


def test_a_filesystem_that_cannot_preallocate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(walfile.os, "posix_fallocate", _fallocate_failing(errno.EOPNOTSUPP))
    s, full, data = open_counted(tmp_path)
    for i in range(1, 5):
        s.save(None, [ent(i)])
    assert "cannot preallocate" in caplog.text
    assert data.calls == 0 and full.calls >= 4, "every write grew the file: fsync"
    assert (tmp_path / LOG_FILE).stat().st_size == s.log_bytes()
    s.close()


def test_prealloc_bytes_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prealloc_bytes"):
        DiskStorage.open(tmp_path, prealloc_bytes=-1)
