"""stop.yml and start.yml against a lab of their own (issue 19): a 3-node lab under load
through HAProxy; the leader's agent stopped (leadership handed over first, the node in
maintenance and still a member; stop.yml again changes nothing); ``hafleet-agent status`` with
no flags but the lab's agent config finds the API, token and CA by itself and shows the
maintenance; start.yml brings it back as a healthy voter that HAProxy serves again; 0 failed
requests. A missing or unknown ``node`` fails before anything changes.

Its lab (bridge hfh3s0, namespaces hfh3s-node*, 10.79.63.0/24, cluster hfh3s, its own HAProxy
port and cached virtualenv in build/stopstart-tests/) never meets the other lab tests', so the
files may run side by side. About 2 minutes on a quiet machine once the virtualenv is cached.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from labtest import BIN, REPO, Load, TestLab, free_port, list_links, list_namespaces, needs_lab

pytestmark = needs_lab


@dataclass
class StopStartLab(TestLab):
    __test__ = False

    bridge: str = "hfh3s0"
    subnet: str = "10.79.63.0/24"
    prefix: str = "hfh3s-node"
    veth: str = "hfh3s-v"
    cluster: str = "hfh3s"

    def address(self, i: int) -> str:
        return f"10.79.63.{10 + i}"


@pytest.fixture(scope="module")
def lab():
    clash = [n for n in list_namespaces() if n.startswith("hfh3s-node")]
    clash += [n for n in list_links() if n == "hfh3s0" or n.startswith("hfh3s-v")]
    if clash:
        pytest.fail(
            f"a lab of these tests is still there ({', '.join(sorted(clash))}); remove it "
            "with: python tests/support/netlab.py --cleanup hfh3s"
        )
    cache = REPO / "build" / "stopstart-tests"
    cache.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="hfh3s-", dir="/tmp"))  # short: HAProxy's socket path
    root.rmdir()  # the playbook makes it
    the_lab = StopStartLab(root=root, cache=cache, port=free_port())
    try:
        yield the_lab
    finally:
        problems = the_lab.cleanup()
        if problems:
            print("stop/start lab cleanup: " + "; ".join(problems), file=sys.stderr)


def members(lab: StopStartLab, i: int) -> dict[str, dict]:
    return {m["id"]: m for m in lab.api(i, "/v1/members")}


def index(node: str) -> int:
    return int(node.rsplit("node", 1)[1])


def cli(lab: StopStartLab, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``hafleet-agent ARGS`` on the controller with no API flags: a lab node's agent config
    (HAFLEET_CONFIG) is all it is told."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAFLEET_")}
    env["HAFLEET_CONFIG"] = str(lab.root / "nodes" / node / "etc" / "agent.toml")
    return subprocess.run(
        [str(BIN / "hafleet-agent"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.3)


@pytest.mark.timeout(1500)
def test_stop_and_start_the_leader_under_load(lab, tmp_path):
    run = lab.playbook("scale.yml", extra={"nodes": 3}, timeout=840)
    assert run.rc == 0, run.out[-6000:]

    # Bad input: nothing changes.
    for extra, message in (({}, "name the node"), ({"node": "nope"}, "unknown node nope")):
        bad = lab.playbook("stop.yml", extra=extra, timeout=120)
        assert bad.rc != 0 and message in bad.out, bad.out[-3000:]

    lead = lab.api(1, "/v1/status")["leader_id"]
    others = [i for i in (1, 2, 3) if i != index(lead)]
    load = Load(lab.url, tmp_path / "load.json", rate=40)
    try:
        run = lab.playbook("stop.yml", extra={"node": lead})
        assert run.rc == 0, run.out[-6000:]
        view = members(lab, others[0])
        assert view[lead]["maintenance"] is True and view[lead]["weight"] == 0, view[lead]
        assert view[lead]["role"] == "voter", view  # still a member; another one leads
        assert lab.api(others[0], "/v1/status")["leader_id"] not in (None, lead)
        assert f"nodes/{lead}/run/agent.pid" not in lab.pids()
        assert f"nodes/{lead}/run/demo.pid" in lab.pids()  # only the agent stopped

        again = lab.playbook("stop.yml", extra={"node": lead})
        assert again.rc == 0 and again.changed() == 0, again.out[-4000:]

        status = cli(lab, f"hfh3s-node{others[0]}", "status")
        assert status.returncode == 0, status.stderr
        row = [line for line in status.stdout.splitlines() if line.startswith(lead + " ")]
        assert row and "(maintenance)" in row[0], status.stdout

        run = lab.playbook("start.yml", extra={"node": lead})
        assert run.rc == 0, run.out[-6000:]
        view = members(lab, index(lead))
        assert view[lead]["maintenance"] is False and view[lead]["role"] in ("voter", "leader")
        assert f"nodes/{lead}/run/agent.pid" in lab.pids()
        wait_for(
            lambda: members(lab, others[0])[lead]["weight"],
            60,
            f"{lead} has a weight again",
        )
        again = lab.playbook("start.yml", extra={"node": lead})
        assert again.rc == 0 and again.changed() == 0, again.out[-4000:]
    finally:
        result = load.stop()
    assert result["failed"] == 0, result
    assert result["ok"] > 100, result
    assert lead in result["by_node"], result
    # scale, 2 refusals, stop, stop again, start, start again (seen with pytest -s)
    print(f"h3: playbook runs (s): {[round(r.seconds, 1) for r in lab.runs]}")
