# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Remove a molecule scenario's lab network and its processes, independently of the roles.

    labnet.py down --bridge B --prefix P --veth V [--root DIR]

The network is made by the collection's ``hafleet.cluster.lab_network`` module (create.yml):
a bridge holding the subnet's first address and, per node N, a namespace PN with an ``eth0``
on the bridge and a veth VN. ``down`` removes everything a scenario may have left, even after
a failed converge, also when Ansible cannot run (``make release``'s clean-up):
every process that lives in one of the namespaces named exactly PN (``ip netns pids``),
every process named by a pid file under ROOT whose command line mentions ROOT (HAProxy and
the syncers run in the root namespace), the namespaces, the veths VN, the bridge, ROOT and
the playbooks' lock files beside it (ROOT.lock, ROOT.lock.guard).
Processes are stopped by PID and start time (SIGTERM, then SIGKILL after 10 s) with the
agent's own pid-file logic (``hafleet_agent.supervise``): run it with the interpreter that has
the agent, the checkout's .venv (molecule's ``ansible_playbook_python``; ``make release`` puts
.venv/bin first on PATH). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from hafleet_agent.supervise import Proc, stop_processes


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def links() -> set[str]:
    out = ip("-j", "link", "show").stdout or "[]"
    return {link["ifname"] for link in json.loads(out)}


def namespaces(prefix: str) -> list[str]:
    out = ip("-j", "netns", "list").stdout.strip() or "[]"
    pattern = re.compile("^" + re.escape(prefix) + "[1-9][0-9]*$")
    return sorted(n["name"] for n in json.loads(out) if pattern.match(n["name"]))


def stop(pids: set[int]) -> list[int]:
    """SIGTERM, up to 10 s, then SIGKILL: by PID and start time (a recycled PID is spared)."""
    procs = [Proc.of(p) for p in sorted(pids) if p > 1 and p != os.getpid()]
    procs = [p for p in procs if p.alive()]
    stop_processes(procs, timeout=10.0)
    return [p.pid for p in procs]


def pidfile_pids(root: Path) -> set[int]:
    pids: set[int] = set()
    if not root.is_dir():
        return pids
    for f in list(root.rglob("*.pid")) + list(root.rglob("*.pid.child")):
        try:
            pid = int(f.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if str(root) in cmdline:
            pids.add(pid)
    return pids


def down(a: argparse.Namespace) -> dict:
    stopped: list[int] = []
    root = Path(a.root).resolve() if a.root else None
    # Supervisors first (they would restart their children), then whatever is left.
    for _attempt in range(3):
        pids: set[int] = set()
        for ns in namespaces(a.prefix):
            out = ip("netns", "pids", ns, check=False).stdout
            pids |= {int(p) for p in out.split()}
        if root:
            pids |= pidfile_pids(root)
        if not pids:
            break
        stopped += stop(pids)
    removed = []
    for ns in namespaces(a.prefix):
        ip("netns", "del", ns)
        removed.append(ns)
    pattern = re.compile("^" + re.escape(a.veth) + "[1-9][0-9]*$")
    for link in sorted(links()):
        if pattern.match(link) or link == a.bridge:
            ip("link", "del", link, check=False)
            removed.append(link)
    if root and root.exists():
        shutil.rmtree(root)
        removed.append(str(root))
    for suffix in (".lock", ".lock.guard"):  # the playbooks' lock of the lab at ROOT, beside it
        lock = root.with_name(root.name + suffix) if root else None
        if lock is not None and lock.exists():
            lock.unlink()
            removed.append(str(lock))
    return {"changed": bool(stopped or removed), "stopped": stopped, "removed": removed}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["down"])
    p.add_argument("--bridge", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--veth", required=True)
    p.add_argument("--root", default="")
    a = p.parse_args()
    if len(a.bridge) > 15 or len(a.veth) + 3 > 15:
        p.error("interface names are at most 15 characters")
    print(json.dumps(down(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
