"""``hafleet-agent balancer``: keep an HAProxy backend in step with the group, live.

One asyncio process next to HAProxy. It watches the cluster (``GET /v1/watch``, failing over
to the other members' APIs) and reconciles the backend over HAProxy's Runtime API (the admin
socket): never a configuration rewrite, never a reload. docs/balancer.md is the long version.

Reconciliation is level-based: every round reads what HAProxy has (``show servers state``,
``show stat``), compares it with what the group wants, and applies the difference:

- a member with a service address and no server: ``add server BK/ID HOST:PORT id N weight
  W check``, ``enable health``, ``enable server`` (a server added at run time starts in
  maintenance with its check off);
- a weight that differs from the committed table: ``set server BK/ID weight W``;
- a member that is draining: ``set server ... state drain``; once HAProxy shows it has no
  session left (or ``--drain-timeout`` passed), the KV key ``balancer/drained/ID`` tells the
  agent that is removing it to go on;
- a server whose member left: ``state drain``; when its sessions reach 0 (or the drain
  timeout passed: then ``shutdown sessions server``), ``state maint`` and ``del server``.

Because it only ever compares, a restart of the syncer or of HAProxy converges from whatever
``show servers state`` says. The server name is the member id; the server id is derived from
it (:func:`.plan.server_id`). Every command applied is logged; a command HAProxy refuses stops the
round, the log says what was applied and what was not, and the next round (after a backoff)
starts again from HAProxy's state.

The pure parts are in :mod:`.plan`, the socket client in :mod:`.runtime_api`, the watch and
the KV writes in :mod:`.cluster`, the KV reports to the agents in :mod:`.reports`, the checks
of its inputs (socket, URL file) in :mod:`.inputs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any

from ..apiclient import APIClient
from .cluster import BACKOFF_MAX, BACKOFF_MIN, ClusterSide
from .haproxy_config import (
    ALGORITHMS,
    STRATEGIES,
    StateParseError,
    parse_servers_state,
    write_atomic,
)
from .inputs import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    APIURLFile,
    BalancerError,
    Options,
    check_socket_path,
)
from .metrics import SyncerMetrics, serve_metrics
from .plan import Action, Plan, desired, plan
from .reports import DrainReports
from .runtime_api import HAProxyRefused, HAProxyUnavailable, NoSuchBackend, RuntimeAPI
from .vip import VIPCheck, watch_vip

log = logging.getLogger("hafleet.balancer")

DRAIN_POLL = 0.2
UNAVAILABLE_BACKOFF_MAX = 1.0

# What HAProxy's `balance` shows in `show stat` (the `algo` column) for each strategy;
# 2.6 shows "unknown" for random.
_ALGO_SHOWN = {
    "weighted": {"roundrobin"},
    "roundrobin": {"roundrobin"},
    "random": {"random", "unknown"},
    "leastconn": {"leastconn"},
}


class RoundFailed(HAProxyRefused):
    """Some commands of a round were refused (and logged); the round is retried."""


# --- the syncer -----------------------------------------------------------------------------


def default_balancer_id(haproxy_socket: str) -> str:
    """``<host>-<8 hex digits of SHA-256(socket path)>``: stable across restarts, different
    for two HAProxies of one host; only ``[A-Za-z0-9_.-]``, starting with a letter or digit."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]).strip("-._")
    digest = hashlib.sha256(os.path.abspath(haproxy_socket).encode()).hexdigest()[:8]
    return f"{host or 'balancer'}-{digest}"


