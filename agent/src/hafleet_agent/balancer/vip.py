"""Whether this host holds the virtual address (``hafleet-agent balancer --vip ADDR``).

With keepalived (roles/balancer, ``balancer_vip``) the virtual address sits on one balancer
host at a time. The syncer does not move it; it only says where it is: its registration
(``balancer/registered/<id>``) carries ``"vip": ADDR, "vip_held": true|false``, which
``hafleet-agent status`` and ``/v1/status`` (``"balancers"``) show.

The check spawns no process: it asks the kernel for the addresses of this network
namespace's interfaces with one rtnetlink dump (``RTM_GETADDR``, IPv4 and IPv6), a few
kilobytes, well under a millisecond. Not the ``SIOCGIFCONF`` ioctl (IPv4 only), nor a
``bind()`` probe, which succeeds for any address once ``ip_nonlocal_bind`` is set (as it
often is, for HAProxy to bind the VIP on the standby). Where netlink is refused (a
sandbox), the same answer comes from ``/proc/net/fib_trie`` (IPv4: the ``/32 host LOCAL``
entries) and ``/proc/net/if_inet6``. An IPv6 address still in duplicate address detection
(tentative) or that failed it is not held: it cannot be used yet.

:func:`parse_addr_dump`, :func:`parse_fib_trie` and :func:`parse_if_inet6` are pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("hafleet.balancer")

# linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWADDR = 20
RTM_GETADDR = 22
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # length, type

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class HostAddress:
    address: Address
    ifindex: int
    usable: bool  # False while tentative (IPv6 DAD) or after DAD failed


def _align4(n: int) -> int:
    return (n + 3) & ~3


def dump_request(seq: int = 1) -> bytes:
    """An ``RTM_GETADDR`` dump request for every family."""
    body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return (
        _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        + body
    )


class NetlinkError(OSError):
    pass


def parse_addr_dump(data: bytes) -> tuple[list[HostAddress], bool]:
    """The addresses in one datagram of an ``RTM_GETADDR`` dump, and whether it ended the
    dump (``NLMSG_DONE``). A truncated message ends the parse; ``NLMSG_ERROR`` raises."""
    out: list[HostAddress] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        body = data[offset + _NLMSGHDR.size : offset + length]
        offset += _align4(length)
        if kind == NLMSG_DONE:
            return out, True
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", body)[0] if len(body) >= 4 else -1
            if code == 0:
                continue  # an acknowledgement
            raise NetlinkError(-code, f"netlink: {os.strerror(-code)}")
        if kind != RTM_NEWADDR or len(body) < _IFADDRMSG.size:
            continue
        family, _plen, flags, _scope, index = _IFADDRMSG.unpack_from(body)
        attrs: dict[int, bytes] = {}
        pos = _IFADDRMSG.size
        while pos + _RTATTR.size <= len(body):
            alen, atype = _RTATTR.unpack_from(body, pos)
            if alen < _RTATTR.size or pos + alen > len(body):
                break
            attrs[atype] = body[pos + _RTATTR.size : pos + alen]
            pos += _align4(alen)
        if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) >= 4:
            flags = struct.unpack_from("=I", attrs[IFA_FLAGS])[0]
        size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
        if size is None:
            continue
        usable = not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
        # IFA_LOCAL is the address when given (on a point-to-point link IFA_ADDRESS is then
        # the peer's); else IFA_ADDRESS is (IPv6 on other links).
        raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
        if raw is not None and len(raw) == size:
            out.append(HostAddress(ipaddress.ip_address(raw), index, usable))
    return out, False


def netlink_addresses(timeout: float = 1.0) -> list[HostAddress]:
    """This network namespace's interface addresses (one rtnetlink dump)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        sock.send(dump_request())
        out: list[HostAddress] = []
        while True:
            data = sock.recv(65536)
            if not data:
                raise NetlinkError(0, "netlink: the dump ended without NLMSG_DONE")
            part, done = parse_addr_dump(data)
            out.extend(part)
            if done:
                return out


def parse_fib_trie(text: str) -> set[ipaddress.IPv4Address]:
    """The local IPv4 addresses in ``/proc/net/fib_trie``: each ``|-- A.B.C.D`` leaf followed
    by a ``/32 host LOCAL`` line (in the ``Local:`` table; while the kernel keeps the local
    and main tables merged, ``Main:`` lists them too)."""
    out: set[ipaddress.IPv4Address] = set()
    leaf: str | None = None
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "|--":
            leaf = words[1]
        elif words[:1] and not words[0].startswith("/"):
            leaf = None  # a table's name or an inner node ("+-- ...")
        elif leaf is not None and words[:3] == ["/32", "host", "LOCAL"]:
            try:
                out.add(ipaddress.IPv4Address(leaf))
            except ValueError:
                pass
    return out


