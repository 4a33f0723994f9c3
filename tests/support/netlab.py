"""Lab-like network namespaces for tests: one bridge, N namespaces, real kernel networking.

``NetLab`` builds what ``roles/lab`` builds for the lab, small and disposable::

    with NetLab(prefix="hfdt", subnet="10.79.0", n=3) as lab:
        proc = lab.run_in(1, [sys.executable, "-c", "..."], stdout=subprocess.PIPE)
        lab.addr(1)     # "10.79.0.2"; the bridge is lab.bridge_addr, "10.79.0.1"

- a bridge ``<prefix>0`` in the root namespace holding ``<subnet>.1/24``;
- namespaces ``<prefix>-n1`` .. ``<prefix>-nN``: ``lo`` up (multicast on), one veth ``eth0``
  on the bridge with ``<subnet>.<i+1>/24``, multicast on, a default route via the bridge
  address. Host IP forwarding is not touched, so nothing leaves the bridge.
- ``add_namespace()`` makes an extra namespace that is not on the bridge, ``link()`` joins two
  namespaces with a point-to-point veth pair (a second, separate segment). ``n=0`` makes no
  bridge at all: a holder for such extra namespaces, e.g. one with nothing but ``lo`` for
  agents that find each other over mDNS on 127.0.0.x (docs/discovery.md).

Every name is derived from ``prefix`` and removed by its exact name on exit, also when the
body or the setup fails; processes started with ``run_in`` are stopped by their PID first.
Names that already exist are never taken over: setup fails and names them (a crashed run,
or a concurrent test with the same prefix). ``python tests/support/netlab.py --cleanup PREFIX``
removes the leftovers of a crashed run. Needs root and iproute2.

Tests that share the machine must use distinct prefixes. By convention tests use prefixes
that start with ``hfdt`` and subnets inside 10.79.0.0/24, never the lab's ``hafleet0`` /
10.77.0.0/24.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

IP = "ip"
# Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
_IFNAMSIZ = 15
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
_COMMAND_TIMEOUT = 10.0
_STOP_TIMEOUT = 3.0


class NetLabError(RuntimeError):
    """The lab could not be built or torn down."""


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = [IP] if netns is None else [IP, "-n", netns]
    argv += list(args)
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
    )
    if check and result.returncode != 0:
        raise NetLabError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def list_namespaces() -> set[str]:
    """The names of the network namespaces that exist now (exact names)."""
    out = _ip("-j", "netns", "list").stdout.strip()
    return {entry["name"] for entry in json.loads(out)} if out else set()


def list_links(netns: str | None = None) -> set[str]:
    """The names of the network interfaces in a namespace (the root one by default)."""
    out = _ip("-j", "link", "show", netns=netns).stdout.strip()
    return {entry["ifname"] for entry in json.loads(out)} if out else set()


class NetLab:
    """A bridge plus ``n`` network namespaces; a context manager that always cleans up."""

    def __init__(
        self,
        prefix: str = "hfdt",
        subnet: str = "10.79.0",
        n: int = 3,
        *,
        netmask: int = 24,
    ) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
        if not 0 <= n <= 99:
            raise ValueError(f"n must be in 0..99, got {n}")
        network = ipaddress.IPv4Network(f"{subnet}.0/{netmask}")
        if netmask > 24 or not network.is_private:
            raise ValueError(f"subnet must be a private /24 or larger, got {network}")
        self.prefix = prefix
        self.subnet = subnet
        self.n = n
        self.netmask = netmask
        self.bridge = f"{prefix}0"
        self.bridge_addr = f"{subnet}.1"
        self._namespaces: list[str] = [f"{prefix}-n{i}" for i in range(1, n + 1)]
        self._extra: list[str] = []
        self._root_links: list[str] = [f"{prefix}-v{i}" for i in range(1, n + 1)]
        if n:
            self._root_links.insert(0, self.bridge)
        self._links = 0
        self._procs: list[subprocess.Popen] = []
        self._up = False

    # --- names and addresses ----------------------------------------------------------------

    def ns(self, i: int | str) -> str:
        """The namespace of node ``i`` (1-based), or an extra namespace given by name."""
        if isinstance(i, str):
            if i not in self._namespaces and i not in self._extra:
                raise KeyError(f"{i!r} is not a namespace of this lab")
            return i
        if not 1 <= i <= self.n:
            raise IndexError(f"node index must be in 1..{self.n}, got {i}")
        return self._namespaces[i - 1]

    def addr(self, i: int) -> str:
        """The bridge address of node ``i`` (1-based): ``<subnet>.<i+1>``."""
        self.ns(i)
        return f"{self.subnet}.{i + 1}"

    @property
    def namespaces(self) -> list[str]:
        """All namespaces of the lab: the nodes first, then the extra ones."""
        return self._namespaces + self._extra

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.setup()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def setup(self) -> None:
        """Build the bridge and the namespaces; on any failure, undo what was built."""
        clash = sorted(set(self._namespaces) & list_namespaces())
        clash += sorted(set(self._root_links) & list_links())
        if clash:
            raise NetLabError(
                f"lab names already exist: {', '.join(clash)} (a crashed run or a concurrent "
                f"test with prefix {self.prefix!r}; clean up with "
                f"`python tests/support/netlab.py --cleanup {self.prefix}`)"
            )
        self._up = True
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise

    def _build(self) -> None:
        if not self.n:
            return
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.bridge_addr}/{self.netmask}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "multicast", "on", "up")
        for i, ns in enumerate(self._namespaces, start=1):
            host_end = f"{self.prefix}-v{i}"
            peer_end = f"{self.prefix}-p{i}"
            self._new_namespace(ns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", peer_end)
            _ip("link", "set", peer_end, "netns", ns)
            _ip("link", "set", host_end, "master", self.bridge)
            _ip("link", "set", host_end, "multicast", "on", "up")
            _ip("link", "set", peer_end, "name", "eth0", netns=ns)
            _ip("addr", "add", f"{self.addr(i)}/{self.netmask}", "dev", "eth0", netns=ns)
            _ip("link", "set", "eth0", "multicast", "on", "up", netns=ns)
            _ip("route", "add", "default", "via", self.bridge_addr, netns=ns)

    def _new_namespace(self, ns: str, lo_multicast: bool = True) -> None:
        _ip("netns", "add", ns)
        _ip("link", "set", "lo", "multicast", "on" if lo_multicast else "off", "up", netns=ns)

    def add_namespace(self, suffix: str, *, lo_multicast: bool = True) -> str:
        """An extra namespace ``<prefix>-<suffix>`` with only ``lo`` up, not on the bridge.

        ``lo_multicast=False`` leaves ``lo`` as the root namespace has it (no MULTICAST flag).
        """
        if not re.fullmatch(r"[a-z0-9]{1,6}", suffix) or re.fullmatch(r"n\d+", suffix):
            raise ValueError(f"suffix must be 1-6 of [a-z0-9] and not n<digits>, got {suffix!r}")
        if not self._up:
            raise NetLabError("the lab is not set up")
        ns = f"{self.prefix}-{suffix}"
        if ns in list_namespaces():
            raise NetLabError(f"namespace {ns} already exists")
        self._extra.append(ns)
        self._new_namespace(ns, lo_multicast)
        return ns

    def link(
        self, a: int | str, b: int | str, addr_a: str, addr_b: str, netmask: int = 30
    ) -> tuple[str, str]:
        """Join two namespaces with a veth pair (multicast on, up); returns the two names.

        Inside ``a`` the interface is called ``l<k>a``, inside ``b`` ``l<k>b`` (k counts links).
        """
        ns_a, ns_b = self.ns(a), self.ns(b)
        self._links += 1
        k = self._links
        end_a, end_b = f"{self.prefix}-l{k}a", f"{self.prefix}-l{k}b"
        self._root_links += [end_a, end_b]
        _ip("link", "add", end_a, "type", "veth", "peer", "name", end_b)
        for end, ns, addr, inner in (
            (end_a, ns_a, addr_a, f"l{k}a"),
            (end_b, ns_b, addr_b, f"l{k}b"),
        ):
            _ip("link", "set", end, "netns", ns)
            _ip("link", "set", end, "name", inner, netns=ns)
            _ip("addr", "add", f"{addr}/{netmask}", "dev", inner, netns=ns)
            _ip("link", "set", inner, "multicast", "on", "up", netns=ns)
        return f"l{k}a", f"l{k}b"

    def run_in(self, i: int | str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` inside namespace ``i``; the lab stops it (by PID) on teardown.

        ``ip netns exec`` execs the command, so the PID is the command's own.
        """
        if not self._up:
            raise NetLabError("the lab is not set up")
        proc = subprocess.Popen([IP, "netns", "exec", self.ns(i), *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def exec_in(
        self, i: int | str, argv: Sequence[str], timeout: float = _COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside namespace ``i`` to completion; raises when it fails."""
        return subprocess.run(
            [IP, "netns", "exec", self.ns(i), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def teardown(self) -> None:
        """Stop the lab's processes, then remove its namespaces and links by exact name.

        Tries everything, then raises one error listing what could not be removed.
        """
        errors = stop_processes(self._procs)
        self._procs.clear()
        errors += remove_by_name(self.namespaces, self._root_links)
        self._up = False
        if errors:
            raise NetLabError("teardown incomplete: " + "; ".join(errors))


def stop_processes(procs: Sequence[subprocess.Popen], timeout: float = _STOP_TIMEOUT) -> list[str]:
    """SIGTERM every process still running, SIGKILL what is left after ``timeout``."""
    errors: list[str] = []
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                errors.append(f"process {proc.pid} did not die")
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return errors


def remove_by_name(namespaces: Sequence[str], root_links: Sequence[str]) -> list[str]:
    """Delete the namespaces and root-namespace links that exist, matched by exact name.

    A namespace's own interfaces go with it (a veth pair dies with either end), so the
    links are only those still in the root namespace: the bridge, veth ends not yet moved.
    """
    errors: list[str] = []
    existing = list_namespaces()
    for ns in namespaces:
        if ns in existing:
            result = _ip("netns", "del", ns, check=False)
            if result.returncode != 0:
                errors.append(f"netns {ns}: {result.stderr.strip()}")
    existing_links = list_links()
    for link in root_links:
        if link in existing_links:
            result = _ip("link", "del", link, check=False)
            if result.returncode != 0 and link in list_links():
                errors.append(f"link {link}: {result.stderr.strip()}")
    return errors


def cleanup(prefix: str) -> list[str]:
    """Remove what a crashed ``NetLab(prefix=...)`` left behind (exact name patterns only)."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
    ns_re = re.compile(re.escape(prefix) + r"-[a-z0-9]{1,6}")
    link_re = re.compile(re.escape(prefix) + r"(0|-v\d+|-p\d+|-l\d+[ab])")
    namespaces = sorted(ns for ns in list_namespaces() if ns_re.fullmatch(ns))
    links = sorted(link for link in list_links() if link_re.fullmatch(link))
    errors = remove_by_name(namespaces, links)
    for name in namespaces + links:
        print(f"removed {name}")
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cleanup", metavar="PREFIX", required=True, help="remove leftovers")
    args = parser.parse_args(argv)
    errors = cleanup(args.cleanup)
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
