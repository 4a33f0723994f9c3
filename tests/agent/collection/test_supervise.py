"""``hafleet-supervise`` (hafleet_agent.supervise, installed with the agent): start, idempotent
start, restart on a crash, no restart after exit 0 or 2, stop (also of an orphaned child),
restart, stale pid files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The console script of the virtualenv that runs the tests, run by its Python as the roles do.
SUPERVISE = Path(sys.executable).parent / "hafleet-supervise"


def sv(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(SUPERVISE), *args], capture_output=True, text=True, timeout=60
    )
    result = json.loads(proc.stdout)
    result["rc"] = proc.returncode
    return result


def alive(pid: int | None) -> bool:
    return pid is not None and Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "Z"
    return stat[stat.rindex(")") + 2 :].split()[0]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


@pytest.fixture(name="paths")
def paths_fixture(tmp_path):
    pidfile = tmp_path / "x.pid"
    yield pidfile, tmp_path / "x.log"
    sv("stop", "--pidfile", str(pidfile), "--timeout", "5")


def test_start_is_idempotent_and_stop_stops(paths):
    pidfile, log = paths
    first = sv("start", "--pidfile", str(pidfile), "--log", str(log), "--", "sleep", "60")
    again = sv("start", "--pidfile", str(pidfile), "--log", str(log), "--", "sleep", "60")
    status = sv("status", "--pidfile", str(pidfile))

    assert first["changed"] is True and first["state"] == "started"
    assert again == {"changed": False, "pid": first["pid"], "state": "running", "rc": 0}
    assert alive(status["child_pid"])

    stopped = sv("stop", "--pidfile", str(pidfile))
    assert stopped["changed"] is True
    assert not alive(first["pid"]) and not alive(status["child_pid"])
    assert not pidfile.exists()
    assert sv("stop", "--pidfile", str(pidfile))["changed"] is False


def test_a_crashed_command_is_restarted(paths):
    pidfile, log = paths
    sv("start", "--pidfile", str(pidfile), "--log", str(log), "--", "sleep", "60")
    child = sv("status", "--pidfile", str(pidfile))["child_pid"]
    os.kill(child, 9)

    new = wait_for(
        lambda: (c := sv("status", "--pidfile", str(pidfile))["child_pid"]) and c != child and c
    )
    assert new and alive(new)
    assert "restarting in 1s" in log.read_text()


@pytest.mark.parametrize(("code", "why"), [(0, "done, no restart"), (2, "bad configuration")])
def test_exit_0_and_2_are_not_restarted(paths, code, why):
    pidfile, log = paths
    result = sv(
        "start", "--pidfile", str(pidfile), "--log", str(log), "--settle", "0.2",
        "--", "sh", "-c", f"sleep 0.5; exit {code}",
    )  # fmt: skip
    assert result["changed"] is True

    assert wait_for(lambda: sv("status", "--pidfile", str(pidfile))["state"] == "stopped")
    assert why in log.read_text()
    assert not pidfile.exists()


def test_a_command_that_dies_at_once_fails_the_start(paths):
    pidfile, log = paths
    result = sv("start", "--pidfile", str(pidfile), "--log", str(log), "--", "sh", "-c", "exit 2")

    assert result["rc"] == 1
    assert "stopped within" in result["msg"]
    assert any("bad configuration" in line for line in result["log_tail"])


def test_an_orphaned_child_is_stopped_by_its_own_pid(paths):
    pidfile, log = paths
    first = sv("start", "--pidfile", str(pidfile), "--log", str(log), "--", "sleep", "60")
    child = sv("status", "--pidfile", str(pidfile))["child_pid"]
    os.kill(first["pid"], 9)  # the supervisor dies; its child lives on
    assert wait_for(lambda: not alive(first["pid"]))
    assert alive(child)

    stopped = sv("stop", "--pidfile", str(pidfile))
    assert stopped["changed"] is True
    assert wait_for(lambda: not alive(child))


def test_restart_replaces_the_process(paths):
    pidfile, log = paths
    first = sv("start", "--pidfile", str(pidfile), "--log", str(log), "--", "sleep", "60")
    second = sv("restart", "--pidfile", str(pidfile), "--log", str(log), "--", "sleep", "61")

    assert second["changed"] is True and second["was"] == "running"
    assert second["pid"] != first["pid"]
    assert not alive(first["pid"])


def test_a_stale_pid_file_is_not_trusted(paths):
    pidfile, log = paths
    # Our own PID with a wrong start time: a recycled PID must never be signalled.
    pidfile.write_text(f"{os.getpid()} 1\n")

    assert sv("status", "--pidfile", str(pidfile))["state"] == "stopped"
    assert sv("stop", "--pidfile", str(pidfile))["changed"] is False
