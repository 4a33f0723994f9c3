"""The frames of a chunked snapshot transfer, built and checked (no I/O).

:mod:`hafleet_agent.snapxfer` sends and receives them; this module is their format. They
are msgpack maps on the authenticated transport, like every agent frame.

``snap_chunk`` (leader -> follower), one per chunk, in order::

    {"k": "snap_chunk", "cid": cluster id, "x": transfer id (str),
     "term": the MsgSnap's term, "index": snapshot index, "sterm": snapshot term,
     "total": size of the snapshot data, "sum": SHA-256 of the whole data (32 bytes),
     "off": offset of this chunk, "data": the chunk (bin, at most MAX_CHUNK_BYTES),
     "voters": [ids], "learners": [ids]}        (the member lists in the first chunk only)

``snap_ack`` (follower -> leader), once per transfer: ``{"k": "snap_ack", "cid": ...,
"x": transfer id, "index": snapshot index, "ok": bool, "reason": str}``. ``ok`` means the
checksum matched and the snapshot went to the core (whose answer, an append response,
tells the leader's core the rest); a refusal (a chunk out of order, a checksum mismatch, a
write error) makes the leader report the snapshot as failed to its core, which tries again
later.

The checks raise ValueError (KeyError for a missing field, as a dict lookup does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .codec import MAX_INDEX, MAX_TERM
from .raft.types import ConfState

__all__ = [
    "ACK_KIND",
    "CHUNK_KIND",
    "MAX_CHUNK_BYTES",
    "ChunkStart",
    "ack_frame",
    "check_chunk",
    "check_start",
    "chunk_frame",
]

CHUNK_KIND = "snap_chunk"
ACK_KIND = "snap_ack"
MAX_CHUNK_BYTES = 16 << 20
"""The largest chunk a receiver takes (a sender may pick a smaller chunk size)."""
_MAX_IDS = 1 << 16


def chunk_frame(
    cid: str | None,
    xid: str,
    term: int,
    index: int,
    snap_term: int,
    total: int,
    digest: bytes,
    off: int,
    data: bytes,
    conf: ConfState | None,
) -> dict[str, Any]:
    """A ``snap_chunk``; ``conf`` (the member lists) goes in the first chunk only."""
    frame: dict[str, Any] = {"k": CHUNK_KIND, "cid": cid, "x": xid, "term": term}
    frame.update(index=index, sterm=snap_term, total=total, sum=digest, off=off, data=data)
    if conf is not None:
        frame["voters"] = list(conf.voters)
        frame["learners"] = list(conf.learners)
    return frame


def ack_frame(xid: str, index: object, reason: str | None = None) -> dict[str, Any]:
    """A ``snap_ack``: ok without a ``reason``, a refusal with one."""
    if reason is None:
        return {"k": ACK_KIND, "x": xid, "index": index, "ok": True}
    return {"k": ACK_KIND, "x": xid, "index": index, "ok": False, "reason": reason}


def check_chunk(obj: dict[str, Any]) -> tuple[str, int, bytes]:
    """``(transfer id, offset, data)`` of any ``snap_chunk``."""
    xid = _str(obj["x"], "x", 64)
    off = _uint(obj["off"], "off")
    data = obj["data"]
    if not isinstance(data, bytes) or len(data) > MAX_CHUNK_BYTES:
        raise ValueError("data must be bin of at most 16 MiB")
    return xid, off, data


@dataclass(frozen=True, slots=True)
class ChunkStart:
    """What the first chunk of a transfer says about the whole."""

    total: int
    digest: bytes
    term: int
    index: int
    snap_term: int
    voters: tuple[str, ...]
    learners: tuple[str, ...]


def check_start(obj: dict[str, Any]) -> ChunkStart:
    """The fields of a transfer's first chunk (at offset 0)."""
    total = _uint(obj["total"], "total")
    digest = obj["sum"]
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise ValueError("sum must be 32 bytes")
    return ChunkStart(
        total,
        digest,
        # bounded as the codec bounds them in a Raft frame (codec.MAX_TERM says why)
        _uint(obj["term"], "term", MAX_TERM),
        _uint(obj["index"], "index", MAX_INDEX),
        _uint(obj["sterm"], "sterm", MAX_TERM),
        _ids(obj["voters"], "voters"),
        _ids(obj["learners"], "learners"),
    )


def _uint(v: object, what: str, limit: int = (1 << 64) - 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
        raise ValueError(f"{what} must be an integer in 0..{limit}")
    return v


def _str(v: object, what: str, limit: int) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= limit:
        raise ValueError(f"{what} must be a non-empty string of at most {limit} characters")
    return v


def _ids(v: object, what: str) -> tuple[str, ...]:
    if not isinstance(v, list) or len(v) > _MAX_IDS:
        raise ValueError(f"{what} must be a list of node ids")
    out = tuple(_str(i, what, 255) for i in v)
    if len(set(out)) != len(out):
        raise ValueError(f"{what} has duplicates")
    return out
