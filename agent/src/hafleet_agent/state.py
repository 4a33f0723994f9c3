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

A NORMAL entry carries a command: a JSON object ``{"op": OP, "rid": REQUEST_ID, ...fields}``
whose format, operations and limits :mod:`hafleet_agent.commands` specifies (and validates);
the KV operations' rules are :mod:`hafleet_agent.kv`'s. This module re-exports the names of
both that the API, the node and the tests use.

Applying a committed entry never raises (but :class:`ApplyOrderError`, a driver bug): a
command that cannot be decoded or fails validation, a configuration change that cannot be
decoded or names an invalid member id, an unknown entry type, all still advance the index
and yield an error result (status 400, or 500 ``internal`` for a bug in an operation): a
committed entry is never refused, and every replica reaches the same verdict (which is why
the limits of :mod:`hafleet_agent.commands` are part of the replicated protocol).

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
from dataclasses import dataclass

from .commands import (
    JSON,
    MAX_JSON_DEPTH,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    OPS,
    StateError,
    check_command,
    conf_change_error,
    decode_command,
    decode_context,
    encode_command,
    encode_json,
    json_depth_exceeds,
    member_context,
    op_of,
    parse_command,
    rid_of,
    validate_addr,
    validate_cas,
    validate_key,
    validate_member_id,
    validate_value,
)
from .ids import shown, valid_member_id
from .kv import KV_RECORD_OVERHEAD, KVStore, check_records, kv_record_bytes
from .raft.types import ConfChange, ConfChangeType, Entry, EntryType

__all__ = [
    "KV_RECORD_OVERHEAD",
    "MAX_JSON_DEPTH",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "OPS",
    "ApplyOrderError",
    "ApplyResult",
    "SnapshotParts",
    "StateError",
    "StateMachine",
    "conf_change_error",
    "decode_command",
    "encode_command",
    "encode_json",
    "encode_snapshot_parts",
    "json_depth_exceeds",
    "kv_record_bytes",
    "member_context",
    "validate_addr",
    "validate_cas",
    "validate_key",
    "validate_member_id",
    "validate_value",
]

SNAPSHOT_FORMAT = 1

ROLE_VOTER = "voter"
ROLE_LEARNER = "learner"


class ApplyOrderError(RuntimeError):
    """The driver applied entries out of order: a bug, never a client error."""


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
        self._kv = KVStore()

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
            cmd = parse_command(data)
            rid = rid_of(cmd)
            op = op_of(cmd)
            check_command(cmd)
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
        ctx = decode_context(change.context)
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
        return self._set_member_flag(index, cmd, "healthy")

    def _op_member_drain(self, index: int, cmd: dict[str, JSON]) -> dict[str, JSON]:
        return self._set_member_flag(index, cmd, "draining")

    def _set_member_flag(self, index: int, cmd: dict[str, JSON], flag: str) -> dict[str, JSON]:
        """Set a member's ``healthy`` or ``draining`` to the command's; ``modify_index`` moves
        only when it changes."""
        rec = self._require_member(cmd["id"])
        if rec[flag] != cmd[flag]:
            rec[flag] = cmd[flag]
            rec["modify_index"] = index
        return _member_view(rec)

    def _op_weights_set(self, index: int, cmd: dict[str, JSON]) -> dict[str, JSON]:
        weights: dict[str, int] = cmd["weights"]
        ignored = sorted(mid for mid in weights if mid not in self._members)
        self._weights = {mid: w for mid, w in sorted(weights.items()) if mid in self._members}
        self._bump_weights(index, cmd.get("reason", ""))
        return {**self.weights(), "ignored": ignored}

    def _op_kv_put(self, index: int, cmd: dict[str, JSON]) -> dict[str, JSON]:
        return self._kv.put(index, cmd["key"], cmd["value"], cmd.get("cas"))

    def _op_kv_del(self, index: int, cmd: dict[str, JSON]) -> dict[str, JSON]:
        return self._kv.delete(cmd["key"], cmd.get("cas"))

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

    def member_ids(self) -> list[str]:
        """The members' ids, sorted, without copying their records (the leader's health
        chores ask ten times a second)."""
        return sorted(self._members)

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
        return self._kv.get(key, detail)

    def kv_keys(self, prefix: str = "") -> list[str]:
        return self._kv.keys(prefix)

    # ---- size and quota --------------------------------------------------------------------
    def kv_bytes(self) -> int:
        """The KV store's size as the quota counts it (:func:`kv_record_bytes` summed)."""
        return self._kv.size()

    def check_quota(self, quota: int, key: str, value: JSON) -> None:
        """Raise 413 ``quota_exceeded`` when putting ``value`` at ``key`` would grow the KV
        store past ``quota`` bytes (0: no quota); see :meth:`KVStore.check_quota`."""
        self._kv.check_quota(quota, key, value)

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
                "kv": self._kv.records,
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
            kv=self._kv.copy_records(),
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
            check_records(kv, snap_index)
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
        self._kv.load(kv)

    @classmethod
    def from_snapshot(cls, data: bytes, index: int | None = None) -> StateMachine:
        sm = cls()
        sm.restore(data, index)
        return sm


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


SNAPSHOT_CHUNK_KEYS = 512
"""Keys encoded by one call of the JSON encoder in :func:`encode_snapshot_parts`."""


def encode_snapshot_parts(parts: SnapshotParts) -> bytes:
    """The bytes :meth:`StateMachine.snapshot` gives for that state, encoded in chunks of
    ``SNAPSHOT_CHUNK_KEYS`` keys in their sorted order: in a worker thread, the interpreter
    can switch back to the event loop between two chunks (one ``json.dumps`` of the whole
    state would hold it for the whole encoding; one call per key cost four times the CPU)."""
    keys = sorted(parts.kv)
    kv = b",".join(
        encode_json({k: parts.kv[k] for k in keys[i : i + SNAPSHOT_CHUNK_KEYS]})[1:-1]
        for i in range(0, len(keys), SNAPSHOT_CHUNK_KEYS)
    )
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
