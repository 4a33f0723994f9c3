"""The key-value store of the replicated state: its records, the rules of a put and a delete
(``cas``), and the size each key adds to the state, which the storage quota counts.

:class:`hafleet_agent.state.StateMachine` holds one :class:`KVStore` and calls it for the
``kv_put`` and ``kv_del`` commands (validated before, by :mod:`hafleet_agent.commands`).
"""

from __future__ import annotations

import copy
import json

from .commands import JSON, StateError

KV_RECORD_OVERHEAD = 64
"""What a key costs beyond its bytes and its value's: about its record's share of a snapshot
(``{"create_index":..,"modify_index":..,"value":..}``)."""


# encode_json's settings in one encoder made once (json.dumps makes a new one per call with
# these arguments): a restore counts every key of the store, and that is most of its cost.
_SIZE_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


#: The values that are their own copy (immutable): a put or a get copies any other.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def _copy(value: JSON) -> JSON:
    """A copy of ``value`` that the caller may keep or change (``copy.deepcopy``; the value
    itself when it cannot change, which is most values and spares deepcopy's dispatch)."""
    return value if type(value) in _IMMUTABLE else copy.deepcopy(value)


def kv_record_bytes(key: str, value: JSON) -> int:
    """One key's share of the state for the quota: key, encoded value and the overhead."""
    encoded = _SIZE_ENCODER.encode(value)
    size = len(encoded) if encoded.isascii() else len(encoded.encode("utf-8"))
    return len(key.encode("utf-8")) + size + KV_RECORD_OVERHEAD


def _top(key: str) -> str:
    """A key's first path segment with its slash (``"health/"`` for ``"health/service/n1"``),
    or ``""`` for a key without one: the buckets of :meth:`KVStore.keys`."""
    cut = key.find("/")
    return key[: cut + 1] if cut >= 0 else ""


def check_records(records: dict[str, object], index: int) -> None:
    """ValueError naming the first key whose record is not one a put makes: an object with an
    integer ``create_index`` and ``modify_index`` (1 <= create <= modify <= ``index``, the
    state's) and a ``value``. A snapshot's checksum says its bytes are intact, not that they
    are well-formed: a backup edited by hand or made by a broken agent loaded, and every read
    of such a key, or listing of its prefix, was a 500."""
    for key, rec in records.items():
        if not isinstance(rec, dict) or "value" not in rec:
            why = "is not a record with a value"
        else:
            c, m = rec.get("create_index"), rec.get("modify_index")
            if type(c) is not int or type(m) is not int:  # (not True, not 1.0)
                why = "has no integer create_index and modify_index"
            elif not 1 <= c <= m <= index:
                why = f"has create_index {c} and modify_index {m} outside 1..{index}"
            else:
                continue
        shown = repr(key[:80]) + ("..." if len(key) > 80 else "")
        raise ValueError(f"the KV record of key {shown} {why}")


class KVStore:
    """The records by key, ``{"value", "create_index", "modify_index"}`` each (a snapshot holds
    them as they are), and each key's share of the state for the quota.

    The keys are also grouped by their first path segment, so that a prefix listing such as
    ``health/service/`` - which the leader makes ten times a second - reads only the keys of
    ``health/``, not the whole store (a large state would cost it milliseconds each time)."""

    records: dict[str, dict[str, JSON]]

    def __init__(self) -> None:
        self.load({})

    def load(self, records: dict[str, dict[str, JSON]]) -> None:
        """Take ``records`` (a snapshot's) as the store and count their sizes."""
        self.records = records
        self._sizes: dict[str, int] = {  # key -> its share of the state (quota)
            k: kv_record_bytes(k, rec.get("value") if isinstance(rec, dict) else None)
            for k, rec in records.items()
        }
        self._bytes = sum(self._sizes.values())
        self._buckets: dict[str, set[str]] = {}
        for k in records:
            self._buckets.setdefault(_top(k), set()).add(k)

    # ---- commands ------------------------------------------------------------------------
    def put(self, index: int, key: str, value: JSON, cas: int | None) -> dict[str, JSON]:
        """``kv_put`` at entry ``index``: StateError 409 ``cas`` when the condition fails."""
        rec = self.records.get(key)
        self._check_cas(key, rec, cas)
        value = _copy(value)
        # A new record each time, never one changed in place: a snapshot's copy of the
        # store (copy_records) shares the records.
        new = {"create_index": index} if rec is None else dict(rec)
        new["value"] = value
        new["modify_index"] = index
        if rec is None:
            self._buckets.setdefault(_top(key), set()).add(key)
        self.records[key] = new
        self._account(key, kv_record_bytes(key, value))
        return {"key": key, "value": _copy(value), "modify_index": index}

    def delete(self, key: str, cas: int | None) -> dict[str, JSON]:
        """``kv_del``: StateError 409 ``cas`` when the condition fails."""
        rec = self.records.get(key)
        self._check_cas(key, rec, cas)
        deleted = self.records.pop(key, None) is not None
        if deleted:
            bucket = self._buckets[_top(key)]
            bucket.discard(key)
            if not bucket:
                del self._buckets[_top(key)]
        self._account(key, 0)
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

    # ---- queries -------------------------------------------------------------------------
    def get(self, key: str, detail: bool = False) -> dict[str, JSON] | None:
        """``{"key", "value", "modify_index"}`` (and ``create_index`` with ``detail``), or
        None when absent."""
        rec = self.records.get(key)
        if rec is None:
            return None
        out = {
            "key": key,
            "value": _copy(rec["value"]),
            "modify_index": rec["modify_index"],
        }
        if detail:
            out["create_index"] = rec["create_index"]
        return out

    def keys(self, prefix: str = "") -> list[str]:
        """The keys that start with ``prefix``, sorted; a prefix with a slash reads only the
        keys of its first segment."""
        top = _top(prefix)
        pool = self._buckets.get(top, ()) if top else self.records
        return sorted(k for k in pool if k.startswith(prefix))

    # ---- size and quota --------------------------------------------------------------------
    def size(self) -> int:
        """The KV store's size as the quota counts it (:func:`kv_record_bytes` summed)."""
        return self._bytes

    def check_quota(self, quota: int, key: str, value: JSON) -> None:
        """Raise 413 ``quota_exceeded`` when putting ``value`` at ``key`` would grow the KV
        store past ``quota`` bytes (0: no quota). A write that does not grow it (a delete, a
        smaller value) always passes, so a store over its quota can be cleaned up."""
        if quota <= 0:
            return
        new = kv_record_bytes(key, value)
        after = self._bytes - self._sizes.get(key, 0) + new
        if after > quota and after > self._bytes:
            raise StateError(
                413,
                f"the write would grow the replicated state to {after} bytes, over its quota of "
                f"{quota} (quota_bytes); delete keys or raise the quota",
                "quota_exceeded",
                quota_bytes=quota,
                state_bytes=self._bytes,
            )

    def _account(self, key: str, size: int) -> None:
        self._bytes += size - self._sizes.pop(key, 0)
        if size:
            self._sizes[key] = size

    def copy_records(self) -> dict[str, dict[str, JSON]]:
        """A copy of the store that shares the records: the store never changes a record in
        place, it replaces it (one dict copy, not one per record: a large store is copied on
        the event loop in a fraction of a millisecond per thousand keys)."""
        return dict(self.records)
