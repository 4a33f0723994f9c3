"""The API's ``/metrics``: the Prometheus text of the node's and the API's live values.

:func:`exposition` answers a scrape; :class:`_Collector` reads the values at scrape time
(docs/api.md lists the metrics). prometheus_client is imported on the first scrape: an agent
nobody scrapes does not pay for it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..telemetry import TELEMETRY
from . import web
from .prom_node import (
    build_info,
    health_families,
    peers_connected,
    process_collector,
    telemetry_families,
    voters_healthy,
)

if TYPE_CHECKING:
    from ..node.verbs import NodeVerbs
    from .conn import ConnectionCap


class ApiCounters:
    """What the API counts for ``/metrics``: requests, error answers by status, and its
    connection cap (set once the listener runs)."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors: dict[int, int] = {}
        self.cap: ConnectionCap | None = None

    def count(self, resp: web.Response) -> web.Response:
        self.errors[resp.status] = self.errors.get(resp.status, 0) + 1
        return resp

    @staticmethod
    def observe(method: str, path: str, seconds: float) -> None:
        """A request answered after ``seconds``: a write (any method but GET, HEAD,
        OPTIONS) or a KV read goes into its latency histogram (telemetry.py)."""
        if method not in ("GET", "HEAD", "OPTIONS"):
            TELEMETRY.write_seconds.observe(seconds)
        elif path.startswith("/v1/kv"):
            TELEMETRY.read_seconds.observe(seconds)


