"""backup.yml and restore.yml against a lab of their own (issue 19's acceptance): a 2-node
lab with keys in its KV store, backup.yml twice (timestamped, checksummed, backup_keep=1
keeps one; --check saves nothing), destroy.yml (nothing left), restore.yml from the backup:
every key back on every node, a new cluster id, 2 voters, HAProxy serving both; restore.yml
refuses to run over the fleet it made, and in check mode.

Its lab (bridge hfh2r0, namespaces hfh2r-node*, 10.79.62.0/24, cluster hfh2r, its own
HAProxy port and its own cached virtualenv in build/restore-tests/) never meets the one of
test_lab_playbooks.py, so the two files may run side by side. Eight playbook runs, two of them
scale-outs of 2 nodes: 10-15 minutes measured on a machine under a load average of 16-24 (other labs
and benchmarks running); a quiet machine should take a few minutes once the virtualenv is
cached (the first run builds it).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from labtest import REPO, TestLab, free_port, list_links, list_namespaces, needs_lab

pytestmark = needs_lab

KEYS = {f"app/k{i}": {"i": i} for i in range(20)}


@dataclass
class RestoreLab(TestLab):
    __test__ = False

    bridge: str = "hfh2r0"
    subnet: str = "10.79.62.0/24"
    prefix: str = "hfh2r-node"
    veth: str = "hfh2r-v"
    cluster: str = "hfh2r"

    def address(self, i: int) -> str:
        return f"10.79.62.{10 + i}"

    def put(self, i: int, key: str, value: object) -> dict:
        token = (self.root / "secrets" / "token").read_text().strip()
        req = urllib.request.Request(
            f"{self.api_url(i)}/v1/kv/{key}",
            data=json.dumps({"value": value}).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10, context=self.tls_context()) as resp:
            return json.load(resp)


@pytest.fixture(scope="module")
def lab():
    clash = [n for n in list_namespaces() if n.startswith("hfh2r-node")]
    clash += [n for n in list_links() if n == "hfh2r0" or n.startswith("hfh2r-v")]
    if clash:
        pytest.fail(
            f"a lab of these tests is still there ({', '.join(sorted(clash))}); remove it "
            "with: python tests/support/netlab.py --cleanup hfh2r"
        )
    cache = REPO / "build" / "restore-tests"
    cache.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="hfh2r-", dir="/tmp"))  # short: HAProxy's socket path
    root.rmdir()  # the playbook makes it
    the_lab = RestoreLab(root=root, cache=cache, port=free_port())
    try:
        yield the_lab
    finally:
        problems = the_lab.cleanup()
        if problems:
            print("restore lab cleanup: " + "; ".join(problems), file=sys.stderr)


def served_nodes(lab: RestoreLab, requests: int = 40) -> set[str]:
    seen = set()
    for _ in range(requests):
        with urllib.request.urlopen(lab.url, timeout=5) as resp:
            seen.add(resp.headers["X-Node"])
    return seen


@pytest.mark.timeout(1500)
def test_restore_brings_a_destroyed_lab_back_from_a_backup(lab, tmp_path):
    backups = tmp_path / "backups"
    extra = {"hafleet_backup_dir": str(backups)}
    run = lab.playbook("scale.yml", extra={"nodes": 2}, timeout=840)
    assert run.rc == 0, run.out[-6000:]
    for key, value in KEYS.items():
        lab.put(1 + value["i"] % 2, key, value)
    old_cid = lab.api(1, "/v1/status")["cluster_id"]

    # Two backups; the second run keeps only the newest one.
    for keep in (7, 1):
        run = lab.playbook("backup.yml", extra={**extra, "backup_keep": keep})
        assert run.rc == 0, run.out[-6000:]
    files = sorted(p.name for p in backups.iterdir())
    assert len(files) == 2 and files[1] == files[0] + ".sha256", files
    check = lab.playbook("backup.yml", "--check", extra={**extra, "backup_keep": 1})
    assert check.rc == 0, check.out[-6000:]
    assert sorted(p.name for p in backups.iterdir()) == files  # --check saves nothing
    snap = backups / files[0]
    assert snap.name.startswith("hfh2r-") and snap.name.endswith("Z.snap")
    digest, name = (backups / files[1]).read_text().split()
    assert name == snap.name
    assert hashlib.sha256(snap.read_bytes()).hexdigest() == digest

    run = lab.playbook("destroy.yml")
    assert run.rc == 0, run.out[-6000:]
    assert not lab.namespaces() and not lab.pids() and not lab.root.exists()

    run = lab.playbook("restore.yml", extra={**extra, "nodes": 2}, timeout=600)
    assert run.rc == 0, run.out[-6000:]
    status = lab.api(1, "/v1/status")
    assert status["cluster_id"] not in (None, old_cid)
    members = {m["id"]: m["role"] for m in status["members"]}
    assert set(members) == {"hfh2r-node1", "hfh2r-node2"}
    assert set(members.values()) <= {"leader", "voter"}, members
    for i in (1, 2):
        items = lab.api(i, "/v1/kv?prefix=app/")["items"]
        assert {item["key"]: item["value"] for item in items} == KEYS, i
    assert served_nodes(lab) == {"hfh2r-node1", "hfh2r-node2"}

    # Over a running fleet it changes nothing.
    again = lab.playbook("restore.yml", extra={**extra, "nodes": 2})
    said = " ".join(again.out.replace("'", " ").split())  # the callback wraps long messages
    assert again.rc != 0 and "never touches a running one" in said, again.out[-3000:]
    checked = lab.playbook("restore.yml", "--check", extra={**extra, "nodes": 2})
    assert checked.rc != 0 and "has no check mode" in checked.out, checked.out[-3000:]
    assert lab.api(1, "/v1/status")["cluster_id"] == status["cluster_id"]
