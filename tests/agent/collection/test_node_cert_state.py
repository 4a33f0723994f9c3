"""roles/agent/files/node_cert_state.py: when the agent role issues a node's certificate again.

It runs on the controller with the controller's Python and PYTHONPATH at agent/src, as the
role runs it; ``hafleet-agent ca`` makes the CA and the certificates, as the role does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from labtest import REPO

SCRIPT = REPO / "roles" / "agent" / "files" / "node_cert_state.py"


def run(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "agent" / "src"))
    return subprocess.run(
        [sys.executable, *argv], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def ca(*argv: str) -> None:
    proc = run("-m", "hafleet_agent", "ca", *argv)
    assert proc.returncode == 0, proc.stderr


def state(directory, node="web1", addresses=("10.0.0.1", "web1"), renew_days=30) -> dict:
    argv = [str(SCRIPT), "--dir", str(directory), "--node-id", node, "--renew-days"]
    argv.append(str(renew_days))
    argv += [f"--address={a}" for a in addresses]
    proc = run(*argv)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def ca_dir(tmp_path):
    directory = tmp_path / "tls"
    ca("init", "--dir", str(directory))
    return directory


def issue(directory, node="web1", addresses=("10.0.0.1", "web1")) -> None:
    ca("issue", "--dir", str(directory), "--node-id", node, *[f"--address={a}" for a in addresses])


def test_a_missing_certificate_is_issued(ca_dir):
    assert state(ca_dir) == {"issue": True, "reason": "no certificate yet"}


def test_a_good_certificate_is_kept_whatever_the_order_of_its_addresses(ca_dir):
    issue(ca_dir)
    assert state(ca_dir) == {"issue": False, "reason": "good"}
    assert state(ca_dir, addresses=("web1", "10.0.0.1")) == {"issue": False, "reason": "good"}


@pytest.mark.parametrize(
    "addresses", [("10.0.0.2", "web1"), ("10.0.0.1",), ("10.0.0.1", "web1", "x")]
)
def test_other_addresses_issue_it_again(ca_dir, addresses):
    issue(ca_dir)
    assert state(ca_dir, addresses=addresses) == {"issue": True, "reason": "its addresses changed"}


def test_one_expiring_within_the_renewal_window_is_issued_again(ca_dir):
    issue(ca_dir)
    assert state(ca_dir, renew_days=824)["issue"] is False
    out = state(ca_dir, renew_days=826)
    assert out["issue"] is True and out["reason"].startswith("it expires in"), out


def test_one_signed_by_another_ca_is_issued_again(ca_dir, tmp_path):
    issue(ca_dir)
    other = tmp_path / "other"
    ca("init", "--dir", str(other))
    for name in ("ca.crt", "ca.key"):
        shutil.copy(other / name, ca_dir / name)
    out = state(ca_dir)
    assert out["issue"] is True and out["reason"].startswith("not signed by the cluster CA"), out


def test_another_nodes_certificate_under_this_name_is_issued_again(ca_dir):
    issue(ca_dir, node="web2")
    for ext in ("crt", "key"):
        shutil.copy(ca_dir / f"web2.{ext}", ca_dir / f"web1.{ext}")
    out = state(ca_dir)
    assert out == {"issue": True, "reason": "it names another node id (hafleet://node/web2)"}


def test_a_key_that_is_not_the_certificates_is_issued_again(ca_dir):
    issue(ca_dir)
    issue(ca_dir, node="web2")
    shutil.copy(ca_dir / "web2.key", ca_dir / "web1.key")
    assert state(ca_dir) == {"issue": True, "reason": "the key is not the certificate's"}


def test_many_nodes_in_one_run_each_answered_as_alone(ca_dir):
    issue(ca_dir, node="web1", addresses=("10.0.0.1",))
    issue(ca_dir, node="web2", addresses=("10.0.0.2",))
    nodes = {"web1": ["10.0.0.1"], "web2": ["10.0.0.9"], "web3": ["10.0.0.3"]}
    proc = run(str(SCRIPT), "--dir", str(ca_dir), "--nodes", json.dumps(nodes))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "web1": {"issue": False, "reason": "good"},
        "web2": {"issue": True, "reason": "its addresses changed"},
        "web3": {"issue": True, "reason": "no certificate yet"},
    }
    assert state(ca_dir, node="web2", addresses=("10.0.0.9",))["issue"] is True
