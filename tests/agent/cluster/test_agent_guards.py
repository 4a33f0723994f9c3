"""One agent in this process (issue 13, "No input kills the group"): what an authenticated
peer may send it, what a failing background task does, how big its tables may grow.

The agent runs on 127.0.X.1 of a leased loopback /24 (harness.py), founds a cluster of one
(``bootstrap_expect = 1``) and is handed frames through ``inbox.on_frame``, the
transport's callback, as if an authenticated peer had sent them. ``exit_later`` (the
fail-stop's last resort, which ends the process) is replaced by an inert timer: this process
is pytest.
"""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from harness import lease_subnet

import hafleet_agent.node.node as node_mod
import hafleet_agent.node.tasks as tasks_mod
from hafleet_agent.codec import MAX_TERM_JUMP, encode_message
from hafleet_agent.config import AgentConfig
from hafleet_agent.node.node import Node
from hafleet_agent.node.peers import MAX_PEERS, PEER_EXPIRE_S
from hafleet_agent.raft.types import Entry, Message, MessageType
from hafleet_agent.state import encode_command
from hafleet_agent.transport import PeerInfo
from hafleet_agent.wal import StorageError

KEY = b"k" * 32
WAIT = 20.0  # bound on every wait; generous for a busy machine


class ReadingFails(OSError):
    pass


class FakeSource:
    """A MetricsSource with fixed readings whose calls number ``fail`` raise EMFILE (psutil
    when the descriptors are used up). One reading (``Sampler.sample``) is one call."""

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.calls = 0
        self.failed_at: list[float] = []

    def virtual_memory(self) -> Any:
        n, self.calls = self.calls, self.calls + 1
        if n in self.fail:
            self.failed_at.append(time.monotonic())
            raise ReadingFails(errno.EMFILE, "Too many open files: '/proc/meminfo'")
        return SimpleNamespace(total=8 << 30, available=4 << 30)

    def cpu_count(self) -> int:
        return 4

    def cpu_percent(self, interval: float | None = None) -> float:
        return 25.0

    def getloadavg(self) -> tuple[float, float, float]:
        return (0.5, 0.5, 0.5)

    def swap_memory(self) -> Any:
        return SimpleNamespace(percent=0.0)

    def disk_usage(self, path: str) -> Any:
        return SimpleNamespace(percent=10.0, free=1 << 30)

    def net_io_counters(self) -> Any:
        return SimpleNamespace(bytes_sent=0, bytes_recv=0)

    def process_rss(self) -> int:
        return 50 << 20

    def uptime(self) -> float:
        return 1000.0


@pytest.fixture(autouse=True)
def no_process_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """fail() arms a timer that exits the process: an inert one here."""
    monkeypatch.setattr(node_mod, "exit_later", lambda seconds: threading.Timer(seconds, print))


async def until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.02)
    return result


async def holds(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), f"{what} stopped holding"
        await asyncio.sleep(0.02)
    assert predicate(), f"{what} stopped holding"


def run_agent(
    tmp_path: Path,
    body: Callable[[Node], Awaitable[None]],
    source: Any = None,
    *,
    lead: bool = True,
) -> Node:
    """Start a one-node cluster, wait until it leads (unless ``lead`` is false), run
    ``body``, stop it."""
    lease = lease_subnet(count=1)
    try:
        cfg = AgentConfig(
            node_id="g1",
            cluster="guard",
            bind=f"127.0.{lease.x}.1",
            data_dir=str(tmp_path / "g1"),
            bootstrap_expect=1,
            mdns=False,
            heartbeat_ms=50,
            election_timeout_ms=300,
        )
        agent = Node(cfg, KEY, b"t" * 32, metrics_source=source)

        async def main() -> None:
            await agent.start()
            try:
                if lead:
                    await until(agent.is_leader, "the agent to found its cluster and lead")
                await body(agent)
            finally:
                await agent.stop(handover=False)

        asyncio.run(main())
        return agent
    finally:
        lease.release()


def peer_info(node_id: str, cid: str | None, port: int = 7400) -> PeerInfo:
    return PeerInfo(node_id, "guard", cid, f"127.0.0.9:{port}", "127.0.0.9:40000", False)


def info(node_id: str) -> dict[str, Any]:
    return {"id": node_id, "raft_addr": "127.0.0.9:7400", "api_addr": "127.0.0.9:7480"}


