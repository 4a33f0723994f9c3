"""The replicated commands: their encoding as entry data, and the validation every replica
applies to them (the HTTP API reuses it to refuse a bad request before it is proposed).

:class:`hafleet_agent.state.StateMachine` applies them; ``state`` re-exports the names of this
module that the API, the node and the tests use.

Commands
========

A command is a JSON object carried as the data of a NORMAL entry (UTF-8, compact)::

    {"op": OP, "rid": REQUEST_ID, ...fields}

``rid`` is chosen by the proposer (:func:`encode_command` mints a random one) and comes back
in the :class:`~hafleet_agent.state.ApplyResult`, so the driver can answer the client that
waits for it.

=================  =========================================================================
op                 fields
=================  =========================================================================
``member_put``     ``id``, ``raft_addr``, ``api_addr``, ``service_addr`` (str or null),
                   ``meta`` (object, optional): create or update a member's record
``member_del``     ``id``: forget a member that is not in the Raft configuration
``member_health``  ``id``, ``healthy`` (bool)
``member_drain``   ``id``, ``draining`` (bool)
``weights_set``    ``weights`` ({id: 0..256}), ``reason`` (str): replace the table, bump
                   its ``version``; ids that are not members are left out (and listed)
``kv_put``         ``key``, ``value`` (any JSON), ``cas`` (int or null)
``kv_del``         ``key``, ``cas`` (int or null)
=================  =========================================================================

``cas`` follows the HTTP API: ``null`` writes unconditionally, ``0`` only if the key is
absent, ``N > 0`` only if the key's ``modify_index`` is ``N``. A failed condition is an
error result with status 409 and the key's ``current_index`` (0 when absent).

The limits (key and value sizes, nesting depth, the member id grammar of
:mod:`hafleet_agent.ids`) are part of the replicated protocol: raising them in a later version
must wait until every agent runs it.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from typing import Any

from .addr import split_host_port
from .ids import member_id_error, shown
from .raft.types import ConfChange, ConfChangeType

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 512 * 1024
MAX_META_BYTES = 4096
MAX_REASON_CHARS = 256
MAX_RID_CHARS = 128
MAX_WEIGHT = 256
MAX_JSON_DEPTH = 100
"""The deepest nesting of arrays and objects in a value or a member's meta (the API refuses
bodies nested deeper than 64 before they get here)."""

OPS = frozenset(
    {
        "member_put",
        "member_del",
        "member_health",
        "member_drain",
        "weights_set",
        "kv_put",
        "kv_del",
    }
)

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

JSON = Any


class StateError(Exception):
    """A request the state refuses: ``status`` is the HTTP status the API answers with,
    ``code`` a short machine-readable word, ``extra`` more fields for the error body."""

    def __init__(self, status: int, message: str, code: str = "invalid", **extra: JSON) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra

    def to_dict(self) -> dict[str, JSON]:
        """The error body: ``{"error": code, "status": ..., "message": ..., **extra}``."""
        return {"error": self.code, "status": self.status, "message": self.message, **self.extra}


# ---- validation (the API reuses these) -------------------------------------------------------


def validate_key(key: object) -> str:
    """A KV key: a non-empty string of at most 512 bytes UTF-8 without control characters."""
    if not isinstance(key, str) or not key:
        raise StateError(400, "key must be a non-empty string")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise StateError(400, "key is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise StateError(400, f"key is {size} bytes; the limit is {MAX_KEY_BYTES}")
    if _CONTROL_RE.search(key):
        raise StateError(400, "key contains a control character")
    return key


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
"""One encoder for every call: ``json.dumps`` with these options builds a new one each time
(a leader encodes every write's command with it)."""


def encode_json(value: JSON) -> bytes:
    """Canonical JSON: sorted keys, compact, UTF-8, no NaN/Infinity."""
    return _CANONICAL.encode(value).encode("utf-8")


def json_depth_exceeds(value: JSON, limit: int) -> bool:
    """True when arrays and objects in ``value`` nest deeper than ``limit`` (iterative: a
    deep value cannot exhaust the stack here)."""
    stack: list[tuple[JSON, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def validate_value(value: JSON) -> JSON:
    """A KV value: any JSON (no NaN/Infinity) of at most 512 KiB encoded, nested at most
    :data:`MAX_JSON_DEPTH` deep. Returns it."""
    size = _encoded_size(value, "value")
    if size > MAX_VALUE_BYTES:
        raise StateError(
            413, f"value is {size} bytes encoded; the limit is {MAX_VALUE_BYTES}", "too_large"
        )
    return value


def _encoded_size(value: JSON, what: str) -> int:
    """The bytes of ``value`` encoded (:func:`encode_json`); StateError 400 when it nests
    deeper than :data:`MAX_JSON_DEPTH` or is not JSON."""
    if json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise StateError(400, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return len(encode_json(value))
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as e:
        raise StateError(400, f"{what} is not JSON: {e}") from None


def validate_cas(cas: object) -> int | None:
    """``None`` (unconditional) or an integer >= 0."""
    if cas is None:
        return None
    if isinstance(cas, bool) or not isinstance(cas, int) or cas < 0:
        raise StateError(400, "cas must be an integer >= 0")
    return cas


def validate_member_id(member_id: object) -> str:
    """A member id (:mod:`hafleet_agent.ids`): ``^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$``."""
    error = member_id_error(member_id)
    if error is not None:
        raise StateError(400, error)
    assert isinstance(member_id, str)
    return member_id


def validate_addr(addr: object, what: str) -> str:
    """``HOST:PORT`` (an IPv6 host in brackets), port 1..65535."""
    if not isinstance(addr, str):
        raise StateError(400, f"{what} must be a HOST:PORT string")
    try:
        host, _ = split_host_port(addr, what=what)
    except ValueError:
        host = ""
    if not host or _CONTROL_RE.search(host) or any(c in host for c in "[] /"):
        raise StateError(400, f"{what} must be HOST:PORT, got {addr!r}")
    return addr


def validate_weight(weight: object) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise StateError(400, f"a weight must be an integer in 0..{MAX_WEIGHT}")
    return weight


def _validate_meta(meta: object) -> dict[str, JSON]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise StateError(400, "meta must be an object")
    size = _encoded_size(meta, "meta")
    if size > MAX_META_BYTES:
        raise StateError(400, f"meta is {size} bytes encoded; the limit is {MAX_META_BYTES}")
    return meta


def _validate_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise StateError(400, f"{what} must be true or false")
    return value


# ---- commands ------------------------------------------------------------------------------


_RID_PREFIX = secrets.token_hex(8)  # 64 random bits a process
_rid_count = itertools.count()


def new_rid() -> str:
    """A fresh request id: 32 hex digits, the process's 64 random bits then a counter (no
    system call a write; unique across the agents and their restarts but by a 2**-64 chance
    a pair)."""
    return f"{_RID_PREFIX}{next(_rid_count):016x}"


_DEFAULTS: dict[str, dict[str, JSON]] = {
    "member_put": {"service_addr": None, "meta": None},
    "weights_set": {"reason": ""},
    "kv_put": {"cas": None},
    "kv_del": {"cas": None},
}


def encode_command(op: str, rid: str | None = None, **fields: JSON) -> bytes:
    """The entry data of a command, validated as the state machine will validate it (so a
    bad request is refused before it is proposed). A fresh ``rid`` when none is given.

    >>> encode_command("kv_put", rid="r1", key="a", value=1)
    b'{"cas":null,"key":"a","op":"kv_put","rid":"r1","value":1}'
    """
    cmd: dict[str, JSON] = {**_DEFAULTS.get(op, {}), **fields}
    cmd["op"] = op
    cmd["rid"] = new_rid() if rid is None else rid
    check_command(cmd)
    return encode_json(cmd)


def decode_command(data: bytes) -> dict[str, JSON]:
    """Parse and validate entry data; raises :class:`StateError` (400) when it is not a
    well-formed command."""
    cmd = parse_command(data)
    check_command(cmd)
    return cmd


def parse_command(data: bytes) -> dict[str, JSON]:
    """The JSON object in entry data, not yet validated; StateError (400) when there is none."""
    try:
        cmd = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise StateError(400, "command is not JSON") from None
    if not isinstance(cmd, dict):
        raise StateError(400, "command is not a JSON object")
    return cmd


def member_context(
    raft_addr: str,
    api_addr: str,
    service_addr: str | None = None,
    meta: dict[str, JSON] | None = None,
) -> bytes:
    """The context of a conf change (or a bootstrap entry) that also records the member's
    addresses."""
    ctx = {"raft_addr": raft_addr, "api_addr": api_addr, "service_addr": service_addr}
    if meta:
        ctx["meta"] = meta
    check_member_fields(ctx)
    return encode_json(ctx)


def rid_of(cmd: dict[str, JSON]) -> str | None:
    """The command's ``rid`` when it is a well-formed one (for the result of a bad command)."""
    rid = cmd.get("rid")
    return rid if isinstance(rid, str) and len(rid) <= MAX_RID_CHARS else None


def op_of(cmd: dict[str, JSON]) -> str | None:
    """The command's ``op`` when it is a known one."""
    op = cmd.get("op")
    return op if isinstance(op, str) and op in OPS else None


def check_command(cmd: dict[str, JSON]) -> None:
    """Validate a parsed command's op and fields; StateError (400) for the first fault."""
    op = op_of(cmd)
    if op is None:
        raise StateError(400, f"unknown op {shown(cmd.get('op'))}")
    rid = cmd.get("rid")
    if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_RID_CHARS):
        raise StateError(400, f"rid must be a string of at most {MAX_RID_CHARS} characters")
    if op.startswith("member_"):
        validate_member_id(cmd.get("id"))
    if op == "member_put":
        check_member_fields(cmd)
    elif op == "member_health":
        _validate_bool(cmd.get("healthy"), "healthy")
    elif op == "member_drain":
        _validate_bool(cmd.get("draining"), "draining")
    elif op == "weights_set":
        weights = cmd.get("weights")
        if not isinstance(weights, dict):
            raise StateError(400, "weights must be an object {id: weight}")
        for mid, w in weights.items():
            validate_member_id(mid)
            validate_weight(w)
        reason = cmd.get("reason", "")
        if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
            raise StateError(400, f"reason must be a string of at most {MAX_REASON_CHARS}")
    elif op in ("kv_put", "kv_del"):
        validate_key(cmd.get("key"))
        validate_cas(cmd.get("cas"))
        if op == "kv_put":
            if "value" not in cmd:
                raise StateError(400, "kv_put needs a value")
            validate_value(cmd["value"])


def check_member_fields(fields: dict[str, JSON]) -> None:
    """Validate a member's addresses and meta (``member_put``, a conf change's context)."""
    validate_addr(fields.get("raft_addr"), "raft_addr")
    validate_addr(fields.get("api_addr"), "api_addr")
    if fields.get("service_addr") is not None:
        validate_addr(fields["service_addr"], "service_addr")
    _validate_meta(fields.get("meta"))


def conf_change_error(change: ConfChange) -> str | None:
    """Why a committed configuration change must not be applied (the state machine and the
    agent's Raft core use this one rule), or None. An ADD needs a valid member id; a REMOVE
    is always applied (it only shrinks the group, and lets an operator take out a member an
    older version recorded under an id the grammar now refuses)."""
    if change.type is ConfChangeType.REMOVE:
        return None
    return member_id_error(change.node_id, "the configuration change's node id")


def decode_context(context: bytes) -> dict[str, JSON] | None:
    """Member fields from a conf change's context, or None when it carries none (empty, not
    JSON, or invalid: the change itself is applied all the same, as the Raft core does)."""
    if not context:
        return None
    try:
        ctx = json.loads(context.decode("utf-8"))
        if not isinstance(ctx, dict):
            return None
        check_member_fields(ctx)
    except (UnicodeDecodeError, ValueError, RecursionError, StateError):
        return None
    return ctx
