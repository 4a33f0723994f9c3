"""A flood of mDNS announcements must not keep real peers out for good (in process).

These tests feed ``Discovery`` the events zeroconf would (``_on_service_state_change``) and
stand in for zeroconf's resolver (``AsyncServiceInfo``): a name of ``FakeNet.records`` is
in the cache (its announcement carried SRV, TXT and A, as a peer's does) unless it is in
``FakeNet.query_only``, where it takes a query that is answered after QUERY_S; any other
name never resolves (the resolver waits out its timeout). No packet is sent; no root.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from zeroconf import ServiceStateChange

import hafleet_agent.discovery as discovery_mod
from hafleet_agent.discovery import MAX_RESOLVING, SERVICE_TYPE, Discovery
from hafleet_agent.node import bootstrap as bootstrap_mod


def _txt(node_id: str, cluster: str = "prod") -> dict[bytes, bytes | None]:
    return {
        b"cluster": cluster.encode(),
        b"cid": b"",
        b"id": node_id.encode(),
        b"raft": b"10.0.0.7:7400",
        b"api": b"10.0.0.7:7480",
        b"fresh": b"1",
        b"v": b"1",
    }


def name_of(label: str) -> str:
    return f"{label}.{SERVICE_TYPE}"


class FakeNet:
    """What the fake resolver answers: service name -> TXT; other names never resolve."""

    def __init__(self) -> None:
        self.records: dict[str, dict[bytes, bytes | None]] = {}
        self.query_only: set[str] = set()
        self.requests = 0


QUERY_S = 0.05


NET = FakeNet()


class FakeServiceInfo:
    def __init__(self, service_type: str, name: str) -> None:
        self.name = name
        self.properties: dict[bytes, bytes | None] = {}

    def load_from_cache(self, zc: Any, now: float | None = None) -> bool:
        txt = NET.records.get(self.name)
        if txt is None or self.name in NET.query_only:
            return False
        self.properties = txt
        return True

    async def async_request(self, zc: Any, timeout_ms: float, *args: Any) -> bool:
        NET.requests += 1
        if self.load_from_cache(zc):
            return True
        txt = NET.records.get(self.name)
        if txt is None or timeout_ms / 1000 < QUERY_S:
            await asyncio.sleep(max(0.0, timeout_ms / 1000))
            return False
        await asyncio.sleep(QUERY_S)
        self.properties = txt
        return True

    def parsed_addresses(self, *args: Any) -> list[str]:
        return ["10.0.0.7"]


@pytest.fixture(autouse=True)
def fake_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNet]:
    monkeypatch.setattr(discovery_mod, "AsyncServiceInfo", FakeServiceInfo)
    NET.records.clear()
    NET.query_only.clear()
    NET.requests = 0
    yield NET


class Running:
    """A Discovery that runs as if started: zeroconf replaced by a stand-in whose cache
    holds the PTR records of every announced name."""

    def __init__(self, **kwargs: Any) -> None:
        defaults: dict[str, Any] = {
            "node_id": "n1",
            "cluster": "prod",
            "raft_addr": "10.0.0.5:7400",
            "api_addr": "10.0.0.5:7480",
            "interfaces": ["10.0.0.5"],
        }
        if "proven" not in inspect.signature(Discovery).parameters:  # (before the fix)
            kwargs.pop("proven", None)
        self.d = Discovery(**(defaults | kwargs))
        self.announced: dict[str, None] = {}
        cache = SimpleNamespace(async_all_by_details=self._ptrs)
        self.d._aiozc = SimpleNamespace(zeroconf=SimpleNamespace(cache=cache))  # type: ignore[assignment]
        tick = getattr(self.d, "_tick", None)  # the periodic retries (absent before the fix)
        self.ticker = asyncio.get_running_loop().create_task(tick()) if tick else None

    def _ptrs(self, name: str, type_: int, class_: int) -> list[Any]:
        return [SimpleNamespace(alias=alias) for alias in self.announced]

    def announce(
        self, label: str, txt: dict[bytes, bytes | None] | None = None, *, cached: bool = True
    ) -> None:
        name = name_of(label)
        if txt is not None:
            NET.records[name] = txt
        if not cached:
            NET.query_only.add(name)
        self.announced[name] = None
        self.d._on_service_state_change(None, SERVICE_TYPE, name, ServiceStateChange.Added)  # type: ignore[arg-type]

    def withdraw(self, label: str) -> None:
        name = name_of(label)
        self.announced.pop(name, None)
        self.d._on_service_state_change(None, SERVICE_TYPE, name, ServiceStateChange.Removed)  # type: ignore[arg-type]

    async def until(self, what: Callable[[], bool], timeout: float) -> float:
        """Seconds until ``what()`` holds; TimeoutError after ``timeout``."""
        start = time.monotonic()
        async with asyncio.timeout(timeout):
            while not what():
                await asyncio.sleep(0.02)
        return time.monotonic() - start

    async def close(self) -> None:
        self.d._closing = True  # (stop() would close the stand-in: cancel the tasks instead)
        tasks = [*self.d._resolving.values(), *([self.ticker] if self.ticker else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _bounded(d: Discovery) -> None:
    """Every structure of the discovery stays within its bound."""
    assert len(d._peers) <= d.max_peers and len(d._names) <= d.max_peers
    assert len(d._resolving) <= MAX_RESOLVING
    assert len(d.ignored) <= discovery_mod.MAX_IGNORED
    queue = getattr(d, "_queue", None)
    if queue is not None:
        assert len(queue.waiting) <= queue.max_waiting
        assert all(len(later.due) <= later.limit for later in queue.later)


# --- 1. a full table of fakes ---------------------------------------------------------------


def test_a_full_table_of_fakes_does_not_keep_a_real_peer_out() -> None:
    """300 fakes fill the table (256) before the real peer announces itself: it still gets
    in within a bound (the oldest unproven fake makes room once its grace is over), and once
    it proved the key no later flood displaces it."""

    async def main() -> tuple[float, bool]:
        proven: set[str] = set()
        r = Running(proven=lambda nid: nid in proven)
        try:
            for i in range(300):
                r.announce(f"fake-{i}", _txt(f"fake-{i}"))
            await r.until(lambda: len(r.d.peers) == 256, 5)
            r.announce("n2", _txt("n2"))
            took = await r.until(lambda: "n2" in r.d.peers, 10)
            proven.add("n2")  # the node said hello; n2 proved the cluster key
            for i in range(300, 1300):  # a further flood of new names
                r.announce(f"fake-{i}", _txt(f"fake-{i}"))
            await asyncio.sleep(4)  # past the grace of the fakes admitted meanwhile
            _bounded(r.d)
            return took, "n2" in r.d.peers
        finally:
            await r.close()

    took, kept = asyncio.run(main())
    assert took < 6.0, took
    assert kept


def test_a_real_peer_refused_by_a_full_table_is_retried_when_fakes_withdraw() -> None:
    """The table is full of peers that may not be displaced (here: all proven); the real
    peer is refused, and taken as soon as some withdraw (goodbye, TTL 0)."""

    async def main() -> tuple[str, float]:
        r = Running(proven=lambda nid: True)
        try:
            for i in range(256):
                r.announce(f"fake-{i}", _txt(f"fake-{i}"))
            await r.until(lambda: len(r.d.peers) == 256, 5)
            r.announce("n2", _txt("n2"))
            await r.until(lambda: name_of("n2") in r.d.ignored, 5)
            why = r.d.ignored[name_of("n2")]
            await asyncio.sleep(1.5)
            assert "n2" not in r.d.peers  # nothing may be displaced
            for i in range(100):
                r.withdraw(f"fake-{i}")
            took = await r.until(lambda: "n2" in r.d.peers, 10)
            _bounded(r.d)
            return why, took
        finally:
            await r.close()

    why, took = asyncio.run(main())
    assert "peer table full" in why
    assert took < 3.0, took


# --- 2. names that never resolve ------------------------------------------------------------


def test_a_long_queue_of_unresolvable_names_does_not_hold_a_real_peer_up() -> None:
    """1,200 names whose SRV/TXT never come (each would hold a slot for 3 s), then a real
    peer whose records take a query: it is resolved within a bound, not after (or instead
    of) the whole queue."""

    async def main() -> float:
        r = Running(resolve_timeout=3.0)
        try:
            for i in range(1200):
                r.announce(f"ghost-{i}")
            r.announce("n2", _txt("n2"), cached=False)
            took = await r.until(lambda: "n2" in r.d.peers, 10)
            _bounded(r.d)
            return took
        finally:
            await r.close()

    took = asyncio.run(main())
    assert took < 2.0, took


def test_a_real_peer_announced_in_full_resolves_at_once_from_the_cache() -> None:
    """Behind 1,200 names that never resolve, a peer whose announcement carried its records
    (every zeroconf registration's does) is taken from the cache without waiting for a slot."""

    async def main() -> float:
        r = Running(resolve_timeout=3.0)
        try:
            for i in range(1200):
                r.announce(f"ghost-{i}")
            r.announce("n2", _txt("n2"))
            return await r.until(lambda: "n2" in r.d.peers, 10)
        finally:
            await r.close()

    assert asyncio.run(main()) < 0.5


def test_a_real_peer_pushed_out_of_a_full_queue_is_tried_again() -> None:
    """The real peer (its records take a query) waits for a slot; 1,500 unresolvable names
    announced after it push it out of the waiting queue (bounded): it is put back and
    resolved within a bound, shorter than one full resolve timeout of the names before it."""

    async def main() -> float:
        r = Running(resolve_timeout=5.0)
        try:
            for i in range(40):
                r.announce(f"ghost-{i}")
            r.announce("n2", _txt("n2"), cached=False)
            for i in range(40, 1540):
                r.announce(f"ghost-{i}")
            took = await r.until(lambda: "n2" in r.d.peers, 15)
            _bounded(r.d)
            return took
        finally:
            await r.close()

    took = asyncio.run(main())
    assert took < 4.0, took


# --- 3. the duplicate-id warning ------------------------------------------------------------


def test_many_announcements_of_one_node_id_log_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """3,000 services that all claim node id n2 (as a flood of crafted packets would):
    the latest still wins, but the warning is logged once per node id and interval."""

    async def main() -> str | None:
        r = Running()
        try:
            with caplog.at_level(logging.WARNING, logger="hafleet_agent.discovery"):
                for i in range(3000):
                    r.announce(f"claim-{i}", _txt("n2"))
                    await asyncio.sleep(0)
                await r.until(lambda: not r.d._resolving, 5)
            peer = r.d.peers.get("n2")
            return peer.service_name if peer else None
        finally:
            await r.close()

    latest = asyncio.run(main())
    assert latest == name_of("claim-2999")
    lines = [rec for rec in caplog.records if "announced by both" in rec.getMessage()]
    assert len(lines) == 1, len(lines)


# --- 4. the bootstrap wait line -------------------------------------------------------------


def test_the_bootstrap_wait_is_logged_once_per_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The founding loop runs every 0.25-0.5 s; "waiting for ... fresh nodes" is logged once
    per 5 s, not on every round of the second whose number divides by 5."""
    clock = [1000.0]
    monkeypatch.setattr(bootstrap_mod, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    cfg = SimpleNamespace(bootstrap_expect=3, cluster="prod", join=[], raft_addr="10.0.0.5:7400")
    nothing: Any = lambda *args, **kwargs: None  # noqa: E731
    b = bootstrap_mod.Bootstrap(
        "n1",
        cfg,  # type: ignore[arg-type]
        random.Random(1),
        {},
        get_peer=nothing,
        raw=nothing,
        cluster_id=nothing,
        adopt_cluster=nothing,
        in_config=nothing,
        is_leader=nothing,
        my_info=nothing,
        send=nothing,
        queued=nothing,
        addr_of=nothing,
        add_member=nothing,
        spawn=nothing,
        wake=nothing,
    )
    with caplog.at_level(logging.INFO, logger="hafleet.agent"):
        while clock[0] < 1020.0:  # 20 s of the loop, a round every 0.3 s
            b._maybe_found()
            clock[0] += 0.3
    lines = [rec for rec in caplog.records if "fresh nodes" in rec.getMessage()]
    assert len(lines) == 4, len(lines)  # at 1000, 1005, 1010, 1015
