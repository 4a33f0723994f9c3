"""Helpers for the collection's integration tests: the playbooks against a lab of our own.

The lab here never touches the lab of ``make lab``: its own bridge (``hfct0``), namespaces
(``hfct-node1``..), subnet (10.79.6.0/24), HAProxy port, cluster name and root directory. A
test run leaves nothing behind, also when it fails: ``playbooks/destroy.yml`` first, then the
processes of the pid files under the lab's root (by PID) and the namespaces and links (by
exact name).

The lab's virtualenv and wheels live in ``build/collection-tests/`` (ignored by git), so a
second run does not download the agent's dependencies again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agents import running
from netlab import list_links, list_namespaces, remove_by_name

from hafleet_agent.supervise import start_time  # one reading of /proc/PID/stat

REPO = Path(__file__).resolve().parents[3]

BIN = Path(sys.executable).parent
PLAYBOOK_TIMEOUT = 280

needs_lab = pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("ip") is None
    or shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/sbin") is None
    or not (BIN / "ansible-playbook").exists(),
    reason="the collection's lab tests need root, iproute2, haproxy and ansible-playbook",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collections_path() -> Path:
    """build/collections/ansible_collections/hafleet/cluster -> this checkout (as make does)."""
    root = REPO / "build" / "collections"
    link = root / "ansible_collections" / "hafleet" / "cluster"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(Path("../../../.."))
        except FileExistsError:
            pass
    return root


@dataclass
class Run:
    rc: int
    out: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP: host -> {ok, changed, unreachable, failed, ...}."""
        hosts = {}
        for line in self.out.splitlines():
            m = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line)
            if m:
                hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        return hosts

    def changed(self) -> int:
        return sum(h.get("changed", 0) for h in self.recap().values())


@dataclass
class TestLab:
    __test__ = False

    root: Path
    cache: Path
    port: int
    bridge: str = "hfct0"
    subnet: str = "10.79.6.0/24"
    prefix: str = "hfct-node"
    veth: str = "hfct-v"
    cluster: str = "hfct"
    runs: list[Run] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def address(self, i: int) -> str:
        return f"10.79.6.{10 + i}"

    def extra_vars(self) -> dict:
        return {
            "hafleet_lab_root": str(self.root),
            "hafleet_lab_bridge": self.bridge,
            "hafleet_lab_subnet": self.subnet,
            "hafleet_lab_prefix": self.prefix,
            "hafleet_lab_veth_prefix": self.veth,
            "hafleet_cluster_name": self.cluster,
            "hafleet_balancer_listen": [f"127.0.0.1:{self.port}"],
            "hafleet_agent_venv": str(self.cache / "venv"),
            "hafleet_wheel_dir": str(self.cache / "wheels"),
            "hafleet_wait_timeout": 120,
        }

    def env(self) -> dict:
        env = dict(os.environ)
        env["ANSIBLE_COLLECTIONS_PATH"] = str(collections_path())
        env["ANSIBLE_FORCE_COLOR"] = "0"
        env["ANSIBLE_NOCOLOR"] = "1"
        env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
        return env

    def playbook(
        self, name: str, *args: str, extra: dict | None = None, prefix=(), timeout=PLAYBOOK_TIMEOUT
    ) -> Run:
        variables = dict(self.extra_vars(), **(extra or {}))
        argv = [
            *prefix,
            str(BIN / "ansible-playbook"),
            str(REPO / "playbooks" / name),
            "-e",
            json.dumps(variables),
            *args,
        ]
        began = time.monotonic()
        log = tempfile.TemporaryFile(mode="w+")
        proc = subprocess.Popen(
            argv, cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            log.seek(0)
            raise AssertionError(
                f"{name} took more than {timeout}s; its output ends with:\n" + log.read()[-6000:]
            ) from None
        log.seek(0)
        run = Run(proc.returncode, log.read(), time.monotonic() - began)
        log.close()
        self.runs.append(run)
        return run

    def namespaces(self) -> set[str]:
        return {n for n in list_namespaces() if re.fullmatch(re.escape(self.prefix) + r"\d+", n)}

    def links(self) -> set[str]:
        pattern = re.escape(self.veth) + r"\d+p?|" + re.escape(self.bridge)
        return {n for n in list_links() if re.fullmatch(pattern, n)}

    def pids(self) -> dict[str, int]:
        """Live processes of the lab's pid files (agents, demo services, syncer, HAProxy)."""
        found = {}
        if not self.root.exists():
            return found
        for pidfile in self.root.rglob("*.pid*"):
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if running(pid):
                found[str(pidfile.relative_to(self.root))] = pid
        return found

    @property
    def ca_file(self) -> Path:
        """The CA certificates the lab's clients trust (the agent role's controller_secrets)."""
        return self.root / "secrets" / "ca.crt"

    def api_url(self, i: int) -> str:
        return f"https://{self.address(i)}:7480"

    def tls_context(self) -> ssl.SSLContext:
        """Verifies the agents' certificates against the lab's CA (and their addresses)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def api(self, i: int, path: str):
        import urllib.request

        token = (self.root / "secrets" / "token").read_text().strip()
        req = urllib.request.Request(
            f"{self.api_url(i)}{path}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=5, context=self.tls_context()) as resp:
            return json.load(resp)

    def cleanup(self) -> list[str]:
        """destroy.yml, then whatever it could not remove: by PID and by exact name."""
        problems = []
        pids = self.pids()
        started = {pid: start_time(pid) for pid in pids.values()}
        try:
            run = self.playbook("destroy.yml", timeout=240)
            if run.rc != 0:
                problems.append("destroy.yml failed:\n" + run.out[-3000:])
        except subprocess.TimeoutExpired:
            problems.append("destroy.yml timed out")
        for pid in self.pids().values():
            started.setdefault(pid, start_time(pid))
        for name, pid in {**pids, **self.pids()}.items():
            # Only the process the pid file named: by now its PID may be another's.
            if not running(pid, started.get(pid)):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                problems.append(f"killed leftover {name} (pid {pid})")
            except ProcessLookupError:
                pass
        left_ns, left_links = self.namespaces(), self.links()
        if left_ns or left_links:
            problems.append(f"left behind: {sorted(left_ns | left_links)}")
            remove_by_name(sorted(left_ns), sorted(left_links))
        shutil.rmtree(self.root, ignore_errors=True)
        for suffix in (".lock", ".lock.guard"):  # this controller's lock of the fleet
            self.root.with_name(self.root.name + suffix).unlink(missing_ok=True)
        return problems


class Load:
    """loadgen.py in the background: a bounded request rate through HAProxy."""

    def __init__(self, url: str, out: Path, rate: float = 50.0, max_seconds: float = 280.0):
        self.out = out
        self.stop_file = out.with_suffix(".stop")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("loadgen.py")),
                "--url",
                url,
                "--rate",
                str(rate),
                "--duration",
                str(max_seconds),
                "--stop-file",
                str(self.stop_file),
                "--slow-every",
                "10",
                "--slow-ms",
                "200",
                "--out",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> dict:
        self.stop_file.touch()
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        if not self.out.exists():
            raise AssertionError(f"the load generator wrote no result: {err}")
        return json.loads(self.out.read_text())
