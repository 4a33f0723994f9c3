"""Framed, authenticated TCP between agents (asyncio).

Every agent listens on its Raft address and dials each peer it sends to: one outbound
connection per destination address carries that destination's frames, in order; inbound
connections carry frames to us. Payloads are msgpack values (the agent sends dicts that
hold Raft messages in the form of :mod:`hafleet_agent.codec` and a few control messages).
docs/transport.md explains the choices; this docstring is the wire specification.

Framing
    Every frame on the wire, before and after authentication, is ``length u32 BE | body``.
    A body longer than the limit closes the connection at once (nothing is read): 128 bytes
    for the handshake frames, 4 KiB for the hellos, ``max_frame`` (default 64 MiB)
    afterwards.

Handshake (``key``: the shared cluster key; ``H(k, m)``: HMAC-SHA256; ``|``: concatenation;
``P = b"hafleet/v1"``; nonces are 32 bytes from :func:`secrets.token_bytes`)
    1. client -> server: ``P | nonce_c``                                    (42 bytes)
    2. server -> client: ``P | nonce_s | H(key, P | b" server" | nonce_c | nonce_s)``
    3. client -> server: ``H(key, P | b" client" | nonce_c | nonce_s)``       (32 bytes)

    Each side checks the other's proof with :func:`hmac.compare_digest` before it sends
    anything authenticated; the client checks the server's proof before it reveals its
    own. The different labels stop a proof from being reflected back. Both sides then
    derive the session key ``S = H(key, P | nonce_c | nonce_s)``; the key itself never
    crosses the wire and is never logged.

Authenticated frames
    ``body = counter u64 BE | payload | tag``, ``tag = H(S, dir | counter | payload)``
    where ``dir`` is one byte, 1 for client -> server and 2 for server -> client. The
    counter starts at 0 in each direction and goes up by exactly one a frame. The
    receiver checks the tag first (a bad tag: tampered, truncated or from another
    connection, whose session key differs), then the counter (a good tag with the wrong
    counter: replayed or reordered). ``payload`` is one msgpack value.

Hellos
    The first authenticated frame in each direction (counter 0) is a hello, a msgpack map
    ``{"node_id": str, "cluster": str, "cluster_id": str | None, "addr": "host:port"}``
    (``addr``: the sender's advertised Raft address). The client sends its hello right
    after its proof; the server reads it, asks ``accept_peer`` and answers with its own
    hello only if accepted (else it closes); the client then asks its own
    ``accept_peer`` about the server's hello before it sends anything else. Every later
    frame is delivered to ``on_frame``. Servers send nothing after their hello.

Delivery
    ``send()`` never blocks: it queues the msgpack payload for its destination and returns
    False when the frame is dropped. Each destination has a bounded queue (``queue_limit``
    frames, ``queue_bytes`` bytes); when it is full the *new* frame is dropped, as etcd
    does, so the caller knows which one was lost (the agent reports the peer unreachable
    to Raft). The writer takes a batch from the queue only when the socket buffer has
    drained, so a slow peer costs at most its queue; one that reads nothing for
    ``write_timeout`` is cut off. Received frames go to ``on_frame`` in order, on the loop.

Failure handling
    Any violation (bad proof, bad tag, wrong counter, oversize, truncation, garbage,
    bad msgpack or hello, handshake timeout) closes that connection with a line on the
    ``hafleet.transport`` logger naming the reason; other connections are not affected.
    Inbound lines are throttled per source address: one per WARN_INTERVAL (10 s), the next
    one saying how many were not logged. An accepted connection must send its first frame
    within FIRST_FRAME_TIMEOUT (2 s) and finish the handshake within ``handshake_timeout``;
    one source address may have MAX_PENDING_PER_SOURCE (16) connections in the handshake,
    all sources 128; past either limit a new connection is closed at once.
    Outbound connections come back with exponential back-off and jitter while frames are
    queued. Frames already written to a connection that then fails are lost (at most
    once delivery); Raft retransmits what matters.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import secrets
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import msgpack

from .addr import split_host_port
from .throttle import WarnThrottle

__all__ = [
    "MIN_KEY_LEN",
    "PROTOCOL",
    "PeerInfo",
    "Transport",
    "TransportStats",
    "parse_addr",
]

log = logging.getLogger("hafleet.transport")

PROTOCOL = b"hafleet/v1"
MIN_KEY_LEN = 32
NONCE_LEN = 32
TAG_LEN = 32
COUNTER_LEN = 8
FRAME_OVERHEAD = 4 + COUNTER_LEN + TAG_LEN
"""Bytes a payload gains on the wire: the length header, the counter and the tag."""

_HANDSHAKE_MAX = 128
_HELLO_MAX = 4096
_MAX_ID_BYTES = 255
_DIR_C2S = b"\x01"
_DIR_S2C = b"\x02"
_ONE_SHOT_MAC = 1 << 16
_BATCH_BYTES = 1 << 20  # frames sealed and written together before the next drain
_MAX_PENDING_HANDSHAKES = 128
MAX_PENDING_PER_SOURCE = 16
"""Connections one source address may have in the handshake at once; more are refused.

