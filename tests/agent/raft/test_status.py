"""The read-only views of the core (raft/status.py) and the majority arithmetic
(raft/quorum.py): what the driver sees must be what the core holds, and a view must not change
when the core moves on."""

from __future__ import annotations

import pytest
from interaction import Env

from hafleet_agent.raft.log import CompactedError
from hafleet_agent.raft.progress import ProgressState
from hafleet_agent.raft.quorum import has_majority, majority, quorum_index
from hafleet_agent.raft.types import StateType


@pytest.mark.parametrize(("n", "q"), [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_majority(n: int, q: int) -> None:
    assert majority(n) == q


@pytest.mark.parametrize(
    ("values", "voters", "want"),
    [
        ({}, [], 0),
        ({"a": 5}, ["a"], 5),
        ({"a": 5, "b": 3, "c": 9}, ["a", "b", "c"], 5),
        ({"a": 5, "b": 3, "c": 9, "d": 7}, ["a", "b", "c", "d"], 5),
        ({"a": 5, "c": 9}, ["a", "b", "c"], 5),  # b is missing: counts as 0
        ({"a": 5}, ["a", "b", "c"], 0),  # one of three holds it: no majority
        ({"a": 5, "x": 100, "y": 100}, ["a", "b", "c"], 0),  # x and y are no voters
        ({"a": 4, "b": 4, "c": 1, "d": 1, "e": 4}, ["a", "b", "c", "d", "e"], 4),
    ],
)
def test_quorum_index(values: dict[str, int], voters: list[str], want: int) -> None:
    assert quorum_index(values, voters) == want


@pytest.mark.parametrize(
    ("voters", "yes", "want"),
    [
        (set(), {"a"}, False),
        ({"a"}, {"a"}, True),
        ({"a"}, set(), False),
        ({"a", "b"}, {"a"}, False),
        ({"a", "b", "c"}, {"a", "c"}, True),
        ({"a", "b", "c"}, {"a", "x", "y"}, False),  # only voters count
        ({"a", "b", "c", "d"}, {"a", "b"}, False),
        ({"a", "b", "c", "d"}, {"a", "b", "d"}, True),
    ],
)
def test_has_majority(voters: set[str], yes: set[str], want: bool) -> None:
    assert has_majority(voters, yes) is want


def _cluster_with_learner() -> Env:
    env = Env()
    for cmd in (
        "add-nodes 3",
        "bootstrap",
        "stabilize",
        "campaign 1",
        "stabilize",
        "add-nodes 1",
        "propose-conf-change 1 add-learner 4",
        "stabilize",
        "propose 1 x",
        "stabilize",
    ):
        env.run(cmd)
    return env


def test_basic_status_is_what_the_core_holds() -> None:
    env = _cluster_with_learner()
    for nid, node in env.nodes.items():
        raw = node.raw
        assert raw is not None
        r = raw.raft  # white-box on purpose: the view is checked against the core itself
        st = raw.basic_status()
        assert st.id == nid
        assert (st.term, st.vote, st.state, st.lead) == (r.term, r.vote, r.state, r.lead)
        assert (st.commit, st.applied) == (r.log.committed, r.log.applied)
        assert (st.first_index, st.last_index) == (r.log.first_index(), r.log.last_index())
        assert st.snapshot_index == r.log.offset
        assert st.voters == {"n1", "n2", "n3"} and st.learners == {"n4"}
        assert st.in_config("n4") and st.in_config("n1") and not st.in_config("n5")
        assert st.is_leader is (nid == "n1")
        assert (raw.term, raw.lead, raw.is_leader) == (st.term, st.lead, st.is_leader)
        assert st.lead == "n1"
        assert st.commit == st.last_index > 0
        assert st.pending_conf_index == r.pending_conf_index
        assert st.lead_transferee is None


def test_progress_on_the_leader_only() -> None:
    env = _cluster_with_learner()
    lead = env.nodes["n1"].raw
    assert lead is not None
    prs = lead.progress()
    assert set(prs) == {"n1", "n2", "n3", "n4"}
    last = lead.basic_status().last_index
    for nid, pr in prs.items():
        assert pr.match == last and pr.next == last + 1
        assert pr.learner is (nid == "n4")
        assert pr.state in (ProgressState.REPLICATE, ProgressState.PROBE)
    assert prs["n2"].state is ProgressState.REPLICATE
    for nid in ("n2", "n3", "n4"):
        raw = env.nodes[nid].raw
        assert raw is not None and raw.progress() == {}


def test_views_are_copies() -> None:
    env = _cluster_with_learner()
    lead = env.nodes["n1"].raw
    assert lead is not None
    st, prs = lead.basic_status(), lead.progress()
    env.run("propose 1 y")
    env.run("stabilize")
    now = lead.basic_status()
    assert now.last_index == st.last_index + 1 == now.commit
    assert prs["n2"].match == st.last_index  # the old view did not move
    assert lead.progress()["n2"].match == now.last_index
    with pytest.raises(AttributeError):
        st.term = 99  # type: ignore[misc]
    assert isinstance(st.voters, frozenset) and st.state is StateType.LEADER


def test_term_at_and_pending_snapshot() -> None:
    env = _cluster_with_learner()
    raw = env.nodes["n1"].raw
    assert raw is not None
    st = raw.basic_status()
    assert raw.term_at(st.last_index) == st.term
    assert raw.term_at(st.last_index + 1) == 0
    assert raw.pending_snapshot_meta() is None
    env.run(f"compact 1 {st.applied}")
    assert raw.basic_status().snapshot_index == st.applied
    with pytest.raises(CompactedError):
        raw.term_at(st.applied - 1)