def parse_if_inet6(text: str) -> list[HostAddress]:
    """``/proc/net/if_inet6``: ``ADDR(32 hex) IFINDEX PREFIXLEN SCOPE FLAGS IFNAME`` a line."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 5 or len(words[0]) != 32:
            continue
        try:
            addr = ipaddress.IPv6Address(bytes.fromhex(words[0]))
            index, flags = int(words[1], 16), int(words[4], 16)
        except ValueError:
            continue
        out.append(HostAddress(addr, index, not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)))
    return out


def proc_addresses(root: str = "/proc/net") -> list[HostAddress]:
    """The same from ``/proc`` (no interface index for IPv4: 0)."""
    out: list[HostAddress] = []
    with open(os.path.join(root, "fib_trie"), encoding="ascii", errors="replace") as f:
        out += [HostAddress(a, 0, True) for a in sorted(parse_fib_trie(f.read()))]
    try:
        with open(os.path.join(root, "if_inet6"), encoding="ascii", errors="replace") as f:
            out += parse_if_inet6(f.read())
    except FileNotFoundError:  # IPv6 off
        pass
    return out


def holds(vip: Address, addresses: Iterable[HostAddress]) -> bool:
    """Whether ``vip`` is one of ``addresses``, usable (pure)."""
    return any(a.address == vip and a.usable for a in addresses)


def parse_vip(text: str) -> Address:
    """``--vip``'s value: one IPv4 or IPv6 address (a ``/prefix`` is allowed and dropped, as
    keepalived's ``virtual_ipaddress`` writes it), as the interface dump lists it: an IPv6
    zone (``%eth0``) is dropped (the dump has none; a scoped address never equals it) and an
    IPv4-mapped IPv6 address is its IPv4 address. ValueError otherwise, and for an
    unspecified or multicast address, which no interface holds."""
    text = text.strip()
    addr_part, slash, prefix = text.partition("/")
    if addr_part.startswith("[") and addr_part.endswith("]"):
        addr_part = addr_part[1:-1]
    addr_part = addr_part.split("%", 1)[0] if ":" in addr_part else addr_part
    if slash:
        addr: Address = ipaddress.ip_interface(f"{addr_part}/{prefix}").ip
    else:
        addr = ipaddress.ip_address(addr_part)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_unspecified or addr.is_multicast:
        raise ValueError(f"{addr} cannot be a virtual address (unspecified or multicast)")
    return addr


class VIPCheck:
    """The check the syncer runs at every registration refresh and every second: netlink,
    or ``/proc`` once netlink has been refused."""

    def __init__(self, vip: str) -> None:
        self.vip = parse_vip(vip)
        self.text = str(self.vip)
        self._use_proc = False
        self._warned = False
        self.held: bool | None = None  # the last answer (None before the first)

    def addresses(self) -> list[HostAddress]:
        if not self._use_proc:
            try:
                return netlink_addresses()
            except OSError as exc:
                log.warning("cannot list the addresses over netlink (%s): reading /proc", exc)
                self._use_proc = True
        return proc_addresses()

    def check(self) -> bool:
        """Whether this host holds the VIP now; logs when that changes. False (and a warning,
        once) when the addresses cannot be read at all."""
        try:
            held = holds(self.vip, self.addresses())
        except OSError as exc:
            if not self._warned:
                log.warning("cannot tell whether %s is held here: %s", self.text, exc)
                self._warned = True
            held = False
        if held != self.held:
            log.info("virtual address %s %s", self.text, "held here" if held else "not held here")
            self.held = held
        return held

    def fields(self) -> dict[str, object]:
        """What the registration carries (checked again now)."""
        return {"vip": self.text, "vip_held": self.check()}


#: How often the syncer looks between its registration refreshes: a change is written at
#: once (the registration is refreshed), so status shows a move of the VIP within ~1 s.
VIP_CHECK_S = 1.0


async def watch_vip(
    check: VIPCheck,
    on_change: Callable[[], Awaitable[object]],
    stop: asyncio.Event,
    every: float = VIP_CHECK_S,
) -> None:
    """Check every ``every`` seconds until ``stop``; call ``on_change`` when the answer
    changed (the registration refresh, which checks again and writes)."""
    last = check.held
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return
        held = check.check()
        if held != last:
            last = held
            await on_change()
