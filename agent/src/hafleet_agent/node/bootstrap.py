"""Founding and joining: how a fresh node becomes a member (``docs/agent.md`` has the long
version).

- a fresh node that finds a running cluster (an authenticated peer that belongs to one) asks
  it to join; the leader adds it as a learner (the chores promote it once caught up);
- a fresh node with ``bootstrap_expect = N`` waits until it knows N-1 other authenticated
  fresh nodes of its cluster name; the one with the lowest id proposes a founding to the N
  lowest, and founds (mints the cluster id, bootstraps the Raft log with exactly those N
  voters) only when all of them accepted. A node accepts one founder at a time, so two
  clusters cannot form from one fleet of fresh nodes.

``Bootstrap`` sees the node through what is passed in: the peer table, the Raft node, the
cluster id, and callables to send a frame, adopt a cluster, add a member, spawn a task."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import AgentConfig
from ..raft.rawnode import RawNode
from ..state import member_context
from ..transport import PeerInfo
from .errors import AgentError
from .frames import MAX_TEXT_CHARS, FrameError, check_cid, check_info
from .peers import MAX_PEERS, Peer

log = logging.getLogger("hafleet.agent")

FOUND_ACCEPT_TTL = 15.0
#: A fresh node says hello to a peer that it knows only from mDNS at most this often.
MDNS_HELLO_S = 2.0
#: A fresh node that waits for bootstrap_expect peers says so at most this often.
WAIT_LOG_S = 5.0


@dataclass
class Founding:
    founder: str
    members: list[dict[str, Any]]
    cluster_id: str
    accepted: set[str] = field(default_factory=set)
    since: float = 0.0


class Bootstrap:
    def __init__(
        self,
        node_id: str,
        cfg: AgentConfig,
        rng: random.Random,
        peers: dict[str, Peer],
        *,
        get_peer: Callable[[str, str, str, float], Peer | None],
        raw: Callable[[], RawNode | None],
        cluster_id: Callable[[], str | None],
        adopt_cluster: Callable[[str, str], bool],
        in_config: Callable[[], bool],
        is_leader: Callable[[], bool],
        my_info: Callable[[], dict[str, Any]],
        send: Callable[..., Any],
        queued: Callable[[str], bool],
        addr_of: Callable[[str], str | None],
        add_member: Callable[[str, str, str, str | None], Awaitable[Any]],
        spawn: Callable[[Any, str], None],
        wake: Callable[[], None],
    ) -> None:
        self.id = node_id
        self.cfg = cfg
        self.rng = rng
        self.peers = peers
        self._get_peer = get_peer
        self._raw = raw
        self._cluster_id = cluster_id
        self._adopt_cluster = adopt_cluster
        self._in_config = in_config
        self.is_leader = is_leader
        self.my_info = my_info
        self._send = send
        self._queued = queued
        self._addr_of = addr_of
        self._add_member = add_member
        self._spawn = spawn
        self._wake = wake
        self.founding: Founding | None = None  # as founder
        self.accepted: Founding | None = None  # as acceptor
        self.join_target: str | None = None
        self.admitting: set[str] = set()
        self._wait_logged: float | None = None  # when "waiting for ... fresh nodes" was logged

    def expects(self, cid: object) -> bool:
        """Whether a fresh node takes Raft traffic of cluster ``cid``: the cluster it asked
        to join, or whose founder it accepted."""
        return (self.accepted is not None and self.accepted.cluster_id == cid) or (
            self.join_target is not None and self.join_target == cid
        )

    async def run(self) -> None:
        """Until this node belongs to a cluster: say hello to the join addresses and to the
        peers mDNS lists, join a running cluster when an authenticated peer belongs to one,
        or found one when bootstrap_expect authenticated fresh peers are known."""
        raw = self._raw()
        assert raw is not None
        announced = False
        while self._cluster_id() is None or not self._in_config():
            for addr in self.cfg.join:
                if addr != self.cfg.raft_addr:
                    self._send(addr, "hello", info=self.my_info(), fresh=self._cluster_id() is None)
            if self._cluster_id() is None:
                self._hello_mdns_peers()
                running = self._running_peer()
                if running is not None:
                    self.join_target = running.cluster_id
                    if not announced:
                        log.info(
                            "found cluster %s via %s: asking to join",
                            running.cluster_id,
                            running.node_id,
                        )
                        announced = True
                    self._send(running.raft_addr, "join", info=self.my_info())
                elif self.cfg.bootstrap_expect:
                    self._maybe_found()
            else:
                # We adopted a cluster id; wait for the leader's log to make us a member.
                pass
            await asyncio.sleep(0.25 + self.rng.random() * 0.25)
        log.info("member of cluster %s", self._cluster_id())

    def _hello_mdns_peers(self) -> None:
        """Say hello to the peers mDNS lists that we have not heard from lately (each at
        most every MDNS_HELLO_S, one hello queued at a time): the handshake proves the
        key, and the answer tells its cluster id. A forged record gets no answer."""
        now = time.monotonic()
        for p in list(self.peers.values()):
            if not p.in_mdns or p.raft_addr == self.cfg.raft_addr:
                continue
            if p.last_hello is not None and now - p.last_hello < MDNS_HELLO_S:
                continue
            if p.authed is not None and now - p.authed < MDNS_HELLO_S:
                continue
            if self._queued(p.raft_addr):
                continue  # the last hello still waits for a connection
            p.last_hello = now
            self._send(p.raft_addr, "hello", info=self.my_info(), fresh=self._cluster_id() is None)

    def _running_peer(self) -> Peer | None:
        """An authenticated peer (within AUTH_LIVE_S) that belongs to a cluster."""
        now = time.monotonic()
        live = [
            p
            for p in self.peers.values()
            if p.cluster_id and p.authenticated(now) and p.node_id != self.id
        ]
        # Any of them will do (a follower relays the join): pick at random, so that a dead
        # node whose mDNS record has not expired yet does not hold the join up.
        return self.rng.choice(sorted(live, key=lambda p: p.node_id)) if live else None

    def _fresh_peers(self) -> list[Peer]:
        """The authenticated (within AUTH_LIVE_S) fresh peers whose addresses we know."""
        now = time.monotonic()
        return sorted(
            (
                p
                for p in self.peers.values()
                if p.fresh
                and p.cluster_id is None
                and p.authenticated(now)
                and p.api_addr
                and p.node_id != self.id
            ),
            key=lambda p: p.node_id,
        )

    def _maybe_found(self) -> None:
        n = self.cfg.bootstrap_expect or 0
        now = time.monotonic()
        if self.accepted is not None and now - self.accepted.since < FOUND_ACCEPT_TTL:
            return  # we accepted someone else's founding: wait for it
        fresh = self._fresh_peers()
        if len(fresh) + 1 < n:
            if self._wait_logged is None or now - self._wait_logged >= WAIT_LOG_S:
                self._wait_logged = now
                log.info(
                    "waiting for %d fresh nodes of cluster %r (bootstrap_expect=%d): know %s",
                    n - 1,
                    self.cfg.cluster,
                    n,
                    [p.node_id for p in fresh] or "none",
                )
            return
        chosen_ids = sorted([self.id] + [p.node_id for p in fresh])[:n]
        if chosen_ids[0] != self.id:
            return  # the lowest id founds
        f = self.founding
        if (
            f is None
            or sorted(m["id"] for m in f.members) != chosen_ids
            or (now - f.since > FOUND_ACCEPT_TTL)
        ):
            members = [self.my_info()] + [
                {
                    "id": p.node_id,
                    "raft_addr": p.raft_addr,
                    "api_addr": p.api_addr,
                    "service_addr": p.service_addr,
                }
                for p in fresh
                if p.node_id in chosen_ids
            ]
            members.sort(key=lambda m: m["id"])
            f = self.founding = Founding(
                self.id, members, f"{self.cfg.cluster}-{secrets.token_hex(8)}", {self.id}, now
            )
            log.info("proposing to found cluster %s with %s", f.cluster_id, chosen_ids)
        for m in f.members:
            if m["id"] not in f.accepted:
                self._send(
                    m["raft_addr"],
                    "found_propose",
                    founder=self.id,
                    members=f.members,
                    new_cid=f.cluster_id,
                )
        if len(f.accepted) == n:
            self._found(f)

    def _found(self, f: Founding) -> None:
        assert self._raw() is not None
        voters = [
            (
                m["id"],
                member_context(m["raft_addr"], m["api_addr"], m.get("service_addr")),
            )
            for m in f.members
        ]
        if not self._adopt_cluster(f.cluster_id, "founded here"):
            return
        self._raw().bootstrap(voters)
        self.founding = None
        log.info("founded cluster %s with %s", f.cluster_id, [m["id"] for m in f.members])
        self._wake()

    def on_hello(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        info = check_info(obj.get("info"))
        if info["id"] != peer.node_id:
            raise FrameError(f"hello with the info of {info['id']}")
        p = self.peers.get(peer.node_id)
        if p is not None:
            p.api_addr = info["api_addr"]
            p.service_addr = info["service_addr"]
        if obj.get("reply") is None:
            self._send(
                peer.addr, "hello", info=self.my_info(), fresh=self._cluster_id() is None, reply=1
            )

    def on_found_propose(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        founder = obj.get("founder")
        new_cid = check_cid(obj.get("new_cid"), optional=False)
        raw_members = obj.get("members")
        # The founder and at most MAX_PEERS peers it knows.
        if not isinstance(raw_members, list) or not 0 < len(raw_members) <= MAX_PEERS + 1:
            raise FrameError(f"members must be a list of 1..{MAX_PEERS + 1}")
        members = [check_info(m) for m in raw_members]
        ids = sorted(m["id"] for m in members)
        if len(set(ids)) != len(ids):
            raise FrameError("members twice in a founding")
        if (
            self._cluster_id() is not None
            or self._raw() is None
            or self._raw().basic_status().term > 0
        ):
            return  # not fresh any more
        if founder != peer.node_id or self.id not in ids or ids[0] != founder:
            return
        now = time.monotonic()
        acc = self.accepted
        if acc is not None and now - acc.since < FOUND_ACCEPT_TTL:
            if acc.founder != founder or acc.cluster_id != new_cid:
                return  # one founder at a time
        else:
            assert new_cid is not None
            self.accepted = Founding(founder, members, new_cid, since=now)
            log.info("accepted %s's proposal to found %s", founder, new_cid)
        for m in members:
            if m["id"] != self.id and m["id"] not in self.peers:
                p = self._get_peer(m["id"], m["raft_addr"], "founding", now)
                if p is not None:
                    p.api_addr = m["api_addr"]
        self._send(peer.addr, "found_accept", new_cid=new_cid)

    def on_found_accept(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        new_cid = check_cid(obj.get("new_cid"), optional=False)
        f = self.founding
        if f is None or new_cid != f.cluster_id:
            return
        if peer.node_id in {m["id"] for m in f.members}:
            f.accepted.add(peer.node_id)
            if len(f.accepted) == len(f.members) and self._cluster_id() is None:
                self._found(f)

    def on_join(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        info = check_info(obj.get("info"))
        if self._raw() is None or self._cluster_id() is None:
            return
        if self.is_leader() and peer.certified and info["id"] != peer.node_id:
            # A join a follower relayed. Under TLS a node joins only in its own name (its
            # certificate's): say hello to it instead, so it knows the leader and asks it.
            self._send(info["raft_addr"], "hello", info=self.my_info(), fresh=False)
            return
        if self.is_leader():
            if info["id"] not in self.admitting:  # a joiner asks every 0.25-0.5 s
                self.admitting.add(info["id"])
                self._spawn(self._admit(peer, info), f"admit-{info['id']}")
            return
        lead = self._raw().basic_status().lead
        addr = self._addr_of(lead) if lead else None
        if addr:
            self._send(addr, "join", info=info)  # the leader answers the joiner directly

    async def _admit(self, peer: PeerInfo, info: dict[str, Any]) -> None:
        try:
            await self._add_member(
                info["id"], info["raft_addr"], info["api_addr"], info["service_addr"]
            )
            self._send(info["raft_addr"], "join_resp", ok=True)
        except AgentError as exc:
            log.warning("join of %s refused: %s", info["id"], exc.message)
            self._send(info["raft_addr"], "join_resp", ok=False, error=exc.message)
        finally:
            self.admitting.discard(info["id"])

    def on_join_resp(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        ok, error = obj.get("ok"), obj.get("error")
        if not isinstance(ok, bool) or not (error is None or isinstance(error, str)):
            raise FrameError("ok must be a bool and error a string")
        if not ok:
            log.error("join refused by %s: %s", peer.node_id, (error or "")[:MAX_TEXT_CHARS])
