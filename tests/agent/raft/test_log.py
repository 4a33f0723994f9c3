"""RaftLog on its own: the indexes and terms around a snapshot, the AppendEntries check and
conflict truncation, commit and apply bounds, compaction, and the unstable part handed to
the driver. Each test pins one boundary that the consensus tests only cross by chance."""

from __future__ import annotations

import pytest

from hafleet_agent.raft.log import CompactedError, RaftLog
from hafleet_agent.raft.types import Entry, Snapshot, SnapshotMeta


def ents(*terms: int, start: int = 1) -> list[Entry]:
    """Entries at start, start+1, ... with the given terms."""
    return [Entry(term=t, index=start + i, data=b"%d" % (start + i)) for i, t in enumerate(terms)]


def snap(index: int, term: int) -> Snapshot:
    return Snapshot(meta=SnapshotMeta(index=index, term=term), data=b"s")


def snapshotted_log() -> RaftLog:
    """Snapshot at 5 (term 2), entries 6..8 of terms 2, 3, 3."""
    return RaftLog(snap(5, 2), ents(2, 3, 3, start=6))


def test_an_empty_log() -> None:
    log = RaftLog()
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 0, 0)
    assert (log.committed, log.applied, log.stable_index) == (0, 0, 0)
    assert log.snapshot.empty and log.pending_snapshot is None
    assert log.unstable_entries() == [] and log.next_committed() == []


def test_a_log_built_on_a_snapshot() -> None:
    log = snapshotted_log()
    assert (log.offset, log.offset_term) == (5, 2)
    assert (log.first_index(), log.last_index(), log.last_term()) == (6, 8, 3)
    assert (log.committed, log.applied) == (5, 5)
    assert log.stable_index == 8  # what it was built from is already on disk
    assert log.unstable_entries() == []


def test_entries_must_follow_the_snapshot() -> None:
    with pytest.raises(ValueError, match="start at 7, expected 6"):
        RaftLog(snap(5, 2), ents(2, start=7))
    with pytest.raises(ValueError):
        RaftLog(None, ents(1, start=2))
    assert RaftLog(None, ents(1, 1)).last_index() == 2


def test_term_at_every_index() -> None:
    log = snapshotted_log()
    assert log.term(5) == 2  # the snapshot's own index
    assert [log.term(i) for i in (6, 7, 8)] == [2, 3, 3]
    assert log.term(9) == 0 and log.term(100) == 0  # beyond the end
    with pytest.raises(CompactedError):
        log.term(4)
    assert not log.match_term(4, 2)  # compacted: no match, no error
    assert log.match_term(5, 2) and not log.match_term(5, 3)
    assert log.match_term(8, 3) and not log.match_term(8, 2)
    assert log.match_term(9, 0)


def test_slice_bounds() -> None:
    log = snapshotted_log()
    assert [e.index for e in log.slice(6, 9)] == [6, 7, 8]
    assert [e.index for e in log.slice(7, 100)] == [7, 8]  # capped at the last index
    assert [e.index for e in log.slice(6, 9, max_count=2)] == [6, 7]
    assert [e.index for e in log.slice(6, 9, max_count=3)] == [6, 7, 8]
    assert log.slice(8, 8) == [] and log.slice(9, 12) == []
    assert [e.index for e in log.slice(8, 9)] == [8]
    with pytest.raises(CompactedError):
        log.slice(5, 9)
    with pytest.raises(CompactedError):
        log.slice(3, 9)


@pytest.mark.parametrize(
    ("last_index", "last_term", "up_to_date"),
    [
        (8, 3, True),  # the same log
        (9, 3, True),  # longer, same last term
        (7, 3, False),  # shorter, same last term
        (1, 4, True),  # a later last term wins whatever the length
        (100, 2, False),  # an earlier last term loses whatever the length
    ],
)
def test_is_up_to_date(last_index: int, last_term: int, up_to_date: bool) -> None:
    assert snapshotted_log().is_up_to_date(last_index, last_term) is up_to_date


