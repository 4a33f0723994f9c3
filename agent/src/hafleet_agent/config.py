"""The agent's configuration: built-in defaults < ``--config`` TOML file < command-line flags.

Every ``run`` flag has a TOML key of the same name with ``_`` for ``-`` (``--raft-port`` is
``raft_port``). A few settings exist only in the file (``advertise``, ``weight_overrides``,
``autopilot_*``, ``snapshot_entries``, ``snapshot_log_bytes``, ``drain_timeout_s``,
``health_max_apply_lag``). Unknown keys are an error, so
a typo never silently falls back to a default.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .addr import split_host_port as _split_host_port
from .ids import member_id_error

if TYPE_CHECKING:
    from .tls import TLSConfig

DEFAULT_RAFT_PORT = 7400
DEFAULT_API_PORT = 7480
MIN_SECRET_LEN = 32
DEFAULT_QUOTA_BYTES = 512 << 20
DEFAULT_HEALTH_MAX_APPLY_LAG = 1000
MIN_SNAPSHOT_LOG_BYTES = 1 << 16


class ConfigError(ValueError):
    """Bad configuration: the message says what is wrong and how to fix it."""


@dataclass
class AgentConfig:
    node_id: str = ""
    cluster: str = "hafleet"
    bind: str = "127.0.0.1"
    advertise: str = ""  # the address peers use to reach us; default: bind
    raft_port: int = DEFAULT_RAFT_PORT
    api_port: int = DEFAULT_API_PORT
    data_dir: str = "/var/lib/hafleet-agent"
    key_file: str = ""
    token_file: str = ""
    read_token_file: str = ""  # a token that may only read (server/audit.py)
    bootstrap_expect: int | None = None
    join: list[str] = field(default_factory=list)
    mdns: bool = True
    mdns_interface: list[str] = field(default_factory=list)
    service_port: int | None = None
    heartbeat_ms: int = 100
    election_timeout_ms: int = 300
    log_format: str = "text"
    # Mutual TLS between agents and HTTPS for the API (tls.py): all three or none.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # The check of this node's own service (node/service_check.py): "none", "tcp" or
    # "http:/PATH"; its pace and thresholds (docs/agent.md, "Service checks").
    service_check: str = "none"
    service_check_interval_ms: int = 500
    service_check_timeout_ms: int = 500
    service_check_rise: int = 2
    service_check_fall: int = 2
    # Fast eviction (the leader, node/chores.py): a member not heard from for this long is
    # marked unreachable (0: never); it is reachable again once it has answered this long.
    unreachable_after_ms: int = 500
    reachable_after_ms: int = 2000
    # file-only settings
    weight_overrides: dict[str, int] = field(default_factory=dict)
    autopilot_cleanup_dead: bool = False
    autopilot_dead_after_s: float = 30.0
    # Compact the log (write a snapshot of the state, drop the entries it covers) once this
    # many entries were applied since the last snapshot and the log file holds
    # snapshot_log_ratio times the state's bytes (a large state is not rewritten every few
    # thousand writes: the Raft thesis, 5.1.2), or once the log file holds snapshot_log_bytes,
    # whichever comes first (node/compaction.py).
    snapshot_entries: int = 8192
    snapshot_log_bytes: int = 64 << 20
    snapshot_log_ratio: float = 0.5
    drain_timeout_s: float = 10.0
    max_body_bytes: int = 1 << 20
    # The most the replicated KV store may hold, in bytes (keys, JSON values and a fixed
    # overhead a key: about its share of a snapshot). A write that would grow it past this is
    # refused (413 quota_exceeded) before it is proposed; 0 turns the check off.
    quota_bytes: int = DEFAULT_QUOTA_BYTES
    # /v1/health answers 503 while the applied index is more than this many entries behind
    # the commit index (server/health.py; docs/monitoring.md).
    health_max_apply_lag: int = DEFAULT_HEALTH_MAX_APPLY_LAG
    # The agent's CPU scheduling policy (run.py, ``cpu_policy``): "batch" (SCHED_BATCH: the
    # same share of the CPU, but a wake-up of the agent does not preempt the process that
    # runs) or "other" (the policy it was started with, left as it is).
    cpu_scheduling_policy: str = "batch"

    # ---- derived -------------------------------------------------------------------------
    @functools.cached_property
    def tls(self) -> TLSConfig | None:
        """The TLS files read and their SSL contexts made (once); None without the
        ``tls_*`` settings. ConfigError when the files cannot be used, or when the
        certificate names another node id than ``node_id``."""
        if not self.tls_ca_file:
            return None
        from .tls import TLSConfig, TLSError

        try:
            tls = TLSConfig.load(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        except TLSError as exc:
            raise ConfigError(str(exc)) from None
        if tls.node_id != self.node_id:
            raise ConfigError(
                f"TLS certificate {self.tls_cert_file} names node {tls.node_id!r}, but this "
                f"node's id is {self.node_id!r} (issue one with hafleet-agent ca issue "
                f"--node-id {self.node_id})"
            )
        return tls

    @property
    def advertise_host(self) -> str:
        return self.advertise or self.bind

    @property
    def raft_addr(self) -> str:
        return join_host_port(self.advertise_host, self.raft_port)

    @property
    def api_addr(self) -> str:
        return join_host_port(self.advertise_host, self.api_port)

    @property
    def service_addr(self) -> str | None:
        if self.service_port is None:
            return None
        return join_host_port(self.advertise_host, self.service_port)

    @property
    def tick_ms(self) -> int:
        """The Raft tick: the heartbeat interval, as etcd's, unless that leaves fewer than 6
        ticks to an election timeout (randomised over as many). A follower campaigns at its
        k-th tick after the last heartbeat, k in [E, 2E): between (E-1) ticks and 2E-1 ticks
        after it, as etcd's followers do at the same timeouts (a tick of half a heartbeat
        made every failover half a heartbeat slower than etcd's)."""
        return max(10, min(self.heartbeat_ms, self.election_timeout_ms // 6))

    @property
    def heartbeat_tick(self) -> int:
        return max(1, round(self.heartbeat_ms / self.tick_ms))

    @property
    def election_tick(self) -> int:
        return max(self.heartbeat_tick + 1, round(self.election_timeout_ms / self.tick_ms))


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(text: str) -> tuple[str, int]:
    try:
        return _split_host_port(text.strip())
    except ValueError as e:
        raise ConfigError(str(e)) from None


_KEYS = {f.name for f in fields(AgentConfig)}


def load(config_file: str | None, flags: dict[str, Any]) -> AgentConfig:
    """Layer the TOML file and the flags (``None`` = not given) over the defaults."""
    values: dict[str, Any] = {}
    if config_file:
        import tomllib

        path = Path(config_file)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise ConfigError(
                f"unknown key(s) in {path}: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(_KEYS))})"
            )
        values.update(raw)
    for k, v in flags.items():
        if v is not None:
            if k not in _KEYS:
                raise ConfigError(f"unknown setting {k!r}")
            values[k] = v
    cfg = AgentConfig()
    for k, v in values.items():
        setattr(cfg, k, v)
    validate(cfg)
    return cfg


#: The longest a removal waits for the balancers to drain a node (``drain_timeout_s``, the
#: API's ``drain_timeout``): an hour.
MAX_DRAIN_TIMEOUT_S = 3600.0


#: The longest of the time settings in milliseconds but the Raft timers': an hour.
HOUR_MS = 3_600_000
#: The bounds (inclusive) of the numeric settings that have both: a value outside is refused
#: with the range (docs/agent.md, "Configuration"). A comparison with NaN is false, so NaN
#: fails every one, and so do the infinities (TOML has ``nan`` and ``inf``).
RANGES: dict[str, tuple[int, int, str]] = {
    "heartbeat_ms": (1, 60_000, " (milliseconds)"),
    "election_timeout_ms": (2, 600_000, " (milliseconds)"),
    "service_check_interval_ms": (10, HOUR_MS, " (milliseconds)"),
    "service_check_timeout_ms": (10, HOUR_MS, " (milliseconds)"),
    "service_check_rise": (1, 100, ""),
    "service_check_fall": (1, 100, ""),
    "unreachable_after_ms": (0, HOUR_MS, " (milliseconds; 0: off)"),
    "reachable_after_ms": (0, HOUR_MS, " (milliseconds; 0: off)"),
    "autopilot_dead_after_s": (1, 7 * 86_400, " (seconds)"),
    "drain_timeout_s": (0, int(MAX_DRAIN_TIMEOUT_S), " (seconds)"),
    # Below a kibibyte no put fits; above 64 MiB no write fits in one Raft frame (and every
    # body is held in memory while it is read).
    "max_body_bytes": (1 << 10, 64 << 20, " (bytes)"),
}
#: The values of ``cpu_scheduling_policy`` (systemd's names of the policies, as in its
#: ``CPUSchedulingPolicy=``): the agent switches itself to SCHED_BATCH, or leaves its policy.
CPU_POLICIES = ("batch", "other")
#: The settings that name a file or a directory.
PATH_KEYS = ("data_dir", "key_file", "token_file", "read_token_file")


def validate(cfg: AgentConfig) -> None:
    if not cfg.node_id:
        cfg.node_id = socket.gethostname().split(".")[0]
    _check_type(cfg)
    for name, (low, high, unit) in RANGES.items():
        value = getattr(cfg, name)
        if not low <= value <= high:
            raise ConfigError(f"{name} must be in {low}..{high}{unit}, got {value!r}")
    for name in (*PATH_KEYS, *TLS_KEYS):
        if "\x00" in getattr(cfg, name):
            raise ConfigError(f"{name} must not hold a NUL character")
    if not cfg.data_dir.strip():
        raise ConfigError(
            "data_dir is empty: give the directory of the Raft state (--data-dir DIR; "
            "an empty one would be the current directory)"
        )
    error = member_id_error(cfg.node_id, "node id")
    if error is not None:
        raise ConfigError(error)
    if not _valid_name(cfg.cluster):
        raise ConfigError(f"cluster name {cfg.cluster!r} must be 1-63 of [A-Za-z0-9._-]")
    for name in ("raft_port", "api_port"):
        if not 1 <= getattr(cfg, name) <= 65535:
            raise ConfigError(f"{name} must be in 1..65535")
    if cfg.raft_port == cfg.api_port:
        raise ConfigError("raft_port and api_port must differ")
    if cfg.service_port is not None and not 1 <= cfg.service_port <= 65535:
        raise ConfigError("service_port must be in 1..65535")
    if cfg.bootstrap_expect is not None and cfg.bootstrap_expect < 1:
        raise ConfigError("bootstrap_expect must be at least 1")
    if cfg.election_timeout_ms <= cfg.heartbeat_ms:
        raise ConfigError(
            f"election_timeout_ms ({cfg.election_timeout_ms}) must be greater than "
            f"heartbeat_ms ({cfg.heartbeat_ms}); 3 to 10 times is usual"
        )
    if cfg.log_format not in ("text", "json"):
        raise ConfigError("log_format must be 'text' or 'json'")
    if cfg.cpu_scheduling_policy not in CPU_POLICIES:
        raise ConfigError(
            f"cpu_scheduling_policy must be {' or '.join(map(repr, CPU_POLICIES))}, "
            f"got {cfg.cpu_scheduling_policy!r}"
        )
    try:
        bind_ip = ipaddress.ip_address(cfg.bind)
    except ValueError:
        raise ConfigError(f"bind must be an IP address, got {cfg.bind!r}") from None
    if bind_ip.is_unspecified and not cfg.advertise:
        raise ConfigError(
            f"bind is {cfg.bind}: set 'advertise' to the address other nodes reach this one at"
        )
    joins = []
    for item in cfg.join:
        if isinstance(item, (list, tuple)):
            item = join_host_port(str(item[0]), int(item[1]))
        split_host_port(item)
        joins.append(item)
    cfg.join = joins
    if cfg.mdns and not cfg.mdns_interface:
        if bind_ip.is_unspecified:
            raise ConfigError(
                "mDNS is on and bind is a wildcard: name the interfaces with --mdns-interface "
                "ADDR (mDNS never binds to every interface), or turn it off with --no-mdns"
            )
        cfg.mdns_interface = [cfg.bind]
    for addr in cfg.mdns_interface:
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise ConfigError(f"mdns_interface must be an IP address, got {addr!r}") from None
    for nid, w in cfg.weight_overrides.items():
        if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 256:
            raise ConfigError(f"weight_overrides[{nid!r}] must be an integer in 0..256")
    if cfg.snapshot_entries < 10:
        raise ConfigError("snapshot_entries must be at least 10")
    if cfg.snapshot_log_bytes < MIN_SNAPSHOT_LOG_BYTES:
        raise ConfigError(f"snapshot_log_bytes must be at least {MIN_SNAPSHOT_LOG_BYTES}")
    if not 0 <= cfg.snapshot_log_ratio <= 16:
        raise ConfigError("snapshot_log_ratio must be in 0..16 (0: every snapshot_entries)")
    if cfg.quota_bytes < 0:
        raise ConfigError("quota_bytes must be >= 0 (0: no quota)")
    if cfg.health_max_apply_lag < 0:
        raise ConfigError("health_max_apply_lag must be >= 0")
    _check_service_check(cfg)
    tls_given = [bool(cfg.tls_ca_file), bool(cfg.tls_cert_file), bool(cfg.tls_key_file)]
    if any(tls_given) and not all(tls_given):
        missing = [
            f"--{name.replace('_', '-')}"
            for name, given in zip(TLS_KEYS, tls_given, strict=True)
            if not given
        ]
        raise ConfigError(
            "TLS needs all three of --tls-ca-file, --tls-cert-file and --tls-key-file "
            f"(or none of them); missing: {', '.join(missing)}"
        )


TLS_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def parse_service_check(text: str) -> tuple[str, str]:
    """``none``, ``tcp`` or ``http:/PATH`` -> (kind, path); ValueError otherwise."""
    if text in ("none", "tcp"):
        return text, ""
    if text.startswith("http:"):
        path = text[len("http:") :] or "/"
        if not path.startswith("/") or any(c.isspace() or ord(c) < 32 for c in path):
            raise ValueError(f"the path of an http check must start with '/', got {path!r}")
        return "http", path
    raise ValueError(f"service_check must be none, tcp or http:/PATH, got {text!r}")


def _check_service_check(cfg: AgentConfig) -> None:
    try:
        kind, _ = parse_service_check(cfg.service_check)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if kind != "none" and cfg.service_port is None:
        raise ConfigError(f"service_check {cfg.service_check} needs service_port (--service-port)")
    if 0 < cfg.unreachable_after_ms < 2 * cfg.heartbeat_ms:
        raise ConfigError(
            f"unreachable_after_ms ({cfg.unreachable_after_ms}) must be at least two "
            f"heartbeats ({2 * cfg.heartbeat_ms}), or 0 (off)"
        )


def _check_type(cfg: AgentConfig) -> None:
    expect: dict[str, tuple[type, ...]] = {
        "node_id": (str,),
        "cluster": (str,),
        "bind": (str,),
        "advertise": (str,),
        "raft_port": (int,),
        "api_port": (int,),
        "data_dir": (str,),
        "key_file": (str,),
        "token_file": (str,),
        "read_token_file": (str,),
        "heartbeat_ms": (int,),
        "election_timeout_ms": (int,),
        "log_format": (str,),
        "mdns": (bool,),
        "join": (list,),
        "mdns_interface": (list,),
        "weight_overrides": (dict,),
        "autopilot_cleanup_dead": (bool,),
        "autopilot_dead_after_s": (int, float),
        "snapshot_entries": (int,),
        "snapshot_log_bytes": (int,),
        "snapshot_log_ratio": (int, float),
        "drain_timeout_s": (int, float),
        "max_body_bytes": (int,),
        "quota_bytes": (int,),
        "health_max_apply_lag": (int,),
        "cpu_scheduling_policy": (str,),
        "tls_ca_file": (str,),
        "tls_cert_file": (str,),
        "tls_key_file": (str,),
        "service_check": (str,),
        "service_check_interval_ms": (int,),
        "service_check_timeout_ms": (int,),
        "service_check_rise": (int,),
        "service_check_fall": (int,),
        "unreachable_after_ms": (int,),
        "reachable_after_ms": (int,),
    }
    for name, types in expect.items():
        v = getattr(cfg, name)
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            want = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{name} must be {want}, got {type(v).__name__} {v!r}")
    for name in ("bootstrap_expect", "service_port"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise ConfigError(f"{name} must be an integer, got {v!r}")


def _valid_name(name: str) -> bool:
    return (
        isinstance(name, str)
        and 1 <= len(name) <= 63
        and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name)
    )


#: What an API token may hold (the admin token, the read token, a client's token file and
#: ``$HAFLEET_API_TOKEN``): it travels in an HTTP header, where other bytes are refused or
#: read otherwise by one side or the other.
TOKEN_RULE = (
    f"an API token is {MIN_SECRET_LEN} or more printable ASCII characters (0x21-0x7e: letters, "
    "digits, punctuation; no spaces), e.g. openssl rand -hex 32"
)


def secret_error(secret: bytes, where: str, *, token: bool) -> str | None:
    """None when ``secret`` (surrounding whitespace stripped) will do as a key or, with
    ``token``, as an API token (:data:`TOKEN_RULE`); else why not, naming ``where`` (the file,
    or the environment variable). Never shows the secret."""
    if token:
        bad = next((i for i, b in enumerate(secret) if not 0x21 <= b <= 0x7E), None)
        if bad is not None:
            return (
                f"{where} holds a byte that is not printable ASCII (byte {bad + 1} of "
                f"{len(secret)}): {TOKEN_RULE}"
            )
    if len(secret) < MIN_SECRET_LEN:
        return (
            f"{where} holds {len(secret)} characters; at least {MIN_SECRET_LEN} are required "
            "(e.g. openssl rand -hex 32)"
        )
    return None


def read_secret(path: str, what: str) -> bytes:
    """Read a key or token file: it must exist, be mode 0600 (no group/other bits) and hold at
    least 32 characters after stripping surrounding whitespace; a token (``what`` ends with
    "token") only printable ASCII (:data:`TOKEN_RULE`). The secret is never logged."""
    if not path:
        raise ConfigError(f"no {what} file given (--{what.replace(' ', '-')}-file FILE)")
    if not isinstance(path, str):
        raise ConfigError(f"the {what} file must be a file name, got {type(path).__name__}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    except ValueError:  # a NUL in the name
        raise ConfigError(f"{what} file {path!r} is not a file name") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{what} file {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600 "
            f"(chmod 600 {path})"
        )
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    error = secret_error(secret, f"{what} file {path}", token=what.endswith("token"))
    if error is not None:
        raise ConfigError(error)
    return secret
