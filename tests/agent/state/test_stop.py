"""``stop_within``: a stop that does not finish in time is cut off and explained (the agent
then leaves at once; a storage failure must never leave a process behind)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time

import pytest

from hafleet_agent.run import stop_within


class FakeAgent:
    def __init__(self, hang: bool) -> None:
        self.hang = hang
        self.handover: bool | None = None
        self.finished = False

    async def stop(self, handover: bool = True) -> None:
        self.handover = handover
        if self.hang:
            await asyncio.Event().wait()  # a stop that waits for something that never comes
        self.finished = True


async def _stuck_helper() -> None:
    await asyncio.Event().wait()


def test_a_stop_that_finishes_is_left_alone() -> None:
    agent = FakeAgent(hang=False)
    assert asyncio.run(stop_within(agent, True, 1.0)) is True  # type: ignore[arg-type]
    assert agent.finished and agent.handover is True


def test_a_stuck_stop_is_cut_off_and_names_what_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = FakeAgent(hang=True)

    async def main() -> tuple[bool, float]:
        helper = asyncio.create_task(_stuck_helper(), name="stuck-helper")
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        began = loop.time()
        ok = await stop_within(agent, False, 0.3)  # type: ignore[arg-type]
        took = loop.time() - began
        helper.cancel()
        return ok, took

    with caplog.at_level(logging.CRITICAL, logger="hafleet.agent"):
        ok, took = asyncio.run(main())
    assert ok is False and not agent.finished and agent.handover is False
    assert 0.3 <= took < 2.0
    text = caplog.text
    assert "stopping took longer than 0.3s; leaving now" in text
    assert "stuck-helper (test_stop.py:" in text and "_stuck_helper" in text


def test_a_stopping_agent_proposes_and_reads_nothing(tmp_path) -> None:
    """After ``fail()`` (or a stop began) a write is refused at once as not proposed, and a
    read as not served: nothing would complete them any more, and a request waiting for
    them would hold the API's shutdown up (make chaos, disk_full seed 1012)."""
    from hafleet_agent.config import AgentConfig
    from hafleet_agent.node.errors import NoLeader
    from hafleet_agent.node.node import Node

    async def main() -> list[str]:
        agent = Node(AgentConfig(node_id="n1", data_dir=str(tmp_path)), b"k" * 32, "token")
        agent.raw = object()  # type: ignore[assignment]  # a member, as far as these checks go
        agent.cluster_id = "c1"
        agent.fail("storage failed (test)")
        assert agent.exit_timer is not None
        agent.exit_timer.cancel()  # it would end this process (the test) in a few seconds
        errors = []
        with pytest.raises(NoLeader) as write:
            await agent.driver.propose(lambda raw: pytest.fail("appended while stopping"))
        errors.append(str(write.value))
        with pytest.raises(NoLeader) as read:
            await agent.read_barrier()
        errors.append(str(read.value))
        assert not agent.driver.pending and not agent.driver.reads
        return errors

    errors = asyncio.run(main())
    assert errors == [
        "this node is stopping; the write was not proposed",
        "this node is stopping; the read was not served",
    ]


def test_a_failed_agent_whose_event_loop_is_blocked_still_exits(tmp_path) -> None:
    """The last resort of the fail-stop: a thread exits the process with code 1, stacks
    first, when the event loop never comes back after a failure."""
    script = f"""
import time
import hafleet_agent.node.node as a
from hafleet_agent.config import AgentConfig
a.FAIL_EXIT_S = 0.5
agent = a.Node(AgentConfig(node_id="n1", data_dir={str(tmp_path)!r}), b"k" * 32, "t")
agent.fail("storage failed (test)")
time.sleep(30)  # the event loop would be stuck here
print("not reached")
"""
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=25
    )
    took = time.monotonic() - began
    assert proc.returncode == 1, proc
    assert "not reached" not in proc.stdout
    assert "still running 0.5s after a failure; exiting now" in proc.stderr
    assert "in <module>" in proc.stderr  # the main thread's stack, at the sleep
    assert took < 20


def test_a_stop_whose_event_loop_is_blocked_still_exits(tmp_path) -> None:
    """SIGTERM, then the stop blocks the event loop (so stop_within's bound can never fire):
    a thread ends the process, stacks first, with code 1, shortly after the bound."""
    import signal
    import socket
    import urllib.request

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    for name in ("key", "token"):
        path = tmp_path / name
        path.write_text("s" * 40 + "\n")
        path.chmod(0o600)
    raft_port, api_port = free_port(), free_port()
    script = f"""
import sys, time
import hafleet_agent.node.node as a
import hafleet_agent.run as r
from hafleet_agent.cli import main
r.STOP_S = 0.5
r.BACKSTOP_GRACE_S = 0.5

async def blocking_stop(self, handover=True):
    time.sleep(60)  # a call that never gives the event loop back

a.Node.stop = blocking_stop
sys.exit(main(["run", "--node-id", "n1", "--cluster", "stoptest", "--bind", "127.0.0.1",
    "--raft-port", "{raft_port}", "--api-port", "{api_port}",
    "--data-dir", {str(tmp_path / "data")!r},
    "--key-file", {str(tmp_path / "key")!r}, "--token-file", {str(tmp_path / "token")!r},
    "--bootstrap-expect", "1", "--no-mdns"]))
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{api_port}/v1/health", timeout=2
                ) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the agent never became healthy"
            time.sleep(0.2)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err[-2000:]
    assert "still running 1s after a stop was asked; exiting now" in err, err[-2000:]
    assert "blocking_stop" in err  # the stack of the blocked main thread
    assert took < 10


class StoppingAgent:
    """What _wait_removed reads of a node that stopped (failed or asked to) while it waited:
    its wait_index answers at once, as the driver's does once stopped."""

    class _Cfg:
        election_timeout_ms = 300
        heartbeat_ms = 50

    def __init__(self, removed: bool) -> None:
        self.cfg = self._Cfg()
        self.removed = removed
        self.raw = None
        self.id = "n1"
        self.stopping = True
        self.calls = 0

        class _State:
            index = 7

        self.state = _State()

    async def wait_index(self, index: int, timeout: float) -> int:
        self.calls += 1
        if self.calls > 1000:  # the old loop spun here forever, never yielding
            raise AssertionError("_wait_removed loops on a stopped node")
        return self.state.index


@pytest.mark.timeout(30)
@pytest.mark.parametrize("removed", [False, True])
def test_wait_removed_returns_once_the_node_stops(removed: bool) -> None:
    from hafleet_agent.run import _wait_removed

    agent = StoppingAgent(removed)
    asyncio.run(asyncio.wait_for(_wait_removed(agent), 5))  # type: ignore[arg-type]
    assert agent.calls == 0