class Balancer(ClusterSide):
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.haproxy = RuntimeAPI(opts.haproxy_socket)
        # The agents' API, with failover: the URLs given first, then the API addresses of
        # the members the watch reports (learn()).
        self.url_file = APIURLFile(opts.api_file) if opts.api_file else None
        self.file_urls = self.url_file.read() if self.url_file else []
        try:
            self.api = APIClient(
                self._given(), token=opts.token, use_proxy=False, logger=log, ca_path=opts.ca_file
            )
            # A second watch, on another agent: a watched agent whose host is cut off answers
            # nothing (no reset) until the watch's timeout, and the marks that evict that very
            # host (health/unreachable/<id>) must not wait for it.
            self.api2 = APIClient(
                self._given(), token=opts.token, use_proxy=False, logger=log, ca_path=opts.ca_file
            )
        except ValueError as exc:  # a CA file that cannot be loaded
            raise BalancerError(str(exc), EXIT_USAGE) from None
        self.backend = opts.backend
        self.view: dict[str, Any] | None = None
        self.view_index = 0
        self.wake = asyncio.Event()
        self.stop = asyncio.Event()
        self.drain_started: dict[str, float] = {}
        self.balancer_id = opts.balancer_id or default_balancer_id(opts.haproxy_socket)
        try:
            self.vip = VIPCheck(opts.vip) if opts.vip else None
        except ValueError as exc:
            raise BalancerError(f"--vip: {exc}", EXIT_USAGE) from None
        self.reports = DrainReports(
            self.write,
            self.get_stale,
            opts.backend,
            opts.strategy,
            opts.drain_timeout,
            balancer_id=self.balancer_id,
            extra=self.vip.fields if self.vip else None,
        )
        # Members whose service check failed in the last view (plan's service_back).
        self.service_failing: set[str] = set()
        self.haproxy_pid: str | None = None
        self.haproxy_down_since: float | None = None
        self.rounds = 0
        self.applied_total = 0
        self.converged = asyncio.Event()
        self.metrics = SyncerMetrics()  # what /metrics shows (metrics.py)
        self._last_skipped: list[str] = []
        self._last_waiting: list[str] = []

    # ---- startup checks --------------------------------------------------------------------
    async def check_haproxy(self) -> None:
        """Fail fast, with a clear message, on what no retry can fix."""
        check_socket_path(self.opts.haproxy_socket)
        try:
            info = await self.haproxy.info()
        except HAProxyUnavailable as exc:
            raise BalancerError(
                f"nothing answers on {self.opts.haproxy_socket} ({exc}); is HAProxy running?",
                EXIT_FAILURE,
            ) from None
        except HAProxyRefused as exc:
            raise BalancerError(
                f"{self.opts.haproxy_socket} does not answer like HAProxy's Runtime API: "
                f"{exc.answer!r}",
                EXIT_USAGE,
            ) from None
        self.haproxy_pid = info.get("Pid")
        try:
            await self.haproxy.servers_state(self.backend)
            stats = await self.haproxy.stat(self.backend)
        except NoSuchBackend:
            names = await self.haproxy.backends()
            raise BalancerError(
                f"HAProxy has no backend {self.backend!r} (it has: {', '.join(names) or 'none'})",
                EXIT_USAGE,
            ) from None
        except HAProxyRefused as exc:
            if "Permission denied" in exc.answer or "level" in exc.answer:
                raise BalancerError(
                    f"{self.opts.haproxy_socket} is not an admin socket ({exc.answer!r}): "
                    "use 'stats socket PATH level admin'",
                    EXIT_USAGE,
                ) from None
            raise BalancerError(f"HAProxy refused {exc.command!r}: {exc.answer!r}") from None
        algo = stats["BACKEND"].get("algo", "")
        if algo not in _ALGO_SHOWN[self.opts.strategy]:
            raise BalancerError(
                f"backend {self.backend!r} uses 'balance {algo}', but --strategy "
                f"{self.opts.strategy} needs 'balance {ALGORITHMS[self.opts.strategy]}' "
                "(render the configuration with hafleet-haproxy render)",
                EXIT_USAGE,
            )
        log.info(
            "HAProxy pid %s (version %s): backend %s, balance %s, %d server(s)",
            info.get("Pid"),
            info.get("Version", "?"),
            self.backend,
            algo,
            len([k for k in stats if k != "BACKEND"]),
        )

    # ---- reconciling -----------------------------------------------------------------------
    async def reconcile_loop(self) -> None:
        failures = 0
        while not self.stop.is_set():
            delay = self.opts.interval
            try:
                busy = await self.reconcile_once()
                if self.haproxy_down_since is not None:
                    log.info(
                        "HAProxy is back after %.1fs (pid %s)",
                        time.monotonic() - self.haproxy_down_since,
                        self.haproxy_pid,
                    )
                    self.haproxy_down_since = None
                failures = 0
                if busy:
                    delay = min(delay, DRAIN_POLL)
            except HAProxyUnavailable as exc:
                failures += 1
                if self.haproxy_down_since is None:
                    self.haproxy_down_since = time.monotonic()
                    log.error("HAProxy is unavailable: %s; retrying", exc)
                # The socket is local and cheap to try: come back quickly after a restart.
                delay = self._backoff(failures, UNAVAILABLE_BACKOFF_MAX)
            except NoSuchBackend as exc:
                failures += 1
                delay = self._backoff(failures)
                log.error(
                    "HAProxy has no backend %r any more (%s); retrying in %.1fs",
                    self.backend,
                    exc.answer,
                    delay,
                )
            except HAProxyRefused as exc:
                if "must use a dynamic load balancing" in exc.answer:
                    raise BalancerError(
                        f"backend {self.backend!r} uses a static algorithm, which cannot take "
                        f"servers at run time ({exc.answer!r}); use one of "
                        f"{sorted(set(ALGORITHMS.values()))}",
                        EXIT_USAGE,
                    ) from None
                failures += 1
                delay = self._backoff(failures)
                if isinstance(exc, RoundFailed):  # _apply logged what was and was not applied
                    log.warning("retrying in %.1fs", delay)
                else:
                    log.error(
                        "HAProxy refused %r: %r; retrying in %.1fs", exc.command, exc.answer, delay
                    )
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)

    @staticmethod
    def _backoff(failures: int, cap: float = BACKOFF_MAX) -> float:
        base = min(cap, BACKOFF_MIN * 2 ** min(failures - 1, 6))
        return base * random.uniform(0.5, 1.0)

    async def reconcile_once(self) -> bool:
        """One round; True while something is in progress (a drain)."""
        info = await self.haproxy.info()
        pid = info.get("Pid")
        restarted = self.haproxy_pid is not None and pid != self.haproxy_pid
        if restarted:
            log.warning(
                "HAProxy restarted or reloaded (pid %s -> %s): converging from its state",
                self.haproxy_pid,
                pid,
            )
        self.haproxy_pid = pid
        view = self.view
        if view is None:
            return False
        self.rounds += 1
        servers = await self.haproxy.servers_state(self.backend)
        stats = await self.haproxy.stat(self.backend)
        self.metrics.saw(stats)
        wants, skipped = desired(view, self.opts.strategy)
        if skipped != self._last_skipped:
            for s in skipped:
                log.warning("not balancing to member %s", s)
            self._last_skipped = skipped
        now = time.monotonic()
        have = {s.name: s for s in servers}
        # A drain we did not start (before a restart of ours) counts from now.
        for s in servers:
            if (s.drain or s.maint) and s.name not in self.drain_started:
                if s.name not in wants or wants[s.name].drain:
                    self.drain_started[s.name] = now
        for name in list(self.drain_started):
            if name not in have or (name in wants and not wants[name].drain):
                del self.drain_started[name]
        failing = {name for name, w in wants.items() if w.out and w.weight == 0}
        failing |= {
            str(m.get("id")) for m in view.get("members") or [] if m.get("service_healthy") is False
        }
        p = plan(
            self.backend,
            wants,
            servers,
            stats,
            self.drain_started,
            now,
            self.opts.drain_timeout,
            service_back=self.service_failing - failing,
        )
        self.service_failing = failing
        applied, failed = await self._apply(p)
        if p.waiting != self._last_waiting:
            for w in p.waiting:
                log.info("in progress: %s", w)
            self._last_waiting = p.waiting
        await self.reports.report(view, wants, p)
        if (applied or restarted) and self.opts.state_file:
            await self._save_state()
        if not p.actions and not p.waiting:
            self.converged.set()
        else:
            self.converged.clear()
        if failed:
            self.metrics.failed_total += len(failed)
            action, answer = next(iter(failed.values()))
            raise RoundFailed(action.command, answer)
        self.metrics.synced()
        return bool(p.waiting) or bool(p.actions)

    async def _apply(self, p: Plan) -> tuple[list[Action], dict[str, tuple[Action, str]]]:
        """Apply the plan in order. A command HAProxy refuses stops the commands of that
        server (the ones after it depend on it) but not the others'; the log says what was
        applied and what was not. HAProxy going away stops everything."""
        applied: list[Action] = []
        failed: dict[str, tuple[Action, str]] = {}
        for action in p.actions:
            if action.server in failed:
                continue
            try:
                await self.haproxy.execute(action.command)
            except HAProxyRefused as exc:
                if action.deletes and "still has connections" in exc.answer:
                    # Idle or closing connections: HAProxy lets them go shortly. Not an error.
                    p.waiting.append(f"{action.server}: left, waiting for its connections")
                    continue
                failed[action.server] = (action, exc.answer)
                continue
            except HAProxyUnavailable as exc:
                self._log_partial(p, applied, {action.server: (action, str(exc))}, everything=True)
                raise
            applied.append(action)
            self.applied_total += 1
            log.info("applied: %s (%s)", action.command, action.why)
            if action.starts_drain:
                self.drain_started.setdefault(action.server, time.monotonic())
            if action.deletes:
                self.drain_started.pop(action.server, None)
                self.reports.forget(action.server)
        if failed:
            self._log_partial(p, applied, failed)
        return applied, failed

    @staticmethod
    def _log_partial(
        p: Plan,
        applied: list[Action],
        failed: Mapping[str, tuple[Action, str]],
        everything: bool = False,
    ) -> None:
        done = set(applied)
        first_failed = {a for a, _ in failed.values()}
        rest = [
            a
            for a in p.actions
            if a not in done and a not in first_failed and (everything or a.server in failed)
        ]
        log.error(
            "applied %d of %d change(s)%s; failed: %s; not applied: %s; "
            "the next round starts again from HAProxy's state",
            len(applied),
            len(p.actions),
            f" ({'; '.join(a.command for a in applied)})" if applied else "",
            "; ".join(f"{a.command} -> {why!r}" for a, why in failed.values()),
            "; ".join(a.command for a in rest) or "nothing else",
        )

    async def _save_state(self) -> None:
        assert self.opts.state_file
        try:
            text = await self.haproxy.command("show servers state")
            parse_servers_state(text)
            await asyncio.get_running_loop().run_in_executor(
                None, write_atomic, self.opts.state_file, text
            )
        except (OSError, StateParseError, HAProxyUnavailable) as exc:
            log.warning("could not save the server state to %s: %s", self.opts.state_file, exc)

    # ---- running ---------------------------------------------------------------------------
    async def run(self) -> int:
        await self.check_haproxy()
        log.info(
            "balancer %s: backend %s, strategy %s (balance %s), drain timeout %gs, agents %s",
            self.balancer_id,
            self.backend,
            self.opts.strategy,
            ALGORITHMS[self.opts.strategy],
            self.opts.drain_timeout,
            ", ".join(self.api.given),
        )
        metrics = None  # the syncer's /metrics (metrics.py), first: a port in use stops here
        if self.opts.metrics_port is not None:
            try:
                metrics = await serve_metrics(self, self.opts.metrics_bind, self.opts.metrics_port)
            except OSError as exc:
                raise BalancerError(f"--metrics-port: {exc}", EXIT_USAGE) from None
        tasks = [
            asyncio.create_task(self.watch(), name="balancer-watch"),
            asyncio.create_task(self.watch(second=True), name="balancer-watch-2"),
            asyncio.create_task(self.registration_loop(), name="balancer-registration"),
            asyncio.create_task(self.reconcile_loop(), name="balancer-reconcile"),
        ]
        if metrics is not None:
            tasks.append(asyncio.create_task(metrics.serve_forever(), name="balancer-metrics"))
        if self.vip is not None:
            self.vip.check()  # (it logs whether the address is held here)
            tasks.append(
                asyncio.create_task(
                    watch_vip(self.vip, self.reports.refresh, self.stop), name="balancer-vip"
                )
            )
        stopper = asyncio.create_task(self.stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopper and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            self.stop.set()
            for t in [*tasks, stopper]:
                t.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
            if self.reports.own_registered_at:
                # A clean stop: no removal should wait for us (bounded: the agents may be gone).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.reports.deregister(), 3.0)
        log.info("stopped (%d change(s) applied in %d round(s))", self.applied_total, self.rounds)
        return EXIT_OK


async def run_balancer(opts: Options) -> int:
    if opts.strategy not in STRATEGIES:
        raise BalancerError(f"unknown strategy {opts.strategy!r}", EXIT_USAGE)
    bal = Balancer(opts)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, bal.stop.set)
        # (run() cancels the loops when stop is set)
    return await bal.run()
