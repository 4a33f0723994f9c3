"""A snapshot encoded from a copy of the state, key by key (in a worker thread, for a
compaction that does not stall the loop), is the very bytes StateMachine.snapshot() gives,
and the copy does not move with the state."""

from __future__ import annotations

import random

from hafleet_agent.state import StateMachine, encode_command, encode_snapshot_parts


def apply(sm: StateMachine, op: str, **fields: object) -> None:
    assert sm.apply(sm.index + 1, encode_command(op, **fields)).ok


def test_parts_encode_to_the_snapshot_bytes() -> None:
    rng = random.Random(3)
    sm = StateMachine()
    assert encode_snapshot_parts(sm.snapshot_parts()) == sm.snapshot()
    apply(sm, "member_put", id="n1", raft_addr="10.0.0.1:7400", api_addr="10.0.0.1:7480")
    apply(sm, "weights_set", weights={"n1": 7}, reason="é ✓")
    values = [0, -1.5, 'ü\u2028"\\', None, True, [1, {"b": 2, "a": [3]}], {"z": {}, "é": []}]
    for i in range(200):
        key = rng.choice(["a", "b/ü", "c d", "Z", "a/1", "😀", "k"]) + str(rng.randrange(20))
        apply(sm, "kv_put", key=key, value=rng.choice(values))
        if i % 7 == 0:
            apply(sm, "kv_del", key=key)
        assert encode_snapshot_parts(sm.snapshot_parts()) == sm.snapshot()


def test_the_copy_does_not_move_with_the_state() -> None:
    sm = StateMachine()
    apply(sm, "member_put", id="n1", raft_addr="10.0.0.1:7400", api_addr="10.0.0.1:7480")
    apply(sm, "kv_put", key="a", value={"x": [1]})
    before = sm.snapshot()
    parts = sm.snapshot_parts()
    apply(sm, "kv_put", key="a", value={"x": [2]})
    apply(sm, "kv_put", key="b", value=1)
    apply(sm, "member_health", id="n1", healthy=False)
    apply(sm, "weights_set", weights={"n1": 3})
    assert encode_snapshot_parts(parts) == before
    assert StateMachine.from_snapshot(before).kv_get("a")["value"] == {"x": [1]}
