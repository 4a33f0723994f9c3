"""``hafleet-haproxy`` (hafleet_agent.balancer.process), the console script the balancer role
runs: start, idempotent start, status, servers, a seamless reload, stop; a pid file naming a
process that is not HAProxy is never signalled. And the one pid-file stop it shares with
``hafleet-supervise`` (hafleet_agent.supervise.stop_processes): the hard signal after the
timeout, and a recycled PID left alone."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from balancer_lab import HAPROXY

from hafleet_agent.balancer.runtime_api import runtime_command
from hafleet_agent.supervise import Proc, start_time, stop_processes

# The console script of the virtualenv that runs the tests, run by its Python as the role does.
HELPER = Path(sys.executable).parent / "hafleet-haproxy"


def helper(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HELPER), *args], capture_output=True, text=True, timeout=60
    )
    result = json.loads(proc.stdout)
    assert proc.returncode == (1 if result.get("failed") else 0), proc.stderr
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gone(pids: list[int], started: dict[int, int | None], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(start_time(pid) != started[pid] for pid in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(name="files")
def files_fixture(tmp_path: Path):
    settings = tmp_path / "haproxy.json"
    settings.write_text(
        json.dumps(
            {
                "backend": "app",
                "bind": [f"127.0.0.1:{free_port()}"],
                "socket": str(tmp_path / "admin.sock"),
                "state_file": str(tmp_path / "server-state"),
                "strategy": "weighted",
            }
        )
    )
    paths = {
        "settings": str(settings),
        "config": str(tmp_path / "haproxy.cfg"),
        "pidfile": str(tmp_path / "haproxy.pid"),
    }
    yield paths
    # HAProxy daemonizes (-D): stop whatever the test left running, by its pid file.
    helper("stop", "--pidfile", paths["pidfile"], "--timeout", "2")


def test_start_status_reload_stop(files: dict[str, str]) -> None:
    common = ["--settings", files["settings"], "--config", files["config"]]
    common += ["--pidfile", files["pidfile"], "--haproxy", HAPROXY]
    assert helper("status", "--pidfile", files["pidfile"]) == {
        "changed": False,
        "state": "stopped",
        "pids": [],
    }
    started = helper("start", *common)
    assert started["changed"] and started["state"] == "started" and started["pids"]
    again = helper("start", *common)
    assert again == {"changed": False, "state": "running", "pids": started["pids"]}
    assert helper("status", "--pidfile", files["pidfile"])["state"] == "running"
    assert helper("servers", "--settings", files["settings"]) == {"changed": False, "servers": []}

    # A server added at run time survives the reload (the state is saved and carried over).
    sock = json.loads(Path(files["settings"]).read_text())["socket"]
    answer = runtime_command(sock, "add server app/n1 127.0.0.1:9 id 1001 weight 7")
    assert "New server registered" in answer
    old = started["pids"]
    old_started = {pid: start_time(pid) for pid in old}
    reloaded = helper("reload", *common)
    assert reloaded["changed"] and reloaded["state"] == "reloaded" and reloaded["old"] == old
    assert set(reloaded["pids"]).isdisjoint(old)
    assert gone(old, old_started), "the old process did not finish after the reload"
    servers = helper("servers", "--settings", files["settings"])["servers"]
    assert [(s["name"], s["weight"]) for s in servers] == [("n1", 7)]

    new = reloaded["pids"]
    new_started = {pid: start_time(pid) for pid in new}
    stopped = helper("stop", "--pidfile", files["pidfile"], "--timeout", "10")
    assert stopped == {"changed": True, "state": "stopped", "pids": new}
    assert gone(new, new_started, timeout=1.0)
    assert not Path(files["pidfile"]).exists()
    assert helper("stop", "--pidfile", files["pidfile"]) == {"changed": False, "state": "stopped"}


def test_a_pid_file_naming_another_program_is_not_signalled(files: dict[str, str]) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        Path(files["pidfile"]).write_text(f"{other.pid}\n")
        assert helper("status", "--pidfile", files["pidfile"])["state"] == "stopped"
        assert helper("stop", "--pidfile", files["pidfile"], "--timeout", "1")["changed"] is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_stop_processes_sends_the_hard_signal_after_the_timeout() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        began = time.monotonic()
        assert stop_processes([Proc.of(proc.pid)], timeout=0.5, hard_timeout=5.0)
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - began < 5.0
    finally:
        proc.kill()
        proc.wait()


def test_a_recycled_pid_is_not_signalled() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        started = start_time(proc.pid)
        assert started is not None
        # The same PID with another start time: the process the pid file meant is gone.
        stranger = Proc(proc.pid, started + 1)
        assert not stranger.alive()
        stranger.signal(signal.SIGKILL)
        assert stop_processes([stranger], timeout=0.2, hard_timeout=0.2)  # nothing to stop
        # A SIGKILL would have ended it within this half second.
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        assert Proc.of(proc.pid).alive()
    finally:
        proc.kill()
        proc.wait()
