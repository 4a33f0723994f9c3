"""playbooks/status.yml's table as ansible-playbook prints it, without the checkout's settings.

A Galaxy user runs the playbooks with ansible-core's defaults: the default callback and its
default (JSON) result format, where a string's newlines print as ``\\n`` on one line. The
"Show the table" task of status.yml, taken from the playbook itself, runs on localhost with the
cluster cluster_info's RETURN documentation shows, once with an empty ansible.cfg and once with the
checkout's (the yaml result format): each row must be a line of its own both times.
"""

from __future__ import annotations

import ast
import os
import subprocess

import pytest
import yaml
from labtest import BIN, REPO, collections_path


def documented_cluster():
    """What cluster_info returns, as its RETURN documentation's samples show it."""
    source = (REPO / "plugins" / "modules" / "cluster_info.py").read_text()
    tree = ast.parse(source)
    text = next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "RETURN"
    )
    return {key: spec["sample"] for key, spec in yaml.safe_load(text).items()}


SERVERS = [
    {
        "name": "hafleet-node1",
        "up": True,
        "maint": False,
        "drain": True,
        "weight": 0,
        "sessions": 3,
    },
    {
        "name": "hafleet-node2",
        "up": False,
        "maint": True,
        "drain": False,
        "weight": 9,
        "sessions": 0,
    },
]
ROWS = [
    "cluster hafleet (5d1f0c2a)  leader hafleet-node1  term 3  commit 120  weights v4",
    "NODE           ROLE    HEALTH  WEIGHT  HAPROXY            CPU  MEM  LOAD1  SERVICE",
    "hafleet-node1  leader  ok         128  UP drain w0 3cx  4%/4c    -   0.20  10.77.0.11:8080",
    "3 voter(s), 0 learner(s)",
    "HAProxy 10.0.0.5:8080 (roundrobin) has 1 of 2 server(s) up, 1 of them draining",
]


def table_task():
    plays = yaml.safe_load((REPO / "playbooks" / "status.yml").read_text())
    tasks = [task for play in plays for task in play["tasks"] if task["name"] == "Show the table"]
    assert len(tasks) == 1, tasks
    return tasks[0]


@pytest.fixture(scope="module")
def playbook(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status-output")
    play = {
        "name": "The status table alone",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {
            "hafleet_cluster": documented_cluster(),
            "balancer_servers": SERVERS,
            "hafleet_haproxy_addresses": ["10.0.0.5:8080"],
            "hafleet_strategy": "roundrobin",
            "hafleet_provider": "inventory",
        },
        "tasks": [table_task()],
    }
    (tmp / "table.yml").write_text(yaml.safe_dump([play], sort_keys=False))
    (tmp / "ansible.cfg").write_text("")
    return tmp


def run(playbook, config):
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path()),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    for name in ("ANSIBLE_STDOUT_CALLBACK", "ANSIBLE_CALLBACK_RESULT_FORMAT"):
        env.pop(name, None)
    out = subprocess.run(
        [str(BIN / "ansible-playbook"), "table.yml"],
        cwd=playbook,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.splitlines()


def test_default_settings_print_a_line_a_row(playbook):
    lines = [line.strip() for line in run(playbook, playbook / "ansible.cfg")]
    for row in ROWS:
        assert f'"{row}",' in lines or f'"{row}"' in lines, (row, lines)
    assert not any("\\n" in line for line in lines)


def test_the_checkouts_yaml_format_prints_a_line_a_row(playbook):
    lines = [line.strip() for line in run(playbook, REPO / "ansible.cfg")]
    for row in ROWS:
        assert f"- {row}" in lines, (row, lines)


def test_without_a_leader_health_is_each_members_own_answer(tmp_path):
    """No leader known: status.yml's probes (the registered uri loop) reach the table through
    the task's own expression; the member the record calls healthy but that did not answer
    is DOWN, and the table says why HEALTH is what it is."""
    cluster = dict(documented_cluster(), leader_id=None)
    member = cluster["members"][0]["id"]
    play = {
        "name": "The status table without a leader",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {
            "hafleet_cluster": cluster,
            "balancer_servers": SERVERS,
            "hafleet_haproxy_addresses": ["10.0.0.5:8080"],
            "hafleet_strategy": "roundrobin",
            "hafleet_provider": "inventory",
            # as ansible.builtin.uri registers a loop whose one request got no answer
            "hafleet_member_health": {"results": [{"item": {"id": member}, "status": -1}]},
        },
        "tasks": [table_task()],
    }
    (tmp_path / "table.yml").write_text(yaml.safe_dump([play], sort_keys=False))
    (tmp_path / "ansible.cfg").write_text("")
    lines = [line.strip() for line in run(tmp_path, REPO / "ansible.cfg")]
    assert "- no leader - quorum may be lost (or an election is under way), writes fail" in lines
    assert "- HEALTH is each member's own /v1/health, asked from the controller" in lines
    row = next(line for line in lines if line.startswith(f"- {member} "))
    assert row.split()[3] == "DOWN", lines
