"""The agent's HTTP API: the routes, and the listener that serves them (``http.py``).

The routes, bodies and status codes are the contract of ``shared/DESIGN.md``; docs/api.md
describes each one. Every route but ``/v1/health`` needs ``Authorization: Bearer <token>``
(compared in constant time): the admin token, or the read token for reads only (403 on a
write); each write and each refused token is a line of the audit log (``audit.py``). Writes
that reach a follower are forwarded to the leader.
Errors are JSON ``{"error": "<what went wrong>", ...}``.

No client input makes a handler answer 500 or print a traceback: an Authorization header that
is not text is 401, a body that is not UTF-8 JSON, or nests deeper than MAX_JSON_DEPTH, is 400,
one over ``max_body_bytes`` 413, an id outside the member id grammar (:mod:`.ids`) 400 before
anything is proposed, a KV key outside :data:`KEY_RULE` (a ``.``, ``..`` or empty segment) 400
on every member before anything is forwarded. What still escapes a handler is a bug: one log
line, a JSON 500. A request the HTTP parser refuses (it never reaches a handler) is a JSON
400 too, and at most one log line per source address per MALFORMED_LOG_INTERVAL_S.

The handlers see the node only through :class:`~hafleet_agent.node.verbs.NodeVerbs` and the
errors of ``node/errors.py``. Beside them: ``forward.py`` takes a write that reached a
follower to the leader, ``prom.py`` answers ``/metrics``, ``conn.py`` is the listener (the
connection cap, TLS), ``http.py`` the HTTP/1.1 server, ``web.py`` its request and
response types (aiohttp's names and meanings).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..config import MAX_DRAIN_TIMEOUT_S
from ..discovery_records import parse_host_port
from ..ids import has_control, member_id_error, shown
from ..keys import OVERRIDE_PREFIX, OVERRIDE_RULE, valid_override
from ..logfmt import one_write
from ..node.errors import AgentError, BadRequest, NotFound, StateErrorResult
from ..registrations import balancers_view
from ..state import (
    MAX_KEY_BYTES,
    StateError,
    encode_command,
    json_depth_exceeds,
    validate_cas,
    validate_key,
    validate_value,
)
from ..throttle import WarnThrottle
from . import web
from .audit import NONE, READ, READ_METHODS, SCOPE, WHAT, Audit, load_read_token, scope_of
from .conn import Runner, serve
from .forward import Forwarder
from .health import check as health_check
from .maintenance import routes as maintenance_routes
from .prom import ApiCounters, exposition
from .snapshot import snapshot_handler
from .ui import PATHS as UI_PATHS
from .ui import add_routes as add_ui_routes

if TYPE_CHECKING:
    from ..node.verbs import NodeVerbs
    from ..state import ApplyResult

log = logging.getLogger("hafleet.api")

MAX_WAIT_S = 300.0
MAX_INDEX = 2**64 - 1  # an index, a revision (u64 in Raft's log)
LISTING_SLICE_BYTES = 1 << 20  # a listing is encoded this much at a time (``_listing``)
#: The deepest nesting of arrays and objects a request body may have.
MAX_JSON_DEPTH = 64
#: A request the HTTP parser refuses costs at most one log line per source per this long.
MALFORMED_LOG_INTERVAL_S = 10.0
KEY_RULE = (
    f"a key is 1-{MAX_KEY_BYTES} bytes of UTF-8 without control characters, segments "
    "separated by '/', none of them empty, '.' or '..'"
)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


#: An answered request's audit line (a write's) and latency observation wait at most this
#: long, or until BOOK_MAX of them wait, and are then done in one callback (``Api.book``).
BOOK_AFTER_S = 0.05
BOOK_MAX = 64
_APIS: weakref.WeakSet[Api] = weakref.WeakSet()  # for book_all


def book_all() -> None:
    """Every API's kept audit lines and latencies, now (an agent's exit that skips the API's
    cleanup: a fail-stop)."""
    for api in list(_APIS):
        api.book()


def _error_text(body: str | None) -> str:
    """The ``error`` of a JSON error body ("" when there is none)."""
    try:
        return str(json.loads(body or "").get("error", ""))
    except (ValueError, AttributeError):
        return ""


def parse_duration(text: str, name: str, most: float) -> float:
    """``30s``, ``500ms``, ``2m`` or plain seconds, at most ``most`` seconds (400 beyond:
    ``9`` 400 times was infinity)."""
    m = _DURATION.match(text.strip()) if text.isascii() and len(text) <= 32 else None
    if not m:
        raise BadRequest(f"bad {name} {shown(text, 40)}: use e.g. 30s, 500ms, 2m")
    value = float(m.group(1))
    unit = m.group(2) or "s"
    seconds = value / 1000 if unit == "ms" else value * 60 if unit == "m" else value
    if not seconds <= most:
        raise BadRequest(f"{name} {shown(text, 40)} is over {most:g}s")
    return seconds


def _int_param(request: web.Request, name: str) -> int | None:
    """A query parameter of ASCII digits only, at most 2**64 - 1 (an index or a revision);
    ``int`` alone took ``1_0``, ``+0``, `` 5`` and other scripts' digits."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"{name} must be an integer >= 0, got {shown(raw, 40)}")
    if len(raw) > 20 or int(raw) > MAX_INDEX:
        raise BadRequest(f"{name} must be at most {MAX_INDEX} (2^64 - 1), got {shown(raw, 40)}")
    return int(raw)


