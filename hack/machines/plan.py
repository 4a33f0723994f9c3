"""The pure part of the machines lab: names, addresses, the text of the files it writes, and
the plan of what to create and remove. No I/O here: hack/machines/host.py carries it out."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
# The rootfs: debootstrap --variant=minbase --include=... (docs/machines.md).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-venv",
    "iproute2",
    "sudo",
)
# Bump when the customisation of the rootfs (rootfs.py: customise_rootfs) changes: a new key
# makes a new rootfs beside the old one.
ROOTFS_REVISION = 1
USER = "deploy"
ACNG_PORT = 3142
POOL_GROUP = "hafleet_pool"
BALANCER_GROUP = "hafleet_balancer"
LAB_GROUP = "hafleet_machines"
DEFAULT_MIRRORS = {
    "debian": "http://deb.debian.org/debian/",
    "security": "http://deb.debian.org/debian-security/",
}
IFNAMSIZ = 15  # Linux interface names: at most 15 bytes
_PREFIX = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*-?$")
_BRIDGE = re.compile(r"^[a-z][a-z0-9]*$")


class PlanError(ValueError):
    """A lab that cannot be made as asked (bad name, address out of range, ...)."""


@dataclass(frozen=True)
class Machine:
    name: str  # also its hostname, network namespace and cgroup
    role: str  # "pool" or "balancer"
    index: int  # 1-based within its role
    address: str
    veth: str  # the host side of its veth pair (the guest side is eth0)


@dataclass(frozen=True)
class Lab:
    prefix: str = "hafleet-"
    bridge: str = "hafleet1"
    subnet: str = "10.78.0.0/24"
    nodes: int = 3
    balancers: int = 1
    pool_start: int = 11
    balancer_start: int = 201

    @property
    def name(self) -> str:
        """The lab's own name (its state directory): the prefix without its last dash."""
        return self.prefix.rstrip("-")

    @property
    def out_name(self) -> str:
        """The default directory (under build/) of its inventory, key and known_hosts: the
        default lab's is build/machines, another lab's build/machines-NAME, so two labs
        never write (or remove) each other's files."""
        return "machines" if self.name == Lab.prefix.rstrip("-") else f"machines-{self.name}"

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet, strict=True)

    @property
    def bridge_address(self) -> str:
        """The host's address on the lab bridge: the subnet's first address."""
        return str(self.network.network_address + 1)

    @property
    def proxy(self) -> str:
        return f"http://{self.bridge_address}:{ACNG_PORT}"

    @property
    def nft_table(self) -> str:
        return "hafleet_machines_" + self.bridge

    def check(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise PlanError(f"prefix {self.prefix!r}: lower-case letters, digits and dashes")
        if not _BRIDGE.match(self.bridge) or len(self.bridge) > IFNAMSIZ:
            raise PlanError(f"bridge {self.bridge!r}: lower-case letters and digits, at most 15")
        try:
            net = self.network
        except ValueError as exc:
            raise PlanError(f"subnet {self.subnet!r}: {exc}") from None
        if net.prefixlen < 16 or net.prefixlen > 28:
            raise PlanError(f"subnet {self.subnet}: a prefix length of /16 to /28")
        if self.nodes < 0 or self.balancers < 0:
            raise PlanError("NODES and BALANCERS are counts: 0 or more")
        last = net.num_addresses - 2  # the last host offset (the broadcast address excluded)
        pool = range(self.pool_start, self.pool_start + self.nodes)
        lbs = range(self.balancer_start, self.balancer_start + self.balancers)
        for what, span in (("pool", pool), ("balancer", lbs)):
            if span and (span.start < 2 or span.stop - 1 > last):
                raise PlanError(
                    f"{what} addresses .{span.start}..{span.stop - 1} do not fit {self.subnet} "
                    f"(2..{last}; 1 is the bridge)"
                )
        if pool and lbs and max(pool.start, lbs.start) < min(pool.stop, lbs.stop):
            raise PlanError(
                f"{self.nodes} pool machines from .{self.pool_start} overlap the balancers "
                f"from .{self.balancer_start}"
            )
        for machine in self.machines():
            if len(machine.veth) > IFNAMSIZ:
                raise PlanError(
                    f"interface name {machine.veth!r} is longer than {IFNAMSIZ}: "
                    "use a shorter bridge name"
                )
            if len(machine.name) > 63:
                raise PlanError(f"machine name {machine.name!r} is longer than 63")

    def machines(self) -> list[Machine]:
        net = self.network
        out = []
        for role, letter, count, start in (
            ("pool", "m", self.nodes, self.pool_start),
            ("balancer", "lb", self.balancers, self.balancer_start),
        ):
            for i in range(1, count + 1):
                out.append(
                    Machine(
                        name=f"{self.prefix}{letter}{i}",
                        role=role,
                        index=i,
                        address=str(net.network_address + start + i - 1),
                        veth=f"{self.bridge}{letter}{i}",
                    )
                )
        return out


NFT_MARK = "hafleet machines r2"


def nft_rules(lab: Lab) -> str:
    """The lab's nftables table: forwarding between the bridge and any other interface is
    dropped. Traffic inside the bridge passes: with br_netfilter loaded (and
    bridge-nf-call-iptables=1, as on this machine kind), bridged frames also cross this hook,
    with the bridge as both input and output."""
    br = lab.bridge
    return (
        f"table inet {lab.nft_table} {{\n"
        "  chain forward {\n"
        f'    comment "{NFT_MARK}"\n'
        "    type filter hook forward priority -10; policy accept;\n"
        f'    iifname "{br}" oifname != "{br}" drop\n'
        f'    oifname "{br}" iifname != "{br}" drop\n'
        "  }\n"
        "}\n"
    )


def rootfs_key() -> str:
    """Names the rootfs in the shared cache: the suite, the packages and the revision."""
    text = f"{SUITE} {' '.join(PACKAGES)} {ROOTFS_REVISION}"
    return f"{SUITE}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


# ---- the plan ------------------------------------------------------------------------------


@dataclass
class Plan:
    create: list[Machine] = field(default_factory=list)  # not there at all
    start: list[Machine] = field(default_factory=list)  # there but not running
    keep: list[Machine] = field(default_factory=list)  # there and running
    remove: list[str] = field(default_factory=list)  # recorded machines no longer wanted

    @property
    def changes(self) -> bool:
        return bool(self.create or self.start or self.remove)

    def summary(self) -> str:
        if not self.changes:
            return f"nothing to change: {len(self.keep)} machine(s) running"
        parts = []
        for verb, items in (
            ("create", [m.name for m in self.create]),
            ("start", [m.name for m in self.start]),
            ("remove", self.remove),
        ):
            if items:
                parts.append(f"{verb} {', '.join(items)}")
        if self.keep:
            parts.append(f"keep {', '.join(m.name for m in self.keep)}")
        return "; ".join(parts)


def plan(lab: Lab, recorded: set[str], running: set[str]) -> Plan:
    """What `up` does: ``recorded`` are the machines the lab's state names, ``running`` those
    of them whose supervisor runs and that answer on ssh."""
    wanted = lab.machines()
    names = {m.name for m in wanted}
    result = Plan(remove=sorted(recorded - names, key=_natural))
    for machine in wanted:
        if machine.name not in recorded:
            result.create.append(machine)
        elif machine.name in running:
            result.keep.append(machine)
        else:
            result.start.append(machine)
    return result


def _natural(name: str) -> tuple[str, int]:
    match = re.match(r"^(.*?)(\d+)$", name)
    return (match.group(1), int(match.group(2))) if match else (name, 0)


# ---- the text of the files -----------------------------------------------------------------


def hosts_yml(lab: Lab, key: Path, known_hosts: Path) -> str:
    """The Ansible inventory: the groups hafleet_pool and hafleet_balancer under one group
    whose vars reach the machines as the lab's user, with the lab's key and known_hosts."""
    lines = [
        f"# Written by hack/machines.py up for the lab {lab.name!r} (bridge {lab.bridge}, "
        f"{lab.subnet}).",
        "# Remade by every `up`; removed by `down`.",
        f"{LAB_GROUP}:",
        "  children:",
    ]
    for group, role in ((POOL_GROUP, "pool"), (BALANCER_GROUP, "balancer")):
        members = [m for m in lab.machines() if m.role == role]
        lines.append(f"    {group}:")
        if not members:
            lines.append("      hosts: {}")
            continue
        lines.append("      hosts:")
        for m in members:
            lines.append(f"        {m.name}:")
            lines.append(f"          ansible_host: {m.address}")
        if role == "pool":
            # The machines run no service of their own: the agent's demo service answers on
            # the service port, so requests through HAProxy reach every node.
            lines += ["      vars:", "        agent_demo_service: true"]
    lines += [
        "  vars:",
        f"    ansible_user: {USER}",
        "    ansible_become: true",
        "    ansible_python_interpreter: /usr/bin/python3",
        f"    ansible_ssh_private_key_file: {key}",
        "    ansible_ssh_common_args: >-",
        "      -o StrictHostKeyChecking=yes",
        f"      -o UserKnownHostsFile={known_hosts}",
        f"    hafleet_machines_apt_proxy: {lab.proxy}",
    ]
    return "\n".join(lines) + "\n"


def known_hosts(lab: Lab, host_keys: dict[str, list[str]]) -> str:
    """One line per machine and host key: ``NAME,ADDRESS TYPE KEY``. ``host_keys`` maps a
    machine name to the public host keys (``TYPE KEY [comment]``) it was given."""
    lines = []
    for m in lab.machines():
        for key in host_keys.get(m.name, []):
            kind, blob = key.split()[:2]
            lines.append(f"{m.name},{m.address} {kind} {blob}")
    return "\n".join(lines) + ("\n" if lines else "")


def etc_hosts(lab: Lab, machine: Machine) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        f"127.0.1.1\t{machine.name}",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{lab.bridge_address}\t{lab.prefix}host",
    ]
    lines += [f"{m.address}\t{m.name}" for m in lab.machines()]
    return "\n".join(lines) + "\n"


