"""balancer/vip.py: whether this host holds the virtual address (``--vip``), the registration
fields it adds, and ``/v1/status``'s ``"balancers"`` list (registrations.py).

The parsers are fed crafted kernel answers; the readers are asked about this host's loopback
addresses; a network namespace of its own (root, iproute2) shows the answer flip when an
address is added and removed, as keepalived does with a VIP."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

from hafleet_agent.balancer import vip
from hafleet_agent.balancer.reports import DrainReports
from hafleet_agent.cli import main as cli_main
from hafleet_agent.keys import REGISTERED_KEY, REGISTERED_PREFIX, REGISTRATION_TTL_S
from hafleet_agent.registrations import balancers_view

# ---- crafted rtnetlink answers -------------------------------------------------------------


def _attr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _newaddr(family: int, index: int, attrs: list[tuple[int, bytes]], flags: int = 0) -> bytes:
    body = struct.pack("=BBBBI", family, 32, flags, 0, index)
    body += b"".join(_attr(k, d) for k, d in attrs)
    return struct.pack("=IHHII", 16 + len(body), vip.RTM_NEWADDR, 2, 1, 0) + body


def _done() -> bytes:
    return struct.pack("=IHHII", 20, vip.NLMSG_DONE, 2, 1, 0) + b"\0" * 4


def _v4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def _v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def test_the_dump_parser_takes_the_local_address_and_skips_unusable_ones() -> None:
    data = (
        # an ordinary IPv4 address: IFA_LOCAL == IFA_ADDRESS
        _newaddr(
            socket.AF_INET,
            2,
            [(vip.IFA_ADDRESS, _v4("10.0.0.5")), (vip.IFA_LOCAL, _v4("10.0.0.5"))],
        )
        # point-to-point: IFA_ADDRESS is the peer's, not ours
        + _newaddr(
            socket.AF_INET,
            3,
            [(vip.IFA_ADDRESS, _v4("10.9.9.9")), (vip.IFA_LOCAL, _v4("10.0.0.6"))],
        )
        # IPv6: IFA_ADDRESS only; the second still in DAD (IFA_FLAGS carries the 32-bit flags)
        + _newaddr(socket.AF_INET6, 2, [(vip.IFA_ADDRESS, _v6("fd00::5"))])
        + _newaddr(
            socket.AF_INET6,
            2,
            [
                (vip.IFA_ADDRESS, _v6("fd00::6")),
                (vip.IFA_FLAGS, struct.pack("=I", vip.IFA_F_TENTATIVE)),
            ],
        )
        # DAD failed, said in the header's 8-bit flags
        + _newaddr(
            socket.AF_INET6, 2, [(vip.IFA_ADDRESS, _v6("fd00::7"))], flags=vip.IFA_F_DADFAILED
        )
        # another family, and an address of the wrong size: skipped
        + _newaddr(socket.AF_PACKET, 2, [(vip.IFA_ADDRESS, b"\1" * 6)])
        + _newaddr(socket.AF_INET, 2, [(vip.IFA_LOCAL, b"\1\2\3")])
    )
    found, done = vip.parse_addr_dump(data)
    assert not done
    assert [(str(a.address), a.ifindex, a.usable) for a in found] == [
        ("10.0.0.5", 2, True),
        ("10.0.0.6", 3, True),
        ("fd00::5", 2, True),
        ("fd00::6", 2, False),
        ("fd00::7", 2, False),
    ]
    assert vip.holds(ipaddress.ip_address("10.0.0.6"), found)
    assert not vip.holds(ipaddress.ip_address("10.9.9.9"), found)  # the peer's
    assert not vip.holds(ipaddress.ip_address("fd00::6"), found)  # tentative
    assert vip.holds(ipaddress.ip_address("fd00::5"), found)

    more, done = vip.parse_addr_dump(
        _newaddr(socket.AF_INET, 1, [(vip.IFA_LOCAL, _v4("127.0.0.1"))]) + _done()
    )
    assert done and [str(a.address) for a in more] == ["127.0.0.1"]
    # a message cut short ends the parse (no exception, nothing made up)
    cut = _newaddr(socket.AF_INET, 1, [(vip.IFA_LOCAL, _v4("127.0.0.1"))])
    assert vip.parse_addr_dump(cut[:-3]) == ([], False)


def test_a_netlink_error_raises() -> None:
    err = struct.pack("=IHHII", 20, vip.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -13)
    with pytest.raises(vip.NetlinkError) as exc:
        vip.parse_addr_dump(err)
    assert exc.value.errno == 13
    ack = struct.pack("=IHHII", 20, vip.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", 0)
    assert vip.parse_addr_dump(ack + _done()) == ([], True)


FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.78.0.0/24 2 0 2
        |-- 10.78.0.0
           /24 link UNICAST
        |-- 10.78.0.201
           /32 host LOCAL
        |-- 10.78.0.250
           /32 host LOCAL
        |-- 10.78.0.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.0
           /8 host LOCAL
        |-- 127.0.0.1
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.78.0.201
        /32 host LOCAL
"""

IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000250 02 40 00 80     eth0
fd000000000000000000000000000251 02 40 00 c0     eth0
fd000000000000000000000000000252 02 40 00 88     eth0
"""


def test_the_proc_parsers() -> None:
    assert {str(a) for a in vip.parse_fib_trie(FIB_TRIE)} == {
        "10.78.0.201",
        "10.78.0.250",  # a secondary address (a VIP): LOCAL like the primary
        "127.0.0.1",
    }  # neither the /8 local route, nor the broadcast, nor the network address
    got = [(str(a.address), a.ifindex, a.usable) for a in vip.parse_if_inet6(IF_INET6)]
    assert got == [
        ("::1", 1, True),
        ("fd00::250", 2, True),
        ("fd00::251", 2, False),  # tentative (0x40)
        ("fd00::252", 2, False),  # DAD failed (0x08)
    ]
    assert vip.parse_if_inet6("garbage\nzz 01 80 10 80 lo\n") == []


def test_parse_vip() -> None:
    assert str(vip.parse_vip("10.78.0.250")) == "10.78.0.250"
    assert str(vip.parse_vip(" 10.78.0.250/24 ")) == "10.78.0.250"  # keepalived's spelling
    assert str(vip.parse_vip("[FD00::250]")) == "fd00::250"
    for bad in ("", "vip.example", "10.78.0.300", "10.78.0.250:80"):
        with pytest.raises(ValueError):
            vip.parse_vip(bad)


def test_parse_vip_gives_the_address_the_kernel_lists() -> None:
    """What the interface dump can match: an IPv6 zone (``%eth0``) is dropped (the dump has
    none, and a scoped address never equals an unscoped one: it would never be held), an
    IPv4-mapped IPv6 address is its IPv4 address, a bracketed one may carry a prefix."""
    held = [vip.HostAddress(ipaddress.ip_address(a), 2, True) for a in ("fe80::1", "10.0.0.5")]
    for text in ("fe80::1%eth0", "[fe80::1%eth0]", "fe80::1%eth0/64", "::ffff:10.0.0.5"):
        assert vip.holds(vip.parse_vip(text), held), text
    assert str(vip.parse_vip("[2001:db8::1]/64")) == "2001:db8::1"
    assert vip.VIPCheck("fe80::1%eth0").text == "fe80::1"


@pytest.mark.parametrize("bad", ["0.0.0.0", "::", "224.0.0.18", "ff02::12", "0.0.0.0/0"])
def test_parse_vip_refuses_an_address_no_interface_holds(bad: str) -> None:
    """An unspecified or multicast address is never an interface's: refused at start (exit
    2) rather than shown as 'not held' on every balancer for ever."""
    with pytest.raises(ValueError, match="cannot be a virtual address"):
        vip.parse_vip(bad)


def test_the_flag_refuses_what_is_no_address(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["balancer", "--haproxy-socket", "/nonexistent", "--backend", "b", "--vip", "lb"]
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    assert exc.value.code == 2
    assert "--vip: expected an IPv4 or IPv6 address, got 'lb'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main([*argv[:-1], "0.0.0.0"])
    assert exc.value.code == 2
    assert "0.0.0.0 cannot be a virtual address" in capsys.readouterr().err


# ---- this host's own addresses -------------------------------------------------------------


def test_netlink_and_proc_agree_on_this_host() -> None:
    by_netlink = {a.address for a in vip.netlink_addresses() if a.usable}
    by_proc = {a.address for a in vip.proc_addresses() if a.usable}
    assert ipaddress.ip_address("127.0.0.1") in by_netlink
    assert {a for a in by_netlink if a.version == 4} == {a for a in by_proc if a.version == 4}
    assert {a for a in by_netlink if a.version == 6} == {a for a in by_proc if a.version == 6}
    assert vip.VIPCheck("127.0.0.1").fields() == {"vip": "127.0.0.1", "vip_held": True}
    assert vip.VIPCheck("203.0.113.77").fields() == {"vip": "203.0.113.77", "vip_held": False}


def test_proc_is_the_fallback_when_netlink_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(timeout: float = 1.0) -> list[vip.HostAddress]:
        raise PermissionError(13, "netlink refused")

    monkeypatch.setattr(vip, "netlink_addresses", refused)
    check = vip.VIPCheck("127.0.0.1")
    assert check.check() is True and check._use_proc

    monkeypatch.setattr(vip, "proc_addresses", lambda: (_ for _ in ()).throw(OSError("no /proc")))
    assert check.check() is False  # neither answers: not held (and one warning)


CHILD = """
import json, sys
from hafleet_agent.balancer import vip
print(json.dumps([vip.VIPCheck(a).check() for a in sys.argv[1:]]))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)
def test_an_address_added_in_a_namespace_is_held_and_removed_is_not() -> None:
    """What keepalived does: a /32 (and a /128) added to and removed from an interface."""
    ns = f"hfdtvip{os.getpid() % 100000}"
    v4, v6 = "10.79.250.9", "fd00:79:250::9"

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=10)

    def held() -> list[bool]:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, v4, v6],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return __import__("json").loads(out.stdout)

    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=10)
    try:
        ip("link", "set", "lo", "up")
        assert held() == [False, False]
        ip("addr", "add", f"{v4}/32", "dev", "lo")
        ip("addr", "add", f"{v6}/128", "dev", "lo", "nodad")
        assert held() == [True, True]
        ip("addr", "del", f"{v4}/32", "dev", "lo")
        assert held() == [False, True]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=10)


