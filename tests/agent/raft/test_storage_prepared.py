"""A compaction's snapshot written ahead in a worker thread (DiskStorage.prepare_snapshot)
and put in force later (install_prepared_snapshot): the same result on disk as
save_snapshot, appends meanwhile are kept, an older one is discarded, a leftover is removed
on open, an fsync failure is fail-stop."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from hafleet_agent.raft.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from hafleet_agent.wal import (
    LOG_FILE,
    PREPARED_SUFFIX,
    RECEIVED_SUFFIX,
    SNAPSHOT_FILE,
    DiskStorage,
    StorageError,
)


def ent(index: int, term: int = 1) -> Entry:
    return Entry(term, index, EntryType.NORMAL, f"e{index}".encode())


def snap(index: int, term: int = 1, data: bytes = b"state") -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ConfState(("n1", "n2"), ("n3",))), data)


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_prepared_then_installed_equals_save_snapshot(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    sa, sb = DiskStorage.open(a), DiskStorage.open(b)
    for s in (sa, sb):
        s.save(HardState(1, "n1", 8), [ent(i) for i in range(1, 11)])
    big = os.urandom(3 << 20)
    sa.save_snapshot(snap(6, data=big))
    # b writes the file in another thread while appends go on here
    out: list[Path] = []
    t = threading.Thread(target=lambda: out.append(sb.prepare_snapshot(snap(6, data=big))))
    t.start()
    sb.save(None, [ent(11)])
    t.join()
    sa.save(None, [ent(11)])
    assert (b / (SNAPSHOT_FILE + PREPARED_SUFFIX)).exists()
    assert sb.snapshot.empty  # not in force until installed
    assert sb.install_prepared_snapshot(snap(6, data=big), out[0])
    assert files(b) == ["LOCK", LOG_FILE, SNAPSHOT_FILE]
    assert (a / SNAPSHOT_FILE).read_bytes() == (b / SNAPSHOT_FILE).read_bytes()
    assert sb.snapshot == sa.snapshot and sb.entries == sa.entries == [ent(i) for i in range(7, 12)]
    sa.close()
    sb = _reopen(sb)
    assert sb.snapshot == snap(6, data=big) and sb.entries == [ent(i) for i in range(7, 12)]
    sb.close()


def _reopen(s: DiskStorage) -> DiskStorage:
    s.close()
    return DiskStorage.open(s.path)


def test_a_prepared_snapshot_no_newer_than_the_current_is_discarded(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path)
    s.save(HardState(1, "n1", 8), [ent(i) for i in range(1, 11)])
    path = s.prepare_snapshot(snap(5, data=b"older"))
    s.save_snapshot(snap(8, data=b"from the leader"))  # arrived meanwhile
    assert not s.install_prepared_snapshot(snap(5, data=b"older"), path)
    assert s.snapshot == snap(8, data=b"from the leader") and not path.exists()
    assert s.entries == [ent(9), ent(10)]
    s.close()


def test_a_leftover_prepared_snapshot_is_removed_on_open(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path)
    s.save(HardState(1, "n1", 8), [ent(i) for i in range(1, 11)])
    s.prepare_snapshot(snap(6))  # then a crash before the install
    received = s.prepare_snapshot(snap(9, 2), RECEIVED_SUFFIX)
    assert received.name == f"{SNAPSHOT_FILE}{RECEIVED_SUFFIX}-9-2"
    assert len(files(tmp_path)) == 4
    with pytest.raises(ValueError):
        s.prepare_snapshot(snap(7), "../elsewhere")
    s = _reopen(s)
    assert files(tmp_path) == ["LOCK", LOG_FILE]
    assert s.snapshot.empty and s.entries == [ent(i) for i in range(1, 11)]
    s.close()


def test_an_fsync_failure_while_preparing_is_fail_stop(tmp_path: Path) -> None:
    broken = False

    def fsync(fd: int) -> None:
        if broken:
            raise OSError(errno.EIO, "injected fsync failure")
        os.fsync(fd)

    s = DiskStorage.open(tmp_path, fsync_fn=fsync)
    s.save(HardState(1, "n1", 8), [ent(i) for i in range(1, 11)])
    broken = True
    with pytest.raises(StorageError, match="cannot write the snapshot"):
        s.prepare_snapshot(snap(6))
    with pytest.raises(StorageError):
        s.save(None, [ent(11)])
    s.close()
