# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.fleet_lock against a stand-in cluster: one run at a time, an ended run's
lock taken over, another run's lock never given back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.hafleet.cluster.plugins.module_utils import run_owner
from ansible_collections.hafleet.cluster.plugins.modules import fleet_lock
from ansible_collections.hafleet.cluster.tests.unit.plugins.fake_cluster import TOKEN, FakeCluster
from ansible_collections.hafleet.cluster.tests.unit.plugins.modules.utils import run_module

KEY = "hafleet/lock"


@pytest.fixture(name="cluster")
def cluster_fixture():
    with FakeCluster(ids=("n1", "n2", "n3"), leader="n1") as cluster:
        yield cluster


def lock(cluster, run_id, state="present", **extra):
    args = {"api_url": cluster.url("n1"), "api_token": TOKEN, "run_id": run_id, "state": state}
    args.update(extra)
    check_mode = args.pop("check_mode", False)
    return run_module(fleet_lock.main, args, check_mode=check_mode)


def held_by(cluster):
    return cluster.kv.get(KEY, (None, 0))[0]


def test_one_run_takes_it_and_another_is_refused_naming_the_holder(cluster):
    first = lock(cluster, "run-a", holder="scale.yml by alice@ctl1")
    second = lock(cluster, "run-b", holder="stop.yml by bob@ctl2")

    assert first["failed"] is False and first["held"] is True and first["changed"] is False
    assert held_by(cluster)["run"] == "run-a"
    assert second["failed"] is True
    assert "locked by scale.yml by alice@ctl1 (run run-a, taken " in second["msg"]
    assert "-e hafleet_lock_force=true" in second["msg"]
    assert held_by(cluster)["run"] == "run-a"


def test_the_holder_renews_it_and_gives_it_back_and_then_another_takes_it(cluster):
    lock(cluster, "run-a")
    first_index = cluster.kv[KEY][1]
    renewed = lock(cluster, "run-a")
    assert renewed["held"] is True and renewed["took_over"] is None
    assert cluster.kv[KEY][1] > first_index

    back = lock(cluster, "run-a", state="absent")
    assert back["failed"] is False and back["held"] is False and KEY not in cluster.kv
    assert lock(cluster, "run-b")["held"] is True


def test_another_runs_lock_is_never_given_back(cluster):
    lock(cluster, "run-a")
    result = lock(cluster, "run-b", state="absent")

    assert result["failed"] is False and result["held"] is False
    assert held_by(cluster)["run"] == "run-a"
    assert lock(cluster, "run-b", state="absent")["lock"]["run"] == "run-a"


def test_a_lock_past_its_ttl_is_taken_over_and_said(cluster):
    stale = {"holder": "scale.yml by ci@gone", "run": "old", "taken": time.time() - 120, "ttl": 60}
    cluster.kv[KEY] = (stale, 7)
    result = lock(cluster, "run-b")

    assert result["failed"] is False and result["held"] is True
    assert result["took_over"]["lock"]["run"] == "old"
    assert "more than its ttl of 60 s" in result["took_over"]["why"]
    assert held_by(cluster)["run"] == "run-b"


def this_controllers_lock(pid, ticks):
    """A fresh lock of a run on this controller: process ``pid`` started at ``ticks``."""
    return {
        "run": "old",
        "controller": run_owner.controller_id(),
        "pid": pid,
        "pid_start": ticks,
        "taken": time.time(),
        "ttl": 3600,
    }


def test_the_lock_of_an_ended_run_on_this_controller_is_taken_over_at_once(cluster):
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(ended.stdout)
    cluster.kv[KEY] = (this_controllers_lock(pid, 1), 7)
    result = lock(cluster, "run-b")

    assert result["held"] is True
    assert result["took_over"]["why"] == f"its run (process {pid} on this controller) has ended"


def test_a_live_run_on_this_controller_keeps_it(cluster):
    me = os.getpid()
    ticks = run_owner._stat(me)[1]  # pylint: disable=protected-access
    cluster.kv[KEY] = (this_controllers_lock(me, ticks), 7)

    assert lock(cluster, "run-b")["failed"] is True
    assert held_by(cluster)["run"] == "old"