def test_watch_calls_back_on_each_change_only() -> None:
    class Flipping(vip.VIPCheck):
        def __init__(self, answers: list[bool]) -> None:
            super().__init__("10.79.250.9")
            self.answers = answers

        def addresses(self) -> list[vip.HostAddress]:
            held = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            return [vip.HostAddress(self.vip, 1, True)] if held else []

    async def main() -> list[bool]:
        check = Flipping([False, False, True, True, True, False, False])
        check.check()  # the start (False)
        stop = asyncio.Event()
        seen: list[bool] = []

        async def changed() -> None:
            seen.append(bool(check.held))

        task = asyncio.create_task(vip.watch_vip(check, changed, stop, every=0.001))
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        stop.set()
        await asyncio.wait_for(task, 2)
        return seen

    assert asyncio.run(main()) == [True, False]


# ---- the registration and the status -------------------------------------------------------


class KV:
    def __init__(self) -> None:
        self.items: dict[str, Any] = {}

    async def write(self, key: str, value: Any = None, delete: bool = False) -> bool:
        if delete:
            self.items.pop(key, None)
        else:
            self.items[key] = value
        return True

    async def get_stale(self, key: str) -> Any:
        return {"key": key, "value": self.items[key]} if key in self.items else None

    def kv_keys(self, prefix: str) -> list[str]:
        return [k for k in self.items if k.startswith(prefix)]

    def kv_get(self, key: str) -> dict[str, Any] | None:
        return (
            {"key": key, "value": self.items[key], "modify_index": 1} if key in self.items else None
        )


def _register(kv: KV, bid: str, extra: Any = None) -> None:
    from hafleet_agent.balancer.plan import Plan

    r = DrainReports(kv.write, kv.get_stale, "app", "weighted", 10.0, balancer_id=bid, extra=extra)
    asyncio.run(r.report({"members": []}, {}, Plan()))
    assert r.registered


def test_the_registration_carries_the_vip_and_status_shows_who_holds_it() -> None:
    kv = KV()
    _register(kv, "lb1", vip.VIPCheck("127.0.0.1").fields)
    _register(kv, "lb2", vip.VIPCheck("203.0.113.77").fields)
    _register(kv, "lb3")  # no --vip: no fields
    reg = kv.items[f"{REGISTERED_PREFIX}lb1"]
    assert (reg["vip"], reg["vip_held"], reg["balancer_id"]) == ("127.0.0.1", True, "lb1")
    assert kv.items[f"{REGISTERED_PREFIX}lb2"]["vip_held"] is False
    assert "vip" not in kv.items[f"{REGISTERED_PREFIX}lb3"]
    # an older syncer's value (no balancer_id, vip, ttl_s), a gone one, junk: all still listed
    kv.items[f"{REGISTERED_PREFIX}old"] = {"backend": "app", "host": "h0", "at": time.time() - 2}
    kv.items[f"{REGISTERED_PREFIX}gone"] = {**reg, "at": time.time() - 60}
    kv.items[f"{REGISTERED_PREFIX}junk"] = "x"
    kv.items[f"{REGISTERED_PREFIX}lb1/nested"] = {}  # not a registration

    view = balancers_view(kv.kv_keys, kv.kv_get, time.time())
    by_id = {b["id"]: b for b in view}
    assert [b["id"] for b in view] == ["gone", "junk", "lb1", "lb2", "lb3", "old"]
    assert REGISTERED_KEY not in by_id
    assert (by_id["lb1"]["vip"], by_id["lb1"]["vip_held"], by_id["lb1"]["fresh"]) == (
        "127.0.0.1",
        True,
        True,
    )
    assert by_id["lb2"]["vip_held"] is False
    assert by_id["lb3"]["vip"] is None and by_id["lb3"]["vip_held"] is None
    assert by_id["old"]["fresh"] and by_id["old"]["vip_held"] is None  # ttl: the default
    assert 1.5 <= by_id["old"]["last_seen_s"] <= 2.5 + REGISTRATION_TTL_S
    assert not by_id["gone"]["fresh"]
    assert by_id["junk"] == {
        "id": "junk",
        "host": None,
        "backend": None,
        "strategy": None,
        "last_seen_s": None,
        "fresh": False,
        "vip": None,
        "vip_held": None,
    }
    # a balancer's clock ahead of ours: never a negative age
    kv.items[f"{REGISTERED_PREFIX}ahead"] = {**reg, "at": time.time() + 30}
    assert balancers_view(kv.kv_keys, kv.kv_get, time.time())[0]["last_seen_s"] == 0.0
