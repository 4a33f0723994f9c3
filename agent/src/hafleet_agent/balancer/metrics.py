"""The balancer syncer's own ``/metrics`` (``hafleet-agent balancer --metrics-port P``).

:class:`SyncerMetrics` is what the syncer records as it goes (the rounds that left HAProxy in
step, the commands HAProxy refused, the last ``show stat`` of the backend, when an agent last
answered the watch); :func:`exposition` turns it and the syncer's counters into the
Prometheus text format at scrape time; :func:`serve_metrics` answers ``GET /metrics`` on a
port of its own with a few lines of asyncio (one request a connection, no token: the page
holds counts and the backend's server names, no secret). docs/monitoring.md lists the
metrics; monitoring/prometheus/rules/hafleet.yml alerts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("hafleet.balancer")

#: The most of a request's head the metrics listener reads, and how long it waits for it.
MAX_HEAD_BYTES = 8192
HEAD_TIMEOUT_S = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def status_up(status: str) -> bool | None:
    """HAProxy's ``show stat`` status of a server: True when it takes traffic (``UP``,
    ``UP 1/2`` going down, ``no check``), False when it is down (``DOWN``, ``DOWN 1/2``
    coming up, ``NOLB``), None when it is out of service on purpose (``MAINT``, ``DRAIN``:
    the syncer put it there, or an operator did)."""
    s = status.strip().upper()
    if s.startswith(("MAINT", "DRAIN")):
        return None
    return s.startswith("UP") or s == "NO CHECK"


class SyncerMetrics:
    """What the syncer records for its ``/metrics``; ``clock`` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started_at = clock()
        self.synced_at: float | None = None
        self.heard_at: float | None = None
        self.failed_total = 0
        self.stats: dict[str, dict[str, str]] = {}

    def saw(self, stats: dict[str, dict[str, str]]) -> None:
        """The backend's ``show stat`` rows of this round."""
        self.stats = stats

    def synced(self) -> None:
        """A round ended with every command it planned applied: HAProxy is in step with
        the latest view."""
        self.synced_at = self.clock()

    def heard(self) -> None:
        """An agent answered the watch with a view."""
        self.heard_at = self.clock()

    def age(self, at: float | None) -> float:
        """Seconds since ``at`` (since the syncer started when it never happened)."""
        return self.clock() - (self.started_at if at is None else at)


def exposition(bal: Any) -> bytes:
    """The Prometheus text of the syncer ``bal`` (a :class:`.syncer.Balancer`)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(bal))
    registry.register(ProcessCollector(registry=None))
    return generate_latest(registry)


class _Collector:
    def __init__(self, bal: Any) -> None:
        self.bal = bal

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from .. import __version__

        bal, m = self.bal, self.bal.metrics
        backend = bal.backend
        info = GaugeMetricFamily(
            "hafleet_build_info", "the agent's version (always 1)", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield CounterMetricFamily(
            "hafleet_balancer_changes_applied",
            "Runtime API commands applied to HAProxy",
            bal.applied_total,
        )
        yield CounterMetricFamily(
            "hafleet_balancer_changes_failed",
            "Runtime API commands HAProxy refused",
            m.failed_total,
        )
        yield CounterMetricFamily(
            "hafleet_balancer_rounds", "reconcile rounds run with a view of the group", bal.rounds
        )
        yield GaugeMetricFamily(
            "hafleet_balancer_last_sync_age_seconds",
            "seconds since a round last left HAProxy in step with the group's view "
            "(since the start when none has)",
            m.age(m.synced_at),
        )
        yield GaugeMetricFamily(
            "hafleet_balancer_view_age_seconds",
            "seconds since an agent last answered the watch with a view (since the start when "
            "none has)",
            m.age(m.heard_at),
        )
        yield GaugeMetricFamily(
            "hafleet_balancer_haproxy_up",
            "1 while HAProxy's Runtime API answers",
            0 if bal.haproxy_down_since is not None else 1,
        )
        # While HAProxy is down, the last ``show stat`` is a dead process's: not converged,
        # and the families below carry no sample (unknown) until it answers again.
        down = bal.haproxy_down_since is not None
        yield GaugeMetricFamily(
            "hafleet_balancer_converged",
            "1 when the last round found nothing to change and nothing in progress "
            "(0 while HAProxy is down)",
            1 if bal.converged.is_set() and not down else 0,
        )
        servers = GaugeMetricFamily(
            "hafleet_balancer_servers",
            "servers in the backend (no sample while HAProxy is down)",
            labels=["backend"],
        )
        up = GaugeMetricFamily(
            "hafleet_balancer_servers_up",
            "servers of the backend that take traffic (no sample while HAProxy is down)",
            labels=["backend"],
        )
        each = GaugeMetricFamily(
            "hafleet_balancer_server_up",
            "1 when HAProxy sends the server traffic, 0 when its check holds it down (also "
            "while draining); absent in maintenance or draining with its check passing, and "
            "while HAProxy is down",
            labels=["backend", "server"],
        )
        if down:
            yield from (servers, up, each)
            return
        rows = {name: row for name, row in m.stats.items() if name != "BACKEND"}
        n_up = 0
        for name, row in sorted(rows.items()):
            state = status_up(row.get("status", ""))
            n_up += state is True
            if state is not None:
                each.add_metric([backend, name], 1 if state else 0)
        servers.add_metric([backend], len(rows))
        up.add_metric([backend], n_up)
        yield servers
        yield up
        yield each


async def serve_metrics(bal: Any, host: str, port: int) -> asyncio.Server:
    """Answer ``GET /metrics`` on ``host:port`` (HTTP/1.1, one request a connection)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            method, path = (line[0], line[1]) if len(line) == 3 else ("", "")
            if method not in ("GET", "HEAD"):
                status, body = "405 Method Not Allowed", b"GET /metrics\n"
            elif path.split("?", 1)[0] != "/metrics":
                status, body = "404 Not Found", b"GET /metrics\n"
            else:
                status, body = "200 OK", exposition(bal)
            head_out = (
                f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head_out.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # no request, or not HTTP: close
        except ConnectionError:
            pass
        except Exception:  # a bug: the syncer goes on
            log.exception("answering a metrics request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port, limit=MAX_HEAD_BYTES)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
