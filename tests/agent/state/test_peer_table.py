"""The peer table (node/peers.py) on its own: bounded, who displaces whom when full,
expiry, and closing the connection of a forgotten address only when nothing else uses it."""

from __future__ import annotations

import pytest

from hafleet_agent.node.peers import AUTH_LIVE_S, MAX_PEERS, PEER_EXPIRE_S, PeerTable


class World:
    def __init__(self) -> None:
        self.members: dict[str, str] = {}  # id -> raft_addr
        self.closed: list[str] = []
        self.join = ["10.0.0.9:7400"]
        self.table = PeerTable(
            is_member=lambda nid: nid in self.members,
            member_addrs=lambda: list(self.members.values()),
            join_addrs=self.join,
            close_addr=self.closed.append,
        )


def test_full_table_displaces_the_stalest_unauthenticated_non_member() -> None:
    w = World()
    t = w.table
    now = 1000.0
    for i in range(MAX_PEERS):
        assert t.get_or_add(f"p{i}", f"127.0.0.1:{i + 1}", "mdns", now + i / 1000) is not None
    w.members["p0"] = "127.0.0.1:1"  # the stalest is a member: it stays
    p = t.get_or_add("new", "127.0.0.2:1", "mdns", now + 1)
    assert p is not None and p.source == "mdns"
    assert len(t.peers) == MAX_PEERS
    assert "p0" in t.peers and "p1" not in t.peers


def test_full_of_authenticated_peers_only_an_authenticated_one_gets_in() -> None:
    w = World()
    t = w.table
    now = 1000.0
    for i in range(MAX_PEERS):
        assert t.note_authenticated(f"a{i}", f"127.0.0.1:{i + 1}", None, now)
    assert t.get_or_add("mdns-only", "127.0.0.2:1", "mdns", now) is None
    assert t.note_authenticated("late", "127.0.0.2:2", "cid", now + 1)
    assert len(t.peers) == MAX_PEERS and "late" in t.peers
    late = t.peers["late"]
    assert (late.cluster_id, late.fresh, late.authed) == ("cid", False, now + 1)
    assert late.authenticated(now + 1) and not late.authenticated(now + 1 + AUTH_LIVE_S)
    # the displaced one was dialled (authenticated): its address is closed
    assert len(w.closed) == 1


def test_expiry_spares_members_and_mdns_listed_peers() -> None:
    w = World()
    t = w.table
    for nid in ("old", "member", "listed"):
        t.get_or_add(nid, f"127.0.0.1:{len(t.peers) + 1}", "mdns", 0.0)
    w.members["member"] = "127.0.0.1:2"
    t.peers["listed"].in_mdns = True
    t.expire(PEER_EXPIRE_S - 1)
    assert set(t.peers) == {"old", "member", "listed"}
    t.expire(PEER_EXPIRE_S + 1)
    assert set(t.peers) == {"member", "listed"}
    assert w.closed == []  # "old" was never dialled nor authenticated: nothing to close


@pytest.mark.parametrize(
    ("addr", "closed"),
    [
        ("127.0.0.1:5", True),  # nothing else uses it
        ("10.0.0.9:7400", False),  # a --join address
        ("127.0.0.1:6", False),  # a member's address
        ("127.0.0.1:7", False),  # another peer's address
    ],
)
def test_forget_closes_an_address_nothing_else_uses(addr: str, closed: bool) -> None:
    w = World()
    t = w.table
    w.members["m"] = "127.0.0.1:6"
    t.get_or_add("other", "127.0.0.1:7", "mdns", 0.0)
    p = t.get_or_add("x", addr, "mdns", 0.0)
    assert p is not None
    p.last_hello = 1.0
    t.forget("x")
    assert "x" not in t.peers
    assert w.closed == ([addr] if closed else [])
