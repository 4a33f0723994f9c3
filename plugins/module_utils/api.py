# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The Ansible side of the hafleet agent's HTTP API client, shared by the collection's
modules and plugins.

The client itself is :mod:`._api_client`, a byte-identical copy of the agent's
``hafleet_agent/apiclient.py`` (``make vendor``; do not edit it here): one method per route,
one path encoding, one error class with the HTTP status and the agent's message. This module
adds what Ansible needs around it: the connection options every module takes
(:func:`api_argument_spec`, doc fragment ``api``), a client from module parameters, reading
the token file, :func:`fail_json_on_api_error`, which turns an API error into one
``fail_json``, and :class:`HafleetModule`, the base of every module that talks to an agent
(in community.docker's style: it merges the common options into the module's own and maps
API errors to a failure once).

Status codes (see :mod:`._api_client`): 400 bad input, 401 no or wrong token, 403 not
allowed, 404 absent, 409 CAS conflict, 413 body too large, 503 no leader (never proposed,
safe to retry), 504 proposed but fate unknown (maybe applied). ``status`` is ``None`` when no
HTTP answer arrived.
"""

from __future__ import annotations

import time

from ansible_collections.hafleet.cluster.plugins.module_utils._api_client import (
    DEFAULT_API_URL,
    DEFAULT_TIMEOUT,
    MEMBER_ID_RE,
    MEMBER_ID_RULE,
    APIClient,
    APIError,
    api_path,
    member_id_error,
)
from ansible_collections.hafleet.cluster.plugins.module_utils.options import check_seconds

USER_AGENT = "ansible-hafleet.cluster"

# The names the modules and plugins use.
HafleetAPIError = APIError

__all__ = [
    "API_MUTUALLY_EXCLUSIVE",
    "DEFAULT_API_URL",
    "DEFAULT_TIMEOUT",
    "MEMBER_ID_RE",
    "MEMBER_ID_RULE",
    "USER_AGENT",
    "HafleetAPIClient",
    "HafleetAPIError",
    "HafleetModule",
    "api_argument_spec",
    "api_path",
    "client_from_params",
    "fail_json_on_api_error",
    "find_member",
    "is_voter",
    "member_id_error",
    "read_token_file",
    "wait_until",
]


class HafleetAPIClient(APIClient):
    """:class:`._api_client.APIClient` with the collection's User-Agent."""

    def __init__(
        self,
        base_url=DEFAULT_API_URL,
        token=None,
        timeout=DEFAULT_TIMEOUT,
        validate_certs=True,
        ca_path=None,
        use_proxy=True,
    ):
        super().__init__(
            base_url,
            token=token,
            timeout=timeout,
            validate_certs=validate_certs,
            ca_path=ca_path,
            use_proxy=use_proxy,
            user_agent=USER_AGENT,
        )


def read_token_file(path):
    """Return the API token held in ``path``, without surrounding whitespace. ValueError when
    it cannot be read or is empty (an API error said "no HTTP answer" before it)."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the API token file {path}: {exc}") from exc
    if not token:
        raise ValueError(f"the API token file {path} is empty")
    return token


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
        # HAFLEET_TOKEN_FILE: the CLI's older name, an alias (hafleet_agent/client_config.py)
        api_token_file=dict(
            type="path", fallback=(env_fallback, ["HAFLEET_API_TOKEN_FILE", "HAFLEET_TOKEN_FILE"])
        ),
        api_timeout=dict(type="float", default=DEFAULT_TIMEOUT),
        validate_certs=dict(type="bool", default=True),
        ca_path=dict(type="path", fallback=(env_fallback, ["HAFLEET_CA_FILE"])),
    )


API_MUTUALLY_EXCLUSIVE = [("api_token", "api_token_file")]

#: The option of a module that asks further agents when O(api_url) does not answer (doc
#: fragment ``api.fallback``).
FALLBACK_ARGUMENT_SPEC = dict(fallback_api_urls=dict(type="list", elements="str", default=[]))


def client_from_params(params, fallback_urls=()):
    """A :class:`HafleetAPIClient` from module parameters (see :func:`api_argument_spec`),
    failing over from ``api_url`` to ``fallback_urls`` in turn."""
    token = params.get("api_token")
    if not token and params.get("api_token_file"):
        token = read_token_file(params["api_token_file"])
    return HafleetAPIClient(
        [params["api_url"], *fallback_urls],
        token=token or None,
        timeout=DEFAULT_TIMEOUT if params.get("api_timeout") is None else params["api_timeout"],
        validate_certs=params.get("validate_certs", True),
        ca_path=params.get("ca_path"),
    )


def fail_json_on_api_error(module, exc, msg=None, **extra):
    """``module.fail_json`` for an API error: ``msg`` (what was being done) and the error,
    with its HTTP ``status`` (``None``: no answer) and, for a write, ``maybe_applied``."""
    text = str(exc) if msg is None else f"{msg}: {exc}"
    extra.setdefault("status", getattr(exc, "status", None))
    if getattr(exc, "maybe_applied", False):
        extra.setdefault("maybe_applied", True)
    module.fail_json(msg=text, **extra)


class HafleetModule:
    """An :class:`~ansible.module_utils.basic.AnsibleModule` with the API options and one
    client: the base of every module that talks to an agent.

    ``argument_spec`` holds the module's own options; the connection options of
    :func:`api_argument_spec` are merged in, and :data:`API_MUTUALLY_EXCLUSIVE` joins
    ``mutually_exclusive``. :attr:`client` is made from them on first use.
    :meth:`run` calls the module's work and exits with what it returns; an API error that
    escapes it fails the module with its status (:func:`fail_json_on_api_error`), a
    ``ValueError`` (a bad URL, say) with its message.
    """

    def __init__(self, argument_spec, mutually_exclusive=(), **kwargs):
        from ansible.module_utils.basic import AnsibleModule

        spec = api_argument_spec()
        spec.update(argument_spec)
        self.module = AnsibleModule(
            argument_spec=spec,
            mutually_exclusive=API_MUTUALLY_EXCLUSIVE + list(mutually_exclusive),
            **kwargs,
        )
        self.params = self.module.params
        self._client = None
        self.check_seconds("api_timeout", low=0.0, high=3600.0, low_ok=False)

    def check_seconds(self, name, low=0.0, high=86400.0, low_ok=True):
        """:func:`~.options.check_seconds` of this module's option ``name``."""
        check_seconds(self.module, name, low, high, low_ok)

    @property
    def client(self):
        """A :class:`HafleetAPIClient` of O(api_url), with the token and TLS options."""
        if self._client is None:
            self._client = client_from_params(self.params)
        return self._client

    def fail(self, msg=None, exc=None, **extra):
        """Fail the module: with ``exc``, an API error, its status and ``msg`` (what was
        being done) before its message; else ``msg``."""
        if exc is not None:
            fail_json_on_api_error(self.module, exc, msg, **extra)
        self.module.fail_json(msg=msg, **extra)

    def run(self, work):
        """``work()``'s result dict is the module's; its errors fail the module once."""
        try:
            result = work()
        except HafleetAPIError as exc:
            self.fail(exc=exc)
        except ValueError as exc:
            self.fail(str(exc))
        self.module.exit_json(**result)
