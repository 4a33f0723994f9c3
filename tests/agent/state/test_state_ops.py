"""The state machine's operations one rule at a time: errors and their codes, what moves
``modify_index`` and the weight table's version, configuration changes on existing records,
restore's checks, and the KV store's size accounting and quota."""

from __future__ import annotations

import json

import pytest

from hafleet_agent.commands import encode_command, member_context
from hafleet_agent.kv import KV_RECORD_OVERHEAD, KVStore, kv_record_bytes
from hafleet_agent.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from hafleet_agent.state import StateError, StateMachine


class Applier:
    """Feeds commands to a state machine at consecutive indexes."""

    def __init__(self) -> None:
        self.sm = StateMachine()

    @property
    def next(self) -> int:
        return self.sm.index + 1

    def do(self, op: str, **fields: object):
        return self.sm.apply(self.next, encode_command(op, rid=f"r{self.next}", **fields))

    def conf(self, kind: ConfChangeType, mid: str, context: bytes = b""):
        return self.sm.apply_conf(self.next, ConfChange(kind, mid, context))

    def member(self, mid: str, **fields: object):
        addrs = {"raft_addr": "10.0.0.1:7400", "api_addr": "10.0.0.1:7480"}
        return self.do("member_put", id=mid, **{**addrs, **fields})


def test_member_del_refuses_a_member_of_the_group_and_an_unknown_one() -> None:
    a = Applier()
    a.conf(ConfChangeType.ADD_LEARNER, "n1")
    res = a.do("member_del", id="n1")
    assert res.status == 409 and res.error["error"] == "in_group"
    assert res.error["message"] == "member n1 is a learner: remove it from the group instead"
    assert a.sm.has_member("n1")
    res = a.do("member_del", id="ghost")
    assert res.status == 404 and res.error["error"] == "not_found"
    assert res.error["message"] == "no member 'ghost'"


def test_member_del_drops_the_weight_and_bumps_the_table() -> None:
    a = Applier()
    a.member("n1")
    a.member("n2")
    a.do("weights_set", weights={"n1": 5, "n2": 7}, reason="r")
    res = a.do("member_del", id="n1")
    assert res.ok and res.result == {"id": "n1", "deleted": True}
    assert a.sm.weights(detail=True) == {
        "version": 2,
        "weights": {"n2": 7},
        "reason": "member n1 deleted",
        "modify_index": a.sm.index,
    }
    a.member("n3")
    a.do("member_del", id="n3")  # no weight: the table stays as it was
    assert a.sm.weights()["version"] == 2


def test_flags_move_modify_index_only_when_they_change() -> None:
    a = Applier()
    a.member("n1")
    created = a.sm.index
    res = a.do("member_health", id="n1", healthy=True)  # already healthy
    assert res.result["modify_index"] == created
    res = a.do("member_drain", id="n1", draining=True)
    assert res.result["draining"] is True and res.result["modify_index"] == a.sm.index
    drained_at = a.sm.index
    assert a.do("member_drain", id="n1", draining=True).result["modify_index"] == drained_at
    res = a.do("member_health", id="n1", healthy=False)
    assert res.result["healthy"] is False and res.result["modify_index"] == a.sm.index
    assert a.sm.member("n1")["create_index"] == created
    assert a.do("member_health", id="ghost", healthy=True).status == 404


def test_member_put_keeps_create_index_and_replaces_fields() -> None:
    a = Applier()
    a.member("n1", service_addr="10.0.0.1:80", meta={"zone": "a"})
    created = a.sm.index
    res = a.member("n1")
    rec = res.result
    assert rec["create_index"] == created and rec["modify_index"] == a.sm.index
    assert (rec["service_addr"], rec["meta"]) == (None, {})
    assert (rec["role"], rec["healthy"], rec["draining"]) == (None, True, False)


def test_conf_changes_on_an_existing_record() -> None:
    a = Applier()
    a.member("n1", service_addr="10.0.0.1:80")
    created = a.sm.index
    res = a.conf(ConfChangeType.ADD_LEARNER, "n1")
    assert res.result["role"] == "learner" and res.result["create_index"] == created
    assert res.result["service_addr"] == "10.0.0.1:80"  # no context: the record stays
    assert res.result["modify_index"] == a.sm.index
    assert a.conf(ConfChangeType.ADD_VOTER, "n1").result["role"] == "voter"
    assert a.conf(ConfChangeType.ADD_LEARNER, "n1").result["role"] == "voter"  # no demotion
    ctx = member_context("10.0.0.9:7400", "10.0.0.9:7480", "10.0.0.9:80", {"z": 1})
    res = a.conf(ConfChangeType.ADD_VOTER, "n1", ctx)
    assert (res.result["raft_addr"], res.result["meta"]) == ("10.0.0.9:7400", {"z": 1})
    res = a.conf(ConfChangeType.ADD_VOTER, "n1", b"not json")
    assert res.ok and res.result["raft_addr"] == "10.0.0.9:7400"  # a bad context is ignored


