"""``hafleet-agent balancer``: its flags and its handler (see cli.py for the rest).

Light to import (``hafleet-agent ca`` must run with only ``cryptography`` installed): the
balancer's own modules, and aiohttp with them, load when it runs.
"""

from __future__ import annotations

import argparse
import sys

from hafleet_agent.cli_types import DEFAULT_API_URL, PROG, api_url, port


def add_balancer(commands: argparse._SubParsersAction) -> None:
    help_text = "keep an HAProxy backend in step with the group (Runtime API, no reload)"
    balancer = commands.add_parser("balancer", help=help_text, description=help_text)
    balancer.set_defaults(handler=_balancer, command_name="balancer")
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
        help="file holding the API token (mode 0600; default: $HAFLEET_API_TOKEN_FILE, or "
        "$HAFLEET_TOKEN_FILE)",
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
        "--vip",
        type=_vip,
        metavar="ADDR",
        help="the virtual address (keepalived's) to look for on this host's interfaces: "
        "the registration says whether this balancer holds it (status shows it)",
    )
    balancer.add_argument(
        "--metrics-port",
        type=port,
        metavar="P",
        help="serve the syncer's own Prometheus metrics at http://ADDR:P/metrics, no token "
        "(docs/monitoring.md; default: none)",
    )
    balancer.add_argument(
        "--metrics-bind",
        default="127.0.0.1",
        metavar="ADDR",
        help="the address --metrics-port listens on (default: %(default)s)",
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


def _vip(value: str) -> str:
    from .balancer.vip import parse_vip

    try:
        return str(parse_vip(value))
    except ValueError as exc:
        why = str(exc) if "virtual address" in str(exc) else "expected an IPv4 or IPv6 address"
        raise argparse.ArgumentTypeError(f"{why}, got {value!r}") from None


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
    from .client_config import env_token_file
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
    token_file = args.token_file or env_token_file()
    if not token_file:
        print(
            f"{PROG} balancer: give the API token with --token-file FILE (or "
            "HAFLEET_API_TOKEN_FILE)",
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
        vip=args.vip,
        metrics_port=args.metrics_port,
        metrics_bind=args.metrics_bind,
    )
    try:
        return asyncio.run(run_balancer(opts))
    except BalancerError as exc:
        print(f"{PROG} balancer: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
