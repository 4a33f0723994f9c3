"""Real ``hafleet-agent run`` processes on loopback addresses, for multi-process cluster tests.

A ``Cluster`` leases a loopback /24 of its own, ``127.0.X.0/24`` with X in 100..254, and runs
node ``nI`` on ``127.0.X.I`` with the default ports (Raft 7400, API 7480), so the agents speak
exactly as they would on separate hosts. The lease is a ``flock`` on a file in
``$TMPDIR/hafleet-cluster-tests/`` (held for the cluster's life) plus a probe that nothing
listens on the addresses: concurrent test runs never share an X, and a leftover agent of a
crashed run makes its X unusable rather than part of a test. X is never reused within one
test session either. Data dirs, logs, config files and the key and token files (mode 0600)
live under the test's ``tmp_path``.

``Cluster(..., tls=True)`` runs the agents with TLS: a cluster CA made with ``hafleet-agent
ca init`` in ``DIR/tls``, each node's certificate (``ca issue --node-id nI --address
127.0.X.I``) given with ``--tls-ca-file/--tls-cert-file/--tls-key-file``; ``api()`` then
speaks HTTPS and checks the agent's certificate against that CA (``ssl_context``).

The processes themselves (start in their own session, dying with the test process; stop
by PID; logs; waiting with a deadline) are agents.py's; ``close()`` stops them, and the
fixtures run it in their finalizers whatever the test's outcome. The cluster tests'
``conftest.py`` appends the tail of every agent's log to the report of a failed test.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import random
import secrets
import select
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agents import (
    API_PORT,
    EXIT_TIMEOUT,
    RAFT_PORT,
    Node,
    agent_command,
    holds_for,  # noqa: F401  (the cluster tests import it from here)
    kill_all,
    run_args,
    wait_for,
    write_config,
    write_secret,
)

HEARTBEAT_MS = 50
ELECTION_TIMEOUT_MS = 300
#: Bounds for the waits; generous, because the machine running the tests may be busy.
FORM_TIMEOUT = 40.0
ELECT_TIMEOUT = 20.0
HTTP_TIMEOUT = 10.0

LOCK_DIR = Path(tempfile.gettempdir()) / "hafleet-cluster-tests"
SUBNETS = range(100, 255)
MAX_NODES = 16  # addresses .1-.16 of a leased /24 must be free

T = TypeVar("T")

_ACTIVE: list[Cluster] = []
_USED: set[int] = set()
_DEFAULT = object()


def active_clusters() -> list[Cluster]:
    return list(_ACTIVE)


# --- loopback subnet leases -----------------------------------------------------------------


class SubnetLease:
    def __init__(self, x: int, fd: int) -> None:
        self.x = x
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _addresses_free(x: int, count: int) -> bool:
    for y in range(1, count + 1):
        for port in (RAFT_PORT, API_PORT):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((f"127.0.{x}.{y}", port))
                except OSError:
                    return False
    return True


def lease_subnet(count: int = MAX_NODES) -> SubnetLease:
    """Lease a 127.0.X.0/24 that no other test (of any run) holds and nothing listens on."""
    LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
    candidates = [x for x in SUBNETS if x not in _USED] or list(SUBNETS)
    random.shuffle(candidates)
    for x in candidates:
        fd = os.open(LOCK_DIR / f"127.0.{x}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if _addresses_free(x, count):
            _USED.add(x)
            return SubnetLease(x, fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    raise RuntimeError(f"no free loopback subnet 127.0.X.0/24 with X in {SUBNETS}")


# --- nodes and clusters ---------------------------------------------------------------------


class Cluster:
    """Agents of one cluster name on a leased 127.0.X.0/24; see the module docstring."""

    def __init__(
        self,
        base_dir: Path,
        *,
        heartbeat_ms: int = HEARTBEAT_MS,
        election_timeout_ms: int = ELECTION_TIMEOUT_MS,
        config: dict[str, Any] | None = None,
        tls: bool = False,
    ) -> None:
        self.lease = lease_subnet()
        self.x = self.lease.x
        name = f"t{self.x}-{secrets.token_hex(3)}"
        self._setup(base_dir / f"cluster-127.0.{self.x}", name, heartbeat_ms, election_timeout_ms)
        self.config = dict(config or {})
        if tls:
            self.enable_tls()
        _ACTIVE.append(self)

    def _setup(
        self, directory: Path, name: str, heartbeat_ms: int, election_timeout_ms: int
    ) -> None:
        """The directory, name, timing, key and token of a cluster wherever its nodes run."""
        self.name = name
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.heartbeat_ms = heartbeat_ms
        self.election_timeout_ms = election_timeout_ms
        self.config: dict[str, Any] = {}
        self.key_file = write_secret(self.dir / "key")
        self.token_file = write_secret(self.dir / "token")
        self.token = self.token_file.read_text().strip()
        self.nodes: dict[str, Node] = {}
        self.last_view: dict[str, Any] = {}  # what the last agreement check saw, for errors
        self.closed = False
        self.tls_dir: Path | None = None
        self.ssl_context: ssl.SSLContext | None = None

    # ---- TLS -------------------------------------------------------------------------------
    def enable_tls(self) -> None:
        """Make the cluster CA (``hafleet-agent ca init``); nodes added from now on run with
        TLS and a certificate of it, and ``api()`` speaks HTTPS checking it."""
        self.tls_dir = self.dir / "tls"
        done = run_cli("ca", "init", "--dir", str(self.tls_dir))
        assert done.returncode == 0, done.stderr
        self.ssl_context = ssl.create_default_context(cafile=str(self.tls_dir / "ca.crt"))

    def issue(self, node_id: str, *addresses: str) -> tuple[Path, Path]:
        """``hafleet-agent ca issue`` for ``node_id``: (certificate, key)."""
        assert self.tls_dir is not None, "enable_tls() first"
        args = ["ca", "issue", "--dir", str(self.tls_dir), "--node-id", node_id]
        for a in addresses:
            args += ["--address", a]
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr
        return self.tls_dir / f"{node_id}.crt", self.tls_dir / f"{node_id}.key"

    def tls_args(self, node_id: str, host: str) -> list[str]:
        """The ``--tls-*`` flags of a node (its certificate issued when missing)."""
        assert self.tls_dir is not None
        cert, key = self.tls_dir / f"{node_id}.crt", self.tls_dir / f"{node_id}.key"
        if not cert.exists():
            self.issue(node_id, host)
        return [
            "--tls-ca-file",
            str(self.tls_dir / "ca.crt"),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
        ]

    def __repr__(self) -> str:
        return f"<Cluster {self.name} 127.0.{self.x}.0/24 {sorted(self.nodes)}>"

    # ---- processes -------------------------------------------------------------------------
    def host(self, index: int) -> str:
        return f"127.0.{self.x}.{index}"

    def node(self, node: str | Node) -> Node:
        return node if isinstance(node, Node) else self.nodes[node]

    def add(
        self,
        node_id: str | None = None,
        *,
        bootstrap_expect: int | None = None,
        join: Iterable[str] = (),
        mdns: bool = False,
        key_file: Path | None = None,
        config: dict[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> Node:
        """Define node ``nI`` on ``127.0.X.I`` (I = the next free index) and start it.

        ``join`` takes Raft addresses; ``mdns`` announces and browses on the node's own
        address only; ``config`` (merged over the cluster's) goes to a TOML ``--config``."""
        index = len(self.nodes) + 1
        assert index <= MAX_NODES, "the leased /24 is probed for .1-.16 only"
        node_id = node_id or f"n{index}"
        assert node_id not in self.nodes
        host = self.host(index)
        data_dir = self.dir / node_id
        settings = {**self.config, **(config or {})}
        argv = agent_command() + self.run_args(
            node_id,
            host,
            data_dir,
            settings,
            key_file=key_file,
            bootstrap_expect=bootstrap_expect,
            join=join,
            mdns=mdns,
        )
        if self.tls_dir is not None:
            argv += self.tls_args(node_id, host)
        argv += list(extra_args)
        node = Node(node_id, index, host, data_dir, self.dir / f"{node_id}.log", argv)
        node.tls = self.tls_dir is not None
        self.nodes[node_id] = node
        if start:
            self.start(node)
        return node

    def run_args(
        self,
        node_id: str,
        host: str,
        data_dir: Path,
        settings: dict[str, Any] | None,
        key_file: Path | None = None,
        **flags: Any,
    ) -> list[str]:
        """``run`` and its flags for a node of this cluster (its name, key, token and timing);
        ``settings`` go to a TOML ``--config``; ``flags``: bootstrap_expect, join, mdns."""
        config_file = write_config(self.dir / f"{node_id}.toml", settings) if settings else None
        return run_args(
            node_id,
            cluster=self.name,
            host=host,
            data_dir=data_dir,
            key_file=key_file or self.key_file,
            token_file=self.token_file,
            heartbeat_ms=self.heartbeat_ms,
            election_timeout_ms=self.election_timeout_ms,
            config_file=config_file,
            **flags,
        )

    def add_many(self, count: int, **kwargs: Any) -> list[Node]:
        """``count`` nodes that all know all the others' Raft addresses (unless ``join`` or
        ``mdns`` says otherwise), started together."""
        first = len(self.nodes) + 1
        indexes = range(first, first + count)
        if "join" not in kwargs and not kwargs.get("mdns"):
            kwargs["join"] = [f"{self.host(i)}:{RAFT_PORT}" for i in indexes]
        return [self.add(**kwargs) for _ in indexes]

    def start(self, node: str | Node) -> Node:
        return self.node(node).start()

    def restart(self, node: str | Node) -> Node:
        """Start a node again with the same flags and data dir (it must have stopped)."""
        return self.start(node)

    def kill9(self, node: str | Node) -> None:
        node = self.node(node)
        assert node.proc is not None and node.running(), f"{node.id} is not running"
        node.expect_running = False
        os.kill(node.proc.pid, signal.SIGKILL)
        node.exit_codes.append(node.proc.wait(timeout=EXIT_TIMEOUT))

    def term(self, node: str | Node) -> float:
        """Send SIGTERM; returns the monotonic time it was sent."""
        node = self.node(node)
        assert node.proc is not None and node.running(), f"{node.id} is not running"
        node.expect_running = False
        sent = time.monotonic()
        os.kill(node.proc.pid, signal.SIGTERM)
        return sent

    def expect_exit(self, node: str | Node) -> None:
        """The test expects this node to stop by itself (removed, leaving)."""
        self.node(node).expect_running = False

    def wait_exit(self, node: str | Node, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait for the process to end (it must have been told to); returns its exit code."""
        node = self.node(node)
        assert node.proc is not None
        node.expect_running = False
        try:
            code = node.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{node.id} (pid {node.proc.pid}) did not exit within {timeout:g} s"
            ) from None
        node.exit_codes.append(code)
        return code

    def check_alive(self) -> None:
        """Fail at once when a node the test relies on has exited."""
        for node in self.nodes.values():
            if node.expect_running and node.proc is not None and node.proc.poll() is not None:
                node.expect_running = False
                raise AssertionError(
                    f"{node.id} exited unexpectedly with code {node.proc.returncode}"
                )

    def running(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.running()]

    def close(self) -> None:
        """Kill every process still running, by its PID, and give the subnet back."""
        if self.closed:
            return
        self.closed = True
        try:
            kill_all(node.proc for node in self.nodes.values())
        finally:
            self.lease.release()
            with contextlib.suppress(ValueError):
                _ACTIVE.remove(self)

    def logs_tail(self, lines: int = 40) -> str:
        return "\n".join(node.report(lines) for node in self.nodes.values())

    # ---- HTTP API --------------------------------------------------------------------------
    def api(
        self,
        node: str | Node,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: Any = _DEFAULT,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> tuple[int, Any]:
        """One request to a node's API: ``(status, parsed JSON)`` (the text if not JSON).
        ``token=None`` sends no Authorization header; ``raw`` sends bytes as the body."""
        node = self.node(node)
        conn: http.client.HTTPConnection
        if self.ssl_context is not None and node.tls:
            conn = http.client.HTTPSConnection(
                node.host, API_PORT, timeout=timeout, context=self.ssl_context
            )
        else:
            conn = http.client.HTTPConnection(node.host, API_PORT, timeout=timeout)
        try:
            hdrs: dict[str, str] = {}
            tok = self.token if token is _DEFAULT else token
            if tok is not None:
                hdrs["Authorization"] = f"Bearer {tok}"
            data = raw if raw is not None else None if body is None else json.dumps(body).encode()
            if data is not None:
                hdrs["Content-Type"] = "application/json"
            hdrs.update(headers or {})
            try:
                conn.request(method, path, body=data, headers=hdrs)
            except (BrokenPipeError, ConnectionResetError):
                if conn.sock is None:
                    raise  # reset while connecting (an agent dying): there is no answer
                # the server answered before reading the whole body (413): read it
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        return resp.status, parse_body(payload)

    def ok(self, node: str | Node, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """A request that must answer 200; returns the parsed body."""
        status, payload = self.api(node, method, path, body, **kw)
        assert status == 200, f"{method} {path} on {self.node(node).id}: {status} {payload}"
        return payload

    def status(self, node: str | Node) -> dict[str, Any] | None:
        """``/v1/status`` of a node, or None when it does not answer (yet)."""
        try:
            code, st = self.api(node, "GET", "/v1/status", timeout=3.0)
        except (OSError, http.client.HTTPException):
            return None
        return st if code == 200 else None

    def put(self, node: str | Node, key: str, value: Any) -> dict[str, Any]:
        return self.ok(node, "PUT", f"/v1/kv/{key}", {"value": value})

    def get(self, node: str | Node, key: str, stale: bool = False) -> tuple[int, Any]:
        return self.api(node, "GET", f"/v1/kv/{key}" + ("?stale=1" if stale else ""))

    # ---- cluster-level waits ---------------------------------------------------------------
    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float,
        what: str,
        describe: Callable[[], str] | None = None,
    ) -> T:
        """``wait_for`` that also fails at once when a node exits unexpectedly."""
        return wait_for(predicate, timeout, what, check=self.check_alive, describe=describe)

    def _ids(self, nodes: Iterable[str | Node] | None) -> list[str]:
        if nodes is None:
            return [n.id for n in self.nodes.values() if n.running()]
        return [self.node(n).id for n in nodes]

    def _statuses(self, ids: Iterable[str]) -> dict[str, dict] | None:
        """``/v1/status`` of each of ``ids``, or None at the first that does not answer;
        ``last_view`` keeps a summary of what was seen, for the message of a timeout."""
        statuses = {}
        self.last_view = {}
        for nid in ids:
            st = self.status(nid)
            self.last_view[nid] = _summary(st)
            if st is None:
                return None
            statuses[nid] = st
        return statuses

    def agreed(self, nodes: Iterable[str | Node] | None = None) -> dict[str, dict] | None:
        """The statuses of ``nodes`` when they all agree on one cluster id, one leader (who
        says it leads) and one member table in which every one of them is a voter."""
        ids = self._ids(nodes)
        statuses = self._statuses(ids)
        if statuses is None:
            return None
        views = {
            (
                st["cluster_id"],
                st["leader_id"],
                tuple(sorted((m["id"], m["role"]) for m in st["members"])),
            )
            for st in statuses.values()
        }
        if len(views) != 1:
            return None
        cid, lead, members = views.pop()
        if cid is None or lead is None or lead not in statuses:
            return None
        if statuses[lead]["state"] != "leader":
            return None
        roles = dict(members)
        if set(ids) - set(roles) or roles[lead] != "leader":
            return None
        if any(roles[nid] != "voter" for nid in ids if nid != lead):
            return None
        if any(st["state"] != "follower" for nid, st in statuses.items() if nid != lead):
            return None
        return statuses

    def wait_agreed(
        self, nodes: Iterable[str | Node] | None = None, timeout: float = FORM_TIMEOUT
    ) -> dict[str, dict]:
        ids = self._ids(nodes)
        return self.wait_for(
            lambda: self.agreed(ids),
            timeout,
            f"{ids} to agree on cluster, leader, members",
            describe=lambda: json.dumps(self.last_view, sort_keys=True),
        )

    def leader(
        self, nodes: Iterable[str | Node] | None = None, timeout: float = ELECT_TIMEOUT
    ) -> str:
        """The leader that every one of ``nodes`` (default: the running ones) knows."""
        ids = self._ids(nodes)

        def known() -> str | None:
            statuses = self._statuses(ids)
            if statuses is None:
                return None
            leads = {st["leader_id"] for st in statuses.values()}
            if len(leads) != 1:
                return None
            lead = leads.pop()
            if lead is None:
                return None
            st = self.status(lead) if self.nodes.get(lead) else None
            return lead if st is not None and st["state"] == "leader" else None

        return self.wait_for(
            known,
            timeout,
            f"{ids} to agree on a leader",
            describe=lambda: json.dumps(self.last_view, sort_keys=True),
        )

    def followers(self, nodes: Iterable[str | Node] | None = None) -> list[str]:
        lead = self.leader(nodes)
        return [nid for nid in self._ids(nodes) if nid != lead]

    def member_ids(self, node: str | Node) -> set[str]:
        return {m["id"] for m in self.ok(node, "GET", "/v1/members")}

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, timeout=timeout)


def parse_body(payload: bytes) -> Any:
    """An API answer's body: parsed JSON, None when empty, else its text."""
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        return payload.decode(errors="replace")


def _summary(st: dict[str, Any] | None) -> Any:
    if st is None:
        return "no answer"
    return {
        "cluster_id": st["cluster_id"],
        "state": st["state"],
        "term": st["term"],
        "leader": st["leader_id"],
        "members": {m["id"]: m["role"] for m in st["members"]},
    }


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``hafleet-agent ARGS`` to completion (killed on timeout)."""
    return subprocess.run(
        agent_command() + list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def refused_idle_connections(
    host: str,
    port: int,
    count: int,
    cap: int,
    timeout: float,
    check: Callable[[], None] | None = None,
) -> tuple[list[socket.socket], dict[socket.socket, bytes], Callable[[], bool]]:
    """Open ``count`` idle TCP connections to an agent's API and wait (bounded) until it
    has answered and closed all but ``cap`` of them (its connection cap). Returns the
    sockets (the caller closes them), the answers of the refused ones, and the function that
    reads further answers into them (True once ``count - cap`` have answered)."""
    socks: list[socket.socket] = []
    answered: dict[socket.socket, bytes] = {}
    try:
        for _ in range(count):
            socks.append(socket.create_connection((host, port), timeout=10))

        def refusals() -> bool:
            waiting = [s for s in socks if s not in answered]
            readable, _, _ = select.select(waiting, [], [], 0.2)
            for s in readable:
                try:
                    answered[s] = s.recv(4096)
                except ConnectionResetError:
                    answered[s] = b"reset"
            return len(answered) >= count - cap

        wait_for(refusals, timeout, "the connections over the cap to be refused", check=check)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks, answered, refusals


@contextlib.contextmanager
def founded_cluster(directory: Path, size: int = 3) -> Iterator[Cluster]:
    """A cluster of ``size`` agents founded together (bootstrap_expect) and agreed on a
    leader; closed when the block ends, also on failure. For module-scoped fixtures."""
    cluster = Cluster(directory)
    try:
        cluster.add_many(size, bootstrap_expect=size)
        cluster.wait_agreed()
        yield cluster
    finally:
        cluster.close()
