"""The balancer planner with several servers in each branch (one member's branch must not end
the others'), drains that start later than time 0, the reasons each command gives, and the
edges of what the group wants (median weights, bad rows, session counts)."""

from __future__ import annotations

import pytest

from hafleet_agent.balancer.haproxy_config import EQUAL_WEIGHT, ServerState
from hafleet_agent.balancer.plan import Want, desired, plan, server_id

BACKEND = "web"
DRAIN = ServerState.FDRAIN
MAINT = ServerState.FMAINT


RUNNING = ServerState.CHECK_CONFIGURED | ServerState.CHECK_ENABLED


def state(
    name: str, admin: int = 0, weight: int = 10, addr: str = "10.1.0.1", checks: int = RUNNING
) -> ServerState:
    """A server as ``show servers state`` reports it (health check running by default)."""
    return ServerState(BACKEND, server_id(name), name, addr, 2, admin, weight, weight, checks, 80)


def wanted(name: str, weight: int = 10, drain: bool = False) -> Want:
    return Want(name, "10.1.0.1", 80, weight, drain)


def sessions(**by_name: int) -> dict[str, dict[str, str]]:
    return {name: {"scur": str(n), "qcur": "0", "bck": "0"} for name, n in by_name.items()}


def run(wants: list[Want], have: list[ServerState], st: dict, started=None, now=0.0, timeout=30.0):
    return plan(BACKEND, {w.name: w for w in wants}, have, st, started or {}, now, timeout)


def cmds(p) -> list[str]:
    """The commands, each checked to name the server its action is for (the syncer keys
    drains and deletions by ``Action.server``)."""
    for a in p.actions:
        assert f" {BACKEND}/{a.server} " in f" {a.command} ", (a.server, a.command)
    return [a.command for a in p.actions]


def described(p) -> list[tuple[str, str]]:
    return list(zip(cmds(p), [a.why for a in p.actions], strict=True))


def test_every_new_member_is_added_after_one_that_starts_draining() -> None:
    p = run([wanted("a", 0, drain=True), wanted("b"), wanted("c")], [], {})
    ids = {n: server_id(n) for n in "abc"}
    assert cmds(p) == [
        f"add server web/a 10.1.0.1:80 id {ids['a']} weight 0 check",
        "enable health web/a",
        "set server web/a state drain",
        f"add server web/b 10.1.0.1:80 id {ids['b']} weight 10 check",
        "enable health web/b",
        "enable server web/b",
        f"add server web/c 10.1.0.1:80 id {ids['c']} weight 10 check",
        "enable health web/c",
        "enable server web/c",
    ]
    assert [a.starts_drain for a in p.actions] == [False, False, True] + [False] * 6
    assert [a.why for a in p.actions] == ["new member", "new member", "member is draining"] + [
        "new member"
    ] * 6


def test_a_drain_that_starts_does_not_stop_the_next_members() -> None:
    have = [state("a"), state("b", weight=3), state("c", admin=DRAIN)]
    p = run([wanted("a", 0, drain=True), wanted("b"), wanted("c")], have, sessions(a=1, b=0, c=0))
    assert cmds(p) == [
        "set server web/a weight 0",
        "set server web/a state drain",
        "set server web/b weight 10",
        "set server web/c state ready",
    ]
    assert [a.why for a in p.actions] == [
        "weight 10 -> 0",
        "member is draining",
        "weight 3 -> 10",
        "member in service",
    ]
    assert [a.starts_drain for a in p.actions] == [False, True, False, False]


def test_a_member_in_maintenance_that_should_drain_is_set_draining() -> None:
    p = run([wanted("a", 10, drain=True)], [state("a", admin=MAINT | DRAIN)], sessions(a=0))
    assert cmds(p) == ["set server web/a state drain"] and p.drained == {}


