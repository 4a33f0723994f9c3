"""The peers a node knows of besides the member table: from mDNS, hellos, foundings, the
API. Bounded (MAX_PEERS), with expiry, and the rule of who may displace whom when full.

The table sees the rest of the node through what is passed in: whether an id is a member,
the members' Raft addresses, the static ``--join`` addresses, and a callable that closes the
transport's connection to an address."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..ids import valid_member_id

#: Peers known besides the member table (from mDNS, hellos, foundings): at most this many.
#: When full, a new one takes the place of the stalest that is neither a member nor
#: authenticated lately; an authenticated one may also displace the stalest non-member.
MAX_PEERS = 256
#: A peer that is not a member, not listed by mDNS and not heard from for this long is
#: forgotten.
PEER_EXPIRE_S = 120.0
#: A peer counts for founding and joining while its last authenticated frame (or
#: handshake) is at most this old. mDNS alone never makes a peer count.
AUTH_LIVE_S = 10.0


@dataclass
class Peer:
    """A node we know of, from mDNS, a hello, a founding, or the API.

    Only what came over an authenticated connection (the transport's handshake proves the
    cluster key) sets ``cluster_id``, ``fresh`` and ``authed``; an mDNS record only tells
    where to say hello (``raft_addr`` while not authenticated, ``in_mdns``)."""

    node_id: str
    raft_addr: str
    api_addr: str = ""
    service_addr: str | None = None
    cluster_id: str | None = None
    fresh: bool = True
    last_seen: float = 0.0  # heard of, by any source
    source: str = ""
    in_mdns: bool = False  # listed in the mDNS table right now (records expire on their own)
    authed: float | None = None  # the last authenticated frame or handshake from it
    last_hello: float | None = None  # the last hello we sent it because of mDNS

    def authenticated(self, now: float) -> bool:
        """Heard from over an authenticated connection within AUTH_LIVE_S."""
        return self.authed is not None and now - self.authed < AUTH_LIVE_S


class PeerTable:
    def __init__(
        self,
        *,
        is_member: Callable[[str], bool],
        member_addrs: Callable[[], Iterable[object]],
        join_addrs: Collection[str],
        close_addr: Callable[[str], None],
    ) -> None:
        self.peers: dict[str, Peer] = {}
        self._is_member = is_member
        self._member_addrs = member_addrs
        self._join_addrs = join_addrs
        self._close_addr = close_addr

    def get_or_add(
        self, nid: str, raft_addr: str, source: str, now: float, *, authenticated: bool = False
    ) -> Peer | None:
        """The peer ``nid``, added if new while the table has room (MAX_PEERS): a new one
        takes the place of the stalest peer that is neither a member nor authenticated
        lately, and an authenticated one that of the stalest non-member. None: no room."""
        peers = self.peers
        p = peers.get(nid)
        if p is not None:
            return p
        if len(peers) >= MAX_PEERS:
            self.expire(now)
        if len(peers) >= MAX_PEERS:
            others = [q for q in peers.values() if not self._is_member(q.node_id)]
            victims = [q for q in others if not q.authenticated(now)]
            if not victims and authenticated:
                victims = others
            if not victims:
                return None
            victim = min(victims, key=lambda q: max(q.last_seen, q.authed or 0.0))
            self.forget(victim.node_id)
        p = peers[nid] = Peer(nid, raft_addr, source=source, last_seen=now)
        return p

    def proven(self, nid: str) -> bool:
        """Whether ``nid`` ever proved the cluster key to us (an authenticated frame or
        handshake) or is a member: mDNS never displaces such a peer from its table."""
        p = self.peers.get(nid)
        return (p is not None and p.authed is not None) or self._is_member(nid)

    def on_mdns(self, announced: Mapping[str, Any], now: float) -> None:
        """The mDNS table changed. A record is a hint of where a peer might be, nothing
        more: it sets no cluster id and no freshness, and a peer counts for founding and
        joining only once it has answered a hello over an authenticated connection."""
        for p in self.peers.values():
            p.in_mdns = p.node_id in announced
        for nid, ann in announced.items():
            if not valid_member_id(nid):
                continue
            p = self.get_or_add(nid, ann.raft_addr, "mdns", now)
            if p is None:
                continue
            p.in_mdns = True
            p.last_seen = max(p.last_seen, now)
            if not p.authenticated(now):
                p.raft_addr = ann.raft_addr
                p.api_addr = p.api_addr or ann.api_addr

    def note_authenticated(self, nid: str, addr: str, cid: str | None, now: float) -> bool:
        """An authenticated frame or handshake from ``nid`` at ``addr``; False when the
        table has no room for it."""
        p = self.get_or_add(nid, addr, "transport", now, authenticated=True)
        if p is None:
            return False
        p.raft_addr = addr
        p.cluster_id = cid
        p.fresh = cid is None
        p.last_seen = p.authed = now
        return True

    def forget(self, nid: str) -> None:
        """Drop a peer; close the transport's connection to its address too when we dialled
        it (a hello) and nothing else uses that address, so that the transport keeps no
        connection per address a forged record ever named."""
        p = self.peers.pop(nid, None)
        if p is None or (p.last_hello is None and p.authed is None):
            return
        addr = p.raft_addr
        if (
            addr in self._join_addrs
            or any(q.raft_addr == addr for q in self.peers.values())
            or any(a == addr for a in self._member_addrs())
        ):
            return
        self._close_addr(addr)

    def expire(self, now: float) -> None:
        """Forget the peers that are not members, not listed by mDNS and not heard from for
        PEER_EXPIRE_S."""
        for nid, p in list(self.peers.items()):
            if (
                not p.in_mdns
                and now - max(p.last_seen, p.authed or 0.0) > PEER_EXPIRE_S
                and not self._is_member(nid)
            ):
                self.forget(nid)
