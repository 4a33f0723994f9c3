"""The TXT record of a hafleet mDNS announcement: its schema, its encoding and the checks of
every field (no I/O; :mod:`hafleet_agent.discovery` announces and browses with it).

The record (docs/discovery.md has the schema)::

    cluster=<cluster name>  cid=<cluster id, empty while fresh>  id=<node id>
    raft=<host:port>  api=<host:port>  fresh=1|0  v=<protocol version>

:func:`txt_record` builds ours; :func:`parse_announcement` turns a peer's into a
:class:`PeerAnnouncement` or raises :class:`InvalidAnnouncement` naming the first bad field.
:func:`dns_label` makes the service instance label of a node id. :class:`NameQueue` is the
bounded bookkeeping of the announced names waiting to be resolved (or tried again), and
:func:`check_interfaces` checks the addresses discovery binds to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .addr import split_host_port

__all__ = [
    "MAX_HOST_BYTES",
    "MAX_ID_BYTES",
    "MAX_LABEL",
    "MAX_RETRY",
    "MAX_WAITING",
    "Admissions",
    "announced_addr",
    "PROTOCOL_VERSION",
    "RESCAN_BATCH",
    "RESCAN_S",
    "RETRY_S",
    "RETRY_UNRESOLVED_S",
    "InvalidAnnouncement",
    "NameQueue",
    "PeerAnnouncement",
    "check_cluster_id",
    "check_interfaces",
    "check_text",
    "dns_label",
    "format_host_port",
    "parse_announcement",
    "parse_host_port",
    "txt_record",
]

#: The discovery protocol version announced as ``v``; a peer may announce a newer one.
PROTOCOL_VERSION = 1

MAX_ID_BYTES = 128
MAX_HOST_BYTES = 253
MAX_LABEL = 63

#: Names not tried yet that wait for a resolve slot: at most this many (the newest kept; the
#: oldest is put back to be tried again, below).
MAX_WAITING = 1024
#: Names put back are tried again after RETRY_S when refused for a full table or queue,
#: after RETRY_UNRESOLVED_S when not resolved; at most MAX_RETRY of each (the most recent).
RETRY_S = 1.0
RETRY_UNRESOLVED_S = 10.0
MAX_RETRY = 1024
#: When names had to be forgotten (a retry list was full), every RESCAN_S at most
#: RESCAN_BATCH names of zeroconf's cache that are tracked nowhere are picked at random to try.
RESCAN_S = 10.0
RESCAN_BATCH = 64

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_CLUSTER_ID_RE = re.compile(r"[\x21-\x7e]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class InvalidAnnouncement(ValueError):
    """A TXT record (or a value of ours) that does not fit the schema."""


# --- names --------------------------------------------------------------------------------------


def dns_label(text: str, max_length: int = MAX_LABEL) -> str:
    """A DNS label (``[a-z0-9-]``, no leading or trailing hyphen) that stands for ``text``.

    ``text`` is returned unchanged when it already is such a label and fits ``max_length``.
    Otherwise: lowercased, every run of other characters replaced by one ``-``, trimmed to fit,
    and suffixed with ``-`` + the first 8 hex digits of the SHA-256 of ``text`` (UTF-8), so
    that two ids that differ only in the replaced characters (``web_1``, ``web.1``, ``Web-1``)
    still get different labels. The result depends on ``text`` alone.
    """
    if not 10 <= max_length <= MAX_LABEL:
        raise ValueError(f"max_length must be in 10..{MAX_LABEL}, got {max_length}")
    if len(text) <= max_length and _LABEL_RE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    base = base[: max_length - len(digest) - 1].rstrip("-")
    return f"{base}-{digest}" if base else f"x{digest}"


# --- field validation ---------------------------------------------------------------------------


def check_text(what: str, value: str, *, allow_empty: bool = False) -> str:
    if not value:
        if allow_empty:
            return value
        raise InvalidAnnouncement(f"{what} is empty")
    if _CONTROL_RE.search(value) or value != value.strip():
        raise InvalidAnnouncement(f"{what} has control characters or surrounding whitespace")
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise InvalidAnnouncement(f"{what} is longer than {MAX_ID_BYTES} bytes")
    return value


def check_cluster_id(value: str) -> str:
    if value and not (len(value) <= MAX_ID_BYTES and _CLUSTER_ID_RE.fullmatch(value)):
        raise InvalidAnnouncement("cid must be printable ASCII without spaces")
    return value


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; IPv6 in brackets (``[fd00::1]:7400``).

    HOST is an IPv4 address, a bracketed IPv6 address or a host name (at most
    MAX_HOST_BYTES, labels of at most 63 characters: RFC 1035 §2.3.4); PORT is 1..65535.
    Raises ``InvalidAnnouncement`` (its message quotes at most 80 characters of ``text``).
    """
    shown = repr(text[:80]) + ("..." if len(text) > 80 else "")
    raw_host, _, port_text = text.rpartition(":")
    if len(port_text) > 5 or len(text) > MAX_HOST_BYTES + 8:
        raise InvalidAnnouncement(f"bad port or too long in {shown}")
    try:
        host, port = split_host_port(text)
    except ValueError:
        raise InvalidAnnouncement(f"not HOST:PORT: {shown}") from None
    if raw_host.startswith("[") and raw_host.endswith("]"):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidAnnouncement(f"bad IPv6 address in {shown}") from None
        return host, port
    if len(host) > MAX_HOST_BYTES or not _HOSTNAME_RE.fullmatch(host):
        raise InvalidAnnouncement(f"bad host in {shown}")
    if any(len(label) > 63 for label in host.split(".")):
        raise InvalidAnnouncement(f"a DNS label over 63 characters in {shown}")
    return host, port


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- announcements ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerAnnouncement:
    """What one peer announces. Equality ignores ``last_seen``.

    ``raft_addr`` and ``api_addr`` are ``host:port`` exactly as announced; ``addresses`` are
    the IPv4 addresses of the announcing host's mDNS record; ``last_seen`` is
    ``time.monotonic()`` when the announcement was last resolved (added or changed).
    """

    node_id: str
    cluster: str
    cluster_id: str
    raft_addr: str
    api_addr: str
    fresh: bool
    version: int
    addresses: tuple[str, ...]
    service_name: str
    last_seen: float = field(default=0.0, compare=False)

    @property
    def raft_endpoint(self) -> tuple[str, int]:
        return parse_host_port(self.raft_addr)

    @property
    def api_endpoint(self) -> tuple[str, int]:
        return parse_host_port(self.api_addr)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (addresses as a list)."""
        result = dataclasses.asdict(self)
        result["addresses"] = list(self.addresses)
        return result


_REQUIRED_KEYS = ("cluster", "cid", "id", "raft", "api", "fresh", "v")


def txt_record(
    cluster: str, cluster_id: str, node_id: str, raft_addr: str, api_addr: str, *, fresh: bool
) -> dict[str, str]:
    """The TXT record a node announces, as strings (what :func:`parse_announcement` reads)."""
    return {
        "cluster": cluster,
        "cid": cluster_id,
        "id": node_id,
        "raft": raft_addr,
        "api": api_addr,
        "fresh": "1" if fresh else "0",
        "v": str(PROTOCOL_VERSION),
    }


def parse_announcement(
    service_name: str,
    properties: Mapping[bytes, bytes | None],
    addresses: Sequence[str] = (),
    last_seen: float = 0.0,
) -> PeerAnnouncement:
    """Turn a resolved service's TXT properties into a ``PeerAnnouncement``.

    Keys are matched case-insensitively (RFC 6763 6.4); unknown keys are ignored, so that a
    later version can add fields. Raises ``InvalidAnnouncement`` naming the first bad field.
    """
    fields: dict[str, str] = {}
    for raw_key, raw_value in properties.items():
        try:
            key = raw_key.decode("ascii").lower()
        except UnicodeDecodeError:
            continue
        if key not in _REQUIRED_KEYS:
            continue
        if key in fields:
            raise InvalidAnnouncement(f"duplicate key {key!r}")
        if raw_value is None:
            raise InvalidAnnouncement(f"{key} has no value")
        try:
            fields[key] = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidAnnouncement(f"{key} is not UTF-8") from None
    missing = [key for key in _REQUIRED_KEYS if key not in fields]
    if missing:
        raise InvalidAnnouncement(f"missing {', '.join(missing)}")
    if fields["fresh"] not in ("0", "1"):
        raise InvalidAnnouncement(f"fresh must be 0 or 1, got {fields['fresh']!r}")
    version_text = fields["v"]
    if not (version_text.isascii() and version_text.isdigit() and len(version_text) <= 4):
        raise InvalidAnnouncement(f"v must be a small integer, got {version_text!r}")
    version = int(version_text)
    if version < 1:
        raise InvalidAnnouncement("v must be at least 1")
    for key in ("raft", "api"):
        try:
            parse_host_port(fields[key])
        except InvalidAnnouncement as exc:
            raise InvalidAnnouncement(f"{key}: {exc}") from None
    return PeerAnnouncement(
        node_id=check_text("id", fields["id"]),
        cluster=check_text("cluster", fields["cluster"]),
        cluster_id=check_cluster_id(fields["cid"]),
        raft_addr=fields["raft"],
        api_addr=fields["api"],
        fresh=fields["fresh"] == "1",
        version=version,
        addresses=tuple(sorted(set(addresses))),
        service_name=service_name,
        last_seen=last_seen,
    )


# --- the names to resolve (bounded: anyone on the segment can announce) -------------------------


class RetryList:
    """Names to try again ``delay`` s after they were put here, due in the order they were
    put; at most ``limit`` (the most recent kept, ``dropped`` counts the others)."""

    def __init__(self, delay: float, limit: int) -> None:
        self.delay, self.limit, self.dropped = delay, limit, 0
        self.due: dict[str, float] = {}  # name -> when, in order of time

    def put(self, name: str, now: float) -> None:
        self.due.pop(name, None)
        while len(self.due) >= self.limit:
            del self.due[next(iter(self.due))]
            self.dropped += 1
        self.due[name] = now + self.delay

    def pop_due(self, now: float) -> str | None:
        name = next(iter(self.due), None)
        if name is None or self.due[name] > now:
            return None
        del self.due[name]
        return name


class NameQueue:
    """The announced names waiting for a resolve slot, and those put back to be tried again.

    Names not tried yet come first, the newest first: a flood of names that never resolve
    must not hold up a real peer announced after it. Names put back (``put_back``) come back
    once due, given up to ``retry_slots`` slots while new names wait (all free ones
    otherwise), so a flood of new names cannot starve them either."""

    def __init__(
        self, max_waiting: int = MAX_WAITING, max_retry: int = MAX_RETRY, retry_slots: int = 8
    ) -> None:
        self.max_waiting = max_waiting
        self.retry_slots = retry_slots
        self.waiting: dict[str, None] = {}  # newest last
        self.later = (RetryList(RETRY_S, max_retry), RetryList(RETRY_UNRESOLVED_S, max_retry))
        self._rescanned = (0, float("-inf"))  # names dropped, time: at the last rescan

    def add(self, name: str) -> str | None:
        """Queue ``name`` as the newest; returns the oldest waiting name when it had to make
        room for it (the caller puts it back)."""
        self.discard(name)
        self.waiting[name] = None
        if len(self.waiting) <= self.max_waiting:
            return None
        oldest = next(iter(self.waiting))
        del self.waiting[oldest]
        return oldest

    def put_back(self, name: str, now: float, *, unresolved: bool = False) -> None:
        self.later[unresolved].put(name, now)

    def discard(self, name: str) -> None:
        self.waiting.pop(name, None)
        for later in self.later:
            later.due.pop(name, None)

    def next(self, now: float, retries_running: int) -> tuple[str, bool] | None:
        """The next name to resolve and whether it is a retry; None: nothing to do now."""
        if not self.waiting or retries_running < self.retry_slots:
            name = self.later[0].pop_due(now) or self.later[1].pop_due(now)
            if name is not None:
                return name, True
        if self.waiting:
            return self.waiting.popitem()[0], False
        return None

    @property
    def dropped(self) -> int:
        """How many names were forgotten because a retry list was full."""
        return sum(later.dropped for later in self.later)

    def names(self) -> set[str]:
        """Every name queued or put back, lowercase."""
        return {n.lower() for n in self.waiting} | {
            n.lower() for later in self.later for n in later.due
        }

    def rescan_due(self, now: float) -> bool:
        """Whether names were forgotten since the last rescan, RESCAN_S ago or more."""
        dropped, last = self._rescanned
        if self.dropped == dropped or now - last < RESCAN_S:
            return False
        self._rescanned = (self.dropped, now)
        return True

    def rescan(
        self, cached: Iterable[str], tracked: set[str], now: float, batch: int = RESCAN_BATCH
    ) -> int:
        """Put back, to be tried at once, at most ``batch`` names picked at random among the
        ``cached`` ones (zeroconf's cache) that are neither queued nor put back nor in
        ``tracked`` (lowercase): names forgotten in a flood (``dropped``) are not lost for
        good, since zeroconf reports a name only once. Returns how many were put back."""
        tracked = tracked | self.names()
        untracked = sorted({name for name in cached if name.lower() not in tracked})
        picked = random.sample(untracked, min(batch, len(untracked)))
        for name in picked:
            self.later[0].put(name, now - self.later[0].delay)
        return len(picked)

    def clear(self) -> None:
        self.waiting.clear()
        for later in self.later:
            later.due.clear()


class Admissions:
    """When each peer entered the table, in that order, and which one a newcomer may displace
    from a full table: the oldest that has not proved the cluster key (``proven``), and only
    once it had ``grace`` seconds to prove it."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.since: dict[str, float] = {}  # node id -> when it entered, oldest first

    def add(self, node_id: str, now: float) -> None:
        self.since.setdefault(node_id, now)

    def discard(self, node_id: str) -> None:
        self.since.pop(node_id, None)

    def victim(self, now: float, proven: Callable[[str], bool] | None) -> str | None:
        for node_id, since in self.since.items():
            if proven is None or not proven(node_id):
                return node_id if now - since >= self.grace else None
        return None

    def clear(self) -> None:
        self.since.clear()


def announced_addr(what: str, value: str, interface: str) -> str:
    """``value`` (``host:port``) as we announce it: an unspecified host (``0.0.0.0``, ``::``)
    becomes ``interface``. ValueError naming ``what`` if it is no address."""
    try:
        host, port = parse_host_port(value)
    except InvalidAnnouncement as exc:
        raise ValueError(f"{what}: {exc}") from None
    return format_host_port(interface if host in ("0.0.0.0", "::") else host, port)


def check_interfaces(interfaces: Sequence[str]) -> tuple[str, ...]:
    """The IPv4 addresses discovery binds to: explicit unicast ones, at least one."""
    if isinstance(interfaces, str):
        raise TypeError("interfaces must be a sequence of addresses, not a string")
    result: list[str] = []
    for text in interfaces:
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            raise ValueError(f"interface must be an IPv4 address, got {text!r}") from None
        if address.is_unspecified or address.is_multicast or address.is_reserved:
            raise ValueError(f"interface must be a unicast address of this host, got {text}")
        if str(address) not in result:
            result.append(str(address))
    if not result:
        raise ValueError("at least one interface address is required (mDNS never binds to all)")
    return tuple(result)