def test_draining_members_are_each_reported() -> None:
    have = [state(n, admin=DRAIN, weight=0) for n in "abcd"]
    wants = [wanted(n, 0, drain=True) for n in "abcd"]
    started = {"a": 100.0, "b": 100.0, "c": 100.0}
    p = run(wants, have, sessions(a=0, b=2, c=3, d=1), started, now=125.0)
    # a: no sessions; b, c: 25 s into a 30 s drain; d: no start known, counted from now
    assert p.drained == {"a": {"sessions": 0, "timed_out": False}}
    assert p.waiting == [
        "b: draining, 2 session(s) left",
        "c: draining, 3 session(s) left",
        "d: draining, 1 session(s) left",
    ]
    assert p.actions == []
    p = run(wants, have, sessions(a=0, b=2, c=0, d=1), started, now=130.0)
    assert p.drained == {
        "a": {"sessions": 0, "timed_out": False},
        "b": {"sessions": 2, "timed_out": True},
        "c": {"sessions": 0, "timed_out": False},
    }
    assert p.waiting == ["d: draining, 1 session(s) left"]


def test_a_drain_times_out_from_its_own_start() -> None:
    have = [state("a", admin=DRAIN, weight=0)]
    p = run([wanted("a", 0, drain=True)], have, sessions(a=1), {"a": 50.0}, now=79.0)
    assert p.drained == {} and p.waiting  # 29 s of 30
    p = run([wanted("a", 0, drain=True)], have, sessions(a=1), {"a": 50.0}, now=80.0)
    assert p.drained == {"a": {"sessions": 1, "timed_out": True}}


def test_members_that_left_are_each_handled() -> None:
    have = [
        state("keep"),
        state("l1"),
        state("l2", admin=DRAIN),
        state("l3", admin=DRAIN),
        state("l4", admin=DRAIN),
        state("l5", admin=MAINT),
        state("spare"),
        state("zz"),
    ]
    st = sessions(keep=1, l1=1, l2=4, l3=0, l4=2, l5=0, spare=0, zz=0)
    st["spare"]["bck"] = "1"
    started = {"l2": 100.0, "l4": 60.0}
    p = run([wanted("keep")], have, st, started, now=110.0)
    assert described(p) == [
        ("set server web/l1 state drain", "member left"),
        ("set server web/l3 state maint", "member left, drained"),
        ("del server web/l3", "member left"),
        ("set server web/l4 state maint", "member left, drained"),
        ("shutdown sessions server web/l4", "drain timeout (30s) passed with 2 session(s) left"),
        ("del server web/l4", "member left"),
        ("del server web/l5", "member left"),
        ("set server web/zz state drain", "member left"),
    ]
    assert [a.deletes for a in p.actions] == [False, False, True, False, False, True, True, False]
    assert [a.starts_drain for a in p.actions] == [True] + [False] * 6 + [True]
    assert p.waiting == ["l1: left, draining", "l2: left, 4 session(s) left", "zz: left, draining"]


def test_a_member_that_left_waits_for_its_own_drain_start() -> None:
    have = [state("gone", admin=DRAIN)]
    p = run([], have, sessions(gone=3), {"gone": 100.0}, now=129.5)
    assert p.actions == [] and p.waiting == ["gone: left, 3 session(s) left"]
    p = run([], have, sessions(gone=3), {"gone": 100.0}, now=130.0)
    assert cmds(p)[-1] == "del server web/gone"
    # no start known: it waits for its sessions (no timeout to count from)
    p = run([], have, sessions(gone=3), {}, now=1e9)
    assert p.actions == [] and p.waiting == ["gone: left, 3 session(s) left"]


