"""The families of ``/metrics`` beside the node's views (prom.py): the agent's own
measurements (telemetry.py's histograms and counters), the process (from /proc), the build,
and the peers this member holds a connection to. docs/monitoring.md lists them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..telemetry import AgentTelemetry, Histogram
from .health import unhealthy_reason

if TYPE_CHECKING:
    from ..node.verbs import NodeVerbs

#: name, help, the telemetry's histogram attribute.
_HISTOGRAMS = (
    (
        "hafleet_wal_fsync_duration_seconds",
        "one WAL batch's write and sync (fsync or fdatasync); a leader's synced through "
        "Linux AIO until the event loop sees it done",
        "wal_sync_seconds",
    ),
    (
        "hafleet_api_write_duration_seconds",
        "API writes (PUT, POST, DELETE) from the request to the answer, forwarding included",
        "write_seconds",
    ),
    (
        "hafleet_api_read_duration_seconds",
        "API KV reads (GET /v1/kv...) from the request to the answer, ReadIndex included",
        "read_seconds",
    ),
    (
        "hafleet_snapshot_duration_seconds",
        "making a snapshot of the state to compact the log (encode, write, sync)",
        "snapshot_seconds",
    ),
    ("hafleet_snapshot_size_bytes", "the snapshots this member made", "snapshot_bytes"),
)


def histogram(name: str, doc: str, hist: Histogram) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    buckets, total, count = hist.cumulative()
    rows = [(_bound(b), n) for b, n in buckets] + [("+Inf", count)]
    return HistogramMetricFamily(name, doc, buckets=rows, sum_value=total)


def _bound(value: float) -> str:
    return repr(float(value))


def telemetry_families(t: AgentTelemetry) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily

    for name, doc, attr in _HISTOGRAMS:
        yield histogram(name, doc, getattr(t, attr))
    yield CounterMetricFamily(
        "hafleet_raft_leader_changes", "times this member saw a new leader", t.leader_changes
    )
    yield CounterMetricFamily(
        "hafleet_raft_proposals_failed",
        "proposals that did not apply: dropped, lost to a leadership change, timed out",
        t.proposals_failed,
    )


def health_families(agent: NodeVerbs) -> Iterator[Any]:
    """Whether a leader is known (etcd's has_leader) and whether ``/v1/health`` answers 200."""
    from prometheus_client.core import GaugeMetricFamily

    r = agent.raft_status()
    yield GaugeMetricFamily(
        "hafleet_raft_has_leader",
        "1 while this member knows a leader",
        1 if r is not None and r.lead is not None else 0,
    )
    yield GaugeMetricFamily(
        "hafleet_healthy",
        "1 while /v1/health answers 200 (in a group, a leader known, applied close to the commit)",
        1 if unhealthy_reason(agent) is None else 0,
    )


def build_info() -> Any:
    from prometheus_client.core import GaugeMetricFamily

    fam = GaugeMetricFamily(
        "hafleet_build_info", "the agent's version (always 1)", labels=["version", "python"]
    )
    import platform

    fam.add_metric([__version__, platform.python_version()], 1)
    return fam


def peers_connected(agent: NodeVerbs, members: list[dict[str, Any]]) -> Any:
    """How many of the other members this one holds an authenticated connection to."""
    from prometheus_client.core import GaugeMetricFamily

    transport = agent.transport
    n = 0
    if transport is not None:
        n = sum(
            1
            for m in members
            if m["id"] != agent.id and m.get("raft_addr") and transport.is_connected(m["raft_addr"])
        )
    return GaugeMetricFamily(
        "hafleet_peers_connected", "other members this one holds a connection to", n
    )


def voters_healthy(members: list[dict[str, Any]]) -> Any:
    """The voters (the leader included) the member table marks healthy: on the leader, how
    close the group is to losing its quorum (the alert HafleetQuorumAtRisk)."""
    from prometheus_client.core import GaugeMetricFamily

    n = sum(1 for m in members if m.get("role") in ("leader", "voter") and m.get("healthy"))
    return GaugeMetricFamily(
        "hafleet_raft_voters_healthy", "voters the member table marks healthy (the leader's)", n
    )


def process_collector() -> Any:
    """process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
    process_max_fds, process_start_time_seconds, process_virtual_memory_bytes: read from
    /proc at scrape time (prometheus_client's collector; nothing where there is no /proc)."""
    from prometheus_client.process_collector import ProcessCollector

    return ProcessCollector(registry=None)
