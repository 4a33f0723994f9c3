"""Tests of hafleet_agent.discovery: the pure parts directly, the mDNS behaviour for real.

The network tests run real python-zeroconf in network namespaces on a test bridge (NetLab,
prefix ``hfdtd``, 10.79.0.0/24): every participant is a subprocess (``mdns_node.py``) started
with ``ip netns exec`` that speaks JSON lines; this process stays in the root namespace and
sends no packet itself. They need root and iproute2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import selectors
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netlab import NetLab

from hafleet_agent.discovery import (
    MAX_IGNORED,
    MAX_RESOLVING,
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    Discovery,
    InvalidAnnouncement,
    PeerAnnouncement,
    dns_label,
    parse_announcement,
    parse_host_port,
)
from hafleet_agent.discovery_records import MAX_WAITING

HERE = Path(__file__).resolve().parent

HELPER = HERE / "mdns_node.py"
AGENT_SRC = HERE.parents[2] / "agent" / "src"

# Registration takes about 1.2 s (probing) before anyone can see a service; these bound
# every wait generously so that a slow machine does not fail, while a hang still does.
SEEN_TIMEOUT = 10.0
GOODBYE_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
PREFIX = "hfdtd"
SUBNET = "10.79.0"
# The point-to-point link between node 1 and the isolated namespace (inside 10.79.0.0/24,
# clear of the bridge addresses .1-.5).
P2P_NODE1, P2P_ISO = "10.79.0.201", "10.79.0.202"


# --- pure functions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node1", "node1"),
        ("a", "a"),
        ("web-01", "web-01"),
        ("x" * 63, "x" * 63),
    ],
)
def test_dns_label_keeps_valid_labels(text: str, expected: str) -> None:
    assert dns_label(text) == expected


@pytest.mark.parametrize(
    ("text", "base"),
    [
        ("Node1", "node1"),
        ("web_01", "web-01"),
        ("web.01", "web-01"),
        ("-edge-", "edge"),
        ("host name with  spaces", "host-name-with-spaces"),
        ("nœud", "n-ud"),
        ("___", "x"),
        ("", "x"),
    ],
)
def test_dns_label_sanitises_predictably(text: str, base: str) -> None:
    label = dns_label(text)
    assert label == dns_label(text)
    assert len(label) <= 63
    assert label.startswith(base)
    suffix = label.removeprefix(base).removeprefix("-")
    assert len(suffix) == 8 and int(suffix, 16) >= 0
    assert label.isascii() and all(c.isalnum() or c == "-" for c in label)
    assert not label.startswith("-") and not label.endswith("-")


def test_dns_label_keeps_distinct_ids_distinct_and_fits() -> None:
    ids = ["web_1", "web.1", "Web-1", "web 1", "WEB_1"]
    labels = {dns_label(i) for i in ids}
    assert len(labels) == len(ids)
    long = dns_label("n" * 300)
    assert len(long) == 63
    assert len(dns_label("n" * 300, 47)) == 47
    assert dns_label("n" * 64) != dns_label("n" * 65)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:7400", ("10.0.0.1", 7400)),
        ("node-1.example:1", ("node-1.example", 1)),
        ("[fd00::1]:65535", ("fd00::1", 65535)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7400",
        ":7400",
        "h:",
        "h:0",
        "h:65536",
        "h:+1",
        "h:٣",
        "h:7400x",
        "a b:1",
        "[zz]:1",
        "fd00::1:7400",
        "h;rm:1",
    ],
)
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(InvalidAnnouncement):
        parse_host_port(text)


GOOD_TXT: dict[bytes, bytes | None] = {
    b"cluster": b"prod",
    b"cid": b"",
    b"id": b"node_1",
    b"raft": b"10.0.0.1:7400",
    b"api": b"10.0.0.1:7480",
    b"fresh": b"1",
    b"v": b"1",
}


def test_parse_announcement_good() -> None:
    peer = parse_announcement("x._hafleet._tcp.local.", GOOD_TXT, ["10.0.0.1", "10.0.0.1"], 5.0)
    assert peer == PeerAnnouncement(
        node_id="node_1",
        cluster="prod",
        cluster_id="",
        raft_addr="10.0.0.1:7400",
        api_addr="10.0.0.1:7480",
        fresh=True,
        version=1,
        addresses=("10.0.0.1",),
        service_name="x._hafleet._tcp.local.",
    )
    assert peer.last_seen == 5.0
    assert peer.raft_endpoint == ("10.0.0.1", 7400)
    assert peer.to_dict()["addresses"] == ["10.0.0.1"]


def test_parse_announcement_tolerates_case_unknown_keys_and_newer_versions() -> None:
    txt = {k.upper(): v for k, v in GOOD_TXT.items()} | {b"future": b"x", b"\xff": b"y"}
    txt[b"V"] = b"7"
    txt[b"CID"] = b"c0ffee"
    txt[b"FRESH"] = b"0"
    peer = parse_announcement("x._hafleet._tcp.local.", txt)
    assert (peer.version, peer.cluster_id, peer.fresh) == (7, "c0ffee", False)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({b"id": None}, "id has no value"),
        ({b"raft": b"nohost"}, "raft"),
        ({b"api": b"10.0.0.1:99999"}, "api"),
        ({b"fresh": b"yes"}, "fresh"),
        ({b"v": b"one"}, "v must"),
        ({b"v": b"0"}, "v must"),
        ({b"id": b""}, "id is empty"),
        ({b"id": b"a\nb"}, "control"),
        ({b"id": b" a"}, "whitespace"),
        ({b"id": "ü".encode("latin-1")}, "UTF-8"),
        ({b"id": b"n" * 129}, "longer"),
        ({b"cluster": b""}, "cluster is empty"),
        ({b"cid": b"has space"}, "cid"),
        ({b"Id": b"dup"}, "duplicate"),
    ],
)
def test_parse_announcement_rejects_garbage(change: dict[bytes, bytes | None], reason: str) -> None:
    txt = GOOD_TXT | change
    with pytest.raises(InvalidAnnouncement, match=reason):
        parse_announcement("x._hafleet._tcp.local.", txt)


@pytest.mark.parametrize("key", [k.decode() for k in GOOD_TXT])
def test_parse_announcement_requires_every_field(key: str) -> None:
    txt = {k: v for k, v in GOOD_TXT.items() if k != key.encode()}
    with pytest.raises(InvalidAnnouncement, match=f"missing {key}"):
        parse_announcement("x._hafleet._tcp.local.", txt)


def _discovery(**overrides: Any) -> Discovery:
    kwargs: dict[str, Any] = {
        "node_id": "Node_1",
        "cluster": "prod",
        "raft_addr": "0.0.0.0:7400",
        "api_addr": "10.0.0.9:7480",
        "interfaces": ["10.0.0.5"],
    }
    return Discovery(**(kwargs | overrides))


def test_discovery_announces_the_schema_and_sanitised_names() -> None:
    d = _discovery()
    assert d.txt == {
        "cluster": "prod",
        "cid": "",
        "id": "Node_1",
        "raft": "10.0.0.5:7400",  # the unspecified host becomes the interface address
        "api": "10.0.0.9:7480",
        "fresh": "1",
        "v": str(PROTOCOL_VERSION),
    }
    assert d.service_name == f"{dns_label('Node_1')}.{SERVICE_TYPE}"
    assert d.service_name.startswith("node-1-")
    assert d.server == f"{dns_label('Node_1', 47)}-10-0-0-5.local."
    assert not d.started and d.bound_addresses == () and d.peers == {}
    # What we announce must parse as a valid announcement.
    txt = {k.encode(): v.encode() for k, v in d.txt.items()}
    assert parse_announcement(d.service_name, txt).node_id == "Node_1"


@pytest.mark.parametrize(
    "interfaces",
    [[], "10.0.0.5", ["0.0.0.0"], ["224.0.0.251"], ["fd00::1"], ["eth0"], ["10.0.0"]],
)
def test_discovery_requires_explicit_ipv4_interfaces(interfaces: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        _discovery(interfaces=interfaces)


@pytest.mark.parametrize(
    "overrides",
    [
        {"node_id": ""},
        {"cluster": "a\tb"},
        {"raft_addr": "7400"},
        {"api_addr": "h:0"},
        {"cluster_id": "with space"},
        {"ttl": 0},
    ],
)
def test_discovery_rejects_bad_own_values(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _discovery(**overrides)


# --- the network harness --------------------------------------------------------------------


def _announcement(node_id: str, cluster: str = "prod") -> PeerAnnouncement:
    return PeerAnnouncement(
        node_id=node_id,
        cluster=cluster,
        cluster_id="",
        raft_addr="10.0.0.7:7400",
        api_addr="10.0.0.7:7480",
        fresh=True,
        version=PROTOCOL_VERSION,
        addresses=("10.0.0.7",),
        service_name=f"{node_id}.{SERVICE_TYPE}",
    )


def test_the_peer_table_and_the_ignored_list_are_bounded() -> None:
    """Anyone on the segment can announce: a flood of node ids fills the table up to
    ``max_peers`` and no further; the ignored list keeps only the latest names."""
    changes: list[int] = []
    d = _discovery(max_peers=3, on_change=lambda peers: changes.append(len(peers)))
    for i in range(10):
        d._consider(f"p{i}.{SERVICE_TYPE}", _announcement(f"p{i}"))
    assert sorted(d.peers) == ["p0", "p1", "p2"]
    assert d.ignored[f"p9.{SERVICE_TYPE}"] == "peer table full (3)"
    # A peer already in the table may still change; one that leaves frees a place.
    d._consider(f"p1.{SERVICE_TYPE}", dataclasses.replace(_announcement("p1"), fresh=False))
    assert d.peers["p1"].fresh is False
    d._forget(f"p0.{SERVICE_TYPE}")
    d._consider(f"p9.{SERVICE_TYPE}", _announcement("p9"))
    assert sorted(d.peers) == ["p1", "p2", "p9"] and f"p9.{SERVICE_TYPE}" not in d.ignored
    assert max(changes) == 3
    for i in range(1000):
        d._consider(f"o{i}.{SERVICE_TYPE}", _announcement(f"o{i}", cluster="other"))
    assert len(d.ignored) == MAX_IGNORED
    assert f"o999.{SERVICE_TYPE}" in d.ignored and f"o0.{SERVICE_TYPE}" not in d.ignored
    with pytest.raises(ValueError, match="max_peers"):
        _discovery(max_peers=0)


def test_resolves_run_a_bounded_number_at_a_time() -> None:
    """A flood of announced names resolves MAX_RESOLVING at a time, the newest waiting name
    first; at most MAX_WAITING wait for a slot, and the oldest names pushed out beyond are
    put back and resolved later, not forgotten."""

    async def main() -> tuple[int, list[str], dict[str, str]]:
        d = _discovery()
        release = asyncio.Event()
        running, most, done = 0, 0, []

        async def fake_resolve(name: str) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            try:
                await release.wait()
            finally:
                running -= 1
            done.append(name)

        d._resolve = fake_resolve  # type: ignore[method-assign]
        total = MAX_RESOLVING + MAX_WAITING + 5
        for i in range(total):
            d._schedule_resolve(f"s{i}.{SERVICE_TYPE}")
        await asyncio.sleep(0)
        assert len(d._resolving) == MAX_RESOLVING and len(d._queue.waiting) == MAX_WAITING
        ignored = d.ignored
        ticker = asyncio.get_running_loop().create_task(d._tick())
        release.set()
        try:
            async with asyncio.timeout(10):
                while len(done) < total:
                    await asyncio.sleep(0.01)
        finally:
            ticker.cancel()
        assert not d._resolving and not d._queue.waiting
        return most, done, ignored

    most, done, ignored = asyncio.run(main())
    assert most == MAX_RESOLVING
    assert sorted(done) == sorted(f"s{i}.{SERVICE_TYPE}" for i in range(len(done)))
    assert done[MAX_RESOLVING] == f"s{len(done) - 1}.{SERVICE_TYPE}"  # the newest first
    # The 5 oldest waiting names were pushed out, put back, and resolved last.
    pushed = [f"s{MAX_RESOLVING + i}.{SERVICE_TYPE}" for i in range(5)]
    assert sorted(done[-5:]) == sorted(pushed)
    assert sorted(ignored) == sorted(pushed)
    assert all("wait to resolve" in why for why in ignored.values())


def txt_hex(*items: bytes) -> str:
    """TXT rdata from raw ``key=value`` strings (each length-prefixed), as hex."""
    return b"".join(bytes([len(item)]) + item for item in items).hex()


def good_items(node_id: str, cluster: str, addr: str, **change: bytes) -> list[bytes]:
    fields = {
        "cluster": cluster.encode(),
        "cid": b"",
        "id": node_id.encode(),
        "raft": f"{addr}:7400".encode(),
        "api": f"{addr}:7480".encode(),
        "fresh": b"1",
        "v": b"1",
    }
    fields.update(change)
    return [k.encode() + b"=" + v for k, v in fields.items()]


class Proc:
    """One mdns_node.py subprocess and what it has said so far."""

    def __init__(self, label: str, kind: str, popen: Any, stderr_path: Path) -> None:
        self.label = label
        self.kind = kind  # "discovery" or "raw"
        self.popen = popen
        self.stderr_path = stderr_path
        self.events: list[dict[str, Any]] = []
        self.eof = False
        self._buffer = b""
        os.set_blocking(popen.stdout.fileno(), False)

    def last(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e["event"] == kind), None)

    @property
    def ready(self) -> dict[str, Any] | None:
        return self.last("ready")

    @property
    def peers(self) -> dict[str, dict[str, Any]]:
        event = self.last("peers")
        return event["peers"] if event else {}

    @property
    def ignored(self) -> dict[str, str]:
        event = self.last("peers")
        return event["ignored"] if event else {}

    @property
    def names(self) -> set[str]:
        event = self.last("names")
        return set(event["names"]) if event else set()

    def send(self, **command: Any) -> None:
        self.popen.stdin.write(json.dumps(command).encode() + b"\n")
        self.popen.stdin.flush()

    def read_available(self) -> None:
        try:
            chunk = os.read(self.popen.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            self.eof = True
            return
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        self.events += [json.loads(line) for line in lines if line.strip()]

    def describe(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace")[-3000:]
        return (
            f"--- {self.label} (pid {self.popen.pid}, exit {self.popen.poll()}) "
            f"last events: {json.dumps(self.events[-3:])}\nstderr tail:\n{stderr}"
        )


class Mdns:
    """Starts mdns_node.py processes in lab namespaces and waits on what they report."""

    def __init__(self, lab: NetLab, tmp_path: Path) -> None:
        self.lab = lab
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []

    def _spawn(self, where: int | str, label: str, args: list[str]) -> Proc:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(AGENT_SRC), env.get("PYTHONPATH")]))
        stderr_path = self.tmp_path / f"{label}.stderr"
        with stderr_path.open("wb") as stderr:
            popen = self.lab.run_in(
                where,
                [sys.executable, str(HELPER), *args],
                stdin=-1,
                stdout=-1,
                stderr=stderr,
                env=env,
            )
        proc = Proc(label, args[0], popen, stderr_path)
        self.procs.append(proc)
        return proc

    def discovery(
        self,
        where: int | str,
        node_id: str,
        cluster: str,
        interface: str,
        *,
        cluster_id: str = "",
        fresh: bool = True,
        also: tuple[str, ...] = (),
    ) -> Proc:
        """A Discovery bound to ``interface`` (and the ``also`` addresses)."""
        args = ["discovery", "--debug", "--node-id", node_id, "--cluster", cluster]
        args += ["--cluster-id", cluster_id, "--fresh", "1" if fresh else "0"]
        args += ["--raft", f"{interface}:7400", "--api", f"{interface}:7480"]
        for address in (interface, *also):
            args += ["--interface", address]
        return self._spawn(where, node_id, args)

    def raw(
        self, where: int | str, label: str, interface: str, services: dict[str, list[bytes]]
    ) -> Proc:
        spec = [{"instance": name, "txt_hex": txt_hex(*items)} for name, items in services.items()]
        args = ["raw", "--interface", interface, "--spec", json.dumps(spec)]
        return self._spawn(where, label, args)

    def pump(self, timeout: float) -> bool:
        """Read what the processes say within ``timeout``; False when none is left."""
        live = [p for p in self.procs if not p.eof]
        if not live:
            return False
        with selectors.DefaultSelector() as selector:
            for proc in live:
                selector.register(proc.popen.stdout, selectors.EVENT_READ, proc)
            for key, _ in selector.select(timeout):
                key.data.read_available()
        return True

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``condition`` while reading events; returns the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        while not condition():
            for proc in self.procs:
                if proc.last("error"):
                    pytest.fail(f"{proc.label} failed while waiting for {what}\n{self.report()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"timed out after {timeout} s waiting for {what}\n{self.report()}")
            if not self.pump(min(remaining, 0.2)):
                pytest.fail(f"every process exited while waiting for {what}\n{self.report()}")
        return time.monotonic() - start

    def holds_for(self, condition: Callable[[], bool], seconds: float, what: str) -> None:
        """Assert that ``condition`` stays true for ``seconds`` (a bounded negative check)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            assert condition(), f"{what} stopped holding\n{self.report()}"
            assert self.pump(min(remaining, 0.2)), f"every process exited\n{self.report()}"
        assert condition(), f"{what} stopped holding\n{self.report()}"

    def command(self, proc: Proc, **command: Any) -> dict:
        count = sum(1 for e in proc.events if e["event"] == "result")
        proc.send(**command)
        self.wait_for(
            lambda: sum(1 for e in proc.events if e["event"] == "result") > count,
            COMMAND_TIMEOUT,
            f"{proc.label} to answer {command}",
        )
        result = [e for e in proc.events if e["event"] == "result"][count]
        assert result["ok"], f"{command} failed: {result}\n{self.report()}"
        return result

    def wait_ready(self, *procs: Proc) -> None:
        self.wait_for(lambda: all(p.ready for p in procs), SEEN_TIMEOUT, "processes ready")

    def stop(self, proc: Proc) -> None:
        proc.send(cmd="stop")
        self.wait_for(lambda: proc.eof, GOODBYE_TIMEOUT, f"{proc.label} to stop")
        assert proc.popen.wait(timeout=GOODBYE_TIMEOUT) == 0, self.report()
        assert proc.last("stopped"), self.report()
        if proc.kind == "discovery":  # Discovery.stop() must leave no task behind
            closed = proc.last("closed")
            assert closed == {"event": "closed", "started": False, "leftover_tasks": []}

    def report(self) -> str:
        return "\n".join(proc.describe() for proc in self.procs)

    def close(self) -> None:
        """Stop every process still running (politely first); the lab kills what is left."""
        for proc in self.procs:
            if proc.popen.poll() is None and not proc.popen.stdin.closed:
                try:
                    proc.send(cmd="stop")
                except BrokenPipeError:
                    pass
        deadline = time.monotonic() + GOODBYE_TIMEOUT
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                proc.popen.kill()
                proc.popen.wait(timeout=GOODBYE_TIMEOUT)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2",
)


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    """Four namespaces on a bridge, plus ``iso`` (linked to node 1 only, point-to-point)
    and ``lo`` (nothing but a loopback without the MULTICAST flag, like the root one)."""
    with NetLab(prefix=PREFIX, subnet=SUBNET, n=4) as netlab:
        netlab.add_namespace("iso")
        netlab.link(1, f"{PREFIX}-iso", P2P_NODE1, P2P_ISO)
        netlab.add_namespace("lo", lo_multicast=False)
        yield netlab


