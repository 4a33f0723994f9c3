"""The agent's HTTP API (aiohttp) and its Prometheus ``/metrics``.

The routes, bodies and status codes are the contract of ``shared/DESIGN.md``; docs/api.md
describes each one. Every route but ``/v1/health`` needs ``Authorization: Bearer <token>``
(compared in constant time). Writes that reach a follower are forwarded to the leader.
Errors are JSON ``{"error": "<what went wrong>", ...}``.

No client input makes a handler answer 500 or print a traceback: an Authorization header that
is not text is 401, a body that is not UTF-8 JSON, or nests deeper than MAX_JSON_DEPTH, is 400,
one over ``max_body_bytes`` 413, an id outside the member id grammar (:mod:`.ids`) 400 before
anything is proposed, a KV key outside :data:`KEY_RULE` (a ``.``, ``..`` or empty segment) 400
on every member before anything is forwarded. What still escapes a handler is a bug: one log
line, a JSON 500. A request aiohttp's parser refuses (it never reaches a handler) is a JSON
400 too, and at most one log line per source address per MALFORMED_LOG_INTERVAL_S.

Forwarding: the leader gets the path and query as they came, still encoded (never parsed
and normalized again on the way).

Connections: an idle keep-alive connection is closed after KEEPALIVE_S, and at most
:func:`connection_limit` are open at once (a connection over the cap is answered 503 and
closed at once), so that idle clients cannot take every file descriptor of the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from .ids import member_id_error, shown
from .node.errors import AgentError, BadRequest, NoLeader, NotFound, StateErrorResult, Unknown
from .state import (
    MAX_KEY_BYTES,
    StateError,
    encode_command,
    json_depth_exceeds,
    validate_cas,
    validate_key,
    validate_value,
)
from .throttle import WarnThrottle

if TYPE_CHECKING:
    from .node.verbs import NodeVerbs

log = logging.getLogger("hafleet.api")

FORWARDED = "X-Hafleet-Forwarded"
MAX_WAIT_S = 300.0
#: The deepest nesting of arrays and objects a request body may have.
MAX_JSON_DEPTH = 64
#: An idle keep-alive connection is closed after this long (aiohttp's default is an hour).
KEEPALIVE_S = 30.0
#: At most this many API connections at once, and at most a quarter of the process's file
#: descriptor limit (RLIMIT_NOFILE): the rest is for the Raft transport, storage, mDNS.
MAX_CONNECTIONS = 1024
LISTEN_BACKLOG = 128
#: A request aiohttp's parser refuses costs at most one log line per source per this long.
MALFORMED_LOG_INTERVAL_S = 10.0
KEY_RULE = (
    f"a key is 1-{MAX_KEY_BYTES} bytes of UTF-8 without control characters, segments "
    "separated by '/', none of them empty, '.' or '..'"
)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def parse_duration(text: str) -> float:
    """``30s``, ``500ms``, ``2m`` or plain seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise BadRequest(f"bad duration {text!r}: use e.g. 30s, 500ms, 2m")
    value = float(m.group(1))
    unit = m.group(2) or "s"
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise BadRequest(f"{name} must be >= 0")
    return value


def parse_json(raw: bytes) -> Any:
    """A request body as JSON: 400 when it is not UTF-8 JSON or nests deeper than
    MAX_JSON_DEPTH (the parser's own recursion limit included)."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise BadRequest(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def key_segment_error(key: str) -> str | None:
    """None when no '/'-separated segment of ``key`` is empty, ``.`` or ``..``; else why,
    with :data:`KEY_RULE`. Such a key would name another key, or another route, for any
    client, proxy or forwarder on the way that normalizes the path (``a/../b`` is ``b``,
    ``a//b`` is ``a/b`` behind nginx), so the API refuses it."""
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            what = "an empty segment" if not segment else f"a {segment!r} segment"
            return f"key {shown(key, 120)} has {what}: {KEY_RULE}"
    return None


def _check_id(value: object, what: str) -> str:
    """A member id from a request: 400 saying the rule when it is not one."""
    error = member_id_error(value, what)
    if error is not None:
        raise BadRequest(error)
    assert isinstance(value, str)
    return value


async def _json_body(request: web.Request, allowed: set[str], required: set[str]) -> dict:
    if not request.can_read_body:
        raise BadRequest("a JSON body is required")
    body = parse_json(await request.read())  # over client_max_size: 413
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(body))
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(missing)}")
    return body


