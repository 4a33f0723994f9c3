"""The in-memory Raft log of one node.

The core keeps its whole (compacted) log in memory: ``entries`` after the last
snapshot, plus that snapshot's index and term. What has not yet been handed to
the driver for persistence is "unstable": everything above ``stable_index``.
After a crash the driver rebuilds the log from disk, so the unstable part is
exactly what a crash may lose.
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import Entry, Snapshot


class CompactedError(LookupError):
    """The requested index lies in the compacted part of the log."""


class LogLost(Exception):
    """The leader counts on entries this log does not have: a heartbeat's commit index (the
    leader sends ``min(match, committed)``, and ``match`` is what this member acknowledged
    as durable) beyond its last index. Only lost or rolled-back data makes that: the member
    must stop (etcd-raft panics here, "was the raft log corrupted, truncated, or lost?")."""

    def __init__(self, leader: str, commit: int, last: int) -> None:
        super().__init__(
            f"the leader {leader} counts index {commit} as committed and held here, but this "
            f"member's log ends at {last}"
        )
        self.leader, self.commit, self.last = leader, commit, last


class RaftLog:
    def __init__(self, snapshot: Snapshot | None = None, entries: Sequence[Entry] = ()) -> None:
        snap = snapshot or Snapshot()
        self.snapshot: Snapshot = snap
        self.offset = snap.meta.index  # index of the entry just before entries[0]
        self.offset_term = snap.meta.term
        self.entries: list[Entry] = list(entries)
        if self.entries and self.entries[0].index != self.offset + 1:
            raise ValueError(
                f"log entries start at {self.entries[0].index}, expected {self.offset + 1}"
            )
        self.committed = self.offset
        self.applied = self.offset
        self.stable_index = self.last_index()  # everything given is already on disk
        self.pending_snapshot: Snapshot | None = None  # received, not yet persisted

    # ---- queries -------------------------------------------------------------------------
    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term of ``index``; 0 beyond the end. Raises CompactedError below the snapshot."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset:
            raise CompactedError(index)
        if index > self.last_index():
            return 0
        return self.entries[index - self.offset - 1].term

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except CompactedError:
            return False

    def slice(self, lo: int, hi: int, max_count: int | None = None) -> list[Entry]:
        """Entries [lo, hi). Raises CompactedError when lo is compacted."""
        if lo <= self.offset:
            raise CompactedError(lo)
        hi = min(hi, self.last_index() + 1)
        if max_count is not None:
            hi = min(hi, lo + max_count)
        if lo >= hi:
            return []
        return self.entries[lo - self.offset - 1 : hi - self.offset - 1]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Section 5.4.1: is a candidate's log at least as up to date as ours?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= ``index`` whose term is <= ``term`` (fast back-off hint)."""
        index = min(index, self.last_index())
        while index > self.offset:
            if self.term(index) <= term:
                return index
            index -= 1
        return self.offset

    # ---- mutation ------------------------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> int:
        """Append entries after the last index, truncating a conflicting suffix first."""
        if not entries:
            return self.last_index()
        first = entries[0].index
        if first <= self.committed:
            raise AssertionError(f"append at {first} would overwrite committed {self.committed}")
        if first <= self.offset:
            raise AssertionError(f"append at {first} below snapshot {self.offset}")
        if first > self.last_index() + 1:
            raise AssertionError(f"gap: append at {first} after last {self.last_index()}")
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(entries)
        self.stable_index = min(self.stable_index, first - 1)
        return self.last_index()

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """Follower side of AppendEntries. Returns the last new index, or None on mismatch."""
        if not self._prev_matches(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self._find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise AssertionError(
                    f"entry {conflict} conflicts with committed entry (commit {self.committed})"
                )
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(commit, last_new))
        return last_new

    def _prev_matches(self, prev_index: int, prev_term: int) -> bool:
        """The AppendEntries consistency check: we hold the entry just before the new ones."""
        return self.match_term(prev_index, prev_term)

    def _find_conflict(self, entries: Sequence[Entry]) -> int:
        """First index of ``entries`` not already in the log with the same term (0: none)."""
        for e in entries:
            if e.index <= self.offset:
                continue  # already covered by our snapshot: must match, it is committed
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def applied_to(self, index: int) -> None:
        if index < self.applied or index > self.committed:
            raise AssertionError(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def restore(self, snap: Snapshot) -> None:
        """Replace the whole log with a snapshot received from the leader."""
        self.snapshot = snap
        self.offset = snap.meta.index
        self.offset_term = snap.meta.term
        self.entries = []
        self.committed = snap.meta.index
        self.applied = snap.meta.index
        self.stable_index = snap.meta.index
        self.pending_snapshot = snap

    def compact(self, snap: Snapshot) -> None:
        """Drop entries up to a snapshot the driver took of its applied state."""
        idx = snap.meta.index
        if idx <= self.offset:
            return
        if idx > self.applied:
            raise AssertionError(f"snapshot {idx} beyond applied {self.applied}")
        if self.term(idx) != snap.meta.term:
            raise AssertionError(f"snapshot term {snap.meta.term} != log term at {idx}")
        del self.entries[: idx - self.offset]
        self.offset = idx
        self.offset_term = snap.meta.term
        self.snapshot = snap

    # ---- driver hand-off -----------------------------------------------------------------
    def unstable_entries(self) -> list[Entry]:
        if self.stable_index >= self.last_index():
            return []
        return self.entries[self.stable_index - self.offset :]

    def stable_to(self, index: int) -> None:
        self.stable_index = max(self.stable_index, min(index, self.last_index()))

    def next_committed(self, max_count: int | None = None) -> list[Entry]:
        """Committed entries not yet applied.

        They may include entries of the same ready batch that are not yet on disk; the driver
        persists a batch before it applies any of it, so nothing is applied before it is durable.
        """
        hi = self.committed + 1
        lo = self.applied + 1
        if lo >= hi:
            return []
        return self.slice(lo, hi, max_count)