@pytest.fixture
def mdns(lab: NetLab, tmp_path: Path) -> Iterator[Mdns]:
    harness = Mdns(lab, tmp_path)
    try:
        yield harness
    finally:
        harness.close()


# --- network tests --------------------------------------------------------------------------


@needs_root
def test_three_nodes_see_each_other_with_their_txt_fields(mdns: Mdns, lab: NetLab) -> None:
    cluster = "see"
    nodes = {f"n{i}": mdns.discovery(i, f"n{i}", cluster, lab.addr(i)) for i in (1, 2, 3)}
    mdns.wait_ready(*nodes.values())
    for i, proc in enumerate(nodes.values(), start=1):
        assert proc.ready is not None
        assert proc.ready["bound"] == [lab.addr(i)]

    took = mdns.wait_for(
        lambda: all(len(p.peers) == 2 for p in nodes.values()),
        SEEN_TIMEOUT,
        "every node to see the two others",
    )
    assert took < SEEN_TIMEOUT
    for i, (node_id, proc) in enumerate(nodes.items(), start=1):
        assert set(proc.peers) == set(nodes) - {node_id}
        for j, other in enumerate(nodes, start=1):
            if other == node_id:
                continue
            peer = proc.peers[other]
            assert peer == {
                "node_id": other,
                "cluster": cluster,
                "cluster_id": "",
                "raft_addr": f"{lab.addr(j)}:7400",
                "api_addr": f"{lab.addr(j)}:7480",
                "fresh": True,
                "version": PROTOCOL_VERSION,
                "addresses": [lab.addr(j)],
                "service_name": f"{other}.{SERVICE_TYPE}",
                "last_seen": peer["last_seen"],
            }
        assert proc.ignored == {}, f"node {i} ignored something"
    # wait_for_peers, the bootstrap's view: returns once enough fresh peers are known ...
    result = mdns.command(nodes["n1"], cmd="wait_for_peers", n=2, timeout=5, fresh=True)
    assert result["peers"] == ["n2", "n3"]
    # ... and times out, bounded, when they are not.
    n1 = nodes["n1"]
    n1.send(cmd="wait_for_peers", n=3, timeout=0.5)
    mdns.wait_for(lambda: n1.last("result") != result, COMMAND_TIMEOUT, "wait_for_peers to fail")
    timeout_result = n1.last("result")
    assert timeout_result is not None and not timeout_result["ok"]
    assert "TimeoutError: saw 2 of 3 peers" in timeout_result["error"]


