"""The balancers registered with the group, as ``/v1/status`` shows them (``"balancers"``).

Each syncer (``hafleet-agent balancer``) keeps its registration ``balancer/registered/<id>``
in the replicated KV store (:mod:`.keys`, docs/balancer.md); this is that list, read from
the local copy, for people: who balances, since when it was last heard of, and which of
them holds the virtual address (``--vip``). Registrations written by an older syncer (no
``vip``/``vip_held``) show ``null`` there. Pure: it reads what it is handed.

A registration is any value under the prefix (the admin token can write one, so can a
broken syncer), and its strings end up in a terminal (``hafleet-agent status``): each is
shown without control or format characters (an escape sequence, a carriage return, a bidi
override: ``?`` each), at most :data:`MAX_TEXT` characters; ``vip`` only when it is an IP
address.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from typing import Any

from .ids import is_control
from .keys import REGISTERED_PREFIX, REGISTRATION_TTL_S

#: The longest string of a registration shown (a DNS name is at most 253).
MAX_TEXT = 255


def _text(v: Any) -> str | None:
    """A string for people: control and format characters (Cc, Cf, line and paragraph
    separators) as ``?``, cut to MAX_TEXT; None when ``v`` is no string."""
    if not isinstance(v, str):
        return None
    return "".join("?" if is_control(ch) else ch for ch in v[:MAX_TEXT])


def _address(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        return None


def finite_number(v: Any) -> float | None:
    """A JSON number of a registration as a finite float; None for anything else (a string,
    a bool, an integer too large for a float: ``1`` and 400 zeros raised OverflowError on
    every member's ``/v1/status``)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return None
    try:
        number = float(v)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def balancers_view(
    kv_keys: Callable[[str], list[str]],
    kv_get: Callable[[str], dict[str, Any] | None],
    now: float,
) -> list[dict[str, Any]]:
    """``[{"id", "host", "backend", "strategy", "last_seen_s", "fresh", "vip", "vip_held"}]``
    sorted by id. ``last_seen_s``: seconds since the balancer last wrote its registration
    (its clock against ours: ``now`` is ``time.time()``; null when unknown); ``fresh``: within
    its ``ttl_s`` (a balancer that went away without deregistering is not)."""
    out = []
    for key in sorted(kv_keys(REGISTERED_PREFIX)):
        bid = key[len(REGISTERED_PREFIX) :]
        if not bid or "/" in bid:
            continue
        item = kv_get(key)
        value = item.get("value") if item else None
        if not isinstance(value, dict):
            value = {}
        at = finite_number(value.get("at"))
        ttl = finite_number(value.get("ttl_s")) or REGISTRATION_TTL_S
        age = None if at is None else round(max(0.0, now - at), 1)
        held = value.get("vip_held")
        out.append(
            {
                "id": _text(bid),
                "host": _text(value.get("host")),
                "backend": _text(value.get("backend")),
                "strategy": _text(value.get("strategy")),
                "last_seen_s": age,
                "fresh": age is not None and age <= ttl,
                "vip": _address(value.get("vip")),
                "vip_held": held if isinstance(held, bool) else None,
            }
        )
    return out
