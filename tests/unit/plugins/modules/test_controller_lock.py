# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.controller_lock: one run of a controller at a time, without a cluster; an
ended run's lock taken over; another run's lock never given back; two runs at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.hafleet.cluster.plugins.module_utils import run_owner
from ansible_collections.hafleet.cluster.plugins.modules import controller_lock
from ansible_collections.hafleet.cluster.tests.unit.plugins.modules.utils import run_module


@pytest.fixture(name="path")
def path_fixture(tmp_path):
    return tmp_path / "fleets" / "lab.lock"  # its directory is made by the module


def lock(path, run_id, state="present", **extra):
    args = {"path": str(path), "run_id": run_id, "state": state}
    args.update(extra)
    check_mode = args.pop("check_mode", False)
    return run_module(controller_lock.main, args, check_mode=check_mode)


def held_by(path):
    return json.loads(path.read_text()) if path.exists() else None


def live_lock(run="old", holder="scale.yml by bob"):
    """A lock of a live run of this controller: this very process."""
    me = os.getpid()
    return {
        "holder": holder,
        "run": run,
        "controller": run_owner.controller_id(),
        "pid": me,
        "pid_start": run_owner._stat(me)[1],  # pylint: disable=protected-access
        "taken": time.time(),
        "ttl": 3600,
    }


def test_one_run_takes_it_and_another_is_refused_naming_the_holder(path):
    path.parent.mkdir()
    path.write_text(json.dumps(live_lock(holder="scale.yml by alice")))
    refused = lock(path, "run-b", holder="destroy.yml by bob")

    assert refused["failed"] is True
    assert refused["msg"].startswith(
        f"the fleet is locked on this controller ({path}) by scale.yml by alice (run old, taken "
    )
    assert "-e hafleet_lock_force=true" in refused["msg"]
    assert held_by(path)["run"] == "old"


def test_taken_where_there_is_no_directory_yet_given_back_and_taken_again(path):
    first = lock(path, "run-a", holder="scale.yml by alice")
    assert first["failed"] is False and first["held"] is True and first["changed"] is False
    assert held_by(path)["run"] == "run-a" and held_by(path)["holder"] == "scale.yml by alice"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    renewed = lock(path, "run-a")
    assert renewed["held"] is True and renewed["took_over"] is None

    back = lock(path, "run-a", state="absent")
    assert back["failed"] is False and back["held"] is False
    assert list(path.parent.iterdir()) == []  # neither the lock nor its guard is left
    assert lock(path, "run-b")["held"] is True


def test_another_runs_lock_is_never_given_back(path):
    path.parent.mkdir()
    path.write_text(json.dumps(live_lock()))
    result = lock(path, "run-b", state="absent")

    assert result["failed"] is False and result["held"] is False
    assert result["lock"]["run"] == "old" and held_by(path)["run"] == "old"
    assert lock(path, "nobody", state="absent")["lock"]["run"] == "old"


def test_the_lock_of_an_ended_run_is_taken_over_at_once_and_said(path):
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(ended.stdout)
    gone = dict(live_lock(), pid=pid, pid_start=1)
    path.parent.mkdir()
    path.write_text(json.dumps(gone))
    result = lock(path, "run-b")

    assert result["failed"] is False and result["held"] is True
    assert result["took_over"] == {
        "lock": gone,
        "why": f"its run (process {pid} on this controller) has ended",
    }
    assert held_by(path)["run"] == "run-b"


def test_a_lock_past_its_ttl_force_and_a_file_that_is_no_lock_are_taken_over(path):
    path.parent.mkdir()
    path.write_text(json.dumps(dict(live_lock(), taken=time.time() - 120, ttl=60)))
    assert "more than its ttl of 60 s" in lock(path, "run-b")["took_over"]["why"]

    path.write_text(json.dumps(live_lock()))
    forced = lock(path, "run-c", force=True)
    assert forced["held"] is True and forced["took_over"]["why"] == "force=true"

    for junk in (b"\x00garbage", b"{}", b"[1, 2]"):
        path.write_bytes(junk)
        result = lock(path, "run-d")
        assert result["held"] is True, junk
        assert result["took_over"]["why"] == "it is not a lock this module wrote", junk
        assert held_by(path)["run"] == "run-d"
        assert lock(path, "run-d", state="absent")["held"] is False
        path.parent.mkdir(exist_ok=True)


