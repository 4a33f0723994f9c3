"""The replicated commands' validation at its edges: each limit at its value and one past it,
every field a member_put carries (service_addr and meta included), and the fields of the
other ops. The limits are part of the replicated protocol (commands.py): a replica that
checked one differently would apply a command the others refuse."""

from __future__ import annotations

import pytest

from hafleet_agent import commands
from hafleet_agent.commands import (
    MAX_JSON_DEPTH,
    MAX_META_BYTES,
    MAX_REASON_CHARS,
    MAX_RID_CHARS,
    MAX_WEIGHT,
    StateError,
    check_command,
    check_member_fields,
    decode_command,
    decode_context,
    encode_command,
    json_depth_exceeds,
    member_context,
    parse_command,
    validate_addr,
    validate_key,
)

ADDRS = {"raft_addr": "10.0.0.1:7400", "api_addr": "10.0.0.1:7480"}


def refused(op: str, **fields: object) -> StateError:
    with pytest.raises(StateError) as info:
        encode_command(op, rid="r", **fields)
    assert info.value.status == 400 and info.value.code == "invalid"
    return info.value


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def meta_of_size(size: int) -> dict[str, str]:
    """A meta object whose canonical encoding is exactly ``size`` bytes."""
    meta = {"k": ""}
    meta["k"] = "x" * (size - len(b'{"k":""}'))
    return meta


def test_member_put_checks_its_service_address() -> None:
    ok = encode_command("member_put", rid="r", id="n1", service_addr="10.0.0.1:80", **ADDRS)
    assert b'"service_addr":"10.0.0.1:80"' in ok
    for bad in ("10.0.0.1", "10.0.0.1:0", 80, ["10.0.0.1:80"], "", "a b:80"):
        err = refused("member_put", id="n1", service_addr=bad, **ADDRS)
        assert "service_addr" in err.message
    assert b'"service_addr":null' in encode_command("member_put", rid="r", id="n1", **ADDRS)


def test_member_put_checks_its_meta() -> None:
    assert b'"meta":{"zone":"a"}' in encode_command(
        "member_put", rid="r", id="n1", meta={"zone": "a"}, **ADDRS
    )
    for bad in ([1], "zone=a", 5, True):
        assert refused("member_put", id="n1", meta=bad, **ADDRS).message == "meta must be an object"
    encode_command("member_put", rid="r", id="n1", meta=meta_of_size(MAX_META_BYTES), **ADDRS)
    err = refused("member_put", id="n1", meta=meta_of_size(MAX_META_BYTES + 1), **ADDRS)
    assert err.message == f"meta is {MAX_META_BYTES + 1} bytes encoded; the limit is 4096"
    deep = {"a": nested(MAX_JSON_DEPTH)}
    assert "nested deeper" in refused("member_put", id="n1", meta=deep, **ADDRS).message


def test_member_put_checks_both_raft_and_api_addresses() -> None:
    for field in ("raft_addr", "api_addr"):
        fields = {**ADDRS, field: "nowhere"}
        assert field in refused("member_put", id="n1", **fields).message
        fields = {k: v for k, v in ADDRS.items() if k != field}
        assert field in refused("member_put", id="n1", **fields).message


@pytest.mark.parametrize(
    "addr",
    ["host:80", "10.0.0.1:65535", "[fd00::1]:1", "fd00::1:80", "a.b-c_d:7400", "XX.X:80"],
)
def test_addresses_accepted(addr: str) -> None:
    assert validate_addr(addr, "raft_addr") == addr


@pytest.mark.parametrize(
    "addr",
    ["", ":80", "host", "host:", "host:65536", "ho st:80", "ho/st:80", "[[fd00::1]]:80",
     "ho]st:80", "ho\x7fst:80", "ho\x85st:80", "ho\tst:80", "[]:80"],
)  # fmt: skip
def test_addresses_refused(addr: str) -> None:
    with pytest.raises(StateError) as info:
        validate_addr(addr, "api_addr")
    assert info.value.message.startswith("api_addr must be HOST:PORT")


