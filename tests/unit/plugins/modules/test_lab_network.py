# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.lab_network against a model of iproute2: present, prune, absent,
repair, exact names, check mode, diff, idempotence, bad input, a subnet the host uses."""

from __future__ import annotations

import ipaddress
import json
from unittest import mock

import pytest

from ansible_collections.hafleet.cluster.plugins.modules import lab_network
from ansible_collections.hafleet.cluster.tests.unit.plugins.modules.utils import run_module


class FakeIP:
    """Just the iproute2 the module uses, with the kernel's behaviour where it matters: a veth
    pair dies with either end, a namespace takes its interfaces with it, removing a subnet's
    first (primary) address removes the subnet's other (secondary) addresses of the link too
    (no promote_secondaries), a link left without addresses loses the routes via it (the
    default route), adding what is there already fails."""

    def __init__(self):
        # ifname -> {"kind", "flags", "master", "addrs", "order", "peer": (ns, name)}
        self.root = {}
        self.netns = {}  # name -> {"links": {...}, "gateway": str|None}
        self.routes = []  # the host's main-table routes besides the links' subnets (ip -j form)
        self.calls = []

    def links(self, ns):
        return self.root if ns is None else self.netns[ns]["links"]

    def run(self, argv):
        args = list(argv[1:])
        self.calls.append(" ".join(args))
        as_json = args[:1] == ["-j"]
        if as_json:
            args = args[1:]
        details = args[:1] == ["-d"]
        if details:
            args = args[1:]
        ns = None
        if args[:1] == ["-n"]:
            ns = args[1]
            if ns not in self.netns:
                return 1, "", f'Cannot open network namespace "{ns}": No such file or directory'
            args = args[2:]
        try:
            out = self.dispatch(ns, args, details)
        except KeyError as exc:
            return 1, "", f"Cannot find device {exc}"
        except FileExistsError:
            return 2, "", "RTNETLINK answers: File exists"
        return 0, json.dumps(out) if as_json else "", ""

    def dispatch(self, ns, args, details):
        links = self.links(ns)
        n = len(args)
        head = " ".join(args[:2])
        if head == "netns list":
            return [{"name": name} for name in self.netns]
        if head == "netns add":
            self.netns[args[2]] = {"links": {"lo": self._link("loopback", set())}, "gateway": None}
        elif head == "netns del":
            for link in list(self.netns[args[2]]["links"].values()):
                self._drop_peer(link)
            del self.netns[args[2]]
        elif head == "link show" and n == 2:
            return [self._show(name, link) for name, link in links.items()]
        elif head == "link show":
            name = args[3]
            out = self._show(name, links[name])
            if details:
                out["linkinfo"] = {"info_kind": links[name]["kind"]}
            return [out]
        elif head == "link add" and args[3:5] == ["type", "bridge"]:
            links[args[2]] = self._link("bridge", {"BROADCAST", "MULTICAST"})
        elif head == "link add" and args[3:5] == ["type", "veth"]:
            name, peer = args[2], args[7]
            links[name] = self._link("veth", {"BROADCAST", "MULTICAST"}, peer=(ns, peer))
            links[peer] = self._link("veth", {"BROADCAST", "MULTICAST"}, peer=(ns, name))
        elif head == "link set" and args[3] == "netns":
            link = links.pop(args[2])
            self.netns[args[4]]["links"][args[2]] = link
            self._repoint(link, args[4], args[2])
        elif head == "link set" and args[3] == "name":
            link = links.pop(args[2])
            links[args[4]] = link
            self._repoint(link, ns, args[4])
        elif head == "link set" and args[3] == "master":
            if args[4] not in links:
                raise KeyError(args[4])
            links[args[2]]["master"] = args[4]
        elif head == "link set":
            link = links[args[2]]
            if "up" in args[3:]:
                link["flags"].add("UP")
            if args[3:5] == ["multicast", "on"]:
                link["flags"].add("MULTICAST")
        elif head == "link del":
            self._drop_peer(links.pop(args[2]))
        elif head == "addr show" and n == 4:
            return [self._addr(args[3], links[args[3]])]
        elif head == "addr show":
            return [self._addr(name, link) for name, link in links.items()]
        elif head == "addr add":
            link = links[args[4]]
            if args[2] in link["addrs"]:
                raise FileExistsError(args[2])
            link["addrs"].add(args[2])
            link["order"].append(args[2])
        elif head == "addr del":
            self._del_addr(ns, links[args[4]], args[2])
        elif head == "route show" and ns is None:
            return [
                {"dst": str(ipaddress.IPv4Interface(cidr).network), "dev": name}
                for name, link in links.items()
                for cidr in sorted(link["addrs"])
            ] + self.routes
        elif head == "route show":
            gw = self.netns[ns]["gateway"]
            return [{"dst": "default", "gateway": gw, "dev": "eth0"}] if gw else []
        elif head in ("route add", "route replace"):
            if head == "route add" and self.netns[ns]["gateway"]:
                raise FileExistsError("default")
            self.netns[ns]["gateway"] = args[4]
        else:
            raise AssertionError(f"unexpected ip command: {args}")
        return []

    @staticmethod
    def _link(kind, flags, peer=None):
        return {
            "kind": kind,
            "flags": set(flags),
            "master": None,
            "addrs": set(),
            "order": [],
            "peer": peer,
        }

    @staticmethod
    def _primaries(link):
        """The first address of each subnet of the link (one put in by a test, not in "order",
        counts as the oldest)."""
        first = {}
        for cidr in sorted(
            link["addrs"], key=lambda a: link["order"].index(a) if a in link["order"] else -1
        ):
            first.setdefault(ipaddress.IPv4Interface(cidr).network, cidr)
        return set(first.values())

    def _del_addr(self, ns, link, cidr):
        if cidr not in link["addrs"]:
            raise KeyError(cidr)
        net = ipaddress.IPv4Interface(cidr).network
        same = [a for a in link["addrs"] if ipaddress.IPv4Interface(a).network == net]
        for addr in same if cidr in self._primaries(link) else [cidr]:
            link["addrs"].discard(addr)
        if ns is not None and not link["addrs"]:
            self.netns[ns]["gateway"] = None

    @staticmethod
    def _show(name, link):
        out = {"ifname": name, "flags": sorted(link["flags"])}
        if link["master"]:
            out["master"] = link["master"]
        return out

    @classmethod
    def _addr(cls, name, link):
        infos = []
        primaries = cls._primaries(link)
        for cidr in sorted(link["addrs"]):
            local, prefix = cidr.split("/")
            info = {"family": "inet", "local": local, "prefixlen": int(prefix)}
            if cidr not in primaries:
                info["secondary"] = True
            infos.append(info)
        return {"ifname": name, "addr_info": infos}

    def _repoint(self, link, ns, name):
        if link["peer"]:
            peer_ns, peer_name = link["peer"]
            self.links(peer_ns)[peer_name]["peer"] = (ns, name)

    def _drop_peer(self, link):
        if link.get("peer"):
            peer_ns, peer_name = link["peer"]
            if peer_ns is None or peer_ns in self.netns:
                self.links(peer_ns).pop(peer_name, None)


@pytest.fixture(name="ip")
def ip_fixture():
    fake = FakeIP()
    with (
        mock.patch.object(
            lab_network.AnsibleModule, "run_command", lambda self, argv, **kw: fake.run(argv)
        ),
        mock.patch.object(
            lab_network.AnsibleModule, "get_bin_path", lambda self, name, **kw: "/sbin/ip"
        ),
        mock.patch.object(lab_network.os, "geteuid", lambda: 0),
    ):
        yield fake


def lab(**extra):
    base = {
        "bridge": "tst0",
        "subnet": "10.79.9.0/24",
        "namespace_prefix": "tst-node",
        "veth_prefix": "tst-v",
    }
    base.update(extra)
    return base


def test_present_makes_the_bridge_and_the_nodes(ip):
    result = run_module(lab_network.main, lab(nodes=3), diff=True)

    assert result["changed"] is True
    assert result["bridge"] == {"name": "tst0", "address": "10.79.9.1/24"}
    assert [n["address"] for n in result["nodes"]] == ["10.79.9.11", "10.79.9.12", "10.79.9.13"]
    assert set(ip.netns) == {"tst-node1", "tst-node2", "tst-node3"}
    node = ip.netns["tst-node2"]
    assert node["links"]["eth0"]["addrs"] == {"10.79.9.12/24"}
    assert {"UP", "MULTICAST"} <= node["links"]["eth0"]["flags"]
    assert {"UP", "MULTICAST"} <= node["links"]["lo"]["flags"]
    assert node["gateway"] == "10.79.9.1"
    assert ip.root["tst-v2"]["master"] == "tst0"
    assert ip.root["tst0"]["addrs"] == {"10.79.9.1/24"}
    assert result["diff"]["before"] == {"bridge": None, "nodes": {}, "gateways": {}}
    assert result["diff"]["after"]["nodes"]["tst-node3"] == ["10.79.9.13/24"]
    assert result["diff"]["after"]["gateways"]["tst-node3"] == "10.79.9.1"


def test_a_second_run_changes_nothing(ip):
    run_module(lab_network.main, lab(nodes=3))
    calls = len(ip.calls)

    result = run_module(lab_network.main, lab(nodes=3), diff=True)

    assert result["changed"] is False
    assert result["actions"] == []
    assert result["diff"]["before"] == result["diff"]["after"]
    assert all(" add " not in c and " del " not in c and " set " not in c for c in ip.calls[calls:])


def test_check_mode_predicts_and_changes_nothing(ip):
    result = run_module(lab_network.main, lab(nodes=2), check_mode=True, diff=True)

    assert result["changed"] is True
    assert "ip netns add tst-node1" in result["actions"]
    assert ip.netns == {}
    assert ip.root == {}
    assert list(result["diff"]["after"]["nodes"]) == ["tst-node1", "tst-node2"]


def test_prune_removes_higher_nodes_only_by_exact_name(ip):
    run_module(lab_network.main, lab(nodes=3))
    # Look-alikes that must survive: another prefix, a suffix, a node number with a letter.
    for name in ("tst-node1x", "tst-node", "other-node3", "tst-node03"):
        ip.netns[name] = {"links": {}, "gateway": None}

    result = run_module(lab_network.main, lab(nodes=1))

    assert result["changed"] is True
    assert "tst-node2" not in ip.netns and "tst-node3" not in ip.netns
    assert {"tst-node1", "tst-node1x", "tst-node", "other-node3", "tst-node03"} <= set(ip.netns)
    assert "tst-v2" not in ip.root and "tst-v3" not in ip.root
    assert "tst-v1" in ip.root


def test_without_prune_higher_nodes_stay(ip):
    run_module(lab_network.main, lab(nodes=3))

    result = run_module(lab_network.main, lab(nodes=1, prune=False))

    assert result["changed"] is False
    assert {"tst-node1", "tst-node2", "tst-node3"} <= set(ip.netns)


def test_cover_existing_names_every_node_there_is(ip):
    run_module(lab_network.main, lab(nodes=3))
    ip.netns["tst-node03"] = {"links": {}, "gateway": None}  # no lab node: not counted
    calls = len(ip.calls)

    result = run_module(
        lab_network.main, lab(nodes=1, prune=False, cover_existing=True), check_mode=True
    )

    assert result["changed"] is False
    assert result["existing_indexes"] == [1, 2, 3]
    assert [n["name"] for n in result["nodes"]] == ["tst-node1", "tst-node2", "tst-node3"]
    assert all(" add " not in c and " del " not in c for c in ip.calls[calls:])
    more = run_module(
        lab_network.main, lab(nodes=5, prune=False, cover_existing=True), check_mode=True
    )
    assert [n["index"] for n in more["nodes"]] == [1, 2, 3, 4, 5]
    assert more["existing_indexes"] == [1, 2, 3]
    plain = run_module(lab_network.main, lab(nodes=1, prune=False), check_mode=True)
    assert [n["index"] for n in plain["nodes"]] == [1]


def test_absent_removes_everything_it_made_and_nothing_else(ip):
    run_module(lab_network.main, lab(nodes=2))
    ip.netns["tst-nodeX"] = {"links": {}, "gateway": None}
    ip.root["eth0"] = FakeIP._link("ether", {"UP"})

    result = run_module(lab_network.main, lab(state="absent"), diff=True)

    assert result["changed"] is True
    assert set(ip.netns) == {"tst-nodeX"}
    assert set(ip.root) == {"eth0"}
    assert result["diff"]["after"] == {"bridge": None, "nodes": {}, "gateways": {}}
    again = run_module(lab_network.main, lab(state="absent"))
    assert again["changed"] is False


def test_a_broken_node_is_repaired(ip):
    run_module(lab_network.main, lab(nodes=2))
    node = ip.netns["tst-node2"]
    node["links"]["eth0"]["addrs"] = {"10.79.9.99/24"}
    node["gateway"] = None
    node["links"]["lo"]["flags"].discard("UP")

    result = run_module(lab_network.main, lab(nodes=2))

    assert result["changed"] is True
    assert node["links"]["eth0"]["addrs"] == {"10.79.9.12/24"}
    assert node["gateway"] == "10.79.9.1"
    assert "UP" in node["links"]["lo"]["flags"]
    assert all("tst-node1" not in a for a in result["actions"])


def test_a_lost_veth_end_is_replaced(ip):
    run_module(lab_network.main, lab(nodes=1))
    ip.root.pop("tst-v1")
    ip.netns["tst-node1"]["links"].pop("eth0")
    ip.netns["tst-node1"]["gateway"] = None  # the default route goes with eth0

    result = run_module(lab_network.main, lab(nodes=1))

    assert result["changed"] is True
    assert "ip link add tst-v1 type veth peer name tst-v1p" in result["actions"]
    assert ip.netns["tst-node1"]["links"]["eth0"]["addrs"] == {"10.79.9.11/24"}


def host_network(ip):
    """The host's own network: lo, eth0 with a default route, which no lab subnet here meets."""
    ip.root["lo"] = FakeIP._link("loopback", {"UP", "LOOPBACK"})
    ip.root["lo"]["addrs"] = {"127.0.0.1/8"}
    ip.root["eth0"] = FakeIP._link("ether", {"UP", "BROADCAST", "MULTICAST"})
    ip.root["eth0"]["addrs"] = {"192.0.2.2/24"}
    ip.routes.append({"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"})