def exposition(agent: NodeVerbs, counters: ApiCounters) -> web.Response:
    """The answer to ``GET /metrics``."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(agent, counters))
    registry.register(process_collector())  # process_* from /proc (prom_node.py)
    return web.Response(
        body=generate_latest(registry),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


class _Collector:
    """Reads the live values at scrape time."""

    def __init__(self, agent: NodeVerbs, counters: ApiCounters) -> None:
        self.agent = agent
        self.counters = counters

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        agent = self.agent
        r = agent.raft_status()

        def g(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Any:
            fam = GaugeMetricFamily(name, doc, labels=list(labels or {}))
            fam.add_metric(list((labels or {}).values()), value)
            return fam

        yield g("hafleet_up", "1 while the agent runs", 1)
        yield build_info()
        yield from telemetry_families(TELEMETRY)
        yield from health_families(agent)
        if r is not None:
            yield g("hafleet_raft_term", "current Raft term", r.term)
            yield g("hafleet_raft_commit_index", "Raft commit index", r.commit)
            yield g("hafleet_raft_applied_index", "state machine applied index", agent.state.index)
            yield g(
                "hafleet_raft_apply_lag",
                "commit index minus applied index",
                r.commit - agent.state.index,
            )
            yield g("hafleet_raft_last_index", "last log index", r.last_index)
            st = GaugeMetricFamily("hafleet_raft_state", "1 for the current role", labels=["state"])
            current = agent.status()["state"]
            for s in ("leader", "follower", "candidate", "learner"):
                st.add_metric([s], 1 if s == current else 0)
            yield st
            yield g("hafleet_raft_is_leader", "1 on the leader", 1 if agent.is_leader() else 0)
            yield g("hafleet_raft_voters", "voters in the configuration", len(r.voters))
            yield g("hafleet_raft_learners", "learners in the configuration", len(r.learners))
        members = agent.members_view()
        yield g("hafleet_peers", "members known to this node", len(members))
        yield peers_connected(agent, members)
        yield voters_healthy(members)
        w = GaugeMetricFamily("hafleet_weight", "committed load-balancer weight", labels=["node"])
        h = GaugeMetricFamily("hafleet_member_healthy", "1 if healthy", labels=["node"])
        sh = GaugeMetricFamily(
            "hafleet_member_service_healthy",
            "1 unless the member's own service check fails",
            labels=["node"],
        )
        re_ = GaugeMetricFamily(
            "hafleet_member_reachable", "0 while the leader cannot reach it", labels=["node"]
        )
        mt = GaugeMetricFamily(
            "hafleet_member_maintenance", "1 while the member is in maintenance", labels=["node"]
        )
        for m in members:
            mt.add_metric([m["id"]], 1 if m.get("maintenance") else 0)
            if m["weight"] is not None:
                w.add_metric([m["id"]], m["weight"])
            h.add_metric([m["id"]], 1 if m["healthy"] else 0)
            sh.add_metric([m["id"]], 1 if m.get("service_healthy", True) else 0)
            re_.add_metric([m["id"]], 1 if m.get("reachable", True) else 0)
        yield w
        yield h
        yield sh
        yield re_
        yield mt
        yield g("hafleet_weights_version", "weight table version", agent.state.weights()["version"])
        hm = agent.metrics
        if hm is not None:
            yield g("hafleet_host_cpus", "logical CPUs", hm.cpu_count)
            yield g("hafleet_host_cpu_percent", "CPU use, smoothed", hm.cpu_percent)
            for n in ("load1", "load5", "load15"):
                yield g(f"hafleet_host_{n}", f"load average {n[4:]}", getattr(hm, n))
            yield g("hafleet_host_memory_total_bytes", "memory", hm.mem_total)
            yield g("hafleet_host_memory_available_bytes", "available memory", hm.mem_available)
            yield g("hafleet_process_resident_bytes", "agent RSS", hm.process_rss)
        if agent.transport is not None:
            for k, v in agent.transport.stats.as_dict().items():
                c = CounterMetricFamily(f"hafleet_transport_{k}", f"transport {k}")
                c.add_metric([], v)
                yield c
        yield g("hafleet_kv_bytes", "KV store size as the quota counts it", agent.state.kv_bytes())
        yield g("hafleet_kv_quota_bytes", "quota_bytes (0: no quota)", agent.cfg.quota_bytes)
        for source, names in (
            (agent.snap_sender, _SNAPSHOT_SEND_METRICS),
            (agent.snap_receiver, _SNAPSHOT_RECEIVE_METRICS),
        ):
            if source is not None:
                for key, (name, doc) in names.items():
                    c = CounterMetricFamily(name, doc)
                    c.add_metric([], source.stats[key])
                    yield c
        c = CounterMetricFamily("hafleet_api_requests", "API requests")
        c.add_metric([], self.counters.requests)
        yield c
        e = CounterMetricFamily("hafleet_api_errors", "API errors by status", labels=["status"])
        for status, n in sorted(self.counters.errors.items()):
            e.add_metric([str(status)], n)
        yield e
        cap = self.counters.cap
        if cap is not None:
            yield g("hafleet_api_connections", "open API connections", cap.open)
            yield g("hafleet_api_connections_max", "the cap on open API connections", cap.limit)
            c = CounterMetricFamily(
                "hafleet_api_connections_refused", "API connections refused over the cap"
            )
            c.add_metric([], cap.refused)
            yield c
        yield g("hafleet_uptime_seconds", "agent uptime", time.monotonic() - agent.started_at)


# The chunked snapshot transfer's counters (snapxfer.py), by their key in its stats.
_SNAPSHOT_SEND_METRICS = {
    "started": ("hafleet_snapshot_sends_started", "chunked snapshot transfers started"),
    "completed": ("hafleet_snapshot_sends_completed", "chunked snapshots the receiver took"),
    "failed": ("hafleet_snapshot_sends_failed", "chunked snapshot transfers that failed"),
    "bytes_sent": ("hafleet_snapshot_bytes_sent", "snapshot data queued in chunks"),
}
_SNAPSHOT_RECEIVE_METRICS = {
    "completed": ("hafleet_snapshot_receives_completed", "chunked snapshots received whole"),
    "refused": ("hafleet_snapshot_receives_refused", "chunked snapshot transfers refused"),
    "bytes_received": ("hafleet_snapshot_bytes_received", "snapshot data received in chunks"),
}
