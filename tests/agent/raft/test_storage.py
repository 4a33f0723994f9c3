"""Tests of the Raft node's durable storage (real files, real fsync where it matters)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafleet_agent import wal as storage_module
from hafleet_agent import walfile
from hafleet_agent.raft.types import (
    EMPTY_HARD_STATE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMeta,
)
from hafleet_agent.wal import (
    LOG_FILE,
    MAX_RECORD_BYTES,
    SNAPSHOT_FILE,
    CorruptSnapshotError,
    DiskStorage,
    StorageError,
)

LOG_HEADER_BYTES = 12


def ent(index: int, term: int = 1, data: bytes | None = None) -> Entry:
    return Entry(
        term, index, EntryType.NORMAL, f"e{index}t{term}".encode() if data is None else data
    )


def snap(index: int, term: int, data: bytes = b"state", voters=("n1", "n2", "n3"), learners=()):
    return Snapshot(SnapshotMeta(index, term, ConfState(tuple(voters), tuple(learners))), data)


class FsyncRecorder:
    """An fsync_fn that counts calls and can be told to fail from the n-th call on."""

    def __init__(self, fail_from: int | None = None) -> None:
        self.calls = 0
        self.fail_from = fail_from

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.fail_from is not None and self.calls >= self.fail_from:
            raise OSError(errno.EIO, "injected fsync failure")
        os.fsync(fd)


def reopen(s: DiskStorage, **kw) -> DiskStorage:
    s.close()
    return DiskStorage.open(s.path, **kw)


def batch_offsets(data_dir: Path, saves) -> list[int]:
    """Apply ``saves`` one by one; return the log size before each save and at the end."""
    offsets = []
    with DiskStorage.open(data_dir, fsync=False) as s:
        for hs, entries in saves:
            offsets.append(s.log_bytes())
            s.save(hs, entries)
        offsets.append(s.log_bytes())
    return offsets


# ---- basics --------------------------------------------------------------------------------


def test_fresh_directory(tmp_path: Path) -> None:
    d = tmp_path / "a" / "data"
    with DiskStorage.open(d) as s:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert stat.S_IMODE((d / LOG_FILE).stat().st_mode) == 0o600
        assert s.hard_state == EMPTY_HARD_STATE
        assert s.snapshot == Snapshot()
        assert s.entries == []
        assert (s.first_index(), s.last_index()) == (1, 0)
        assert s.report.truncated_bytes == 0 and s.report.reason is None
        assert s.log_bytes() == LOG_HEADER_BYTES == (d / LOG_FILE).stat().st_size


def test_round_trip(tmp_path: Path) -> None:
    fs = FsyncRecorder()
    s = DiskStorage.open(tmp_path, fsync_fn=fs)
    hs = HardState(term=3, vote="node-ü", commit=2)
    entries = [
        ent(1),
        Entry(2, 2, EntryType.CONF_CHANGE, b"\x01conf"),
        ent(3, 3, b""),
        ent(4, 3, bytes(range(256)) * 10),
    ]
    fs.calls = 0
    s.save(hs, entries)
    assert fs.calls == 1, "one fsync covers entries and hard state"
    s.save(HardState(term=3, vote=None, commit=4), [])
    assert fs.calls == 2
    size = s.log_bytes()
    s.save(HardState(term=3, vote=None, commit=4), [])  # unchanged: nothing written
    s.save(None, [])
    assert fs.calls == 2 and s.log_bytes() == size == (tmp_path / LOG_FILE).stat().st_size
    s = reopen(s)
    assert s.hard_state == HardState(term=3, vote=None, commit=4)
    assert s.entries == entries
    assert s.entries[1].type is EntryType.CONF_CHANGE
    assert (s.first_index(), s.last_index()) == (1, 4)
    assert s.report.entries == 4 and s.report.truncated_bytes == 0
    s.close()


def test_overwrite_conflicting_suffix(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path, fsync=False)
    s.save(HardState(1, "n1", 0), [ent(i) for i in range(1, 8)])
    s.save(HardState(2, None, 3), [ent(4, 2), ent(5, 2)])  # new leader overwrites 4..7
    expected = [ent(1), ent(2), ent(3), ent(4, 2), ent(5, 2)]
    assert s.entries == expected
    s = reopen(s)
    assert s.entries == expected
    assert s.hard_state == HardState(2, None, 3)
    s.save(None, [ent(2, 3)])  # overwrite almost everything, then grow again
    s.save(None, [ent(3, 3), ent(4, 3)])
    s = reopen(s)
    assert s.entries == [ent(1), ent(2, 3), ent(3, 3), ent(4, 3)]
    s.save(None, [ent(1, 4)])  # overwrite from the very first entry
    s = reopen(s)
    assert s.entries == [ent(1, 4)]
    s.close()


def test_save_rejects_bad_input_and_stays_usable(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path, fsync=False)
    s.save(None, [ent(1), ent(2), ent(3)])
    s.save_snapshot(snap(2, 1))
    size = s.log_bytes()
    with pytest.raises(ValueError, match="gap"):
        s.save(None, [ent(5)])
    with pytest.raises(ValueError, match="contiguous"):
        s.save(None, [ent(4), ent(6)])
    with pytest.raises(ValueError, match="snapshot"):
        s.save(None, [ent(2, 2)])
    with pytest.raises(ValueError, match="vote"):
        s.save(HardState(1, "", 0), [])
    with pytest.raises(ValueError, match="term"):
        s.save(HardState(-1, None, 0), [])
    with pytest.raises(ValueError, match="too large"):
        s.save(None, [ent(4, 1, b"x" * MAX_RECORD_BYTES)])
    assert s.log_bytes() == size
    s.save(HardState(1, "n1", 3), [ent(4)])
    s = reopen(s)
    assert s.entries == [ent(3), ent(4)]
    assert s.hard_state == HardState(1, "n1", 3)
    s.close()


def test_data_dir_is_locked(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path)
    with pytest.raises(StorageError, match="in use"):
        DiskStorage.open(tmp_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        s.save(None, [ent(1)])
    DiskStorage.open(tmp_path).close()


# ---- snapshots -----------------------------------------------------------------------------


def test_snapshot_compacts_and_survives_reopen(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path)
    s.save(HardState(2, "n2", 8), [ent(i, 1 if i < 5 else 2) for i in range(1, 11)])
    before = s.log_bytes()
    sn = snap(6, 2, b"machine state", learners=("n4",))
    s.save_snapshot(sn)
    assert s.snapshot == sn
    assert s.entries == [ent(i, 2) for i in range(7, 11)]
    assert (s.first_index(), s.last_index()) == (7, 10)
    assert s.log_bytes() < before
    assert s.log_bytes() == (tmp_path / LOG_FILE).stat().st_size
    s.save_snapshot(snap(5, 2, b"older"))  # not newer: ignored
    s.save_snapshot(snap(6, 2, b"same index"))  # not newer: ignored
    assert s.snapshot == sn
    s.save(None, [ent(11, 2)])
    s = reopen(s)
    assert s.snapshot == sn
    assert s.hard_state == HardState(2, "n2", 8)
    assert s.entries == [ent(i, 2) for i in range(7, 12)]
    assert s.report.entries == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LOCK", LOG_FILE, SNAPSHOT_FILE]
    # a snapshot covering the whole log keeps the hard state only
    s.save_snapshot(snap(11, 2))
    assert s.entries == [] and s.last_index() == 11
    s = reopen(s)
    assert s.entries == [] and (s.first_index(), s.last_index()) == (12, 11)
    assert s.hard_state == HardState(2, "n2", 8)
    s.close()


def test_snapshot_beyond_log_drops_all_entries(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path, fsync=False)
    s.save(HardState(1, "n1", 2), [ent(i) for i in range(1, 6)])
    sn = snap(20, 4, b"from the leader")
    s.save_snapshot(sn)
    assert s.entries == [] and s.last_index() == 20 and s.first_index() == 21
    with pytest.raises(ValueError):
        s.save(None, [ent(6)])
    s.save(HardState(4, None, 20), [ent(21, 4)])
    s = reopen(s)
    assert s.snapshot == sn
    assert s.entries == [ent(21, 4)]
    s.close()


def test_snapshot_with_other_term_drops_all_entries(tmp_path: Path) -> None:
    s = DiskStorage.open(tmp_path, fsync=False)
    s.save(None, [ent(i) for i in range(1, 6)])
    s.save_snapshot(snap(3, 2))  # our entry 3 has term 1: our tail belongs to another history
    assert s.entries == []
    s = reopen(s)
    assert s.entries == [] and s.last_index() == 3
    s.close()


def test_interrupted_compaction_is_finished_on_open(tmp_path: Path) -> None:
    fs = FsyncRecorder()
    s = DiskStorage.open(tmp_path, fsync_fn=fs)
    s.save(HardState(1, "n1", 4), [ent(i) for i in range(1, 9)])
    full = s.log_bytes()
    # save_snapshot fsyncs: snapshot temp file, directory, log temp file, directory
    fs.calls, fs.fail_from = 0, 3
    with pytest.raises(StorageError, match="injected"):
        s.save_snapshot(snap(5, 1))
    s.close()
    assert (tmp_path / (LOG_FILE + ".tmp")).exists()
    assert (tmp_path / LOG_FILE).stat().st_size == full
    s = DiskStorage.open(tmp_path)
    assert not (tmp_path / (LOG_FILE + ".tmp")).exists()
    assert s.snapshot == snap(5, 1)
    assert s.entries == [ent(i) for i in range(6, 9)]
    assert s.log_bytes() < full
    s.close()


def test_interrupted_install_of_snapshot_beyond_log(tmp_path: Path) -> None:
    fs = FsyncRecorder()
    s = DiskStorage.open(tmp_path, fsync_fn=fs)
    s.save(HardState(1, "n1", 4), [ent(i) for i in range(1, 9)])
    fs.calls, fs.fail_from = 0, 3
    with pytest.raises(StorageError):
        s.save_snapshot(snap(30, 3))
    s.close()
    s = DiskStorage.open(tmp_path)
    assert s.entries == [] and s.last_index() == 30
    s.save(None, [ent(31, 3)])  # would leave a gap in the file had the compaction not finished
    s = reopen(s)
    assert s.entries == [ent(31, 3)]
    s.close()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:10], "truncated"),
        (lambda b: b"", "truncated"),
        (lambda b: b + b"x", "trailing garbage"),
        (lambda b: b[:-3] + bytes([b[-3] ^ 0x10]) + b[-2:], "crc mismatch"),
        (lambda b: b[:30] + bytes([b[30] ^ 0x01]) + b[31:], "crc mismatch"),
        (lambda b: b"XXXXSNAP" + b[8:], "bad magic"),
    ],
)
def test_corrupt_snapshot_is_refused(tmp_path: Path, damage, message: str) -> None:
    with DiskStorage.open(tmp_path, fsync=False) as s:
        s.save(HardState(1, "n1", 3), [ent(1), ent(2), ent(3)])
        s.save_snapshot(snap(2, 1, b"the state machine"))
    path = tmp_path / SNAPSHOT_FILE
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptSnapshotError, match=message) as info:
        DiskStorage.open(tmp_path)
    assert str(path) in str(info.value)
    DiskStorage.open(tmp_path / "elsewhere").close()  # the lock was released on failure
    with pytest.raises(CorruptSnapshotError):
        DiskStorage.open(tmp_path)


# ---- recovery of the log -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "bad magic"),
        (b"HAFLRLO", "bad magic"),
        (b"PGDMP\x00\x00\x00\x01\x00\x00\x00", "bad magic"),
        (b"HAFLRLOG\x02\x00\x00\x00", "unsupported raft log format version 2"),
    ],
)
def test_log_with_wrong_header_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / LOG_FILE).write_bytes(content)
    with pytest.raises(StorageError, match=message) as info:
        DiskStorage.open(tmp_path)
    assert str(tmp_path / LOG_FILE) in str(info.value)
    assert (tmp_path / LOG_FILE).read_bytes() == content, "never truncated"


def test_missing_log_next_to_a_snapshot_is_refused(tmp_path: Path) -> None:
    with DiskStorage.open(tmp_path, fsync=False) as s:
        s.save(HardState(1, "n1", 1), [ent(1), ent(2)])
        s.save_snapshot(snap(1, 1))
    (tmp_path / LOG_FILE).unlink()
    with pytest.raises(StorageError, match="missing"):
        DiskStorage.open(tmp_path)


def test_torn_tail_at_every_offset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Cut the last write at every byte: recovery keeps exactly the earlier writes."""
    src = tmp_path / "src"
    saves = [
        (HardState(1, "n1", 0), [ent(1), ent(2)]),
        (HardState(1, "n1", 2), [ent(3, 1, b"x" * 40)]),
        (HardState(2, "n2", 3), [ent(4, 2, b"last one")]),
    ]
    offsets = batch_offsets(src, saves)
    start, end = offsets[-2], offsets[-1]
    full = (src / LOG_FILE).read_bytes()
    assert len(full) == end
    caplog.set_level(logging.WARNING, logger="hafleet.raft.storage")
    for cut in range(start, end):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / LOG_FILE).write_bytes(full[:cut])
        caplog.clear()
        s = DiskStorage.open(d)
        assert s.entries == [ent(1), ent(2), ent(3, 1, b"x" * 40)], cut
        assert s.hard_state == HardState(1, "n1", 2)
        r = s.report
        if cut == start:  # the write never started: nothing to cut
            assert (r.truncated_bytes, r.truncated_at, r.reason) == (0, None, None)
        else:
            assert r.truncated_bytes == cut - start > 0
            assert r.truncated_at == start
            assert r.reason and "offset" in r.reason
            assert any("torn or corrupt tail" in m for m in caplog.messages)
        assert r.entries == 3
        assert (d / LOG_FILE).stat().st_size == start == s.log_bytes()
        s.save(HardState(3, "n3", 3), [ent(4, 3, b"after recovery")])
        s = reopen(s)
        assert s.report.truncated_bytes == 0
        assert s.entries[-1] == ent(4, 3, b"after recovery")
        assert s.hard_state == HardState(3, "n3", 3)
        s.close()


