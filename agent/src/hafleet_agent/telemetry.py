"""What the agent measures for ``/metrics`` as it runs: histograms and counters, no I/O.

The node and the API record into one :class:`AgentTelemetry` per process, :data:`TELEMETRY`
(as prometheus_client's default registry is one per process: one agent runs in a process);
``server/prom.py`` reads it at scrape time. Recording costs a lock and a few additions, so
the writer thread may record too; prometheus_client is never imported here (an agent nobody
scrapes does not load it). docs/monitoring.md lists the metrics.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds: a WAL batch's write and sync (etcd's wal_fsync_duration_seconds buckets, 1 ms..8 s).
SYNC_BUCKETS = (
    0.001,
    0.002,
    0.004,
    0.008,
    0.016,
    0.032,
    0.064,
    0.128,
    0.256,
    0.512,
    1.024,
    2.048,
    4.096,
    8.192,
)
#: Seconds: an API write or read, from the request to the answer (forwarding included).
REQUEST_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Seconds: making a snapshot (encode, write, sync).
SNAPSHOT_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Bytes: a snapshot's size, 1 KiB..1 GiB by powers of 4.
SNAPSHOT_BYTES_BUCKETS = tuple(float(1 << s) for s in range(10, 31, 2))


class Histogram:
    """Counts of observations at or below each upper bound, their sum and count
    (Prometheus's histogram); thread-safe."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("buckets must be distinct and increasing")
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)  # the first bound >= value
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def timed(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` that observes how long each call took (a call that raises too)."""

        def call(*args: object) -> T:
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.observe(time.perf_counter() - started)

        return call

    def cumulative(self) -> tuple[list[tuple[float, int]], float, int]:
        """``([(bound, observations <= bound), ...], sum, count)``; count is the +Inf bucket."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, running = [], 0
        for bound, n in zip(self.buckets, counts, strict=False):
            running += n
            out.append((bound, running))
        return out, total, running + counts[-1]


class AgentTelemetry:
    """The agent's own measurements (the rest of ``/metrics`` is read from the node's views
    at scrape time)."""

    def __init__(self) -> None:
        self.wal_sync_seconds = Histogram(SYNC_BUCKETS)
        self.write_seconds = Histogram(REQUEST_BUCKETS)
        self.read_seconds = Histogram(REQUEST_BUCKETS)
        self.snapshot_seconds = Histogram(SNAPSHOT_SECONDS_BUCKETS)
        self.snapshot_bytes = Histogram(SNAPSHOT_BYTES_BUCKETS)
        self.leader_changes = 0
        """Times this member saw a new leader (etcd's leader_changes_seen_total)."""
        self.proposals_failed = 0
        """Proposals that did not apply: dropped, lost to a leadership change, timed out."""


TELEMETRY = AgentTelemetry()
