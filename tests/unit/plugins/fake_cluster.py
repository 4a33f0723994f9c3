# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A stand-in hafleet cluster for unit tests: one small HTTP server per node on 127.0.0.1.

The nodes share one state (members, leader, term, weights). Each answers ``/v1/status`` as
itself, ``/v1/members`` and ``/v1/weights`` from the shared state; writes are accepted by the
leader only (a follower answers 503, so a test sees whether the client went to the leader).
``POST /v1/members`` adds a learner that a test can promote; ``DELETE /v1/members/{id}``
removes the member (a leader removing itself hands over first, like the agent);
``POST /v1/leadership/transfer`` moves the leadership; ``PUT``/``DELETE
/v1/members/{id}/maintenance`` set the member's maintenance (weight 0 while in it; a ``PUT``
that would leave no other member in service is a 409 without ``?force=true``). Every
request is recorded.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

TOKEN = "k" * 40


class FakeCluster:
    def __init__(self, ids=("n1", "n2", "n3"), leader="n1"):
        self.lock = threading.Lock()
        self.requests = []
        self.servers = {}
        self.threads = []
        self.members = {}
        self.leader = leader
        self.term = 3
        self.promote_on_add = True
        self.down = set()
        self.kv = {}  # key -> (value, modify_index)
        self.kv_index = 100
        for node_id in ids:
            self._serve(node_id)
            self.members[node_id] = self.member(node_id, role="voter")
        self._fix_roles()

    # ---- state -------------------------------------------------------------------------------

    def api_addr(self, node_id):
        return f"127.0.0.1:{self.servers[node_id].server_address[1]}"

    def url(self, node_id):
        return "http://" + self.api_addr(node_id)

    def member(self, node_id, role="voter", raft_addr=None, api_addr=None, service_addr=None):
        return {
            "id": node_id,
            "raft_addr": raft_addr or f"127.0.0.1:{17000 + len(self.members)}",
            "api_addr": api_addr or self.api_addr(node_id),
            "service_addr": service_addr,
            "role": role,
            "healthy": True,
            "draining": False,
            "maintenance": False,
            "weight": 128,
            "metrics": {"cpu_count": 2, "cpu_percent": 10.0, "mem_percent": 40.0, "load1": 0.5},
        }

    def _fix_roles(self):
        for node_id, member in self.members.items():
            if node_id == self.leader:
                member["role"] = "leader"
            elif member["role"] == "leader":
                member["role"] = "voter"

    def add_node(self, node_id, role="voter"):
        """A node that serves the API but is not a member yet (or is, with ``role``)."""
        self._serve(node_id)
        if role:
            self.members[node_id] = self.member(node_id, role=role)
        return self.url(node_id)

    def _serve(self, node_id):
        server = _Server(self, node_id)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.daemon = True
        thread.start()
        self.servers[node_id] = server
        self.threads.append(thread)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self):
        for server in self.servers.values():
            server.shutdown()
            server.server_close()
        for thread in self.threads:
            thread.join(5)

    def status(self, node_id):
        return {
            "node_id": node_id,
            "cluster": "test",
            "cluster_id": "test-1234",
            "state": "leader" if node_id == self.leader else "follower",
            "term": self.term,
            "leader_id": self.leader,
            "commit_index": 42,
            "applied_index": 42,
            "members": list(self.members.values()),
            "version": "0.1.0",
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cluster, node_id):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.cluster = cluster
        self.node_id = node_id


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_PUT(self):
        self._handle("PUT")

    def _handle(self, method):
        cluster = self.server.cluster
        node = self.server.node_id
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        with cluster.lock:
            cluster.requests.append(
                {"node": node, "method": method, "path": parts.path, "query": query, "body": body}
            )
            if node in cluster.down:
                self.close_connection = True
                return self._json(503, {"error": "down"})
            if parts.path == "/v1/health":
                return self._json(200, {"ok": True})
            if self.headers.get("Authorization") != "Bearer " + TOKEN:
                return self._json(401, {"error": "wrong API token"})
            return self._route(cluster, node, method, parts.path, query, body)

    def _route(self, cluster, node, method, path, query, body):
        is_leader = node == cluster.leader
        if method == "GET" and path == "/v1/status":
            return self._json(200, cluster.status(node))
        if method == "GET" and path == "/v1/members":
            return self._json(200, list(cluster.members.values()))
        if method == "GET" and path == "/v1/weights":
            weights = {mid: m["weight"] for mid, m in cluster.members.items()}
            return self._json(200, {"version": 7, "weights": weights})
        if method == "GET" and path.startswith("/v1/kv/"):
            key = unquote(path[len("/v1/kv/") :])
            if key not in cluster.kv:
                return self._json(404, {"error": f"no key {key!r}"})
            value, index = cluster.kv[key]
            return self._json(200, {"key": key, "value": value, "modify_index": index})
        if not is_leader:
            return self._json(503, {"error": "not the leader (the fake does not forward)"})
        if method in ("PUT", "DELETE") and path.startswith("/v1/kv/"):
            key = unquote(path[len("/v1/kv/") :])
            index = cluster.kv.get(key, (None, 0))[1]
            if "cas" in query and int(query["cas"]) != index:
                return self._json(409, {"error": "cas", "code": "cas", "current_index": index})
            if method == "DELETE":
                deleted = cluster.kv.pop(key, None) is not None
                return self._json(
                    200, {"key": key, "value": None, "modify_index": 0, "deleted": deleted}
                )
            cluster.kv_index += 1
            cluster.kv[key] = (body["value"], cluster.kv_index)
            return self._json(
                200, {"key": key, "value": body["value"], "modify_index": cluster.kv_index}
            )
        if method == "POST" and path == "/v1/members":
            mid = body["id"]
            existing = cluster.members.get(mid)
            if existing and existing["raft_addr"] != body["raft_addr"]:
                return self._json(409, {"error": "duplicate id"})
            if not existing:
                role = "voter" if cluster.promote_on_add else "learner"
                cluster.members[mid] = cluster.member(
                    mid, role, body["raft_addr"], body["api_addr"], body.get("service_addr")
                )
            return self._json(200, cluster.members[mid])
        if method in ("PUT", "DELETE") and path.endswith("/maintenance"):
            mid = unquote(path[len("/v1/members/") : -len("/maintenance")])
            member = cluster.members.get(mid)
            if member is None:
                return self._json(404, {"error": f"no member {mid!r}"})
            on = method == "PUT"
            changed = member["maintenance"] != on
            serving = [m for k, m in cluster.members.items() if k != mid and m["weight"] > 0]
            serving = [m for m in serving if not m["maintenance"]]
            if on and changed and not serving and query.get("force") != "true":
                error = "this would leave no member in service: ...; use force to do it anyway"
                return self._json(409, {"error": error})
            member["maintenance"], member["weight"] = on, 0 if on else 128
            reason = (body or {}).get("reason") if on else None
            answer = {"id": mid, "maintenance": on, "reason": reason, "changed": changed}
            return self._json(200, dict(answer, since=1.0 if on else None))
        if method == "DELETE" and path.startswith("/v1/members/"):
            mid = unquote(path[len("/v1/members/") :])
            if mid not in cluster.members:
                return self._json(404, {"error": f"no member {mid!r}"})
            if mid == cluster.leader:
                others = sorted(m for m in cluster.members if m != mid)
                if not others:
                    return self._json(409, {"error": "the last member cannot remove itself"})
                cluster.leader = others[0]
                cluster.term += 1
            del cluster.members[mid]
            cluster._fix_roles()
            return self._json(200, {"id": mid, "removed": True, "index": 50})
        if method == "POST" and path == "/v1/leadership/transfer":
            to = (body or {}).get("to")
            others = sorted(
                m for m in cluster.members if m != node and cluster.members[m]["role"] != "learner"
            )
            if to is None:
                if not others:
                    return self._json(409, {"error": "nobody to hand over to"})
                to = others[0]
            cluster.leader = to
            cluster.term += 1
            cluster._fix_roles()
            return self._json(200, {"leader_id": to})
        return self._json(404, {"error": "no route"})

    def _json(self, status, payload):
        raw = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
