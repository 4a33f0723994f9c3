# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one client of the hafleet agent's HTTP API.

Standard library only and Python 3.8 syntax: ``make vendor`` copies this file byte for byte
to ``plugins/module_utils/_api_client.py``, where the collection's modules run it on managed
nodes. The agent's CLI (``hafleet_agent.client``) and the balancer's syncer use it too.

One method per route (docs: the project's design, "HTTP API"); JSON in and out;
``Authorization: Bearer <token>``; a timeout on every call; one error class,
:class:`APIError`, with the HTTP status and the agent's ``{"error": ...}`` text:

* 400 bad input, 401 no or wrong token, 403 not allowed, 404 absent, 409 CAS conflict,
  413 body too large;
* 503 no leader: a write was never proposed, retrying is safe;
* 504 the write was proposed but its fate is unknown: treat it as maybe applied.

``status`` is ``None`` when no HTTP answer arrived (refused, timeout, TLS failure).

TLS: ``https://`` URLs are verified against ``ca_path`` (a PEM file of the cluster CA, or a
directory of hashed certificates) when given, else against the system's CAs; the agent's
certificate must name the host of the URL. ``validate_certs=False`` skips both checks (for
a test bench only). A certificate that does not verify is an :class:`APIError` that says so,
with ``sent=False``: the handshake failed before the request went out.

Paths: every key or member id is quoted as ONE path segment, ``/`` included
(:func:`api_path`), so a key never adds or removes levels on the way (``a/../b`` has no dot
segment for a proxy or a forwarding follower to fold away). The agent decodes ``%2F`` back
to ``/``. A key that is only ``.`` or ``..`` cannot be addressed: the agent's router folds
it (404).

Failover: a client has one or more base URLs (and can :meth:`APIClient.learn` the members'
API addresses). A call to a cluster-wide route that gets no HTTP answer before its request
went out, or a 503, is tried on the next URL, each URL at most once per call; a write whose
request may have reached an agent is not repeated (:attr:`APIError.maybe_applied`). Routes
that describe one agent (``health``, ``status``) never fail over. Followers forward writes
to the leader themselves, so no URL needs to be the leader's.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.request
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_API_URL = "http://127.0.0.1:7480"
DEFAULT_TIMEOUT = 10.0
DEFAULT_USER_AGENT = "hafleet-apiclient"
#: The longest long poll the agent accepts (``wait`` of ``GET /v1/watch``), in seconds.
MAX_WATCH_WAIT = 300.0
#: Added to a watch's ``wait`` for its HTTP timeout.
WATCH_TIMEOUT_MARGIN = 10.0

# Longest stretch of a non-JSON error body kept in an error message.
_MAX_ERROR_TEXT = 500

# Member ids: the agent's grammar (MEMBER_ID_RE in hafleet_agent/ids.py; change both
# together). \Z, not $: a $ would let a trailing newline through.
MEMBER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
MEMBER_ID_RULE = (
    "a member id is 1-63 characters of letters, digits, '.', '_' and '-', starting with "
    "a letter or digit (^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$)"
)

_NO_BODY = object()


class APIError(Exception):
    """A call to an agent's HTTP API failed.

    ``status``: the HTTP status code, or ``None`` when no HTTP answer arrived.
    ``message``: the agent's ``{"error": ...}`` text when it sent one, else a short
    description. ``body``: the decoded JSON error body, if any. ``sent``: ``False`` when
    the request certainly never reached an agent (connection refused, name not found).
    """

    def __init__(self, message, status=None, method=None, url=None, body=None, sent=True):
        super().__init__(message)
        self.message = message
        self.status = status
        self.method = method
        self.url = url
        self.body = body
        self.sent = sent

    @property
    def maybe_applied(self):
        """Whether a write that failed this way may still take effect: a 504, or no answer
        to a request that may have reached the agent. Always ``False`` for a GET."""
        if self.method in (None, "GET"):
            return False
        return self.status == 504 or (self.status is None and self.sent)

    @property
    def retryable(self):
        """Whether the same call may go to another agent: nothing was proposed (a 503) or
        nothing was sent."""
        return self.status == 503 or (self.status is None and not self.maybe_applied)

    def __str__(self):
        where = " ".join(part for part in (self.method, self.url) if part)
        status = f"HTTP {self.status}" if self.status is not None else "no HTTP answer"
        if where:
            return f"{where}: {status}: {self.message}"
        return f"{status}: {self.message}"


