# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.scale_plan: the plan of playbooks/scale.yml, case by case."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible.plugins.loader import filter_loader
from ansible.template import Templar

try:  # ansible-core 2.19 and later template only what is trusted as a template
    from ansible.template import trust_as_template
except ImportError:  # before 2.19 every string is

    def trust_as_template(text):
        return text


from ansible_collections.hafleet.cluster.plugins.filter.scale_plan import scale_plan


def lab(count):
    """The lab's addresses for nodes 1..count, as lab_network lists them (by number)."""
    return {f"n{i}": f"10.77.0.{10 + i}" for i in range(1, count + 1)}


def cluster(members, leader=None):
    return {"members": [{"id": member, "role": "voter"} for member in members], "leader_id": leader}


POOL = ["web1", "web2", "web3", "web4"]
POOL_ADDRESSES = {host: f"10.0.0.1{i}" for i, host in enumerate(POOL, start=1)}

# (name, arguments, expected plan: only the keys given are compared)
CASES = [
    (
        "fresh lab cluster: bootstrap from all N, join all N",
        {"nodes": 3, "node_addresses": lab(3), "existing_nodes": [], "cluster": {}},
        {
            "nodes": 3,
            "targets": ["n1", "n2", "n3"],
            "members": [],
            "leader": None,
            "fresh": True,
            "adding": ["n1", "n2", "n3"],
            "leaving": [],
            "unmanaged": [],
            "bootstrap_expect": 3,
            "join": ["10.77.0.11:7400", "10.77.0.12:7400", "10.77.0.13:7400"],
            "api_urls": [
                "http://10.77.0.11:7480",
                "http://10.77.0.12:7480",
                "http://10.77.0.13:7480",
            ],
        },
    ),
    (
        "nodes as -e gives it (a string of digits)",
        {"nodes": "2", "node_addresses": lab(2), "existing_nodes": [], "cluster": {}},
        {"nodes": 2, "targets": ["n1", "n2"], "bootstrap_expect": 2},
    ),
    (
        "fresh cluster with lab nodes left over from before: they leave, highest first",
        {"nodes": 2, "node_addresses": lab(4), "existing_nodes": ["n1", "n2", "n3", "n4"]},
        {"fresh": True, "adding": ["n1", "n2"], "leaving": ["n4", "n3"], "bootstrap_expect": 2},
    ),
    (
        "scale out 3 -> 5: join the members, no bootstrap",
        {
            "nodes": 5,
            "node_addresses": lab(5),
            "existing_nodes": ["n1", "n2", "n3"],
            "cluster": cluster(["n1", "n2", "n3"], leader="n2"),
        },
        {
            "nodes": 5,
            "targets": ["n1", "n2", "n3", "n4", "n5"],
            "members": ["n1", "n2", "n3"],
            "leader": "n2",
            "fresh": False,
            "adding": ["n4", "n5"],
            "leaving": [],
            "bootstrap_expect": None,
            "join": ["10.77.0.11:7400", "10.77.0.12:7400", "10.77.0.13:7400"],
            "api_urls": [f"http://10.77.0.{10 + i}:7480" for i in range(1, 6)],
        },
    ),
    (
        "same N again: nothing to add or remove",
        {
            "nodes": 3,
            "node_addresses": lab(3),
            "existing_nodes": ["n1", "n2", "n3"],
            "cluster": cluster(["n1", "n2", "n3"], leader="n1"),
        },
        {"adding": [], "leaving": [], "fresh": False, "bootstrap_expect": None},
    ),
    (
        "scale in 5 -> 2 with the leader leaving: highest first, the leader last",
        {
            "nodes": 2,
            "node_addresses": lab(5),
            "existing_nodes": ["n1", "n2", "n3", "n4", "n5"],
            "cluster": cluster(["n1", "n2", "n3", "n4", "n5"], leader="n4"),
        },
        {
            "targets": ["n1", "n2"],
            "adding": [],
            "leaving": ["n5", "n3", "n4"],
            "join": ["10.77.0.11:7400", "10.77.0.12:7400"],
            "api_urls": ["http://10.77.0.11:7480", "http://10.77.0.12:7480"],
        },
    ),
    (
        "scale in with the leader staying: highest first",
        {
            "nodes": 1,
            "node_addresses": lab(3),
            "existing_nodes": ["n1", "n2", "n3"],
            "cluster": cluster(["n1", "n2", "n3"], leader="n1"),
        },
        {"leaving": ["n3", "n2"], "join": ["10.77.0.11:7400"]},
    ),
    (
        "a member whose namespace is gone still leaves; a namespace that is no member too",
        {
            "nodes": 1,
            "node_addresses": lab(4),
            "existing_nodes": ["n1", "n2", "n4"],
            "cluster": cluster(["n1", "n3"], leader="n3"),
        },
        {"leaving": ["n4", "n2", "n3"], "members": ["n1", "n3"]},
    ),
    (
        "members that are no known node are unmanaged and never leave",
        {
            "nodes": 2,
            "node_addresses": lab(3),
            "existing_nodes": ["n1", "n2", "n3"],
            "cluster": cluster(["n1", "n2", "n3", "elsewhere-7"], leader="elsewhere-7"),
        },
        {
            "unmanaged": ["elsewhere-7"],
            "leaving": ["n3"],
            "leader": "elsewhere-7",
            "join": ["10.77.0.11:7400", "10.77.0.12:7400"],
        },
    ),
    (
        "a cluster with no leader known",
        {
            "nodes": 1,
            "node_addresses": lab(2),
            "existing_nodes": ["n1", "n2"],
            "cluster": {"members": [{"id": "n1"}, {"id": "n2"}]},
        },
        {"leader": None, "leaving": ["n2"], "fresh": False},
    ),
    (
        "pool provider, fresh: the first N hosts in inventory order; the others are cleaned",
        {
            "nodes": 3,
            "provider": "inventory",
            "pool": POOL,
            "node_addresses": POOL_ADDRESSES,
            "existing_nodes": POOL,
        },
        {
            "targets": ["web1", "web2", "web3"],
            # Every pool host exists: the one beyond N is drained (a no-op where no agent runs).
            "leaving": ["web4"],
            "bootstrap_expect": 3,
            "join": ["10.0.0.11:7400", "10.0.0.12:7400", "10.0.0.13:7400"],
        },
    ),
    (
        "pool provider, scale in 4 -> 2: the last hosts of the group leave, the leader last",
        {
            "nodes": 2,
            "provider": "inventory",
            "pool": POOL,
            "node_addresses": POOL_ADDRESSES,
            "existing_nodes": POOL,
            "cluster": cluster(["web1", "web2", "web3", "web4"], leader="web3"),
        },
        {"targets": ["web1", "web2"], "leaving": ["web4", "web3"], "adding": []},
    ),
    (
        "pool provider: the inventory's order, not the names' order, decides",
        {
            "nodes": 2,
            "provider": "inventory",
            "pool": ["zeta", "alpha", "mid"],
            "node_addresses": {"zeta": "10.0.0.3", "alpha": "10.0.0.1", "mid": "10.0.0.2"},
            "existing_nodes": ["zeta", "alpha", "mid"],
            "cluster": cluster(["alpha", "mid", "zeta"], leader="alpha"),
        },
        {
            "targets": ["zeta", "alpha"],
            "leaving": ["mid"],
            "join": ["10.0.0.1:7400", "10.0.0.3:7400"],
            "api_urls": ["http://10.0.0.3:7480", "http://10.0.0.1:7480"],
        },
    ),
    (
        "pool provider, scale out 2 -> 4 with other ports",
        {
            "nodes": 4,
            "provider": "inventory",
            "pool": POOL,
            "node_addresses": POOL_ADDRESSES,
            "existing_nodes": POOL,
            "cluster": cluster(["web1", "web2"], leader="web1"),
            "raft_port": 17400,
            "api_port": "17480",
        },
        {
            "adding": ["web3", "web4"],
            "join": ["10.0.0.11:17400", "10.0.0.12:17400"],
            "api_urls": [f"http://10.0.0.1{i}:17480" for i in range(1, 5)],
        },
    ),
]


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan(args, expected):
    args = dict(args)
    plan = scale_plan(args.pop("nodes"), **{"lab_prefix": "n", **args})

    assert set(plan) == {
        "nodes",
        "targets",
        "members",
        "leader",
        "fresh",
        "adding",
        "leaving",
        "unmanaged",
        "bootstrap_expect",
        "join",
        "api_urls",
    }
    assert {key: plan[key] for key in expected} == expected


