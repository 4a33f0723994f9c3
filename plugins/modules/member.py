#!/usr/bin/python
# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: member
short_description: Add a hafleet cluster member, drain and remove one, or put one in maintenance
description:
  - Makes a node a member of a running hafleet cluster, or takes it out, through the agents'
    HTTP API.
  - V(present) adds the node as a learner; the leader promotes it to voter as soon as it has
    caught up. An agent that starts fresh and finds the cluster joins by itself, so this is
    mostly for nodes that cannot be discovered, or to add a node ahead of starting it.
  - V(absent) drains the node (the balancer stops sending it new requests and waits for the
    ones in flight), then removes it. A leader hands leadership over first; the agent does
    that itself when it is asked to remove itself (C(DELETE /v1/members/{id})). The removed
    agent stops by itself.
  - V(maintenance) takes the member out of rotation without taking it out of the group, with
    C(PUT /v1/members/{id}/maintenance). The leader gives it weight 0, every balancer drains
    its server, and it stays a voting member. V(present) on a member in maintenance ends it
    (C(DELETE /v1/members/{id}/maintenance)) and it is back in rotation.
  - The cluster never goes below one member; removing the last one fails.
author: hafleet maintainers (@hafleet)
version_added: 0.1.0
extends_documentation_fragment:
  - hafleet.cluster.api
  - hafleet.cluster.attributes
  - hafleet.cluster.attributes.actiongroup_hafleet
attributes:
  check_mode:
    support: full
    details:
      - Predicts the change without modifying the cluster.
  diff_mode:
    support: full
    details:
      - Returns the member before and after (in check mode, what it would be).
  idempotent:
    support: full
options:
  id:
    description:
      - The node id of the member.
      - 1-63 characters of letters, digits, C(.), C(_) and C(-), starting with a letter or a
        digit (C(^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$)), as the agent requires; anything else
        fails before the cluster is asked.
    type: str
    required: true
  state:
    description:
      - V(present) the node is a member in rotation (a member in maintenance leaves it);
        V(absent) it is not a member; V(maintenance) it is a member out of rotation (weight
        0, drained), still a voter. V(maintenance) needs the member to exist.
    type: str
    choices: [present, absent, maintenance]
    default: present
  raft_addr:
    description:
      - The node's Raft address, C(host:port). Required with O(state=present) when the
        node is not a member yet.
    type: str
  api_addr:
    description:
      - The node's API address, C(host:port). Required with O(state=present) when the node
        is not a member yet.
    type: str
  reason:
    description:
      - With O(state=maintenance), why (the agent keeps it with the maintenance; a member
        already in maintenance keeps its first reason).
    type: str
  force:
    description:
      - With O(state=maintenance), put the member in maintenance even when no other member
        would stay in service (HAProxy would then answer 503 to every request). Without it
        the agent refuses (409) and the task fails, changing nothing.
      - A member already in maintenance is left as it is either way.
    type: bool
    default: false
  service_addr:
    description:
      - The address, C(host:port), of the service on the node that HAProxy balances to.
      - The agent corrects it from its own C(--service-port) once it runs.
    type: str
  wait:
    description:
      - With O(state=present), wait until the member votes.
      - With O(state=maintenance), wait until the leader has given it weight 0.
      - With O(state=absent), wait until no member lists it any more.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait for O(wait), from 0 up to 86400.
    type: float
    default: 120
  drain_timeout:
    description:
      - Seconds the removal waits for the balancer to drain the node, from 0 up to 3600.
        The agent's C(drain_timeout_s) applies when not set.
    type: float
  transfer_leadership:
    description:
      - When the member to remove is the leader and O(handover_to) is set, ask the leader to
        hand leadership over to O(handover_to) (C(POST /v1/leadership/transfer)) before the
        removal, which then goes to the new leader.
      - Without O(handover_to), or with V(false), the removal goes to the leader, which hands
        leadership over by itself to the most caught-up voter before it is removed; a leader
        is never removed without a hand-over.
    type: bool
    default: true
  handover_to:
    description:
      - The voter to hand leadership to when the leader is removed (with
        O(transfer_leadership)). It must be another voter of the cluster.
    type: str
notes:
  - A member that exists with other addresses (O(raft_addr), O(api_addr), or a
    O(service_addr) other than the one it has) is not changed; the module fails and says so.
  - Addresses are checked before the cluster is asked, in check mode too.
    Remove it first.
  - A removal whose answer was lost (HTTP 504 or no answer) is checked by reading the member
    list again.
seealso:
  - module: hafleet.cluster.cluster_info
