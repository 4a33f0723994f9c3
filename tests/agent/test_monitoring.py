"""monitoring/ (issue 20): the alert rules pass ``promtool check rules`` and their unit tests
(``promtool test rules``, every ``*_test.yml``), every alert has a test that makes it fire,
the scrape example is a valid Prometheus configuration, the Grafana dashboard is valid JSON,
and the rules and the dashboard use only metrics an agent or a balancer syncer exports (read
from a real agent's scrape and the syncer's exposition).

promtool is required (Debian's ``prometheus`` package, ``make system-deps``)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import promcheck
import pytest
import yaml
from harness import Cluster

from hafleet_agent.balancer.metrics import SyncerMetrics, exposition

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "monitoring" / "prometheus"
RULES = PROM / "rules"
DASHBOARD = ROOT / "monitoring" / "grafana" / "hafleet.json"
#: A metric name in PromQL: ours, the process's, and Prometheus's own ``up``.
METRIC = re.compile(r"\b(hafleet_[a-z0-9_]+|process_[a-z0-9_]+|up)\b(?!\s*\()")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promcheck.promtool(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULES,
    )


def rule_files() -> list[Path]:
    return sorted(p for p in RULES.glob("*.yml") if not p.name.endswith("_test.yml"))


def alerts() -> dict[str, str]:
    """Every alert's name -> its expression."""
    out = {}
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    out[rule["alert"]] = rule["expr"]
    return out


def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    assert rule_files(), "no rule files"
    done = promtool("check", "rules", *rule_files())
    assert done.returncode == 0, done.stdout + done.stderr
    tests = sorted(RULES.glob("*_test.yml"))
    assert tests, "no rules tests"
    done = promtool("test", "rules", *tests)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_rules_tests_fail_when_an_alert_is_wrong(tmp_path: Path) -> None:
    """The unit tests can fail: with one alert's threshold moved, promtool says so."""
    text = (RULES / "hafleet.yml").read_text()
    assert "hafleet_raft_apply_lag > 100" in text
    (tmp_path / "hafleet.yml").write_text(text.replace("apply_lag > 100", "apply_lag > 100000"))
    shutil.copy(RULES / "hafleet_test.yml", tmp_path)
    done = promtool("test", "rules", tmp_path / "hafleet_test.yml")
    assert done.returncode != 0 and "HafleetApplyLag" in done.stdout + done.stderr


def test_every_alert_has_a_test_that_makes_it_fire() -> None:
    fired: set[str] = set()
    for path in RULES.glob("*_test.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert set(alerts()) <= fired, sorted(set(alerts()) - fired)
    wanted = {
        "HafleetNoLeader",
        "HafleetQuorumAtRisk",
        "HafleetMemberUnhealthy",
        "HafleetApplyLag",
        "HafleetFsyncSlow",
        "HafleetBalancerOutOfSync",
        "HafleetHAProxyServerDown",
    }
    assert wanted <= set(alerts())


def test_the_scrape_example_is_a_valid_prometheus_configuration() -> None:
    done = promtool("check", "config", "--syntax-only", PROM / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == {
        "hafleet-agent",
        "hafleet-balancer",
    }
    for name in config["rule_files"]:
        assert (PROM / name).is_file(), name


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "hafleet" and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    return exprs


def test_the_dashboards_queries_parse(tmp_path: Path) -> None:
    """Each panel's query, its Grafana variables filled in, is PromQL that promtool accepts
    (as a recording rule)."""
    fill = {
        "$__rate_interval": "5m",
        "$agent_job": "hafleet-agent",
        "$balancer_job": "hafleet-balancer",
    }
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in fill.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"hafleet_dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The metric names of a real agent's scrape and of the syncer's exposition."""
    cluster = Cluster(tmp_path_factory.mktemp("monitoring"))
    try:
        cluster.add(bootstrap_expect=1)
        cluster.wait_agreed()

        def scrape() -> str | None:  # once the first host sample is in (about a second)
            status, text = cluster.api("n1", "GET", "/metrics")
            assert status == 200, text
            return text if "hafleet_host_cpu_percent" in text else None

        text = cluster.wait_for(scrape, 30, "a scrape with the host's metrics")
    finally:
        cluster.close()
    metrics = SyncerMetrics()
    metrics.saw({"n1": {"status": "UP"}, "n2": {"status": "DOWN"}, "BACKEND": {}})
    bal = SimpleNamespace(
        metrics=metrics,
        backend="app",
        applied_total=0,
        rounds=0,
        haproxy_down_since=None,
        converged=asyncio.Event(),
    )
    text += exposition(bal).decode()
    return names_of(text) | {"up"}


def names_of(text: str) -> set[str]:
    """The names a scrape declares (``# TYPE``; a family may have no sample yet, such as the
    weights before the first plan), a histogram's with its three suffixes."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            names |= {name + suffix for suffix in suffixes}
    return names


def used(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def test_the_rules_use_only_exported_metrics(exported: set[str]) -> None:
    for name, expr in alerts().items():
        assert used(expr), name
        assert used(expr) <= exported, (name, sorted(used(expr) - exported))


def test_the_dashboard_uses_only_exported_metrics(exported: set[str]) -> None:
    for expr in dashboard_exprs():
        assert used(expr), expr
        assert used(expr) <= exported, (expr, sorted(used(expr) - exported))
    # the agents' and the syncer's main families are on it
    on_it = set().union(*(used(e) for e in dashboard_exprs()))
    for name in (
        "hafleet_healthy",
        "hafleet_raft_leader_changes_total",
        "hafleet_api_write_duration_seconds_bucket",
        "hafleet_wal_fsync_duration_seconds_bucket",
        "hafleet_balancer_servers_up",
        "hafleet_balancer_last_sync_age_seconds",
    ):
        assert name in on_it, name
