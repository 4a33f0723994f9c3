"""Clusters of hafleet agents, etcd members and PySyncObj nodes on loopback, for ``make bench``.

Each system is driven the same way through :class:`System`: start N members on their own
loopback addresses (``127.0.NET.i``, NET in 50..99: the cluster tests use 100..254 and
``bench/agent_bench.py`` 200..249), ask any member who leads, kill -9 a member, restart it
on the same data dir, write, read, add a member, hand leadership over. Every process is
started here, tracked by PID and killed by PID (:func:`kill_all`, also at exit); every data
dir lives under one temporary directory; every wait has a deadline.

The three HTTP interfaces the benchmark talks to:

- hafleet: its own API (``PUT/GET /v1/kv/KEY``, ``GET /v1/status``, ...), bearer token;
- etcd 3.4: the gRPC gateway that every member serves on its client port
  (``POST /v3/kv/put``, ``/v3/kv/range``, ``/v3/maintenance/status``, ...), JSON with
  base64 keys and values. ``etcdctl`` speaks gRPC to the same services;
- PySyncObj: ``bench/pysyncobj_node.py`` (stdlib HTTP server around a ``SyncObj``).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import calendar
import itertools
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
ETCD = os.environ.get("ETCD_BIN", "/usr/bin/etcd")
ETCDCTL = os.environ.get("ETCDCTL_BIN", "/usr/bin/etcdctl")

NETS = range(50, 100)
_net_iter = itertools.cycle(NETS)

RAFT_PORT = 7400
API_PORT = 7480
ETCD_CLIENT = 2379
ETCD_PEER = 2380

_PROCS: dict[int, subprocess.Popen[bytes]] = {}

# what a request to a member can fail with (refused, reset, timed out, not JSON)
ERRS = (TimeoutError, aiohttp.ClientError, ValueError)


def _agent_ca(args: list[str]) -> None:
    subprocess.run([PY, "-m", "hafleet_agent", "ca", *args], check=True, capture_output=True)


def ssl_context(systems: list[System]) -> ssl.SSLContext | None:
    """A client context that trusts the CA of every system in ``systems`` that serves TLS
    (None when none does)."""
    cas = [x.tls_dir / "ca.crt" for x in systems if x.tls_dir is not None]
    if not cas:
        return None
    ctx = ssl.create_default_context()
    for ca in cas:
        ctx.load_verify_locations(cafile=str(ca))
    return ctx


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process ``pid`` has used, all its threads, those that
    ended included: the kernel's per-process CPU clock (``clock_getcpuclockid``'s clock,
    ``CPUCLOCK_SCHED``), in nanoseconds. ``/proc/PID/stat`` (psutil's ``cpu_times``) counts
    clock ticks of 10 ms: an idle member uses 40-100 of them a minute, so two equal
    counts tie and one tick is 1-2 % of the figure."""
    return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9


def next_net() -> int:
    return next(_net_iter)


_GRACEFUL: set[int] = set()


def spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None, graceful: bool = False
) -> subprocess.Popen:
    """Start a process of the benchmark; ``graceful``: :func:`kill_all` sends it SIGTERM and
    gives it time to clean up (bench/scale_lab.py destroys its lab) before SIGKILL."""
    with open(log, "ab") as f:
        p = subprocess.Popen(
            argv, stdout=f, stderr=f, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    _PROCS[p.pid] = p
    if graceful:
        _GRACEFUL.add(p.pid)
    return p


def reap(p: subprocess.Popen, timeout: float = 10.0) -> None:
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    _PROCS.pop(p.pid, None)


def kill_all() -> None:
    """Kill every process this module started, by PID."""
    for pid in list(_GRACEFUL):
        p = _PROCS.get(pid)
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=300)
            except subprocess.TimeoutExpired:
                pass
    for p in list(_PROCS.values()):
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in list(_PROCS.values()):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    _PROCS.clear()


atexit.register(kill_all)


@dataclass
class Timing:
    """Heartbeat and election timeout in ms; None: each system's own defaults."""

    heartbeat_ms: int | None = None
    election_ms: int | None = None

    @property
    def label(self) -> str:
        if self.heartbeat_ms is None:
            return "defaults"
        return f"heartbeat {self.heartbeat_ms} ms, election {self.election_ms} ms"