def test_sessions_count_current_and_queued_and_skip_garbage() -> None:
    have = [state("a", admin=DRAIN, weight=0)]
    want_a = [wanted("a", 0, drain=True)]
    for row, left in (
        ({"scur": "2", "qcur": "3"}, 5),
        ({"scur": "x", "qcur": "3"}, 3),
        ({"scur": "2", "qcur": ""}, 2),
        ({"scur": "", "qcur": None}, 0),
        ({}, 0),
    ):
        p = run(want_a, have, {"a": row}, {"a": 0.0}, now=1.0)
        if left:
            assert p.waiting == [f"a: draining, {left} session(s) left"], row
        else:
            assert p.drained == {"a": {"sessions": 0, "timed_out": False}}, row
    p = run(want_a, have, {}, {"a": 0.0}, now=1.0)  # no stats row at all
    assert p.drained == {"a": {"sessions": 0, "timed_out": False}}


def test_a_moved_address_gives_its_reason() -> None:
    p = run([wanted("a")], [state("a", addr="10.9.0.9")], sessions(a=0))
    assert described(p) == [
        ("set server web/a addr 10.1.0.1 port 80", "service address 10.9.0.9:80 -> 10.1.0.1:80")
    ]
    unchecked = state("b", checks=ServerState.CHECK_CONFIGURED)
    p = run([wanted("b")], [unchecked], sessions(b=0))
    assert described(p) == [("enable health web/b", "health check off")]


def view(weights: dict | None, *members: dict) -> dict:
    return {"members": list(members), "weights": {"weights": weights} if weights else weights}


def member(mid: str, n: int, draining: bool = False) -> dict:
    return {"id": mid, "service_addr": f"10.2.0.{n}:8{n}", "draining": draining}


def test_desired_median_of_the_known_weights_for_a_newcomer() -> None:
    members = [member(m, i) for i, m in enumerate("abcde", 1)]
    wants, skipped = desired(view({"a": 10, "b": 40, "c": 20, "d": 30}, *members), "weighted")
    assert skipped == []
    assert {m: w.weight for m, w in wants.items()} == {"a": 10, "b": 40, "c": 20, "d": 30, "e": 20}
    assert wants["c"] == Want("c", "10.2.0.3", 83, 20, False)
    wants, _ = desired(view({"a": 10, "b": 40, "c": 20}, *members[:4]), "weighted")
    assert wants["d"].weight == 20


def test_desired_takes_only_weights_in_range_and_not_booleans() -> None:
    table = {"a": 0, "b": 256, "c": 257, "d": -1, "e": True, "f": "10", "g": 7}
    members = [member(m, i) for i, m in enumerate("abcdefg", 1)]
    wants, _ = desired(view(table, *members), "weighted")
    # known: 0, 7, 256 -> median 7
    assert {m: w.weight for m, w in wants.items()} == {
        "a": 0,
        "b": 256,
        "c": 7,
        "d": 7,
        "e": 7,
        "f": 7,
        "g": 7,
    }


def test_desired_skips_rows_without_an_id_and_reads_draining() -> None:
    members = [member("a", 1, draining=True), {"id": "", "service_addr": "10.2.0.9:80"}]
    members += [{"service_addr": "10.2.0.8:80"}, "junk", {"id": 5, "service_addr": " 10.2.0.5:85 "}]
    wants, skipped = desired(view(None, *members), "weighted")
    assert wants == {
        "a": Want("a", "10.2.0.1", 81, EQUAL_WEIGHT, True),
        "5": Want("5", "10.2.0.5", 85, EQUAL_WEIGHT, False),
    }
    assert skipped == []
    wants, _ = desired({"members": None, "weights": None}, "weighted")
    assert wants == {}
    wants, _ = desired({"members": [member("z", 3)]}, "leastconn")
    assert wants["z"].weight == EQUAL_WEIGHT and not wants["z"].drain


def test_new_members_added_together_get_distinct_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    from hafleet_agent.balancer import plan as plan_module

    monkeypatch.setattr(plan_module, "ID_SPAN", 3)  # ids 1000..1002: collisions are certain
    p = run([wanted("a"), wanted("b"), wanted("c")], [], {})
    ids = [a.command.split(" id ")[1].split()[0] for a in p.actions if a.command.startswith("add")]
    assert sorted(ids) == ["1000", "1001", "1002"]