def quote_segment(segment):
    """One path segment with every reserved character quoted, ``/`` too."""
    return quote(segment if isinstance(segment, str) else str(segment), safe="")


def api_path(*segments):
    """Join path segments into an API path, quoting each one completely.

    ``api_path("v1", "kv", "a/b c")`` is ``"/v1/kv/a%2Fb%20c"``: a segment never adds levels.
    """
    return "/" + "/".join(quote_segment(segment) for segment in segments)


def member_id_error(value, what="id"):
    """``None`` when ``value`` is a valid member id, else why not (the value shown escaped
    and cut short, and the rule)."""
    if isinstance(value, str) and MEMBER_ID_RE.match(value):
        return None
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{what} {shown} is not valid: {MEMBER_ID_RULE}"


def _query_value(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _seconds(value):
    """A duration in seconds as the agent's parameters take it (``"2.5s"``)."""
    return f"{float(value):g}s"


def tls_context(validate_certs=True, ca_path=None):
    """The client's ``ssl.SSLContext``: the agent's certificate verified against ``ca_path``
    (a PEM file, or a directory of hashed certificates; only those CAs are trusted) or else
    the system's CAs, its name checked against the URL's host; nothing checked when
    ``validate_certs`` is false. ValueError when ``ca_path`` cannot be loaded."""
    if ca_path:
        ca_path = os.path.expanduser(str(ca_path))
    try:
        if ca_path and os.path.isdir(ca_path):
            context = ssl.create_default_context(capath=ca_path)
        else:
            context = ssl.create_default_context(cafile=ca_path or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the CA file {ca_path}: {exc}") from None
    if not validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The API never redirects: a 3xx is an error, not a hop to somewhere else (with the
    token)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class APIClient:
    """A client of the agents' HTTP API.

    ``urls``: one base URL such as ``http://10.77.0.11:7480`` or a list of them (failover
    order). ``token``: the API token (str or bytes; ``None`` sends no ``Authorization``
    header: only ``/v1/health`` answers then). ``timeout``: seconds, each call.
    ``validate_certs``/``ca_path``/``ssl_context``: for ``https://`` URLs. ``use_proxy``:
    whether the ``*_proxy`` environment variables apply. ``logger``: a ``logging.Logger``
    that hears of failovers (none by default).
    """

    def __init__(
        self,
        urls=DEFAULT_API_URL,
        token=None,
        timeout=DEFAULT_TIMEOUT,
        validate_certs=True,
        ca_path=None,
        use_proxy=True,
        user_agent=DEFAULT_USER_AGENT,
        ssl_context=None,
        logger=None,
    ):
        if isinstance(urls, (str, bytes)):
            urls = [urls]
        given = []
        for url in urls:
            url = (url.decode() if isinstance(url, bytes) else str(url)).strip()
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"the API URL must start with http:// or https://, got {url!r}")
            try:
                parts = urlsplit(url)
                port = parts.port  # ValueError when it is no port (a refused connection said so)
            except ValueError as exc:
                raise ValueError(f"bad API URL {url!r}: {exc}") from None
            if not parts.hostname or port == 0:
                raise ValueError(f"bad API URL {url!r}: no host, or port 0")
            url = url.rstrip("/")
            if url not in given:
                given.append(url)
        if not given:
            raise ValueError("at least one API URL is needed")
        if isinstance(token, bytes):
            token = token.decode("utf-8", "replace")
        if token and not all("!" <= c <= "~" for c in token):
            # (the header went out as Latin-1: a UnicodeEncodeError, or a token the agent,
            # which takes printable ASCII only, does not know)
            raise ValueError("the API token must be printable ASCII (no spaces or other letters)")
        self.given = given
        self.learned = []
        self.current = 0
        self.token = token or None
        self.timeout = timeout
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.use_proxy = use_proxy
        self.user_agent = user_agent
        self.logger = logger
        if ssl_context is None and (
            ca_path or not validate_certs or any(u.startswith("https://") for u in given)
        ):
            ssl_context = tls_context(validate_certs, ca_path)
        self.ssl_context = ssl_context
        handlers = [_NoRedirect()]
        if not use_proxy:
            handlers.append(urllib.request.ProxyHandler({}))
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        self._opener = urllib.request.build_opener(*handlers)

    # ---- the URLs and failover -------------------------------------------------------------

    @property
    def urls(self):
        """The URLs given first, then the learned ones."""
        return self.given + [u for u in self.learned if u not in self.given]

    @property
    def base_url(self):
        """The URL the next call goes to."""
        urls = self.urls
        return urls[self.current % len(urls)]

    def fail_over(self, why):
        """Move on to the next URL (logged when there is one)."""
        old = self.base_url
        self.current = (self.current + 1) % len(self.urls)
        if self.base_url != old and self.logger is not None:
            self.logger.warning("agent API %s: %s; trying %s", old, why, self.base_url)

    def learn(self, members):
        """Add the API addresses of ``members`` (``/v1/members`` or ``/v1/watch`` entries) as
        URLs to fail over to, in place of the ones learned before; same scheme as the first
        URL given."""
        current = self.base_url
        self.learned = sorted(self._member_urls(members))
        urls = self.urls
        self.current = urls.index(current) if current in urls else 0

    def avoid(self, members, why):
        """Move off the URL of a member in ``members`` (``/v1/members`` or ``/v1/watch``
        entries) when another URL is left: e.g. one that is draining and about to leave the
        group, whose answers to calls in flight would be cut off. Logged like a failover."""
        shun = self._member_urls(members)
        urls = self.urls
        if self.base_url not in shun:
            return
        for step in range(1, len(urls)):
            candidate = (self.current + step) % len(urls)
            if urls[candidate] not in shun:
                old = self.base_url
                self.current = candidate
                if self.logger is not None:
                    self.logger.warning("agent API %s: %s; trying %s", old, why, self.base_url)
                return

    def _member_urls(self, members):
        """The API URLs of ``members`` (entries with an ``api_addr``), in the scheme of the
        first URL given."""
        scheme = urlsplit(self.given[0]).scheme or "http"
        urls = set()
        for member in members or []:
            addr = member.get("api_addr")
            if isinstance(addr, str) and addr:
                urls.add(f"{scheme}://{addr}")
        return urls

    def for_api_addr(self, api_addr, timeout=None):
        """A client like this one (token, TLS settings) of one agent, given its ``host:port``
        API address."""
        scheme = urlsplit(self.base_url).scheme or "http"
        return APIClient(
            f"{scheme}://{api_addr}",
            token=self.token,
            timeout=self.timeout if timeout is None else timeout,
            validate_certs=self.validate_certs,
            ca_path=self.ca_path,
            use_proxy=self.use_proxy,
            user_agent=self.user_agent,
            ssl_context=self.ssl_context,
            logger=self.logger,
        )

    # ---- one request -----------------------------------------------------------------------

    def url(self, path, query=None, base=None):
        """The full URL of ``path`` (which starts with ``/``), with ``query`` encoded (values
        ``None`` left out, booleans as ``1``/``0``)."""
        if not path.startswith("/"):
            raise ValueError(f"an API path starts with '/', got {path!r}")
        url = (base or self.base_url) + path
        if query:
            pairs = [(k, _query_value(v)) for k, v in query.items() if v is not None]
            if pairs:
                url += "?" + urlencode(pairs)
        return url

    def request(self, method, path, body=_NO_BODY, query=None, timeout=None, failover=True):
        """Send one call; return the decoded JSON answer (``None`` for an empty one).

        With ``failover``, a :attr:`APIError.retryable` failure moves to the next URL and
        tries again there, each URL at most once. Raises :class:`APIError` for any status
        but 2xx and when no answer arrived.
        """
        attempts = len(self.urls) if failover else 1
        attempt = 1
        while True:
            try:
                return self._once(self.base_url, method, path, body, query, timeout)
            except APIError as exc:
                if not failover or not exc.retryable or attempt >= attempts:
                    raise
                attempt += 1
                self.fail_over(f"{exc.method} {path}: {exc.message} ({exc.status or 'no answer'})")

    def _once(self, base, method, path, body, query, timeout):
        method = method.upper()
        url = self.url(path, query, base=base)
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not _NO_BODY:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=self.timeout if timeout is None else timeout) as r:
                status = r.status
                raw = r.read()
        except urllib.error.HTTPError as exc:
            raise _error_from_http(exc, method, url) from None
        except urllib.error.URLError as exc:
            # urllib raises URLError while connecting and sending: never sent when refused.
            reason = exc.reason
            if isinstance(reason, ssl.SSLError):  # the handshake: nothing was sent yet
                raise APIError(
                    self._tls_failure(reason), method=method, url=url, sent=False
                ) from None
            sent = not isinstance(reason, (ConnectionRefusedError, socket.gaierror))
            raise APIError(f"request failed: {reason}", method=method, url=url, sent=sent) from None
        except (OSError, http.client.HTTPException) as exc:
            # While waiting for or reading the answer: timeouts, a closed connection.
            hint = ""
            if isinstance(exc, http.client.RemoteDisconnected) and url.startswith("http://"):
                # An agent whose API uses TLS closes a plain-HTTP connection without a word.
                hint = " (an agent whose API uses TLS answers only https:// URLs)"
            raise APIError(f"request failed: {exc}{hint}", method=method, url=url) from None
        if not raw:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            raise APIError(
                f"the answer is not JSON: {exc}", status=status, method=method, url=url
            ) from None

    def _tls_failure(self, reason):
        """What went wrong in a TLS handshake, said plainly."""
        if isinstance(reason, ssl.SSLCertVerificationError):
            against = f"the CA in {self.ca_path}" if self.ca_path else "the system's CAs"
            detail = reason.verify_message or reason.reason or str(reason)
            return (
                f"TLS: the agent's certificate did not verify against {against}: {detail} "
                "(give the cluster CA with --ca-file / ca_path)"
            )
        return f"TLS handshake failed: {reason}"

    # ---- the routes ------------------------------------------------------------------------

    def health(self):
        """``GET /v1/health`` of this agent (no token needed); 503 while it has no leader or
        lags behind."""
        return self.request("GET", "/v1/health", failover=False)

    def status(self):
        """``GET /v1/status`` of this agent (never another one)."""
        return self.request("GET", "/v1/status", failover=False)

    def members(self):
        """``GET /v1/members``: the members as the agent knows them."""
        return self.request("GET", "/v1/members")

    def add_member(self, member_id, raft_addr, api_addr, service_addr=None):
        """``POST /v1/members``: add a learner (the leader promotes it when caught up)."""
        body = {"id": member_id, "raft_addr": raft_addr, "api_addr": api_addr}
        if service_addr is not None:
            body["service_addr"] = service_addr
        return self.request("POST", "/v1/members", body)

    def remove_member(self, member_id, drain_timeout=None, timeout=None):
        """``DELETE /v1/members/{id}``: drain, then remove (a leader hands over first)."""
        query = None
        if drain_timeout is not None:
            query = {"drain_timeout": _seconds(drain_timeout)}
        path = api_path("v1", "members", member_id)
        return self.request("DELETE", path, query=query, timeout=timeout)

    def maintenance_on(self, member_id, reason=None, force=False):
        """``PUT /v1/members/{id}/maintenance``: weight 0, drained from every balancer, still
        a voter. Answers ``{"id", "maintenance", "since", "reason", "changed"}``; 409 when no
        other member would stay in service, unless ``force`` (``?force=true``)."""
        body = {"reason": reason} if reason is not None else {}
        query = {"force": "true"} if force else None
        path = api_path("v1", "members", member_id, "maintenance")
        return self.request("PUT", path, body, query=query)

    def maintenance_off(self, member_id):
        """``DELETE /v1/members/{id}/maintenance``: back in rotation (same answer)."""
        return self.request("DELETE", api_path("v1", "members", member_id, "maintenance"))

    def transfer_leadership(self, to=None):
        """``POST /v1/leadership/transfer``; answers ``{"leader_id": ...}``."""
        return self.request("POST", "/v1/leadership/transfer", {"to": to})

    def weights(self):
        """``GET /v1/weights``: ``{"version": n, "weights": {id: w}}``."""
        return self.request("GET", "/v1/weights")

    def watch(self, index=0, wait=30.0, timeout=None, failover=True):
        """``GET /v1/watch``: blocks until the state's index passes ``index`` or ``wait``
        seconds pass; answers ``{"index", "changed", "leader_id", "members", "weights"}``."""
        if timeout is None:
            timeout = float(wait) + WATCH_TIMEOUT_MARGIN
        query = {"index": int(index), "wait": _seconds(wait)}
        return self.request("GET", "/v1/watch", query=query, timeout=timeout, failover=failover)

    def kv_get(self, key, stale=False):
        """``GET /v1/kv/{key}``: ``{"key", "value", "modify_index"}``; a 404 when absent.
        Linearizable unless ``stale`` (then the agent's local copy)."""
        query = {"stale": True} if stale else None
        return self.request("GET", api_path("v1", "kv", key), query=query)

    def kv_list(self, prefix="", stale=False):
        """``GET /v1/kv?prefix=P``: ``{"prefix", "items": [...]}``."""
        query = {"prefix": prefix, "stale": True if stale else None}
        return self.request("GET", "/v1/kv", query=query)

    def kv_put(self, key, value, cas=None):
        """``PUT /v1/kv/{key}``; with ``cas`` only if the key's modify_index is ``cas`` (0:
        only if absent), else 409. Answers ``{"key", "value", "modify_index"}``."""
        query = {"cas": int(cas)} if cas is not None else None
        return self.request("PUT", api_path("v1", "kv", key), {"value": value}, query=query)

    def kv_delete(self, key, cas=None):
        """``DELETE /v1/kv/{key}``, ``cas`` as for :meth:`kv_put`."""
        query = {"cas": int(cas)} if cas is not None else None
        return self.request("DELETE", api_path("v1", "kv", key), query=query)

    def leader_client(self, status=None, members=None):
        """A client of the current leader's API, or ``None`` while no leader is known."""
        status = self.status() if status is None else status
        leader_id = status.get("leader_id")
        if leader_id is None:
            return None
        if leader_id == status.get("node_id"):
            return self
        members = self.members() if members is None else members
        for member in members:
            if member.get("id") == leader_id and member.get("api_addr"):
                return self.for_api_addr(member["api_addr"])
        return None


def _error_from_http(exc, method, url):
    status = exc.code
    try:
        raw = exc.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    text = (raw or b"").decode("utf-8", errors="replace").strip()
    body = None
    message = None
    if text:
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("error") is not None:
            message = str(body["error"])
        else:
            message = text[:_MAX_ERROR_TEXT]
    if not message:
        message = str(exc.reason or "") or "HTTP error"
    return APIError(message, status=status, method=method, url=url, body=body)
