"""What every member tells the leader, and what the leader shares back.

- its host's metrics, sampled every REPORT_INTERVAL (``sampler_loop``) and sent to the
  leader in a ``metrics`` frame (the leader keeps its own and the members' reports in the
  chores' table); the leader shares every member's last report in ``metrics_table`` frames;
  both ride on the next Raft frame to their peer (``chores.ride_within``);
- its own member record: when the replicated record no longer holds this node's addresses
  (``check_own_record``), the leader writes it, a follower asks the leader to in a
  ``member_update`` frame.

The reporter sees the node through what is passed in: the driver (who leads, proposals),
the state machine, the chores' tables, and callables for this node's info, its address
book, sending a frame and spawning a task."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import AgentConfig, parse_service_check
from ..metrics import HostMetrics, MetricsSource, Sampler
from ..state import StateMachine, encode_command
from ..transport import PeerInfo
from .chores import REPORT_INTERVAL, LeaderChores, ride_within
from .driver import Driver
from .errors import AgentError
from .frames import MAX_METRICS_FIELDS, FrameError, check_info, check_metrics_row
from .service_check import MAX_DETAIL, Checker
from .tasks import on_grid

log = logging.getLogger("hafleet.agent")


class Reporter:
    def __init__(
        self,
        node_id: str,
        cfg: AgentConfig,
        state: StateMachine,
        driver: Driver,
        chores: LeaderChores,
        *,
        metrics_source: MetricsSource | None,
        stopping: asyncio.Event,
        my_info: Callable[[], dict[str, Any]],
        addr_of: Callable[[str], str | None],
        send: Callable[..., bool],
        spawn: Callable[..., None],
    ) -> None:
        self.id = node_id
        self.cfg = cfg
        self.state = state
        self.driver = driver
        self.chores = chores
        self.metrics_source = metrics_source  # None: psutil
        self._stop = stopping
        self._my_info = my_info
        self._addr_of = addr_of
        self._send = send
        self._spawn = spawn
        self.sampler: Sampler | None = None  # made by the sampler task (it may fail: EMFILE)
        self.metrics: HostMetrics | None = None
        self._last_self_check = 0.0
        self.service_checker: Checker | None = None
        kind, path = parse_service_check(cfg.service_check)
        if kind != "none" and cfg.service_addr:
            self.service_checker = Checker(
                kind,
                path,
                cfg.service_addr,
                interval=cfg.service_check_interval_ms / 1000,
                timeout=cfg.service_check_timeout_ms / 1000,
                rise=cfg.service_check_rise,
                fall=cfg.service_check_fall,
                on_result=self.on_service_result,
            )

    # ---- our service's check (node/service_check.py) ---------------------------------------
    async def service_check_loop(self) -> None:
        if self.service_checker is not None:
            await self.service_checker.run(self._stop)

    def on_service_result(self, ok: bool, detail: str) -> None:
        """Every check's result goes to the leader (a ``service_check`` frame; an older
        leader drops the kind it does not know), which keeps ``health/service/<id>``."""
        raw = self.driver.raw
        lead = raw.basic_status().lead if raw is not None else None
        if lead == self.id:
            self.chores.service_reports[self.id] = (time.monotonic(), ok, detail)
            self.chores.wake_service()
        elif lead is not None:
            addr = self._addr_of(lead)
            if addr:
                self._send(addr, "service_check", ok=ok, detail=detail[:MAX_DETAIL])

    def on_service_check(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        ok, detail = obj.get("ok"), obj.get("detail", "")
        if not isinstance(ok, bool) or not isinstance(detail, str):
            raise FrameError("service_check needs ok (bool) and detail (str)")
        if self.driver.is_leader() and self.state.has_member(peer.node_id):
            self.chores.service_reports[peer.node_id] = (
                time.monotonic(),
                ok,
                detail[:MAX_DETAIL],
            )
            self.chores.wake_service()

    # ---- metrics ---------------------------------------------------------------------------
    async def sampler_loop(self) -> None:
        """Sample the host every REPORT_INTERVAL and report. A failing reading (psutil
        cannot open /proc files once the descriptors are used up: EMFILE) ends the task,
        which the node's _supervised starts again after its back-off; the reports resume."""
        if self.sampler is None:
            self.sampler = Sampler(self.metrics_source, data_dir=self.cfg.data_dir)
        self.sampler.sample()  # primes cpu_percent (a few /proc reads: no thread needed)
        while not self._stop.is_set():
            await asyncio.sleep(on_grid(REPORT_INTERVAL))
            self.metrics = self.sampler.sample()
            self._report_metrics()

    def _report_metrics(self) -> None:
        raw = self.driver.raw
        if self.metrics is None or raw is None:
            return
        body = self.metrics.to_dict()
        lead = raw.basic_status().lead
        if lead == self.id:
            self.chores.reports[self.id] = (time.monotonic(), body)
        elif lead is not None:
            addr = self._addr_of(lead)
            if addr:
                # rides on the next heartbeat answer: no write nor wake-up of its own
                self._send(addr, "metrics", metrics=body, within=ride_within(self.cfg))

    def on_metrics(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        """A member's report to the leader; reports of non-members are ignored (the table
        holds members only), and a report is kept in its parsed, bounded form."""
        metrics = obj.get("metrics")
        if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS_FIELDS:
            raise FrameError("metrics must be a small map")
        body = HostMetrics.from_dict(metrics).to_dict()  # ValueError: dropped
        if self.driver.is_leader() and self.state.has_member(peer.node_id):
            self.chores.reports[peer.node_id] = (time.monotonic(), body)

    def on_metrics_table(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        """The leader's table of every member's last report (rows of members only)."""
        table = obj.get("table")
        if not isinstance(table, dict):
            raise FrameError("table must be a map")
        raw = self.driver.raw
        if raw is None or peer.node_id != raw.basic_status().lead:
            return
        self.chores.metrics_table = {
            mid: check_metrics_row(row)
            for mid, row in table.items()
            if isinstance(mid, str) and self.state.has_member(mid)
        }

    # ---- our own member record -------------------------------------------------------------
    def check_own_record(self) -> None:
        """Make the replicated member record hold our current addresses (a founder that
        learned of us over mDNS did not know our service address; flags may change)."""
        now = time.monotonic()
        if now - self._last_self_check < 2.0 or not self.driver.in_config(self.id):
            return
        self._last_self_check = now
        rec = self.state.member(self.id)
        mine = self._my_info()
        if rec is None or all(
            rec.get(k) == mine[k] for k in ("raft_addr", "api_addr", "service_addr")
        ):
            return
        if self.driver.is_leader():
            self._spawn(self._write_quietly(encode_command("member_put", **mine)), "member-put")
        else:
            lead = self.driver.leader_id()
            addr = self._addr_of(lead) if lead else None
            if addr:
                self._send(addr, "member_update", info=mine)

    async def _write_quietly(self, data: bytes) -> None:
        try:
            await self.driver.propose_cmd(data)
        except AgentError as exc:
            log.debug("write postponed: %s", exc.message)

    def on_member_update(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        info = check_info(obj.get("info"))
        if info["id"] != peer.node_id:
            raise FrameError(f"member_update with the info of {info['id']}")
        if not self.driver.is_leader() or not self.state.has_member(peer.node_id):
            return
        self._spawn(self._write_quietly(encode_command("member_put", **info)), "member-put")
