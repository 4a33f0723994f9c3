"""The balancer syncer's own ``/metrics`` (``--metrics-port``; balancer/metrics.py, issue 20):
a real scrape passes ``promtool check metrics`` and follows HAProxy (changes applied, the
last sync's age, servers up per backend, a server HAProxy's check holds down).

About 10 s: two agents, HAProxy, a syncer; then HAProxy's check (2 s, 3 falls) marks a
stopped demo backend down."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
from types import SimpleNamespace

import pytest
from promcheck import check_metrics, promtool, samples

from hafleet_agent.balancer.metrics import SyncerMetrics, exposition, status_up

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


# ---- HAProxy down: the dead process's numbers are not exported (review finding) ---------------

PER_SERVER = (
    "hafleet_balancer_servers{",
    "hafleet_balancer_servers_up{",
    "hafleet_balancer_server_up{",
)


def _bal(down_since: float | None) -> SimpleNamespace:
    metrics = SyncerMetrics()
    metrics.saw({"n1": {"status": "UP"}, "n2": {"status": "DOWN"}, "BACKEND": {}})
    bal = SimpleNamespace(
        metrics=metrics, backend="app", applied_total=4, rounds=9,
        haproxy_down_since=down_since, converged=asyncio.Event(),
    )  # fmt: skip
    bal.converged.set()  # the last round before HAProxy went away found nothing to do
    return bal


def test_while_haproxy_is_down_it_is_not_converged_and_servers_are_unknown() -> None:
    up = samples(exposition(_bal(None)).decode())
    assert up["hafleet_balancer_converged"] == 1 and up["hafleet_balancer_haproxy_up"] == 1
    assert up['hafleet_balancer_servers_up{backend="app"}'] == 1
    assert up['hafleet_balancer_server_up{backend="app",server="n2"}'] == 0
    text = exposition(_bal(123.0)).decode()
    down = samples(text)
    assert down["hafleet_balancer_converged"] == 0 and down["hafleet_balancer_haproxy_up"] == 0
    assert not [k for k in down if k.startswith(PER_SERVER)], down
    assert "# TYPE hafleet_balancer_servers_up gauge" in text  # declared, no sample
    check_metrics(text.encode())


def test_a_stopped_or_killed_haproxy_leaves_no_stale_server_numbers(make_lab) -> None:
    """SIGSTOP (the Runtime API times out), SIGCONT (back), SIGKILL (gone): the scrape
    follows, and says nothing of the servers while HAProxy does not answer."""
    lab = make_lab()
    lab.add_agents(2)
    lab.cluster.wait_agreed(timeout=FORM)
    hp = lab.haproxy()
    host = lab.cluster.host(231)
    lab.syncer(hp, extra=["--metrics-port", str(PORT), "--metrics-bind", host])
    up = f'hafleet_balancer_servers_up{{backend="{hp.backend}"}}'

    def state() -> dict[str, float]:
        return samples(scrape(host))

    def serving(s: dict[str, float]) -> bool:
        return s.get(up) == 2 and s["hafleet_balancer_converged"] == 1

    def unknown(s: dict[str, float]) -> bool:
        gone = not [k for k in s if k.startswith(PER_SERVER)]
        return s["hafleet_balancer_haproxy_up"] == 0 and gone

    lab.wait_for(lambda: serving(state()), FORM, "2 servers up, converged")
    assert hp.proc is not None
    os.kill(hp.proc.pid, signal.SIGSTOP)
    try:
        s = lab.wait_for(lambda: (lambda s: s if unknown(s) else None)(state()), 30, "unknown")
        assert s["hafleet_balancer_converged"] == 0, s
    finally:
        os.kill(hp.proc.pid, signal.SIGCONT)
    lab.wait_for(lambda: serving(state()), FORM, "2 servers up again after SIGCONT")
    hp.kill9()
    s = lab.wait_for(lambda: (lambda s: s if unknown(s) else None)(state()), 30, "unknown")
    assert s["hafleet_balancer_converged"] == 0, s
    check_metrics(scrape(host).encode())
