#!/usr/bin/python
# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: lab_network
short_description: Lab nodes on the controller, a bridge and one network namespace a node
description:
  - Makes (or removes) the network of the hafleet lab on the host it runs on, normally the
    controller.
  - A Linux bridge holds the first address of O(subnet) (or O(bridge_address)). Node V(i)
    is the network namespace O(namespace_prefix)V(i) with C(lo) up, one veth end called
    C(eth0) on the bridge with the address O(address_offset)+V(i) of O(subnet), multicast on
    (mDNS crosses the bridge), and a default route via the bridge address. The host ends of
    the veth pairs are called O(veth_prefix)V(i).
  - Any other address of O(subnet) on the bridge (a former O(bridge_address)) is removed;
    the bridge's addresses outside O(subnet) are left alone.
  - Host IP forwarding is not touched, so nothing leaves the bridge.
  - With O(state=present), a O(subnet) with an address of another interface in it, or a
    main-table route via another device to it or a part of it, is refused before any change
    (a broader route, such as a VPN's V(10.0.0.0/8) or the default route, is no conflict).
  - Names are matched exactly, never as substrings; only names of the exact form
    O(namespace_prefix)V(<digits>) and O(veth_prefix)V(<digits>) are ever removed.
  - The role P(hafleet.cluster.lab#role) wraps this module; lab nodes are reached with the
    P(hafleet.cluster.netns#connection) connection plugin.
author: hafleet maintainers (@hafleet)
version_added: 0.1.0
requirements:
  - Linux with iproute2 (C(ip)), run as root.
extends_documentation_fragment:
  - hafleet.cluster.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The bridge's addresses, the lab nodes with their addresses and each node's default
        gateway (C(gateways)), before and after (in check mode, what they would be).
  idempotent:
    support: full
options:
  state:
    description:
      - V(present) makes nodes V(1) to O(nodes) and the bridge, and repairs what is missing.
        With O(prune), lab nodes with a higher number are removed.
      - V(absent) removes every lab node of O(namespace_prefix) and the bridge.
    type: str
    choices: [present, absent]
    default: present
  nodes:
    description:
      - The number of lab nodes. Required when O(state=present).
      - Node numbers run from V(1) to O(nodes); the subnet must hold them all.
    type: int
  bridge:
    description: Name of the bridge (at most 15 characters).
    type: str
    default: hafleet0
  subnet:
    description:
      - The lab's IPv4 subnet, in CIDR notation. A private range, which the host does not
        use elsewhere (see the description).
    type: str
    default: 10.77.0.0/24
  bridge_address:
    description:
      - The bridge's address; by default the first host address of O(subnet).
      - A host address of O(subnet), neither its network nor its broadcast address.
    type: str
  address_offset:
    description: Node V(i) gets host address V(address_offset + i) of O(subnet).
    type: int
    default: 10
  namespace_prefix:
    description: Node V(i)'s namespace is called O(namespace_prefix)V(i).
    type: str
    default: hafleet-node
  veth_prefix:
    description:
      - Node V(i)'s veth end on the bridge is called O(veth_prefix)V(i). The name must stay
        within 15 characters for the highest node number.
    type: str
    default: hafleet-v
  prune:
    description:
      - With O(state=present), also remove lab nodes numbered above O(nodes).
    type: bool
    default: true
  cover_existing:
    description:
      - With O(state=present), raise O(nodes) to the highest number of a lab node that exists
        (so that, with O(prune=false) and in check mode, the result names every lab node there
        is and its address, as a playbook planning a change needs).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Three lab nodes on the default bridge hafleet0, 10.77.0.11 to 10.77.0.13
  hafleet.cluster.lab_network:
    nodes: 3

- name: A separate lab for tests, on its own bridge and subnet
  hafleet.cluster.lab_network:
    nodes: 2
    bridge: hfct0
    subnet: 10.79.6.0/24
    namespace_prefix: hfct-node
    veth_prefix: hfct-v

- name: Remove the lab network
  hafleet.cluster.lab_network:
    state: absent
"""

RETURN = r"""
bridge:
  description: The bridge and its address with prefix length.
  returned: always
  type: dict
  sample: {"name": "hafleet0", "address": "10.77.0.1/24"}
nodes:
  description: The lab nodes there are after the run (in check mode, there would be).
  returned: always
  type: list
  elements: dict
  sample:
    - {"name": "hafleet-node1", "index": 1, "address": "10.77.0.11", "veth": "hafleet-v1"}
existing_indexes:
  description: The numbers of the lab nodes (network namespaces) there were before the run.
  returned: always
  type: list
  elements: int
  sample: [1, 2, 3]
actions:
  description: The C(ip) commands run (in check mode, that would run), in order.
  returned: always
  type: list
  elements: str
  sample: ["ip netns add hafleet-node1"]
"""

import ipaddress
import json
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule

IFNAMSIZ = 15
INNER_IF = "eth0"


class LabError(Exception):
    pass


class Lab:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.actions = []
        self.ip = module.get_bin_path("ip", required=True)

    # ---- reading ---------------------------------------------------------------------------

    def _run(self, args, check=True):
        rc, out, err = self.module.run_command([self.ip] + args)
        if check and rc != 0:
            raise LabError(f"ip {' '.join(args)} failed ({rc}): {err.strip()}")
        return rc, out, err

    def _json(self, args):
        out = self._run(["-j"] + args)[1]
        out = out.strip()
        return json.loads(out) if out else []

    def namespaces(self):
        return {entry["name"] for entry in self._json(["netns", "list"])}

    def links(self, netns=None):
        args = ["link", "show"] if netns is None else ["-n", netns, "link", "show"]
        return {entry["ifname"]: entry for entry in self._json(args)}

    def addresses(self, netns=None, dev=None):
        """The IPv4 addresses (with prefix length), each with whether it is a secondary."""
        args = ["addr", "show"] if netns is None else ["-n", netns, "addr", "show"]
        if dev:
            args += ["dev", dev]
        found = {}
        for entry in self._json(args):
            for info in entry.get("addr_info", []):
                if info.get("family") == "inet":
                    found[f"{info['local']}/{info['prefixlen']}"] = bool(info.get("secondary"))
        return found

    def link_kind(self, name):
        for entry in self._json(["-d", "link", "show", "dev", name]):
            return (entry.get("linkinfo") or {}).get("info_kind")
        return None

    def host_conflicts(self, network, bridge):
        """What of the host's takes ``network``'s addresses (not ``bridge``'s), a phrase each:
        other interfaces' addresses in it, main-table routes via other devices to it or a part
        of it. A broader route (a VPN's 10.0.0.0/8) is no conflict: the bridge's wins."""
        found = []
        for entry in self._json(["addr", "show"]):
            if entry.get("ifname") == bridge:
                continue
            for info in entry.get("addr_info", []):
                if info.get("family") != "inet":
                    continue
                cidr = f"{info['local']}/{info['prefixlen']}"
                iface = ipaddress.IPv4Interface(cidr)
                if iface.ip in network or iface.network.subnet_of(network):
                    found.append(f"address {cidr} on interface {entry.get('ifname')}")
        for route in self._json(["route", "show", "table", "main"]):
            dst = route.get("dst")
            if not dst or dst == "default":
                continue
            try:
                dst_net = ipaddress.IPv4Network(dst, strict=False)
            except ValueError:
                continue
            if not dst_net.subnet_of(network):
                continue
            devs = [route["dev"]] if route.get("dev") else []
            devs += [hop["dev"] for hop in route.get("nexthops") or [] if hop.get("dev")]
            if devs and all(dev == bridge for dev in devs):
                continue
            kind = route.get("type")
            text = f"{kind} {dst}" if kind and kind != "unicast" else dst
            if route.get("gateway"):
                text += f" via {route['gateway']}"
            if devs:
                text += f" dev {','.join(dict.fromkeys(devs))}"
            found.append(f"route {text} of the main routing table")
        return found

    def default_gateway(self, netns):
        for route in self._json(["-n", netns, "route", "show", "default"]):
            if route.get("dst") == "default":
                return route.get("gateway")
        return None

    # ---- acting ----------------------------------------------------------------------------

    def act(self, args, missing_ok=False):
        self.actions.append("ip " + " ".join(args))
        if not self.module.check_mode:
            rc, _out, err = self._run(args, check=not missing_ok)
            if rc != 0 and "Cannot find device" not in err:
                raise LabError(f"ip {' '.join(args)} failed ({rc}): {err.strip()}")

    # ---- plan ------------------------------------------------------------------------------

    def node_re(self):
        return re.compile("^" + re.escape(self.params["namespace_prefix"]) + r"([1-9][0-9]*)$")

    def veth_re(self):
        return re.compile("^" + re.escape(self.params["veth_prefix"]) + r"([1-9][0-9]*)$")


def _flags(link):
    return set(link.get("flags") or [])


def _validate(module):
    p = module.params
    try:
        network = ipaddress.IPv4Network(p["subnet"], strict=True)
    except ValueError as exc:
        module.fail_json(msg=f"subnet {p['subnet']!r} is not an IPv4 network: {exc}")
    if not network.is_private:
        module.fail_json(msg=f"subnet {network} is not a private range; use e.g. 10.77.0.0/24")
    hosts = network.num_addresses - 2
    if hosts < 2:
        module.fail_json(msg=f"subnet {network} is too small for a lab")
    if p["bridge_address"]:
        try:
            bridge_ip = ipaddress.IPv4Address(p["bridge_address"])
        except ValueError as exc:
            module.fail_json(msg=f"bridge_address: {exc}")
        if bridge_ip not in network:
            module.fail_json(msg=f"bridge_address {bridge_ip} is not in subnet {network}")
        if bridge_ip == network.network_address:
            module.fail_json(
                msg=f"bridge_address {bridge_ip} is the network address of subnet {network}, "
                "not a host address"
            )
        if bridge_ip == network.broadcast_address:
            module.fail_json(
                msg=f"bridge_address {bridge_ip} is the broadcast address of subnet {network}, "
                "not a host address"
            )
    else:
        bridge_ip = network.network_address + 1
    if p["address_offset"] < 0:
        module.fail_json(msg="address_offset must be 0 or more")
    capacity = max_nodes(network, p["address_offset"])
    if p["state"] == "present":
        nodes = p["nodes"]
        if nodes is None:
            module.fail_json(msg="nodes is required with state=present")
        if nodes < 0:
            module.fail_json(msg=f"nodes must be 0 or more, got {nodes}")
        if nodes > capacity:
            module.fail_json(
                msg=f"nodes={nodes} is more than subnet {network} holds with address_offset "
                f"{p['address_offset']}: at most {capacity}; choose a larger subnet or fewer nodes"
            )
        addresses = [network.network_address + p["address_offset"] + i for i in range(1, nodes + 1)]
        if bridge_ip in addresses:
            module.fail_json(
                msg=f"the bridge address {bridge_ip} collides with a node address; "
                "change address_offset or bridge_address"
            )
        longest = p["veth_prefix"] + str(max(nodes, 1)) + "p"
        if len(longest) > IFNAMSIZ:
            module.fail_json(
                msg=f"veth name {longest!r} is longer than {IFNAMSIZ} characters; "
                "choose a shorter veth_prefix"
            )
    for name in ("bridge", "veth_prefix"):
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", p[name] or ""):
            module.fail_json(msg=f"{name} {p[name]!r} is not a valid interface name")
    if len(p["bridge"]) > IFNAMSIZ:
        module.fail_json(msg=f"bridge {p['bridge']!r} is longer than {IFNAMSIZ} characters")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", p["namespace_prefix"] or ""):
        module.fail_json(msg=f"namespace_prefix {p['namespace_prefix']!r} is not valid")
    if p["veth_prefix"] == p["bridge"] or re.match(
        "^" + re.escape(p["veth_prefix"]) + r"[1-9][0-9]*$", p["bridge"]
    ):
        module.fail_json(msg="bridge and veth_prefix must not produce the same names")
    return network, bridge_ip


def max_nodes(network, offset):
    """How many nodes fit: addresses offset+1 .. broadcast-1."""
    return max(0, network.num_addresses - 2 - offset)


def node_plan(network, offset, nodes, namespace_prefix, veth_prefix):
    return [
        {
            "name": f"{namespace_prefix}{i}",
            "index": i,
            "address": str(network.network_address + offset + i),
            "veth": f"{veth_prefix}{i}",
        }
        for i in range(1, nodes + 1)
    ]


def ensure_present(lab, network, bridge_ip):
    p = lab.params
    bridge = p["bridge"]
    cidr = f"{bridge_ip}/{network.prefixlen}"
    links = lab.links()
    if bridge in links and lab.link_kind(bridge) != "bridge":
        raise LabError(f"{bridge} exists and is not a bridge: choose another bridge name")
    conflicts = lab.host_conflicts(network, bridge)
    if conflicts:
        raise LabError(
            f"subnet {network} overlaps the host's {'; '.join(conflicts)}: the lab's nodes "
            "would not be reachable (or the host would lose that network); choose another "
            "subnet"
        )
    if bridge not in links:
        lab.act(["link", "add", bridge, "type", "bridge"])
        bridge_addrs = {}
        bridge_flags = set()
    else:
        bridge_addrs = lab.addresses(dev=bridge)
        bridge_flags = _flags(links[bridge])
    # Only the lab's own addresses (of the subnet) on the lab's bridge are stale.
    _set_address(lab, {a: s for a, s in bridge_addrs.items() if _in(a, network)}, cidr, bridge)
    if not {"UP", "MULTICAST"} <= bridge_flags:
        lab.act(["link", "set", bridge, "multicast", "on", "up"])

    wanted = node_plan(
        network, p["address_offset"], p["nodes"], p["namespace_prefix"], p["veth_prefix"]
    )
    existing_ns = lab.namespaces()
    for node in wanted:
        ns, veth, addr = node["name"], node["veth"], f"{node['address']}/{network.prefixlen}"
        peer = f"{veth}p"
        if ns in existing_ns:
            inner = lab.links(ns)
        else:
            lab.act(["netns", "add", ns])
            inner = {}
        lo = inner.get("lo")
        if lo is None or not {"UP", "MULTICAST"} <= _flags(lo):
            lab.act(["-n", ns, "link", "set", "lo", "multicast", "on", "up"])
        host_end = links.get(veth)
        if INNER_IF not in inner or host_end is None:
            # Half a pair, or none: start over with a fresh pair.
            if host_end is not None:
                lab.act(["link", "del", veth])
            if INNER_IF in inner:
                lab.act(["-n", ns, "link", "del", INNER_IF])
            if peer in links:
                lab.act(["link", "del", peer])
            lab.act(["link", "add", veth, "type", "veth", "peer", "name", peer])
            lab.act(["link", "set", peer, "netns", ns])
            lab.act(["-n", ns, "link", "set", peer, "name", INNER_IF])
            inner_addrs, inner_flags, host_flags = {}, set(), set()
            gateway = host_master = None
        else:
            inner_addrs = lab.addresses(ns, INNER_IF)
            inner_flags = _flags(inner[INNER_IF])
            gateway = lab.default_gateway(ns)
            host_master = host_end.get("master")
            host_flags = _flags(host_end)
        if host_master != bridge:
            lab.act(["link", "set", veth, "master", bridge])
        if not {"UP", "MULTICAST"} <= host_flags:
            lab.act(["link", "set", veth, "multicast", "on", "up"])
        if _set_address(lab, inner_addrs, addr, INNER_IF, ns):
            # eth0 was left without an address for a moment, and the kernel removed the routes
            # via it, the default route too: look again (in check mode, it went).
            gateway = None if lab.module.check_mode else lab.default_gateway(ns)
        if not {"UP", "MULTICAST"} <= inner_flags:
            lab.act(["-n", ns, "link", "set", INNER_IF, "multicast", "on", "up"])
        if gateway != str(bridge_ip):
            verb = "replace" if gateway else "add"
            lab.act(["-n", ns, "route", verb, "default", "via", str(bridge_ip), "dev", INNER_IF])

    if p["prune"]:
        remove_nodes(lab, lambda index: index > p["nodes"])
    return wanted


def _in(cidr, network):
    return ipaddress.IPv4Interface(cidr).ip in network


def _set_address(lab, have, want, dev, netns=None):
    """Make ``want`` the one address of ``have`` (address -> whether it is a secondary) on
    ``dev``: remove the others, then add ``want`` if it is not there. Returns whether ``dev``
    was left without any of ``have`` on the way (when ``have`` is all its addresses, the
    kernel then removed the routes via ``dev``)."""
    prefix = [] if netns is None else ["-n", netns]
    stale = [cidr for cidr in have if cidr != want]
    if stale and have.get(want):
        # Removing its subnet's primary address would remove ``want`` too (or not, when the
        # host promotes secondaries): remove it first and add it back, the same either way.
        stale.append(want)
    # Secondaries first: removing a primary takes the secondaries of its subnet with it.
    for cidr in sorted(stale, key=lambda cidr: (not have[cidr], cidr)):
        lab.act(prefix + ["addr", "del", cidr, "dev", dev])
    if want not in have or want in stale:
        lab.act(prefix + ["addr", "add", want, "dev", dev])
    return bool(stale) and (want not in have or want in stale)


def remove_nodes(lab, doomed):
    """Remove the lab nodes whose number ``doomed(number)`` accepts, and their veth ends."""
    node_re, veth_re = lab.node_re(), lab.veth_re()
    removed = set()
    for ns in sorted(lab.namespaces()):
        match = node_re.match(ns)
        if match and doomed(int(match.group(1))):
            lab.act(["netns", "del", ns])
            removed.add(int(match.group(1)))

    def doomed_links():
        found = []
        for link in sorted(lab.links()):
            match = veth_re.match(link[:-1] if link.endswith("p") else link)
            if match and doomed(int(match.group(1))):
                found.append((int(match.group(1)), link))
        return found

    # A veth pair dies with the namespace that holds one end, a moment later: wait for that
    # (bounded), then remove what is left (ends of nodes without a namespace).
    if removed and not lab.module.check_mode:
        for _attempt in range(20):  # bounded: 2 s
            if not any(index in removed for index, _link in doomed_links()):
                break
            time.sleep(0.1)
    for index, link in doomed_links():
        if index in removed and lab.module.check_mode:
            continue
        lab.act(["link", "del", link], missing_ok=True)


def describe(lab, network):
    """What is there now: the bridge's addresses and the lab nodes with their addresses."""
    p = lab.params
    links = lab.links()
    node_re = lab.node_re()
    state = {"bridge": None, "nodes": {}, "gateways": {}}
    if p["bridge"] in links:
        state["bridge"] = sorted(lab.addresses(dev=p["bridge"]))
    for ns in sorted(lab.namespaces(), key=lambda n: (len(n), n)):
        if node_re.match(ns):
            try:
                addrs = sorted(lab.addresses(ns, INNER_IF)) if INNER_IF in lab.links(ns) else []
                gateway = lab.default_gateway(ns)
            except LabError:
                addrs, gateway = [], None
            state["nodes"][ns] = addrs
            state["gateways"][ns] = gateway
    return state


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            nodes=dict(type="int"),
            bridge=dict(type="str", default="hafleet0"),
            subnet=dict(type="str", default="10.77.0.0/24"),
            bridge_address=dict(type="str"),
            address_offset=dict(type="int", default=10),
            namespace_prefix=dict(type="str", default="hafleet-node"),
            veth_prefix=dict(type="str", default="hafleet-v"),
            prune=dict(type="bool", default=True),
            cover_existing=dict(type="bool", default=False),
        ),
        required_if=[("state", "present", ["nodes"])],
        supports_check_mode=True,
    )
    network, bridge_ip = _validate(module)
    if os.geteuid() != 0:
        module.fail_json(
            msg="the lab makes network namespaces and a bridge, which needs root: run the play as "
            "root (or with become)"
        )
    lab = Lab(module)
    p = module.params
    try:
        before = describe(lab, network)
        node_re = lab.node_re()
        existing = sorted(int(node_re.match(ns).group(1)) for ns in before["nodes"])
        if (
            p["state"] == "present"
            and p["cover_existing"]
            and existing
            and existing[-1] > p["nodes"]
        ):
            p["nodes"] = existing[-1]
            network, bridge_ip = _validate(module)
        if p["state"] == "present":
            nodes = ensure_present(lab, network, bridge_ip)
        else:
            remove_nodes(lab, lambda index: True)
            if p["bridge"] in lab.links():
                lab.act(["link", "del", p["bridge"]])
            nodes = []
        if not lab.actions:
            after = before
        elif module.check_mode:
            after = _predicted(lab, before, network, bridge_ip, nodes)
        else:
            after = describe(lab, network)
    except LabError as exc:
        module.fail_json(msg=str(exc), actions=lab.actions)

    result = dict(
        changed=bool(lab.actions),
        actions=lab.actions,
        bridge=dict(name=p["bridge"], address=f"{bridge_ip}/{network.prefixlen}"),
        nodes=nodes,
        existing_indexes=existing,
    )
    if module._diff:
        result["diff"] = dict(before=before, after=after)
    module.exit_json(**result)


def _predicted(lab, before, network, bridge_ip, nodes):
    """What describe() will show after the actions (check mode)."""
    p = lab.params
    if p["state"] == "absent":
        return {"bridge": None, "nodes": {}, "gateways": {}}
    node_re = lab.node_re()
    cidr = f"{bridge_ip}/{network.prefixlen}"
    kept = {a for a in before["bridge"] or [] if not _in(a, network)}
    after = {"bridge": sorted(kept | {cidr}), "nodes": {}, "gateways": {}}
    for name, addrs in before["nodes"].items():
        if not (p["prune"] and int(node_re.match(name).group(1)) > p["nodes"]):
            after["nodes"][name] = addrs
            after["gateways"][name] = before["gateways"].get(name)
    for node in nodes:
        after["nodes"][node["name"]] = [f"{node['address']}/{network.prefixlen}"]
        after["gateways"][node["name"]] = str(bridge_ip)
    for key in ("nodes", "gateways"):
        after[key] = dict(sorted(after[key].items(), key=lambda kv: (len(kv[0]), kv[0])))
    return after


if __name__ == "__main__":
    main()
