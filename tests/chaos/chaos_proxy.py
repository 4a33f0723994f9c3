"""A raw TCP proxy between agents that records Raft transport frames and attacks them.

A node started with ``advertise = <bridge address>`` is reached by its peers at
``<bridge>:7400`` (Raft) and ``<bridge>:7480`` (API); ``RaftProxy`` listens there, in the test
process, and forwards to the node's real address. On the Raft side it splits the
client -> server stream into frames (``length u32 BE | body``, docs/transport.md): frames 0-1
are the handshake (nonce, proof), frame 2 the client's hello, frames 3.. authenticated data
frames ``counter u64 | payload | tag``. ``attack(kind)`` arms one manipulation on the next
data frame of the busiest live connection and waits until the node closes it:

- ``replay``: the frame is forwarded twice (good tag, stale counter);
- ``tamper``: one bit of its payload is flipped (bad tag);
- ``reorder``: it is held back and sent after the following frame;
- ``cross``: a data frame recorded on an earlier connection is injected first (its tag was
  made with another session key).

Under TLS (``tls=True``) the proxy cannot read the frames: it splits the stream into TLS
records instead (``type u8 | version u16 | length u16 | body``) and makes the same four
manipulations on an application-data record (type 23) past the first
``_TLS_HANDSHAKE_RECORDS`` of its connection; TLS must then refuse the record (its AEAD tag
covers the record's sequence number, so a replayed, reordered or foreign record fails as a
flipped bit does) and close the connection. A connection's node is then the one whose lab
address it comes from (``peers``). A session replay under TLS is answered by a fresh server
handshake, which the recorded client records cannot complete.

``replay_session()`` sends a whole recorded session (handshake included) on a new connection:
the server's fresh nonce makes the recorded proof worthless. Server -> client bytes are
forwarded untouched. Every thread and socket is closed by ``stop()``; each wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

import msgpack

_HANDSHAKE_FRAMES = 3  # nonce, proof, hello
_SESSION_FRAMES = 12  # frames kept of each connection for a session replay
_COUNTER = 8
_TAG = 32
_TLS_HEADER = 5
_TLS_APPDATA = 23
#: Type-23 records of a connection not attacked: under TLS 1.3 the client's certificate,
#: its proof and Finished travel as such records too.
_TLS_HANDSHAKE_RECORDS = 4


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class _Conn:
    id: int
    client: socket.socket
    server: socket.socket
    frames: list[bytes] = field(default_factory=list)  # raw frames (header included), capped
    data_frames: int = 0
    last_frame: float = 0.0
    node: str | None = None  # the client's node id, from its hello (MAC'd, not encrypted)
    armed: str | None = None
    attacked: str | None = None
    server_closed: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)


class RaftProxy:
    def __init__(
        self,
        listen: tuple[str, int],
        api_listen: tuple[str, int],
        target_host: str,
        raft_port: int = 7400,
        api_port: int = 7480,
        tls: bool = False,
        peers: dict[str, str] | None = None,
    ) -> None:
        self.tls = tls
        self.peers = dict(peers or {})  # source address -> node id (under TLS)
        self.listen = listen
        self.api_listen = api_listen
        self.target = (target_host, raft_port)
        self.api_target = (target_host, api_port)
        self.conns: list[_Conn] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []
        self.old_data_frame: bytes | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        for addr, handler in ((self.listen, self._raft_conn), (self.api_listen, self._api_conn)):
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(addr)
            srv.listen(64)
            srv.settimeout(0.2)
            self.sockets.append(srv)
            self._thread(self._accept_loop, srv, handler)

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            socks = list(self.sockets)
        for s in socks:
            _close(s)
        for t in self.threads:
            t.join(timeout=5)

    def _thread(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        t = threading.Thread(target=fn, args=args, daemon=True, name=f"chaos-proxy-{fn.__name__}")
        t.start()
        self.threads.append(t)

    def _accept_loop(self, srv: socket.socket, handler) -> None:  # type: ignore[no-untyped-def]
        while not self.stopping.is_set():
            try:
                client, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                server = socket.create_connection(
                    self.target if handler == self._raft_conn else self.api_target, timeout=5
                )
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
            handler(client, server)

    # ---- API: plain forwarding -------------------------------------------------------------
    def _api_conn(self, client: socket.socket, server: socket.socket) -> None:
        self._thread(self._pipe, client, server, None)
        self._thread(self._pipe, server, client, None)

    def _pipe(self, src: socket.socket, dst: socket.socket, conn: _Conn | None) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        if conn is not None:
            conn.server_closed.set()
        _close(src)
        _close(dst)
        if conn is not None:
            conn.closed.set()

    # ---- Raft: frames ------------------------------------------------------------------------
    def _raft_conn(self, client: socket.socket, server: socket.socket) -> None:
        with self.lock:
            conn = _Conn(len(self.conns), client, server)
            self.conns.append(conn)
        self._thread(self._pipe, server, client, conn)
        if self.tls:
            with contextlib.suppress(OSError):
                conn.node = self.peers.get(client.getpeername()[0])
            self._thread(self._records, conn)
        else:
            self._thread(self._frames, conn)

    def _records(self, conn: _Conn) -> None:
        """The client -> server stream as TLS records, attacked like ``_frames`` does."""
        appdata = 0
        held: bytes | None = None
        while True:
            header = _recv_exact(conn.client, _TLS_HEADER)
            body = _recv_exact(conn.client, int.from_bytes(header[3:5], "big")) if header else None
            if header is None or body is None:
                break
            record = header + body
            if len(conn.frames) < _SESSION_FRAMES:
                conn.frames.append(record)
            out = [record]
            if header[0] == _TLS_APPDATA:
                appdata += 1
            if header[0] == _TLS_APPDATA and appdata > _TLS_HANDSHAKE_RECORDS:
                conn.data_frames += 1
                conn.last_frame = time.monotonic()
                if held is not None:
                    out, held = [record, held], None
                elif conn.armed is not None:
                    kind, conn.armed = conn.armed, None
                    conn.attacked = kind
                    if kind == "replay":
                        out = [record, record]
                    elif kind == "tamper":
                        mutable = bytearray(record)
                        mutable[_TLS_HEADER + len(body) // 2] ^= 0x01
                        out = [bytes(mutable)]
                    elif kind == "reorder":
                        held, out = record, []
                    elif kind == "cross":
                        assert self.old_data_frame is not None
                        out = [self.old_data_frame, record]
                elif conn.attacked is None:
                    self.old_data_frame = record
            try:
                for r in out:
                    conn.server.sendall(r)
            except OSError:
                break
        _close(conn.client)
        _close(conn.server)
        conn.closed.set()

    def _frames(self, conn: _Conn) -> None:
        n = 0
        held: bytes | None = None
        while True:
            header = _recv_exact(conn.client, 4)
            body = _recv_exact(conn.client, int.from_bytes(header, "big")) if header else None
            if header is None or body is None:
                break
            frame = header + body
            if len(conn.frames) < _SESSION_FRAMES:
                conn.frames.append(frame)
            n += 1
            out = [frame]
            if n == _HANDSHAKE_FRAMES:
                with contextlib.suppress(Exception):
                    conn.node = msgpack.unpackb(body[_COUNTER:-_TAG])["node_id"]
            if n > _HANDSHAKE_FRAMES:
                conn.data_frames += 1
                conn.last_frame = time.monotonic()
                if held is not None:
                    out, held = [frame, held], None
                elif conn.armed is not None:
                    kind, conn.armed = conn.armed, None
                    conn.attacked = kind
                    if kind == "replay":
                        out = [frame, frame]
                    elif kind == "tamper":
                        mutable = bytearray(frame)
                        payload_len = len(body) - _COUNTER - _TAG
                        pos = 4 + _COUNTER + max(0, payload_len // 2)
                        mutable[pos] ^= 0x01
                        out = [bytes(mutable)]
                    elif kind == "reorder":
                        held, out = frame, []
                    elif kind == "cross":
                        assert self.old_data_frame is not None
                        out = [self.old_data_frame, frame]
                elif conn.attacked is None:
                    self.old_data_frame = frame
            try:
                for f in out:
                    conn.server.sendall(f)
            except OSError:
                break
        _close(conn.client)
        _close(conn.server)
        conn.closed.set()

    def busiest(self, node: str | None = None) -> _Conn | None:
        now = time.monotonic()
        with self.lock:
            live = [
                c
                for c in self.conns
                if not c.closed.is_set()
                and c.attacked is None
                and c.armed is None
                and c.data_frames >= 3
                and now - c.last_frame < 0.5
                and (node is None or c.node == node)
            ]
        return max(live, key=lambda c: c.last_frame, default=None)

    def attack(self, kind: str, timeout: float, node: str | None = None) -> str:
        """Arm ``kind`` on the busiest live connection (from ``node``, when given: the leader
        sends heartbeats every 50 ms); "closed" once the target closed it. A connection that
        carries no frame within a second is disarmed and another one is picked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            conn = self.busiest(node)
            if conn is None or (kind == "cross" and self.old_data_frame is None):
                self.stopping.wait(0.05)
                continue
            conn.armed = kind
            fired = time.monotonic() + 1.0
            while conn.attacked is None and time.monotonic() < fired:
                if conn.closed.wait(0.02):
                    break
            if conn.attacked is None:
                conn.armed = None  # idle or gone: pick again
                continue
            left = max(0.1, deadline - time.monotonic())
            return "closed" if conn.server_closed.wait(left) else "still open"
        return "no live connection to attack"

    def recorded_session(self) -> bytes:
        with self.lock:
            full = [c for c in self.conns if len(c.frames) >= _HANDSHAKE_FRAMES + 2]
            if self.tls:  # a session whose ClientHello was recorded
                full = [c for c in full if c.frames[0][:1] == b"\x16"]
        assert full, "no recorded session with data frames"
        return b"".join(full[0].frames)


def replay_session(data: bytes, target: tuple[str, int], timeout: float, tls: bool = False) -> str:
    """Send a recorded client session to ``target`` on a new connection; "closed" when the
    server ends it (as it must: the recorded proof answers another nonce; under TLS the
    recorded records were made with another handshake's keys). Without TLS the server must
    not send more than its own handshake frame; under TLS it answers the replayed
    ClientHello with a fresh handshake, so no bound is put on the bytes."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(target, timeout=timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        received = 0
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                return "still open"
            except OSError:
                return "closed"
            if not chunk:
                return "closed"
            received += len(chunk)
            if received > 78 and not tls:  # the server's handshake frame: 74 bytes and its header
                return f"server sent more than its handshake ({received} bytes)"
    return "still open"
