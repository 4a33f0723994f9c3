"""One PySyncObj node with a tiny HTTP API, for ``make bench`` (bench/compare.py).

PySyncObj is a library, not a server: this program is the smallest server around it
that the benchmark can drive the same way it drives hafleet and etcd. One process a node,
on loopback:

    python bench/pysyncobj_node.py --self 127.0.50.1:7400 --partners 127.0.50.2:7400,... \
        --http 127.0.50.1:7480 --data-dir DIR [--no-fsync] [--no-batch] \
        [--heartbeat-ms 100 --election-min-ms 400 --election-max-ms 1400] [--dynamic]

Without the timing flags PySyncObj's own defaults apply (appendEntriesPeriod 0.1 s,
raftMinTimeout 0.4 s, raftMaxTimeout 1.4 s).

HTTP API (HTTP/1.1, keep-alive, JSON answers):

    GET  /status            {"self","leader","state","term","commit_idx","last_applied",...}
    PUT  /kv/KEY            body: the value (bytes); answers when the write is applied on
                            this node (through the Raft log); 503 on failure or timeout
    GET  /kv/KEY            linearizable read: a read command goes through the Raft log
                            (PySyncObj has no ReadIndex); ?stale=1 reads this node's copy
    POST /members           {"addr": "host:port"}: addNodeToCluster (needs --dynamic)
    POST /transfer          {"to": "host:port" | null}: transferLeadership (TimeoutNow)

Durability. PySyncObj's ``journalFile`` keeps the Raft log in an mmap'd file, but nothing in
PySyncObj 0.3.17 ever flushes it (``FileJournal.flush`` exists and is never called) and the
term/vote file is written without fsync: an acknowledged entry survives a process crash
(the page cache keeps it), not a power loss. With fsync on (the default here) this program
adds what PySyncObj lacks, in the least intrusive place:

- the journal is ``msync``'d (``mmap.flush``) before any message leaves the node, if an
  entry was appended or cut since the last flush. Every acknowledgement (a follower's
  ``next_node_idx``, a vote) and every append the leader sends therefore goes out after the
  entries it covers are on disk; a batch of entries costs one flush;
- the term/vote file is fsync'd before it is renamed into place, and its directory after.

``--no-fsync`` runs PySyncObj exactly as shipped (journal file, no flush).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pysyncobj.journal as pjournal
import pysyncobj.syncobj as psyncobj
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.transport import TCPTransport

_JOURNALS: list[DurableJournal] = []
_FLUSHES = [0]


class DurableJournal(pjournal.FileJournal):
    """FileJournal that remembers unflushed changes; ``sync()`` msyncs them."""

    def __init__(self, journal_file: str) -> None:
        self._dirty = False
        super().__init__(journal_file)
        _JOURNALS.append(self)

    def add(self, command, idx, term):  # noqa: ANN001 - PySyncObj's signature
        super().add(command, idx, term)
        self._dirty = True

    def clear(self):
        super().clear()
        self._dirty = True

    def deleteEntriesFrom(self, entryFrom):  # noqa: N802, N803 - PySyncObj's names
        super().deleteEntriesFrom(entryFrom)
        self._dirty = True

    def sync(self) -> None:
        if self._dirty:
            self._dirty = False
            self.flush()  # mmap.flush(): msync(MS_SYNC) of the mapping
            _FLUSHES[0] += 1


class DurableTransport(TCPTransport):
    """Flushes the journal before anything leaves the node."""

    def send(self, node, message):  # noqa: ANN001
        for j in _JOURNALS:
            j.sync()
        return super().send(node, message)


def _store_meta_fsync(self, meta) -> None:  # noqa: ANN001
    path = self.getPath()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(pjournal.dumps(meta))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def make_durable() -> None:
    psyncobj.createJournal = lambda f=None: (
        pjournal.MemoryJournal() if f is None else DurableJournal(f)
    )
    pjournal.MetaStorer.storeMeta = _store_meta_fsync


class KV(SyncObj):
    def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf, transport) -> None:
        super().__init__(self_addr, partners, conf, transportClass=transport)
        self._data: dict[str, bytes] = {}

    @replicated
    def put(self, key: str, value: bytes) -> int:
        self._data[key] = value
        return len(value)

    @replicated
    def read(self, key: str) -> bytes | None:
        return self._data.get(key)

    def local(self, key: str) -> bytes | None:
        return self._data.get(key)

    def start_tick_calls(self) -> None:
        """Run queued calls in PySyncObj's tick thread, where its state may be touched."""
        self._calls: list = []
        self._calls_lock = threading.Lock()

        def drain() -> None:
            with self._calls_lock:
                calls, self._calls = self._calls, []
            for fn in calls:
                fn()

        self.addOnTickCallback(drain)

    def in_tick(self, fn) -> None:  # noqa: ANN001
        with self._calls_lock:
            self._calls.append(fn)

    def status(self) -> dict:
        # getStatus() walks dicts the tick thread changes: retry the rare torn read
        for _ in range(20):
            try:
                return self.getStatus()
            except RuntimeError:
                continue
        return self.getStatus()