def changing(calls):
    return [c for c in calls if " add " in c or " del " in c or " set " in c or "replace" in c]


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_subnet_on_another_interface_is_refused_before_any_change(ip, check_mode):
    host_network(ip)
    ip.root["hfq0"] = FakeIP._link("bridge", {"UP", "BROADCAST", "MULTICAST"})
    ip.root["hfq0"]["addrs"] = {"10.79.9.1/24"}
    before = json.dumps(ip.root, default=sorted, sort_keys=True)

    result = run_module(
        lab_network.main,
        lab(bridge="hfq1", namespace_prefix="hfq-xnode", veth_prefix="hfq-x", nodes=1),
        check_mode=check_mode,
    )

    assert result["failed"] is True
    assert "subnet 10.79.9.0/24 overlaps" in result["msg"]
    assert "address 10.79.9.1/24 on interface hfq0" in result["msg"]
    assert result["actions"] == []
    assert changing(ip.calls) == []
    assert ip.netns == {}
    assert json.dumps(ip.root, default=sorted, sort_keys=True) == before


@pytest.mark.parametrize(
    ("route", "named"),
    [
        ({"dst": "10.79.9.0/24", "gateway": "192.0.2.1", "dev": "eth0"}, "10.79.9.0/24 via"),
        ({"dst": "10.79.9.128/25", "dev": "eth0", "scope": "link"}, "10.79.9.128/25 dev eth0"),
        ({"dst": "10.79.9.7", "nexthops": [{"gateway": "192.0.2.1", "dev": "eth0"}]}, "eth0"),
        ({"type": "blackhole", "dst": "10.79.9.0/24"}, "blackhole 10.79.9.0/24"),
    ],
)
def test_a_subnet_routed_via_another_device_is_refused(ip, route, named):
    host_network(ip)
    ip.routes.append(route)

    result = run_module(lab_network.main, lab(nodes=1))

    assert result["failed"] is True
    assert "subnet 10.79.9.0/24 overlaps the host's route" in result["msg"]
    assert named in result["msg"]
    assert changing(ip.calls) == []
    assert "tst0" not in ip.root