def test_a_reused_pid_does_not_keep_an_ended_runs_lock(cluster):
    me = os.getpid()
    ticks = run_owner._stat(me)[1]  # pylint: disable=protected-access
    cluster.kv[KEY] = (this_controllers_lock(me, ticks - 1), 7)

    assert lock(cluster, "run-b")["held"] is True


def test_another_controllers_fresh_lock_needs_force(cluster):
    other = {
        "run": "old",
        "controller": "another-machine",
        "pid": os.getpid(),
        "pid_start": 1,
        "taken": time.time(),
        "ttl": 3600,
    }
    cluster.kv[KEY] = (other, 7)

    assert lock(cluster, "run-b")["failed"] is True
    forced = lock(cluster, "run-b", force=True)
    assert forced["held"] is True and forced["took_over"]["why"] == "force=true"
    assert held_by(cluster)["run"] == "run-b"


def test_check_mode_writes_nothing_and_refuses_as_a_run_would(cluster):
    assert lock(cluster, "run-a", check_mode=True)["held"] is True
    assert KEY not in cluster.kv
    lock(cluster, "run-a")
    before = len(cluster.requests)
    assert lock(cluster, "run-b", check_mode=True)["failed"] is True
    assert lock(cluster, "run-a", state="absent", check_mode=True)["failed"] is False
    assert held_by(cluster)["run"] == "run-a"
    assert [r["method"] for r in cluster.requests[before:]] == ["GET", "GET"]


def test_a_writer_that_got_there_first_wins_the_race(cluster, monkeypatch):
    """Between this run's read (absent) and its write (cas=0), another run wrote the key."""
    real = fleet_lock.FleetLock.current
    calls = []

    def current(self):
        got = real(self)
        if not calls:
            cluster.kv[KEY] = (
                {"run": "other", "controller": "elsewhere", "taken": time.time(), "ttl": 3600},
                9,
            )
        calls.append(got)
        return got

    monkeypatch.setattr(fleet_lock.FleetLock, "current", current)
    result = lock(cluster, "run-b")
    assert result["failed"] is True and "run other" in result["msg"]
    assert held_by(cluster)["run"] == "other"


def test_falls_back_to_the_next_agent_and_refuses_bad_input(cluster):
    cluster.down.add("n2")
    result = run_module(
        fleet_lock.main,
        {
            "api_url": cluster.url("n2"),
            "fallback_api_urls": [cluster.url("n1")],
            "api_token": TOKEN,
            "run_id": "run-a",
        },
    )
    assert result["held"] is True
    assert lock(cluster, " ")["msg"] == "run_id must not be empty"
    assert "ttl must be a number of seconds" in lock(cluster, "run-c", ttl=0)["msg"]


def test_finds_the_playbook_process_above_its_forks():
    """A process tree like Ansible's: ansible-playbook, and a fork of it (a worker: the same
    command line) under which the module runs."""
    script = (
        "import os, sys, time\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    print(os.getpid(), flush=True)\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "os.waitpid(child, 0)\n"
    )
    top = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-c", script, "/usr/bin/ansible-playbook"],
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = None
    try:
        worker = int(top.stdout.readline())
        found = run_owner.playbook_process(start=worker)
        assert found == (top.pid, run_owner._stat(top.pid)[1])  # pylint: disable=protected-access
        assert run_owner.playbook_process(start=os.getpid()) is None  # (pytest: no playbook)
    finally:
        if worker is not None:
            os.kill(worker, signal.SIGKILL)
        top.kill()
        top.wait(timeout=10)
        top.stdout.close()


def test_without_a_leader_the_run_goes_on_without_the_lock_and_is_told(cluster):
    """start.yml brings a lost quorum back: a lock that cannot be written must not stop it."""
    cluster.down.update({"n1", "n2", "n3"})  # each answers 503, as an agent without a leader
    for state in ("present", "absent"):
        result = lock(cluster, "run-a", state=state)
        assert result["failed"] is False, result
        assert result["held"] is False and result["no_leader"] is True
    assert KEY not in cluster.kv


def test_a_refused_token_still_fails(cluster):
    result = run_module(
        fleet_lock.main, {"api_url": cluster.url("n1"), "api_token": "x" * 40, "run_id": "r"}
    )
    assert result["failed"] is True and result["status"] == 401