def test_tls_gives_https_api_urls():
    plan = scale_plan(2, node_addresses=lab(2), lab_prefix="n", tls=True)

    assert plan["api_urls"] == ["https://10.77.0.11:7480", "https://10.77.0.12:7480"]
    assert plan["join"] == ["10.77.0.11:7400", "10.77.0.12:7400"]  # Raft: no scheme


@pytest.mark.parametrize(
    ("nodes", "args", "message"),
    [
        (0, {}, "at least 1"),
        ("-1", {}, "whole number"),
        ("3.0", {}, "whole number"),
        (True, {}, "whole number"),
        (None, {}, "whole number"),
        (5, {"node_addresses": lab(5), "provider": "ssh"}, "provider must be"),
        (2, {"node_addresses": lab(2), "lab_prefix": ""}, "needs lab_prefix"),
        (5, {"provider": "inventory", "pool": POOL, "node_addresses": POOL_ADDRESSES}, "fewer"),
        (3, {"node_addresses": lab(2)}, "no address for n3"),
    ],
)
def test_refuses(nodes, args, message):
    with pytest.raises(AnsibleFilterError, match=message):
        scale_plan(nodes, **{"lab_prefix": "n", **args})


class Marked(str):
    """A string with a mark of its own, as ansible-core marks a module's result unsafe."""


def test_member_ids_are_passed_on_as_given():
    """A member id comes from the network: the plan passes on the very object (and its unsafe
    mark on ansible-core before 2.19), never a fresh, trusted copy."""
    odd = Marked("{{ lookup('pipe', 'id') }}")
    n1 = Marked("n1")
    plan = scale_plan(
        1,
        cluster={"members": [{"id": n1}, {"id": odd}], "leader_id": n1},
        node_addresses=lab(1),
        existing_nodes=["n1"],
        lab_prefix="n",
    )
    assert plan["unmanaged"] == [odd]
    assert plan["unmanaged"][0] is odd
    assert plan["members"][0] is n1
    assert plan["leader"] is n1


def test_found_by_its_fully_qualified_name_and_runs_in_a_template():
    assert filter_loader.get("hafleet.cluster.scale_plan") is not None
    templar = Templar(
        loader=None,
        variables={
            "wanted": "2",
            "addresses": lab(3),
            "now": cluster(["n1", "n2", "n3"], leader="n3"),
        },
    )
    plan = templar.template(
        trust_as_template(
            "{{ wanted | hafleet.cluster.scale_plan(cluster=now, node_addresses=addresses,"
            " existing_nodes=['n1', 'n2', 'n3'], provider='lab', lab_prefix='n') }}"
        )
    )
    assert plan["nodes"] == 2
    assert plan["leaving"] == ["n3"]
    assert plan["join"] == ["10.77.0.11:7400", "10.77.0.12:7400"]
