"""The syncer's pure parts: server ids, what the group wants, and the plan that takes HAProxy
from what it has to that (adds, weights, drains, deletions, drain reports)."""

from __future__ import annotations

import hashlib

import pytest

from hafleet_agent.balancer.haproxy_config import EQUAL_WEIGHT, ServerState
from hafleet_agent.balancer.plan import (
    ID_BASE,
    ID_LIMIT,
    Want,
    desired,
    plan,
    server_id,
    split_service_addr,
)
from hafleet_agent.balancer.runtime_api import succeeded

BK = "app"


def srv(name: str, *, sid: int = 0, addr: str = "10.0.0.1", port: int = 80, admin: int = 0,
        uweight: int = 10, check_state: int = 6) -> ServerState:  # fmt: skip
    return ServerState(BK, sid or server_id(name), name, addr, 2, admin, uweight, uweight,
                       check_state, port)  # fmt: skip


def want(name: str, weight: int = 10, drain: bool = False, host: str = "10.0.0.1") -> Want:
    return Want(name, host, 80, weight, drain)


def stats(**sessions: int) -> dict[str, dict[str, str]]:
    out = {"BACKEND": {"scur": "0", "qcur": "0"}}
    for name, n in sessions.items():
        out[name] = {"scur": str(n), "qcur": "0", "bck": "0"}
    return out


def commands(p) -> list[str]:
    return [a.command for a in p.actions]


# --- ids ----------------------------------------------------------------------------------------


def test_server_id_is_stable_documented_and_in_range() -> None:
    digest = hashlib.sha256(b"web-1").digest()
    expected = ID_BASE + int.from_bytes(digest[:8], "big") % (ID_LIMIT - ID_BASE + 1)
    assert server_id("web-1") == expected == server_id("web-1", {1, 2, 3})
    for name in (f"n{i}" for i in range(2000)):
        assert ID_BASE <= server_id(name) <= ID_LIMIT


def test_server_id_never_collides_within_a_backend() -> None:
    first = server_id("a")
    assert server_id("a", {first}) == first + 1
    assert server_id("a", {first, first + 1}) == first + 2
    ids: set[int] = set()
    for i in range(500):
        sid = server_id(f"m{i}", ids)
        assert sid not in ids
        ids.add(sid)


def test_server_id_wraps_within_the_range(monkeypatch: pytest.MonkeyPatch) -> None:
    from hafleet_agent.balancer import plan as plan_module

    monkeypatch.setattr(plan_module, "ID_SPAN", 5)  # ids 1000..1004
    start = server_id("a")
    others = {1000 + i for i in range(5)} - {1000 + (start - 1000 + 4) % 5}
    assert server_id("a", others) == 1000 + (start - 1000 + 4) % 5
    with pytest.raises(AssertionError):
        server_id("a", set(range(1000, 1005)))


def test_split_service_addr() -> None:
    assert split_service_addr("10.0.0.1:80") == ("10.0.0.1", 80)
    assert split_service_addr("[fd00::1]:8080") == ("fd00::1", 8080)
    for bad in ("10.0.0.1", "10.0.0.1:0", "10.0.0.1:70000", ":80", "host:http"):
        with pytest.raises(ValueError):
            split_service_addr(bad)


# --- desired ------------------------------------------------------------------------------------

VIEW = {
    "index": 9,
    "leader_id": "a",
    "members": [
        {"id": "a", "service_addr": "10.0.0.1:80", "draining": False},
        {"id": "b", "service_addr": "10.0.0.2:80", "draining": True},
        {"id": "c", "service_addr": "[fd00::3]:81", "draining": False},
        {"id": "d", "service_addr": None, "draining": False},
        {"id": "e", "service_addr": "10.0.0.5", "draining": False},
        {"id": "f", "service_addr": "10.0.0.6:80", "draining": False},
    ],
    "weights": {"version": 4, "weights": {"a": 200, "b": 0, "c": 50, "f": 999}},
}


def test_desired_weighted() -> None:
    wants, skipped = desired(VIEW, "weighted")
    assert wants == {
        "a": Want("a", "10.0.0.1", 80, 200, False),
        "b": Want("b", "10.0.0.2", 80, 0, True),
        "c": Want("c", "fd00::3", 81, 50, False),
        # a weight out of range counts as unknown: the median of the known ones
        "f": Want("f", "10.0.0.6", 80, 50, False),
    }
    assert skipped == ["d: no service address", "e: bad service address '10.0.0.5'"]


