"""Two HAProxies, each with its own syncer, on one cluster (loopback): a removal waits until
*both* have drained the member (the slower one holds sessions to it), and a syncer that stops
cleanly deregisters at once, so it holds no later removal up."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest
from agents import wait_for
from balancer_lab import _one, _session

from hafleet_agent.keys import REGISTERED_PREFIX

FORM = 40.0
CONVERGE = 20.0
SLOW_MS = 4000


def registered(lab, node: str) -> set[str]:
    body = lab.cluster.ok(node, "GET", f"/v1/kv?prefix={REGISTERED_PREFIX}")
    return {i["key"][len(REGISTERED_PREFIX) :] for i in body["items"]}


def slow_requests(url: str, n: int) -> tuple[threading.Thread, list]:
    """``n`` slow requests at once through one HAProxy, in a thread."""
    results: list = []

    async def run() -> None:
        async with _session(n) as session:
            results.extend(
                await asyncio.gather(*(_one(session, url, f"/slow?ms={SLOW_MS}") for _ in range(n)))
            )

    t = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    t.start()
    return t, results


@pytest.mark.timeout(150)
def test_a_removal_waits_for_both_balancers_and_a_stopped_one_deregisters(make_lab) -> None:
    lab = make_lab()
    lab.add_agents(3)
    lab.cluster.wait_agreed(timeout=FORM)
    hp_a = lab.haproxy("weighted", backend="app")
    hp_b = lab.haproxy("weighted", backend="web")
    sync_a = lab.syncer(hp_a, drain_timeout=30.0)
    sync_b = lab.syncer(hp_b, drain_timeout=30.0)
    for hp in (hp_a, hp_b):
        lab.wait_for(lambda hp=hp: len(hp.serving()) == 3, CONVERGE, "3 servers serving")
    leader = lab.cluster.leader()
    lab.wait_for(lambda: len(registered(lab, leader)) == 2, 15, "both balancers registered")
    victim = lab.cluster.followers()[0]

    # Slow requests through B only; some of them land on the victim.
    thread, results = slow_requests(hp_b.url, 12)
    lab.wait_for(
        lambda: any(
            int(line.split(",")[4] or 0) > 0
            for line in hp_b.command("show stat").splitlines()
            if line.startswith(f"web,{victim},")
        ),
        10,
        f"B holds sessions to {victim}",
    )
    t0 = time.monotonic()
    lab.cluster.expect_exit(victim)
    answer = lab.cluster.ok(leader, "DELETE", f"/v1/members/{victim}?drain_timeout=30s", timeout=45)
    t_removed = time.monotonic()
    assert answer["removed"] is True
    thread.join(SLOW_MS / 1000 + 30)
    assert results and all(r.ok for r in results), [r for r in results if not r.ok][:3]
    held = [r for r in results if r.node == victim]
    assert held, f"no slow request went to {victim}"
    # A had nothing to drain and reported at once; the removal still waited for B, whose
    # sessions to the victim ended only when its slow requests did.
    assert t_removed >= max(r.end for r in held) - 0.5, (t_removed - t0, [r.end - t0 for r in held])
    assert t_removed - t0 < 25, "the removal waited out its timeout"
    # Each syncer logs its report once the agent answered the write, which may be after
    # the removal it let go on: wait for the lines.
    for name, sync in (("A", sync_a), ("B", sync_b)):
        lab.wait_for(
            lambda sync=sync: f"reported {victim} drained" in sync.log(), 10, f"{name}'s report"
        )

    # B stops cleanly: its registration goes at once.
    bid_b = next(b for b in registered(lab, leader) if b not in sync_a.log())
    sync_b.proc.send_signal(signal.SIGTERM)
    sync_b.proc.wait(timeout=15)
    assert sync_b.proc.returncode == 0
    wait_for(lambda: bid_b not in registered(lab, leader), 10, "B deregistered")
    assert len(registered(lab, leader)) == 1
