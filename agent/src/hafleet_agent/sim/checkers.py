"""Raft's safety properties (the paper's Figure 3), checked after every simulated event."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ..raft.log import CompactedError
from ..raft.rawnode import RawNode
from ..raft.types import Entry, NodeId, StateType


class Violation(Exception):
    def __init__(self, prop: str, detail: str) -> None:
        super().__init__(prop, detail)
        self.prop = prop
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.prop}: {self.detail}"


class CheckedNode(Protocol):
    """What the checkers look at of a simulated node (``node.SimNode``)."""

    id: NodeId
    alive: bool
    raw: RawNode | None


class InvariantChecker:
    """Incremental checks; each is cheap enough to run after every event.

    - election safety: at most one leader per term;
    - leader append-only: a leader never overwrites or deletes entries of its own log;
    - log matching: two entries with the same index and term hold the same command and
      follow the same previous term (inductively: the logs are identical up to them);
    - leader completeness: a leader's log holds every entry committed before its term;
    - state machine safety: no two nodes commit or apply different entries at an index.
    """

    def __init__(self) -> None:
        self.leaders: dict[int, NodeId] = {}
        self.entries: dict[tuple[int, int], tuple[bytes, int]] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}
        # The term in which each index was seen committed first (the committing leader's, as
        # the leader learns of a commit before anyone else).
        self.commit_term: dict[int, int] = {}
        self.leader_view: dict[NodeId, tuple[int, int, int]] = {}  # term, last index, last term
        self.commit_seen: dict[NodeId, int] = {}

    def check_nodes(self, now: float, nodes: Iterable[CheckedNode]) -> None:
        for node in nodes:
            if not node.alive or node.raw is None:
                self.leader_view.pop(node.id, None)
                continue
            r = node.raw.raft
            self._check_commit(node.id, node.raw)
            if r.state is not StateType.LEADER:
                self.leader_view.pop(node.id, None)
                continue
            prev = self.leaders.setdefault(r.term, node.id)
            if prev != node.id:
                raise Violation(
                    "election safety", f"term {r.term} has two leaders: {prev} and {node.id}"
                )
            view = self.leader_view.get(node.id)
            last, last_term = r.log.last_index(), r.log.last_term()
            if view is None or view[0] != r.term:
                self._check_completeness(node.id, node.raw)
            else:
                _, v_last, v_term = view
                try:
                    same = r.log.term(v_last) == v_term
                except CompactedError:
                    same = True
                if last < v_last or not same:
                    raise Violation(
                        "leader append-only",
                        f"leader {node.id} of term {r.term} had entry {v_last}/t{v_term}, "
                        f"now last={last} term-there={r.log.term(min(v_last, last))}",
                    )
            self.leader_view[node.id] = (r.term, last, last_term)

    def on_persist(self, nid: NodeId, raw: RawNode, entries: list[Entry]) -> None:
        log = raw.raft.log
        for e in entries:
            try:
                prev_term = log.term(e.index - 1)
            except CompactedError:
                continue
            key = (e.index, e.term)
            seen = self.entries.get(key)
            if seen is None:
                self.entries[key] = (e.data, prev_term)
            elif seen != (e.data, prev_term):
                raise Violation(
                    "log matching",
                    f"{nid} holds entry {e.index}/t{e.term} data={e.data[:60]!r} "
                    f"prev_term={prev_term}; another node has data={seen[0][:60]!r} "
                    f"prev_term={seen[1]}",
                )

    def _check_commit(self, nid: NodeId, raw: RawNode) -> None:
        log = raw.raft.log
        start = max(self.commit_seen.get(nid, 0), log.offset) + 1
        for idx in range(start, log.committed + 1):
            e = log.entries[idx - log.offset - 1]
            self._record_committed(nid, e, "commit")
            self.commit_term.setdefault(idx, raw.raft.term)
        if log.committed > self.commit_seen.get(nid, 0):
            self.commit_seen[nid] = log.committed

    def on_apply(self, nid: NodeId, e: Entry) -> None:
        self._record_committed(nid, e, "apply")

    def _record_committed(self, nid: NodeId, e: Entry, what: str) -> None:
        seen = self.committed.get(e.index)
        if seen is None:
            self.committed[e.index] = (e.term, e.data)
        elif seen != (e.term, e.data):
            raise Violation(
                "state machine safety",
                f"{nid} {what}s {e.index}/t{e.term} data={e.data[:60]!r}; "
                f"another node committed t{seen[0]} data={seen[1][:60]!r}",
            )

    def _check_completeness(self, nid: NodeId, raw: RawNode) -> None:
        """Every entry committed in a term before the leader's is in the leader's log. (A
        leader of a stale term -- a candidate that was paused and won with old votes -- need
        not hold what later terms committed; it cannot commit anything itself.)"""
        log, term = raw.raft.log, raw.raft.term
        must = [i for i, t in self.commit_term.items() if t < term]
        if not must:
            return
        if max(must) > log.last_index():
            raise Violation(
                "leader completeness",
                f"new leader {nid} (term {term}) ends at {log.last_index()} but {max(must)} "
                f"was committed in term {self.commit_term[max(must)]}",
            )
        for idx in sorted(must):
            if idx < log.first_index():
                continue  # covered by the leader's snapshot, which holds only committed state
            seen = self.committed[idx]
            e = log.entries[idx - log.offset - 1]
            if (e.term, e.data) != seen:
                raise Violation(
                    "leader completeness",
                    f"new leader {nid} (term {raw.raft.term}) has {idx}/t{e.term}, "
                    f"but {idx}/t{seen[0]} was committed",
                )
