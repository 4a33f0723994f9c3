# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.status_table: the table of playbooks/status.yml, line by line."""

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


from ansible_collections.hafleet.cluster.plugins.filter.status_table import status_table


def member(mid, role="follower", weight=100, **extra):
    base = {
        "id": mid,
        "role": role,
        "healthy": True,
        "draining": False,
        "weight": weight,
        "service_addr": f"10.0.0.{mid[-1]}:8080",
        "metrics": {"cpu_percent": 12.4, "cpu_count": 4, "mem_percent": 40.6, "load1": 0.5},
    }
    base.update(extra)
    return base


def cluster(members, voters=None, learners=()):
    return {
        "cluster": "prod",
        "cluster_id": "5d1f0c2a",
        "leader_id": "web1",
        "term": 7,
        "node": {"commit_index": 120},
        "weights": {"version": 4},
        "members": members,
        "voters": voters if voters is not None else sorted(m["id"] for m in members),
        "learners": list(learners),
    }


def server(name, up=True, weight=100, sessions=0, **extra):
    return {
        "name": name,
        "up": up,
        "maint": False,
        "drain": False,
        "weight": weight,
        "sessions": sessions,
        **extra,
    }


def test_no_cluster_says_so_and_how_to_make_one():
    assert status_table({}, provider="inventory") == [
        "no cluster answers (provider inventory)",
        "bring one up with ansible-playbook hafleet.cluster.scale -e nodes=N",
    ]


def test_a_table_of_lines_sorted_by_id_with_aligned_columns():
    lines = status_table(
        cluster([member("web2"), member("web1", role="leader", weight=7)]),
        servers=[server("web1", weight=7, sessions=3), server("web2")],
        listen=["10.0.0.5:8080", "[::1]:8080"],
        strategy="leastconn",
    )
    assert lines == [
        "cluster prod (5d1f0c2a)  leader web1  term 7  commit 120  weights v4",
        "NODE  ROLE      HEALTH  WEIGHT  HAPROXY         CPU  MEM  LOAD1  SERVICE",
        "web1  leader    ok           7  UP w7 3cx    12%/4c  41%   0.50  10.0.0.1:8080",
        "web2  follower  ok         100  UP w100 0cx  12%/4c  41%   0.50  10.0.0.2:8080",
        "2 voter(s), 0 learner(s)",
        "HAProxy 10.0.0.5:8080, [::1]:8080 (leastconn) has 2 of 2 server(s) up",
    ]
    assert all("\n" not in line and line == line.rstrip() for line in lines)
    # Nothing the yaml result format would quote.
    assert not any(": " in line or line.startswith(("-", " ")) for line in lines)


def test_missing_values_are_dashes_and_states_are_spelled_out():
    members = [
        member("web1", weight=None, metrics=None, service_addr=None),
        member("web2", draining=True, metrics={"cpu_percent": "x", "cpu_count": 2}),
        member("web3", healthy=False, metrics={"cpu_percent": 5.0}),
    ]
    servers = [
        server("web2", up=False, maint=True, drain=True),
        server("web3", drain=True, sessions=None),
    ]
    lines = status_table(cluster(members, voters=["web1"], learners=["web2", "web3"]), servers)
    rows = {line.split()[0]: line.split() for line in lines[2:-2]}
    assert rows["web1"] == ["web1", "follower", "ok", "-", "-", "-", "-", "-", "-"]
    assert rows["web2"][2:8] == ["draining", "100", "DOWN", "maint", "drain", "w100"]
    assert rows["web2"][9:12] == ["-", "-", "-"]  # a CPU share that is not a number
    assert rows["web3"][2:8] == ["DOWN", "100", "UP", "drain", "w100", "-cx"]
    assert rows["web3"][8] == "-"  # a CPU share without the CPU count
    assert lines[-2:] == [
        "1 voter(s), 2 learner(s)",
        "HAProxy - (roundrobin) has 1 of 2 server(s) up, 1 of them draining",
    ]  # (web3 is up but drains: it was counted as serving with nothing said)