"""

EXAMPLES = r"""
- name: Add a node, wait until it votes
  hafleet.cluster.member:
    id: web4
    raft_addr: 10.0.0.14:7400
    api_addr: 10.0.0.14:7480
    service_addr: 10.0.0.14:8080
    api_url: http://10.0.0.11:7480
    api_token_file: /etc/hafleet-agent/token

- name: Drain and remove a node (the agent then stops)
  hafleet.cluster.member:
    id: web4
    state: absent
    drain_timeout: 15
    api_url: http://10.0.0.11:7480
    api_token_file: /etc/hafleet-agent/token

- name: Take a node out of rotation for maintenance (still a voter)
  hafleet.cluster.member:
    id: web4
    state: maintenance
    reason: kernel update
    api_url: http://10.0.0.11:7480
    api_token_file: /etc/hafleet-agent/token

- name: Put it back in rotation
  hafleet.cluster.member:
    id: web4
    api_url: http://10.0.0.11:7480
    api_token_file: /etc/hafleet-agent/token

- name: Add a node through an agent that serves HTTPS (its certificate checked against the CA)
  hafleet.cluster.member:
    id: web5
    raft_addr: 10.0.0.15:7400
    api_addr: 10.0.0.15:7480
    api_url: https://10.0.0.11:7480
    api_token_file: /etc/hafleet-agent/token
    ca_path: /etc/hafleet-agent/ca.crt
"""

RETURN = r"""
member:
  description:
    - The member as the cluster lists it after the run; for O(state=absent) the member as it
      was before the removal (empty when it was not a member).
  returned: always
  type: dict
  sample:
    id: web4
    raft_addr: 10.0.0.14:7400
    api_addr: 10.0.0.14:7480
    service_addr: 10.0.0.14:8080
    role: voter
    healthy: true
    draining: false
    maintenance: false
    weight: 128
    metrics: {}
leader_id:
  description: The leader after the run.
  returned: success
  type: str
  sample: web1
removal:
  description:
    - The agent's answer to the removal.
    - Missing when the answer was lost (HTTP 504 or none) and the module saw the member go
      by reading the member list again.
  returned: when a member was removed and the agent's answer arrived (not in check mode)
  type: dict
  sample: {"id": "web4", "removed": true, "index": 412}