An honest host has one connection a peer agent on it in the handshake at a time, at worst;
16 leaves room for a lab that runs up to 16 agents on one host (they all dial from
127.0.0.1), and still takes 8 flooding addresses to fill the 128 slots."""
FIRST_FRAME_TIMEOUT = 2.0
"""How long an accepted connection may take to send its first handshake frame."""
WARN_INTERVAL = 10.0
"""Inbound warnings about one source address: at most one line per this many seconds."""
_WARN_SOURCES = 1024  # distinct source addresses the warning throttle remembers
_HELLO_KEYS = ("node_id", "cluster", "cluster_id", "addr")


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
    warnings_suppressed: int = 0
    """Inbound warnings not logged because their source had one logged recently."""
    drops_queue_full: int = 0
    drops_too_large: int = 0
    drops_discarded: int = 0
    """Queued frames thrown away: refused peer, ``close_peer``, ``stop``."""
    callback_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Closed(Exception):
    """The connection must close; the message is the reason that gets logged."""


class _AuthError(_Closed):
    pass


class _ProtocolError(_Closed):
    pass


class _Refused(_Closed):
    pass


def parse_addr(addr: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port`` into ``(host, port)``; ValueError if malformed."""
    if not isinstance(addr, str):
        raise ValueError(f"address must be a str, not {type(addr).__name__}")
    raw_host = addr.rpartition(":")[0]
    if ":" in raw_host and not (raw_host.startswith("[") and raw_host.endswith("]")):
        raise ValueError(f"IPv6 address must be bracketed: {addr!r}")
    return split_host_port(addr)


def _fmt_addr(sockaddr: Any) -> str:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host = str(sockaddr[0])
        return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"
    return str(sockaddr)


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


async def _read_frame(reader: asyncio.StreamReader, limit: int, what: str) -> bytes:
    """One frame body of at most ``limit`` bytes; _Closed on EOF, truncation or oversize."""
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise _ProtocolError(f"truncated frame header while reading {what}") from None
        raise _Closed(f"connection closed by the peer while reading {what}") from None
    n = int.from_bytes(header, "big")
    if n > limit:
        raise _ProtocolError(f"{what}: frame of {n} bytes exceeds the limit of {limit}")
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise _ProtocolError(
            f"truncated frame: {len(e.partial)} of {n} bytes, then end of stream ({what})"
        ) from None