def test_remove_drops_the_record_and_its_weight() -> None:
    a = Applier()
    a.conf(ConfChangeType.ADD_VOTER, "n1")
    a.conf(ConfChangeType.ADD_VOTER, "n2")
    a.do("weights_set", weights={"n1": 3, "n2": 4})
    res = a.conf(ConfChangeType.REMOVE, "n1")
    assert res.result == {"id": "n1", "removed": True}
    assert a.sm.weights(detail=True)["weights"] == {"n2": 4}
    assert a.sm.weights(detail=True)["reason"] == "member n1 removed"
    assert a.sm.weights()["version"] == 2
    res = a.conf(ConfChangeType.REMOVE, "n1")
    assert res.result == {"id": "n1", "removed": False}
    assert a.sm.weights()["version"] == 2
    res = a.conf(ConfChangeType.REMOVE, "bad id")  # a REMOVE is applied whatever the id
    assert res.ok and res.result == {"id": "bad id", "removed": False}
    res = a.conf(ConfChangeType.ADD_VOTER, "bad id")
    assert res.status == 400 and res.error["error"] == "unappliable"
    assert not a.sm.has_member("bad id")


def test_weights_set_result_and_detail() -> None:
    a = Applier()
    a.member("n1")
    res = a.do("weights_set", weights={"n1": 9, "ghost": 3}, reason="plan")
    assert res.result == {"version": 1, "weights": {"n1": 9}, "ignored": ["ghost"]}
    assert a.sm.weights(detail=True) == {
        "version": 1,
        "weights": {"n1": 9},
        "reason": "plan",
        "modify_index": a.sm.index,
    }
    assert a.sm.weights() == {"version": 1, "weights": {"n1": 9}}
    a.do("weights_set", weights={})
    assert a.sm.weights(detail=True)["reason"] == ""


def test_apply_entry_by_type_and_the_index() -> None:
    sm = StateMachine()
    assert sm.apply_entry(Entry(1, 1, EntryType.NORMAL, b"")).ok and sm.index == 1
    res = sm.apply_entry(Entry(1, 2, EntryType.CONF_CHANGE, b"\x09"))
    assert res.status == 400 and res.error["error"] == "unappliable" and sm.index == 2
    assert res.error["message"].startswith("undecodable configuration change")
    change = ConfChange(ConfChangeType.ADD_VOTER, "n1").encode()
    assert sm.apply_entry(Entry(1, 3, EntryType.CONF_CHANGE, change)).result["role"] == "voter"
    cmd = encode_command("kv_put", rid="x", key="k", value=1)
    res = sm.apply_entry(Entry(1, 4, EntryType.NORMAL, cmd))
    assert (res.rid, res.op, res.result["modify_index"]) == ("x", "kv_put", 4)
    assert sm.apply(5, b"").ok and sm.index == 5
    res = sm.apply(6, b'{"op":"kv_put","rid":"y","key":""}')
    assert (res.status, res.rid, res.op) == (400, "y", "kv_put")
    assert sm.skip(7).ok and sm.index == 7


def test_member_field_copies_only_what_could_be_changed() -> None:
    a = Applier()
    a.member("n1", meta={"zone": ["a"]})
    meta = a.sm.member_field("n1", "meta")
    meta["zone"].append("b")
    assert a.sm.member_field("n1", "meta") == {"zone": ["a"]}
    assert a.sm.member_field("n1", "raft_addr") == "10.0.0.1:7400"
    assert a.sm.member_field("n1", "create_index") == 1
    assert a.sm.member_field("n1", "healthy") is True
    assert a.sm.member_field("n1", "nope") is None and a.sm.member_field("x", "meta") is None
    assert a.sm.member("x") is None


def test_restore_refuses_what_is_not_a_snapshot() -> None:
    a = Applier()
    a.member("n1")
    good = json.loads(a.sm.snapshot())
    for broken, message in (
        ({**good, "v": 99}, "unknown snapshot format 99"),
        ({**good, "members": []}, "members and kv must be objects"),
        ({**good, "kv": []}, "members and kv must be objects"),
        ({k: v for k, v in good.items() if k != "weights"}, "not a state snapshot"),
        ({**good, "index": "x"}, "not a state snapshot"),
    ):
        with pytest.raises(ValueError, match=message):
            StateMachine.from_snapshot(json.dumps(broken).encode())
    with pytest.raises(ValueError, match="not a state snapshot"):
        StateMachine.from_snapshot(b"\xff")
    with pytest.raises(ValueError, match="labelled 7"):
        StateMachine.from_snapshot(a.sm.snapshot(), 7)
    with pytest.raises(ValueError, match="an empty snapshot needs its index"):
        StateMachine.from_snapshot(b"")
    empty = StateMachine.from_snapshot(b"", 12)
    assert empty.index == 12 and empty.members() == [] and empty.weights()["version"] == 0
    same = StateMachine.from_snapshot(a.sm.snapshot(), a.sm.index)
    assert same.snapshot() == a.sm.snapshot()


