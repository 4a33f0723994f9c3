"""What the leader knows about each follower's log (etcd's tracker package, simplified)."""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"  # one append in flight at a time, until we know where the follower's log ends
    REPLICATE = "replicate"  # pipelined appends, bounded by the in-flight window
    SNAPSHOT = "snapshot"  # a snapshot is on its way; appends wait for it


class Inflights:
    """Last indexes of appends sent but not yet acknowledged, bounded in count."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        if self.full():
            raise AssertionError("inflights full")
        self.q.append(last_index)

    def free_le(self, index: int) -> None:
        while self.q and self.q[0] <= index:
            self.q.popleft()

    def free_first(self) -> None:
        if self.q:
            self.q.popleft()

    def full(self) -> bool:
        return len(self.q) >= self.size

    def reset(self) -> None:
        self.q.clear()

    def __len__(self) -> int:
        return len(self.q)


class Progress:
    def __init__(self, next_index: int, max_inflight: int, learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0  # ticks since the snapshot was sent
        self.recent_active = False
        self.inflights = Inflights(max_inflight)
        self.learner = learner

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, {self.state.value}"
            f"{', learner' if self.learner else ''})"
        )

    def _reset(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def maybe_update(self, index: int) -> bool:
        """An append up to ``index`` was acknowledged. True if that is news."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def optimistic_update(self, last_index: int) -> None:
        self.next = last_index + 1

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append at ``rejected``. True if we moved ``next`` back."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # stale: not the probe we are waiting for
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