@pytest.mark.parametrize("strategy", ["roundrobin", "random", "leastconn"])
def test_desired_equal_weights(strategy: str) -> None:
    wants, _ = desired(VIEW, strategy)
    assert {w.weight for w in wants.values()} == {EQUAL_WEIGHT}
    assert wants["b"].drain


def test_desired_without_any_table() -> None:
    view = {**VIEW, "weights": {"version": 0, "weights": {}}}
    wants, _ = desired(view, "weighted")
    assert {w.weight for w in wants.values()} == {EQUAL_WEIGHT}


# --- plan ---------------------------------------------------------------------------------------


def test_plan_adds_a_new_member_with_an_id_then_health_then_ready() -> None:
    p = plan(BK, {"n1": want("n1", 7)}, [], stats(), {}, 0.0, 30)
    sid = server_id("n1")
    assert commands(p) == [
        f"add server app/n1 10.0.0.1:80 id {sid} weight 7 check",
        "enable health app/n1",
        "enable server app/n1",
    ]


def test_plan_new_ids_avoid_the_taken_ones() -> None:
    taken = srv("other", sid=server_id("n1"))
    p = plan(BK, {"n1": want("n1"), "other": want("other")}, [taken], stats(other=0), {}, 0, 30)
    assert f"id {server_id('n1') + 1} " in commands(p)[0]


def test_plan_ipv6_address_in_brackets() -> None:
    p = plan(BK, {"n1": want("n1", host="fd00::1")}, [], stats(), {}, 0.0, 30)
    assert commands(p)[0].startswith("add server app/n1 [fd00::1]:80 id ")


def test_plan_converged_is_empty() -> None:
    p = plan(BK, {"n1": want("n1")}, [srv("n1")], stats(n1=3), {}, 0.0, 30)
    assert p.actions == [] and p.waiting == [] and p.drained == {}


def test_plan_level_based_repairs() -> None:
    """A server left half-done (added, still in maintenance with its check off), a weight
    and an address that moved: each gets exactly the command it lacks."""
    have = [
        srv("n1", admin=ServerState.FMAINT, check_state=ServerState.CHECK_CONFIGURED),
        srv("n2", uweight=3),
        srv("n3", addr="10.9.9.9"),
        srv("n4", admin=ServerState.FDRAIN),
    ]
    wants = {n: want(n) for n in ("n1", "n2", "n3", "n4")}
    p = plan(BK, wants, have, stats(n1=0, n2=0, n3=0, n4=0), {}, 0.0, 30)
    assert commands(p) == [
        "enable health app/n1",
        "set server app/n1 state ready",
        "set server app/n2 weight 10",
        "set server app/n3 addr 10.0.0.1 port 80",
        "set server app/n4 state ready",
    ]


def test_plan_draining_member_drains_then_reports_when_sessions_reach_zero() -> None:
    wants = {"n1": want("n1", 0, drain=True)}
    p = plan(BK, wants, [srv("n1", uweight=0)], stats(n1=4), {}, 0.0, 30)
    assert commands(p) == ["set server app/n1 state drain"]
    assert p.actions[0].starts_drain and not p.drained
    drained = srv("n1", uweight=0, admin=ServerState.FDRAIN)
    p = plan(BK, wants, [drained], stats(n1=4), {"n1": 0.0}, 5.0, 30)
    assert p.actions == [] and p.drained == {} and p.waiting
    p = plan(BK, wants, [drained], stats(n1=0), {"n1": 0.0}, 6.0, 30)
    assert p.drained == {"n1": {"sessions": 0, "timed_out": False}}
    # a request in the queue counts as a session
    st = stats(n1=0)
    st["n1"]["qcur"] = "1"
    assert plan(BK, wants, [drained], st, {"n1": 0.0}, 6.0, 30).drained == {}


def test_plan_draining_member_reported_after_the_timeout_with_sessions_left() -> None:
    wants = {"n1": want("n1", 0, drain=True)}
    drained = srv("n1", uweight=0, admin=ServerState.FDRAIN)
    p = plan(BK, wants, [drained], stats(n1=2), {"n1": 0.0}, 30.0, 30)
    assert p.drained == {"n1": {"sessions": 2, "timed_out": True}}
    assert p.actions == []  # a member still in the group keeps its sessions


def test_plan_member_left_drain_wait_maint_delete() -> None:
    have = [srv("n1")]
    p = plan(BK, {}, have, stats(n1=2), {}, 0.0, 30)
    assert commands(p) == ["set server app/n1 state drain"]
    draining = [srv("n1", admin=ServerState.FDRAIN)]
    p = plan(BK, {}, draining, stats(n1=2), {"n1": 0.0}, 10.0, 30)
    assert p.actions == [] and p.waiting == ["n1: left, 2 session(s) left"]
    p = plan(BK, {}, draining, stats(n1=0), {"n1": 0.0}, 11.0, 30)
    assert commands(p) == ["set server app/n1 state maint", "del server app/n1"]
    assert p.actions[-1].deletes


