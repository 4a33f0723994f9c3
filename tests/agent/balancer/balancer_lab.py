"""Real HAProxy, demo backends, the syncer and a load generator, on loopback: the pieces the
balancer's integration tests and ``bench/balancer_bench.py`` put together.

Every process is started with tests/support/agents.py's :func:`spawn` (its own session, dies
with the test process) and is stopped by its PID in ``close()``. Traffic goes only to
127.0.0.0/8. Waiting is always polling with a deadline (:func:`wait_for`).

HAProxy's admin socket lives in a short directory under /tmp (a Unix socket path is limited
to 107 bytes; pytest's tmp_path can be longer).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from agents import EXIT_TIMEOUT, Node, agent_command, spawn, tail, wait_for
from agents import signal_and_reap as kill
from fakeload_agent import write_metrics
from harness import Cluster

from hafleet_agent.balancer.haproxy_config import (
    Settings,
    parse_servers_state,
    render,
    servers_from_state,
)
from hafleet_agent.balancer.process import save_state
from hafleet_agent.balancer.runtime_api import runtime_command

HERE = Path(__file__).resolve().parent
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
FAKELOAD_AGENT = HERE / "fakeload_agent.py"
SERVICE_PORT = 8000


# --- HAProxy ----------------------------------------------------------------------------------


class HAProxy:
    """One HAProxy (foreground, ``-db``) with a frontend on ``host:port`` and one backend."""

    def __init__(
        self,
        log_dir: Path,
        host: str,
        port: int,
        *,
        backend: str = "app",
        strategy: str = "weighted",
        health_path: str | None = "/health",
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hfb-", dir="/tmp"))
        self.log_dir = log_dir
        self.host = host
        self.port = port
        self.backend = backend
        self.strategy = strategy
        self.health_path = health_path
        self.socket = str(self.dir / "admin.sock")
        self.state_file = str(self.dir / "servers.state")
        self.config = self.dir / "haproxy.cfg"
        self.log_path = log_dir / f"haproxy-{backend}.log"
        self.procs: list[subprocess.Popen] = []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def render(self, servers_from_state_file: bool = False) -> None:
        servers = []
        if servers_from_state_file and os.path.exists(self.state_file):
            servers = servers_from_state(Path(self.state_file).read_text(), self.backend)
        self.config.write_text(
            render(
                Settings(
                    backend=self.backend,
                    bind=[f"{self.host}:{self.port}"],
                    socket_path=self.socket,
                    state_file=self.state_file,
                    strategy=self.strategy,
                    servers=servers,
                    health_path=self.health_path,
                )
            )
        )

    def start(self, servers_from_state_file: bool = False) -> HAProxy:
        self.render(servers_from_state_file)
        self.proc = spawn([HAPROXY, "-db", "-f", str(self.config)], self.log_path)
        self.procs.append(self.proc)
        pid = self.proc.pid
        wait_for(lambda: self.info_pid() == pid, 10, f"HAProxy pid {pid} on {self.socket}")
        return self

    def reload(self) -> None:
        """A seamless reload: save the state, render the servers into the configuration,
        start a new process that takes the listeners over (-x) and tells the old one to
        finish (-sf)."""
        assert self.proc is not None
        old = self.proc
        save_state(self.socket, self.state_file)
        self.render(servers_from_state_file=True)
        self.proc = spawn(
            [HAPROXY, "-db", "-f", str(self.config), "-x", self.socket, "-sf", str(old.pid)],
            self.log_path,
        )
        self.procs.append(self.proc)
        pid = self.proc.pid
        wait_for(lambda: self.info_pid() == pid, 10, f"the reloaded HAProxy (pid {pid})")
        old.wait(timeout=EXIT_TIMEOUT)

    def kill9(self) -> None:
        kill(self.proc)

    def info_pid(self) -> int | None:
        try:
            text = runtime_command(self.socket, "show info", timeout=2)
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":")[1])
        return None

    def command(self, cmd: str) -> str:
        return runtime_command(self.socket, cmd)

    def servers(self) -> dict[str, object]:
        """``show servers state`` of the backend, by server name."""
        text = self.command(f"show servers state {self.backend}")
        return {s.name: s for s in parse_servers_state(text) if s.backend == self.backend}

    def weights(self) -> dict[str, int]:
        return {n: s.uweight for n, s in self.servers().items()}

    def ready_weights(self) -> dict[str, int]:
        """Weights of the servers that take new traffic (not draining, not in maintenance)."""
        return {n: s.uweight for n, s in self.servers().items() if not (s.maint or s.drain)}

    def serving(self) -> set[str]:
        """The servers a new request can go to: ready and with a weight above 0. A server can
        be ready with weight 0: at a cluster's start every service check fails until the
        services answer, the leader's weights table gives them 0, and the table that gives
        them their shares commits a planning round after their checks pass. A load started
        in that window gets HAProxy's 503 "No server is available"."""
        return {n for n, w in self.ready_weights().items() if w > 0}

    def close(self) -> None:
        for p in self.procs:
            kill(p)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- demo backends ----------------------------------------------------------------------------


