"""roles/agent passes the service check to the agent: ``agent_service_check`` and its pace and
thresholds, set per host, land in that host's agent.toml, which the agent itself accepts; the
role refuses what the agent would refuse before any task runs on a host.

Runs on the controller only (connection local): the template is rendered for two inventory
hosts with the role's defaults beneath their host variables (as Ansible ranks role defaults:
under every inventory variable), and the role's own checks are run with bad values.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from labtest import BIN, REPO, collections_path

from hafleet_agent.config import load

pytestmark = pytest.mark.timeout(300)

ROLE = REPO / "roles" / "agent"


def ansible(tmp: Path, play: list[dict], inventory: dict, extra: dict | None = None):
    (tmp / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    (tmp / "ansible.cfg").write_text("")
    (tmp / "extra.yml").write_text(yaml.safe_dump(extra or {}))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(tmp / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path()),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
    }
    argv = [str(BIN / "ansible-playbook"), "-i", "hosts.yml", "play.yml", "-e", "@extra.yml"]
    return subprocess.run(
        argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def local_host(**hostvars: object) -> dict:
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": str(BIN / "python"),
        **hostvars,
    }


def test_each_host_gets_its_own_service_check_in_its_agent_toml(tmp_path: Path) -> None:
    # The role's defaults under the inventory's variables, as the role ranks them.
    (tmp_path / "group_vars").mkdir()
    shutil.copy(ROLE / "defaults" / "main.yml", tmp_path / "group_vars" / "all.yml")
    inventory = {
        "all": {
            "hosts": {
                "web1": local_host(
                    agent_service_check="http:/healthz",
                    agent_service_check_interval_ms=200,
                    agent_service_check_timeout_ms=150,
                    agent_service_check_rise=3,
                    agent_service_check_fall=1,
                ),
                "web2": local_host(agent_service_check="tcp"),
                "web3": local_host(),  # the default: no check
            }
        }
    }
    render = {
        "name": "Render agent.toml",
        "ansible.builtin.template": {
            "src": str(ROLE / "templates" / "agent.toml.j2"),
            "dest": str(tmp_path / "{{ inventory_hostname }}.toml"),
            "mode": "0600",
        },
        "vars": {
            "agent_bind": "127.0.0.1",
            "agent_data_dir": str(tmp_path / "data"),
            "agent__key_file": str(tmp_path / "key"),
            "agent__token_file": str(tmp_path / "token"),
            "agent__ca_file": str(tmp_path / "ca.crt"),
            "agent__cert_file": str(tmp_path / "agent.crt"),
            "agent__tls_key_file": str(tmp_path / "agent.key"),
        },
    }
    play = [{"name": "agent.toml", "hosts": "all", "gather_facts": False, "tasks": [render]}]
    out = ansible(tmp_path, play, inventory)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]

    def settings(host: str) -> dict:
        raw = tomllib.loads((tmp_path / f"{host}.toml").read_text())
        return {k: v for k, v in raw.items() if k.startswith("service_check")}

    assert settings("web1") == {
        "service_check": "http:/healthz",
        "service_check_interval_ms": 200,
        "service_check_timeout_ms": 150,
        "service_check_rise": 3,
        "service_check_fall": 1,
    }
    assert settings("web2") == {
        "service_check": "tcp",
        "service_check_interval_ms": 500,
        "service_check_timeout_ms": 500,
        "service_check_rise": 2,
        "service_check_fall": 2,
    }
    assert settings("web3") == {}  # unchanged from before: no restart for hosts without one

    # The agent takes each file as it is (its own checks: config.validate).
    cfg = load(str(tmp_path / "web1.toml"), {})
    assert (cfg.service_check, cfg.service_check_interval_ms, cfg.service_check_rise) == (
        "http:/healthz",
        200,
        3,
    )
    assert cfg.service_port == 8080
    assert load(str(tmp_path / "web2.toml"), {}).service_check == "tcp"
    assert load(str(tmp_path / "web3.toml"), {}).service_check == "none"


# host -> (its variables, what its failure names: the failed condition of the role's check,
# or the argument spec's complaint)
BAD = {
    "bad1": ({"agent_service_check": "http"}, "agent_service_check is match"),
    "bad2": ({"agent_service_check": "http:healthz"}, "agent_service_check is match"),
    "bad3": ({"agent_service_check": "http:/a b"}, "agent_service_check is match"),
    "bad4": ({"agent_service_check": "tcp", "agent_service_port": 0}, "or agent_service_port"),
    "bad5": (
        {"agent_service_check": "tcp", "agent_service_check_timeout_ms": 5},
        "timeout_ms | int >=",
    ),
    "bad6": ({"agent_service_check": "tcp", "agent_service_check_fall": 0}, "_rise | int in"),
    "bad7": ({"agent_service_check": "tcp", "agent_service_check_rise": 101}, "_rise | int in"),
    "bad8": (
        {"agent_service_check": "tcp", "agent_config_extra": {"service_check_rise": 3}},
        "agent_config_extra | select",
    ),
    # the argument spec's types, before any task
    "bad9": (
        {"agent_service_check_rise": "many"},
        "argument 'agent_service_check_rise' is of type",
    ),
    "bad10": (
        {"agent_service_check_interval_ms": "fast"},
        "argument 'agent_service_check_interval_ms' is of type",
    ),
}


def test_the_role_refuses_bad_settings_before_touching_the_host(tmp_path: Path) -> None:
    """One run, one host a case (each fails on its own line)."""
    play = [
        {
            "name": "roles/agent",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "The role",
                    "ansible.builtin.include_role": {"name": "hafleet.cluster.agent"},
                }
            ],
        }
    ]
    hosts = {host: local_host(**given) for host, (given, _) in BAD.items()}
    out = ansible(tmp_path, play, {"all": {"hosts": hosts, "vars": {"ansible_forks": 10}}})
    assert out.returncode != 0
    text = out.stdout + out.stderr
    fatal = {
        line.split("]", 1)[0][len("fatal: [") :]: line
        for line in out.stdout.splitlines()
        if line.startswith("fatal: [")
    }
    for host, (_, expect) in BAD.items():
        line = fatal.get(host, "")
        assert expect in line, (host, line, text[-3000:])
        if not expect.startswith("argument"):
            assert "must be none, tcp or http:/PATH" in line  # the role's message
    # They stopped at the role's checks: no later task ran.
    assert "Choose how the agent runs" not in text, text[-3000:]