def test_find_conflict_by_term() -> None:
    log = RaftLog(None, ents(1, 1, 2, 2, 4))  # indexes 1..5
    assert log.find_conflict_by_term(5, 4) == 5
    assert log.find_conflict_by_term(5, 3) == 4  # the last entry of term <= 3
    assert log.find_conflict_by_term(5, 2) == 4
    assert log.find_conflict_by_term(3, 2) == 3
    assert log.find_conflict_by_term(5, 1) == 2
    assert log.find_conflict_by_term(5, 0) == 0  # down to the offset
    assert log.find_conflict_by_term(50, 4) == 5  # capped at the last index
    on_snapshot = snapshotted_log()
    assert on_snapshot.find_conflict_by_term(8, 1) == 5  # never below the snapshot


def test_append_extends_and_truncates_a_conflicting_suffix() -> None:
    log = RaftLog(None, ents(1, 1, 1))
    assert log.append([]) == 3
    assert log.append(ents(2, 2, start=4)) == 5
    assert [e.term for e in log.entries] == [1, 1, 1, 2, 2]
    assert log.stable_index == 3
    assert [e.index for e in log.unstable_entries()] == [4, 5]
    assert log.append(ents(3, start=3)) == 3  # replaces 3..5
    assert [e.term for e in log.entries] == [1, 1, 3]
    assert log.stable_index == 2  # the rewritten entry 3 is unstable again
    assert [e.index for e in log.unstable_entries()] == [3]


def test_append_refuses_committed_compacted_and_gapped_indexes() -> None:
    log = snapshotted_log()
    log.commit_to(7)
    with pytest.raises(AssertionError, match="committed"):
        log.append(ents(4, start=7))
    log.append(ents(4, start=8))  # just above the commit point
    with pytest.raises(AssertionError, match="gap"):
        log.append(ents(4, start=10))
    log.append(ents(4, start=9))  # right after the last index
    assert log.last_index() == 9
    fresh = snapshotted_log()
    fresh.committed = 0  # only the snapshot check stands between
    with pytest.raises(AssertionError, match="below snapshot"):
        fresh.append(ents(2, start=5))


def test_maybe_append_checks_the_previous_entry() -> None:
    log = RaftLog(None, ents(1, 1, 2))
    assert log.maybe_append(3, 1, 3, ents(2, start=4)) is None  # wrong term at 3
    assert log.maybe_append(4, 2, 3, ents(2, start=5)) is None  # we have no entry 4
    assert log.maybe_append(3, 2, 2, ents(2, 2, start=4)) == 5
    assert log.last_index() == 5 and log.committed == 2


def test_maybe_append_commits_no_further_than_the_new_entries() -> None:
    log = RaftLog(None, ents(1, 1, 1, 1))
    assert log.maybe_append(1, 1, 10, ents(1, start=2)) == 2
    assert log.committed == 2  # min(leader's commit, last new index), not the whole log
    assert log.last_index() == 4  # matching entries leave the suffix alone
    assert log.maybe_append(2, 1, 3, []) == 2  # a heartbeat: commit up to what it vouches for
    assert log.committed == 2


def test_maybe_append_truncates_only_from_the_first_conflict() -> None:
    log = RaftLog(None, ents(1, 1, 1, 1))
    stable = log.stable_index
    assert log.maybe_append(1, 1, 0, [*ents(1, start=2), *ents(2, 2, start=3)]) == 4
    assert [e.term for e in log.entries] == [1, 1, 2, 2]
    assert log.stable_index == 2 < stable
    assert [e.index for e in log.unstable_entries()] == [3, 4]


def test_maybe_append_never_rewrites_a_committed_entry() -> None:
    log = RaftLog(None, ents(1, 1, 1))
    log.commit_to(2)
    with pytest.raises(AssertionError, match="conflicts with committed"):
        log.maybe_append(1, 1, 2, ents(2, start=2))
    log2 = RaftLog(None, ents(1, 1, 1))
    log2.commit_to(2)
    assert log2.maybe_append(1, 1, 2, [*ents(1, start=2), *ents(2, start=3)]) == 3
    assert [e.term for e in log2.entries] == [1, 1, 2]