# --- frames ----------------------------------------------------------------------------------


def test_only_the_listed_frame_kinds_reach_a_handler(tmp_path: Path) -> None:
    """``{"k": "frame"}`` used to recurse into the dispatcher, ``{"k": "soft_state"}`` to
    overwrite the leader bookkeeping: kinds outside the table are dropped and counted."""

    async def body(agent: Node) -> None:
        assert agent.raw is not None
        cid = agent.cluster_id
        evil = peer_info("evil", cid)
        before = (agent.last_leader, agent.leader_since, agent.raw.raft.term)
        kinds: list[Any] = ["frame", "soft_state", "raft_frame", "task_done", "_on_frame"]
        kinds += ["start", "stop", "__init__", "pump", "adopt_cluster", "", "x" * 5000, 7, None]
        for kind in kinds:
            agent.inbox.on_frame(evil, {"k": kind, "cid": cid, "state": 1, "lead": "evil"})
        for garbage in ([], "hello", b"\x00", 3, {}, {"cid": cid}):
            agent.inbox.on_frame(evil, garbage)
        assert agent.frames_dropped.get("unknown kind") == len(kinds) + 2
        assert agent.frames_dropped.get("malformed frame") == 4
        assert (agent.last_leader, agent.leader_since, agent.raw.raft.term) == before
        assert agent.is_leader() and not agent._stop.is_set()

    run_agent(tmp_path, body)


def test_frames_with_bad_fields_are_dropped_and_change_nothing(tmp_path: Path) -> None:
    async def body(agent: Node) -> None:
        cid = agent.cluster_id
        evil = peer_info("evil", cid)
        good_metrics = {
            "timestamp": 1.0,
            "cpu_count": 4,
            "cpu_percent": 10.0,
            "load1": 0.1,
            "load5": 0.1,
            "load15": 0.1,
            "mem_total": 100,
            "mem_available": 50,
            "mem_percent": 50.0,
            "swap_percent": 0.0,
            "disk_percent": None,
            "disk_free": None,
            "net_sent_rate": None,
            "net_recv_rate": None,
            "process_rss": 1,
            "uptime": 1.0,
        }
        bad: list[tuple[str, dict[str, Any]]] = [
            ("bad hello", {"k": "hello", "info": "me"}),
            ("bad hello", {"k": "hello", "info": {**info("evil"), "raft_addr": "no port"}}),
            ("bad hello", {"k": "hello", "info": {**info("evil"), "api_addr": "h:" + "9" * 400}}),
            ("bad hello", {"k": "hello", "info": info("someone-else")}),
            ("bad hello", {"k": "hello", "cid": 12, "info": info("evil")}),
            ("bad hello", {"k": "hello", "cid": "a b", "info": info("evil")}),
            ("bad found_propose", {"k": "found_propose", "founder": "evil", "members": "x"}),
            (
                "bad found_propose",
                {
                    "k": "found_propose",
                    "founder": "evil",
                    "new_cid": "c1",
                    "members": [info("evil")] * (MAX_PEERS + 2),
                },
            ),
            (
                "bad found_propose",
                {"k": "found_propose", "founder": "evil", "new_cid": "c1", "members": [{}]},
            ),
            ("bad found_accept", {"k": "found_accept", "new_cid": ["c1"]}),
            ("bad join", {"k": "join", "info": {**info("evil"), "id": "bad id!"}}),
            ("bad join", {"k": "join", "info": {**info("evil"), "id": "x" * 64}}),
            ("bad join", {"k": "join"}),
            ("bad join_resp", {"k": "join_resp", "ok": "yes"}),
            ("bad join_resp", {"k": "join_resp", "ok": False, "error": {"x": 1}}),
            ("bad metrics", {"k": "metrics", "metrics": [1, 2]}),
            ("bad metrics", {"k": "metrics", "metrics": {**good_metrics, "cpu_count": "8"}}),
            ("bad metrics", {"k": "metrics", "metrics": {str(i): i for i in range(100)}}),
            ("bad metrics_table", {"k": "metrics_table", "table": [1]}),
            ("bad member_update", {"k": "member_update", "info": None}),
            ("bad member_update", {"k": "member_update", "info": info("g1")}),
            ("bad raft", {"k": "raft", "m": "text"}),
        ]
        for _why, frame in bad:
            agent.inbox.on_frame(evil, {"cid": cid, **frame})
        want: dict[str, int] = {}
        for why, _frame in bad:
            want[why] = want.get(why, 0) + 1
        assert agent.frames_dropped == want
        assert "someone-else" not in agent.peers and "evil" in agent.peers
        assert agent.peers["evil"].api_addr == ""  # no hello got through
        assert not agent.bootstrap.admitting and [m["id"] for m in agent.state.members()] == ["g1"]
        # A well-formed report, but from a node that is not a member: ignored.
        agent.inbox.on_frame(evil, {"k": "metrics", "cid": cid, "metrics": good_metrics})
        assert "evil" not in agent.reports
        assert not agent.frames_dropped.keys() - want.keys()
        assert agent.is_leader() and not agent._stop.is_set()

    run_agent(tmp_path, body)