def test_the_median_counts_weights_of_zero_and_256() -> None:
    members = [member(m, i) for i, m in enumerate("abcd", 1)]
    wants, _ = desired(view({"a": 0, "b": 0, "c": 10}, *members), "weighted")
    assert wants["d"].weight == 0  # known 0, 0, 10: the median is 0
    wants, _ = desired(view({"a": 256, "b": 256, "c": 10}, *members), "weighted")
    assert wants["d"].weight == 256
    wants, _ = desired(view({"a": 257, "b": 257, "c": 10}, *members), "weighted")
    assert {m: w.weight for m, w in wants.items()} == {"a": 10, "b": 10, "c": 10, "d": 10}


# ---- members out of service without leaving (service check, unreachable) -------------------


def member_row(mid: str, **fields: object) -> dict:
    return {"id": mid, "service_addr": f"10.1.0.{ord(mid[0]) % 200}:80", **fields}


def test_desired_says_why_a_member_is_out_and_what_weight_it_keeps() -> None:
    view = {
        "members": [
            member_row("a"),
            member_row("b", service_healthy=False),
            member_row("c", reachable=False),
            member_row("d", service_healthy=True, reachable=True),
            member_row("e", service_healthy=False, reachable=False),
        ],
        "weights": {"weights": {m: 100 for m in "abcde"}},
    }
    wants, skipped = desired(view, "weighted")
    assert not skipped
    got = {m: (w.out, w.weight) for m, w in wants.items()}
    assert got == {
        "a": ("", 100),
        "b": ("its service check fails", 0),
        "c": ("the leader cannot reach it", 100),  # back with its share when it answers
        "d": ("", 100),
        "e": ("its service check fails", 0),
    }


def out_want(name: str, why: str, weight: int = 10) -> Want:
    return Want(name, "10.1.0.1", 80, weight, False, why)


def test_an_out_member_is_added_draining_with_its_reason() -> None:
    p = run([out_want("b", "the leader cannot reach it")], [], {})
    assert described(p)[-1] == ("set server web/b state drain", "the leader cannot reach it")
    assert "enable server web/b" not in cmds(p)
    assert not p.drained and not any(a.starts_drain for a in p.actions)


@pytest.mark.parametrize(
    ("admin", "expect"),
    [
        (0, [("set server web/b state drain", "its service check fails")]),
        (MAINT, [("set server web/b state drain", "its service check fails")]),
        (DRAIN, []),
    ],
)
def test_an_out_member_in_haproxy_is_drained_once(admin: int, expect: list) -> None:
    p = run([out_want("b", "its service check fails")], [state("b", admin=admin)], {})
    assert described(p) == expect
    assert not p.drained  # out of service is not a drain that ends in a report


def down_state(name: str, checks: int = RUNNING, op: int = 0) -> ServerState:
    """A server HAProxy's own health check holds down (op_state 0)."""
    return ServerState(BACKEND, server_id(name), name, "10.1.0.1", op, 0, 10, 10, checks, 80)


def back(have: ServerState, service_back: list[str]) -> list[tuple[str, str]]:
    p = plan(BACKEND, {"b": wanted("b")}, [have], {}, {}, 0.0, 30.0, service_back)
    return described(p)


def test_a_service_that_passes_again_is_set_up_at_once_only_when_haproxy_holds_it_down() -> None:
    up = ("set server web/b health up", "its service check passes again")
    assert back(down_state("b"), ["b"]) == [up]
    assert back(down_state("b"), []) == []  # not back this round: HAProxy decides
    assert back(down_state("b"), ["a"]) == []
    assert back(down_state("b", op=2), ["b"]) == []  # HAProxy already has it up
    # its check off: the planner turns it on first; no "health up" while HAProxy checks nothing
    assert up not in back(down_state("b", checks=ServerState.CHECK_CONFIGURED), ["b"])
