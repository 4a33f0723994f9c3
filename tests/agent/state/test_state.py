"""The replicated state machine: commands, CAS, members, weights, snapshots."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hafleet_agent.raft import ready
from hafleet_agent.raft.core import Config
from hafleet_agent.raft.rawnode import RawNode
from hafleet_agent.raft.ready import ReadyEffects
from hafleet_agent.raft.types import ConfChange, ConfChangeType, Entry, EntryType, StateType
from hafleet_agent.state import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    ApplyOrderError,
    ApplyResult,
    StateError,
    StateMachine,
    decode_command,
    encode_command,
    encode_json,
    member_context,
    validate_addr,
    validate_cas,
    validate_key,
    validate_member_id,
    validate_value,
)


class Log:
    """Applies commands to a state machine at consecutive indexes."""

    def __init__(self) -> None:
        self.sm = StateMachine()

    def cmd(self, op: str, **fields: object) -> ApplyResult:
        return self.sm.apply(self.sm.index + 1, encode_command(op, **fields))

    def raw(self, data: bytes) -> ApplyResult:
        return self.sm.apply(self.sm.index + 1, data)

    def conf(self, kind: ConfChangeType, node: str, context: bytes = b"") -> ApplyResult:
        entry = Entry(
            1, self.sm.index + 1, EntryType.CONF_CHANGE, ConfChange(kind, node, context).encode()
        )
        return self.sm.apply_entry(entry)


def put_member(log: Log, mid: str, **extra: object) -> ApplyResult:
    fields = {"raft_addr": f"10.77.0.{len(mid)}:7400", "api_addr": "10.77.0.9:7480", **extra}
    return log.cmd("member_put", id=mid, **fields)


# ---- commands and validation ---------------------------------------------------------------


def test_encode_command_is_canonical_and_mints_fresh_rids() -> None:
    data = encode_command("kv_put", rid="r1", key="a", value={"y": 1, "x": [True, None]})
    assert (
        data == b'{"cas":null,"key":"a","op":"kv_put","rid":"r1","value":{"x":[true,null],"y":1}}'
    )
    first, second = (json.loads(encode_command("kv_del", key="a"))["rid"] for _ in range(2))
    assert first != second
    assert len(first) == 32
    assert decode_command(data)["value"] == {"x": [True, None], "y": 1}


@pytest.mark.parametrize(
    ("op", "fields", "status", "words"),
    [
        ("nope", {}, 400, "unknown op"),
        ("kv_put", {"key": ""}, 400, "non-empty"),
        ("kv_put", {"key": "a"}, 400, "needs a value"),
        ("kv_put", {"key": "a", "value": 1, "cas": -1}, 400, "cas"),
        ("kv_put", {"key": "a", "value": 1, "cas": True}, 400, "cas"),
        ("kv_put", {"key": "a", "value": float("nan")}, 400, "not JSON"),
        ("kv_put", {"key": "a", "value": "x" * MAX_VALUE_BYTES}, 413, "limit"),
        ("kv_del", {"key": "a\nb"}, 400, "control"),
        ("member_put", {"id": "n1", "raft_addr": "10.0.0.1", "api_addr": "h:1"}, 400, "raft_addr"),
        ("member_put", {"id": "-n1", "raft_addr": "h:1", "api_addr": "h:1"}, 400, "member id"),
        ("member_health", {"id": "n1", "healthy": "yes"}, 400, "healthy"),
        ("member_drain", {"id": "n1"}, 400, "draining"),
        ("weights_set", {"weights": {"n1": 257}}, 400, "0..256"),
        ("weights_set", {"weights": {"n1": 1.5}}, 400, "0..256"),
        ("weights_set", {"weights": [1]}, 400, "object"),
        ("weights_set", {"weights": {}, "reason": 3}, 400, "reason"),
    ],
)
def test_encode_command_refuses_bad_requests(
    op: str, fields: dict[str, object], status: int, words: str
) -> None:
    with pytest.raises(StateError) as err:
        encode_command(op, **fields)
    assert err.value.status == status
    assert words in err.value.message
    assert err.value.to_dict()["status"] == status


def test_validate_key_limits() -> None:
    assert validate_key("a/b c:d") == "a/b c:d"
    assert validate_key("é" * (MAX_KEY_BYTES // 2)) == "é" * 256  # exactly 512 bytes
    for bad in ["", "é" * 257, "a\x00", "a\x7f", "a\x85", "\ud800", 3, None]:
        with pytest.raises(StateError) as err:
            validate_key(bad)
        assert err.value.status == 400, bad


def test_validate_value_limits() -> None:
    # '"' + n x's + '"' is n + 2 bytes encoded.
    at_limit = "x" * (MAX_VALUE_BYTES - 2)
    assert validate_value(at_limit) is at_limit
    with pytest.raises(StateError) as err:
        validate_value(at_limit + "x")
    assert (err.value.status, err.value.code) == (413, "too_large")
    for bad in [float("inf"), {1: object()}, {"a": {1, 2}}]:
        with pytest.raises(StateError) as err:
            validate_value(bad)
        assert err.value.status == 400


def test_other_validators() -> None:
    assert validate_cas(None) is None
    assert validate_cas(0) == 0
    assert validate_member_id("hafleet-node3") == "hafleet-node3"
    assert validate_addr("[fd00::1]:7400", "a") == "[fd00::1]:7400"
    for bad_addr in ["h:0", "h:65536", ":80", "h:", "h:8x", "[fd00::1:80", 7400]:
        with pytest.raises(StateError):
            validate_addr(bad_addr, "a")
    assert validate_member_id("x" * 63) == "x" * 63
    for bad_id in ["", "a b", "x" * 64, "_a", "a:b", "a\n", "é", None, 7]:
        with pytest.raises(StateError):
            validate_member_id(bad_id)


# ---- applying ------------------------------------------------------------------------------


def test_noop_and_garbage_advance_the_index() -> None:
    sm = StateMachine()
    assert sm.apply_entry(Entry(1, 1)) == ApplyResult(1)
    bad = sm.apply(2, b"\xff")
    assert (bad.index, bad.rid, bad.ok, bad.status) == (2, None, False, 400)
    # A well-formed object with a bad field: its rid and op still come back.
    data = json.dumps({"op": "kv_put", "rid": "r9", "key": "", "value": 1}).encode()
    res = sm.apply(3, data)
    assert (res.rid, res.op, res.status) == ("r9", "kv_put", 400)
    assert sm.apply(4, b"[1]").status == 400
    assert sm.apply(5, b'{"op": "drop_tables", "rid": "r"}').op is None
    assert sm.index == 5
    assert sm.kv_keys() == []


def test_entries_must_come_in_order() -> None:
    sm = StateMachine()
    sm.skip(1)
    for index in (1, 3, 0):
        with pytest.raises(ApplyOrderError):
            sm.apply(index, encode_command("kv_del", key="a"))
    assert sm.index == 1


def test_kv_put_get_del_and_indexes() -> None:
    log = Log()
    res = log.cmd("kv_put", rid="r1", key="k", value={"a": 1})
    assert (res.rid, res.op, res.status) == ("r1", "kv_put", 200)
    assert res.result == {"key": "k", "value": {"a": 1}, "modify_index": 1}
    log.cmd("kv_put", key="other", value=None)
    log.cmd("kv_put", key="k", value=[2])
    assert log.sm.kv_get("k") == {"key": "k", "value": [2], "modify_index": 3}
    assert log.sm.kv_get("k", detail=True)["create_index"] == 1
    assert log.sm.kv_get("other") == {"key": "other", "value": None, "modify_index": 2}
    assert log.sm.kv_get("absent") is None
    res = log.cmd("kv_del", key="k")
    assert res.result == {"key": "k", "value": None, "modify_index": 0, "deleted": True}
    assert log.sm.kv_get("k") is None
    assert log.cmd("kv_del", key="k").result["deleted"] is False
    log.cmd("kv_put", key="k", value=5)
    assert log.sm.kv_get("k", detail=True) == {
        "key": "k",
        "value": 5,
        "modify_index": 6,
        "create_index": 6,
    }
    assert log.sm.kv_keys() == ["k", "other"]
    assert log.sm.kv_keys("o") == ["other"]


def test_cas_semantics() -> None:
    log = Log()
    assert log.cmd("kv_put", key="k", value=1, cas=0).ok  # absent: cas=0 writes
    conflict = log.cmd("kv_put", key="k", value=2, cas=0)
    assert conflict.error == {
        "error": "cas",
        "status": 409,
        "message": "key 'k' has modify_index 1, not 0",
        "current_index": 1,
    }
    assert log.cmd("kv_put", key="k", value=3, cas=2).error["current_index"] == 1
    assert log.sm.kv_get("k")["value"] == 1  # a failed CAS changes nothing
    assert log.cmd("kv_put", key="k", value=4, cas=1).result["modify_index"] == 4
    assert log.cmd("kv_del", key="k", cas=1).status == 409
    assert log.cmd("kv_del", key="k", cas=0).status == 409  # present: "only if absent" fails
    assert log.cmd("kv_del", key="k", cas=4).result["deleted"] is True
    gone = log.cmd("kv_put", key="k", value=5, cas=4)
    assert (gone.status, gone.error["current_index"]) == (409, 0)
    assert log.cmd("kv_del", key="k", cas=0).result["deleted"] is False
    assert log.sm.index == 9


def test_results_and_queries_are_copies() -> None:
    log = Log()
    res = log.cmd("kv_put", key="k", value={"list": [1]})
    res.result["value"]["list"].append(2)
    log.sm.kv_get("k")["value"]["list"].append(3)
    put_member(log, "n1", meta={"zone": "a"})
    log.sm.member("n1")["meta"]["zone"] = "b"
    log.sm.members()[0]["healthy"] = False
    log.cmd("weights_set", weights={"n1": 5})
    log.sm.weights()["weights"]["n1"] = 6
    assert log.sm.kv_get("k")["value"] == {"list": [1]}
    assert log.sm.member("n1")["meta"] == {"zone": "a"}
    assert log.sm.member("n1")["healthy"] is True
    assert log.sm.weights()["weights"] == {"n1": 5}


def test_members() -> None:
    log = Log()
    res = put_member(log, "n1", service_addr="10.77.0.2:80", meta={"rack": 1})
    assert res.result == {
        "id": "n1",
        "raft_addr": "10.77.0.2:7400",
        "api_addr": "10.77.0.9:7480",
        "service_addr": "10.77.0.2:80",
        "meta": {"rack": 1},
        "role": None,
        "healthy": True,
        "draining": False,
        "create_index": 1,
        "modify_index": 1,
    }
    put_member(log, "n0")
    put_member(log, "n1", raft_addr="10.77.0.5:7400")
    n1 = log.sm.member("n1")
    assert (n1["raft_addr"], n1["service_addr"], n1["meta"]) == ("10.77.0.5:7400", None, {})
    assert (n1["create_index"], n1["modify_index"]) == (1, 3)
    assert [m["id"] for m in log.sm.members()] == ["n0", "n1"]
    assert log.cmd("member_health", id="n1", healthy=False).result["healthy"] is False
    assert log.cmd("member_drain", id="n1", draining=True).result["draining"] is True
    assert log.sm.member("n1")["modify_index"] == 5
    assert log.cmd("member_drain", id="n1", draining=True).result["modify_index"] == 5
    missing = log.cmd("member_health", id="n9", healthy=True)
    assert (missing.status, missing.error["error"]) == (404, "not_found")
    assert log.cmd("member_del", id="n0").result == {"id": "n0", "deleted": True}
    assert log.sm.member("n0") is None
    assert log.cmd("member_del", id="n0").status == 404


def test_conf_changes_give_roles_and_addresses() -> None:
    log = Log()
    ctx = member_context("10.77.0.2:7400", "10.77.0.2:7480", meta={"zone": "a"})
    res = log.conf(ConfChangeType.ADD_VOTER, "n1", ctx)
    assert res.rid is None and res.ok
    n1 = log.sm.member("n1")
    assert (n1["role"], n1["raft_addr"], n1["meta"]) == ("voter", "10.77.0.2:7400", {"zone": "a"})
    log.conf(ConfChangeType.ADD_LEARNER, "n2")  # no context: a record without addresses
    assert log.sm.member("n2")["role"] == "learner"
    assert log.sm.member("n2")["raft_addr"] is None
    log.conf(ConfChangeType.ADD_LEARNER, "n1")  # a voter stays a voter
    assert log.sm.member("n1")["role"] == "voter"
    log.conf(ConfChangeType.ADD_VOTER, "n2", b"not json")  # promoted; bad context ignored
    assert log.sm.member("n2")["role"] == "voter"
    put_member(log, "n3")
    in_group = log.cmd("member_del", id="n1")
    assert (in_group.status, in_group.error["error"]) == (409, "in_group")
    log.cmd("weights_set", weights={"n1": 10, "n2": 20, "n3": 30}, reason="r")
    assert log.sm.weights() == {"version": 1, "weights": {"n1": 10, "n2": 20, "n3": 30}}
    assert log.conf(ConfChangeType.REMOVE, "n1").result == {"id": "n1", "removed": True}
    assert log.sm.member("n1") is None
    assert log.sm.weights(detail=True) == {
        "version": 2,
        "weights": {"n2": 20, "n3": 30},
        "reason": "member n1 removed",
        "modify_index": 8,
    }
    log.cmd("member_del", id="n3")
    assert log.sm.weights() == {"version": 3, "weights": {"n2": 20}}
    # Unknown: nothing to forget, the index advances.
    assert log.conf(ConfChangeType.REMOVE, "n9").result == {"id": "n9", "removed": False}
    assert log.sm.weights()["version"] == 3
    assert log.sm.index == 10


def test_weights_set_replaces_the_table_and_skips_strangers() -> None:
    log = Log()
    put_member(log, "a")
    put_member(log, "b")
    res = log.cmd("weights_set", weights={"a": 256, "b": 0, "ghost": 3}, reason="initial")
    assert res.result == {"version": 1, "weights": {"a": 256, "b": 0}, "ignored": ["ghost"]}
    log.cmd("weights_set", weights={"a": 7}, reason="again")
    assert log.sm.weights(detail=True) == {
        "version": 2,
        "weights": {"a": 7},
        "reason": "again",
        "modify_index": 4,
    }
    # Validation at apply time too: a proposer that skipped encode_command gets a 400.
    bad = json.dumps({"op": "weights_set", "rid": "r", "weights": {"a": 300}}).encode()
    assert log.raw(bad).status == 400
    assert log.sm.weights()["version"] == 2


# ---- snapshots -----------------------------------------------------------------------------


def test_snapshot_is_deterministic_and_restores() -> None:
    a, b = Log(), Log()
    a.cmd("kv_put", key="x", value=1)
    a.cmd("kv_put", key="y", value={"b": 1, "a": 2})
    b.cmd("kv_put", key="y", value={"a": 2, "b": 1})
    b.cmd("kv_put", key="x", value=1)
    # Same content but other create/modify indexes: different bytes.
    assert a.sm.snapshot() != b.sm.snapshot()
    c = Log()
    c.cmd("kv_put", key="x", value=1)
    c.cmd("kv_put", key="y", value={"a": 2, "b": 1})
    assert a.sm.snapshot() == c.sm.snapshot()
    put_member(a, "n1")
    a.conf(ConfChangeType.ADD_VOTER, "n1")
    a.cmd("weights_set", weights={"n1": 9}, reason="why")
    copy = StateMachine.from_snapshot(a.sm.snapshot(), a.sm.index)
    assert copy.snapshot() == a.sm.snapshot()
    assert copy.index == 5
    assert copy.member("n1") == a.sm.member("n1")
    assert copy.weights(detail=True) == a.sm.weights(detail=True)
    assert copy.kv_get("y", detail=True) == a.sm.kv_get("y", detail=True)
    # The restored state goes on exactly like the original.
    for sm in (copy, a.sm):
        sm.apply(6, encode_command("kv_put", rid="r", key="x", value=2, cas=1))
    assert copy.snapshot() == a.sm.snapshot()


def test_restore_checks_its_input() -> None:
    sm = StateMachine()
    sm.apply(1, encode_command("kv_put", key="x", value=1))
    data = sm.snapshot()
    with pytest.raises(ValueError, match="labelled 2"):
        StateMachine.from_snapshot(data, 2)
    for garbage in [b"\xff", b"[]", b'{"v": 99}', b'{"v": 1, "index": 1}']:
        with pytest.raises(ValueError):
            StateMachine.from_snapshot(garbage)
    with pytest.raises(ValueError, match="needs its index"):
        sm.restore(b"")
    sm.restore(b"", 5)
    assert (sm.index, sm.kv_keys(), sm.weights()["version"]) == (5, [], 0)
    assert sm.snapshot() == StateMachine.from_snapshot(sm.snapshot()).snapshot()


# ---- property: a snapshot at k plus entries k+1..N equals entries 1..N ---------------------

MEMBER_IDS = ["n1", "n2", "n3"]
KEYS = ["a", "b", "c/d"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2), inner, max_size=2)
    ),
    max_leaves=4,
)
cas_values = st.none() | st.integers(0, 12)


def _cmd(op: str, **fields: object) -> Entry:
    return Entry(1, 0, EntryType.NORMAL, encode_command(op, **fields))


def _conf(kind: ConfChangeType, node: str, with_ctx: bool) -> Entry:
    ctx = member_context(f"{node}:7400", f"{node}:7480") if with_ctx else b""
    return Entry(1, 0, EntryType.CONF_CHANGE, ConfChange(kind, node, ctx).encode())


entry_strategy = st.one_of(
    st.builds(
        lambda k, v, c: _cmd("kv_put", key=k, value=v, cas=c),
        st.sampled_from(KEYS),
        json_values,
        cas_values,
    ),
    st.builds(lambda k, c: _cmd("kv_del", key=k, cas=c), st.sampled_from(KEYS), cas_values),
    st.builds(
        lambda m, s: _cmd(
            "member_put", id=m, raft_addr=f"{m}:1", api_addr=f"{m}:2", service_addr=s
        ),
        st.sampled_from(MEMBER_IDS),
        st.none() | st.just("10.0.0.1:80"),
    ),
    st.builds(lambda m: _cmd("member_del", id=m), st.sampled_from(MEMBER_IDS)),
    st.builds(
        lambda m, h: _cmd("member_health", id=m, healthy=h),
        st.sampled_from(MEMBER_IDS),
        st.booleans(),
    ),
    st.builds(
        lambda m, d: _cmd("member_drain", id=m, draining=d),
        st.sampled_from(MEMBER_IDS),
        st.booleans(),
    ),
    st.builds(
        lambda w: _cmd("weights_set", weights=w, reason="r"),
        st.dictionaries(st.sampled_from(MEMBER_IDS), st.integers(0, 256), max_size=3),
    ),
    st.builds(
        _conf, st.sampled_from(list(ConfChangeType)), st.sampled_from(MEMBER_IDS), st.booleans()
    ),
    st.just(Entry(1, 0)),  # a leader's no-op
    st.sampled_from([b"garbage", b'{"op":"kv_put"}', b"{}"]).map(
        lambda d: Entry(1, 0, EntryType.NORMAL, d)
    ),
)


def _numbered(entries: list[Entry]) -> list[Entry]:
    return [Entry(e.term, i + 1, e.type, e.data) for i, e in enumerate(entries)]


@settings(max_examples=150, deadline=None)
@given(st.lists(entry_strategy, max_size=40), st.data())
def test_snapshot_then_rest_equals_all_entries(
    raw_entries: list[Entry], data: st.DataObject
) -> None:
    entries = _numbered(raw_entries)
    k = data.draw(st.integers(0, len(entries)), label="k")
    full = StateMachine()
    full_results = [full.apply_entry(e) for e in entries]
    prefix = StateMachine()
    for e in entries[:k]:
        prefix.apply_entry(e)
    resumed = StateMachine.from_snapshot(prefix.snapshot(), k)
    rest_results = [resumed.apply_entry(e) for e in entries[k:]]
    assert resumed.snapshot() == full.snapshot()
    assert rest_results == full_results[k:]
    assert resumed.index == full.index == len(entries)
    # Queries agree too, not only the bytes.
    assert resumed.members() == full.members()
    assert resumed.weights(detail=True) == full.weights(detail=True)
    assert [resumed.kv_get(k_) for k_ in KEYS] == [full.kv_get(k_) for k_ in KEYS]
    # And the snapshot bytes are canonical JSON.
    assert full.snapshot() == encode_json(json.loads(full.snapshot()))


# ---- wired to the Raft core: the driver loop of rawnode.py ---------------------------------


def test_driven_by_a_single_node_raft_group() -> None:
    node = RawNode(Config("n1", random.Random(7)))
    node.bootstrap([("n1", member_context("10.77.0.2:7400", "10.77.0.2:7480"))])
    sm = StateMachine()
    results: list[ApplyResult] = []

    def drain() -> None:
        fx = ReadyEffects(
            persist=lambda rd: None,  # in memory only: the core holds its log
            send=lambda m: None,  # a single voter has no one to send to
            restore=lambda snap: sm.restore(snap.data, snap.meta.index),
            apply=lambda e: results.append(sm.apply_entry(e)),
        )
        ready.drain(node, fx)

    drain()  # the founding configuration is applied before the node may campaign
    node.campaign()
    drain()
    assert node.raft.state is StateType.LEADER
    node.propose(encode_command("kv_put", rid="w1", key="k", value="v", cas=0))
    node.propose(encode_command("kv_put", rid="w2", key="k", value="v2", cas=0))
    drain()
    by_rid = {r.rid: r for r in results if r.rid}
    assert by_rid["w1"].result == {"key": "k", "value": "v", "modify_index": 3}
    assert by_rid["w2"].error["current_index"] == 3
    assert sm.member("n1")["role"] == "voter"
    assert sm.member("n1")["api_addr"] == "10.77.0.2:7480"
    assert sm.index == node.raft.log.applied == 4
