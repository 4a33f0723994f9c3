"""A snapshot encoded from a copy of the state, chunk by chunk of keys (in a worker thread,
for a compaction that does not stall the loop), is the very bytes StateMachine.snapshot()
gives, and the copy does not move with the state."""

from __future__ import annotations

import random

import pytest

from hafleet_agent.state import (
    SNAPSHOT_CHUNK_KEYS,
    StateMachine,
    encode_command,
    encode_snapshot_parts,
)


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


@pytest.mark.parametrize(
    "count",
    [
        SNAPSHOT_CHUNK_KEYS - 1,
        SNAPSHOT_CHUNK_KEYS,
        SNAPSHOT_CHUNK_KEYS + 1,
        2 * SNAPSHOT_CHUNK_KEYS + 7,
    ],
)
def test_chunks_join_to_the_snapshot_bytes(count: int) -> None:
    """Keys sorted across the chunks' seams (keys whose order differs from their insertion)."""
    rng = random.Random(count)
    sm = StateMachine()
    names = [f"{rng.choice(['x', 'a/', 'é', 'B'])}{i}" for i in range(count)]
    rng.shuffle(names)
    for i, key in enumerate(names):
        apply(sm, "kv_put", key=key, value={"i": i, "s": "v" * (i % 5)})
    parts = sm.snapshot_parts()
    assert len(parts.kv) == count
    assert encode_snapshot_parts(parts) == sm.snapshot()
