"""Majority arithmetic, in one place: the core counts votes, replicas and read acknowledgements
with it, and the driver asks it whether a change would leave the voters a majority."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from .types import NodeId


def majority(n: int) -> int:
    """How many of ``n`` voters make a quorum (1 for a group of none, as etcd counts)."""
    return n // 2 + 1


def quorum_index(values: Mapping[NodeId, int], voters: Iterable[NodeId]) -> int:
    """The largest value that a majority of ``voters`` has reached: with match indexes, the
    index a majority holds (the commit point); with read rounds, the newest round a majority
    answered. A voter missing from ``values`` counts as 0; no voters give 0."""
    got = sorted((values.get(v, 0) for v in voters), reverse=True)
    if not got:
        return 0
    return got[majority(len(got)) - 1]


def has_majority(voters: Collection[NodeId], yes: Iterable[NodeId]) -> bool:
    """Whether the members of ``yes`` that are voters make a majority of ``voters`` (never
    for an empty set of voters)."""
    if not voters:
        return False
    return len(set(voters).intersection(yes)) >= majority(len(voters))
