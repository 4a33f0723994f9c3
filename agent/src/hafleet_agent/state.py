"""The replicated state machine: members, the weight table and a small key-value store.

Every agent applies the same committed Raft entries in the same order to a
:class:`StateMachine` and so holds the same state. Applying is deterministic: no I/O, no
clock, no randomness, and nothing in the state depends on anything but the entries (and
snapshots of them). The driver loop of ``raft/rawnode.py`` calls, for each ``Ready``:

- :meth:`StateMachine.restore` with ``rd.snapshot.data`` (and its index) when there is one;
- :meth:`StateMachine.apply_entry` for each of ``rd.committed_entries``, in order.

The state's :attr:`~StateMachine.index` always equals the index of the last entry applied
(a no-op or a configuration change advances it too), so ``/v1/watch`` and linearizable reads
can wait for it.

Commands
========

A command is a JSON object carried as the data of a NORMAL entry (UTF-8, compact)::

    {"op": OP, "rid": REQUEST_ID, ...fields}

``rid`` is chosen by the proposer (:func:`encode_command` mints a random one) and comes back
in the :class:`ApplyResult`, so the driver can answer the client that waits for it.

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

Applying a committed entry never raises (but :class:`ApplyOrderError`, a driver bug): a
command that cannot be decoded or fails validation, a configuration change that cannot be
decoded or names an invalid member id, an unknown entry type, all still advance the index
and yield an error result (status 400, or 500 ``internal`` for a bug in an operation): a
committed entry is never refused, and every replica reaches the same verdict. The limits (key
and value sizes, nesting depth, the member id grammar of :mod:`hafleet_agent.ids`) are part
of the replicated protocol: raising them in a later version must wait until every agent
runs it.

Configuration changes
=====================

CONF_CHANGE entries give each member its Raft ``role`` (``voter``/``learner``, following the
core's rules: ADD_LEARNER does not demote a voter). The change's context may carry the
member's addresses as a JSON object (:func:`member_context`); they are recorded as by
``member_put``. REMOVE forgets the member's record and its weight (the weight table's
version is bumped when it held one). A change whose node id is not a valid member id is a
no-op with an error result, here and in the agent's Raft core.

Snapshots
=========

:meth:`StateMachine.snapshot` is deterministic JSON (sorted keys, compact, format ``v: 1``);
the same state always gives the same bytes.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from .addr import split_host_port
from .ids import member_id_error, shown, valid_member_id
from .raft.types import ConfChange, ConfChangeType, Entry, EntryType

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 512 * 1024
MAX_META_BYTES = 4096
MAX_REASON_CHARS = 256
MAX_RID_CHARS = 128
MAX_WEIGHT = 256
MAX_JSON_DEPTH = 100
"""The deepest nesting of arrays and objects in a value or a member's meta (the API refuses
bodies nested deeper than 64 before they get here)."""
SNAPSHOT_FORMAT = 1

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

ROLE_VOTER = "voter"
ROLE_LEARNER = "learner"

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


class ApplyOrderError(RuntimeError):
    """The driver applied entries out of order: a bug, never a client error."""


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


def encode_json(value: JSON) -> bytes:
    """Canonical JSON: sorted keys, compact, UTF-8, no NaN/Infinity."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


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
    if json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise StateError(400, f"value is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        size = len(encode_json(value))
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as e:
        raise StateError(400, f"value is not JSON: {e}") from None
    if size > MAX_VALUE_BYTES:
        raise StateError(
            413, f"value is {size} bytes encoded; the limit is {MAX_VALUE_BYTES}", "too_large"
        )
    return value


KV_RECORD_OVERHEAD = 64
"""What a key costs beyond its bytes and its value's: about its record's share of a snapshot
(``{"create_index":..,"modify_index":..,"value":..}``)."""


# encode_json's settings in one encoder made once (json.dumps makes a new one per call with
# these arguments): a restore counts every key of the store, and that is most of its cost.
_SIZE_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def kv_record_bytes(key: str, value: JSON) -> int:
    """One key's share of the state for the quota: key, encoded value and the overhead."""
    encoded = _SIZE_ENCODER.encode(value)
    size = len(encoded) if encoded.isascii() else len(encoded.encode("utf-8"))
    return len(key.encode("utf-8")) + size + KV_RECORD_OVERHEAD


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
    if json_depth_exceeds(meta, MAX_JSON_DEPTH):
        raise StateError(400, f"meta is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        size = len(encode_json(meta))
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as e:
        raise StateError(400, f"meta is not JSON: {e}") from None
    if size > MAX_META_BYTES:
        raise StateError(400, f"meta is {size} bytes encoded; the limit is {MAX_META_BYTES}")
    return meta


def _validate_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise StateError(400, f"{what} must be true or false")
    return value


# ---- commands ------------------------------------------------------------------------------


def new_rid() -> str:
    """A fresh request id (128 random bits, hex)."""
    return secrets.token_hex(16)


_DEFAULTS: dict[str, dict[str, JSON]] = {
    "member_put": {"service_addr": None, "meta": None},
    "weights_set": {"reason": ""},
    "kv_put": {"cas": None},
    "kv_del": {"cas": None},
}


def encode_command(op: str, rid: str | None = None, **fields: JSON) -> bytes:
    """The entry data of a command, validated as :meth:`StateMachine.apply` will validate it
    (so a bad request is refused before it is proposed). A fresh ``rid`` when none is given.

    >>> encode_command("kv_put", rid="r1", key="a", value=1)
    b'{"cas":null,"key":"a","op":"kv_put","rid":"r1","value":1}'
    """
    cmd: dict[str, JSON] = {**_DEFAULTS.get(op, {}), **fields}
    cmd["op"] = op
    cmd["rid"] = new_rid() if rid is None else rid
    _check_command(cmd)
    return encode_json(cmd)


def decode_command(data: bytes) -> dict[str, JSON]:
    """Parse and validate entry data; raises :class:`StateError` (400) when it is not a
    well-formed command."""
    cmd = _parse_command(data)
    _check_command(cmd)
    return cmd


def _parse_command(data: bytes) -> dict[str, JSON]:
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
    _check_member_fields(ctx)
    return encode_json(ctx)


def _rid_of(cmd: dict[str, JSON]) -> str | None:
    rid = cmd.get("rid")
    return rid if isinstance(rid, str) and len(rid) <= MAX_RID_CHARS else None


def _op_of(cmd: dict[str, JSON]) -> str | None:
    op = cmd.get("op")
    return op if isinstance(op, str) and op in OPS else None


def _check_command(cmd: dict[str, JSON]) -> None:
    op = _op_of(cmd)
    if op is None:
        raise StateError(400, f"unknown op {shown(cmd.get('op'))}")
    rid = cmd.get("rid")
    if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_RID_CHARS):
        raise StateError(400, f"rid must be a string of at most {MAX_RID_CHARS} characters")
    if op.startswith("member_"):
        validate_member_id(cmd.get("id"))
    if op == "member_put":
        _check_member_fields(cmd)
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


def _check_member_fields(fields: dict[str, JSON]) -> None:
    validate_addr(fields.get("raft_addr"), "raft_addr")
    validate_addr(fields.get("api_addr"), "api_addr")
    if fields.get("service_addr") is not None:
        validate_addr(fields["service_addr"], "service_addr")
    _validate_meta(fields.get("meta"))


# ---- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying one entry gave. ``rid``/``op`` are None for entries that are not
    commands (a leader's no-op, a configuration change) and for undecodable data.
    ``result`` is the success body; ``error`` the error body (:meth:`StateError.to_dict`)."""

    index: int
    rid: str | None = None
    op: str | None = None
    result: dict[str, JSON] | None = None
    error: dict[str, JSON] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> int:
        return 200 if self.error is None else int(self.error["status"])


# ---- the state machine ---------------------------------------------------------------------


class StateMachine:
    """Members, the weight table and the KV store, as of :attr:`index`."""

    def __init__(self) -> None:
        self._reset(0)

    def _reset(self, index: int) -> None:
        self.index = index
        self._members: dict[str, dict[str, JSON]] = {}
        self._weights: dict[str, int] = {}
        self._weights_version = 0
        self._weights_reason = ""
        self._weights_index = 0
        self._kv: dict[str, dict[str, JSON]] = {}
        self._kv_sizes: dict[str, int] = {}  # key -> its share of the state (quota)
        self._kv_bytes = 0

    # ---- applying ------------------------------------------------------------------------
    def apply_entry(self, entry: Entry) -> ApplyResult:
        """Apply one committed entry of any kind (what the driver calls). Never raises but
        :class:`ApplyOrderError` (a driver bug): an entry that cannot be applied is a no-op
        with an error result, and the index advances all the same."""
        if entry.type is EntryType.CONF_CHANGE:
            try:
                change = ConfChange.decode(entry.data)
            except ValueError as e:
                self._advance(entry.index)
                return _refused(entry.index, f"undecodable configuration change: {e}")
            return self.apply_conf(entry.index, change)
        if entry.type is not EntryType.NORMAL:
            self._advance(entry.index)
            return _refused(entry.index, f"unknown entry type {shown(entry.type)}")
        if not entry.data:
            return self.skip(entry.index)
        return self.apply(entry.index, entry.data)

    def apply(self, index: int, data: bytes) -> ApplyResult:
        """Apply the command in a NORMAL entry. Never raises for bad data: an invalid command
        is an error result (status 400) and the index advances all the same."""
        self._advance(index)
        if not data:
            return ApplyResult(index)
        rid: str | None = None
        op: str | None = None
        try:
            cmd = _parse_command(data)
            rid = _rid_of(cmd)
            op = _op_of(cmd)
            _check_command(cmd)
            result = getattr(self, "_op_" + cmd["op"])(index, cmd)
        except StateError as e:
            return ApplyResult(index, rid, op, error=e.to_dict())
        except MemoryError:
            raise
        except Exception as e:  # a bug: still never stop applying (every replica agrees)
            return ApplyResult(index, rid, op, error=_internal(e))
        return ApplyResult(index, rid, op, result=result)

    def apply_conf(self, index: int, change: ConfChange) -> ApplyResult:
        """Apply a committed configuration change: the member's role, its addresses when the
        context carries them, and on REMOVE its record and weight go. An ADD whose node id
        is not a valid member id changes nothing (an error result): the agent's Raft core
        refuses it by the same rule (:func:`conf_change_error`)."""
        self._advance(index)
        error = conf_change_error(change)
        if error is not None:
            return _refused(index, error)
        try:
            return self._apply_conf(index, change)
        except MemoryError:
            raise
        except Exception as e:  # a bug: still never stop applying
            return ApplyResult(index, error=_internal(e))

    def _apply_conf(self, index: int, change: ConfChange) -> ApplyResult:
        mid = change.node_id
        if change.type is ConfChangeType.REMOVE:
            removed = self._members.pop(mid, None) is not None
            if mid in self._weights:
                del self._weights[mid]
                self._bump_weights(index, f"member {mid} removed")
            return ApplyResult(index, result={"id": mid, "removed": removed})
        rec = self._members.get(mid)
        if rec is None:
            rec = self._new_member(mid, index)
            self._members[mid] = rec
        if change.type is ConfChangeType.ADD_VOTER:
            rec["role"] = ROLE_VOTER
        elif rec["role"] != ROLE_VOTER:
            rec["role"] = ROLE_LEARNER
        ctx = _decode_context(change.context)
        if ctx is not None:
            self._set_member_fields(rec, ctx)
        rec["modify_index"] = index
        return ApplyResult(index, result=_member_view(rec))

    def skip(self, index: int) -> ApplyResult:
        """An entry that carries nothing for the state (a leader's no-op)."""
        self._advance(index)
        return ApplyResult(index)

    def _advance(self, index: int) -> None:
        if index != self.index + 1:
            raise ApplyOrderError(f"applying entry {index} after {self.index}")
        self.index = index

    # ---- operations ----------------------------------------------------------------------
    def _op_member_put(self, index: int, cmd: dict[str, JSON]) -> dict[str, JSON]:
        mid = cmd["id"]
        rec = self._members.get(mid)
        if rec is None:
            rec = self._new_member(mid, index)
            self._members[mid] = rec
        self._set_member_fields(rec, cmd)
        rec["modify_index"] = index
        return _member_view(rec)

    def _op_member_del(self, index: int, cmd: dict[str, JSON]) -> dict[str, JSON]:
        rec = self._require_member(cmd["id"])
        if rec["role"] is not None:
            raise StateError(
                409,
                f"member {rec['id']} is a {rec['role']}: remove it from the group instead",
                "in_group",
            )
        del self._members[rec["id"]]
        if rec["id"] in self._weights:
            del self._weights[rec["id"]]
            self._bump_weights(index, f"member {rec['id']} deleted")
        return {"id": rec["id"], "deleted": True}

    def _op_member_health(self, index: int, cmd: dict[str, JSON]) -> dict[str, JSON]:
        rec = self._require_member(cmd["id"])
        if rec["healthy"] != cmd["healthy"]:
            rec["healthy"] = cmd["healthy"]
            rec["modify_index"] = index
        return _member_view(rec)

    def _op_member_drain(self, index: int, cmd: dict[str, JSON]) -> dict[str, JSON]:
        rec = self._require_member(cmd["id"])
        if rec["draining"] != cmd["draining"]:
            rec["draining"] = cmd["draining"]
            rec["modify_index"] = index
        return _member_view(rec)

    def _op_weights_set(self, index: int, cmd: dict[str, JSON]) -> dict[str, JSON]:
        weights: dict[str, int] = cmd["weights"]
        ignored = sorted(mid for mid in weights if mid not in self._members)
        self._weights = {mid: w for mid, w in sorted(weights.items()) if mid in self._members}
        self._bump_weights(index, cmd.get("reason", ""))
        return {**self.weights(), "ignored": ignored}

    def _op_kv_put(self, index: int, cmd: dict[str, JSON]) -> dict[str, JSON]:
        key = cmd["key"]
        rec = self._kv.get(key)
        self._check_cas(key, rec, cmd.get("cas"))
        value = copy.deepcopy(cmd["value"])
        if rec is None:
            rec = {"create_index": index}
            self._kv[key] = rec
        rec["value"] = value
        rec["modify_index"] = index
        self._kv_account(key, kv_record_bytes(key, value))
        return {"key": key, "value": copy.deepcopy(value), "modify_index": index}

    def _op_kv_del(self, index: int, cmd: dict[str, JSON]) -> dict[str, JSON]:
        key = cmd["key"]
        rec = self._kv.get(key)
        self._check_cas(key, rec, cmd.get("cas"))
        deleted = self._kv.pop(key, None) is not None
        self._kv_account(key, 0)
        return {"key": key, "value": None, "modify_index": 0, "deleted": deleted}

    @staticmethod
    def _check_cas(key: str, rec: dict[str, JSON] | None, cas: int | None) -> None:
        if cas is None:
            return
        current = 0 if rec is None else rec["modify_index"]
        if current != cas:
            raise StateError(
                409,
                f"key {key!r} has modify_index {current}, not {cas}",
                "cas",
                current_index=current,
            )

    def _require_member(self, mid: str) -> dict[str, JSON]:
        rec = self._members.get(mid)
        if rec is None:
            raise StateError(404, f"no member {mid!r}", "not_found")
        return rec

    @staticmethod
    def _new_member(mid: str, index: int) -> dict[str, JSON]:
        return {
            "id": mid,
            "raft_addr": None,
            "api_addr": None,
            "service_addr": None,
            "meta": {},
            "role": None,
            "healthy": True,
            "draining": False,
            "create_index": index,
            "modify_index": index,
        }

    @staticmethod
    def _set_member_fields(rec: dict[str, JSON], fields: dict[str, JSON]) -> None:
        rec["raft_addr"] = fields["raft_addr"]
        rec["api_addr"] = fields["api_addr"]
        rec["service_addr"] = fields.get("service_addr")
        rec["meta"] = copy.deepcopy(fields.get("meta") or {})

    def _bump_weights(self, index: int, reason: str) -> None:
        self._weights_version += 1
        self._weights_reason = reason
        self._weights_index = index

    # ---- queries -------------------------------------------------------------------------
    def members(self) -> list[dict[str, JSON]]:
        """Every member's record, sorted by id: ``id, raft_addr, api_addr, service_addr,
        meta, role (voter|learner|null), healthy, draining, create_index, modify_index``."""
        return [_member_view(self._members[mid]) for mid in sorted(self._members)]

    def member_field(self, member_id: str, name: str) -> JSON:
        """One field of a member's record without copying it (None when absent): for the
        driver's hot paths (every message it sends looks up an address)."""
        rec = self._members.get(member_id)
        if rec is None:
            return None
        value = rec.get(name)
        return (
            value
            if value is None or isinstance(value, (str, int, float, bool))
            else (copy.deepcopy(value))
        )

    def has_member(self, member_id: str) -> bool:
        return member_id in self._members

    def member(self, member_id: str) -> dict[str, JSON] | None:
        rec = self._members.get(member_id)
        return None if rec is None else _member_view(rec)

    def weights(self, detail: bool = False) -> dict[str, JSON]:
        """``{"version": n, "weights": {id: w}}``; with ``detail`` also the ``reason`` and
        ``modify_index`` of the last change."""
        out: dict[str, JSON] = {"version": self._weights_version, "weights": dict(self._weights)}
        if detail:
            out["reason"] = self._weights_reason
            out["modify_index"] = self._weights_index
        return out

    def kv_get(self, key: str, detail: bool = False) -> dict[str, JSON] | None:
        """``{"key", "value", "modify_index"}`` (and ``create_index`` with ``detail``), or
        None when absent."""
        rec = self._kv.get(key)
        if rec is None:
            return None
        out = {
            "key": key,
            "value": copy.deepcopy(rec["value"]),
            "modify_index": rec["modify_index"],
        }
        if detail:
            out["create_index"] = rec["create_index"]
        return out

    def kv_keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self._kv if k.startswith(prefix))

    # ---- size and quota --------------------------------------------------------------------
    def kv_bytes(self) -> int:
        """The KV store's size as the quota counts it (:func:`kv_record_bytes` summed)."""
        return self._kv_bytes

    def check_quota(self, quota: int, key: str, value: JSON) -> None:
        """Raise 413 ``quota_exceeded`` when putting ``value`` at ``key`` would grow the KV
        store past ``quota`` bytes (0: no quota). A write that does not grow it (a delete, a
        smaller value) always passes, so a store over its quota can be cleaned up."""
        if quota <= 0:
            return
        new = kv_record_bytes(key, value)
        after = self._kv_bytes - self._kv_sizes.get(key, 0) + new
        if after > quota and after > self._kv_bytes:
            raise StateError(
                413,
                f"the write would grow the replicated state to {after} bytes, over its quota of "
                f"{quota} (quota_bytes); delete keys or raise the quota",
                "quota_exceeded",
                quota_bytes=quota,
                state_bytes=self._kv_bytes,
            )

    def _kv_account(self, key: str, size: int) -> None:
        self._kv_bytes += size - self._kv_sizes.pop(key, 0)
        if size:
            self._kv_sizes[key] = size

    # ---- snapshots -----------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The whole state as deterministic JSON."""
        return encode_json(
            {
                "v": SNAPSHOT_FORMAT,
                "index": self.index,
                "members": self._members,
                "weights": {
                    "version": self._weights_version,
                    "weights": self._weights,
                    "reason": self._weights_reason,
                    "modify_index": self._weights_index,
                },
                "kv": self._kv,
            }
        )

    def snapshot_parts(self) -> SnapshotParts:
        """A copy of the state as of now, cheap to take (the KV values are shared: the state
        never changes a value in place, it replaces it), for :func:`encode_snapshot_parts`
        to encode elsewhere - in a worker thread - while this state goes on applying."""
        return SnapshotParts(
            index=self.index,
            members=copy.deepcopy(self._members),
            weights={
                "version": self._weights_version,
                "weights": dict(self._weights),
                "reason": self._weights_reason,
                "modify_index": self._weights_index,
            },
            kv={key: dict(rec) for key, rec in self._kv.items()},
        )

    def restore(self, data: bytes, index: int | None = None) -> None:
        """Replace the state with a snapshot's. ``index``, when given, must be the snapshot's
        (empty ``data`` then means the empty state at that index)."""
        if not data:
            if index is None:
                raise ValueError("an empty snapshot needs its index")
            self._reset(index)
            return
        try:
            obj = json.loads(data.decode("utf-8"))
            if obj.get("v") != SNAPSHOT_FORMAT:
                raise ValueError(f"unknown snapshot format {obj.get('v')!r}")
            snap_index = int(obj["index"])
            members = obj["members"]
            w = obj["weights"]
            kv = obj["kv"]
            if not (isinstance(members, dict) and isinstance(kv, dict)):
                raise ValueError("members and kv must be objects")
            # Records an older version kept under an id the grammar now refuses are dropped
            # (every replica restoring the same bytes drops the same ones).
            members = {mid: rec for mid, rec in members.items() if valid_member_id(mid)}
            weights = {str(k): int(v) for k, v in w["weights"].items() if k in members}
            version, reason, w_index = int(w["version"]), str(w["reason"]), int(w["modify_index"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a state snapshot: {e}") from None
        if index is not None and index != snap_index:
            raise ValueError(f"snapshot data is at index {snap_index}, labelled {index}")
        self.index = snap_index
        self._members = members
        self._weights = weights
        self._weights_version = version
        self._weights_reason = reason
        self._weights_index = w_index
        self._kv = kv
        self._kv_sizes = {
            k: kv_record_bytes(k, rec.get("value") if isinstance(rec, dict) else None)
            for k, rec in kv.items()
        }
        self._kv_bytes = sum(self._kv_sizes.values())

    @classmethod
    def from_snapshot(cls, data: bytes, index: int | None = None) -> StateMachine:
        sm = cls()
        sm.restore(data, index)
        return sm


def conf_change_error(change: ConfChange) -> str | None:
    """Why a committed configuration change must not be applied (the state machine and the
    agent's Raft core use this one rule), or None. An ADD needs a valid member id; a REMOVE
    is always applied (it only shrinks the group, and lets an operator take out a member an
    older version recorded under an id the grammar now refuses)."""
    if change.type is ConfChangeType.REMOVE:
        return None
    return member_id_error(change.node_id, "the configuration change's node id")


def _refused(index: int, message: str) -> ApplyResult:
    """The result of an entry that cannot be applied: a no-op with an error (status 400)."""
    return ApplyResult(index, error=StateError(400, message, "unappliable").to_dict())


def _internal(exc: Exception) -> dict[str, JSON]:
    return StateError(
        500, f"applying the entry failed: {type(exc).__name__}: {shown(str(exc))}", "internal"
    ).to_dict()


@dataclass(frozen=True, slots=True)
class SnapshotParts:
    """What :meth:`StateMachine.snapshot_parts` copied: the state at ``index``."""

    index: int
    members: dict[str, JSON]
    weights: dict[str, JSON]
    kv: dict[str, dict[str, JSON]]


def encode_snapshot_parts(parts: SnapshotParts) -> bytes:
    """The bytes :meth:`StateMachine.snapshot` gives for that state, encoded key by key: in a
    worker thread, the interpreter can switch back to the event loop between two keys (one
    ``json.dumps`` of the whole state would hold it for the whole encoding)."""
    kv = b",".join(encode_json(key) + b":" + encode_json(parts.kv[key]) for key in sorted(parts.kv))
    return b"".join(
        (
            b'{"index":',
            encode_json(parts.index),
            b',"kv":{',
            kv,
            b'},"members":',
            encode_json(parts.members),
            b',"v":',
            encode_json(SNAPSHOT_FORMAT),
            b',"weights":',
            encode_json(parts.weights),
            b"}",
        )
    )


def _member_view(rec: dict[str, JSON]) -> dict[str, JSON]:
    return copy.deepcopy(rec)


def _decode_context(context: bytes) -> dict[str, JSON] | None:
    """Member fields from a conf change's context, or None when it carries none (empty, not
    JSON, or invalid: the change itself is applied all the same, as the Raft core does)."""
    if not context:
        return None
    try:
        ctx = json.loads(context.decode("utf-8"))
        if not isinstance(ctx, dict):
            return None
        _check_member_fields(ctx)
    except (UnicodeDecodeError, ValueError, RecursionError, StateError):
        return None
    return ctx
