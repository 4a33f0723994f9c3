"""balancer/reports.py: the syncer's side of the KV protocol with the agents, round by round,
against an in-memory KV store (docs/balancer.md, "The protocol with the agents")."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from hafleet_agent.balancer.plan import Plan, Want
from hafleet_agent.balancer.reports import DrainReports
from hafleet_agent.keys import DRAINED_PREFIX, REGISTERED_KEY


class KV:
    """The agents' KV store as the syncer reaches it; ``refuse`` makes the next writes fail
    (a write that did not take, as with no leader)."""

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}
        self.writes: list[tuple[str, str]] = []
        self.refuse = 0

    async def write(self, key: str, value: Any = None, delete: bool = False) -> bool:
        self.writes.append(("DELETE" if delete else "PUT", key))
        if self.refuse:
            self.refuse -= 1
            return False
        if delete:
            self.items.pop(key, None)
        else:
            self.items[key] = value
        return True

    async def get_stale(self, key: str) -> Any:
        return {"key": key, "value": self.items[key]} if key in self.items else None


def reports(kv: KV) -> DrainReports:
    return DrainReports(kv.write, kv.get_stale, "app", "weighted", 12.5)


def view(*members: tuple[str, bool]) -> dict[str, Any]:
    return {"members": [{"id": mid, "draining": draining} for mid, draining in members]}


def want(name: str, drain: bool = False) -> Want:
    return Want(name=name, host="127.0.0.1", port=8080, weight=0 if drain else 100, drain=drain)


def one_round(r: DrainReports, v: dict[str, Any], wants: dict[str, Want], p: Plan) -> None:
    asyncio.run(r.report(v, wants, p))


def test_registers_once_with_what_the_agents_read() -> None:
    kv = KV()
    r = reports(kv)
    kv.refuse = 1  # the first try does not take: the next round tries again
    one_round(r, view(("n1", False)), {"n1": want("n1")}, Plan())
    assert REGISTERED_KEY not in kv.items and not r.registered

    one_round(r, view(("n1", False)), {"n1": want("n1")}, Plan())
    one_round(r, view(("n1", False)), {"n1": want("n1")}, Plan())

    assert [w for w in kv.writes if w[1] == REGISTERED_KEY] == [("PUT", REGISTERED_KEY)] * 2
    reg = kv.items[REGISTERED_KEY]
    assert {k: reg[k] for k in ("backend", "strategy", "drain_timeout_s", "pid")} == {
        "backend": "app",
        "strategy": "weighted",
        "drain_timeout_s": 12.5,
        "pid": os.getpid(),
    }
    assert isinstance(reg["host"], str) and reg["at"] > 0


def test_a_drained_member_is_reported_once_and_forgotten_when_it_left() -> None:
    kv = KV()
    r = reports(kv)
    v = view(("n1", False), ("n2", True))
    drained = Plan(drained={"n2": {"sessions": 0, "timed_out": True}})

    one_round(r, v, {"n1": want("n1"), "n2": want("n2", drain=True)}, drained)
    one_round(r, v, {"n1": want("n1"), "n2": want("n2", drain=True)}, drained)

    key = DRAINED_PREFIX + "n2"
    assert kv.writes.count(("PUT", key)) == 1
    assert kv.items[key]["backend"] == "app"
    assert kv.items[key]["timed_out"] is True
    assert r.reported == {"n2": True}

    one_round(r, view(("n1", False)), {"n1": want("n1")}, Plan())  # n2 was removed

    assert key not in kv.items
    assert r.reported == {} and r.to_forget == set()


def test_a_draining_member_without_a_server_has_nothing_to_drain() -> None:
    kv = KV()
    r = reports(kv)

    one_round(r, view(("n1", False), ("n3", True)), {"n1": want("n1")}, Plan())

    value = kv.items[DRAINED_PREFIX + "n3"]
    assert (value["sessions"], value["timed_out"], value["no_server"]) == (0, False, True)


def test_a_deleted_servers_mark_goes_once_its_member_left() -> None:
    kv = KV()
    r = reports(kv)
    kv.items[DRAINED_PREFIX + "n4"] = {"backend": "app"}
    r.forget("n4")

    one_round(r, view(("n1", False), ("n4", True)), {"n1": want("n1")}, Plan())
    assert r.to_forget == set()  # still a member: nothing to forget yet

    r.forget("n4")
    kv.refuse = 1  # the first delete does not take
    one_round(r, view(("n1", False)), {"n1": want("n1")}, Plan())
    assert DRAINED_PREFIX + "n4" in kv.items and r.to_forget == {"n4"}

    one_round(r, view(("n1", False)), {"n1": want("n1")}, Plan())
    assert DRAINED_PREFIX + "n4" not in kv.items and r.to_forget == set()


def test_a_stale_mark_of_a_member_in_service_is_deleted_once_a_run() -> None:
    kv = KV()
    r = reports(kv)
    key = DRAINED_PREFIX + "n1"
    kv.items[key] = {"backend": "app"}  # n1 left once and came back with the same id

    one_round(r, view(("n1", False)), {"n1": want("n1")}, Plan())
    assert key not in kv.items

    kv.items[key] = {"backend": "other"}
    one_round(r, view(("n1", False)), {"n1": want("n1")}, Plan())
    assert key in kv.items  # checked once a run, not every round
    assert kv.writes.count(("DELETE", key)) == 1

    # Draining again, then in service again: checked again.
    one_round(r, view(("n1", True)), {"n1": want("n1", drain=True)}, Plan())
    one_round(r, view(("n1", False)), {"n1": want("n1")}, Plan())
    assert key not in kv.items