def test_a_broader_route_or_network_is_no_overlap(ip):
    # A VPN's 10.0.0.0/8 on another interface, a /16 via a gateway: the bridge's /24 is more
    # specific, the lab works beside them.
    host_network(ip)
    ip.routes.append({"dst": "10.79.0.0/16", "gateway": "192.0.2.1", "dev": "eth0"})
    ip.root["vpn0"] = FakeIP._link("none", {"UP", "POINTOPOINT"})
    ip.root["vpn0"]["addrs"] = {"10.200.0.5/8"}

    result = run_module(lab_network.main, lab(nodes=1))

    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is True


def test_the_host_network_and_the_labs_own_bridge_are_no_overlap(ip):
    host_network(ip)
    ip.routes.append({"dst": "10.79.10.0/24", "gateway": "192.0.2.1", "dev": "eth0"})
    ip.routes.append({"dst": "10.79.9.0/24", "dev": "tst0", "scope": "link"})  # the lab's own

    first = run_module(lab_network.main, lab(nodes=1))
    again = run_module(lab_network.main, lab(nodes=1))

    assert first["changed"] is True
    assert again["changed"] is False


def test_a_former_bridge_address_is_removed_from_the_bridge(ip):
    run_module(lab_network.main, lab(nodes=2, bridge_address="10.79.9.2"))
    ip.root["tst0"]["addrs"].add("192.168.77.1/24")  # not of the lab's subnet: stays

    result = run_module(lab_network.main, lab(nodes=2), diff=True)

    assert result["changed"] is True
    assert result["actions"][:2] == [
        "ip addr del 10.79.9.2/24 dev tst0",
        "ip addr add 10.79.9.1/24 dev tst0",
    ]
    assert ip.root["tst0"]["addrs"] == {"10.79.9.1/24", "192.168.77.1/24"}
    assert result["diff"]["before"]["bridge"] == ["10.79.9.2/24", "192.168.77.1/24"]
    assert result["diff"]["after"]["bridge"] == ["10.79.9.1/24", "192.168.77.1/24"]
    again = run_module(lab_network.main, lab(nodes=2))
    assert again["changed"] is False


