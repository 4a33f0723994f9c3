"""The ``hafleet-agent`` command line.

The subcommands and the flags of ``run`` are a contract: scripts, the Ansible roles and the
tests depend on their names. Every ``run`` flag defaults to ``None`` ("not given"), so that
the agent can layer them: built-in default < ``--config`` TOML file < flag.

Exit codes: 0 success, 1 failure (the agent stopped on an error, an API error), 2 bad usage
or configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from hafleet_agent import __version__
from hafleet_agent.addr import api_base_url, split_host_port
from hafleet_agent.config import DEFAULT_API_PORT, DEFAULT_RAFT_PORT

PROG = "hafleet-agent"

DEFAULT_API_URL = f"http://127.0.0.1:{DEFAULT_API_PORT}"

EXIT_NOT_IMPLEMENTED = 2
NOT_IMPLEMENTED_ISSUE = "issue 4"

Handler = Callable[[argparse.Namespace], int]


# --- argument types -------------------------------------------------------------------------


def port(value: str) -> int:
    """A TCP port, 1..65535."""
    number = _int(value, "port")
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {value!r}")
    return number


def positive_int(value: str) -> int:
    """An integer >= 1."""
    number = _int(value, "number")
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """An integer >= 0."""
    number = _int(value, "number")
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value!r}")
    return number


def host_port_list(value: str) -> list[tuple[str, int]]:
    """``HOST:PORT[,HOST:PORT...]``; an IPv6 host is written in brackets: ``[fd00::1]:7400``."""
    result = []
    for item in value.split(","):
        item = item.strip()
        try:
            host, number = split_host_port(item)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {item!r} ({e})") from None
        if "[" in host or "]" in host:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {item!r}")
        result.append((host, number))
    return result


def api_url(value: str) -> str:
    """The base URL of an agent's HTTP API (:func:`.addr.api_base_url`), for argparse."""
    try:
        return api_base_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int(value: str, what: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be an integer, got {value!r}") from None


# --- handlers -------------------------------------------------------------------------------


def _not_implemented(args: argparse.Namespace) -> int:
    print(
        f"{PROG} {args.command_name}: not implemented yet (see {NOT_IMPLEMENTED_ISSUE})",
        file=sys.stderr,
    )
    return EXIT_NOT_IMPLEMENTED


RUN_FLAGS = (
    "node_id",
    "cluster",
    "bind",
    "raft_port",
    "api_port",
    "data_dir",
    "key_file",
    "token_file",
    "read_token_file",
    "bootstrap_expect",
    "join",
    "mdns",
    "mdns_interface",
    "service_port",
    "heartbeat_ms",
    "election_timeout_ms",
    "log_format",
    "quota_bytes",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "service_check",
    "service_check_interval_ms",
    "service_check_timeout_ms",
    "service_check_rise",
    "service_check_fall",
)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from .config import ConfigError, join_host_port, load
    from .run import run_agent, setup_logging

    flags = {name: getattr(args, name) for name in RUN_FLAGS}
    if flags["join"] is not None:
        flags["join"] = [join_host_port(h, p) for h, p in flags["join"]]
    try:
        cfg = load(args.config, flags)
    except ConfigError as exc:
        print(f"{PROG} run: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_format)
    try:
        return asyncio.run(run_agent(cfg))
    except ConfigError as exc:
        print(f"{PROG} run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _client(args: argparse.Namespace) -> int:
    from .client import ClientError, run_client

    try:
        return run_client(args)
    except ClientError as exc:
        print(f"{PROG} {args.command_name}: {exc}", file=sys.stderr)
        return exc.exit_code


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "The hafleet agent: one per host. It finds its peers over mDNS, joins a Raft "
            "group and keeps HAProxy weights in step with every host's spare capacity."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_run(commands)
    _add_views(commands)
    _add_leave(commands)
    _add_kv(commands)
    _add_balancer(commands)
    _add_ca(commands)
    return parser


def _command(
    commands: argparse._SubParsersAction,
    name: str,
    help_text: str,
    handler: Handler = _not_implemented,
    command_name: str | None = None,
) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(handler=handler, command_name=command_name or name)
    return sub


def _add_client_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--api",
        type=api_url,
        metavar="URL",
        default=DEFAULT_API_URL,
        help="base URL of an agent's HTTP API (default: %(default)s)",
    )
    sub.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the API token (mode 0600)",
    )
    sub.add_argument(
        "--ca-file",
        metavar="FILE",
        help="the cluster CA (PEM) that an https:// agent's certificate must chain to "
        "(default: $HAFLEET_CA_FILE, else the system's CAs)",
    )


def _add_run(commands: argparse._SubParsersAction) -> None:
    run = _command(commands, "run", "run the agent in the foreground", _run)
    run.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file; every key can also be given as a flag, flags win",
    )
    run.add_argument("--node-id", metavar="ID", help="this node's id, unique in the cluster")
    run.add_argument("--cluster", metavar="NAME", help="cluster name")
    run.add_argument("--bind", metavar="ADDR", help="address to bind the Raft and API ports to")
    run.add_argument(
        "--raft-port",
        type=port,
        metavar="P",
        help=f"Raft RPC port (default: {DEFAULT_RAFT_PORT})",
    )
    run.add_argument(
        "--api-port",
        type=port,
        metavar="P",
        help=f"HTTP API port (default: {DEFAULT_API_PORT})",
    )
    run.add_argument(
        "--data-dir",
        metavar="DIR",
        help="directory for Raft state; created when missing; persisted state wins",
    )
    run.add_argument(
        "--key-file",
        metavar="FILE",
        help="file holding the cluster key (at least 32 characters, mode 0600)",
    )
    run.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the API token (at least 32 characters, mode 0600)",
    )
    run.add_argument(
        "--read-token-file",
        metavar="FILE",
        help="file holding a token that may only read: GET routes, watch, metrics; writes "
        "get 403 (at least 32 characters, mode 0600; not the --token-file token)",
    )
    run.add_argument(
        "--bootstrap-expect",
        type=positive_int,
        metavar="N",
        help="a fresh node waits for N fresh nodes (itself included) before founding",
    )
    run.add_argument(
        "--join",
        type=host_port_list,
        action="extend",
        metavar="HOST:PORT[,..]",
        help="Raft addresses of nodes to join when multicast does not reach (repeatable)",
    )
    run.add_argument(
        "--mdns",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="announce and browse _hafleet._tcp.local. over mDNS (default: on)",
    )
    run.add_argument(
        "--mdns-interface",
        action="append",
        metavar="ADDR",
        help="bind mDNS to the interface with this address (repeatable)",
    )
    run.add_argument(
        "--service-port",
        type=port,
        metavar="P",
        help="port of the service on this host that HAProxy balances to",
    )
    run.add_argument(
        "--heartbeat-ms",
        type=positive_int,
        metavar="MS",
        help="the leader's heartbeat interval in milliseconds",
    )
    run.add_argument(
        "--service-check",
        metavar="CHECK",
        help="check this node's service: none (the default), tcp (a connect) or http:/PATH "
        "(GET PATH answers 2xx/3xx); a failing service gets weight 0 and is drained",
    )
    run.add_argument(
        "--service-check-interval-ms",
        type=positive_int,
        metavar="MS",
        help="how often the service is checked (default 500)",
    )
    run.add_argument(
        "--service-check-timeout-ms",
        type=positive_int,
        metavar="MS",
        help="how long one check may take (default 500)",
    )
    run.add_argument(
        "--service-check-rise",
        type=positive_int,
        metavar="N",
        help="passes in a row before a failing service counts as up again (default 2)",
    )
    run.add_argument(
        "--service-check-fall",
        type=positive_int,
        metavar="N",
        help="failures in a row before the service counts as down (default 2)",
    )
    run.add_argument(
        "--election-timeout-ms",
        type=positive_int,
        metavar="MS",
        help="a follower campaigns after a random time in [T, 2T) without a leader",
    )
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log line format (default: text)",
    )
    run.add_argument(
        "--quota-bytes",
        type=non_negative_int,
        metavar="N",
        help="the most the replicated KV store may hold; larger writes get 413 (0: no quota; "
        "default: 512 MiB)",
    )
    run.add_argument(
        "--tls-ca-file",
        metavar="FILE",
        help="the cluster CA (hafleet-agent ca init): with --tls-cert-file and --tls-key-file, "
        "mutual TLS between agents and HTTPS for the API (all three or none)",
    )
    run.add_argument(
        "--tls-cert-file",
        metavar="FILE",
        help="this agent's certificate (hafleet-agent ca issue); it must name --node-id",
    )
    run.add_argument(
        "--tls-key-file", metavar="FILE", help="the certificate's private key (mode 0600)"
    )