def test_json_depth_limit_is_inclusive() -> None:
    assert not json_depth_exceeds(nested(MAX_JSON_DEPTH), MAX_JSON_DEPTH)
    assert json_depth_exceeds(nested(MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH)
    assert not json_depth_exceeds({"a": {"b": 1}}, 2)
    assert json_depth_exceeds({"a": {"b": {}}}, 2)  # an empty object is a level too
    assert json_depth_exceeds({"a": {"b": {"c": 1}}}, 2)
    assert not json_depth_exceeds([[1], [2]], 2)
    assert json_depth_exceeds([[1], [[2]]], 2)  # the deeper branch counts, not the first
    assert not json_depth_exceeds("scalar", 0)
    assert json_depth_exceeds([], 0) and not json_depth_exceeds([], 1)
    encode_command("kv_put", rid="r", key="k", value=nested(MAX_JSON_DEPTH))
    assert "nested deeper" in refused("kv_put", key="k", value=nested(MAX_JSON_DEPTH + 1)).message


def test_keys_refuse_control_characters_of_both_ranges() -> None:
    for ch in ("\x00", "\x1f", "\x7f", "\x9f"):
        with pytest.raises(StateError, match="control character"):
            validate_key(f"a{ch}b")
    for ch in (" ", "~", "\xa0", "é"):
        assert validate_key(f"a{ch}b") == f"a{ch}b"


def test_weights_set_limits() -> None:
    encode_command("weights_set", rid="r", weights={"a": 0, "b": MAX_WEIGHT})
    for w in (MAX_WEIGHT + 1, -1, True, 1.5, "5", None):
        err = refused("weights_set", weights={"a": w})
        assert err.message == "a weight must be an integer in 0..256"
    assert "member id" in refused("weights_set", weights={"-bad": 5}).message
    for bad in ([["a", 1]], None, "a=1"):
        assert refused("weights_set", weights=bad).message.startswith("weights must be an object")
    encode_command("weights_set", rid="r", weights={}, reason="r" * MAX_REASON_CHARS)
    for reason in ("r" * (MAX_REASON_CHARS + 1), 5, None):
        assert refused("weights_set", weights={}, reason=reason).message.startswith("reason must")
    cmd = decode_command(b'{"op":"weights_set","weights":{}}')  # reason may be left out
    assert cmd["weights"] == {}


def test_rid_limits() -> None:
    assert b'"rid":"' + b"r" * MAX_RID_CHARS in encode_command(
        "kv_del", rid="r" * MAX_RID_CHARS, key="k"
    )
    for rid in ("r" * (MAX_RID_CHARS + 1), 5, ["r"]):
        with pytest.raises(StateError, match="rid must be a string"):
            check_command({"op": "kv_del", "rid": rid, "key": "k", "cas": None})
    check_command({"op": "kv_del", "key": "k", "cas": None})  # no rid at all is fine
    assert commands.rid_of({"rid": "r" * MAX_RID_CHARS}) == "r" * MAX_RID_CHARS
    assert commands.rid_of({"rid": "r" * (MAX_RID_CHARS + 1)}) is None
    assert commands.rid_of({"rid": 7}) is None and commands.rid_of({}) is None


def test_ops_and_their_fields() -> None:
    assert commands.op_of({"op": "kv_put"}) == "kv_put"
    assert commands.op_of({"op": "nope"}) is None and commands.op_of({"op": ["kv_put"]}) is None
    for op in ("member_del", "member_health", "member_drain"):
        assert "member id" in refused(op, id="-x", healthy=True, draining=True).message
    assert refused("member_health", id="n1", healthy=1).message == "healthy must be true or false"
    assert refused("member_drain", id="n1", draining="yes").message == (
        "draining must be true or false"
    )
    encode_command("member_health", rid="r", id="n1", healthy=False)
    encode_command("member_drain", rid="r", id="n1", draining=True)
    assert refused("kv_put", key="k").message == "kv_put needs a value"
    assert b'"value":null' in encode_command("kv_put", rid="r", key="k", value=None)
    assert refused("kv_del", key="").message == "key must be a non-empty string"
    assert refused("kv_del", key="k", cas=-1).message == "cas must be an integer >= 0"
    assert refused("kv_put", key="k", value=1, cas=True).message == "cas must be an integer >= 0"
    assert refused("nope").message == "unknown op 'nope'"


def test_parse_command_needs_a_json_object() -> None:
    assert parse_command(b'{"op":1}') == {"op": 1}
    for data in (b"[1]", b'"op"', b"null"):
        with pytest.raises(StateError, match="not a JSON object"):
            parse_command(data)
    for data in (b"{", b"\xff", b"[" * 5000):
        with pytest.raises(StateError, match="command is not JSON"):
            parse_command(data)


def test_member_context_and_its_decoding() -> None:
    ctx = member_context("10.0.0.1:7400", "10.0.0.1:7480", "10.0.0.1:80", {"z": 1})
    assert decode_context(ctx) == {**ADDRS, "service_addr": "10.0.0.1:80", "meta": {"z": 1}}
    plain = member_context("10.0.0.1:7400", "10.0.0.1:7480")
    assert decode_context(plain) == {**ADDRS, "service_addr": None}  # no empty meta
    assert b"meta" not in member_context("10.0.0.1:7400", "10.0.0.1:7480", meta={})
    with pytest.raises(StateError):
        member_context("10.0.0.1:7400", "10.0.0.1:7480", "nowhere")
    with pytest.raises(StateError):
        member_context("10.0.0.1:7400", "10.0.0.1:7480", meta=meta_of_size(MAX_META_BYTES + 1))
    assert decode_context(b"") is None
    assert decode_context(b"[1]") is None
    assert decode_context(b"\xff") is None and decode_context(b"{") is None
    assert decode_context(b'{"raft_addr":"x","api_addr":"10.0.0.1:7480"}') is None
    bad_service = b'{"raft_addr":"10.0.0.1:7400","api_addr":"10.0.0.1:7480","service_addr":"x"}'
    assert decode_context(bad_service) is None
    bad_meta = b'{"raft_addr":"10.0.0.1:7400","api_addr":"10.0.0.1:7480","meta":[1]}'
    assert decode_context(bad_meta) is None
    check_member_fields({**ADDRS, "service_addr": None, "meta": None})
