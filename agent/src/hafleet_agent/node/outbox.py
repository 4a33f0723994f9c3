"""What the node sends its peers: Raft messages (``send_raft``: in one frame, or in chunks
through the snapshot sender when a snapshot does not fit one) and control frames (``send``),
each to the address the member table or the peer table has for the node.

The outbox sees the node through what is passed in: the state machine (the members'
addresses), the peer table, the Raft node (to report a peer unreachable) and the cluster id;
``start`` hands it the transport and the snapshot sender once they run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgpack

from ..codec import encode_message
from ..raft.rawnode import RawNode
from ..raft.types import Message
from ..snapxfer import SnapshotSender
from ..state import StateMachine
from ..transport import Transport
from .peers import MAX_PEERS, Peer

log = logging.getLogger("hafleet.agent")


class Outbox:
    def __init__(
        self,
        state: StateMachine,
        peers: dict[str, Peer],
        *,
        raw: Callable[[], RawNode | None],
        cluster_id: Callable[[], str | None],
    ) -> None:
        self.state = state
        self.peers = peers
        self._raw = raw
        self._cluster_id = cluster_id
        self.transport: Transport | None = None
        self.snap_sender: SnapshotSender | None = None
        #: The last message without entries sent to each member, with its bytes: a leader's
        #: heartbeat to a member and the member's answer are the same again and again while
        #: nothing is written, and encoding one (``encode_message`` checks every field) is
        #: Python the idle leader paid forty times a second.
        self._encoded: dict[str, tuple[Message, bytes]] = {}

    def start(self, transport: Transport, snap_sender: SnapshotSender | None) -> None:
        self.transport, self.snap_sender = transport, snap_sender
        transport.is_member_host = self.is_member_host  # its listener asks (listener.py)

    def is_member_host(self, ip: str) -> bool:
        """Whether ``ip`` is the host of a member's Raft address in the replicated member
        table: the transport's listener never lets a flood from elsewhere keep a connection
        from there out of the handshake. (A member whose address names a host by DNS name
        is known to the listener by the source of its accepted connections instead.)"""
        state = self.state
        for mid in state.member_ids():
            addr = state.member_field(mid, "raft_addr")
            if isinstance(addr, str) and addr.rpartition(":")[0].strip("[]") == ip:
                return True
        return False

    def addr_of(self, node_id: str) -> str | None:
        addr = self.state.member_field(node_id, "raft_addr")
        if addr:
            return str(addr)
        p = self.peers.get(node_id)
        return p.raft_addr if p else None

    def send_ahead(self, messages: list[Message]) -> Callable[[], None]:
        """Queue ``messages`` (a follower's answers) while its log write is under way: they
        leave with the next flush, once the write is durable (node/walwriter.py). Returns
        what takes them back, unwritten, when the write fails: nothing may leave then."""
        transport = self.transport
        assert transport is not None
        queued: list[tuple[str, bytes]] = []

        def take_back() -> None:
            for addr, payload in reversed(queued):
                transport.take_back(addr, payload)

        try:
            for m in messages:
                if (q := self.send_raft(m)) is not None:
                    queued.append(q)
        except BaseException:  # (a bug) those queued before it do not leave either
            take_back()
            raise
        return take_back

    def send_raft(self, m: Message) -> tuple[str, bytes] | None:
        """Queue ``m`` for its member; (its address, the frame queued), or None when it was
        dropped or goes in chunks."""
        assert m.to is not None and self.transport is not None
        addr = self.addr_of(m.to)
        if addr is None:
            log.debug("no address for %s: dropping %s", m.to, m.type.name)
            return None
        if (
            m.snapshot is not None
            and self.snap_sender is not None
            and not self.snap_sender.fits_one_frame(m.snapshot)
        ):
            self.snap_sender.send(addr, m)  # in chunks; a failure is reported later
            return None
        if m.entries or m.snapshot is not None:
            data = encode_message(m)
        elif (sent := self._encoded.get(m.to)) is not None and sent[0] == m:
            data = sent[1]
        else:
            data = encode_message(m)
            if len(self._encoded) >= MAX_PEERS:
                self._encoded.clear()
            self._encoded[m.to] = (m, data)
        frame = {"k": "raft", "cid": self._cluster_id(), "m": data}
        payload = msgpack.packb(frame, use_bin_type=True)
        if not self.transport.send_packed(addr, payload):
            if (raw := self._raw()) is not None:
                raw.report_unreachable(m.to)
            return None
        return addr, payload

    def flush(self) -> None:
        """Write the frames queued so far now (``Transport.flush``)."""
        if self.transport is not None:
            self.transport.flush()

    def send(self, addr: str, kind: str, *, within: float | None = None, **body: Any) -> bool:
        assert self.transport is not None
        body["k"] = kind
        body["cid"] = self._cluster_id()
        try:
            return self.transport.send(addr, body, within=within)
        except ValueError as exc:  # an address the transport cannot dial (from mDNS, say)
            log.debug("cannot send %s to %r: %s", kind, addr, exc)
            return False