"""

from ansible_collections.hafleet.cluster.plugins.module_utils.api import (
    HafleetAPIError,
    HafleetModule,
    find_member,
    is_voter,
    member_id_error,
    wait_until,
)

# What the diff compares: a member's identity and whether it is in maintenance, not its
# changing role, weight or metrics.
DIFF_KEYS = ("id", "raft_addr", "api_addr", "service_addr", "maintenance")
# The agent's own default drain_timeout_s (hafleet_agent.config.AgentConfig), for the
# removal's HTTP timeout; tests/agent/test_collection_constants.py holds it to the agent's.
DEFAULT_DRAIN_S = 10.0


def _view(member):
    if not member:
        return {}
    view = {key: member.get(key) for key in DIFF_KEYS}
    view["maintenance"] = bool(member.get("maintenance"))  # (an older agent: never)
    return view


class MemberModule:
    def __init__(self, base):
        self.module = base.module
        self.params = base.params
        self.client = base.client
        self.fail = base.fail

    def members(self, client=None):
        return (client or self.client).members()

    def run(self):
        p = self.params
        try:
            members = self.members()
        except HafleetAPIError as exc:
            self.fail(f"cannot list the members at {self.client.base_url}", exc)
        current = find_member(members, p["id"])
        if p["state"] == "present":
            return self.present(current)
        if p["state"] == "maintenance":
            return self.maintenance(current)
        return self.absent(current, members)

    # ---- present ---------------------------------------------------------------------------

    def present(self, current):
        p = self.params
        if current is not None and current.get("maintenance"):
            return self.end_maintenance(current)
        if current is None and not (p["raft_addr"] and p["api_addr"]):
            self.fail(
                f"raft_addr and api_addr are required to add member {p['id']} (state=present); "
                "it is not a member yet"
            )
        if current is not None and not (p["raft_addr"] and p["api_addr"]):
            result = dict(changed=False, member=current, leader_id=self.leader_id())
            if self.module._diff:
                result["diff"] = dict(before=_view(current), after=_view(current))
            return result
        wanted = {"id": p["id"], "raft_addr": p["raft_addr"], "api_addr": p["api_addr"]}
        if p["service_addr"] is not None:
            wanted["service_addr"] = p["service_addr"]
        if current is not None:
            clash = {
                key: current.get(key)
                for key in ("raft_addr", "api_addr")
                if current.get(key) != wanted[key]
            }
            known = current.get("service_addr")  # (a given one that differs was ignored)
            if p["service_addr"] is not None and known not in (None, p["service_addr"]):
                clash["service_addr"] = known
            if clash:
                self.fail(
                    f"member {p['id']} exists with other addresses ({clash}); remove it first "
                    "(state=absent), then add it again"
                )
        changed = current is None
        after = dict(current or {}, **wanted) if changed else current
        result = dict(changed=changed, member=after)
        if self.module._diff:
            result["diff"] = dict(before=_view(current), after=_view(after))
        if changed and not self.module.check_mode:
            try:
                # Any agent forwards a write to the leader; asking the leader saves a hop.
                leader = self.client.leader_client() or self.client
                leader.add_member(p["id"], p["raft_addr"], p["api_addr"], p["service_addr"])
            except HafleetAPIError as exc:
                if exc.status not in (None, 504):
                    self.fail(f"could not add member {p['id']}", exc)
                # The fate of the write is unknown: look again below.
        if not self.module.check_mode and (changed or p["wait"]):
            member = self.wait_present(voter=p["wait"])
            result["member"] = member
        result["leader_id"] = self.leader_id()
        return result

    def wait_present(self, voter):
        p = self.params

        def check():
            member = find_member(self.members(), p["id"])
            if member is None:
                return None
            return member if (is_voter(member) or not voter) else None

        member = wait_until(check, p["wait_timeout"], interval=0.5)
        if not member:
            what = "a voter" if voter else "a member"
            self.fail(
                f"member {p['id']} did not become {what} within {p['wait_timeout']:g}s; is its "
                "agent running and reachable from the leader?"
            )
        return member

    # ---- maintenance -----------------------------------------------------------------------

    def maintenance(self, current):
        p = self.params
        if current is None:
            self.fail(f"{p['id']} is not a member; add it first (state=present)")
        changed = not current.get("maintenance")
        after = dict(current, maintenance=True)
        result = dict(changed=changed, member=after if changed else current)
        if self.module._diff:
            result["diff"] = dict(before=_view(current), after=_view(after))
        if changed and not self.module.check_mode:
            try:
                leader = self.client.leader_client() or self.client  # saves a hop
                leader.maintenance_on(p["id"], reason=p["reason"], force=p["force"])
            except HafleetAPIError as exc:
                if exc.status not in (None, 504):
                    self.fail(f"could not put member {p['id']} in maintenance", exc)
                # The fate of the write is unknown: look again below.
            result["member"] = self.wait_maintenance(True, weight_zero=p["wait"])
        result["leader_id"] = self.leader_id()
        return result

    def end_maintenance(self, current):
        """V(present) on a member in maintenance: back in rotation."""
        p = self.params
        after = dict(current, maintenance=False)
        result = dict(changed=True, member=after)
        if self.module._diff:
            result["diff"] = dict(before=_view(current), after=_view(after))
        if not self.module.check_mode:
            try:
                (self.client.leader_client() or self.client).maintenance_off(p["id"])
            except HafleetAPIError as exc:
                if exc.status not in (None, 504):
                    self.fail(f"could not end member {p['id']}'s maintenance", exc)
            result["member"] = self.wait_maintenance(False)
        result["leader_id"] = self.leader_id()
        return result

    def wait_maintenance(self, on, weight_zero=False):
        """The member once the cluster lists it in maintenance (``on``) or not (and, with
        ``weight_zero``, once its weight is 0)."""
        p = self.params

        def check():
            member = find_member(self.members(), p["id"])
            if member is None or bool(member.get("maintenance")) != on:
                return None
            if weight_zero and member.get("weight") not in (0, None):
                return None
            return member

        member = wait_until(check, p["wait_timeout"], interval=0.25)
        if not member:
            what = "in maintenance" + (" with weight 0" if weight_zero else "")
            self.fail(
                f"member {p['id']} was not {what if on else 'out of maintenance'} within "
                f"{p['wait_timeout']:g}s"
            )
        return member

    # ---- absent ----------------------------------------------------------------------------

    def absent(self, current, members):
        p = self.params
        result = dict(changed=current is not None, member=current or {})
        if self.module._diff:
            result["diff"] = dict(before=_view(current), after={})
        if current is None:
            result["leader_id"] = self.leader_id()
            return result
        others = [m for m in members if m.get("id") != p["id"]]
        if not others:
            self.fail(
                f"member {p['id']} is the last member; a cluster never goes below one member "
                "(destroy the cluster instead)"
            )
        if not any(is_voter(m) for m in others):
            self.fail(f"removing {p['id']} would leave no voter; add another voter first")
        if self.module.check_mode:
            result["leader_id"] = self.leader_id()
            return result

        try:
            status = self.client.status()
            leader = self.client.leader_client(status, members)
        except HafleetAPIError as exc:
            self.fail("cannot find the leader", exc)
        if leader is None:
            self.fail("no leader is known; try again when the cluster has one")
        if (
            status.get("leader_id") == p["id"]
            and p["transfer_leadership"]
            and p["handover_to"] is not None
        ):
            leader = self.hand_over(leader, others)
        # Otherwise a leader asked to remove itself hands over by itself (to the most
        # caught-up voter) and passes the removal on to the new leader: the agent's
        # DELETE /v1/members/{id} is the one implementation of "hand over, then remove".

        # The answer comes after the drain: give it the drain's time and some.
        drain = p["drain_timeout"] if p["drain_timeout"] is not None else DEFAULT_DRAIN_S
        leader.timeout = max(leader.timeout, drain + 30.0)
        try:
            result["removal"] = leader.remove_member(p["id"], p["drain_timeout"])
        except HafleetAPIError as exc:
            if exc.status == 404:
                result["removal"] = {"id": p["id"], "removed": True}
            elif exc.status not in (None, 504):
                self.fail(f"could not remove member {p['id']}", exc)
        if p["wait"] or "removal" not in result:
            self.wait_absent(others)
        result["leader_id"] = self.leader_id(others)
        return result

    def hand_over(self, leader, others):
        """Ask the leader to hand leadership to O(handover_to) (``POST
        /v1/leadership/transfer``, which answers once the new leader is known); returns a
        client of the new leader, to which the removal goes."""
        p = self.params
        to = p["handover_to"]
        if not is_voter(find_member(others, to)):
            self.fail(f"handover_to {to!r} is not another voter of the cluster")
        try:
            answer = leader.transfer_leadership(to)
        except HafleetAPIError as exc:
            self.fail(f"could not hand leadership over from {p['id']}", exc)
        new = find_member(others, (answer or {}).get("leader_id"))
        if new is None or not new.get("api_addr"):
            # Not one of the others: the member to remove still leads, and hands over
            # by itself when asked to remove itself.
            return leader
        return self.client.for_api_addr(new["api_addr"])

    def wait_absent(self, others):
        p = self.params

        def gone():
            for member in others:
                client = self.client.for_api_addr(member["api_addr"])
                try:
                    return find_member(client.members(), p["id"]) is None
                except HafleetAPIError:
                    continue
            return False

        if not wait_until(gone, p["wait_timeout"], interval=0.5):
            self.fail(f"member {p['id']} is still listed after {p['wait_timeout']:g}s")

    def leader_id(self, others=None):
        clients = [self.client]
        clients += [
            self.client.for_api_addr(m["api_addr"]) for m in others or [] if m.get("api_addr")
        ]
        for client in clients:
            try:
                return client.status().get("leader_id")
            except HafleetAPIError:
                continue
        return None


def _addr_error(value, name):
    """Why ``value`` is no HOST:PORT (an IPv6 host in brackets), or None (None is fine)."""
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (
        not sep
        or not host
        or any(c.isspace() or c in "[]/" for c in host)
        or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)
    ):
        return f"{name} must be HOST:PORT with a port in 1..65535, got {value!r}"
    return None


def main():
    base = HafleetModule(
        argument_spec=dict(
            id=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent", "maintenance"], default="present"),
            raft_addr=dict(type="str"),
            api_addr=dict(type="str"),
            service_addr=dict(type="str"),
            wait=dict(type="bool", default=True),
            wait_timeout=dict(type="float", default=120.0),
            drain_timeout=dict(type="float"),
            transfer_leadership=dict(type="bool", default=True),
            handover_to=dict(type="str"),
            reason=dict(type="str"),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    for name in ("raft_addr", "api_addr", "service_addr"):
        error = _addr_error(base.params[name], name)
        if error is not None:  # refused before any call (check mode predicted a change)
            base.fail(error)
    base.check_seconds("wait_timeout")
    base.check_seconds("drain_timeout", high=3600.0)  # (the agent's bound)
    for name in ("id", "handover_to"):
        if base.params[name] is not None:
            error = member_id_error(base.params[name], name)
            if error is not None:  # refused before any call to the cluster
                base.fail(error)
    base.run(lambda: MemberModule(base).run())


if __name__ == "__main__":
    main()