class _Session:
    """Seals and opens the authenticated frames of one connection."""

    __slots__ = ("_key", "_mac", "_send_dir", "_recv_dir", "send_counter", "recv_counter")

    def __init__(self, session_key: bytes, *, client: bool) -> None:
        self._key = session_key
        self._mac = hmac.new(session_key, digestmod=hashlib.sha256)
        self._send_dir = _DIR_C2S if client else _DIR_S2C
        self._recv_dir = _DIR_S2C if client else _DIR_C2S
        self.send_counter = 0
        self.recv_counter = 0

    def _tag(self, direction: bytes, *parts: bytes | memoryview) -> bytes:
        # One C call for the usual small frame; a large one is hashed in place, not copied.
        if sum(map(len, parts)) <= _ONE_SHOT_MAC:
            return hmac.digest(self._key, b"".join((direction, *parts)), "sha256")
        h = self._mac.copy()
        h.update(direction)
        for part in parts:
            h.update(part)
        return h.digest()

    def seal(self, payload: bytes) -> bytes:
        counter = self.send_counter.to_bytes(COUNTER_LEN, "big")
        self.send_counter += 1
        tag = self._tag(self._send_dir, counter, payload)
        body_len = COUNTER_LEN + len(payload) + TAG_LEN
        return b"".join((body_len.to_bytes(4, "big"), counter, payload, tag))

    def open(self, body: bytes) -> memoryview:
        if len(body) < COUNTER_LEN + TAG_LEN:
            raise _ProtocolError(f"authenticated frame too short ({len(body)} bytes)")
        view = memoryview(body)
        tag = self._tag(self._recv_dir, view[:-TAG_LEN])
        if not hmac.compare_digest(tag, view[-TAG_LEN:]):
            raise _AuthError("frame failed authentication (tampered, or from another connection)")
        counter = int.from_bytes(view[:COUNTER_LEN], "big")
        if counter != self.recv_counter:
            raise _AuthError(
                f"replayed or reordered frame: counter {counter}, expected {self.recv_counter}"
            )
        self.recv_counter += 1
        return view[COUNTER_LEN:-TAG_LEN]


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    remote: str
    session: _Session | None = None
    peer: PeerInfo | None = None

    def describe(self) -> str:
        who = f" (node {self.peer.node_id})" if self.peer is not None else ""
        return f"{self.remote}{who}"


class _Outbound:
    """The queue and the connection manager of one destination address."""

    __slots__ = (
        "addr",
        "queue",
        "queued_bytes",
        "wakeup",
        "task",
        "conn",
        "ever_connected",
        "failures",
        "overflowing",
    )

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.conn: _Conn | None = None
        self.ever_connected = False
        self.failures = 0
        self.overflowing = False

    def discard(self) -> int:
        n = len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return n


_SMALL_PAYLOAD = 32 << 10
"""Payloads up to this size are unpacked by msgpack itself (see :func:`_unpack`)."""
MAX_PAYLOAD_ITEMS = 1 << 16
"""The most msgpack items (values, keys and containers) one larger payload may hold."""
MAX_PAYLOAD_DEPTH = 32
"""The deepest nesting of arrays and maps one larger payload may hold."""
_FIXED = {  # type byte -> (size, decoder) of the fixed-size scalars
    0xCA: (4, struct.Struct(">f").unpack_from),
    0xCB: (8, struct.Struct(">d").unpack_from),
    **{
        b: (struct.calcsize(fmt), struct.Struct(fmt).unpack_from)
        for b, fmt in zip(
            range(0xCC, 0xD4), (">B", ">H", ">I", ">Q", ">b", ">h", ">i", ">q"), strict=True
        )
    },
}
_LENGTH_SIZE = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
_LENGTH_SIZE.update({0xDC: 2, 0xDD: 4, 0xDE: 2, 0xDF: 4})


def _no_ext(code: int, data: bytes) -> object:
    raise ValueError(f"extension type {code}")


def _unpack(payload: memoryview | bytes) -> object:
    """The one msgpack value of ``payload``; _ProtocolError for anything else.

    Decoding must not cost much more than the payload itself, whoever sent it: a msgpack
    item of one byte (an empty map, say) becomes an object of 60-80 bytes, so a generic
    unpacker lets a frame expand about 75-fold. Small payloads (at most 32 KiB, the
    hellos and nearly every frame) go to msgpack with every length bounded by the payload,
    which caps them at a few MB whatever they hold. Larger ones are read item by item by
    :class:`_Walker`, which refuses more than MAX_PAYLOAD_ITEMS items or MAX_PAYLOAD_DEPTH
    levels before it builds them: their cost is their bytes plus at most 65,536 small
    objects. Extension types are never valid (the agent sends none), map keys are str
    or bytes.
    """
    try:
        if len(payload) <= _SMALL_PAYLOAD:
            n = len(payload)
            return msgpack.unpackb(
                payload,
                raw=False,
                strict_map_key=True,
                max_str_len=n,
                max_bin_len=n,
                max_array_len=n,
                max_map_len=n // 2,
                max_ext_len=0,
                ext_hook=_no_ext,
            )
        return _Walker(memoryview(payload)).unpack()
    except _ProtocolError:
        raise
    except Exception as e:
        raise _ProtocolError(f"payload is not one msgpack value ({type(e).__name__})") from None