def _raft(cid: str | None, **fields: Any) -> dict[str, Any]:
    m = Message(type=MessageType.HEARTBEAT, to="g1", frm="evil", **fields)
    return {"k": "raft", "cid": cid, "m": encode_message(m)}


def test_a_raft_term_far_ahead_is_refused(tmp_path: Path) -> None:
    """One authenticated frame with term 2**64-1 used to be adopted, and the next election
    (term + 1) no longer fit: every member that took it died, and again at each restart."""

    async def body(agent: Node) -> None:
        assert agent.raw is not None
        cid = agent.cluster_id
        evil = peer_info("evil", cid)
        ours = agent.raw.raft.term
        far = [
            _raft(cid, term=(1 << 64) - 1),
            _raft(cid, term=ours + MAX_TERM_JUMP + 1),
            _raft(cid, term=ours, log_term=(1 << 64) - 1),
            {
                "k": "raft",
                "cid": cid,
                "m": encode_message(
                    Message(
                        type=MessageType.APP,
                        to="g1",
                        frm="evil",
                        term=ours,
                        entries=(Entry(term=ours + (1 << 40), index=10**6),),
                    )
                ),
            },
        ]
        for frame in far:
            agent.inbox.on_frame(evil, frame)
        assert agent.raw.raft.term == ours
        assert sum(agent.frames_dropped.values()) == len(far)
        # It keeps leading through more than an election timeout: nothing was adopted.
        await holds(
            lambda: agent.is_leader() and agent.raw.raft.term == ours and not agent._stop.is_set(),
            1.0,
            "the agent leading at its own term",
        )
        # A plausible higher term still goes through to Raft (the leader steps down).
        agent.inbox.on_frame(evil, _raft(cid, term=ours + 1))
        assert agent.raw.raft.term == ours + 1

    run_agent(tmp_path, body)


# --- background tasks ------------------------------------------------------------------------


