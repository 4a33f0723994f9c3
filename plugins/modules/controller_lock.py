#!/usr/bin/python
# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: controller_lock
short_description: Take or give back a fleet's lock file on the controller, one run at a time
description:
  - The lock is a file on the controller (O(path)); of two runs of this controller that try
    at once, one takes it and the other fails, naming the holder. Unlike
    M(hafleet.cluster.fleet_lock), which is a key of the cluster's own store, it needs no
    cluster, so it also keeps apart the runs that make or end one (a first C(scale.yml),
    C(destroy.yml), C(restore.yml)); it does not keep apart runs of two controllers.
  - Every hafleet playbook that changes a fleet takes it first, before anything changes, and
    gives it back at its end.
  - A lock whose run has ended without giving it back is taken over without O(force) as
    soon as that run's C(ansible-playbook) process is gone (a failed or interrupted run), or
    once O(ttl) seconds have passed since it was taken. A file that is not a lock this module
    wrote is taken over too. The result says whose lock was taken over and why.
  - Taking and giving back report no change (the lock is the run's own bookkeeping, gone
    when the run ends), so a second run of a playbook still reports C(changed=0).
author: hafleet maintainers (@hafleet)
version_added: 0.1.0
extends_documentation_fragment:
  - hafleet.cluster.attributes
attributes:
  check_mode:
    support: full
    details: In check mode nothing is written; taking fails as it would when the lock is held.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - Taken again by the same O(run_id), the lock is renewed; given back when it is not held,
        nothing happens.
options:
  path:
    description:
      - The lock file. Its directory is made (mode 0700) when it is missing; a file
        C(PATH.guard) beside it serializes the runs that take or give it back. Both are
        removed when the lock is given back.
    type: path
    required: true
  state:
    description:
      - V(present) takes the lock for O(run_id) (renews it when this run holds it already);
        V(absent) gives it back when O(run_id) holds it, and leaves another run's lock alone.
    type: str
    choices: [present, absent]
    default: present
  run_id:
    description:
      - What makes this run's lock its own; the same for every call of one run.
    type: str
    required: true
  holder:
    description:
      - Who takes it, as the refusal shows it to another run (the playbook and the user).
    type: str
    default: ""
  ttl:
    description:
      - Seconds after which the lock counts as abandoned (from 1 up to 86400).
    type: float
    default: 3600
  force:
    description:
      - Take the lock even when another run holds it and has not been seen to end. Only
        when no other run is under way.
    type: bool
    default: false
notes:
  - The file is on the controller, so the module runs there (C(delegate_to=localhost), or a
    play on C(localhost)).
seealso:
  - module: hafleet.cluster.fleet_lock
"""

EXAMPLES = r"""
- name: Take this controller's lock of the fleet
  hafleet.cluster.controller_lock:
    path: /var/lib/hafleet-lab.lock
    run_id: "{{ run_id }}"
    holder: "destroy.yml by {{ lookup('ansible.builtin.env', 'USER') }}"

- name: Give it back
  hafleet.cluster.controller_lock:
    path: /var/lib/hafleet-lab.lock
    state: absent
    run_id: "{{ run_id }}"
"""

RETURN = r"""
held:
  description: Whether this run holds the lock after the task.
  returned: always
  type: bool
  sample: true
lock:
  description: The lock as the file holds it after the task (null when there is none).
  returned: always
  type: dict
  sample:
    holder: scale.yml by root@ctl1
    run: 20261207T170000Z-1234
    controller: 5f3c9e0d8a
    pid: 4242
    pid_start: 981234
    taken: 1796662800.0
    ttl: 3600
took_over:
  description: The lock of another run that was taken over, and why; null when none was.
  returned: always
  type: dict
  sample:
    lock: {holder: scale.yml by root@ctl1, run: 20261207T160000Z-77}
    why: its run (process 4242 on this controller) has ended
"""

import fcntl
import json
import os
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hafleet.cluster.plugins.module_utils.options import check_seconds
from ansible_collections.hafleet.cluster.plugins.module_utils.run_owner import (
    claim,
    new_lock,
    refusal,
)

#: A lock file is a few hundred bytes; anything much larger is not one (read no further).
MAX_LOCK_BYTES = 64 * 1024
#: How many times a run locks the guard again after finding it removed meanwhile.
GUARD_TURNS = 100


class ControllerLock:
    def __init__(self, module, clock=time.time):
        self.module = module
        self.p = module.params
        self.path = self.p["path"]
        self.clock = clock

    def guard(self):
        """The guard file, opened and locked (``flock``) until it is closed. A run that gives
        the lock back removes the guard too (holding it): a run that was waiting for it then
        holds a file no longer there, sees that, and locks the new one."""
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        guard = self.path + ".guard"
        for _turn in range(GUARD_TURNS):
            fd = os.open(guard, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = os.fstat(fd)
                try:
                    there = os.stat(guard)
                except FileNotFoundError:
                    there = None
            except BaseException:
                os.close(fd)
                raise
            if there is not None and (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino):
                return fd
            os.close(fd)  # removed (or replaced) while this run waited: lock the new one
        raise OSError(f"{guard} was removed {GUARD_TURNS} times while this run waited for it")

    def current(self):
        """The lock the file holds, None when there is no file; a file that is not JSON
        comes back as its text (not a dict: ``stale`` takes it over)."""
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(MAX_LOCK_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(raw) > MAX_LOCK_BYTES:
            return f"{len(raw)}+ bytes"
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return raw[:80].decode("utf-8", "replace")

    def mine(self, lock):
        return isinstance(lock, dict) and lock.get("run") == self.p["run_id"]

    def write(self, value):
        """Replace the file with ``value`` whole (a temporary file renamed over it)."""
        directory = os.path.dirname(self.path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".lock-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(value, handle)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def take(self):
        p, now = self.p, self.clock()
        value = new_lock(p["holder"], p["run_id"], p["ttl"], now)
        guard = self.guard()
        try:
            lock = self.current()
            free, took_over = claim(lock, p["run_id"], now, p["force"])
            if not free:
                self.module.fail_json(
                    msg=refusal(lock, now, f" on this controller ({self.path})"), lock=lock
                )
            if not self.module.check_mode:
                self.write(value)
            return dict(changed=False, held=True, lock=value, took_over=took_over)
        finally:
            os.close(guard)

    def give_back(self):
        guard = self.guard()
        try:
            lock = self.current()
            if lock is None or not self.mine(lock):
                return dict(changed=False, held=False, lock=lock, took_over=None)
            if not self.module.check_mode:
                os.unlink(self.path)
                os.unlink(self.path + ".guard")  # (held: see guard) nothing is left behind
            return dict(changed=False, held=False, lock=None, took_over=None)
        finally:
            os.close(guard)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            run_id=dict(type="str", required=True),
            holder=dict(type="str", default=""),
            ttl=dict(type="float", default=3600.0),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    check_seconds(module, "ttl", low=1.0, high=86400.0)
    if not p["run_id"].strip():
        module.fail_json(msg="run_id must not be empty")
    lock = ControllerLock(module)
    try:
        result = lock.take() if p["state"] == "present" else lock.give_back()
    except OSError as exc:
        module.fail_json(msg=f"the lock file {p['path']} could not be used: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
