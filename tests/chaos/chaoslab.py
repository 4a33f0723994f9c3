"""Real agents in lab network namespaces, and a fault injector over them.

``ChaosLab`` builds a ``NetLab`` (bridge ``<prefix>0`` holding ``<subnet>.1``, namespaces
``<prefix>-n1..nN``; tests/support/netlab.py) and runs one ``hafleet-agent run`` per namespace,
node ``nI`` on ``<subnet>.<I+1>`` with the default ports, started with ``ip netns exec`` (which
execs, so the PID we hold is the agent's own). The pytest process stays in the root namespace
and reaches every node's API through the bridge address: client traffic never crosses a
bridge *port* and is therefore never cut by a partition (clients keep talking to the
minority side, which is the harder case for linearizability).

Faults (all undone by ``close()``, which runs whatever the outcome):

- **partitions** with nftables in the *bridge* family: one table ``<prefix>_chaos`` whose
  ``forward`` chain drops frames from one node's bridge port to another's (``iifname
  <prefix>-vA oifname <prefix>-vB drop``). Any set of directed pairs can be blocked, so
  partitions are symmetric or one-way, between any sets of nodes. ARP and multicast (mDNS)
  obey the same rules. ``drop_matching`` adds an nft match (``tcp sport 7480``: only the
  API's answers) for finer cuts. The whole rule set is replaced atomically (``nft -f``) at every
  change. ``loss(pct)`` adds ``numgen random mod 100 < pct drop`` rules.
- **latency** needs ``sch_netem``; this machine kind's kernel has no netem (and no module
  directory to load it from), so ``netem_available()`` is False here and the latency
  scenario is skipped with that reason. Loss, which nftables can do, stands in for it.
- **processes**: ``kill9``, ``restart``, ``pause`` (SIGSTOP), ``resume`` (SIGCONT).
- **disks**: ``data_tmpfs=BYTES`` mounts a size-limited tmpfs on a node's data dir before it
  starts; ``fill_disk`` fills it until ENOSPC. ``fsync_fail=True`` starts the node through
  ``chaos_launcher.py``, which hands the storage an ``fsync_fn`` that raises EIO once
  ``fail_fsync`` has created a trigger file (the storage's injectable ``fsync_fn``; no
  agent code is changed).

TLS: on by default, as the collection deploys the agents (``CHAOS_TLS=0`` in the environment:
plain, the HMAC layer alone). A TLS cluster makes its CA with ``hafleet-agent ca init`` and
each node's certificate with ``ca issue`` (its lab address, and its ``advertise`` address
when it has one), runs every agent with ``--tls-*``, and ``api()`` speaks HTTPS checking the
CA (``ssl_context``). ``ChaosLab.cluster(..., tls=False)`` forces a plain cluster (the
scenarios that test the HMAC layer itself run that way too).

Cleanup order: resume paused processes, SIGKILL every agent by PID, delete the nft table by
name, unmount our mounts by exact path, then the NetLab teardown (processes started with
``run_in`` by PID, namespaces and links by exact name).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import netlab
from agents import (
    API_PORT,  # noqa: F401  (the scenarios and test_chaos.py import it from here)
    RAFT_PORT,
    Node,
    agent_command,
    kill_all,
)
from harness import Cluster
from netlab import NetLab

from hafleet_agent import ca

HERE = Path(__file__).resolve().parent

PREFIX = os.environ.get("HFCH_PREFIX", "hfch")
SUBNET = os.environ.get("HFCH_SUBNET", "10.81.0")
#: Agents run with mutual TLS and the HTTPS API unless CHAOS_TLS=0.
TLS = os.environ.get("CHAOS_TLS", "1") != "0"
HEARTBEAT_MS = 50
ELECTION_TIMEOUT_MS = 300
#: Transport reconnection back-off ceiling (transport.py backoff_max): after a heal, a link
#: comes back within this (jittered 50-100 %).
BACKOFF_MAX_S = 2.0
LAUNCHER = HERE / "chaos_launcher.py"
NFT = "nft"
_CMD_TIMEOUT = 10.0


class LabError(RuntimeError):
    pass


def _run(argv: Sequence[str], *, input: str | None = None, check: bool = True) -> str:
    res = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=_CMD_TIMEOUT
    )
    if check and res.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def nft_available() -> bool:
    return shutil.which(NFT) is not None


def netem_available(dev: str) -> bool:
    """True when ``tc qdisc ... netem`` works on ``dev`` (removed again at once)."""
    if shutil.which("tc") is None:
        return False
    res = subprocess.run(
        ["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms"],
        capture_output=True,
        timeout=_CMD_TIMEOUT,
    )
    if res.returncode != 0:
        return False
    subprocess.run(["tc", "qdisc", "del", "dev", dev, "root"], capture_output=True, timeout=10)
    return True


class ChaosCluster(Cluster):
    """``harness.Cluster``'s API helpers over agents that live in lab namespaces.

    Only the parts that differ are overridden: construction (no loopback lease), ``add``
    (namespace, address, launcher) and ``close``.
    """

    def __init__(self, lab: ChaosLab, base_dir: Path, name: str, tls: bool = TLS) -> None:  # noqa: D107
        self.lab = lab
        self.x = 0
        self._setup(base_dir, name, HEARTBEAT_MS, ELECTION_TIMEOUT_MS)
        if tls:
            self.enable_tls()
        self.mounts: list[Path] = []
        self.fsync_triggers: dict[str, Path] = {}
        self.paused: set[str] = set()

    # ---- TLS: the CA work in this process (``hafleet-agent ca``'s own functions; the CLI
    # costs a Python start-up per certificate, seconds per scenario on a busy machine) ------
    def enable_tls(self) -> None:
        self.tls_dir = self.dir / "tls"
        ca.init_ca(self.tls_dir)
        self.ssl_context = ssl.create_default_context(cafile=str(self.tls_dir / "ca.crt"))

    def issue(self, node_id: str, *addresses: str) -> tuple[Path, Path]:
        assert self.tls_dir is not None, "enable_tls() first"
        done = ca.issue(self.tls_dir, node_id, list(addresses))
        return done.cert_path, done.key_path

    def __repr__(self) -> str:
        return f"<ChaosCluster {self.name} {self.lab.subnet}.0/24 {sorted(self.nodes)}>"

    def host(self, index: int) -> str:
        return self.lab.netlab.addr(index)

    def add(  # type: ignore[override]
        self,
        index: int,
        *,
        bootstrap_expect: int | None = None,
        join: Iterable[str] = (),
        mdns: bool = False,
        data_tmpfs: int | None = None,
        fsync_fail: bool = False,
        config: dict[str, Any] | None = None,
        start: bool = True,
    ) -> Node:
        """Node ``n<index>`` in namespace ``index`` of the lab."""
        node_id = f"n{index}"
        assert node_id not in self.nodes
        host = self.host(index)
        data_dir = self.dir / node_id
        if data_tmpfs:
            data_dir.mkdir(mode=0o700)
            _run(["mount", "-t", "tmpfs", "-o", f"size={data_tmpfs},mode=0700", "tmpfs", data_dir])
            self.mounts.append(data_dir)
        args = self.run_args(
            node_id, host, data_dir, config, bootstrap_expect=bootstrap_expect, join=join, mdns=mdns
        )
        if self.tls_dir is not None:
            advertise = str((config or {}).get("advertise") or "")
            if advertise.count(":") == 1:  # host:port
                advertise = advertise.rsplit(":", 1)[0]
            if not (self.tls_dir / f"{node_id}.crt").exists():
                self.issue(node_id, host, *([advertise] if advertise else []))
            args += self.tls_args(node_id, host)
        if fsync_fail:
            trigger = self.dir / f"{node_id}.fail-fsync"
            self.fsync_triggers[node_id] = trigger
            cmd = [sys.executable, str(LAUNCHER), "--fsync-fail-file", str(trigger), "--"]
        else:
            cmd = agent_command()
        argv = ["ip", "netns", "exec", self.lab.netlab.ns(index), *cmd, *args]
        node = Node(node_id, index, host, data_dir, self.dir / f"{node_id}.log", argv)
        node.tls = self.tls_dir is not None
        self.nodes[node_id] = node
        if start:
            self.start(node)
        return node

    def add_many(self, count: int, **kwargs: Any) -> list[Node]:  # type: ignore[override]
        """``count`` nodes founded together (static ``--join`` to all, bootstrap_expect)."""
        first = len(self.nodes) + 1
        indexes = range(first, first + count)
        kwargs.setdefault("join", [f"{self.host(i)}:{RAFT_PORT}" for i in indexes])
        kwargs.setdefault("bootstrap_expect", count)
        per_node = kwargs.pop("per_node", {})
        return [self.add(i, **{**kwargs, **per_node.get(i, {})}) for i in indexes]

    # ---- process faults --------------------------------------------------------------------
    def pause(self, node: str | Node) -> None:
        node = self.node(node)
        assert node.proc is not None and node.running()
        os.kill(node.proc.pid, signal.SIGSTOP)
        self.paused.add(node.id)

    def resume(self, node: str | Node) -> None:
        node = self.node(node)
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGCONT)
        self.paused.discard(node.id)

    def restart(self, node: str | Node) -> Node:
        return self.start(node)

    # ---- disk faults -----------------------------------------------------------------------
    def fill_disk(self, node: str | Node) -> int:
        """Fill the node's (tmpfs) data dir until ENOSPC; returns the bytes written."""
        node = self.node(node)
        assert node.data_dir in self.mounts, f"{node.id} has no size-limited data dir"
        written = 0
        chunk = b"\0" * 65536
        fd = os.open(node.data_dir / "FILLER", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for _ in range(1 << 16):  # bounded: 4 GiB at most, far above any tmpfs we mount
                try:
                    written += os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        break
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(fd)
        return written

    def fail_fsync(self, node: str | Node) -> None:
        """From now on every fsync of the node's storage raises EIO (needs fsync_fail)."""
        node = self.node(node)
        self.fsync_triggers[node.id].write_text("fail\n")

    # ---- cleanup ---------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        errors = kill_all(node.proc for node in self.nodes.values())
        for path in reversed(self.mounts):
            res = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=10)
            if res.returncode != 0 and os.path.ismount(path):
                res = subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True)
                if res.returncode != 0:
                    errors.append(f"umount {path}: {res.stderr.strip()}")
        self.mounts.clear()
        if errors:
            raise LabError("cluster cleanup incomplete: " + "; ".join(errors))


