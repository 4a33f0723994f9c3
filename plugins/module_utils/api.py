# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one client of the hafleet agent's HTTP API, shared by the collection's modules.

Every module and plugin of ``hafleet.cluster`` talks to agents through this client only:
JSON in and out, ``Authorization: Bearer <token>``, a timeout on every call, and one error
class, :class:`HafleetAPIError`, that carries the HTTP status and the agent's message.

Status codes the agent answers with (see the project's design):

* 200: success; PUT and DELETE answer the new state.
* 400 bad input, 401 no or wrong token, 404 absent, 409 CAS conflict, 413 body too large.
* 503: no leader; the write was never proposed, retrying is safe.
* 504: the write was proposed but its fate is unknown; treat it as maybe applied.

``status`` is ``None`` when no HTTP answer arrived at all (connection refused, timeout, TLS
failure); for a write that also means its fate is unknown.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
from urllib.parse import quote, urlencode, urlsplit

from ansible.module_utils.common.text.converters import to_native, to_text
from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url

DEFAULT_API_URL = "http://127.0.0.1:7480"
DEFAULT_TIMEOUT = 10.0
USER_AGENT = "ansible-hafleet.cluster"

# Longest stretch of a non-JSON error body kept in an error message.
_MAX_ERROR_TEXT = 500

# Member ids: the agent's grammar, MEMBER_ID_RE in agent/src/hafleet_agent/ids.py, repeated
# here because the modules cannot import the agent; change both together. \Z, not $: a $
# would let a trailing newline through.
MEMBER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
MEMBER_ID_RULE = (
    "a member id is 1-63 characters of letters, digits, '.', '_' and '-', starting with "
    "a letter or digit (^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$)"
)

_NO_BODY = object()


class HafleetAPIError(Exception):
    """A call to an agent's HTTP API failed.

    ``status`` is the HTTP status code, or ``None`` when no HTTP answer arrived.
    ``message`` is the agent's ``{"error": ...}`` text when it sent one, otherwise a short
    description of what went wrong. ``body`` is the decoded JSON error body, if any.
    """

    def __init__(self, message, status=None, method=None, url=None, body=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.method = method
        self.url = url
        self.body = body

    def __str__(self):
        where = " ".join(part for part in (self.method, self.url) if part)
        status = f"HTTP {self.status}" if self.status is not None else "no HTTP answer"
        if where:
            return f"{where}: {status}: {self.message}"
        return f"{status}: {self.message}"


def api_path(*segments):
    """Join path segments into an API path, quoting each one completely.

    ``api_path("v1", "kv", "a/b c")`` is ``"/v1/kv/a%2Fb%20c"``: a segment never adds levels.
    """
    return "/" + "/".join(quote(to_text(segment), safe="") for segment in segments)


def read_token_file(path):
    """Return the API token held in ``path``, without surrounding whitespace."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise HafleetAPIError(f"cannot read the API token file {path}: {to_native(exc)}") from exc
    if not token:
        raise HafleetAPIError(f"the API token file {path} is empty")
    return token


class HafleetAPIClient:
    """A client of one agent's HTTP API.

    ``base_url`` is the agent's API address such as ``http://10.77.0.11:7480``; ``token``
    the API token (``None`` sends no ``Authorization`` header: only ``/v1/health`` answers
    then); ``timeout`` in seconds applies to each call.
    """

    def __init__(
        self,
        base_url=DEFAULT_API_URL,
        token=None,
        timeout=DEFAULT_TIMEOUT,
        validate_certs=True,
        ca_path=None,
        use_proxy=True,
    ):
        base_url = to_text(base_url).strip()
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the API URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.use_proxy = use_proxy

    def url(self, path, query=None):
        """The full URL of ``path`` (which starts with ``/``), with ``query`` encoded."""
        if not path.startswith("/"):
            raise ValueError(f"an API path starts with '/', got {path!r}")
        url = self.base_url + path
        if query:
            pairs = [
                (key, _query_value(value)) for key, value in query.items() if value is not None
            ]
            if pairs:
                url += "?" + urlencode(pairs)
        return url

    def request(self, method, path, body=_NO_BODY, query=None):
        """Send one request; return the decoded JSON answer (``None`` for an empty one).

        Raises :class:`HafleetAPIError` for any status but 2xx and when no answer arrives.
        """
        method = method.upper()
        url = self.url(path, query)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not _NO_BODY:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"

        try:
            response = open_url(
                url,
                data=data,
                headers=headers,
                method=method,
                timeout=self.timeout,
                validate_certs=self.validate_certs,
                ca_path=self.ca_path,
                use_proxy=self.use_proxy,
                http_agent=USER_AGENT,
                follow_redirects="none",
                # ~/.netrc would replace our Authorization header with basic auth.
                use_netrc=False,
            )
            raw = response.read()
        except urllib.error.HTTPError as exc:
            raise _error_from_http(exc, method, url) from exc
        except (UrlsConnectionError, OSError, http.client.HTTPException) as exc:
            # OSError covers refused connections, timeouts and URLError.
            reason = getattr(exc, "reason", None) or exc
            raise HafleetAPIError(
                f"request failed: {to_native(reason)}", method=method, url=url
            ) from exc

        if not raw:
            return None
        try:
            return json.loads(to_text(raw, errors="surrogate_or_strict"))
        except ValueError as exc:
            raise HafleetAPIError(
                f"the answer is not JSON: {to_native(exc)}",
                status=getattr(response, "status", None),
                method=method,
                url=url,
            ) from exc

    def get(self, path, query=None):
        return self.request("GET", path, query=query)

    def post(self, path, body=None, query=None):
        return self.request("POST", path, body=body, query=query)

    def put(self, path, body, query=None):
        return self.request("PUT", path, body=body, query=query)

    def delete(self, path, query=None):
        return self.request("DELETE", path, query=query)

    # ---- the routes the collection uses ------------------------------------------------------

    def status(self):
        """``GET /v1/status`` of the node this client talks to."""
        return self.get("/v1/status")

    def members(self):
        """``GET /v1/members``: the list of members as this node knows it."""
        return self.get("/v1/members")

    def weights(self):
        """``GET /v1/weights``: ``{"version": n, "weights": {id: w}}``."""
        return self.get("/v1/weights")

    def add_member(self, member_id, raft_addr, api_addr, service_addr=None):
        """``POST /v1/members``: add a learner (the leader promotes it when caught up)."""
        body = {"id": member_id, "raft_addr": raft_addr, "api_addr": api_addr}
        if service_addr is not None:
            body["service_addr"] = service_addr
        return self.post("/v1/members", body)

    def remove_member(self, member_id, drain_timeout=None):
        """``DELETE /v1/members/{id}``: drain, then remove (a leader hands over first)."""
        query = None
        if drain_timeout is not None:
            query = {"drain_timeout": f"{float(drain_timeout):g}s"}
        return self.delete(api_path("v1", "members", member_id), query=query)

    def transfer_leadership(self, to=None):
        """``POST /v1/leadership/transfer``; answers ``{"leader_id": ...}``."""
        return self.post("/v1/leadership/transfer", {"to": to})

    def for_api_addr(self, api_addr):
        """A client like this one for another agent, given its ``host:port`` API address."""
        scheme = urlsplit(self.base_url).scheme or "http"
        return HafleetAPIClient(
            f"{scheme}://{api_addr}",
            token=self.token,
            timeout=self.timeout,
            validate_certs=self.validate_certs,
            ca_path=self.ca_path,
            use_proxy=self.use_proxy,
        )

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


def member_id_error(value, what="id"):
    """``None`` when ``value`` is a valid member id, else why not (the value shown escaped and
    cut short, and the rule), for ``fail_json``."""
    if isinstance(value, str) and MEMBER_ID_RE.match(value):
        return None
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{what} {shown} is not valid: {MEMBER_ID_RULE}"


def find_member(members, member_id):
    """The member with ``id == member_id`` in a ``/v1/members`` list, or ``None``."""
    for member in members or []:
        if member.get("id") == member_id:
            return member
    return None


def is_voter(member):
    """Whether a ``/v1/members`` entry votes (the leader votes too)."""
    return bool(member) and member.get("role") in ("voter", "leader")


def wait_until(predicate, timeout, interval=0.5, clock=time.monotonic, sleep=time.sleep):
    """Call ``predicate()`` until it returns a true value or ``timeout`` seconds pass.

    Returns the last value. :class:`HafleetAPIError` raised by ``predicate`` counts as a false
    value until the deadline, then it is raised. The number of calls is bounded by the
    deadline and ``interval``.
    """
    deadline = clock() + timeout
    while True:
        error = None
        try:
            value = predicate()
        except HafleetAPIError as exc:
            value, error = None, exc
        if value:
            return value
        if clock() >= deadline:
            if error is not None:
                raise error
            return value
        sleep(max(0.0, min(interval, deadline - clock())))


# ---- module support ---------------------------------------------------------------------------


def api_argument_spec():
    """The connection options every module of the collection takes (doc fragment ``api``)."""
    from ansible.module_utils.basic import env_fallback

    return dict(
        api_url=dict(
            type="str", default=DEFAULT_API_URL, fallback=(env_fallback, ["HAFLEET_API_URL"])
        ),
        api_token=dict(type="str", no_log=True, fallback=(env_fallback, ["HAFLEET_API_TOKEN"])),
        api_token_file=dict(type="path", fallback=(env_fallback, ["HAFLEET_API_TOKEN_FILE"])),
        api_timeout=dict(type="float", default=DEFAULT_TIMEOUT),
        validate_certs=dict(type="bool", default=True),
        ca_path=dict(type="path"),
    )


API_MUTUALLY_EXCLUSIVE = [("api_token", "api_token_file")]


def client_from_params(params):
    """A :class:`HafleetAPIClient` from module parameters (see :func:`api_argument_spec`)."""
    token = params.get("api_token")
    if not token and params.get("api_token_file"):
        token = read_token_file(params["api_token_file"])
    return HafleetAPIClient(
        params["api_url"],
        token=token or None,
        timeout=params.get("api_timeout") or DEFAULT_TIMEOUT,
        validate_certs=params.get("validate_certs", True),
        ca_path=params.get("ca_path"),
    )


def _query_value(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    return to_text(value)


def _error_from_http(exc, method, url):
    status = exc.code
    try:
        raw = exc.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    text = to_text(raw or b"", errors="surrogate_then_replace").strip()
    body = None
    message = None
    if text:
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("error") is not None:
            message = to_text(body["error"])
        else:
            message = text[:_MAX_ERROR_TEXT]
    if not message:
        message = to_text(exc.reason or "") or "HTTP error"
    return HafleetAPIError(message, status=status, method=method, url=url, body=body)
