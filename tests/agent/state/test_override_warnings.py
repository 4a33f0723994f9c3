"""A malformed ``weights/override/<id>`` already in the store (written by an older version,
or brought back by a restore) is ignored by the leader's weight planning with one warning per
write of the key (its ``modify_index``), the value cut short, not one line with the whole
value every planning round (review finding: a 400 KB string grew the leader's log 3.1 MiB
in 10 s)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from test_leader_chores import FakeRaw, _chores, _state

from hafleet_agent.keys import OVERRIDE_PREFIX, OVERRIDE_RULE, valid_override
from hafleet_agent.state import StateMachine


def _put(sm: StateMachine, key: str, value: object) -> None:
    cmd = {"op": "kv_put", "rid": f"p-{sm.index}", "key": key, "value": value, "cas": None}
    assert sm.apply(sm.index + 1, json.dumps(cmd).encode()).ok


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and OVERRIDE_PREFIX in r.getMessage()
    ]


@pytest.mark.parametrize("value", [0, 1, 256])
def test_an_integer_in_range_is_an_override(value: int) -> None:
    assert valid_override(value)


@pytest.mark.parametrize("value", [-1, 257, True, False, 7.0, "7", None, [7], {"w": 7}])
def test_anything_else_is_not(value: object) -> None:
    assert not valid_override(value)


def test_a_bad_stored_override_warns_once_per_write_and_cut_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hafleet.agent")
    ids = ["a", "b"]
    sm = _state(ids)
    key = f"{OVERRIDE_PREFIX}b"
    _put(sm, key, "x" * 400_000)
    raw = FakeRaw(set(ids), set(), {v: 10 for v in ids})
    chores, _ = _chores(raw, sm)
    for _ in range(20):  # twenty planning rounds (one a second on a leader)
        assert chores.override("b") is None
        asyncio.run(chores.plan_weights(time.monotonic(), sm.members()))
    lines = _warnings(caplog)
    assert len(lines) == 1, lines[:3]
    assert len(lines[0]) < 400 and OVERRIDE_RULE in lines[0] and "'xxx" in lines[0], lines[0]

    _put(sm, key, 1000)  # written again (a new modify_index): one more line
    for _ in range(5):
        chores.override("b")
    assert len(_warnings(caplog)) == 2 and "1000" in _warnings(caplog)[-1]

    _put(sm, key, 50)  # a good value: used, no line
    assert chores.override("b") == 50
    _put(sm, key, -1)  # bad again after a good one: warned again
    chores.override("b")
    chores.override("b")
    assert len(_warnings(caplog)) == 3
