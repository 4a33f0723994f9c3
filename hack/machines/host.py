"""The host side of the machines lab (root): the bridge, the package cache, the shared rootfs,
and per machine a network namespace, an overlay, a cgroup and a supervised systemd-nspawn.

Everything `up` makes is recorded in the lab's state file *before* it is made, by its exact
name, so `down` removes it all, also after a failed `up` (resources.py)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from . import plan as P
from . import rootfs
from .resources import HostError, State, cgroup_dirs, cgroup_pids, read_text, run, say, write

BOOT_SCRIPT = 'for g in "$1" "$2"; do echo $$ > "$g/cgroup.procs"; done; shift 2; exec "$@"'


class Host:
    def __init__(self, lab: P.Lab, state_root: Path, cache: Path, out: Path, supervise: Path):
        self.lab = lab
        self.dir = state_root / lab.name
        self.cache = cache
        self.out = out
        self.supervise = supervise
        self.state = State(self.dir / "state.json")
        self.key = out / "id_ed25519"
        self.known_hosts = out / "known_hosts"
        self.inventory = out / "hosts.yml"
        self.ready_timeout = 120.0

    # ---- lab level -------------------------------------------------------------------------

    def check_spec(self) -> None:
        recorded = self.state.spec()
        if recorded is None:
            return
        for key in ("prefix", "bridge", "subnet"):
            if recorded.get(key) != getattr(self.lab, key):
                raise HostError(
                    f"lab {self.lab.name} exists with {key}={recorded.get(key)}: run down first"
                )

    def up_lab(self) -> bool:
        """The state directory, the bridge, the forward block, the package cache, the key."""
        changed = False
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state.load(self.lab)
        self.state.add("lab", "dir", str(self.dir))
        if not self.state.has("lab", "bridge", self.lab.bridge) and link_exists(self.lab.bridge):
            raise HostError(f"link {self.lab.bridge} exists and is not this lab's: pick another")
        taken = subnet_users(self.lab.network, but=self.lab.bridge)
        if taken:
            raise HostError(f"{self.lab.subnet} is in use on {', '.join(taken)}: pick another")
        self.state.add("lab", "bridge", self.lab.bridge)
        if not link_exists(self.lab.bridge):
            say(f"bridge {self.lab.bridge} {self.lab.bridge_address}/{self.lab.network.prefixlen}")
            run(["ip", "link", "add", self.lab.bridge, "type", "bridge"])
            changed = True
        cidr = f"{self.lab.bridge_address}/{self.lab.network.prefixlen}"
        if cidr not in run(["ip", "-br", "addr", "show", "dev", self.lab.bridge]).split():
            run(["ip", "addr", "add", cidr, "dev", self.lab.bridge])
            changed = True
        run(["ip", "link", "set", self.lab.bridge, "up"])
        changed |= self.forward_block()
        changed |= self.package_cache()
        self.state.add("lab", "rmdir", str(self.out))
        self.out.mkdir(parents=True, exist_ok=True)
        for path in (self.key, Path(f"{self.key}.pub"), self.known_hosts, self.inventory):
            self.state.add("lab", "file", str(path))
        if not self.key.exists():
            say(f"ssh key {self.key}")
            run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"hafleet machines lab {self.lab.name}",
                    "-f",
                    str(self.key),
                ]
            )
            changed = True
        return changed

    def forward_block(self) -> bool:
        """An nftables table that drops whatever would be routed from or to the bridge: the
        guests reach each other and the host's own addresses (the package cache), nothing
        beyond (plan.nft_rules)."""
        table = self.lab.nft_table
        self.state.add("lab", "nft", table)
        listed = run(["nft", "list", "table", "inet", table], check=False, quiet=True)
        if listed is not None and P.NFT_MARK in listed:
            return False
        # Made if missing, then removed and made again in one transaction: an older revision
        # of the table is replaced, never left beside the new one.
        run(
            ["nft", "-f", "-"],
            stdin=f"table inet {table}\ndelete table inet {table}\n" + P.nft_rules(self.lab),
        )
        return True

    def package_cache(self) -> bool:
        """apt-cacher-ng bound to the bridge address, its cache kept under the shared cache
        directory by lab name, its backend the mirror of this host's own apt sources."""
        conf = self.dir / "acng"
        conf.mkdir(exist_ok=True)
        apt_cache = self.cache / "apt" / self.lab.name
        apt_cache.mkdir(parents=True, exist_ok=True)
        mirrors = P.mirrors(read_text(rootfs.HOST_SOURCES))
        write(conf / "acng.conf", P.acng_conf(self.lab, apt_cache, conf))
        for kind in ("debian", "security"):
            write(conf / f"backends_{kind}", mirrors.get(kind, P.DEFAULT_MIRRORS[kind]) + "\n")
        pidfile = conf / "supervise.pid"
        self.state.add("lab", "supervisor", str(pidfile))
        if not self.running(pidfile) and tcp_answers(self.lab.bridge_address, P.ACNG_PORT):
            raise HostError(
                f"{self.lab.bridge_address}:{P.ACNG_PORT} is taken by another process (a system "
                "apt-cacher-ng on 0.0.0.0? stop it: the lab starts its own, bound to the bridge)"
            )
        changed = self.start_supervised(
            pidfile, conf / "supervise.log", ["apt-cacher-ng", "-c", str(conf)]
        )
        if changed:
            say(f"package cache {self.lab.proxy} (apt-cacher-ng, backend {mirrors})")
        wait_tcp(self.lab.bridge_address, P.ACNG_PORT, 20.0)
        return changed

    # ---- machines --------------------------------------------------------------------------

    def machine_dir(self, name: str) -> Path:
        return self.dir / "machines" / name

    def ensure_machine(self, m: P.Machine, lower: Path) -> None:
        """Every part of one machine, each made only if missing; recorded before it is made."""
        lab, d = self.lab, self.machine_dir(m.name)
        self.state.add(m.name, "dir", str(d))
        for sub in ("upper", "work", "merged"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        if not self.state.has(m.name, "netns", m.name) and Path(f"/run/netns/{m.name}").exists():
            raise HostError(f"network namespace {m.name} exists and is not this lab's")
        self.state.add(m.name, "netns", m.name)
        if not Path(f"/run/netns/{m.name}").exists():
            run(["ip", "netns", "add", m.name])
        self.state.add(m.name, "veth", m.veth)
        if not link_exists(m.veth):
            run(
                [
                    "ip",
                    "link",
                    "add",
                    m.veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    m.name,
                ]
            )
            ns = ["ip", "-n", m.name]
            run([*ns, "link", "set", "lo", "up"])
            run([*ns, "addr", "add", f"{m.address}/{lab.network.prefixlen}", "dev", "eth0"])
            run([*ns, "link", "set", "eth0", "up"])
            run([*ns, "route", "add", "default", "via", lab.bridge_address])
            # A machine made again has a new MAC: a neighbour entry left from the old one would
            # hold the host's packets back until it expires (half a minute).
            run(["ip", "neigh", "flush", "to", m.address, "dev", lab.bridge], check=False)
        run(["ip", "link", "set", m.veth, "master", lab.bridge, "up"])
        merged = d / "merged"
        self.state.add(m.name, "mount", str(merged))
        if not os.path.ismount(merged):
            opts = f"lowerdir={lower},upperdir={d / 'upper'},workdir={d / 'work'}"
            run(["mount", "-t", "overlay", f"overlay-{m.name}", "-o", opts, str(merged)])
        self.guest_files(m, merged)
        self.state.add(m.name, "cgroup", m.name)
        for cg in cgroup_dirs(m.name):
            cg.mkdir(exist_ok=True)

    def guest_files(self, m: P.Machine, root: Path) -> None:
        """The machine's own identity: machine-id, ssh host keys, hostname, hosts, the apt proxy,
        the lab's key for the user."""
        machine_id = root / "etc" / "machine-id"
        if not read_text(machine_id).strip():
            write(machine_id, uuid.uuid4().hex + "\n")
        if not (root / "etc/ssh/ssh_host_ed25519_key").exists():
            run(["ssh-keygen", "-A", "-f", str(root)])
        write(root / "etc/hostname", m.name + "\n")
        write(root / "etc/hosts", P.etc_hosts(self.lab, m))
        write(root / "etc/apt/apt.conf.d/01hafleet-proxy", P.apt_proxy_conf(self.lab))
        home = root / "home" / P.USER
        uid, gid = user_ids(root, P.USER)
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(ssh_dir, uid, gid)
        keys = ssh_dir / "authorized_keys"
        write(keys, read_text(Path(f"{self.key}.pub")), mode=0o600)
        os.chown(keys, uid, gid)

    def host_keys(self, name: str) -> list[str]:
        etc = self.machine_dir(name) / "merged" / "etc" / "ssh"
        return [read_text(p).strip() for p in sorted(etc.glob("ssh_host_*_key.pub"))]

    def boot(self, m: P.Machine) -> bool:
        d = self.machine_dir(m.name)
        pidfile = d / "supervise.pid"
        self.state.add(m.name, "supervisor", str(pidfile))
        # nspawn makes this directory and, /run being no tmpfs here, refuses to remove it.
        self.state.add(m.name, "dir", f"/run/systemd/nspawn/propagate/{m.name}")
        if not self.running(pidfile):
            # A supervisor killed on its own leaves its nspawn running: stop that orphan (by
            # its pid file) and whatever else is left in the cgroup before booting again.
            self.stop_supervisor(str(pidfile))
            kill_cgroup(m.name)
        cg = [str(p) for p in cgroup_dirs(m.name)]
        nspawn = [
            "systemd-nspawn",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--link-journal=no",
            "--private-network",
            "--resolv-conf=off",
            f"--network-namespace-path=/run/netns/{m.name}",
            f"--machine={m.name}",
            "-D",
            str(d / "merged"),
        ]
        return self.start_supervised(
            pidfile, d / "nspawn.log", ["/bin/sh", "-c", BOOT_SCRIPT, "boot", *cg, *nspawn]
        )

    def start_supervised(self, pidfile: Path, log: Path, command: list[str]) -> bool:
        """Start ``command`` under hafleet-supervise (restarted on any exit but 0 and 2: a
        guest reboot ends nspawn with 133); False when it already runs."""
        out = run(
            [
                str(self.supervise),
                "start",
                "--pidfile",
                str(pidfile),
                "--log",
                str(log),
                "--stable-after",
                "5",
                "--max-restarts",
                "10",
                "--stop-timeout",
                "40",
                "--",
                *command,
            ]
        )
        return bool(json.loads(out.splitlines()[-1]).get("changed"))

    def running(self, pidfile: Path) -> bool:
        out = run([str(self.supervise), "status", "--pidfile", str(pidfile)])
        return json.loads(out.splitlines()[-1]).get("state") == "running"

    def ssh(self, m: P.Machine, command: str, timeout: float = 10.0) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                str(self.key),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "ConnectTimeout=2",
                f"{P.USER}@{m.address}",
                command,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ready(self, machines: list[P.Machine]) -> set[str]:
        """The machines that answer `sudo -n true` over ssh now."""
        procs = {m.name: self.ssh(m, "sudo -n true") for m in machines}
        ok = set()
        for name, proc in procs.items():
            try:
                if proc.wait(timeout=10) == 0:
                    ok.add(name)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return ok

    def wait_ready(self, machines: list[P.Machine], timeout: float, started: float) -> None:
        """Until each answers on ssh, at most ``timeout`` seconds from ``started`` (when the
        first was booted): the times printed are boot to ssh-ready."""
        pending = {m.name: m for m in machines}
        while pending:
            for name in sorted(self.ready(list(pending.values()))):
                say(
                    f"{name} ({pending[name].address}): ssh-ready after "
                    f"{time.monotonic() - started:.1f}s"
                )
                del pending[name]
            if not pending:
                return
            if time.monotonic() - started > timeout:
                logs = ", ".join(str(self.machine_dir(n) / "nspawn.log") for n in pending)
                raise HostError(
                    f"not ssh-ready within {timeout:g}s: {', '.join(pending)} (see {logs})"
                )
            time.sleep(0.5)

    def write_outputs(self) -> bool:
        keys = {m.name: self.host_keys(m.name) for m in self.lab.machines()}
        changed = write(self.known_hosts, P.known_hosts(self.lab, keys))
        changed |= write(self.inventory, P.hosts_yml(self.lab, self.key, self.known_hosts))
        return changed

    # ---- removal ---------------------------------------------------------------------------

    def remove(self, owners: list[str]) -> list[str]:
        """Remove what the state records for ``owners`` (machine names, "lab"), newest first;
        the supervisors of all of them are stopped together first. The problems left."""
        problems: list[str] = []
        items = [r for r in reversed(self.state.resources) if r["owner"] in owners]
        stops = [r for r in items if r["kind"] == "supervisor"]
        with concurrent.futures.ThreadPoolExecutor(max(1, len(stops))) as pool:
            for r, result in zip(
                stops, pool.map(self.stop_supervisor, [r["name"] for r in stops]), strict=True
            ):
                if result:
                    problems.append(f"{r['name']}: {result}")
        for r in items:
            if r["kind"] == "supervisor":
                self.state.drop(r)
                continue
            try:
                remove_resource(r)
                self.state.drop(r)
            except HostError as exc:
                problems.append(str(exc))
        return problems

    def stop_supervisor(self, pidfile: str) -> str | None:
        out = run(
            [str(self.supervise), "stop", "--pidfile", pidfile, "--timeout", "45"],
            check=False,
            timeout=120,
        )
        if out is None:
            return "hafleet-supervise stop failed"
        return None


def kill_cgroup(name: str) -> None:
    """SIGKILL what is left in a machine's own cgroup (ours, by that cgroup) and wait, bounded."""
    for pid in cgroup_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while cgroup_pids(name) and time.monotonic() < deadline:
        time.sleep(0.1)


def remove_resource(r: dict) -> None:
    kind, name = r["kind"], r["name"]
    if kind == "cgroup":
        kill_cgroup(name)
        for top in cgroup_dirs(name):
            if top.is_dir():
                for sub in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
                    if sub.is_dir():
                        with contextlib.suppress(OSError):
                            sub.rmdir()
                try:
                    top.rmdir()
                except OSError as exc:
                    raise HostError(f"cgroup {top}: {exc}") from None
    elif kind == "mount":
        if os.path.ismount(name):
            if run(["umount", name], check=False) is None:
                run(["umount", "-l", name])
    elif kind == "veth":
        if link_exists(name):
            run(["ip", "link", "del", name])
    elif kind == "netns":
        if Path(f"/run/netns/{name}").exists():
            run(["ip", "netns", "del", name])
    elif kind == "bridge":
        if link_exists(name):
            run(["ip", "link", "del", name])
    elif kind == "nft":
        run(["nft", "delete", "table", "inet", name], check=False, quiet=True)
    elif kind == "file":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    elif kind == "rmdir":  # a directory of ours that may hold files of others: only if empty
        with contextlib.suppress(OSError):
            os.rmdir(name)
    elif kind == "dir":
        shutil.rmtree(name, ignore_errors=True)
        if os.path.exists(name):
            raise HostError(f"{name} is still there")
    else:
        raise HostError(f"unknown resource kind {kind!r} for {name}")


# ---- small helpers -------------------------------------------------------------------------


def subnet_users(network, but: str) -> list[str]:
    """The interfaces other than ``but`` with an address in ``network`` (another lab's)."""
    found = []
    for link in json.loads(run(["ip", "-j", "-4", "addr", "show"]) or "[]"):
        for info in link.get("addr_info", []):
            address = ipaddress.IPv4Address(info["local"])
            if link["ifname"] != but and address in network:
                found.append(f"{link['ifname']} ({address})")
    return found


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def user_ids(root: Path, user: str) -> tuple[int, int]:
    for line in read_text(root / "etc/passwd").splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(parts[3])
    raise HostError(f"no user {user} in {root}/etc/passwd")


def tcp_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_tcp(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise HostError(f"{host}:{port} not answering after {timeout:g}s: {exc}") from None
            time.sleep(0.2)


def psskb(name: str) -> int:
    """The proportional set size of the processes in the machine's cgroup, in kB."""
    total = 0
    for pid in cgroup_pids(name):
        for line in read_text(Path(f"/proc/{pid}/smaps_rollup")).splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def die(text: str) -> int:
    print(f"machines: error: {text}", file=sys.stderr, flush=True)
    return 1
