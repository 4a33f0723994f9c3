"""mDNS discovery: announce this agent and keep a table of the peers that announce themselves.

Every agent registers ``<node-label>._hafleet._tcp.local.`` (DNS-SD over multicast DNS, with
python-zeroconf's asyncio API) and browses the same service type. The TXT record carries
what a peer needs to decide whether and how to contact this node (built and checked in
:mod:`hafleet_agent.discovery_records`; the schema is in docs/discovery.md)::

    cluster=<cluster name>  cid=<cluster id, empty while fresh>  id=<node id>
    raft=<host:port>  api=<host:port>  fresh=1|0  v=<protocol version>

mDNS is a hint and nothing more: an announcement is unauthenticated, so a peer found here is
only a candidate. The agent proves every peer over the transport with the cluster key before
it trusts it. Announcements with missing or malformed fields, of another cluster name, or
claiming this node's own id are ignored (logged at debug level, listed in ``ignored``).

zeroconf is given only the configured IPv4 interface addresses, never "all interfaces"
(docs/discovery.md says what that does and does not isolate). Anyone can announce, so every
table and queue here is bounded, and a flood cannot keep a real peer out for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Self

from zeroconf import IPVersion, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .discovery_records import (
    MAX_WAITING,
    PROTOCOL_VERSION,
    Admissions,
    InvalidAnnouncement,
    NameQueue,
    PeerAnnouncement,
    announced_addr,
    check_cluster_id,
    check_interfaces,
    check_text,
    dns_label,
    parse_announcement,
    parse_host_port,
    txt_record,
)
from .throttle import WarnThrottle

__all__ = [
    "PROTOCOL_VERSION",
    "SERVICE_TYPE",
    "Discovery",
    "DiscoveryClosed",
    "DiscoveryError",
    "InvalidAnnouncement",
    "PeerAnnouncement",
    "dns_label",
    "parse_announcement",
    "parse_host_port",
]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_hafleet._tcp.local."

#: TTL (seconds) of every record we announce. RFC 6762 suggests 75 minutes for PTR records;
#: a shorter one lets a peer that vanished without a goodbye (crash, power loss) drop out of
#: the others' tables after about two minutes, at the cost of a few more refresh queries.
DEFAULT_TTL = 120
#: How long to wait for a browsed service's SRV, TXT and A records.
DEFAULT_RESOLVE_TIMEOUT = 3.0

#: The most peers the table holds (anyone can announce). When it is full, a new node id takes
#: the place of the oldest entry that has not proved the cluster key (``proven``) and entered
#: ADMIT_GRACE_S ago or more; with none such, the name is tried again later.
MAX_PEERS = 256
ADMIT_GRACE_S = 2.0
#: The most ignored service names remembered for diagnostics (the oldest are forgotten).
MAX_IGNORED = 256
#: The most services resolved at the same time; the others wait (NameQueue: the newest
#: first, at most MAX_WAITING; names put back get up to RETRY_SLOTS slots while new ones wait).
MAX_RESOLVING = 32
RETRY_SLOTS = MAX_RESOLVING // 4
#: The resolve timeout while other names wait for a slot, and for retries (a peer answers
#: within milliseconds; zeroconf asks at once and again after ~0.2 s): see _resolve.
BUSY_RESOLVE_TIMEOUT = 1.0
_TICK_S = 0.5
_TYPE_PTR, _CLASS_IN = 12, 1  # DNS record type and class of the PTR records we browse


class DiscoveryError(RuntimeError):
    """Discovery could not start: no socket on a configured interface, port in use, ..."""


class DiscoveryClosed(DiscoveryError):
    """The discovery was stopped while a caller waited on it."""


# --- the discovery ------------------------------------------------------------------------------

Peers = dict[str, PeerAnnouncement]
OnChange = Callable[[Peers], None]
OnIgnore = Callable[[str, str], None]


class Discovery:
    """Announce this node over mDNS and keep the table of the peers of the same cluster name.

    ``peers`` maps node id -> ``PeerAnnouncement`` and never holds this node itself.
    ``on_change(peers)`` is called on the event loop, with a copy of the table, whenever an
    entry is added, changed or removed; it must not block. ``on_ignore(service_name, reason)``
    is called likewise when an announcement is ignored (for diagnostics and metrics).

    ``proven(node_id)``: whether that node proved the cluster key (the node knows); such a
    peer is never displaced from a full table by a newcomer.

    ``interfaces`` are the IPv4 addresses to bind to (at least one; ``127.0.0.x`` works for
    tests on one host). They are also the addresses announced in the A records. A ``raft_addr``
    or ``api_addr`` whose host is unspecified (``0.0.0.0``, ``::``) is announced with the first
    interface address instead.
    """

    def __init__(
        self,
        *,
        node_id: str,
        cluster: str,
        raft_addr: str,
        api_addr: str,
        interfaces: Sequence[str],
        cluster_id: str = "",
        fresh: bool = True,
        on_change: OnChange | None = None,
        on_ignore: OnIgnore | None = None,
        ttl: int = DEFAULT_TTL,
        resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT,
        max_peers: int = MAX_PEERS,
        proven: Callable[[str], bool] | None = None,
    ) -> None:
        self.node_id = check_text("node_id", node_id)
        self.cluster = check_text("cluster", cluster)
        self.interfaces = check_interfaces(interfaces)
        self.raft_addr = announced_addr("raft_addr", raft_addr, self.interfaces[0])
        self.api_addr = announced_addr("api_addr", api_addr, self.interfaces[0])
        self._cluster_id = check_cluster_id(cluster_id)
        self._fresh = bool(fresh)
        if ttl < 1:
            raise ValueError(f"ttl must be at least 1, got {ttl}")
        if resolve_timeout <= 0:
            raise ValueError(f"resolve_timeout must be positive, got {resolve_timeout}")
        if max_peers < 1:
            raise ValueError(f"max_peers must be at least 1, got {max_peers}")
        self.ttl = ttl
        self.resolve_timeout = resolve_timeout
        self.max_peers = max_peers
        self.on_change = on_change
        self.on_ignore = on_ignore
        self.proven = proven
        self.instance_label = dns_label(self.node_id)
        # Unique per node and address, readable, and the same on every restart.
        self.server = f"{dns_label(self.node_id, 47)}-{self.interfaces[0].replace('.', '-')}.local."

        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: ServiceInfo | None = None
        self._registered = False
        self._closing = False
        self._peers: Peers = {}
        self._names: dict[str, str] = {}  # service name (lowercase) -> node id
        self._ignored: dict[str, str] = {}  # service name -> why
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._retrying: set[str] = set()  # of _resolving: the names tried again
        self._queue = NameQueue(retry_slots=RETRY_SLOTS)  # waiting for a slot, or put back
        self._admitted = Admissions(ADMIT_GRACE_S)  # when each peer entered the table
        self._ticker: asyncio.Task[None] | None = None
        self._dup_warnings = WarnThrottle(log, 60.0)
        self._dirty: set[str] = set()
        self._waiters: set[asyncio.Future[None]] = set()
        self._update_lock = asyncio.Lock()

    # --- state -------------------------------------------------------------------------------

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    @property
    def fresh(self) -> bool:
        return self._fresh

    @property
    def txt(self) -> dict[str, str]:
        """The TXT record we announce (or will announce), as strings."""
        ids = (self.cluster, self._cluster_id, self.node_id)
        return txt_record(*ids, self.raft_addr, self.api_addr, fresh=self._fresh)

    @property
    def service_name(self) -> str:
        """Our full service name; zeroconf appends ``-2``, ... if another host holds it."""
        if self._info is not None:
            return self._info.name
        return f"{self.instance_label}.{SERVICE_TYPE}"

    @property
    def started(self) -> bool:
        return self._aiozc is not None and not self._closing

    @property
    def zeroconf(self) -> AsyncZeroconf | None:
        """The underlying AsyncZeroconf while started."""
        return self._aiozc

    @property
    def bound_addresses(self) -> tuple[str, ...]:
        """The local addresses zeroconf sends from (one socket per configured interface)."""
        if self._aiozc is None:
            return ()
        names = (sender.transport.get_extra_info("sockname") for sender in self._engine().senders)
        return tuple(sorted({name[0] for name in names if name}))

    @property
    def peers(self) -> Peers:
        """A copy of the peer table: node id -> announcement."""
        return dict(self._peers)

    @property
    def ignored(self) -> dict[str, str]:
        """Service names whose announcement is ignored -> the reason (for diagnostics)."""
        return dict(self._ignored)

    def _engine(self) -> Any:
        assert self._aiozc is not None
        return self._aiozc.zeroconf.engine

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the sockets on the configured interfaces, browse, then register (probing
        included, about 1.2 s). Raises ``DiscoveryError`` if an interface cannot be used."""
        if self._aiozc is not None:
            raise RuntimeError("Discovery.start() called twice")
        try:
            self._aiozc = AsyncZeroconf(
                interfaces=list(self.interfaces), ip_version=IPVersion.V4Only
            )
        except OSError as exc:
            raise DiscoveryError(f"cannot open mDNS sockets on {self.interfaces}: {exc}") from exc
        try:
            await self._aiozc.zeroconf.async_wait_for_start()
            bound = set(self.bound_addresses)
            if bound != set(self.interfaces):
                raise DiscoveryError(
                    f"mDNS could not bind to {sorted(set(self.interfaces) - bound)} "
                    "(no such local address, or no multicast on its interface)"
                )
            self._browser = AsyncServiceBrowser(
                self._aiozc.zeroconf, SERVICE_TYPE, handlers=[self._on_service_state_change]
            )
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
            self._info = self._service_info(f"{self.instance_label}.{SERVICE_TYPE}")
            await (await self._aiozc.async_register_service(self._info, allow_name_change=True))
            self._registered = True
            if self._info.name.lower() != f"{self.instance_label}.{SERVICE_TYPE}".lower():
                log.warning(
                    "mDNS name of %s taken on the network, announcing as %s",
                    self.node_id,
                    self._info.name,
                )
            log.info("mDNS: announcing %s on %s", self._info.name, ", ".join(self.interfaces))
        except BaseException:
            await self._shutdown()
            raise

    async def stop(self) -> None:
        """Say goodbye (peers drop us at once), stop browsing, close the sockets. Idempotent."""
        if self._aiozc is None or self._closing:
            return
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closing = True
        aiozc = self._aiozc
        assert aiozc is not None
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
            tasks = list(self._resolving.values())
            if self._ticker is not None:
                tasks.append(self._ticker)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._registered and self._info is not None:
                self._registered = False
                try:
                    await (await aiozc.async_unregister_service(self._info))
                except Exception:  # a failed goodbye must not block the close
                    log.warning("mDNS goodbye for %s failed", self._info.name, exc_info=True)
        finally:
            await aiozc.async_close()
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_exception(DiscoveryClosed("discovery stopped"))
            self._peers.clear()
            self._names.clear()
            self._ignored.clear()
            self._queue.clear()
            self._admitted.clear()

    def _service_info(self, name: str) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            name,
            port=parse_host_port(self.raft_addr)[1],
            properties=self.txt,
            server=self.server,
            host_ttl=self.ttl,
            other_ttl=self.ttl,
            parsed_addresses=list(self.interfaces),
        )

    async def update(self, *, cluster_id: str | None = None, fresh: bool | None = None) -> bool:
        """Change what we announce and re-announce it if started; returns whether it changed."""
        async with self._update_lock:
            new_cid = self._cluster_id if cluster_id is None else check_cluster_id(cluster_id)
            new_fresh = self._fresh if fresh is None else bool(fresh)
            if (new_cid, new_fresh) == (self._cluster_id, self._fresh):
                return False
            self._cluster_id, self._fresh = new_cid, new_fresh
            if self._registered and self._aiozc is not None and self._info is not None:
                self._info = self._service_info(self._info.name)
                await (await self._aiozc.async_update_service(self._info))
            return True

    # --- waiting -----------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[Peers], bool], timeout: float) -> Peers:
        """Wait until ``predicate(peers)`` holds; return that table.

        Raises ``TimeoutError`` after ``timeout`` seconds, ``DiscoveryClosed`` if stopped.
        """
        if not self.started:
            raise DiscoveryClosed("discovery is not running")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                snapshot = self.peers
                if predicate(snapshot):
                    return snapshot
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)

    async def wait_for_peers(
        self,
        n: int,
        timeout: float,
        *,
        fresh: bool | None = None,
        cluster_id: str | None = None,
    ) -> Peers:
        """Wait until at least ``n`` peers of our cluster name are known (not counting us),
        optionally only fresh ones or only ones of ``cluster_id``; return the matching peers.

        Raises ``TimeoutError`` after ``timeout`` seconds, ``DiscoveryClosed`` if stopped.
        """

        def matching(peers: Peers) -> Peers:
            return {
                node_id: peer
                for node_id, peer in peers.items()
                if (fresh is None or peer.fresh == fresh)
                and (cluster_id is None or peer.cluster_id == cluster_id)
            }

        try:
            return matching(await self.wait_until(lambda peers: len(matching(peers)) >= n, timeout))
        except TimeoutError:
            found = len(matching(self._peers))
            raise TimeoutError(
                f"saw {found} of {n} peers of cluster {self.cluster!r} in {timeout:g} s"
            ) from None

    # --- browsing ----------------------------------------------------------------------------

    def _on_service_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if self._closing or service_type != SERVICE_TYPE:
            return
        if self._info is not None and name.lower() == self._info.name.lower():
            return
        if state_change is ServiceStateChange.Removed:
            if (task := self._resolving.get(name)) is not None:
                task.cancel()
            self._dirty.discard(name)
            self._queue.discard(name)
            self._forget(name)
        else:
            self._schedule_resolve(name)

    def _schedule_resolve(self, name: str) -> None:
        """Resolve ``name`` from the cache, or now if a slot is free, else queue it (newest)."""
        task = self._resolving.get(name)
        if task is not None and not task.done():
            self._dirty.add(name)  # resolve again once this one is done
            return
        if self._from_cache(name):
            return
        if len(self._resolving) >= MAX_RESOLVING:
            pushed_out = self._queue.add(name)
            if pushed_out is not None:
                self._reject(pushed_out, f"over {MAX_WAITING} names wait to resolve", retry="soon")
            return
        self._queue.discard(name)
        self._start_resolve(name, retry=False)

    def _start_resolve(self, name: str, *, retry: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._resolving[name] = task
        if retry:
            self._retrying.add(name)
        task.add_done_callback(lambda done: self._resolve_done(name, done))

    def _resolve_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]
            self._retrying.discard(name)
        if not task.cancelled() and task.exception() is not None:
            log.error("mDNS: resolving %s failed", name, exc_info=task.exception())
        if name in self._dirty and not self._closing:
            self._dirty.discard(name)
            self._schedule_resolve(name)
        self._fill_slots()

    def _fill_slots(self) -> None:
        """Start resolves while slots are free, in the order NameQueue.next gives."""
        now = time.monotonic()
        while len(self._resolving) < MAX_RESOLVING and not self._closing:
            picked = self._queue.next(now, len(self._retrying))
            if picked is None:
                return
            if not self._from_cache(picked[0]):
                self._start_resolve(picked[0], retry=picked[1])

    async def _tick(self) -> None:
        """Every _TICK_S: retry the names due; rescan the cache (NameQueue.rescan) when due."""
        while not self._closing:
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            if self._queue.rescan_due(now) and self._aiozc is not None:
                cache = self._aiozc.zeroconf.cache
                ptrs = cache.async_all_by_details(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN)
                skip = {self.service_name.lower(), *self._names, *map(str.lower, self._resolving)}
                self._queue.rescan([getattr(r, "alias", "") for r in ptrs], skip, now)
            self._fill_slots()

    def _from_cache(self, name: str) -> bool:
        """Resolve ``name`` from zeroconf's cache if its announcement carried SRV, TXT and A
        (a peer's does): no query, no slot, so names that need a query cannot hold it up."""
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if self._aiozc is None or not info.load_from_cache(self._aiozc.zeroconf):
            return False
        self._queue.discard(name)
        self._resolved(name, info)
        return True

    async def _resolve(self, name: str) -> None:
        """Query for BUSY_RESOLVE_TIMEOUT; on up to resolve_timeout if no name waits meanwhile."""
        assert self._aiozc is not None
        info, zc = AsyncServiceInfo(SERVICE_TYPE, name), self._aiozc.zeroconf
        first = min(self.resolve_timeout, BUSY_RESOLVE_TIMEOUT)
        done = await info.async_request(zc, first * 1000)
        if not done and not (name in self._retrying or self._queue.waiting):
            done = await info.async_request(zc, (self.resolve_timeout - first) * 1000)
        if not done:
            self._reject(name, "not resolved in time", retry="unresolved")
        else:
            self._resolved(name, info)

    def _resolved(self, name: str, info: AsyncServiceInfo) -> None:
        try:
            peer = parse_announcement(
                name, info.properties, info.parsed_addresses(IPVersion.V4Only), time.monotonic()
            )
        except InvalidAnnouncement as exc:
            self._reject(name, f"bad TXT: {exc}")
            return
        self._consider(name, peer)

    def _consider(self, name: str, peer: PeerAnnouncement) -> None:
        """Accept a parsed announcement into the table, or ignore it (and say why)."""
        if peer.cluster != self.cluster:
            self._reject(name, f"other cluster {peer.cluster!r}")
        elif peer.node_id == self.node_id:
            self._reject(name, "announces our own node id")
        elif (
            peer.node_id not in self._peers
            and self._names.get(name.lower()) is None
            and len(self._peers) >= self.max_peers
        ):
            victim = self._admitted.victim(time.monotonic(), self.proven)
            if victim is None:
                self._reject(name, f"peer table full ({self.max_peers})", retry="soon")
                return
            old = self._peers.pop(victim)
            self._admitted.discard(victim)
            self._names.pop(old.service_name.lower(), None)
            self._reject(old.service_name, f"displaced from the full table by {name}", retry="soon")
            self._accept(peer, changed=True)
        else:
            self._accept(peer)

    def _accept(self, peer: PeerAnnouncement, *, changed: bool = False) -> None:
        key = peer.service_name.lower()
        self._ignored.pop(peer.service_name, None)
        previous_id = self._names.get(key)
        if previous_id is not None and previous_id != peer.node_id:
            changed |= self._drop_peer(previous_id, key)
        self._names[key] = peer.node_id
        old = self._peers.get(peer.node_id)
        if old is not None and old.service_name.lower() != key:
            self._dup_warnings.warn(
                peer.node_id,
                "mDNS: node id %r announced by both %s and %s; keeping the latest",
                peer.node_id,
                old.service_name,
                peer.service_name,
            )
            self._names.pop(old.service_name.lower(), None)
        self._peers[peer.node_id] = peer
        self._admitted.add(peer.node_id, time.monotonic())
        if old != peer:
            changed = True
            log.debug("mDNS: peer %s: %s", "changed" if old else "added", peer)
        if changed:
            self._notify()

    def _reject(self, name: str, reason: str, *, retry: str = "") -> None:
        """Ignore ``name`` (listed in ``ignored``; its peer, if any, leaves the table unless
        ``retry="soon"``); ``retry="soon"|"unresolved"``: try again after RETRY_S | ..._S."""
        if retry and not self._closing:
            self._queue.put_back(name, time.monotonic(), unresolved=retry == "unresolved")
        log.debug("mDNS: ignoring %s: %s", name, reason)
        self._ignored.pop(name, None)
        while len(self._ignored) >= MAX_IGNORED:
            del self._ignored[next(iter(self._ignored))]
        self._ignored[name] = reason
        if self.on_ignore is not None:
            try:
                self.on_ignore(name, reason)
            except Exception:  # a faulty callback must not stop discovery
                log.exception("mDNS: on_ignore callback failed")
        node_id = None if retry == "soon" else self._names.pop(name.lower(), None)
        if node_id is not None and self._drop_peer(node_id, name.lower()):
            self._notify()

    def _forget(self, name: str) -> None:
        self._ignored.pop(name, None)
        node_id = self._names.pop(name.lower(), None)
        if node_id is not None and self._drop_peer(node_id, name.lower()):
            log.debug("mDNS: peer removed: %s (%s)", node_id, name)
            self._notify()

    def _drop_peer(self, node_id: str, key: str) -> bool:
        peer = self._peers.get(node_id)
        if peer is None or peer.service_name.lower() != key:
            return False
        del self._peers[node_id]
        self._admitted.discard(node_id)
        return True

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self.on_change is not None:
            try:
                self.on_change(self.peers)
            except Exception:  # a faulty callback must not stop discovery
                log.exception("mDNS: on_change callback failed")