class ChaosLab:
    """A NetLab with nft-based link faults; a context manager that always cleans up."""

    def __init__(self, n: int, *, prefix: str = PREFIX, subnet: str = SUBNET) -> None:
        self.netlab = NetLab(prefix=prefix, subnet=subnet, n=n)
        self.prefix = prefix
        self.subnet = subnet
        self.n = n
        self.table = f"{prefix}_chaos"
        self.blocked: set[tuple[int, int]] = set()
        self.lossy: dict[tuple[int, int], int] = {}
        self.matched: set[tuple[int, int, str]] = set()  # (src, dst, nft match) drops
        self._table_made = False
        self.clusters: list[ChaosCluster] = []

    def __enter__(self) -> ChaosLab:
        self.netlab.setup()
        try:
            if nft_available():
                self._apply()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cluster(self, base_dir: Path, name: str, tls: bool = TLS) -> ChaosCluster:
        c = ChaosCluster(self, base_dir, name, tls)
        self.clusters.append(c)
        return c

    def port(self, i: int) -> str:
        """The root-namespace end of node i's veth: its port on the bridge."""
        return f"{self.prefix}-v{i}"

    # ---- link faults -----------------------------------------------------------------------
    def _apply(self) -> None:
        rules = []
        for a, b in sorted(self.blocked):
            rules.append(f'iifname "{self.port(a)}" oifname "{self.port(b)}" drop')
        for a, b, match in sorted(self.matched):
            rules.append(f'iifname "{self.port(a)}" oifname "{self.port(b)}" {match} drop')
        for (a, b), pct in sorted(self.lossy.items()):
            if (a, b) not in self.blocked and pct > 0:
                rules.append(
                    f'iifname "{self.port(a)}" oifname "{self.port(b)}" '
                    f"numgen random mod 100 < {pct} drop"
                )
        body = "\n".join(f"    {r}" for r in rules)
        script = (
            f"table bridge {self.table}\n"
            f"delete table bridge {self.table}\n"
            f"table bridge {self.table} {{\n"
            "  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"{body}\n"
            "  }\n"
            "}\n"
        )
        _run([NFT, "-f", "-"], input=script)
        self._table_made = True

    def block(self, src: Iterable[int], dst: Iterable[int], *, oneway: bool = False) -> None:
        """Drop everything from nodes ``src`` to nodes ``dst`` (and back unless oneway)."""
        src, dst = list(src), list(dst)
        for a in src:
            for b in dst:
                if a != b:
                    self.blocked.add((a, b))
                    if not oneway:
                        self.blocked.add((b, a))
        self._apply()

    def drop_matching(self, src: int, dst: int, match: str) -> None:
        """Drop the frames from node ``src`` to node ``dst`` that match an nft expression,
        e.g. ``tcp sport 7480`` (the API's answers): a finer cut than ``block``."""
        self.matched.add((src, dst, match))
        self._apply()

    def isolate(self, node: int, *, oneway_out: bool = False) -> None:
        others = [i for i in range(1, self.n + 1) if i != node]
        self.block([node], others, oneway=oneway_out)

    def partition(self, *groups: Iterable[int]) -> None:
        """Split the nodes into ``groups``; nodes in no group are cut from every group."""
        sets = [set(g) for g in groups]
        everyone = set(range(1, self.n + 1))
        for g in sets:
            self.block(g, everyone - g)

    def loss(self, pct: int, nodes: Iterable[int] | None = None) -> None:
        """Drop ``pct`` % of the frames on every link between ``nodes`` (default: all)."""
        nodes = list(nodes) if nodes is not None else list(range(1, self.n + 1))
        for a in nodes:
            for b in nodes:
                if a != b:
                    self.lossy[(a, b)] = pct
        self._apply()

    def heal(self) -> None:
        self.blocked.clear()
        self.lossy.clear()
        self.matched.clear()
        self._apply()

    def rules(self) -> str:
        return _run([NFT, "list", "table", "bridge", self.table], check=False)

    # ---- cleanup ---------------------------------------------------------------------------
    def close(self) -> None:
        errors: list[str] = []
        for c in self.clusters:
            try:
                c.close()
            except Exception as exc:  # keep going: the rest must still be removed
                errors.append(str(exc))
        if self._table_made:
            res = subprocess.run(
                [NFT, "delete", "table", "bridge", self.table], capture_output=True, text=True
            )
            if res.returncode == 0 or "No such file" in res.stderr:
                self._table_made = False
            else:
                errors.append(f"nft delete table {self.table}: {res.stderr.strip()}")
        try:
            self.netlab.teardown()
        except Exception as exc:
            errors.append(str(exc))
        if errors:
            raise LabError("; ".join(errors))


def cleanup(prefix: str = PREFIX) -> None:
    """Remove what a killed run left behind: the nft table and the NetLab names (exact
    patterns only). Agents of a killed run died with it (PR_SET_PDEATHSIG)."""
    subprocess.run(
        [NFT, "delete", "table", "bridge", f"{prefix}_chaos"], capture_output=True, timeout=10
    )
    netlab.cleanup(prefix)


def now() -> float:
    return time.monotonic()