def test_check_mode_writes_nothing_and_refuses_as_a_real_run(path):
    result = lock(path, "run-a", check_mode=True)
    assert result["held"] is True and not path.exists()

    path.write_text(json.dumps(live_lock()))
    assert lock(path, "run-b", check_mode=True)["failed"] is True
    assert lock(path, "old", state="absent", check_mode=True)["held"] is False
    assert held_by(path)["run"] == "old"


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ({"ttl": 0}, "ttl must be a number of seconds from 1 up to 86400, got 0.0"),
        ({"ttl": float("nan")}, "ttl must be a number of seconds from 1 up to 86400, got nan"),
        ({"run_id": "  "}, "run_id must not be empty"),
    ],
)
def test_bad_options_are_refused(path, extra, said):
    args = dict({"run_id": "run-a"}, **extra)
    result = lock(path, **args)
    assert result["failed"] is True and result["msg"] == said
    assert not path.exists()


def test_a_path_that_cannot_be_used_fails_with_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = lock(blocker / "lab.lock", "run-a")
    assert result["failed"] is True
    assert result["msg"].startswith(f"the lock file {blocker / 'lab.lock'} could not be used: ")


def _take(path, run_id, start, out):
    start.wait(10)
    result = lock(path, run_id)
    out.put((run_id, bool(result.get("held")), bool(result.get("failed"))))


def test_of_runs_that_take_it_at_once_exactly_one_holds_it(path, monkeypatch):
    """Eight processes take it at the same moment, each as a live run (the pytest process's
    identity, so none is stale to the others): one holds it, seven are refused."""
    me = live_lock()
    identity = (me["pid"], me["pid_start"])
    monkeypatch.setattr(run_owner, "playbook_process", lambda start=None: identity)
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_take, args=(path, f"run-{i}", start, out)) for i in range(8)]
    for proc in procs:
        proc.start()
    start.set()
    results = [out.get(timeout=30) for proc in procs]
    for proc in procs:
        proc.join(timeout=30)
    holders = [run for run, held, failed in results if held and not failed]
    assert len(holders) == 1, results
    assert sum(result[2] for result in results) == 7, results
    assert held_by(path)["run"] == holders[0]


def _turns(path, run_id, holding, clashes, turns):
    """Take the lock, hold it a moment, give it back; ``turns`` times, within 60 s."""
    deadline = time.monotonic() + 60
    done = 0
    while done < turns and time.monotonic() < deadline:
        if not lock(path, run_id).get("held"):
            continue
        with holding.get_lock():
            holding.value += 1
            if holding.value != 1:
                clashes.value += 1
        time.sleep(0.001)
        with holding.get_lock():
            holding.value -= 1
        assert lock(path, run_id, state="absent")["held"] is False
        done += 1
    return done


def _turns_main(path, run_id, holding, clashes, turns, out):
    out.put(_turns(path, run_id, holding, clashes, turns))


def test_runs_that_take_and_give_it_back_at_once_never_hold_it_together(path, monkeypatch):
    """Four processes take it and give it back (removing the guard each time) ten times each,
    all as live runs: never two hold it at once, and each gets its turns."""
    me = live_lock()
    identity = (me["pid"], me["pid_start"])
    monkeypatch.setattr(run_owner, "playbook_process", lambda start=None: identity)
    ctx = multiprocessing.get_context("fork")
    holding, clashes, out = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Queue()
    procs = [
        ctx.Process(target=_turns_main, args=(path, f"run-{i}", holding, clashes, 10, out))
        for i in range(4)
    ]
    for proc in procs:
        proc.start()
    done = [out.get(timeout=90) for proc in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert done == [10, 10, 10, 10]
    assert clashes.value == 0
    assert not path.exists() and not path.with_name(path.name + ".guard").exists()
