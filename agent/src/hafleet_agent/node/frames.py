"""The checks of the control frames' fields (hello, founding, join, metrics, member
updates): a frame whose fields do not fit is refused with FrameError and dropped by the
node's frame table. Raft messages have codec.py's own limits."""

from __future__ import annotations

from typing import Any

from ..state import StateError, validate_addr, validate_member_id

#: Limits on the fields of the control frames (Raft messages have codec.py's).
MAX_ADDR_CHARS = 300
MAX_CID_CHARS = 128
MAX_TEXT_CHARS = 1000
MAX_METRICS_FIELDS = 64


class FrameError(ValueError):
    """A frame whose fields do not fit its kind: it is dropped."""


def check_cid(value: object, *, optional: bool = True) -> str | None:
    """A cluster id as frames carry it: printable ASCII, 1..MAX_CID_CHARS, or None."""
    if value is None and optional:
        return None
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_CID_CHARS
        or not value.isascii()
        or not value.isprintable()
        or " " in value
    ):
        raise FrameError("bad cluster id")
    return value


def check_addr(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_ADDR_CHARS:
        raise FrameError(f"{what} must be a HOST:PORT string")
    try:
        return validate_addr(value, what)
    except StateError as exc:
        raise FrameError(exc.message) from None


def check_info(value: object) -> dict[str, Any]:
    """A member's info (``my_info()`` of the sender, or of a founding's member), checked:
    a member id and its addresses; other keys are left out."""
    if not isinstance(value, dict):
        raise FrameError("info must be a map")
    try:
        mid = validate_member_id(value.get("id"))
    except StateError as exc:
        raise FrameError(exc.message) from None
    service = value.get("service_addr")
    return {
        "id": mid,
        "raft_addr": check_addr(value.get("raft_addr"), "raft_addr"),
        "api_addr": check_addr(value.get("api_addr"), "api_addr"),
        "service_addr": None if service is None else check_addr(service, "service_addr"),
    }


def check_metrics_row(value: object) -> dict[str, Any]:
    """One row of the leader's metrics table: a small map of names to numbers (or None)."""
    if not isinstance(value, dict) or len(value) > MAX_METRICS_FIELDS:
        raise FrameError("a metrics row must be a small map")
    for k, v in value.items():
        if not isinstance(k, str) or len(k) > 64:
            raise FrameError("a metrics field name must be a short string")
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise FrameError(f"metrics field {k!r} must be a number")
    return value
