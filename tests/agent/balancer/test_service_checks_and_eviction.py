"""Issue 18's logic on its own: the service check's thresholds and probes
(node/service_check.py), the leader's health marks and drain handshake (node/chores.py), the
syncer's plan for out-of-service members (balancer/plan.py) and its per-balancer KV reports
(balancer/reports.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from hafleet_agent.balancer.haproxy_config import ServerState
from hafleet_agent.balancer.plan import Plan, Want, desired, plan, server_id
from hafleet_agent.balancer.reports import DrainReports
from hafleet_agent.config import AgentConfig, ConfigError, load, parse_service_check
from hafleet_agent.keys import (
    DRAINED_PREFIX,
    REGISTERED_KEY,
    REGISTERED_PREFIX,
    SERVICE_HEALTH_PREFIX,
    UNREACHABLE_PREFIX,
    drained_key,
)
from hafleet_agent.node.chores import LeaderChores
from hafleet_agent.node.service_check import Thresholds, check_once
from hafleet_agent.raft.types import ConfChange, ConfChangeType
from hafleet_agent.state import StateMachine, member_context

# --- the check --------------------------------------------------------------------------------


def test_thresholds_fall_and_rise_with_hysteresis() -> None:
    t = Thresholds(rise=2, fall=3)
    assert [t.update(p) for p in (False, False, True, False, False, False)] == [
        True,
        True,
        True,  # a pass resets the failure streak
        True,
        True,
        False,
    ]
    assert [t.update(p) for p in (True, False, True, True)] == [False, False, False, True]


def test_parse_service_check_and_its_config() -> None:
    assert parse_service_check("none") == ("none", "")
    assert parse_service_check("tcp") == ("tcp", "")
    assert parse_service_check("http:/healthz") == ("http", "/healthz")
    assert parse_service_check("http:") == ("http", "/")
    for bad in ("udp", "http:healthz", "http:/a b"):
        with pytest.raises(ValueError):
            parse_service_check(bad)
    with pytest.raises(ConfigError, match="needs service_port"):
        load(None, {"node_id": "a", "mdns": False, "service_check": "tcp"})
    with pytest.raises(ConfigError, match="service_check_fall"):
        load(None, {"node_id": "a", "mdns": False, "service_check_fall": 0})
    with pytest.raises(ConfigError, match="two heartbeats"):
        load(None, {"node_id": "a", "mdns": False, "unreachable_after_ms": 100})
    cfg = load(None, {"node_id": "a", "mdns": False, "service_port": 80, "service_check": "tcp"})
    assert cfg.service_check == "tcp" and cfg.unreachable_after_ms == 500


def test_check_once_tcp_and_http() -> None:
    async def main() -> list[tuple[bool, str]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            status = 200 if b" /ok " in line else 503
            writer.write(f"HTTP/1.0 {status} X\r\n\r\n".encode())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        addr = f"127.0.0.1:{port}"
        out = [
            await check_once("tcp", "", addr, 1.0),
            await check_once("http", "/ok", addr, 1.0),
            await check_once("http", "/bad", addr, 1.0),
        ]
        server.close()
        await server.wait_closed()
        out.append(await check_once("tcp", "", addr, 1.0))  # nothing listens any more
        return out

    results = asyncio.run(main())
    assert [ok for ok, _ in results] == [True, True, False, False]
    assert results[1][1] == "HTTP 200" and results[2][1] == "HTTP 503"


# --- the leader's marks ---------------------------------------------------------------------


class FakeRaw:
    def basic_status(self) -> Any:
        class S:
            term = 3

        return S()


def _chores(ids: list[str], **cfg: Any) -> tuple[LeaderChores, StateMachine, list[dict]]:
    sm = StateMachine()
    for i, mid in enumerate(ids):
        ctx = member_context(f"127.0.0.1:{7400 + i}", f"127.0.0.1:{7480 + i}")
        sm.apply_conf(sm.index + 1, ConfChange(ConfChangeType.ADD_VOTER, mid, ctx))
    proposed: list[dict] = []

    async def propose_cmd(data: bytes) -> None:
        cmd = json.loads(data)
        proposed.append(cmd)
        cmd.setdefault("rid", f"r{len(proposed)}")
        assert sm.apply(sm.index + 1, json.dumps(cmd).encode()).ok

    async def nothing(*_: Any) -> None:
        return None

    chores = LeaderChores(
        "a",
        AgentConfig(node_id="a", **cfg),
        sm,
        raw=lambda: FakeRaw(),  # type: ignore[arg-type,return-value]
        leader_since=lambda: time.monotonic() - 100,
        propose_cmd=propose_cmd,
        propose_conf=nothing,
        send=lambda *a, **k: None,
        wake=lambda: None,
    )
    return chores, sm, proposed


def test_a_silent_member_is_marked_unreachable_and_back_only_after_a_while() -> None:
    chores, sm, _ = _chores(["a", "b"], reachable_after_ms=300)
    now = time.monotonic()
    chores.health_seen["b"] = now - 1.0  # silent for 1 s > 500 ms
    asyncio.run(chores.run_health())
    assert sm.kv_get(f"{UNREACHABLE_PREFIX}b") is None  # a first run counts from now ...
    chores._stalled_at = now - 1.0  # ... (as after a stall of its own)
    asyncio.run(chores.run_health())
    assert sm.kv_get(f"{UNREACHABLE_PREFIX}b") is not None
    assert sm.kv_get(f"{UNREACHABLE_PREFIX}a") is None  # the leader itself
    chores.health_seen["b"] = time.monotonic()  # answers again
    asyncio.run(chores.run_health())
    assert sm.kv_get(f"{UNREACHABLE_PREFIX}b") is not None  # not yet: hysteresis
    chores.silent_since["b"] = time.monotonic() - 0.5  # it has answered for 0.5 s > 300 ms
    asyncio.run(chores.run_health())
    assert sm.kv_get(f"{UNREACHABLE_PREFIX}b") is None


def test_a_stall_of_the_leader_itself_marks_nobody() -> None:
    chores, sm, _ = _chores(["a", "b"])
    chores._last_health = time.monotonic() - 2.0  # its loop was held up for 2 s
    chores.health_seen["b"] = time.monotonic() - 2.0  # so b's frames are not read yet
    asyncio.run(chores.run_health())
    assert sm.kv_get(f"{UNREACHABLE_PREFIX}b") is None


def test_service_reports_set_and_clear_the_mark_and_the_weight() -> None:
    chores, sm, _ = _chores(["a", "b"])
    chores.health_seen["b"] = time.monotonic()
    chores.service_reports["b"] = (time.monotonic(), False, "connection refused")
    asyncio.run(chores.run_health())
    mark = sm.kv_get(f"{SERVICE_HEALTH_PREFIX}b")
    assert mark is not None and mark["value"]["detail"] == "connection refused"
    asyncio.run(chores.plan_weights(time.monotonic(), sm.members()))
    assert sm.weights()["weights"]["b"] == 0
    chores.service_reports["b"] = (time.monotonic(), True, "HTTP 200")
    asyncio.run(chores.run_health())
    assert sm.kv_get(f"{SERVICE_HEALTH_PREFIX}b") is None


def _put(sm: StateMachine, key: str, value: Any) -> None:
    cmd = {"op": "kv_put", "rid": f"p{sm.index}", "key": key, "value": value, "cas": None}
    assert sm.apply(sm.index + 1, json.dumps(cmd).encode()).ok


def test_a_removal_waits_for_every_fresh_balancer_and_an_old_syncer() -> None:
    chores, sm, _ = _chores(["a", "b"])
    assert chores.drain_waits("b") == []  # no balancer at all
    _put(sm, f"{REGISTERED_PREFIX}x", {"ttl_s": 20})
    _put(sm, f"{REGISTERED_PREFIX}y", {"ttl_s": 20})
    _put(sm, REGISTERED_KEY, {"balancer_id": "x"})  # a syncer of this version holds it
    assert chores.drain_waits("b") == [drained_key("x", "b"), drained_key("y", "b")]
    _put(sm, drained_key("x", "b"), {})
    assert chores.drain_waits("b") == [drained_key("y", "b")]
    # y went away without deregistering: once its ttl passed it holds nothing up
    key = f"{REGISTERED_PREFIX}y"
    chores.reg_seen[key] = (chores.reg_seen[key][0], time.monotonic() - 30)
    assert chores.drain_waits("b") == []
    # a syncer of the previous version registered (no balancer_id): its single key too
    _put(sm, REGISTERED_KEY, {"backend": "app"})
    assert chores.drain_waits("b") == [f"{DRAINED_PREFIX}b"]


# --- the syncer's plan --------------------------------------------------------------------------

BK = "app"


def srv(name: str, admin: int = 0, uweight: int = 10, op: int = 2) -> ServerState:
    return ServerState(BK, server_id(name), name, "10.0.0.1", op, admin, uweight, uweight, 6, 80)


def test_desired_takes_out_failing_services_and_unreachable_members() -> None:
    view = {
        "members": [
            {"id": "a", "service_addr": "10.0.0.1:80"},
            {"id": "b", "service_addr": "10.0.0.2:80", "service_healthy": False},
            {"id": "c", "service_addr": "10.0.0.3:80", "reachable": False},
        ],
        "weights": {"weights": {"a": 100, "b": 100, "c": 100}},
    }
    wants, _ = desired(view, "weighted")
    assert (wants["a"].out, wants["a"].weight) == ("", 100)
    assert wants["b"].out and wants["b"].weight == 0
    assert wants["c"].out and wants["c"].weight == 100  # back with its share


def test_plan_drains_an_out_member_without_a_drained_report_and_restores_it() -> None:
    out = {"b": Want("b", "10.0.0.1", 80, 0, False, "its service check fails")}
    p = plan(BK, out, [srv("b")], {}, {}, 0.0, 30.0)
    assert [a.command for a in p.actions] == [
        "set server app/b weight 0",
        "set server app/b state drain",
    ]
    assert not p.drained and not any(a.starts_drain for a in p.actions)
    drained = srv("b", admin=ServerState.FDRAIN, uweight=0)
    assert plan(BK, out, [drained], {}, {}, 0.0, 30.0).actions == []
    back = {"b": Want("b", "10.0.0.1", 80, 10, False)}
    down = srv("b", admin=ServerState.FDRAIN, uweight=0, op=0)
    cmds = [a.command for a in plan(BK, back, [down], {}, {}, 0.0, 30.0, ["b"]).actions]
    assert cmds == [
        "set server app/b weight 10",
        "set server app/b state ready",
        "set server app/b health up",
    ]
    # without service_back (HAProxy's own check holds it down): HAProxy decides
    cmds = [a.command for a in plan(BK, back, [down], {}, {}, 0.0, 30.0).actions]
    assert "set server app/b health up" not in cmds


def test_a_new_out_member_is_added_draining() -> None:
    out = {"b": Want("b", "10.0.0.1", 80, 10, False, "the leader cannot reach it")}
    cmds = [a.command for a in plan(BK, out, [], {}, {}, 0.0, 30.0).actions]
    assert cmds[-1] == "set server app/b state drain" and "enable server app/b" not in cmds


# --- the syncer's reports ---------------------------------------------------------------------


class KV:
    def __init__(self) -> None:
        self.items: dict[str, Any] = {}

    async def write(self, key: str, value: Any = None, delete: bool = False) -> bool:
        if delete:
            self.items.pop(key, None)
        else:
            self.items[key] = value
        return True

    async def get_stale(self, key: str) -> Any:
        return {"key": key, "value": self.items[key]} if key in self.items else None


def _round(r: DrainReports, members: list[tuple[str, bool]], p: Plan) -> None:
    view = {"members": [{"id": m, "draining": d} for m, d in members]}
    asyncio.run(r.report(view, {}, p))


def test_two_syncers_register_apart_and_one_holds_the_legacy_keys() -> None:
    kv = KV()
    x = DrainReports(kv.write, kv.get_stale, BK, "weighted", 5.0, balancer_id="x")
    y = DrainReports(kv.write, kv.get_stale, BK, "weighted", 5.0, balancer_id="y")
    _round(x, [("n1", False)], Plan())
    _round(y, [("n1", False)], Plan())
    assert {f"{REGISTERED_PREFIX}x", f"{REGISTERED_PREFIX}y", REGISTERED_KEY} <= set(kv.items)
    assert kv.items[REGISTERED_KEY]["balancer_id"] == "x"
    assert x.legacy_own and not y.legacy_own
    done = Plan(drained={"n1": {"sessions": 0, "timed_out": False}})
    _round(y, [("n1", True)], done)
    assert drained_key("y", "n1") in kv.items and f"{DRAINED_PREFIX}n1" not in kv.items
    _round(x, [("n1", True)], done)
    assert drained_key("x", "n1") in kv.items and f"{DRAINED_PREFIX}n1" in kv.items
    asyncio.run(x.deregister())
    assert f"{REGISTERED_PREFIX}x" not in kv.items and REGISTERED_KEY not in kv.items


def test_an_old_syncers_legacy_registration_is_left_alone() -> None:
    kv = KV()
    kv.items[REGISTERED_KEY] = {"backend": BK, "pid": 1}  # the previous version's
    x = DrainReports(kv.write, kv.get_stale, BK, "weighted", 5.0, balancer_id="x")
    _round(x, [("n1", True)], Plan(drained={"n1": {"sessions": 0, "timed_out": False}}))
    assert kv.items[REGISTERED_KEY] == {"backend": BK, "pid": 1}
    assert x.registered and not x.legacy_own
    assert drained_key("x", "n1") in kv.items and f"{DRAINED_PREFIX}n1" not in kv.items


def test_refresh_rewrites_the_registration_and_takes_over_a_gone_holders_legacy_key() -> None:
    kv = KV()
    kv.items[REGISTERED_KEY] = {"balancer_id": "gone"}  # its own key was deleted (clean stop)
    x = DrainReports(kv.write, kv.get_stale, BK, "weighted", 5.0, balancer_id="x")
    _round(x, [("n1", False)], Plan())
    assert x.registered and x.legacy_own and kv.items[REGISTERED_KEY]["balancer_id"] == "x"
    before = kv.items[f"{REGISTERED_PREFIX}x"]["at"]
    kv.items[f"{REGISTERED_PREFIX}x"]["at"] = before - 100
    asyncio.run(x.refresh())
    assert kv.items[f"{REGISTERED_PREFIX}x"]["at"] >= before


def test_the_health_loop_sleeps_until_a_member_could_pass_its_silence_limit() -> None:
    """The leader's fast chores run when a mark could change, not ten times a second: until
    the first member not heard from passes unreachable_after_ms (500 ms), at most 0.25 s."""
    chores, sm, _ = _chores(["a", "b", "c"])
    now = time.monotonic()
    chores.health_seen.update(b=now, c=now)
    assert 0.24 < chores.health_pace() <= 0.25  # the cap
    chores.health_seen["c"] = now - 0.4  # 0.1 s to its limit
    assert 0.08 < chores.health_pace() < 0.11
    chores.health_seen["c"] = now - 1.0  # past it, not seen so by a run yet: soon
    assert chores.health_pace() == pytest.approx(0.1)
    chores._stalled_at = now - 2.0
    asyncio.run(chores.run_health())
    assert sm.kv_get(f"{UNREACHABLE_PREFIX}c") is not None
    assert 0.24 < chores.health_pace() <= 0.25  # marked: back to the cap (b is heard)


def test_a_run_at_its_planned_pace_is_no_stall() -> None:
    """A run 0.4 s after the last one is a stall of ten-a-second chores, not of chores that
    meant to sleep 0.25 s: a stall would restart every member's silence from now."""
    chores, _, _ = _chores(["a", "b"])
    now = time.monotonic()
    chores.health_seen["b"] = now
    chores._last_health = now - 0.4
    chores._health_due = now - 0.15  # health_pace planned this run 0.25 s after the last
    chores._stalled_at = 1.0
    asyncio.run(chores.run_health())
    assert chores._stalled_at == 1.0
    chores._last_health = time.monotonic() - 0.4  # no plan: ten a second, 0.4 s is a stall
    asyncio.run(chores.run_health())
    assert chores._stalled_at > 1.0
