"""Framed, authenticated TCP between agents (asyncio): connections, queues, reconnects.

Every agent listens on its Raft address and dials each peer it sends to: one outbound
connection per destination address carries that destination's frames, in order; inbound
connections carry frames to us. Payloads are msgpack values (the agent sends dicts that
hold Raft messages in the form of :mod:`hafleet_agent.codec` and a few control messages).
docs/transport.md explains the choices.

The wire format (framing, handshake, sealed frames, hellos, payload limits) is
:mod:`hafleet_agent.wire`, which does no I/O; this module runs it on asyncio streams, with
one connection in :mod:`.connection` and the accepting side in :mod:`.listener`.

Delivery
    ``send()`` never blocks: it queues the msgpack payload for its destination and returns
    False when the frame is dropped. Each destination has a bounded queue (``queue_limit``
    frames, ``queue_bytes`` bytes); when it is full the *new* frame is dropped, as etcd
    does, so the caller knows which one was lost (the agent reports the peer unreachable
    to Raft). The writer takes a batch from the queue only when the socket buffer has
    drained, so a slow peer costs at most its queue; one that reads nothing for
    ``write_timeout`` is cut off. Received frames go to ``on_frame`` in order, on the loop.

TLS
    Given a :class:`.tls.TLSConfig`, every connection is mutual TLS first (the listener
    takes a plain TCP connection and runs the TLS handshake itself, so a failed one is
    logged like any other refusal, with the TLS library's reason), and the HMAC handshake
    runs inside it as before. The node id of the peer's certificate binds its hello: a hello
    naming another id is refused, and ``PeerInfo.certified`` tells the node that
    ``node_id`` is the certificate's.

Failure handling
    Any violation (bad proof, bad tag, wrong counter, oversize, truncation, garbage,
    bad msgpack or hello, handshake timeout) closes that connection with a line on the
    ``hafleet.transport`` logger naming the reason; other connections are not affected.
    Inbound lines are throttled per source address: one per WARN_INTERVAL (10 s), the next
    one saying how many were not logged. An accepted connection must send its first frame
    within FIRST_FRAME_TIMEOUT (2 s) and finish the handshake within ``handshake_timeout``;
    one source address may have MAX_PENDING_PER_SOURCE (16) connections in the handshake,
    all sources 128 (past them a new one evicts one that has not proved the key); the
    hosts of members (``is_member_host``) have bounds of their own (:mod:`.listener`).
    Outbound connections come back with exponential back-off and jitter while frames are
    queued. Frames already written to a connection that then fails are lost (at most
    once delivery); Raft retransmits what matters.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgpack

from .connection import (
    Conn,
    Outbound,
    PeerInfo,
    Refused,
    TLSFailed,
    TransportStats,
    abort,
    fmt_addr,
    read_frame,
    tls_reason,
    tune,
)
from .inbound import FrameReader, deliver_frame
from .listener import Listener
from .listener import _reason_kind as _reason_kind  # tests/agent/transport/test_throttle.py
from .throttle import WarnThrottle
from .wire import (
    BATCH_CAP,
    FRAME_OVERHEAD,
    HANDSHAKE_MAX,
    HELLO_MAX,
    MIN_KEY_LEN,
    PROTOCOL,
    RECORD_OVERHEAD,
    AuthError,
    Closed,
    FrameDecoder,
    ProtocolError,
    Session,
    check_server_proof,
    client_proof,
    frame,
    hello_payload,
    new_nonce,
    opening,
    parse_addr,
    parse_hello_caps,
    unpack_payload,
    valid_id,
)

if TYPE_CHECKING:  # .tls: loaded only by an agent with TLS (the config makes its contexts)
    from .tls import TLSConfig

__all__ = [
    "FRAME_OVERHEAD",
    "MIN_KEY_LEN",
    "PROTOCOL",
    "PeerInfo",
    "Transport",
    "TransportStats",
    "parse_addr",
]

log = logging.getLogger("hafleet.transport")

WARN_INTERVAL = 10.0
"""Inbound warnings about one source address: at most one line per this many seconds."""
_WARN_SOURCES = 1024  # distinct source addresses the warning throttle remembers
_READ_BYTES = 1 << 16  # read at least this much at a time after the hellos


# tests/chaos/test_chaos_fuzz.py reaches these through this module, by these names.
_Closed, _ProtocolError, _Session, _unpack = Closed, ProtocolError, Session, unpack_payload
_Conn, _read_frame = Conn, read_frame


class _WarnThrottle(WarnThrottle):
    """A :class:`.throttle.WarnThrottle` on this module's logger that counts the lines it
    held back in ``stats.warnings_suppressed``."""

    def __init__(self, interval: float, stats: TransportStats) -> None:
        super().__init__(log, interval, max_sources=_WARN_SOURCES)
        self.stats = stats

    def warn(self, source: str, msg: str, *args: object, kind: str = "") -> bool:
        logged = super().warn(source, msg, *args, kind=kind)
        if not logged:
            self.stats.warnings_suppressed += 1
        return logged


MAX_USER_TIMEOUT_S = (2**31 - 1) / 1000
"""TCP_USER_TIMEOUT is an int of milliseconds: a larger value would fail every connection."""


class Transport(Listener):
    """Authenticated, framed msgpack messaging between agents over TCP.

    ``on_frame(peer, obj)`` is called on the event loop for every frame received after the
    hellos; it must not block (an exception it raises is logged and counted). ``on_read()``,
    when given, is called once the frames of one read of an accepted connection (one that
    completed a frame at least) were all handed to ``on_frame`` (a receiver can do then,
    once per read, what it would otherwise put off to the loop's next cycle; an exception is
    logged). ``on_peer_closed(peer)``, when given, is called when an accepted connection
    that had authenticated ``peer`` ends, by the peer's close or a failure (not when this
    transport stops, nor when it closed the connection for a frame that failed its tag or
    counter): a process that exits closes its connections, so its peers hear of it
    at once (the node's follower campaigns when its leader's connection ends).
    ``accept_peer(peer)`` decides, after authentication, whether to keep a connection.
    ``cluster_id()`` is asked at every handshake, so a node that founds or joins a
    cluster announces the new id on its next connections. ``is_member_host(ip)`` (also an
    attribute the node sets) tells the listener a connection comes from a member's host: a
    flood from elsewhere never takes its place in the handshake.
    """

    def __init__(
        self,
        *,
        node_id: str,
        cluster: str,
        key: bytes,
        bind_host: str,
        port: int,
        advertise: str | None,
        on_frame: Callable[[PeerInfo, object], None],
        on_read: Callable[[], None] | None = None,
        on_peer_closed: Callable[[PeerInfo], None] | None = None,
        accept_peer: Callable[[PeerInfo], bool] = lambda peer: True,
        cluster_id: Callable[[], str | None] = lambda: None,
        max_frame: int = 64 << 20,
        queue_limit: int = 4096,
        queue_bytes: int | None = None,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        connect_timeout: float = 5.0,
        handshake_timeout: float = 5.0,
        write_timeout: float = 10.0,
        user_timeout: float | None = 5.0,
        tls: TLSConfig | None = None,
        batching: bool = True,
        is_member_host: Callable[[str], bool] | None = None,
    ) -> None:
        if not isinstance(key, bytes):
            raise TypeError("the cluster key must be bytes")
        if len(key) < MIN_KEY_LEN:
            raise ValueError(f"the cluster key must have at least {MIN_KEY_LEN} bytes")
        if not valid_id(node_id):
            raise ValueError("node_id must be a non-empty str of at most 255 bytes")
        if not valid_id(cluster):
            raise ValueError("cluster must be a non-empty str of at most 255 bytes")
        if advertise is not None:
            parse_addr(advertise)
        if not 0 <= port < 65536:
            raise ValueError(f"port out of range: {port}")
        if max_frame < HELLO_MAX:
            raise ValueError(f"max_frame must be at least {HELLO_MAX}")
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        if queue_bytes is None:
            queue_bytes = 2 * max_frame
        if queue_bytes < max_frame:
            raise ValueError("queue_bytes must be at least max_frame")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if user_timeout is not None and not 0 < user_timeout <= MAX_USER_TIMEOUT_S:
            raise ValueError(
                f"user_timeout must be above 0 and at most {MAX_USER_TIMEOUT_S:g} s "
                "(or None: the kernel's default)"
            )
        self.node_id = node_id
        self.cluster = cluster
        self._key = key
        self.bind_host = bind_host
        self.port = port
        self.advertise = advertise
        self._on_frame = on_frame
        self._on_read = on_read
        self._on_closed = on_peer_closed
        self._accept_peer = accept_peer
        self._cluster_id = cluster_id
        self.max_frame = max_frame
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.write_timeout = write_timeout
        self.user_timeout = user_timeout
        self.tls = tls
        self.batching = batching
        self.stats = TransportStats()
        self._server: asyncio.Server | None = None
        self._outbound: dict[str, Outbound] = {}
        self._to_flush: list[Outbound] = []  # peers sent to in this loop cycle
        self._flush_handle: asyncio.Handle | None = None  # the cycle's _flush, when due
        # frames that may wait for the next write to their peer (send's ``within``): the
        # peer and the loop time by which its queue is written anyway; one timer for all
        self._riders: dict[Outbound, float] = {}
        self._riders_handle: asyncio.TimerHandle | None = None
        self.inbound_protocol = True  # accepted connections read by inbound.FrameReader
        self._inbound: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._init_listener(is_member_host)
        self._throttle = _WarnThrottle(WARN_INTERVAL, self.stats)
        self._state = "new"  # new -> running -> stopped
        self.rng = random.Random()  # the jitter of the back-off

    def __repr__(self) -> str:
        return f"<Transport {self.node_id} {self.bind_host}:{self.port} {self._state}>"

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``bind_host:port``; with port 0, ``self.port`` then holds the real one."""
        if self._state != "new":
            raise RuntimeError(f"transport is {self._state}; start() runs once")
        self._server = await asyncio.start_server(
            self._on_connection, self.bind_host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.advertise is None:
            host = self.bind_host
            self.advertise = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self._state = "running"
        log.info("listening on %s", fmt_addr(self._server.sockets[0].getsockname()))

    async def stop(self) -> None:
        """Close the listener and every connection; discard queues; wait for all tasks."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        if self._riders_handle is not None:
            self._riders_handle.cancel()
            self._riders_handle = None
        self._riders.clear()
        if self._server is not None:
            self._server.close()
        inbound = dict(self._inbound)
        tasks: list[asyncio.Task[None]] = list(inbound)
        for peer in self._outbound.values():
            self.stats.drops_discarded += peer.discard()
            if peer.task is not None:
                tasks.append(peer.task)
        self._outbound.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in inbound.values():
            # A task cancelled before it ran never closed its socket: do it here. (The others
            # aborted theirs before they were cancelled, so their sockets are closed already;
            # waiting on them again would meet the close waiter that cancellation cancelled.)
            if not writer.transport.is_closing():
                writer.transport.abort()
                try:
                    await writer.wait_closed()
                except Exception:
                    pass
        if self._server is not None:
            await self._server.wait_closed()
        log.info("stopped")

    # ---- sending ---------------------------------------------------------------------------

    def send(self, addr: str, obj: object, *, within: float | None = None) -> bool:
        """Queue ``obj`` for the agent at ``addr`` (``host:port``); never blocks.

        ``within`` (seconds): the frame need not leave in this loop cycle; it waits for the
        next write to ``addr`` (a periodic report rides on the next heartbeat or its answer,
        in the same write and, when the peer reads batches, the same sealed frame: no write,
        no wake-up of either end of its own), and is written at the latest ``within`` from
        now when nothing else is.

        Returns False when the frame is dropped: the queue for ``addr`` is full
        (``queue_limit`` frames or ``queue_bytes`` bytes; the new frame is the one dropped),
        the frame exceeds ``max_frame``, or the transport is stopped. Raises TypeError for
        a value msgpack cannot encode, ValueError for a malformed address, RuntimeError
        before start().
        """
        if not self._running():
            return False
        return self.send_packed(addr, msgpack.packb(obj, use_bin_type=True), within=within)

    def _running(self) -> bool:
        """Whether frames may be queued (RuntimeError before start(); False once stopped)."""
        if self._state != "running":
            if self._state == "new":
                raise RuntimeError("send() before start()")
            return False
        return True

    def send_packed(self, addr: str, payload: bytes, *, within: float | None = None) -> bool:
        """:meth:`send` of an object packed already (``msgpack.packb(obj,
        use_bin_type=True)``: a follower's answer encoded while its log write is under way,
        node/outbox.py)."""
        if not self._running():
            return False
        size = len(payload)
        if size + FRAME_OVERHEAD - 4 > self.max_frame:
            self.stats.drops_too_large += 1
            log.warning(
                "dropping a frame of %d bytes for %s: larger than max_frame (%d)",
                size,
                addr,
                self.max_frame,
            )
            return False
        peer = self._outbound.get(addr)
        if peer is None:
            parse_addr(addr)
            peer = self._outbound[addr] = Outbound(addr, self)
            peer.start()
        if not peer.offer(payload):
            return False
        if within is not None and peer.idle and peer not in self._to_flush:
            self._ride(peer, within)
        elif peer.idle and (not self._to_flush or self._to_flush[-1] is not peer):
            # written at the end of this cycle, with the cycle's other frames to it
            if not self._to_flush:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
            self._to_flush.append(peer)
        return True

    def take_back(self, addr: str, payload: bytes) -> None:
        """Unqueue ``payload``, the last frame queued for ``addr`` and not written yet (a
        follower's answer whose log write failed: node/outbox.py's ``send_ahead``)."""
        peer = self._outbound.get(addr)
        if peer is not None:
            peer.take_back(payload)

    def _flush(self) -> None:
        """Write what this loop cycle queued: one write per peer (one frame per peer when
        it reads batches), with no wake-up of the peers' tasks."""
        peers, self._to_flush = self._to_flush, []
        riders = self._riders
        for peer in peers:
            peer.flush()  # a peer listed twice has nothing queued the second time
            if riders:
                riders.pop(peer, None)  # its waiting frames left with this write
        if not riders and self._riders_handle is not None:
            self._riders_handle.cancel()  # (a cancelled timer wakes no one)
            self._riders_handle = None

    def _ride(self, peer: Outbound, within: float) -> None:
        """``peer``'s queue waits for its next write, ``within`` seconds at the most."""
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.0, within)
        if due < self._riders.get(peer, due + 1):
            self._riders[peer] = due
            handle = self._riders_handle
            if handle is None or due < handle.when():
                if handle is not None:
                    handle.cancel()
                self._riders_handle = loop.call_at(due, self._riders_due)

    def _riders_due(self) -> None:
        """Write the queues whose waiting frames ran out of time (nothing else was sent to
        their peers meanwhile); set the timer for the next."""
        self._riders_handle = None
        now = asyncio.get_running_loop().time()
        for peer, due in list(self._riders.items()):
            if due <= now:
                del self._riders[peer]
                if peer.idle:  # else its task writes the queue once it can
                    peer.flush()
        if self._riders:
            self._riders_handle = asyncio.get_running_loop().call_at(
                min(self._riders.values()), self._riders_due
            )

    def flush(self) -> None:
        """Write what was queued so far now rather than at the end of this loop cycle (the
        Raft driver: a leader's appends before its own log write); the cycle's later
        frames are written as usual."""
        if self._to_flush:
            if self._flush_handle is not None:
                self._flush_handle.cancel()  # it would find nothing to write
                self._flush_handle = None
            self._flush()

    def is_connected(self, addr: str) -> bool:
        """True while an authenticated outbound connection to ``addr`` is open."""
        peer = self._outbound.get(addr)
        return peer is not None and peer.conn is not None

    def queued(self, addr: str) -> int:
        """How many frames wait to be written to ``addr``."""
        peer = self._outbound.get(addr)
        return 0 if peer is None else len(peer.queue)

    def queued_bytes(self, addr: str) -> int:
        """How many payload bytes wait to be written to ``addr`` (for senders that pace
        themselves, such as the chunked snapshot transfer)."""
        peer = self._outbound.get(addr)
        return 0 if peer is None else peer.queued_bytes

    async def close_peer(self, addr: str) -> int:
        """Close the connection to ``addr`` and discard its queue; returns frames discarded."""
        peer = self._outbound.pop(addr, None)
        if peer is None:
            return 0
        n = peer.discard()
        self.stats.drops_discarded += n
        if peer.task is not None:
            peer.task.cancel()
            await asyncio.gather(peer.task, return_exceptions=True)
        return n

    # ---- outbound --------------------------------------------------------------------------

    async def dial(self, addr: str) -> Conn:
        """An authenticated, accepted connection to ``addr`` (for an :class:`Outbound`)."""
        host, port = parse_addr(addr)
        tls = self.tls
        async with asyncio.timeout(self.connect_timeout):
            if tls is None:
                reader, writer = await asyncio.open_connection(host, port)
            else:
                try:
                    reader, writer = await asyncio.open_connection(
                        host,
                        port,
                        ssl=tls.peer_client,
                        server_hostname=host,
                        ssl_handshake_timeout=self.handshake_timeout,
                    )
                except ssl.SSLError as e:
                    raise TLSFailed(f"TLS handshake failed: {tls_reason(e)}") from None
        conn = Conn(reader, writer, fmt_addr(writer.get_extra_info("peername")))
        if tls is not None:
            from .tls import peer_node_id  # loaded already: the config made ``tls``

            conn.cert_id = peer_node_id(writer.get_extra_info("peercert"))
        try:
            tune(writer, self.user_timeout)
            async with asyncio.timeout(self.handshake_timeout):
                await self._client_handshake(conn)
        except BaseException as e:
            if not isinstance(e, asyncio.CancelledError):
                self.count_failure(e, authenticated=conn.session is not None)
            await abort(conn)
            raise
        return conn

    async def _client_handshake(self, conn: Conn) -> None:
        key, nonce_c = self._key, new_nonce()
        conn.writer.write(frame(opening(nonce_c)))
        body = await read_frame(conn.reader, HANDSHAKE_MAX, "the server's handshake")
        nonce_s = check_server_proof(key, nonce_c, body)
        conn.session = Session.after_handshake(key, nonce_c, nonce_s, client=True)
        conn.writer.write(frame(client_proof(key, nonce_c, nonce_s)))
        conn.writer.write(conn.session.seal(self._hello()))
        body = await read_frame(conn.reader, HELLO_MAX, "the server's hello (refused?)")
        conn.peer = self._check_hello(conn, body, outbound=True)

    # ---- shared ----------------------------------------------------------------------------

    async def read_loop(self, conn: Conn) -> None:
        """Deliver authenticated frames until EOF (returns) or a violation (raises)."""
        assert conn.session is not None and conn.peer is not None
        peer, reader, stats = conn.peer, conn.reader, self.stats
        batched = conn.batch and not peer.outbound  # the client's frames carry batches
        # A batch frame may hold one payload of the largest size with its record header.
        decoder = FrameDecoder(self.max_frame + (RECORD_OVERHEAD if batched else 0))
        on_frame = self._on_frame
        if not peer.outbound and self.inbound_protocol:
            # An accepted connection carries nothing back: its frames are read by a
            # protocol, in the loop cycle that reads them (inbound.py).
            await FrameReader(conn, decoder, batched, on_frame, stats, self._on_read).run()
            return
        while True:
            body = decoder.next_frame()
            if body is None:  # read what has come, a whole large body at once
                data = await reader.read(max(decoder.wanted(), _READ_BYTES))
                if not data:
                    try:
                        decoder.end()
                    except Closed as e:
                        if type(e) is Closed:  # a clean end of stream between frames
                            log.debug("%s closed the connection", conn.describe())
                            return
                        raise
                decoder.feed(data)
                continue
            deliver_frame(conn, body, batched, stats, on_frame)

    def _hello(self) -> bytes:
        assert self.advertise is not None  # set at the latest by start()
        caps = (BATCH_CAP,) if self.batching else ()
        return hello_payload(self.node_id, self.cluster, self._cluster_id(), self.advertise, caps)

    def _check_hello(self, conn: Conn, body: bytes, *, outbound: bool) -> PeerInfo:
        assert conn.session is not None
        (node_id, cluster, cluster_id, addr), caps = parse_hello_caps(conn.session.open(body))
        # Our hello lists "batch" when we batch: both ends then know both hellos did.
        conn.batch = self.batching and BATCH_CAP in caps
        certified = self.tls is not None
        peer = PeerInfo(node_id, cluster, cluster_id, addr, conn.remote, outbound, certified)
        if certified and node_id != conn.cert_id:
            # A valid certificate of the cluster speaks for its own node only.
            raise Refused(
                f"its hello names node {node_id!r} but its certificate names "
                + (repr(conn.cert_id) if conn.cert_id else "no node id")
            )
        conn.peer = peer
        if node_id == self.node_id:
            raise Refused("the peer claims our own node id")
        try:
            accepted = self._accept_peer(peer)
        except Exception:
            log.exception("accept_peer failed for %s; refusing it", conn.describe())
            accepted = False
        if not accepted:
            raise Refused(
                f"accept_peer refused node {node_id!r} "
                f"(cluster {cluster!r}, cluster id {cluster_id!r}, addr {addr})"
            )
        return peer

    def count_failure(self, e: BaseException, *, authenticated: bool) -> None:
        """Count the failure ``e`` of a connection in the stats."""
        if not authenticated and not isinstance(e, Refused):
            self.stats.auth_failures += 1  # the handshake did not complete, for any reason
        elif isinstance(e, AuthError):
            self.stats.auth_failures += 1
        elif isinstance(e, Refused):
            self.stats.peers_refused += 1
        elif isinstance(e, ProtocolError):
            self.stats.protocol_errors += 1