def _add_views(commands: argparse._SubParsersAction) -> None:
    """``status`` and ``members``: a table, or JSON with ``--json``."""
    for name, help_text in (
        ("status", "show the cluster: node, role, term, leader, cpu, mem, load, weight"),
        ("members", "list the members of the group"),
    ):
        view = _command(commands, name, help_text, _client)
        _add_client_options(view)
        view.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_leave(commands: argparse._SubParsersAction) -> None:
    leave = _command(commands, "leave", "hand leadership over, leave the group, stop", _client)
    _add_client_options(leave)


def _add_kv(commands: argparse._SubParsersAction) -> None:
    kv = _command(commands, "kv", "read and write the replicated key-value store")
    ops = kv.add_subparsers(dest="kv_command", metavar="OP", required=True)

    get = _command(ops, "get", "read KEY (linearizable)", _client, command_name="kv get")
    get.add_argument("--stale", action="store_true", help="read this node's copy, no round")
    get.add_argument("key", metavar="KEY")
    _add_client_options(get)

    put = _command(
        ops, "put", "write VALUE (JSON, or else a string) to KEY", _client, command_name="kv put"
    )
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE")
    _add_client_options(put)
    put.add_argument(
        "--cas",
        type=non_negative_int,
        metavar="INDEX",
        help="write only if KEY's modify index is INDEX (0: only if KEY is absent)",
    )

    delete = _command(ops, "del", "delete KEY", _client, command_name="kv del")
    delete.add_argument("key", metavar="KEY")
    _add_client_options(delete)
    delete.add_argument(
        "--cas",
        type=non_negative_int,
        metavar="INDEX",
        help="delete only if KEY's modify index is INDEX",
    )