def test_servers_not_read_are_not_counted_as_none_up():
    lines = status_table(cluster([member("web1")]), servers=None, listen=["10.0.0.5:8080"])
    assert lines[-1] == "HAProxy 10.0.0.5:8080 (roundrobin) (its servers were not read)"
    assert lines[2].split()[4] == "-"
    read_none = status_table(cluster([member("web1")]), servers=[], listen=["10.0.0.5:8080"])
    assert read_none[-1] == "HAProxy 10.0.0.5:8080 (roundrobin) has 0 of 0 server(s) up"


def test_a_long_id_widens_its_column():
    long_id = "a" * 40 + "1"
    lines = status_table(cluster([member(long_id), member("web2")]), servers=[])
    header, first, second = lines[1:4]
    assert first.startswith(long_id + "  follower")
    assert header.index("ROLE") == second.index("follower") == len(long_id) + 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("not a dict",), "the cluster must be a dict"),
        (({"members": "web1"},), "members must be a list"),
        (({"members": ["web1"]},), "a member must be a dict"),
        ((cluster([member("web1")]), "web1"), "servers must be a list"),
        ((cluster([member("web1", metrics=[1])]),), "the metrics of web1 must be a dict"),
    ],
)
def test_bad_input_fails_with_what_is_wrong(args, message):
    with pytest.raises(AnsibleFilterError, match=message):
        status_table(*args)


def test_the_filter_is_found_under_its_fqcn_and_templates_to_a_list():
    assert filter_loader.get("hafleet.cluster.status_table") is not None
    templar = Templar(
        loader=None,
        variables={"c": cluster([member("web1", role="leader")]), "s": [server("web1")]},
    )
    lines = templar.template(
        trust_as_template(
            "{{ c | hafleet.cluster.status_table(servers=s, listen=['127.0.0.1:8080']) }}"
        )
    )
    assert list(lines) == status_table(
        cluster([member("web1", role="leader")]), [server("web1")], ["127.0.0.1:8080"]
    )


def test_a_member_in_maintenance_says_so():
    members = [
        member("web1", maintenance=True),
        member("web2", maintenance=True, healthy=False),
        member("web3", maintenance=False),
    ]
    lines = status_table(cluster(members, voters=["web1", "web2", "web3"]), servers=None)
    rows = {line.split()[0]: line.split() for line in lines[2:-2]}
    assert rows["web1"][2] == "maintenance"
    assert rows["web2"][2] == "maintenance,DOWN"
    assert rows["web3"][2] == "ok"


def test_no_leader_says_so_and_health_is_each_members_own_answer():
    members = [
        member("web1", role="follower"),
        member("web2", role="follower"),
        member("web3", role="follower", maintenance=True),
        member("web4", role="follower"),
    ]
    leaderless = dict(cluster(members), leader_id=None)
    # web2 never answered (0 or None), web3 answered 503, web4 is not in the probes at all.
    lines = status_table(leaderless, health={"web1": 200, "web2": 0, "web3": 503})
    assert lines[0].startswith("cluster prod (5d1f0c2a)  leader -  term 7")
    assert lines[1] == "no leader - quorum may be lost (or an election is under way), writes fail"
    assert lines[2] == "HEALTH is each member's own /v1/health, asked from the controller"
    rows = {line.split()[0]: line.split() for line in lines[4:-2]}
    assert rows["web1"][2] == "ok"
    assert rows["web2"][2] == "DOWN"  # healthy in the record: the record cannot change now
    assert rows["web3"][2] == "maintenance,unhealthy"
    assert rows["web4"][2] == "DOWN"
    assert not any(": " in line or line.startswith(("-", " ")) for line in lines)


def test_no_leader_without_probes_says_the_record_may_be_stale():
    lines = status_table(dict(cluster([member("web1")]), leader_id=None))
    assert lines[1].startswith("no leader - quorum may be lost")
    assert lines[2] == "HEALTH is the record the last leader wrote, it may be stale"
    assert lines[4].split()[2] == "ok"


def test_probes_are_ignored_while_a_leader_is_known():
    lines = status_table(cluster([member("web1", role="leader")]), health={"web1": 0})
    assert not any(line.startswith(("no leader", "HEALTH is")) for line in lines)
    assert lines[2].split()[2] == "ok"
