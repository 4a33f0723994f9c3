"""The node (``Node``): one cluster member, its parts composed (``run.py`` runs it as a
process and starts its HTTP API).

The node owns its lifecycle (start, stop, fail-stop), the table of the frame kinds a peer
may send, and the views the API shows (status, members); it passes the membership verbs
through. Its parts get their collaborators passed in and import nothing of this module:

- ``driver.py``: the Raft core, its write-ahead log and the state machine; the Ready loop,
  proposals, linearizable reads, compaction;
- ``inbox.py``: the checks of what a peer sends and the dispatch through the frame table;
- ``peers.py``, ``mdns.py``: the peer table and mDNS;
- ``bootstrap.py``: founding and joining; ``chores.py``: the leader's chores;
- ``reports.py``: metrics to the leader, our own member record;
- ``snapshots.py``: snapshots larger than a frame; ``meta.py``: the cluster id on disk;
- ``tasks.py``: background tasks, their restarts and the fail-stop;
- ``membership.py``: the membership verbs (add, remove, hand over; the leader's hand-over
  before its own removal).

The HTTP API sees the node as ``verbs.NodeVerbs``. ``docs/architecture.md`` draws the layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import AgentConfig
from ..keys import (
    MAINTENANCE_PREFIX,
    SERVICE_HEALTH_PREFIX,
    UNREACHABLE_PREFIX,
)
from ..metrics import HostMetrics, MetricsSource
from ..raft.rawnode import RawNode
from ..raft.status import BasicStatus
from ..raft.types import StateType
from ..snapxfer import ACK_KIND, CHUNK_KIND, SnapshotReceiver, SnapshotSender
from ..state import StateMachine
from ..transport import PeerInfo, Transport
from ..wal import DiskStorage
from .bootstrap import Bootstrap
from .chores import HEALTH_PACE_MAX, LeaderChores
from .commitnotes import CommitNotes
from .driver import Driver
from .errors import AgentError
from .inbox import FrameHandler, Inbox
from .mdns import Mdns
from .membership import Membership
from .meta import META_FILE, load_cluster_id, save_cluster_id
from .outbox import Outbox
from .peers import PEER_EXPIRE_S, PeerTable
from .reports import Reporter
from .snapshots import SnapshotTransfer
from .tasks import FAIL_EXIT_S, Tasks, exit_later, on_grid

log = logging.getLogger("hafleet.agent")

#: How often a follower's health loop looks whether it leads now (it is woken when it does).
FOLLOWER_HEALTH_PACE = 1.0

#: What the composition root starts with the node (run.py: the HTTP API): awaited once the
#: transport listens, before the node founds, joins or runs its Raft loop; the callable it
#: returns is awaited by ``stop`` (after the tasks, before discovery and the transport).
Serve = Callable[[], Awaitable[Callable[[], Awaitable[None]]]]


class Node:
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
        # Background tasks, their restarts and the fail-stop (node/tasks.py).
        self.tasks = Tasks(self._stop, self.fail)
        # The peers besides the members (node/peers.py); ``peers`` is its dict.
        self.peer_table = PeerTable(
            is_member=self.state.has_member,
            member_addrs=lambda: (m.get("raft_addr") for m in self.state.members()),
            join_addrs=cfg.join,
            close_addr=self._close_peer_addr,
        )
        self.peers = self.peer_table.peers
        # Frames out, to the addresses of the member and peer tables (node/outbox.py).
        self.outbox = Outbox(
            self.state, self.peers, raw=lambda: self.raw, cluster_id=lambda: self.cluster_id
        )
        # The core, its log, the state machine, the Ready loop (node/driver.py); a leader's
        # commit notices wait a moment for an append to carry them (commitnotes.py).
        self.commit_notes = CommitNotes(self.outbox.send_raft, self.outbox.flush)
        self.driver = Driver(
            self.id,
            cfg,
            self.state,
            self.rng,
            stopping=self._stop,
            cluster_id=lambda: self.cluster_id,
            send=self.commit_notes.send,
            save_snapshot=lambda snap: self.snapshots.save_received(snap),
            on_conf_change=lambda cc: self.chores.member_changed(cc.node_id),
            sending_snapshot=lambda: self.snapshots.busy(),
            spawn=self.tasks.spawn,
            fail=self.fail,
            on_lead=lambda: self.chores.wake_service(),
            flush=self.outbox.flush,
            send_ahead=self.outbox.send_ahead,
        )
        self.transport: Transport | None = None
        self.mdns = Mdns(
            self.id,
            cfg,
            cluster_id=lambda: self.cluster_id,
            on_change=self._on_mdns_change,
            supervise=self.tasks.supervise,
            proven=self.peer_table.proven,
        )
        # The leader's chores and their tables: reports, health, join times (node/chores.py).
        self.chores = LeaderChores(
            self.id,
            cfg,
            self.state,
            raw=lambda: self.raw,
            leader_since=lambda: self.leader_since,
            propose_cmd=self.driver.propose_cmd,
            propose_conf=self.driver.propose_conf,
            send=self.outbox.send,
            wake=self.driver.wake,
        )
        # The membership verbs: add, drain and remove, hand over (node/membership.py).
        self.membership = Membership(
            self.id,
            cfg,
            self.state,
            self.driver,
            self.chores,
            self.peer_table,
            leader_api=self.leader_api,
        )
        self.exit_code = 0
        self.exit_reason = ""
        self.exit_timer: threading.Timer | None = None  # set by fail()
        self._unserve: Callable[[], Awaitable[None]] | None = None  # what start()'s serve gave
        # Founding and joining (node/bootstrap.py).
        self.bootstrap = Bootstrap(
            self.id,
            cfg,
            self.rng,
            self.peers,
            get_peer=self.peer_table.get_or_add,
            raw=lambda: self.raw,
            cluster_id=lambda: self.cluster_id,
            adopt_cluster=self._adopt_cluster,
            in_config=lambda: self.driver.in_config(self.id),
            is_leader=self.is_leader,
            my_info=self.my_info,
            send=self.outbox.send,
            queued=lambda addr: self.transport is not None and self.transport.queued(addr),
            addr_of=self.outbox.addr_of,
            add_member=self.add_member,
            spawn=self.tasks.spawn,
            wake=self.driver.wake,
        )
        # Snapshots travel in chunks (node/snapshots.py); sender, receiver: made in start().
        self.snapshots = SnapshotTransfer(
            self.id,
            self.data_dir,
            self.driver,
            cluster_id=lambda: self.cluster_id,
            stopping=self._stop,
            spawn=self.tasks.spawn,
            send=self.outbox.send,
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
            addr_of=self.outbox.addr_of,
            send=self.outbox.send,
            spawn=self.tasks.spawn,
        )
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
            "service_check": self.reporter.on_service_check,
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

    @property
    def reports(self) -> dict[str, tuple[float, dict[str, Any]]]:
        """The leader's table of reports: id -> (time, metrics) (node/chores.py)."""
        return self.chores.reports

    @property
    def health_seen(self) -> dict[str, float]:
        return self.chores.health_seen

    @property
    def task_failures(self) -> dict[str, int]:
        """Failures of the background tasks that were restarted, by name (node/tasks.py)."""
        return self.tasks.failures

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self, serve: Serve | None = None) -> None:
        """Open the storage and the core, listen for peers, then ``serve`` (see Serve), then
        set the node going: mDNS, the Raft loop and ticker, the loops, founding or joining."""
        cfg = self.cfg
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.cluster_id = load_cluster_id(self.data_dir, self.id, cfg.cluster)
        has_state = self.driver.open(self.data_dir)
        self.transport = Transport(
            node_id=self.id,
            cluster=cfg.cluster,
            key=self.key,
            bind_host=cfg.bind,
            port=cfg.raft_port,
            advertise=cfg.raft_addr,
            on_frame=self.inbox.on_frame,
            on_read=self.driver.pump_woken,
            on_peer_closed=self.inbox.on_peer_closed,
            accept_peer=self.inbox.accept_peer,
            cluster_id=lambda: self.cluster_id,
            tls=cfg.tls,
        )
        await self.transport.start()
        self.snapshots.start(self.transport)
        self.snap_sender, self.snap_receiver = self.snapshots.sender, self.snapshots.receiver
        self.outbox.start(self.transport, self.snap_sender)
        if serve is not None:
            self._unserve = await serve()
        if cfg.mdns and not self.stopping:  # (failed meanwhile: announce nothing)
            await self.mdns.start()
        # The Raft driver persists (fsync) what the core hands it: a failure there is
        # fail-stop. The other tasks are restarted after a failure (node/tasks.py).
        self.tasks.spawn(self.driver.raft_loop(), "raft", critical=True)
        self.tasks.spawn(self.driver.ticker(), "ticker", critical=True)
        self.tasks.supervise(self.reporter.sampler_loop, "sampler")
        self.tasks.supervise(self._housekeeping, "housekeeping")
        self.tasks.supervise(self._leader_loop, "leader")
        self.tasks.supervise(self._health_loop, "health")
        if self.reporter.service_checker is not None:
            self.tasks.supervise(self.reporter.service_check_loop, "service-check")
        if not has_state:
            self.tasks.supervise(self.bootstrap.run, "bootstrap")
        self.driver.wake()
        log.info(
            "hafleet-agent %s: node %s raft %s api %s%s",
            __version__,
            self.id,
            cfg.raft_addr,
            cfg.api_addr,
            f" service {cfg.service_addr}" if cfg.service_addr else "",
        )

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

    @property
    def stopping(self) -> bool:
        """Whether the node has begun to stop (asked to, failed, or removed)."""
        return self._stop.is_set()

    async def stop(self, handover: bool = True) -> None:
        """Stop; a leader first hands leadership to the most caught-up voter."""
        if handover:
            with contextlib.suppress(Exception):
                await self.hand_over(timeout=self.cfg.election_timeout_ms / 1000 * 2)
        self._stop.set()
        await self.tasks.cancel_all()
        self.driver.release_waiters()
        if self._unserve is not None:
            await self._unserve()
        await self.mdns.stop()
        self.commit_notes.release()  # the last commit index, to the followers
        if self.transport is not None:
            await self.transport.stop()
        self.commit_notes.close()
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
        self.mdns.announce(cluster_id)
        return True

    # ---- peers ----------------------------------------------------------------------------
    def _note_peer(self, peer: PeerInfo, cid: str | None) -> None:
        """An authenticated frame or handshake from ``peer``."""
        now = time.monotonic()
        if not self.peer_table.note_authenticated(peer.node_id, peer.addr, cid, now):
            return
        if self.state.has_member(peer.node_id):
            self.chores.health_seen[peer.node_id] = now

    def _close_peer_addr(self, addr: str) -> None:
        """The peer table forgot the last peer at ``addr``: close the connection to it."""
        if self.transport is not None:
            self.tasks.spawn(self.transport.close_peer(addr), "close-peer")

    def _expire_peers(self, now: float) -> None:
        """Forget the stale peers that are not members, and the bookkeeping of non-members."""
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

    def in_config(self, node_id: str) -> bool:
        """Whether ``node_id`` is a voter or a learner of the Raft configuration."""
        return self.driver.in_config(node_id)

    # ---- the loops: everyone's housekeeping, the leader's chores ------------------------------
    async def _housekeeping(self) -> None:
        """Everyone's chores: answer timed-out reads, keep our member record current, forget
        stale peers and the bookkeeping of non-members."""
        while not self._stop.is_set():
            await asyncio.sleep(on_grid(0.25))
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
            await asyncio.sleep(on_grid(0.25))
            if self.is_leader():
                try:
                    await self.chores.run_once()
                except AgentError as exc:
                    log.debug("leader chores: %s", exc.message)

    async def _health_loop(self) -> None:
        """The leader's fast chores (service check marks, eviction), when one could change a
        mark (``chores.health_pace``) or at once when a service check result arrives."""
        while not self._stop.is_set():
            # A follower has nothing to do here: it is woken when it becomes the leader
            # (Driver on_lead), and looks once a second besides, not ten times.
            if not self.is_leader():
                pace = on_grid(FOLLOWER_HEALTH_PACE)
            elif (pace := self.chores.health_pace()) >= HEALTH_PACE_MAX:
                pace = on_grid(HEALTH_PACE_MAX)  # nothing due sooner: with the other loops
            with contextlib.suppress(TimeoutError):  # (not wait_for: a task every round)
                async with asyncio.timeout(pace):
                    await self.chores.health_wake.wait()
            self.chores.health_wake.clear()
            if self.is_leader():
                try:
                    await self.chores.run_health()
                except AgentError as exc:
                    log.debug("health chores: %s", exc.message)

    # ---- the API's verbs --------------------------------------------------------------------
    def raft_status(self) -> BasicStatus | None:
        return self.driver.raft_status()

    def is_leader(self) -> bool:
        return self.driver.is_leader()

    def leader_id(self) -> str | None:
        return self.driver.leader_id()

    def leader_silence(self) -> float | None:
        lead = self.driver.leader_id()
        if lead is None or lead == self.id:
            return None
        heard = self.inbox.last_stepped.get(lead, self.started_at)
        return max(0.0, time.monotonic() - heard)

    def write_timeout(self) -> float:
        return self.driver.write_timeout()

    async def write(
        self, data: bytes, on_applied: Callable[[Any], None] | None = None
    ) -> dict[str, Any]:
        return await self.driver.write(data, on_applied)

    async def read_barrier(self) -> None:
        await self.driver.read_barrier()

    async def wait_index(self, index: int, timeout: float) -> int:
        return await self.driver.wait_index(index, timeout)

    async def wait_removed(self, timeout: float) -> bool:
        """Wait until the log says this node is removed (or the timeout); whether it does."""
        if not self.driver.removed_flag.is_set() and timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.driver.removed_flag.wait()
        return self.driver.removed

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
        return await self.membership.add_member(mid, raft_addr, api_addr, service_addr)

    async def remove_member(self, mid: str, drain_timeout: float | None = None) -> dict[str, Any]:
        """Drain, then remove (the leader only; the API hands over first when mid is us)."""
        return await self.membership.remove_member(mid, drain_timeout)

    async def hand_over_to_remove_self(self) -> None:
        await self.membership.hand_over_to_remove_self()

    async def hand_over(self, to: str | None = None, timeout: float = 2.0) -> str | None:
        """Transfer leadership (node/membership.py); the new leader, or None."""
        return await self.membership.hand_over(to, timeout)

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
            "service_check": (
                self.reporter.service_checker.describe()
                if self.reporter.service_checker is not None
                else None
            ),
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
                    # apart from the agent's health: its service's check, the leader's reach
                    "service_healthy": self.state.kv_get(f"{SERVICE_HEALTH_PREFIX}{mid}") is None,
                    "reachable": self.state.kv_get(f"{UNREACHABLE_PREFIX}{mid}") is None,
                    "maintenance": self.state.kv_get(f"{MAINTENANCE_PREFIX}{mid}") is not None,
                    "weight": weights.get(mid),
                    "metrics": table.get(mid) or {},
                }
            )
        return out
