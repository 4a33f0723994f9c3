#!/usr/bin/python
# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster_info
short_description: The state of a hafleet cluster, read from an agent's API
description:
  - Reads the leader, the term, the members with their roles, health, weights and host
    metrics, and the committed weight table of a hafleet cluster through one agent's HTTP
    API.
  - Changes nothing.
author: hafleet maintainers (@hafleet)
version_added: 0.1.0
extends_documentation_fragment:
  - hafleet.cluster.api
  - hafleet.cluster.api.fallback
  - hafleet.cluster.attributes
  - hafleet.cluster.attributes.actiongroup_hafleet
  - hafleet.cluster.attributes.info_module
notes:
  - Members' metrics come from the leader's table; a follower shares what the leader last
    sent it.
seealso:
  - module: hafleet.cluster.member
"""

EXAMPLES = r"""
- name: Read the cluster
  hafleet.cluster.cluster_info:
    api_url: http://10.77.0.11:7480
    api_token_file: /var/lib/hafleet-lab/secrets/token
  register: cluster

- name: Show the leader and the voters
  ansible.builtin.debug:
    msg: "leader {{ cluster.leader_id }}, voters {{ cluster.voters | join(', ') }}"

- name: Wait until three members vote
  hafleet.cluster.cluster_info:
    api_url: http://10.77.0.11:7480
    api_token_file: /var/lib/hafleet-lab/secrets/token
  register: cluster
  until: cluster.voters | length == 3
  retries: 60
  delay: 1

- name: Read the cluster over HTTPS with a token that may only read
  hafleet.cluster.cluster_info:
    api_url: https://10.0.0.11:7480
    api_token_file: /etc/hafleet-agent/read-token
    ca_path: /etc/hafleet-agent/ca.crt
  register: cluster
"""

RETURN = r"""
api_url:
  description: The API that answered.
  returned: always
  type: str
  sample: http://10.77.0.11:7480
node:
  description: The C(/v1/status) of the agent that answered, without its member list.
  returned: always
  type: dict
  sample:
    node_id: hafleet-node1
    cluster: hafleet
    cluster_id: 5d1f0c2a
    state: leader
    term: 3
    leader_id: hafleet-node1
    commit_index: 120
    applied_index: 120
    version: 0.1.0
cluster:
  description: The cluster's name.
  returned: always
  type: str
  sample: hafleet
cluster_id:
  description: The id minted when the cluster was founded; null before.
  returned: always
  type: str
  sample: 5d1f0c2a
leader_id:
  description: The leader's node id; null while none is known.
  returned: always
  type: str
  sample: hafleet-node1
term:
  description: The Raft term.
  returned: always
  type: int
  sample: 3
members:
  description:
    - The members, as C(GET /v1/members) lists them.
    - C(maintenance) is true while the member is in maintenance (weight 0, drained; still a
      voter; M(hafleet.cluster.member) O(hafleet.cluster.member#module:state=maintenance)).
  returned: always
  type: list
  elements: dict
  sample:
    - id: hafleet-node1
      raft_addr: 10.77.0.11:7400
      api_addr: 10.77.0.11:7480
      service_addr: 10.77.0.11:8080
      role: leader
      healthy: true
      draining: false
      maintenance: false
      weight: 128
      metrics: {"cpu_count": 4, "cpu_percent": 3.5, "load1": 0.2}
voters:
  description: The ids of the members that vote (the leader included), sorted.
  returned: always
  type: list
  elements: str
  sample: [hafleet-node1, hafleet-node2, hafleet-node3]
learners:
  description: The ids of the members that do not vote yet, sorted.
  returned: always
  type: list
  elements: str
  sample: []
weights:
  description: The committed weight table.
  returned: always
  type: dict
  sample: {"version": 4, "weights": {"hafleet-node1": 128, "hafleet-node2": 96}}
metrics:
  description: Each member's latest host metrics, by node id.
  returned: always
  type: dict
  sample: {"hafleet-node1": {"cpu_count": 4, "cpu_percent": 3.5, "load1": 0.2}}
"""

from ansible_collections.hafleet.cluster.plugins.module_utils.api import (
    FALLBACK_ARGUMENT_SPEC,
    HafleetAPIClient,
    HafleetAPIError,
    HafleetModule,
    is_voter,
)


def read_cluster(client):
    """Everything the module returns, from one agent."""
    status = client.status()
    members = client.members()
    weights = client.weights()
    node = {key: value for key, value in status.items() if key != "members"}
    ids = sorted(str(m.get("id")) for m in members)
    voters = sorted(str(m.get("id")) for m in members if is_voter(m))
    return dict(
        api_url=client.base_url,
        node=node,
        cluster=status.get("cluster"),
        cluster_id=status.get("cluster_id"),
        leader_id=status.get("leader_id"),
        term=status.get("term"),
        members=members,
        voters=voters,
        learners=[mid for mid in ids if mid not in voters],
        weights=weights,
        metrics={str(m.get("id")): m.get("metrics") or {} for m in members},
    )


def read_first(base):
    """:func:`read_cluster` from O(api_url), else from each of O(fallback_api_urls) in turn;
    a refused token fails at once."""
    first = base.client
    clients = [first] + [
        HafleetAPIClient(
            url,
            token=first.token,
            timeout=first.timeout,
            validate_certs=first.validate_certs,
            ca_path=first.ca_path,
        )
        for url in base.params["fallback_api_urls"]
    ]
    errors = []
    for client in clients:
        try:
            return dict(changed=False, **read_cluster(client))
        except HafleetAPIError as exc:
            if exc.status == 401:
                base.fail("the API token was refused", exc)
            errors.append(str(exc))
    base.fail("no agent answered: " + "; ".join(errors), errors=errors)


def main():
    base = HafleetModule(
        argument_spec=dict(FALLBACK_ARGUMENT_SPEC),
        supports_check_mode=True,
    )
    base.run(lambda: read_first(base))


if __name__ == "__main__":
    main()