def test_a_bridge_left_with_two_lab_addresses_keeps_only_its_own(ip):
    # What an older version left: the former address first (primary), the wanted one second.
    run_module(lab_network.main, lab(nodes=1, bridge_address="10.79.9.2"))
    ip.root["tst0"]["addrs"].add("10.79.9.1/24")
    ip.root["tst0"]["order"].append("10.79.9.1/24")

    predicted = run_module(lab_network.main, lab(nodes=1), check_mode=True, diff=True)
    result = run_module(lab_network.main, lab(nodes=1), diff=True)

    # Removing the primary would take the wanted secondary with it: it goes first, comes back.
    assert result["actions"] == [
        "ip addr del 10.79.9.1/24 dev tst0",
        "ip addr del 10.79.9.2/24 dev tst0",
        "ip addr add 10.79.9.1/24 dev tst0",
        "ip -n tst-node1 route replace default via 10.79.9.1 dev eth0",
    ]
    assert ip.root["tst0"]["addrs"] == {"10.79.9.1/24"}
    assert predicted["actions"] == result["actions"]
    assert predicted["diff"]["after"] == result["diff"]["after"]
    assert run_module(lab_network.main, lab(nodes=1))["changed"] is False


def test_stale_secondaries_go_before_their_primary(ip):
    run_module(lab_network.main, lab(nodes=1, bridge_address="10.79.9.2"))
    ip.root["tst0"]["addrs"].add("10.79.9.3/24")
    ip.root["tst0"]["order"].append("10.79.9.3/24")
    node = ip.netns["tst-node1"]
    node["links"]["eth0"]["addrs"].add("10.79.9.99/24")  # a stale secondary
    node["links"]["eth0"]["order"].append("10.79.9.99/24")
    node["gateway"] = "10.79.9.1"

    result = run_module(lab_network.main, lab(nodes=1))

    assert result["actions"] == [
        "ip addr del 10.79.9.3/24 dev tst0",
        "ip addr del 10.79.9.2/24 dev tst0",
        "ip addr add 10.79.9.1/24 dev tst0",
        # eth0 kept its address: the default route stayed, nothing to do for it.
        "ip -n tst-node1 addr del 10.79.9.99/24 dev eth0",
    ]
    assert ip.root["tst0"]["addrs"] == {"10.79.9.1/24"}
    assert node["links"]["eth0"]["addrs"] == {"10.79.9.11/24"}
    assert node["gateway"] == "10.79.9.1"