def _add_balancer(commands: argparse._SubParsersAction) -> None:
    balancer = _command(
        commands,
        "balancer",
        "keep an HAProxy backend in step with the group (Runtime API, no reload)",
        _balancer,
    )
    balancer.add_argument(
        "--haproxy-socket",
        required=True,
        metavar="PATH",
        help="HAProxy's Runtime API (admin) socket",
    )
    balancer.add_argument(
        "--backend",
        required=True,
        metavar="NAME",
        help="the HAProxy backend whose servers follow the group",
    )
    balancer.add_argument(
        "--api",
        action="append",
        metavar="URL[,URL..]",
        help=(
            "agent API(s) to watch, in order of preference (repeatable or comma-separated); "
            "the other members' APIs are learned and used when these fail "
            f"(default: {DEFAULT_API_URL})"
        ),
    )
    balancer.add_argument(
        "--api-file",
        metavar="FILE",
        help=(
            "a file of more agent API URLs (one a line, or comma-separated; # comments), "
            "tried after --api's; read again whenever it changes, so a new list needs no restart"
        ),
    )
    balancer.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the API token (mode 0600; default: $HAFLEET_TOKEN_FILE)",
    )
    balancer.add_argument(
        "--ca-file",
        metavar="FILE",
        help="the cluster CA (PEM) that https:// agents' certificates must chain to "
        "(default: $HAFLEET_CA_FILE, else the system's CAs)",
    )
    balancer.add_argument(
        "--strategy",
        choices=("weighted", "roundrobin", "random", "leastconn"),
        default="weighted",
        help=(
            "weighted: capacity weights (balance roundrobin); roundrobin: equal weights; "
            "random: power of two choices (balance random(2)); leastconn (default: %(default)s)"
        ),
    )
    balancer.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help=(
            "the longest a server keeps its sessions once it is draining, before it is "
            "reported drained and, if its member left, cut off (default: %(default)s)"
        ),
    )
    balancer.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="re-read HAProxy's state at least this often (default: %(default)s)",
    )
    balancer.add_argument(
        "--state-file",
        metavar="PATH",
        help="HAProxy's server-state-file: rewritten after every change, for reloads",
    )
    balancer.add_argument(
        "--balancer-id",
        type=_balancer_id,
        metavar="ID",
        help="this balancer's name in the drain handshake (balancer/registered/ID); "
        "default: the host's name and a digest of --haproxy-socket",
    )
    balancer.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format"
    )


