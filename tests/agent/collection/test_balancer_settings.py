"""roles/balancer's settings on a host of its own, without a machine: where HAProxy listens
(the inventory, not only -e, sets it; a balancer host's own address by default; the lab's
127.0.0.1:8080 on the controller) and a syncer whose command stays the same when the member
list changes (the list is a file the syncer reads again: a scale restarts nothing).

Each case runs the role's own task files on localhost (connection local) under an inventory
that names the hosts as a user's would, with playbooks/vars/main.yml as scale.yml loads it.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from labtest import BIN, REPO, collections_path

pytestmark = pytest.mark.timeout(300)


def run_play(tmp, inventory, tasks, extra=None):
    """Run ``tasks`` on every host of ``inventory`` (all local) with the playbooks' vars file;
    each host's facts named in ``tasks``' last ``set_fact`` come back from a JSON file."""
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory))
    play = {
        "name": "The balancer's settings",
        "hosts": "hafleet_balancer:localhost",
        "gather_facts": False,
        "vars_files": [str(REPO / "playbooks" / "vars" / "main.yml")],
        "tasks": tasks,
    }
    (tmp / "play.yml").write_text(yaml.safe_dump([play], sort_keys=False))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(tmp / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path()),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
    }
    (tmp / "ansible.cfg").write_text("")
    argv = [str(BIN / "ansible-playbook"), "-i", "hosts.yml", "play.yml"]
    for name, value in (extra or {}).items():
        argv += ["-e", json.dumps({name: value})]
    out = subprocess.run(
        argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    return out.stdout


def local(**hostvars):
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": str(BIN / "python"),
        **hostvars,
    }


ADDRESSES = [
    {
        "name": "Settle HAProxy's addresses",
        "ansible.builtin.include_role": {
            "name": "hafleet.cluster.balancer",
            "tasks_from": "addresses",
        },
        "vars": {"balancer_listen": "{{ hafleet_balancer_bind }}"},
    },
    {
        "name": "Write them down",
        "ansible.builtin.copy": {
            "content": "{{ balancer_addresses | to_json }}",
            "dest": "{{ playbook_dir }}/{{ inventory_hostname }}.json",
            "mode": "0644",
        },
        "delegate_to": "localhost",
    },
]


def addresses(tmp, inventory, extra=None):
    run_play(tmp, inventory, ADDRESSES, extra)
    hosts = [h for g in inventory.values() for h in g.get("hosts", {})] + ["localhost"]
    return {h: json.loads((tmp / f"{h}.json").read_text()) for h in hosts}


def test_a_balancer_host_listens_on_its_own_address_and_the_controller_on_loopback(tmp_path):
    inventory = {
        "hafleet_balancer": {
            "hosts": {
                "lb1": local(ansible_host="10.0.0.5"),
                "lb2": local(ansible_host="fd00::5"),
                "lb3": local(ansible_host="10.0.0.7", balancer_port=9090),
                "lb4": local(ansible_host="lb4.example", balancer_address="10.0.0.8"),
            }
        }
    }
    got = addresses(tmp_path, inventory)
    assert got == {
        "lb1": ["10.0.0.5:8080"],
        "lb2": ["[fd00::5]:8080"],
        "lb3": ["10.0.0.7:9090"],
        "lb4": ["10.0.0.8:8080"],
        "localhost": ["127.0.0.1:8080"],  # the lab's default, unchanged
    }


def test_the_inventory_sets_where_haproxy_listens(tmp_path):
    """Host and group vars win over the playbooks' defaults (vars/main.yml does not set
    hafleet_balancer_listen, which would outrank the inventory); a string may list several."""
    inventory = {
        "hafleet_balancer": {
            "hosts": {
                "lb1": local(ansible_host="10.0.0.5"),
                "lb2": local(
                    ansible_host="10.0.0.6", hafleet_balancer_listen="0.0.0.0:80, [::]:80"
                ),
            },
            "vars": {"hafleet_balancer_listen": ["10.0.0.100:8080"]},
        }
    }
    got = addresses(tmp_path, inventory)
    assert got["lb1"] == ["10.0.0.100:8080"]
    assert got["lb2"] == ["0.0.0.0:80", "[::]:80"]
    # -e still outranks everything, as before.
    got = addresses(tmp_path, inventory, extra={"hafleet_balancer_listen": ["127.0.0.2:81"]})
    assert got["lb1"] == got["lb2"] == got["localhost"] == ["127.0.0.2:81"]


def test_a_new_member_list_leaves_the_syncers_command_alone(tmp_path):
    """The syncer's command (what the systemd unit runs; what the supervised process's stamp
    is made of) names the URL file, not the URLs: scale after scale, only the file changes."""
    tasks = [
        {
            "name": "Settle the paths",
            "ansible.builtin.include_role": {
                "name": "hafleet.cluster.balancer",
                "tasks_from": "common",
            },
            "vars": {"balancer_dir": str(tmp_path / "b"), "balancer_service_manager": "supervisor"},
        },
        {
            "name": "Make the directory",
            "ansible.builtin.file": {
                "path": str(tmp_path / "b"),
                "state": "directory",
                "mode": "0750",
            },
        },
        {
            "name": "Compose the syncer's command",
            "ansible.builtin.include_role": {
                "name": "hafleet.cluster.balancer",
                "tasks_from": "syncer_command",
                "public": True,
            },
            "vars": {
                "balancer_dir": str(tmp_path / "b"),
                "balancer_api_urls": "{{ urls }}",
                "balancer_venv": str(tmp_path / "venv"),
            },
        },
        {
            # As present.yml writes it, with the balancer's other files.
            "name": "Write the agents' API URLs",
            "hafleet.cluster.node_files": {"files": ["{{ balancer__api_entry }}"]},
            "vars": {"balancer_dir": str(tmp_path / "b"), "balancer_api_urls": "{{ urls }}"},
        },
        {
            "name": "Write it down",
            "ansible.builtin.copy": {
                "content": "{{ {'command': balancer__command, 'stamp': balancer__stamp}"
                " | to_json }}",
                "dest": "{{ playbook_dir }}/{{ tag }}.json",
                "mode": "0644",
            },
        },
    ]
    inventory = {"hafleet_balancer": {"hosts": {}}}
    seen = {}
    for tag, urls in [
        ("three", ["http://10.0.0.11:7480", "http://10.0.0.12:7480", "http://10.0.0.13:7480"]),
        ("two", ["http://10.0.0.11:7480", "http://10.0.0.12:7480"]),
    ]:
        out = run_play(tmp_path, inventory, tasks, extra={"urls": urls, "tag": tag})
        seen[tag] = json.loads((tmp_path / f"{tag}.json").read_text())
        assert (tmp_path / "b" / "api-urls").read_text().splitlines()[1:] == urls
        assert "changed: [localhost]" in out.split("Write the agents' API URLs")[1].split("TASK")[0]
    assert seen["three"] == seen["two"]
    command = seen["two"]["command"]
    assert command[command.index("--api-file") + 1] == str(tmp_path / "b" / "api-urls")
    assert not [arg for arg in command if "7480" in arg]
    assert not [arg for arg in command if arg.startswith("--metrics")]  # balancer_metrics_port 0
    # The same list again changes nothing.
    out = run_play(
        tmp_path,
        inventory,
        tasks,
        extra={"urls": ["http://10.0.0.11:7480", "http://10.0.0.12:7480"], "tag": "again"},
    )
    assert "ok: [localhost]" in out.split("Write the agents' API URLs")[1].split("TASK")[0]


def test_the_syncer_serves_its_metrics_when_asked(tmp_path):
    """balancer_metrics_port > 0 gives the syncer --metrics-port and --metrics-bind (0, the
    default, gives it neither: the test above checks the default command)."""
    tasks = [
        {
            "name": "Settle the paths",
            "ansible.builtin.include_role": {
                "name": "hafleet.cluster.balancer",
                "tasks_from": "common",
            },
            "vars": {"balancer_dir": str(tmp_path / "b"), "balancer_service_manager": "supervisor"},
        },
        {
            "name": "Make the directory",
            "ansible.builtin.file": {
                "path": str(tmp_path / "b"),
                "state": "directory",
                "mode": "0750",
            },
        },
        {
            "name": "Compose the syncer's command",
            "ansible.builtin.include_role": {
                "name": "hafleet.cluster.balancer",
                "tasks_from": "syncer_command",
            },
            "vars": {
                "balancer_dir": str(tmp_path / "b"),
                "balancer_api_urls": ["http://10.0.0.11:7480"],
                "balancer_venv": str(tmp_path / "venv"),
            },
        },
        {
            "name": "Write it down",
            "ansible.builtin.copy": {
                "content": "{{ {'command': balancer__command, 'stamp': balancer__stamp}"
                " | to_json }}",
                "dest": "{{ playbook_dir }}/{{ tag }}.json",
                "mode": "0644",
            },
        },
    ]
    inventory = {"hafleet_balancer": {"hosts": {}}}
    run_play(
        tmp_path,
        inventory,
        tasks,
        extra={"tag": "on", "balancer_metrics_port": 9187, "balancer_metrics_bind": "10.0.0.201"},
    )
    on = json.loads((tmp_path / "on.json").read_text())
    assert on["command"][-4:] == ["--metrics-port", "9187", "--metrics-bind", "10.0.0.201"]
