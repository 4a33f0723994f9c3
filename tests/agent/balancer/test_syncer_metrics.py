"""The balancer syncer's own ``/metrics`` (``--metrics-port``; balancer/metrics.py, issue 20):
a real scrape passes ``promtool check metrics`` and follows HAProxy (changes applied, the
last sync's age, servers up per backend, a server HAProxy's check holds down).

About 10 s: two agents, HAProxy, a syncer; then HAProxy's check (2 s, 3 falls) marks a
stopped demo backend down."""

from __future__ import annotations

import http.client

import pytest
from promcheck import check_metrics, promtool, samples

from hafleet_agent.balancer.metrics import SyncerMetrics, status_up

FORM = 40.0
PORT = 9187


def scrape(host: str) -> str:
    conn = http.client.HTTPConnection(host, PORT, timeout=5)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        assert resp.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
        return body.decode()
    finally:
        conn.close()


def test_the_syncer_exports_its_own_metrics(make_lab) -> None:
    promtool()  # required: fail now, not after the lab is up
    lab = make_lab()
    lab.add_agents(2)
    lab.cluster.wait_agreed(timeout=FORM)
    hp = lab.haproxy()
    host = lab.cluster.host(230)
    lab.syncer(hp, extra=["--metrics-port", str(PORT), "--metrics-bind", host])
    up = f'hafleet_balancer_servers_up{{backend="{hp.backend}"}}'

    def converged() -> dict[str, float] | None:
        s = samples(scrape(host))
        return s if s.get(up) == 2 and s["hafleet_balancer_converged"] == 1 else None

    s = lab.wait_for(converged, FORM, "the syncer's metrics: 2 servers up, converged")
    assert s["hafleet_balancer_changes_applied_total"] >= 4  # add + enable, two servers
    assert s["hafleet_balancer_changes_failed_total"] == 0
    assert s["hafleet_balancer_last_sync_age_seconds"] < 5
    assert s["hafleet_balancer_view_age_seconds"] < 15
    assert s["hafleet_balancer_haproxy_up"] == 1
    assert s[f'hafleet_balancer_servers{{backend="{hp.backend}"}}'] == 2
    assert "process_resident_memory_bytes" in s and "process_cpu_seconds_total" in s
    check_metrics(scrape(host).encode())

    # A backend that stops answering: HAProxy's check holds its server down, and it shows.
    lab.services.stop("n1")
    down = f'hafleet_balancer_server_up{{backend="{hp.backend}",server="n1"}}'
    lab.wait_for(lambda: samples(scrape(host)).get(down) == 0, 30, "n1 down in the metrics")
    assert samples(scrape(host))[up] == 1

    # Anything but GET /metrics is refused.
    conn = http.client.HTTPConnection(host, PORT, timeout=5)
    conn.request("GET", "/other")
    assert conn.getresponse().status == 404
    conn.close()


@pytest.mark.parametrize(
    ("status", "up"),
    [
        ("UP", True),
        ("UP 1/3", True),
        ("no check", True),
        ("DOWN", False),
        ("DOWN 1/2", False),
        ("NOLB", False),
        ("MAINT", None),
        ("MAINT (via app/x)", None),
        ("DRAIN", None),
    ],
)
def test_haproxy_statuses(status: str, up: bool | None) -> None:
    assert status_up(status) is up


def test_ages_count_from_the_start_until_it_happens() -> None:
    now = [100.0]
    m = SyncerMetrics(clock=lambda: now[0])
    now[0] = 130.0
    assert m.age(m.synced_at) == 30.0
    m.synced()
    now[0] = 131.5
    assert m.age(m.synced_at) == 1.5