def test_kv_sizes_follow_puts_and_deletes() -> None:
    a = Applier()
    assert a.sm.kv_bytes() == 0
    a.do("kv_put", key="k", value="abc")
    one = kv_record_bytes("k", "abc")
    assert one == 1 + len(b'"abc"') + KV_RECORD_OVERHEAD and a.sm.kv_bytes() == one
    a.do("kv_put", key="k", value="abcdef")  # replaced, not added
    assert a.sm.kv_bytes() == kv_record_bytes("k", "abcdef")
    a.do("kv_put", key="é", value="é")
    both = kv_record_bytes("k", "abcdef") + kv_record_bytes("é", "é")
    assert kv_record_bytes("é", "é") == 2 + 4 + KV_RECORD_OVERHEAD and a.sm.kv_bytes() == both
    res = a.do("kv_del", key="k")
    assert res.result == {"key": "k", "value": None, "modify_index": 0, "deleted": True}
    assert a.sm.kv_bytes() == kv_record_bytes("é", "é")
    assert a.do("kv_del", key="k").result["deleted"] is False
    restored = StateMachine.from_snapshot(a.sm.snapshot())
    assert restored.kv_bytes() == a.sm.kv_bytes()
    assert a.sm.kv_keys() == ["é"] and a.sm.kv_keys("x") == []


def test_kv_get_and_cas() -> None:
    a = Applier()
    a.do("kv_put", key="k", value={"a": 1}, cas=0)
    created = a.sm.index
    assert a.sm.kv_get("k") == {"key": "k", "value": {"a": 1}, "modify_index": created}
    assert a.sm.kv_get("k", detail=True)["create_index"] == created
    res = a.do("kv_put", key="k", value=2, cas=0)
    assert res.status == 409 and res.error["error"] == "cas"
    assert res.error["current_index"] == created
    assert res.error["message"] == f"key 'k' has modify_index {created}, not 0"
    assert a.do("kv_put", key="k", value=2, cas=created).ok
    assert a.sm.kv_get("k", detail=True)["create_index"] == created
    res = a.do("kv_del", key="gone", cas=3)
    assert res.status == 409 and res.error["current_index"] == 0
    assert a.do("kv_del", key="gone", cas=0).ok
    assert a.sm.kv_get("gone") is None


def test_quota_counts_the_growth_only() -> None:
    a = Applier()
    a.do("kv_put", key="k", value="x" * 100)
    size = a.sm.kv_bytes()
    a.sm.check_quota(0, "big", "y" * 10_000)  # 0: no quota
    a.sm.check_quota(size, "k", "x" * 50)  # shrinking passes even at the quota
    a.sm.check_quota(size, "k", "x" * 100)  # same size: at the quota, passes
    with pytest.raises(StateError) as info:
        a.sm.check_quota(size, "k", "x" * 101)
    err = info.value
    assert (err.status, err.code) == (413, "quota_exceeded")
    assert err.extra == {"quota_bytes": size, "state_bytes": size}
    grown = size + kv_record_bytes("j", 1)
    a.sm.check_quota(grown, "j", 1)  # exactly at the quota after the write
    with pytest.raises(StateError):
        a.sm.check_quota(grown - 1, "j", 1)
    # a store already over a lowered quota may still shrink
    a.sm.check_quota(10, "k", "x")


def test_a_bug_in_an_operation_is_an_internal_error_result(monkeypatch: pytest.MonkeyPatch) -> None:
    a = Applier()

    def broken(*_args: object) -> None:
        raise RuntimeError("boom\nline")

    monkeypatch.setattr(a.sm._kv, "put", broken)
    res = a.do("kv_put", key="k", value=1)
    assert res.status == 500 and a.sm.index == 1  # the index advances all the same
    assert res.error == {
        "error": "internal",
        "status": 500,
        "message": "applying the entry failed: RuntimeError: 'boom\\nline'",
    }
    assert (res.rid, res.op) == ("r1", "kv_put")
    monkeypatch.setattr(a.sm, "_apply_conf", broken)
    res = a.conf(ConfChangeType.ADD_VOTER, "n1")
    assert res.status == 500 and res.error["error"] == "internal" and a.sm.index == 2


def test_a_stored_value_is_never_shared_with_a_put_or_a_get() -> None:
    """The store keeps its own copy of a value that can change (a list, an object) and hands
    out copies; a string or a number is its own copy."""
    kv = KVStore()
    value = {"a": [1, 2, {"b": "c"}]}
    result = kv.put(1, "k", value, None)
    value["a"].append(3)
    result["value"]["a"][2]["b"] = "changed"  # type: ignore[index]
    got = kv.get("k")
    assert got is not None and got["value"] == {"a": [1, 2, {"b": "c"}]}
    got["value"]["a"].clear()  # type: ignore[index]
    assert kv.get("k")["value"] == {"a": [1, 2, {"b": "c"}]}  # type: ignore[index]
    for plain in ("text", 7, 2.5, True, None):
        assert kv.put(2, "p", plain, None)["value"] == plain
        assert kv.get("p")["value"] == plain  # type: ignore[index]