def apt_proxy_conf(lab: Lab) -> str:
    return (
        "// hack/machines.py: packages only through the lab host's cache (apt-cacher-ng)\n"
        f'Acquire::http::Proxy "{lab.proxy}";\n'
        'Acquire::https::Proxy "DIRECT";\n'
        'Acquire::Retries "3";\n'
    )


def acng_conf(lab: Lab, cache_dir: Path, run_dir: Path) -> str:
    """apt-cacher-ng's configuration for one lab: bound to the bridge address only, its own
    pid file and socket; the Debian backend is the host's mirror (file backends_debian)."""
    return "\n".join(
        [
            f"CacheDir: {cache_dir}",
            f"LogDir: {run_dir}",
            "SupportDir: /usr/lib/apt-cacher-ng",
            f"BindAddress: {lab.bridge_address}",
            f"Port: {ACNG_PORT}",
            f"SocketPath: {run_dir}/acng.socket",
            f"PidFile: {run_dir}/acng.pid",
            "ForeGround: 1",
            "Remap-debrep: file:deb_mirror*.gz /debian ; file:backends_debian",
            "Remap-secdeb: security.debian.org security.debian.org/debian-security "
            "deb.debian.org/debian-security /debian-security ; file:backends_security",
            "ExThreshold: 4",
            "",
        ]
    )


def mirrors(deb822: str) -> dict[str, str]:
    """From a deb822 sources file (the host's /etc/apt/sources.list.d/debian.sources): the
    mirror URI of the Debian archive and of the security archive, by kind."""
    found: dict[str, str] = {}
    for stanza in re.split(r"\n\s*\n", deb822):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        uris = fields.get("uris", "").split()
        suites = fields.get("suites", "").split()
        if not uris or not suites:
            continue
        kind = "security" if any(s.endswith("-security") for s in suites) else "debian"
        found.setdefault(kind, uris[0].rstrip("/") + "/")
    return found


def guest_sources(found: dict[str, str]) -> str:
    """The guests' sources.list (one-line format): the host's mirrors, through the proxy."""
    debian = found.get("debian", DEFAULT_MIRRORS["debian"])
    security = found.get("security", DEFAULT_MIRRORS["security"])
    return (
        f"deb {debian} {SUITE} main\n"
        f"deb {debian} {SUITE}-updates main\n"
        f"deb {security} {SUITE}-security main\n"
    )
