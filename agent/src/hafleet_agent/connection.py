"""One connection of the transport, and one destination's outbound queue (asyncio).

:class:`Conn` is an accepted or dialled socket with the session and the peer its handshake
gave it; :func:`read_frame` reads one frame off it through :class:`.wire.FrameDecoder`.
:class:`Outbound` is the bounded queue of one destination address and the task that dials
it, writes the queue in order and reconnects with back-off; it asks its owner (the
:class:`.transport.Transport`) to dial and to read. Lines go to the ``hafleet.transport``
logger.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .throttle import WarnThrottle
from .wire import (
    COUNTER_LEN,
    RECORD_OVERHEAD,
    TAG_LEN,
    Closed,
    FrameDecoder,
    ProtocolError,
    Session,
    batch_payload,
)

__all__ = [
    "Conn",
    "Outbound",
    "PeerInfo",
    "Refused",
    "TLSFailed",
    "TransportStats",
    "abort",
    "fmt_addr",
    "read_frame",
    "reason",
    "tls_reason",
    "tune",
]

log = logging.getLogger("hafleet.transport")

_BATCH_BYTES = 1 << 20  # payload bytes sealed (and written) together before the next drain
DIAL_WARN_INTERVAL = 10.0
"""Failures to connect to one address: at most one WARNING line per this many seconds."""


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who is at the other end of an authenticated connection (from its hello)."""

    node_id: str
    cluster: str
    cluster_id: str | None
    addr: str
    """The peer's advertised Raft address, ``host:port``."""
    remote: str
    """The socket's remote address as seen here, ``host:port``."""
    outbound: bool
    """True when we dialled the connection."""
    certified: bool = False
    """True when ``node_id`` is the one the peer's TLS certificate names (mutual TLS): the
    peer may speak as that node only. False without TLS (the hello's word, bound by no more
    than the cluster key every member holds)."""


@dataclass(slots=True)
class TransportStats:
    """Counters for metrics; they only go up."""

    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    connects: int = 0
    """Outbound connections that completed the handshake and hellos."""
    reconnects: int = 0
    """Of those, the ones to an address that had been connected before."""
    connect_failures: int = 0
    inbound_accepted: int = 0
    auth_failures: int = 0
    """Handshakes that did not complete, and frames with a bad tag or counter."""
    protocol_errors: int = 0
    """Oversize or truncated frames, undecodable payloads, bad hellos, stalled peers."""
    peers_refused: int = 0
    """Hellos that ``accept_peer`` refused (or that claimed our own node id)."""
    handshakes_refused: int = 0
    """Connections closed at once: too many in the handshake (from their source, or all)."""
    handshakes_evicted: int = 0
    """Connections in the handshake closed to make room for a new one (all slots taken)."""
    warnings_suppressed: int = 0
    """Inbound warnings not logged because their source had one logged recently."""
    drops_queue_full: int = 0
    drops_too_large: int = 0
    drops_discarded: int = 0
    """Queued frames thrown away: refused peer, ``close_peer``, ``stop``."""
    callback_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Refused(Closed):
    """``accept_peer`` said no (or the peer claims our own node id, or a node id its TLS
    certificate does not name)."""


class TLSFailed(Closed):
    """The TLS handshake failed: no certificate, one of another CA, an expired one, an
    address the certificate does not name, or no TLS at all."""


def fmt_addr(sockaddr: Any) -> str:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host = str(sockaddr[0])
        return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"
    return str(sockaddr)


async def read_frame(reader: asyncio.StreamReader, limit: int, what: str) -> bytes:
    """One frame body of at most ``limit`` bytes; Closed on EOF, truncation or oversize.

    It reads exactly what the frame needs, so the next frame stays in ``reader`` (the
    handshake's frames; the transport's read loop then reads larger pieces)."""
    decoder = FrameDecoder(limit, what)
    try:
        while (body := decoder.next_frame()) is None:
            decoder.feed(await reader.readexactly(decoder.wanted()))
    except asyncio.IncompleteReadError as e:
        decoder.feed(e.partial)
        decoder.end()  # raises: the reason the stream ended here
    return body


@dataclass(slots=True)
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    remote: str
    session: Session | None = None
    peer: PeerInfo | None = None
    cert_id: str | None = None
    """With TLS: the node id the peer's certificate names (None: it names none)."""
    batch: bool = False
    """Both hellos list the ``batch`` capability: the client's frames carry batches."""
    upgrading: bool = False
    """The listener's TLS handshake (``start_tls``) began and did not complete: the stream's
    protocol is never told of the close then (asyncio's SSL layer owns the socket), so
    :func:`abort` must not wait for it."""

    def describe(self) -> str:
        who = f" (node {self.peer.node_id})" if self.peer is not None else ""
        return f"{self.remote}{who}"


