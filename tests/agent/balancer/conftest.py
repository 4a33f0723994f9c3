"""Fixtures of the balancer tests: a ``Lab`` of real agents, HAProxy, demo backends and
syncers on a leased loopback /24; every process is killed by its PID at teardown, and a
failed test's report ends with the tail of every log."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from balancer_lab import (  # noqa: E402
    FAKELOAD_AGENT,
    SERVICE_PORT,
    HAProxy,
    Services,
    Syncer,
    agent_command,
    tail,
    wait_for,
)
from fakeload_agent import write_metrics  # noqa: E402

if TYPE_CHECKING:
    from harness import Node

# The agents come from the multi-process cluster harness (tests/agent/cluster/harness.py),
# imported when a test makes a lab.
CLUSTER_DIR = Path(__file__).resolve().parent.parent / "cluster"

_LABS: list[Lab] = []


class Lab:
    """A cluster of agents, each with a demo backend on ``127.0.X.I:8000``, plus any number
    of HAProxy instances (frontends on ``127.0.X.200+``) and syncers."""

    def __init__(self, base: Path) -> None:
        if str(CLUSTER_DIR) not in sys.path:
            sys.path.insert(0, str(CLUSTER_DIR))
        from harness import Cluster

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
        bootstrap_expect: int | None = None,
        join: list[str] | None = None,
    ) -> list[Node]:
        """``count`` agents (with their demo backends) that know each other's Raft addresses.
        ``config`` is written to a TOML file; ``fake_load`` reads each host's sensors from a
        file (see fakeload_agent.py) that ``set_load`` rewrites."""
        first = len(self.cluster.nodes) + 1
        indexes = range(first, first + count)
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
                bootstrap_expect=bootstrap_expect if bootstrap_expect is not None else count,
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for lab in _LABS:
            report.sections.append((f"balancer lab 127.0.{lab.cluster.x}.0/24", lab.logs()))


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[[], Lab]]:
    made: list[Lab] = []

    def make() -> Lab:
        lab = Lab(tmp_path)
        made.append(lab)
        _LABS.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in made:
            try:
                lab.close()
            finally:
                _LABS.remove(lab)
