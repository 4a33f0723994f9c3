"""HAProxy configuration for a backend that ``hafleet-agent balancer`` keeps in step.

:func:`render` writes a whole configuration: a ``global`` section with the Runtime API
socket (``stats socket PATH level admin expose-fd listeners``) and a ``server-state-file``,
``defaults`` with ``load-server-state-from-file global``, one frontend and one backend whose
``balance`` line follows the strategy (:data:`ALGORITHMS`). The backend has no
``server-template``: its servers are added, weighted, drained and deleted at run time over
the socket.

Least privilege (docs/security.md): with ``user``/``group``/``chroot`` set, HAProxy binds its
sockets and reads its files as the user it starts as, then its workers chroot (Debian's
``/var/lib/haproxy``) and switch to that user; the admin socket can be given a mode and a group
(``660`` and the syncer's group), so that the syncer speaks to it without root.

Reloads. HAProxy forgets a server added at run time when it reloads ("a dynamic server not
present in the configuration won't be restored after a reload operation", management.txt),
and it restores a server's weight from the state file only when the configured weight equals
the saved *initial* weight. So a reload goes:

1. dump the live state: :func:`hafleet_agent.balancer.process.save_state` (the syncer also
   rewrites the file after every change it applies, so it is never far behind);
2. render the configuration with the servers of that state
   (``render(..., servers=servers_from_state(...))``): each server line carries the saved
   id, address and initial weight;
3. start the new HAProxy with ``-x SOCKET -sf OLD_PID``: it takes the listening sockets over,
   loads the state file (current weights, drain and maintenance states) and the old process
   finishes its connections.

The command line is ``hafleet-haproxy render`` (:mod:`hafleet_agent.balancer.process`), which
also starts, reloads and stops HAProxy that way.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..addr import split_host_port

STRATEGIES = ("weighted", "roundrobin", "random", "leastconn")
DEFAULT_STRATEGY = "weighted"

ALGORITHMS: dict[str, str] = {
    "weighted": "roundrobin",  # with the group's capacity weights
    "roundrobin": "roundrobin",  # with equal weights
    "random": "random(2)",  # power of two random choices, equal weights
    "leastconn": "leastconn",  # equal weights
}
"""Strategy -> HAProxy ``balance`` algorithm. docs/balancer.md gives the reasons."""

EQUAL_WEIGHT = 100
"""The weight of every server under the strategies that do not use the capacity table."""

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
"""A user or group name HAProxy may switch to (Debian's rule for system accounts)."""
_MODE = re.compile(r"^0?[0-7]{3}$")
_HOST = re.compile(r"^[A-Za-z0-9_.:%-]{1,253}$")


class ConfigError(ValueError):
    """A setting HAProxy would refuse, or a file that cannot be read."""


@dataclass(frozen=True, slots=True)
class ServerLine:
    """A server written into the configuration (so that it survives a reload)."""

    name: str
    host: str
    port: int
    id: int
    weight: int

    def render(self, check: bool = True) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"server {self.name} {host}:{self.port} id {self.id} weight {self.weight}" + (
            " check" if check else ""
        )


@dataclass
class Settings:
    backend: str
    bind: list[str]
    socket_path: str
    state_file: str
    strategy: str = DEFAULT_STRATEGY
    frontend: str = "hafleet_in"
    servers: list[ServerLine] = field(default_factory=list)
    check: bool = True
    health_path: str | None = None
    """``option httpchk GET PATH`` when set; a TCP connect check otherwise."""
    maxconn: int = 4096
    timeout_connect: str = "2s"
    timeout_client: str = "30s"
    timeout_server: str = "60s"
    timeout_keep_alive: str = "30s"
    hard_stop_after: str | None = "120s"
    """How long an old process may keep finishing its connections after a reload."""
    nbthread: int | None = None
    user: str | None = None
    group: str | None = None
    """``user``/``group``: what HAProxy's processes switch to after binding (the master too,
    unless it runs master-worker: then only the workers)."""
    chroot: str | None = None
    """A directory each worker chroots into after it has bound and loaded its files."""
    socket_mode: str = "600"
    socket_group: str | None = None
    """The admin socket's mode and group (``660`` and the syncer's group: the syncer needs no
    root). Its owner stays the user HAProxy starts as."""


def check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ConfigError(f"{what} {value!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
    return value


def split_bind(value: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[V6]:PORT``."""
    try:
        return split_host_port(value, what="bind address")
    except ValueError:
        raise ConfigError(f"expected ADDR:PORT, got {value!r}") from None


def render(s: Settings) -> str:
    """The whole configuration text."""
    if s.strategy not in ALGORITHMS:
        raise ConfigError(f"strategy {s.strategy!r} is not one of {', '.join(STRATEGIES)}")
    check_name(s.backend, "backend name")
    check_name(s.frontend, "frontend name")
    if s.backend == s.frontend:
        raise ConfigError("the frontend and the backend need different names")
    if not s.bind:
        raise ConfigError("at least one bind address is needed")
    binds = []
    for b in s.bind:
        host, port = split_bind(b)
        binds.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    paths = [(s.socket_path, "socket path"), (s.state_file, "state file")]
    for path, what in paths + ([(s.chroot, "chroot")] if s.chroot is not None else []):
        if not path.startswith("/") or any(c.isspace() for c in path):
            raise ConfigError(f"the {what} must be an absolute path without spaces: {path!r}")
    if s.health_path is not None and (
        not s.health_path.startswith("/") or any(c.isspace() for c in s.health_path)
    ):
        raise ConfigError(
            f"the health path must start with '/' and hold no space: {s.health_path!r}"
        )
    for value, what in ((s.user, "user"), (s.group, "group"), (s.socket_group, "socket group")):
        if value is not None and not _ACCOUNT.match(value):
            raise ConfigError(f"the {what} {value!r} is not a valid user or group name")
    if not _MODE.match(s.socket_mode):
        raise ConfigError(f"the socket mode must be octal, such as 660: {s.socket_mode!r}")
    names: set[str] = set()
    ids: set[int] = set()
    for srv in s.servers:
        check_name(srv.name, "server name")
        if not _HOST.match(srv.host):
            raise ConfigError(f"server {srv.name}: {srv.host!r} is not an address")
        if srv.name in names or srv.id in ids:
            raise ConfigError(f"server {srv.name} (id {srv.id}) appears twice")
        if not 0 <= srv.weight <= 256:
            raise ConfigError(f"server {srv.name}: weight {srv.weight} is not in 0..256")
        names.add(srv.name)
        ids.add(srv.id)

    lines = [
        "# Rendered by hafleet_agent.balancer.haproxy_config. The backend's servers are",
        "# managed at run time by `hafleet-agent balancer` over the admin socket; the server",
        "# lines below, if any, only carry them over a reload (their state comes from the",
        "# server-state-file).",
        "global",
    ]
    if s.chroot:
        lines.append(f"    chroot {s.chroot}")
    socket_group = f" group {s.socket_group}" if s.socket_group else ""
    lines += [
        f"    stats socket {s.socket_path} mode {s.socket_mode}{socket_group} level admin"
        " expose-fd listeners",
        "    stats timeout 30s",
        f"    server-state-file {s.state_file}",
        f"    maxconn {s.maxconn}",
    ]
    if s.user:
        lines.append(f"    user {s.user}")
    if s.group:
        lines.append(f"    group {s.group}")
    if s.nbthread:
        lines.append(f"    nbthread {s.nbthread}")
    if s.hard_stop_after:
        lines.append(f"    hard-stop-after {s.hard_stop_after}")
    lines += [
        "",
        "defaults",
        "    mode http",
        "    option redispatch",
        "    retries 3",
        f"    timeout connect {s.timeout_connect}",
        f"    timeout client {s.timeout_client}",
        f"    timeout server {s.timeout_server}",
        f"    timeout http-keep-alive {s.timeout_keep_alive}",
        "    timeout queue 30s",
        "    load-server-state-from-file global",
        "",
        f"frontend {s.frontend}",
        *(f"    bind {b}" for b in binds),
        f"    default_backend {s.backend}",
        "",
        f"backend {s.backend}",
        f"    # strategy {s.strategy}",
        f"    balance {ALGORITHMS[s.strategy]}",
    ]
    if s.health_path:
        lines.append(f"    option httpchk GET {s.health_path}")
    lines += [f"    {srv.render(s.check)}" for srv in s.servers]
    return "\n".join(lines) + "\n"


# --- the server state file ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerState:
    """One line of ``show servers state`` (format version 1), the fields we use."""

    backend: str
    id: int
    name: str
    addr: str
    op_state: int
    admin_state: int
    uweight: int
    iweight: int
    check_state: int
    port: int

    # srv_admin_state bits (management.txt)
    FMAINT = 0x01
    IMAINT = 0x02
    CMAINT = 0x04
    FDRAIN = 0x08
    IDRAIN = 0x10
    RMAINT = 0x20
    HMAINT = 0x40
    # srv_check_state bits (CHK_ST_*)
    CHECK_CONFIGURED = 0x02
    CHECK_ENABLED = 0x04

    @property
    def maint(self) -> bool:
        return bool(self.admin_state & (self.FMAINT | self.CMAINT))

    @property
    def drain(self) -> bool:
        return bool(self.admin_state & self.FDRAIN)

    @property
    def check_disabled(self) -> bool:
        """A check is configured but not running (a server added at run time starts so)."""
        cs = self.check_state
        return bool(cs & self.CHECK_CONFIGURED) and not cs & self.CHECK_ENABLED


class StateParseError(ValueError):
    pass


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse ``show servers state`` output (or a state file)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise StateParseError("empty servers state")
    if lines[0].strip() != "1":
        raise StateParseError(f"unknown servers state format {lines[0].strip()!r} (expected 1)")
    header: list[str] | None = None
    out = []
    for ln in lines[1:]:
        if ln.startswith("#"):
            header = ln.lstrip("#").split()
            continue
        if header is None:
            raise StateParseError("servers state without a column header")
        row = dict(zip(header, ln.split(), strict=False))
        try:
            out.append(
                ServerState(
                    backend=row["be_name"],
                    id=int(row["srv_id"]),
                    name=row["srv_name"],
                    addr=row["srv_addr"],
                    op_state=int(row["srv_op_state"]),
                    admin_state=int(row["srv_admin_state"]),
                    uweight=int(row["srv_uweight"]),
                    iweight=int(row["srv_iweight"]),
                    check_state=int(row.get("srv_check_state", "0")),
                    port=int(row.get("srv_port", "0")),
                )
            )
        except (KeyError, ValueError) as exc:
            raise StateParseError(f"bad servers state line {ln!r}: {exc}") from None
    return out


def servers_from_state(text: str, backend: str) -> list[ServerLine]:
    """The server lines that carry ``backend``'s servers over a reload: the saved id,
    address and *initial* weight (HAProxy then restores the current weight and the admin
    state from the state file)."""
    return [
        ServerLine(s.name, s.addr, s.port, s.id, s.iweight)
        for s in parse_servers_state(text)
        if s.backend == backend and s.port > 0
    ]


def write_atomic(path: str | Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            # fchmod, not chmod(tmp): the directory may be writable by a less trusted user
            # (the syncer's state directory), who could swap the name for a link.
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