class _Walker:
    """Reads one msgpack value item by item, with a budget of items and of depth.

    It builds what ``msgpack.unpackb(raw=False, strict_map_key=True)`` builds, but checks
    each item's type byte and length before it makes the object, so hostile input is
    refused before it costs memory. Python is slower than msgpack's C per item, which is
    why only large payloads (few items, mostly one large bin) come here.
    """

    __slots__ = ("buf", "pos", "items")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0
        self.items = 0

    def unpack(self) -> object:
        obj = self._value(0)
        if self.pos != len(self.buf):
            raise _ProtocolError(
                f"payload is not one msgpack value ({len(self.buf) - self.pos} bytes after it)"
            )
        return obj

    def _take(self, n: int) -> memoryview:
        start, end = self.pos, self.pos + n
        if end > len(self.buf):
            raise _ProtocolError("payload is not one msgpack value (truncated)")
        self.pos = end
        return self.buf[start:end]

    def _value(self, depth: int) -> object:
        self.items += 1
        if self.items > MAX_PAYLOAD_ITEMS:
            raise _ProtocolError(
                f"payload is not one msgpack value (more than {MAX_PAYLOAD_ITEMS} items)"
            )
        b = self._take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0xA0 <= b <= 0xBF:
            return str(self._take(b - 0xA0), "utf-8")
        if b <= 0x9F:
            return self._container(b, b & 0x0F, depth)
        if b in _FIXED:
            size, decode = _FIXED[b]
            return decode(self._take(size))[0]
        if b == 0xC0:
            return None
        if b in (0xC2, 0xC3):
            return b == 0xC3
        if b not in _LENGTH_SIZE:  # 0xc1, the extension types
            raise _ProtocolError("payload is not one msgpack value (an extension type)")
        n = int.from_bytes(self._take(_LENGTH_SIZE[b]), "big")
        if b <= 0xC6:
            return bytes(self._take(n))
        if b <= 0xDB:
            return str(self._take(n), "utf-8")
        return self._container(b, n, depth)

    def _container(self, b: int, n: int, depth: int) -> object:
        if depth >= MAX_PAYLOAD_DEPTH:
            raise _ProtocolError(
                f"payload is not one msgpack value (nested deeper than {MAX_PAYLOAD_DEPTH})"
            )
        is_map = b <= 0x8F or b >= 0xDE
        # every item takes at least one byte: a count beyond the payload is a lie
        if (2 * n if is_map else n) > len(self.buf) - self.pos:
            raise _ProtocolError("payload is not one msgpack value (truncated)")
        if not is_map:
            return [self._value(depth + 1) for _ in range(n)]
        out: dict[object, object] = {}
        for _ in range(n):
            key = self._value(depth + 1)
            if type(key) is not str and type(key) is not bytes:
                raise _ProtocolError("payload is not one msgpack value (a map key not str)")
            out[key] = self._value(depth + 1)
        return out


def _valid_id(v: object, *, optional: bool = False) -> bool:
    if v is None:
        return optional
    return isinstance(v, str) and 0 < len(v.encode("utf-8", "replace")) <= _MAX_ID_BYTES


def _reason_kind(reason: str) -> str:
    """The kind of a closing reason for the warning throttle: its text up to the first
    colon, digits left out ("replayed or reordered frame: counter 87, expected 88" and
    "... counter 90, expected 91" are one kind). The reasons are this module's own texts (and
    OSError's), so the kinds are few."""
    head = reason.split(":", 1)[0]
    return "".join(ch for ch in head if not ch.isdigit())[:80]


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


