"""The scrape example works with a real Prometheus (Debian's ``prometheus``, which
``make system-deps`` installs) against a real agent with TLS on: HTTPS checked against the
cluster CA, the read token, the alert rules loaded (issue 20; monitoring/prometheus/).

About 5 s: one agent, Prometheus scraping it every second."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from agents import signal_and_reap, spawn, tail, write_secret
from harness import Cluster

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "monitoring" / "prometheus" / "prometheus.yml"


def query(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else base + path
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]


def test_prometheus_scrapes_an_agent_over_https_with_the_read_token(tmp_path: Path) -> None:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    assert Path(binary).exists(), "prometheus is missing: install Debian's 'prometheus' package"
    cluster = Cluster(tmp_path, tls=True)
    prom = None
    log = tmp_path / "prometheus.log"
    try:
        read_token = write_secret(tmp_path / "read-token")
        node = cluster.add(bootstrap_expect=1, config={"read_token_file": str(read_token)})
        cluster.wait_agreed()
        # The example, with this agent as its one target and this test's files.
        config = yaml.safe_load(EXAMPLE.read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        config["rule_files"] = [str(EXAMPLE.parent / name) for name in config["rule_files"]]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        agent_job = jobs["hafleet-agent"]
        agent_job["authorization"]["credentials_file"] = str(read_token)
        assert cluster.tls_dir is not None
        agent_job["tls_config"]["ca_file"] = str(cluster.tls_dir / "ca.crt")
        agent_job["static_configs"] = [{"targets": [f"{node.host}:7480"]}]
        config["scrape_configs"] = [agent_job]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        address = f"{cluster.host(250)}:9090"
        prom = spawn(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={address}",
            ],
            log,
        )
        base = f"http://{address}"

        def scraped() -> bool:
            assert prom is not None and prom.poll() is None, tail(log)
            try:
                targets = query(base, "/api/v1/targets")["activeTargets"]
            except OSError:
                return False
            return bool(targets) and all(t["health"] == "up" for t in targets)

        cluster.wait_for(scraped, 30, "Prometheus to scrape the agent", describe=lambda: tail(log))
        deadline = time.monotonic() + 15
        while True:  # the first samples reach the query engine within a scrape or two
            healthy = query(base, "/api/v1/query", query="hafleet_healthy")["result"]
            if healthy or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [r["value"][1] for r in healthy] == ["1"], healthy
        assert healthy[0]["metric"]["job"] == "hafleet-agent"
        rules = query(base, "/api/v1/rules")["groups"]
        names = {r["name"] for g in rules for r in g["rules"]}
        assert {"HafleetNoLeader", "HafleetQuorumAtRisk", "HafleetHAProxyServerDown"} <= names
    finally:
        signal_and_reap(prom)
        cluster.close()