def _flip(path: Path, offset: int, mask: int = 0x04) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= mask
    path.write_bytes(bytes(raw))


def test_bit_flip_in_last_record_is_cut(tmp_path: Path) -> None:
    offsets = batch_offsets(tmp_path, [(None, [ent(1)]), (None, [ent(2)]), (None, [ent(3)])])
    _flip(tmp_path / LOG_FILE, offsets[-1] - 2)  # in the payload of the last entry
    with DiskStorage.open(tmp_path) as s:
        assert s.entries == [ent(1), ent(2)]
        assert s.report.truncated_at == offsets[-2]
        assert s.report.truncated_bytes == offsets[-1] - offsets[-2]
        assert s.report.reason is not None and s.report.reason.startswith("crc mismatch at offset")


def test_garbage_length_in_last_record_is_cut(tmp_path: Path) -> None:
    offsets = batch_offsets(tmp_path, [(None, [ent(1)]), (None, [ent(2), ent(3)])])
    path = tmp_path / LOG_FILE
    raw = bytearray(path.read_bytes())
    raw[offsets[1] + 17 : offsets[1] + 21] = b"\xff\xff\xff\x7f"  # first ENTRY's length field
    path.write_bytes(bytes(raw))
    with DiskStorage.open(tmp_path) as s:
        assert s.entries == [ent(1)]
        assert s.report.reason is not None and "limit" in s.report.reason


