"""The storage quota of the replicated KV store (quota_bytes): its size accounting and the
check the leader makes before it proposes a put."""

from __future__ import annotations

import random

import pytest

from hafleet_agent.state import (
    KV_RECORD_OVERHEAD,
    StateError,
    StateMachine,
    encode_command,
    encode_json,
    kv_record_bytes,
)


def apply(sm: StateMachine, op: str, **fields: object) -> None:
    res = sm.apply(sm.index + 1, encode_command(op, **fields))
    assert res.ok, res.error


def recount(sm: StateMachine) -> int:
    return sum(kv_record_bytes(k, sm.kv_get(k)["value"]) for k in sm.kv_keys())


def test_record_bytes_count_key_value_and_overhead() -> None:
    assert kv_record_bytes("k", "abc") == 1 + len(b'"abc"') + KV_RECORD_OVERHEAD
    assert kv_record_bytes("ké", {"b": [1, 2]}) == 3 + len(encode_json({"b": [1, 2]})) + 64


def test_record_bytes_is_the_encoded_size_whatever_the_value() -> None:
    values = [
        None,
        True,
        0,
        -12.5e300,
        "",
        "plain",
        'é ✓ 😀 \u2028 "quoted" \\ \n \x00',
        [1, "ü", {"b": 1, "a": [None, {}]}],
        {"é": {"z": [], "a": "😀"}, "k": 1.0},
    ]
    for v in values:
        assert kv_record_bytes("kü", v) == 3 + len(encode_json(v)) + KV_RECORD_OVERHEAD, v


def test_size_follows_puts_overwrites_deletes_and_snapshots() -> None:
    rng = random.Random(7)
    sm = StateMachine()
    assert sm.kv_bytes() == 0
    keys = [f"k/{i}" for i in range(20)]
    for _ in range(300):
        key = rng.choice(keys)
        if rng.random() < 0.3:
            apply(sm, "kv_del", key=key)
        else:
            apply(sm, "kv_put", key=key, value="x" * rng.randrange(0, 3000))
        assert sm.kv_bytes() == recount(sm)
    # a failed CAS changes nothing, the size neither
    before = sm.kv_bytes()
    res = sm.apply(sm.index + 1, encode_command("kv_put", key="k/0", value="y" * 9000, cas=10**6))
    assert not res.ok and sm.kv_bytes() == before
    # a restored state counts the same
    restored = StateMachine.from_snapshot(sm.snapshot(), sm.index)
    assert restored.kv_bytes() == sm.kv_bytes() > 0


def test_the_check_refuses_a_put_that_would_pass_the_quota_with_413() -> None:
    sm = StateMachine()
    quota = 10_000
    for i in range(4):
        sm.check_quota(quota, f"a/{i}", "x" * 2000)
        apply(sm, "kv_put", key=f"a/{i}", value="x" * 2000)
    used = sm.kv_bytes()
    assert used == 4 * kv_record_bytes("a/0", "x" * 2000) < quota
    with pytest.raises(StateError) as err:
        sm.check_quota(quota, "a/4", "x" * 2000)
    e = err.value
    assert e.status == 413 and e.code == "quota_exceeded"
    assert e.extra == {"quota_bytes": quota, "state_bytes": used}
    assert "quota" in e.message
    # what fits still goes in
    room = quota - used - kv_record_bytes("a/4", "")
    sm.check_quota(quota, "a/4", "x" * room)
    with pytest.raises(StateError):
        sm.check_quota(quota, "a/4", "x" * (room + 1))
    # 0 turns the check off
    sm.check_quota(0, "big", "x" * 100_000)


def test_a_store_over_its_quota_can_shrink() -> None:
    """The quota may be lowered under a running store (or replicas applied more than one
    leader checked): writes that do not grow it still pass, deletes always do."""
    sm = StateMachine()
    for i in range(5):
        apply(sm, "kv_put", key=f"a/{i}", value="x" * 2000)
    quota = sm.kv_bytes() // 2
    with pytest.raises(StateError):
        sm.check_quota(quota, "new", 1)
    with pytest.raises(StateError):
        sm.check_quota(quota, "a/0", "x" * 2001)
    sm.check_quota(quota, "a/0", "x" * 2000)  # same size
    sm.check_quota(quota, "a/0", "x")  # smaller
    apply(sm, "kv_del", key="a/0")
    apply(sm, "kv_put", key="a/1", value="x")
    assert sm.kv_bytes() == recount(sm)


def test_apply_itself_never_enforces_the_quota() -> None:
    """The quota is the leader's check before proposing, not part of the replicated rules:
    a committed put is applied on every replica whatever its size (a replica with another
    quota_bytes must not diverge)."""
    sm = StateMachine()
    apply(sm, "kv_put", key="a", value="x" * 50_000)
    with pytest.raises(StateError):
        sm.check_quota(1000, "b", "y")
    apply(sm, "kv_put", key="b", value="y")
    assert sm.kv_get("b")["value"] == "y"