def test_a_failing_sampler_is_restarted_with_back_off_and_reports_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readings 2, 3 and 4 fail with EMFILE (the priming reading is 0): the sampler task
    dies three times, is started again after 0.1, 0.2, 0.4 s, and the agent reports again."""
    monkeypatch.setattr(tasks_mod, "RESTART_MIN_S", 0.1)
    monkeypatch.setattr(tasks_mod, "RESTART_MAX_S", 0.4)
    source = FakeSource(fail={2, 3, 4})

    async def body(agent: Node) -> None:
        await until(lambda: len(source.failed_at) == 3, "three failed readings")
        last_failure = source.failed_at[-1]
        await until(
            lambda: agent.reports.get("g1", (0.0,))[0] > last_failure,
            "a report after the last failure",
        )
        assert agent.task_failures == {"sampler": 3}
        gaps = [b - a for a, b in zip(source.failed_at, source.failed_at[1:], strict=False)]
        assert gaps[0] >= 0.1 and gaps[1] >= 0.2, gaps  # the back-off doubles
        assert agent.is_leader() and not agent._stop.is_set() and agent.exit_code == 0

    run_agent(tmp_path, body, source=source)


def test_a_storage_failure_still_stops_the_agent(tmp_path: Path) -> None:
    """The WAL path stays fail-stop: a failed save stops the agent with exit code 1."""

    async def body(agent: Node) -> None:
        assert agent.storage is not None

        def broken(*args: Any, **kwargs: Any) -> None:
            raise StorageError("fsync failed: EIO (test)")

        # a leader's save: written on the loop, synced through Linux AIO, or all in the
        # writer thread (node/walwriter.py)
        agent.storage.write_prepared = broken  # type: ignore[method-assign]
        agent.storage.write_unsynced = broken  # type: ignore[method-assign]
        write = asyncio.create_task(agent.write(encode_command("kv_put", key="a", value=1)))
        await asyncio.wait_for(agent.wait_stopped(), WAIT)
        assert agent.exit_code == 1 and "storage failed" in agent.exit_reason
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)

    run_agent(tmp_path, body)


def test_a_failed_log_sync_stops_the_agent_before_the_write_is_answered(tmp_path: Path) -> None:
    """A sync that reports an error (the AIO completion, or the thread's fdatasync) stops
    the agent with exit code 1; the write it held is never acknowledged."""

    async def body(agent: Node) -> None:
        assert agent.storage is not None

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "injected fdatasync failure")

        writer = agent.driver._writer
        assert writer is not None
        syncer = writer._syncer_on(asyncio.get_running_loop())
        if syncer is not None:  # Linux AIO: its completion reports the error
            loop = asyncio.get_running_loop()
            error = OSError(errno.EIO, "injected AIO fdatasync failure")
            syncer.fdatasync = lambda fd, done: loop.call_soon(done, error)  # type: ignore[method-assign]
        else:  # the thread's fdatasync
            agent.storage._fdatasync_fn = failing
        write = asyncio.create_task(agent.write(encode_command("kv_put", key="a", value=1)))
        await asyncio.wait_for(agent.wait_stopped(), WAIT)
        assert agent.exit_code == 1 and "storage failed" in agent.exit_reason
        assert "injected" in agent.exit_reason
        assert not write.done() or write.exception() is not None
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)

    run_agent(tmp_path, body)


def test_a_storage_error_in_a_restartable_task_is_not_retried(tmp_path: Path) -> None:
    class DiskGone(FakeSource):
        def virtual_memory(self) -> Any:
            raise StorageError("the data dir is gone (test)")

    async def body(agent: Node) -> None:
        await asyncio.wait_for(agent.wait_stopped(), WAIT)
        assert agent.exit_code == 1 and "sampler" in agent.exit_reason
        assert "sampler" not in agent.task_failures

    run_agent(tmp_path, body, source=DiskGone(fail=set()), lead=False)


# --- table sizes -----------------------------------------------------------------------------


def test_the_peer_table_is_capped_and_expires(tmp_path: Path) -> None:
    async def body(agent: Node) -> None:
        cid = agent.cluster_id
        announced = {
            f"m{i}": SimpleNamespace(raft_addr=f"127.0.0.9:{1000 + i}", api_addr="127.0.0.9:1")
            for i in range(3 * MAX_PEERS)
        }
        agent._on_mdns_change(announced)
        assert len(agent.peers) == MAX_PEERS
        # Authenticated peers take the places of peers known only from mDNS. Each hello is
        # answered, so the transport dials each address (nothing listens there); the
        # connections to the addresses of evicted peers are closed again.
        assert agent.transport is not None
        for i in range(2 * MAX_PEERS):
            hello = {"id": f"a{i}", "raft_addr": f"127.0.0.9:{2000 + i}", "api_addr": "h:1"}
            agent.inbox.on_frame(peer_info(f"a{i}", cid, 2000 + i), {"k": "hello", "info": hello})
        assert len(agent.peers) == MAX_PEERS
        assert sum(p.authed is not None for p in agent.peers.values()) == MAX_PEERS
        assert f"a{2 * MAX_PEERS - 1}" in agent.peers
        await until(
            lambda: len(agent.transport._outbound) == MAX_PEERS,  # type: ignore[union-attr]
            "the connections to evicted peers closed",
        )
        # Peers neither members, nor announced, nor heard from for PEER_EXPIRE_S go.
        agent._on_mdns_change({})
        later = time.monotonic() + PEER_EXPIRE_S + 1
        agent.reports["ghost"] = (0.0, {})
        agent.health_seen["ghost"] = 0.0
        agent._expire_peers(later)
        assert agent.peers == {} or set(agent.peers) <= {"g1"}
        assert "ghost" not in agent.reports and "ghost" not in agent.health_seen

    run_agent(tmp_path, body)