def reason(e: BaseException) -> str:
    """The text a closing line gives for ``e``."""
    if isinstance(e, Closed):
        return str(e)
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {tls_reason(e)}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def tls_reason(e: ssl.SSLError) -> str:
    """The TLS library's reason for a failure, without its source location: "certificate
    verify failed: certificate has expired", "tlsv13 alert certificate required"."""
    if isinstance(e, ssl.SSLCertVerificationError) and e.verify_message:
        return f"certificate verify failed: {e.verify_message}"
    if e.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST"):
        return f"{e.reason.replace('_', ' ').lower()} (the peer does not speak TLS?)"
    if e.reason:
        return str(e.reason).replace("_", " ").lower()
    return str(e) or type(e).__name__


def tune(writer: asyncio.StreamWriter, user_timeout: float | None = None) -> None:
    """No Nagle delay, keep-alive, and (Linux) ``TCP_USER_TIMEOUT``: a connection whose sent
    bytes stay unacknowledged for ``user_timeout`` seconds is closed by the kernel, so a
    link that was cut is redialled, not left to TCP's retransmissions, whose intervals
    double up to two minutes (docs/transport.md, "Sockets")."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if user_timeout and hasattr(socket, "TCP_USER_TIMEOUT"):
            ms = max(1, round(user_timeout * 1000))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, ms)


#: The longest :func:`abort` waits for the stream to say it is closed (it says so in the next
#: loop cycle when it will at all).
ABORT_WAIT_S = 1.0


async def abort(conn: Conn) -> None:
    """Drop the connection now (unsent bytes included) and wait until the socket is closed
    (at most ABORT_WAIT_S; not at all after a TLS handshake that did not complete, whose
    close the stream never hears of: every such connection's task waited for ever — a
    silent client of the TLS Raft port leaked one — and a stop that cancelled one in its
    handshake hung until its 20 s bound)."""
    conn.writer.transport.abort()
    if conn.upgrading:
        return
    try:
        async with asyncio.timeout(ABORT_WAIT_S):
            await conn.writer.wait_closed()
    except Exception:  # the reason was logged already; the socket is closed either way
        pass


class Owner(Protocol):
    """What an :class:`Outbound` needs of the transport that owns it."""

    stats: TransportStats
    max_frame: int
    queue_limit: int
    queue_bytes: int
    backoff_initial: float
    backoff_max: float
    write_timeout: float
    rng: random.Random

    async def dial(self, addr: str) -> Conn:
        """An authenticated, accepted connection to ``addr`` (or an exception)."""
        ...

    async def read_loop(self, conn: Conn) -> None:
        """Deliver ``conn``'s frames until EOF (returns) or a violation (raises)."""
        ...

    def count_failure(self, e: BaseException, *, authenticated: bool) -> None:
        """Count the failure ``e`` in the stats."""
        ...