class Api:
    def __init__(self, agent: NodeVerbs) -> None:
        self.agent = agent
        self.session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.errors: dict[int, int] = {}
        self.cap: ConnectionCap | None = None  # set by start_api
        self.malformed_log = WarnThrottle(log, MALFORMED_LOG_INTERVAL_S)

    # ---- middleware --------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests += 1
        try:
            if request.path != "/v1/health":
                self._check_token(request)
            return await handler(request)
        except StateErrorResult as exc:
            body = dict(exc.body)
            code = body.pop("error", None)
            message = body.pop("message", exc.message)
            body.pop("status", None)
            return self._count(_error(exc.status, str(message), code=code, **body))
        except AgentError as exc:
            return self._count(_error(exc.status, exc.message, **exc.extra))
        except StateError as exc:
            return self._count(_error(exc.status, exc.message, code=exc.code, **exc.extra))
        except web.HTTPRequestEntityTooLarge as exc:
            return self._count(_error(413, f"body too large: {exc.text or ''}".strip()))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return self._count(_error(exc.status, exc.reason))
        except (asyncio.CancelledError, ConnectionResetError):
            raise  # the client went away (or the agent stops): nobody to answer
        except Exception as exc:
            # A bug, never bad input (that is a 4xx above): one line, no traceback for the
            # client; the traceback at debug level for whoever chases the bug.
            log.error(
                "internal error in %s %s: %s: %s",
                request.method,
                shown(request.path, 200),
                type(exc).__name__,
                shown(str(exc), 200),
            )
            log.debug("internal error", exc_info=exc)
            return self._count(_error(500, f"internal error ({type(exc).__name__})"))

    def malformed(
        self, request: web.BaseRequest, status: int, exc: HttpProcessingError
    ) -> web.Response:
        """The answer to a request aiohttp's parser refused (a request line or header over
        8190 bytes, a byte a path may not hold, no HTTP at all): a JSON 400, and at most one
        warning line per source per MALFORMED_LOG_INTERVAL_S, never a traceback (anyone
        can send these, with no token)."""
        self.requests += 1
        source = request.remote or "an unknown address"
        what = " ".join(str(exc.message).split())  # aiohttp's own text, over several lines
        self.malformed_log.warn(
            source,
            "API: malformed HTTP request from %s, answered %d: %s: %s",
            source,
            status,
            type(exc).__name__,
            shown(what, 160),
        )
        return self._count(_error(status, f"malformed HTTP request: {what[:200]}"))

    def _count(self, resp: web.Response) -> web.Response:
        self.errors[resp.status] = self.errors.get(resp.status, 0) + 1
        return resp

    def _check_token(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise AgentError("missing API token (Authorization: Bearer <token>)", status=401)
        try:
            # aiohttp hands header bytes that are not UTF-8 over as surrogate escapes
            presented = given.strip().encode("utf-8")
        except UnicodeEncodeError:
            raise AgentError("wrong API token (not UTF-8 text)", status=401) from None
        if not hmac.compare_digest(presented, self.agent.token):
            raise AgentError("wrong API token", status=401)

    # ---- forwarding ------------------------------------------------------------------------
    async def _forward(
        self, request: web.Request, body: bytes | None = None, handed_over: bool = False
    ) -> web.Response:
        """Send a write to the leader and relay its answer. A forwarded request is not
        forwarded again (no loops), unless this node just handed leadership over for it."""
        if request.headers.get(FORWARDED) and not handed_over:
            raise NoLeader("forwarded to a node that is not the leader; no leader known here")
        api = self.agent.leader_api()
        if api is None:
            raise NoLeader("no leader known; the write was not proposed")
        if self.session is None:
            # aiohttp retries an idempotent request (PUT, DELETE) once on a new connection
            # when the first one breaks; a failed connect on that retry would turn a write the
            # leader may have applied into a 503 "not proposed". No retries and a fresh
            # connection per forward: a connect error then means the request was never sent.
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
            self.session._retry_connection = False  # no public switch for it in aiohttp 3.x
        # The path as it came, still encoded: a string would be parsed again and normalized
        # (dot segments resolved, %2F decoded), and the leader would write another key.
        url = URL(f"http://{api}{request.rel_url.raw_path_qs}", encoded=True)
        headers = {
            "Authorization": request.headers.get("Authorization", ""),
            FORWARDED: self.agent.id,
            "Content-Type": "application/json",
        }
        data = (
            body if body is not None else (await request.read() if request.can_read_body else None)
        )
        timeout = aiohttp.ClientTimeout(total=self.agent.write_timeout() + 5)
        try:
            async with self.session.request(
                request.method, url, data=data, headers=headers, timeout=timeout
            ) as resp:
                payload = await resp.read()
                return web.Response(
                    body=payload, status=resp.status, content_type="application/json"
                )
        except aiohttp.ClientConnectorError as exc:
            raise NoLeader(f"the leader at {api} is unreachable ({exc}); not proposed") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unknown(
                f"forwarded to the leader at {api}, no answer ({exc!r}); it may be applied"
            ) from None

    # ---- routes ----------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.agent.status())

    async def members(self, request: web.Request) -> web.Response:
        return web.json_response(self.agent.members_view())

    async def add_member(self, request: web.Request) -> web.Response:
        body = await _json_body(
            request,
            {"id", "raft_addr", "api_addr", "service_addr"},
            {"id", "raft_addr", "api_addr"},
        )
        _check_id(body["id"], "id")
        for f in ("raft_addr", "api_addr"):
            if not isinstance(body[f], str) or not body[f]:
                raise BadRequest(f"{f} must be a non-empty string")
        sa = body.get("service_addr")
        if sa is not None and not isinstance(sa, str):
            raise BadRequest("service_addr must be a string or null")
        if not self.agent.is_leader():
            return await self._forward(request, json.dumps(body).encode())
        return web.json_response(
            await self.agent.add_member(body["id"], body["raft_addr"], body["api_addr"], sa)
        )

    async def remove_member(self, request: web.Request) -> web.Response:
        agent = self.agent
        mid = request.match_info["id"]
        if not agent.in_config(mid):  # an id an older version let in can still be removed
            _check_id(mid, "member id")
        drain = request.query.get("drain_timeout")
        drain_s = parse_duration(drain) if drain is not None else None
        if agent.state.member(mid) is None and not agent.in_config(mid):
            raise NotFound(f"no member {shown(mid)}")
        if agent.is_leader() and mid == agent.id:
            # The leader hands over first; the new leader does the removal.
            await agent.hand_over_to_remove_self()
            if not agent.is_leader():
                return await self._forward(request, b"", handed_over=True)
        if not agent.is_leader():
            return await self._forward(request, b"")
        return web.json_response(await agent.remove_member(mid, drain_s))

    async def transfer(self, request: web.Request) -> web.Response:
        body = await _json_body(request, {"to"}, set()) if request.can_read_body else {}
        to = body.get("to")
        if to is not None:
            _check_id(to, "to")
        if not self.agent.is_leader():
            return await self._forward(request, json.dumps(body).encode())
        new = await self.agent.hand_over(to, timeout=self.agent.write_timeout())
        if new is None:
            raise AgentError("there is no other voter to hand leadership to", status=409)
        return web.json_response({"leader_id": new})

    async def weights(self, request: web.Request) -> web.Response:
        return web.json_response(self.agent.state.weights())

    async def watch(self, request: web.Request) -> web.Response:
        index = _int_param(request, "index") or 0
        wait = parse_duration(request.query.get("wait", "30s"))
        if wait > MAX_WAIT_S:
            raise BadRequest(f"wait is at most {MAX_WAIT_S:.0f}s")
        now = await self.agent.wait_index(index, wait)
        return web.json_response(
            {
                "index": now,
                "changed": now > index,
                "leader_id": self.agent.leader_id(),
                "members": self.agent.members_view(),
                "weights": self.agent.state.weights(),
            }
        )

    def _key(self, request: web.Request, *, stored_ok: bool = False) -> str:
        """The key of a ``/v1/kv/{key}`` route (decoded), checked against :data:`KEY_RULE`
        by every member before anything is forwarded or proposed. ``stored_ok``: a key that
        breaks the segment rule but is in the store (written by an older version) can still
        be read and deleted."""
        try:
            key = validate_key(request.match_info["key"])
        except StateError as exc:
            raise BadRequest(exc.message) from None
        error = key_segment_error(key)
        if error is not None and not (stored_ok and self.agent.state.kv_get(key) is not None):
            raise BadRequest(error)
        return key

    async def kv_get(self, request: web.Request) -> web.Response:
        key = self._key(request, stored_ok=True)
        if request.query.get("stale") in (None, "0", "false"):
            await self.agent.read_barrier()
        item = self.agent.state.kv_get(key)
        if item is None:
            raise NotFound(f"no key {key!r}")
        return web.json_response(item)

    async def kv_list(self, request: web.Request) -> web.Response:
        """``GET /v1/kv?prefix=P``: the keys under a prefix, with values (linearizable unless
        ``stale=1``)."""
        prefix = request.query.get("prefix", "")
        if request.query.get("stale") in (None, "0", "false"):
            await self.agent.read_barrier()
        state = self.agent.state
        items = [state.kv_get(k) for k in state.kv_keys(prefix)]
        return web.json_response({"prefix": prefix, "items": [i for i in items if i]})

    async def kv_put(self, request: web.Request) -> web.Response:
        key = self._key(request)
        cas = _int_param(request, "cas")
        body = await _json_body(request, {"value"}, {"value"})
        validate_cas(cas)
        validate_value(body["value"])
        if not self.agent.is_leader():
            return await self._forward(request, json.dumps(body).encode())
        # The leader's check is the one that counts (a follower's copy may lag): 413 before
        # anything is proposed when the write would grow the state past quota_bytes.
        self.agent.state.check_quota(self.agent.cfg.quota_bytes, key, body["value"])
        return web.json_response(
            await self.agent.write(encode_command("kv_put", key=key, value=body["value"], cas=cas))
        )

    async def kv_del(self, request: web.Request) -> web.Response:
        key = self._key(request, stored_ok=True)
        cas = _int_param(request, "cas")
        if not self.agent.is_leader():
            return await self._forward(request, b"")
        return web.json_response(await self.agent.write(encode_command("kv_del", key=key, cas=cas)))

    async def metrics(self, request: web.Request) -> web.Response:
        # Imported on first scrape: an agent nobody scrapes does not pay for it.
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return web.Response(
            body=generate_latest(registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


class _Collector:
    """Reads the live values at scrape time."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        agent = self.api.agent
        r = agent.raft_status()

        def g(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Any:
            fam = GaugeMetricFamily(name, doc, labels=list(labels or {}))
            fam.add_metric(list((labels or {}).values()), value)
            return fam

        yield g("hafleet_up", "1 while the agent runs", 1)
        if r is not None:
            yield g("hafleet_raft_term", "current Raft term", r.term)
            yield g("hafleet_raft_commit_index", "Raft commit index", r.commit)
            yield g("hafleet_raft_applied_index", "state machine applied index", agent.state.index)
            yield g(
                "hafleet_raft_apply_lag",
                "commit index minus applied index",
                r.commit - agent.state.index,
            )
            yield g("hafleet_raft_last_index", "last log index", r.last_index)
            st = GaugeMetricFamily("hafleet_raft_state", "1 for the current role", labels=["state"])
            current = agent.status()["state"]
            for s in ("leader", "follower", "candidate", "learner"):
                st.add_metric([s], 1 if s == current else 0)
            yield st
            yield g("hafleet_raft_is_leader", "1 on the leader", 1 if agent.is_leader() else 0)
            yield g("hafleet_raft_voters", "voters in the configuration", len(r.voters))
            yield g("hafleet_raft_learners", "learners in the configuration", len(r.learners))
        members = agent.members_view()
        yield g("hafleet_peers", "members known to this node", len(members))
        w = GaugeMetricFamily("hafleet_weight", "committed load-balancer weight", labels=["node"])
        h = GaugeMetricFamily("hafleet_member_healthy", "1 if healthy", labels=["node"])
        for m in members:
            if m["weight"] is not None:
                w.add_metric([m["id"]], m["weight"])
            h.add_metric([m["id"]], 1 if m["healthy"] else 0)
        yield w
        yield h
        yield g("hafleet_weights_version", "weight table version", agent.state.weights()["version"])
        hm = agent.metrics
        if hm is not None:
            yield g("hafleet_host_cpu_count", "CPUs", hm.cpu_count)
            yield g("hafleet_host_cpu_percent", "CPU use, smoothed", hm.cpu_percent)
            for n in ("load1", "load5", "load15"):
                yield g(f"hafleet_host_{n}", f"load average {n[4:]}", getattr(hm, n))
            yield g("hafleet_host_memory_total_bytes", "memory", hm.mem_total)
            yield g("hafleet_host_memory_available_bytes", "available memory", hm.mem_available)
            yield g("hafleet_process_resident_bytes", "agent RSS", hm.process_rss)
        if agent.transport is not None:
            for k, v in agent.transport.stats.as_dict().items():
                c = CounterMetricFamily(f"hafleet_transport_{k}", f"transport {k}")
                c.add_metric([], v)
                yield c
        yield g("hafleet_kv_bytes", "KV store size as the quota counts it", agent.state.kv_bytes())
        yield g("hafleet_kv_quota_bytes", "quota_bytes (0: no quota)", agent.cfg.quota_bytes)
        for source, names in (
            (agent.snap_sender, _SNAPSHOT_SEND_METRICS),
            (agent.snap_receiver, _SNAPSHOT_RECEIVE_METRICS),
        ):
            if source is not None:
                for key, (name, doc) in names.items():
                    c = CounterMetricFamily(name, doc)
                    c.add_metric([], source.stats[key])
                    yield c
        c = CounterMetricFamily("hafleet_api_requests", "API requests")
        c.add_metric([], self.api.requests)
        yield c
        e = CounterMetricFamily("hafleet_api_errors", "API errors by status", labels=["status"])
        for status, n in sorted(self.api.errors.items()):
            e.add_metric([str(status)], n)
        yield e
        cap = self.api.cap
        if cap is not None:
            yield g("hafleet_api_connections", "open API connections", cap.open)
            yield g("hafleet_api_connections_max", "the cap on open API connections", cap.limit)
            c = CounterMetricFamily(
                "hafleet_api_connections_refused", "API connections refused over the cap"
            )
            c.add_metric([], cap.refused)
            yield c
        yield g("hafleet_uptime_seconds", "agent uptime", time.monotonic() - agent.started_at)


# The chunked snapshot transfer's counters (snapxfer.py), by their key in its stats.
_SNAPSHOT_SEND_METRICS = {
    "started": ("hafleet_snapshot_sends_started", "chunked snapshot transfers started"),
    "completed": ("hafleet_snapshot_sends_completed", "chunked snapshots the receiver took"),
    "failed": ("hafleet_snapshot_sends_failed", "chunked snapshot transfers that failed"),
    "bytes_sent": ("hafleet_snapshot_bytes_sent", "snapshot data queued in chunks"),
}
_SNAPSHOT_RECEIVE_METRICS = {
    "completed": ("hafleet_snapshot_receives_completed", "chunked snapshots received whole"),
    "refused": ("hafleet_snapshot_receives_refused", "chunked snapshot transfers refused"),
    "bytes_received": ("hafleet_snapshot_bytes_received", "snapshot data received in chunks"),
}


def build_app(agent: NodeVerbs) -> tuple[web.Application, Api]:
    api = Api(agent)
    app = web.Application(middlewares=[api.middleware], client_max_size=agent.cfg.max_body_bytes)
    app.router.add_get("/v1/health", api.health)
    app.router.add_get("/v1/status", api.status)
    app.router.add_get("/v1/members", api.members)
    app.router.add_post("/v1/members", api.add_member)
    app.router.add_delete("/v1/members/{id}", api.remove_member)
    app.router.add_post("/v1/leadership/transfer", api.transfer)
    app.router.add_get("/v1/weights", api.weights)
    app.router.add_get("/v1/watch", api.watch)
    app.router.add_get("/v1/kv", api.kv_list)
    app.router.add_get("/v1/kv/{key:.+}", api.kv_get)
    app.router.add_put("/v1/kv/{key:.+}", api.kv_put)
    app.router.add_delete("/v1/kv/{key:.+}", api.kv_del)
    app.router.add_get("/metrics", api.metrics)

    async def close_session(app: web.Application) -> None:
        if api.session is not None:
            await api.session.close()

    app.on_cleanup.append(close_session)
    return app, api


def connection_limit(nofile: int | None = None) -> int:
    """MAX_CONNECTIONS, but at most a quarter of the file descriptor limit (and at least 8)."""
    if nofile is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = soft if soft != resource.RLIM_INFINITY else MAX_CONNECTIONS * 4
    return max(8, min(MAX_CONNECTIONS, nofile // 4))


_REFUSAL_BODY = b'{"error": "too many connections to this agent"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class ConnectionCap:
    """Counts the API's open connections. The site below accepts one connection at a time:
    within ``limit`` it becomes an aiohttp connection (wrapped in :class:`_Counted`, which
    gives the slot back when the connection ends); over it, the socket is answered 503 and
    closed before the next accept, so at most ``limit`` + 1 descriptors are ever in use."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int) -> None:
        self.factory = factory
        self.limit = limit
        self.open = 0
        self.refused = 0
        self._last_warning = 0.0

    def full(self) -> bool:
        return self.open >= self.limit

    def refuse(self, conn: socket.socket) -> None:
        self.refused += 1
        with contextlib.suppress(OSError):
            conn.send(_REFUSAL)  # non-blocking: a fresh socket's buffer takes it whole
        conn.close()
        self.warn(f"{self.open} connections open, the cap: refusing new ones")

    def warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning("API: %s (%d refused so far)", what, self.refused)

    def protocol(self) -> _Counted:
        """The protocol of a connection whose slot the accept loop took (``open += 1``)."""
        return _Counted(self.factory(), self)


class _Counted(asyncio.Protocol):
    """Passes everything to aiohttp's protocol; gives the slot back when the connection
    ends (or never started)."""

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap) -> None:
        self.inner = inner
        self.cap: ConnectionCap | None = cap

    def release(self) -> None:
        if self.cap is not None:
            self.cap.open -= 1
            self.cap = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _RequestHandler(web.RequestHandler):
    """aiohttp's connection protocol with one change: a request its parser refuses is
    answered by :meth:`Api.malformed` (a JSON 400, one throttled line per source) instead of
    a text/plain 400 and an ERROR with a traceback on ``aiohttp.server`` per request.

    aiohttp has no hook for these requests (they never reach the application or its
    middlewares): they come to ``handle_error(request, status, exc, message)``, as of
    aiohttp 3.14. Other errors that come there (a 500 or 504 of aiohttp's own, a bug) keep
    aiohttp's handling."""

    def __init__(self, manager: web.Server, *, api: Api, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.api = api

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or not 400 <= status < 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send the 400")
        resp = self.api.malformed(request, status, exc)
        resp.force_close()
        return resp


class _Listener:
    """What BaseSite.stop() closes: the accept loop and the listening socket."""

    def __init__(self, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self.sock = sock
        self.task = task

    def close(self) -> None:
        self.task.cancel()
        self.sock.close()


class _CappedSite(web.BaseSite):
    """A TCP site that accepts through a :class:`ConnectionCap` (aiohttp's TCPSite hands the
    listening socket to asyncio, which accepts as fast as connections come, up to the backlog
    at a time, whatever the descriptors left)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        limit: int,
        protocol: Callable[[], asyncio.Protocol],
    ) -> None:
        super().__init__(runner, backlog=LISTEN_BACKLOG)
        self.host, self.port, self.limit = host, port, limit
        self.protocol = protocol
        self.cap: ConnectionCap | None = None
        self._serving: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        self.cap = ConnectionCap(self.protocol, self.limit)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family, backlog=self._backlog)
        sock.setblocking(False)
        task = asyncio.create_task(self._accept(sock, self.cap), name="hafleet-api-accept")
        self._server = _Listener(sock, task)  # type: ignore[assignment]

    async def _accept(self, sock: socket.socket, cap: ConnectionCap) -> None:
        loop = asyncio.get_running_loop()
        while sock.fileno() != -1:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS...: descriptors short for now
                if sock.fileno() == -1:
                    return
                cap.warn(f"accept failed: {exc.strerror or exc}")
                await asyncio.sleep(0.1)
                continue
            if cap.full():
                cap.refuse(conn)
                continue
            cap.open += 1  # taken now: the connection's task may start after more accepts
            task = asyncio.create_task(self._serve(loop, conn, cap))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(
        self, loop: asyncio.AbstractEventLoop, conn: socket.socket, cap: ConnectionCap
    ) -> None:
        made: list[_Counted] = []

        def factory() -> _Counted:
            made.append(cap.protocol())
            return made[-1]

        try:
            await loop.connect_accepted_socket(factory, conn, ssl=self._ssl_context)
        except Exception as exc:  # e.g. a failed TLS handshake: the slot is free again
            if made:
                made[0].release()
            else:
                cap.open -= 1
            conn.close()
            log.debug("API connection dropped before it started: %r", exc)


async def start_api(agent: NodeVerbs) -> web.AppRunner:
    app, api = build_app(agent)
    handler_args: dict[str, Any] = {"access_log": None, "keepalive_timeout": KEEPALIVE_S}
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0, **handler_args)
    await runner.setup()
    server, loop = runner.server, asyncio.get_running_loop()
    assert server is not None

    def protocol() -> _RequestHandler:
        return _RequestHandler(server, api=api, loop=loop, **handler_args)

    site = _CappedSite(runner, agent.cfg.bind, agent.cfg.api_port, connection_limit(), protocol)
    await site.start()
    api.cap = site.cap
    return runner
