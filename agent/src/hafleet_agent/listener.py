"""The listening side of :class:`.transport.Transport`: accepted connections.

:class:`Listener` is mixed into ``Transport``: it takes each accepted socket (or refuses it at
once past the pending-handshake limits), runs the listener's side of mutual TLS and of the HMAC
handshake within ``handshake_timeout`` (the TLS handshake and the first frame within
FIRST_FRAME_TIMEOUT of the accept), then hands the connection to ``Transport.read_loop``. A
failed connection is counted and logged through the transport's warning throttle, by kind of
reason (:func:`_reason_kind`). The dialing side and what both share stay in :mod:`.transport`.

Connections in the handshake are bounded so that no one without the cluster key can keep
the group's members from connecting (docs/transport.md, *Limits before authentication*):

- a connection from a member's host (``is_member_host``, the hosts of the members' Raft
  addresses, or a source that completed a handshake lately) is never refused for the bound
  on all others: at most MAX_PENDING_PER_MEMBER_HOST from one such host, 512 in all;
- any other source may have MAX_PENDING_PER_SOURCE connections in the handshake, and all
  of them together 128; when the 128 are taken, a new connection evicts the oldest of
  those that have not proved the key, from the source that has the most of them, rather
  than being refused: a flood that keeps the slots busy cannot keep a joiner out.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .connection import (
    Conn,
    PeerInfo,
    TLSFailed,
    TransportStats,
    abort,
    fmt_addr,
    read_frame,
    reason,
    tls_reason,
    tune,
)
from .throttle import WarnThrottle
from .wire import (
    HANDSHAKE_MAX,
    HELLO_MAX,
    AuthError,
    Closed,
    Session,
    check_client_proof,
    check_opening,
    frame,
    new_nonce,
    server_proof,
)

if TYPE_CHECKING:  # .tls: loaded only by an agent with TLS (the config makes its contexts)
    from .tls import TLSConfig

log = logging.getLogger("hafleet.transport")

_MAX_PENDING_HANDSHAKES = 128
"""Connections in the handshake from sources that are not members' hosts, all together: past
it a new one evicts one of them that has not proved the key (or is refused, if none)."""
MAX_PENDING_PER_SOURCE = 16
"""Connections one source address may have in the handshake at once; more are refused.