class Outbound:
    """The queue and the connection manager of one destination address."""

    __slots__ = (
        "addr",
        "owner",
        "queue",
        "queued_bytes",
        "wakeup",
        "task",
        "conn",
        "ever_connected",
        "failures",
        "overflowing",
        "idle",
        "dial_warnings",
    )

    def __init__(self, addr: str, owner: Owner) -> None:
        self.addr = addr
        self.owner = owner
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.conn: Conn | None = None
        self.ever_connected = False
        self.failures = 0
        self.overflowing = False
        self.idle = False
        """The task waits for frames with the connection up and its buffer drained: the
        transport's flush writes what is queued itself, with no wake-up of the task."""
        # Failures to connect: a WARNING at the first, then one per DIAL_WARN_INTERVAL while
        # they go on (saying how many were not logged), the others at DEBUG.
        self.dial_warnings = WarnThrottle(log, DIAL_WARN_INTERVAL, max_sources=1)

    def start(self) -> None:
        """Start the task that connects and writes (on the running loop)."""
        self.task = asyncio.get_running_loop().create_task(
            self.run(), name=f"hafleet-transport-out-{self.addr}"
        )

    def offer(self, payload: bytes) -> bool:
        """Queue ``payload``; False (and counted) when the queue is full: the new frame is
        the one dropped."""
        owner, size = self.owner, len(payload)
        if len(self.queue) >= owner.queue_limit or self.queued_bytes + size > owner.queue_bytes:
            owner.stats.drops_queue_full += 1
            if not self.overflowing:
                self.overflowing = True
                log.warning("send queue for %s is full: dropping new frames", self.addr)
            return False
        if len(self.queue) < owner.queue_limit // 2:
            self.overflowing = False  # warn again at the next overflow, not at every drop
        self.queue.append(payload)
        self.queued_bytes += size
        if not self.idle:  # else the transport's flush at the end of this cycle writes it
            self.wakeup.set()
        return True

    def take_back(self, payload: bytes) -> None:
        """Unqueue ``payload`` while it is the last frame :meth:`offer` queued and not
        written yet (the same object; ``Transport.take_back``)."""
        if self.queue and self.queue[-1] is payload:
            self.queue.pop()
            self.queued_bytes -= len(payload)

    def flush(self) -> None:
        """Write what is queued now, if the connection is up and drained (else the task
        does, once it is); called by the transport once per loop cycle in which frames
        were queued, so all of a cycle's frames to this peer leave in one write."""
        conn = self.conn
        while self.idle and conn is not None and self.queue:  # over 1 MiB: several writes
            try:
                self.write_queued(conn)
            except Exception as e:  # a bug: say so; the task goes on (or reconnects)
                log.exception("writing to %s failed: %s", self.addr, reason(e))
                self.idle = False
                self.wakeup.set()
                return
            if conn.writer.transport.get_write_buffer_size():
                self.idle = False  # the kernel did not take it all: the task drains
                self.wakeup.set()

    def discard(self) -> int:
        n = len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return n

    async def run(self) -> None:
        """Connect while frames wait, write them in order, reconnect with back-off."""
        owner, stats = self.owner, self.owner.stats
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            try:
                conn = await owner.dial(self.addr)
            except asyncio.CancelledError:
                raise
            except Refused as e:
                n = self.discard()
                stats.drops_discarded += n
                log.warning("refusing %s: %s; discarded %d queued frames", self.addr, e, n)
                await self._backoff()
                continue
            except Exception as e:
                stats.connect_failures += 1
                why = reason(e)
                if not self.dial_warnings.warn(
                    self.addr, "cannot connect to %s: %s", self.addr, why
                ):
                    log.debug("cannot connect to %s: %s", self.addr, why)
                await self._backoff()
                continue
            stats.connects += 1
            if self.ever_connected:
                stats.reconnects += 1
            self.ever_connected = True
            self.conn = conn
            log.info("connected to %s", conn.describe())
            loop = asyncio.get_running_loop()
            since = loop.time()
            try:
                await self._pump(conn)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                owner.count_failure(e, authenticated=True)
                log.warning("closing connection to %s: %s", conn.describe(), reason(e))
            finally:
                self.conn = None
                await abort(conn)
            # A connection that lived a while starts the back-off afresh; one that died at
            # once (a peer that closes right after the hellos) keeps escalating it.
            if loop.time() - since >= owner.backoff_max:
                self.failures = 0
            await self._backoff()

    async def _backoff(self) -> None:
        owner = self.owner
        delay = min(owner.backoff_max, owner.backoff_initial * 2 ** min(self.failures, 30))
        self.failures += 1
        await asyncio.sleep(delay * (0.5 + 0.5 * owner.rng.random()))

    async def _pump(self, conn: Conn) -> None:
        """Write queued frames until the connection fails; its reader watches for EOF."""
        reader_task = asyncio.get_running_loop().create_task(self.owner.read_loop(conn))

        def reader_done(_t: object) -> None:
            self.idle = False
            self.wakeup.set()

        reader_task.add_done_callback(reader_done)
        try:
            while True:
                if reader_task.done():
                    reader_task.result()  # raises the reason
                    raise Closed("connection closed by the peer")
                if not self.queue:
                    self.idle = True
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    self.idle = False
                    if conn.writer.transport.get_write_buffer_size():
                        await self._drain(conn)  # the flush left bytes unsent
                    continue
                self.write_queued(conn)
                await self._drain(conn)
        finally:
            self.idle = False
            reader_task.cancel()
            await asyncio.gather(reader_task, return_exceptions=True)

    def write_queued(self, conn: Conn) -> None:
        """Seal what is queued (up to about _BATCH_BYTES) and write it in one write: with a
        peer that reads batches, one frame holds them all (one counter, one tag); with an
        older peer, one frame a message, the frames joined."""
        session, queue, stats = conn.session, self.queue, self.owner.stats
        assert session is not None
        taken: list[bytes] = []
        size = 0
        if conn.batch:
            # A frame's body is at most max_frame + RECORD_OVERHEAD (a payload send()
            # let through, in its record); several records only within that.
            limit = min(_BATCH_BYTES, self.owner.max_frame - COUNTER_LEN - TAG_LEN)
            while queue:
                n = len(queue[0]) + RECORD_OVERHEAD
                if taken and size + n > limit:
                    break
                taken.append(queue.popleft())
                size += n
            self.queued_bytes -= size - RECORD_OVERHEAD * len(taken)
            data = session.seal(batch_payload(taken))
        else:
            sealed: list[bytes] = []
            while queue and size < _BATCH_BYTES:
                payload = queue.popleft()
                self.queued_bytes -= len(payload)
                sealed.append(session.seal(payload))
                size += len(sealed[-1])
                taken.append(payload)
            data = sealed[0] if len(sealed) == 1 else b"".join(sealed)
        conn.writer.write(data)  # one write: one TLS record (up to 16 KiB) with TLS
        stats.frames_sent += len(taken)
        stats.bytes_sent += len(data)

    async def _drain(self, conn: Conn) -> None:
        """Wait for the socket buffer to drain; a peer that reads nothing is cut off."""
        transport = conn.writer.transport
        timeout = self.owner.write_timeout
        last = transport.get_write_buffer_size()
        while True:
            try:
                async with asyncio.timeout(timeout):
                    await conn.writer.drain()
                return
            except TimeoutError:
                size = transport.get_write_buffer_size()
                if size >= last:
                    raise ProtocolError(
                        f"peer stopped reading: no progress for {timeout:g}s "
                        f"with {size} bytes unsent"
                    ) from None
                last = size