def build_conf(a: argparse.Namespace) -> SyncObjConf:
    kw: dict = {
        "journalFile": os.path.join(a.data_dir, "journal"),
        "fullDumpFile": os.path.join(a.data_dir, "dump"),
        "dynamicMembershipChange": a.dynamic,
        "appendEntriesUseBatch": a.batch,
        "connectionRetryTime": a.connection_retry,
        # without it PySyncObj binds 0.0.0.0:PORT; the bench keeps to its own address
        "bindAddress": a.self_addr,
    }
    if a.heartbeat_ms:
        kw["appendEntriesPeriod"] = a.heartbeat_ms / 1000
    if a.election_min_ms:
        kw["raftMinTimeout"] = a.election_min_ms / 1000
    if a.election_max_ms:
        kw["raftMaxTimeout"] = a.election_max_ms / 1000
    return SyncObjConf(**kw)


def make_handler(kv: KV, timeout: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - stdlib's name
            pass

        def _send(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _call(self, fn, *args):  # noqa: ANN001
            done = threading.Event()
            out: list = [None, None]

            def cb(res, err):  # noqa: ANN001
                out[0], out[1] = res, err
                done.set()

            fn(*args, callback=cb)
            if not done.wait(timeout):
                return None, "timeout"
            return out[0], out[1]

        def do_GET(self) -> None:  # noqa: N802 - stdlib's name
            u = urlsplit(self.path)
            if u.path == "/status":
                st = kv.status()
                leader = st.get("leader")
                self._send(
                    200,
                    {
                        "self": str(st["self"]),
                        "leader": str(leader) if leader is not None else None,
                        "state": st["state"],
                        "term": st["raft_term"],
                        "commit_idx": st["commit_idx"],
                        "last_applied": st["last_applied"],
                        "log_len": st["log_len"],
                        "partners": st["partner_nodes_count"],
                        "flushes": _FLUSHES[0],
                    },
                )
            elif u.path.startswith("/kv/"):
                key = u.path[4:]
                if parse_qs(u.query).get("stale"):
                    v = kv.local(key)
                else:
                    v, err = self._call(kv.read, key)
                    if err:
                        self._send(503, {"error": str(err)})
                        return
                if v is None:
                    self._send(404, {"error": "absent"})
                else:
                    self._send(200, {"key": key, "value": v.decode(errors="replace")})
            else:
                self._send(404, {"error": "no such path"})

        def do_PUT(self) -> None:  # noqa: N802
            u = urlsplit(self.path)
            if not u.path.startswith("/kv/"):
                self._send(404, {"error": "no such path"})
                return
            _, err = self._call(kv.put, u.path[4:], self._body())
            if err:
                self._send(503, {"error": str(err)})
            else:
                self._send(200, {"ok": True})

        def do_POST(self) -> None:  # noqa: N802
            u = urlsplit(self.path)
            body = json.loads(self._body() or b"{}")
            if u.path == "/members":
                _, err = self._call(kv.addNodeToCluster, body["addr"])
            elif u.path == "/transfer":
                # transferLeadership sends from the calling thread: call it in the tick thread
                _, err = self._call(
                    lambda to, callback: kv.in_tick(
                        lambda: kv.transferLeadership(to, callback=callback)
                    ),
                    body.get("to"),
                )
            else:
                self._send(404, {"error": "no such path"})
                return
            if err:
                self._send(503, {"error": str(err)})
            else:
                self._send(200, {"ok": True})

    return Handler


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--self", dest="self_addr", required=True)
    ap.add_argument("--partners", default="")
    ap.add_argument("--http", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--batch", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--dynamic", action="store_true")
    ap.add_argument("--heartbeat-ms", type=float)
    ap.add_argument("--election-min-ms", type=float)
    ap.add_argument("--election-max-ms", type=float)
    ap.add_argument("--request-timeout", type=float, default=5.0)
    ap.add_argument(
        "--connection-retry",
        type=float,
        default=5.0,
        help="connectionRetryTime: how often to reconnect to a peer that is down (5 s)",
    )
    a = ap.parse_args()
    os.makedirs(a.data_dir, exist_ok=True)
    if a.fsync:
        make_durable()
    partners = [p for p in a.partners.split(",") if p and p != a.self_addr]
    kv = KV(a.self_addr, partners, build_conf(a), DurableTransport if a.fsync else TCPTransport)
    kv.start_tick_calls()
    host, port = a.http.rsplit(":", 1)
    srv = ThreadingHTTPServer((host, int(port)), make_handler(kv, a.request_timeout))
    srv.daemon_threads = True

    def stop(*_: object) -> None:
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        srv.serve_forever(poll_interval=0.5)
    finally:
        kv.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
