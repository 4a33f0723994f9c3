"""The listening side of :class:`.transport.Transport`: accepted connections.

:class:`Listener` is mixed into ``Transport``: it takes each accepted socket (or refuses it at
once past the pending-handshake limits, per source address and in all), runs the listener's
side of mutual TLS and of the HMAC handshake within ``handshake_timeout`` (the first frame
within FIRST_FRAME_TIMEOUT), then hands the connection to ``Transport.read_loop``. A failed
connection is counted and logged through the transport's warning throttle, by kind of reason
(:func:`_reason_kind`). The dialing side and what both share stay in :mod:`.transport`.
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
MAX_PENDING_PER_SOURCE = 16
"""Connections one source address may have in the handshake at once; more are refused.

An honest host has one connection a peer agent on it in the handshake at a time, at worst;
16 leaves room for a lab that runs up to 16 agents on one host (they all dial from
127.0.0.1), and still takes 8 flooding addresses to fill the 128 slots."""
FIRST_FRAME_TIMEOUT = 2.0
"""How long an accepted connection may take to send its first handshake frame."""


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


class Listener:
    """The accepting half of :class:`.transport.Transport`, which sets these attributes up
    and provides ``read_loop``, ``count_failure``, ``_hello`` and ``_check_hello``."""

    _key: bytes
    _state: str
    _inbound: dict[asyncio.Task[None], asyncio.StreamWriter]
    _pending_handshakes: int
    _pending_by_source: dict[str, int]
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
        conn = Conn(reader, writer, fmt_addr(writer.get_extra_info("peername")))
        reading = False  # the handshake is done: the peer's frames are being read
        try:
            try:
                tune(writer, self.user_timeout)
                async with asyncio.timeout(self.handshake_timeout):
                    if self.tls is not None:
                        await self._start_tls(conn, self.tls)
                    await self._server_handshake(conn)
            finally:
                self._handshake_done(source)
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
        try:
            await conn.writer.start_tls(tls.peer_server)
        except ssl.SSLError as e:
            raise TLSFailed(f"TLS handshake failed: {tls_reason(e)}") from None
        except ConnectionError as e:
            raise TLSFailed(f"TLS handshake failed: {reason(e)}") from None
        from .tls import peer_node_id  # loaded already: the config made ``tls``

        conn.cert_id = peer_node_id(conn.writer.get_extra_info("peercert"))

    async def _server_handshake(self, conn: Conn) -> None:
        async with asyncio.timeout(min(FIRST_FRAME_TIMEOUT, self.handshake_timeout)):
            body = await read_frame(conn.reader, HANDSHAKE_MAX, "the client's handshake")
        key, nonce_c, nonce_s = self._key, check_opening(body), new_nonce()
        conn.writer.write(frame(server_proof(key, nonce_c, nonce_s)))
        try:
            body = await read_frame(conn.reader, HANDSHAKE_MAX, "the client's proof")
        except Closed:  # it checked our proof and gave up (it logs why, in its own words)
            raise Closed(
                "the peer closed the connection instead of proving the cluster key: its key "
                "likely differs from ours (compare the key files, --key-file or key_file)"
            ) from None
        check_client_proof(key, nonce_c, nonce_s, body)
        conn.session = Session.after_handshake(key, nonce_c, nonce_s, client=False)
        body = await read_frame(conn.reader, HELLO_MAX, "the client's hello")
        conn.peer = self._check_hello(conn, body, outbound=False)
        conn.writer.write(conn.session.seal(self._hello()))


def _source(writer: asyncio.StreamWriter) -> str:
    """The remote address (without the port) of an accepted connection."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)
