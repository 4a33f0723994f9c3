"""A crash at any point of a group commit loses no acknowledged write (issue 17).

Real agents on real files: crash_agent.py cuts the power in the middle of a group commit -
the batch written to ``raft.log``, its fsync not yet done: what it would have made durable is
thrown away (a torn prefix may survive), then the process SIGKILLs itself. Clients write all
along and keep the keys whose write was acknowledged (200). After a restart every one of them
must be there, and the log must open cleanly (a torn tail is cut, never acknowledged data)."""

from __future__ import annotations

import http.client
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Cluster, Node, agent_command

from hafleet_agent.wal import DiskStorage

CRASH = Path(__file__).with_name("crash_agent.py")
MakeCluster = Callable[..., Cluster]


def _crashing(node: Node, kill_at: int, seed: int, mode: str = "power") -> list[str]:
    """Make ``node`` run crash_agent.py; returns its normal argv (to restart it with)."""
    normal = list(node.argv)
    node.argv = [sys.executable, str(CRASH), str(kill_at), str(seed), mode]
    node.argv += normal[len(agent_command()) :]
    return normal


def _write_until(c: Cluster, nodes: list[Node], done: Callable[[], bool]) -> dict[str, int]:
    """Eight clients PUT fresh keys through ``nodes`` until ``done()``; the acknowledged ones."""
    acked: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + 90

    def worker(w: int) -> None:
        k = 0
        while not done() and time.monotonic() < deadline:
            k += 1
            key = f"gc/w{w}-{k}"
            node = nodes[(w + k) % len(nodes)]
            try:
                status, _ = c.api(node, "PUT", f"/v1/kv/{key}", {"value": k}, timeout=5.0)
            except (OSError, http.client.HTTPException):
                status = 0  # the agent died under the request: not acknowledged
            if status == 200:
                with lock:
                    acked[key] = k

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert done(), "the agents did not crash within 90 s"
    return acked


def _check_log(node: Node, acked: dict[str, int]) -> int:
    """Open the data directory as the agent will (recovering a torn tail) and check the log
    holds every acknowledged write; returns the bytes cut."""
    with DiskStorage.open(node.data_dir) as st:
        blob = b"\n".join(e.data for e in st.entries)
        cut = st.report.truncated_bytes
    missing = [k for k in acked if f'"{k}"'.encode() not in blob]
    assert not missing, f"{node.id}: {len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    return cut


def _check_served(c: Cluster, node: Node, acked: dict[str, int]) -> None:
    for key, value in acked.items():
        status, item = c.get(node, key)
        assert status == 200 and item["value"] == value, (key, value, status, item)


AIO = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux AIO syncs")


@pytest.mark.parametrize(
    ("kill_at", "seed", "mode"),
    [(25, 1, "power"), (120, 2, "power"), pytest.param(70, 4, "aio-power", marks=AIO)],
)
def test_a_single_node_that_loses_power_mid_group_commit_keeps_every_acknowledged_write(
    make_cluster: MakeCluster, kill_at: int, seed: int, mode: str
) -> None:
    """One member: a write commits on the leader's own fsync alone, the strictest case; its
    sync in the writer thread, or (aio-power) handed to Linux AIO."""
    c = make_cluster()
    n1 = c.add(bootstrap_expect=1, start=False)
    normal = _crashing(n1, kill_at, seed, mode)
    c.start(n1)
    c.expect_exit(n1)
    c.wait_agreed([n1])
    acked = _write_until(c, [n1], lambda: n1.proc is not None and n1.proc.poll() is not None)
    assert n1.proc is not None and n1.proc.returncode == -9, n1.report()
    assert "power at log sync" in n1.log(), n1.report()
    assert ("through Linux AIO" in n1.log()) == (mode == "aio-power"), n1.report()
    assert acked, "nothing was acknowledged before the crash"
    _check_log(n1, acked)
    n1.argv = normal
    c.restart(n1)
    c.wait_agreed([n1])
    _check_served(c, n1, acked)