@needs_root
def test_update_of_cluster_id_propagates(mdns: Mdns, lab: NetLab) -> None:
    n1 = mdns.discovery(1, "u1", "upd", lab.addr(1))
    n2 = mdns.discovery(2, "u2", "upd", lab.addr(2))
    mdns.wait_ready(n1, n2)
    mdns.wait_for(lambda: "u1" in n2.peers and "u2" in n1.peers, SEEN_TIMEOUT, "u1 <-> u2")
    assert n2.peers["u1"]["cluster_id"] == "" and n2.peers["u1"]["fresh"] is True

    assert mdns.command(n1, cmd="update", cluster_id="c1d-0001", fresh=False)["changed"]
    mdns.wait_for(
        lambda: n2.peers.get("u1", {}).get("cluster_id") == "c1d-0001",
        SEEN_TIMEOUT,
        "u2 to see u1's new cluster id",
    )
    assert n2.peers["u1"]["fresh"] is False
    result = mdns.command(n2, cmd="wait_for_peers", n=1, timeout=5, cluster_id="c1d-0001")
    assert result["peers"] == ["u1"]
    # The same values again announce nothing new.
    assert not mdns.command(n1, cmd="update", cluster_id="c1d-0001", fresh=False)["changed"]


@needs_root
def test_stopped_node_says_goodbye_and_disappears(mdns: Mdns, lab: NetLab) -> None:
    nodes = [mdns.discovery(i, f"g{i}", "bye", lab.addr(i)) for i in (1, 2, 3)]
    mdns.wait_ready(*nodes)
    mdns.wait_for(lambda: all(len(p.peers) == 2 for p in nodes), SEEN_TIMEOUT, "all see all")
    assert all(p.ignored == {} for p in nodes)
    mdns.stop(nodes[2])
    # Records live for 120 s: only the goodbye (TTL 0) makes g3 vanish this fast.
    mdns.wait_for(
        lambda: all(set(p.peers) == {"g1", "g2"} - {p.label} for p in nodes[:2]),
        GOODBYE_TIMEOUT,
        "g1 and g2 to drop g3",
    )


