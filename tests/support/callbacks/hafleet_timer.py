# A small Ansible callback that times a playbook run task by task (the ansible.posix
# profile_tasks callback is not installed here, and Galaxy is not reachable): where the time of
# scale.yml goes. Enable it beside the normal output with
#
#   ANSIBLE_CALLBACK_PLUGINS=tests/support/callbacks ANSIBLE_CALLBACKS_ENABLED=hafleet_timer \
#   HAFLEET_TIMER_OUT=/tmp/timings.json ansible-playbook ...
#
# Each run appends one JSON line to HAFLEET_TIMER_OUT: the playbook, the run's seconds, and for
# each task run (in order) its play, name, path:line, wall seconds (from its start to the next
# task's start, so the strategy's waits count), how many hosts ran or skipped it and the
# slowest host's seconds. `python tests/support/callbacks/hafleet_timer.py FILE [N]` prints
# the N slowest tasks of each run.

from __future__ import annotations

import json
import os
import sys
import time

DOCUMENTATION = r"""
name: hafleet_timer
type: aggregate
short_description: Time each task of a run (hafleet's profiling aid)
description:
  - Writes the wall time of each task, its slowest host and its counts to the JSON file
    named by HAFLEET_TIMER_OUT.
requirements:
  - enabled in the configuration (ANSIBLE_CALLBACKS_ENABLED=hafleet_timer)
"""

try:
    from ansible.plugins.callback import CallbackBase
except ImportError:  # the summary printer below runs without Ansible
    CallbackBase = object


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "hafleet_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._began = time.monotonic()
        self._playbook = ""
        self._play = ""
        self._tasks: list[dict] = []
        self._current: dict | None = None
        self._host_began: dict[str, float] = {}

    def _close(self) -> None:
        if self._current is not None:
            self._current["seconds"] = round(time.monotonic() - self._current["_t"], 3)
            self._current.pop("_t")
            self._tasks.append(self._current)
            self._current = None

    def v2_playbook_on_start(self, playbook):
        self._playbook = os.path.basename(playbook._file_name)

    def v2_playbook_on_play_start(self, play):
        self._close()
        self._play = play.get_name()

    def _start(self, task, kind="task"):
        self._close()
        self._current = {
            "play": self._play,
            "task": task.get_name(),
            "path": task.get_path() or "",
            "kind": kind,
            "action": task.action,
            "_t": time.monotonic(),
            "ok": 0,
            "changed": 0,
            "skipped": 0,
            "failed": 0,
            "slowest_host_s": 0.0,
        }
        self._host_began = {}

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._start(task, "handler")

    def v2_runner_on_start(self, host, task):
        self._host_began[host.get_name()] = time.monotonic()

    def _done(self, result, outcome):
        cur = self._current
        if cur is None:
            return
        cur[outcome] += 1
        if outcome == "ok" and result._result.get("changed"):
            cur["changed"] += 1
        began = self._host_began.get(result._host.get_name())
        if began is not None:
            cur["slowest_host_s"] = max(cur["slowest_host_s"], round(time.monotonic() - began, 3))

    def v2_runner_on_ok(self, result):
        self._done(result, "ok")

    def v2_runner_on_skipped(self, result):
        self._done(result, "skipped")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._done(result, "failed")

    def v2_runner_on_unreachable(self, result):
        self._done(result, "failed")

    def v2_playbook_on_stats(self, stats):
        self._close()
        out = os.environ.get("HAFLEET_TIMER_OUT")
        if not out:
            return
        run = {
            "playbook": self._playbook,
            "seconds": round(time.monotonic() - self._began, 3),
            "tasks": self._tasks,
        }
        with open(out, "a") as f:
            f.write(json.dumps(run) + "\n")


def summary(path: str, top: int = 25) -> str:
    lines = []
    with open(path) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    for data in runs:
        lines.append(f"{data['playbook']}: {data['seconds']:.1f} s, {len(data['tasks'])} task runs")
        by_name: dict[str, list] = {}
        for t in data["tasks"]:
            key = f"{t['task']}  ({os.path.basename(t['path'])})"
            agg = by_name.setdefault(key, [0.0, 0])
            agg[0] += t["seconds"]
            agg[1] += 1
        for key, (secs, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]:
            lines.append(f"{secs:7.2f} s  x{n:<3} {key}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25))
