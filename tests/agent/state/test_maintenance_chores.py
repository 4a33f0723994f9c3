"""Maintenance in the leader's chores (node/chores.py): a member with ``maintenance/<id>``
plans to weight 0, and the autopilot never removes it while it is down on purpose."""

from __future__ import annotations

import asyncio
import json
import time

from test_leader_chores import FakeRaw, _chores, _state

from hafleet_agent.keys import MAINTENANCE_PREFIX
from hafleet_agent.state import StateMachine


def _put(sm: StateMachine, key: str, value: object) -> None:
    cmd = {"op": "kv_put", "rid": f"p-{key}", "key": key, "value": value, "cas": None}
    assert sm.apply(sm.index + 1, json.dumps(cmd).encode()).ok


def _removed(maintenance: bool) -> list[str]:
    ids = ["a", "b", "c", "d", "e"]
    sm = _state(ids, unhealthy=("e",))
    if maintenance:
        _put(sm, f"{MAINTENANCE_PREFIX}e", {"since": 1.0, "reason": "stopped"})
    raw = FakeRaw(set(ids), set(), {v: 10 for v in ids})
    chores, proposed = _chores(raw, sm, autopilot_cleanup_dead=True, autopilot_dead_after_s=1.0)
    now = time.monotonic()
    chores.health_seen.update(b=now, c=now, d=now)  # e is silent
    asyncio.run(chores.run_once())
    return [p.node_id for p in proposed if not isinstance(p, dict)]


def test_the_autopilot_keeps_a_member_in_maintenance() -> None:
    assert _removed(maintenance=False) == ["e"]  # the rule holds: a dead member goes
    assert _removed(maintenance=True) == []


def test_a_member_in_maintenance_plans_to_weight_zero() -> None:
    ids = ["a", "b", "c"]
    sm = _state(ids)
    _put(sm, f"{MAINTENANCE_PREFIX}b", {"since": 1.0, "reason": None})
    raw = FakeRaw(set(ids), set(), {v: 10 for v in ids})
    chores, proposed = _chores(raw, sm)
    asyncio.run(chores.plan_weights(time.monotonic(), sm.members()))
    tables = [p["weights"] for p in proposed if isinstance(p, dict) and p["op"] == "weights_set"]
    assert tables and tables[-1]["b"] == 0, tables
    assert tables[-1]["a"] > 0 and tables[-1]["c"] > 0, tables