def test_plan_member_left_timeout_cuts_the_sessions_then_deletes() -> None:
    draining = [srv("n1", admin=ServerState.FDRAIN)]
    p = plan(BK, {}, draining, stats(n1=2), {"n1": 0.0}, 30.0, 30)
    assert commands(p) == [
        "set server app/n1 state maint",
        "shutdown sessions server app/n1",
        "del server app/n1",
    ]


def test_plan_member_left_already_in_maint() -> None:
    maint = [srv("n1", admin=ServerState.FMAINT)]
    assert commands(plan(BK, {}, maint, stats(n1=0), {"n1": 0.0}, 1.0, 30)) == ["del server app/n1"]
    p = plan(BK, {}, maint, stats(n1=1), {"n1": 0.0}, 1.0, 30)
    assert p.actions == [] and p.waiting


def test_plan_leaves_backup_servers_alone() -> None:
    st = stats(spare=0)
    st["spare"]["bck"] = "1"
    assert plan(BK, {}, [srv("spare")], st, {}, 0.0, 30).actions == []


def test_plan_new_member_that_is_already_draining() -> None:
    p = plan(BK, {"n1": want("n1", 0, drain=True)}, [], stats(), {}, 0.0, 30)
    assert commands(p)[-1] == "set server app/n1 state drain"


# --- HAProxy's answers ----------------------------------------------------------------------------

# Recorded from HAProxy 2.6.12 (the lab's): the Runtime API's answers, stripped as execute() does.
SET_ADDR = "set server app/n1 addr 127.0.0.2 port 9002"
APPLIED = [
    (SET_ADDR, "IP changed from '127.0.0.1' to '127.0.0.2', no need to change the port by "
               "'stats socket command'"),
    (SET_ADDR, "no need to change the addr, port changed from '9001' to '9002' by "
               "'stats socket command'"),
    (SET_ADDR, "IP changed from '127.0.0.2' to '127.0.0.3', port changed from '9002' to '9003' "
               "by 'stats socket command'"),
    (SET_ADDR, "no need to change the addr, no need to change the port by 'stats socket command'"),
    ("set server app/n1 addr 127.0.0.4", "IP changed from '127.0.0.3' to '127.0.0.4' by "
                                         "'stats socket command'"),
    ("set server app/n1 addr ::1 port 9003", "IP changed from '127.0.0.4' to '::1', port changed "
                                             "from '34463' to '9003' by 'stats socket command'"),
    ("set server app/n1 addr 127.0.0.4", "nothing changed"),  # HAProxy 3.x's no-op wording
    ("add server app/n1 127.0.0.1:9001 id 5 weight 10 check", "New server registered."),
    ("del server app/n1", "Server deleted."),
    ("set server app/n1 weight 20", ""),
    ("set server app/n1 state drain", ""),
    ("enable health app/n1", ""),
    ("shutdown sessions server app/n1", ""),
]  # fmt: skip
REFUSED = [
    (SET_ADDR, "Invalid addr 'nonsense' by 'stats socket command'"),
    (SET_ADDR, "No such server."),
    (SET_ADDR, "Update for the current server address family is only supported through "
               "configuration file by 'stats socket command'"),
    (SET_ADDR, ""),  # HAProxy always says what it did with an address
    (SET_ADDR, "IP changed from '127.0.0.1' to '127.0.0.2'\nInternal error"),
    (SET_ADDR, "Require 'addr' or 'port'. IP changed from 'a' to 'b'"),
    ("set server app/n1 weight 20", "IP changed from '127.0.0.1' to '127.0.0.2'"),
    ("set server app/n1 weight 999", "Absolute weight can only be between 0 and 256 inclusive."),
    ("add server app/n1 127.0.0.1:9001 id 5 weight 10 check", "Already exists a server with that "
                                                              "name in backend."),
    ("del server app/n1", "Server still has connections attached to it, cannot remove it."),
]  # fmt: skip


@pytest.mark.parametrize(("cmd", "answer"), APPLIED)
def test_haproxy_answers_that_mean_applied(cmd: str, answer: str) -> None:
    assert succeeded(cmd, answer)


@pytest.mark.parametrize(("cmd", "answer"), REFUSED)
def test_haproxy_answers_that_mean_refused(cmd: str, answer: str) -> None:
    assert not succeeded(cmd, answer)