class Services:
    """``hafleet_agent.demo_service`` processes, one per node id, on ``host:SERVICE_PORT``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.addrs: dict[str, tuple[str, int]] = {}

    def start(self, node_id: str, host: str, port: int = SERVICE_PORT) -> None:
        argv = [sys.executable, "-m", "hafleet_agent.demo_service", "--bind", host]
        argv += ["--port", str(port), "--node-id", node_id]
        self.procs[node_id] = spawn(argv, self.log_dir / f"service-{node_id}.log")
        self.addrs[node_id] = (host, port)
        wait_for(lambda: self._answers(node_id), 15, f"demo service {node_id} on {host}:{port}")

    def _answers(self, node_id: str) -> bool:
        import http.client

        host, port = self.addrs[node_id]
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def stop(self, node_id: str) -> None:
        kill(self.procs.get(node_id), signal.SIGTERM)

    def close(self) -> None:
        for p in self.procs.values():
            kill(p)


# --- the syncer -------------------------------------------------------------------------------


class Syncer:
    """``hafleet-agent balancer`` as a process."""

    def __init__(
        self,
        log_dir: Path,
        haproxy: HAProxy,
        api_urls: Iterable[str],
        token_file: Path,
        *,
        strategy: str | None = None,
        drain_timeout: float = 30.0,
        interval: float = 1.0,
        extra: Iterable[str] = (),
    ) -> None:
        self.haproxy = haproxy
        self.log_path = log_dir / f"syncer-{haproxy.backend}.log"
        api_urls = list(api_urls)  # none: the syncer reads them from --api-file (extra)
        self.argv = agent_command() + [
            "balancer",
            "--haproxy-socket",
            haproxy.socket,
            "--backend",
            haproxy.backend,
            *(["--api", ",".join(api_urls)] if api_urls else []),
            "--token-file",
            str(token_file),
            "--strategy",
            strategy or haproxy.strategy,
            "--drain-timeout",
            str(drain_timeout),
            "--interval",
            str(interval),
            "--state-file",
            haproxy.state_file,
            *extra,
        ]
        self.procs: list[subprocess.Popen] = []
        self.proc: subprocess.Popen | None = None

    def start(self) -> Syncer:
        self.proc = spawn(self.argv, self.log_path)
        self.procs.append(self.proc)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"the syncer exited with {self.proc.returncode}:\n{tail(self.log_path)}"
            )

    def kill9(self) -> None:
        kill(self.proc)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        for p in self.procs:
            kill(p)


# --- load -------------------------------------------------------------------------------------


@dataclass
class Result:
    start: float
    end: float
    path: str
    status: int
    node: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


async def _one(session: aiohttp.ClientSession, url: str, path: str) -> Result:
    start = time.monotonic()
    try:
        async with session.get(url + path) as resp:
            raw = await resp.read()
            try:
                body = json.loads(raw)
            except ValueError:  # an error page (HAProxy's, say): the status and its start
                head = " ".join(raw.decode("utf-8", "replace").split())[:160]
                return Result(
                    start, time.monotonic(), path, resp.status, None, f"not JSON: {head!r}"
                )
            node = body.get("node") if isinstance(body, dict) else None
            return Result(start, time.monotonic(), path, resp.status, node)
    except Exception as exc:  # any failure counts, and says what it was
        return Result(start, time.monotonic(), path, 0, None, repr(exc))


def _session(limit: int) -> aiohttp.ClientSession:
    # The client closes idle keep-alive connections (10 s) before HAProxy would (30 s), so
    # a request never races a server-side close.
    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=10)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


async def burst(url: str, n: int, concurrency: int = 20, path: str = "/") -> list[Result]:
    """``n`` requests, ``concurrency`` at a time, as fast as they go."""
    results: list[Result] = []
    async with _session(concurrency) as session:
        remaining = iter(range(n))

        async def worker() -> None:
            for _ in remaining:
                results.append(await _one(session, url, path))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def shares(results: Iterable[Result]) -> dict[str, float]:
    counts = Counter(r.node for r in results if r.ok)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


@dataclass
class LoadGen:
    """An open-loop load: ``rate`` requests/s for ``duration`` s, every ``slow_every``-th one
    a slow request (``/slow?ms=slow_ms``), in a thread with its own event loop."""

    url: str
    rate: float
    duration: float
    slow_every: int = 0
    slow_ms: int = 1500
    max_in_flight: int = 400
    results: list[Result] = field(default_factory=list)
    started_at: float = 0.0
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> LoadGen:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> list[Result]:
        assert self._thread is not None
        self._thread.join(self.duration + 60 if timeout is None else timeout)
        assert not self._thread.is_alive(), "the load generator did not finish"
        return self.results

    async def _run(self) -> None:
        total = int(self.rate * self.duration)
        async with _session(self.max_in_flight) as session:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            tasks = []

            async def one(path: str) -> None:
                self.results.append(await _one(session, self.url, path))  # as they complete

            for i in range(total):
                if self._stop.is_set():
                    break
                delay = t0 + i / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                slow = self.slow_every and i % self.slow_every == self.slow_every - 1
                path = f"/slow?ms={self.slow_ms}" if slow else "/"
                tasks.append(asyncio.create_task(one(path)))
            await asyncio.gather(*tasks)

    def failures(self) -> list[Result]:
        return [r for r in self.results if not r.ok]


# --- a lab: agents + backends + HAProxies + syncers ---------------------------------------


class Lab:
    """A cluster of agents, each with a demo backend on ``127.0.X.I:8000``, plus any number
    of HAProxy instances (frontends on ``127.0.X.200+``) and syncers."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.cluster = Cluster(base)
        self.dir = self.cluster.dir
        self.services = Services(self.dir)
        self.haproxies: list[HAProxy] = []
        self.syncers: list[Syncer] = []
        self.metrics_files: dict[str, Path] = {}

    def add_agents(
        self,
        count: int,
        *,
        config: dict[str, Any] | None = None,
        fake_load: bool = False,
        join: list[str] | None = None,
    ) -> list[Node]:
        """``count`` agents (with their demo backends). Without ``join`` they found a cluster
        together (``--bootstrap-expect count``, each knowing the others' Raft addresses);
        with ``join`` (Raft addresses of running members) they join it. ``config`` is
        written to a TOML file; ``fake_load`` reads each host's sensors from a file (see
        fakeload_agent.py) that ``set_load`` rewrites."""
        first = len(self.cluster.nodes) + 1
        indexes = range(first, first + count)
        bootstrap_expect = None if join else count
        if join is None:
            join = [f"{self.cluster.host(i)}:7400" for i in indexes]
        nodes = []
        for i in indexes:
            nid = f"n{i}"
            extra = ["--service-port", str(SERVICE_PORT)]
            if config:
                path = self.dir / f"{nid}-extra.toml"
                path.write_text(toml(config))
                extra += ["--config", str(path)]
            node = self.cluster.add(
                nid,
                bootstrap_expect=bootstrap_expect,
                join=join,
                extra_args=extra,
                start=False,
            )
            if fake_load:
                mf = self.dir / f"{nid}-metrics.json"
                write_metrics(mf)
                self.metrics_files[nid] = mf
                node.argv = [sys.executable, str(FAKELOAD_AGENT), str(mf)] + node.argv[
                    len(agent_command()) :
                ]
            self.services.start(nid, node.host)
            nodes.append(node)
        for node in nodes:
            self.cluster.start(node)
        return nodes

    def set_load(self, node_id: str, **values: float) -> None:
        write_metrics(self.metrics_files[node_id], **values)

    def haproxy(self, strategy: str = "weighted", backend: str = "app") -> HAProxy:
        host = self.cluster.host(200 + len(self.haproxies))
        hp = HAProxy(self.dir, host, 8080, backend=backend, strategy=strategy)
        self.haproxies.append(hp)
        return hp.start()

    def syncer(self, haproxy: HAProxy, api: list[str] | None = None, **kw: Any) -> Syncer:
        urls = api or [n.api_url for n in self.cluster.nodes.values()]
        s = Syncer(self.dir, haproxy, urls, self.cluster.token_file, **kw)
        self.syncers.append(s)
        return s.start()

    def check(self) -> None:
        self.cluster.check_alive()
        for s in self.syncers:
            s.check()

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_for(predicate, timeout, what, check=self.check)

    def logs(self) -> str:
        out = [self.cluster.logs_tail(30)]
        for s in self.syncers:
            out.append(f"--- syncer {s.haproxy.backend} ({s.log_path}):\n{tail(s.log_path, 60)}")
        for hp in self.haproxies:
            out.append(f"--- haproxy {hp.backend}:\n{tail(hp.log_path, 20)}")
        return "\n".join(out)

    def close(self) -> None:
        for s in self.syncers:
            s.close()
        for hp in self.haproxies:
            hp.close()
        self.services.close()
        self.cluster.close()


def toml(config: dict[str, Any]) -> str:
    """The few TOML shapes the tests need: scalars and one level of tables of integers."""
    lines = []
    for key, value in sorted(config.items()):
        if isinstance(value, dict):
            inner = ", ".join(f'"{k}" = {int(v)}' for k, v in sorted(value.items()))
            lines.append(f"{key} = {{ {inner} }}")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"
