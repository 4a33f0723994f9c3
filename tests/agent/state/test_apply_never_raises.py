"""Applying a committed entry never raises (issue 13).

Whatever a committed entry holds - bytes that are not JSON, JSON that is not a command, a
command with fields of the wrong type, a configuration change that cannot be decoded or names
an id outside the grammar - :meth:`StateMachine.apply_entry` applies it as a no-op with an
error result, the index advances, and the state stays consistent: every member id valid,
the snapshot canonical and restorable to the same state.
"""

from __future__ import annotations

import json
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafleet_agent.ids import valid_member_id
from hafleet_agent.raft.core import Config
from hafleet_agent.raft.rawnode import RawNode
from hafleet_agent.raft.ready import ReadyEffects, drain
from hafleet_agent.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from hafleet_agent.state import (
    MAX_JSON_DEPTH,
    OPS,
    ApplyOrderError,
    StateMachine,
    conf_change_error,
    encode_command,
    encode_json,
    member_context,
)

GOOD_IDS = ["n1", "n2", "web-1"]
BAD_IDS = ["web 1", "x" * 300, "a\nforged line", "", "-lead", "é", "n1\n", "a:b", "x" * 64]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)
# msgpack can hold what JSON cannot: bytes, maps with non-string keys.
msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=20),
        st.binary(max_size=20),
    ),
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.one_of(st.integers(-9, 9), st.text(max_size=4)), kids, max_size=4),
    ),
    max_leaves=20,
)
FIELDS = [
    "id",
    "raft_addr",
    "api_addr",
    "service_addr",
    "meta",
    "healthy",
    "draining",
    "weights",
    "reason",
    "key",
    "value",
    "cas",
    "rid",
]
# Commands that look right (a known op, the right field names) with values of any type.
lookalike_commands = st.builds(
    lambda op, fields: {"op": op, **fields},
    st.sampled_from(sorted(OPS)),
    st.dictionaries(
        st.sampled_from(FIELDS),
        st.one_of(
            json_values, st.sampled_from(GOOD_IDS + BAD_IDS), st.just({"web 1": 5, "n1": "x"})
        ),
        max_size=6,
    ),
)


def _normal(data: bytes) -> Entry:
    return Entry(1, 0, EntryType.NORMAL, data)


def _cc(data: bytes) -> Entry:
    return Entry(1, 0, EntryType.CONF_CHANGE, data)


entry_strategy = st.one_of(
    st.binary(max_size=64).map(_normal),
    json_values.map(lambda v: _normal(json.dumps(v).encode())),
    msgpack_values.map(lambda v: _normal(msgpack.packb(v, use_bin_type=True))),
    lookalike_commands.map(lambda c: _normal(json.dumps(c).encode())),
    st.binary(max_size=64).map(_cc),
    st.builds(
        lambda t, nid, ctx: _cc(ConfChange(t, nid, ctx).encode()),
        st.sampled_from(list(ConfChangeType)),
        st.one_of(st.sampled_from(GOOD_IDS + BAD_IDS), st.text(max_size=70)),
        st.one_of(
            st.binary(max_size=16),
            st.just(member_context("127.0.0.1:7400", "127.0.0.1:7480")),
            json_values.map(lambda v: json.dumps(v).encode()),
        ),
    ),
    # valid commands in between, so that the bad ones meet a populated state
    st.builds(
        lambda mid: _normal(
            encode_command("member_put", id=mid, raft_addr="10.0.0.1:1", api_addr="10.0.0.1:2")
        ),
        st.sampled_from(GOOD_IDS),
    ),
    st.builds(
        lambda k, v: _normal(encode_command("kv_put", key=k, value=v)),
        st.sampled_from(["a", "b/c"]),
        json_values,
    ),
    st.builds(
        lambda w: _normal(encode_command("weights_set", weights=w, reason="r")),
        st.dictionaries(st.sampled_from(GOOD_IDS), st.integers(0, 256), max_size=3),
    ),
    st.just(Entry(1, 0)),
)


def _check_consistent(sm: StateMachine) -> None:
    snap = sm.snapshot()
    assert snap == encode_json(json.loads(snap))  # canonical JSON
    again = StateMachine.from_snapshot(snap, sm.index)
    assert again.snapshot() == snap
    assert again.members() == sm.members()
    assert all(valid_member_id(m["id"]) for m in sm.members())
    assert set(sm.weights()["weights"]) <= {m["id"] for m in sm.members()}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(entry_strategy, max_size=30))
def test_any_committed_entries_apply_without_raising(entries: list[Entry]) -> None:
    sm = StateMachine()
    for i, e in enumerate(entries, start=1):
        res = sm.apply_entry(Entry(e.term, i, e.type, e.data))
        assert res.index == i and sm.index == i
        if not res.ok:
            assert res.status in (400, 404, 409, 413), res
            assert isinstance(res.error["message"], str)
    _check_consistent(sm)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_a_recorded_noop(data: bytes) -> None:
    for kind in EntryType:
        sm = StateMachine()
        sm.apply_entry(Entry(1, 1, EntryType.NORMAL, encode_command("kv_put", key="k", value=1)))
        before = sm.snapshot()
        res = sm.apply_entry(Entry(1, 2, kind, data))
        assert sm.index == 2
        if not res.ok:  # whatever it was, it changed nothing but the index
            assert json.loads(sm.snapshot()) == {**json.loads(before), "index": 2}


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_conf_change_with_a_bad_id_changes_nothing(bad: str) -> None:
    sm = StateMachine()
    ctx = member_context("10.0.0.1:7400", "10.0.0.1:7480")
    sm.apply_entry(
        Entry(1, 1, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_VOTER, "n1", ctx).encode())
    )
    for i, kind in enumerate([ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER], start=2):
        res = sm.apply_entry(Entry(1, i, EntryType.CONF_CHANGE, ConfChange(kind, bad).encode()))
        assert res.status == 400 and res.error["error"] == "unappliable"
        assert "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$" in res.error["message"]
        assert "\n" not in res.error["message"]
    # A removal only shrinks the group: applied whatever the id (it names nobody here).
    res = sm.apply_entry(
        Entry(1, 4, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.REMOVE, bad).encode())
    )
    assert res.ok and res.result["removed"] is False
    assert [m["id"] for m in sm.members()] == ["n1"] and sm.index == 4


