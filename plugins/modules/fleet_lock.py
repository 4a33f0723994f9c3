#!/usr/bin/python
# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_lock
short_description: Take or give back a hafleet fleet's lock, one playbook run at a time
description:
  - The lock is one key of the cluster's replicated store (O(key)), written with
    compare-and-set (C(PUT /v1/kv/{key}?cas=N)); of two runs that try at once, from one
    controller or from two, one takes it and the other fails, naming the holder.
  - The playbooks that change a running fleet (C(scale.yml), C(stop.yml), C(start.yml),
    C(rotate_certs.yml)) take it once they have found the cluster and give it back at their
    end.
  - A lock whose run has ended without giving it back is taken over without O(force) -
    on the controller that took it, as soon as that run's C(ansible-playbook) process is
    gone (a failed or interrupted run); from any controller, once O(ttl) seconds have passed
    since it was taken. The result says whose lock was taken over and why.
  - Taking and giving back report no change (the lock is the run's own bookkeeping, gone
    when the run ends), so a second run of a playbook still reports C(changed=0).
author: hafleet maintainers (@hafleet)
version_added: 0.1.0
extends_documentation_fragment:
  - hafleet.cluster.api
  - hafleet.cluster.api.fallback
  - hafleet.cluster.attributes
  - hafleet.cluster.attributes.actiongroup_hafleet
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
      - Who takes it, as the refusal shows it to another run (the playbook, the user and the
        controller).
    type: str
    default: ""
  ttl:
    description:
      - Seconds after which the lock counts as abandoned by any controller (from 1 up to
        86400).
    type: float
    default: 3600
  force:
    description:
      - Take the lock even when another run holds it and has not been seen to end (its
        controller is gone, say). Only when no other run is under way.
    type: bool
    default: false
  key:
    description:
      - The key of the lock in the cluster's store.
    type: str
    default: hafleet/lock
notes:
  - The controller's clock decides the age of another controller's lock.
seealso:
  - module: hafleet.cluster.cluster_info
"""

EXAMPLES = r"""
- name: Take the fleet's lock
  hafleet.cluster.fleet_lock:
    run_id: "{{ run_id }}"
    holder: "scale.yml by {{ lookup('ansible.builtin.env', 'USER') }}"
    api_url: https://10.0.0.11:7480
    api_token_file: ~/.hafleet/hafleet/token
    ca_path: ~/.hafleet/hafleet/ca.crt

- name: Give it back
  hafleet.cluster.fleet_lock:
    state: absent
    run_id: "{{ run_id }}"
    api_url: https://10.0.0.11:7480
    api_token_file: ~/.hafleet/hafleet/token
    ca_path: ~/.hafleet/hafleet/ca.crt
"""

RETURN = r"""
held:
  description: Whether this run holds the lock after the task.
  returned: always
  type: bool
  sample: true
lock:
  description: The lock as the store holds it after the task (null when there is none).
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
no_leader:
  description:
    - True when the lock could be neither taken nor given back because the group has no
      leader (a 503) or no agent answered; the module then warns and the run goes on
      without the lock (a run that brings a lost quorum back must not be stopped by it).
  returned: when true
  type: bool
  sample: true
took_over:
  description: The lock of another run that was taken over, and why; null when none was.
  returned: always
  type: dict
  sample:
    lock: {holder: scale.yml by root@ctl1, run: 20261207T160000Z-77}
    why: its run (process 4242 on this controller) has ended
"""

import time

from ansible_collections.hafleet.cluster.plugins.module_utils.api import (
    FALLBACK_ARGUMENT_SPEC,
    HafleetAPIError,
    HafleetModule,
    client_from_params,
)
from ansible_collections.hafleet.cluster.plugins.module_utils.run_owner import (
    claim,
    describe,
    new_lock,
    refusal,
)


class FleetLock:
    def __init__(self, base, clock=time.time):
        self.base = base
        self.p = base.params
        self.clock = clock
        self.client = client_from_params(self.p, self.p["fallback_api_urls"])

    def current(self):
        """(value, modify_index) of the key, or (None, 0) when absent."""
        try:
            got = self.client.kv_get(self.p["key"])
        except HafleetAPIError as exc:
            if exc.status == 404:
                return None, 0
            raise
        return got.get("value"), int(got.get("modify_index") or 0)

    def mine(self, lock):
        return isinstance(lock, dict) and lock.get("run") == self.p["run_id"]

    def put(self, value, cas):
        """Write ``value`` if the key's index is still ``cas``; False when another got there."""
        try:
            self.client.kv_put(self.p["key"], value, cas=cas)
        except HafleetAPIError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def take(self):
        p, now = self.p, self.clock()
        value = new_lock(p["holder"], p["run_id"], p["ttl"], now)
        for _turn in range(3):  # each turn ends unless another run wrote the key meanwhile
            lock, index = self.current()
            free, took_over = claim(lock, p["run_id"], now, p["force"])
            if not free:
                self.base.fail(refusal(lock, now, gone=" and its controller is gone"), lock=lock)
            if self.base.module.check_mode:
                return dict(changed=False, held=True, lock=value, took_over=took_over)
            if self.put(value, index):
                return dict(changed=False, held=True, lock=value, took_over=took_over)
        lock = self.current()[0]
        self.base.fail(
            f"the fleet's lock changed hands while this run tried to take it: now "
            f"{describe(lock, now)}",
            lock=lock,
        )

    def give_back(self):
        lock, index = self.current()
        if lock is None or not self.mine(lock):
            return dict(changed=False, held=False, lock=lock, took_over=None)
        if self.base.module.check_mode:
            return dict(changed=False, held=False, lock=None, took_over=None)
        try:
            self.client.kv_delete(self.p["key"], cas=index)
        except HafleetAPIError as exc:
            if exc.status != 409:  # 409: taken over meanwhile, not this run's any more
                raise
        return dict(changed=False, held=False, lock=self.current()[0], took_over=None)


def main():
    base = HafleetModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            run_id=dict(type="str", required=True),
            holder=dict(type="str", default=""),
            ttl=dict(type="float", default=3600.0),
            force=dict(type="bool", default=False),
            key=dict(type="str", default="hafleet/lock", no_log=False),
            **FALLBACK_ARGUMENT_SPEC,
        ),
        supports_check_mode=True,
    )
    base.check_seconds("ttl", low=1.0, high=86400.0)
    if not base.params["run_id"].strip():
        base.fail("run_id must not be empty")

    def work():
        lock = FleetLock(base)  # (a token file that cannot be read fails the module here)
        try:
            return lock.take() if base.params["state"] == "present" else lock.give_back()
        except HafleetAPIError as exc:
            if exc.status not in (None, 503):
                raise
            # No leader (or no agent) to write through: nothing else can change the group's
            # state either, and a playbook that brings a lost quorum back (start.yml) must
            # run. The run goes on without the lock, and says so.
            what = "taken" if base.params["state"] == "present" else "given back"
            base.module.warn(
                f"the fleet's lock could not be {what} ({exc}): this run goes on without it"
            )
            return dict(changed=False, held=False, lock=None, took_over=None, no_leader=True)

    base.run(work)


if __name__ == "__main__":
    main()
