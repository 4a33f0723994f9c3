"""The node (``Agent``): one cluster member, wiring the pieces together (``run.py`` runs it).

The event loop owns everything; nothing here uses threads. The Raft core is driven by one
task (``_raft_loop``) that turns every batch of inputs into a ready batch: persist it
(``DiskStorage.save`` fsyncs before it returns), send its messages, apply its committed
entries to the state machine, wake whoever waits for them. Inputs (ticks, messages,
proposals, reads) are fed to the core synchronously from callbacks and only ever between
two ready batches, because the drain of a ready batch never awaits.

The node composes its parts (``node/``): the peer table (``peers.py``), founding and
joining (``bootstrap.py``), the leader's chores (``chores.py``), the frame field checks
(``frames.py``); the HTTP API sees it as ``node.verbs.NodeVerbs``; ``run.py`` runs it as a
process. ``docs/architecture.md`` draws the layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import __version__
from .api import start_api
from .codec import MAX_TERM_JUMP as MAX_TERM_JUMP  # tests read it here
from .codec import encode_message
from .config import AgentConfig
from .ids import member_id_error
from .keys import DRAINED_PREFIX, REGISTERED_KEY
from .keys import OVERRIDE_PREFIX as OVERRIDE_PREFIX  # tests read it here
from .metrics import HostMetrics, MetricsSource
from .node.bootstrap import Bootstrap
from .node.chores import LeaderChores
from .node.driver import Driver
from .node.errors import AgentError, BadRequest, NoLeader, NotFound, StateErrorResult, Unknown
from .node.inbox import FrameHandler, Inbox
from .node.meta import META_FILE, load_cluster_id, save_cluster_id
from .node.peers import MAX_PEERS as MAX_PEERS  # tests read it here
from .node.peers import PEER_EXPIRE_S, Peer, PeerTable
from .node.reports import Reporter
from .node.snapshots import SnapshotTransfer
from .raft.rawnode import RawNode
from .raft.status import BasicStatus
from .raft.types import (
    ConfChange,
    ConfChangeType,
    Message,
    StateType,
)
from .snapxfer import ACK_KIND, CHUNK_KIND, SnapshotReceiver, SnapshotSender
from .state import (
    StateError,
    StateMachine,
    encode_command,
    member_context,
)
from .transport import PeerInfo, Transport
from .wal import DiskStorage, StorageError

log = logging.getLogger("hafleet.agent")

#: A background task that fails (the sampler, housekeeping, the leader's chores, discovery,
#: founding and joining) is logged and started again after a back-off that doubles from
#: RESTART_MIN_S up to RESTART_MAX_S; one that ran RESTART_RESET_S without failing starts the
#: back-off afresh. Storage failures and the Raft driver's tasks are fail-stop instead.
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        key: bytes,
        token: bytes,
        *,
        metrics_source: MetricsSource | None = None,
    ) -> None:
        self.cfg = cfg
        self.key = key
        self.token = token
        self.id = cfg.node_id
        self.started_at = time.monotonic()
        self.data_dir = Path(cfg.data_dir)
        self.state = StateMachine()
        self.cluster_id: str | None = None
        self._stop = asyncio.Event()
        self.rng = random.Random(secrets.randbits(64))
        # The core, its log and the state machine, and the Ready loop (node/driver.py).
        self.driver = Driver(
            self.id,
            cfg,
            self.state,
            self.rng,
            stopping=self._stop,
            cluster_id=lambda: self.cluster_id,
            send=self._send_raft,
            save_snapshot=lambda snap: self.snapshots.save_received(snap),
            on_conf_change=self._on_conf_change,
            sending_snapshot=lambda: self.snapshots.busy(),
            spawn=self._spawn,
            fail=self.fail,
        )
        # The peers besides the members (node/peers.py); ``peers`` is its dict.
        self.peer_table = PeerTable(
            is_member=self.state.has_member,
            member_addrs=lambda: (m.get("raft_addr") for m in self.state.members()),
            join_addrs=cfg.join,
            close_addr=self._close_peer_addr,
        )
        self.peers = self.peer_table.peers
        self.transport: Transport | None = None
        self.discovery: Any = None
        # The leader's chores and their tables: reports, health, join times (node/chores.py).
        self.chores = LeaderChores(
            self.id,
            cfg,
            self.state,
            raw=lambda: self.raw,
            leader_since=lambda: self.leader_since,
            propose_cmd=self.driver.propose_cmd,
            propose_conf=self.driver.propose_conf,
            send=self._send,
            wake=self.driver.wake,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self.exit_code = 0
        self.exit_reason = ""
        self.exit_timer: threading.Timer | None = None  # set by fail()
        self.api_runner: Any = None
        # Founding and joining (node/bootstrap.py).
        self.bootstrap = Bootstrap(
            self.id,
            cfg,
            self.rng,
            self.peers,
            get_peer=self._peer,
            raw=lambda: self.raw,
            cluster_id=lambda: self.cluster_id,
            adopt_cluster=self._adopt_cluster,
            in_config=lambda: self.driver.in_config(self.id),
            is_leader=self.is_leader,
            my_info=self.my_info,
            send=self._send,
            queued=self._queued,
            addr_of=self._addr_of,
            add_member=self.add_member,
            spawn=self._spawn,
            wake=self.driver.wake,
        )
        # Snapshots too large for one frame travel in chunks (node/snapshots.py); its sender
        # and receiver are made in start(), once the transport runs.
        self.snapshots = SnapshotTransfer(
            self.id,
            self.data_dir,
            self.driver,
            cluster_id=lambda: self.cluster_id,
            stopping=self._stop,
            spawn=self._spawn,
            send=self._send,
            deliver_raft=lambda peer, cid, data: self.inbox.on_raft_frame(peer, cid, data),
        )
        self.snap_sender: SnapshotSender | None = None
        self.snap_receiver: SnapshotReceiver | None = None
        # Metrics to the leader and our own member record (node/reports.py).
        self.reporter = Reporter(
            self.id,
            cfg,
            self.state,
            self.driver,
            self.chores,
            metrics_source=metrics_source,
            stopping=self._stop,
            my_info=self.my_info,
            addr_of=self._addr_of,
            send=self._send,
            spawn=self._spawn,
        )
        #: Failures of the background tasks that were restarted, by task name.
        self.task_failures: dict[str, int] = {}
        self._last_prune = 0.0
        # What a peer may send, checked (node/inbox.py).
        self.inbox = Inbox(
            self.id,
            cfg.cluster,
            self.driver,
            cluster_id=lambda: self.cluster_id,
            note_peer=self._note_peer,
            expects=self.bootstrap.expects,
            adopt_cluster=self._adopt_cluster,
        )
        # The frame kinds a peer may send, and nothing else: a frame names its handler only
        # through this table (never through the node's attributes).
        self._frame_handlers: dict[str, FrameHandler] = {
            "raft": self.inbox.on_raft,
            "hello": self.bootstrap.on_hello,
            "found_propose": self.bootstrap.on_found_propose,
            "found_accept": self.bootstrap.on_found_accept,
            "join": self.bootstrap.on_join,
            "join_resp": self.bootstrap.on_join_resp,
            "metrics": self.reporter.on_metrics,
            "metrics_table": self.reporter.on_metrics_table,
            "member_update": self.reporter.on_member_update,
            CHUNK_KIND: self.snapshots.on_chunk,
            ACK_KIND: self.snapshots.on_ack,
        }
        self.inbox.handlers = self._frame_handlers

    # ---- the driver's parts (node/driver.py) ------------------------------------------------
    @property
    def raw(self) -> RawNode | None:
        return self.driver.raw

    @raw.setter
    def raw(self, raw: RawNode | None) -> None:
        self.driver.raw = raw

    @property
    def storage(self) -> DiskStorage | None:
        return self.driver.storage

    @property
    def removed(self) -> bool:
        """This node was removed from the group (the last word of the log on it)."""
        return self.driver.removed

    @property
    def leader_since(self) -> float | None:
        return self.driver.leader_since

    @property
    def last_leader(self) -> str | None:
        return self.driver.last_leader

    @property
    def metrics(self) -> HostMetrics | None:
        """This host's last sample (node/reports.py)."""
        return self.reporter.metrics

    @property
    def frames_dropped(self) -> dict[str, int]:
        """Frames dropped, by reason (node/inbox.py)."""
        return self.inbox.frames_dropped

    def _on_conf_change(self, cc: ConfChange) -> None:
        """A member added (or changed) while we run: its join time, for the autopilot."""
        if cc.node_id not in self.chores.joined_at:
            self.chores.joined_at[cc.node_id] = time.monotonic()

    @property
    def reports(self) -> dict[str, tuple[float, dict[str, Any]]]:
        """The leader's table of reports: id -> (time, metrics) (node/chores.py)."""
        return self.chores.reports

    @property
    def health_seen(self) -> dict[str, float]:
        return self.chores.health_seen

    @property
    def _admitting(self) -> set[str]:
        """The joiners whose admission is under way (node/bootstrap.py)."""
        return self.bootstrap.admitting

    def _queued(self, addr: str) -> bool:
        """Whether a frame to ``addr`` still waits for a connection."""
        assert self.transport is not None
        return self.transport.queued(addr)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.cluster_id = load_cluster_id(self.data_dir, self.id, cfg.cluster)
        has_state = self.driver.open(self.data_dir)
        st = self.driver.storage
        assert st is not None
        if has_state:
            if self.cluster_id is None:
                raise StorageError(
                    f"{self.data_dir} holds Raft state but no {META_FILE}: refusing to start "
                    "a node whose cluster is unknown"
                )
            log.info(
                "restarting from %s: term %d, commit %d, %d entries after snapshot %d",
                self.data_dir,
                st.hard_state.term,
                st.hard_state.commit,
                len(st.entries),
                st.snapshot.meta.index,
            )
        else:
            log.info("fresh node %s of cluster %r", self.id, cfg.cluster)

        self.transport = Transport(
            node_id=self.id,
            cluster=cfg.cluster,
            key=self.key,
            bind_host=cfg.bind,
            port=cfg.raft_port,
            advertise=cfg.raft_addr,
            on_frame=self.inbox.on_frame,
            accept_peer=self.inbox.accept_peer,
            cluster_id=lambda: self.cluster_id,
        )
        await self.transport.start()
        self.snapshots.start(self.transport)
        self.snap_sender, self.snap_receiver = self.snapshots.sender, self.snapshots.receiver
        self.api_runner = await start_api(self)
        if cfg.mdns and not await self._start_discovery():
            self._supervise(self._retry_discovery, "discovery")
        # The Raft driver persists (fsync) what the core hands it: a failure there is
        # fail-stop. The other tasks are restarted after a failure (see _supervised).
        self._spawn(self.driver.raft_loop(), "raft", critical=True)
        self._spawn(self.driver.ticker(), "ticker", critical=True)
        self._supervise(self.reporter.sampler_loop, "sampler")
        self._supervise(self._housekeeping, "housekeeping")
        self._supervise(self._leader_loop, "leader")
        if not has_state:
            self._supervise(self.bootstrap.run, "bootstrap")
        self.driver.wake()
        log.info(
            "hafleet-agent %s: node %s raft %s api %s%s",
            __version__,
            self.id,
            cfg.raft_addr,
            cfg.api_addr,
            f" service {cfg.service_addr}" if cfg.service_addr else "",
        )

    def _spawn(self, coro: Any, name: str, *, critical: bool = False) -> None:
        """Run ``coro`` as a task of the agent (cancelled by ``stop``). When it fails: a
        critical task, or any StorageError, stops the agent (fail-stop); any other failure
        is logged and that is all (loops that must go on run under ``_supervise``)."""
        task = asyncio.create_task(coro, name=f"hafleet-{name}")
        task.add_done_callback(lambda t: self._task_done(t, critical))
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any], critical: bool = False) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if critical or isinstance(exc, StorageError):
            log.critical("task %s failed: %r; stopping", task.get_name(), exc, exc_info=exc)
            self.fail(f"internal error in {task.get_name()}: {exc}")
        else:
            log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    def _supervise(self, run: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``run()`` as a task that is started again whenever it fails (until it returns
        or the agent stops)."""
        self._spawn(self._supervised(run, name), name)

    async def _supervised(self, run: Callable[[], Awaitable[None]], name: str) -> None:
        """A failure is logged (the traceback the first time in a row) and ``run`` starts
        again after a back-off of RESTART_MIN_S doubling up to RESTART_MAX_S; a run that
        lasted RESTART_RESET_S starts the back-off afresh. A StorageError is not retried: it
        ends the task, and the agent (fail-stop, in _task_done)."""
        loop = asyncio.get_running_loop()
        in_a_row = 0
        while not self._stop.is_set():
            began = loop.time()
            try:
                await run()
                return
            except StorageError:
                raise
            except Exception as exc:
                if loop.time() - began >= RESTART_RESET_S:
                    in_a_row = 0
                delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** min(in_a_row, 16))
                in_a_row += 1
                self.task_failures[name] = self.task_failures.get(name, 0) + 1
                log.error(
                    "task %s failed (%d in a row): %r; starting it again in %.1fs",
                    name,
                    in_a_row,
                    exc,
                    delay,
                    exc_info=exc if in_a_row == 1 else None,
                )
            await asyncio.sleep(delay)

    def fail(self, reason: str) -> None:
        """Stop serving: the node cannot go on safely (e.g. an fsync failed)."""
        if not self._stop.is_set():
            self.exit_code = 1
            self.exit_reason = reason
            log.critical("stopping: %s", reason)
            self._stop.set()
            self.exit_timer = exit_later(FAIL_EXIT_S)

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self, handover: bool = True) -> None:
        """Stop; a leader first hands leadership to the most caught-up voter."""
        if handover:
            with contextlib.suppress(Exception):
                await self.hand_over(timeout=self.cfg.election_timeout_ms / 1000 * 2)
        self._stop.set()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.driver.release_waiters()
        if self.api_runner is not None:
            await self.api_runner.cleanup()
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await self.discovery.stop()
        if self.transport is not None:
            await self.transport.stop()
        self.driver.close()
        log.info("stopped")

    # ---- the cluster id (node/meta.py) -----------------------------------------------------
    def _adopt_cluster(self, cluster_id: str, how: str) -> bool:
        """Take ``cluster_id`` for good (written to agent.json); False when that failed, and
        then the agent is failing (a storage failure: fail-stop)."""
        if self.cluster_id == cluster_id:
            return True
        if self.cluster_id is not None:
            raise AssertionError(f"cluster id {self.cluster_id} cannot become {cluster_id}")
        self.cluster_id = cluster_id
        try:
            save_cluster_id(self.data_dir, self.id, self.cfg.cluster, cluster_id)
        except OSError as exc:
            self.fail(f"storage failed, cannot record the cluster id in {META_FILE}: {exc}")
            return False
        log.info("cluster %s: id %s (%s)", self.cfg.cluster, cluster_id, how)
        if self.discovery is not None:
            discovery = self.discovery

            async def announce() -> None:
                await discovery.update(cluster_id=cluster_id, fresh=False)

            self._supervise(announce, "mdns-update")
        return True

    # ---- messages --------------------------------------------------------------------------
    def _addr_of(self, node_id: str) -> str | None:
        addr = self.state.member_field(node_id, "raft_addr")
        if addr:
            return str(addr)
        p = self.peers.get(node_id)
        return p.raft_addr if p else None

    def _send_raft(self, m: Message) -> None:
        assert m.to is not None and self.transport is not None
        addr = self._addr_of(m.to)
        if addr is None:
            log.debug("no address for %s: dropping %s", m.to, m.type.name)
            return
        if (
            m.snapshot is not None
            and self.snap_sender is not None
            and not self.snap_sender.fits_one_frame(m.snapshot)
        ):
            self.snap_sender.send(addr, m)  # in chunks; a failure is reported later
            return
        frame = {"k": "raft", "cid": self.cluster_id, "m": encode_message(m)}
        if not self.transport.send(addr, frame) and self.raw is not None:
            self.raw.report_unreachable(m.to)

    def _send(self, addr: str, kind: str, **body: Any) -> bool:
        assert self.transport is not None
        body["k"] = kind
        body["cid"] = self.cluster_id
        try:
            return self.transport.send(addr, body)
        except ValueError as exc:  # an address the transport cannot dial (from mDNS, say)
            log.debug("cannot send %s to %r: %s", kind, addr, exc)
            return False

    def _note_peer(self, peer: PeerInfo, cid: str | None) -> None:
        """An authenticated frame or handshake from ``peer``."""
        now = time.monotonic()
        if not self.peer_table.note_authenticated(peer.node_id, peer.addr, cid, now):
            return
        if self.state.has_member(peer.node_id):
            self.chores.health_seen[peer.node_id] = now

    def _peer(
        self, nid: str, raft_addr: str, source: str, now: float, *, authenticated: bool = False
    ) -> Peer | None:
        """The peer ``nid``, added if new while the table has room (PeerTable.get_or_add)."""
        return self.peer_table.get_or_add(nid, raft_addr, source, now, authenticated=authenticated)

    def _close_peer_addr(self, addr: str) -> None:
        """The peer table forgot the last peer at ``addr``: close the connection to it."""
        if self.transport is not None:
            self._spawn(self.transport.close_peer(addr), "close-peer")

    def _expire_peers(self, now: float) -> None:
        """Forget the stale peers that are not members, and the bookkeeping of ids that are
        not members."""
        self.peer_table.expire(now)
        self.chores.forget_non_members(now, PEER_EXPIRE_S)

    # ---- founding and joining ---------------------------------------------------------------
    def my_info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "raft_addr": self.cfg.raft_addr,
            "api_addr": self.cfg.api_addr,
            "service_addr": self.cfg.service_addr,
        }

    def _on_mdns_change(self, peers: dict[str, Any]) -> None:
        """The mDNS table changed (Discovery's callback): hints for the peer table."""
        self.peer_table.on_mdns(peers, time.monotonic())

    async def _start_discovery(self) -> bool:
        """Start mDNS; False (logged) when it could not start (``_retry_discovery`` then
        tries again in the background)."""
        try:
            await self._new_discovery()
        except Exception as exc:  # mDNS is a convenience: --join still works without it
            log.warning("mDNS discovery could not start on %s: %s", self.cfg.mdns_interface, exc)
            return False
        return True

    async def _retry_discovery(self) -> None:
        await asyncio.sleep(RESTART_MIN_S)
        await self._new_discovery()  # raises until it starts: _supervised backs off
        log.info("mDNS discovery started on %s", self.cfg.mdns_interface)

    async def _new_discovery(self) -> None:
        from .discovery import Discovery

        discovery = Discovery(
            node_id=self.id,
            cluster=self.cfg.cluster,
            raft_addr=self.cfg.raft_addr,
            api_addr=self.cfg.api_addr,
            interfaces=self.cfg.mdns_interface,
            cluster_id=self.cluster_id or "",
            fresh=self.cluster_id is None,
            on_change=self._on_mdns_change,
        )
        await discovery.start()
        self.discovery = discovery
        if self.cluster_id is not None and discovery.fresh:  # adopted while it started
            await discovery.update(cluster_id=self.cluster_id, fresh=False)

    def in_config(self, node_id: str) -> bool:
        """Whether ``node_id`` is a voter or a learner of the Raft configuration."""
        return self.driver.in_config(node_id)

    # ---- the loops: everyone's housekeeping, the leader's chores ------------------------------
    async def _housekeeping(self) -> None:
        """Everyone's chores: answer timed-out reads, keep our member record current, forget
        stale peers and the bookkeeping of non-members."""
        while not self._stop.is_set():
            await asyncio.sleep(0.25)
            self.driver.expire_reads()
            self.reporter.check_own_record()
            now = time.monotonic()
            if now - self._last_prune >= 5.0:
                self._last_prune = now
                self._expire_peers(now)

    async def _leader_loop(self) -> None:
        """The leader's chores: promote caught-up learners, mark health, plan weights,
        share the metrics table.

        Every loop here ends once the agent stops, not only when cancelled: on Python 3.11
        a cancellation can be lost inside ``asyncio.wait_for`` (a write's wait) when its
        future completes at the same moment, and the stop would then wait for ever."""
        while not self._stop.is_set():
            await asyncio.sleep(0.25)
            if self.is_leader():
                try:
                    await self.chores.run_once()
                except AgentError as exc:
                    log.debug("leader chores: %s", exc.message)

    # ---- the API's verbs --------------------------------------------------------------------
    def raft_status(self) -> BasicStatus | None:
        return self.driver.raft_status()

    def is_leader(self) -> bool:
        return self.driver.is_leader()

    def leader_id(self) -> str | None:
        return self.driver.leader_id()

    def write_timeout(self) -> float:
        return self.driver.write_timeout()

    async def write(self, data: bytes) -> dict[str, Any]:
        return await self.driver.write(data)

    async def read_barrier(self) -> None:
        await self.driver.read_barrier()

    async def wait_index(self, index: int, timeout: float) -> int:
        return await self.driver.wait_index(index, timeout)

    def leader_api(self) -> str | None:
        lead = self.leader_id()
        if lead is None:
            return None
        api = self.state.member_field(lead, "api_addr")
        if api:
            return str(api)
        p = self.peers.get(lead)
        return p.api_addr if p and p.api_addr else None

    async def add_member(
        self, mid: str, raft_addr: str, api_addr: str, service_addr: str | None
    ) -> dict[str, Any]:
        error = member_id_error(mid)
        if error is not None:  # never proposed (the API and the join frames check it too)
            raise BadRequest(error)
        if not self.is_leader():
            raise NoLeader("not the leader")
        existing = self.state.member(mid)
        if existing is not None:
            if existing.get("raft_addr") == raft_addr and existing.get("api_addr") == api_addr:
                return existing
            raise AgentError(
                f"node id {mid!r} is already a member at {existing.get('raft_addr')}; "
                f"remove it first (DELETE /v1/members/{mid})",
                status=409,
            )
        try:
            ctx = member_context(raft_addr, api_addr, service_addr)
        except StateError as exc:
            raise BadRequest(exc.message) from None
        p = self._peer(mid, raft_addr, "api", time.monotonic())
        if p is not None and not p.api_addr:
            p.api_addr, p.service_addr = api_addr, service_addr
        self.chores.joined_at[mid] = time.monotonic()
        res = await self.driver.propose_conf(ConfChange(ConfChangeType.ADD_LEARNER, mid, ctx))
        if not res.ok:
            raise StateErrorResult(res.error)
        log.info("added %s as a learner", mid)
        return res.result or {}

    async def remove_member(self, mid: str, drain_timeout: float | None = None) -> dict[str, Any]:
        """Drain, then remove (the leader only; the API hands over first when mid is us)."""
        if not self.is_leader():
            raise NoLeader("not the leader")
        m = self.state.member(mid)
        if m is None:
            if not self.in_config(mid):
                raise NotFound(f"no member {mid!r}")
            # In the Raft configuration without a record: an id an older version let in,
            # which the member table dropped (state.py). Nothing to drain; remove it.
            m = {"draining": True}
        if not m.get("draining"):
            await self.driver.propose_cmd(encode_command("member_drain", id=mid, draining=True))
        timeout = self.cfg.drain_timeout_s if drain_timeout is None else drain_timeout
        if timeout > 0 and self.state.kv_get(REGISTERED_KEY) is not None:
            deadline = time.monotonic() + timeout
            while (
                time.monotonic() < deadline and self.state.kv_get(f"{DRAINED_PREFIX}{mid}") is None
            ):
                await self.wait_index(self.state.index, min(1.0, deadline - time.monotonic()))
        res = await self.driver.propose_conf(ConfChange(ConfChangeType.REMOVE, mid))
        log.info("removed %s", mid)
        return {"id": mid, "removed": True, "index": res.index}

    async def hand_over_to_remove_self(self) -> None:
        """Before the leader's own removal: hand leadership over and wait (up to 5 s) until
        the new leader's API address is known, so that the removal can go to it. Raises
        (409) when there is nobody to hand over to."""
        new = await self.hand_over(timeout=self.write_timeout())
        if new is None:
            raise AgentError("the last member cannot remove itself", status=409)
        for _ in range(50):
            if self.leader_api() and self.leader_id() != self.id:
                break
            await self.wait_index(self.state.index, 0.1)

    async def hand_over(self, to: str | None = None, timeout: float = 2.0) -> str | None:
        """Transfer leadership (to ``to`` or the most caught-up voter); returns the new
        leader, or None when there is nobody to hand over to."""
        raw = self.raw
        if raw is None or not self.is_leader():
            return self.leader_id()
        voters, prs = raw.basic_status().voters, raw.progress()
        candidates = [v for v in voters if v != self.id]
        if to is not None:
            if to not in voters:
                raise BadRequest(f"{to!r} is not a voter")
            candidates = [to]
        if not candidates:
            return None
        target = max(candidates, key=lambda v: (prs[v].match, v) if v in prs else (-1, v))
        log.info("handing leadership over to %s", target)
        raw.transfer_leadership(target)
        self.driver.wake()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = raw.basic_status().lead
            if lead is not None and lead != self.id:
                return lead
            await self.wait_index(self.state.index, 0.05)
        raise Unknown(f"leadership transfer to {target} did not finish in {timeout:.1f}s")

    # ---- views -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        r = self.raw.basic_status() if self.raw else None
        state = "follower"
        if r is not None:
            if r.state is StateType.LEADER:
                state = "leader"
            elif r.state in (StateType.CANDIDATE, StateType.PRE_CANDIDATE):
                state = "candidate"
            elif self.id in r.learners or (self.id not in r.voters):
                state = "learner"
        return {
            "node_id": self.id,
            "cluster": self.cfg.cluster,
            "cluster_id": self.cluster_id,
            "state": state,
            "term": r.term if r else 0,
            "leader_id": r.lead if r else None,
            "commit_index": r.commit if r else 0,
            "applied_index": self.state.index,
            "members": self.members_view(),
            "version": __version__,
        }

    def members_view(self) -> list[dict[str, Any]]:
        lead = self.raw.basic_status().lead if self.raw else None
        weights = self.state.weights()["weights"]
        table = self.chores.view_table(self.is_leader())
        out = []
        for m in self.state.members():
            mid = str(m["id"])
            role = m.get("role")
            if lead is not None and lead == mid:
                role = "leader"
            out.append(
                {
                    "id": mid,
                    "raft_addr": m.get("raft_addr"),
                    "api_addr": m.get("api_addr"),
                    "service_addr": m.get("service_addr"),
                    "role": role,
                    "healthy": bool(m.get("healthy", True)),
                    "draining": bool(m.get("draining", False)),
                    "weight": weights.get(mid),
                    "metrics": table.get(mid) or {},
                }
            )
        return out


#: Bound on ``Agent.stop`` after a failure (storage): the node must be gone promptly.
FAIL_STOP_S = 6.0
#: After a failure the process is gone this long after at the latest, even if its event loop
#: is blocked (a thread's timer; the stop's own bound needs a running loop).
FAIL_EXIT_S = FAIL_STOP_S + 2.0


def exit_later(seconds: float, after: str = "a failure") -> threading.Timer:
    """Exit with code 1 in ``seconds`` from a daemon thread, writing every thread's stack to
    stderr first: the last resort of the fail-stop (and of a stop) when the event loop does
    not come back. Writes with ``os.write`` and faulthandler only: a blocked thread may hold
    the logging lock."""

    def leave() -> None:
        os.write(2, f"CRITICAL still running {seconds:g}s after {after}; exiting now\n".encode())
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1)

    timer = threading.Timer(seconds, leave)
    timer.daemon = True
    timer.start()
    return timer