An honest host has one connection a peer agent on it in the handshake at a time, at worst;
16 leaves room for a lab that runs up to 16 agents on one host (they all dial from
127.0.0.1)."""
MAX_PENDING_PER_MEMBER_HOST = 32
"""The same for the host of a member: twice as many (its agents' redials after a restart
while the old connections' handshakes time out)."""
_MAX_PENDING_MEMBERS = 512
"""Connections in the handshake from members' hosts, all together (they are never evicted):
with the 128 others, the bound on the memory and the file descriptors of the handshakes."""
_MAX_VERIFIED_SOURCES = 256
"""Source addresses remembered as a member's because a connection from there completed the
handshake and was accepted (the source of a member's connection need not be the host of
its Raft address: all agents of a loopback lab dial from 127.0.0.1); the least recent goes."""
FIRST_FRAME_TIMEOUT = 2.0
"""How long an accepted connection may take from the accept to its verified first handshake
frame, the TLS handshake included."""


def _reason_kind(reason: str) -> str:
    """The kind of a closing reason for the warning throttle: its text up to the first
    colon, digits left out ("replayed or reordered frame: counter 87, expected 88" and
    "... counter 90, expected 91" are one kind). The reasons are the transport's own texts (and
    OSError's), so the kinds are few."""
    # A failed TLS handshake's kind is its reason too (OpenSSL's few fixed texts): another
    # CA, an expired certificate, no TLS at all are different failures.
    head = (
        ":".join(reason.split(":", 3)[:3]) if reason.startswith("TLS") else reason.split(":", 1)[0]
    )
    return "".join(ch for ch in head if not ch.isdigit())[:80]


class _Pending:
    """One accepted connection in the handshake, until it is done (or evicted)."""

    __slots__ = ("source", "member", "writer", "task", "since", "done")

    def __init__(self, source: str, member: bool, writer: asyncio.StreamWriter) -> None:
        self.source = source
        self.member = member
        self.writer = writer
        self.task: asyncio.Task[None] | None = None
        self.since = asyncio.get_running_loop().time()
        self.done = False


class Listener:
    """The accepting half of :class:`.transport.Transport`, which sets these attributes up
    (``_init_listener``) and provides ``read_loop``, ``count_failure``, ``_hello`` and
    ``_check_hello``."""

    _key: bytes
    _state: str
    _inbound: dict[asyncio.Task[None], asyncio.StreamWriter]
    _throttle: WarnThrottle
    stats: TransportStats
    handshake_timeout: float
    user_timeout: float | None
    tls: TLSConfig | None
    read_loop: Any
    _on_closed: Callable[[PeerInfo], None] | None
    count_failure: Any
    _hello: Any
    _check_hello: Any

    def _init_listener(self, is_member_host: Callable[[str], bool] | None) -> None:
        self.is_member_host = is_member_host
        """``is_member_host(ip)``: whether ``ip`` is the host of a member's Raft address
        (the node sets it, node/outbox.py); asked for every accepted connection, so cheap."""
        self._pending_handshakes = 0  # all connections in the handshake
        self._pending_by_source: dict[str, int] = {}
        self._pending_members = 0  # of those, from members' hosts
        # The others that have not proved the key, by source, each in the order accepted.
        self._evictable: dict[str, dict[_Pending, None]] = {}
        self._verified: dict[str, None] = {}  # sources that completed a handshake, LRU

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called synchronously for each accepted socket, so stop() sees every task.

        A connection counts as pending until its handshake and hellos are done. From a
        member's host it is refused only past MAX_PENDING_PER_MEMBER_HOST from that host (or
        512 from all members' hosts); from any other source past MAX_PENDING_PER_SOURCE,
        and past 128 in all it takes the place of one that has not proved the key yet
        (:meth:`_evict_one`). A connection must complete TLS and send its first frame
        within FIRST_FRAME_TIMEOUT.
        """
        if self._state != "running":
            writer.transport.abort()
            return
        source = _source(writer)
        mine = self._pending_by_source.get(source, 0)
        member = self._from_member(source)
        if member:
            full = (
                mine >= MAX_PENDING_PER_MEMBER_HOST or self._pending_members >= _MAX_PENDING_MEMBERS
            )
        else:
            full = mine >= MAX_PENDING_PER_SOURCE or (
                self._pending_handshakes - self._pending_members >= _MAX_PENDING_HANDSHAKES
                and not self._evict_one()
            )
        if full:
            self.stats.handshakes_refused += 1
            self._throttle.warn(
                source,
                "refusing a connection from %s%s: %d of its connections and %d in all are "
                "in the handshake (limits %d a source, %d in all)",
                source,
                " (a member's host)" if member else "",
                mine,
                self._pending_handshakes,
                MAX_PENDING_PER_MEMBER_HOST if member else MAX_PENDING_PER_SOURCE,
                _MAX_PENDING_MEMBERS if member else _MAX_PENDING_HANDSHAKES,
            )
            writer.transport.abort()
            return
        p = _Pending(source, member, writer)
        self._pending_handshakes += 1
        self._pending_by_source[source] = mine + 1
        if member:
            self._pending_members += 1
        else:
            self._evictable.setdefault(source, {})[p] = None
        task = p.task = asyncio.get_running_loop().create_task(self._serve(reader, writer, p))
        self._inbound[task] = writer
        task.add_done_callback(lambda t: self._inbound.pop(t, None))

    def _from_member(self, source: str) -> bool:
        if source in self._verified:
            return True
        ask = self.is_member_host
        if ask is None:
            return False
        try:
            return bool(ask(source))
        except Exception:
            self.stats.callback_errors += 1
            log.exception("is_member_host failed for %s; taking it for another source", source)
            return False

    def _evict_one(self) -> bool:
        """Close the oldest connection that has not proved the key, of the source (not a
        member's host) that has the most such connections in the handshake; False when
        there is none. A flood from a few addresses then evicts its own connections, and a
        joiner's one connection goes last."""
        victims: dict[_Pending, None] | None = None
        for conns in self._evictable.values():
            if (
                victims is None
                or len(conns) > len(victims)
                or (
                    len(conns) == len(victims)
                    and next(iter(conns)).since < next(iter(victims)).since
                )
            ):
                victims = conns
        if victims is None:
            return False
        p = next(iter(victims))
        self._handshake_done(p)
        self.stats.handshakes_evicted += 1
        self._throttle.warn(
            p.source,
            "evicting a connection from %s from the handshake: its %d handshake slots for "
            "sources that are not members' hosts are taken",
            p.source,
            _MAX_PENDING_HANDSHAKES,
            kind="evicted",
        )
        p.writer.transport.abort()  # (a task that never ran would not close it)
        if p.task is not None:
            p.task.cancel()
        return True

    def _proved(self, p: _Pending) -> None:
        """``p`` proved the cluster key: it may finish its handshake, never evicted."""
        conns = self._evictable.get(p.source)
        if conns is not None and p in conns:
            del conns[p]
            if not conns:
                del self._evictable[p.source]

    def _handshake_done(self, p: _Pending) -> None:
        if p.done:
            return
        p.done = True
        self._proved(p)
        self._pending_handshakes -= 1
        if p.member:
            self._pending_members -= 1
        left = self._pending_by_source.get(p.source, 1) - 1
        if left > 0:
            self._pending_by_source[p.source] = left
        else:
            self._pending_by_source.pop(p.source, None)

    def _verified_source(self, source: str) -> None:
        """A connection from ``source`` completed the handshake and was accepted: its
        later connections count as a member's (``_MAX_VERIFIED_SOURCES`` remembered)."""
        verified = self._verified
        verified.pop(source, None)
        verified[source] = None
        if len(verified) > _MAX_VERIFIED_SOURCES:
            del verified[next(iter(verified))]

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, p: _Pending
    ) -> None:
        conn = Conn(reader, writer, fmt_addr(writer.get_extra_info("peername")))
        source = p.source
        reading = False  # the handshake is done: the peer's frames are being read
        try:
            try:
                tune(writer, self.user_timeout)
                async with asyncio.timeout(self.handshake_timeout):
                    await self._server_handshake(conn, p)
            finally:
                self._handshake_done(p)
            self._verified_source(source)
            self.stats.inbound_accepted += 1
            log.debug("accepted %s", conn.describe())
            reading = True
            await self.read_loop(conn)
            self._closed(conn)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if reading and not isinstance(e, AuthError):
                # it broke (a reset, a frame cut short): the peer may be gone. A frame that
                # fails its tag or counter (tampered, replayed, injected by whoever sits on
                # the path) says nothing of the peer's life: we closed that one ourselves.
                self._closed(conn)
            self.count_failure(e, authenticated=conn.session is not None)
            if conn.peer is None and isinstance(e, TimeoutError):
                why = "handshake timed out"
            elif isinstance(e, Closed | OSError):
                why = reason(e)
            else:  # a bug here, not the peer's fault: say so loudly, but keep serving
                log.exception("internal error on the connection from %s", conn.describe())
                why = "internal error"
            self._throttle.warn(
                source,
                "closing connection from %s: %s",
                conn.describe(),
                why,
                kind=_reason_kind(why),
            )
        finally:
            await abort(conn)

    def _closed(self, conn: Conn) -> None:
        """The authenticated connection ``conn`` ended (its peer closed it, or it broke; not
        one we closed for a frame that failed authentication): tell
        ``on_peer_closed`` (the node: its leader may be gone). Not when we stop: stop()
        cancels the reading tasks, and a cancelled one does not come here."""
        if self._on_closed is None or conn.peer is None:
            return
        try:
            self._on_closed(conn.peer)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("on_peer_closed failed for %s", conn.describe())

    async def _start_tls(self, conn: Conn, tls: TLSConfig) -> None:
        """The listener's side of mutual TLS on an accepted connection; TLSFailed (with the
        TLS library's reason: no certificate, another CA, expired ...) when it fails."""
        conn.upgrading = True  # until start_tls returns (see Conn.upgrading)
        try:
            await conn.writer.start_tls(tls.peer_server)
            conn.upgrading = False
        except ssl.SSLError as e:
            raise TLSFailed(f"TLS handshake failed: {tls_reason(e)}") from None
        except ConnectionError as e:
            raise TLSFailed(f"TLS handshake failed: {reason(e)}") from None
        from .tls import peer_node_id  # loaded already: the config made ``tls``

        conn.cert_id = peer_node_id(conn.writer.get_extra_info("peercert"))

    async def _server_handshake(self, conn: Conn, p: _Pending) -> None:
        # One deadline from the accept to the verified opening: TLS first, if any, then the
        # client's first frame. (Before, the TLS handshake had the whole handshake_timeout.)
        async with asyncio.timeout(min(FIRST_FRAME_TIMEOUT, self.handshake_timeout)):
            if self.tls is not None:
                await self._start_tls(conn, self.tls)
            body = await read_frame(conn.reader, HANDSHAKE_MAX, "the client's handshake")
            nonce_c = check_opening(body)
        key, nonce_s = self._key, new_nonce()
        conn.writer.write(frame(server_proof(key, nonce_c, nonce_s)))
        try:
            body = await read_frame(conn.reader, HANDSHAKE_MAX, "the client's proof")
        except Closed:  # it checked our proof and gave up (it logs why, in its own words)
            raise Closed(
                "the peer closed the connection instead of proving the cluster key: its key "
                "likely differs from ours (compare the key files, --key-file or key_file)"
            ) from None
        check_client_proof(key, nonce_c, nonce_s, body)
        self._proved(p)
        conn.session = Session.after_handshake(key, nonce_c, nonce_s, client=False)
        body = await read_frame(conn.reader, HELLO_MAX, "the client's hello")
        conn.peer = self._check_hello(conn, body, outbound=False)
        conn.writer.write(conn.session.seal(self._hello()))


def _source(writer: asyncio.StreamWriter) -> str:
    """The remote address (without the port) of an accepted connection; an IPv4 address
    mapped into IPv6 (a listener on ``::``) as the IPv4 address."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        host = str(peer[0])
        return host[7:] if host.startswith("::ffff:") and "." in host else host
    return str(peer)
