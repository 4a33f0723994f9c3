"""Tools of the hostile-input suite (test_hostile.py): a peer that holds the cluster key and
sends whatever it is told, a writer that records every acknowledged write, a flood of
garbage connections, and readings of a process's memory and of the agents' logs.

``KeyHolder`` speaks the transport's wire protocol as transport.py's docstring specifies it
(handshake, session key, sealed frames, hellos), written here from that specification and
not with the agent's own classes: it sends any payload bytes at all, msgpack or not, which
``Transport.send`` would not.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import secrets
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from agents import API_PORT, RAFT_PORT, holds_for, wait_for
from harness import (
    Cluster,
    refused_idle_connections,  # noqa: F401  (for test_hostile.py)
)

__all__ = [
    "API_PORT",
    "RAFT_PORT",
    "Cluster",
    "Flood",
    "KeyHolder",
    "PeerClosed",
    "Writer",
    "holds_for",
    "log_lines",
    "memory",
    "new_log",
    "raw_http",
    "wait_for",
]

PROTOCOL = b"hafleet/v1"
TAG_LEN = 32
C2S, S2C = b"\x01", b"\x02"


class PeerClosed(Exception):
    """The agent closed (or reset) the connection."""


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, hashlib.sha256)


class KeyHolder:
    """One authenticated connection to an agent's Raft port, as a peer named ``node_id``
    that proved the cluster key. ``send(obj)`` packs a msgpack value, ``send_payload(bytes)``
    seals any bytes as one frame's payload."""

    def __init__(
        self,
        host: str,
        key: bytes,
        *,
        node_id: str,
        cluster: str,
        cluster_id: str | None,
        advertise: str,
        source: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self.sock = socket.create_connection(
            (host, RAFT_PORT), timeout=timeout, source_address=(source, 0) if source else None
        )
        try:
            nonce_c = secrets.token_bytes(32)
            self._write(PROTOCOL + nonce_c)
            body = self._read()
            nonce_s, proof = body[len(PROTOCOL) : len(PROTOCOL) + 32], body[-TAG_LEN:]
            want = _mac(key, PROTOCOL + b" server" + nonce_c + nonce_s)
            assert body.startswith(PROTOCOL) and hmac.compare_digest(proof, want), body
            self._write(_mac(key, PROTOCOL + b" client" + nonce_c + nonce_s))
            self.session = _mac(key, PROTOCOL + nonce_c + nonce_s)
            self.sent = self.received = 0
            hello = {
                "node_id": node_id,
                "cluster": cluster,
                "cluster_id": cluster_id,
                "addr": advertise,
            }
            self.send(hello)
            self.hello = self.recv()  # PeerClosed here: the agent refused this peer
        except BaseException:
            self.sock.close()
            raise

    # -- framing --------------------------------------------------------------------------
    def _write(self, body: bytes) -> None:
        try:
            self.sock.sendall(len(body).to_bytes(4, "big") + body)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise PeerClosed(str(exc)) from None

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError as exc:
                raise PeerClosed(str(exc)) from None
            if not chunk:
                raise PeerClosed("end of stream")
            data += chunk
        return data

    def _read(self) -> bytes:
        return self._exactly(int.from_bytes(self._exactly(4), "big"))

    def send_payload(self, payload: bytes) -> None:
        counter = self.sent.to_bytes(8, "big")
        self.sent += 1
        self._write(counter + payload + _mac(self.session, C2S + counter + payload))

    def send(self, obj: Any) -> None:
        self.send_payload(msgpack.packb(obj, use_bin_type=True))

    def recv(self) -> Any:
        body = self._read()
        counter, payload, tag = body[:8], body[8:-TAG_LEN], body[-TAG_LEN:]
        assert hmac.compare_digest(tag, _mac(self.session, S2C + counter + payload))
        assert int.from_bytes(counter, "big") == self.received
        self.received += 1
        return msgpack.unpackb(payload, raw=False)

    def closed_by_peer(self, timeout: float) -> bool:
        """True when the agent closes the connection within ``timeout`` (a server sends
        nothing after its hello, so any end of stream is the agent's answer)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> KeyHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the writer -----------------------------------------------------------------------------


@dataclass
class Writer:
    """Puts ``w/<n>`` = n in a loop through every member in turn (followers forward) and
    records each write the group acknowledged (200). Other answers are counted by status:
    the hostile cases make some of them (503 over a connection cap, 413 while the quota is
    full); none of those is an acknowledgement."""

    cluster: Cluster
    acked: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="hostile-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                nodes = [x for x in self.cluster.nodes.values() if x.expect_running]
                node = nodes[n % len(nodes)]
                key = f"w/{n}"
                try:
                    status, _ = self.cluster.api(node, "PUT", f"/v1/kv/{key}", {"value": n})
                except (OSError, http.client.HTTPException) as exc:
                    status = type(exc).__name__
                if status == 200:
                    self.acked[key] = n
                self.answers[str(status)] = self.answers.get(str(status), 0) + 1
                n += 1
                self.stop.wait(0.02)  # a steady trickle; the machine has two shared cores
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def acks(self) -> int:
        return len(self.acked)

    def finish(self) -> dict[str, int]:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
            assert not self.thread.is_alive(), "the writer did not stop"
        if self.error is not None:
            raise self.error
        return dict(self.acked)


# ---- a flood of garbage connections ------------------------------------------------------


class Flood:
    """Connections to ``targets`` from ``source``, over and over, until the block ends:
    ``threads`` threads send garbage (random bytes, or the protocol's opening followed by a
    made-up proof) and close; one more thread keeps up to ``silent`` connections open that
    say nothing, each until the agent closes it (its first-frame timeout) or 5 s pass."""

    def __init__(
        self, targets: list[tuple[str, int]], source: str, threads: int = 2, silent: int = 16
    ) -> None:
        self.targets = targets
        self.source = source
        self.silent = silent
        self.stop = threading.Event()
        self.connections = 0
        self.silent_closed = 0
        self.failed = 0
        self.threads = [
            threading.Thread(target=self._garbage, args=(i,), daemon=True) for i in range(threads)
        ]
        self.threads.append(threading.Thread(target=self._silence, daemon=True))

    def _connect(self, n: int) -> socket.socket | None:
        try:
            s = socket.create_connection(
                self.targets[n % len(self.targets)], timeout=2, source_address=(self.source, 0)
            )
        except OSError:
            self.failed += 1
            self.stop.wait(0.01)
            return None
        self.connections += 1
        return s

    def _garbage(self, seed: int) -> None:
        n = seed
        while not self.stop.is_set():
            n += 1
            s = self._connect(n)
            if s is None:
                continue
            with s, contextlib.suppress(OSError):
                if n % 2:
                    s.sendall(secrets.token_bytes(64 + n % 200))
                else:
                    opening = PROTOCOL + secrets.token_bytes(32)
                    proof = secrets.token_bytes(32)
                    s.sendall((42).to_bytes(4, "big") + opening + (32).to_bytes(4, "big") + proof)
                while s.recv(4096):
                    pass

    def _silence(self) -> None:
        n = 0
        while not self.stop.is_set():
            socks = [s for s in (self._connect(n + i) for i in range(self.silent)) if s]
            n += self.silent
            deadline = time.monotonic() + 5
            while socks and time.monotonic() < deadline and not self.stop.is_set():
                readable, _, _ = select.select(socks, [], [], 0.1)
                for s in readable:
                    with contextlib.suppress(OSError):
                        s.recv(4096)
                    s.close()
                    socks.remove(s)
                    self.silent_closed += 1
            for s in socks:
                s.close()

    def __enter__(self) -> Flood:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


# ---- readings ---------------------------------------------------------------------------


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def log_lines(cluster: Cluster) -> dict[str, int]:
    return {nid: len(node.log().splitlines()) for nid, node in cluster.nodes.items()}


def new_log(cluster: Cluster, since: dict[str, int]) -> dict[str, list[str]]:
    """The lines each agent logged since ``since`` (from :func:`log_lines`)."""
    return {
        nid: node.log().splitlines()[since.get(nid, 0) :] for nid, node in cluster.nodes.items()
    }


def raw_http(host: str, request: bytes, timeout: float = 10.0) -> tuple[int, Any]:
    """Send a request as bytes (http.client refuses some of them); the status and body."""
    with socket.create_connection((host, API_PORT), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body.decode(errors="replace")