class Transport:
    """Authenticated, framed msgpack messaging between agents over TCP.

    ``on_frame(peer, obj)`` is called on the event loop for every frame received after
    the hellos; it must not block (an exception it raises is logged and counted).
    ``accept_peer(peer)`` decides, after authentication, whether to keep a connection.
    ``cluster_id()`` is asked at every handshake, so a node that founds or joins a
    cluster announces the new id on its next connections.
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
    ) -> None:
        if not isinstance(key, bytes):
            raise TypeError("the cluster key must be bytes")
        if len(key) < MIN_KEY_LEN:
            raise ValueError(f"the cluster key must have at least {MIN_KEY_LEN} bytes")
        if not _valid_id(node_id):
            raise ValueError("node_id must be a non-empty str of at most 255 bytes")
        if not _valid_id(cluster):
            raise ValueError("cluster must be a non-empty str of at most 255 bytes")
        if advertise is not None:
            parse_addr(advertise)
        if not 0 <= port < 65536:
            raise ValueError(f"port out of range: {port}")
        if max_frame < _HELLO_MAX:
            raise ValueError(f"max_frame must be at least {_HELLO_MAX}")
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        if queue_bytes is None:
            queue_bytes = 2 * max_frame
        if queue_bytes < max_frame:
            raise ValueError("queue_bytes must be at least max_frame")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self.node_id = node_id
        self.cluster = cluster
        self._key = key
        self.bind_host = bind_host
        self.port = port
        self.advertise = advertise
        self._on_frame = on_frame
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
        self.stats = TransportStats()
        self._server: asyncio.Server | None = None
        self._outbound: dict[str, _Outbound] = {}
        self._inbound: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._pending_handshakes = 0
        self._pending_by_source: dict[str, int] = {}
        self._throttle = _WarnThrottle(WARN_INTERVAL, self.stats)
        self._state = "new"  # new -> running -> stopped
        self._rng = random.Random()

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
        log.info("listening on %s", _fmt_addr(self._server.sockets[0].getsockname()))

    async def stop(self) -> None:
        """Close the listener and every connection; discard queues; wait for all tasks."""
        if self._state == "stopped":
            return
        self._state = "stopped"
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

    def send(self, addr: str, obj: object) -> bool:
        """Queue ``obj`` for the agent at ``addr`` (``host:port``); never blocks.

        Returns False when the frame is dropped: the queue for ``addr`` is full
        (``queue_limit`` frames or ``queue_bytes`` bytes; the new frame is the one dropped),
        the frame exceeds ``max_frame``, or the transport is stopped. Raises TypeError for
        a value msgpack cannot encode, ValueError for a malformed address, RuntimeError
        before start().
        """
        if self._state != "running":
            if self._state == "new":
                raise RuntimeError("send() before start()")
            return False
        payload = msgpack.packb(obj, use_bin_type=True)
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
            peer = self._outbound[addr] = _Outbound(addr)
            peer.task = asyncio.get_running_loop().create_task(
                self._run_outbound(peer), name=f"hafleet-transport-out-{addr}"
            )
        if len(peer.queue) >= self.queue_limit or peer.queued_bytes + size > self.queue_bytes:
            self.stats.drops_queue_full += 1
            if not peer.overflowing:
                peer.overflowing = True
                log.warning("send queue for %s is full: dropping new frames", addr)
            return False
        if len(peer.queue) < self.queue_limit // 2:
            peer.overflowing = False  # warn again at the next overflow, not at every drop
        peer.queue.append(payload)
        peer.queued_bytes += size
        peer.wakeup.set()
        return True

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

    async def _run_outbound(self, peer: _Outbound) -> None:
        """Connect while frames wait, write them in order, reconnect with back-off."""
        while True:
            if not peer.queue:
                peer.wakeup.clear()
                await peer.wakeup.wait()
                continue
            try:
                conn = await self._dial(peer.addr)
            except asyncio.CancelledError:
                raise
            except _Refused as e:
                n = peer.discard()
                self.stats.drops_discarded += n
                log.warning("refusing %s: %s; discarded %d queued frames", peer.addr, e, n)
                await self._backoff(peer)
                continue
            except Exception as e:
                self.stats.connect_failures += 1
                level = logging.WARNING if peer.failures == 0 else logging.DEBUG
                log.log(level, "cannot connect to %s: %s", peer.addr, _reason(e))
                await self._backoff(peer)
                continue
            self.stats.connects += 1
            if peer.ever_connected:
                self.stats.reconnects += 1
            peer.ever_connected = True
            peer.conn = conn
            log.info("connected to %s", conn.describe())
            loop = asyncio.get_running_loop()
            since = loop.time()
            try:
                await self._pump(peer, conn)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._count(e, authenticated=True)
                log.warning("closing connection to %s: %s", conn.describe(), _reason(e))
            finally:
                peer.conn = None
                await _abort(conn)
            # A connection that lived a while starts the back-off afresh; one that died at
            # once (a peer that closes right after the hellos) keeps escalating it.
            if loop.time() - since >= self.backoff_max:
                peer.failures = 0
            await self._backoff(peer)

    async def _backoff(self, peer: _Outbound) -> None:
        delay = min(self.backoff_max, self.backoff_initial * 2 ** min(peer.failures, 30))
        peer.failures += 1
        await asyncio.sleep(delay * (0.5 + 0.5 * self._rng.random()))

    async def _dial(self, addr: str) -> _Conn:
        host, port = parse_addr(addr)
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(host, port)
        conn = _Conn(reader, writer, _fmt_addr(writer.get_extra_info("peername")))
        try:
            _tune(writer)
            async with asyncio.timeout(self.handshake_timeout):
                await self._client_handshake(conn)
        except BaseException as e:
            if not isinstance(e, asyncio.CancelledError):
                self._count(e, authenticated=conn.session is not None)
            await _abort(conn)
            raise
        return conn

    async def _client_handshake(self, conn: _Conn) -> None:
        nonce_c = secrets.token_bytes(NONCE_LEN)
        conn.writer.write(_frame(PROTOCOL + nonce_c))
        body = await _read_frame(conn.reader, _HANDSHAKE_MAX, "the server's handshake")
        if len(body) != len(PROTOCOL) + NONCE_LEN + TAG_LEN or not body.startswith(PROTOCOL):
            raise _AuthError(f"the server does not speak {PROTOCOL.decode()}")
        nonce_s = body[len(PROTOCOL) : len(PROTOCOL) + NONCE_LEN]
        if not hmac.compare_digest(body[-TAG_LEN:], self._proof(b" server", nonce_c, nonce_s)):
            raise _AuthError("the server failed to prove the cluster key")
        conn.session = _Session(self._session_key(nonce_c, nonce_s), client=True)
        conn.writer.write(_frame(self._proof(b" client", nonce_c, nonce_s)))
        conn.writer.write(conn.session.seal(self._hello()))
        body = await _read_frame(conn.reader, _HELLO_MAX, "the server's hello (refused?)")
        conn.peer = self._check_hello(conn, body, outbound=True)

    async def _pump(self, peer: _Outbound, conn: _Conn) -> None:
        """Write queued frames until the connection fails; its reader watches for EOF."""
        reader_task = asyncio.get_running_loop().create_task(self._read_loop(conn))
        reader_task.add_done_callback(lambda _t: peer.wakeup.set())
        assert conn.session is not None
        writer = conn.writer
        try:
            while True:
                if reader_task.done():
                    reader_task.result()  # raises the reason
                    raise _Closed("connection closed by the peer")
                if not peer.queue:
                    peer.wakeup.clear()
                    await peer.wakeup.wait()
                    continue
                batch: list[bytes] = []
                batch_bytes = 0
                while peer.queue and batch_bytes < _BATCH_BYTES:
                    payload = peer.queue.popleft()
                    peer.queued_bytes -= len(payload)
                    frame = conn.session.seal(payload)
                    batch.append(frame)
                    batch_bytes += len(frame)
                writer.writelines(batch)
                self.stats.frames_sent += len(batch)
                self.stats.bytes_sent += batch_bytes
                await self._drain(conn)
        finally:
            reader_task.cancel()
            await asyncio.gather(reader_task, return_exceptions=True)

    async def _drain(self, conn: _Conn) -> None:
        """Wait for the socket buffer to drain; a peer that reads nothing is cut off."""
        transport = conn.writer.transport
        last = transport.get_write_buffer_size()
        while True:
            try:
                async with asyncio.timeout(self.write_timeout):
                    await conn.writer.drain()
                return
            except TimeoutError:
                size = transport.get_write_buffer_size()
                if size >= last:
                    raise _ProtocolError(
                        f"peer stopped reading: no progress for {self.write_timeout:g}s "
                        f"with {size} bytes unsent"
                    ) from None
                last = size

    # ---- inbound ---------------------------------------------------------------------------

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called synchronously for each accepted socket, so stop() sees every task.

        A connection counts as pending until its handshake and hellos are done. One source
        address may have MAX_PENDING_PER_SOURCE of them, all sources together 128; past
        either limit the connection is closed at once. So a flood from one address cannot
        take the slots a real peer needs, and a silent connection holds its slot at most
        FIRST_FRAME_TIMEOUT.
        """
        if self._state != "running":
            writer.transport.abort()
            return
        source = _source(writer)
        mine = self._pending_by_source.get(source, 0)
        if mine >= MAX_PENDING_PER_SOURCE or self._pending_handshakes >= _MAX_PENDING_HANDSHAKES:
            self.stats.handshakes_refused += 1
            self._throttle.warn(
                source,
                "refusing a connection from %s: %d of its connections and %d in all are in "
                "the handshake (limits %d and %d)",
                source,
                mine,
                self._pending_handshakes,
                MAX_PENDING_PER_SOURCE,
                _MAX_PENDING_HANDSHAKES,
            )
            writer.transport.abort()
            return
        self._pending_handshakes += 1
        self._pending_by_source[source] = mine + 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, source))
        self._inbound[task] = writer
        task.add_done_callback(lambda t: self._inbound.pop(t, None))

    def _handshake_done(self, source: str) -> None:
        self._pending_handshakes -= 1
        left = self._pending_by_source.get(source, 1) - 1
        if left > 0:
            self._pending_by_source[source] = left
        else:
            self._pending_by_source.pop(source, None)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str
    ) -> None:
        conn = _Conn(reader, writer, _fmt_addr(writer.get_extra_info("peername")))
        try:
            try:
                _tune(writer)
                async with asyncio.timeout(self.handshake_timeout):
                    await self._server_handshake(conn)
            finally:
                self._handshake_done(source)
            self.stats.inbound_accepted += 1
            log.debug("accepted %s", conn.describe())
            await self._read_loop(conn)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._count(e, authenticated=conn.session is not None)
            if conn.peer is None and isinstance(e, TimeoutError):
                reason = "handshake timed out"
            elif isinstance(e, _Closed | OSError):
                reason = _reason(e)
            else:  # a bug here, not the peer's fault: say so loudly, but keep serving
                log.exception("internal error on the connection from %s", conn.describe())
                reason = "internal error"
            self._throttle.warn(
                source,
                "closing connection from %s: %s",
                conn.describe(),
                reason,
                kind=_reason_kind(reason),
            )
        finally:
            await _abort(conn)

    async def _server_handshake(self, conn: _Conn) -> None:
        async with asyncio.timeout(min(FIRST_FRAME_TIMEOUT, self.handshake_timeout)):
            body = await _read_frame(conn.reader, _HANDSHAKE_MAX, "the client's handshake")
        if len(body) != len(PROTOCOL) + NONCE_LEN or not body.startswith(PROTOCOL):
            raise _AuthError(f"the client does not speak {PROTOCOL.decode()}")
        nonce_c = body[len(PROTOCOL) :]
        nonce_s = secrets.token_bytes(NONCE_LEN)
        conn.writer.write(_frame(PROTOCOL + nonce_s + self._proof(b" server", nonce_c, nonce_s)))
        body = await _read_frame(conn.reader, _HANDSHAKE_MAX, "the client's proof")
        if not hmac.compare_digest(body, self._proof(b" client", nonce_c, nonce_s)):
            raise _AuthError("the client failed to prove the cluster key")
        conn.session = _Session(self._session_key(nonce_c, nonce_s), client=False)
        body = await _read_frame(conn.reader, _HELLO_MAX, "the client's hello")
        conn.peer = self._check_hello(conn, body, outbound=False)
        conn.writer.write(conn.session.seal(self._hello()))

    # ---- shared ----------------------------------------------------------------------------

    async def _read_loop(self, conn: _Conn) -> None:
        """Deliver authenticated frames until EOF (returns) or a violation (raises)."""
        assert conn.session is not None and conn.peer is not None
        session, peer, reader, stats = conn.session, conn.peer, conn.reader, self.stats
        while True:
            try:
                body = await _read_frame(reader, self.max_frame, "a frame")
            except _Closed as e:
                if type(e) is _Closed:  # a clean end of stream between frames
                    log.debug("%s closed the connection", conn.describe())
                    return
                raise
            payload = session.open(body)
            obj = _unpack(payload)
            stats.frames_received += 1
            stats.bytes_received += 4 + len(body)
            try:
                self._on_frame(peer, obj)
            except Exception:
                stats.callback_errors += 1
                log.exception("on_frame failed for a frame from %s", conn.describe())

    def _proof(self, label: bytes, nonce_c: bytes, nonce_s: bytes) -> bytes:
        return hmac.digest(self._key, PROTOCOL + label + nonce_c + nonce_s, "sha256")

    def _session_key(self, nonce_c: bytes, nonce_s: bytes) -> bytes:
        return hmac.digest(self._key, PROTOCOL + nonce_c + nonce_s, "sha256")

    def _hello(self) -> bytes:
        cluster_id = self._cluster_id()
        assert self.advertise is not None  # set at the latest by start()
        return msgpack.packb(
            {
                "node_id": self.node_id,
                "cluster": self.cluster,
                "cluster_id": cluster_id,
                "addr": self.advertise,
            }
        )

    def _check_hello(self, conn: _Conn, body: bytes, *, outbound: bool) -> PeerInfo:
        assert conn.session is not None
        hello = _unpack(conn.session.open(body))
        if not isinstance(hello, dict) or any(k not in hello for k in _HELLO_KEYS):
            raise _ProtocolError("malformed hello")
        node_id, cluster, cluster_id, addr = (hello[k] for k in _HELLO_KEYS)
        if not (_valid_id(node_id) and _valid_id(cluster) and _valid_id(cluster_id, optional=True)):
            raise _ProtocolError("malformed hello")
        try:
            parse_addr(addr)
        except ValueError:
            raise _ProtocolError("malformed hello: bad addr") from None
        peer = PeerInfo(node_id, cluster, cluster_id, addr, conn.remote, outbound)
        conn.peer = peer
        if node_id == self.node_id:
            raise _Refused("the peer claims our own node id")
        try:
            accepted = self._accept_peer(peer)
        except Exception:
            log.exception("accept_peer failed for %s; refusing it", conn.describe())
            accepted = False
        if not accepted:
            raise _Refused(
                f"accept_peer refused node {node_id!r} "
                f"(cluster {cluster!r}, cluster id {cluster_id!r}, addr {addr})"
            )
        return peer

    def _count(self, e: BaseException, *, authenticated: bool) -> None:
        if not authenticated and not isinstance(e, _Refused):
            self.stats.auth_failures += 1  # the handshake did not complete, for any reason
        elif isinstance(e, _AuthError):
            self.stats.auth_failures += 1
        elif isinstance(e, _Refused):
            self.stats.peers_refused += 1
        elif isinstance(e, _ProtocolError):
            self.stats.protocol_errors += 1


def _source(writer: asyncio.StreamWriter) -> str:
    """The remote address (without the port) of an accepted connection."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _reason(e: BaseException) -> str:
    if isinstance(e, _Closed):
        return str(e)
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _tune(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


async def _abort(conn: _Conn) -> None:
    """Drop the connection now (unsent bytes included) and wait until the socket is closed."""
    conn.writer.transport.abort()
    try:
        await conn.writer.wait_closed()
    except Exception:  # the reason was logged already; the socket is closed either way
        pass
