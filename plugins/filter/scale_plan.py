# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.scale_plan: what playbooks/scale.yml changes to reach N nodes.

The documentation is in scale_plan.yml beside this file.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

PROVIDERS = ("lab", "inventory")


def _count(nodes):
    """``nodes`` as an int >= 1: an int or a string of digits, never a bool."""
    if isinstance(nodes, bool):
        raise AnsibleFilterError(f"scale_plan: nodes must be a whole number, got {nodes!r}")
    if isinstance(nodes, int):
        count = nodes
    elif isinstance(nodes, str) and nodes.strip().isdigit():
        count = int(nodes)
    else:
        raise AnsibleFilterError(f"scale_plan: nodes must be a whole number, got {nodes!r}")
    if count < 1:
        raise AnsibleFilterError(f"scale_plan: nodes must be at least 1, got {count}")
    return count


def _targets(nodes, provider, lab_prefix, pool):
    if provider == "lab":
        if not lab_prefix:
            raise AnsibleFilterError("scale_plan: provider lab needs lab_prefix")
        return [f"{lab_prefix}{index}" for index in range(1, nodes + 1)]
    pool = list(pool or [])
    if len(pool) < nodes:
        raise AnsibleFilterError(
            f"scale_plan: the pool has {len(pool)} host(s), fewer than nodes={nodes}"
        )
    return pool[:nodes]


def _addresses(names, node_addresses, port, scheme=""):
    missing = [name for name in names if name not in node_addresses]
    if missing:
        raise AnsibleFilterError(f"scale_plan: no address for {', '.join(map(str, missing))}")
    return [f"{scheme}{node_addresses[name]}:{port}" for name in names]


def scale_plan(
    nodes,
    cluster=None,
    node_addresses=None,
    existing_nodes=None,
    provider="lab",
    lab_prefix=None,
    pool=None,
    raft_port=7400,
    api_port=7480,
    tls=False,
):
    """The plan for ``nodes`` nodes; the keys are documented in scale_plan.yml (RETURN)."""
    if provider not in PROVIDERS:
        raise AnsibleFilterError(
            f"scale_plan: provider must be one of {', '.join(PROVIDERS)}, got {provider!r}"
        )
    nodes = _count(nodes)
    cluster = cluster or {}
    node_addresses = node_addresses or {}
    existing_nodes = list(existing_nodes or [])

    # The member ids are kept as given (on ansible-core before 2.19 a module's result is
    # marked unsafe, and that mark must stay on them).
    members = [member["id"] for member in cluster.get("members") or []]
    leader = cluster.get("leader_id")
    fresh = not members
    targets = _targets(nodes, provider, lab_prefix, pool)

    # The known nodes (lab nodes by number, pool hosts in inventory order) that exist or are
    # members and are not wanted, the highest first; then the leader last: the member module
    # hands leadership over before it removes a leader, and that should happen once.
    known = existing_nodes + members
    leaving = [
        name for name in reversed(list(node_addresses)) if name not in targets and name in known
    ]
    leaving = [name for name in leaving if name != leader] + [
        name for name in leaving if name == leader
    ]

    # A fresh cluster bootstraps from all N; nodes joining a running one join its members.
    join_via = targets if fresh else [member for member in members if member in targets]
    return {
        "nodes": nodes,
        "targets": targets,
        "members": members,
        "leader": leader,
        "fresh": fresh,
        "adding": [name for name in targets if name not in members],
        "leaving": leaving,
        "unmanaged": [member for member in members if member not in node_addresses],
        "bootstrap_expect": nodes if fresh else None,
        "join": _addresses(join_via, node_addresses, raft_port),
        "api_urls": _addresses(
            targets, node_addresses, api_port, scheme="https://" if tls else "http://"
        ),
    }


class FilterModule:
    def filters(self):
        return {"scale_plan": scale_plan}