def test_hole_inside_the_last_write_is_a_torn_write(tmp_path: Path) -> None:
    """Pages of the unsynced last write reached the disk out of order: a zeroed hole followed
    by valid records of that same write. Nothing of it was acknowledged: cut the whole batch."""
    big = [ent(i, 1, bytes([i]) * 3000) for i in range(3, 7)]
    offsets = batch_offsets(tmp_path, [(HardState(1, "n1", 0), [ent(1), ent(2)]), (None, big)])
    path = tmp_path / LOG_FILE
    raw = bytearray(path.read_bytes())
    raw[offsets[1] + 4000 : offsets[1] + 8096] = bytes(4096)
    path.write_bytes(bytes(raw))
    with DiskStorage.open(tmp_path) as s:
        assert s.entries == [ent(1), ent(2)]
        assert s.report.truncated_at == offsets[1]
        assert s.report.truncated_bytes == offsets[2] - offsets[1]


def test_zeros_after_the_end_are_the_clean_end(tmp_path: Path) -> None:
    """Zeros from a batch boundary to the end of the file are preallocated space (or a file
    whose size reached the disk before its data): the log ends there, nothing is cut, and the
    next batch goes at that boundary, not after the zeros."""
    offsets = batch_offsets(tmp_path, [(None, [ent(1)])])
    with (tmp_path / LOG_FILE).open("ab") as f:
        f.write(bytes(4096))
    with DiskStorage.open(tmp_path) as s:
        assert s.entries == [ent(1)]
        assert (s.report.truncated_at, s.report.truncated_bytes) == (None, 0)
        assert s.log_bytes() == offsets[1]
        s.save(None, [ent(2)])
    with DiskStorage.open(tmp_path) as s:
        assert s.entries == [ent(1), ent(2)]
        assert s.report.truncated_bytes == 0


