"""A client workload against the KV API, recorded for the linearizability checker.

``Workload(urls, token, ...)`` runs ``clients`` threads; each loops (until ``stop()``, and at
most ``max_ops`` operations) over: put, get, cas, del on a few shared *register* keys, and
put on unique *ledger* keys (written once each, for the lost-write count). Each operation
goes to a node picked at random, so clients keep talking to partitioned, paused or dead
nodes. Every operation is recorded as a :class:`hafleet_agent.sim.linearizability.Op` with
``time.monotonic()`` call and return times.

Outcome mapping (docs/api.md):

- 200: done; 404 on a get: the key is absent; 409 on a cas: failed (determinate).
- 503, or a connection that was refused (nothing was sent): definitely not applied
  (``ok=False``, dropped by the checker).
- 504, a timeout, a reset or any other transport error after the request was sent:
  indeterminate (``ret=None``: may or may not have taken effect).
- anything else (400, 401, 413, 500) is a bug in the agent or in this workload: recorded in
  ``unexpected`` and reported as a failure.

The API's CAS compares ``modify_index``, the checker's compares values. A cas is therefore a
get followed by ``PUT ?cas=<the modify_index read>``, recorded with ``expected`` = the value
read (``None`` and ``cas=0`` for an absent key). Every value ever written is unique, so "the
key's modify_index is N" holds exactly when "the key holds the value written at N": the two
conditions are the same, and the check is exact.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harness import parse_body

from hafleet_agent.sim.linearizability import CheckResult, Op, check_kv_history

CLIENT_TIMEOUT = 3.0
#: A 503 "the leader at ... is unreachable ...; not proposed" once came back for forwarded
#: writes that had reached the leader (aiohttp retried an idempotent PUT on a new
#: connection; fixed in 12f6fdc, test_forwarded_write_applied_is_not_answered_503). Such
#: answers are taken at their word like every 503 (not applied: the checker would report a
#: violation if one was applied after all) and counted in ``Stats.forwarded_503``.
INDETERMINATE = object()
REFUSED = object()


@dataclass
class Reply:
    status: int | None  # None: no answer (see error)
    body: Any = None
    error: str = ""
    sent: bool = True  # False: the connection was refused, nothing reached the node


#: The last TLS session of each API address: a request under TLS offers it, so most
#: connections resume (TLS 1.3 PSK: no certificate exchange) as a client that keeps its
#: sessions would. Each request still opens its own connection.
_SESSIONS: dict[tuple[ssl.SSLContext, str, int], ssl.SSLSession] = {}
_SESSIONS_LOCK = threading.Lock()


class _ResumingHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.tls_sock: ssl.SSLSocket | None = None

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP
        with _SESSIONS_LOCK:
            session = _SESSIONS.get((self._context, self.host, self.port))  # type: ignore[attr-defined]
        try:
            self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
                self.sock, server_hostname=self.host, session=session
            )
        except ssl.SSLError:
            with _SESSIONS_LOCK:  # a session the server no longer takes: start afresh
                _SESSIONS.pop((self._context, self.host, self.port), None)  # type: ignore[attr-defined]
            raise
        self.tls_sock = self.sock

    def keep_session(self) -> None:
        sock = self.tls_sock
        session = sock.session if sock is not None else None
        if session is not None and session.has_ticket:
            with _SESSIONS_LOCK:
                _SESSIONS[(self._context, self.host, self.port)] = session  # type: ignore[attr-defined]


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    token: str | None,
    body: Any = None,
    *,
    timeout: float = CLIENT_TIMEOUT,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One API request. ``context``: HTTPS checking the agent's certificate with it (a
    failed TLS handshake is an ``OSError`` while connecting: nothing was sent)."""
    conn: http.client.HTTPConnection
    if context is not None:
        conn = _ResumingHTTPS(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        try:
            conn.connect()
        except ConnectionRefusedError as exc:
            return Reply(None, error=f"refused: {exc}", sent=False)
        except OSError as exc:  # timeout / unreachable while connecting: nothing was sent
            return Reply(None, error=f"connect: {exc!r}", sent=False)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            if isinstance(conn, _ResumingHTTPS):
                conn.keep_session()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            return Reply(None, error=repr(exc))
    finally:
        conn.close()
    return Reply(resp.status, parse_body(payload))


@dataclass
class Stats:
    ops: int = 0
    outcomes: Counter = field(default_factory=Counter)
    acked_writes: int = 0
    forwarded_503: int = 0  # 503 "leader unreachable" answers (taken as not applied)
    unexpected: list[str] = field(default_factory=list)


class Workload:
    def __init__(
        self,
        addrs: list[tuple[str, int]],
        token: str,
        *,
        clients: int = 4,
        keys: int = 3,
        seed: int = 0,
        pace: float = 0.02,
        max_ops: int = 5000,
        tag: str = "w",
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.addrs = list(addrs)
        self.context = context  # HTTPS with this context (the cluster CA) when given
        self.token = token
        self.clients = clients
        self.keys = [f"{tag}/r{i}" for i in range(keys)]
        self.tag = tag
        self.seed = seed
        self.pace = pace
        self.max_ops = max_ops
        self.ops: list[Op] = []
        self.ledger: dict[str, str] = {}  # acked ledger key -> value
        self.ledger_unknown: set[str] = set()  # indeterminate ledger writes
        self.stats = Stats()
        self._lock = threading.RLock()  # reentrant: recording helpers nest
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = 0
        self.errors: list[BaseException] = []
        self.failed_writes: dict[str, str] = {}  # value -> the answer that said "not applied"

    # ---- control -----------------------------------------------------------------------
    def start(self) -> Workload:
        for c in range(self.clients):
            t = threading.Thread(target=self._client, args=(c,), name=f"chaos-client-{c}")
            t.daemon = True
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT * 3)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError(f"workload threads did not stop: {alive}")

    def __enter__(self) -> Workload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> bool:
        return not self._stop.is_set()

    # ---- recording -----------------------------------------------------------------------
    def _request(self, *args: Any, **kw: Any) -> Reply:
        return request(*args, context=self.context, **kw)

    def _unique(self, client: int) -> str:
        with self._lock:
            self._seq += 1
            return f"{self.tag}-c{client}-{self._seq}"

    def _record(self, op: Op, outcome: str) -> None:
        with self._lock:
            self.ops.append(op)
            self.stats.ops += 1
            self.stats.outcomes[outcome] += 1

    def record_external(self, op: Op) -> None:
        """Add an op made outside the client threads (final reads, probes)."""
        with self._lock:
            self.ops.append(op)

    # ---- the clients -----------------------------------------------------------------------
    def _client(self, client: int) -> None:
        rng = random.Random(f"{self.seed}-{client}")
        try:
            for _ in range(self.max_ops):
                if self._stop.is_set():
                    return
                addr = rng.choice(self.addrs)
                r = rng.random()
                key = rng.choice(self.keys)
                if r < 0.35:
                    self.put(client, addr, key, self._unique(client))
                elif r < 0.65:
                    self.get(client, addr, key)
                elif r < 0.82:
                    self.cas(client, addr, key, rng)
                elif r < 0.87:
                    self.delete(client, addr, key)
                else:
                    self.ledger_put(client, addr)
                if self.pace:
                    self._stop.wait(self.pace)
        except BaseException as exc:  # surfaced by check(); a thread must not die silently
            self.errors.append(exc)

    def _classify(self, rep: Reply, ok_codes: tuple[int, ...]) -> str:
        if rep.status in ok_codes:
            return "ok"
        if rep.status == 503 and "is unreachable" in str(rep.body):
            with self._lock:
                self.stats.forwarded_503 += 1
        if rep.status == 503 or (rep.status is None and not rep.sent):
            return "failed"
        if rep.status == 504 or rep.status is None:
            return "indeterminate"
        return "unexpected"

    def _unexpected(self, what: str, rep: Reply) -> None:
        with self._lock:
            self.stats.unexpected.append(f"{what}: {rep.status} {rep.body!r} {rep.error}")

    def _note_failed(self, value: object, rep: Reply) -> None:
        with self._lock:
            self.failed_writes[str(value)] = f"{rep.status} {rep.body!r} {rep.error}".strip()

    def explain_value(self, value: object) -> str | None:
        """How the write of ``value`` was answered, if it was recorded as not applied."""
        return self.failed_writes.get(str(value))

    def put(self, client: int, addr: tuple[str, int], key: str, value: str) -> Reply:
        t0 = time.monotonic()
        rep = self._request(*addr, "PUT", f"/v1/kv/{key}", self.token, {"value": value})
        t1 = time.monotonic()
        kind = self._classify(rep, (200,))
        if kind == "unexpected":
            self._unexpected(f"put {key}", rep)
            kind = "indeterminate"
        if kind == "ok":
            with self._lock:
                self.stats.acked_writes += 1
        ret = t1 if kind == "ok" else None
        op = Op(client=client, kind="put", key=key, value=value, call=t0, ret=ret)
        if kind == "failed":
            op = Op(client=client, kind="put", key=key, value=value, call=t0, ret=t1, ok=False)
            self._note_failed(value, rep)
        self._record(op, f"put-{kind}")
        return rep

    def get(self, client: int, addr: tuple[str, int], key: str) -> Reply:
        t0 = time.monotonic()
        rep = self._request(*addr, "GET", f"/v1/kv/{key}", self.token)
        t1 = time.monotonic()
        if rep.status == 200:
            op = Op(client=client, kind="get", key=key, call=t0, ret=t1, output=rep.body["value"])
            kind = "ok"
        elif rep.status == 404:
            op = Op(client=client, kind="get", key=key, call=t0, ret=t1, output=None)
            kind = "ok"
        else:
            kind = self._classify(rep, ())
            if kind == "unexpected":
                self._unexpected(f"get {key}", rep)
            op = Op(client=client, kind="get", key=key, call=t0, ret=t1, ok=False)
        self._record(op, f"get-{kind}")
        return rep

    def cas(self, client: int, addr: tuple[str, int], key: str, rng: random.Random) -> None:
        rep = self.get(client, addr, key)
        if rep.status == 200:
            expected, index = rep.body["value"], rep.body["modify_index"]
        elif rep.status == 404:
            expected, index = None, 0
        else:
            return
        value = self._unique(client)
        addr = rng.choice(self.addrs)
        t0 = time.monotonic()
        rep = self._request(*addr, "PUT", f"/v1/kv/{key}?cas={index}", self.token, {"value": value})
        t1 = time.monotonic()
        common = {"client": client, "kind": "cas", "key": key, "value": value, "call": t0}
        if rep.status == 200:
            op, kind = Op(**common, expected=expected, ret=t1, output=True), "ok"
            with self._lock:
                self.stats.acked_writes += 1
        elif rep.status == 409:
            op, kind = Op(**common, expected=expected, ret=t1, output=False), "conflict"
        else:
            kind = self._classify(rep, ())
            if kind == "unexpected":
                self._unexpected(f"cas {key}", rep)
                kind = "indeterminate"
            if kind == "failed":
                op = Op(**common, expected=expected, ret=t1, output=False, ok=False)
                self._note_failed(value, rep)
            else:
                op = Op(**common, expected=expected, ret=None)
        self._record(op, f"cas-{kind}")

    def delete(self, client: int, addr: tuple[str, int], key: str) -> None:
        t0 = time.monotonic()
        rep = self._request(*addr, "DELETE", f"/v1/kv/{key}", self.token)
        t1 = time.monotonic()
        kind = self._classify(rep, (200,))
        if kind == "unexpected":
            self._unexpected(f"del {key}", rep)
            kind = "indeterminate"
        ret = t1 if kind == "ok" else None
        op = Op(client=client, kind="del", key=key, call=t0, ret=ret, ok=kind != "failed")
        if kind == "failed":
            op = Op(client=client, kind="del", key=key, call=t0, ret=t1, ok=False)
        self._record(op, f"del-{kind}")

    def ledger_put(self, client: int, addr: tuple[str, int]) -> None:
        value = self._unique(client)
        key = f"{self.tag}/ledger/{value}"
        rep = self.put(client, addr, key, value)
        # put() recorded how it classified the answer: not applied iff in failed_writes
        maybe = str(value) not in self.failed_writes
        with self._lock:
            if rep.status == 200:
                self.ledger[key] = value
            elif maybe:
                self.ledger_unknown.add(key)

    # ---- the end ---------------------------------------------------------------------------
    def final_reads(self, addr: tuple[str, int]) -> tuple[int, list[str]]:
        """Linearizable reads of every register key and every ledger key (acked or maybe),
        added to the history. Returns (lost acked ledger writes, their keys)."""
        for key in self.keys:
            self._final_get(addr, key)
        lost = []
        for key in sorted(set(self.ledger) | self.ledger_unknown):
            value = self._final_get(addr, key)
            if key in self.ledger and value != self.ledger[key]:
                lost.append(key)
        return len(lost), lost

    def _final_get(self, addr: tuple[str, int], key: str) -> Any:
        deadline = time.monotonic() + 20
        while True:
            t0 = time.monotonic()
            rep = self._request(*addr, "GET", f"/v1/kv/{key}", self.token)
            t1 = time.monotonic()
            if rep.status in (200, 404):
                value = rep.body["value"] if rep.status == 200 else None
                self.record_external(
                    Op(client=-1, kind="get", key=key, call=t0, ret=t1, output=value)
                )
                return value
            if t1 > deadline:
                raise AssertionError(f"final read of {key} failed: {rep}")
            self._stop.wait(0.05)

    def check(self, max_steps: int = 2_000_000) -> CheckResult:
        if self.errors:
            raise self.errors[0]
        return check_kv_history(list(self.ops), max_steps=max_steps)