def test_maybe_append_skips_entries_under_the_snapshot() -> None:
    log = snapshotted_log()
    # The leader resends 4..9 from prev 3: the part under our snapshot is taken as matching.
    assert log.maybe_append(5, 2, 5, [*ents(2, 3, 3, start=6), *ents(3, start=9)]) == 9
    assert log.last_index() == 9
    assert log._find_conflict(ents(1, 2, start=4)) == 0
    assert log._find_conflict(ents(2, 9, start=5)) == 6


def test_commit_to_only_moves_forward_and_within_the_log() -> None:
    log = RaftLog(None, ents(1, 1, 1))
    log.commit_to(2)
    log.commit_to(1)
    assert log.committed == 2
    log.commit_to(3)
    assert log.committed == 3
    with pytest.raises(AssertionError, match="beyond last index"):
        log.commit_to(4)


def test_applied_to_stays_between_applied_and_committed() -> None:
    log = RaftLog(None, ents(1, 1, 1))
    log.commit_to(2)
    log.applied_to(1)
    log.applied_to(1)  # the same index again is fine
    log.applied_to(2)  # up to the commit point
    assert log.applied == 2
    with pytest.raises(AssertionError):
        log.applied_to(3)
    with pytest.raises(AssertionError):
        log.applied_to(1)


def test_next_committed_is_what_is_committed_and_not_applied() -> None:
    log = RaftLog(None, ents(1, 1, 1, 1))
    assert log.next_committed() == []
    log.commit_to(3)
    assert [e.index for e in log.next_committed()] == [1, 2, 3]
    assert [e.index for e in log.next_committed(max_count=2)] == [1, 2]
    log.applied_to(1)
    assert [e.index for e in log.next_committed()] == [2, 3]
    log.applied_to(3)
    assert log.next_committed() == []


def test_restore_replaces_the_log_with_the_snapshot() -> None:
    log = RaftLog(None, ents(1, 1, 1))
    s = snap(10, 4)
    log.restore(s)
    assert log.entries == [] and log.snapshot is s and log.pending_snapshot is s
    assert (log.offset, log.offset_term) == (10, 4)
    assert (log.committed, log.applied, log.stable_index) == (10, 10, 10)
    assert (log.first_index(), log.last_index(), log.last_term()) == (11, 10, 4)


def test_compact_drops_entries_up_to_the_snapshot() -> None:
    log = RaftLog(None, ents(1, 1, 2, 2))
    log.commit_to(4)
    log.applied_to(3)
    with pytest.raises(AssertionError, match="beyond applied"):
        log.compact(snap(4, 2))
    with pytest.raises(AssertionError, match="term"):
        log.compact(snap(3, 1))
    s = snap(3, 2)
    log.compact(s)  # exactly the applied index
    assert log.snapshot is s and (log.offset, log.offset_term) == (3, 2)
    assert [e.index for e in log.entries] == [4]
    assert log.term(3) == 2 and log.first_index() == 4
    log.compact(snap(3, 2))  # not newer: nothing happens
    log.compact(snap(2, 1))
    assert log.snapshot is s and log.offset == 3


def test_unstable_entries_and_stable_to() -> None:
    log = RaftLog(None, ents(1, 1))
    log.append(ents(1, 1, 2, start=3))
    assert [e.index for e in log.unstable_entries()] == [3, 4, 5]
    log.stable_to(4)
    assert log.stable_index == 4
    assert [e.index for e in log.unstable_entries()] == [5]
    log.stable_to(3)  # never backwards
    assert log.stable_index == 4
    log.stable_to(50)  # never past the last index
    assert log.stable_index == 5 and log.unstable_entries() == []


def test_unstable_entries_above_a_snapshot() -> None:
    log = snapshotted_log()
    log.append(ents(3, 4, start=9))
    assert [e.index for e in log.unstable_entries()] == [9, 10]
    log.stable_to(9)  # the driver persists before it applies
    log.commit_to(9)
    log.applied_to(9)
    log.compact(snap(9, 3))
    assert [e.index for e in log.unstable_entries()] == [10]
