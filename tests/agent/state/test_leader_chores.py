"""The leader's chores (node/chores.py) on their own, with a fake Raft node and the real state
machine: promotion of a caught-up learner, health marks, the autopilot's majority rule."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from hafleet_agent.config import AgentConfig
from hafleet_agent.node.chores import LeaderChores
from hafleet_agent.raft.progress import ProgressState
from hafleet_agent.raft.status import BasicStatus, PeerProgress
from hafleet_agent.raft.types import ConfChange, ConfChangeType, StateType
from hafleet_agent.state import StateMachine, member_context


class FakeRaw:
    def __init__(self, voters: set[str], learners: set[str], match: dict[str, int]) -> None:
        self.voters, self.learners, self.match = voters, learners, match
        self.commit = 10
        self.proposed: list[ConfChange] = []

    def basic_status(self) -> BasicStatus:
        return BasicStatus(
            id="a", term=3, vote="a", state=StateType.LEADER, lead="a", commit=self.commit,
            applied=self.commit, first_index=1, last_index=self.commit, snapshot_index=0,
            voters=frozenset(self.voters), learners=frozenset(self.learners),
            pending_conf_index=0, lead_transferee=None,
        )  # fmt: skip

    def progress(self) -> dict[str, PeerProgress]:
        return {
            n: PeerProgress(m, m + 1, ProgressState.REPLICATE, True, n in self.learners)
            for n, m in self.match.items()
        }

    def propose_conf_change(self, cc: ConfChange) -> tuple[int, int]:
        self.proposed.append(cc)
        return 3, self.commit + 1


def _state(ids: list[str], unhealthy: tuple[str, ...] = ()) -> StateMachine:
    sm = StateMachine()
    for i, mid in enumerate(ids):
        ctx = member_context(f"127.0.0.1:{7400 + i}", f"127.0.0.1:{7480 + i}")
        sm.apply_conf(sm.index + 1, ConfChange(ConfChangeType.ADD_VOTER, mid, ctx))
    for mid in unhealthy:
        cmd = {"op": "member_health", "rid": f"h-{mid}", "id": mid, "healthy": False}
        assert sm.apply(sm.index + 1, json.dumps(cmd).encode()).ok
    return sm


def _chores(raw: FakeRaw, sm: StateMachine, **cfg: Any) -> tuple[LeaderChores, list[Any]]:
    proposed: list[Any] = []
    sent: list[Any] = []

    async def propose_cmd(data: bytes) -> None:
        proposed.append(json.loads(data))

    async def propose_conf(cc: ConfChange) -> None:
        proposed.append(cc)

    chores = LeaderChores(
        "a",
        AgentConfig(node_id="a", election_timeout_ms=300, **cfg),
        sm,
        raw=lambda: raw,  # type: ignore[arg-type,return-value]
        leader_since=lambda: None,
        propose_cmd=propose_cmd,
        propose_conf=propose_conf,
        send=lambda *a, **k: sent.append((a, k)),
        wake=lambda: None,
    )
    return chores, proposed


def test_promotes_a_caught_up_learner_only() -> None:
    sm = _state(["a", "b", "c"])
    raw = FakeRaw({"a", "b"}, {"c"}, {"a": 10, "b": 10, "c": 9})
    chores, _ = _chores(raw, sm)
    now = time.monotonic()
    chores.health_seen.update(b=now, c=now)
    asyncio.run(chores.run_once())
    assert raw.proposed == []  # c lags behind the commit index
    raw.match["c"] = 10
    asyncio.run(chores.run_once())
    assert raw.proposed == [ConfChange(ConfChangeType.ADD_VOTER, "c")]


def test_marks_a_silent_member_unhealthy_and_a_heard_one_healthy() -> None:
    sm = _state(["a", "b", "c"], unhealthy=("c",))
    raw = FakeRaw({"a", "b", "c"}, set(), {"a": 10, "b": 10, "c": 10})
    chores, proposed = _chores(raw, sm)
    chores.health_seen["c"] = time.monotonic()  # c is heard again; b never was
    asyncio.run(chores.run_once())
    marks = {p["id"]: p["healthy"] for p in proposed if p.get("op") == "member_health"}
    assert marks == {"b": False, "c": True}


@pytest.mark.parametrize(
    ("voters", "unhealthy", "victim", "keeps"),
    [
        (["a", "b", "c"], ("c",), "c", True),  # a, b: 2 of 2
        (["a", "b", "c"], ("b", "c"), "c", False),  # a, b: only a is healthy, 1 of 2
        (["a", "b", "c", "d", "e"], ("d", "e"), "e", True),  # 3 of 4 healthy
        (["a", "b", "c", "d", "e"], ("c", "d", "e"), "e", False),  # 2 of 4
        (["a"], (), "a", False),  # no voter would be left
        (["a", "b"], (), "z", True),  # not a voter: nothing changes
    ],
)
def test_removal_keeps_quorum(
    voters: list[str], unhealthy: tuple[str, ...], victim: str, keeps: bool
) -> None:
    sm = _state(voters, unhealthy)
    raw = FakeRaw(set(voters), set(), {v: 10 for v in voters})
    chores, _ = _chores(raw, sm)
    assert chores.removal_keeps_quorum(victim) is keeps


def test_forget_non_members() -> None:
    sm = _state(["a", "b"])
    raw = FakeRaw({"a", "b"}, set(), {})
    chores, _ = _chores(raw, sm)
    chores.reports.update(b=(0.0, {}), ghost=(0.0, {}))
    chores.health_seen.update(b=0.0, ghost=0.0)
    chores.joined_at.update(b=0.0, ghost=0.0, new=95.0)
    chores.forget_non_members(100.0, 10.0)
    assert set(chores.reports) == set(chores.health_seen) == {"b"}
    assert set(chores.joined_at) == {"b", "new"}


def test_member_changed_keeps_the_first_time_it_saw_a_change() -> None:
    chores, _ = _chores(FakeRaw({"a"}, set(), {}), _state(["a"]))
    before = time.monotonic()
    chores.member_changed("b")
    first = chores.joined_at["b"]
    assert before <= first <= time.monotonic()
    chores.joined_at["c"] = 1.0
    chores.member_changed("c")  # promoted later: still the time it joined
    chores.member_changed("b")
    assert chores.joined_at == {"b": first, "c": 1.0}