def test_a_cluster_whose_members_lose_power_mid_group_commit_keeps_every_acknowledged_write(
    make_cluster: MakeCluster,
) -> None:
    """Three members, each cut at its own point: the leader sends its appends before its own
    fsync, so its copy may be the one lost; what was acknowledged was durable on a majority."""
    c = make_cluster()
    nodes = c.add_many(3, bootstrap_expect=3, start=False)
    normals = [_crashing(n, 60 + 35 * i, 10 + i) for i, n in enumerate(nodes)]
    for n in nodes:
        c.start(n)
        c.expect_exit(n)
    c.wait_agreed()

    def dead() -> int:
        return sum(1 for n in nodes if n.proc is not None and n.proc.poll() is not None)

    acked = _write_until(c, nodes, lambda: dead() >= 2)  # no quorum left: nothing commits
    for n in nodes:
        if n.running():
            c.kill9(n)
    assert "power at log sync" in "".join(n.log() for n in nodes)
    assert acked, "nothing was acknowledged before the crashes"
    for n, normal in zip(nodes, normals, strict=True):
        n.argv = normal
        c.restart(n)
    c.wait_agreed()
    _check_served(c, c.leader(), acked)


@pytest.mark.parametrize("mode", ["eio", pytest.param("aio-eio", marks=AIO)])
def test_a_node_whose_group_commit_fsync_fails_stops_and_keeps_every_acknowledged_write(
    make_cluster: MakeCluster, mode: str
) -> None:
    """The log's sync fails (EIO, the batch dropped as the kernel may drop it; in the writer
    thread, or reported by the AIO completion): the agent answers nothing of that batch,
    stops by itself (exit 1), and a restart finds every acknowledged write."""
    c = make_cluster()
    n1 = c.add(bootstrap_expect=1, start=False)
    normal = _crashing(n1, 40, 3, mode=mode)
    c.start(n1)
    c.expect_exit(n1)
    c.wait_agreed([n1])
    acked = _write_until(c, [n1], lambda: n1.proc is not None and n1.proc.poll() is not None)
    assert n1.proc is not None and n1.proc.returncode == 1, n1.report()
    assert "injected fsync failure" in n1.log(), n1.report()
    assert ("through Linux AIO" in n1.log()) == (mode == "aio-eio"), n1.report()
    assert acked, "nothing was acknowledged before the failure"
    _check_log(n1, acked)
    n1.argv = normal
    c.restart(n1)
    c.wait_agreed([n1])
    _check_served(c, n1, acked)


def test_a_follower_whose_log_sync_fails_sends_none_of_the_answers_it_queued(
    make_cluster: MakeCluster,
) -> None:
    """A follower queues its append answers while its log write is under way (the device
    takes the data meanwhile: node/walwriter.py's ``write_inline``); when the sync then fails
    (EIO), they are taken back unwritten. The follower stops by itself (exit 1) with no append
    answer written after the failed sync, and the two others go on with every acknowledged
    write."""
    c = make_cluster()
    c.add_many(3, bootstrap_expect=3)
    c.wait_agreed()
    leader = c.node(c.leader())
    follower = c.node(c.followers()[0])
    c.term(follower)
    assert c.wait_exit(follower) == 0, follower.report()
    normal = _crashing(follower, 30, 7, mode="eio")
    c.restart(follower)
    c.expect_exit(follower)
    c.wait_agreed()
    acked = _write_until(
        c, [leader], lambda: follower.proc is not None and follower.proc.poll() is not None
    )
    assert follower.proc is not None and follower.proc.returncode == 1, follower.report()
    text = follower.log()
    assert "injected fsync failure" in text, follower.report()
    queued = re.search(r"crash_agent: (\d+) append answer\(s\) queued at the sync", text)
    assert queued is not None and int(queued.group(1)) >= 1, follower.report()
    assert "left after the failed sync" not in text, follower.report()
    assert acked, "nothing was acknowledged"
    _check_served(c, leader, acked)
    follower.argv = normal
