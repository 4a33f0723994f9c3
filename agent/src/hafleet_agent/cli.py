"""The ``hafleet-agent`` command line.

The subcommands and the flags of ``run`` are a contract: scripts, the Ansible roles and the
tests depend on their names. Every ``run`` flag defaults to ``None`` ("not given"), so that
the agent can layer them: built-in default < ``--config`` TOML file < flag.

Exit codes: 0 success, 1 failure (the agent stopped on an error, an API error), 2 bad usage
or configuration, 141 (128 + SIGPIPE) a client command whose output was closed before it was
all written (``| head``): it stops quietly, as a command killed by SIGPIPE does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from hafleet_agent import __version__
from hafleet_agent.cli_types import (
    DEFAULT_API_URL,
    PROG,
    api_url,
    host_port_list,
    kv_key,
    non_negative_int,
    port,
    positive_int,
)
from hafleet_agent.config import DEFAULT_API_PORT, DEFAULT_RAFT_PORT

EXIT_NOT_IMPLEMENTED = 2
#: A client command whose stdout was closed early: the shell's code of a command that
#: SIGPIPE ended (Python ignores SIGPIPE and raises BrokenPipeError instead).
EXIT_BROKEN_PIPE = 128 + 13
NOT_IMPLEMENTED_ISSUE = "issue 4"

Handler = Callable[[argparse.Namespace], int]


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
    from .run import STOPPED, run_agent, setup_logging

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
    except KeyboardInterrupt:  # (after a finished stop: a second Ctrl-C in the teardown)
        return STOPPED[-1] if STOPPED else 130


def _client(args: argparse.Namespace) -> int:
    from .client import ClientError, run_client

    try:
        return run_client(args)
    except ClientError as exc:
        print(f"{PROG} {args.command_name}: {exc}", file=sys.stderr)
        return exc.exit_code


# --- parser ---------------------------------------------------------------------------------


def build_parser(only_run: bool = False) -> argparse.ArgumentParser:
    """The whole command line; with ``only_run``, ``run`` alone (see :func:`main`)."""
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
    if only_run:
        return parser
    # The other subcommands' modules (and the API client, http.client, urllib, email they
    # pull in) are imported only here, never by a running agent (issue 17: idle RSS).
    from hafleet_agent.cli_balancer import add_balancer
    from hafleet_agent.cli_ops import add_ops
    from hafleet_agent.cli_snapshot import add_snapshot

    _add_views(commands)
    _add_leave(commands)
    _add_kv(commands)
    add_ops(commands, _add_client_options)
    add_balancer(commands)
    add_snapshot(commands, _add_client_options)
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
        help="base URL of an agent's HTTP API (default: $HAFLEET_API_URL, else the local "
        f"agent's config, else {DEFAULT_API_URL})",
    )
    sub.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the API token (mode 0600; default: $HAFLEET_API_TOKEN_FILE, else "
        "the local agent's config)",
    )
    sub.add_argument(
        "--ca-file",
        metavar="FILE",
        help="the cluster CA (PEM) that an https:// agent's certificate must chain to "
        "(default: $HAFLEET_CA_FILE, else the local agent's config, else the system's CAs)",
    )
    sub.add_argument(
        "--config",
        metavar="FILE",
        help="the agent config (TOML) to find the API, token and CA in (default: "
        "$HAFLEET_CONFIG, else /etc/hafleet-agent/agent.toml, else a lab node's)",
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
    get.add_argument("key", metavar="KEY", type=kv_key)
    _add_client_options(get)

    put = _command(
        ops, "put", "write VALUE (JSON, or else a string) to KEY", _client, command_name="kv put"
    )
    put.add_argument("key", metavar="KEY", type=kv_key)
    put.add_argument("value", metavar="VALUE")
    _add_client_options(put)
    put.add_argument(
        "--cas",
        type=non_negative_int,
        metavar="INDEX",
        help="write only if KEY's modify index is INDEX (0: only if KEY is absent)",
    )

    delete = _command(ops, "del", "delete KEY", _client, command_name="kv del")
    delete.add_argument("key", metavar="KEY", type=kv_key)
    _add_client_options(delete)
    delete.add_argument(
        "--cas",
        type=non_negative_int,
        metavar="INDEX",
        help="delete only if KEY's modify index is INDEX",
    )


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
            if out.capped:
                print(
                    f"note: valid until {out.expires:%Y-%m-%d}, when the CA expires, not "
                    f"{args.days} days: make a new CA before then (playbooks/rotate_certs.yml "
                    "-e rotate_ca=true)",
                    file=sys.stderr,
                )
    except ca.CAError as exc:
        print(f"{PROG} {args.command_name}: {exc}", file=sys.stderr)
        return 1
    return 0


# --- entry point ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # ``run`` first: the parser of ``run`` alone parses, prints and fails exactly as the whole
    # one does (its usage names COMMAND, not the choices), without importing what only the
    # other subcommands use.
    parser = build_parser(only_run=argv[:1] == ["run"])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a COMMAND is required (see --help)", file=sys.stderr)
        return 2
    del parser  # not held while the command runs (an agent runs for months)
    if args.command in ("run", "balancer"):
        # (They run for long and log to stderr; a broken pipe there is a socket's.)
        return args.handler(args)
    try:
        code = args.handler(args)
        sys.stdout.flush()  # what is still buffered fails here, not at the interpreter's exit
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say. Point stdout at /dev/null so
        # that the interpreter's last flush does not fail again (Python's docs, "Note on
        # SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # (a stdout without a file descriptor)
            pass
        finally:
            os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


if __name__ == "__main__":
    raise SystemExit(main())