def test_restore_drops_members_an_older_version_kept_under_a_bad_id() -> None:
    sm = StateMachine()
    sm.apply(1, encode_command("member_put", id="n1", raft_addr="h:1", api_addr="h:2"))
    sm.apply(2, encode_command("weights_set", weights={"n1": 10}))
    snap = json.loads(sm.snapshot())
    snap["members"]["web 1"] = {**snap["members"]["n1"], "id": "web 1"}
    snap["weights"]["weights"]["web 1"] = 5
    restored = StateMachine.from_snapshot(encode_json(snap), 2)
    assert [m["id"] for m in restored.members()] == ["n1"]
    assert restored.weights()["weights"] == {"n1": 10}
    assert restored.snapshot() == sm.snapshot()


def test_undecodable_conf_changes_are_recorded_noops() -> None:
    sm = StateMachine()
    for i, data in enumerate(
        [b"", b"\x01", b"\x09\x00\x01a", b"\x01\x00\x05ab", b"\x01\x00\x02\xff\xfe"], start=1
    ):
        res = sm.apply_entry(Entry(1, i, EntryType.CONF_CHANGE, data))
        assert (res.index, res.status, res.error["error"]) == (i, 400, "unappliable")
    assert sm.index == 5 and sm.members() == []


def test_unhashable_op_and_deep_nesting_are_400() -> None:
    sm = StateMachine()
    deep = "[" * 5000 + "]" * 5000
    nested_ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    nested_over = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    cases = [
        b'{"op": [], "rid": "r"}',
        b'{"op": {}, "rid": "r"}',
        deep.encode(),
        f'{{"op": "kv_put", "key": "k", "cas": null, "value": {deep}}}'.encode(),
        f'{{"op": "kv_put", "key": "k", "cas": null, "value": {nested_over}}}'.encode(),
        f'{{"op": "member_put", "id": "n1", "raft_addr": "h:1", "api_addr": "h:2", '
        f'"meta": {{"a": {nested_over}}}}}'.encode(),
    ]
    for i, data in enumerate(cases, start=1):
        res = sm.apply(i, data)
        assert res.status == 400, (i, res)
    ok = sm.apply(len(cases) + 1, f'{{"op": "kv_put", "key": "k", "value": {nested_ok}}}'.encode())
    assert ok.ok, ok
    _check_consistent(sm)


def test_out_of_order_is_still_a_driver_bug() -> None:
    sm = StateMachine()
    with pytest.raises(ApplyOrderError):
        sm.apply_entry(Entry(1, 2, EntryType.CONF_CHANGE, b"\xff"))


# ---- the Raft core refuses the same conf changes (RawNode(check_conf_change=...)) --------------


def _drain(node: RawNode, sm: StateMachine) -> list:
    results = []
    fx = ReadyEffects(
        persist=lambda rd: None,  # in memory only: the core holds its log
        send=lambda m: None,  # a single voter has no one to send to
        restore=lambda snap: sm.restore(snap.data, snap.meta.index),
        apply=lambda e: results.append(sm.apply_entry(e)),
    )
    drain(node, fx)
    return results


@pytest.mark.parametrize(
    "data",
    [
        ConfChange(ConfChangeType.ADD_VOTER, "web 1").encode(),
        ConfChange(ConfChangeType.ADD_LEARNER, "x" * 300).encode(),
        ConfChange(ConfChangeType.ADD_VOTER, "n1\nforged").encode(),
        b"\xff\x00",
        b"\x01\x00\x02\xff\xfe",
    ],
    ids=["space", "long", "newline", "bad-type", "not-utf8"],
)
def test_the_raft_core_ignores_a_committed_bad_conf_change(data: bytes) -> None:
    node = RawNode(Config("n1", random.Random(3)), check_conf_change=conf_change_error)
    node.bootstrap([("n1", member_context("10.0.0.1:7400", "10.0.0.1:7480"))])
    sm = StateMachine()
    _drain(node, sm)
    node.campaign()
    _drain(node, sm)
    # What an older agent (or a bug) could have put in the log: propose it raw.
    node._propose(Entry(0, 0, EntryType.CONF_CHANGE, data))
    results = _drain(node, sm)
    assert [r.status for r in results if r.error] == [400]
    assert sorted(node.raft.voters) == ["n1"] and not node.raft.learners
    assert node.conf_state_at(sm.index).voters == ("n1",)
    # and the group goes on
    node.propose(encode_command("kv_put", rid="after", key="k", value=1))
    assert [r.rid for r in _drain(node, sm) if r.ok] == ["after"]