@pytest.mark.parametrize("where", ["entry payload", "entry header", "batch record", "hard state"])
def test_corruption_in_the_middle_is_refused(tmp_path: Path, where: str) -> None:
    saves = [
        (HardState(1, "n1", 0), [ent(1), ent(2)]),
        (HardState(1, "n1", 2), [ent(3, 1, b"middle entry")]),
        (None, [ent(4), ent(5)]),
    ]
    offsets = batch_offsets(tmp_path, saves)
    batch = offsets[1]  # the middle batch: BATCH(17) ENTRY(9 + 17 + 12) HARD_STATE(9 + 18 + 2)
    offset = {
        "batch record": batch + 12,
        "entry header": batch + 17 + 2,
        "entry payload": batch + 17 + 9 + 20,
        "hard state": batch + 17 + 38 + 15,
    }[where]
    path = tmp_path / LOG_FILE
    _flip(path, offset)
    before = path.read_bytes()
    with pytest.raises(StorageError, match="corrupt") as info:
        DiskStorage.open(tmp_path)
    assert str(path) in str(info.value) and "offset" in str(info.value)
    assert path.read_bytes() == before, "acknowledged data is never cut"


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    with DiskStorage.open(tmp_path, fsync=False) as s:
        s.save(None, [ent(1)])
    (tmp_path / (LOG_FILE + ".tmp")).write_bytes(b"half a compaction")
    (tmp_path / (SNAPSHOT_FILE + ".tmp")).write_bytes(b"half a snapshot")
    with DiskStorage.open(tmp_path) as s:
        assert s.entries == [ent(1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LOCK", LOG_FILE]


# ---- failures ------------------------------------------------------------------------------


def test_fsync_failure_is_fail_stop(tmp_path: Path) -> None:
    fs = FsyncRecorder()
    s = DiskStorage.open(tmp_path, fsync_fn=fs)
    s.save(HardState(1, "n1", 1), [ent(1), ent(2)])
    fs.fail_from = fs.calls + 1
    with pytest.raises(StorageError, match="injected fsync failure") as info:
        s.save(HardState(2, "n2", 2), [ent(3, 2)])
    assert str(tmp_path / LOG_FILE) in str(info.value)
    assert s.entries == [ent(1), ent(2)], "nothing unacknowledged is exposed"
    fs.fail_from = None  # even if the disk "recovers", the storage stays unusable
    for call in (
        lambda: s.save(None, [ent(3, 2)]),
        lambda: s.save(HardState(3, None, 0), []),
        lambda: s.save_snapshot(snap(1, 1)),
        s.last_index,
        s.first_index,
        s.log_bytes,
    ):
        with pytest.raises(StorageError, match="unusable"):
            call()
    s.close()
    with DiskStorage.open(tmp_path) as s:  # what was acknowledged is there
        assert s.entries[:2] == [ent(1), ent(2)]
        assert s.hard_state.term >= 1


def test_write_failure_is_fail_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = DiskStorage.open(tmp_path, fsync=False)
    s.save(None, [ent(1)])

    class FailingOs:
        """The os module, but the first write is short and the second fails."""

        writes = 0

        def __getattr__(self, name: str):
            return getattr(os, name)

        def pwrite(self, fd: int, data, offset: int) -> int:
            self.writes += 1
            if self.writes == 1:
                return os.pwrite(fd, bytes(data)[:5], offset)
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(walfile, "os", FailingOs())
    with pytest.raises(StorageError, match="No space left"):
        s.save(None, [ent(2)])
    monkeypatch.undo()
    with pytest.raises(StorageError, match="unusable"):
        s.save(None, [ent(2)])
    s = reopen(s)
    assert s.entries == [ent(1)]
    assert s.report.truncated_bytes == 5
    s.close()


# ---- property test against a model ---------------------------------------------------------


class Model:
    """What storage must return, in the simplest terms."""

    def __init__(self) -> None:
        self.hard_state = EMPTY_HARD_STATE
        self.snapshot = Snapshot()
        self.entries: list[Entry] = []

    def last_index(self) -> int:
        return self.snapshot.meta.index + len(self.entries)

    def save(self, hs: HardState | None, entries: list[Entry]) -> None:
        if entries:
            del self.entries[entries[0].index - self.snapshot.meta.index - 1 :]
            self.entries.extend(entries)
        if hs is not None:
            self.hard_state = hs

    def save_snapshot(self, sn: Snapshot) -> None:
        old = self.snapshot.meta.index
        if sn.meta.index <= old:
            return
        matching = [e for e in self.entries if e.index == sn.meta.index and e.term == sn.meta.term]
        self.entries = [e for e in self.entries if e.index > sn.meta.index] if matching else []
        self.snapshot = sn


def check(s: DiskStorage, m: Model) -> None:
    assert s.hard_state == m.hard_state
    assert s.snapshot == m.snapshot
    assert s.entries == m.entries
    assert s.last_index() == m.last_index()
    assert s.first_index() == m.snapshot.meta.index + 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_histories_match_the_model(data: st.DataObject) -> None:
    node_ids = st.sampled_from(["n1", "n2", "n3", "a-much-longer-node-name"])
    with tempfile.TemporaryDirectory() as tmp:
        m = Model()
        s = DiskStorage.open(tmp, fsync=False)
        try:
            for _ in range(data.draw(st.integers(1, 25), label="ops")):
                op = data.draw(st.sampled_from(["save", "save", "save", "snapshot", "reopen"]))
                if op == "save":
                    start = data.draw(st.integers(m.snapshot.meta.index + 1, m.last_index() + 1))
                    term = data.draw(st.integers(0, 6))
                    n = data.draw(st.integers(0, 4))
                    entries = [
                        Entry(term, start + k, data.draw(st.sampled_from(EntryType)),
                              data.draw(st.binary(max_size=24)))
                        for k in range(n)
                    ]  # fmt: skip
                    hs = data.draw(
                        st.none()
                        | st.builds(HardState, st.integers(0, 9), st.none() | node_ids,
                                    st.integers(0, 40))
                    )  # fmt: skip
                    s.save(hs, entries)
                    m.save(hs, entries)
                elif op == "snapshot":
                    index = data.draw(st.integers(0, m.last_index() + 3))
                    k = index - m.snapshot.meta.index - 1
                    if 0 <= k < len(m.entries) and data.draw(st.booleans()):
                        term = m.entries[k].term
                    else:
                        term = data.draw(st.integers(0, 6))
                    voters = tuple(data.draw(st.lists(node_ids, max_size=3, unique=True)))
                    learners = tuple(data.draw(st.lists(node_ids, max_size=2, unique=True)))
                    sn = snap(index, term, data.draw(st.binary(max_size=40)), voters, learners)
                    s.save_snapshot(sn)
                    m.save_snapshot(sn)
                else:
                    s = reopen(s, fsync=False)
                    assert s.report.truncated_bytes == 0
                check(s, m)
            s = reopen(s, fsync=False)
            check(s, m)
        finally:
            s.close()


# ---- a real crash --------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from hafleet_agent.wal import DiskStorage
    from hafleet_agent.raft.types import Entry, HardState

    def payload(i):
        return i.to_bytes(8, "little") * ((i * 7919) % 2500)

    s = DiskStorage.open(sys.argv[1])
    last = s.last_index()
    for _ in range(1_000_000):  # bounded; the parent kills us long before
        n = 1 + last % 3
        entries = [Entry(1, last + k, data=payload(last + k)) for k in range(1, n + 1)]
        s.save(HardState(1, "n1", last), entries)
        last += n
        print(last, flush=True)  # acknowledged: durable from here on
    """
)


def test_acknowledged_entries_survive_sigkill(tmp_path: Path) -> None:
    src = Path(storage_module.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(src)}
    d = tmp_path / "node"
    acked = 0
    for _ in range(3):  # crash, recover, crash again
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(d)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert child.stdout is not None
        seen = 0
        try:
            while seen < 150:
                line = child.stdout.readline()
                if not line:
                    break
                acked = max(acked, int(line))
                seen += 1
        finally:
            os.kill(child.pid, signal.SIGKILL)
            out, err = child.communicate()
        for line in out.split():  # acknowledged before the kill landed
            acked = max(acked, int(line))
        assert seen == 150, f"child stopped early: {err}"
        assert child.returncode == -signal.SIGKILL
        with DiskStorage.open(d) as s:
            assert s.last_index() >= acked
            assert [e.index for e in s.entries] == list(range(1, s.last_index() + 1))
            for e in s.entries:
                assert e.data == e.index.to_bytes(8, "little") * ((e.index * 7919) % 2500)
            assert s.hard_state.term == 1 and s.hard_state.commit <= s.last_index()