def _check_member_addr(text: str, name: str) -> None:
    """A new member's address: HOST:PORT as an mDNS announcement must have it
    (``parse_host_port``: an IP address or a DNS name of at most 253 bytes, labels of at
    most 63). 400 otherwise: a 100,000-byte address was taken, and every member logged it at
    each connection attempt."""
    if has_control(text):
        raise BadRequest(f"{name} must not hold control or format characters")
    try:
        parse_host_port(text)
    except ValueError as exc:
        raise BadRequest(
            f"{name} must be HOST:PORT (an IP address or a DNS name of at most 253 bytes with"
            f" labels of at most 63 characters, a port in 1..65535): {exc}"
        ) from None


async def _listing(head: dict[str, Any], name: str, items: list[Any]) -> bytes:
    """``json.dumps({**head, name: items})`` encoded a slice at a time, the event loop let go
    after each ~MiB: one listing of 100 MB held the loop for 0.5 s, longer than an election
    timeout, and the leader lost its leadership to it."""
    parts = [json.dumps(head)[:-1].encode(), f", {json.dumps(name)}: [".encode()]
    size = 0
    for i, item in enumerate(items):
        text = json.dumps(item).encode()
        parts.append(b", " + text if i else text)
        size += len(text)
        if size >= LISTING_SLICE_BYTES:
            size = 0
            await asyncio.sleep(0)
    parts.append(b"]}")
    return b"".join(parts)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON: 400 when it is not UTF-8 JSON or nests deeper than
    MAX_JSON_DEPTH (the parser's own recursion limit included)."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except ValueError:  # Python's limit on the digits of an integer (4300)
        raise BadRequest(
            f"an integer in the body has more than {sys.get_int_max_str_digits()} digits"
        ) from None
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
        self.forwarder = Forwarder(agent)
        self.counters = ApiCounters()  # its cap set by start_api
        self.malformed_log = WarnThrottle(log, MALFORMED_LOG_INTERVAL_S)
        self.read_token = load_read_token(agent.cfg, agent.token)  # audit.py; None: no such token
        self.audit = Audit()
        # Answered requests whose audit line and latency observation wait for ``book``.
        self._booked: list[tuple[dict[str, str] | None, float, str, str, float]] = []
        self._book_timer: asyncio.Handle | None = None
        _APIS.add(self)

    # ---- middleware --------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count, check the token and its scope, answer, and audit (server/audit.py)."""
        self.counters.requests += 1
        started = asyncio.get_running_loop().time()
        try:
            resp = await self._answer(request, handler)
        except web.HTTPException as exc:  # a status below 400, re-raised
            self.book()  # the lines kept so far come first
            self.audit.answered(request, exc.status)
            raise
        except BaseException:
            self.book()
            self.audit.answered(request, None)  # cancelled: no answer sent
            raise
        loop = asyncio.get_running_loop()
        if resp.status in (401, 403):
            # A refusal's throttled warning once the answer is written (the server writes it
            # when this returns, in this same callback).
            error = _error_text(resp.text) if isinstance(resp, web.Response) else ""
            loop.call_soon(self._answered, request, resp.status, error, started)
        else:
            self._book(request, resp.status, loop.time() - started, loop)
        return resp

    def _answered(self, request: web.Request, status: int, error: str, started: float) -> None:
        self.book()  # the lines kept so far come first: the log keeps the answers' order
        self.audit.answered(request, status, error)
        elapsed = asyncio.get_running_loop().time() - started
        self.counters.observe(request.method, request.path, elapsed)  # latency histograms

    def _book(
        self, request: web.Request, status: int, elapsed: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Keep an answered request's audit line (its fields, taken now: the request is not
        kept) and latency for the next batch (``book``): BOOK_AFTER_S after the first one
        kept, or in the next callback once BOOK_MAX wait."""
        record = self.audit.write_record(request, status)
        self._booked.append((record, time.time(), request.method, request.path, elapsed))
        if len(self._booked) == BOOK_MAX:
            if self._book_timer is not None:
                self._book_timer.cancel()
            self._book_timer = loop.call_soon(self.book)
        elif self._book_timer is None:
            self._book_timer = loop.call_later(BOOK_AFTER_S, self.book)

    def book(self) -> None:
        """Write the kept audit lines (each with the time of its answer) and observe the
        kept latencies: a batch runs with its code and data warm, where one at each answer
        found them cold (an audit line: ~12 µs of CPU in a loop, several times that alone)."""
        if self._book_timer is not None:
            self._book_timer.cancel()
            self._book_timer = None
        booked, self._booked = self._booked, []
        with one_write():  # the batch's lines in one write to the log
            for record, at, method, path, elapsed in booked:
                if record is not None:
                    self.audit.write_line(record, at)
                self.counters.observe(method, path, elapsed)

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path != "/v1/health" and request.path not in UI_PATHS:  # ui.py
                request[SCOPE] = self._check_token(request)
                if request[SCOPE] == READ and request.method not in READ_METHODS:
                    raise AgentError(
                        "this token may only read; a write needs the admin token", status=403
                    )
            return await handler(request)
        except StateErrorResult as exc:
            body = dict(exc.body)
            code = body.pop("error", None)
            message = body.pop("message", exc.message)
            body.pop("status", None)
            return self.counters.count(_error(exc.status, str(message), code=code, **body))
        except AgentError as exc:
            return self.counters.count(_error(exc.status, exc.message, **exc.extra))
        except StateError as exc:
            return self.counters.count(_error(exc.status, exc.message, code=exc.code, **exc.extra))
        except web.HTTPRequestEntityTooLarge as exc:
            return self.counters.count(_error(413, f"body too large: {exc.text or ''}".strip()))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = _error(exc.status, exc.reason)
            if "Allow" in exc.headers:  # a 405 says which methods the path takes (RFC 9110)
                resp.headers["Allow"] = exc.headers["Allow"]
            return self.counters.count(resp)
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
            return self.counters.count(_error(500, f"internal error ({type(exc).__name__})"))

    def malformed(self, remote: str | None, status: int, what: str) -> web.Response:
        """The answer to a request the HTTP parser refused (a request line or header over
        8190 bytes, a byte a path may not hold, no HTTP at all): a JSON 400, and at most one
        warning line per source per MALFORMED_LOG_INTERVAL_S, never a traceback (anyone
        can send these, with no token)."""
        self.counters.requests += 1
        source = remote or "an unknown address"
        self.malformed_log.warn(
            source,
            "API: malformed HTTP request from %s, answered %d: %s",
            source,
            status,
            shown(what, 160),
        )
        return self.counters.count(_error(status, f"malformed HTTP request: {what[:200]}"))

    def _check_token(self, request: web.Request) -> str:
        """The scope of the request's token (audit.ADMIN or audit.READ); 401 for none."""
        auth = request.headers.get("Authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise AgentError("missing API token (Authorization: Bearer <token>)", status=401)
        try:
            # the server hands header bytes that are not UTF-8 over as surrogate escapes
            presented = given.strip().encode("utf-8")
        except UnicodeEncodeError:
            raise AgentError("wrong API token (not UTF-8 text)", status=401) from None
        scope = scope_of(presented, self.agent.token, self.read_token)
        if scope == NONE:
            raise AgentError("wrong API token", status=401)
        return scope

    # ---- routes ----------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        status, body = health_check(self.agent)  # health.py: 200 or 503 and why
        return web.json_response(body, status=status)

    async def status(self, request: web.Request) -> web.Response:
        body = self.agent.status()
        state = self.agent.state
        body["balancers"] = balancers_view(state.kv_keys, state.kv_get, time.time())
        return web.json_response(body)

    async def members(self, request: web.Request) -> web.Response:
        return web.json_response(self.agent.members_view())

    async def add_member(self, request: web.Request) -> web.Response:
        body = await _json_body(
            request,
            {"id", "raft_addr", "api_addr", "service_addr"},
            {"id", "raft_addr", "api_addr"},
        )
        request[WHAT] = ("member", _check_id(body["id"], "id"))
        for f in ("raft_addr", "api_addr"):
            if not isinstance(body[f], str) or not body[f]:
                raise BadRequest(f"{f} must be a non-empty string")
        sa = body.get("service_addr")
        if sa is not None and not isinstance(sa, str):
            raise BadRequest("service_addr must be a string or null")
        for f in ("raft_addr", "api_addr", "service_addr"):
            if isinstance(body.get(f), str):
                _check_member_addr(body[f], f)
        if not self.agent.is_leader():
            return await self.forwarder.forward(request, json.dumps(body).encode())
        return web.json_response(
            await self.agent.add_member(body["id"], body["raft_addr"], body["api_addr"], sa)
        )

    async def remove_member(self, request: web.Request) -> web.Response:
        agent = self.agent
        mid = request.match_info["id"]
        if not agent.in_config(mid):  # an id an older version let in can still be removed
            _check_id(mid, "member id")
        drain = request.query.get("drain_timeout")
        drain_s = (
            parse_duration(drain, "drain_timeout", MAX_DRAIN_TIMEOUT_S)
            if drain is not None
            else None
        )
        if agent.state.member(mid) is None and not agent.in_config(mid):
            raise NotFound(f"no member {shown(mid)}")
        if agent.is_leader() and mid == agent.id:
            # The leader hands over first; the new leader does the removal.
            await agent.hand_over_to_remove_self()
            if not agent.is_leader():
                return await self.forwarder.forward(request, b"", handed_over=True)
        if not agent.is_leader():
            return await self.forwarder.forward(request, b"")
        return web.json_response(await agent.remove_member(mid, drain_s))

    async def transfer(self, request: web.Request) -> web.Response:
        body = await _json_body(request, {"to"}, set()) if request.can_read_body else {}
        to = body.get("to")
        if to is not None:
            request[WHAT] = ("to", _check_id(to, "to"))
        if not self.agent.is_leader():
            return await self.forwarder.forward(request, json.dumps(body).encode())
        new = await self.agent.hand_over(to, timeout=self.agent.write_timeout())
        if new is None:
            raise AgentError("there is no other voter to hand leadership to", status=409)
        return web.json_response({"leader_id": new})

    async def weights(self, request: web.Request) -> web.Response:
        return web.json_response(self.agent.state.weights())

    async def watch(self, request: web.Request) -> web.Response:
        index = _int_param(request, "index") or 0
        wait = parse_duration(request.query.get("wait", "30s"), "wait", MAX_WAIT_S)
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
        items = [i for i in (state.kv_get(k) for k in state.kv_keys(prefix)) if i]
        body = await _listing({"prefix": prefix}, "items", items)
        return web.Response(body=body, content_type="application/json")

    async def kv_put(self, request: web.Request) -> web.Response:
        key = self._key(request)
        cas = _int_param(request, "cas")
        body = await _json_body(request, {"value"}, {"value"})
        validate_cas(cas)
        validate_value(body["value"])
        if key.startswith(OVERRIDE_PREFIX) and not valid_override(body["value"]):
            raise BadRequest(f"{key} = {shown(body['value'])} is refused: {OVERRIDE_RULE}")
        if not self.agent.is_leader():
            return await self.forwarder.forward(request, json.dumps(body).encode())
        # The leader's check is the one that counts (a follower's copy may lag): 413 before
        # anything is proposed when the write would grow the state past quota_bytes.
        self.agent.state.check_quota(self.agent.cfg.quota_bytes, key, body["value"])
        cmd = encode_command("kv_put", key=key, value=body["value"], cas=cas)
        return await self._write(request, cmd)

    async def kv_del(self, request: web.Request) -> web.Response:
        key = self._key(request, stored_ok=True)
        cas = _int_param(request, "cas")
        if not self.agent.is_leader():
            return await self.forwarder.forward(request, b"")
        return await self._write(request, encode_command("kv_del", key=key, cas=cas))

    async def _write(self, request: web.Request, cmd: bytes) -> web.StreamResponse:
        """Commit ``cmd`` and answer with its result. The answer is written at the apply
        (``on_applied``: ``answer_now``), a loop cycle before this handler resumes; an error
        result comes back as the exception it raises here, answered as before."""

        def answer(res: ApplyResult) -> None:
            if res.ok:
                request.answer_now(web.json_response(res.result or {}))

        result = await self.agent.write(cmd, on_applied=answer)
        return request.answered or web.json_response(result)

    async def metrics(self, request: web.Request) -> web.Response:
        self.book()  # the latencies observed so far, all of them
        return exposition(self.agent, self.counters)


#: The routes (docs/api.md), in the order they are added: method, path, the Api handler.
ROUTES = """
GET     /v1/health               health
GET     /v1/status               status
GET     /v1/members              members
POST    /v1/members              add_member
DELETE  /v1/members/{id}         remove_member
POST    /v1/leadership/transfer  transfer
GET     /v1/weights              weights
GET     /v1/watch                watch
GET     /v1/kv                   kv_list
GET     /v1/kv/{key:.+}          kv_get
PUT     /v1/kv/{key:.+}          kv_put
DELETE  /v1/kv/{key:.+}          kv_del
GET     /metrics                 metrics
"""


def build_app(agent: NodeVerbs) -> tuple[web.Application, Api]:
    api = Api(agent)
    app = web.Application(middlewares=[api.middleware], client_max_size=agent.cfg.max_body_bytes)
    router = app.router
    add = {"GET": router.add_get, "POST": router.add_post, "PUT": router.add_put}
    add["DELETE"] = router.add_delete  # add_get adds HEAD as well, as it always did
    for line in ROUTES.strip().splitlines():
        method, path, handler = line.split()
        add[method](path, getattr(api, handler))
    # PUT/DELETE /v1/members/{id}/maintenance (maintenance.py)
    for method, path, handle in maintenance_routes(api.agent, api.forwarder, web):
        add[method](path, handle)
    add_ui_routes(add["GET"], web.Response)  # GET /ui/: the cluster page (ui.py)
    add["GET"]("/v1/snapshot", snapshot_handler(agent))  # a backup (snapshot.py)

    async def close_session(app: web.Application) -> None:
        api.book()  # the last answers' audit lines, before the agent stops
        await api.forwarder.close()

    app.on_cleanup.append(close_session)
    return app, api


async def start_api(agent: NodeVerbs) -> Runner:
    """Serve the API on the agent's address (HTTPS with its certificate when TLS is on);
    ``await runner.cleanup()`` stops it."""
    app, api = build_app(agent)
    tls = agent.cfg.tls
    runner = await serve(
        app,
        agent.cfg.bind,
        agent.cfg.api_port,
        ssl_context=tls.api_server if tls is not None else None,
        malformed=api.malformed,
    )
    api.counters.cap = runner.cap
    return runner
