"""roles/agent without a machine: the systemd unit it writes (Type=notify, the start timeout,
LimitNOFILE, RuntimeDirectory= only for a run directory under /run; `systemd-analyze verify`
finds nothing wrong with it where the tool exists) and the controller's secrets given as
variables (written, kept, refused when too short or equal, never printed).

Each case runs one of the role's files on localhost (connection local) in a play of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from labtest import BIN, REPO, collections_path

pytestmark = pytest.mark.timeout(300)

UNIT = REPO / "roles" / "agent" / "templates" / "hafleet-agent.service.j2"


def run_play(
    tmp: Path, tasks: list[dict], extra: dict | None = None
) -> subprocess.CompletedProcess:
    play = {"name": "roles/agent", "hosts": "localhost", "gather_facts": False, "tasks": tasks}
    (tmp / "play.yml").write_text(yaml.safe_dump([play], sort_keys=False))
    (tmp / "ansible.cfg").write_text("")
    (tmp / "extra.yml").write_text(yaml.safe_dump(extra or {}))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(tmp / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path()),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    argv = [str(BIN / "ansible-playbook"), "play.yml", "-e", "@extra.yml"]
    argv += ["-e", f"ansible_python_interpreter={BIN / 'python'}"]
    return subprocess.run(
        argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def render_unit(tmp: Path, run_dir: str, template: Path = UNIT) -> str:
    venv = tmp / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("hafleet-agent", "python"):  # what the units start
        program = venv / "bin" / name
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    dest = tmp / template.name.removesuffix(".j2")
    task = {
        "name": "Render the unit",
        "ansible.builtin.template": {"src": str(template), "dest": str(dest), "mode": "0644"},
        "vars": {
            "agent_node_id": "n1",
            "agent_cluster": "c",
            "agent__owner": "root",
            "agent__group": "root",
            "agent_config_dir": "/etc/hafleet-agent",
            "agent__config_file": "/etc/hafleet-agent/agent.toml",
            "agent_venv": str(venv),
            "agent_start_timeout": 75,
            "agent_limit_nofile": 8192,
            "agent_run_dir": run_dir,
            "agent_data_dir": "/var/lib/hafleet-agent",
            "agent_log_dir": "/var/log/hafleet-agent",
            "agent_advertise": "",
            "agent_bind": "127.0.0.1",
            "agent_service_port": 8080,
        },
    }
    out = run_play(tmp, [task])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    return dest.read_text()


def service_lines(unit: str) -> list[str]:
    return [line.strip() for line in unit.splitlines() if line.strip() and line[0] not in "#;"]


def assert_verified(unit: Path) -> None:
    """``systemd-analyze verify`` finds nothing wrong with ``unit`` (where the tool exists)."""
    if shutil.which("systemd-analyze"):
        out = subprocess.run(
            ["systemd-analyze", "verify", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        complaints = [line for line in out.stderr.splitlines() if unit.name in line]
        assert out.returncode == 0 and not complaints, out.stderr


def test_the_unit_waits_for_ready_and_has_the_limits_and_a_runtime_directory(tmp_path: Path):
    lines = service_lines(render_unit(tmp_path, "/run/hafleet-agent"))
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "TimeoutStartSec=75s",
        "LimitNOFILE=8192",
        "RuntimeDirectory=hafleet-agent",
        "RuntimeDirectoryMode=0750",
    ):
        assert line in lines, lines
    assert not [line for line in lines if line.startswith("Type=") and line != "Type=notify"]
    assert_verified(tmp_path / "hafleet-agent.service")


def test_the_demo_service_is_restarted_2_s_apart_for_as_long_as_it_fails(tmp_path: Path):
    # systemd's default start limit (5 starts in 10 s) left a host without its service, the
    # unit "failed", after a few quick crashes, until the next playbook run.
    demo = REPO / "roles" / "agent" / "templates" / "hafleet-demo.service.j2"
    lines = service_lines(render_unit(tmp_path, "/run/hafleet-agent", demo))
    for line in ("Restart=on-failure", "RestartSec=2s", "StartLimitIntervalSec=0"):
        assert line in lines, lines
    assert_verified(tmp_path / "hafleet-demo.service")


def test_a_run_directory_outside_run_is_no_runtime_directory(tmp_path: Path):
    lines = service_lines(render_unit(tmp_path, "/var/lib/hafleet-agent/run"))
    assert not [line for line in lines if line.startswith("RuntimeDirectory")], lines


def secrets_task(secrets_dir: Path) -> dict:
    return {
        "name": "The controller's secrets",
        "ansible.builtin.include_role": {
            "name": "hafleet.cluster.agent",
            "tasks_from": "controller_secrets",
        },
        "vars": {"agent_secrets_dir": str(secrets_dir)},
    }


def test_secrets_given_as_variables_are_written_kept_and_never_printed(tmp_path: Path):
    secrets_dir = tmp_path / "secrets"
    key, token = "k" * 31 + "-key-given", "t" * 31 + "-token-given"
    given = {"agent_cluster_key": key, "agent_api_token": token}
    out = run_play(tmp_path, [secrets_task(secrets_dir)], given)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert (secrets_dir / "key").read_text() == key + "\n"
    assert (secrets_dir / "token").read_text() == token + "\n"
    assert (secrets_dir / "key").stat().st_mode & 0o777 == 0o600
    assert secrets_dir.stat().st_mode & 0o777 == 0o700
    assert key not in out.stdout + out.stderr and token not in out.stdout + out.stderr
    # Without the variables, a later run keeps them (a second controller would write the same).
    out = run_play(tmp_path, [secrets_task(secrets_dir)])
    assert out.returncode == 0, out.stdout[-4000:]
    assert (secrets_dir / "key").read_text() == key + "\n"
    assert "changed=0" in out.stdout


@pytest.mark.parametrize(
    "given",
    [
        {"agent_cluster_key": "short-key"},
        {"agent_cluster_key": "s" * 40, "agent_api_token": "s" * 40},
    ],
    ids=["too-short", "key-equals-token"],
)
def test_bad_secrets_are_refused_before_anything_is_written(tmp_path: Path, given: dict):
    secrets_dir = tmp_path / "secrets"
    out = run_play(tmp_path, [secrets_task(secrets_dir)], given)
    assert out.returncode != 0
    assert "must each be empty" in out.stdout
    assert not secrets_dir.exists()
    for value in given.values():
        assert value not in out.stdout + out.stderr