@dataclass
class Member:
    name: str
    ip: str
    dir: Path
    proc: subprocess.Popen | None = None
    argv: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class View:
    """What one member says: who leads (a member name or None) and its own role."""

    leader: str | None
    is_leader: bool
    term: int
    applied: int = 0


class System:
    kind = "?"
    label = "?"
    tls_dir: Path | None = None  # with TLS: the cluster's CA (``hafleet-agent ca``) and certs

    def __init__(self, n: int, work: Path, timing: Timing, net: int | None = None) -> None:
        self.n = n
        self.timing = timing
        self.net = net if net is not None else next_net()
        self.dir = work / f"{self.kind}-{self.net}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.members: dict[str, Member] = {}
        for i in range(1, n + 1):
            self._new_member(i)

    def use_tls(self) -> None:
        """Serve TLS (call before the members start): a CA of this cluster's own made with
        ``hafleet-agent ca init``, a certificate per member (its address in the SAN, server and
        client use) from ``ca issue``; the bench's client trusts it (:func:`ssl_context`)."""
        self.tls_dir = self.dir / "tls"
        _agent_ca(["init", "--dir", str(self.tls_dir)])

    def tls_files(self, m: Member) -> tuple[str, str, str]:
        """(CA certificate, ``m``'s certificate, its key), issued on first use."""
        d = self.tls_dir
        assert d is not None
        if not (d / f"{m.name}.crt").exists():
            # 127.0.0.1 too: etcd checks a peer's client certificate against the connection's
            # source address, and its members dial from 127.0.0.1 (they bind no source)
            _agent_ca(["issue", "--dir", str(d), "--node-id", m.name, "--address", m.ip,
                       "--address", "127.0.0.1"])  # fmt: skip
        return str(d / "ca.crt"), str(d / f"{m.name}.crt"), str(d / f"{m.name}.key")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_dir is not None else "http"

    def _new_member(self, i: int) -> Member:
        name = f"n{i}"
        m = Member(name, f"127.0.{self.net}.{i}", self.dir / name)
        m.dir.mkdir(parents=True, exist_ok=True)
        self.members[name] = m
        return m

    # -- processes ---------------------------------------------------------------------------

    def argv(self, m: Member, joining: bool = False) -> list[str]:
        raise NotImplementedError

    def start(self, name: str, joining: bool = False) -> None:
        m = self.members[name]
        if not m.argv:
            m.argv = self.argv(m, joining)
        m.proc = spawn(m.argv, m.dir / "log", self.env(m))

    def env(self, m: Member) -> dict[str, str] | None:
        return None

    def start_all(self) -> None:
        for name in list(self.members):
            self.start(name)

    def kill(self, name: str) -> None:
        m = self.members[name]
        if m.proc is not None:
            reap(m.proc)

    def freeze(self, name: str) -> None:
        """SIGSTOP the member's process (a hung host: its connections stay open); ``kill``
        ends it later (SIGKILL ends a stopped process too)."""
        m = self.members[name]
        if m.proc is not None:
            os.kill(m.proc.pid, signal.SIGSTOP)

    def restart(self, name: str) -> None:
        self.start(name)

    def pause(self) -> None:
        """SIGSTOP every member (another system's turn in a load section: a paused cluster
        spends none of the two cores on its timers meanwhile); ``resume`` goes on."""
        for name in self.alive():
            self.freeze(name)

    def resume(self) -> None:
        for m in self.members.values():
            if m.alive():
                os.kill(m.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        for m in self.members.values():
            if m.proc is not None:
                reap(m.proc)

    def alive(self) -> list[str]:
        return [n for n, m in self.members.items() if m.alive()]

    def pids(self) -> dict[str, int]:
        return {n: m.proc.pid for n, m in self.members.items() if m.alive()}

    # -- protocol ----------------------------------------------------------------------------

    async def view(self, s: aiohttp.ClientSession, name: str, timeout: float = 0.5) -> View | None:
        raise NotImplementedError

    async def put(
        self, s: aiohttp.ClientSession, name: str, key: str, value: str, timeout: float = 5.0
    ) -> bool:
        raise NotImplementedError

    def note_error(self, what: str) -> None:
        """Count a failed request by its answer (status and message, or the exception)."""
        errs = self.__dict__.setdefault("errors", {})
        errs[what] = errs.get(what, 0) + 1

    async def get(
        self, s: aiohttp.ClientSession, name: str, key: str, timeout: float = 5.0
    ) -> bool:
        raise NotImplementedError

    async def transfer(self, s: aiohttp.ClientSession, leader: str, target: str) -> bool:
        raise NotImplementedError

    async def join(self, s: aiohttp.ClientSession, deadline: float) -> tuple[str, float]:
        """Add one new member; answer its name and the seconds until it votes."""
        raise NotImplementedError

    def election_marks(self, since: float, names: list[str]) -> tuple[float | None, float | None]:
        """From the members' logs: wall-clock times of the first campaign (pre-vote) and of
        the new leader's election after ``since``; None where the log does not tell."""
        return None, None

    def _log_lines(self, names: list[str]):
        for n in names:
            try:
                text = (self.members[n].dir / "log").read_text(errors="replace")
            except OSError:
                continue
            yield from text.splitlines()

    # -- waits -------------------------------------------------------------------------------

    async def views(self, s: aiohttp.ClientSession, names: list[str]) -> dict[str, View | None]:
        vs = await asyncio.gather(*(self.view(s, n) for n in names))
        return dict(zip(names, vs, strict=True))

    async def steady(self, s: aiohttp.ClientSession, timeout: float = 60.0) -> str:
        """Wait until every live member names the same live leader; answer it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = self.alive()
            vs = await self.views(s, alive)
            leaders = {v.leader if v else None for v in vs.values()}
            if len(leaders) == 1:
                (lead,) = leaders
                if lead is not None and lead in alive and vs[lead] and vs[lead].is_leader:
                    return lead
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{self.label}: no steady leader within {timeout}s")


async def _json(resp: aiohttp.ClientResponse) -> object:
    return json.loads(await resp.read())


# --- hafleet ------------------------------------------------------------------------------


class Hafleet(System):
    kind = "hafleet"
    label = "hafleet"

    def __init__(
        self, n: int, work: Path, timing: Timing, net: int | None = None, traced: bool = False
    ) -> None:
        super().__init__(n, work, timing, net)
        self.traced = traced
        self.key = self.dir / "key"
        self.token_file = self.dir / "token"
        for f in (self.key, self.token_file):
            f.write_text(secrets.token_hex(32))
            f.chmod(0o600)
        self.token = self.token_file.read_text().strip()
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.founders = list(self.members)

    def timing_flags(self) -> list[str]:
        t = self.timing
        if t.heartbeat_ms is None:
            return []
        return ["--heartbeat-ms", str(t.heartbeat_ms), "--election-timeout-ms", str(t.election_ms)]

    def argv(self, m: Member, joining: bool = False) -> list[str]:
        if joining:
            joins = [f"{self.members[n].ip}:{RAFT_PORT}" for n in self.founders]
            expect: list[str] = []
        else:
            joins = [f"{self.members[n].ip}:{RAFT_PORT}" for n in self.founders]
            expect = ["--bootstrap-expect", str(len(self.founders))]
        cmd = [PY, str(BENCH / "hafleet_traced.py")] if self.traced else [PY, "-m", "hafleet_agent"]
        return [
            *cmd, "run",
            "--node-id", m.name, "--cluster", f"bench{self.net}", "--bind", m.ip,
            "--data-dir", str(m.dir / "data"),
            "--key-file", str(self.key), "--token-file", str(self.token_file),
            "--join", ",".join(joins), "--no-mdns",
            *expect, *self.timing_flags(), *self.tls_flags(m),
        ]  # fmt: skip

    def tls_flags(self, m: Member) -> list[str]:
        if self.tls_dir is None:
            return []
        ca, crt, key = self.tls_files(m)
        return ["--tls-ca-file", ca, "--tls-cert-file", crt, "--tls-key-file", key]

    def url(self, name: str, path: str) -> str:
        return f"{self.scheme}://{self.members[name].ip}:{API_PORT}{path}"

    def env(self, m: Member) -> dict[str, str] | None:
        if not self.traced:
            return None
        return {**os.environ, "HAFLEET_TRACE": str(m.dir / "trace")}

    def trace_events(self, since: float) -> list[tuple]:
        """(time, member, kind, fields...) from every member's trace since ``since``."""
        ev = []
        for name, m in self.members.items():
            try:
                lines = (m.dir / "trace").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                f = line.split()
                if len(f) < 3:
                    continue
                try:
                    t = float(f[0])
                except ValueError:
                    continue
                if t >= since:
                    ev.append((t, name, *f[1:]))
        ev.sort()
        return ev

    @staticmethod
    def _log_time(line: str) -> float | None:
        # "2026-12-05T05:43:28.123Z INFO ..." (UTC, hafleet_agent/logfmt.py); agents before
        # it: "2026-11-29 21:22:30,969 INFO ..." (local time)
        try:
            if line[10:11] == "T":
                stamp = calendar.timegm(time.strptime(line[:19], "%Y-%m-%dT%H:%M:%S"))
            else:
                stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
            return stamp + int(line[20:23]) / 1000
        except ValueError:
            return None

    def join_marks(self, since: float, name: str) -> dict[str, float]:
        """Seconds after ``since`` (wall clock) at which the new member's process was up,
        the leader added it as a learner, decided to promote it and applied the promotion."""
        pats = {
            "up": f": node {name} raft ",
            "learner": f"membership: add_learner {name} ",
            "promote": f"promoting {name} to voter",
            "voter": f"membership: add_voter {name} ",
        }
        marks: dict[str, float] = {}
        for line in self._log_lines(list(self.members)):
            for k, pat in pats.items():
                if pat in line:
                    t = self._log_time(line)
                    if t is not None and t >= since and (k not in marks or t - since < marks[k]):
                        marks[k] = t - since
        return marks

    def election_marks(self, since, names):
        # "2026-11-29 21:22:30,969 INFO hafleet.agent: leader is now None (term 2)": the
        # core drops its leader when it starts a pre-vote campaign (or grants a vote);
        # "... leader is now n3 (term 3) - this node": elected.
        camp = won = None
        for line in self._log_lines(names):
            if "leader is now" not in line:
                continue
            t = self._log_time(line)
            if t is None or t < since:
                continue
            if "leader is now None" in line:
                camp = t if camp is None else min(camp, t)
            elif line.endswith("- this node"):
                won = t if won is None else min(won, t)
        return camp, won

    async def view(self, s, name, timeout=0.5):
        try:
            async with s.get(
                self.url(name, "/v1/status"),
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as r:
                if r.status != 200:
                    return None
                st = await _json(r)
        except ERRS:
            return None
        return View(st.get("leader_id"), st.get("state") == "leader", st.get("term", 0),
                    st.get("applied_index", 0))  # fmt: skip

    async def put(self, s, name, key, value, timeout=5.0):
        try:
            async with s.put(
                self.url(name, f"/v1/kv/{key}"),
                json={"value": value},
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as r:
                body = await r.read()
                if r.status != 200:
                    self.note_error(f"{r.status} {body[:120].decode(errors='replace')}")
                return r.status == 200
        except ERRS as e:
            self.note_error(type(e).__name__)
            return False

    async def get(self, s, name, key, timeout=5.0):
        try:
            async with s.get(
                self.url(name, f"/v1/kv/{key}"),
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as r:
                await r.read()
                return r.status == 200
        except ERRS:
            return False

    async def transfer(self, s, leader, target):
        try:
            async with s.post(
                self.url(leader, "/v1/leadership/transfer"),
                json={"to": target},
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as r:
                await r.read()
                return r.status == 200
        except ERRS:
            return False

    async def _role(self, s, via: str, name: str) -> str | None:
        try:
            async with s.get(
                self.url(via, "/v1/members"),
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=1),
            ) as r:
                ms = await _json(r)
        except ERRS:
            return None
        for m in ms if isinstance(ms, list) else []:
            if m.get("id") == name:
                return m.get("role")
        return None

    async def join(self, s, deadline):
        lead = await self.steady(s, deadline - time.monotonic())
        m = self._new_member(len(self.members) + 1)
        wall0 = time.time()
        t0 = time.monotonic()
        self.start(m.name, joining=True)
        while time.monotonic() < deadline:
            if await self._role(s, lead, m.name) in ("voter", "leader"):
                secs = time.monotonic() - t0
                await asyncio.sleep(0.05)
                self.last_join_marks = self.join_marks(wall0 - 0.002, m.name)
                return m.name, secs
            await asyncio.sleep(0.02)
        raise TimeoutError(f"hafleet: {m.name} not a voter in time")


# --- etcd ---------------------------------------------------------------------------------


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Etcd(System):
    kind = "etcd"
    label = "etcd"

    def __init__(self, n: int, work: Path, timing: Timing, net: int | None = None) -> None:
        super().__init__(n, work, timing, net)
        self.ids: dict[str, str] = {}  # etcd member id (decimal string) -> name
        self.cluster_state = "new"

    def peer(self, m: Member) -> str:
        return f"{self.scheme}://{m.ip}:{ETCD_PEER}"

    def client(self, m: Member) -> str:
        return f"{self.scheme}://{m.ip}:{ETCD_CLIENT}"

    def tls_flags(self, m: Member) -> list[str]:
        """What hafleet's TLS does: mutual TLS between the members, a server certificate
        for the clients (hafleet's API asks no client certificate either)."""
        if self.tls_dir is None:
            return []
        ca, crt, key = self.tls_files(m)
        return [
            "--cert-file", crt, "--key-file", key,
            "--peer-cert-file", crt, "--peer-key-file", key,
            "--peer-trusted-ca-file", ca, "--peer-client-cert-auth",
        ]  # fmt: skip

    def timing_flags(self) -> list[str]:
        t = self.timing
        if t.heartbeat_ms is None:
            return []
        return [
            "--heartbeat-interval", str(t.heartbeat_ms),
            "--election-timeout", str(t.election_ms),
        ]  # fmt: skip

    def argv(self, m: Member, joining: bool = False) -> list[str]:
        initial = ",".join(f"{x.name}={self.peer(x)}" for x in self.members.values())
        return [
            ETCD, "--name", m.name, "--data-dir", str(m.dir / "data"),
            "--listen-peer-urls", self.peer(m), "--initial-advertise-peer-urls", self.peer(m),
            "--listen-client-urls", self.client(m), "--advertise-client-urls", self.client(m),
            "--initial-cluster", initial,
            "--initial-cluster-state", "existing" if joining else "new",
            "--initial-cluster-token", f"bench{self.net}",
            "--pre-vote", "--logger", "zap", "--log-outputs", "stderr", "--log-level", "info",
            *self.timing_flags(), *self.tls_flags(m),
        ]  # fmt: skip

    def election_marks(self, since, names):
        # zap JSON lines, "ts" in UTC: "... became pre-candidate at term 2", "... became
        # leader at term 3" (raft events are logged at info level)
        camp = won = None
        for line in self._log_lines(names):
            if "became pre-candidate" not in line and "became leader" not in line:
                continue
            try:
                rec = json.loads(line)
                ts = rec["ts"]
                t = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float(
                    "0" + ts[19:].rstrip("Z")
                )
            except (ValueError, KeyError):
                continue
            if t < since:
                continue
            if "pre-candidate" in rec.get("msg", ""):
                camp = t if camp is None else min(camp, t)
            else:
                won = t if won is None else min(won, t)
        return camp, won

    def env(self, m: Member) -> dict[str, str]:
        # etcd 3.4 reads ETCD_* variables as flags: start from a clean slate.
        return {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}

    async def _post(self, s, name, path, body, timeout):
        async with s.post(
            self.client(self.members[name]) + path,
            json=body,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            data = await _json(r)
            return r.status, data

    async def _refresh_ids(self, s) -> None:
        for name in self.alive():
            try:
                code, data = await self._post(s, name, "/v3/cluster/member/list", {}, 1.0)
            except ERRS:
                continue
            if code == 200:
                for mm in data.get("members", []):
                    if mm.get("name"):
                        self.ids[mm["ID"]] = mm["name"]
                return

    async def view(self, s, name, timeout=0.5):
        try:
            code, st = await self._post(s, name, "/v3/maintenance/status", {}, timeout)
        except ERRS:
            return None
        if code != 200:
            return None
        lid = st.get("leader", "0")
        me = st.get("header", {}).get("member_id")
        if lid not in (None, "0") and lid not in self.ids:
            await self._refresh_ids(s)
        leader = self.ids.get(lid) if lid not in (None, "0") else None
        if me and me not in self.ids:
            self.ids[me] = name
        return View(leader, me is not None and me == lid, int(st.get("raftTerm", 0)),
                    int(st.get("raftAppliedIndex", 0)))  # fmt: skip

    async def put(self, s, name, key, value, timeout=5.0):
        try:
            code, data = await self._post(
                s, name, "/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, timeout
            )
            if code != 200:
                self.note_error(f"{code} {data.get('message', '')}")
            return code == 200
        except ERRS as e:
            self.note_error(type(e).__name__)
            return False

    async def get(self, s, name, key, timeout=5.0):
        # serializable defaults to false: a linearizable read (ReadIndex)
        try:
            code, data = await self._post(s, name, "/v3/kv/range", {"key": _b64(key)}, timeout)
            return code == 200 and bool(data.get("kvs"))
        except ERRS:
            return False

    def name_to_id(self, name: str) -> str:
        for i, n in self.ids.items():
            if n == name:
                return i
        raise KeyError(name)

    async def transfer(self, s, leader, target):
        # what `etcdctl move-leader` sends: Maintenance.MoveLeader to the leader
        if target not in self.ids.values():
            await self._refresh_ids(s)
        try:
            code, _ = await self._post(
                s, leader, "/v3/maintenance/transfer-leadership",
                {"targetID": self.name_to_id(target)}, 10.0,
            )  # fmt: skip
            return code == 200
        except (*ERRS, KeyError):
            return False

    async def join(self, s, deadline):
        # `etcdctl member add NAME --learner --peer-urls URL`, start the member with
        # --initial-cluster-state existing, then `etcdctl member promote ID` (refused until
        # the learner has caught up).
        lead = await self.steady(s, deadline - time.monotonic())
        m = self._new_member(len(self.members) + 1)
        body = {"peerURLs": [self.peer(m)], "isLearner": True}
        mid = None
        while time.monotonic() < deadline:  # strict-reconfig-check: voters connected 5 s
            t0 = time.monotonic()
            try:
                code, data = await self._post(s, lead, "/v3/cluster/member/add", body, 5.0)
            except ERRS:
                code, data = 0, {}
            if code == 200:
                mid = data["member"]["ID"]
                break
            await asyncio.sleep(0.1)
        if mid is None:
            raise TimeoutError("etcd: member add refused until the deadline")
        self.ids[mid] = m.name
        self.start(m.name, joining=True)
        while time.monotonic() < deadline:
            try:
                code, _ = await self._post(s, lead, "/v3/cluster/member/promote", {"ID": mid}, 5.0)
            except ERRS:
                code = 0
            if code == 200:
                return m.name, time.monotonic() - t0
            await asyncio.sleep(0.02)
        raise TimeoutError(f"etcd: {m.name} not promoted in time")


# --- PySyncObj ----------------------------------------------------------------------------


class PySyncObj(System):
    kind = "pysyncobj"
    label = "PySyncObj"

    def __init__(
        self,
        n: int,
        work: Path,
        timing: Timing,
        net: int | None = None,
        fsync: bool = True,
        batch: bool = True,
        dynamic: bool = False,
    ) -> None:
        super().__init__(n, work, timing, net)
        self.fsync = fsync
        self.batch = batch
        self.dynamic = dynamic

    def raft(self, m: Member) -> str:
        return f"{m.ip}:{RAFT_PORT}"

    def timing_flags(self) -> list[str]:
        t = self.timing
        if t.heartbeat_ms is None:
            return []
        # PySyncObj draws the election timeout uniformly from [raftMinTimeout,
        # raftMaxTimeout): [T, 2T) is what etcd and hafleet draw from.
        return [
            "--heartbeat-ms", str(t.heartbeat_ms),
            "--election-min-ms", str(t.election_ms),
            "--election-max-ms", str(2 * t.election_ms),
        ]  # fmt: skip

    def argv(self, m: Member, joining: bool = False) -> list[str]:
        partners = ",".join(self.raft(x) for x in self.members.values() if x is not m)
        argv = [
            PY, str(BENCH / "pysyncobj_node.py"),
            "--self", self.raft(m), "--partners", partners,
            "--http", f"{m.ip}:{API_PORT}", "--data-dir", str(m.dir / "data"),
            "--fsync" if self.fsync else "--no-fsync",
            "--batch" if self.batch else "--no-batch",
            "--connection-retry", "1.0",
            *self.timing_flags(),
        ]  # fmt: skip
        if self.dynamic:
            argv.append("--dynamic")
        return argv

    def url(self, name: str, path: str) -> str:
        return f"http://{self.members[name].ip}:{API_PORT}{path}"

    def _name(self, addr: str | None) -> str | None:
        if not addr:
            return None
        ip = addr.rsplit(":", 1)[0]
        for n, m in self.members.items():
            if m.ip == ip:
                return n
        return None

    async def view(self, s, name, timeout=0.5):
        try:
            async with s.get(
                self.url(name, "/status"), timeout=aiohttp.ClientTimeout(total=timeout)
            ) as r:
                if r.status != 200:
                    return None
                st = await _json(r)
        except ERRS:
            return None
        return View(self._name(st.get("leader")), st.get("state") == 2, st.get("term", 0),
                    st.get("last_applied", 0))  # fmt: skip

    async def put(self, s, name, key, value, timeout=5.0):
        try:
            async with s.put(
                self.url(name, f"/kv/{key}"),
                data=value.encode(),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as r:
                body = await r.read()
                if r.status != 200:
                    self.note_error(f"{r.status} {body[:120].decode(errors='replace')}")
                return r.status == 200
        except ERRS as e:
            self.note_error(type(e).__name__)
            return False

    async def get(self, s, name, key, timeout=5.0):
        try:
            async with s.get(
                self.url(name, f"/kv/{key}"), timeout=aiohttp.ClientTimeout(total=timeout)
            ) as r:
                await r.read()
                return r.status == 200
        except ERRS:
            return False

    async def transfer(self, s, leader, target):
        # PySyncObj refuses (REQUEST_DENIED) unless the target's matchIndex equals the
        # leader's last log index at that instant, which under writes is rare: retry.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                async with s.post(
                    self.url(leader, "/transfer"),
                    json={"to": self.raft(self.members[target])},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as r:
                    await r.read()
                    if r.status == 200:
                        return True
            except ERRS:
                pass
            await asyncio.sleep(0.01)
        return False

    async def join(self, s, deadline):
        # addNodeToCluster on the leader (a voter as soon as the change commits: PySyncObj
        # has no learners), then start the node with every member as partner. "Voter" here:
        # the new node knows the leader and has applied the log up to the add.
        lead = await self.steady(s, deadline - time.monotonic())
        m = self._new_member(len(self.members) + 1)
        t0 = time.monotonic()
        ok = False
        while not ok and time.monotonic() < deadline:
            try:
                async with s.post(
                    self.url(lead, "/members"),
                    json={"addr": self.raft(m)},
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as r:
                    await r.read()
                    ok = r.status == 200
            except ERRS:
                ok = False
            if not ok:
                await asyncio.sleep(0.1)
        if not ok:
            raise TimeoutError("pysyncobj: addNodeToCluster failed until the deadline")
        lv = await self.view(s, lead)
        target = lv.applied if lv else 0
        self.start(m.name, joining=True)
        while time.monotonic() < deadline:
            v = await self.view(s, m.name)
            if v and v.leader == lead and v.applied >= target:
                return m.name, time.monotonic() - t0
            await asyncio.sleep(0.02)
        raise TimeoutError(f"pysyncobj: {m.name} not caught up in time")


SYSTEMS = {"hafleet": Hafleet, "etcd": Etcd, "pysyncobj": PySyncObj}