def _balancer_id(value: str) -> str:
    from .ids import member_id_error

    error = member_id_error(value, "balancer id")
    if error is not None:
        raise argparse.ArgumentTypeError(error)
    return value


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not 0 < number <= 86400:
        raise argparse.ArgumentTypeError(f"must be in (0, 86400] seconds, got {value!r}")
    return number


def _balancer(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from .balancer import BalancerError, Options, run_balancer
    from .config import ConfigError, read_secret
    from .run import setup_logging

    try:
        urls = [
            api_url(u.strip())
            for item in (args.api or ([] if args.api_file else [DEFAULT_API_URL]))
            for u in item.split(",")
            if u.strip()
        ]
    except argparse.ArgumentTypeError as exc:
        print(f"{PROG} balancer: --api: {exc}", file=sys.stderr)
        return 2
    token_file = args.token_file or os.environ.get("HAFLEET_TOKEN_FILE")
    if not token_file:
        print(
            f"{PROG} balancer: give the API token with --token-file FILE (or HAFLEET_TOKEN_FILE)",
            file=sys.stderr,
        )
        return 2
    try:
        token = read_secret(token_file, "token")
    except ConfigError as exc:
        print(f"{PROG} balancer: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_format)
    opts = Options(
        haproxy_socket=args.haproxy_socket,
        backend=args.backend,
        api_urls=urls,
        token=token,
        strategy=args.strategy,
        drain_timeout=args.drain_timeout,
        interval=args.interval,
        state_file=args.state_file,
        api_file=args.api_file,
        ca_file=args.ca_file or os.environ.get("HAFLEET_CA_FILE") or None,
        balancer_id=args.balancer_id,
    )
    try:
        return asyncio.run(run_balancer(opts))
    except BalancerError as exc:
        print(f"{PROG} balancer: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _add_ca(commands: argparse._SubParsersAction) -> None:
    ca = _command(commands, "ca", "make the cluster CA and the agents' certificates")
    ops = ca.add_subparsers(dest="ca_command", metavar="OP", required=True)
    init = _command(
        ops, "init", "make DIR/ca.crt and DIR/ca.key (0600); never overwrites", _ca, "ca init"
    )
    init.add_argument("--dir", required=True, metavar="DIR", help="where the CA's files go")
    issue = _command(
        ops,
        "issue",
        "make DIR/ID.crt and DIR/ID.key (0600), signed by the CA in DIR, binding the node id",
        _ca,
        "ca issue",
    )
    issue.add_argument("--dir", required=True, metavar="DIR", help="the CA's directory")
    issue.add_argument("--node-id", required=True, metavar="ID", help="the agent's node id")
    issue.add_argument(
        "--address",
        required=True,
        action="append",
        metavar="ADDR",
        help="an IP address or DNS name the agent is reached at (repeatable)",
    )
    issue.add_argument(
        "--days", type=positive_int, default=825, metavar="N", help="validity (default: 825)"
    )


def _ca(args: argparse.Namespace) -> int:
    from . import ca

    try:
        if args.ca_command == "init":
            cert, key = ca.init_ca(args.dir)
            print(f"wrote {cert} and {key} (keep {key} secret: it signs every certificate)")
        else:
            out = ca.issue(args.dir, args.node_id, args.address, days=args.days)
            verb = "replaced" if out.replaced else "wrote"
            print(f"{verb} {out.cert_path} and {out.key_path} for node {args.node_id}")
    except ca.CAError as exc:
        print(f"{PROG} {args.command_name}: {exc}", file=sys.stderr)
        return 1
    return 0


# --- entry point ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a COMMAND is required (see --help)", file=sys.stderr)
        return 2
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
