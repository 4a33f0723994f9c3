"""The agents' wire format, sans I/O: framing, the handshake, sealed frames, payloads.

A payload is unpacked by :mod:`hafleet_agent.payload` and every error is one of
:mod:`hafleet_agent.wireerrors`; both are named here as well (``wire.unpack_payload``,
``wire.Closed``), the one place the transport takes them from.

Nothing here reads or writes a socket, sleeps or knows asyncio: these are the bytes
:mod:`hafleet_agent.transport` puts on a connection and the checks it applies to the bytes
it reads (tests/agent/transport/test_wire.py holds this module to that). docs/transport.md
explains the choices; this docstring is the wire specification.

Framing
    Every frame on the wire, before and after authentication, is ``length u32 BE | body``
    (:func:`frame`, :class:`FrameDecoder`). A body longer than the limit closes the
    connection as soon as its length header is in (the body is not waited for):
    HANDSHAKE_MAX (128) bytes for the handshake frames, HELLO_MAX (4 KiB) for the hellos,
    ``max_frame`` (default 64 MiB) afterwards.

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

Authenticated frames (:class:`Session`)
    ``body = counter u64 BE | payload | tag``, ``tag = H(S, dir | counter | payload)``
    where ``dir`` is one byte, 1 for client -> server and 2 for server -> client. The
    counter starts at 0 in each direction and goes up by exactly one a frame. The
    receiver checks the tag first (a bad tag: tampered, truncated or from another
    connection, whose session key differs), then the counter (a good tag with the wrong
    counter: replayed or reordered). ``payload`` is one msgpack value
    (:func:`unpack_payload`).

Hellos (:func:`hello_payload`, :func:`parse_hello`, :func:`parse_hello_caps`)
    The first authenticated frame in each direction (counter 0) is a hello, a msgpack map
    ``{"node_id": str, "cluster": str, "cluster_id": str | None, "addr": "host:port"}``
    (``addr``: the sender's advertised Raft address), and since batching a key ``"caps"``:
    a list of the capabilities the sender understands (older agents send no such key and
    ignore it: unknown keys are ignored). The client sends its hello right
    after its proof; the server reads it, asks ``accept_peer`` and answers with its own
    hello only if accepted (else it closes); the client then asks its own
    ``accept_peer`` about the server's hello before it sends anything else. Every later
    frame is delivered to ``on_frame``. Servers send nothing after their hello.

Batches (capability ``"batch"``, :func:`batch_payload`, :func:`split_batch`)
    When both hellos list ``"batch"``, every authenticated frame after them (client ->
    server) carries a batch: its payload is one or more records ``length u32 BE | msgpack
    value``, each value one message for ``on_frame``, in order. The frame is sealed once (one
    counter, one tag), so replay and reordering protection are the frame's; a batch with no
    record, or a record that overruns the payload, is a ProtocolError. Otherwise (an older
    peer on either side) each message is its own frame, as before.

A violation raises :class:`Closed` (its subclasses :class:`AuthError` and
:class:`ProtocolError`); its message is the reason the transport logs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any, NoReturn

import msgpack

from .addr import split_host_port
from .payload import MAX_PAYLOAD_DEPTH, MAX_PAYLOAD_ITEMS, unpack_payload
from .wireerrors import AuthError, Closed, ProtocolError

__all__ = [
    "COUNTER_LEN",
    "FRAME_OVERHEAD",
    "HANDSHAKE_MAX",
    "HELLO_MAX",
    "MAX_PAYLOAD_DEPTH",
    "MAX_PAYLOAD_ITEMS",
    "BATCH_CAP",
    "MIN_KEY_LEN",
    "NONCE_LEN",
    "PROTOCOL",
    "RECORD_OVERHEAD",
    "TAG_LEN",
    "AuthError",
    "Closed",
    "FrameDecoder",
    "ProtocolError",
    "Session",
    "batch_payload",
    "check_opening",
    "check_client_proof",
    "check_server_proof",
    "opening",
    "client_proof",
    "frame",
    "hello_payload",
    "new_nonce",
    "parse_addr",
    "parse_hello",
    "parse_hello_caps",
    "server_proof",
    "split_batch",
    "unpack_payload",
    "valid_id",
]

PROTOCOL = b"hafleet/v1"
MIN_KEY_LEN = 32
NONCE_LEN = 32
TAG_LEN = 32
COUNTER_LEN = 8
FRAME_OVERHEAD = 4 + COUNTER_LEN + TAG_LEN
"""Bytes a payload gains on the wire: the length header, the counter and the tag."""
HANDSHAKE_MAX = 128
"""The longest body of a handshake frame (steps 1-3)."""
HELLO_MAX = 4096
"""The longest body of a hello frame."""

_MAX_ID_BYTES = 255
_DIR_C2S = b"\x01"
_DIR_S2C = b"\x02"
_HELLO_KEYS = ("node_id", "cluster", "cluster_id", "addr")
_MAX_CAPS = 32  # capabilities a hello may list (more: the list is ignored)
BATCH_CAP = "batch"
"""The capability of a peer that reads batches (several messages in one sealed frame)."""
RECORD_OVERHEAD = 4
"""Bytes a message gains in a batch: its record's length header."""


