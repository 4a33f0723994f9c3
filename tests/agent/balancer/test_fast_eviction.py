"""Issue 18's acceptance in network namespaces: 5 agents (each in its own namespace with a
demo service), one HAProxy and its syncer in the root namespace, 40 req/s through HAProxy:

- a node's link taken down (the root end of its veth): the leader marks it unreachable
  (``health/unreachable/<id>``) and the syncer drains its server: 0 failed requests, and at
  most 2 % of them slower than 1 s (the issue's figure is a p99 of 0.5 s, 2.00 s before;
  this test asserts a looser bound that holds on a busy 2-core machine and prints the real
  figures); its link up again, it is back in service after the leader's hysteresis
  (``reachable_after_ms``) and within a bound;
- a node's service killed (its agent alive): its service check fails, weight 0 and its
  server drained within a bound; back with its share soon after the service returns.

Every condition is polled with a deadline. The figures (the benchmark's numbers) are printed
as ``issue18:`` lines (seen with ``pytest -s``). Needs root, iproute2, nft and haproxy; the
lab uses prefix ``hfsv`` and subnet 10.79.18.0/24, removed by exact name at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import wait_for
from balancer_lab import HAPROXY, HAProxy, LoadGen, Syncer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "chaos"))

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables (nft) is not installed"),
    pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed"),
]

PREFIX, SUBNET = "hfsv", "10.79.18"
SERVICE_PORT = 8000
RATE, DURATION = 40.0, 25.0
# Looser than the figures (0.5 s p99, drained within 1 s, back within 2 s): the
# figures are the benchmark's; these bounds hold on a loaded 2-core machine.
SLOW_S, SLOW_SHARE = 1.0, 0.02
DRAIN_BOUND_S = 2.5
RESTORE_BOUND_S = 4.0
BACK_BOUND_S = 6.0
CONFIG = {
    "service_check": "http:/health",
    "service_check_interval_ms": 200,
    "service_check_timeout_ms": 300,
    "service_check_rise": 2,
    "service_check_fall": 2,
    "unreachable_after_ms": 400,
    "reachable_after_ms": 2000,
}


def report(line: str) -> None:
    print(f"issue18: {line}", flush=True)


class SvcLab:
    def __init__(self, base: Path) -> None:
        from chaoslab import ChaosLab

        self.base = base
        self.lab = ChaosLab(5, prefix=PREFIX, subnet=SUBNET)
        self.services: dict[int, subprocess.Popen] = {}
        self.haproxy: HAProxy | None = None
        self.syncer: Syncer | None = None

    def __enter__(self) -> SvcLab:
        self.lab.__enter__()
        try:
            self.cluster = self.lab.cluster(self.base, "svc", tls=False)
            for i in range(1, 6):
                self.start_service(i)
            self.nodes = self.cluster.add_many(5, config={"service_port": SERVICE_PORT, **CONFIG})
            self.cluster.wait_agreed(timeout=60)
            bridge = self.lab.netlab.bridge_addr
            self.haproxy = HAProxy(self.cluster.dir, bridge, 18080).start()
            # The leader's API last: the syncer watches a follower first, the one the link
            # test cuts off (its watch hangs; the second watch must see the eviction).
            lead = self.cluster.leader()
            urls = [n.api_url for n in self.nodes if n.id != lead]
            urls += [n.api_url for n in self.nodes if n.id == lead]
            self.syncer = Syncer(
                self.cluster.dir, self.haproxy, urls, self.cluster.token_file, interval=1.0
            ).start()
            wait_for(lambda: len(self.haproxy.serving()) == 5, 60, "5 servers in service")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_service(self, i: int) -> None:
        addr = self.lab.netlab.addr(i)
        argv = [sys.executable, "-m", "hafleet_agent.demo_service", "--bind", addr]
        argv += ["--port", str(SERVICE_PORT), "--node-id", f"n{i}"]
        log = open(self.base / f"service-n{i}.log", "ab")  # noqa: SIM115 (closed with the proc)
        self.services[i] = self.lab.netlab.run_in(i, argv, stdout=log, stderr=log)
        log.close()

    def kill_service(self, i: int) -> None:
        proc = self.services[i]
        proc.kill()
        proc.wait(timeout=10)

    def link(self, i: int, up: bool) -> None:
        subprocess.run(
            ["ip", "link", "set", "dev", self.lab.port(i), "up" if up else "down"],
            check=True,
            capture_output=True,
            timeout=10,
        )

    def close(self) -> None:
        for i in range(1, 6):
            try:
                self.link(i, True)
            except Exception:  # noqa: S110 (the lab may be half made)
                pass
        if self.syncer is not None:
            self.syncer.close()
        if self.haproxy is not None:
            self.haproxy.close()
        self.lab.close()  # the agents, then run_in's processes by PID, then the names

    def leader(self) -> str:
        return self.cluster.leader()

    def answers(self, i: int) -> bool:
        import socket

        with socket.create_connection((self.lab.netlab.addr(i), SERVICE_PORT), timeout=1):
            return True

    def members(self) -> dict[str, dict[str, Any]]:
        body = self.cluster.ok(self.leader(), "GET", "/v1/members")
        rows = body["members"] if isinstance(body, dict) else body
        return {m["id"]: m for m in rows}

    def server(self, name: str) -> Any:
        return self.haproxy.servers().get(name)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SvcLab]:
    with SvcLab(tmp_path_factory.mktemp("issue18")) as lab:
        yield lab


def poll(pred: Callable[[], Any], timeout: float, what: str) -> float:
    """Seconds until ``pred()`` held (polling every 20 ms); fails after ``timeout``."""
    t0 = time.monotonic()
    wait_for(pred, timeout, what, interval=0.02)
    return time.monotonic() - t0


def p99(results: list[Any]) -> float:
    lat = sorted(r.end - r.start for r in results)
    return lat[max(0, int(len(lat) * 0.99) - 1)] if lat else 0.0


def victim(lab: SvcLab) -> tuple[int, str]:
    """The first follower: the agent the syncer watches first (its URLs put the leader's
    last), unless leadership moved since."""
    lead = lab.leader()
    i = next(n.index for n in lab.nodes if n.id != lead)
    return i, f"n{i}"


def test_link_down_is_evicted_without_failed_or_slow_requests(lab: SvcLab) -> None:
    i, name = victim(lab)
    load = LoadGen(lab.haproxy.url, RATE, DURATION).start()
    wait_for(lambda: len(load.results) >= 100, 15, "the load under way")
    lab.link(i, False)
    cut = time.monotonic()
    drained = poll(lambda: (s := lab.server(name)) is not None and s.drain, 10, f"{name} drained")
    report(f"link-down: {name} drained {drained:.2f}s after its link went down")
    wait_for(lambda: time.monotonic() - cut >= 8, 20, "8 s with the link down")
    lab.link(i, True)
    up = time.monotonic()
    back = poll(
        lambda: (s := lab.server(name)) is not None and not s.drain and not s.maint,
        20,
        f"{name} in service again",
    )
    report(f"link-down: {name} back in service {back:.2f}s after its link came up")
    assert back >= CONFIG["reachable_after_ms"] / 1000 * 0.9, "no hysteresis"
    # Back within the hysteresis plus a redial (back-off at most 2 s) and slack for a busy
    # machine: the connections the link cut are closed by TCP_USER_TIMEOUT and redialled,
    # not left to TCP's doubling retransmissions (then 7 s in about half the runs).
    assert back <= BACK_BOUND_S, f"back {back:.2f}s after the link came up"
    results = load.join()
    failed = load.failures()
    q = p99(results)
    report(
        f"link-down: requests={len(results)} failed={len(failed)} p99_s={q:.3f} "
        f"max_s={max(r.end - r.start for r in results):.3f}"
    )
    # Each failure: when it was sent (seconds after the link went down), its status, its error.
    assert not failed, [(round(r.start - cut, 3), r.status, r.error) for r in failed[:8]]
    # Before fast eviction ~6 s of its share (about 50 requests) waited the 2 s connect
    # timeout; now only those sent before the drain (a few) do. Bounded loosely (2 %).
    slow = [r for r in results if r.end - r.start > SLOW_S]
    assert len(slow) <= SLOW_SHARE * len(results), f"{len(slow)} requests over {SLOW_S}s, p99 {q}"
    assert time.monotonic() - up < 60


def test_a_killed_service_gets_weight_0_and_is_drained_then_restored(lab: SvcLab) -> None:
    i, name = victim(lab)
    poll(lambda: lab.members()[name]["reachable"], 30, f"{name} reachable")
    poll(
        lambda: (s := lab.server(name)) is not None and not s.drain and s.uweight > 0,
        30,
        f"{name} in service",
    )
    load = LoadGen(lab.haproxy.url, RATE, DURATION).start()
    wait_for(lambda: len(load.results) >= 100, 15, "the load under way")
    lab.kill_service(i)
    drained = poll(
        lambda: (s := lab.server(name)) is not None and s.drain and s.uweight == 0,
        DRAIN_BOUND_S,
        f"{name} drained with weight 0",
    )
    weight0 = poll(lambda: lab.members()[name]["weight"] == 0, 5, f"{name} weight 0 committed")
    m = lab.members()[name]
    assert m["service_healthy"] is False and m["healthy"] is True, m
    report(f"service-kill: {name} drained with weight 0 in HAProxy {drained:.2f}s after the kill")
    lab.start_service(i)
    answered = poll(lambda: lab.answers(i), 15, f"{name}'s service answers again")
    restored = poll(
        lambda: (
            (s := lab.server(name)) is not None
            and not s.drain
            and s.uweight > 0
            and s.op_state == 2
        ),
        RESTORE_BOUND_S,
        f"{name} restored",
    )
    report(
        f"service-kill: {name} restored {restored:.2f}s after its service answered again "
        f"({answered:.2f}s after its start)"
    )
    poll(lambda: (lab.members()[name]["weight"] or 0) > 0, 10, f"{name} has a share again")
    results = load.join()
    failed = load.failures()
    report(
        f"service-kill: requests={len(results)} failed={len(failed)} p99_s={p99(results):.3f} "
        f"weight0_committed_s<={drained + weight0:.2f}"
    )
    assert not failed, failed[:5]