@needs_root
def test_garbage_announcements_are_ignored(mdns: Mdns, lab: NetLab) -> None:
    cluster = "junk"
    addr2 = lab.addr(2)
    services = {
        "ok": good_items("raw-ok", cluster, addr2),
        "no-id": [item for item in good_items("x", cluster, addr2) if not item.startswith(b"id=")],
        "bad-port": good_items("bad-port", cluster, addr2, raft=f"{addr2}:70000".encode()),
        "bad-fresh": good_items("bad-fresh", cluster, addr2, fresh=b"yes"),
        "bad-utf8": good_items("bad-utf8", cluster, addr2, id=b"\xff\xfe"),
        "no-value": [b"id" if i.startswith(b"id=") else i for i in good_items("z", cluster, addr2)],
        "empty": [],
        "binary": [b"\x00\x01\x02garbage", b"=", b"==="],
        "other-cluster": good_items("foreign", "another", addr2),
        "impostor": good_items("j1", cluster, addr2),  # claims the observer's node id
    }
    observer = mdns.discovery(1, "j1", cluster, lab.addr(1))
    raw = mdns.raw(2, "raw-junk", addr2, services)
    mdns.wait_ready(observer, raw)
    garbage = {f"{name}.{SERVICE_TYPE}" for name in services} - {f"ok.{SERVICE_TYPE}"}
    mdns.wait_for(
        lambda: "raw-ok" in observer.peers and set(observer.ignored) >= garbage,
        SEEN_TIMEOUT,
        "the valid raw announcement accepted and every bad one ignored",
    )
    assert set(observer.peers) == {"raw-ok"}
    reasons = {name.removesuffix(f".{SERVICE_TYPE}"): why for name, why in observer.ignored.items()}
    assert "missing id" in reasons["no-id"]
    assert "raft" in reasons["bad-port"]
    assert "fresh" in reasons["bad-fresh"]
    assert "UTF-8" in reasons["bad-utf8"]
    assert "id has no value" in reasons["no-value"]
    assert "missing" in reasons["empty"] and "missing" in reasons["binary"]
    assert "other cluster" in reasons["other-cluster"]
    assert "our own node id" in reasons["impostor"]


