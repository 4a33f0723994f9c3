"""``/metrics`` passes ``promtool check metrics`` and holds what an on-call engineer needs
(issue 20; server/prom.py, server/prom_node.py, telemetry.py, docs/monitoring.md).

promtool is required (Debian's ``prometheus`` package, installed by ``make system-deps``):
without it these tests fail, they do not skip."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness import Cluster, founded_cluster
from promcheck import check_metrics, samples

from hafleet_agent.telemetry import Histogram


def scrape(cluster: Cluster, nid: str) -> bytes:
    status, body = cluster.api(nid, "GET", "/metrics")
    assert status == 200, body
    return body.encode() if isinstance(body, str) else body


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with founded_cluster(tmp_path_factory.mktemp("metrics")) as c:
        yield c


def test_a_scrape_of_each_agent_passes_promtool(cluster: Cluster) -> None:
    lead = cluster.leader()
    for i in range(20):
        cluster.put(lead, f"m/{i}", i)
        assert cluster.get(lead, f"m/{i}")[0] == 200
    for nid in cluster.nodes:
        # The host gauges come with the agent's first host sample (REPORT_INTERVAL after start).
        text = cluster.wait_for(
            lambda nid=nid: (lambda t: t if b"hafleet_host_cpus " in t else None)(
                scrape(cluster, nid)
            ),
            15,
            f"{nid}'s first host sample",
        )
        check_metrics(text)
        s = samples(text.decode())
        python, version = _build()
        assert s[f'hafleet_build_info{{python="{python}",version="{version}"}}'] == 1
        for name in (
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
            "hafleet_raft_apply_lag",
            "hafleet_raft_leader_changes_total",
            "hafleet_raft_proposals_failed_total",
            "hafleet_host_cpus",
            "hafleet_snapshot_size_bytes_count",
            "hafleet_snapshot_duration_seconds_count",
        ):
            assert name in s, name
        assert "hafleet_host_cpu_count" not in s
        # the leader holds a connection to each follower (a follower, to the leader at least)
        assert (
            s["hafleet_peers_connected"] == 2
            if nid == lead
            else 1 <= s["hafleet_peers_connected"] <= 2
        ), nid
        assert s["hafleet_raft_leader_changes_total"] >= 1
        assert s["hafleet_wal_fsync_duration_seconds_count"] >= 1
        assert (
            s['hafleet_wal_fsync_duration_seconds_bucket{le="+Inf"}']
            == s["hafleet_wal_fsync_duration_seconds_count"]
        )
    s = samples(scrape(cluster, lead).decode())
    assert s["hafleet_raft_voters_healthy"] == 3 == s["hafleet_raft_voters"]
    assert s["hafleet_api_write_duration_seconds_count"] >= 20
    assert s["hafleet_api_read_duration_seconds_count"] >= 20
    assert s["hafleet_api_write_duration_seconds_sum"] > 0


def _build() -> tuple[str, str]:
    import platform

    import hafleet_agent

    return platform.python_version(), hafleet_agent.__version__


# ---- the histogram ---------------------------------------------------------------------------


def test_the_histogram_counts_each_value_in_the_first_bucket_that_holds_it() -> None:
    h = Histogram((0.1, 1.0, 10.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0, 11.0):
        h.observe(v)
    buckets, total, count = h.cumulative()
    assert buckets == [(0.1, 2), (1.0, 4), (10.0, 5)]  # le: at or below the bound
    assert count == 6 and total == pytest.approx(15.65)


def test_the_histogram_times_calls_that_raise_too() -> None:
    h = Histogram((1.0,))

    def boom() -> Any:
        raise OSError("disk")

    assert h.timed(lambda x: x + 1)(1) == 2
    with pytest.raises(OSError):
        h.timed(boom)()
    assert h.cumulative()[2] == 2


@pytest.mark.parametrize("buckets", [(), (1.0, 1.0), (2.0, 1.0)])
def test_the_histogram_wants_increasing_buckets(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        Histogram(buckets)
