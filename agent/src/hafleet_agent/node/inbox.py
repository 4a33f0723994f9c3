"""What an authenticated peer may send the node, checked before anything acts on it.

``accept_peer``: the transport asks it once a peer has proved the cluster key (right
cluster name and id, a valid member id). ``on_frame``: every frame of such a peer goes to
the handler its kind names in ``handlers`` (the node's explicit table; any other kind is
dropped), after its cluster id was checked. ``on_peer_closed``: the connection of our leader
ended, the core campaigns soon. ``on_raft_frame``: a Raft message reaches the core only from
its own sender, of our cluster (or the one a fresh node expects), with no term far ahead of
ours. A dropped frame is counted by reason (``frames_dropped``) and
warned about at most once per DROP_LOG_INTERVAL_S per peer and reason.

The inbox sees the node through what is passed in: the driver (the core's term, step,
wake), the cluster id, and callables to note an authenticated peer, to ask whether a fresh
node expects a cluster and to adopt a cluster id."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..codec import MAX_TERM, MAX_TERM_JUMP, CodecError, decode_message
from ..ids import MEMBER_ID_RULE, shown, valid_member_id
from ..raft.log import LogLost
from ..raft.types import Message
from ..state import StateError
from ..transport import PeerInfo
from .driver import Driver
from .frames import FrameError, check_cid
from .peers import MAX_PEERS

log = logging.getLogger("hafleet.agent")

#: A repeated warning about the frames of one peer is logged at most this often.
DROP_LOG_INTERVAL_S = 10.0

#: A Raft message this short is kept with its bytes, per sender, and not decoded again when
#: the same bytes come next (heartbeats and their answers: ~30 bytes).
SAME_AGAIN_BYTES = 128

FrameHandler = Callable[[PeerInfo, dict[Any, Any]], None]


class Inbox:
    def __init__(
        self,
        node_id: str,
        cluster: str,
        driver: Driver,
        *,
        cluster_id: Callable[[], str | None],
        note_peer: Callable[[PeerInfo, str | None], None],
        expects: Callable[[object], bool],
        adopt_cluster: Callable[[str, str], bool],
    ) -> None:
        self.id = node_id
        self.cluster = cluster
        self.driver = driver
        self._cluster_id = cluster_id
        self._note_peer = note_peer
        self._expects = expects
        self._adopt_cluster = adopt_cluster
        #: The frame kinds a peer may send and their handlers: the node's table.
        self.handlers: dict[str, FrameHandler] = {}
        #: Frames dropped, by reason ("unknown kind", "bad hello", "term too far ahead", ...).
        self.frames_dropped: dict[str, int] = {}
        self._drop_logged: dict[tuple[str, str], tuple[float, int]] = {}
        #: When a Raft message from each sender was last stepped (time.monotonic()): how long
        #: the leader has been silent, for /v1/health (a learner never campaigns, so an
        #: isolated one would know its old leader for ever).
        self.last_stepped: dict[str, float] = {}
        #: The last small message decoded from each sender, with its bytes: a heartbeat and
        #: its answer come again and again the same while nothing is written (an idle
        #: leader of five decoded forty a second), and decoding one is ~8 µs of Python
        #: (three times that in a process woken for it). Messages are immutable; the checks
        #: after decoding (sender, term bound) run on every one.
        self._decoded: dict[str, tuple[bytes, Message]] = {}

    def accept_peer(self, peer: PeerInfo) -> bool:
        """Asked by the transport once a peer has proved the cluster key (either side of
        the connection): keep it or not. Kept peers are noted as authenticated."""
        if peer.cluster != self.cluster:
            log.warning("refusing %s at %s: cluster %r", peer.node_id, peer.remote, peer.cluster)
            return False
        cluster_id = self._cluster_id()
        if cluster_id and peer.cluster_id and peer.cluster_id != cluster_id:
            log.warning(
                "refusing %s at %s: it belongs to cluster id %s, not %s",
                peer.node_id,
                peer.remote,
                peer.cluster_id,
                cluster_id,
            )
            return False
        if not valid_member_id(peer.node_id):
            log.warning("refusing %s at %s: %s", shown(peer.node_id), peer.remote, MEMBER_ID_RULE)
            return False
        try:
            check_cid(peer.cluster_id)
        except FrameError:
            log.warning("refusing %s at %s: bad cluster id", peer.node_id, peer.remote)
            return False
        self._note_peer(peer, peer.cluster_id)
        return True

    def drop(self, peer: PeerInfo, why: str, detail: str = "") -> None:
        """Count a dropped frame; warn at most once per DROP_LOG_INTERVAL_S per peer and
        reason (a peer sending garbage in a loop must not flood the log)."""
        self.frames_dropped[why] = self.frames_dropped.get(why, 0) + 1
        now = time.monotonic()
        key = (peer.node_id, why)
        last, suppressed = self._drop_logged.get(key, (None, 0))
        if last is not None and now - last < DROP_LOG_INTERVAL_S:
            self._drop_logged[key] = (last, suppressed + 1)
            return
        if len(self._drop_logged) >= MAX_PEERS:
            self._drop_logged.clear()
        self._drop_logged[key] = (now, 0)
        log.warning(
            "frame from %s at %s dropped: %s%s%s",
            peer.node_id,
            peer.remote,
            why,
            f" ({detail[:200]})" if detail else "",
            f"; {suppressed} more like it since the last warning" if suppressed else "",
        )

    def on_frame(self, peer: PeerInfo, obj: object) -> None:
        """Every frame of an authenticated peer: dispatched through ``handlers`` (the kinds
        a peer may send; anything else is dropped), after its fields were checked."""
        if not isinstance(obj, dict):
            self.drop(peer, "malformed frame", "not a map")
            return
        kind = obj.get("k")
        handler = self.handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self.drop(peer, "unknown kind", repr(kind)[:60])
            return
        try:
            cid = check_cid(obj.get("cid"))
        except FrameError as exc:
            self.drop(peer, f"bad {kind}", str(exc))
            return
        self._note_peer(peer, cid)
        try:
            handler(peer, obj)
        except (FrameError, StateError, KeyError, TypeError, ValueError) as exc:
            self.drop(peer, f"bad {kind}", str(exc))

    def on_raft(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        data = obj.get("m")
        if not isinstance(data, bytes):
            raise FrameError("m must be bytes")
        self.on_raft_frame(peer, obj.get("cid"), data)

    def on_peer_closed(self, peer: PeerInfo) -> None:
        """The transport's ``on_peer_closed``: an accepted connection of ``peer`` ended. When
        ``peer`` is our leader, it has most likely exited (a process that ends closes its
        connections): the core campaigns at one of its next ticks rather than at its election
        timeout (``Raft.leader_lost``; a live leader's next heartbeat keeps it in place)."""
        raw = self.driver.raw
        if raw is None or raw.lead != peer.node_id:
            return
        raw.report_leader_lost(peer.node_id)
        if raw.lead is None:  # it acted (not a learner, the option on)
            log.info(
                "the connection of leader %s ended: campaigning unless it is heard from again",
                shown(peer.node_id),
            )
            self.driver.wake()

    def on_raft_frame(self, peer: PeerInfo, cid: object, data: object) -> None:
        raw = self.driver.raw
        if raw is None or not isinstance(data, bytes):
            return
        if cid is None:
            return
        cluster_id = self._cluster_id()
        if cluster_id is None:
            # A fresh node takes Raft traffic only from the cluster it asked to join or whose
            # founder it accepted.
            if not self._expects(cid):
                return
        elif cid != cluster_id:
            self.drop(peer, "Raft message of another cluster", str(cid))
            return
        decoded = self._decoded.get(peer.node_id)
        if decoded is not None and decoded[0] == data:
            m = decoded[1]
        else:
            try:
                m = decode_message(data)
            except CodecError as exc:
                self.drop(peer, "undecodable Raft message", str(exc))
                return
            if len(data) <= SAME_AGAIN_BYTES:
                if len(self._decoded) >= MAX_PEERS:
                    self._decoded.clear()
                self._decoded[peer.node_id] = (data, m)
        if m.frm != peer.node_id or m.to != self.id:
            self.drop(peer, "Raft message of another sender", f"{m.frm}->{m.to}")
            return
        # A term far ahead of ours is no election we missed but a faulty or hostile peer:
        # adopting it would leave no room for the terms after it. Refused: any term (of the
        # message, its log, entries or snapshot) above MAX_TERM or more than MAX_TERM_JUMP
        # ahead of ours (codec.py explains both bounds).
        ours = raw.term
        bound = min(MAX_TERM, ours + MAX_TERM_JUMP)
        terms = [m.term, m.log_term, *(e.term for e in m.entries)]
        if m.snapshot is not None:
            terms.append(m.snapshot.meta.term)
        if max(terms) > bound:
            self.drop(
                peer,
                "term too far ahead",
                f"{m.type.name} with term {max(terms)}; ours is {ours}, the bound {bound}",
            )
            return
        if cluster_id is None and not self._adopt_cluster(
            str(cid), f"first Raft message from {peer.node_id}"
        ):
            return
        try:
            raw.step(m)
        except ValueError as exc:
            log.warning("Raft message from %s refused: %s", peer.node_id, exc)
            return
        except LogLost as exc:
            self.driver.fail_stop(
                f"{exc}: this member's data was lost or rolled back (an emptied data dir, an "
                "older copy restored), and a member must never serve without what it "
                "acknowledged. Remove it from the group (`hafleet-agent remove-member "
                f"{self.id}` on another member), empty its data dir and start it again: it "
                "joins as a new member and catches up (docs/operations.md, 'A single member "
                "lost its data')"
            )
            return
        self.last_stepped[m.frm] = time.monotonic()
        self.driver.wake()