@needs_root
def test_binding_to_one_interface_of_a_two_homed_namespace(mdns: Mdns, lab: NetLab) -> None:
    """Node 1 sits on the bridge (eth0) and on a point-to-point link to ``iso`` (l1a).

    A Discovery bound to its bridge address announces on the bridge and not on the link;
    one bound to both addresses is seen across the link (the control: the topology lets
    mDNS through, only the binding keeps the first one off the link).
    """
    cluster = "bind"
    iso = f"{PREFIX}-iso"
    iso_stack = mdns.raw(iso, "iso-stack", P2P_ISO, {})
    mdns.wait_ready(iso_stack)
    # The link carries mDNS: a plain stack on node 1's end of it is seen in iso, and its
    # goodbye too (it leaves again, so that no socket in node 1 stays joined on the link).
    ctl = mdns.raw(1, "ctl-stack", P2P_NODE1, {"ctl": good_items("ctl", "x", P2P_NODE1)})
    ctl_name = f"ctl.{SERVICE_TYPE}"
    mdns.wait_for(lambda: ctl_name in iso_stack.names, SEEN_TIMEOUT, "iso to see ctl")
    mdns.stop(ctl)
    mdns.wait_for(lambda: ctl_name not in iso_stack.names, GOODBYE_TIMEOUT, "ctl's goodbye")

    d1 = mdns.discovery(1, "b1", cluster, lab.addr(1))
    d2 = mdns.discovery(2, "b2", cluster, lab.addr(2))
    mdns.wait_ready(d1, d2)
    mdns.wait_for(lambda: "b1" in d2.peers and "b2" in d1.peers, SEEN_TIMEOUT, "b1 <-> b2")
    assert d1.ready is not None and d1.ready["bound"] == [lab.addr(1)]
    assert d2.peers["b1"]["addresses"] == [lab.addr(1)]
    # b1 has announced (b2 saw it) but not on the link: iso neither saw it nor finds it.
    b1_name = f"b1.{SERVICE_TYPE}"
    assert b1_name not in iso_stack.names
    assert not mdns.command(iso_stack, cmd="resolve", name=b1_name, timeout=1.0)["found"]

    # Control: bound to both addresses, a Discovery in the same namespace is seen in iso.
    both = mdns.discovery(1, "b3", cluster, lab.addr(1), also=(P2P_NODE1,))
    mdns.wait_ready(both)
    mdns.wait_for(
        lambda: f"b3.{SERVICE_TYPE}" in iso_stack.names and "b3" in d2.peers,
        SEEN_TIMEOUT,
        "iso and b2 to see b3",
    )
    assert both.ready is not None and both.ready["bound"] == sorted([lab.addr(1), P2P_NODE1])
    assert d2.peers["b3"]["addresses"] == sorted([lab.addr(1), P2P_NODE1])


@needs_root
def test_loopback_only_namespace_works_without_multicast_flag(mdns: Mdns, lab: NetLab) -> None:
    """Several agents on one host can find each other on 127.0.0.x, no bridge needed: the
    ``lo`` namespace has only a loopback interface, without the MULTICAST flag."""
    where = f"{PREFIX}-lo"
    nodes = [mdns.discovery(where, f"l{i}", "loop", f"127.0.0.{i + 1}") for i in (1, 2, 3)]
    mdns.wait_ready(*nodes)
    mdns.wait_for(lambda: all(len(p.peers) == 2 for p in nodes), SEEN_TIMEOUT, "all see all")
    for i, proc in enumerate(nodes, start=1):
        assert proc.ready is not None and proc.ready["bound"] == [f"127.0.0.{i + 1}"]
        for j, other in enumerate(nodes, start=1):
            if other is not proc:
                assert proc.peers[other.label]["addresses"] == [f"127.0.0.{j + 1}"]
    mdns.stop(nodes[0])
    mdns.wait_for(
        lambda: all("l1" not in p.peers for p in nodes[1:]), GOODBYE_TIMEOUT, "goodbye on lo"
    )