def parse_addr(addr: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port`` into ``(host, port)``; ValueError if malformed."""
    if not isinstance(addr, str):
        raise ValueError(f"address must be a str, not {type(addr).__name__}")
    raw_host = addr.rpartition(":")[0]
    if ":" in raw_host and not (raw_host.startswith("[") and raw_host.endswith("]")):
        raise ValueError(f"IPv6 address must be bracketed: {addr!r}")
    return split_host_port(addr)


def valid_id(v: object, *, optional: bool = False) -> bool:
    """A node id or cluster name (or id) a hello may carry: a str of 1 to 255 bytes."""
    if v is None:
        return optional
    return isinstance(v, str) and 0 < len(v.encode("utf-8", "replace")) <= _MAX_ID_BYTES


# ---- framing --------------------------------------------------------------------------------


def frame(body: bytes) -> bytes:
    """``body`` with its length header."""
    return len(body).to_bytes(4, "big") + body


class FrameDecoder:
    """Splits a byte stream into frame bodies of at most ``limit`` bytes.

    :meth:`feed` takes bytes in chunks of any size; :meth:`next_frame` returns the next
    whole body (or None until one is complete) and raises :class:`ProtocolError` as soon
    as a length header exceeds ``limit`` (which the caller may change between frames);
    :meth:`end` says what the end of the stream means here. :meth:`wanted` is how many
    more bytes the next step needs, so a reader that feeds exactly that never reads past
    the frame it is after. ``what`` names the frame in the reasons.
    """

    __slots__ = ("limit", "what", "_buf", "_pos", "_more", "_have", "_length")

    def __init__(self, limit: int, what: str = "a frame") -> None:
        self.limit = limit
        self.what = what
        self._buf = b""  # the bytes being parsed, from _pos on
        self._pos = 0
        self._more: list[bytes] = []  # chunks fed after _buf
        self._have = 0  # bytes fed and not yet taken
        self._length: int | None = None  # the current body's length, once its header is read

    def buffered(self) -> int:
        """Bytes fed and not yet returned (the current frame's header excluded once read)."""
        return self._have

    def wanted(self) -> int:
        """How many more bytes the current header or body needs (0: call next_frame)."""
        need = (4 if self._length is None else self._length) - self._have
        return need if need > 0 else 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            chunk = bytes(data)  # a bytes object is kept as it is, not copied
            self._more.append(chunk)
            self._have += len(chunk)

    def _take(self, n: int) -> bytes:
        pos, buf = self._pos, self._buf
        end = pos + n
        if end > len(buf):  # join what is left with what came since
            more = self._more
            if pos < len(buf):
                more.insert(0, buf[pos:])
            buf = self._buf = more[0] if len(more) == 1 else b"".join(more)  # one: no copy
            self._more = []
            pos, end = 0, n
        self._pos = end
        self._have -= n
        return buf[pos:end]  # the whole buffer is returned as it is, not copied

    def next_frame(self) -> bytes | None:
        """The next whole body, or None; ProtocolError for a length over the limit."""
        n = self._length
        if n is None:
            if self._have < 4:
                return None
            n = int.from_bytes(self._take(4), "big")
            if n > self.limit:
                raise ProtocolError(
                    f"{self.what}: frame of {n} bytes exceeds the limit of {self.limit}"
                )
            self._length = n
        if self._have < n:
            return None
        self._length = None
        return self._take(n)

    def frames(self) -> list[bytes]:
        """Every whole body buffered now, in order (next_frame until it returns None)."""
        out = []
        while (body := self.next_frame()) is not None:
            out.append(body)
        return out

    def end(self) -> NoReturn:
        """The stream ended: always raises. Exactly :class:`Closed` when it ended between
        frames; ProtocolError when it cut a header or a body short."""
        have = self.buffered()
        if self._length is not None:
            raise ProtocolError(
                f"truncated frame: {have} of {self._length} bytes, then end of stream ({self.what})"
            )
        if have:
            raise ProtocolError(f"truncated frame header while reading {self.what}")
        raise Closed(f"connection closed by the peer while reading {self.what}")


# ---- the handshake --------------------------------------------------------------------------


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_LEN)


def _proof(key: bytes, label: bytes, nonce_c: bytes, nonce_s: bytes) -> bytes:
    return hmac.digest(key, PROTOCOL + label + nonce_c + nonce_s, "sha256")


def opening(nonce_c: bytes) -> bytes:
    """Step 1's body."""
    return PROTOCOL + nonce_c


def check_opening(body: bytes) -> bytes:
    """The server's check of step 1; returns ``nonce_c``."""
    if len(body) != len(PROTOCOL) + NONCE_LEN or not body.startswith(PROTOCOL):
        raise AuthError(f"the client does not speak {PROTOCOL.decode()}")
    return body[len(PROTOCOL) :]


def server_proof(key: bytes, nonce_c: bytes, nonce_s: bytes) -> bytes:
    """Step 2's body: the server's nonce and its proof of the key."""
    return PROTOCOL + nonce_s + _proof(key, b" server", nonce_c, nonce_s)


def check_server_proof(key: bytes, nonce_c: bytes, body: bytes) -> bytes:
    """The client's check of step 2; returns ``nonce_s``."""
    if len(body) != len(PROTOCOL) + NONCE_LEN + TAG_LEN or not body.startswith(PROTOCOL):
        raise AuthError(f"the server does not speak {PROTOCOL.decode()}")
    nonce_s = body[len(PROTOCOL) : len(PROTOCOL) + NONCE_LEN]
    if not hmac.compare_digest(body[-TAG_LEN:], _proof(key, b" server", nonce_c, nonce_s)):
        raise AuthError(
            "the server failed to prove the cluster key: its key differs from ours (compare "
            "the key files, --key-file or key_file, of both)"
        )
    return nonce_s


def client_proof(key: bytes, nonce_c: bytes, nonce_s: bytes) -> bytes:
    """Step 3's body."""
    return _proof(key, b" client", nonce_c, nonce_s)


def check_client_proof(key: bytes, nonce_c: bytes, nonce_s: bytes, body: bytes) -> None:
    """The server's check of step 3."""
    if not hmac.compare_digest(body, _proof(key, b" client", nonce_c, nonce_s)):
        raise AuthError("the client failed to prove the cluster key")


# ---- authenticated frames -------------------------------------------------------------------


_SHA256_BLOCK = 64
"""SHA-256's block size in bytes: HMAC pads its key to one block (RFC 2104)."""
_IPAD, _OPAD = 0x36, 0x5C


def _hmac_sha256_pads(key: bytes) -> tuple[Any, Any]:
    """The SHA-256 states after HMAC's inner and outer padded key (RFC 2104): a tag is the
    digest of a copy of ``outer`` fed the digest of a copy of ``inner`` fed the message
    (:meth:`Session._tag`). A key longer than a block is hashed first; a shorter one is
    padded with zeros."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ _IPAD for b in key))
    outer = hashlib.sha256(bytes(b ^ _OPAD for b in key))
    return inner, outer


class Session:
    """Seals and opens the authenticated frames of one connection."""

    __slots__ = ("_inner", "_outer", "_send_dir", "_recv_dir", "send_counter", "recv_counter")

    def __init__(self, session_key: bytes, *, client: bool) -> None:
        self._inner, self._outer = _hmac_sha256_pads(session_key)
        self._send_dir = _DIR_C2S if client else _DIR_S2C
        self._recv_dir = _DIR_S2C if client else _DIR_C2S
        self.send_counter = 0
        self.recv_counter = 0

    @classmethod
    def after_handshake(
        cls, key: bytes, nonce_c: bytes, nonce_s: bytes, *, client: bool
    ) -> Session:
        """The session of a connection whose handshake exchanged these nonces."""
        return cls(hmac.digest(key, PROTOCOL + nonce_c + nonce_s, "sha256"), client=client)

    def _tag(self, direction: bytes, *parts: bytes | memoryview) -> bytes:
        # hmac.digest's tag from copies of the two keyed states, without the MAC OpenSSL 3
        # sets up at each call: half the CPU (docs/benchmarks.md, "eighth session").
        h = self._inner.copy()
        h.update(direction)
        for part in parts:
            h.update(part)
        outer = self._outer.copy()
        outer.update(h.digest())
        return outer.digest()

    def seal(self, payload: bytes) -> bytes:
        """The next frame of ``payload``, length header included."""
        counter = self.send_counter.to_bytes(COUNTER_LEN, "big")
        self.send_counter += 1
        tag = self._tag(self._send_dir, counter, payload)
        body_len = COUNTER_LEN + len(payload) + TAG_LEN
        return b"".join((body_len.to_bytes(4, "big"), counter, payload, tag))

    def open(self, body: bytes) -> memoryview:
        """The payload of the next frame's body; AuthError or ProtocolError if it is not."""
        if len(body) < COUNTER_LEN + TAG_LEN:
            raise ProtocolError(f"authenticated frame too short ({len(body)} bytes)")
        view = memoryview(body)
        tag = self._tag(self._recv_dir, view[:-TAG_LEN])
        if not hmac.compare_digest(tag, view[-TAG_LEN:]):
            raise AuthError("frame failed authentication (tampered, or from another connection)")
        counter = int.from_bytes(view[:COUNTER_LEN], "big")
        if counter != self.recv_counter:
            raise AuthError(
                f"replayed or reordered frame: counter {counter}, expected {self.recv_counter}"
            )
        self.recv_counter += 1
        return view[COUNTER_LEN:-TAG_LEN]


# ---- hellos ---------------------------------------------------------------------------------


def hello_payload(
    node_id: str,
    cluster: str,
    cluster_id: str | None,
    addr: str,
    caps: tuple[str, ...] = (),
) -> bytes:
    """A hello's payload (to be sealed as the first frame); ``caps``: the capabilities the
    sender understands (none: no ``caps`` key, the hello of the agents before batching)."""
    hello: dict[str, object] = {
        "node_id": node_id,
        "cluster": cluster,
        "cluster_id": cluster_id,
        "addr": addr,
    }
    if caps:
        hello["caps"] = list(caps)
    return msgpack.packb(hello)


def parse_hello(payload: memoryview | bytes) -> tuple[str, str, str | None, str]:
    """``(node_id, cluster, cluster_id, addr)`` of a hello's payload; ProtocolError if it
    is not a well-formed hello (unknown extra keys are ignored)."""
    return parse_hello_caps(payload)[0]


def parse_hello_caps(
    payload: memoryview | bytes,
) -> tuple[tuple[str, str, str | None, str], frozenset[str]]:
    """:func:`parse_hello` and the capabilities the hello lists (empty when it lists none,
    or when ``caps`` is not a list of at most 32 str: an unknown form means no capability,
    as an older peer's hello)."""
    hello = unpack_payload(payload)
    if not isinstance(hello, dict) or any(k not in hello for k in _HELLO_KEYS):
        raise ProtocolError("malformed hello")
    raw_caps = hello.get("caps")
    caps: frozenset[str] = frozenset()
    if (
        isinstance(raw_caps, list)
        and len(raw_caps) <= _MAX_CAPS
        and all(isinstance(c, str) for c in raw_caps)
    ):
        caps = frozenset(raw_caps)
    return _hello_fields(hello), caps


def _hello_fields(hello: dict[object, object]) -> tuple[str, str, str | None, str]:
    node_id, cluster, cluster_id, addr = (hello[k] for k in _HELLO_KEYS)
    if not (valid_id(node_id) and valid_id(cluster) and valid_id(cluster_id, optional=True)):
        raise ProtocolError("malformed hello")
    try:
        parse_addr(addr)  # type: ignore[arg-type]
    except ValueError:
        raise ProtocolError("malformed hello: bad addr") from None
    return node_id, cluster, cluster_id, addr  # type: ignore[return-value]


# ---- batches --------------------------------------------------------------------------------


def batch_payload(payloads: list[bytes]) -> bytes:
    """The payload of a batch frame: each msgpack payload as a record, in order."""
    return b"".join([b for p in payloads for b in (len(p).to_bytes(4, "big"), p)])


def split_batch(payload: memoryview | bytes) -> list[memoryview]:
    """The records of a batch frame's payload, in order (not yet unpacked: each one goes to
    :func:`unpack_payload`); ProtocolError for an empty batch or a record that overruns."""
    view = memoryview(payload)
    end = len(view)
    if end == 0:
        raise ProtocolError("empty batch")
    out = []
    pos = 0
    while pos < end:
        if end - pos < 4:
            raise ProtocolError("truncated record header in a batch")
        n = int.from_bytes(view[pos : pos + 4], "big")
        pos += 4
        if n > end - pos:
            raise ProtocolError(f"record of {n} bytes overruns its batch ({end - pos} left)")
        out.append(view[pos : pos + n])
        pos += n
    return out