def test_a_changed_default_route_shows_in_the_diff(ip):
    run_module(lab_network.main, lab(nodes=2, bridge_address="10.79.9.2"))

    predicted = run_module(lab_network.main, lab(nodes=2), check_mode=True, diff=True)
    result = run_module(lab_network.main, lab(nodes=2), diff=True)

    assert "ip -n tst-node1 route replace default via 10.79.9.1 dev eth0" in result["actions"]
    assert result["diff"]["before"]["gateways"] == {
        "tst-node1": "10.79.9.2",
        "tst-node2": "10.79.9.2",
    }
    assert result["diff"]["after"]["gateways"] == {
        "tst-node1": "10.79.9.1",
        "tst-node2": "10.79.9.1",
    }
    assert predicted["actions"] == result["actions"]
    assert predicted["diff"]["after"] == result["diff"]["after"]
    again = run_module(lab_network.main, lab(nodes=2), diff=True)
    assert again["changed"] is False
    assert again["actions"] == []
    assert again["diff"]["before"] == again["diff"]["after"]


def test_a_new_node_address_keeps_the_default_route(ip):
    run_module(lab_network.main, lab(nodes=2))

    predicted = run_module(lab_network.main, lab(nodes=2, address_offset=20), check_mode=True)
    result = run_module(lab_network.main, lab(nodes=2, address_offset=20), diff=True)

    node = ip.netns["tst-node1"]
    assert node["links"]["eth0"]["addrs"] == {"10.79.9.21/24"}
    # The old address took the default route with it; the run puts it back.
    assert node["gateway"] == "10.79.9.1"
    assert "ip -n tst-node1 route add default via 10.79.9.1 dev eth0" in result["actions"]
    assert result["diff"]["after"]["gateways"]["tst-node1"] == "10.79.9.1"
    assert predicted["actions"] == result["actions"]
    again = run_module(lab_network.main, lab(nodes=2, address_offset=20))
    assert again["changed"] is False
    assert again["actions"] == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"nodes": 245}, "at most 244"),
        ({"nodes": -1}, "0 or more"),
        ({"nodes": 3, "subnet": "8.8.8.0/24"}, "not a private range"),
        ({"nodes": 3, "subnet": "10.79.9.1/24"}, "not an IPv4 network"),
        ({"nodes": 3, "bridge_address": "10.79.9.12"}, "collides"),
        ({"nodes": 3, "bridge_address": "10.79.9.0"}, "10.79.9.0 is the network address"),
        ({"nodes": 3, "bridge_address": "10.79.9.255"}, "10.79.9.255 is the broadcast address"),
        ({"nodes": 3, "bridge_address": "10.79.10.1"}, "not in subnet 10.79.9.0/24"),
        ({"nodes": 3, "veth_prefix": "a-very-long-prefix"}, "longer than 15"),
        ({"nodes": 3, "bridge": "tst-v1"}, "same names"),
        ({}, "nodes"),
    ],
)
def test_bad_input_fails_before_any_change(ip, extra, message):
    result = run_module(lab_network.main, lab(**extra))

    assert result["failed"] is True
    assert message in result["msg"]
    assert ip.calls == []


def test_not_root_fails_with_a_hint(ip):
    with mock.patch.object(lab_network.os, "geteuid", lambda: 1000):
        result = run_module(lab_network.main, lab(nodes=1))

    assert result["failed"] is True
    assert "root" in result["msg"]


def test_max_nodes_and_plan():
    import ipaddress

    net = ipaddress.IPv4Network("10.77.0.0/24")
    assert lab_network.max_nodes(net, 10) == 244
    assert lab_network.max_nodes(ipaddress.IPv4Network("10.77.0.0/30"), 10) == 0
    plan = lab_network.node_plan(net, 10, 2, "n", "v")
    assert plan == [
        {"name": "n1", "index": 1, "address": "10.77.0.11", "veth": "v1"},
        {"name": "n2", "index": 2, "address": "10.77.0.12", "veth": "v2"},
    ]
